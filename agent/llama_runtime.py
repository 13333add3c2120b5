"""`LlamaRuntime`: chat on a GGUF model through llama-cpp-python, the default runtime.

What the chat serves is the manifest's `served` entry (storage.manifest): after a deep sleep,
one GGUF with the night's experts folded in (`load_model` swaps the whole model), else the
configured model with one GGUF LoRA per night, applied with llama.cpp's low-level API so a new
stack swaps in without reloading the base:

    llama_adapter_lora_init(model, path)            # load each expert once
    llama_set_adapters_lora(ctx, adapters, n, scales)  # make exactly these active
    llama_memory_clear(...)                         # the KV cache was computed without them

Generation and swaps share one lock, so a swap always happens between replies, never in the
middle of one. A model or an expert that fails to load leaves the running one untouched: the
new model is loaded before the old one is freed (for a moment both are in memory).

Threads (`n_threads = 0`, the default, in config.toml): chosen before each reply by
`chat_threads`, from the cores and whether a sleep runs now (it holds `sleep.lock`), because a
thread that has to wait for a core stalls every decode step: on the 2-core machine, beside a
night's training, 2 threads decoded at half the speed of 1 (docs/BENCHMARKS.md, "Chat
threads"). A number set in config.toml is used as it is.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import llama_cpp

from agent.models import ModelError, resolve_chat_model
from agent.runtime import Adapter
from storage import Config, dreamer_home
from storage.locks import lock_holder


@contextmanager
def _plain_weight_buffers():
    """Load the base into plain CPU buffers, not llama.cpp's repacked ones ("extra buffer types").

    On a CPU with AMX, llama.cpp repacks the Q4_1 weights for its AMX kernels, and decoding on
    them segfaults in `Llama.eval`, with or without a LoRA adapter (llama-cpp-python 0.3.36
    built on a Xeon with AMX; plain `llama_cpp.Llama` with its defaults crashes on the first
    completion there. Upstream has open reports of segfaults in its AMX matrix multiply,
    ggml-org/llama.cpp#20824, and had LoRA crashes with repacked weights, #12587). Plain
    buffers decode correctly there; on a CPU where llama.cpp would repack for other kernels,
    they may be slower (docs/BENCHMARKS.md, "Not measured here").
    `Llama()` has no argument for it: its model parameters start from
    `llama_model_default_params`, which is wrapped here while the model loads.
    """
    low = llama_cpp.llama_cpp
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = default


def usable_cores() -> int:
    """The cores this process may run on (a container or `taskset` can give fewer than the host has)."""
    return len(os.sched_getaffinity(0)) or 1


def chat_threads(configured: int, cores: int, sleeping: bool) -> int:
    """llama.cpp threads for the next reply: `configured` if set; else the cores a running sleep
    leaves free (it trains on half of them), or, with no sleep, all cores but one for the rest of
    the machine (the terminal, the user's other programs), at least one."""
    if configured:
        return configured
    if sleeping:
        return max(1, cores - max(1, cores // 2))
    return max(1, cores - 1)


class LlamaRuntime:
    def __init__(self, model_path: Path, name: str = "", n_ctx: int = 4096, n_threads: int = 0,
                 sleeping: Callable[[], bool] | None = None, **llama_options) -> None:
        self.model_path = Path(model_path)
        self.base_path = self.model_path  # the configured model; model_path is what is loaded now
        self.name = name or self.model_path.name
        self.n_ctx = n_ctx
        self.llama_options = llama_options
        self.configured_threads = n_threads
        self.sleeping = sleeping or (lambda: False)
        self.threads = chat_threads(n_threads, usable_cores(), self.sleeping())
        self.llm = self._open(self.model_path)
        self._lock = threading.Lock()
        self._loaded: dict[Path, ctypes.c_void_p] = {}  # path -> llama_adapter_lora*
        self.adapters: list[Adapter] = []
        self.finish_reason: str | None = None  # of the last reply: "length" when cut at max_tokens

    def _open(self, path: Path):
        try:
            with _plain_weight_buffers():
                return llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=self.n_ctx,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    verbose=False,  # llama.cpp's logs would draw over the terminal UI
                    **self.llama_options,  # e.g. logits_all for a benchmark that compares logits
                )
        except (ValueError, RuntimeError) as err:
            raise ModelError(
                f"llama.cpp could not load {path}: {err}; the file may be corrupt or of an "
                "unsupported architecture: point `model` in config.toml at another GGUF"
            ) from None

    def load_model(self, path: Path | None) -> None:
        """Serve `path` (a folded memory) or, with None, the configured model; no adapter after."""
        path = Path(path) if path else self.base_path
        with self._lock:
            if path == self.model_path:
                return
            fresh = self._open(path)  # raises ModelError; the running model stays
            for handle in self._loaded.values():  # adapters belong to the model they were loaded on
                llama_cpp.llama_adapter_lora_free(handle)
            self._loaded, self.adapters = {}, []
            self.llm.close()
            self.llm, self.model_path = fresh, path

    @classmethod
    def from_config(cls, config: Config) -> "LlamaRuntime":
        path, name = resolve_chat_model(config.model_path())
        lock = dreamer_home() / "sleep.lock"
        return cls(path, name=name, n_ctx=config.n_ctx, n_threads=config.n_threads,
                   sleeping=lambda: lock_holder(lock) is not None)

    def _choose_threads(self) -> None:
        threads = chat_threads(self.configured_threads, usable_cores(), self.sleeping())
        if threads != self.threads:
            llama_cpp.llama_set_n_threads(self.llm._ctx.ctx, threads, threads)
            self.threads = threads

    # --- generation ----------------------------------------------------------
    def stream(self, messages: Sequence[dict], *, max_tokens: int, temperature: float, top_p: float = 1.0,
               min_p: float = 0.0, repeat_penalty: float = 1.0, stop=None) -> Iterator[str]:
        with self._lock:
            self._choose_threads()  # a sleep may have started or ended since the last reply
            self.finish_reason = None
            chunks = self.llm.create_chat_completion(
                messages=list(messages), stream=True, max_tokens=max_tokens, temperature=temperature,
                top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,  # top_k: llama.cpp's 40
            )
            try:
                for chunk in chunks:
                    if stop is not None and stop.is_set():
                        return
                    choice = chunk["choices"][0]
                    piece = choice.get("delta", {}).get("content")
                    if piece:
                        yield piece
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
            finally:
                chunks.close()  # stops llama.cpp's sampling loop when we leave early

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # --- adapter stack ---------------------------------------------------------
    def load_adapters(self, adapters: Sequence[Adapter]) -> None:
        """Make exactly `adapters` active (in order, with their scales); [] = base only."""
        with self._lock:
            new_handles = {}
            for adapter in adapters:
                path = Path(adapter.path)
                if path in self._loaded or path in new_handles:
                    continue
                handle = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(path).encode("utf-8"))
                if not handle:
                    for loaded in new_handles.values():
                        llama_cpp.llama_adapter_lora_free(loaded)
                    raise ModelError(
                        f"llama.cpp could not load the LoRA adapter {path} (missing, corrupt, or made for "
                        "another base model); the previous memory stays active"
                    )
                new_handles[path] = handle
            handles = {**self._loaded, **new_handles}
            array = (llama_cpp.llama_adapter_lora_p_ctypes * max(1, len(adapters)))(
                *[handles[Path(a.path)] for a in adapters]
            )
            scales = (ctypes.c_float * max(1, len(adapters)))(*[a.scale for a in adapters])
            if llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, array, len(adapters), scales) != 0:
                for loaded in new_handles.values():
                    llama_cpp.llama_adapter_lora_free(loaded)
                raise ModelError("llama.cpp refused the adapter stack; the previous memory stays active")
            self._reset_cache()
            keep = {Path(a.path) for a in adapters}
            for path, handle in handles.items():
                if path not in keep:
                    llama_cpp.llama_adapter_lora_free(handle)  # no context references it any more
            self._loaded = {path: handles[path] for path in keep}
            self.adapters = list(adapters)

    def _reset_cache(self) -> None:
        # The KV cache and llama-cpp-python's prefix cache hold activations computed with the old
        # stack; reusing them would mix two memories in one reply.
        memory = llama_cpp.llama_get_memory(self.llm._ctx.ctx)
        if memory is not None:
            llama_cpp.llama_memory_clear(memory, True)
        self.llm.reset()
