"""A night of sleep as an ordered list of stages over one `Night`.

    STAGES = [load, teach, distil, dream, gate, report, promote]

Each stage is a function of the `Night`: it reads what the stages before it left there and adds
its own part. A stage that ends the night early (the gate said no) sets `night.outcome`.
1. load: the device plan, the base (NF4 on CUDA, fp32 on CPU), every promoted expert frozen
   (on an unquantized base merged into its weights, `[load] merge_stack`: the same model, and a
   training step that does not grow with the nights; the bare base answers the general prompts
   first), and tonight's new expert, the only trainable parameters.
2. teach: the teacher (the active stack with the day in its prompt) writes training prompts,
   answers, memories, cloze prompts and held-out probes (dreamer.sleep.seeding.memories);
   earlier nights' probes become replay; the bare base answers the general prompts, which
   become the anchor and the drift term's texts.
3. distil: generalized distillation into the new expert (dreamer.sleep.seeding.distill).
4. dream: with `[dreaming] enabled`, stage 2 (dreamer.sleep.dreaming): dreams written, scored
   on throwaway copies, the writer trained on the rewarded ones, which are rehearsed into the
   same expert; off, it does nothing at all.
5. gate: the candidate against the active stack (dreamer.sleep.gate); the probes are kept.
6. report: the metrics and the morning report; a rejected night is recorded and ends here.
7. promote: the expert (and the dream writer, if it learned) saved and exported; with deep sleep
   on (config.toml `fold`), the active experts and tonight's folded into the chat's GGUF
   (dreamer.morning.fold), all before anything changes; then renamed into place, promoted in one
   transaction with the turns and the run, and the manifest rewritten (Ctrl-C and SIGTERM wait
   meanwhile); folded models of older stacks are removed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from agent.memory import system_message
from dreamer.lm.generation import sample_many
from dreamer.lm.weights import base_fingerprint, build_stack, load_base, plan_device, stack_names, training_source
from dreamer.morning import stack as stack_files
from dreamer.morning.export_gguf import base_config_summary, check_exportable, export_expert
from dreamer.morning.fold import chat_model_to_fold, fold_stack, remove_stale, resolve_fold_type
from dreamer.sleep import gate as gate_stage
from dreamer.sleep.config import ASSETS, SleepConfig
from dreamer.sleep.estimate import model_identity
from dreamer.sleep.lock import signals_deferred
from dreamer.sleep.outcome import SleepOutcome
from dreamer.sleep.report import morning_report, peak_memory_mb
from dreamer.sleep.seeding.distill import distill
from dreamer.sleep.seeding.memories import TEACHER_BATCHES, Example, write_memories
from dreamer.sleep.seeding.rewards import SemanticJudge
from storage import Config, Store, StoreError, ledger
from storage.paths import adapters_dir, cache_dir
from storage.words import count


class PhaseClock:
    """Each phase's progress bar, and the wall time of each phase once the next one begins."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def begin(self, name: str, total: int | None) -> Callable:
        now = time.monotonic()
        if self._current:
            self.seconds[self._current[0]] = round(now - self._current[1], 1)
        self._current = (name, now)
        return self.progress.phase(name, total)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)


@dataclass
class Night:
    """Everything one night knows: what it was given, then what each stage adds."""

    store: Store
    config: Config
    cfg: SleepConfig
    home: Path
    conversations: list[dict]
    days: list[str]
    message_ids: list[int]
    run_id: int
    clock: PhaseClock
    judge: object = None
    on_step: Callable | None = None
    rng: random.Random = field(init=False)
    # load
    plan: object = None
    source: str = ""
    base: object = None
    tokenizer: object = None
    base_config: dict = field(default_factory=dict)
    model: object = None
    stack: list[str] = field(default_factory=list)  # the earlier experts as adapters ([] once merged)
    general_answers: list | None = None  # the bare base's answers, kept when load merged the stack in
    merged_experts: int = 0
    # teach
    base_system: str = ""
    memories: object = None
    replay_rows: list[dict] = field(default_factory=list)
    replay: list[Example] = field(default_factory=list)
    anchor: list[Example] = field(default_factory=list)
    general_texts: list[str] = field(default_factory=list)
    # distil, dream, gate, report
    log: object = None
    dreams: object = None  # dreamer.sleep.dreaming.stage.DreamResult when Dreaming ran
    gate_probes: list[dict] = field(default_factory=list)  # today's probes the gate uses
    figures: dict = field(default_factory=dict)
    decision: object = None
    number: int | None = None  # the night this one becomes if the gate passes
    metrics: dict = field(default_factory=dict)
    report: str = ""
    outcome: SleepOutcome | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.cfg.load.seed)

    @property
    def root(self) -> Path:
        return adapters_dir(self.home)


