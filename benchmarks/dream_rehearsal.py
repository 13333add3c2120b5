"""Does rehearsing the dreams Dreaming's reward keeps help the user? Measured arm by arm on one expert.

For each seed (the slept days of benchmarks/dream_reward.py, outside the judged seeds; a seed
not slept yet is slept there first), the moment Dreaming starts is rebuilt
(`dream_reward.dreaming_start`) and Dreaming's step 2 runs as a night runs it, with the preset's
settings: the grounded dreams the held-out self-probes can measure, the loss-gap filter (`keep`
+ `keep_random`), and the reward (`reward_dreams`: a throwaway copy per kept dream, tau as the
preset measures it; every committed result used tau on the dream's own fact's held-out probes,
right option, the presets' reward until `reward_measure = "asked"`). Then the stage-1 expert, restored bit for bit before each arm, is
rehearsed by Dreaming's step 4 (`rehearse`: the preset's steps and learning rate; each arm sets
its own reply form, drift term and drift weight, as a multiple of stage 1's, whatever the preset
says: stage 1's term on the night's general texts unless the arm names another) on

- `none`: nothing (stage 1 alone: the reference every arm is paired with);
- `rewarded`: the kept dreams the reward rewarded (what Dreaming rehearses);
- `rejected`: the kept dreams it did not reward (its complement: does it pick the better ones?);
- `kept`: every kept dream (the filter without the reward);
- `rewarded_answer`: the rewarded dreams with the fact alone as the reply (the form stage 1's
  cloze term trains: the word as the whole reply) instead of the sentence the writer wrote
  (`rehearse_reply = "answer"`; the other arms rehearse the sentence, `"dream"`);
- `answer_drift4`: as `rewarded_answer`, with the drift term four times as heavy;
- `answer_chat_drift`: as `rewarded_answer`, with the drift term on general questions asked as
  the chat asks them (`rehearse_drift = "chat"`) instead of on general text;
- `answer_self_drift`: as `rewarded_answer`, with the drift term on those questions held to the
  expert as stage 1 left it, over its own answers (`rehearse_drift = "self"`);
- `answer_self_drift4`: that, four times as heavy,

each `--repeats` times with another rehearsal seed (the order of the dreams and the drift
texts), which is the arm's own noise. After each arm, the day's bench probes (recall and
implication; no night sees them) are asked as the bench asks them, the morning after under the
chat's system prompt: does the greedy reply name the fact (what the user sees), multiple choice
(the answer's mean log-probability above every distractor's), and the answer's probability among
the options; the bench's general-knowledge probes, asked the same way (what a rehearsal costs
the rest of the chat; stored apart from the day's); also the drift from the base on the gate's general text (`general_drift`, as the
gate and the bench measure it) and tau over the held-out self-probes.

Steps 1-2 and the rehearsals are deterministic for a seed on one machine; a rehearsal on no
dreams is no step at all, so `none` runs once.

    python -m benchmarks.dream_rehearsal [--seeds 5 6] [--repeats 2] [--arms ...] [--work DIR]
    # writes benchmarks/results/dream_rehearsal.json (--out), keeping the seeds already there
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.dream_reward import dreaming_start, mean, sleep_day
from benchmarks.machine import ROOT, command_line, git_commit, machine, write_record

RESULT = ROOT / "benchmarks" / "results" / "dream_rehearsal.json"
ARMS = ("none", "rewarded", "rejected", "kept", "rewarded_answer", "answer_drift4", "answer_chat_drift",
        "answer_self_drift", "answer_self_drift4")
# arm: (the dreams it rehearses, rehearse_reply, the drift term's weight as a multiple of stage 1's, rehearse_drift)
SETUPS = {"none": ("none", "dream", 1, "text"), "rewarded": ("rewarded", "dream", 1, "text"),
          "rejected": ("rejected", "dream", 1, "text"), "kept": ("kept", "dream", 1, "text"),
          "rewarded_answer": ("rewarded", "answer", 1, "text"), "answer_drift4": ("rewarded", "answer", 4, "text"),
          "answer_chat_drift": ("rewarded", "answer", 1, "chat"), "answer_self_drift": ("rewarded", "answer", 1, "self"),
          "answer_self_drift4": ("rewarded", "answer", 4, "self")}


def ask(model, tokenizer, probes: list[dict], names: list[str], system: str) -> list[dict]:
    """Each probe as the bench asks it (`dreamer.bench.score.ask_probes`): {kind, answer, mc, p, gen, reply},
    `p` the answer's probability among the options."""
    from dreamer.bench.score import ask_probes

    return [{"kind": probe["kind"], "answer": probe["answer"], "mc": row["mc"],
             "p": round(torch.softmax(torch.tensor(row["scores"]), 0)[0].item(), 4), "gen": row["gen"],
             "reply": row["reply"]}
            for probe, row in zip(probes, ask_probes(model, tokenizer, probes, [system] * len(probes), names))]


