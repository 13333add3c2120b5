"""`dreamer memory` and `dreamer rollback`: the adapter stack, its versions, and going back.

    dreamer memory                  # experts, stack versions (the active one marked), sleep runs, dream writer
    dreamer memory --export         # (re-)write every active expert's llama.cpp GGUF
    dreamer memory --fold           # (re-)fold the active experts into the chat's model (deep sleep)
    dreamer memory --json           # the memory's state for machines, with what the chat serves
    dreamer memory --facts [--json] # what it knows, night by night, and tonight's queue (dreamer.cli.memory_facts)
    dreamer memory --check          # re-measure those facts on the active memory
    dreamer rollback [VERSION]      # re-activate an earlier stack; a running chat swaps to it

A rollback is one transaction (the experts' status and the active version) followed by an
atomic rewrite of the manifest the chat watches; with deep sleep on, the target's folded model
is made first if it was not kept (dreamer.morning.fold). The turns of the nights rolled back wait for
the next sleep again, so nothing the user said is lost with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from dreamer.cli.common import open_store
from dreamer.cli.errors import DreamerError
from dreamer.morning.stack import rollback_past
from storage import dreamer_home, ledger
from storage.paths import adapters_dir
from storage.words import count


def _store(write: bool = True):
    from storage import load_config

    return open_store(load_config(), write=write)


LOCK_WAIT_SECONDS = 2.0  # rollback and export: past a recovery pass's moment, a running sleep is refused promptly


def _nights(nights: list[int]) -> str:
    return ", ".join(map(str, nights)) if nights else "base alone"


@click.command()
@click.option("--export", "export", is_flag=True, help="(re-)export every active expert to llama.cpp GGUF")
@click.option("--fold", "fold", is_flag=True, help="(re-)fold the active experts into the chat's model")
@click.option("--facts", is_flag=True, help="each night's facts, what the memory answers now and how sure; tonight's queue")
@click.option("--check", is_flag=True, help="re-measure the facts on the active memory now (a few seconds a fact)")
@click.option("--json", "as_json", is_flag=True, help="the memory's state as JSON, with what the chat serves")
def memory(export: bool, fold: bool, facts: bool, check: bool, as_json: bool) -> None:
    """The adapter stack (experts, versions, metrics) and the sleep runs; --facts: what it knows."""
    from dreamer.cli.memory_facts import run_check, show_facts
    from dreamer.morning.stack import gguf_problem, peft_problem

    if sum((export, fold, facts, check)) > 1:
        raise DreamerError("choose one of --export, --fold, --facts and --check")
    store = _store(write=export or fold or check)
    if export or fold or check:
        from dreamer.sleep.lock import sleep_lock

        with sleep_lock(dreamer_home(), wait=LOCK_WAIT_SECONDS):  # a sleep rewrites the same files
            _export_all(store) if export else _fold_active(store) if fold else run_check(store)
        return
    if facts:
        show_facts(store, as_json)
        return
    if as_json:
        click.echo(json.dumps(memory_state(store, dreamer_home()), indent=1))
        return
    rows = ledger.adapters(store)
    click.secho("experts", bold=True)
    if not rows:
        click.echo("  none yet: the first `dreamer sleep --now` that passes the gate creates night 1")
    for row in rows:
        gate = row["metrics"].get("gate", {})
        click.echo(f"  night {row['night']:>3}  {row['day']}  {row['status']:<8} today {gate.get('today_before', 0):.2f}"
                   f" -> {gate.get('today_after', 0):.2f}  drift {gate.get('drift', 0):.4f}  {row['path']}")
        if row["status"] != "active":
            continue
        peft, gguf = peft_problem(Path(row["path"])), gguf_problem(row["gguf_path"])
        if peft:  # the sleep and `dreamer eval` need these files, so nothing can rebuild them
            click.secho(f"      DAMAGED: {peft}: restore it from a backup, or drop this night with "
                        f"`dreamer rollback {rollback_past(store, row['night'])}`", fg="red")
        elif gguf:  # the chat's copy: rebuilt from the PEFT files
            click.secho(f"      DAMAGED llama.cpp export: {gguf}: rebuild it with `dreamer memory --export`", fg="red")
    _served_line(store)
    active = ledger.active_version(store)
    click.secho("\nstack versions (dreamer rollback VERSION)", bold=True)
    forgotten = ledger.forgotten_nights(store)
    for version in ledger.versions(store):
        mark = "*" if version["id"] == active else "x" if set(version["nights"]) & forgotten else " "
        click.echo(f"{mark} v{version['id']:<4} nights {_nights(version['nights']):<16} {version['created_at'][:16]}"
                   f"  {version['reason']}")
    click.secho("\nsleep runs", bold=True)
    runs = ledger.runs(store)
    if not runs:
        click.echo("  none yet")
    for run in runs:
        reason = f"  ({run['reason']})" if run["reason"] else ""
        click.echo(f"  #{run['id']:<4} {run['started_at'][:16]}  {run['day']}  {run['status']:<11} {run['preset']}{reason}")
    _writer_history(store)


def memory_state(store, home: Path) -> dict:
    """`dreamer memory --json`: versions, experts, and what the chat serves (the manifest's view)."""
    from storage.manifest import read_manifest

    wanted = ledger.stack_manifest(store, home)
    try:
        written = read_manifest(home)
    except ValueError as err:
        written = {"error": str(err)}
    served = wanted["served"]
    return {
        "home": str(home),
        "active_version": wanted["version"],
        "night": wanted["night"],
        "served": {"model": served["model"] or served_default(), "folded": served["model"] is not None,
                   "adapters": served["adapters"]},
        "manifest_current": written == wanted,
        "experts": [{"night": r["night"], "day": r["day"], "status": r["status"], "path": r["path"],
                     "gguf_path": r["gguf_path"]} for r in ledger.adapters(store)],
        "versions": [{"id": v["id"], "nights": v["nights"], "reason": v["reason"]} for v in ledger.versions(store)],
        "waiting_turns": store.unconsolidated_count(),
    }


def _served_line(store) -> None:
    """What the chat runs for the active stack: the folded model, or the experts as adapters."""
    experts = ledger.adapters(store, "active")
    if not experts:
        return
    served = ledger.stack_manifest(store, dreamer_home())["served"]
    if served["model"]:
        size = Path(served["model"]).stat().st_size / 2**20
        kind = f" as {served['type']}" if served.get("type") else ""
        click.echo(f"  the chat serves {served['model']} ({len(experts)} nights folded in{kind}, {size:.0f} MiB)")
    else:
        click.echo(f"  the chat applies the {len(experts)} experts as adapters (not folded: `dreamer memory --fold`, "
                   "or fold = false in config.toml)")


def served_default() -> str | None:
    """The configured chat model (what serves when nothing is folded)."""
    from agent.models import ModelError, resolve_chat_model
    from storage import load_config

    try:
        return str(resolve_chat_model(load_config().model_path())[0])
    except ModelError:
        return None


def _fold_active(store) -> None:
    from dreamer.morning.fold import chat_model_to_fold, fold_stack, remove_stale
    from dreamer.morning.stack import active_paths, check_active_peft, write_manifest
    from storage import load_config

    home = dreamer_home()
    paths = [str(p) for p in active_paths(store)]
    if not paths:
        raise DreamerError("no active experts to fold: the chat serves the base model as it is")
    chat_model = chat_model_to_fold(load_config())
    if chat_model is None:
        raise DreamerError("deep sleep is off (fold = false, or chat_runtime = transformers in config.toml): "
                           "nothing to fold")
    check_active_peft(store)
    folded = fold_stack(home, chat_model, [Path(p) for p in paths], qtype=load_config().fold_type)
    write_manifest(store, adapters_dir(home))
    remove_stale(home, keep=[paths, _previous_paths(store)])
    click.echo(f"folded {len(paths)} experts into {folded.path} ({folded.bytes / 2**20:.0f} MiB, "
               f"{folded.seconds:.0f} s); a running chat swaps to it between replies")


def _version_paths(store, version: int) -> list[str]:
    nights = next((v["nights"] for v in ledger.versions(store) if v["id"] == version), [])  # unknown: activate says so
    rows = sorted((r for r in ledger.adapters(store) if r["night"] in nights), key=lambda r: r["night"])
    return [r["path"] for r in rows]


def _previous_paths(store) -> list[str]:
    try:
        return _version_paths(store, ledger.previous_version(store))
    except ValueError:
        return []


def _writer_history(store) -> None:
    """Dreaming's writer, night by night: what it wrote, what earned a reward, whether it learned."""
    dreamed = [row for row in ledger.finished_runs(store) if row["metrics"].get("dreaming")]
    if not dreamed:
        return
    click.secho("\ndream writer (Dreaming, one line per night that dreamed)", bold=True)
    for row in dreamed:
        dreams = row["metrics"]["dreaming"]
        rate = dreams.get("reward_rate")
        writer = dreams.get("writer") or {}
        learned = "learned" if writer.get("trained") and row["status"] == "promoted" else "unchanged"
        detail = f"  ({dreams['error']})" if dreams.get("error") else ""
        click.echo(f"  #{row['id']:<4} {row['day']}  {row['status']:<11} {dreams['written']:>3} written "
                   f"{dreams['kept']:>3} kept {dreams['rewarded']:>3} rewarded  reward rate "
                   f"{'n/a' if rate is None else f'{100 * rate:.0f}%':>4}  writer {learned}{detail}")


def _export_all(store) -> None:
    from dreamer.morning.export_gguf import ExportError, export_expert
    from dreamer.morning.stack import check_active_peft, write_manifest

    rows = ledger.adapters(store, "active")
    if not rows:
        click.echo("no active experts to export")
        return
    check_active_peft(store)  # a damaged expert is named with the fix, as the sleep names it
    for row in rows:
        try:
            path = export_expert(Path(row["path"]))
        except ExportError as err:
            raise DreamerError(f"night {row['night']}: {err}") from None
        ledger.set_gguf_path(store, row["id"], str(path))
        click.echo(f"night {row['night']}: {path}")
    write_manifest(store, adapters_dir(dreamer_home()))


@click.command()
@click.argument("version", type=int, required=False)
def rollback(version: int | None) -> None:
    """Re-activate an earlier stack version (default: the one the active stack was built on)."""
    from dreamer.sleep.lock import signals_deferred, sleep_lock
    from dreamer.morning.stack import active_paths, write_manifest

    store = _store()
    home = dreamer_home()
    with sleep_lock(home, wait=LOCK_WAIT_SECONDS):  # never while a sleep is about to promote on the old stack
        target = ledger.previous_version(store) if version is None else version
        from dreamer.morning.export_gguf import ExportError
        from dreamer.morning.fold import FoldError, ensure_folded, remove_stale
        from storage import load_config

        before = [str(p) for p in active_paths(store)]
        try:  # before the switch, so the old memory serves meanwhile
            ensure_folded(home, load_config(), _version_paths(store, target))
        except (FoldError, ExportError, OSError, ValueError) as err:  # rollback is the way out: never blocked
            click.secho(f"the stack v{target} could not be folded ({err}): the chat applies its experts as "
                        "adapters (slower); `dreamer memory --fold` tries again", fg="yellow")
        with signals_deferred():  # the database and the manifest the chat reads change together
            chosen = ledger.activate(store, target)
            write_manifest(store, adapters_dir(home))
        remove_stale(home, keep=[_version_paths(store, target), before])
    waiting = store.unconsolidated_count()
    click.echo(f"memory is now stack v{target} (nights: {_nights(chosen['nights'])}); a running chat swaps to it "
               f"between replies; waiting for the next sleep: {count(waiting, 'message')}")
