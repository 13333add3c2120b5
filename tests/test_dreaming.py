"""Dreaming (sleep stage 2) on the tiny model: its config, that scoring finds the dream that helps,
that throwaway copies and the writer touch nothing else, and that every way a dreaming night ends
leaves the home as the issue says."""

import hashlib
import json
import random

import pytest
import torch
from click.testing import CliRunner

from dreamer.lm.weights import NEW, WRITER, build_stack, load_base, plan_device, stack_names
from dreamer.sleep import gate as gate_stage
from dreamer.sleep import stages
from dreamer.sleep.config import (
    DistillConfig, DreamingConfig, LoadConfig, SleepConfigError, load_preset, preset_names, sleep_config_from_dict,
)
from dreamer.sleep.dreaming import rehearse as rehearse_module
from dreamer.sleep.dreaming import score as score_step
from dreamer.sleep.dreaming.rehearse import chat_drift_loss, own_general_turns, rehearse
from dreamer.sleep.dreaming.score import first_filter, reply_loss, reward_dreams, student_view
from dreamer.sleep.dreaming.write import Dream, write_dreams
from dreamer.sleep.dreaming.writer import attach_writer, train_writer
from dreamer.sleep.night import sleep_now
from dreamer.sleep.outcome import SleepInterrupted
from storage import Config, ledger

SYSTEM = "You are dreamer."
SMALL = {
    "memories": {"questions_per_conversation": 2, "max_new_tokens": 10, "teacher_samples": 1},
    "distill": {"steps": 3, "batch_size": 2, "rl_every": 1, "rl_new_tokens": 6, "alpha": 0.7, "drift_weight": 0.5},
    "load": {"max_seq_len": 128},
}
DREAMING = {"enabled": True, "dreams": 6, "keep": 2, "keep_random": 1, "max_new_tokens": 8, "inner_steps": 1,
            "tau_today": 4, "tau_old": 2, "rehearse_steps": 2, "rehearse_batch": 2, "writer_steps": 2}
GOOD_FIGURES = {"today_probes": 3, "old_probes": 0, "today_before": 0.0, "today_after": 1.0, "old_before": None,
                "old_after": None, "drift": 0.01, "replies_before": [], "replies_after": []}
PROBE = {"day": "2026-11-21", "question": 'Which word is missing from what I told you? "My cat is called ___."',
         "answer": "Miso", "distractors": ["Milo", "Rex", "Ziggy"], "kind": "recall"}  # day_store's fact


@pytest.fixture(autouse=True)
def held_out_probe(monkeypatch):
    """The tiny model's teacher keeps few probes of its own (sometimes one): tau gets a planted one."""
    from dreamer.sleep.dreaming import stage

    monkeypatch.setattr(stage, "split_probes", lambda probes, wanted, rng: ([PROBE], probes))


def every_sample_a_pair(text: str) -> tuple[str, str]:
    """parse_pair for the tiny model, whose random tokens never read as "Question: ... Answer: ..."."""
    return f"What about {text[:24]!r}?", text or "nothing"


@pytest.fixture
def grounded(monkeypatch):
    """The tiny model's replies are random tokens and name no fact of the day, so no dream would be
    grounded, nor read as "Question: ... Answer: ...": here every sample is a dream, and every dream
    is grounded by its first word (tests of the night's plumbing past the writer)."""
    from dreamer.sleep.dreaming import write

    monkeypatch.setattr(write, "parse_pair", every_sample_a_pair)
    monkeypatch.setattr(write, "ground", lambda request, reply, words: (words[0], reply) if words else None)


def night(store, tiny_dir, home, judge, dreaming=None, **kwargs):
    cfg = sleep_config_from_dict({**SMALL, "dreaming": dreaming or dict(DREAMING)}, preset="test")
    config = Config(train_model=str(tiny_dir), model=str(tiny_dir / "model.gguf"))  # its chat twin, for the fold
    return sleep_now(store, config, cfg, home=home, judge=judge, **kwargs)


