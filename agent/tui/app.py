"""`DreamerApp`: a thin shell (keys, CSS, help) around `ChatScreen`, which owns the chat flow.

`make_app(session)` is shared by `dreamer chat` and the tests, so both run the same app;
`run_chat(session)` is what the CLI calls.
"""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding

from agent.session import ChatSession
from agent.tui.chat_screen import ChatScreen
from agent.tui.help_screen import HelpScreen


class DreamerApp(App[None]):
    TITLE = "dreamer"
    CSS_PATH = "dreamer.tcss"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        # `?` is not a priority binding: in the message box it must type a question mark.
        Binding("question_mark", "help", "Help", show=False),
        Binding("f1", "help", "Help"),
    ]

    def __init__(self, session: ChatSession) -> None:
        super().__init__()
        self.session = session

    def on_mount(self) -> None:
        self.push_screen(ChatScreen(self.session))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def make_app(session: ChatSession) -> DreamerApp:
    return DreamerApp(session)


def run_chat(session: ChatSession) -> None:
    """Run the chat UI in this terminal until the user quits."""
    make_app(session).run()
