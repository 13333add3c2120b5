"""Shared fixtures: every test gets its own DREAMER_HOME under tmp_path."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from storage import Config, Store


@pytest.fixture(autouse=True)
def dreamer_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DREAMER_HOME", str(home))
    return home


class FakeClock:
    """A settable UTC clock for day-boundary tests."""

    def __init__(self, moment: datetime | None = None) -> None:
        self.moment = moment or datetime(2026, 11, 21, 15, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(dreamer_home, clock):
    db = Store(dreamer_home / "dreamer.db", clock=clock)
    yield db
    db.close()


@pytest.fixture
def config():
    return Config()


@pytest.fixture
def db(tmp_path):
    """A store at tmp_path (its manifest, for the chat, is tmp_path/adapters/manifest.json)."""
    store = Store(tmp_path / "t.db")
    yield store
    store.close()


# --- a night on the tiny model (dreamer/bench/tiny.py): test_sleep, test_recovery ------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from dreamer.bench.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def fake_judge():
    """The imitation reward's judge without MiniLM: every text embeds alike."""
    import torch

    from dreamer.sleep.seeding.rewards import SemanticJudge

    return SemanticJudge(embed_fn=lambda texts: torch.ones(len(texts), 4))


@pytest.fixture
def day_store(store):
    conversation = store.new_conversation()
    store.add_message(conversation, "user", "My sister Ana lives in Lisbon and works as a pilot.")
    store.add_message(conversation, "assistant", "Lisbon is lovely.")
    store.add_message(conversation, "user", "My cat is called Miso.")
    return store
