"""Sleep stage 1c: the gate. The candidate stack replaces the active one only if it is better.

Three measurements, candidate (active stack + tonight's expert) against active:
1. today's held-out probes, closed book: multiple-choice accuracy must rise by `min_gain`;
2. earlier nights' probes: accuracy may fall by at most `max_old_drop`;
3. general drift: mean per-token KL(active || candidate) on held-out general text
   (assets/general_heldout.jsonl) must stay under `max_drift`.
A failed gate changes nothing: the run is recorded as rejected with its reasons.

Beside them, reported and not (yet) a rule: up to `OLD_REPLIES` earlier recall facts asked as
the chat asks (its system prompt, greedy, no repeat penalty), does the reply contain the answer
(evaluate.reply_correct: plainer than the bench's reply_names), before and after. Over 14
nights multiple choice kept night 1's facts while the replies lost most of them
(docs/BENCHMARKS.md, "Months of nights"); a threshold on this count needs its own paired nights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from dreamer.eval.evaluate import choice_checks, general_drift, multiple_choice, reply_correct
from dreamer.lm.generation import sample_many
from dreamer.eval.probes import Probe
from dreamer.sleep.config import ASSETS, GateConfig
from dreamer.lm.weights import NEW, adapters

OLD_REPLIES = 12  # earlier facts asked by the reply: a few, spread over the nights (two batched greedy passes)


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]
    metrics: dict


def decide(metrics: dict, cfg: GateConfig) -> GateResult:
    """Pure decision on measured figures.

    >>> figures = {"today_probes": 5, "today_before": 0.2, "today_after": 0.8, "old_before": None, "drift": 0.01}
    >>> decide(figures, GateConfig()).passed
    True
    >>> decide({**figures, "today_probes": 0}, GateConfig()).reasons
    ['the teacher wrote no usable probes, so learning cannot be verified']
    """
    reasons = []
    gain = metrics["today_after"] - metrics["today_before"]
    if not metrics.get("today_probes", 1):
        reasons.append("the teacher wrote no usable probes, so learning cannot be verified")
    elif gain < cfg.min_gain:
        reasons.append(
            f"today's recall did not improve enough: {metrics['today_before']:.2f} -> {metrics['today_after']:.2f} "
            f"(needs +{cfg.min_gain:.2f})"
        )
    if metrics.get("old_before") is not None:
        drop = metrics["old_before"] - metrics["old_after"]
        if drop > cfg.max_old_drop:
            reasons.append(
                f"earlier memories faded: {metrics['old_before']:.2f} -> {metrics['old_after']:.2f} "
                f"(may drop {cfg.max_old_drop:.2f})"
            )
    if metrics["drift"] > cfg.max_drift:
        reasons.append(f"general drift too large: KL {metrics['drift']:.3f} > {cfg.max_drift:.3f}")
    return GateResult(not reasons, reasons, metrics)


def general_texts(name: str = "general_heldout.jsonl") -> list[str]:
    lines = (ASSETS / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def as_probes(rows: list[dict]) -> list[Probe]:
    return [Probe(r["day"], r["question"], r["answer"], tuple(r["distractors"]), r.get("kind", "recall")) for r in rows]


def accuracy(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def measure(model, tokenizer, stack: list[str], today: list[dict], old: list[dict], max_len: int,
            system: str | None = None) -> dict:
    """Figures for `decide`, plus before/after replies to today's probes for the report.

    `system` is the chat's system prompt: the probes are asked as the chat would ask them (the
    student was trained under it), still without the day.
    """
    today_probes, old_probes = as_probes(today), as_probes(old)
    figures: dict = {"today_probes": len(today_probes), "old_probes": len(old_probes)}
    for label, names in (("before", stack), ("after", stack + [NEW])):
        with adapters(model, names):
            if label == "before":
                figures["today_before"] = accuracy(multiple_choice(model, tokenizer, today_probes, system))
                figures["old_before"] = accuracy(multiple_choice(model, tokenizer, old_probes, system)) if old_probes else None
            else:  # per probe, kept: a promoted night's closed-book check of every fact (the Memory screen)
                checks = choice_checks(model, tokenizer, today_probes + old_probes, system)
                figures["checks"] = [{**check, "probe_id": row["id"]} for check, row in zip(checks, today + old)]
                figures["today_after"] = accuracy([c["correct"] for c in checks[:len(today_probes)]])
                figures["old_after"] = accuracy([c["correct"] for c in checks[len(today_probes):]]) if old_probes else None
        # Replies for the morning report, the question alone in the prompt as in evaluate.generation,
        # decoded in one batch.
        questions = [[{"role": "user", "content": p.question}] for p in today_probes]
        figures[f"replies_{label}"] = [r[0] for r in sample_many(model, tokenizer, questions, names, n=1,
                                                                 max_new_tokens=32, temperature=None)]
    asked = spread([r for r in old if r.get("kind", "recall") == "recall"], OLD_REPLIES)
    if asked:  # earlier facts by the reply, as the chat asks (the module docstring)
        chats = [[*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": r["question"]}]
                 for r in asked]
        figures["old_replies_asked"] = len(asked)
        for label, names in (("before", stack), ("after", stack + [NEW])):
            replies = [r[0] for r in sample_many(model, tokenizer, chats, names, n=1, max_new_tokens=32, temperature=None)]
            figures[f"old_replies_{label}"] = sum(reply_correct(r["answer"], reply) for r, reply in zip(asked, replies))
    figures["drift"] = general_drift(model, tokenizer, general_texts(), stack, stack + [NEW], max_len=max_len)
    return figures


def spread(rows: list, count: int) -> list:
    """At most `count` of `rows`, evenly spaced from the first (the oldest night's) on.

    >>> spread(list(range(10)), 4)
    [0, 2, 5, 7]
    >>> spread([1, 2], 4)
    [1, 2]
    """
    if len(rows) <= count:
        return list(rows)
    return [rows[i * len(rows) // count] for i in range(count)]
