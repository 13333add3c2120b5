"""The Textual chat UI: `make_app(session)` builds it, `run_chat(session)` runs it.

Layout: `DreamerApp` (keys, CSS) -> `ChatScreen` (conversation list, messages, input, status
bar; every session call) -> widgets that only render and post Messages (`widgets.py`).
"""

from agent.tui.app import DreamerApp, make_app, run_chat
from agent.tui.chat_screen import ChatScreen
from agent.tui.help_screen import HelpScreen

__all__ = ["ChatScreen", "DreamerApp", "HelpScreen", "make_app", "run_chat"]