@pytest.fixture
def model(tiny_dir):
    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig()))
    torch.manual_seed(0)
    stacked = build_stack(base, [], DistillConfig(rank=4))
    with torch.no_grad():  # tonight's expert as stage 1 leaves it: not zero
        for name, param in stacked.named_parameters():
            if f".{NEW}." in name and "lora_B" in name:
                param.normal_(0, 0.02)
    return stacked, tokenizer


def weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model, before: dict) -> set:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def test_every_preset_sets_dreaming_and_bad_values_are_named():
    for name in preset_names():
        assert isinstance(load_preset(name).dreaming, DreamingConfig)
    with pytest.raises(SleepConfigError, match="unknown key dreaming.dream_count"):
        sleep_config_from_dict({"dreaming": {"dream_count": 3}})
    for values, message in (({"dreams": 0}, "dreaming.dreams must be a positive integer"),
                            ({"novelty": 1.5}, r"dreaming.novelty must be in \[0, 1\]"),
                            ({"enabled": "yes"}, "dreaming.enabled must be true or false"),
                            ({"dreams": 4, "keep": 4, "keep_random": 1}, "dreaming.keep \\+ dreaming.keep_random"),
                            ({"tau_today": 0, "tau_old": 0}, "the reward needs probes"),
                            ({"writer_learning_rate": -1}, "dreaming.writer_learning_rate"),
                            ({"reward_probes": "some"}, "dreaming.reward_probes must be one of own, all"),
                            ({"rehearse_reply": "sentence"}, "dreaming.rehearse_reply must be one of answer, dream"),
                            ({"rehearse_drift": "reply"}, "dreaming.rehearse_drift must be one of text, chat, self"),
                            ({"rehearse_drift_scale": -1}, "dreaming.rehearse_drift_scale must be a number >= 0")):
        with pytest.raises(SleepConfigError, match=message):
            DreamingConfig(**values)
    assert DreamingConfig(writer_learning_rate=0).writer_learning_rate == 0  # the untrained-writer baseline


def test_scoring_rewards_the_planted_helpful_dream_and_leaves_every_weight_bit_identical(model):
    model, tokenizer = model
    # A random tiny model does not generalize across wordings, so the planted dream that helps asks
    # as the probe does; what is tested is the reward, its sign and the restoring.
    helpful = Dream("question", PROBE["question"], "Miso")
    useless = [Dream("question", "What is two plus two?", "Four."),
               Dream("application", "Suggest a film for tonight.", "A comedy would be nice."),
               Dream("paraphrase", "What is the weather like?", "It is sunny today.")]
    before = weights(model)
    cfg = DreamingConfig(inner_steps=3, inner_learning_rate=1e-2, reward_probes="all", reward_measure="choice")
    tau = reward_dreams(model, tokenizer, useless[:2] + [helpful] + useless[2:], [PROBE], [], SYSTEM, cfg)
    assert 0 < tau < 1
    assert helpful.rewarded and helpful.tau_delta > max(d.tau_delta for d in useless)
    assert not changed(model, before), "a throwaway copy left a trace in the real expert or the stack"
    assert all(p.grad is None for p in model.parameters())


def test_own_probe_rewards_measure_each_dream_on_its_fact_and_skip_dreams_without_one(model):
    model, tokenizer = model
    other = {**PROBE, "question": 'Which word is missing from what I told you? "My sister lives in ___."',
             "answer": "Lisbon", "distractors": ["Paris", "Oslo", "Rome"]}
    helpful = Dream("question", PROBE["question"], "Miso", words=["cat", "Miso"])
    useless = Dream("paraphrase", "What is the weather like?", "It is sunny today.", words=["Lisbon"])
    unmeasured = Dream("application", "Suggest a film for tonight.", "A comedy.", words=["comedy"])
    before = weights(model)
    cfg = DreamingConfig(inner_steps=3, inner_learning_rate=1e-2, reward_probes="own", reward_measure="choice")
    probes = [PROBE, other]
    tau = reward_dreams(model, tokenizer, [helpful, useless, unmeasured], probes, [], SYSTEM, cfg)
    probabilities = score_step.probe_probabilities(model, tokenizer, probes, [NEW], SYSTEM)
    assert tau == pytest.approx(sum(probabilities) / 2)
    assert helpful.rewarded and helpful.tau_delta > 0
    assert unmeasured.tau_delta is None and not unmeasured.rewarded  # nothing of its fact to measure it on
    assert not changed(model, before)
    # The same dream measured on every probe (`all`): its own probe's gain, averaged with the other's change.
    alone = Dream("question", PROBE["question"], "Miso", words=["cat", "Miso"])
    reward_dreams(model, tokenizer, [alone], probes, [], SYSTEM,
                  DreamingConfig(inner_steps=3, inner_learning_rate=1e-2, reward_probes="all", reward_measure="choice"))
    assert alone.tau_delta != pytest.approx(helpful.tau_delta)
    assert score_step.own_probes(useless, probes) == [1] and score_step.measured_probes(unmeasured, probes, cfg) == []


