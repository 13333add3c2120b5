"""`dreamer bench`: the same days given to every arm, one night at a time, scored as the chat asks.

    dreamer bench [--days 3] [--facts 10] [--arms base,context,recall,naive,distill,sleep,dream] [--preset cpu-tiny]
                  [--seed 0] [--night-seed S] [--out DIR] [--resume DIR] [--jobs N] [--quick]
                  [--data CONVERSATIONS.jsonl --probes PROBES.jsonl]

For each night k (its day's conversations) and each arm (dreamer.bench.arms), night by night so
that a stopped run has every arm at about the same night:
1. train: the arm's night, in a fresh spawned process (naive, distill, sleep, dream; the others
   keep no weights);
2. score: the probes of every day so far that no later update superseded, the abstain and
   general probes, and the night's controls, asked the morning after (dreamer.bench.score), in
   one long-lived scoring process that loads each arm's model afresh.
`--jobs N` runs N units side by side (never two nights of one arm: each builds on the last), the
longest arms first within a night. The run folder holds bench.json (the days, the config, the machine, and every finished unit,
rewritten atomically after each), each arm's home, log.txt, report.md and plots/. `--resume DIR`
reads bench.json and runs only the units it lacks; a night killed half-way is run again (a sleep
night's home first repairs what the kill left, as every sleep does).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path

from dreamer.bench.arms import ARMS, NIGHTS, baseline_night, sleep_night
from dreamer.bench.score import score_memory

RESULT = "bench.json"
REPLY_CHARS = 160  # replies are kept for reading, cut so a run's file stays small enough to commit


class BenchError(ValueError):
    """A bad option or run folder; the message says which."""


@dataclass
class BenchConfig:
    days: int = 3
    facts: int = 10
    updates: int = 2  # facts a synthetic day updates from an earlier day (0: a retention run)
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    preset: str = "cpu-tiny"
    seed: int = 0
    night_seed: int | None = None
    quick: bool = False
    data: str | None = None
    probes: str | None = None
    model: str | None = None  # the training model folder; None: the configured one (or embedded)

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise BenchError(f"unknown arm {unknown[0]!r} (arms: {', '.join(ARMS)})" if unknown else "no arms given")
        if self.days < 1 or self.facts < 1:
            raise BenchError("--days and --facts must be at least 1")
        if self.updates < 0:
            raise BenchError("--updates must be 0 or more")
        if (self.data is None) != (self.probes is None):
            raise BenchError("--data and --probes go together: conversations and the probes that check them")

    @property
    def nights_seed(self) -> int:
        return self.seed if self.night_seed is None else self.night_seed


def sleep_config(bench: BenchConfig):
    from dreamer.sleep.config import load_preset, sleep_config_from_dict

    raw = load_preset(bench.preset).as_dict()
    preset = raw.pop("preset")
    raw["load"]["seed"] = bench.nights_seed
    if bench.quick:  # a smoke test of the pipeline: few steps, short generations
        raw["distill"].update(steps=4, rl_new_tokens=8)
        raw["memories"].update(questions_per_conversation=2, teacher_samples=1, max_new_tokens=16)
        raw["dreaming"].update(dreams=4, keep=2, keep_random=0, max_new_tokens=8, inner_steps=1, rehearse_steps=2,
                               writer_steps=2)
    return sleep_config_from_dict(raw, preset=preset)


def make_run_days(bench: BenchConfig) -> list[dict]:
    from dreamer.bench.data import load_user_days
    from dreamer.bench.days import general_probes, make_days

    days = (load_user_days(Path(bench.data), Path(bench.probes)) if bench.data
            else make_days(bench.seed, bench.days, bench.facts, bench.updates))
    days[0]["probes"] += [{**row, "day": days[0]["day"]} for row in general_probes()]  # asked every night
    for k, day in enumerate(days):
        for i, probe in enumerate(day["probes"]):
            probe["id"] = f"{k + 1}:{i}"
    return days


def probes_after(days: list[dict], night: int, seed: int) -> list[dict]:
    """What is asked the morning after night `night` (1-based): see the module docstring."""
    from dreamer.bench.days import controls

    today = days[night - 1]["day"]
    asked = [p for d in days[:night] for p in d["probes"]
             if not (p.get("superseded_on") and p["superseded_on"] <= today)]
    for kind, rows in controls(days[night - 1]["probes"], seed).items():
        asked += [{**row, "id": f"{kind}:{row['id']}"} for row in rows]
    return asked


def machine() -> dict:
    import platform
    from importlib import metadata

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    versions = {p: metadata.version(p) for p in ("dreamer", "torch", "transformers", "peft")}
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(), **versions}


# --- processes -----------------------------------------------------------------------
_PARENT: int | None = None  # in a worker: the pid of the bench that started it


def die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux, SIGTERM this worker when the bench that started it dies.

    Without it a killed bench leaves its night training on, unseen, taking a core from the next run.
    A sleep night turns SIGTERM into an orderly interruption (dreamer.sleep.lock) and returns; the
    pool's worker would then wait for work forever, holding gigabytes: `_orphan_guard` ends it.
    """
    global _PARENT
    _PARENT = parent
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM) != 0:  # 1 = PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # it died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _orphan_guard(fn, /, *args, **kwargs):
    """Run one task; if the bench died meanwhile, end this worker instead of waiting for the next."""
    try:
        return fn(*args, **kwargs)
    finally:
        if _PARENT is not None and os.getppid() != _PARENT:
            os._exit(1)


