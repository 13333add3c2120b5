"""Export a PEFT LoRA expert to a llama.cpp LoRA adapter GGUF.

    dreamer memory --export          # (re-)export every expert of the active stack

The chat runs on llama.cpp, which reads LoRA adapters in its own GGUF layout:

    general.architecture = <the base's llama.cpp arch>   e.g. "llama"
    general.type         = "adapter"
    adapter.type         = "lora"
    adapter.lora.alpha   = lora_alpha (float32); llama.cpp scales by alpha / rank, as PEFT does
    blk.<i>.attn_q.weight.lora_a   [r, in]   (PEFT's lora_A, as stored)
    blk.<i>.attn_q.weight.lora_b   [out, r]  (PEFT's lora_B, as stored)

Hugging Face module names map to llama.cpp's tensor names through the `gguf` package's own
name table. For the llama architecture the HF->GGUF conversion permutes the rows of q_proj and
k_proj (rotary halves interleaved); since delta W = B @ A, the same permutation of B's rows
keeps the adapter aligned with the converted base.

Refused with `ExportError`, because llama.cpp cannot represent them: DoRA, `modules_to_save`,
LoRA biases, per-module rank or alpha patterns, embeddings or `lm_head` (tied or not), and any
module outside the attention and MLP projections.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

# HF model class -> (llama.cpp architecture, permute q/k rows like convert_hf_to_gguf's LlamaModel)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_CONFIG_KEYS = ("architectures", "model_type", "num_attention_heads", "num_key_value_heads",
                    "num_hidden_layers", "tie_word_embeddings")


class ExportError(ValueError):
    """The adapter cannot be written for llama.cpp; the message says why."""


def base_config_summary(model) -> dict:
    """The few base-model fields the export needs, kept in each expert's metadata.json."""
    summary = {key: model.config.to_dict().get(key) for key in BASE_CONFIG_KEYS}
    # A model built from a config (not loaded from a folder) has no `architectures` yet.
    summary["architectures"] = summary["architectures"] or [type(model).__name__]
    return summary


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q/k: per head, interleave the two rotary halves."""
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def check_adapter_config(adapter_config: dict) -> None:
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"only LoRA adapters can be exported, not {adapter_config.get('peft_type')}")
    refusals = {
        "use_dora": "DoRA (use_dora=true) has a magnitude vector llama.cpp does not apply",
        "modules_to_save": "modules_to_save trains whole modules, which a LoRA GGUF cannot hold",
        "rank_pattern": "per-module ranks (rank_pattern) are not supported",
        "alpha_pattern": "per-module alphas (alpha_pattern) are not supported: llama.cpp has one alpha",
        "fan_in_fan_out": "fan_in_fan_out (Conv1D) layers are not supported",
    }
    for key, why in refusals.items():
        if adapter_config.get(key):
            raise ExportError(why)
    if adapter_config.get("bias", "none") != "none":
        raise ExportError(f"LoRA biases (bias={adapter_config['bias']!r}) cannot be exported to llama.cpp")


def _module_of(key: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' -> (HF weight name, 'a')."""
    for part, side in ((".lora_A.weight", "a"), (".lora_B.weight", "b")):
        if key.endswith(part):
            return key.removeprefix("base_model.model.")[: -len(part)] + ".weight", side
    raise ExportError(f"unexpected tensor {key!r}: only lora_A/lora_B weights can be exported "
                      "(lora_embedding_*, magnitude vectors and biases cannot)")


def check_exportable(base_config: dict) -> None:
    """Refuse a base whose adapters llama.cpp could not load, before any training."""
    architecture = (base_config.get("architectures") or ["?"])[0]
    if architecture not in ARCHITECTURES:
        raise ExportError(f"base architecture {architecture} is not supported by the llama.cpp exporter "
                          f"(supported: {', '.join(ARCHITECTURES)}); choose another train_model")