def test_asked_rewards_count_replies_that_name_the_answer(model):
    model, tokenizer = model
    # The planted dream that helps is the probe asked as the reward asks it, answered: after its
    # copy's steps the greedy reply names the answer, which no reply did before.
    helpful = Dream("question", score_step.asked_request(PROBE), "Miso")
    useless = [Dream("question", "What is two plus two?", "Four."),
               Dream("paraphrase", "What is the weather like?", "It is sunny today.")]
    cfg = DreamingConfig(inner_steps=8, inner_learning_rate=1.5e-2, reward_probes="all", max_new_tokens=6)
    assert cfg.reward_measure == "asked"  # the default, as in the presets
    system = SYSTEM + " You remember what the user tells you and answer in one short sentence." * 3  # long: cached
    before = weights(model)
    assert score_step.probe_scores(model, tokenizer, [PROBE], [NEW], system, cfg) == [0.0]
    tau = reward_dreams(model, tokenizer, [useless[0], helpful, useless[1]], [PROBE], [], system, cfg)
    assert tau == 0.0
    assert helpful.rewarded and helpful.tau_delta == 1.0
    # A random tiny model's greedy reply can flip to any word after a few large steps, so the
    # useless dreams are only required not to beat it (they name "Miso" after some settings).
    assert all(d.tau_delta in (0.0, 1.0) for d in useless)
    assert not changed(model, before)
    with pytest.raises(SleepConfigError, match="dreaming.reward_measure must be one of asked, choice"):
        DreamingConfig(reward_measure="reply")


def test_an_asked_reply_that_also_names_a_wrong_option_names_nothing(monkeypatch):
    said = ["Your cat is called Miso.", "Miso, or maybe Milo.", "I am not sure."]
    monkeypatch.setattr(score_step, "sample_many", lambda *a, **k: [[reply] for reply in said])
    assert score_step.replies_named(None, None, [PROBE] * 3, [NEW], SYSTEM, 8) == [1.0, 0.0, 0.0]


def test_the_report_says_what_tau_measured_and_marks_earlier_rates_measured_otherwise():
    from dreamer.sleep.report import dreams_section

    tonight = {"written": 4, "kinds": {}, "kept": 2, "rewarded": 1, "reward_rate": 0.5, "tau_before": 0.25,
               "tau_measure": "asked", "tau_probes": {"today": 4, "old": 0}, "examples": {"rewarded": [], "rejected": []}}
    earlier = [{"day": "2026-11-20", "reward_rate": 0.6}, {"day": "2026-11-21", "reward_rate": 0.4, "tau_measure": "asked"}]
    line = next(line for line in dreams_section(tonight, earlier) if "reward rate" in line)
    assert "(earlier nights: 2026-11-20 60% (choice), 2026-11-21 40%);" in line and "(share of replies naming the answer)" in line
    old = {k: v for k, v in tonight.items() if k != "tau_measure"}  # a night from before "asked"
    assert "(right options' probability)" in next(line for line in dreams_section(old, []) if "reward rate" in line)


def test_the_first_filter_keeps_the_largest_gaps_and_some_at_random():
    dreams = [Dream("question", f"q{i}?", "a", gap=float(i)) for i in range(6)]
    kept = first_filter(dreams, DreamingConfig(dreams=6, keep=2, keep_random=1), random.Random(0))
    assert [d.gap for d in kept[:2]] == [5.0, 4.0] and len(kept) == 3 and kept[2].gap < 4