def load(night: Night) -> None:
    torch.manual_seed(night.cfg.load.seed)
    advance = night.clock.begin("load model", 1)
    night.plan = plan_device(night.cfg.load)
    night.source = training_source(night.config.train_model, cache_dir(night.home), night.config.model_path())
    night.base, night.tokenizer = load_base(night.source, night.plan)
    night.base_config = base_config_summary(night.base)
    check_exportable(night.base_config)  # before hours of training, not after: the chat needs the GGUF
    check_foldable(night.config)
    experts = stack_files.active_paths(night.store)
    if experts and merges_stack(night):
        # The bare base answers the general prompts (the anchor) before its weights take the stack in.
        night.general_answers = general_answers(night.base, night.tokenizer, night.cfg.memories.max_new_tokens)
        night.base = build_stack(night.base, experts, None).merge_and_unload()
        night.merged_experts = len(experts)
        experts = []
    night.model = build_stack(night.base, experts, night.cfg.distill)
    night.stack = stack_names(night.model, include_new=False)
    advance()


def check_foldable(config) -> None:
    """A `fold_type = "grid"` the chat model's tensors cannot take stops the night before it trains."""
    from dreamer.morning.grid_fold import GRID

    chat_model = chat_model_to_fold(config) if config.fold_type == GRID else None
    if chat_model is not None:
        resolve_fold_type(GRID, chat_model)


def merges_stack(night: Night) -> bool:
    """Whether the earlier experts are merged into the training weights (LoadConfig.merge_stack):
    exact up to float rounding on an unquantized base; quantized to NF4 again the merge erases the
    nights (benchmarks/nf4_merge.py), so an NF4 base keeps them as adapters; and Dreaming's
    novelty drops one expert at a time, which a merged stack cannot."""
    dreaming = night.cfg.dreaming
    return (night.cfg.load.merge_stack and night.plan.quantization == "none"
            and not (dreaming.enabled and dreaming.novelty > 0))


def general_prompts() -> list[list[dict]]:
    return [[{"role": "user", "content": json.loads(line)["prompt"]}]
            for line in (ASSETS / "general_prompts.jsonl").read_text().splitlines() if line.strip()]


def general_answers(model, tokenizer, max_new_tokens: int) -> list[list[str]]:
    """The bare base's greedy answers to assets/general_prompts.jsonl: the anchor and the drift texts."""
    return sample_many(model, tokenizer, general_prompts(), None, n=1, max_new_tokens=max_new_tokens, temperature=None)


def teach(night: Night) -> None:
    advance = night.clock.begin("teacher writes memories", TEACHER_BATCHES)
    night.base_system = system_message(night.config, date.fromisoformat(night.days[-1]))
    night.memories = write_memories(night.model, night.tokenizer, night.conversations, day=night.days[-1],
                                    base_system=night.base_system, stack=night.stack, cfg=night.cfg.memories,
                                    rng=night.rng, progress=advance)
    night.gate_probes = night.memories.probes  # Dreaming may hold some out for its reward
    closed = [{"role": "system", "content": night.base_system}]
    night.replay_rows = ledger.replay_probes(night.store)
    night.replay = [Example("replay", closed + [{"role": "user", "content": p["question"]}],
                            closed + [{"role": "user", "content": p["question"]}], night.stack or None, [p["answer"]])
                    for p in night.replay_rows]
    general = general_prompts()
    answers = night.general_answers or general_answers(night.model, night.tokenizer,
                                                       night.cfg.memories.max_new_tokens)  # the bare base
    night.anchor = [Example("anchor", user, user, None, answer) for user, answer in zip(general, answers) if answer[0]]
    # The drift term's plain texts: general questions with the base's own answers.
    night.general_texts = [f"{user[0]['content']}\n\n{answer[0]}" for user, answer in zip(general, answers)
                           if answer[0]]
    if night.cfg.distill.drift_weight > 0 and not night.general_texts:  # a failure to say, not a term to skip
        raise RuntimeError("the base answered none of assets/general_prompts.jsonl, so the drift term has no text; "
                           "set [distill] drift_weight = 0 to sleep without it")


