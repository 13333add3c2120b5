"""Closed-book evaluation: does the model know what it was told, without the chat in context?

    dreamer eval --probes FILE.jsonl [--stack VERSION|none] [--json]

Each probe (see `dreamer.eval.probes`) is asked as a single user turn, the question alone, through
the model's chat template with the generation prompt (no system prompt of ours; a template that
injects its own default, as SmolLM2's does, keeps it, since that is what the model saw in tuning).

- Multiple choice: every option (answer and distractors) is scored as the assistant reply by
  its mean per-token log-probability, and the probe is correct iff the answer scores strictly
  higher than every distractor. The mean, not the sum, so that a long distractor is not
  penalized merely for having more tokens to pay for (nor a long answer).
- Generation: the greedy reply (up to `max_new_tokens`) is correct iff it contains the answer,
  compared casefolded and with the answer stripped.

Drift on general text, for the gate: `general_drift` is the mean per-token
KL(reference || candidate) between two adapter stacks of the same model, and `perplexity` a
secondary figure for whatever stack is active.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dreamer.eval.probes import KINDS
from dreamer.lm.scoring import inference, model_device, option_scores, pad_id, prompt_ids, text_batches
from dreamer.lm.weights import adapters

















def multiple_choice(model, tokenizer, probes, system: str | None = None) -> list[bool]:
    """Per probe: True iff the answer scores strictly above every distractor (ties are wrong).

    `system` None is the question alone (the chat template's own default system turn).
    """
    return [check["correct"] for check in choice_checks(model, tokenizer, probes, system)]


def choice_checks(model, tokenizer, probes, system: str | None = None) -> list[dict]:
    """Per probe: {"correct", "chosen": the option the memory prefers, "p_answer": how sure it is of
    the user's answer}. p_answer is the answer's share of a softmax over the options' mean per-token
    log-probabilities (the scores `correct` compares), so 1/len(options) is a coin toss."""
    import math

    checks = []
    for probe in probes:
        options = [probe.answer, *probe.distractors]
        scores = option_scores(model, tokenizer, probe.question, options, system=system)
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        checks.append({"correct": all(scores[0] > other for other in scores[1:]),
                       "chosen": options[scores.index(top)], "p_answer": weights[0] / sum(weights)})
    return checks


def reply_correct(answer: str, reply: str) -> bool:
    """The generation criterion: the stripped answer occurs in the reply, ignoring case."""
    return answer.strip().casefold() in reply.casefold()


def generation(model, tokenizer, probes, max_new_tokens: int = 32) -> tuple[list[bool], list[str]]:
    """Greedy reply to each question alone; (correct per probe, replies).

    One probe at a time, unpadded: a reply then never depends on which other probes happen to
    share its batch, and on a CPU batching a 135M model gains little.
    """
    device = model_device(model)
    eos = tokenizer.eos_token_id
    correct, replies = [], []
    with inference(model):
        for probe in probes:
            ids = torch.tensor([prompt_ids(tokenizer, probe.question)], dtype=torch.long, device=device)
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=eos, pad_token_id=pad_id(tokenizer),
            )
            reply = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
            replies.append(reply)
            correct.append(reply_correct(probe.answer, reply))
    return correct, replies


def _accuracy(flags: Sequence[bool | None]) -> float | None:
    if not flags or any(flag is None for flag in flags):
        return None
    return sum(flags) / len(flags)


def _summary(rows: list[dict]) -> dict:
    return {
        "n": len(rows),
        "mc_accuracy": _accuracy([row["mc_correct"] for row in rows]),
        "gen_accuracy": _accuracy([row["gen_correct"] for row in rows]),
    }


def _kind_order(kind: str) -> tuple[int, str]:
    return (KINDS.index(kind), "") if kind in KINDS else (len(KINDS), kind)


def evaluate(model, tokenizer, probes, *, generate: bool = True, max_new_tokens: int = 32) -> dict:
    """Accuracy overall, per kind and per day, plus each probe's outcome (and reply)."""
    probes = list(probes)
    if not probes:
        raise ValueError("no probes to evaluate")
    mc = multiple_choice(model, tokenizer, probes)
    if generate:
        gen, replies = generation(model, tokenizer, probes, max_new_tokens=max_new_tokens)
    else:
        gen, replies = [None] * len(probes), [None] * len(probes)
    rows = [
        {"question": p.question, "answer": p.answer, "mc_correct": m, "gen_correct": g, "reply": r}
        for p, m, g, r in zip(probes, mc, gen, replies)
    ]
    by_kind: dict[str, list[dict]] = {}
    by_day: dict[str, list[dict]] = {}
    for probe, row in zip(probes, rows):
        by_kind.setdefault(probe.kind, []).append(row)
        by_day.setdefault(probe.day, []).append(row)
    return {
        **_summary(rows),
        "by_kind": {kind: _summary(by_kind[kind]) for kind in sorted(by_kind, key=_kind_order)},
        "by_day": {day: _summary(by_day[day]) for day in sorted(by_day)},  # ISO dates sort by time
        "probes": rows,
    }


def format_table(result: dict) -> str:
    """Overall, per-kind and per-day accuracies as a plain-text table."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"{'':<18}{'n':>5}{'mc acc':>9}{'gen acc':>9}"]
    groups = [("overall", result)]
    groups += [(f"kind {kind}", row) for kind, row in result["by_kind"].items()]
    groups += [(f"day {day}", row) for day, row in result["by_day"].items()]
    for label, row in groups:
        lines.append(f"{label:<18}{row['n']:>5}{cell(row['mc_accuracy']):>9}{cell(row['gen_accuracy']):>9}")
    return "\n".join(lines)




def general_drift(model, tokenizer, texts: list[str], reference: list[str] | None,
                  candidate: list[str] | None, max_len: int = 256) -> float:
    """Mean per-token KL(reference || candidate) of the next-token distributions on plain text.

    `reference` and `candidate` are adapter names (None or [] = the base alone). The mean is
    over every real token of every text (padding masked), each truncated to `max_len` tokens.
    """
    if set(reference or []) == set(candidate or []):
        return 0.0  # the same stack: the same distributions, no need to run it twice
    total, count = 0.0, 0
    with inference(model):
        for ids, mask in text_batches(tokenizer, texts, max_len, model_device(model)):
            with adapters(model, reference):
                ref = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            with adapters(model, candidate):
                cand = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            kl = (ref.exp() * (ref - cand)).sum(dim=-1)  # [batch, seq]
            total += (kl * mask).sum().item()
            count += int(mask.sum().item())
            del ref, cand, kl  # the vocab-sized tensors dominate memory: free before the next batch
    return total / count


def perplexity(model, tokenizer, texts: list[str], max_len: int = 256) -> float:
    """exp(mean next-token NLL) over the texts, with whatever adapters are active on the model."""
    total, count = 0.0, 0
    with inference(model):
        for ids, mask in text_batches(tokenizer, texts, max_len, model_device(model)):
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            target = mask[:, 1:]  # a token counts when it is real (it then follows a real one)
            total += (nll * target).sum().item()
            count += int(target.sum().item())
    if count == 0:
        raise ValueError("perplexity needs texts of at least two tokens")
    return math.exp(total / count)
