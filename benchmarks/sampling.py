"""Chat sampling defaults, chosen by measurement: a fixed set of chat turns (benchmarks/sampling_turns.jsonl)
answered by the embedded model through the chat's own prompt (agent.memory.build_prompt) and runtime
(llama.cpp), under each candidate setting, three seeds each.

    python -m benchmarks.sampling            # writes benchmarks/results/sampling.json; resumes a partial run
    python -m benchmarks.sampling --model OTHER.gguf --only-default --out F   # another model, the default setting

Each reply is judged by plain rules, written before the first run and never changed after it:
- english: the reply keeps the user's language (English): at most 2% of its letters are outside
  ASCII, and a reply of 8 words or more has at least 15% common English words;
- loop: some run of 4 words occurs 3 times or more, or one line (of 3+ words) repeats;
- cut: the reply ran to the chat's token limit (max_reply_tokens), not to its end;
- fact: for the turns that expect one, the reply names it (dreamer.bench.score.names);
- good: english, no loop, not cut, and the fact named where one is expected.
The setting with the most good replies wins; a tie goes to the earlier setting in SETTINGS (the
candidates are listed from the current default outward). The candidates are fixed before the run.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from benchmarks.machine import command_line, git_commit, machine, write_record

TURNS = Path(__file__).with_name("sampling_turns.jsonl")
OUT = Path(__file__).parent / "results" / "sampling.json"
SEEDS = (1, 2, 3)
# (temperature, top_p, min_p, repeat_penalty): the current default first, then one change at a time.
SETTINGS = [
    (0.7, 0.95, 0.05, 1.0),
    (0.7, 0.95, 0.05, 1.1),
    (0.7, 0.95, 0.05, 1.2),
    (0.5, 0.95, 0.05, 1.0),
    (0.5, 0.95, 0.05, 1.1),
    (0.3, 0.95, 0.05, 1.0),
    (0.3, 0.95, 0.05, 1.1),
    (0.3, 0.95, 0.05, 1.2),
    (0.7, 0.95, 0.1, 1.1),
    (0.5, 0.9, 0.1, 1.1),
]
ENGLISH = set("""a about after all also am an and any are as at be because been but by can could did do does for
from get had has have he her here his how i if in into is it its just like make many may me more most my no not
now of on one or our out so some than that the their them then there these they this to up us very was we well
were what when where which who why will with would you your""".split())


def judge(reply: str, cut: bool, fact: str | None) -> dict:
    from dreamer.bench.score import names

    letters = [c for c in reply if c.isalpha()]
    foreign = sum(1 for c in letters if not c.isascii()) / max(1, len(letters))
    words = re.findall(r"[a-z']+", reply.casefold())
    common = sum(1 for w in words if w in ENGLISH) / max(1, len(words))
    english = foreign <= 0.02 and (len(words) < 8 or common >= 0.15)
    grams = [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
    lines = [ln.strip().casefold() for ln in reply.splitlines() if len(ln.split()) >= 3]
    loop = any(grams.count(g) >= 3 for g in set(grams)) or len(lines) != len(set(lines))
    named = None if fact is None else names(reply.casefold(), fact)
    return {"english": english, "loop": loop, "cut": cut, "fact": named,
            "good": english and not loop and not cut and named is not False}


def prompt_for(turn: dict, config, count) -> list[dict]:
    """The messages the chat would send: its system prompt, the conversation so far, the new turn."""
    from agent.memory import build_prompt
    from storage import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "dreamer.db")
        conversation = store.new_conversation()
        for role, text in turn["history"]:
            store.add_message(conversation, role, text)
        store.add_message(conversation, "user", turn["user"])
        messages = build_prompt(store, config, conversation, count)
        store.close()
    return messages


def main(argv=None) -> int:
    from agent.llama_runtime import LlamaRuntime
    from agent.models import embedded_gguf_path
    from storage import Config

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--model", type=Path, help="another GGUF (default: the embedded model)")
    parser.add_argument("--only-default", action="store_true", help="only the chat's default setting")
    args = parser.parse_args(argv)
    config = Config()
    turns = [json.loads(line) for line in TURNS.read_text().splitlines() if line.strip()]
    record = json.loads(args.out.read_text()) if args.out.exists() else {
        "command": command_line("benchmarks.sampling", argv), "machine": machine(load=True),
        "commit": git_commit(), "max_reply_tokens": config.max_reply_tokens, "seeds": list(SEEDS),
        "turns": len(turns), "model": str(args.model or "embedded"), "settings": []}
    done = {tuple(s["setting"]) for s in record["settings"]}
    default = (config.temperature, config.top_p, config.min_p, config.repeat_penalty)
    for setting in [default] if args.only_default else SETTINGS:
        if setting in done:
            continue
        temperature, top_p, min_p, repeat_penalty = setting
        replies = []
        for seed in SEEDS:
            runtime = LlamaRuntime(args.model or embedded_gguf_path(), n_threads=1, seed=seed)
            for turn in turns:
                text = "".join(runtime.stream(prompt_for(turn, config, runtime.count_tokens), max_tokens=config.max_reply_tokens,
                                              temperature=temperature, top_p=top_p, min_p=min_p,
                                              repeat_penalty=repeat_penalty))
                cut = runtime.finish_reason == "length"
                replies.append({"turn": turn["id"], "seed": seed, "reply": text,
                                "tokens": runtime.count_tokens(text), **judge(text, cut, turn.get("fact"))})
            runtime.llm.close()
        n = len(replies)
        facts = [r["fact"] for r in replies if r["fact"] is not None]
        summary = {"setting": list(setting), "replies": n, "good": sum(r["good"] for r in replies) / n,
                   "english": sum(r["english"] for r in replies) / n, "loop": sum(r["loop"] for r in replies) / n,
                   "cut": sum(r["cut"] for r in replies) / n, "fact": sum(facts) / max(1, len(facts)),
                   "mean_tokens": sum(r["tokens"] for r in replies) / n,
                   "examples": [r for r in replies if r["seed"] == SEEDS[0]]}
        record["settings"].append(summary)
        write_record(args.out, record)  # resumable: a setting is kept once all its replies are in
        print(f"{setting}: good {summary['good']:.0%} english {summary['english']:.0%} loop {summary['loop']:.0%} "
              f"cut {summary['cut']:.0%} fact {summary['fact']:.0%} tokens {summary['mean_tokens']:.0f}", flush=True)
    if args.only_default:
        return 0
    best = max(record["settings"], key=lambda s: (s["good"], -SETTINGS.index(tuple(s["setting"]))))
    record["chosen"] = best["setting"]
    write_record(args.out, record)
    print("chosen:", best["setting"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
