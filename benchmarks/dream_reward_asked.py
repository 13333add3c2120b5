"""Rewards asked as the chat asks, against what the chat then says: measured dream by dream.

`benchmarks/dream_reward.py` found the reward's cloze self-probes at the ceiling (the right
option's probability 0.96-0.99 after stage 1) and judged rewards by multiple choice. This study
judges them by the headline: does the greedy reply name the fact. The moment Dreaming starts is
rebuilt on the same slept days (`dream_reward.dreaming_start`, homes under `--work`, reused), the
night's dreams written as Dreaming writes them, and every grounded dream trains a throwaway copy
of the expert (`train_copy`, the presets' inner steps and learning rate). Before and after each
copy, closed book:

- the reward's probes, the night's held-out self-probes (chosen as Dreaming chooses them), two ways:
  - `tau`: each cloze probe's right option's probability (Dreaming's reward before this study);
  - **asked**: each held-out probe's sentence turned into a request asked as the chat asks (its
    system prompt): "Remind me: my parrot is called ...?" (`dreamer.sleep.dreaming.score.asked_request`).
    `named` is the bench's matcher without its wrong-option rule; Dreaming's reward, built from
    this study, adds the rule (a reply that also names a wrong option names nothing), so the two
    differ on replies that list several of the day's words. `named`: the greedy reply names the
    answer; `lp`: the answer's log-probability after the reply's start in the chat's voice
    ("Your parrot is called", the user's sentence turned to the second person). Of the request
    forms tried on the two days' stage-1 experts (9 held-out probes each), the form a rehearsal
    asks in ("What do you remember about parrot?") was named by 0 and 0 replies, the cloze in
    quotes ('Fill in the blank from what I told you: "..."') by 8 and 8, this one by 5 and 4 (a
    one-off check, not committed):
    room to rise and to fall;
- the truth: the bench's recall and implication probes of the day (no night sees them), asked as
  the bench asks: `gen`, how many replies name the fact (the headline), and `mc`, the right
  option's probability.

Rewards (the change a copy makes): `tau_fact` (Dreaming's before this study: its own fact's cloze probes),
`asked_fact` / `asked_all` (replies naming: its own fact's probes / every held-out probe),
`asked_lp_fact`, `asked_lp_all`, `asked_lp_specific` (its own fact's lp change minus the other
facts': a dream that raises one word everywhere earns nothing), and `on_topic` (no copy: the
request names a salient word of the dream's turn besides the answer). Truths: `gen` and `mc`
over every truth probe, `gen_fact` and `mc_fact` over those whose answer the dream's reply names.

    python -m benchmarks.dream_reward_asked [--seeds 5 6] [--work /tmp/dream_reward]
    # writes benchmarks/results/dream_reward_asked.json (--out), keeping the seeds already there
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from benchmarks.dream_reward import TRUTH_KINDS, dreaming_start, mean, sleep_day, spearman
from benchmarks.machine import ROOT, command_line, git_commit, machine, write_record

RESULT = ROOT / "benchmarks" / "results" / "dream_reward_asked.json"
REWARDS = ("tau_fact", "asked_fact", "asked_all", "asked_lp_fact", "asked_lp_all", "asked_lp_specific", "on_topic")
TRUTHS = ("gen", "gen_fact", "mc", "mc_fact")
SECOND_PERSON = {"i": "you", "i'm": "you're", "i've": "you've", "i'd": "you'd", "i'll": "you'll", "me": "you",
                 "my": "your", "mine": "yours", "myself": "yourself", "am": "are"}


def second_person(text: str) -> str:
    """The user's sentence as the chat would say it back.

    >>> second_person("I'm sure my parrot likes me, so I am happy.")
    "You're sure your parrot likes you, so you are happy."
    """
    def swap(match: re.Match) -> str:
        word = SECOND_PERSON[match[0].lower()]
        return word.capitalize() if match.start() == 0 else word
    text = re.sub(r"\bI was\b", "I were", text)
    return re.sub(r"(?<![\w'-])(I|I'm|I've|I'd|I'll|me|my|mine|myself|am)(?![\w'-])", swap, text, flags=re.I)


def asked_probe(probe: dict) -> dict | None:
    """A held-out cloze probe asked as the chat asks: the request, the answer, and the reply's
    start before the answer in the chat's voice (None: the probe quotes no blanked sentence)."""
    from dreamer.sleep.dreaming.score import asked_request
    from dreamer.sleep.dreaming.write import blanked_sentence
    from dreamer.sleep.seeding.cloze import BLANK

    sentence = blanked_sentence(probe)
    if BLANK not in sentence:
        return None
    return {"request": asked_request(probe), "answer": str(probe["answer"]),
            "start": second_person(sentence).split(BLANK)[0].rstrip()}


