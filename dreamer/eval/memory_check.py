"""`dreamer memory --check`: what the active memory answers, closed book, to every fact it holds.

Each promoted night's gate already measures this for its own probes and every earlier active
night's (dreamer.sleep.gate.measure keeps the per-probe checks), so after a night the Memory
screen has fresh figures without running a model. This pass re-measures them on demand ("re-check
now"; after a rollback or a forget, whose stack no gate measured): the active stack's experts on
the training base, each probe asked as the chat asks (its system prompt, no day in context),
scored by multiple choice (dreamer.eval.evaluate.choice_checks), saved for the stack version it
measured (storage.ledger.save_checks). It holds the sleep lock, so no night swaps the stack under it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from storage import Config, Store, ledger


def facts_to_check(store: Store) -> list[dict]:
    """The active nights' probes about the user (not the general-knowledge ones)."""
    return [row for row in ledger.replay_probes(store) if row["kind"] != "general"]


def check_active(store: Store, config: Config, home: Path,
                 on_progress: Callable[[int, int], None] | None = None) -> int:
    """Check every fact of the active stack; returns how many checks were saved."""
    rows = facts_to_check(store)
    if not rows:
        return 0  # before torch is imported: nothing to load
    from agent.memory import system_message
    from dreamer.eval.evaluate import choice_checks
    from dreamer.lm.weights import build_stack, load_base, plan_device, training_source
    from dreamer.sleep.config import LoadConfig
    from dreamer.sleep.gate import as_probes
    from storage.paths import cache_dir

    version = ledger.active_version(store)
    base, tokenizer = load_base(training_source(config.train_model, cache_dir(home), config.model_path()), plan_device(LoadConfig()))
    model = build_stack(base, [Path(a["path"]) for a in store.active_adapters()], None)
    system = system_message(config, store.today())
    checks = []
    for done, row in enumerate(rows, 1):
        [check] = choice_checks(model, tokenizer, as_probes([row]), system)
        checks.append({**check, "probe_id": row["id"]})
        if on_progress:
            on_progress(done, len(rows))
    return ledger.save_checks(store, checks, version=version)
