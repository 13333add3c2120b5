"""Two `dreamer bench` runs of the same arm, days, seeds and config, differing only in dreamer's code:
a change judged on paired nights.

    python -m benchmarks.paired_code --before RUN_A/bench.json --after RUN_B/bench.json \\
        --change "greetings carry no fact" --out benchmarks/results/bench_phatic.json

The runs must hold the same days (with their probes), bench settings and sleep config, else
nothing is written and the first difference is named. For every night both runs scored: recall by
generation and by multiple choice (all told facts, and day 1's alone: the forgetting curve's first
point), implications, general questions, drift, and how many replies open with a greeting
("Hello", "Hi", "Good morning": the symptom of the 14-night run, counted, not judged), with the
probe-level pairs (right only before, only after). Each run's commit and machine are kept.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from benchmarks.machine import command_line, write_record
from benchmarks.merge_bench import difference
from dreamer.bench.report import cell

GREETING = re.compile(r"^\W*(hello|hi|hey|good (morning|afternoon|evening))\b", re.I)


def same_benchmark(before: dict, after: dict) -> None:
    """The merge's check (benchmarks.merge_bench.difference), and the same arms."""
    different = difference(after, before) or (None if after["bench"]["arms"] == before["bench"]["arms"]
                                              else "its arms differ")
    if different:
        raise SystemExit(f"the after run: {different} from the before run's: not paired nights")


def night_figures(result: dict, arm: str, night: int) -> dict | None:
    scored = cell(result, arm, night)
    if scored is None:
        return None
    rows = scored["rows"]
    replies = [r["reply"] for r in rows.values() if r.get("reply")]
    first_day = result["days"][0]["day"]
    kinds = scored["kinds"]
    return {"recall_gen": kinds["recall"]["gen"], "recall_mc": kinds["recall"]["mc"],
            "day1_gen": scored["days"][first_day]["gen"], "day1_mc": scored["days"][first_day]["mc"],
            "implication_gen": kinds.get("implication", {}).get("gen"), "general_gen": kinds.get("general", {}).get("gen"),
            "drift_kl": scored["drift_kl"], "greeting_replies": sum(bool(GREETING.match(r)) for r in replies),
            "replies": len(replies), "gen": {k: bool(r["gen"]) for k, r in rows.items() if r["kind"] == "recall"}}


def compare(before: dict, after: dict, arm: str) -> list[dict]:
    out = []
    for night in range(1, len(before["days"]) + 1):
        a, b = night_figures(before, arm, night), night_figures(after, arm, night)
        if a is None or b is None:
            continue
        pairs = {"only_before": sum(a["gen"][k] and not b["gen"][k] for k in a["gen"]),
                 "only_after": sum(b["gen"][k] and not a["gen"][k] for k in a["gen"])}
        out.append({"night": night, "before": {k: v for k, v in a.items() if k != "gen"},
                    "after": {k: v for k, v in b.items() if k != "gen"}, "recall_gen_pairs": pairs})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--change", required=True, help="what differs, in words")
    parser.add_argument("--before-commit", required=True, help="the commit the before run ran (bench.json does not record it)")
    parser.add_argument("--after-commit", required=True)
    parser.add_argument("--arm", default="sleep")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    before, after = json.loads(args.before.read_text()), json.loads(args.after.read_text())
    same_benchmark(before, after)
    record = {"command": command_line("benchmarks.paired_code", argv), "change": args.change, "arm": args.arm,
              "bench": before["bench"], "runs": {name: {"machine": run["machine"], "sessions": run.get("sessions", []),
                                                         "commit": commit}
                                                  for name, run, commit in (("before", before, args.before_commit),
                                                                            ("after", after, args.after_commit))},
              "nights": compare(before, after, args.arm)}
    write_record(args.out, record)
    for row in record["nights"]:
        print(row["night"], row["before"], row["after"], row["recall_gen_pairs"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