class WorkerPool(ProcessPoolExecutor):
    """One fresh interpreter (spawned, not forked: no torch state is shared) that dies with us."""

    def __init__(self) -> None:
        super().__init__(1, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                         initargs=(os.getpid(),))

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(_orphan_guard, fn, *args, **kwargs)


worker_pool = WorkerPool


def prepare_source(bench: BenchConfig, folder: str) -> str:
    """The training model's folder: the tiny test model (--quick), --model, or the configured one."""
    if bench.quick:
        from dreamer.bench.tiny import make_tiny_model_dir

        target = Path(folder) / "tiny-model"
        return str(target if (target / "config.json").exists() else make_tiny_model_dir(target))
    from dreamer.lm.weights import training_source
    from storage import load_config
    from storage.paths import cache_dir, config_path

    return training_source(bench.model or load_config(config_path()).train_model, cache_dir())


# --- the run -------------------------------------------------------------------------
class Run:
    """A run folder and its bench.json."""

    def __init__(self, folder: Path, result: dict) -> None:
        self.folder, self.result = folder, result
        self.lock = threading.RLock()  # lanes (threads) share the result and its file

    @classmethod
    def create(cls, folder: Path, bench: BenchConfig) -> Run:
        if (folder / RESULT).exists():
            raise BenchError(f"{folder} already holds a run: continue it with --resume {folder}, or pick another --out")
        cfg = sleep_config(bench)
        result = {"format": 1, "bench": asdict(bench), "config": cfg.as_dict(), "machine": machine(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg": [round(os.getloadavg()[0], 2)],
                  "days": make_run_days(bench), "units": {}}
        folder.mkdir(parents=True, exist_ok=True)
        run = cls(folder, result)
        run.save()
        return run

    @classmethod
    def open(cls, folder: Path) -> Run:
        try:
            result = json.loads((folder / RESULT).read_text())
        except FileNotFoundError:
            raise BenchError(f"{folder} holds no {RESULT}: nothing to resume") from None
        except (OSError, ValueError) as err:
            raise BenchError(f"{folder / RESULT} cannot be read: {err}") from None
        if result.get("format") != 1:
            raise BenchError(f"{folder / RESULT} is not a dreamer bench result (format {result.get('format')!r})")
        return cls(folder, result)

    @property
    def bench(self) -> BenchConfig:
        return BenchConfig(**self.result["bench"])

    def save(self) -> None:
        with self.lock:
            partial = self.folder / (RESULT + ".partial")
            partial.write_text(json.dumps(self.result, separators=(",", ":"), default=str))
            partial.replace(self.folder / RESULT)  # atomic: a kill leaves the last whole file

    def log(self, text: str) -> None:
        with self.lock, open(self.folder / "log.txt", "a", encoding="utf-8") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")


def units(run: Run) -> list[tuple[int, str]]:
    return [(k + 1, arm) for k in range(len(run.result["days"])) for arm in run.bench.arms]


PRIORITY = ("dream", "sleep", "distill", "naive", "context", "recall", "base")  # within a night, the longest first


class Schedule:
    """The units left, handed to lanes: night by night, never two of one arm at once (an arm's nights
    build on each other), so a lane that is free takes the next unit whose arm is idle."""

    def __init__(self, todo: list[tuple[int, str]]) -> None:
        self.pending = sorted(todo, key=lambda u: (u[0], PRIORITY.index(u[1])))
        self.busy: set[str] = set()
        self.failed: BaseException | None = None
        self.cond = threading.Condition()

    def take(self) -> tuple[int, str] | None:
        with self.cond:
            while True:
                if self.failed or not self.pending:
                    return None
                ready = next((u for u in self.pending if u[1] not in self.busy), None)
                if ready:
                    self.pending.remove(ready)
                    self.busy.add(ready[1])
                    return ready
                self.cond.wait()

    def finish(self, unit: tuple[int, str], error: BaseException | None = None) -> None:
        with self.cond:
            self.busy.discard(unit[1])
            if error and not self.failed:
                self.failed = error
            self.cond.notify_all()


def run_bench(run: Run, progress=None, jobs: int = 1) -> dict:
    """Every unit bench.json lacks, in `jobs` lanes side by side; the result is saved after each unit.

    Each lane has its own scoring process and starts a fresh process per training night (one torch
    thread each on a CPU, as the preset plans it): on 2 cores, 2 lanes run twice the work in about
    the same time, and every night's wall time then includes the other lane's load (recorded).
    """
    from dreamer.sleep.config import sleep_config_from_dict

    if jobs < 1:
        raise BenchError("--jobs must be at least 1")
    raw = dict(run.result["config"])
    cfg = sleep_config_from_dict(raw, preset=raw.pop("preset"))
    todo = [(k, arm) for k, arm in units(run) if "score" not in run.result["units"].get(f"{arm}/{k}", {})]
    run.result.setdefault("sessions", []).append({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "jobs": jobs,
                                                  "units": len(todo), "cpu": machine()["cpu"]})
    run.save()
    if progress:
        progress.start(run, todo)
    run.log(f"{len(todo)} of {len(units(run))} units to run, {jobs} at a time")
    schedule = Schedule(todo)
    lanes = [threading.Thread(target=lane, args=(run, schedule, cfg, progress), daemon=True)
             for _ in range(min(jobs, len(todo)))]
    for thread in lanes:
        thread.start()
    for thread in lanes:
        while thread.is_alive():
            thread.join(0.5)  # in slices, so Ctrl-C reaches this thread
    if schedule.failed:
        raise schedule.failed
    return run.result


def lane(run: Run, schedule: Schedule, cfg, progress) -> None:
    """One lane: its own scoring process; takes units until none is left."""
    try:
        with worker_pool() as scorer:
            source = scorer.submit(prepare_source, run.bench, str(run.folder)).result()
            while (unit := schedule.take()) is not None:
                try:
                    run_unit(run, unit, scorer, source, cfg, progress)
                except BaseException as err:
                    schedule.finish(unit, err)
                    raise
                schedule.finish(unit)
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt):  # said now: the other lanes finish their units first
            run.log(f"a lane stopped: {type(err).__name__}: {err}; the run ends after the units under way")
        with schedule.cond:
            schedule.failed = schedule.failed or err
            schedule.cond.notify_all()


