"""The gate's earlier facts by the reply: asked as the chat asks, before and after tonight's expert,
counted and shown in the morning report (reported, not a rule)."""

from __future__ import annotations

from dreamer.lm.weights import NEW, build_stack, load_base, plan_device
from dreamer.sleep import gate as gate_stage
from dreamer.sleep.config import DistillConfig, GateConfig, LoadConfig
from dreamer.sleep.report import morning_report

SYSTEM = "You are dreamer. Today is Monday, 3 March 2025."


def rows(n: int) -> list[dict]:
    return [{"id": i, "day": "2025-03-0%d" % (1 + i % 2), "question": f"What is fact {i}?", "answer": f"value{i}",
             "distractors": ["a", "b", "c"], "kind": "recall"} for i in range(n)]


def test_earlier_facts_are_asked_as_the_chat_asks_and_counted_before_and_after(tiny_dir, monkeypatch):
    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu")))
    model = build_stack(base, [], DistillConfig(rank=4)).eval()
    old = rows(30) + [{**rows(1)[0], "id": 99, "kind": "abstain", "answer": "I don't know"}]
    calls = []

    def replies(model, tokenizer, chats, names, **kwargs):
        calls.append((chats, list(names)))
        # before: every third fact named; after (tonight's expert on): every other one
        step = 2 if NEW in names else 3
        return [[f"It is value{chat[-1]['content'].split()[-1][:-1]}." if i % step == 0 else "Dear friend"]
                for i, chat in enumerate(chats)]

    monkeypatch.setattr(gate_stage, "sample_many", replies)
    figures = gate_stage.measure(model, tokenizer, [], rows(2), old, max_len=64, system=SYSTEM)
    asked = calls[-2][0]
    assert figures["old_replies_asked"] == gate_stage.OLD_REPLIES == len(asked)
    assert [c[0] for c in asked] == [{"role": "system", "content": SYSTEM}] * len(asked)  # the chat's prompt
    assert asked[0][1]["content"] == "What is fact 0?" and asked[-1][1]["content"] == "What is fact 27?"  # spread
    assert calls[-2][1] == [] and calls[-1][1] == [NEW]
    assert (figures["old_replies_before"], figures["old_replies_after"]) == (4, 6)
    assert gate_stage.decide(figures, GateConfig()).passed == gate_stage.decide(
        {k: v for k, v in figures.items() if not k.startswith("old_replies")}, GateConfig()).passed  # not a rule

    none = gate_stage.measure(model, tokenizer, [], rows(2), [], max_len=64, system=SYSTEM)
    assert "old_replies_asked" not in none  # the first night has no earlier facts


def test_the_morning_report_shows_them():
    gate = {"today_probes": 2, "today_before": 0.0, "today_after": 1.0, "old_probes": 30, "old_before": 1.0,
            "old_after": 1.0, "drift": 0.01, "old_replies_asked": 12, "old_replies_before": 4, "old_replies_after": 6}
    text = morning_report(night=2, days=["2025-03-03"], status="promoted", reasons=[], preset="cpu-tiny",
                          plan="cpu", seconds=60, peak_memory_mb=100, counts={}, gate=gate, probes=[], training={})
    assert "| earlier facts named by the reply, as the chat asks (n=12; reported, not a rule) | 4 | 6 |" in text


def test_the_replies_decode_on_a_real_model_with_the_gate_s_own_arguments(tiny_dir):
    """A smoke test: the monkeypatched test above does not call sample_many itself."""
    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu")))
    model = build_stack(base, [], DistillConfig(rank=4)).eval()
    figures = gate_stage.measure(model, tokenizer, [], rows(2), rows(3), max_len=64, system=SYSTEM)
    assert figures["old_replies_asked"] == 3
    assert 0 <= figures["old_replies_before"] <= 3 and 0 <= figures["old_replies_after"] <= 3