def totals(rows: list[dict]) -> dict:
    """Counts per kind and overall: replies naming the fact, multiple choice right, mean probability.

    >>> totals([{"kind": "recall", "gen": True, "mc": True, "p": 0.9},
    ...         {"kind": "implication", "gen": False, "mc": True, "p": 0.5}])["all"]
    {'n': 2, 'gen': 1, 'mc': 2, 'p': 0.7}
    """
    out = {}
    for kind in ("all", *sorted({r["kind"] for r in rows})):
        part = [r for r in rows if kind == "all" or r["kind"] == kind]
        out[kind] = {"n": len(part), "gen": sum(r["gen"] for r in part), "mc": sum(r["mc"] for r in part),
                     "p": round(mean([r["p"] for r in part]), 4)}
    return out


def drift_overlap() -> list[int]:
    """The bench's general probes (by index) whose question is also one of the drift term's general
    prompts (assets/general_prompts.jsonl): the "chat" and "self" terms train on those very questions."""
    from dreamer.bench.days import general_probes
    from dreamer.sleep.stages import general_prompts

    prompts = {turn[0]["content"].strip().lower() for turn in general_prompts()}
    return [i for i, probe in enumerate(general_probes()) if probe["question"].strip().lower() in prompts]


def dream_row(dream) -> dict:
    return {"kind": dream.kind, "request": dream.request, "reply": dream.reply, "answer": dream.answer,
            "gap": round(dream.gap, 4), "tau_delta": round(dream.tau_delta, 4), "rewarded": dream.rewarded}