def test_rehearsal_trains_only_tonights_expert_on_the_dreams(model):
    model, tokenizer = model
    dream = Dream("question", "What is my parrot called?", "Your parrot is called Kiwi.")
    loss_before = reply_loss(model, tokenizer, student_view(dream, SYSTEM), dream.reply, [NEW]).item()
    before = weights(model)
    cfg = DreamingConfig(rehearse_steps=4, rehearse_batch=1, rehearse_learning_rate=1e-2, rehearse_drift="text")
    log = rehearse(model, tokenizer, [dream], stack=[], system=SYSTEM, general_texts=["Water boils at 100 C."],
                   drift_weight=0.5, drift_batch=1, max_len=64, cfg=cfg, rng=random.Random(0))
    assert log["steps"] == 4
    moved = changed(model, before)
    assert moved and all(f".{NEW}." in n for n in moved)
    assert reply_loss(model, tokenizer, student_view(dream, SYSTEM), dream.reply, [NEW]).item() < loss_before


def test_rehearsal_trains_the_fact_alone_or_the_writers_sentence(model):
    """`rehearse_reply`: the reply the expert learns for a rewarded dream's request."""
    model, tokenizer = model
    dream = Dream("question", "What is my parrot called?", "Your parrot is called Kiwi.", answer="Kiwi")
    start = score_step.expert_state(model)

    def loss(reply):
        return reply_loss(model, tokenizer, student_view(dream, SYSTEM), reply, [NEW]).item()

    drops = {}
    for form in ("answer", "dream"):
        score_step.restore_state(model, start)
        before = {reply: loss(reply) for reply in ("Kiwi", dream.reply)}
        cfg = DreamingConfig(rehearse_steps=4, rehearse_batch=1, rehearse_learning_rate=1e-2, rehearse_reply=form,
                             rehearse_drift="text")
        rehearse(model, tokenizer, [dream], stack=[], system=SYSTEM, general_texts=["Water boils at 100 C."],
                 drift_weight=0.5, drift_batch=1, max_len=64, cfg=cfg, rng=random.Random(0))
        drops[form] = {reply: before[reply] - loss(reply) for reply in before}
    score_step.restore_state(model, start)
    assert drops["answer"]["Kiwi"] > drops["dream"]["Kiwi"]  # the fact alone, as the whole reply
    assert drops["dream"][dream.reply] > drops["answer"][dream.reply]  # the writer's sentence


def test_the_chat_drift_term_holds_the_replies_to_general_questions_asked_as_the_chat_asks(model):
    """`rehearse_drift = "chat"`: KL(stack || expert) over the reply to a general question under the
    system prompt; zero where the expert adds nothing, and rehearsing with it keeps that reply
    nearer the stack's than stage 1's text term does."""
    model, tokenizer = model
    turns = [("What is the capital of France?", "Paris."), ("Name a colour.", "Blue.")]
    start = score_step.expert_state(model)
    with torch.no_grad():
        assert chat_drift_loss(model, tokenizer, turns, [], SYSTEM).item() > 0  # the fixture's expert is not zero
        for name, param in model.named_parameters():
            if f".{NEW}." in name and "lora_B" in name:
                param.zero_()  # an expert that adds nothing
        assert chat_drift_loss(model, tokenizer, turns, [], SYSTEM).item() == 0
    dream = Dream("question", "What is my parrot called?", "Your parrot is called Kiwi.", answer="Kiwi")
    after = {}
    for drift in ("text", "chat"):
        score_step.restore_state(model, start)
        cfg = DreamingConfig(rehearse_steps=6, rehearse_batch=1, rehearse_learning_rate=3e-2, rehearse_drift=drift)
        rehearse(model, tokenizer, [dream], stack=[], system=SYSTEM, general_texts=["Water boils at 100 C."],
                 general_turns=turns, drift_weight=20.0, drift_batch=2, max_len=64, cfg=cfg, rng=random.Random(0))
        with torch.no_grad():
            after[drift] = chat_drift_loss(model, tokenizer, turns, [], SYSTEM).item()
    score_step.restore_state(model, start)
    assert after["chat"] < after["text"], after
    with pytest.raises(ValueError, match="rehearse_drift"):  # a term asked for and not possible is said, not skipped
        rehearse(model, tokenizer, [dream], stack=[], system=SYSTEM, general_texts=["Water boils at 100 C."],
                 drift_weight=1.0, drift_batch=2, max_len=64, rng=random.Random(0),
                 cfg=DreamingConfig(rehearse_drift="chat"))


