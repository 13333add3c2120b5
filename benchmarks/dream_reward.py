"""Does Dreaming's reward pick the dreams that help the user? Measured dream by dream.

For each seed, one synthetic day (`dreamer bench`'s days, 10 facts) is slept for real, stage 1
alone, `cpu-tiny`, in a home under `--work` (kept: a second run reuses it). Then the moment
Dreaming starts is rebuilt: the base, that night's expert trainable, a fresh writer. The night's
dreams are written exactly as Dreaming writes them, and for every grounded dream a throwaway
copy of the expert trains on it (`dreamer.sleep.dreaming.score.train_copy`, as the reward does), once per
`--inner` setting (steps:learning rate). After each copy, two sets of probes are asked closed
book, each probe's right option scored as tau scores it (`probe_probabilities`):

- the reward's: the night's held-out self-probes (cloze probes of the user's sentences), the
  half Dreaming holds out of the gate, chosen as it chooses them;
- the truth's: the bench's recall and implication probes of the day, which no night sees: what
  the dream does for what the user will ask.

Rewards compared, all from the same copies: `tau` (the mean change over every held-out probe:
what Dreaming used), `tau_fact` (the mean change over the dream's own held-out probes,
`own_probes`, what Dreaming now uses; none held out: no reward), both also in log-probability,
`tau_other` (the held-out probes of the other sentences: what a dream costs the rest), and the
first filter's loss `gap` (no copy needed). Truths: `truth` (the mean change over all the
day's bench probes) and `truth_fact` (over those whose answer the dream's reply names). Per
reward: its Spearman correlation with each truth, and the share of the dreams it rewards
(change > 0) whose truth rose, beside the share of all dreams.

    python -m benchmarks.dream_reward [--seeds 5 6] [--inner 3:1e-3 1:1e-3 8:3e-4] [--work DIR]
    # writes benchmarks/results/dream_reward.json (--out), keeping the seeds already there
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.machine import ROOT, command_line, git_commit, machine, write_record
from dreamer.sleep.dreaming.write import mentions

RESULT = ROOT / "benchmarks" / "results" / "dream_reward.json"
TRUTH_KINDS = ("recall", "implication")


def sleep_day(home: Path, source: str, seed: int, records: list[dict]) -> None:
    """Night 1 on the day, stage 1 alone (once: a home with an active expert is kept)."""
    from dreamer.bench.arms import sleep_night
    from dreamer.bench.run import BenchConfig, sleep_config
    from dreamer.morning.stack import active_paths
    from storage import Store

    if (home / "dreamer.db").exists():
        store = Store(home / "dreamer.db")
        try:
            if active_paths(store):
                return
        finally:
            store.close()
    cfg = sleep_config(BenchConfig(days=1, facts=10, updates=0, arms=["sleep"], seed=seed))
    row = sleep_night(str(home), source, records, cfg, f"seed {seed} night 1", str(home / "night.log"))
    if row["status"] != "promoted":
        raise SystemExit(f"seed {seed}: the night was {row['status']}: {row['message']}")


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation (ties averaged).

    >>> spearman([1, 2, 3], [10, 20, 15]), spearman([1, 1], [2, 3])
    (0.5, None)
    """
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return round(cov / var, 3) if var else None


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def change(after: list[float], before: list[float], which: list[int], log: bool = False) -> float | None:
    if log:
        return mean([math.log(max(after[i], 1e-9)) - math.log(max(before[i], 1e-9)) for i in which])
    return mean([after[i] - before[i] for i in which])


