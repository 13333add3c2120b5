"""Closed-book probes: a question, its answer, and wrong answers (distractors).

Written by the teacher during sleep (held out from training, used by the gate, replayed on
later nights) or by a person for `dreamer eval --probes FILE.jsonl`, one per line:

    {"day": "YYYY-MM-DD", "question": "...", "answer": "...", "distractors": ["...", "..."], "kind": "recall"}

`kind` is one of recall | update | implication | abstain | general (what `dreamer bench` reports
separately): a fact asked back, a fact told again with a new value (the old one a distractor),
the fact applied rather than repeated, a question about something never told (the answer an
"I don't know"-style reply), and general knowledge a night must not break.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storage.days import parse_day
from storage.jsonl import JsonlError, check_object, read_jsonl

KINDS = ("recall", "update", "implication", "abstain", "general")
KEYS = {"day", "question", "answer", "distractors", "kind"}


class ProbeError(JsonlError):
    """A bad probe line; the message names the file and line."""


@dataclass(frozen=True)
class Probe:
    day: str
    question: str
    answer: str
    distractors: tuple[str, ...] = field(default_factory=tuple)
    kind: str = "recall"

    def as_dict(self) -> dict:
        return {**asdict(self), "distractors": list(self.distractors)}


def parse_probe(obj: object) -> Probe:
    check_object(obj, KEYS)
    for key in ("day", "question", "answer"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"'{key}' must be a non-empty string")
    day = str(parse_day(obj["day"]))
    distractors = obj.get("distractors", [])
    if not isinstance(distractors, list) or not distractors or not all(isinstance(d, str) and d.strip() for d in distractors):
        raise ValueError("'distractors' must be a non-empty list of non-empty strings")
    if obj["answer"] in distractors:
        raise ValueError("the answer is also listed as a distractor")
    kind = obj.get("kind", "recall")
    if kind not in KINDS:
        raise ValueError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    return Probe(day, obj["question"], obj["answer"], tuple(distractors), kind)


def read_probes(path: Path) -> list[Probe]:
    probes = read_jsonl(path, parse_probe, ProbeError)
    if not probes:
        raise ProbeError(path, 0, "no probes")
    return probes


def write_probes(path: Path, probes: list[Probe]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for probe in probes:
            out.write(json.dumps(probe.as_dict(), ensure_ascii=False) + "\n")
