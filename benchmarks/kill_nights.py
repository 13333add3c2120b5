"""Kill a night at every phase boundary and inside the promotion; check what the next start finds.

    .venv/bin/python -m benchmarks.kill_nights [--trials 20] [--signals KILL,TERM] [--points all]
        [--out benchmarks/results/kill_nights.json]

Each trial, on the tests' tiny model (dreamer/bench/tiny.py) in a fresh DREAMER_HOME that already holds
one promoted night and a day of waiting turns:
1. a forked child runs `sleep_now`, and at the named point sends itself the signal (what an
   outside `kill` at that moment does; SIGKILL cannot be caught, SIGTERM unwinds or, inside the
   promotion, waits for it to finish). `random` instead has the parent send the signal after a
   random delay within one undisturbed night's wall time, so kills also land between the points.
2. the parent opens the home as the next start does (`storage.recovery.reconcile`) and checks:
   every turn present and unchanged; a turn consolidated only by a promoted run, and all of
   them if the run was promoted; no run left `running`; every folder in adapters/ named by the
   database, every expert the database names whole on disk; the manifest equal to the database's
   stack; nights numbered 1..n; deep sleep (the night folds into the tiny model's chat twin): the
   model the manifest serves whole, and no partial fold left in adapters/served/.
3. one more day is told, and a second forked child runs the next night, undisturbed: it must be
   promoted as the next night, consolidate every waiting turn (the killed night's too, unless
   it was promoted), and the checks of step 2 must hold again.
The gate's measurement is replaced by passing figures (the gate is not under test: every
night reaches the promotion). A trial's failures are listed by name; the goal is none.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import command_line, git_commit, machine, write_record  # noqa: E402

SMALL = {
    "memories": {"questions_per_conversation": 2, "max_new_tokens": 8, "teacher_samples": 1},
    "distill": {"steps": 3, "batch_size": 2, "rl_every": 1, "rl_new_tokens": 4, "alpha": 0.7, "drift_weight": 0.5},
    "load": {"max_seq_len": 128, "threads": 1},
}
PASSING = {"today_probes": 3, "old_probes": 0, "today_before": 0.0, "today_after": 1.0, "old_before": None,
           "old_after": None, "drift": 0.01, "replies_before": [], "replies_after": []}
# point -> (module, attribute, when): the signal is sent just before or just after that call.
POINTS = {
    "run-started": ("storage.ledger", "start_run", "after"),
    "model-loaded": ("dreamer.sleep.stages", "load_base", "after"),
    "memories-written": ("dreamer.sleep.stages", "write_memories", "after"),
    "mid-distill": None,  # on_step, at the second step
    "distilled": ("dreamer.sleep.stages", "distill", "after"),
    "gated": ("dreamer.sleep.gate", "decide", "after"),
    "candidate-saved": ("dreamer.morning.stack", "save_candidate", "after"),
    "exported": ("dreamer.sleep.stages", "export_expert", "after"),
    "mid-fold": ("dreamer.morning.fold", "merged", "after"),  # the fold's partial file open, half written
    "folded": ("dreamer.sleep.stages", "fold_stack", "after"),  # tonight's fold whole, nothing promoted yet
    "renamed": ("dreamer.morning.stack", "place_expert", "after"),  # before the commit: the window that wedged homes
    "committed": ("storage.ledger", "promote", "after"),  # after the commit, before the manifest
    "manifest-replace": ("os", "replace", "before"),  # the manifest's temporary file written, not yet renamed
    "manifest-written": ("dreamer.morning.stack", "write_manifest", "after"),
    "random": None,
}
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
DAYS = ["My sister Ana lives in Lisbon and works as a pilot.", "My cat is called Miso.",
        "I play water polo on Tuesdays.", "My favourite writer is Ursula Le Guin."]


# --- the child: one night --------------------------------------------------------------------
def _arm(point: str, signum: int) -> dict:
    """Patch the point's call to signal this process there; returns the sleep_now keywords."""
    import importlib

    fire = lambda: os.kill(os.getpid(), signum)  # noqa: E731
    if point == "mid-distill":
        return {"on_step": lambda step, info: fire() if step == 2 else None}
    if point == "random" or point == "none":
        return {}
    module_name, attribute, when = POINTS[point]
    module = importlib.import_module(module_name)
    original = getattr(module, attribute)

    def wrapped(*args, **kwargs):
        if point == "manifest-replace" and not str(args[1]).endswith("manifest.json"):
            return original(*args, **kwargs)
        if when == "before":
            fire()
        result = original(*args, **kwargs)
        if when == "after":
            fire()
        return result

    setattr(module, attribute, wrapped)
    return {}