def rewards_and_truths(row: dict, before: dict, held: list[dict], truth: list[dict], fact_held: list[int]) -> dict:
    """The reward variants and the truths of one dream under one inner setting (`fact_held`: its own held-out probes)."""
    fact_truth = [i for i, p in enumerate(truth) if mentions(row["reply"], str(p["answer"]))]
    every_held, every_truth = list(range(len(held))), list(range(len(truth)))
    return {
        "tau": change(row["held"], before["held"], every_held),
        "tau_log": change(row["held"], before["held"], every_held, log=True),
        "tau_fact": change(row["held"], before["held"], fact_held),
        "tau_fact_log": change(row["held"], before["held"], fact_held, log=True),
        "tau_other": change(row["held"], before["held"], [i for i in every_held if i not in fact_held]),
        "gap": row["gap"],
        "truth": change(row["truth"], before["truth"], every_truth),
        "truth_fact": change(row["truth"], before["truth"], fact_truth),
    }


REWARDS = ("tau", "tau_log", "tau_fact", "tau_fact_log", "tau_other", "gap")
TRUTHS = ("truth", "truth_fact")


def summarise(scored: list[dict]) -> dict:
    """Per reward: rank correlation with each truth, and the truth rate among the dreams it rewards."""
    out = {"dreams": len(scored)}
    for truth in TRUTHS:
        rows = [s for s in scored if s[truth] is not None]
        out[f"{truth}_up"] = f"{sum(s[truth] > 0 for s in rows)}/{len(rows)}"
        out[f"{truth}_mean"] = round(mean([s[truth] for s in rows]), 4) if rows else None
    for reward in REWARDS:
        rows = [s for s in scored if s[reward] is not None]
        entry = {"defined": len(rows), "rewarded": sum(s[reward] > 0 for s in rows)}
        for truth in TRUTHS:
            both = [s for s in rows if s[truth] is not None]
            kept = [s for s in both if s[reward] > 0]
            entry[f"spearman_{truth}"] = spearman([s[reward] for s in both], [s[truth] for s in both])
            entry[f"{truth}_up_if_rewarded"] = f"{sum(s[truth] > 0 for s in kept)}/{len(kept)}"
            entry[f"{truth}_mean_if_rewarded"] = round(mean([s[truth] for s in kept]), 4) if kept else None
        out[reward] = entry
    return out


def dreaming_start(seed: int, home: Path, source: str, day: dict, dreams: int) -> SimpleNamespace:
    """The moment Dreaming starts on a seed's slept day, rebuilt: the base with that night's
    expert trainable and a fresh writer, the held-out self-probes chosen as Dreaming chooses them,
    the bench's probes of the day (the truth), and the night's dreams written as Dreaming writes
    them (`began`: when writing started)."""
    from peft import PeftModel

    from agent.memory import system_message
    from dreamer.lm.weights import NEW, load_base, plan_device, use_adapters
    from dreamer.morning.stack import active_paths
    from dreamer.sleep.config import LoadConfig, load_preset
    from dreamer.sleep.dreaming.stage import split_probes
    from dreamer.sleep.dreaming.write import write_dreams
    from dreamer.sleep.dreaming.writer import attach_writer
    from storage import Config, Store, ledger

    store = Store(home / "dreamer.db")
    try:
        expert = active_paths(store)[0]
        probes = ledger.replay_probes(store)  # the one night's probes: its expert is the whole stack
    finally:
        store.close()
    preset = load_preset("cpu-tiny")
    cfg = preset.dreaming
    cfg.dreams = dreams
    rng = random.Random(seed)
    held, _ = split_probes(probes, cfg.tau_today, rng)
    truth = [p for p in day["probes"] if p["kind"] in TRUTH_KINDS]
    night_day = date.fromisoformat(day["day"])
    system = system_message(Config(), night_day)
    asked = system_message(Config(), night_day + timedelta(days=1))  # the morning after, as the bench asks

    base, tokenizer = load_base(source, plan_device(LoadConfig(device="cpu")))
    model = PeftModel.from_pretrained(base, str(expert), adapter_name=NEW, is_trainable=True)
    use_adapters(model, [NEW])
    attach_writer(model, [], cfg, preset.distill)
    torch.manual_seed(seed)
    began = time.monotonic()
    written = write_dreams(model, tokenizer, conversations=day["records"], base_system=system, stack=[],
                           old_probes=[], cfg=cfg, rng=rng)
    return SimpleNamespace(model=model, tokenizer=tokenizer, preset=preset, cfg=cfg, rng=rng, held=held, truth=truth,
                           system=system, asked=asked, written=written, grounded=[d for d in written if d.answer],
                           began=began)


