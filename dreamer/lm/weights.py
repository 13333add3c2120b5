"""The training model: base weights, device plan, and the PEFT adapter stack.

Device plan (chosen automatically, forced by the preset's `[load]`):
- CUDA: the base in 4-bit NF4 through bitsandbytes with bf16 compute (QLoRA);
- CPU: fp32 LoRA (NF4 on a CPU runs, but ~20x slower; bf16 autocast ~30x slower).

Base weights: the configured `train_model` (a Hugging Face directory, or an id already in the
local HF cache: no hub at run time), else the embedded SmolLM2-135M-Instruct GGUF, dequantized
by transformers on first use (~30 s) and cached as safetensors under `DREAMER_HOME/cache`.

The stack: every promoted expert is loaded as its own frozen LoRA adapter (`night1`, `night2`,
...) and tonight's expert (`new`) is the only trainable parameter set. `use_adapters(model,
names)` switches which adapters are active for a forward pass: the teacher runs with the old
stack, the student with the old stack plus `new`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

# A night's log should show dreamer's phases, not per-tensor progress bars. bitsandbytes only
# announces that the optional `kernels` package (which downloads from a hub) is absent; it
# falls back to its own CPU code.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

from agent.models import embedded_gguf_path
from storage.store import pid_alive
from dreamer.lm.chat_tokenizer import align_generation, load_chat_tokenizer
from dreamer.sleep.config import DistillConfig, LoadConfig, SleepConfigError

NEW = "new"
WRITER = "writer"  # Dreaming's dream writer (dreamer.sleep.dreaming.writer): loaded by a night, never in the stack
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_GROUPS = {"all": LLAMA_TARGETS, "mlp": ["gate_proj", "up_proj", "down_proj"],
                 "attention": ["q_proj", "k_proj", "v_proj", "o_proj"]}
EMBEDDED_CACHE = "smollm2-135m-instruct-f32"


class AdapterMismatch(RuntimeError):
    """An adapter on disk was not trained on this base model."""


@dataclass(frozen=True)
class DevicePlan:
    device: str  # cpu | cuda
    quantization: str  # none | nf4
    dtype: torch.dtype  # compute dtype
    threads: int  # torch CPU threads

    def describe(self) -> str:
        quant = "NF4 QLoRA" if self.quantization == "nf4" else "fp32 LoRA" if self.dtype == torch.float32 else "LoRA"
        return f"{self.device}, {quant}, compute {str(self.dtype).removeprefix('torch.')}, {self.threads} CPU threads"

    def apply(self) -> None:
        # Measured on a 2-core machine shared with other work: 2 torch threads made a training
        # step 14x slower than 1 (OpenMP threads spin while waiting for a core).
        torch.set_num_threads(self.threads)


def plan_device(load: LoadConfig) -> DevicePlan:
    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if load.device == "auto" else load.device
    if device == "cuda" and not cuda:
        raise SleepConfigError("load.device = cuda, but torch sees no CUDA GPU: use --preset cpu-tiny")
    quantization = ("nf4" if device == "cuda" else "none") if load.quantization == "auto" else load.quantization
    if device == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32  # bf16 on this class of CPU is ~30x slower than fp32
    threads = load.threads or max(1, len(os.sched_getaffinity(0)) // 2)  # the cores this process may use
    return DevicePlan(device, quantization, dtype, threads)


# --- base weights -----------------------------------------------------------------
def embedded_training_dir(cache_root: Path) -> Path:
    """The embedded GGUF as a regular HF folder (config, tokenizer, safetensors), made once."""
    return dequantized_dir(cache_root / EMBEDDED_CACHE, None)


def gguf_training_dir(cache_root: Path, gguf: Path) -> Path:
    """Any GGUF sleep supports (dreamer.lm.model_files), dequantized once into the cache."""
    from dreamer.lm.model_files import cache_key, gguf_facts, require_sleep_support

    require_sleep_support(gguf_facts(gguf))
    return dequantized_dir(cache_root / f"gguf-{cache_key(gguf)}", Path(gguf))


def dequantized_dir(target: Path, gguf: Path | None) -> Path:
    """`gguf` (None: the embedded model) as an fp32 HF folder at `target`, made once.

    Safe when several processes make it at once (a bench's lanes, a sleep beside `dreamer eval`
    on a fresh home): each writes its own `.partial-PID` folder and renames it into place; the
    one that finds the folder already there drops its copy (the same weights) and uses it.
    """
    if _complete(target):
        drop_gguf_quantization(target / "config.json")  # caches written before this fix
        return target
    for stale in target.parent.glob(f"{target.name}.partial*"):  # left by a killed process
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    write_dequantized(partial, gguf)
    drop_gguf_quantization(partial / "config.json")
    try:
        partial.rename(target)  # a crash mid-way leaves only the .partial folder, removed next time
    except OSError:
        if not _complete(target):
            raise
        shutil.rmtree(partial, ignore_errors=True)  # another process was first
    return target


def write_dequantized(folder: Path, gguf: Path | None = None) -> None:
    """Dequantize `gguf` (default: the embedded GGUF) into `folder` as float32 safetensors with its tokenizer."""
    gguf = Path(gguf) if gguf else embedded_gguf_path()
    # The GGUF-loaded model refuses save_pretrained: copy its dequantized weights into a model
    # built from the same config, and save that.
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "dreamer-source.json").write_text(json.dumps({"gguf": str(gguf)}))


def _complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def drop_gguf_quantization(config_path: Path) -> None:
    """Remove the `quantization_config` the GGUF loader leaves in the config.

    The saved weights are plain float32, but that entry says "gguf", and transformers then refuses
    any other quantization: loading the cache in NF4 for QLoRA failed with "The model is quantized
    with GgufConfig but you are passing a BitsAndBytesConfig" (seen on the first CUDA run).
    """
    config = json.loads(config_path.read_text())
    if (config.get("quantization_config") or {}).get("quant_method") != "gguf":
        return
    del config["quantization_config"]
    partial = config_path.with_name(config_path.name + ".partial")
    partial.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    partial.replace(config_path)  # atomic: a crash leaves the old file, fixed next time


def training_source(train_model: str, cache_root: Path, chat_gguf: Path | str | None = None) -> str:
    """What a night trains on: `train_model` if set (checked against the chat's GGUF when both are
    set), else the chat's GGUF dequantized, else the embedded model dequantized."""
    if train_model:
        if chat_gguf:
            from dreamer.lm.model_files import gguf_facts, same_model

            same_model(gguf_facts(Path(chat_gguf)), Path(train_model).expanduser())
        return train_model
    if chat_gguf:
        return str(gguf_training_dir(cache_root, Path(chat_gguf).expanduser()))
    return str(embedded_training_dir(cache_root))