def convert(tensors: dict[str, np.ndarray], adapter_config: dict, base_config: dict) -> tuple[str, float, dict]:
    """PEFT state dict -> (llama.cpp arch, alpha, {gguf tensor name: float32 array})."""
    import gguf

    check_adapter_config(adapter_config)
    check_exportable(base_config)
    arch_name, permute = ARCHITECTURES[base_config["architectures"][0]]
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)
    names = gguf.get_tensor_name_map(arch, int(base_config["num_hidden_layers"]))
    n_head = int(base_config["num_attention_heads"])
    n_head_kv = int(base_config.get("num_key_value_heads") or n_head)

    out: dict[str, np.ndarray] = {}
    ranks = set()
    for key in sorted(tensors):
        hf_name, side = _module_of(key)
        module = hf_name.split(".")[-2]
        if module in ("embed_tokens", "lm_head") or module not in PROJECTIONS:
            raise ExportError(f"LoRA on {hf_name.removesuffix('.weight')} cannot be exported: llama.cpp adapters "
                              f"here cover only the projections {', '.join(PROJECTIONS)}")
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ExportError(f"no llama.cpp tensor for {hf_name}")
        weight = np.ascontiguousarray(tensors[key], dtype=np.float32)
        if weight.ndim != 2:
            raise ExportError(f"{key} has shape {weight.shape}; LoRA matrices are 2-D")
        if side == "b" and permute and module in ("q_proj", "k_proj"):
            weight = permute_rows(weight, n_head if module == "q_proj" else n_head_kv)
        ranks.add(weight.shape[0] if side == "a" else weight.shape[1])
        out[f"{gguf_name}.lora_{side}"] = weight
    if not out:
        raise ExportError("the adapter has no LoRA tensors")
    for name in out:
        partner = name[:-1] + ("b" if name.endswith("a") else "a")
        if partner not in out:
            raise ExportError(f"{name} has no matching {partner}")
    if len(ranks) != 1:
        raise ExportError(f"mixed ranks {sorted(ranks)}: llama.cpp applies one alpha/rank scale per adapter")
    rank = ranks.pop()
    alpha = float(adapter_config.get("lora_alpha") or rank)
    if adapter_config.get("use_rslora"):
        alpha *= math.sqrt(rank)  # rsLoRA scales by alpha/sqrt(r); llama.cpp divides by r
    return arch_name, alpha, out


def write_gguf(path: Path, arch_name: str, alpha: float, tensors: dict[str, np.ndarray], name: str = "") -> Path:
    """Write atomically: a half-written adapter must never be picked up by the chat."""
    import gguf

    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(temporary), arch_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    if name:
        writer.add_name(name)
    for tensor_name, array in tensors.items():
        writer.add_tensor(tensor_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.chmod(temporary, 0o600)  # the user's memories, like every file in DREAMER_HOME
    os.replace(temporary, path)
    return path


def read_peft(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from safetensors.torch import load_file

    directory = Path(directory)
    config_file, weights = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    for needed in (config_file, weights):
        if not needed.exists():
            raise ExportError(f"{directory} is not a PEFT adapter folder: {needed.name} is missing")
    state = load_file(str(weights))
    return json.loads(config_file.read_text()), {k: v.float().cpu().numpy() for k, v in state.items()}


def base_config_from_metadata(directory: Path) -> dict:
    """metadata.json's base_config; for experts saved before it existed, the base's config.json."""
    metadata_file = directory / "metadata.json"
    metadata = json.loads(metadata_file.read_text()) if metadata_file.exists() else {}
    if metadata.get("base_config"):
        return metadata["base_config"]
    source = Path(str(metadata.get("base_source", ""))) / "config.json"
    if not metadata.get("base_source") or not source.is_file():
        raise ExportError(f"{directory}: metadata.json has neither base_config nor a base_source folder with a "
                          "config.json; cannot tell the base's layout")
    config = json.loads(source.read_text())
    summary = {key: config.get(key) for key in BASE_CONFIG_KEYS}
    metadata["base_config"] = summary  # so the next export needs no base folder
    metadata_file.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    return summary


def export_expert(directory: Path, out: Path | None = None, base_config: dict | None = None) -> Path:
    """Convert one expert folder; the base config comes from its metadata.json unless given."""
    directory = Path(directory)
    if base_config is None:
        base_config = base_config_from_metadata(directory)
    adapter_config, tensors = read_peft(directory)
    arch_name, alpha, converted = convert(tensors, adapter_config, base_config)
    return write_gguf(out or directory / "adapter.gguf", arch_name, alpha, converted, name=directory.name)