def test_the_self_drift_term_holds_the_expert_to_its_own_answers_before_the_rehearsal(model, monkeypatch):
    """`rehearse_drift = "self"`: the reference is the expert as stage 1 left it, over its own greedy
    answers to the general questions (taken before the first step), not the stack: rehearsing with
    it keeps those answers nearer the expert's own than the "chat" term, which pulls them toward the
    stack's, does."""
    model, tokenizer = model
    turns = [("What is the capital of France?", "Paris."), ("Name a colour.", "Blue.")]
    start = score_step.expert_state(model)
    own, reference = own_general_turns(model, tokenizer, [q for q, _ in turns], [], SYSTEM, max_new_tokens=8)
    assert [q for q, _ in own] == [q for q, _ in turns] and len(reference) == 2
    with torch.no_grad():  # the expert before any step is its own reference: nothing to pay yet
        assert chat_drift_loss(model, tokenizer, own, [], SYSTEM, reference=reference).item() == pytest.approx(0, abs=1e-6)
        assert chat_drift_loss(model, tokenizer, own, [], SYSTEM).item() > 0  # the stack's differs (the fixture's expert)
    dream = Dream("question", "What is my parrot called?", "Your parrot is called Kiwi.", answer="Kiwi")
    after = {}
    for drift in ("chat", "self"):
        score_step.restore_state(model, start)
        cfg = DreamingConfig(rehearse_steps=6, rehearse_batch=1, rehearse_learning_rate=3e-2, rehearse_drift=drift,
                             max_new_tokens=8)
        rehearse(model, tokenizer, [dream], stack=[], system=SYSTEM, general_texts=["Water boils at 100 C."],
                 general_turns=turns, drift_weight=20.0, drift_batch=2, max_len=64, cfg=cfg, rng=random.Random(0))
        with torch.no_grad():
            after[drift] = chat_drift_loss(model, tokenizer, own, [], SYSTEM, reference=reference).item()
    score_step.restore_state(model, start)
    assert after["self"] < after["chat"], after
    with pytest.raises(ValueError, match="rehearse_drift"):
        rehearse(model, tokenizer, [dream], stack=[], system=SYSTEM, general_texts=["Water boils at 100 C."],
                 drift_weight=1.0, drift_batch=2, max_len=64, rng=random.Random(0),
                 cfg=DreamingConfig(rehearse_drift="self"))
    monkeypatch.setattr(rehearse_module, "sample_many", lambda *a, **k: [[""] for _ in a[2]])
    with pytest.raises(ValueError, match="answered none"):  # no reference to hold: said, not skipped
        rehearse(model, tokenizer, [dream], stack=[], system=SYSTEM, general_texts=["Water boils at 100 C."],
                 general_turns=turns, drift_weight=1.0, drift_batch=2, max_len=64, rng=random.Random(0),
                 cfg=DreamingConfig(rehearse_drift="self"))


