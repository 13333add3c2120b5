"""Widgets of the chat screen. They render what they are given and post Messages upward;
none of them touches the session, so every DB/model call stays in `ChatScreen`."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.await_complete import AwaitComplete
from textual.containers import Vertical
from textual.message import Message
from textual import events
from textual.widgets import Input, Label, Markdown, OptionList, Static
from textual.widgets.option_list import Option, OptionDoesNotExist

INTERRUPTED_MARK = "⏹ interrupted"
GENERATING_MARK = "… replying"
SPEAKERS = {"user": "you", "assistant": "dreamer", "system": "system"}
NEW_CONVERSATION_ID = "new"


class PromptInput(Input):
    """The message box: `?` in an empty box shows the keys (as the help says); anywhere else it is text."""

    async def _on_key(self, event: events.Key) -> None:
        if event.character == "?" and not self.value:
            event.stop()
            event.prevent_default()
            self.app.action_help()
            return
        await super()._on_key(event)


class MessageView(Vertical):
    """One turn: who spoke, the text as Markdown, and a mark when the reply was cut short.

    `text` is the source of truth for what is shown; the Markdown widget may lag behind it
    by one pending render, which `finish` settles.
    """

    def __init__(self, role: str, text: str = "", status: str = "complete", message_id: int | None = None) -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.text = text
        self.status = status
        self.message_id = message_id

    @classmethod
    def from_row(cls, row: dict) -> MessageView:
        return cls(row["role"], row["content"], row["status"], row["id"])

    def compose(self) -> ComposeResult:
        yield Label(SPEAKERS.get(self.role, self.role), classes="speaker")
        yield Markdown(self.text, classes="body")
        yield Label(self._mark(), classes="mark")

    def on_mount(self) -> None:
        self._show_status()

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"

    def append(self, chunk: str) -> AwaitComplete:
        """Add streamed text; awaiting it waits for the render (back-pressure for the worker)."""
        self.text += chunk
        return self.query_one(Markdown).append(chunk)

    async def finish(self, text: str, interrupted: bool) -> None:
        """Show the final stored text and status (the last tokens may not be rendered yet)."""
        markdown = self.query_one(Markdown)
        if text.startswith(self.text) and markdown.source == self.text:
            if text != self.text:
                await self.append(text[len(self.text) :])  # cheap: re-parses only the tail
        elif markdown.source != text:
            self.text = text
            await markdown.update(text)
        self.status = "interrupted" if interrupted else "complete"
        self._show_status()

    def _mark(self) -> str:
        if self.status == "interrupted":
            return INTERRUPTED_MARK
        if self.status == "generating":
            return GENERATING_MARK
        return ""

    def _show_status(self) -> None:
        mark = self.query_one(".mark", Label)
        mark.update(self._mark())
        mark.display = bool(self._mark())
        self.set_class(self.interrupted, "interrupted")
        self.set_class(self.status == "generating", "generating")


class ConversationList(OptionList):
    """Earlier conversations, newest first, under a "new conversation" entry."""

    class Picked(Message):
        """The user chose a conversation (`conversation_id`), or None for a new one."""

        def __init__(self, conversation_id: int | None) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    def __init__(self, **kwargs) -> None:
        # markup off: titles are the user's own words and may contain "[...]".
        super().__init__(markup=False, **kwargs)

    def show(self, conversations: list[dict], current: int | None) -> None:
        options = [Option(Text("+ new conversation (ctrl+n)", style="bold"), id=NEW_CONVERSATION_ID)]
        for row in conversations:
            title = row.get("title") or "(empty)"
            label = Text(title, no_wrap=True, overflow="ellipsis")
            count = row.get("n_messages", 0)
            label.append(f"\n{row['day']} · {count} message{'' if count == 1 else 's'}", style="dim")
            options.append(Option(label, id=str(row["id"])))
        self.set_options(options)
        if current is not None:
            try:
                self.highlighted = self.get_option_index(str(current))
            except OptionDoesNotExist:  # not among the newest shown
                pass

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        option_id = event.option.id
        self.post_message(self.Picked(None if option_id == NEW_CONVERSATION_ID else int(option_id)))


class StatusBar(Static):
    """One line from `ChatSession.status()`: model, memory, day, unconsolidated, last sleep."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.text = ""

    def show(self, status: dict) -> None:
        self.text = (
            f"model: {status.get('model', '?')} │ memory: {status.get('memory', '?')} │ "
            f"day: {status.get('day', '?')} │ not yet consolidated: {status.get('unconsolidated', '?')} │ "
            f"last sleep: {status.get('last_sleep', '?')}"
        )
        self.update(self.text)

    def show_error(self, message: str) -> None:
        self.text = f"status unavailable: {message}"
        self.update(self.text)