def ask_held(model, tokenizer, asked: list[dict], names: list[str], system: str) -> dict:
    """{named: per probe, the greedy reply names the answer; lp: the answer's log-probability after the start}."""
    from dreamer.eval.replies import names as says
    from dreamer.eval.replies import said
    from dreamer.lm.generation import chat_ids, sample_many
    from dreamer.lm.scoring import inference, tail_logprobs
    from dreamer.lm.weights import adapters

    chats = [[{"role": "system", "content": system}, {"role": "user", "content": a["request"]}] for a in asked]
    replies = sample_many(model, tokenizer, chats, names, n=1, max_new_tokens=40, temperature=None)
    lps = []
    with inference(model), adapters(model, names):
        for chat, a in zip(chats, asked):
            start = tokenizer(a["start"], add_special_tokens=False)["input_ids"] if a["start"] else []
            answer = tokenizer((" " if a["start"] else "") + a["answer"], add_special_tokens=False)["input_ids"]
            lps.append(tail_logprobs(model, tokenizer, chat_ids(tokenizer, chat) + start, [answer])[0].sum().item())
    return {"named": [says(said(r), a["answer"]) for (r,), a in zip(replies, asked)], "lp": lps}


def measure(model, tokenizer, start, asked: list[dict], names: list[str]) -> dict:
    from dreamer.bench.score import ask_probes
    from dreamer.sleep.dreaming.score import probe_probabilities

    rows = ask_probes(model, tokenizer, start.truth, [start.asked] * len(start.truth), names)
    held = ask_held(model, tokenizer, asked, names, start.system)
    return {"tau": probe_probabilities(model, tokenizer, start.held, names, start.system),
            "named": held["named"], "lp": held["lp"], "gen": [bool(r["gen"]) for r in rows],
            "mc": [float(torch.softmax(torch.tensor(r["scores"]), 0)[0]) for r in rows]}


def delta(after: list, before: list, which: list[int], total: bool = False) -> float | None:
    if not which:
        return None
    change = [float(after[i]) - float(before[i]) for i in which]
    return sum(change) if total else sum(change) / len(change)


def rewards_and_truths(dream, after: dict, before: dict, start, own: list[int]) -> dict:
    from dreamer.sleep.dreaming.write import mentions

    other = [i for i in range(len(start.held)) if i not in own]
    truth_fact = [i for i, p in enumerate(start.truth) if mentions(dream.reply, str(p["answer"]))]
    every = list(range(len(start.truth)))
    own_lp, other_lp = delta(after["lp"], before["lp"], own), delta(after["lp"], before["lp"], other)
    return {
        "tau_fact": delta(after["tau"], before["tau"], own),
        "asked_fact": delta(after["named"], before["named"], own),
        "asked_all": delta(after["named"], before["named"], list(range(len(start.held))), total=True),
        "asked_lp_fact": own_lp, "asked_lp_all": delta(after["lp"], before["lp"], list(range(len(start.held)))),
        "asked_lp_specific": own_lp - other_lp if own_lp is not None and other_lp is not None else None,
        "on_topic": float(any(w.casefold() != dream.answer.casefold() and mentions(dream.request, w) for w in dream.words)),
        "gen": delta(after["gen"], before["gen"], every, total=True), "gen_fact": delta(after["gen"], before["gen"], truth_fact),
        "mc": delta(after["mc"], before["mc"], every), "mc_fact": delta(after["mc"], before["mc"], truth_fact),
    }


