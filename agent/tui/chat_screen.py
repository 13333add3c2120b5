"""`ChatScreen`: the one flow of the UI — pick a conversation, send a turn, stream the reply.

All session calls happen here. The user turn is stored by `session.send` on the UI thread
*before* generation (a failed send leaves the text in the Input); the reply streams from a
thread worker so the UI keeps handling keys (Escape sets the stop event the runtime polls).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
import time

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Footer, Input

from agent.models import ModelError
from agent.session import ChatSession, EmptyMessage, Reply
from agent.stack_watch import Swap
from agent.tui.forget_screen import ForgetScreen
from agent.tui.memory_screen import MemoryScreen
from agent.tui.report_screen import ReportScreen, first_run_card
from agent.tui.widgets import ConversationList, MessageView, PromptInput, StatusBar
from storage import StoreError
from storage.manifest import ManifestError

# Failures we expect and explain; anything else is still shown, never allowed to kill the app.
EXPECTED_FAILURES = (ModelError, StoreError, ManifestError, sqlite3.Error)
# Streamed text reaches the screen at most this often: Markdown re-parses on each append.
RENDER_INTERVAL = 0.05
# How often the chat looks for a new memory (a promoted night or a rollback); a stat call.
MEMORY_POLL_SECONDS = 2.0


def describe(err: BaseException) -> str:
    if isinstance(err, ModelError):
        return f"model error: {err}"
    if isinstance(err, ManifestError):
        return f"memory not updated: {err}"
    if isinstance(err, (StoreError, sqlite3.Error)):
        return f"database error: {err}"
    return f"{type(err).__name__}: {err}"


class ChatScreen(Screen):
    BINDINGS = [
        Binding("ctrl+n", "new_conversation", "New chat"),
        Binding("escape", "stop", "Stop reply"),
        Binding("ctrl+o", "focus_conversations", "Conversations"),
        Binding("ctrl+f", "forget_conversation", "Forget chat"),
        Binding("ctrl+l", "toggle_learning", "Don't learn"),
        Binding("f2", "memory", "Memory"),
        Binding("ctrl+b", "toggle_sidebar", "Sidebar", show=False),
    ]

    # bindings=True: the footer greys out "Stop reply" unless a reply is being written.
    generating: var[bool] = var(False, bindings=True)

    def __init__(self, session: ChatSession) -> None:
        super().__init__()
        self.session = session
        self._stop: threading.Event | None = None
        self.swapping = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield ConversationList(id="conversations")
            with Vertical(id="chat"):
                yield VerticalScroll(id="messages")
                yield PromptInput(placeholder="Message dreamer (Enter sends, Esc stops a reply, ? or F1 help)",
                                  id="prompt")
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#messages", VerticalScroll).anchor()
        if self.session.conversation_id is None:
            try:
                self.session.resume_latest()
            except EXPECTED_FAILURES as err:
                self.error(err)
        await self.show_conversation()
        self.query_one("#prompt", Input).focus()
        self.check_memory()  # the first check loads the stack the chat starts with
        self.set_interval(MEMORY_POLL_SECONDS, self.check_memory)
        self.show_morning_report()

    def on_unmount(self) -> None:
        # Quitting mid-reply: let the worker end now; the session stores the partial reply.
        if self._stop is not None:
            self._stop.set()

    # --- helpers -------------------------------------------------------------
    def error(self, err: BaseException) -> None:
        # markup off: errors quote paths and user text, which may contain "[...]".
        self.notify(describe(err), title="dreamer", severity="error", timeout=10, markup=False)

    def refuse_while_generating(self) -> bool:
        if self.generating:
            self.notify("dreamer is still replying: wait, or press Esc to stop it", severity="warning")
        return self.generating

    def refresh_sidebar(self) -> None:
        """Conversation list and status bar, both re-read from the database."""
        try:
            conversations = self.session.conversations()
        except EXPECTED_FAILURES as err:
            self.error(err)
        else:
            self.query_one(ConversationList).show(conversations, self.session.conversation_id)
        status_bar = self.query_one(StatusBar)
        try:
            status_bar.show(self.session.status())
        except EXPECTED_FAILURES as err:
            status_bar.show_error(describe(err))

    async def show_conversation(self) -> None:
        """Replace the message view with the current conversation's stored turns."""
        try:
            rows = self.session.messages()
        except EXPECTED_FAILURES as err:
            self.error(err)
            rows = []
        log = self.query_one("#messages", VerticalScroll)
        await log.remove_children()
        try:
            kept_out = self.session.conversation_id is not None and self.session.store.excluded(self.session.conversation_id)
        except EXPECTED_FAILURES:
            kept_out = False
        await log.mount_all([MessageView.from_row(row, kept_out) for row in rows if row["role"] != "system"])
        log.scroll_end(animate=False)
        self.refresh_sidebar()

    # --- actions ---------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return True if self.generating else None  # None: shown disabled
        return True

    def action_stop(self) -> None:
        if self.generating and self._stop is not None:
            self._stop.set()

    def action_toggle_sidebar(self) -> None:
        """Hide the conversation list (a narrow terminal gives the messages the width), or show it."""
        listing = self.query_one(ConversationList)
        listing.display = not listing.display
        if not listing.display:
            self.action_focus_input()

    def action_focus_conversations(self) -> None:
        self.query_one(ConversationList).display = True
        self.query_one(ConversationList).focus()

    def action_focus_input(self) -> None:
        self.query_one("#prompt", Input).focus()

    async def action_new_conversation(self) -> None:
        if self.refuse_while_generating():
            return
        try:
            if self.session.conversation_id is None:
                self.notify("this conversation is still empty: type your first message")
            else:
                self.session.new_conversation()
        except EXPECTED_FAILURES as err:
            self.error(err)
            return
        await self.show_conversation()
        self.action_focus_input()

    async def action_toggle_learning(self) -> None:
        """"Don't learn this" on the open conversation (again: learn it after all)."""
        if self.refuse_while_generating():
            return
        try:
            line = self.session.toggle_learning()
        except EXPECTED_FAILURES as err:
            self.error(err)
            return
        self.notify(line, title="dreamer", timeout=8, markup=False)
        await self.show_conversation()  # the messages' marks, and the sidebar

    def action_memory(self) -> None:
        """The Memory screen; it may hand back a conversation to forget."""
        async def closed(conversation_id: int | None) -> None:
            if not self.generating:  # "don't learn" marks may have changed; a streaming reply is left alone
                await self.show_conversation()
            if conversation_id is not None:
                self.forget_conversation(conversation_id)

        self.app.push_screen(MemoryScreen(self.session), closed)

    def action_forget_conversation(self) -> None:
        self.forget_conversation()

    def forget_conversation(self, conversation_id: int | None = None) -> None:
        """Ask (ForgetScreen), then forget a conversation (default: the open one) and the nights that learned it."""
        if self.refuse_while_generating():
            return
        try:
            plan = self.session.plan_forget(conversation_id)
        except EXPECTED_FAILURES as err:
            self.error(err)
            return

        async def answered(yes: bool | None) -> None:
            if not yes:
                return
            try:
                line = self.session.forget(plan)
            except EXPECTED_FAILURES as err:
                self.error(err)
                return
            try:
                if self.session.forgot_open_conversation:
                    self.session.resume_latest()
            except EXPECTED_FAILURES as err:
                self.error(err)
            await self.show_conversation()
            self.notify(line, title="dreamer", timeout=10, markup=False)
            self.check_memory()

        from storage.forget import describe as describe_plan

        self.app.push_screen(ForgetScreen(describe_plan(plan)), answered)

    async def on_conversation_list_picked(self, message: ConversationList.Picked) -> None:
        if message.conversation_id is None:
            await self.action_new_conversation()
            return
        if self.refuse_while_generating():
            return
        if message.conversation_id != self.session.conversation_id:
            try:
                self.session.switch(message.conversation_id)
            except EXPECTED_FAILURES as err:
                self.error(err)
                return
            await self.show_conversation()
        self.action_focus_input()

    # --- memory: hot swap of the adapter stack, morning report -------------------
    def check_memory(self) -> None:
        """Swap in a new stack if the manifest changed; never while a reply is being written."""
        if self.generating or self.swapping:
            return  # reply_done checks again as soon as the reply ends
        try:
            manifest = self.session.stack.pending()
        except EXPECTED_FAILURES as err:
            self.error(err)
            return
        if manifest is not None:
            self.swapping = True
            self.swap_stack(manifest)

    @work(thread=True, exclusive=True, group="memory")
    def swap_stack(self, manifest: dict) -> None:
        """Loading adapters takes a moment: off the UI thread, under the runtime's own lock."""
        try:
            swap = self.session.stack.apply(manifest)
        except Exception as err:  # noqa: BLE001 - the runtime kept the previous stack
            self.call_ui(self.swap_failed, manifest, err)
        else:
            self.call_ui(self.swapped, swap)

    def swapped(self, swap: Swap) -> None:
        self.swapping = False
        if swap.message:
            self.notify(swap.message, title="dreamer", timeout=8, markup=False)
        self.refresh_sidebar()

    def swap_failed(self, manifest: dict, err: BaseException) -> None:
        self.swapping = False
        still = self.session.stack.label or "the base alone"
        self.notify(f"memory version {manifest['version']} could not be loaded: {describe(err)}; still using {still}",
                    title="dreamer", severity="error", timeout=15, markup=False)

    def show_morning_report(self) -> None:
        """The first-run card on a new home's first launch, else last night's report if it was never shown."""
        store = self.session.store
        try:
            first_run = not store.conversations(limit=1) and store.state("first_run_seen") is None
            run = None if first_run else store.unseen_report()
        except EXPECTED_FAILURES as err:
            self.error(err)
            return
        if first_run:
            card = first_run_card(self.session.model_name, self.session.embedded_model, self.session.config.sleep_time)
            self.app.push_screen(ReportScreen(card, hint="Esc or Enter closes; F1 shows the keys again."),
                                 lambda _: store.set_state("first_run_seen", store.now().isoformat()))
        elif run is not None:
            self.app.push_screen(ReportScreen(run["report"]), lambda _: self.session.store.mark_report_seen(run["id"]))

    # --- a turn ----------------------------------------------------------------
    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.refuse_while_generating():
            return  # the typed text stays in the Input for later
        text = event.value
        try:
            self.session.send(text)
        except EmptyMessage as err:
            self.notify(str(err), severity="warning")
            return
        except EXPECTED_FAILURES as err:
            self.error(err)  # not stored: keep the text so nothing typed is lost
            return
        event.input.clear()
        self.generating = True
        self._stop = threading.Event()
        log = self.query_one("#messages", VerticalScroll)
        bubble = MessageView("assistant", status="generating")
        await log.mount_all([MessageView("user", text), bubble])
        log.scroll_end(animate=False)
        self.refresh_sidebar()
        self.generate(bubble, self._stop)

    @work(thread=True, exclusive=True, group="reply")
    def generate(self, bubble: MessageView, stop: threading.Event) -> None:
        """Runs in a thread: stream the reply, handing text to the UI in batches."""
        pending: list[str] = []
        last_render = 0.0

        def on_token(piece: str) -> None:
            nonlocal last_render
            pending.append(piece)
            now = time.monotonic()
            if now - last_render >= RENDER_INTERVAL:
                chunk = "".join(pending)
                pending.clear()
                last_render = now
                # Blocks until rendered, so a fast model cannot flood the UI with appends.
                self.call_ui(bubble.append, chunk)

        try:
            reply = self.session.reply(stop, on_token)
        except Exception as err:  # noqa: BLE001 - shown to the user; the session kept the partial text
            self.call_ui(self.reply_failed, bubble, "".join(pending), err)
        else:
            self.call_ui(self.reply_done, bubble, reply)

    def call_ui(self, callback, *args) -> None:
        """`call_from_thread`, except that a closing app just stops the generation."""
        try:
            self.app.call_from_thread(callback, *args)
        except (RuntimeError, asyncio.CancelledError, concurrent.futures.CancelledError):
            if self.app.is_running and self.is_attached:
                raise
            if self._stop is not None:
                self._stop.set()

    async def reply_done(self, bubble: MessageView, reply: Reply) -> None:
        try:
            if reply.interrupted and not reply.text:
                await bubble.remove()  # stopped before the first token: the session kept nothing either
            else:
                await bubble.finish(reply.text, interrupted=reply.interrupted, cut=reply.cut,
                                    message_id=reply.message_id)
        finally:
            self.generating = False
            self.refresh_sidebar()
            self.check_memory()  # a night promoted during the reply swaps in now

    async def reply_failed(self, bubble: MessageView, unrendered: str, err: BaseException) -> None:
        try:
            text = bubble.text + unrendered
            if text:
                await bubble.finish(text, interrupted=True)
            else:
                await bubble.remove()  # failed before the first token: nothing was stored
        finally:
            self.generating = False
            self.error(err)
            self.refresh_sidebar()
            self.check_memory()
