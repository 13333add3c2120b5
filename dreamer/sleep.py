"""One night of sleep, stage 1: Knowledge Seeding (collect -> load -> memories -> distill -> gate -> save).

    dreamer sleep --now [--day D] [--preset cpu-tiny|gpu-qlora] [--dry-run]

1. Collect the turns not yet consolidated (all waiting days, or `--day`).
2. Load the base (NF4 on CUDA, fp32 on CPU), the active stack frozen, and a new LoRA expert.
3. The teacher (active stack + the day in context) writes training prompts, answers,
   memories and held-out probes (dreamer.memories).
4. Generalized distillation into the new expert (dreamer.distill), with replay of earlier
   nights' probes and a general-text anchor.
5. The gate (dreamer.gate). Pass: the expert is saved, exported and renamed into place, then
   promoted, the turns marked consolidated and the run recorded in one transaction, then the
   manifest rewritten (Ctrl-C and SIGTERM wait while these run). Fail: nothing changes but the
   run's own record.
6. A morning report (dreamer.report), stored with the run.

Only one sleep runs at a time (a file lock). Before it collects the turns, a sleep repairs what a
killed one left (storage.recovery). Ctrl-C or SIGTERM before the promotion marks the run
interrupted and leaves the stack and the conversations exactly as they were; SIGKILL leaves
what the next start repairs the same way.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from agent.memory import system_message
from storage import Config, Store
from storage import ledger
from storage.locks import pid_lock
from storage.paths import adapters_dir, cache_dir
from storage.recovery import reconcile, sleep_lock_path
from dreamer.sleep_config import ASSETS, SleepConfig


class SleepBusy(RuntimeError):
    """Another sleep holds the lock."""


class SleepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the sleep; the message says what it left (true whenever it came)."""


@dataclass
class SleepOutcome:
    status: str  # nothing | dry-run | promoted | rejected
    message: str
    run_id: int | None = None
    report: str = ""
    metrics: dict = field(default_factory=dict)
    repairs: list[str] = field(default_factory=list)  # what the recovery pass fixed first


class NoProgress:
    """Progress sink used when nobody watches (tests, the scheduler)."""

    def phase(self, name: str, total: int | None = None):
        return lambda n=1: None


LOCK_WAIT_SECONDS = 10.0  # another command's recovery pass holds the lock for a moment


def sleep_lock(home: Path, wait: float | None = None):
    """One sleep at a time, whoever starts it (the CLI, the scheduler, systemd)."""
    return pid_lock(sleep_lock_path(home),
                    lambda pid: SleepBusy(f"another sleep is already running (pid {pid}); only one runs at a time"),
                    wait=LOCK_WAIT_SECONDS if wait is None else wait)


