"""`MemoryScreen` (F2): what the memory knows about the user, and what it will learn tonight.

Night by night, each fact the night consolidated (its held-out probes): the user's answer, what
the active memory answers today closed book, how sure it is, and kept / fading / lost
(storage.ledger.memory_facts). The figures are cached checks, written by each night's gate or by
`dreamer memory --check`, so the screen opens at once and never runs a model: "re-check now" (r)
runs that command in another process (the chat never imports torch) and shows its progress.

Below, tonight's queue: the messages the next sleep will learn. `d` marks the highlighted one
"don't learn this" (or learnable again), `c` its whole conversation; `f` forgets its conversation
(deleted, and every night that learned it leaves the memory; asks first, as Ctrl+F does).
"""

from __future__ import annotations

import subprocess
import sys

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from storage import StoreError, ledger
from storage.words import count

STATE_STYLES = {"kept": "green", "fading": "yellow", "lost": "red", "not learned": "dim", "not checked": "dim"}


def facts_text(nights: list[dict]) -> Text:
    text = Text()
    if not nights:
        text.append("No night in the memory yet: the first sleep that passes its gate learns the first facts.\n", "dim")
    for night in nights:
        states = [f["state"] for f in night["facts"]]
        tally = ", ".join(f"{states.count(s)} {s}" for s in STATE_STYLES if s in states)
        text.append(f"night {night['night']} · {night['day']}", "bold")
        text.append(f"  {tally or 'no facts recorded'}\n", "dim")
        for fact in night["facts"]:
            text.append(f"  {fact['state']:<11} ", STATE_STYLES[fact["state"]])
            text.append(f"{fact['question']} → {fact['answer']}")
            now = fact["now"]
            if now is not None:
                said = "" if now["correct"] else f"says “{now['chosen']}”, "
                text.append(f"  ({said}{now['p_answer']:.0%} sure)", "dim")
            text.append("\n")
        for dream in night.get("dreams", []):
            text.append("  dreamt      ", "magenta")
            text.append(f"{dream['request']} → {dream['reply'][:80]}\n", "dim")
    return text


class MemoryScreen(ModalScreen[int | None]):
    """Dismissed with a conversation id to forget (the chat screen asks and forgets), or None."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("r", "recheck", "Re-check now"),
        Binding("d", "toggle_message", "Don't learn message"),
        Binding("c", "toggle_conversation", "Don't learn chat"),
        Binding("f", "forget", "Forget chat"),
    ]

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self.queue: list[dict] = []
        self._process: subprocess.Popen | None = None  # a running `dreamer memory --check`

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="memory"):
            yield Label("What I know about you", classes="title")
            yield Static(id="facts")
            yield ProgressBar(id="recheck", show_eta=False)
            yield Label("", id="queue-title", classes="title")
            yield Static("d / c: don't learn the highlighted message / its conversation (again: learn it) · "
                         "f: forget its conversation · r: re-check the facts now", classes="hint", markup=False)
            yield OptionList(id="queue", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#recheck", ProgressBar).display = False
        self.show()

    def show(self) -> None:
        try:
            nights = ledger.memory_facts(self.session.store)
            self.queue = self.session.store.queue()
        except StoreError as err:
            self.notify(f"database error: {err}", severity="error", markup=False)
            return
        self.query_one("#facts", Static).update(facts_text(nights))
        waiting = [m for m in self.queue if not m["excluded"]]
        self.query_one("#queue-title", Label).update(
            f"What I will learn tonight: {count(len(waiting), 'message')}"
            + (f" ({len(self.queue) - len(waiting)} marked don't learn)" if len(waiting) < len(self.queue) else ""))
        queue = self.query_one("#queue", OptionList)
        highlighted = queue.highlighted
        queue.set_options([Option(self._line(m), id=str(m["id"])) for m in self.queue])
        if self.queue:
            queue.highlighted = min(highlighted or 0, len(self.queue) - 1)

    @staticmethod
    def _line(message: dict) -> Text:
        who = "you" if message["role"] == "user" else "dreamer"
        line = Text(f"{'⊘ ' if message['excluded'] else ''}#{message['conversation_id']} {who}: ",
                    "dim" if message["excluded"] else "")
        line.append(" ".join(message["content"].split())[:90], "dim strike" if message["excluded"] else "")
        return line

    def _highlighted(self) -> dict | None:
        index = self.query_one("#queue", OptionList).highlighted
        return self.queue[index] if index is not None and index < len(self.queue) else None

    def action_toggle_message(self) -> None:
        message = self._highlighted()
        if message is None:
            return
        if message["conversation_excluded"]:
            self.notify("its whole conversation is marked don't learn: c learns the conversation again", markup=False)
            return
        self._exclude(message_ids=[message["id"]], undo=bool(message["message_excluded"]))

    def action_toggle_conversation(self) -> None:
        message = self._highlighted()
        if message is not None:
            store = self.session.store
            self._exclude(conversation_id=message["conversation_id"],
                          undo=store.excluded(message["conversation_id"]))

    def _exclude(self, **what) -> None:
        try:
            self.session.store.exclude(**what)
        except StoreError as err:
            self.notify(f"database error: {err}", severity="error", markup=False)
        self.show()

    def action_forget(self) -> None:
        message = self._highlighted()
        if message is not None:
            self.dismiss(message["conversation_id"])

    def action_close(self) -> None:
        self.dismiss(None)

    # --- re-check now: `dreamer memory --check` in another process ---------------------
    def action_recheck(self) -> None:
        bar = self.query_one("#recheck", ProgressBar)
        if bar.display:
            return  # one at a time
        bar.display = True
        bar.update(total=None, progress=0)
        self.recheck()

    @work(thread=True, exclusive=True, group="recheck")
    def recheck(self) -> None:
        try:
            self._process = subprocess.Popen([sys.executable, "-m", "dreamer", "memory", "--check"],
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, text=True)
        except OSError as err:
            self.app.call_from_thread(self.rechecked, 1, f"could not start `dreamer memory --check`: {err}")
            return
        last = ""
        for line in self._process.stdout:
            last = line.strip() or last
            if last.startswith("checked ") and "/" in last.split()[1]:
                done, total = map(int, last.split()[1].split("/"))
                self.app.call_from_thread(self._progress, done, total)
        self.app.call_from_thread(self.rechecked, self._process.wait(), last)

    def _progress(self, done: int, total: int) -> None:
        if self.is_attached:
            self.query_one("#recheck", ProgressBar).update(total=total, progress=done)

    def rechecked(self, code: int, last: str) -> None:
        self._process = None
        if not self.is_attached:
            return
        self.query_one("#recheck", ProgressBar).display = False
        self.notify(last if code == 0 else f"re-check failed: {last}", severity="information" if code == 0 else "error",
                    markup=False, timeout=10)
        self.show()

    def on_unmount(self) -> None:
        # Closing the screen (or quitting) ends a re-check: it holds the sleep lock, which a night needs.
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
