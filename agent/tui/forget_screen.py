"""`ForgetScreen`: what forgetting the open conversation takes away, and a yes or no.

The plan (storage.forget) is shown as `dreamer forget` shows it; `y` confirms, `n` or Escape
keeps everything. The screen returns True or False; ChatScreen does the forgetting.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class ForgetScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Forget"),
        Binding("n", "answer(False)", "Keep"),
        Binding("escape", "answer(False)", "Keep", show=False),
    ]

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="forget"):
            yield Static("\n".join(["Forget this conversation?", "", *self.lines]), markup=False)
            yield Static("y forgets it, n or Esc keeps everything.", classes="hint", markup=False)

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
