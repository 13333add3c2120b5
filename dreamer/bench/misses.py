"""What the chat says instead, when its reply misses an earlier day's fact: the long run's reading.

Over many nights, multiple choice can keep a fact that the reply no longer names. After night N,
each missed recall probe of days 1..N-1 is put in the first class it fits, checked with the
scorer's own matcher (dreamer.bench.score.names):

- another day's fact: the reply names the answer of a told fact (a recall, implication or
  update probe) of another day up to N (interference);
- another fact of its day: the answer of another told fact of the same day;
- a distractor: one of the probe's own wrong options (drawn from the same pools as the facts,
  so a distractor that is also a told fact is counted above, as interference);
- does not know: it abstains (the scorer's abstain phrases);
- something else: none of these (an invented value, the persona, a template letter, a loop).

An answer equal to the probe's own never counts as "another" fact (a reply naming its own answer
misses only by also naming a distractor).
"""

from __future__ import annotations

from collections import Counter

from dreamer.bench.score import abstains, names, said

CLASSES = ("another day's fact", "another fact of its day", "a distractor", "does not know", "something else")
FACT_KINDS = ("recall", "implication", "update")  # what the user told; not the general or abstain probes


def miss_class(reply: str, probe: dict, told: list[dict]) -> str:
    """The class of one missed reply; `told` is every probe of the days told so far."""
    text = said(reply)
    others = [p for p in told if p["kind"] in FACT_KINDS and p["id"] != probe["id"]
              and p["answer"].casefold() != probe["answer"].casefold() and names(text, p["answer"])]
    if any(p["day"] != probe["day"] for p in others):
        return CLASSES[0]
    if others:
        return CLASSES[1]
    if any(names(text, d) for d in probe["distractors"]):
        return CLASSES[2]
    if abstains(text):
        return CLASSES[3]
    return CLASSES[4]


def misses(result: dict, arm: str, night: int) -> dict | None:
    """{"asked", "missed", classes..., "repeated": (reply, count)} for the earlier days' recall
    probes after `night`; None if the night is not scored or has no earlier day."""
    score = result["units"].get(f"{arm}/{night}", {}).get("score")
    days = result["days"][:night]
    if not score or night < 2:
        return None
    told = [p for d in days for p in d["probes"]]
    by_id = {p["id"]: p for p in told}
    earlier = {d["day"] for d in days[:-1]}
    rows = [r for r in score["probes"] if r["kind"] == "recall" and r["day"] in earlier and r["id"] in by_id]
    missed = [r for r in rows if not r["gen"]]
    counts = Counter(miss_class(r["reply"], by_id[r["id"]], told) for r in missed)
    replies = Counter(" ".join(r["reply"].split()) for r in missed)
    top = replies.most_common(1)
    return {"asked": len(rows), "missed": len(missed), **{c: counts.get(c, 0) for c in CLASSES},
            "repeated": top[0] if top and top[0][1] > 1 else None}