def test_the_writer_learns_only_from_rewarded_dreams(model):
    model, tokenizer = model
    attach_writer(model, [], DreamingConfig(writer_rank=4), DistillConfig(rank=4))
    assert stack_names(model) == [NEW]  # the writer is never part of the stack
    prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Write one question."}]
    dream = Dream("question", "What is my parrot called?", "Kiwi", writer_prompt=prompt,
                  written="Question: What is my parrot called?\nAnswer: Kiwi")
    before = weights(model)
    cfg = DreamingConfig(writer_steps=3, writer_learning_rate=1e-2)
    assert train_writer(model, tokenizer, [], [], cfg, random.Random(0))["trained"] is False
    assert not train_writer(model, tokenizer, [dream], [], DreamingConfig(writer_learning_rate=0),
                            random.Random(0))["trained"]
    assert not changed(model, before)
    log = train_writer(model, tokenizer, [dream], [], cfg, random.Random(0))
    assert log["trained"] and log["loss_last"] < log["loss_first"]
    moved = changed(model, before)
    assert moved and all(f".{WRITER}." in n for n in moved)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {n for n in before if f".{NEW}." in n and "lora_" in n}


def test_dreams_are_written_with_replies_and_rehearsals_of_earlier_nights(model, monkeypatch):
    from dreamer.sleep.dreaming import write

    model, tokenizer = model
    attach_writer(model, [], DreamingConfig(writer_rank=4), DistillConfig(rank=4))
    # The tiny model writes random tokens; read each sample as a pair, so that the written dreams
    # can be checked (what the writer saw, what it is trained on, what its reply must name).
    monkeypatch.setattr(write, "parse_pair", every_sample_a_pair)
    turns = ["My parrot is called Kiwi.", "My sister lives in Lisbon."]
    conversations = [{"messages": [{"role": "user", "content": "Hello again."}] +
                      [{"role": "user", "content": t} for t in turns]}]
    cfg = DreamingConfig(dreams=12, keep=2, rehearsal_fraction=0.25, max_new_tokens=12)
    dreams = write_dreams(model, tokenizer, conversations=conversations, base_system=SYSTEM, stack=[],
                          old_probes=[PROBE], cfg=cfg, rng=random.Random(0))
    rehearsals = [d for d in dreams if d.kind == "rehearsal"]
    assert rehearsals and all("Kiwi" not in d.request for d in rehearsals)  # an old probe's words, never its answer
    assert all(d.words == [PROBE["answer"]] and d.writer_prompt is None for d in rehearsals)
    today = [d for d in dreams if d.kind != "rehearsal"]
    assert len(today) == 9 and {d.kind for d in today} == set(write.KINDS)  # 12 minus 3 rehearsals, the kinds spread
    for dream in today:
        statement = dream.writer_prompt[-1]["content"]
        turn = statement.removeprefix("Statement: ")
        assert turn in turns and dream.words == write.turn_words(turn)  # it must name its own turn's fact
        assert turn in dream.teacher_view[0]["content"] and "Hello again" not in dream.teacher_view[0]["content"]
        assert dream.written == f"Question: {dream.request}\nAnswer: {dream.reply}" or dream.answer
    assert all(d.reply for d in dreams)


def test_the_writer_frame_reads_pairs_and_spreads_over_facts(monkeypatch):
    import doctest

    monkeypatch.undo()  # the real split_probes, not the planted probe, for stage's doctests

    from benchmarks import dream_rehearsal, dream_reward, dream_reward_asked
    from dreamer.eval import replies
    from dreamer.sleep.dreaming import rehearse as rehearse_step
    from dreamer.sleep.dreaming import stage, write

    # the frame, the held-out split, own probes and the asked request, the rehearsed reply, spearman,
    # the rehearsal study's counts, the second person, the reply matcher
    for module in (write, stage, score_step, rehearse_step, dream_reward, dream_rehearsal, dream_reward_asked, replies):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
    plan = write.plan_today(["a", "b", "c"], 12, random.Random(1))
    assert sorted(plan) == sorted((k, t) for k in write.KINDS for t in "abc")  # each fact, each kind, once
    prompt = write.writer_prompt("implication", "I moved to Rotterdam.")
    assert prompt[-1] == {"role": "user", "content": "Statement: I moved to Rotterdam."}
    assert all("Rotterdam" not in m["content"] for m in prompt[:-1])  # the examples are never the user's


