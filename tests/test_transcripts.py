import json

import pytest

from storage.transcripts import TranscriptError, export_file, import_file, read_transcripts

GOOD = [
    {"day": "2026-11-20", "title": "Lisbon", "messages": [
        {"role": "user", "content": "My sister lives in Lisbon."},
        {"role": "assistant", "content": "Nice! Lisbon is lovely."},
    ]},
    {"day": "2026-11-21", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Olá ☀"}]},
]


def write_lines(path, lines):
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def test_round_trip(store, tmp_path):
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(r, ensure_ascii=False) for r in GOOD])
    ids = import_file(store, source)
    assert len(ids) == 2
    out = tmp_path / "out.jsonl"
    assert export_file(store, out) == 2
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert exported[0] == GOOD[0]
    assert exported[1] == {**GOOD[1], "title": ""}
    # Imported messages keep the file's day, whatever today is.
    assert {m["day"] for m in store.messages(ids[0])} == {"2026-11-20"}
    only = tmp_path / "day.jsonl"
    assert export_file(store, only, day="2026-11-21") == 1


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        (b"{not json", "invalid JSON"),
        (b'{"day": "2026-13-01", "messages": [{"role": "user", "content": "x"}]}', "day must be YYYY-MM-DD"),
        (b'{"day": "2026-11-01", "messages": []}', "'messages' must be a non-empty list"),
        (b'{"day": "2026-11-01", "messages": [{"role": "bot", "content": "x"}]}', "messages[0].role"),
        (b'{"day": "2026-11-01", "messages": [{"role": "user", "content": 3}]}', "messages[0].content"),
        (b'{"day": "2026-11-01", "extra": 1, "messages": [{"role": "user", "content": "x"}]}', "unknown key 'extra'"),
        (b'["a list"]', "expected a JSON object"),
        (b'{"day": "2026-11-01", "messages": [{"role": "user", "content": "caf\xe9"}]}', "invalid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
    ],
)
def test_bad_line_is_named_and_nothing_is_imported(store, tmp_path, bad_line, reason):
    good = json.dumps(GOOD[0]).encode()
    path = write_lines(tmp_path / "bad.jsonl", [good, b"", bad_line, good])
    with pytest.raises(TranscriptError) as caught:
        import_file(store, path)
    assert caught.value.line == 3
    assert reason in str(caught.value)
    assert "line 3" in str(caught.value)
    assert store.db["conversations"].count == 0
    assert store.db["messages"].count == 0


def test_missing_file_is_named(tmp_path):
    with pytest.raises(TranscriptError, match="cannot read"):
        read_transcripts(tmp_path / "nope.jsonl")


def test_export_and_import_keep_what_no_night_may_learn(store, tmp_path):
    from storage.ledger import unconsolidated

    private = store.new_conversation()
    store.add_message(private, "user", "My PIN is 4711.")
    store.exclude(conversation_id=private)
    chat = store.new_conversation()
    secret = store.add_message(chat, "user", "My diary's code word is Heron.")
    store.add_message(chat, "user", "My cat is Miso.")
    store.finish_reply(store.start_reply(chat), "the queen the queen", cut=True)
    store.exclude(message_ids=[secret])
    out = tmp_path / "out.jsonl"
    export_file(store, out)
    lines = out.read_text()
    assert '"learn": false' in lines and '"status": "cut"' in lines

    from storage import Store

    fresh = Store(tmp_path / "fresh.db")
    import_file(fresh, out)
    waiting = [m["content"] for c in unconsolidated(fresh) for m in c["messages"]]
    assert waiting == ["My cat is Miso."]  # not the PIN, not the code word, not the cut reply
    assert fresh.db["messages"].count == 4
