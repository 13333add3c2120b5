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

from storage.words import count

INTERRUPTED_MARK = "⏹ interrupted (not learned at night)"
CUT_MARK = "✂ cut at the reply limit, max_reply_tokens (not learned at night)"
EXCLUDED_MARK = "⊘ don't learn this: no night learns it"
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

    def __init__(self, role: str, text: str = "", status: str = "complete", message_id: int | None = None,
                 excluded: bool = False) -> None:
        super().__init__(classes=f"message {role}")
        self.role = role
        self.text = text
        self.status = status
        self.message_id = message_id
        self.excluded = excluded

    @classmethod
    def from_row(cls, row: dict, conversation_excluded: bool = False) -> MessageView:
        return cls(row["role"], row["content"], row["status"], row["id"], conversation_excluded or bool(row.get("excluded_at")))

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

    async def finish(self, text: str, interrupted: bool, cut: bool = False, message_id: int | None = None) -> None:
        """Show the final stored text and status (the last tokens may not be rendered yet)."""
        markdown = self.query_one(Markdown)
        if text.startswith(self.text) and markdown.source == self.text:
            if text != self.text:
                await self.append(text[len(self.text) :])  # cheap: re-parses only the tail
        elif markdown.source != text:
            self.text = text
            await markdown.update(text)
        self.status = "interrupted" if interrupted else "cut" if cut else "complete"
        self.message_id = message_id if message_id is not None else self.message_id
        self._show_status()

    def _mark(self) -> str:
        marks = {"interrupted": INTERRUPTED_MARK, "generating": GENERATING_MARK, "cut": CUT_MARK}
        return " · ".join(m for m in (marks.get(self.status, ""), EXCLUDED_MARK if self.excluded else "") if m)

    def _show_status(self) -> None:
        mark = self.query_one(".mark", Label)
        mark.update(self._mark())
        mark.display = bool(self._mark())
        self.set_class(self.interrupted or self.status == "cut", "interrupted")
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
            label.append(f"\n{row['day']} · {count(row.get('n_messages', 0), 'message')}"
                         + (" · not learned" if row.get("excluded_at") else ""), style="dim")
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
    """One line from `ChatSession.status()`, in the longest of three forms that fits the width: a
    narrow terminal keeps the memory and the waiting count, never a line cut mid-word."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.forms: list[str] = [""]
        self.text = ""

    def show(self, status: dict) -> None:
        memory = status.get("memory", "?")
        kept, checked = status.get("facts", (0, 0))
        facts = f", {kept} of {checked} facts kept" if checked else ""
        waiting = status.get("unconsolidated", "?")
        last = status.get("last_sleep", "?")
        self.forms = [
            f"model: {status.get('model', '?')} │ memory: {memory}{facts} │ day: {status.get('day', '?')} │ "
            f"waiting for sleep: {count(waiting, 'message') if isinstance(waiting, int) else waiting} │ "
            f"last sleep: {last}",
            f"{memory}{f' ({kept}/{checked} kept)' if checked else ''} │ {waiting} waiting │ last sleep: {last}",
            f"{memory} │ {waiting} waiting",
        ]
        self.text = self.forms[0]
        self._fit()

    def show_error(self, message: str) -> None:
        self.forms = [f"status unavailable: {message}"]
        self.text = self.forms[0]
        self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        room = self.content_size.width or 10**6  # before the first layout: the long form
        self.update(next((form for form in self.forms if len(form) <= room), self.forms[-1]))
