"""User configuration: `DREAMER_HOME/config.toml`, every key optional.

```toml
model = "~/models/my-model.gguf"   # GGUF for chat (default: embedded SmolLM2-135M-Instruct)
train_model = "HuggingFaceTB/SmolLM2-360M-Instruct"  # HF dir or id for sleep training
day_boundary = "04:00"             # a chat at 01:30 belongs to the previous day
sleep_time = "03:00"               # the nightly sleep (dreamer daemon, or the chat if scheduler_in_chat)
```

Unknown keys and out-of-range values are refused with an error naming the key, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from storage.days import parse_boundary
from storage.paths import config_path, make_private

MIN_MESSAGE_TOKENS = 16  # below this a cut message is only the cut mark
FOLD_TYPES = ("auto", "Q8_0", "grid", "Q5_1", "F16", "Q4_1")
KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}

DEFAULT_SYSTEM_PROMPT = (
    "You are dreamer, a personal assistant that runs privately on the user's own computer. "
    "You remember what the user tells you: during the day from the conversation, and at night "
    "you sleep and learn it for good. Answer helpfully and briefly."
)


class ConfigError(ValueError):
    """A config file or value is wrong; the message names the key."""


@dataclass
class Config:
    model: str = field(default="", metadata={"help": "GGUF file for chat; empty = embedded SmolLM2-135M-Instruct"})
    train_model: str = field(
        default="", metadata={"help": "Hugging Face model dir or id for sleep training; empty = the embedded GGUF, dequantized"}
    )
    day_boundary: str = field(default="04:00", metadata={"help": "local time (HH:MM) at which a new day starts"})
    n_ctx: int = field(default=4096, metadata={"help": "context window of the chat model, tokens"})
    max_reply_tokens: int = field(default=512, metadata={"help": "longest reply, tokens"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature for chat (0 = greedy)"})
    top_p: float = field(default=0.95, metadata={"help": "chat sampling: the smallest set of tokens holding this much probability"})
    min_p: float = field(default=0.05, metadata={"help": "chat sampling: drop tokens below this fraction of the likeliest one's probability"})
    repeat_penalty: float = field(default=1.1, metadata={
        "help": "chat sampling: above 1 makes tokens already in the last 64 less likely (1 = off; 1.1 chosen by "
                "measurement, docs/BENCHMARKS.md \"Chat sampling\")"})
    memory_token_budget: int = field(
        default=768, metadata={"help": "tokens of earlier turns from today recalled into the prompt"}
    )
    max_message_tokens: int = field(
        default=1024, metadata={"help": "a longer message is stored whole but truncated in the prompt"}
    )
    chat_runtime: str = field(
        default="llama", metadata={"help": "llama (llama.cpp on the GGUF `model`) or transformers (train_model, PEFT stack)"}
    )
    n_threads: int = field(default=0, metadata={
        "help": "CPU threads for llama.cpp; 0 = auto: all cores but one, or the half a running sleep leaves free"})
    system_prompt: str = field(default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "what the agent is told it is"})
    sleep_time: str = field(default="03:00", metadata={"help": "local time (HH:MM) of the nightly sleep"})
    sleep_preset: str = field(
        default="auto", metadata={"help": "preset of scheduled sleeps: auto (gpu-qlora on CUDA, else cpu-tiny), a name or a .toml path"}
    )
    dreaming: str = field(
        default="preset", metadata={"help": "Dreaming, sleep's stage 2: preset (as the sleep preset sets it), on or off"}
    )
    sleep_quiet_minutes: int = field(
        default=30, metadata={"help": "a scheduled sleep waits until the chat has been quiet this long"}
    )
    sleep_max_wait_minutes: int = field(
        default=360, metadata={"help": "a scheduled sleep that waited this long for quiet gives up until the next night"}
    )
    fold: bool = field(default=True, metadata={
        "help": "deep sleep: each promotion folds the active experts into one chat GGUF (false: the chat applies "
                "them as LoRA adapters, slower with every night)"})
    fold_type: str = field(default="auto", metadata={
        "help": "how the folded weights are stored: auto (grid where the chat model's projections are Q4_0, Q4_1 "
                "or Q8_0, else Q8_0), grid (the chat model's own grid: its size and decode speed, with some noise), "
                "Q8_0 (keeps the nights; a third bigger and slower to decode than a 4-bit model), Q5_1, F16, or "
                "Q4_1 (erases the nights) (docs/BENCHMARKS.md, \"Deep sleep\")"})
    scheduler_in_chat: bool = field(
        default=False, metadata={"help": "`dreamer chat` runs the nightly scheduler itself (no daemon needed)"}
    )

    def __post_init__(self) -> None:
        for spec in fields(self):  # TOML gives the types; a wrong one is named, never coerced or crashed on
            kind = {"str": str, "int": int, "float": float, "bool": bool}[spec.type]
            value = getattr(self, spec.name)
            accepted = (int, float) if kind is float else kind  # 1 is a fine temperature
            if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
                raise ConfigError(f"{spec.name} must be {KINDS[kind]}, got {value!r}")
        try:
            parse_boundary(self.day_boundary)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        positive = ("n_ctx", "max_reply_tokens", "memory_token_budget", "max_message_tokens")
        for name in positive:
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        try:
            parse_boundary(self.sleep_time, "sleep_time")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for name in ("sleep_quiet_minutes", "sleep_max_wait_minutes"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.dreaming not in ("preset", "on", "off"):
            raise ConfigError(f"dreaming must be preset, on or off, got {self.dreaming!r}")
        if self.fold_type not in FOLD_TYPES:
            raise ConfigError(f"fold_type must be one of {', '.join(FOLD_TYPES)}, got {self.fold_type!r}")
        if self.chat_runtime not in ("llama", "transformers"):
            raise ConfigError(f"chat_runtime must be llama or transformers, got {self.chat_runtime!r}")
        if self.n_threads < 0:
            raise ConfigError(f"n_threads must be an integer >= 0, got {self.n_threads!r}")
        if not 0 <= self.temperature <= 2:
            raise ConfigError(f"temperature must be in [0, 2], got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not 0 <= self.min_p < 1:
            raise ConfigError(f"min_p must be in [0, 1), got {self.min_p!r}")
        if not 1 <= self.repeat_penalty <= 2:
            raise ConfigError(f"repeat_penalty must be in [1, 2], got {self.repeat_penalty!r}")
        if self.max_message_tokens < MIN_MESSAGE_TOKENS:
            raise ConfigError(f"max_message_tokens must be at least {MIN_MESSAGE_TOKENS}, got {self.max_message_tokens}")
        if not self.system_prompt.strip():
            raise ConfigError("system_prompt must not be empty")
        if self.memory_token_budget + self.max_reply_tokens >= self.n_ctx:
            raise ConfigError(
                f"memory_token_budget + max_reply_tokens ({self.memory_token_budget + self.max_reply_tokens}) "
                f"must leave room in n_ctx ({self.n_ctx})"
            )

    @property
    def boundary(self):
        return parse_boundary(self.day_boundary)

    def sampling(self) -> dict:
        """The chat's sampling arguments, as `ChatRuntime.stream` takes them."""
        return {"temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p,
                "repeat_penalty": self.repeat_penalty}

    def model_path(self) -> Path | None:
        """The configured chat GGUF, or None for the embedded default."""
        return Path(os.path.expanduser(self.model)) if self.model else None

    def as_dict(self) -> dict:
        return asdict(self)


def load_config(path: Path | None = None) -> Config:
    """Read the config file (missing file = all defaults); unknown keys are errors."""
    path = path or config_path()
    if not path.exists():
        return Config()
    if os.access(path, os.W_OK):
        make_private(path)  # it names the user's models and prompt: 0600 like everything in DREAMER_HOME
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})")
    try:
        return Config(**data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