def test_a_night_whose_dreams_name_no_fact_is_stage_one_and_says_why(day_store, tiny_dir, dreamer_home, fake_judge,
                                                                      monkeypatch):
    # Replies that name nothing the day said (the 135M writer's "I'm here to help"): nothing is
    # scored or rehearsed, stage 1 stands, and the report says why.
    from dreamer.sleep.dreaming import stage as dream_stage, write

    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))
    monkeypatch.setattr(write, "parse_pair", every_sample_a_pair)
    monkeypatch.setattr(write, "ground", lambda request, reply, words: None)
    rewards = []
    monkeypatch.setattr(dream_stage, "reward_dreams", lambda *a, **k: rewards.append(1) or 0.5)
    outcome = night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert outcome.status == "promoted" and not rewards
    dreams = outcome.metrics["dreaming"]
    assert dreams["written"] > 0 and dreams["grounded"] == dreams["kept"] == 0
    assert "was grounded" in dreams["error"] and "was grounded" in outcome.report


def test_only_grounded_dreams_are_kept_and_their_replies_end_at_the_fact(model):
    from dreamer.sleep.dreaming.write import ground, turn_words

    words = turn_words("My parrot is called Kiwi and my sister lives in Lisbon.")
    assert {"Kiwi", "Lisbon"} <= set(words)
    assert ground("What is my parrot called?", "Your parrot is Kiwi. Parrots are clever birds.", words) == \
        ("Kiwi", "Your parrot is Kiwi.")
    assert ground("Is my parrot called Kiwi?", "Yes, Kiwi.", words) is None  # the request gives it away
    assert ground("Where does my sister live?", "I'm here to help you with anything!", words) is None
    # The user's voice: rehearsed, "I live in Lisbon" teaches the chat to answer as the user.
    assert ground("Where does my sister live?", "My sister lives in Lisbon.", words) is None
    assert ground("Where does my sister live?", "Your sister lives in Lisbon. I hope you visit!", words) == \
        ("Lisbon", "Your sister lives in Lisbon.")  # only what is kept must speak to the user


def every_dream_helps(monkeypatch) -> None:
    """tau rises with every measurement, so every kept dream is rewarded and the writer learns."""
    real_scores, calls = score_step.probe_scores, []

    def rising_scores(*args, **kwargs):
        calls.append(1)
        return [score + 0.01 * len(calls) for score in real_scores(*args, **kwargs)]

    monkeypatch.setattr(score_step, "probe_scores", rising_scores)


def expert_bytes(home) -> dict:
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((home / "adapters").rglob("*")) if p.is_file() and p.suffix in (".safetensors", ".gguf")}


def test_dreaming_off_is_the_stage_one_night_bit_for_bit(tiny_dir, tmp_path, fake_judge, monkeypatch):
    from storage import Store

    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))

    def one_night(home, dreaming):
        store = Store(home / "dreamer.db")
        conversation = store.new_conversation()
        store.add_message(conversation, "user", "My sister Ana lives in Lisbon and works as a pilot.")
        store.add_message(conversation, "user", "My cat is called Miso.")
        outcome = night(store, tiny_dir, home, fake_judge, dreaming=dreaming)
        metrics = {k: v for k, v in outcome.metrics.items() if k not in ("phase_seconds", "seconds", "peak_memory_mb",
                                                                          "export_seconds")}
        metrics["training"].pop("seconds")
        metrics["fold"].pop("seconds")  # deep sleep's fold: the same bytes, its own time
        return metrics, {k.split("/", 2)[-1]: v for k, v in expert_bytes(home).items()}

    off = one_night(tmp_path / "off", {**DREAMING, "enabled": False})
    monkeypatch.setattr(stages, "STAGES", [s for s in stages.STAGES if s is not stages.dream])
    assert one_night(tmp_path / "stage1", DREAMING) == off
    assert "dreaming" not in off[0]


def test_a_failing_dream_phase_leaves_stage_one_and_says_so(day_store, tiny_dir, dreamer_home, fake_judge,
                                                            monkeypatch, tmp_path, grounded):
    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))

    real_scores, calls = score_step.probe_scores, []

    def broken(*args, **kwargs):  # tau before the copies, then a raise with a copy's steps taken
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("scoring exploded")
        return real_scores(*args, **kwargs)

    monkeypatch.setattr(score_step, "probe_scores", broken)
    outcome = night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert outcome.status == "promoted"
    assert "Dreaming did not finish: RuntimeError: scoring exploded" in outcome.report
    assert outcome.metrics["dreaming"]["error"] == "RuntimeError: scoring exploded"
    assert not (dreamer_home / "adapters" / "run-0001" / "writer").exists()


