"""What the chat serves after a bench night: the model file, its size, and its decode speed.

A sleep arm's home holds the manifest the chat would load (storage.manifest's `served` entry:
the nights folded into one GGUF, or the configured model with every night as an adapter). Its
decode speed is measured beside the bare model's, in one process, alternated round by round
(`ROUNDS` x the prompts, greedy, `TOKENS` tokens, one llama.cpp thread: the chat's own setting
on a 2-core machine), so the ratio holds even when the machine's load moves during the bench.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

PROMPTS = ["Give me three tips to sleep better.", "Explain in simple words how a bicycle stays upright."]
ROUNDS = 3
TOKENS = 48


def decode_tok_s(runtime, prompts: list[str] = PROMPTS, tokens: int = TOKENS) -> float:
    """Median decode speed over the prompts (greedy, `tokens` at most), from the first token on."""
    speeds = []
    for prompt in prompts:
        runtime.llm.reset()
        stamps = []
        for _ in runtime.stream([{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0.0):
            stamps.append(time.perf_counter())
        if len(stamps) > 2:
            speeds.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return statistics.median(speeds) if speeds else 0.0


def served_speed(home: str) -> dict:
    """{"folded", "model", "mib", "adapters", "decode_tok_s", "bare_tok_s", "ratio"} for the home's
    manifest, or {"error": why} when it cannot be measured (e.g. the tiny model's twin has no
    tokenizer)."""
    from agent.llama_runtime import LlamaRuntime
    from agent.models import ModelError, embedded_gguf_path
    from agent.runtime import Adapter
    from storage.manifest import read_manifest

    manifest = read_manifest(Path(home))
    served = manifest["served"]
    base = Path(served["source"]) if served.get("source") else embedded_gguf_path()
    model = Path(served["model"]) if served.get("model") else base
    record = {"folded": served.get("model") is not None, "model": str(model),
              "mib": round(model.stat().st_size / 2**20, 1), "adapters": len(served["adapters"])}
    try:
        bare = LlamaRuntime(base, n_ctx=1024, n_threads=1)
        chat = LlamaRuntime(model, n_ctx=1024, n_threads=1)
        chat.load_adapters([Adapter(Path(p)) for p in served["adapters"]])
    except ModelError as err:
        return {**record, "error": str(err)}
    speeds: dict[str, list[float]] = {"bare": [], "served": []}
    for _ in range(ROUNDS):
        speeds["bare"].append(decode_tok_s(bare))
        speeds["served"].append(decode_tok_s(chat))
    bare.llm.close()
    chat.llm.close()
    bare_tok_s, served_tok_s = statistics.median(speeds["bare"]), statistics.median(speeds["served"])
    return {**record, "decode_tok_s": round(served_tok_s, 1), "bare_tok_s": round(bare_tok_s, 1),
            "ratio": round(served_tok_s / bare_tok_s, 3) if bare_tok_s else None}
