"""Which fold the chat should serve, judged night by night on a finished `dreamer bench` run.

    python -m benchmarks.fold_nights --run RUN [--types Q8_0,grid] [--out ...] [--resume]

RUN is a `dreamer bench` run with a sleep arm (RUN/bench.json, RUN/homes/sleep). What the chat
serves does not change what the next night trains on (a night trains on the fp32 merge of the
earlier experts, `[load] merge_stack`), so every night of one run can be served each way after
the fact: the comparison is paired exactly (same experts, same probes, same prompts), and only
the fold differs. For each night N (the experts of nights 1..N, as the manifest of version N):
1. each fold type of `TYPES` written by dreamer.morning.fold (`grid`: dreamer.morning.grid_fold;
   benchmarks.fold_grid's roundings by name), and the bare base beside them;
2. replies: every recall probe of days 1..N and the bench's 12 general questions, asked as the
   chat asks (the system prompt of the morning after day N, greedy, the chat's repeat penalty,
   40 tokens), named or not per probe (dreamer.bench.score.reply_names), so that two folds are
   compared probe by probe;
3. general text (assets/general_heldout.jsonl, its 12 texts, 256 tokens at most): perplexity through
   each llama.cpp model, and the mean per-token KL from what the night trained (transformers,
   float32, the base plus the experts);
4. decode speed, one llama.cpp thread, in rounds whose order rotates (so that no condition always
   runs first), two ways: as the chat decodes (greedy, 64
   tokens on 3 prompts: each model decodes its own reply, whose length and words differ), and
   forced (the same 64 tokens of 3 general texts fed one at a time after their first 16: the
   same work for every model, so the model's own cost per token).
Results are written after every night; `--resume` skips the nights already in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from benchmarks.fold_quality import PROMPTS, hf_logits, kl, llama_logits, log_softmax, named_replies
from benchmarks.machine import command_line, git_commit, machine, write_record

TYPES = ("Q8_0", "grid")
BARE = "bare base"


def nll(logits: np.ndarray, tokens: list[int]) -> tuple[float, int]:
    """(summed negative log-likelihood of tokens[1:], count) from a text's logits."""
    logp = log_softmax(logits[:-1])
    return float(-logp[np.arange(len(tokens) - 1), tokens[1:]].sum()), len(tokens) - 1


def forced_tok_s(runtime, texts: list[list[int]], prefix: int = 16) -> float:
    """Median tokens/s over `texts`, each fed one token at a time after its first `prefix`."""
    speeds = []
    for tokens in texts:
        runtime.llm.reset()
        runtime._reset_cache()
        runtime.llm.eval(tokens[:prefix])
        started = time.perf_counter()
        for token in tokens[prefix:]:
            runtime.llm.eval([token])
        speeds.append((len(tokens) - prefix) / (time.perf_counter() - started))
    return statistics.median(speeds)


def decode(paths: dict[str, Path], rounds: int) -> dict:
    """{"generated" | "forced": {model: {"median", "ratio" (to the bare base), "rounds"}}}."""
    from agent.llama_runtime import LlamaRuntime
    from dreamer.bench.served import decode_tok_s
    from dreamer.sleep.gate import general_texts

    runtimes = {name: LlamaRuntime(path, n_ctx=1024, n_threads=1) for name, path in paths.items()}
    tokenize = runtimes[BARE].llm.tokenize
    texts = [tokenize(t.encode(), add_bos=False, special=False)[:80] for t in general_texts()[-3:]]
    ways = {"generated": lambda r: decode_tok_s(r, PROMPTS, 64), "forced": lambda r: forced_tok_s(r, texts)}
    names, speeds = list(runtimes), {way: {name: [] for name in runtimes} for way in ways}
    for name in names:
        decode_tok_s(runtimes[name], PROMPTS, 64)  # warm-up
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            for way, measure in ways.items():
                speeds[way][name].append(round(measure(runtimes[name]), 1))
    for runtime in runtimes.values():
        runtime.llm.close()
    return {way: {name: {"median": statistics.median(v), "rounds": v,
                         "ratio": round(statistics.median(v) / statistics.median(per[BARE]), 3)}
                  for name, v in per.items()} for way, per in speeds.items()}


