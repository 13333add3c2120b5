"""Morning costs on this machine: exporting experts, swapping stacks, and chatting with them.

Experts: 7 LoRA experts shaped as a night's expert of the preset (`--preset`, default cpu-tiny:
rank 16, alpha 32, dreamer's target modules, from `dreamer.lm.weights.lora_config`) on the
embedded SmolLM2-135M-Instruct, dequantized (the training base). Their weights are random (B
scaled by 0.05 so replies stay text-like): speed does not depend on what an expert learned.
Each is saved as dreamer saves a night (PEFT folder + metadata.json).

1. Export: wall time of `dreamer.morning.export_gguf.export_expert` per expert, and the GGUF size.
2. Swap latency: `LlamaRuntime.load_adapters` (what the chat calls between replies: load the
   new GGUFs, `llama_set_adapters_lora`, clear the KV cache, free the unused ones), on the
   cycle 0 -> 1 -> 3 -> 7 -> 3 (a rollback: nothing to load) -> 0, `--cycles` times.
3. Decode speed with 0, 1, 3 and 7 experts active (scale 1 each): greedy, exactly
   `--tokens` new tokens through llama-cpp-python's `generate` (no early stop at EOS, so every
   stack decodes the same number of tokens) after dreamer's system prompt + one user message;
   prompt evaluation time of that prompt; `--repeats` runs each, median/min/max. Resident memory
   (VmRSS) after each stack is loaded.

    .venv/bin/python benchmarks/morning.py [--out bench-out/morning.json] [--tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain file from a checkout, installed or not

from benchmarks.chat_speed import USER_PROMPTS, chat, machine, summary  # noqa: E402
from dreamer.sleep.report import process_memory_mb  # noqa: E402
from storage import Config  # noqa: E402

STACK_SIZES = (0, 1, 3, 7)
SWAP_CYCLE = (1, 3, 7, 3, 0)


def make_experts(cache: Path, out: Path, preset: str, n: int) -> list[Path]:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from dreamer.morning.export_gguf import base_config_summary
    from dreamer.sleep.config import load_preset
    from dreamer.lm.weights import base_fingerprint, embedded_training_dir, lora_config

    cfg = load_preset(preset)
    base = AutoModelForCausalLM.from_pretrained(embedded_training_dir(cache), dtype=torch.float32)
    meta = {"base": base_fingerprint(base), "base_config": base_config_summary(base)}
    folders = []
    for i in range(1, n + 1):
        torch.manual_seed(i)
        config = lora_config(base, cfg.distill)
        config.init_lora_weights = False
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(0.05)
        folder = out / f"night-{i:04d}"
        model.save_pretrained(folder)
        (folder / "metadata.json").write_text(json.dumps(meta))
        base = model.unload()  # back to the bare base for the next expert
        folders.append(folder)
    return folders


def bench_export(folders: list[Path]) -> dict:
    from dreamer.morning.export_gguf import export_expert

    seconds, sizes, paths = [], [], []
    for folder in folders:
        start = time.perf_counter()
        path = export_expert(folder)
        seconds.append(time.perf_counter() - start)
        sizes.append(path.stat().st_size / 2**20)
        paths.append(path)
    return {"seconds": summary(seconds), "size_mib": summary(sizes), "raw_seconds": seconds, "paths": paths}


def decode(runtime, tokens: list[int], n: int) -> tuple[float, float]:
    """(prompt eval seconds, decode tokens/s) for exactly n greedy tokens."""
    runtime.llm.reset()
    start = time.perf_counter()
    runtime.llm.eval(tokens)
    prompt_s = time.perf_counter() - start
    produced, first = 0, None
    for _ in runtime.llm.generate(tokens, temp=0.0, reset=False):
        produced += 1
        if first is None:
            first = time.perf_counter()
        if produced == n:
            break
    return prompt_s, (n - 1) / (time.perf_counter() - first)


def bench_llama(ggufs: list[Path], n_tokens: int, repeats: int, cycles: int) -> dict:
    from agent.llama_runtime import LlamaRuntime
    from agent.models import embedded_gguf_path
    from agent.runtime import Adapter

    config = Config()
    runtime = LlamaRuntime(embedded_gguf_path(), n_ctx=config.n_ctx, n_threads=config.n_threads)
    stacks = {k: [Adapter(p) for p in ggufs[:k]] for k in STACK_SIZES}

    swaps: dict[str, list[float]] = {}
    current = 0
    for _ in range(cycles):
        for k in SWAP_CYCLE:
            start = time.perf_counter()
            runtime.load_adapters(stacks[k])
            swaps.setdefault(f"{current} -> {k}", []).append(time.perf_counter() - start)
            current = k

    # SmolLM2's chat template (ChatML), rendered by hand: generate() takes tokens, not messages.
    messages = chat(USER_PROMPTS[0], config)
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"
    prompt = runtime.llm.tokenize(rendered.encode(), add_bos=False, special=True)
    speeds = {}
    for k in STACK_SIZES:
        runtime.load_adapters(stacks[k])
        decode(runtime, prompt, 8)  # warm-up with this stack
        runs = [decode(runtime, prompt, n_tokens) for _ in range(repeats)]
        speeds[k] = {"prompt_tokens": len(prompt), "prompt_eval_s": summary([r[0] for r in runs]),
                     "decode_tok_s": summary([r[1] for r in runs]), "rss_mib": process_memory_mb("VmRSS")}
    params = runtime.llm.context_params
    runtime.llm.close()
    return {"n_threads": params.n_threads, "swap_s": {k: summary(v) | {"raw": v} for k, v in swaps.items()},
            "stacks": speeds}


def table(result: dict) -> str:
    lines = ["| experts active | decode tok/s median (min-max) | vs base | prompt eval s median | RSS MiB |",
             "|---|---|---|---|---|"]
    stacks = result["llama"]["stacks"]
    base = stacks[0]["decode_tok_s"]["median"]
    for k, s in stacks.items():
        d = s["decode_tok_s"]
        lines.append(f"| {k} | {d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f}) | {d['median'] / base:.2f}x | "
                     f"{s['prompt_eval_s']['median']:.3f} | {s['rss_mib']:.0f} |")
    lines += ["", "| swap | median s | min-max s | n |", "|---|---|---|---|"]
    for name, s in result["llama"]["swap_s"].items():
        lines.append(f"| {name} | {s['median']:.3f} | {s['min']:.3f}-{s['max']:.3f} | {s['n']} |")
    e = result["export"]
    lines += ["", f"Export per expert: median {e['seconds']['median']:.3f} s (min {e['seconds']['min']:.3f}, max "
                  f"{e['seconds']['max']:.3f}, n {e['seconds']['n']}); GGUF size {e['size_mib']['median']:.1f} MiB."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "morning.json")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench-out" / "cache", help="dequantized model cache")
    parser.add_argument("--preset", default="cpu-tiny")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_experts(args.cache, Path(tmp), args.preset, max(STACK_SIZES))
        export = bench_export(folders)
        llama = bench_llama(export.pop("paths"), args.tokens, args.repeats, args.cycles)
    result = {"machine": machine(), "preset": args.preset, "tokens": args.tokens, "export": export, "llama": llama,
              "load_average": list(os.getloadavg())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(table(result))
    print(f"\nmachine: {result['machine']}; load average after: {result['load_average']}; JSON: {args.out}")


if __name__ == "__main__":
    main()
