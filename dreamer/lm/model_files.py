"""One model file: what a GGUF is, whether sleep can train on it, and its training copy.

The chat runs a GGUF; a night trains on the same model in fp32 (CPU) or NF4 (CUDA). With only
`model` set, the night dequantizes that GGUF once with transformers' GGUF loader into
`DREAMER_HOME/cache/gguf-<key>/` (safetensors, config, tokenizer), as it always did for the
embedded model; the key changes when the file does (path, size, modification time). Sleep
supports the GGUF architectures both that loader and dreamer's export back to llama.cpp handle:
llama (Llama and Mistral GGUFs), qwen2 and qwen3; any other is refused, naming it.

With `train_model` set too, `same_model` checks that the chat's GGUF and the training folder are
one model (vocabulary, width, depth): a night trained on another model would produce experts the
chat cannot apply.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SLEEP_ARCHITECTURES = ("llama", "qwen2", "qwen3")


class ModelFileError(ValueError):
    """A model file is unusable for what was asked; the message names the file and the reason."""


@dataclass(frozen=True)
class GgufFacts:
    path: Path
    architecture: str
    name: str
    vocab: int
    width: int
    layers: int
    parameters: int
    file_type: str
    bytes: int

    @property
    def sleep_supported(self) -> bool:
        return self.architecture in SLEEP_ARCHITECTURES


def gguf_facts(path: Path) -> GgufFacts:
    """Read a GGUF's header (no weights loaded)."""
    from gguf import GGUFReader

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as err:
        raise ModelFileError(f"{path}: not a GGUF model file ({err})") from None

    def field(key: str, default=None):
        found = reader.fields.get(key)
        if found is None:
            return default
        value = found.parts[found.data[0]]
        return bytes(value).decode("utf-8", "replace") if found.types and found.types[0].name == "STRING" \
            else value.tolist()[0]

    arch = field("general.architecture", "?")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    parameters = sum(int(t.n_elements) for t in reader.tensors)
    types = sorted({t.tensor_type.name for t in reader.tensors if len(t.shape) > 1})
    return GgufFacts(path, arch, field("general.name", path.stem), len(tokens.data) if tokens else 0,
                     int(field(f"{arch}.embedding_length", 0)), int(field(f"{arch}.block_count", 0)),
                     parameters, "/".join(types), path.stat().st_size)


def require_sleep_support(facts: GgufFacts) -> None:
    if not facts.sleep_supported:
        raise ModelFileError(
            f"{facts.path}: its architecture is {facts.architecture!r}; sleep trains on "
            f"{', '.join(SLEEP_ARCHITECTURES)} GGUFs only (transformers must load it and dreamer must export "
            "its experts back to llama.cpp)")


def same_model(facts: GgufFacts, hf_folder: Path) -> None:
    """Raise ModelFileError when the training folder is not the chat's GGUF's model."""
    config_file = Path(hf_folder) / "config.json"
    if not config_file.is_file():
        return  # an id in the HF cache: transformers resolves it; nothing local to compare
    config = json.loads(config_file.read_text())
    theirs = {"vocabulary": config.get("vocab_size"), "width": config.get("hidden_size"),
              "layers": config.get("num_hidden_layers")}
    ours = {"vocabulary": facts.vocab, "width": facts.width, "layers": facts.layers}
    differ = [k for k in ours if ours[k] and theirs[k] and ours[k] != theirs[k]]
    if differ:
        raise ModelFileError(
            f"the chat's model {facts.path.name} and train_model {hf_folder} are different models ("
            + ", ".join(f"{k} {ours[k]} vs {theirs[k]}" for k in differ)
            + "): set train_model to the same model, or leave it empty to train on the GGUF itself")


def cache_key(path: Path) -> str:
    """Changes when the file does: its resolved path, size and modification time."""
    stat = Path(path).stat()
    return hashlib.sha256(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