def one_night(night: int, experts: list[dict], days: list[dict], types: list[str], rounds: int,
              source: str, work: Path) -> dict:
    from agent.llama_runtime import LlamaRuntime
    from agent.memory import system_message
    from agent.models import embedded_gguf_path
    from benchmarks.fold_grid import GRID_TYPES, requantizer
    from dreamer.bench.days import general_probes
    from dreamer.lm.weights import build_stack, load_base, plan_device
    from dreamer.sleep.config import LoadConfig
    from dreamer.morning.fold import fold
    from dreamer.sleep.gate import general_texts
    from storage.config import Config

    started, load = time.perf_counter(), os.getloadavg()[0]
    base_gguf = embedded_gguf_path()
    scaled = [(Path(e["path"]), float(e["scale"])) for e in experts]
    paths, record = {BARE: base_gguf}, {"experts": len(experts), "fold": {}}
    for qtype in types:
        result = fold(base_gguf, scaled, work / f"{qtype}.gguf", qtype,
                      requantize=requantizer(qtype) if qtype in GRID_TYPES else None)
        paths[qtype] = result.path
        record["fold"][qtype] = {"seconds": round(result.seconds, 2), "mib": round(result.bytes / 2**20, 1)}

    last = experts[-1]["day"]
    probes = [p for day in days for p in day["probes"] if p["day"] <= last and p["kind"] == "recall"]
    probes += general_probes()
    config = Config()
    system = system_message(config, date.fromisoformat(last) + timedelta(days=1))
    runtimes = {name: LlamaRuntime(path, n_ctx=1024, n_threads=1, logits_all=True) for name, path in paths.items()}
    named = {name: named_replies(r, probes, system, config.repeat_penalty) for name, r in runtimes.items()}
    record["probes"] = [p["id"] if p["kind"] != "general" else f"general:{i}" for i, p in enumerate(probes)]
    record["kinds"] = [p["kind"] for p in probes]
    record["named"] = {name: "".join("1" if x else "0" for x in flags) for name, flags in named.items()}

    base, _ = load_base(source, plan_device(LoadConfig(device="cpu", threads=1)))  # build_stack wraps it in place
    stack = build_stack(base, [Path(e["path"]) for e in experts], None)
    texts = general_texts()
    sums = {name: {"nll": [0.0, 0], "kl": [0.0, 0]} for name in runtimes}
    for text in texts:
        ids = runtimes[BARE].llm.tokenize(text.encode(), add_bos=False, special=False)[:256]
        reference = hf_logits(stack, ids)
        for name, runtime in runtimes.items():
            logits = llama_logits(runtime, ids)
            for key, (total, count) in (("nll", nll(logits, ids)), ("kl", kl(reference, logits))):
                sums[name][key][0] += total
                sums[name][key][1] += count
    for runtime in runtimes.values():
        runtime.llm.close()
    record["general_text"] = {name: {"perplexity": round(math.exp(s["nll"][0] / s["nll"][1]), 3),
                                     "kl_to_trained": round(s["kl"][0] / s["kl"][1], 5)} for name, s in sums.items()}
    record["decode_tok_s"] = decode(paths, rounds)
    record["seconds"], record["load_at_start"] = round(time.perf_counter() - started, 1), load
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, required=True, help="a finished `dreamer bench` run with a sleep arm")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fold_nights.json")
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--nights", default="", help="e.g. 1,7,14 (default: every night of the run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resume", action="store_true", help="keep the nights already in --out")
    args = parser.parse_args(argv)

    import torch

    from dreamer.lm.weights import training_source
    from storage.manifest import read_manifest
    from storage.paths import cache_dir

    torch.set_num_threads(1)
    home = args.run / "homes" / "sleep"
    bench = json.loads((args.run / "bench.json").read_text())
    experts = read_manifest(home)["experts"]
    nights = [int(n) for n in args.nights.split(",") if n] or [e["night"] for e in experts]
    types = [t for t in args.types.split(",") if t]
    record = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {
        "command": command_line("benchmarks.fold_nights", argv), "run": str(args.run), "types": types,
        "nights": {}, "sessions": []}
    record["sessions"].append({"machine": machine(load=True), "commit": git_commit(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    source = training_source("", cache_dir(home))
    work = Path(tempfile.mkdtemp(prefix="fold-nights-"))
    try:
        for night in nights:
            if str(night) in record["nights"]:
                continue
            active = [e for e in experts if e["night"] <= night]
            result = one_night(night, active, bench["days"], record["types"], args.rounds, source, work)
            record["nights"][str(night)] = result
            write_record(args.out, record)
            named = {k: f"{v.count('1')}/{len(v)}" for k, v in result["named"].items()}
            print(f"night {night}: named {named}, decode {[(k, v['ratio']) for k, v in result['decode_tok_s']['forced'].items()]}, "
                  f"{result['seconds']} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
