"""`ChatSession`: the one path from the chat UI to the database and the model.

Order of writes, so that nothing the user typed is ever lost:
1. `send(text)` stores the user turn before any generation starts;
2. `reply(...)` inserts the assistant turn as `generating`, saves the partial text every
   `FLUSH_SECONDS` while tokens stream, and marks it `complete`, or `interrupted` when the user
   stopped it or the model failed (the partial text is kept either way), or `cut` when it ran to
   `max_reply_tokens`. Sleep learns neither an interrupted nor a cut reply (storage.ledger).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.memory import build_prompt
from agent.runtime import ChatRuntime
from agent.stack_watch import StackWatcher
from storage import Config, Store
from storage.words import count

FLUSH_SECONDS = 1.0


class EmptyMessage(ValueError):
    """The user tried to send nothing but whitespace."""


@dataclass
class Reply:
    message_id: int
    text: str
    interrupted: bool
    cut: bool = False  # ended at max_reply_tokens, not by the model


def facts_kept(store: Store) -> tuple[int, int]:
    """(facts the active memory still answers, facts checked on it): the status bar's glance."""
    from storage import ledger

    states = [f["state"] for night in ledger.memory_facts(store, dreams=False) for f in night["facts"]]
    checked = [s for s in states if s != "not checked"]
    return sum(s in ("kept", "fading") for s in checked), len(checked)


class ChatSession:
    def __init__(self, store: Store, runtime: ChatRuntime, config: Config, model_name: str = "") -> None:
        self.store = store
        self.runtime = runtime
        self.config = config
        self.model_name = model_name or getattr(runtime, "name", "?")
        self.conversation_id: int | None = None
        self.forgot_open_conversation = False  # the last forget deleted the open conversation
        # The manifest lives beside the database, in DREAMER_HOME.
        self.stack = StackWatcher(runtime, store.path.parent)

    @property
    def embedded_model(self) -> bool:
        """The chat runs the embedded SmolLM2-135M (no `model` configured)."""
        return not self.config.model

    # --- conversations -----------------------------------------------------
    def new_conversation(self) -> None:
        """Start a new conversation; it is stored with its first message (no empty ones pile up)."""
        self.conversation_id = None

    def switch(self, conversation_id: int) -> None:
        self.store.conversation(conversation_id)  # raises StoreError for an unknown id
        self.conversation_id = conversation_id

    def resume_latest(self) -> int | None:
        """Open the most recent conversation, or a new one (None until its first message) on a fresh database."""
        latest = self.store.conversations(limit=1)
        self.conversation_id = latest[0]["id"] if latest else None
        return self.conversation_id

    # --- forgetting (storage.forget; the nights' files and the fold are the sleep side's) -----
    def plan_forget(self, conversation_id: int | None = None):
        """What forgetting a conversation (default: the open one) takes away (StoreError if there is none)."""
        from storage.forget import plan_forget
        from storage.store import StoreError

        conversation_id = conversation_id or self.conversation_id
        if conversation_id is None:
            raise StoreError("this conversation is still empty: nothing to forget")
        return plan_forget(self.store, conversations=[conversation_id])

    def forget(self, plan) -> str:
        """Forget under the sleep lock (never beside a sleep); then start `dreamer memory --fold` in
        the background when nights went, so the chat serves a folded model again. One line for the user."""
        import subprocess
        import sys

        from storage.forget import apply_forget, complete_forget, nights_of
        from storage.locks import pid_lock
        from storage.paths import ensure_private_dir
        from storage.recovery import sleep_lock_path
        from storage.store import StoreError

        home = self.store.path.parent
        busy = lambda pid: StoreError(f"a sleep is running (pid {pid}): forget this conversation after it")  # noqa: E731
        with pid_lock(sleep_lock_path(home), busy):
            apply_forget(self.store, plan)
            complete_forget(self.store, home, plan)
        self.forgot_open_conversation = self.conversation_id is not None and self.conversation_id in plan.emptied
        if self.forgot_open_conversation:  # deleted whole
            self.conversation_id = None
        if plan.nights and self.store.active_adapters():  # folding needs torch's files: another process
            ensure_private_dir(home / "logs")
            with open(home / "logs" / "fold.log", "a") as log:
                subprocess.Popen([sys.executable, "-m", "dreamer", "memory", "--fold"], stdout=log, stderr=log,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        nights = f"; nights {nights_of(plan)} left the memory, their other messages wait for the next sleep" \
            if plan.nights else ""
        return f"forgotten: {count(len(plan.messages), 'message')}{nights}"

    # --- "don't learn this" (storage.store.Store.exclude) --------------------------------------
    def toggle_learning(self) -> str:
        """Keep the open conversation out of every night, or let it be learned again; one line for the user."""
        from storage.store import StoreError

        if self.conversation_id is None:
            raise StoreError("this conversation is still empty: there is nothing to keep from sleep")
        learn = self.store.excluded(self.conversation_id)
        learned = self.store.exclude(conversation_id=self.conversation_id, undo=learn)
        if learn:
            return "this conversation will be learned again at night (what of it waits)"
        line = "no night will learn this conversation; it stays in the log (ctrl+l again to undo)"
        if learned:
            line += (f"; {count(len(learned), 'message')} of it were learned already: "
                     "ctrl+f forgets them")
        return line

    def conversations(self) -> list[dict]:
        return self.store.conversations()

    def messages(self) -> list[dict]:
        return self.store.messages(self.conversation_id) if self.conversation_id else []

    # --- turns ---------------------------------------------------------------
    def send(self, text: str) -> int:
        """Store the user's turn (before generation) and return its id."""
        if not text or not text.strip():
            raise EmptyMessage("empty message: type something first")
        if self.conversation_id is None:
            self.conversation_id, message_id = self.store.new_conversation_with("user", text)
            return message_id
        return self.store.add_message(self.conversation_id, "user", text)

    def reply(self, stop: threading.Event | None = None, on_token: Callable[[str], None] | None = None) -> Reply:
        """Stream the assistant's reply to the stored conversation, persisting as it goes."""
        conversation_id = self.conversation_id
        prompt = build_prompt(self.store, self.config, conversation_id, self.runtime.count_tokens)
        message_id = self.store.start_reply(conversation_id)
        pieces: list[str] = []
        last_flush = time.monotonic()
        try:
            for piece in self.runtime.stream(prompt, max_tokens=self.config.max_reply_tokens, stop=stop,
                                             **self.config.sampling()):
                pieces.append(piece)
                if on_token is not None:
                    on_token(piece)
                if time.monotonic() - last_flush > FLUSH_SECONDS:
                    self.store.update_reply(message_id, "".join(pieces))
                    last_flush = time.monotonic()
                if stop is not None and stop.is_set():
                    break
        except BaseException:
            self.store.finish_reply(message_id, "".join(pieces), interrupted=True)
            raise
        interrupted = stop is not None and stop.is_set()
        cut = not interrupted and getattr(self.runtime, "finish_reason", None) == "length"
        text = "".join(pieces)
        self.store.finish_reply(message_id, text, interrupted=interrupted, cut=cut)
        return Reply(message_id, text, interrupted, cut)

    # --- status ----------------------------------------------------------------
    def status(self) -> dict:
        last = self.store.last_sleep()
        return {
            "model": self.model_name,
            # what the runtime has loaded; the database may already hold a newer night
            "memory": self.stack.label or self.store.memory_version(),
            "day": str(self.store.today()),
            "unconsolidated": self.store.unconsolidated_count(),
            "facts": facts_kept(self.store),
            "last_sleep": f"{last['status']} {last['started_at'][:16].replace('T', ' ')}" if last else "never",
        }
