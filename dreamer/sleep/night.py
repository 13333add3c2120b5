"""One night of sleep: the lock, the repairs, the turns, the run, and how a night ends.

    dreamer sleep --now [--day D] [--preset cpu-tiny|gpu-qlora] [--dreaming/--no-dreaming] [--dry-run]

1. Take the sleep lock (one sleep at a time) and repair what a killed night left
   (storage.recovery): before the turns are collected, so a kill's turns are collected too.
2. Collect the turns not yet consolidated (every waiting day, or `--day`), under the lock.
3. Refuse, before any training, an active expert whose files are damaged (naming the fix);
   rebuild a damaged llama.cpp export from its PEFT files.
4. Record the run, then run the night's stages (dreamer.sleep.stages: load, teach, distil, gate,
   report, promote). Pass: the expert is saved, exported and renamed into place, then promoted,
   the turns marked consolidated and the run recorded in one transaction, then the manifest
   rewritten. Fail: nothing changes but the run's own record.

Ctrl-C or SIGTERM before the promotion marks the run interrupted and leaves the stack and the
conversations exactly as they were; during it they wait until it is whole; SIGKILL leaves what
the next start repairs. `--dry-run` collects and estimates, and trains nothing.
"""

from __future__ import annotations

from pathlib import Path

from dreamer.sleep.config import SleepConfig
from dreamer.sleep.lock import sigterm_as_interrupt, sleep_lock
from dreamer.sleep.outcome import SleepInterrupted, SleepOutcome
from storage import Config, Store, ledger
from storage.paths import adapters_dir
from storage.recovery import reconcile
from storage.words import count


class NoProgress:
    """Progress sink used when nobody watches (tests, the scheduler)."""

    def phase(self, name: str, total: int | None = None):
        return lambda n=1: None


def collect(store: Store, day: str | None) -> tuple[list[dict], list[str], list[int]]:
    conversations = ledger.unconsolidated(store, day)
    days = sorted({d for c in conversations for d in c["days"]})
    ids = [m["id"] for c in conversations for m in c["messages"]]
    return conversations, days, ids


def estimate(conversations: list[dict], cfg: SleepConfig) -> str:
    turns = sum(1 for c in conversations for m in c["messages"] if m["role"] == "user")
    messages = sum(len(c["messages"]) for c in conversations)
    questions = cfg.memories.questions_per_conversation * len(conversations) + 2 * turns
    d = cfg.distill
    passes = d.steps * d.batch_size
    extra = f", plus {d.steps * d.cloze_batch * (1 + d.cloze_negatives)} short cloze passes" if d.cloze_weight > 0 else ""
    # Texts, not passes: drift_batch above dreamer.lm.scoring.KL_BATCH takes more than two passes a step.
    extra += f", plus {d.steps} x {d.drift_batch} general texts through both stacks (drift term)" if d.drift_weight > 0 else ""
    m = cfg.dreaming
    dreaming = (f"; Dreaming on: {m.dreams} dreams written, {m.keep + m.keep_random} scored on throwaway copies "
                f"({m.inner_steps} steps each), up to {m.rehearse_steps} rehearsal steps" if m.enabled else "; Dreaming off")
    return (f"{count(len(conversations), 'conversation')}, {count(messages, 'message')} ({turns} of them yours); "
            f"the teacher answers up to {questions} "
            f"questions; {d.steps} steps x {d.batch_size} sequences ({passes} teacher+student passes{extra}){dreaming}")


def sleep_now(store: Store, config: Config, cfg: SleepConfig, *, day: str | None = None, dry_run: bool = False,
              progress=None, judge=None, home: Path, on_step=None) -> SleepOutcome:
    if dry_run:
        conversations, days, _ = collect(store, day)
        if not conversations:
            return _nothing(day)
        from dreamer.sleep.estimate import estimate_night

        took = estimate_night(store, cfg.preset, cfg.distill.steps, config)
        return SleepOutcome("dry-run", f"would consolidate {', '.join(days)}: {estimate(conversations, cfg)}; "
                                       f"preset {cfg.preset}; {took}; nothing trained")
    progress = progress or NoProgress()
    # SIGTERM unwinds like Ctrl-C from the moment the lock is held, so no window leaves a run
    # `running` but SIGKILL (which storage.recovery settles at the next start).
    with sleep_lock(home), sigterm_as_interrupt():
        repairs = reconcile(store, home, holding_lock=True)  # before collecting: a kill may have left turns waiting
        conversations, days, message_ids = collect(store, day)  # under the lock: no other night takes them
        if not conversations:
            return SleepOutcome(**{**vars(_nothing(day)), "repairs": repairs})
        from dreamer.morning.stack import (
            candidate_dir, check_active_peft, discard, reexport_damaged_ggufs, write_manifest,
        )

        check_active_peft(store)  # a damaged expert is named, with the fix, before any training
        rebuilt = reexport_damaged_ggufs(store)  # the chat's copies, rebuilt from the PEFT files
        rebuilt += refold_if_missing(store, config, home)
        if rebuilt:
            write_manifest(store, adapters_dir(home))
        repairs += rebuilt
        run_id = None
        try:
            run_id = ledger.start_run(store, days[-1], cfg.preset)
            from dreamer.sleep.stages import Night, PhaseClock, run_stages  # torch and the models: only now

            outcome = run_stages(Night(store, config, cfg, home, conversations, days, message_ids, run_id,
                                       PhaseClock(progress), judge=judge, on_step=on_step))
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


def refold_if_missing(store: Store, config: Config, home: Path) -> list[str]:
    """The active stack's folded model, made again if it is missing or damaged (a killed fold, an
    upgrade from before deep sleep, a file lost) or of another `fold_type`: one line, or none."""
    from dreamer.morning.fold import ensure_folded
    from dreamer.morning.stack import active_paths

    folded = ensure_folded(home, config, [str(p) for p in active_paths(store)])
    if folded is None:
        return []
    return [f"folded the active experts into {folded.path.name} for the chat ({folded.seconds:.0f} s)"]


def _nothing(day: str | None) -> SleepOutcome:
    where = f" on {day}" if day else ""
    return SleepOutcome("nothing", f"nothing to consolidate{where}: every turn is already in memory")