def _night(home: Path, model_dir: Path, point: str, signum: int, seed: int) -> None:
    """Runs in a forked child; exits 0 (night done), 130 (interrupted) or 1 (failed)."""
    os.environ["DREAMER_HOME"] = str(home)
    code = 1
    try:
        import torch

        from dreamer.sleep import gate
        from dreamer.sleep.seeding.rewards import SemanticJudge
        from dreamer.sleep.outcome import SleepInterrupted
        from dreamer.sleep.night import sleep_now
        from dreamer.sleep.config import sleep_config_from_dict
        from storage import Config, Store

        gate.measure = lambda *a, **k: dict(PASSING)
        extra = _arm(point, signum)
        cfg = sleep_config_from_dict({**SMALL, "load": {**SMALL["load"], "seed": seed}}, preset="kill-test")
        judge = SemanticJudge(embed_fn=lambda texts: torch.ones(len(texts), 4))
        try:
            config = Config(train_model=str(model_dir), model=str(model_dir / "model.gguf"))  # the fold's twin
            sleep_now(Store(home / "dreamer.db"), config, cfg, home=home, judge=judge, **extra)
            code = 0
        except SleepInterrupted:
            code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def run_child(home: Path, model_dir: Path, point: str, signum: int, seed: int, delay: float | None = None) -> str:
    """Fork one night; `delay`: the parent sends the signal after that many seconds. How it ended."""
    pid = os.fork()
    if pid == 0:
        _night(home, model_dir, point, signum, seed)
    if delay is not None:
        time.sleep(delay)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return {0: "finished", 130: "interrupted", 1: "failed"}.get(os.WEXITSTATUS(status), f"exit {os.WEXITSTATUS(status)}")


# --- the parent: homes and checks --------------------------------------------------------------
def make_template(workdir: Path) -> tuple[Path, Path, float]:
    """(the tiny model, a home with one promoted night and a waiting day, one night's wall seconds)."""
    import subprocess

    model_dir = workdir / "model"
    # Built in a process of its own: this one must not start torch's thread pools before it forks.
    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                    f"from dreamer.bench.tiny import make_tiny_model_dir; make_tiny_model_dir({str(model_dir)!r})"],
                   check=True)
    home = workdir / "template"
    add_day(home, DAYS[:2])
    if run_child(home, model_dir, "none", 0, seed=0) != "finished":
        raise SystemExit("the first, undisturbed night did not finish: see the traceback above")
    add_day(home, DAYS[2:])
    probe = workdir / "probe"
    shutil.copytree(home, probe)
    started = time.monotonic()
    if run_child(probe, model_dir, "none", 0, seed=1) != "finished":
        raise SystemExit("an undisturbed night did not finish: see the traceback above")
    seconds = time.monotonic() - started
    shutil.rmtree(probe)
    return model_dir, home, seconds


def add_day(home: Path, lines: list[str]) -> None:
    from storage import Store

    store = Store(home / "dreamer.db")
    conversation = store.new_conversation()
    for line in lines:
        store.add_message(conversation, "user", line)
        store.add_message(conversation, "assistant", "Noted.")
    store.close()


def turns(home: Path) -> dict[int, tuple]:
    from storage import Store

    store = Store(home / "dreamer.db")
    rows = {m["id"]: (m["role"], m["content"]) for m in store.db["messages"].rows}
    store.close()
    return rows


def check(home: Path, expected_turns: dict[int, tuple]) -> tuple[list[str], list[str], dict]:
    """(problems, what the recovery pass repaired, state) of a home, opened as the next start does."""
    from dreamer.morning.stack import gguf_problem, peft_problem
    from storage import Store, ledger
    from storage.manifest import read_manifest
    from storage.recovery import reconcile

    store = Store(home / "dreamer.db")
    repairs = reconcile(store, home)
    problems = []
    messages = {m["id"]: m for m in store.db["messages"].rows}
    if {k: (m["role"], m["content"]) for k, m in messages.items()} != expected_turns:
        problems.append("turns lost or changed")
    runs = {r["id"]: r for r in store.db["sleep_runs"].rows}
    if any(r["status"] == "running" for r in runs.values()):
        problems.append("a run is still recorded running")
    promoted = {rid for rid, r in runs.items() if r["status"] == "promoted"}
    adapters = list(store.db["adapters"].rows)
    if {a["run_id"] for a in adapters} != promoted:
        problems.append("promoted runs and experts disagree")
    for m in messages.values():
        if m["consolidated_run_id"] is not None and m["consolidated_run_id"] not in promoted:
            problems.append(f"turn {m['id']} consolidated by run {m['consolidated_run_id']}, which was not promoted")
            break
    root = home / "adapters"
    named = {Path(a["path"]).name for a in adapters}
    on_disk = {p.name for p in root.iterdir() if p.is_dir() and p.name != "served"} if root.is_dir() else set()
    if on_disk != named:
        problems.append(f"adapters/ holds {sorted(on_disk - named)} unnamed, lacks {sorted(named - on_disk)}")
    for a in adapters:
        if peft_problem(Path(a["path"])) or gguf_problem(a["gguf_path"]):
            problems.append(f"night {a['night']}'s expert is damaged")
    if read_manifest(home) != ledger.stack_manifest(store, home):
        problems.append("the manifest disagrees with the database")
    served = read_manifest(home)["served"]
    if adapters and not served["model"]:
        problems.append("the active experts are not folded: the chat would apply them as adapters")
    if served["model"] and gguf_problem(served["model"]):
        problems.append(f"the served model is damaged: {gguf_problem(served['model'])}")
    if list((root / "served").glob("*.partial-*")):
        problems.append("a partial fold left in adapters/served/")
    if (root / "manifest.json.tmp").exists():
        problems.append("manifest.json.tmp left behind")
    nights = sorted(a["night"] for a in adapters)
    if nights != list(range(1, len(nights) + 1)):
        problems.append(f"nights numbered {nights}")
    state = {"nights": len(nights), "last_status": max(runs.items())[1]["status"] if runs else None,
             "waiting": store.unconsolidated_count()}
    store.close()
    return problems, repairs, state


