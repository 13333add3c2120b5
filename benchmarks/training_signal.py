"""What can the embedded 135M model learn a fact from, and what does its teacher know?

Two measurements on the synthetic day of `dreamer bench` (dreamer.bench.days, recall probes only) (night 1, `--facts`
facts, seed 0), scored by multiple choice as that script scores them (chance 25%):

ceiling   the probes asked of the *teacher*, the base with the day in its system prompt, as the
          sleep's teacher holds it: the whole day; the one user turn with the most words in
          common with the question (what a lexical recall finds); the turn that holds the answer
          (an oracle, an upper bound). Closed book (the question alone, and under the chat's
          system prompt) for reference. Distillation from this teacher cannot beat what it knows.
sft       which *label-free* training data transfers to differently-worded probes: a fresh LoRA
          (rank 16, alpha 32, lr 1e-3, `--steps` x 4, the chat's system prompt with a random
          date) trained by cross-entropy, closed book, on
            cloze      each salient word of each user turn blanked (dreamer.sleep.seeding.cloze.clozes) -> the word;
            questions  questions the base writes about each turn, kept if its answer, holding the
                       turn, contains a salient word the question lacks (round-trip filter) -> that answer.
          Scored on the probes, on the same questions with other answers of the same day as
          distractors (`inday`: favouring today's words in general gives chance there) and on the
          original options after "Tell me something." (`generic`: the answers' prior).
          Direct supervision, not dreamer's objective: it says which prompts carry the fact.
          Options: `--system` the system turn (the chat's on a random later day, on the day,
          none, or a mix); `--objective dreamer` the sleep's own cloze recall term alone
          (dreamer.sleep.seeding.distill.cloze_loss on its prompts, one negative; no other term);
          `--schedule night` the sleep's warmup + cosine and clipping; `--targets mlp|attention` the
          LoRA on the MLP or attention projections only. Reports drift KL and perplexity on the
          gate's held-out general text too: what the recall costs.
sharpness what a distillation target can carry: for each cloze prompt, the probability of the
          missing word's first token as the reply's first token ("word") and right after the
          sentence read back up to the blank ("sentence"), for the teacher holding the turn and
          for the student without it. Mean, median, and how many exceed 0.5.

    .venv/bin/python benchmarks/training_signal.py ceiling [--facts 20]
    .venv/bin/python benchmarks/training_signal.py sft --data cloze|questions [--facts 20] [--steps 100]
    .venv/bin/python benchmarks/training_signal.py sft --objective dreamer --schedule night --targets mlp --facts 10
    .venv/bin/python benchmarks/training_signal.py sharpness [--facts 20]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamer.bench.days import FIRST_DAY, controls, make_days  # noqa: E402
from dreamer.lm.weights import embedded_training_dir  # noqa: E402

QUESTION_REQUESTS = (
    'I told you: "{turn}"\nWrite one short question about me that this sentence answers. Write only the question.',
    "Turn this sentence into a question that asks for its key detail.\nSentence: {turn}\nQuestion:",
)


def load(cache: Path):
    from transformers import AutoModelForCausalLM

    from dreamer.lm.chat_tokenizer import align_generation, load_chat_tokenizer

    source = str(embedded_training_dir(Path(cache)))
    tokenizer = load_chat_tokenizer(source)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    align_generation(model, tokenizer)
    return model, tokenizer


def accuracy(model, tokenizer, probes: list[dict], system=None) -> float:
    from dreamer.lm.scoring import option_scores

    hits = 0
    for p in probes:
        scores = option_scores(model, tokenizer, p["question"], [p["answer"], *p["distractors"]],
                               system=system(p) if callable(system) else system)
        hits += scores[0] > max(scores[1:])
    return hits / len(probes)


def user_turns(day: dict) -> list[str]:
    return [" ".join(m["content"].split()) for r in day["records"] for m in r["messages"] if m["role"] == "user"]


def chat_system(day: date) -> str:
    from agent.memory import system_message
    from storage import Config

    return system_message(Config(), day)


def ceiling(model, tokenizer, day: dict) -> dict:
    from dreamer.sleep.seeding.day_text import teacher_system
    from dreamer.sleep.seeding.day_text import STOPWORDS

    users = user_turns(day)
    words = lambda text: {w.lower() for w in re.findall(r"[A-Za-z']+", text)} - STOPWORDS  # noqa: E731
    base = chat_system(FIRST_DAY)
    holding = lambda lines: teacher_system(base, "\n".join(f"- User: {u}" for u in lines))  # noqa: E731
    return {
        "closed, question alone": accuracy(model, tokenizer, day["probes"]),
        "closed, chat system prompt": accuracy(model, tokenizer, day["probes"], chat_system(FIRST_DAY)),
        "teacher, whole day": accuracy(model, tokenizer, day["probes"], holding(users)),
        "teacher, best-overlap turn": accuracy(model, tokenizer, day["probes"], lambda p: holding(
            [max(users, key=lambda u: len(words(u) & words(p["question"])))])),
        "teacher, the answer's turn (oracle)": accuracy(model, tokenizer, day["probes"], lambda p: holding(
            [u for u in users if p["answer"] in u])),
    }


def training_pairs(model, tokenizer, day: dict, data: str) -> list[tuple[str, str]]:
    from dreamer.sleep.seeding.cloze import FILL, clozes, focused_system
    from dreamer.lm.generation import sample_many
    from dreamer.sleep.seeding.day_text import topics
    from dreamer.sleep.seeding.memories import is_question

    users = user_turns(day)
    if data == "cloze":
        return [(FILL.format(blanked=c.blanked), c.word) for c in clozes(users)]
    base = chat_system(FIRST_DAY)
    asks = [(u, [{"role": "system", "content": base}, {"role": "user", "content": r.format(turn=u)}])
            for u in users for r in QUESTION_REQUESTS]
    written = sample_many(model, tokenizer, [a for _, a in asks], [], n=6, max_new_tokens=24, temperature=0.8)
    candidates = list(dict.fromkeys(
        (u, q) for (u, _), texts in zip(asks, written) for q in (t.split("\n")[0].strip().strip('"') for t in texts)
        if is_question(q) and any(k.lower() not in q.lower() for k in topics(u, limit=3))))
    answers = sample_many(model, tokenizer, [[{"role": "system", "content": focused_system(base, u)},
                                              {"role": "user", "content": q}] for u, q in candidates],
                          [], n=1, max_new_tokens=24, temperature=None)
    return [(q, a[0]) for (u, q), a in zip(candidates, answers)
            if any(k.lower() in a[0].lower() and k.lower() not in q.lower() for k in topics(u, limit=3))]


def sft(model, tokenizer, day: dict, data: str, steps: int, seed: int, system: str = "later",
        objective: str = "ce", schedule: str = "constant", targets: str = "all") -> dict:
    import torch
    from peft import get_peft_model

    from dreamer.sleep.seeding.cloze import clozes, recall_prompts
    from dreamer.sleep.seeding.distill import cloze_loss, lr_scale
    from dreamer.eval.evaluate import general_drift, perplexity
    from dreamer.sleep.gate import general_texts
    from dreamer.sleep.config import DistillConfig
    from dreamer.lm.weights import NEW, lora_config

    started = time.perf_counter()
    pairs = training_pairs(model, tokenizer, day, data)
    if not pairs:
        raise SystemExit(f"no training pairs from --data {data}")
    model = get_peft_model(model, lora_config(model, DistillConfig(rank=16, lora_alpha=32, targets=targets)),
                           adapter_name=NEW)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    rng = random.Random(seed)
    # "night": the sleep's warmup + cosine schedule and gradient clipping (dreamer.sleep.seeding.distill)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_scale(s, steps) if schedule == "night" else 1.0)
    # "dreamer": the sleep's cloze recall term itself (its prompt, one negative from the day)
    recall = recall_prompts(clozes(user_turns(day)), [{"role": "system", "content": chat_system(FIRST_DAY)}], rng)

    def encode(question: str, answer: str) -> tuple[list[int], list[int]]:
        later = FIRST_DAY + timedelta(days=rng.randint(1, 20))  # the chat meets the fact on later days
        turns = [{"role": "user", "content": question}]
        if system == "later" or (system == "mix" and rng.random() < 0.5):
            turns.insert(0, {"role": "system", "content": chat_system(later)})
        elif system == "fixed":
            turns.insert(0, {"role": "system", "content": chat_system(FIRST_DAY)})
        prompt = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True, return_dict=False)
        reply = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return prompt + reply, [-100] * len(prompt) + reply

    model.train()
    for _ in range(steps):
        if objective == "dreamer":
            picked = [rng.choice(recall) for _ in range(4)]
            loss = cloze_loss(model, tokenizer, [(m, w, rng.sample(o, min(1, len(o)))) for m, w, o in picked], [])
        else:
            batch = [encode(*rng.choice(pairs)) for _ in range(4)]
            width = max(len(ids) for ids, _ in batch)
            pad = lambda row, fill: row + [fill] * (width - len(row))  # noqa: E731
            loss = model(input_ids=torch.tensor([pad(i, tokenizer.pad_token_id) for i, _ in batch]),
                         attention_mask=torch.tensor([pad([1] * len(i), 0) for i, _ in batch]),
                         labels=torch.tensor([pad(y, -100) for _, y in batch])).loss
        loss.backward()
        if schedule == "night":
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.eval()
    sets = {"probes": day["probes"], **{name: rows for name, rows in controls(day["probes"], seed).items()}}
    out = {"pairs": len(pairs), "examples": [list(p) for p in pairs[:5]], "seconds": round(time.perf_counter() - started)}
    for name, rows in sets.items():
        out[f"after, {name}"] = accuracy(model, tokenizer, rows)
        with model.disable_adapter():
            out[f"base, {name}"] = accuracy(model, tokenizer, rows)
    texts = general_texts()
    out["drift KL vs base"] = general_drift(model, tokenizer, texts, None, [NEW], max_len=384)
    out["perplexity"] = perplexity(model, tokenizer, texts, max_len=384)
    return out


def sharpness(model, tokenizer, day: dict) -> dict:
    import statistics

    import torch

    from dreamer.sleep.seeding.cloze import BLANK, FILL, clozes, focused_system
    from dreamer.lm.generation import chat_ids

    users = user_turns(day)
    base = chat_system(FIRST_DAY)
    probabilities: dict[str, list[float]] = {}
    for item in clozes(users):
        request = {"role": "user", "content": FILL.format(blanked=item.blanked)}
        read_back = item.blanked.split(BLANK)[0].rstrip()
        views = {"teacher": [{"role": "system", "content": focused_system(base, item.turn)}, request],
                 "student": [{"role": "system", "content": base}, request]}
        for who, messages in views.items():
            replies = [("", item.word)] + ([(read_back, " " + item.word)] if read_back else [])  # blank at the start: no read-back
            for reply, word in replies:
                ids = chat_ids(tokenizer, messages) + tokenizer(reply, add_special_tokens=False)["input_ids"]
                first = tokenizer(word, add_special_tokens=False)["input_ids"][0]
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                key = f"{who}, {'sentence' if reply else 'word'}"
                probabilities.setdefault(key, []).append(torch.softmax(logits, -1)[first].item())
    return {key: {"mean": round(statistics.mean(v), 3), "median": round(statistics.median(v), 3),
                  "above_half": f"{sum(p > 0.5 for p in v)}/{len(v)}"} for key, v in probabilities.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("ceiling", "sft", "sharpness"))
    parser.add_argument("--data", choices=("cloze", "questions"), default="cloze")
    parser.add_argument("--facts", type=int, default=20)
    parser.add_argument("--system", choices=("later", "fixed", "none", "mix"), default="later",
                        help="sft's system turn: the chat's on a random later day, on the day itself, none "
                             "(the template's default), or half later, half none")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--objective", choices=("ce", "dreamer"), default="ce",
                        help="sft's loss: cross-entropy on --data, or the sleep's cloze recall term (its prompts, "
                             "one negative; --data and --system are then not used)")
    parser.add_argument("--targets", choices=("all", "mlp", "attention"), default="all",
                        help="the LoRA's modules: every projection, the MLP's, or attention's")
    parser.add_argument("--schedule", choices=("constant", "night"), default="constant",
                        help="constant lr 1e-3, or the sleep's warmup + cosine with gradient clipping at 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=ROOT / "bench-out" / "cache")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = load(args.cache)
    day = make_days(args.seed, 1, args.facts)[0]
    day["probes"] = [p for p in day["probes"] if p["kind"] == "recall"]
    if args.mode == "sft":
        result = sft(model, tokenizer, day, args.data, args.steps, args.seed, args.system, args.objective,
                     args.schedule, args.targets)
    else:
        result = {"ceiling": ceiling, "sharpness": sharpness}[args.mode](model, tokenizer, day)
    print(json.dumps({"args": vars(args) | {"cache": str(args.cache)}, "result": result}, indent=1))


if __name__ == "__main__":
    main()