def distil(night: Night) -> None:
    cfg = night.cfg.distill
    advance = night.clock.begin("distil into a new expert", cfg.steps)
    needs_judge = cfg.alpha < 1 and cfg.gamma > 0
    judge = night.judge or (SemanticJudge() if needs_judge else None)

    def step_hook(step, info):
        advance()
        if night.on_step:
            night.on_step(step, info)

    memories = night.memories
    night.log = distill(night.model, night.tokenizer, today=memories.examples, replay=night.replay,
                        anchor=night.anchor, documents=memories.documents, clozes=memories.clozes,
                        general_texts=night.general_texts, stack=night.stack, cfg=cfg,
                        max_len=night.cfg.load.max_seq_len, judge=judge, rng=night.rng, on_step=step_hook)


def dream(night: Night) -> None:
    if not night.cfg.dreaming.enabled:
        return
    from dreamer.sleep.dreaming.stage import dream as dream_stage, split_probes

    held, night.gate_probes = split_probes(night.memories.probes, night.cfg.dreaming.tau_today, night.rng)
    night.dreams = dream_stage(night.model, night.tokenizer, conversations=night.conversations,
                               base_system=night.base_system, stack=night.stack,
                               experts=stack_files.active_paths(night.store), tau_today=held,
                               old_probes=night.replay_rows, general_texts=night.general_texts, cfg=night.cfg,
                               rng=night.rng, begin=night.clock.begin,
                               general_turns=[(e.student[-1]["content"], e.samples[0]) for e in night.anchor])


def gate(night: Night) -> None:
    advance = night.clock.begin("gate", 1)
    # Saved first, so each probe has its id for the gate's per-fact checks (kept if the night is promoted).
    for probe, probe_id in zip(night.memories.probes, ledger.save_probes(night.store, night.run_id,
                                                                         night.memories.probes)):
        probe["id"] = probe_id
    night.figures = gate_stage.measure(night.model, night.tokenizer, night.stack, night.gate_probes,
                                       night.replay_rows, night.cfg.load.max_seq_len, system=night.base_system)
    night.decision = gate_stage.decide(night.figures, night.cfg.gate)
    advance()


def earlier_reward_rates(store: Store) -> list[dict]:
    """The dream reward rate of earlier runs that dreamed, oldest first."""
    return [{"run": row["id"], "day": row["day"], "status": row["status"],
             "reward_rate": row["metrics"]["dreaming"]["reward_rate"],
             "tau_measure": row["metrics"]["dreaming"].get("tau_measure", "choice")}  # none: from before "asked"
            for row in ledger.finished_runs(store)
            if (row["metrics"].get("dreaming") or {}).get("reward_rate") is not None]


def report(night: Night) -> None:
    night.clock.begin("report", None)
    passed = night.decision.passed
    night.number = ledger.next_night(night.store) if passed else None  # stable: the sleep lock is held
    night.metrics = {
        "phase_seconds": night.clock.seconds,
        "gate": {k: v for k, v in night.figures.items() if not k.startswith("replies") and k != "checks"},
        "training": night.log.summary(), "counts": night.memories.counts, "plan": night.plan.describe(),
        "peak_memory_mb": round(peak_memory_mb(), 1), "seconds": night.clock.elapsed(), "days": night.days,
        "merged_experts": night.merged_experts,
        "model": model_identity(night.config),  # which model's nights an estimate may learn from
    }
    if night.dreams is not None:
        night.metrics["dreaming"] = night.dreams.summary()
    status = "promoted" if passed else "rejected"
    night.report = morning_report(
        night=night.number, days=night.days, status=status, reasons=night.decision.reasons, plan=night.plan.describe(),
        preset=night.cfg.preset, counts=night.memories.counts, gate=night.figures, probes=night.gate_probes,
        training=night.log.summary(), seconds=night.metrics["seconds"],
        peak_memory_mb=night.metrics["peak_memory_mb"], phases=night.clock.seconds,
        dreams=night.metrics.get("dreaming"), earlier_dreams=earlier_reward_rates(night.store) if night.dreams else None)
    if not passed:
        reason = "; ".join(night.decision.reasons)
        ledger.finish_run(night.store, night.run_id, status, reason=reason, report=night.report, metrics=night.metrics)
        night.outcome = SleepOutcome(status, f"rejected by the gate: {reason}; the conversations wait for the next "
                                             "night", night.run_id, night.report, night.metrics)