def run_unit(run: Run, unit_key: tuple[int, str], scorer, source: str, cfg, progress) -> None:
    k, arm = unit_key
    bench, days = run.bench, run.result["days"]
    with run.lock:
        unit = run.result["units"].setdefault(f"{arm}/{k}", {})
    spec, day = ARMS[arm], days[k - 1]
    if spec.trains and "train" not in unit:
        run.log(f"{arm} night {k}: training on {day['day']}")
        if progress:
            progress.working(arm, k, "training")
        row = train(run, arm, k, source, cfg)
        with run.lock:
            unit["train"] = row
            run.save()
        run.log(f"{arm} night {k}: {row['status']}: {row.get('message', '')}")
    if arm in NIGHTS and "served" not in unit:  # what the chat would run the morning after: size, speed
        from dreamer.bench.served import served_speed

        served = scorer.submit(served_speed, str(run.folder / "homes" / arm)).result()
        with run.lock:
            unit["served"] = served
            run.save()
        run.log(f"{arm} night {k}: the chat serves {served['mib']} MiB"
                + (f", {served['decode_tok_s']} tok/s (bare {served['bare_tok_s']})" if "ratio" in served
                   else f"; decode not measured: {served.get('error')}"))
    if progress:
        progress.working(arm, k, "scoring")
    ask_day = str(date.fromisoformat(day["day"]) + timedelta(days=1))
    history = [r for d in days[:k] for r in d["records"]]
    experts = unit.get("train", {}).get("experts", [])
    score = scorer.submit(score_memory, source, experts, spec.memory, probes_after(days, k, bench.seed),
                          ask_day=ask_day, history=history, load=cfg.load,
                          max_new_tokens=8 if bench.quick else 40).result()
    for row in score["probes"]:
        if row["reply"] is not None:
            row["reply"] = row["reply"][:REPLY_CHARS]
    with run.lock:
        unit["score"] = score
        run.result["loadavg"].append(round(os.getloadavg()[0], 2))
        run.save()
    run.log(f"{arm} night {k}: scored in {score['seconds']} s")
    if progress:
        progress.done(arm, k)


def train(run: Run, arm: str, k: int, source: str, cfg) -> dict:
    """The arm's night k in a fresh process; a failure is recorded (the stack stays as it was)."""
    units_ = run.result["units"]
    prior = units_.get(f"{arm}/{k - 1}", {}).get("train", {}).get("experts", []) if k > 1 else []
    home = run.folder / "homes" / arm
    day = run.result["days"][k - 1]
    try:
        with worker_pool() as pool:
            if arm in NIGHTS:  # sleep: stage 1 alone; dream: with Dreaming; nothing else differs
                night_cfg = replace(cfg, dreaming=replace(cfg.dreaming, enabled=arm == "dream"))
                row = pool.submit(sleep_night, str(home), source, day["records"], night_cfg, f"{arm} night {k}",
                                  str(run.folder / "log.txt")).result()
            else:
                row = pool.submit(baseline_night, arm, str(home / f"night-{k}"), prior, source, day, cfg,
                                  run.bench.nights_seed + k - 1).result()
    except KeyboardInterrupt:
        raise
    except Exception as err:  # recorded as it is; the next arm and night still run
        run.log(f"{arm} night {k} failed: {type(err).__name__}: {err}")
        row = {"status": "failed", "message": f"{type(err).__name__}: {err}", "experts": prior}
    return row

