"""Cloze memories: which words are blanked, who sees what, the probes, and the cloze recall term."""

import random

import pytest
import torch

from dreamer.sleep.seeding.distill import cloze_loss
from dreamer.lm.generation import chat_ids
from dreamer.sleep.config import DistillConfig, LoadConfig, sleep_config_from_dict
from dreamer.lm.weights import build_stack, load_base, plan_device
from tests.test_sleep import SMALL
from dreamer.bench.tiny import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def test_cloze_probes_use_the_days_other_words_and_keep_what_the_teacher_confirms(monkeypatch):
    import dreamer.sleep.seeding.cloze as cloze_module
    from dreamer.sleep.seeding.cloze import PROBE, cloze_probes, clozes
    from dreamer.sleep.seeding.day_text import topics

    assert topics("My cat is called Miso.") == ["Miso"]  # "called" is not a topic
    turns = ["My sister Ana lives in Lisbon.", "My brother Tom flies to Oslo.", "My cat is called Miso."]
    items = clozes(turns)
    assert [(c.word, c.blanked) for c in items] == [
        ("Ana", "My sister ___ lives in Lisbon."), ("Lisbon", "My sister Ana lives in ___."),
        ("sister", "My ___ Ana lives in Lisbon."),
        ("Tom", "My brother ___ flies to Oslo."), ("Oslo", "My brother Tom flies to ___."),
        ("brother", "My ___ Tom flies to Oslo."),
        ("Miso", "My cat is called ___."),
    ]
    seen = []

    def teacher(model, tokenizer, question, options, system=None):
        seen.append((question, options, system))
        return [-1.0, 0.0] if "Tom" in question else [0.0] + [-1.0] * (len(options) - 1)

    monkeypatch.setattr(cloze_module, "option_scores", teacher)
    probes = cloze_probes(None, None, items, day="2026-11-21", base_system="SYS", stack=[], distractors=2,
                          rng=random.Random(0))
    assert [p["question"] for p in probes] == [PROBE.format(blanked=c.blanked) for c in items if "Tom" not in c.turn
                                               or c.word == "Tom"]  # "Tom ... ___" was not confirmed
    for probe in probes:
        item = next(c for c in items if PROBE.format(blanked=c.blanked) == probe["question"])
        assert len(probe["distractors"]) == 2 and probe["answer"] == item.word
        # Other words of the same day, never one of this turn; a capitalised word for a capitalised one.
        assert all(d in {c.word for c in items} and d.lower() not in item.turn.lower() for d in probe["distractors"])
        assert probe["distractors"][0][0].isupper() == item.word[0].isupper()
    # Checked by the teacher holding the turn the blank came from (the chat's recall), not the whole day.
    assert all(system.startswith("SYS") and f"- User: {next(c.turn for c in items if c.blanked in q)}" in system
               for q, _, system in seen)
    assert len(seen) == len(items)


