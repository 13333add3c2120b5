import threading

import pytest

from agent.memory import build_prompt, recall, truncate
from agent.models import ModelError
from agent.runtime import FakeRuntime
from agent.session import ChatSession, EmptyMessage
from storage import Config


def make_session(store, config=None, runtime=None):
    return ChatSession(store, runtime or FakeRuntime(), config or Config())


def test_user_turn_is_stored_before_generation(store):
    runtime = FakeRuntime(["Hello there"])
    session = make_session(store, runtime=runtime)
    session.send("Hi, I'm Ana")
    [user] = session.messages()
    assert (user["role"], user["content"], user["status"]) == ("user", "Hi, I'm Ana", "complete")
    reply = session.reply()
    assert reply.text == "Hello there" and not reply.interrupted
    assert [(m["role"], m["status"]) for m in session.messages()] == [("user", "complete"), ("assistant", "complete")]


def test_empty_message_is_refused(store):
    session = make_session(store)
    with pytest.raises(EmptyMessage):
        session.send("   \n\t")
    assert store.db["messages"].count == 0


def test_stop_keeps_partial_reply_marked_interrupted(store):
    stop = threading.Event()
    runtime = FakeRuntime(["one two three four five six"])
    session = make_session(store, runtime=runtime)
    session.send("count")
    seen = []

    def on_token(piece):
        seen.append(piece)
        if len(seen) == 2:
            stop.set()

    reply = session.reply(stop=stop, on_token=on_token)
    assert reply.interrupted and reply.text == "one two"
    row = store.db["messages"].get(reply.message_id)
    assert (row["status"], row["content"]) == ("interrupted", "one two")


def test_model_failure_keeps_the_user_turn(store):
    runtime = FakeRuntime()
    runtime.fail_with = "model vanished"
    session = make_session(store, runtime=runtime)
    session.send("are you there?")
    with pytest.raises(ModelError):
        session.reply()
    roles = [(m["role"], m["status"]) for m in session.messages()]
    assert roles == [("user", "complete")]  # the empty failed reply is not kept


def test_model_failure_mid_reply_keeps_the_partial_text(store):
    class FailsMidway(FakeRuntime):
        def stream(self, messages, **kw):
            yield "half a"
            raise ModelError("out of memory")

    session = make_session(store, runtime=FailsMidway())
    session.send("tell me a story")
    with pytest.raises(ModelError):
        session.reply()
    last = session.messages()[-1]
    assert (last["role"], last["status"], last["content"]) == ("assistant", "interrupted", "half a")


def test_prompt_recalls_today_from_other_conversations(store):
    session = make_session(store)
    session.send("My sister Ana lives in Lisbon.")
    session.reply()
    session.new_conversation()
    session.send("Where does Ana live?")
    prompt = build_prompt(store, session.config, session.conversation_id, FakeRuntime().count_tokens)
    assert prompt[0]["role"] == "system"
    assert "You are dreamer" in prompt[0]["content"]
    assert "Today is" in prompt[0]["content"]
    assert "- User: My sister Ana lives in Lisbon." in prompt[0]["content"]
    assert prompt[1:] == [{"role": "user", "content": "Where does Ana live?"}]


def test_recall_of_every_day_is_for_the_bench_only(store):
    store.import_conversations([{"day": "2020-01-01", "messages": [{"role": "user", "content": "My cat is Miso."}]}])
    count = FakeRuntime().count_tokens
    assert recall(store, Config(), "what is my cat called?", set(), count) == []  # the chat: today only
    assert recall(store, Config(), "what is my cat called?", set(), count, every_day=True) == ["- User: My cat is Miso."]


def test_prompt_respects_budgets_and_truncates_long_messages(store):
    config = Config(n_ctx=400, max_reply_tokens=100, memory_token_budget=50, max_message_tokens=40)
    session = make_session(store, config=config)
    session.conversation_id = store.new_conversation()
    for i in range(30):
        store.add_message(session.conversation_id, "user", f"turn {i} " * 5)
    session.send("long " * 5000)
    count = FakeRuntime().count_tokens
    prompt = build_prompt(store, config, session.conversation_id, count)
    assert prompt[-1]["content"].endswith("[…]")
    assert count(prompt[-1]["content"]) <= 40
    assert store.messages(session.conversation_id)[-1]["content"] == "long " * 5000  # stored whole
    total = sum(count(m["content"]) + 32 for m in prompt)
    assert total <= config.n_ctx - config.max_reply_tokens
    assert "turn 0 " not in " ".join(m["content"] for m in prompt[1:])  # oldest turns dropped first


@pytest.mark.parametrize("budget", [0, 1, 2, 3, 5])
def test_truncate_ends_for_any_budget(budget):
    """max_message_tokens = 1 used to loop forever: the cut mark alone was over the budget."""
    count = lambda text: len(text.split())  # noqa: E731
    cut = truncate("word " * 200, budget, count)
    assert count(cut) <= budget and "word " * 200 != cut


def test_truncate_leaves_short_text_alone():
    count = FakeRuntime().count_tokens
    assert truncate("a b c", 10, count) == "a b c"
    assert count(truncate("a " * 100, 10, count)) <= 10


def test_status_for_the_status_bar(store):
    session = make_session(store)
    session.send("hello")
    status = session.status()
    assert status == {"model": "fake", "memory": "none yet", "day": str(store.today()), "unconsolidated": 1,
                      "last_sleep": "never", "facts": (0, 0)}


def test_resume_latest_opens_the_newest_conversation(store):
    session = make_session(store)
    assert session.resume_latest() is None  # a fresh database: a new conversation, stored with its first message
    session.send("hi")
    other = make_session(store)
    assert other.resume_latest() == session.conversation_id


def test_reply_cut_at_the_token_limit_is_marked_and_sampling_comes_from_config(store):
    runtime = FakeRuntime(["the queen of Lisbon the princess of Lisbon", "Fine."])
    config = Config(max_reply_tokens=4, temperature=0.3, top_p=0.9, min_p=0.1, repeat_penalty=1.15)
    session = make_session(store, config=config, runtime=runtime)
    session.send("Tell me about Lisbon")
    reply = session.reply()
    assert (reply.text, reply.cut, reply.interrupted) == ("the queen of Lisbon", True, False)
    session.send("Thanks")
    assert not session.reply().cut  # two words, under the limit
    assert [m["status"] for m in session.messages() if m["role"] == "assistant"] == ["cut", "complete"]
    assert runtime.sampling[0] == {"temperature": 0.3, "top_p": 0.9, "min_p": 0.1, "repeat_penalty": 1.15}


def test_a_new_conversation_is_stored_with_its_first_message(store):
    session = make_session(store)
    session.send("first")
    first = session.conversation_id
    session.new_conversation()
    assert session.conversation_id is None and session.messages() == []
    assert [c["id"] for c in store.conversations()] == [first]  # no empty conversation stored
    store.new_conversation()  # an empty one an older version left behind: not listed, not resumed
    assert [c["id"] for c in store.conversations()] == [first]
    assert session.resume_latest() == first
    session.new_conversation()
    session.send("second")
    assert session.conversation_id != first and len(store.conversations()) == 2


def test_a_failed_first_message_leaves_no_empty_conversation(store, monkeypatch):
    from storage import StoreError

    session = make_session(store)

    def full_disk(*args, **kwargs):
        raise StoreError("database or disk is full")

    monkeypatch.setattr(store, "add_message", full_disk)
    with pytest.raises(StoreError):
        session.send("hello")
    assert session.conversation_id is None and store.db["conversations"].count == 0