def summarise(scored: list[dict]) -> dict:
    """Per reward: rank correlation with each truth; the dreams it rewards (change > 0) and their mean truths."""
    out = {"dreams": len(scored)}
    for truth in TRUTHS:
        rows = [s[truth] for s in scored if s[truth] is not None]
        out[truth] = {"defined": len(rows), "up": sum(v > 0 for v in rows), "down": sum(v < 0 for v in rows),
                      "mean": round(mean(rows), 4) if rows else None}
    for reward in REWARDS:
        rows = [s for s in scored if s[reward] is not None]
        kept = [s for s in rows if s[reward] > 0]
        entry = {"defined": len(rows), "rewarded": len(kept)}
        for truth in TRUTHS:
            both = [s for s in rows if s[truth] is not None]
            entry[f"spearman_{truth}"] = spearman([s[reward] for s in both], [s[truth] for s in both])
            values = [s[truth] for s in kept if s[truth] is not None]
            entry[f"{truth}_if_rewarded"] = round(mean(values), 4) if values else None
        out[reward] = entry
    return out


def study_seed(seed: int, home: Path, source: str, day: dict, dreams: int) -> dict:
    from dreamer.lm.weights import NEW
    from dreamer.sleep.dreaming.score import expert_state, own_probes, restore_state, train_copy

    start = dreaming_start(seed, home, source, day, dreams)
    model, tokenizer, cfg = start.model, start.tokenizer, start.cfg
    pairs = [(p, asked_probe(p)) for p in start.held]
    start.held = [p for p, a in pairs if a]
    asked = [a for _, a in pairs if a]
    names = [NEW]
    before = measure(model, tokenizer, start, asked, names)
    state = expert_state(model)
    rows, scored = [], []
    for dream in start.grounded:
        train_copy(model, tokenizer, dream, names, start.system, cfg.inner_steps, cfg.inner_learning_rate)
        after = measure(model, tokenizer, start, asked, names)
        restore_state(model, state)
        measured = rewards_and_truths(dream, after, before, start, own_probes(dream, start.held))
        scored.append(measured)
        rows.append({"kind": dream.kind, "request": dream.request, "reply": dream.reply, "answer": dream.answer,
                     **{k: (round(v, 4) if v is not None else None) for k, v in measured.items()}})
        print(seed, json.dumps(rows[-1]), flush=True)
    return {"written": len(start.written), "grounded": len(start.grounded), "inner": f"{cfg.inner_steps}:{cfg.inner_learning_rate:g}",
            "held": [{"request": a["request"], "answer": a["answer"], "start": a["start"]} for a in asked],
            "before": {"tau": round(mean(before["tau"]), 4), "named": f"{sum(before['named'])}/{len(asked)}",
                       "gen": f"{sum(before['gen'])}/{len(before['gen'])}", "mc": round(mean(before["mc"]), 4)},
            "summary": summarise(scored), "dreams": rows, "seconds": round(time.monotonic() - start.began)}


def main(argv=None) -> None:
    from dreamer.bench.run import BenchConfig, make_run_days
    from dreamer.lm.weights import training_source
    from storage.paths import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 6])
    parser.add_argument("--dreams", type=int, default=48)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dream_reward"))
    parser.add_argument("--out", type=Path, default=RESULT, help="the result file; seeds already in it are kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    source = training_source("", cache_dir())
    record = {"command": command_line("benchmarks.dream_reward_asked", argv), "machine": machine(load=True),
              "commit": git_commit(), "dreams": args.dreams, "truth_kinds": list(TRUTH_KINDS),
              "seeds": json.loads(args.out.read_text())["seeds"] if args.out.exists() else {}}
    for seed in args.seeds:
        day = make_run_days(BenchConfig(days=1, facts=10, updates=0, arms=["sleep"], seed=seed))[0]
        home = args.work / f"seed{seed}"
        sleep_day(home, source, seed, day["records"])
        record["seeds"][str(seed)] = study_seed(seed, home, source, day, args.dreams)
        write_record(args.out, record)  # after each seed: a long run keeps what it measured


if __name__ == "__main__":
    main()