@contextmanager
def sigterm_as_interrupt():
    """A kill (SIGTERM) unwinds like Ctrl-C, so the cleanup below runs either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred():
    """Ctrl-C and SIGTERM wait until the block is done: a promotion is made whole or not at all.

    Python runs signal handlers in the main thread whichever thread the kernel picked, so a
    handler that only notes the signal holds it for the whole process (a thread's signal mask
    would not: torch's threads would take it). The interrupt is raised when the block ends.
    SIGKILL cannot be held; what it leaves, storage.recovery repairs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        raise KeyboardInterrupt(f"signal {caught[0]}")


def process_memory_mb(field: str = "VmHWM") -> float:
    """This process's memory from /proc/self/status, MiB: `VmHWM` its own peak, `VmRSS` now.

    ru_maxrss (a peak) is only the fallback where /proc is missing: in a forked or spawned child
    it starts at the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return process_memory_mb("VmHWM")


def collect(store: Store, day: str | None) -> tuple[list[dict], list[str], list[int]]:
    conversations = ledger.unconsolidated(store, day)
    days = sorted({d for c in conversations for d in c["days"]})
    ids = [m["id"] for c in conversations for m in c["messages"]]
    return conversations, days, ids


def estimate(conversations: list[dict], cfg: SleepConfig) -> str:
    turns = sum(1 for c in conversations for m in c["messages"] if m["role"] == "user")
    questions = cfg.memories.questions_per_conversation * len(conversations) + 2 * turns
    d = cfg.distill
    passes = d.steps * d.batch_size
    extra = f", plus {d.steps * d.cloze_batch * (1 + d.cloze_negatives)} short cloze passes" if d.cloze_weight > 0 else ""
    # Texts, not passes: drift_batch above evaluate.KL_BATCH takes more than two passes a step.
    extra += f", plus {d.steps} x {d.drift_batch} general texts through both stacks (drift term)" if d.drift_weight > 0 else ""
    return (f"{len(conversations)} conversations, {turns} user turns; the teacher answers up to {questions} "
            f"questions; {d.steps} steps x {d.batch_size} sequences ({passes} teacher+student passes{extra})")


def sleep_now(store: Store, config: Config, cfg: SleepConfig, *, day: str | None = None, dry_run: bool = False,
              progress=None, judge=None, home: Path, on_step=None) -> SleepOutcome:
    if dry_run:
        conversations, days, _ = collect(store, day)
        if not conversations:
            return _nothing(day)
        return SleepOutcome("dry-run", f"would consolidate {', '.join(days)}: {estimate(conversations, cfg)}; "
                                       f"preset {cfg.preset}; nothing trained")
    progress = progress or NoProgress()
    # SIGTERM unwinds like Ctrl-C from the moment the lock is held, so no window leaves a run
    # `running` but SIGKILL (which storage.recovery settles at the next start).
    with sleep_lock(home), sigterm_as_interrupt():
        repairs = reconcile(store, home, holding_lock=True)  # before collecting: a kill may have left turns waiting
        conversations, days, message_ids = collect(store, day)  # under the lock: no other night takes them
        if not conversations:
            return SleepOutcome(**{**vars(_nothing(day)), "repairs": repairs})
        from dreamer.stack import candidate_dir, check_active_peft, discard, reexport_damaged_ggufs

        check_active_peft(store)  # a damaged expert is named, with the fix, before any training
        repairs += reexport_damaged_ggufs(store)  # the chat's copies, rebuilt from the PEFT files
        run_id = None
        try:
            run_id = ledger.start_run(store, days[-1], cfg.preset)
            outcome = _night(store, config, cfg, conversations, days, message_ids, run_id, progress, judge, home,
                             on_step)
            outcome.repairs = repairs
            return outcome
        except KeyboardInterrupt:
            if run_id is None or ledger.finish_run(store, run_id, "interrupted",
                                                   reason="interrupted (Ctrl-C or kill); nothing changed"):
                raise SleepInterrupted("sleep interrupted: the active memory and the conversations are unchanged") \
                    from None
            row = ledger.run(store, run_id)  # the interrupt came after the run was recorded
            raise SleepInterrupted(f"sleep interrupted after it finished: the run was already recorded "
                                   f"{row['status']} (`dreamer memory` shows it)") from None
        except BaseException as err:
            if run_id is not None:
                ledger.finish_run(store, run_id, "failed", reason=f"{type(err).__name__}: {err}")
            raise
        finally:
            if run_id is not None:
                discard(candidate_dir(adapters_dir(home), run_id))  # promoted ones were moved away already


def _nothing(day: str | None) -> SleepOutcome:
    where = f" on {day}" if day else ""
    return SleepOutcome("nothing", f"nothing to consolidate{where}: every turn is already in memory")


def _night(store, config, cfg, conversations, days, message_ids, run_id, progress, judge, home, on_step):
    import torch

    from dreamer import gate as gate_stage
    from dreamer import stack as stack_files
    from dreamer.distill import distill
    from dreamer.export_gguf import base_config_summary, check_exportable, export_expert
    from dreamer.memories import TEACHER_BATCHES, Example, sample_many, write_memories
    from dreamer.report import morning_report
    from dreamer.rewards import SemanticJudge
    from dreamer.weights import base_fingerprint, build_stack, load_base, plan_device, stack_names, training_source

    started = time.monotonic()
    phase_seconds: dict[str, float] = {}
    clock = {"name": None, "at": started}

    def begin(name: str, total: int | None):
        """Start a phase: its progress bar, and the wall time of the one before."""
        now = time.monotonic()
        if clock["name"]:
            phase_seconds[clock["name"]] = round(now - clock["at"], 1)
        clock.update(name=name, at=now)
        return progress.phase(name, total)

    rng = random.Random(cfg.load.seed)
    torch.manual_seed(cfg.load.seed)
    root = adapters_dir(home)

    advance = begin("load model", 1)
    plan = plan_device(cfg.load)
    source = training_source(config.train_model, cache_dir(home))
    base, tokenizer = load_base(source, plan)
    base_config = base_config_summary(base)
    check_exportable(base_config)  # before hours of training, not after: the chat needs the GGUF
    experts = stack_files.active_paths(store)
    model = build_stack(base, experts, cfg.distill)
    stack = stack_names(model, include_new=False)
    advance()

    advance = begin("teacher writes memories", TEACHER_BATCHES)
    base_system = system_message(config, date.fromisoformat(days[-1]))
    memories = write_memories(model, tokenizer, conversations, day=days[-1], base_system=base_system, stack=stack,
                              cfg=cfg.memories, rng=rng, progress=advance)
    closed = [{"role": "system", "content": base_system}]
    replay_rows = ledger.replay_probes(store)
    replay = [Example("replay", closed + [{"role": "user", "content": p["question"]}],
                      closed + [{"role": "user", "content": p["question"]}], stack or None, [p["answer"]])
              for p in replay_rows]
    general = [[{"role": "user", "content": json.loads(line)["prompt"]}]
               for line in (ASSETS / "general_prompts.jsonl").read_text().splitlines() if line.strip()]
    answers = sample_many(model, tokenizer, general, None, n=1, max_new_tokens=cfg.memories.max_new_tokens,
                          temperature=None)  # teacher for the anchor = the bare base
    anchor = [Example("anchor", user, user, None, answer) for user, answer in zip(general, answers) if answer[0]]
    # The drift term's plain texts: general questions with the base's own answers.
    general_texts = [f"{user[0]['content']}\n\n{answer[0]}" for user, answer in zip(general, answers) if answer[0]]
    if cfg.distill.drift_weight > 0 and not general_texts:  # a failure to say, not a term to skip quietly
        raise RuntimeError("the base answered none of assets/general_prompts.jsonl, so the drift term has no text; "
                           "set [distill] drift_weight = 0 to sleep without it")

    advance = begin("distil into a new expert", cfg.distill.steps)
    needs_judge = cfg.distill.alpha < 1 and cfg.distill.gamma > 0
    judge = judge or (SemanticJudge() if needs_judge else None)

    def step_hook(step, info):
        advance()
        if on_step:
            on_step(step, info)

    log = distill(model, tokenizer, today=memories.examples, replay=replay, anchor=anchor, documents=memories.documents,
                  clozes=memories.clozes, general_texts=general_texts, stack=stack, cfg=cfg.distill,
                  max_len=cfg.load.max_seq_len, judge=judge, rng=rng, on_step=step_hook)

    advance = begin("gate", 1)
    figures = gate_stage.measure(model, tokenizer, stack, memories.probes, replay_rows, cfg.load.max_seq_len,
                                 system=base_system)
    decision = gate_stage.decide(figures, cfg.gate)
    ledger.save_probes(store, run_id, memories.probes)
    advance()

    begin("report", None)
    night = ledger.next_night(store) if decision.passed else None  # stable: the sleep lock is held
    metrics = {"phase_seconds": phase_seconds, "gate": {k: v for k, v in figures.items() if not k.startswith("replies")}, "training": log.summary(),
               "counts": memories.counts, "plan": plan.describe(), "peak_memory_mb": round(peak_memory_mb(), 1),
               "seconds": round(time.monotonic() - started, 1), "days": days}
    status = "promoted" if decision.passed else "rejected"
    reason = "; ".join(decision.reasons)
    report = morning_report(night=night, days=days, status=status, reasons=decision.reasons, plan=plan.describe(),
                            preset=cfg.preset, counts=memories.counts, gate=figures, probes=memories.probes,
                            training=log.summary(), seconds=metrics["seconds"], peak_memory_mb=metrics["peak_memory_mb"],
                            phases=phase_seconds)
    if not decision.passed:
        ledger.finish_run(store, run_id, status, reason=reason, report=report, metrics=metrics)
        return SleepOutcome(status, f"rejected by the gate: {reason}; the conversations wait for the next night",
                            run_id, report, metrics)

    advance = progress.phase("save and promote", 1)
    candidate = stack_files.save_candidate(model, stack_files.candidate_dir(root, run_id), {
        "base": base_fingerprint(base), "base_config": base_config, "base_source": source, "days": days,
        "night": night, "run_id": run_id,
        "rank": cfg.distill.rank, "lora_alpha": cfg.distill.lora_alpha, "metrics": metrics,
        "config": cfg.as_dict(), "conversation_ids": [c["conversation_id"] for c in conversations],
    })
    export_started = time.monotonic()
    exported = export_expert(candidate, base_config=base_config)  # a failure fails the night: nothing changes
    metrics["export_seconds"] = round(time.monotonic() - export_started, 2)
    with signals_deferred():  # rename, commit and manifest: whole, or (SIGKILL) repaired at the next start
        final = stack_files.place_expert(candidate, root, run_id)
        adapter = {"night": night, "day": days[-1], "path": str(final), "gguf_path": str(final / exported.name),
                   "metrics": json.dumps(metrics, default=str), "config": json.dumps(cfg.as_dict())}
        try:
            ledger.promote(store, run_id, adapter, message_ids, reason=reason, report=report, metrics=metrics)
        except BaseException:
            stack_files.discard(final)  # the database said no: leave no orphan expert behind
            raise
        try:
            stack_files.write_manifest(store, root)
        except OSError as err:  # the promotion is committed: say so, and how to repair, rather than "failed"
            warning = (f"night {night} is promoted but the stack manifest could not be written ({err}): a running "
                       f"chat keeps its old memory until the next dreamer command rewrites it")
            report += f"\n\n**Warning:** {warning}"
            ledger.set_report(store, run_id, report)
    advance()
    return SleepOutcome(status, f"night {night} promoted: {len(message_ids)} turns consolidated", run_id, report,
                        metrics)
