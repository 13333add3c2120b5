"""The `dreamer` command line.

    dreamer chat [-m PATH.gguf]        # the chat UI on the configured (or embedded) model
    dreamer models                     # the model, sleep support, which presets fit this machine
    dreamer model use PATH.gguf        # chat and sleep on this GGUF
    dreamer status                     # paths, model, counts per day, turns waiting for sleep
    dreamer log [--day D]              # print conversations
    dreamer import FILE.jsonl          # add conversations (all or nothing)
    dreamer export FILE.jsonl [--day D]
    dreamer sleep --now [--day D] [--preset P] [--dry-run]   # consolidate into a new LoRA expert
    dreamer eval --probes FILE.jsonl [--stack VERSION|none] [--json]
    dreamer memory [--export] [--fold] [--json]   # the adapter stack, its versions and the sleep runs
    dreamer memory --facts [--json] | --check     # what it knows, night by night; re-measure it
    dreamer rollback [VERSION]         # re-activate an earlier stack (the chat swaps to it)
    dreamer forget ID... | --day D | --search TEXT [--yes]   # delete turns and the nights that learned them
    dreamer dont-learn ID... | --turn ID [--undo]            # keep turns in the log, out of every night
    dreamer daemon                     # the nightly scheduler (or scheduler_in_chat = true)
    dreamer schedule [--install-systemd]
    dreamer bench [--days N] [--facts F] [--arms ...] [--quick] [--resume DIR] [--data F --probes F]

Heavy modules (torch, transformers, llama_cpp, textual) are imported inside the commands
that need them, so `dreamer --help` stays fast. Every error becomes one clean line on stderr
and exit code 1; its traceback goes to DREAMER_HOME/logs/errors.log (dreamer.cli.errors).
Every command opens the database through `open_store`, which first repairs what a killed
sleep left (storage.recovery); the commands that only read also work on a read-only home.
"""

from __future__ import annotations

import os

import click

from dreamer.cli.bench import bench
from dreamer.cli.conversations import chat, export, import_, log, status
from dreamer.cli.dont_learn import dont_learn
from dreamer.cli.errors import DreamerGroup
from dreamer.cli.forget import forget
from dreamer.cli.memory import memory, rollback
from dreamer.cli.models import model, models
from dreamer.cli.schedule import daemon, schedule
from dreamer.cli.sleep import eval_, sleep


@click.group(cls=DreamerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dreamer")
def cli() -> None:
    """dreamer: a personal chat agent that learns while it sleeps.

    Data lives in DREAMER_HOME (default ~/.local/share/dreamer).
    """


for command in (chat, status, log, import_, export, sleep, eval_, memory, rollback, forget, dont_learn, models, model,
                daemon, schedule, bench):
    cli.add_command(command)


def main() -> None:
    os.umask(0o077)  # every file dreamer writes (experts, exports, logs) is the user's alone
    cli()