def trial(workdir: Path, model_dir: Path, template: Path, point: str, signame: str, index: int,
          night_seconds: float) -> dict:
    home = workdir / f"home-{point}-{signame}-{index}"
    shutil.copytree(template, home)
    expected = turns(home)
    rng = random.Random(f"{point}-{signame}-{index}")
    delay = rng.uniform(0.0, night_seconds) if point == "random" else None
    ended = run_child(home, model_dir, point, SIGNALS[signame], seed=index, delay=delay)
    problems, repairs, state = check(home, expected)
    add_day(home, [f"Tomorrow I fly to city number {index}."])  # the next night always has a day to learn
    expected = turns(home)
    next_night = run_child(home, model_dir, "none", 0, seed=1000 + index)
    after, _, next_state = check(home, expected)
    if next_night != "finished" or next_state["last_status"] != "promoted":
        after.append(f"the next night ended {next_night}, recorded {next_state['last_status']}")
    elif next_state["nights"] != state["nights"] + 1 or next_state["waiting"] != 0:
        after.append(f"the next night made night {next_state['nights']} after {state['nights']}, "
                     f"{next_state['waiting']} turns still waiting")
    shutil.rmtree(home)
    return {"point": point, "signal": signame, "trial": index, "delay": delay, "ended": ended,
            "promoted_before_kill": state["nights"] == 2, "repairs": repairs,
            "problems": problems + [f"next night: {p}" for p in after]}


def summarize(results: list[dict]) -> dict:
    table: dict[str, dict] = {}
    for r in results:
        row = table.setdefault(f"{r['point']} {r['signal']}", {"point": r["point"], "signal": r["signal"], "trials": 0,
                                                              "failures": 0, "promoted": 0, "ended": {}})
        row["trials"] += 1
        row["failures"] += bool(r["problems"])
        row["promoted"] += r["promoted_before_kill"]
        row["ended"][r["ended"]] = row["ended"].get(r["ended"], 0) + 1
    return {"trials": len(results), "failures": sum(bool(r["problems"]) for r in results), "rows": list(table.values())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--signals", default="KILL,TERM")
    parser.add_argument("--points", default="all", help="comma-separated, or all: " + ", ".join(POINTS))
    parser.add_argument("--out", type=Path, default=Path("bench-out/kill_nights.json"))
    args = parser.parse_args(argv)
    points = list(POINTS) if args.points == "all" else args.points.split(",")
    signals_ = args.signals.split(",")
    unknown = [p for p in points if p not in POINTS] + [s for s in signals_ if s not in SIGNALS]
    if unknown:
        parser.error(f"unknown point or signal: {', '.join(unknown)}")
    # Imported once here, before any fork, so each child starts a night at once. No torch op runs in
    # this process: its thread pools must not exist when it forks.
    import peft  # noqa: F401
    import torch  # noqa: F401

    import dreamer.sleep.night  # noqa: F401
    import dreamer.sleep.stages  # noqa: F401

    started, commit = time.monotonic(), git_commit()  # the code the run starts on
    results = []
    with tempfile.TemporaryDirectory(prefix="kill-nights-") as tmp:
        workdir = Path(tmp)
        model_dir, template, night_seconds = make_template(workdir)
        for index in range(args.trials):
            for point in points:
                for signame in signals_:
                    results.append(trial(workdir, model_dir, template, point, signame, index, night_seconds))
                    last = results[-1]
                    print(f"{point:>18} {signame:<4} #{index:<3} {last['ended']:<18} "
                          f"{'OK' if not last['problems'] else 'FAIL: ' + '; '.join(last['problems'])}", flush=True)
    summary = summarize(results)
    record = {"command": command_line("benchmarks.kill_nights", argv), "machine": machine(load=True),
              "commit": commit, "night_seconds": round(night_seconds, 2), "wall_seconds": round(time.monotonic() - started, 1),
              **summary, "failed_trials": [r for r in results if r["problems"]]}
    write_record(args.out, record)
    print(f"{summary['trials']} trials, {summary['failures']} failures; {args.out}")
    return 1 if summary["failures"] else 0




if __name__ == "__main__":
    sys.exit(main())