def study_seed(seed: int, home: Path, source: str, day: dict, dreams: int, repeats: int, arms: list[str],
               commit: str) -> dict:
    from dreamer.bench.days import general_probes
    from dreamer.eval.evaluate import general_drift
    from dreamer.lm.weights import NEW
    from dreamer.sleep.dreaming.rehearse import rehearse
    from dreamer.sleep.dreaming.score import (
        expert_state, first_filter, loss_gaps, measured_probes, probe_probabilities, restore_state, reward_dreams,
    )
    from dreamer.sleep.gate import general_texts
    from dreamer.sleep.stages import general_answers, general_prompts

    start = dreaming_start(seed, home, source, day, dreams)
    model, tokenizer, cfg, preset, system = start.model, start.tokenizer, start.cfg, start.preset, start.system
    scorable = [d for d in start.grounded if measured_probes(d, start.held, cfg)]
    loss_gaps(model, tokenizer, scorable, [], system)
    kept = first_filter(scorable, cfg, start.rng)
    reward_dreams(model, tokenizer, kept, start.held, [], system, cfg)
    rewarded = [d for d in kept if d.rewarded]
    dreams = {"none": [], "rewarded": rewarded, "rejected": [d for d in kept if not d.rewarded], "kept": kept}
    # The drift term's texts and turns as a night makes them: general questions with the bare base's answers.
    answers = general_answers(model, tokenizer, preset.memories.max_new_tokens)
    drift_texts = [f"{user[0]['content']}\n\n{answer[0]}" for user, answer in zip(general_prompts(), answers) if answer[0]]
    drift_turns = [(user[0]["content"], answer[0]) for user, answer in zip(general_prompts(), answers) if answer[0]]
    gate_texts = general_texts()
    state = expert_state(model)
    out = {"written": len(start.written), "grounded": len(start.grounded), "scorable": len(scorable),
           "held_probes": len(start.held), "truth_probes": len(start.truth), "dreams": [dream_row(d) for d in kept],
           "arms": {}}
    for arm in arms:
        runs = []
        chosen, form, heavier, drift = SETUPS[arm]
        for repeat in range(repeats if dreams[chosen] else 1):
            restore_state(model, state)
            report = rehearse(model, tokenizer, dreams[chosen], stack=[], system=system, general_texts=drift_texts,
                              general_turns=drift_turns, drift_weight=heavier * preset.distill.drift_weight,
                              drift_batch=preset.distill.drift_batch, max_len=preset.load.max_seq_len,
                              cfg=replace(cfg, rehearse_reply=form, rehearse_drift=drift),
                              rng=random.Random(1000 * seed + repeat))
            model.eval()
            rows = ask(model, tokenizer, start.truth, [NEW], start.asked)
            general = ask(model, tokenizer, general_probes(), [NEW], start.asked)
            runs.append({"repeat": repeat, "rehearsal": report, "totals": totals(rows), "probes": rows,
                         "general": general, "general_totals": totals(general)["all"],
                         "drift_kl": round(general_drift(model, tokenizer, gate_texts, None, [NEW],
                                                         max_len=preset.load.max_seq_len), 4),
                         "tau": round(mean(probe_probabilities(model, tokenizer, start.held, [NEW], system)), 4)})
            print(seed, arm, repeat, json.dumps(runs[-1]["totals"]["all"]), json.dumps(runs[-1]["general_totals"]),
                  runs[-1]["drift_kl"], flush=True)
        out["arms"][arm] = {"dreams": len(dreams[chosen]), "commit": commit, "runs": runs}
    restore_state(model, state)
    out["seconds"] = round(time.monotonic() - start.began)
    return out


def main(argv=None) -> None:
    from dreamer.bench.run import BenchConfig, make_run_days
    from dreamer.lm.weights import training_source
    from storage.paths import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 6])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                        help="arms to run; a seed's other arms already in --out are kept")
    parser.add_argument("--dreams", type=int, default=48)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dream_reward"), help="the slept days' homes")
    parser.add_argument("--out", type=Path, default=RESULT, help="the result file; seeds already in it are kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    source = training_source("", cache_dir())
    before = json.loads(args.out.read_text()) if args.out.exists() else {"seeds": {}}
    for seed in before["seeds"].values():  # each arm keeps the commit it ran at
        for arm in seed["arms"].values():
            arm.setdefault("commit", before.get("commit"))
    this = {"command": command_line("benchmarks.dream_rehearsal", argv), "machine": machine(load=True),
            "commit": git_commit()}
    runs = before.get("runs") or ([{k: before[k] for k in this}] if "command" in before else [])
    record = {**this, "runs": runs + [this], "dreams": args.dreams, "repeats": args.repeats,
              "general_in_drift": drift_overlap(), "seeds": before["seeds"]}
    for seed in args.seeds:
        day = make_run_days(BenchConfig(days=1, facts=10, updates=0, arms=["sleep"], seed=seed))[0]
        home = args.work / f"seed{seed}"
        sleep_day(home, source, seed, day["records"])
        measured = study_seed(seed, home, source, day, args.dreams, args.repeats, args.arms, this["commit"])
        earlier = record["seeds"].get(str(seed), {}).get("arms", {})
        if earlier and earlier.get("none") and measured["dreams"] != record["seeds"][str(seed)]["dreams"]:
            raise SystemExit(f"seed {seed}: steps 1-2 did not reproduce the dreams already in {args.out}")
        measured["arms"] = {**earlier, **measured["arms"]}
        record["seeds"][str(seed)] = measured
        write_record(args.out, record)  # after each seed: a long run keeps what it measured


if __name__ == "__main__":
    main()
