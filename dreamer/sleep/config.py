"""One dataclass config per sleep stage, and the presets in `assets/presets/*.toml`.

    dreamer sleep --now --preset cpu-tiny      # the CPU default
    dreamer sleep --now --preset gpu-qlora     # one consumer GPU, 4-bit base

A preset file has one table per stage (`[load]`, `[memories]`, `[distill]`, `[dreaming]`, `[gate]`); a key it
does not set keeps the dataclass default. Unknown tables or keys, and values out of range, are
errors that name the key (`distill.lmbda must be in [0, 1]`).
"""

from __future__ import annotations

import math

import tomllib
from importlib.resources import files
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

# assets/ in a checkout, dreamer/assets in an installed wheel: found the same way in both.
ASSETS = Path(str(files("dreamer.assets")))
PRESETS = ASSETS / "presets"
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
TARGETS = ("all", "mlp", "attention")  # which projections of each layer the new expert adapts


class SleepConfigError(ValueError):
    """A preset or config value is wrong; the message names `stage.key`."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SleepConfigError(message)


def _unit(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _at_least_zero(value, integer: bool = False) -> bool:
    kinds = int if integer else (int, float)
    return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class LoadConfig:
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    quantization: str = field(default="auto", metadata={"help": "auto (nf4 on cuda, none on cpu) | none | nf4"})
    max_seq_len: int = field(default=384, metadata={"help": "longest training sequence, tokens"})
    threads: int = field(
        default=0, metadata={"help": "CPU threads for torch; 0 = half the cores (an oversubscribed CPU is many times slower)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed for sampling and data order"})
    merge_stack: bool = field(default=True, metadata={
        "help": "train on the base with the earlier nights' experts merged into its weights instead of applying "
                "them as adapters (the same model, faster; unquantized bases only, and not with Dreaming's novelty)"})

    def __post_init__(self):
        _check(isinstance(self.merge_stack, bool), f"load.merge_stack must be true or false, got {self.merge_stack!r}")
        _check(self.device in ("auto", "cpu", "cuda"), f"load.device must be auto, cpu or cuda, got {self.device!r}")
        _check(self.quantization in ("auto", "none", "nf4"), f"load.quantization must be auto, none or nf4, got {self.quantization!r}")
        _check(_positive_int(self.max_seq_len), f"load.max_seq_len must be a positive integer, got {self.max_seq_len!r}")
        _check(isinstance(self.threads, int) and self.threads >= 0, f"load.threads must be an integer >= 0, got {self.threads!r}")


@dataclass
class MemoriesConfig:
    questions_per_conversation: int = field(default=6, metadata={"help": "questions the teacher writes per conversation"})
    distractors: int = field(default=3, metadata={"help": "wrong answers per probe"})
    teacher_samples: int = field(default=2, metadata={"help": "teacher continuations sampled per training prompt"})
    max_new_tokens: int = field(default=48, metadata={"help": "longest teacher answer, tokens"})
    temperature: float = field(default=0.7, metadata={"help": "teacher sampling temperature"})
    max_context_tokens: int = field(default=1536, metadata={"help": "tokens of the day's transcript in the teacher prompt"})

    def __post_init__(self):
        for name in ("questions_per_conversation", "distractors", "teacher_samples", "max_new_tokens", "max_context_tokens"):
            _check(_positive_int(getattr(self, name)), f"memories.{name} must be a positive integer, got {getattr(self, name)!r}")
        _check(0 < self.temperature <= 2, f"memories.temperature must be in (0, 2], got {self.temperature!r}")


@dataclass
class DistillConfig:
    steps: int = field(default=60, metadata={"help": "optimizer steps of the night"})
    batch_size: int = field(default=4, metadata={"help": "sequences per step (gradient accumulation on CPU)"})
    learning_rate: float = field(default=3e-4, metadata={"help": "AdamW learning rate of the new expert"})
    rank: int = field(default=16, metadata={"help": "LoRA rank of the new expert"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / rank)"})
    targets: str = field(
        default="all", metadata={"help": "all | mlp | attention: the projections the new expert adapts in each layer"}
    )
    alpha: float = field(default=0.8, metadata={"help": "weight of the divergence term; 1 - alpha weighs the imitation RL term"})
    lmbda: float = field(default=0.5, metadata={"help": "on-policy fraction: share of student-sampled continuations"})
    divergence: str = field(default="jsd", metadata={"help": "forward_kl | reverse_kl | jsd"})
    beta: float = field(default=0.5, metadata={"help": "JSD interpolation (0 = forward KL, 1 = reverse KL)"})
    gamma: float = field(default=0.5, metadata={"help": "imitation reward: weight of semantic match vs edit similarity"})
    z0: float = field(default=0.5, metadata={"help": "edit-similarity reward is 0 beyond this normalized distance"})
    sem_threshold: float = field(default=0.7, metadata={"help": "cosine above which two texts mean the same"})
    rl_group: int = field(default=4, metadata={"help": "completions per prefix (group-mean baseline)"})
    rl_every: int = field(default=2, metadata={"help": "run the imitation RL term every k steps (it samples)"})
    rl_new_tokens: int = field(default=24, metadata={"help": "longest student sample: RL completions and on-policy continuations"})
    cloze_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the cloze recall term (the user's blanked words, closed book); 0 = the paper's objective"},
    )
    cloze_batch: int = field(default=4, metadata={"help": "cloze prompts per step for the cloze recall term"})
    cloze_negatives: int = field(
        default=1, metadata={"help": "other words of the day each cloze's word is contrasted with; 0 = cross-entropy only"}
    )
    drift_weight: float = field(
        default=2.0,
        metadata={"help": "weight of the drift term: per-token KL(active stack || student) on general text, every step; 0 = off"},
    )
    drift_batch: int = field(default=4, metadata={"help": "general texts per step for the drift term"})
    replay_fraction: float = field(default=0.2, metadata={"help": "share of prompts replayed from earlier nights"})
    anchor_fraction: float = field(default=0.15, metadata={"help": "share of general-text prompts (teacher = base)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    pass_batch: int = field(
        default=1,
        metadata={"help": "sequences per student forward pass in the divergence and imitation terms: 1 on a CPU "
                          "(no faster batched, less memory), the whole batch on a GPU (fewer kernel launches)"},
    )

    def __post_init__(self):
        for name in ("steps", "batch_size", "rank", "lora_alpha", "rl_group", "rl_every", "rl_new_tokens", "cloze_batch",
                     "drift_batch", "pass_batch"):
            _check(_positive_int(getattr(self, name)), f"distill.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("alpha", "lmbda", "beta", "gamma", "z0", "sem_threshold", "replay_fraction", "anchor_fraction"):
            _check(_unit(getattr(self, name)), f"distill.{name} must be in [0, 1], got {getattr(self, name)!r}")
        _check(self.divergence in DIVERGENCES, f"distill.divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        _check(self.targets in TARGETS, f"distill.targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        _check(self.replay_fraction + self.anchor_fraction < 1, "distill.replay_fraction + distill.anchor_fraction must be < 1")
        _check(_at_least_zero(self.cloze_weight), f"distill.cloze_weight must be a number >= 0, got {self.cloze_weight!r}")
        _check(_at_least_zero(self.drift_weight), f"distill.drift_weight must be a number >= 0, got {self.drift_weight!r}")
        _check(_at_least_zero(self.cloze_negatives, integer=True),
               f"distill.cloze_negatives must be an integer >= 0, got {self.cloze_negatives!r}")
        _check(self.learning_rate > 0, f"distill.learning_rate must be > 0, got {self.learning_rate!r}")
        _check(self.rl_group >= 2 or self.alpha == 1, "distill.rl_group must be >= 2 for a group-mean baseline")


REWARD_PROBES = ("own", "all")
REWARD_MEASURES = ("asked", "choice")
REHEARSE_REPLIES = ("answer", "dream")
REHEARSE_DRIFTS = ("text", "chat", "self")


@dataclass
class DreamingConfig:
    """Stage 2 of the night (dreamer.sleep.dreaming): dream, score, learn to dream, rehearse."""

    enabled: bool = field(default=False, metadata={"help": "run Dreaming after stage 1; false = stage 1 alone, bit for bit"})
    dreams: int = field(default=48, metadata={"help": "m: candidate dreams a night, spread over the day's facts and the kinds (only grounded ones are scored)"})
    keep: int = field(default=6, metadata={"help": "k: dreams kept by the first filter (largest teacher-student loss gap)"})
    keep_random: int = field(default=2, metadata={"help": "b: further dreams kept at random, for exploration"})
    rehearsal_fraction: float = field(
        default=0.25, metadata={"help": "share of dreams that re-tell earlier nights, closed book by the stack"})
    temperature: float = field(default=0.9, metadata={"help": "the writer's sampling temperature"})
    novelty: float = field(
        default=0.3, metadata={"help": "chance that a batch of dreams is written with one older expert dropped"})
    max_new_tokens: int = field(default=40, metadata={
        "help": "longest rehearsal reply, tokens; a written request and reply together get twice this; also the "
                "expert's answers the \"self\" drift term holds, and the replies the \"asked\" reward reads"})
    inner_steps: int = field(default=8, metadata={"help": "steps of each throwaway copy of tonight's expert on its dream"})
    inner_learning_rate: float = field(default=3e-4, metadata={"help": "learning rate of the throwaway copies"})
    tau_today: int = field(default=12, metadata={"help": "today's held-out self-probes the reward is measured on"})
    tau_old: int = field(default=6, metadata={"help": "earlier nights' probes the reward is measured on"})
    min_improvement: float = field(
        default=0.0, metadata={"help": "a dream is rewarded when tau (see reward_measure) rises by more"})
    reward_probes: str = field(default="all", metadata={
        "help": "the held-out probes a dream's tau is measured on: own (those of the fact it is about) or all"})
    reward_measure: str = field(default="asked", metadata={
        "help": "what tau is: asked (the share of held-out probes whose greedy reply, asked as the chat asks, names "
                "the answer: what the user meets) or choice (the right option's mean probability among the probe's)"})
    rehearse_epochs: float = field(default=4.0, metadata={"help": "passes of tonight's expert over the rewarded dreams"})
    rehearse_steps: int = field(default=20, metadata={"help": "most steps of tonight's expert on the rewarded dreams"})
    rehearse_batch: int = field(default=4, metadata={"help": "rewarded dreams per rehearsal step"})
    rehearse_learning_rate: float = field(default=5e-4, metadata={"help": "learning rate of the rehearsal"})
    rehearse_reply: str = field(default="answer", metadata={
        "help": "what a rewarded dream is rehearsed with as the reply: answer (the fact it names, alone) or dream "
                "(the sentence the writer wrote)"})
    rehearse_drift: str = field(default="self", metadata={
        "help": "where the rehearsal's drift term holds the expert: text (to the active stack on general text, stage "
                "1's term), chat (to the active stack on general questions asked as the chat asks, KL over the bare "
                "base's reply) or self (to the expert as stage 1 left it, over its own replies to those questions)"})
    rehearse_drift_scale: float = field(default=4.0, metadata={
        "help": "the rehearsal's drift weight as a multiple of distill.drift_weight, whichever the term (0 = none; "
                "4 was measured with self)"})
    writer_rank: int = field(default=8, metadata={"help": "LoRA rank of the dream writer (never in the chat's stack)"})
    writer_steps: int = field(default=8, metadata={"help": "ReST-EM steps of the writer on its rewarded dreams"})
    writer_learning_rate: float = field(
        default=1e-4, metadata={"help": "the writer's learning rate; 0 = an untrained writer (the ReST-EM baseline)"})

    def __post_init__(self):
        _check(isinstance(self.enabled, bool), f"dreaming.enabled must be true or false, got {self.enabled!r}")
        for name in ("dreams", "keep", "max_new_tokens", "inner_steps", "rehearse_steps", "rehearse_batch",
                     "writer_rank", "writer_steps"):
            _check(_positive_int(getattr(self, name)), f"dreaming.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("keep_random", "tau_today", "tau_old"):
            _check(_at_least_zero(getattr(self, name), integer=True),
                   f"dreaming.{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("rehearsal_fraction", "novelty", "min_improvement"):
            _check(_unit(getattr(self, name)), f"dreaming.{name} must be in [0, 1], got {getattr(self, name)!r}")
        _check(isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 2,
               f"dreaming.temperature must be in (0, 2], got {self.temperature!r}")
        for name in ("inner_learning_rate", "rehearse_learning_rate", "rehearse_epochs"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
                   f"dreaming.{name} must be > 0, got {value!r}")
        _check(_at_least_zero(self.rehearse_drift_scale),
               f"dreaming.rehearse_drift_scale must be a number >= 0, got {self.rehearse_drift_scale!r}")
        _check(_at_least_zero(self.writer_learning_rate),
               f"dreaming.writer_learning_rate must be a number >= 0, got {self.writer_learning_rate!r}")
        _check(self.keep + self.keep_random <= self.dreams,
               f"dreaming.keep + dreaming.keep_random ({self.keep + self.keep_random}) must be <= dreaming.dreams ({self.dreams})")
        _check(self.tau_today + self.tau_old > 0, "dreaming.tau_today + dreaming.tau_old must be > 0: the reward needs probes")
        _check(self.reward_probes in REWARD_PROBES,
               f"dreaming.reward_probes must be one of {', '.join(REWARD_PROBES)}, got {self.reward_probes!r}")
        _check(self.reward_measure in REWARD_MEASURES,
               f"dreaming.reward_measure must be one of {', '.join(REWARD_MEASURES)}, got {self.reward_measure!r}")
        _check(self.rehearse_reply in REHEARSE_REPLIES,
               f"dreaming.rehearse_reply must be one of {', '.join(REHEARSE_REPLIES)}, got {self.rehearse_reply!r}")
        _check(self.rehearse_drift in REHEARSE_DRIFTS,
               f"dreaming.rehearse_drift must be one of {', '.join(REHEARSE_DRIFTS)}, got {self.rehearse_drift!r}")


@dataclass
class GateConfig:
    min_gain: float = field(default=0.01, metadata={"help": "today's probe accuracy must rise by at least this"})
    max_old_drop: float = field(default=0.05, metadata={"help": "earlier nights' probe accuracy may fall by at most this"})
    max_drift: float = field(default=0.15, metadata={"help": "mean per-token KL(active || candidate) on held-out general text"})

    def __post_init__(self):
        for name in ("min_gain", "max_old_drop"):
            _check(_unit(getattr(self, name)), f"gate.{name} must be in [0, 1], got {getattr(self, name)!r}")
        _check(self.max_drift > 0, f"gate.max_drift must be > 0, got {self.max_drift!r}")


STAGES = {"load": LoadConfig, "memories": MemoriesConfig, "distill": DistillConfig, "dreaming": DreamingConfig,
          "gate": GateConfig}


@dataclass
class SleepConfig:
    preset: str = "cpu-tiny"
    load: LoadConfig = field(default_factory=LoadConfig)
    memories: MemoriesConfig = field(default_factory=MemoriesConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    dreaming: DreamingConfig = field(default_factory=DreamingConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def as_dict(self) -> dict:
        return asdict(self)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def load_preset(name_or_path: str) -> SleepConfig:
    """A preset by name (`cpu-tiny`), by path to a TOML file, or `auto` (gpu-qlora on CUDA, else cpu-tiny)."""
    if name_or_path == "auto":
        import torch

        name_or_path = "gpu-qlora" if torch.cuda.is_available() else "cpu-tiny"
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PRESETS / f"{name_or_path}.toml"
    if not path.is_file():
        raise SleepConfigError(f"unknown preset {name_or_path!r}: choose one of {', '.join(preset_names())} or give a .toml path")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SleepConfigError(f"{path}: not valid TOML: {err}") from None
    return sleep_config_from_dict(data, preset=path.stem)


def sleep_config_from_dict(data: dict, preset: str = "custom") -> SleepConfig:
    stages = {}
    for stage, values in data.items():
        if stage not in STAGES:
            raise SleepConfigError(f"unknown section [{stage}] (known: {', '.join(STAGES)})")
        cls = STAGES[stage]
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise SleepConfigError(f"unknown key {stage}.{key} (known: {', '.join(sorted(known))})")
        stages[stage] = cls(**values)
    return SleepConfig(preset=preset, **stages)


def with_dreaming(cfg: SleepConfig, choice: str | bool | None) -> SleepConfig:
    """`cfg` with Dreaming switched on or off (`on`/`off`/True/False), or as it is (`preset`/None)."""
    if choice in (None, "preset"):
        return cfg
    enabled = choice in (True, "on")
    return replace(cfg, dreaming=replace(cfg.dreaming, enabled=enabled))
