"""A whole night's cost, phase by phase: `dreamer bench` runs of the same days side by side, each
arm at its own commit.

    python -m benchmarks.night_cost --run sleep 3ea0b25 RUN_A --run dream ef93576 RUN_B \\
        --change "Dreaming on, with the faster step, against stage 1 alone as it was" \\
        --out benchmarks/results/night_cost.json

For a cost judged across code versions (Dreaming's goal: a night with Dreaming no longer than a
stage-1 night was, on the same machine). Time on a shared machine moves with its load, so the
runs are started together, one arm and one core each (`--jobs 1`): what one run meets, the other
meets too. The runs must hold the same days (with their probes) and bench settings; their sleep
configs may differ only by keys one commit has and the other lacks (named in the record), else
nothing is written and the first difference is named. Kept: each arm's commit and its units as
the bench wrote them (the night's phases, outcome and scores), each run's machine, sessions and
load averages. The report (benchmarks.report) puts the phases side by side and reads the scores
as a paired night, saying that the code differs too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.machine import command_line, write_record
from benchmarks.merge_bench import difference


def flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_difference(first: dict, other: dict) -> tuple[list[str], str | None]:
    """The keys only one config has, and the first key both have with different values (or None)."""
    a, b = flat(first), flat(other)
    changed = next((k for k in a if k in b and a[k] != b[k]), None)
    return sorted(set(a) ^ set(b)), changed


def same_days(runs: list[tuple[str, str, dict]]) -> list[str]:
    """Refuse runs that are not the same benchmark; return the config keys only some runs have."""
    _, _, first = runs[0]
    only_some = set()
    for arm, _, run in runs[1:]:
        if run["machine"]["cpu"] != first["machine"]["cpu"]:
            raise SystemExit(f"the {arm} run ran on {run['machine']['cpu']}, the {runs[0][0]} run on "
                             f"{first['machine']['cpu']}: not the same machine")
        # merge_bench's check of days, format and bench settings; the configs are compared below
        if different := difference({**run, "config": first["config"]}, first):
            raise SystemExit(f"the {arm} run: {different} from the {runs[0][0]} run's: not the same benchmark")
        keys, changed = config_difference(first["config"], run["config"])
        if changed:
            raise SystemExit(f"the {arm} run's sleep config sets {changed} otherwise: not the same nights")
        only_some.update(keys)
    return sorted(only_some)


def arm_units(arm: str, run: dict) -> dict:
    units = {k: v for k, v in run["units"].items() if k.split("/")[0] == arm}
    if not units:
        raise SystemExit(f"the {arm} run has no {arm} arm-night")
    return units


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs=3, action="append", required=True, metavar=("ARM", "COMMIT", "RUN_DIR"),
                        help="an arm, the commit it ran, and its run folder (twice or more)")
    parser.add_argument("--change", required=True, help="what differs between the arms, in words")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if len(args.run) < 2 or len({arm for arm, _, _ in args.run}) != len(args.run):
        raise SystemExit("--run: two or more runs, each of another arm")
    runs = [(arm, commit, json.loads((Path(folder) / "bench.json").read_text())) for arm, commit, folder in args.run]
    only_some = same_days(runs)
    first = runs[0][2]
    record = {"command": command_line("benchmarks.night_cost", argv), "change": args.change,
              "bench": {**first["bench"], "arms": [arm for arm, _, _ in runs]},
              "config_keys_only_some_have": only_some, "days": first["days"],
              "arms": {arm: {"commit": commit, "machine": run["machine"], "sessions": run.get("sessions", []),
                             "loadavg": run.get("loadavg", []), "units": arm_units(arm, run)}
                       for arm, commit, run in runs}}
    write_record(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