def load_base(source: str, plan: DevicePlan):
    """(model, tokenizer) of the frozen base, placed and quantized per the plan."""
    plan.apply()
    kwargs = {"dtype": plan.dtype, "local_files_only": True}
    if plan.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=plan.dtype if plan.device == "cuda" else torch.float32,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": 0} if plan.device == "cuda" else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (torch.OutOfMemoryError, MemoryError):
        raise SleepConfigError(
            f"{source} does not fit in memory with this preset: use --preset cpu-tiny or a smaller train_model"
        ) from None
    except OSError as err:
        raise SleepConfigError(f"cannot load training model {source!r} offline: {err}") from None
    if plan.device == "cuda" and plan.quantization == "none":
        model.to("cuda")
    tokenizer = load_chat_tokenizer(source)
    align_generation(model, tokenizer)
    for param in model.parameters():
        param.requires_grad_(False)
    model.config.use_cache = True
    return model, tokenizer


def base_fingerprint(model) -> dict:
    """What an adapter must match: architecture and shapes of the base."""
    cfg = model.config
    return {
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": getattr(cfg, "num_key_value_heads", cfg.num_attention_heads),
    }


# --- the adapter stack -------------------------------------------------------------
def lora_config(model, distill: DistillConfig):
    from peft import LoraConfig

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    wanted = TARGET_GROUPS[distill.targets]
    targets = [t for t in wanted if t in names]
    if not targets and distill.targets == "all" and not names & set(LLAMA_TARGETS):
        targets = "all-linear"  # not a Llama layout: every linear layer
    elif not targets:
        raise ValueError(f"distill.targets = {distill.targets!r}: this model has none of {wanted}; use targets = \"all\"")
    return LoraConfig(
        r=distill.rank, lora_alpha=distill.lora_alpha, lora_dropout=0.0, target_modules=targets,
        bias="none", task_type="CAUSAL_LM",
    )


def check_adapter(path: Path, fingerprint: dict) -> None:
    meta_path = Path(path) / "metadata.json"
    if not meta_path.is_file():
        raise AdapterMismatch(f"{path} has no metadata.json: not an adapter written by dreamer, refused")
    theirs = json.loads(meta_path.read_text()).get("base", {})
    if theirs != fingerprint:
        diff = {k: (theirs.get(k), v) for k, v in fingerprint.items() if theirs.get(k) != v}
        raise AdapterMismatch(f"{path} was trained on another base model (adapter vs base: {diff}); refused")


def build_stack(base, experts: list[Path], distill: DistillConfig | None):
    """PeftModel with each expert frozen (`night<i>`) plus, if `distill`, a trainable `new` one."""
    from peft import PeftModel, get_peft_model

    fingerprint = base_fingerprint(base)
    model = None
    for index, path in enumerate(experts, start=1):
        check_adapter(path, fingerprint)
        name = f"night{index}"
        try:
            if model is None:
                model = PeftModel.from_pretrained(base, str(path), adapter_name=name, is_trainable=False)
            else:
                model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError) as err:  # shape mismatches surface as RuntimeError
            raise AdapterMismatch(f"{path} does not fit the base model: {err}") from None
    if distill is not None:
        if model is None:
            model = get_peft_model(base, lora_config(base, distill), adapter_name=NEW)
        else:
            model.add_adapter(NEW, lora_config(base, distill))
    if model is None:
        return base
    use_adapters(model, stack_names(model))
    return model


def stack_names(model, include_new: bool = True) -> list[str]:
    names = sorted((n for n in getattr(model, "peft_config", {}) if n.startswith("night")), key=lambda n: int(n[5:]))
    if include_new and NEW in getattr(model, "peft_config", {}):
        names.append(NEW)
    return names


def use_adapters(model, names: list[str], trainable: str = NEW) -> None:
    """Activate exactly `names` (all at once); only `trainable` (`new`, or the dream writer while
    it learns) has gradients."""
    if not hasattr(model, "peft_config"):
        return
    model.base_model.set_adapter(names if names else stack_names(model))
    for name, param in model.named_parameters():
        param.requires_grad_(f".{trainable}." in name and "lora_" in name)


@contextmanager
def adapters(model, names: list[str] | None, trainable: str = NEW):
    """Forward passes inside see only `names`; None or [] = the base alone."""
    if not hasattr(model, "peft_config"):
        yield model
        return
    previous = list(model.base_model.active_adapters)
    try:
        if names:
            use_adapters(model, names, trainable)
            yield model
        else:
            with model.disable_adapter():
                yield model
    finally:
        use_adapters(model, previous)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if p.requires_grad]
