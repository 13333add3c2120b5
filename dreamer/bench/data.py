"""A user's own held-out set for `dreamer bench --data CONVERSATIONS.jsonl --probes PROBES.jsonl`.

The conversations are in `dreamer import`'s format and the probes in `dreamer eval`'s (their
`kind` one of dreamer.eval.probes.KINDS); each distinct day of the conversations is one night, in
date order. Every probe names one of those days: it is scored from that day's night on. A probe
whose question is asked again by an `update` probe of a later day is superseded from that day on
(the newer answer wins). Both files are checked whole before anything runs; the first bad line
is named with its number and reason.
"""

from __future__ import annotations

from pathlib import Path

from dreamer.eval.probes import ProbeError, parse_probe
from storage.jsonl import read_jsonl
from storage.transcripts import read_transcripts


def load_user_days(conversations: Path, probes: Path) -> list[dict]:
    """[{"day", "records", "probes"}] in date order, as `dreamer.bench.days.make_days` gives them."""
    records = read_transcripts(conversations)
    if not records:
        raise ProbeError(conversations, 0, "no conversations")
    days = sorted({r["day"] for r in records})

    def parse(obj: object) -> dict:
        probe = parse_probe(obj)
        if probe.day not in days:
            raise ValueError(f"day {probe.day} has no conversation in {conversations} (days: {', '.join(days)})")
        return probe.as_dict()

    rows = read_jsonl(probes, parse, ProbeError)
    if not rows:
        raise ProbeError(probes, 0, "no probes")
    for row in rows:
        if row["kind"] == "update":
            for earlier in rows:
                if earlier["day"] < row["day"] and earlier["question"].casefold() == row["question"].casefold():
                    earlier["superseded_on"] = min(earlier.get("superseded_on", row["day"]), row["day"])
    return [{"day": day, "records": [r for r in records if r["day"] == day],
             "probes": [p for p in rows if p["day"] == day]} for day in days]
