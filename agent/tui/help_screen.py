"""`HelpScreen`: the keys of the chat UI, over the chat; Escape, `?` or F1 closes it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP_TEXT = """\
# dreamer — keys

| key | what it does |
| --- | --- |
| `Enter` | send the message (stored before the reply starts) |
| `Esc` | stop the reply being written (the partial reply is kept, marked interrupted; no night learns it) |
| `Ctrl+N` | new conversation |
| `Ctrl+O` | go to the conversation list (`Enter` opens one) |
| `Ctrl+F` | forget this conversation: it is deleted, and every night that learned it leaves the memory (asks first) |
| `Ctrl+L` | don't learn this conversation: it stays in the log, no night learns it (again: learn it after all) |
| `F2` | the memory: what each night learned and what it answers today, tonight's queue (`d`/`c` don't learn a message/its conversation, `f` forget, `r` re-check now) |
| `Ctrl+B` | hide or show the conversation list |
| `Tab` / `Shift+Tab` | move between the list and the message box |
| `F1` / `?` | this help (`?` in the message box once it holds text is just a `?`) |
| `Ctrl+Q` | quit |

The status bar shows the chat model, the memory (the newest night learned, or "none yet") and
how many of its facts it still answers, the day, the messages waiting for the next sleep, and the
last sleep; a narrow terminal gets a shorter form. A reply that ran to `max_reply_tokens` is
marked cut, and no night learns it.

Press `Esc`, `?` or `F1` to close.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("f1", "dismiss", "Close", show=False),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(HELP_TEXT)