def test_cloze_doctests():
    import doctest

    from dreamer.sleep.seeding import cloze, day_text

    for module in (cloze, day_text):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_cloze_prompts_are_taught_from_the_turn_they_came_from(tiny_dir):
    """The cloze examples of write_memories: who sees what, and which continuation is scored."""
    from dreamer.sleep.seeding.cloze import ASK, FILL
    from dreamer.sleep.seeding.memories import write_memories

    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu")))
    turns = ["My sister Ana lives in Lisbon.", "My cat is called Miso."]
    day = [{"conversation_id": 1, "messages": [{"role": "user", "content": t} for t in turns]}]
    cfg = sleep_config_from_dict(SMALL, preset="test").memories
    memories = write_memories(base, tokenizer, day, day="2026-11-21", base_system="SYS", stack=[], cfg=cfg,
                              rng=random.Random(0))
    cloze = {e.student[-1]["content"]: e for e in memories.examples if e.student[-1]["content"].startswith("Fill in")}
    assert set(cloze) == {FILL.format(blanked=b) for b in (
        "My sister ___ lives in Lisbon.", "My sister Ana lives in ___.", "My ___ Ana lives in Lisbon.",
        "My cat is called ___.")}
    lisbon = cloze[FILL.format(blanked="My sister Ana lives in ___.")]
    assert lisbon.student[0] == {"role": "system", "content": "SYS"}  # the student: no day in its prompt
    assert "- User: My sister Ana lives in Lisbon." in lisbon.teacher[0]["content"]  # the teacher: the turn...
    assert "Miso" not in lisbon.teacher[0]["content"]  # ...and only that turn
    # The continuation is the user's own sentence: the teacher, holding it, copies the missing word.
    assert lisbon.samples == ["My sister Ana lives in Lisbon."]
    assert (lisbon.student, "My sister Ana lives in Lisbon.") in memories.documents  # and an imitation memory
    assert memories.counts["cloze_prompts"] == 4
    # The cloze recall term: the same blank, asked closed-book for the bare word, the user's word the label.
    recall = {prompt[-1]["content"]: (prompt, word, others) for prompt, word, others in memories.clozes}
    prompt, word, others = recall[ASK.format(blanked="My sister Ana lives in ___.")]
    assert word == "Lisbon" and prompt[0] == {"role": "system", "content": "SYS"} and len(recall) == 4
    assert others == ["Miso"]  # contrasted with the day's other words, never one of its own sentence


def test_cloze_loss_is_cross_entropy_plus_a_softmax_over_the_options(tiny_dir):
    """Checked against Hugging Face's own loss (prompt masked out) and dreamer eval's option scores."""
    from dreamer.lm.scoring import option_scores

    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu")))
    model = build_stack(base, [], DistillConfig(rank=4))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)  # a trained-looking expert, so it matters that it is used
    batch = [([{"role": "system", "content": "SYS"}, {"role": "user", "content": 'Which word? "My cat ___."'}], "Miso",
              ["Lisbon", "Ana"]),
             ([{"role": "system", "content": "SYS"}, {"role": "user", "content": 'Which word? "___ lives in Lisbon."'}],
              "Ana", [])]
    expected = []
    for messages, word, others in batch:
        prompt = chat_ids(tokenizer, messages)
        reply = tokenizer(word, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            value = model(input_ids=torch.tensor([prompt + reply]), labels=torch.tensor([[-100] * len(prompt) + reply])).loss
        if others:
            scores = torch.tensor(option_scores(model, tokenizer, messages[1]["content"], [word, *others], system="SYS"))
            value = value - torch.log_softmax(scores, 0)[0]
        expected.append(value.item())
    got = cloze_loss(model, tokenizer, batch, stack=[])
    assert got.requires_grad
    assert got.item() == pytest.approx(sum(expected) / len(expected), rel=1e-4)


def test_cloze_weight_is_validated():
    with pytest.raises(ValueError, match="distill.cloze_weight must be a number >= 0"):
        sleep_config_from_dict({"distill": {"cloze_weight": -1}})
    with pytest.raises(ValueError, match="distill.cloze_batch must be a positive integer"):
        sleep_config_from_dict({"distill": {"cloze_batch": 0}})
    with pytest.raises(ValueError, match="distill.cloze_negatives must be an integer >= 0"):
        sleep_config_from_dict({"distill": {"cloze_negatives": -1}})


def test_greetings_make_no_cloze_probe_or_restatement():
    """A greeting carries no fact: blanked, "Hello" became a probe and a label replayed every night,
    and the 14-night run's replies turned into "Hello" (docs/BENCHMARKS.md, "Months of nights")."""
    from dreamer.sleep.seeding.cloze import clozes
    from dreamer.sleep.seeding.day_text import topics

    assert clozes(["Hello again.", "Good morning!", "Hi there!", "Good evening."]) == []
    assert [c.word for c in clozes(["Hello again, my sister Ana moved to Lisbon."], limit=2)] == ["Ana", "Lisbon"]
    assert topics("Good evening! We adopted a kitten.") == ["adopted", "kitten"]