def test_a_dreaming_night_saves_its_writer_which_the_next_night_loads(day_store, tiny_dir, dreamer_home, fake_judge,
                                                                     monkeypatch, grounded):
    from dreamer.sleep.dreaming import stage

    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))
    every_dream_helps(monkeypatch)
    rehearsals = []  # what the night hands the rehearsal: the drift weight and term, the general questions
    monkeypatch.setattr(stage, "rehearse", lambda *a, **k: rehearsals.append(k) or rehearse_module.rehearse(*a, **k))
    first = night(day_store, tiny_dir, dreamer_home, fake_judge, dreaming={**DREAMING, "rehearse_drift_scale": 3.0})
    assert first.status == "promoted", first.message
    assert rehearsals[0]["drift_weight"] == 0.5 * 3.0 and rehearsals[0]["cfg"].rehearse_drift == "self"
    assert rehearsals[0]["general_turns"]  # the questions the default "self" term holds the expert on
    dreams = first.metrics["dreaming"]
    assert dreams["written"] >= dreams["grounded"] >= dreams["scorable"] >= dreams["kept"] > 0
    assert dreams["rewarded"] == dreams["kept"]
    if dreams["scorable"] < dreams["grounded"]:  # only dreams about the cat (the held-out probe's fact) are scored
        assert f"{dreams['scorable']} of them about a fact with a held-out probe" in first.report
    assert dreams["writer"]["trained"] and dreams["rehearsal"]["steps"] == DREAMING["rehearse_steps"]
    assert "## Dreams" in first.report and "rewarded dream" in first.report
    writer = dreamer_home / "adapters" / "run-0001" / "writer"
    assert (writer / "adapter_config.json").is_file()

    conversation = day_store.new_conversation()
    day_store.add_message(conversation, "user", "My brother Tom moved to Porto.")
    second = night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert second.metrics["dreaming"]["writer_from"] == str(writer)
    assert second.metrics["dreaming"]["kinds"]["rehearsal"]["written"] > 0  # night 1 is re-told,
    assert second.metrics["dreaming"]["tau_probes"]["old"] > 0  # from the earlier probes tau holds
    assert "earlier nights: " in second.report

    from dreamer.cli.main import cli

    result = CliRunner().invoke(cli, ["memory"])
    assert result.exit_code == 0, result.output
    assert "dream writer" in result.output and "rewarded" in result.output


def test_an_interrupted_dream_phase_changes_nothing(day_store, tiny_dir, dreamer_home, fake_judge, monkeypatch,
                                                   grounded):
    monkeypatch.setattr(gate_stage, "measure", lambda *a, **k: dict(GOOD_FIGURES))
    every_dream_helps(monkeypatch)
    assert night(day_store, tiny_dir, dreamer_home, fake_judge).status == "promoted"
    conversation = day_store.new_conversation()
    day_store.add_message(conversation, "user", "My brother Tom moved to Porto.")
    on_disk = expert_bytes(dreamer_home)
    assert any("writer" in name for name in on_disk)
    manifest = (dreamer_home / "adapters" / "manifest.json").read_text()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    from dreamer.sleep.dreaming import stage as dream_stage

    monkeypatch.setattr(dream_stage, "train_writer", ctrl_c)
    with pytest.raises(SleepInterrupted):
        night(day_store, tiny_dir, dreamer_home, fake_judge)
    assert ledger.runs(day_store)[0]["status"] == "interrupted"
    assert expert_bytes(dreamer_home) == on_disk  # the expert, its export and the writer
    assert (dreamer_home / "adapters" / "manifest.json").read_text() == manifest
    assert day_store.unconsolidated_count() == 1 and len(ledger.adapters(day_store, "active")) == 1
    assert json.loads(manifest)["version"] == 1