def promote(night: Night) -> None:
    advance = night.clock.progress.phase("save and promote", 1)
    number, metrics, cfg = night.number, night.metrics, night.cfg
    candidate = stack_files.save_candidate(night.model, stack_files.candidate_dir(night.root, night.run_id), {
        "base": base_fingerprint(night.base), "base_config": night.base_config, "base_source": night.source,
        "days": night.days, "night": number, "run_id": night.run_id,
        "rank": cfg.distill.rank, "lora_alpha": cfg.distill.lora_alpha, "metrics": metrics,
        "config": cfg.as_dict(), "conversation_ids": [c["conversation_id"] for c in night.conversations],
    })
    if night.dreams is not None and night.dreams.writer_learned:
        from dreamer.sleep.dreaming.writer import save_writer

        save_writer(night.model, candidate)  # renamed, promoted and rolled back with tonight's expert
    export_started = time.monotonic()
    exported = export_expert(candidate, base_config=night.base_config)  # a failure fails the night: nothing changes
    metrics["export_seconds"] = round(time.monotonic() - export_started, 2)
    earlier = [str(p) for p in stack_files.active_paths(night.store)]
    folded = fold_tonight(night, candidate, earlier)  # a failure fails the night: the old memory serves
    with signals_deferred():  # rename, commit and manifest: whole, or (SIGKILL) repaired at the next start
        final = stack_files.place_expert(candidate, night.root, night.run_id)
        adapter = {"night": number, "day": night.days[-1], "path": str(final), "gguf_path": str(final / exported.name),
                   "metrics": json.dumps(metrics, default=str), "config": json.dumps(cfg.as_dict())}
        try:
            ledger.promote(night.store, night.run_id, adapter, night.message_ids,
                           reason="; ".join(night.decision.reasons), report=night.report, metrics=metrics)
        except BaseException:
            stack_files.discard(final)  # the database said no: leave no orphan expert behind
            raise
        try:
            stack_files.write_manifest(night.store, night.root)
        except OSError as err:  # the promotion is committed: say so, and how to repair, rather than "failed"
            warning = (f"night {number} is promoted but the stack manifest could not be written ({err}): a running "
                       f"chat keeps its old memory until the next dreamer command rewrites it")
            night.report += f"\n\n**Warning:** {warning}"
            try:
                ledger.set_report(night.store, night.run_id, night.report)
            except StoreError:  # the same full disk: the night is promoted all the same, and says so below
                pass
        # The chat moves to tonight's fold: keep it and the one before (a quick rollback); none if off.
        try:
            remove_stale(night.home, keep=[earlier + [str(final)], earlier] if folded is not None else [])
        except OSError:  # a clean-up: the night is promoted, and the next promotion tries again
            pass
    try:  # the Memory screen's figures: a cache, so a failure to write them cannot fail a promoted night
        ledger.save_checks(night.store, night.figures.get("checks", []))
    except StoreError:
        pass
    advance()
    night.outcome = SleepOutcome("promoted", f"night {number} promoted: learned {count(len(night.message_ids), 'message')}",
                                 night.run_id, night.report, metrics)


def fold_tonight(night: Night, candidate: Path, earlier: list[str]):
    """Deep sleep: the active experts and tonight's folded into the chat's model, before the
    promotion (dreamer.morning.fold); None when folding is off."""
    chat_model = chat_model_to_fold(night.config)
    if chat_model is None:
        return None
    final = stack_files.expert_dir(night.root, night.run_id)
    folded = fold_stack(night.home, chat_model, [Path(p) for p in earlier] + [candidate],
                        [Path(p) for p in earlier] + [final], qtype=night.config.fold_type)
    night.metrics["fold"] = {"seconds": round(folded.seconds, 2), "mib": round(folded.bytes / 2**20, 1),
                             "type": folded.qtype, "experts": len(earlier) + 1}
    return folded


STAGES = [load, teach, distil, dream, gate, report, promote]


def run_stages(night: Night) -> SleepOutcome:
    for stage in STAGES:
        stage(night)
        if night.outcome is not None:
            return night.outcome
    raise RuntimeError("the night's stages ended without an outcome")
