"""The chat's llama.cpp threads: from the cores and whether a sleep runs, set before each reply."""

from __future__ import annotations

import pytest

from agent.llama_runtime import chat_threads


@pytest.mark.parametrize("cores, sleeping, expected", [
    (1, False, 1), (1, True, 1),
    (2, False, 1), (2, True, 1),  # the 2-core machine: never two threads (1.2 tok/s beside a night)
    (8, False, 7), (8, True, 4),
    (16, True, 8),
])
def test_auto_threads_leave_the_sleeps_cores_free(cores, sleeping, expected):
    assert chat_threads(0, cores, sleeping) == expected


def test_a_configured_number_is_used_as_it_is():
    assert chat_threads(3, 2, True) == 3


@pytest.mark.integration
def test_the_runtime_follows_a_sleep_that_starts_and_ends(monkeypatch):
    import llama_cpp

    import agent.llama_runtime as module
    from agent.llama_runtime import LlamaRuntime
    from agent.models import embedded_gguf_path

    monkeypatch.setattr(module, "usable_cores", lambda: 8)
    sleeping = {"now": False}
    runtime = LlamaRuntime(embedded_gguf_path(), n_ctx=256, sleeping=lambda: sleeping["now"])
    ctx = runtime.llm._ctx.ctx
    assert runtime.threads == 7 and llama_cpp.llama_n_threads(ctx) == 7
    sleeping["now"] = True
    "".join(runtime.stream([{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0.0))
    assert runtime.threads == 4 and llama_cpp.llama_n_threads(ctx) == 4
    sleeping["now"] = False
    "".join(runtime.stream([{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0.0))
    assert llama_cpp.llama_n_threads(ctx) == 7
