"""How often a written dream is grounded: the frame Dreaming writes in, on the embedded model.

Three frames, each writing `--dreams` dreams for one synthetic day (`dreamer bench`'s days, 10
facts, one day per seed), on the first night (no stack yet, a fresh writer):

- `whole_day`: the frame before commit e6c220d, kept here as the baseline. The writer sees the
  whole day in its system prompt and one instruction per kind (below, verbatim); the teacher
  (the day in context) answers each request. Grounded on any salient word of the day.
- `one_turn`: what dreamer does now (`dreamer.sleep.dreaming.write.write_dreams`): one user
  turn at a time, after two worked examples of the kind, the writer writing request and reply.
  Grounded on that turn's words.
- `one_turn_teacher`: the same requests as `one_turn`, answered instead by the teacher with the
  turn in view (the chat's short-term memory of that one line), grounded the same way: is it
  the frame or the writer's own reply that grounds?

Counted per frame: dreams written, grounded, and grounded on a told fact (the reply names the
answer of one of the day's probes, which the night never sees). The same seed gives the same
day and the same sampling seed to every frame.

    python -m benchmarks.dream_writing [--seeds 0 1 2 3] [--dreams 48]
    # writes benchmarks/results/dream_writing.json
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from benchmarks.machine import ROOT, command_line, git_commit, machine, write_record
from dreamer.bench.days import make_days
from dreamer.lm.generation import sample, sample_many
from dreamer.lm.prompt_cache import PromptCache
from dreamer.lm.weights import WRITER, build_stack, load_base, plan_device, training_source
from dreamer.sleep.config import DistillConfig, DreamingConfig, LoadConfig
from dreamer.sleep.dreaming.write import clean_request, ground, mentions, turn_words, write_dreams
from dreamer.sleep.dreaming.writer import attach_writer
from dreamer.sleep.seeding.day_text import teacher_system
from dreamer.sleep.seeding.memories import transcript
from storage.config import DEFAULT_SYSTEM_PROMPT
from storage.paths import cache_dir

SYSTEM = DEFAULT_SYSTEM_PROMPT + "\nToday is Monday, 03 March 2025."
OLD_INSTRUCTIONS = {  # the writer's instructions before e6c220d, verbatim
    "question": ("Write one short question the user could ask you later to check that you remember something they "
                 "told you today, in other words than theirs. Write only the question."),
    "implication": ("Write one short question about what follows from something the user told you today for their "
                    "plans or their life: where to go, what to buy, what to expect. Write only the question."),
    "application": ("Write one short request the user could make later, for a suggestion, a plan or advice, where "
                    "something they told you today should shape your answer. Write only the request."),
    "paraphrase": "Write one short question that asks you to say again something the user told you today. Write only the question.",
}
FRAMES = ("whole_day", "one_turn", "one_turn_teacher")


def counted(dreams: list[dict], answers: list[str]) -> dict:
    grounded = [d for d in dreams if d["answer"]]
    return {"written": len(dreams), "grounded": len(grounded),
            "on_a_fact": sum(any(mentions(d["reply"], a) for a in answers) for d in grounded),
            "by_kind": {k: sum(d["kind"] == k for d in grounded) for k in OLD_INSTRUCTIONS},
            "examples": grounded[:4]}


def split_counts(total: int, kinds: list[str]) -> dict[str, int]:
    """`total` dreams spread over `kinds` as evenly as possible, the first kinds taking the rest (the old frame's plan)."""
    return {kind: total // len(kinds) + (i < total % len(kinds)) for i, kind in enumerate(kinds)}


def whole_day(model, tokenizer, day: dict, cfg: DreamingConfig) -> list[dict]:
    conversations = day["records"]
    opened = [{"role": "system", "content": teacher_system(SYSTEM, transcript(conversations, tokenizer, 1536))}]
    cache = PromptCache(tokenizer)
    requests = []
    for kind, count in split_counts(cfg.dreams, list(OLD_INSTRUCTIONS)).items():
        for text in sample(model, tokenizer, opened + [{"role": "user", "content": OLD_INSTRUCTIONS[kind]}], [WRITER],
                           n=count, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, cache=cache):
            request = clean_request(text)
            if request and request.lower() not in {r.lower() for _, r in requests}:
                requests.append((kind, request))
    replies = sample_many(model, tokenizer, [opened + [{"role": "user", "content": r}] for _, r in requests], None, n=1,
                          max_new_tokens=cfg.max_new_tokens, temperature=None, cache=cache)
    turns = [m["content"] for c in conversations for m in c["messages"] if m["role"] == "user"]
    words = list(dict.fromkeys(w for t in turns for w in turn_words(t)))
    out = []
    for (kind, request), (reply,) in zip(requests, replies):
        grounded = ground(request, reply, words)
        out.append({"kind": kind, "request": request, "reply": grounded[1] if grounded else reply,
                    "answer": grounded[0] if grounded else None})
    return out


def one_turn(model, tokenizer, day: dict, cfg: DreamingConfig, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(the dreams as written, the same requests answered by the teacher with the turn in view)."""
    dreams = write_dreams(model, tokenizer, conversations=day["records"], base_system=SYSTEM, stack=[], old_probes=[],
                          cfg=cfg, rng=rng)
    replies = sample_many(model, tokenizer, [d.teacher_view + [{"role": "user", "content": d.request}] for d in dreams],
                          None, n=1, max_new_tokens=cfg.max_new_tokens, temperature=None)
    written, taught = [], []
    for dream, (reply,) in zip(dreams, replies):
        written.append({"kind": dream.kind, "request": dream.request, "reply": dream.reply, "answer": dream.answer})
        grounded = ground(dream.request, reply, dream.words)
        taught.append({"kind": dream.kind, "request": dream.request, "reply": grounded[1] if grounded else reply,
                       "answer": grounded[0] if grounded else None})
    return written, taught


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--dreams", type=int, default=48)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    base, tokenizer = load_base(training_source("", cache_dir()), plan_device(LoadConfig(device="cpu")))
    model = build_stack(base, [], DistillConfig())
    model.eval()
    cfg = DreamingConfig(dreams=args.dreams, keep=1, keep_random=0)
    attach_writer(model, [], cfg, DistillConfig())
    record = {"command": command_line("benchmarks.dream_writing", argv), "machine": machine(load=True),
              "commit": git_commit(), "dreams": args.dreams, "seeds": {}}
    for seed in args.seeds:
        day = make_days(seed, 1, 10)[0]
        answers = sorted({str(p["answer"]) for p in day["probes"] if p["kind"] in ("recall", "implication")})
        started = time.monotonic()
        torch.manual_seed(seed)
        old = whole_day(model, tokenizer, day, cfg)
        torch.manual_seed(seed)
        written, taught = one_turn(model, tokenizer, day, cfg, random.Random(seed))
        record["seeds"][str(seed)] = {name: counted(dreams, answers) for name, dreams in
                                      zip(FRAMES, (old, written, taught))}
        record["seeds"][str(seed)]["seconds"] = round(time.monotonic() - started)
        print(seed, {f: {k: v for k, v in record["seeds"][str(seed)][f].items() if k != "examples"} for f in FRAMES},
              flush=True)
    write_record(ROOT / "benchmarks" / "results" / "dream_writing.json", record)


if __name__ == "__main__":
    main()
