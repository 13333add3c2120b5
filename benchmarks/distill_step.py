"""Distillation step time: seconds per step of `dreamer.sleep.seeding.distill.distill` on the embedded model.

The night's memories are replaced by a fixed, synthetic set, so only the training loop is
timed: the first synthetic day of `dreamer bench` (dreamer.bench.days, seed 0), its user turns as
today's prompts (the teacher holds the whole day in its system prompt), the assistant's replies
as the teacher's samples, the turns as imitation memories, the day's cloze recall prompts, and
the gate's held-out general texts standing in for the drift term's (texts of the same kind).
The preset's [distill] settings apply (`--set section.key=value` overrides one), with `--steps`
steps after one untimed warm-up step. Prints and writes the mean and the median step time, the
peak memory, and where a step's time goes: the seconds a timed step spends in each of the
loop's parts (on-policy sampling, the divergence, cloze, drift and imitation terms' forward
passes, the backward passes, the optimizer), the GPU synchronized around each part.

    .venv/bin/python benchmarks/distill_step.py [--preset cpu-tiny] [--steps 8] [--set distill.pass_batch=8]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-tiny")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=ROOT / "bench-out" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "distill_step.json")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one preset value (a TOML value: 8, \"none\"); repeatable")
    args = parser.parse_args()

    import torch

    import dreamer.sleep.seeding.distill

    from benchmarks.machine import machine
    from dreamer.bench.days import make_days
    from dreamer.sleep.seeding.cloze import clozes, recall_prompts
    from dreamer.sleep.seeding.distill import distill
    from dreamer.sleep.gate import general_texts
    from dreamer.sleep.seeding.memories import Example
    from dreamer.sleep.seeding.rewards import SemanticJudge
    from dreamer.sleep.report import process_memory_mb
    from dreamer.sleep.config import load_preset, sleep_config_from_dict
    from dreamer.lm.weights import build_stack, embedded_training_dir, load_base, plan_device

    raw = load_preset(args.preset).as_dict()
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in raw or not isinstance(raw[section], dict) or not name or not value:
            parser.error(f"--set {item!r}: expected SECTION.KEY=VALUE with a section of the preset")
        raw[section][name] = tomllib.loads(f"v = {value}")["v"]
    cfg = sleep_config_from_dict(raw, preset=raw.pop("preset"))
    base, tokenizer = load_base(str(embedded_training_dir(args.cache)), plan_device(cfg.load))
    model = build_stack(base, [], cfg.distill)
    day = make_days(0, 1, 10)[0]["records"]
    turns = [(m, r) for c in day for m, r in zip(c["messages"][::2], c["messages"][1::2])]
    context = {"role": "system", "content": "What the user said today:\n" + "\n".join(m["content"] for m, _ in turns)}
    today = [Example("today", [m], [context, m], None, [r["content"]]) for m, r in turns]
    documents = [([{"role": "user", "content": "What did I tell you?"}], m["content"]) for m, _ in turns]
    recall = recall_prompts(clozes([m["content"] for m, _ in turns]), [], random.Random(0))
    times, last = [], [time.perf_counter()]

    def on_step(step, info):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    phases = time_phases(torch, dreamer.sleep.seeding.distill, times)
    cfg.distill.steps = args.steps + 1
    distill(model, tokenizer, today=today, replay=[], anchor=[], documents=documents, stack=[], cfg=cfg.distill,
            max_len=cfg.load.max_seq_len, judge=SemanticJudge(), rng=random.Random(0), clozes=recall,
            general_texts=general_texts(), on_step=on_step)
    timed = times[1:]  # the first step pays for lazy loading (the judge) and allocator warm-up
    per_step = {name: round(seconds / len(timed), 3) for name, seconds in phases.items()}
    result = {"machine": machine(load=True), "preset": args.preset, "overrides": args.set,
              "device_plan": plan_device(cfg.load).describe(), "phase_s_per_step": per_step,
              "steps": len(timed), "mean_s": statistics.mean(timed),
              "median_s": statistics.median(timed), "step_s": timed, "peak_rss_mb": process_memory_mb(),
              "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.preset} ({result['device_plan']}): {result['mean_s']:.2f} s a step on average, "
          f"median {result['median_s']:.2f} s, over {len(timed)} steps; peak RSS {result['peak_rss_mb']:.0f} MiB, "
          f"peak GPU {result['peak_gpu_mb'] or 0:.0f} MiB")
    print("seconds a step in each part: " + ", ".join(f"{k} {v:.2f}" for k, v in per_step.items()))


def time_phases(torch, module, times: list) -> dict[str, float]:
    """Wrap the loop's parts with timers; their seconds count once the warm-up step is done."""
    totals: dict[str, float] = defaultdict(float)

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                if times:  # the warm-up step has ended
                    totals[name] += time.perf_counter() - start
        return wrapper

    for name in ("sample_many", "divergence_loss", "cloze_loss", "drift_loss", "imitation_loss"):
        setattr(module, name, timed(name, getattr(module, name)))
    torch.autograd.backward = timed("backward", torch.autograd.backward)
    torch.optim.AdamW.step = timed("optimizer", torch.optim.AdamW.step)
    return totals


if __name__ == "__main__":
    main()
