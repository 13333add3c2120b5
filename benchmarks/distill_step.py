"""Distillation step time: seconds per step of `dreamer.sleep.seeding.distill.distill` on the embedded model.

The night's memories are replaced by a fixed, synthetic set, so only the training loop is
timed: the first synthetic day of `dreamer bench` (dreamer.bench.days, seed 0), its user turns as
today's prompts under the chat's system prompt, as a night asks them (the teacher holds the whole
day in its system prompt), the assistant's replies as the teacher's samples, the turns as
imitation memories, the day's cloze recall prompts, and the gate's held-out general texts
standing in for the drift term's (texts of the same kind). `--whole-prompts` encodes the chat's
system turn in every pass instead of once a step (dreamer.lm.step_prefix): the comparison;
`--alternate` alternates the two step by step in one process, so both run under the same load
(a step's on-policy sampling, before its passes, counts in the parts of the step before it: it
does not depend on the mode).
The preset's [distill] settings apply (`--set section.key=value` overrides one), with `--steps`
steps after one untimed warm-up step. Prints and writes the mean and the median step time, the
peak memory, and where a step's time goes: the seconds a timed step spends in each of the
loop's parts (on-policy sampling, the divergence, cloze, drift and imitation terms' forward
passes, the backward passes, the optimizer), the GPU synchronized around each part.

    .venv/bin/python benchmarks/distill_step.py [--preset cpu-tiny] [--steps 8] [--set distill.pass_batch=8]
                                                [--whole-prompts | --alternate] [--out FILE]
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
from datetime import date
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
    parser.add_argument("--whole-prompts", action="store_true",
                        help="encode the system turn in every pass, as before dreamer.lm.step_prefix (the comparison)")
    parser.add_argument("--alternate", action="store_true",
                        help="alternate the steps between the shared system turn and whole prompts, in one process "
                             "(the two paired under the same load); times and parts reported per mode")
    args = parser.parse_args()

    import torch

    import dreamer.sleep.seeding.distill

    from benchmarks.machine import git_commit, machine
    from dreamer.bench.days import make_days
    from dreamer.sleep.seeding.cloze import clozes, recall_prompts
    from dreamer.sleep.seeding.distill import distill
    from dreamer.sleep.gate import general_texts
    from dreamer.sleep.seeding.memories import Example
    from dreamer.sleep.seeding.rewards import SemanticJudge
    from dreamer.sleep.report import process_memory_mb
    from dreamer.sleep.config import load_preset, sleep_config_from_dict
    from dreamer.lm.weights import build_stack, embedded_training_dir, load_base, plan_device
    from agent.memory import system_message
    from storage import Config

    mode = ["whole" if args.whole_prompts else "shared"]
    if args.whole_prompts or args.alternate:
        share = dreamer.sleep.seeding.distill.StepPrefix.open

        def step_prefix(*a, **k):  # called once at the start of each step's training passes
            if args.alternate:
                mode[0] = "whole" if mode[0] == "shared" else "shared"
            return share(*a, **k) if mode[0] == "shared" else None

        dreamer.sleep.seeding.distill.StepPrefix.open = step_prefix

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
    first = make_days(0, 1, 10)[0]
    day = first["records"]
    turns = [(m, r) for c in day for m, r in zip(c["messages"][::2], c["messages"][1::2])]
    context = {"role": "system", "content": "What the user said today:\n" + "\n".join(m["content"] for m, _ in turns)}
    # The student's prompts begin with the chat's system turn, as a night's do.
    closed = [{"role": "system", "content": system_message(Config(), date.fromisoformat(first["day"]))}]
    today = [Example("today", closed + [m], [context, m], None, [r["content"]]) for m, r in turns]
    documents = [(closed + [{"role": "user", "content": "What did I tell you?"}], m["content"]) for m, _ in turns]
    recall = recall_prompts(clozes([m["content"] for m, _ in turns]), closed, random.Random(0))
    times, modes, last = [], [], [time.perf_counter()]

    def on_step(step, info):
        now = time.perf_counter()
        times.append(now - last[0])
        modes.append(mode[0])
        last[0] = now

    phases = time_phases(torch, dreamer.sleep.seeding.distill, times, lambda: mode[0])
    cfg.distill.steps = args.steps + 1
    distill(model, tokenizer, today=today, replay=[], anchor=[], documents=documents, stack=[], cfg=cfg.distill,
            max_len=cfg.load.max_seq_len, judge=SemanticJudge(), rng=random.Random(0), clozes=recall,
            general_texts=general_texts(), on_step=on_step)
    timed, timed_modes = times[1:], modes[1:]  # the first step pays for lazy loading (the judge) and warm-up
    result = {"command": "python " + " ".join(["benchmarks/distill_step.py", *sys.argv[1:]]), "commit": git_commit(),
              "machine": machine(load=True), "preset": args.preset, "overrides": args.set,
              "whole_prompts": args.whole_prompts, "alternate": args.alternate,
              "device_plan": plan_device(cfg.load).describe(), "steps": len(timed), "step_s": timed,
              "step_modes": timed_modes, "modes": {}, "peak_rss_mb": process_memory_mb(),
              "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}
    for name in dict.fromkeys(timed_modes):
        mine = [t for t, m in zip(timed, timed_modes) if m == name]
        parts = {part: round(seconds / len(mine), 3) for (m, part), seconds in phases.items() if m == name}
        result["modes"][name] = {"steps": len(mine), "mean_s": statistics.mean(mine), "median_s": statistics.median(mine),
                                 "phase_s_per_step": parts}
        print(f"{args.preset} ({result['device_plan']}), system turn {name}: {statistics.mean(mine):.2f} s a step on "
              f"average, median {statistics.median(mine):.2f} s, over {len(mine)} steps")
        print("  seconds a step in each part: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"peak RSS {result['peak_rss_mb']:.0f} MiB, peak GPU {result['peak_gpu_mb'] or 0:.0f} MiB")


def time_phases(torch, module, times: list, mode) -> dict[tuple[str, str], float]:
    """Wrap the loop's parts with timers, per (`mode()`, part); their seconds count once the
    warm-up step is done."""
    totals: dict[tuple[str, str], float] = defaultdict(float)

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
                    totals[mode(), name] += time.perf_counter() - start
        return wrapper

    for name in ("sample_many", "divergence_loss", "cloze_loss", "drift_loss", "imitation_loss"):
        setattr(module, name, timed(name, getattr(module, name)))
    torch.autograd.backward = timed("backward", torch.autograd.backward)
    torch.optim.AdamW.step = timed("optimizer", torch.optim.AdamW.step)
    return totals


if __name__ == "__main__":
    main()
