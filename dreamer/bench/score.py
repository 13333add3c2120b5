"""How `dreamer bench` scores a memory: every probe asked as the chat asks it, two ways.

    score_memory(source, experts, memory, probes, ask_day=D, history=records, ...)

Each probe is one user turn under the chat's system prompt of the morning it is asked
(agent.memory.system_message), through the model's chat template. What differs per arm is the
memory: the LoRA experts applied (`experts`), and what the prompt carries (`memory`):
- "none": nothing more: closed book, the weights alone;
- "context": the whole history so far in the system prompt, in the words the chat and the
  teacher use for the day ("Earlier you and the user said:"), oldest first;
- "recall": the chat's own retrieval (agent.memory.recall, FTS5 over every stored day, within
  the chat's memory budget) for this question, as `dreamer chat` puts it in the prompt.

Scores per probe:
- generation (the headline: what a user sees): the greedy reply, up to `max_new_tokens`, names
  the answer and none of the distractors (casefolded; "the heart" also as "heart", "seven" also
  as "7"); for `abstain`, it says it does not know
  (ABSTAIN_PHRASES) and names none of the distractors;
- multiple choice: the answer's mean per-token log-probability is strictly above every
  distractor's (dreamer.eval.evaluate.multiple_choice).
Controls (`inday`, `generic`) are multiple choice only. Drift (mean per-token KL from the base)
and perplexity on assets/general_heldout.jsonl, for the weights under test.
"""

from __future__ import annotations

import tempfile
import time
from datetime import date
from pathlib import Path

from dreamer.eval.replies import names, said  # the one matcher; `names` is also imported from here

MEMORIES = ("none", "context", "recall")
MC_ONLY = ("inday", "generic")
ABSTAIN_PHRASES = ("don't know", "do not know", "not sure", "haven't told", "have not told", "didn't tell",
                   "did not tell", "haven't mentioned", "have not mentioned", "didn't mention", "did not mention",
                   "no information", "don't have", "do not have", "not aware", "can't recall", "cannot recall",
                   "don't remember", "do not remember", "not mentioned", "no record", "unknown", "can't say",
                   "cannot say", "not certain")


def abstains(text: str) -> bool:
    """`text` (from `said`) declines to answer."""
    return any(phrase in text for phrase in ABSTAIN_PHRASES)


def reply_names(reply: str, probe: dict) -> bool:
    """The generation criterion (see the module docstring)."""
    text = said(reply)
    if any(names(text, d) for d in probe["distractors"]):
        return False
    if probe["kind"] == "abstain":
        return abstains(text)
    return names(text, probe["answer"])


def history_block(records: list[dict]) -> str:
    """The conversations so far as the prompt's memory, day by day."""
    lines = []
    for day in sorted({r["day"] for r in records}):
        lines.append(f"On {date.fromisoformat(day):%A, %d %B %Y}:")
        for record in (r for r in records if r["day"] == day):
            for m in record["messages"]:
                speaker = "User" if m["role"] == "user" else "You"
                lines.append(f"- {speaker}: {' '.join(m['content'].split())}")
    return "\n".join(lines)


class Prompts:
    """The system prompt of each question, for one memory."""

    def __init__(self, memory: str, ask_day: date, history: list[dict], tokenizer, workdir: Path) -> None:
        from agent.memory import system_message
        from storage import Config, Store

        if memory not in MEMORIES:
            raise ValueError(f"unknown memory {memory!r}")
        self.memory, self.config = memory, Config()
        self.base = self.plain = system_message(self.config, ask_day)
        self.count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
        self.store = None
        if memory == "context":
            self.base += "\n\nEarlier you and the user said:\n" + history_block(history)
        elif memory == "recall":
            self.store = Store(workdir / "recall.db")
            self.store.import_conversations(history)

    def system(self, question: str) -> str:
        if self.memory != "recall":
            return self.base
        from agent.memory import recall

        lines = recall(self.store, self.config, question, set(), self.count, every_day=True)
        return self.base + ("\n\nEarlier you and the user said:\n" + "\n".join(lines) if lines else "")

    def memory_tokens(self, system: str) -> int:
        """Prompt tokens the memory adds to the chat's own system prompt."""
        return self.count(system) - self.count(self.plain)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def ask_probes(model, tokenizer, probes: list[dict], systems: list[str], names: list[str] | None,
               max_new_tokens: int = 40) -> list[dict]:
    """Each probe asked under its system prompt, the adapters `names` applied: {scores, mc, gen, reply}.

    `scores`: each option's mean token log-probability, the answer first; `mc`: the answer's is
    strictly above every distractor's; `reply`: the greedy reply, and `gen`: whether it names the
    answer (`reply_names`), for every kind but the multiple-choice-only ones (None there).
    """
    from dreamer.lm.generation import sample_many
    from dreamer.lm.scoring import option_scores
    from dreamer.lm.weights import adapters

    rows = []
    with adapters(model, names):
        for probe, system in zip(probes, systems):
            scores = option_scores(model, tokenizer, probe["question"], [probe["answer"], *probe["distractors"]],
                                   system=system)
            rows.append({"scores": scores, "mc": all(scores[0] > other for other in scores[1:]), "gen": None,
                         "reply": None})
        asked = [i for i, p in enumerate(probes) if p["kind"] not in MC_ONLY]
        chats = [[{"role": "system", "content": systems[i]}, {"role": "user", "content": probes[i]["question"]}]
                 for i in asked]
        replies = sample_many(model, tokenizer, chats, names, n=1, max_new_tokens=max_new_tokens, temperature=None)
    for i, (reply,) in zip(asked, replies):
        rows[i].update(reply=reply, gen=reply_names(reply, probes[i]))
    return rows


def score_memory(source: str, experts: list[str], memory: str, probes: list[dict], *, ask_day: str,
                 history: list[dict], load, max_new_tokens: int = 40, general: bool = True) -> dict:
    """Per probe {id, kind, day, mc, gen, reply}, plus drift and perplexity; run in a fresh process."""
    import torch

    from dreamer.eval.evaluate import general_drift, perplexity
    from dreamer.lm.weights import build_stack, load_base, plan_device, stack_names
    from dreamer.sleep.gate import general_texts

    started = time.perf_counter()
    base, tokenizer = load_base(source, plan_device(load))
    model = build_stack(base, [Path(p) for p in experts], None)
    names = stack_names(model) if experts else None
    with tempfile.TemporaryDirectory(prefix="dreamer-bench-") as tmp:
        prompts = Prompts(memory, date.fromisoformat(ask_day), history, tokenizer, Path(tmp))
        try:
            systems = [prompts.system(p["question"]) for p in probes]
            spent = [prompts.memory_tokens(system) for system in systems]
        finally:
            prompts.close()
    rows = [{"id": probe["id"], "kind": probe["kind"], "day": probe["day"], "mc": asked["mc"], "gen": asked["gen"],
             "reply": asked["reply"], "memory_tokens": tokens}
            for probe, tokens, asked in zip(probes, spent, ask_probes(model, tokenizer, probes, systems, names,
                                                                      max_new_tokens))]
    out = {"probes": rows, "stack": names or [], "torch_threads": torch.get_num_threads()}
    if general:
        texts = general_texts()
        out["drift_kl"] = general_drift(model, tokenizer, texts, None, names, max_len=load.max_seq_len) if names else 0.0
        out["perplexity"] = perplexity(model, tokenizer, texts, max_len=load.max_seq_len)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out