def study_seed(seed: int, home: Path, source: str, day: dict, settings: list[tuple[int, float]], dreams: int) -> dict:
    from dreamer.lm.weights import NEW
    from dreamer.sleep.dreaming.score import expert_state, loss_gaps, own_probes, probe_probabilities, restore_state, train_copy

    start = dreaming_start(seed, home, source, day, dreams)
    model, tokenizer, held, truth, system, asked = (start.model, start.tokenizer, start.held, start.truth,
                                                    start.system, start.asked)
    written, grounded, started = start.written, start.grounded, start.began
    loss_gaps(model, tokenizer, grounded, [], system)
    names = [NEW]
    before = {"held": probe_probabilities(model, tokenizer, held, names, system),
              "truth": probe_probabilities(model, tokenizer, truth, names, asked)}
    state = expert_state(model)
    rows = [{"kind": d.kind, "request": d.request, "reply": d.reply, "answer": d.answer, "words": d.words,
             "gap": round(d.gap, 4), "on_a_fact": any(mentions(d.reply, str(p["answer"])) for p in truth),
             "settings": {}} for d in grounded]
    out = {"written": len(written), "grounded": len(grounded), "held_probes": len(held), "truth_probes": len(truth),
           "before": {k: round(mean(v), 4) for k, v in before.items()}, "settings": {}}
    for steps, lr in settings:
        key = f"{steps}:{lr:g}"
        scored = []
        for dream, row in zip(grounded, rows):
            train_copy(model, tokenizer, dream, names, system, steps, lr)
            after = {"held": probe_probabilities(model, tokenizer, held, names, system),
                     "truth": probe_probabilities(model, tokenizer, truth, names, asked)}
            restore_state(model, state)
            measured = rewards_and_truths({**row, **after}, before, held, truth, own_probes(dream, held))
            row["settings"][key] = {k: (round(v, 4) if v is not None else None) for k, v in measured.items()}
            scored.append(measured)
        out["settings"][key] = summarise(scored)
        print(seed, key, json.dumps(out["settings"][key]), flush=True)
    out["dreams"] = rows
    out["seconds"] = round(time.monotonic() - started)
    return out


def parse_setting(text: str) -> tuple[int, float]:
    steps, lr = text.split(":")
    return int(steps), float(lr)


def main(argv=None) -> None:
    from dreamer.bench.run import BenchConfig, make_run_days
    from dreamer.lm.weights import training_source
    from storage.paths import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 6])
    parser.add_argument("--inner", type=parse_setting, nargs="+", default=[(3, 1e-3), (1, 1e-3), (8, 3e-4)])
    parser.add_argument("--dreams", type=int, default=48)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dream_reward"))
    parser.add_argument("--night-only", action="store_true", help="sleep the seeds' nights and stop")
    parser.add_argument("--out", type=Path, default=RESULT, help="the result file; seeds already in it are kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    source = training_source("", cache_dir())
    record = {"command": command_line("benchmarks.dream_reward", argv), "machine": machine(load=True),
              "commit": git_commit(), "dreams": args.dreams, "inner": [f"{s}:{lr:g}" for s, lr in args.inner],
              "seeds": json.loads(args.out.read_text())["seeds"] if args.out.exists() else {}}
    for seed in args.seeds:
        day = make_run_days(BenchConfig(days=1, facts=10, updates=0, arms=["sleep"], seed=seed))[0]
        home = args.work / f"seed{seed}"
        sleep_day(home, source, seed, day["records"])
        if not args.night_only:
            record["seeds"][str(seed)] = study_seed(seed, home, source, day, args.inner, args.dreams)
            write_record(args.out, record)  # after each seed: a long run keeps what it measured


if __name__ == "__main__":
    main()
