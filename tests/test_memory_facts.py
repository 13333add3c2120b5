"""What the memory knows: the gate's per-fact checks are kept, `dreamer memory --check` re-measures them
(the same figures on the same stack), `--facts` prints them, and "don't learn this" keeps turns out."""

from __future__ import annotations

import pytest

from dreamer.sleep import gate as gate_stage
from storage import Config, ledger
from tests.test_sleep import GOOD_FIGURES, night


@pytest.fixture
def promoted(day_store, tiny_dir, dreamer_home, fake_judge, monkeypatch):
    """One promoted night on the tiny model whose gate really measured the facts (the pass/fail
    figures forced good: the tiny model learns nothing worth gating)."""
    measure = gate_stage.measure

    def measured(*args, **kwargs):
        return {**measure(*args, **kwargs), **{k: v for k, v in GOOD_FIGURES.items() if not k.startswith("replies")}}

    monkeypatch.setattr(gate_stage, "measure", measured)
    outcome = night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert outcome.status == "promoted", outcome.message
    return day_store


def test_a_promoted_nights_gate_checks_are_the_memory_screens_figures(promoted, tiny_dir, dreamer_home):
    from dreamer.eval.memory_check import check_active

    [first_night] = ledger.memory_facts(promoted)
    facts = first_night["facts"]
    assert facts and all(f["now"] is not None and f["now"]["version"] == 1 for f in facts)
    assert all(f["state"] in ("kept", "not learned") for f in facts)  # right after its night: nothing faded yet
    gate_figures = {f["id"]: f["now"]["p_answer"] for f in facts}

    saved = check_active(promoted, Config(train_model=str(tiny_dir)), dreamer_home)
    assert saved == len(facts)
    again = {f["id"]: f for f in ledger.memory_facts(promoted)[0]["facts"]}
    # the same stack, loaded from its saved files, asked the same way: the same answers
    for probe_id, p_answer in gate_figures.items():
        assert again[probe_id]["now"]["p_answer"] == pytest.approx(p_answer, abs=1e-3)
        assert again[probe_id]["first"]["p_answer"] == p_answer  # the first check stays its night's


def test_fact_states():
    first = {"correct": 1, "p_answer": 0.9, "id": 1}
    assert ledger.fact_state(first, None) == "not checked"
    assert ledger.fact_state(first, {"correct": 1, "p_answer": 0.8, "id": 2}) == "kept"
    assert ledger.fact_state(first, {"correct": 1, "p_answer": 0.6, "id": 2}) == "fading"
    assert ledger.fact_state(first, {"correct": 0, "p_answer": 0.2, "id": 2}) == "lost"
    assert ledger.fact_state({"correct": 0, "p_answer": 0.2, "id": 1}, {"correct": 0, "p_answer": 0.2, "id": 1}) \
        == "not learned"


def test_memory_facts_cli_lists_nights_and_tonights_queue(promoted):
    from click.testing import CliRunner

    from dreamer.cli.main import cli

    conversation = promoted.new_conversation()
    promoted.add_message(conversation, "user", "My brother Tom moved to Oslo.")
    result = CliRunner().invoke(cli, ["memory", "--facts"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("night 1  2026-11-21  (") and "% sure of the answer" in result.output
    assert "tonight's queue: 1 message in 1 conversation" in result.output

    result = CliRunner().invoke(cli, ["dont-learn", str(conversation)])
    assert result.exit_code == 0 and "no night will learn it" in result.output
    assert "tonight's queue: 0 messages in 0 conversations" in CliRunner().invoke(cli, ["memory", "--facts"]).output
    result = CliRunner().invoke(cli, ["dont-learn", "1"])  # the conversation night 1 learned
    assert "3 of these messages were learned already" in result.output and "dreamer forget" in result.output
    result = CliRunner().invoke(cli, ["dont-learn", "99"])
    assert result.exit_code == 1 and "no conversation with id 99" in result.output
