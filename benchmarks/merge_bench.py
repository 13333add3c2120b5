"""Merge `dreamer bench` runs of the same days and config into one bench.json (arms side by side).

    python -m benchmarks.merge_bench OUT.json RUN_A/bench.json RUN_B/bench.json ...

For arms run one at a time (each its own run folder) that should be read as one paired run: the
days (with their probes), the bench settings other than the arms, and the sleep config must be
equal, else nothing is written and the first difference is named. The units are united (an
arm-night in two runs is refused), the arms listed in dreamer.bench.arms.ARMS order, and every
run's sessions and load averages kept, each session with the run folder it came from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dreamer.bench.arms import ARMS


def difference(run: dict, first: dict) -> str | None:
    """What makes `run` another benchmark than `first` (days with their probes, format, sleep config,
    bench settings other than the arms), or None: the check of `merge` and benchmarks.paired_code."""
    for key in ("days", "config", "format"):
        if run[key] != first[key]:
            return f"its {key} differ"
    if {k: v for k, v in run["bench"].items() if k != "arms"} != {k: v for k, v in first["bench"].items() if k != "arms"}:
        return "its bench settings differ"
    return None


def merge(runs: list[tuple[str, dict]]) -> dict:
    first_name, first = runs[0]
    merged = {**first, "units": {}, "sessions": [], "loadavg": []}
    for name, run in runs:
        different = difference(run, first)
        if different:
            raise SystemExit(f"{name}: {different} from {first_name}'s: not the same benchmark")
        for unit, value in run["units"].items():
            if unit in merged["units"]:
                raise SystemExit(f"{name}: {unit} is in two runs")
            merged["units"][unit] = value
        merged["sessions"] += [{**s, "run": name} for s in run.get("sessions", [])]
        merged["loadavg"] += run.get("loadavg", [])
    arms = {a for _, run in runs for a in run["bench"]["arms"]}
    merged["bench"] = {**first["bench"], "arms": [a for a in ARMS if a in arms]}
    return merged


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    out, *paths = argv
    merged = merge([(str(Path(p).parent.name), json.loads(Path(p).read_text())) for p in paths])
    Path(out).write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    print(f"{out}: arms {', '.join(merged['bench']['arms'])}, {len(merged['units'])} units")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
