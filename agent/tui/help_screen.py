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
| `Esc` | stop the reply being written (the partial reply is kept, marked interrupted) |
| `Ctrl+N` | new conversation |
| `Ctrl+O` | go to the conversation list (`Enter` opens one) |
| `Ctrl+F` | forget this conversation: it is deleted, and every night that learned it leaves the memory (asks first) |
| `Tab` / `Shift+Tab` | move between the list and the message box |
| `F1` / `?` | this help (`?` in the message box once it holds text is just a `?`) |
| `Ctrl+Q` | quit |

The status bar shows the chat model, the memory (the newest night learned, or "none yet"),
the day, how many messages are not yet consolidated, and the last sleep.

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

