"""Does `dreamer forget` take the knowledge out, and does the rest come back? On a real home.

    python -m benchmarks.forget_quality --home HOME --conversation ID --probes PROBES.jsonl \\
        [--work DIR] [--out benchmarks/results/forget_quality.json]

HOME (copied to DIR/home first, never changed) holds promoted nights and the conversations they
learned; PROBES asks about their facts (dreamer eval's format). A probe is about the forgotten
conversation when its answer appears in that conversation's text. Steps, each resumable (DIR
keeps what is done):
1. `dreamer eval --probes PROBES --json` on the base alone and on the active stack (before);
2. `dreamer forget ID --yes`;
3. the same eval (after the forget: the dropped nights are gone, their other turns wait);
4. `dreamer sleep --now` (the next night learns the waiting turns again);
5. the same eval (after that night).
The goals: the forgotten conversation's probes at the base's level after 2 (and after 4: the
next night must not learn them back), every other probe within one probe of before after 4.
Scores are closed book, multiple choice and generation as `dreamer eval` asks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.machine import command_line, git_commit, machine, write_record


def dreamer(home: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dreamer", *args], env={**os.environ, "DREAMER_HOME": str(home)},
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"dreamer {' '.join(args)} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def step(work: Path, name: str, fn) -> dict:
    """Run `fn` once; its result is kept in DIR/NAME.json so a stopped run resumes after it."""
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = fn()
    path.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--conversation", type=int, required=True)
    parser.add_argument("--probes", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("bench-out/forget"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "forget_quality.json")
    args = parser.parse_args(argv)
    work, home = args.work, args.work / "home"
    work.mkdir(parents=True, exist_ok=True)
    if not home.exists():
        shutil.copytree(args.home, home)
    probes = str(args.probes.resolve())

    def evaluate(stack: str = "active") -> dict:
        return json.loads(dreamer(home, "eval", "--probes", probes, "--stack", stack, "--json"))

    def conversation_text() -> dict:
        from storage import Store

        store = Store(home / "dreamer.db")
        messages = store.messages(args.conversation)
        store.close()
        return {"text": "\n".join(m["content"] for m in messages)}

    forgotten_text = step(work, "conversation", conversation_text)["text"]
    results = {"base": step(work, "eval-base", lambda: evaluate("none")),
               "before": step(work, "eval-before", evaluate)}
    step(work, "forget", lambda: {"output": dreamer(home, "forget", str(args.conversation), "--yes")})
    results["after forget"] = step(work, "eval-after-forget", evaluate)
    sleep = step(work, "sleep", lambda: {"output": dreamer(home, "sleep", "--now", "--preset", "cpu-tiny")})
    results["after the next night"] = step(work, "eval-after-sleep", evaluate)

    groups = {"forgotten": lambda row: row["answer"].lower() in forgotten_text.lower(),
              "other": lambda row: row["answer"].lower() not in forgotten_text.lower()}
    table = {}
    for group, chosen in groups.items():
        table[group] = {}
        for stage, result in results.items():
            rows = [r for r in result["probes"] if chosen(r)]
            table[group][stage] = {"n": len(rows), "mc": sum(bool(r["mc_correct"]) for r in rows),
                                   "gen": sum(bool(r["gen_correct"]) for r in rows)}
    record = {"command": command_line("benchmarks.forget_quality", argv), "machine": machine(load=True),
              "commit": git_commit(), "conversation": args.conversation,
              "forget": json.loads((work / "forget.json").read_text())["output"].strip().splitlines()[-1],
              "sleep": sleep["output"].strip().splitlines()[-1], "table": table,
              "probes": {stage: [{"answer": r["answer"], "mc": r["mc_correct"], "gen": r["gen_correct"]}
                                 for r in result["probes"]] for stage, result in results.items()}}
    write_record(args.out, record)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
