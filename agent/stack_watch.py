"""`StackWatcher`: keep what the chat runtime serves equal to the manifest the sleep writes.

The sleep (after a promotion) and `dreamer rollback` rewrite `adapters/manifest.json`
atomically. The chat polls it (a `stat` first, so polling costs nothing while it is
unchanged) and, between replies, hands the runtime what the manifest's `served` entry names: the
folded model (`runtime.load_model`, deep sleep) with no adapter, or the configured model with
the whole stack as adapters (`runtime.load_adapters`). Either it is swapped in completely or the
runtime keeps the old memory (a model swapped before adapters failed is swapped back). A manifest that failed to load
is not retried until it changes again, so the user is told once, not every two seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.models import ModelError
from agent.runtime import Adapter
from storage.manifest import manifest_path, read_manifest


@dataclass(frozen=True)
class Swap:
    """What a successful swap did, for the status bar and the notification."""

    label: str  # "night 3", or "none yet" for the base alone
    message: str | None  # "memory updated: night 3", "memory rolled back: night 1"; None: nothing to say


def served_model(manifest: dict, runtime) -> Path | None:
    """The folded GGUF to serve, or None for adapters on the configured model: a runtime that
    reads PEFT folders, or one on another model than the fold was made from, applies adapters."""
    served = manifest.get("served") or {}
    if not served.get("model") or getattr(runtime, "adapter_format", "gguf") != "gguf":
        return None
    if served.get("source") != str(getattr(runtime, "base_path", "")):
        return None
    return Path(served["model"])


def label_of(manifest: dict) -> str:
    return f"night {manifest['night']}" if manifest["experts"] else "none yet"


def adapters_for(manifest: dict, adapter_format: str) -> list[Adapter]:
    """The runtime's adapter files: llama.cpp GGUFs, or PEFT folders for the transformers runtime."""
    adapters = []
    for expert in manifest["experts"]:
        path = expert.get("gguf_path") if adapter_format == "gguf" else expert.get("path")
        if not path:
            raise ModelError(f"night {expert['night']} has no llama.cpp export: run `dreamer memory --export`")
        adapters.append(Adapter(Path(path), float(expert.get("scale", 1.0))))
    return adapters


class StackWatcher:
    def __init__(self, runtime, home: Path) -> None:
        self.runtime = runtime
        self.home = Path(home)
        self.loaded: dict | None = None  # the manifest now in the runtime; None before the first load
        self._stamp: tuple | None = ("never checked",)

    @property
    def label(self) -> str | None:
        return label_of(self.loaded) if self.loaded is not None else None

    def pending(self) -> dict | None:
        """The manifest, if it names another stack than the loaded one (ManifestError if unreadable)."""
        try:
            status = os.stat(manifest_path(self.home))
            stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:  # unchanged since the last look, whether that load worked or not
            return None
        self._stamp = stamp
        manifest = read_manifest(self.home)
        if self.loaded is not None and manifest["version"] == self.loaded["version"] \
                and manifest.get("served") == self.loaded.get("served"):  # the same stack, served the same way
            return None
        return manifest

    def apply(self, manifest: dict) -> Swap:
        """Load `manifest`'s whole stack; on failure the runtime keeps the old one (ModelError)."""
        model = served_model(manifest, self.runtime)
        adapters = [] if model else adapters_for(manifest, getattr(self.runtime, "adapter_format", "gguf"))
        swaps_models = hasattr(self.runtime, "load_model")
        previous = (getattr(self.runtime, "model_path", None), list(getattr(self.runtime, "adapters", [])))
        if swaps_models:
            self.runtime.load_model(model)
        try:
            self.runtime.load_adapters(adapters)
        except ModelError:
            if swaps_models and previous[0] is not None:
                self.runtime.load_model(previous[0])
                self.runtime.load_adapters(previous[1])
            raise
        before, self.loaded = self.loaded, manifest
        label = label_of(manifest)
        served = manifest.get("served") or {}
        unused = (f" (applied as adapters, slower: the folded model was made from {served['source']}, this chat "
                  f"runs {getattr(self.runtime, 'base_path', '?')})"
                  if served.get("model") and model is None and adapters else "")
        if before is None:  # the stack the chat starts with; the base alone needs no notification
            return Swap(label, f"memory: {label}{unused}" if manifest["experts"] else None)
        if manifest["night"] < before["night"] or not manifest["experts"]:
            return Swap(label, f"memory rolled back: {label if manifest['experts'] else 'the base alone'}{unused}")
        return Swap(label, f"memory updated: {label}{unused}")
