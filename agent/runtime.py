"""The `ChatRuntime` interface and a scripted fake for tests.

A runtime streams a reply for a list of chat messages and can load a stack of LoRA adapters
(each with a scale). The default implementation is `agent.llama_runtime.LlamaRuntime`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.models import ModelError


@dataclass(frozen=True)
class Adapter:
    """One LoRA expert of the stack, as llama.cpp loads it."""

    path: Path
    scale: float = 1.0


class ChatRuntime(Protocol):
    name: str
    finish_reason: str | None

    def stream(
        self,
        messages: Sequence[dict],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the reply piece by piece; return early once `stop` is set. Afterwards
        `finish_reason` is "length" if the reply was cut at `max_tokens`, else "stop"."""

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model's vocabulary."""

    def load_adapters(self, adapters: Sequence[Adapter]) -> None:
        """Replace the whole adapter stack (an empty list = the base alone)."""

    def load_model(self, path: Path | None) -> None:
        """Serve another GGUF (a folded memory), or the configured model with None; drops the adapters."""


class FakeRuntime:
    """A runtime that replies from a script, word by word; tokens are words.

    `enqueue("reply", ...)` queues replies; with an empty queue it echoes the last user turn; a
    reply longer than `max_tokens` words is cut there (`finish_reason` "length").
    `fail_with` makes the next `stream` raise `ModelError`; `delay` slows each word so a test
    can cancel mid-reply; every prompt it was given is kept in `prompts`.
    """

    name = "fake"

    def __init__(self, replies: Sequence[str] = (), delay: float = 0.0) -> None:
        self.replies = list(replies)
        self.delay = delay
        self.fail_with: str | None = None
        self.prompts: list[list[dict]] = []
        self.adapters: list[Adapter] = []
        self.base_path = Path("fake.gguf")  # "the configured model"
        self.model_path = self.base_path  # what is served now: the configured model or a folded one
        self.fail_model_with: str | None = None  # the next load_model raises ModelError with this
        self.finish_reason: str | None = None
        self.sampling: list[dict] = []  # the sampling arguments of every stream call

    def enqueue(self, *replies: str) -> None:
        self.replies.extend(replies)

    def stream(self, messages, *, max_tokens, temperature, top_p=1.0, min_p=0.0, repeat_penalty=1.0, stop=None):
        self.prompts.append([dict(m) for m in messages])
        self.sampling.append({"temperature": temperature, "top_p": top_p, "min_p": min_p,
                              "repeat_penalty": repeat_penalty})
        self.finish_reason = None
        if self.fail_with:
            message, self.fail_with = self.fail_with, None
            raise ModelError(message)
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        reply = self.replies.pop(0) if self.replies else f"You said: {last_user}"
        words = reply.split(" ")
        for i, word in enumerate(words[:max_tokens]):
            if stop is not None and stop.is_set():
                return
            if self.delay:
                time.sleep(self.delay)
            yield word if i == 0 else " " + word
        self.finish_reason = "length" if len(words) > max_tokens else "stop"

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def load_adapters(self, adapters):
        self.adapters = list(adapters)

    def load_model(self, path):
        if self.fail_model_with:
            message, self.fail_model_with = self.fail_model_with, None
            raise ModelError(message)
        path = Path(path) if path else self.base_path
        if path != self.model_path:
            self.model_path, self.adapters = path, []
