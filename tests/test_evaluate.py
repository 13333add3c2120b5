"""Closed-book evaluation on the tiny Llama: scoring, padding, aggregation, drift."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dreamer.eval import evaluate as ev
from dreamer.eval.probes import Probe
from dreamer.sleep.config import DistillConfig, LoadConfig
from dreamer.lm.weights import adapters, build_stack, load_base, plan_device
from dreamer.bench.tiny import make_tiny_model_dir

QUESTION = "What is the name of my cat?"
TEXTS = ["My sister Ana lives in Lisbon and works as a pilot.", "I like green tea and old books."]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu")))


@pytest.fixture(scope="module")
def trained(tiny):
    """A full fine-tuned copy that answers QUESTION with "Miso" and then stops."""
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    for param in model.parameters():
        param.requires_grad_(True)
    prompt = ev.prompt_ids(tokenizer, QUESTION)
    reply = tokenizer("Miso", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + reply])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100  # learn the reply only
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model, tokenizer


def probe(answer, distractors, day="2026-11-20", kind="recall", question=QUESTION):
    return Probe(day, question, answer, tuple(distractors), kind)


def test_prompt_ids_is_the_chat_template_with_generation_prompt(tiny):
    _, tokenizer = tiny
    text = tokenizer.decode(ev.prompt_ids(tokenizer, QUESTION))
    assert text == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


def test_option_score_matches_a_manual_forward_pass(tiny):
    model, tokenizer = tiny
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    option_ids = tokenizer("Miso the cat", add_special_tokens=False)["input_ids"]
    assert len(option_ids) > 1
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + option_ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    expected = sum(
        logprobs[len(prompt_ids) - 1 + i, token].item() for i, token in enumerate(option_ids)
    ) / len(option_ids)
    (score,) = ev.option_scores(model, tokenizer, QUESTION, ["Miso the cat"])
    assert score == pytest.approx(expected, abs=1e-5)
    assert score < 0


def test_padding_does_not_change_scores(tiny):
    model, tokenizer = tiny
    short = "Miso"
    long = "a very long distractor about green tea, running on Sundays and reading old books"
    (alone,) = ev.option_scores(model, tokenizer, QUESTION, [short])
    batched = ev.option_scores(model, tokenizer, QUESTION, [short, long])
    reversed_ = ev.option_scores(model, tokenizer, QUESTION, [long, short])
    assert batched[0] == pytest.approx(alone, abs=1e-5)
    assert reversed_[1] == pytest.approx(alone, abs=1e-5)
    assert reversed_[0] == pytest.approx(batched[1], abs=1e-5)


def test_multiple_choice_picks_the_trained_answer(tiny, trained):
    model, tokenizer = trained
    probes = [probe("Miso", ["Lisbon", "green tea"]), probe("Lisbon", ["Miso", "green tea"])]
    assert ev.multiple_choice(model, tokenizer, probes) == [True, False]
    # The untrained model: the verdict is exactly "answer beats every distractor" on its scores.
    base, _ = tiny
    scores = ev.option_scores(base, tokenizer, QUESTION, ["Miso", "Lisbon", "green tea"])
    expected = [scores[0] > max(scores[1], scores[2]), scores[1] > max(scores[0], scores[2])]
    assert ev.multiple_choice(base, tokenizer, probes) == expected
    assert ev.option_scores(model, tokenizer, QUESTION, ["Miso"])[0] > scores[0]


def test_multiple_choice_counts_a_tie_as_wrong(monkeypatch, tiny):
    model, tokenizer = tiny
    monkeypatch.setattr(ev, "option_scores", lambda *args, **kwargs: [-1.0, -1.0, -2.0])
    assert ev.multiple_choice(model, tokenizer, [probe("a", ["b", "c"])]) == [False]


def test_reply_correct_is_a_casefolded_substring():
    assert ev.reply_correct("  Miso ", "Your cat is called MISO.")
    assert ev.reply_correct("straße", "STRASSE it is") is True  # casefold, not lower
    assert not ev.reply_correct("Miso", "Your cat is called Mi so.")


def test_generation_is_greedy_and_case_insensitive(trained):
    model, tokenizer = trained
    probes = [probe("  miso ", ["Lisbon"]), probe("Lisbon", ["Miso"])]
    correct, replies = ev.generation(model, tokenizer, probes, max_new_tokens=8)
    assert "Miso" in replies[0]
    assert correct == [True, False]
    assert replies[0] == replies[1]  # greedy: the same question gets the same reply
    assert model.training is False


def test_evaluate_aggregates_by_kind_and_day(monkeypatch, tiny):
    model, tokenizer = tiny
    probes = [
        probe("a", ["x"], day="2026-11-20", kind="recall"),
        probe("b", ["x"], day="2026-11-20", kind="update"),
        probe("c", ["x"], day="2026-11-19", kind="recall"),
        probe("d", ["x"], day="2026-11-21", kind="general"),
        probe("e", ["x"], day="2026-11-19", kind="recall"),
    ]
    mc = [True, False, True, True, False]
    gen = [False, False, True, True, True]
    monkeypatch.setattr(ev, "multiple_choice", lambda m, t, p: mc)
    monkeypatch.setattr(ev, "generation", lambda m, t, p, max_new_tokens: (gen, [f"r{i}" for i in range(5)]))
    result = ev.evaluate(model, tokenizer, probes)
    assert result["n"] == 5
    assert result["mc_accuracy"] == pytest.approx(3 / 5)
    assert result["gen_accuracy"] == pytest.approx(3 / 5)
    assert list(result["by_kind"]) == ["recall", "update", "general"]
    recall = result["by_kind"]["recall"]
    assert recall == {"n": 3, "mc_accuracy": pytest.approx(2 / 3), "gen_accuracy": pytest.approx(2 / 3)}
    assert result["by_kind"]["update"] == {"n": 1, "mc_accuracy": 0.0, "gen_accuracy": 0.0}
    assert result["by_kind"]["general"] == {"n": 1, "mc_accuracy": 1.0, "gen_accuracy": 1.0}
    assert list(result["by_day"]) == ["2026-11-19", "2026-11-20", "2026-11-21"]
    assert result["by_day"]["2026-11-19"] == {"n": 2, "mc_accuracy": 0.5, "gen_accuracy": 1.0}
    assert result["by_day"]["2026-11-20"] == {"n": 2, "mc_accuracy": 0.5, "gen_accuracy": 0.0}
    assert result["probes"][3] == {
        "question": QUESTION, "answer": "d", "mc_correct": True, "gen_correct": True, "reply": "r3"
    }

    no_gen = ev.evaluate(model, tokenizer, probes, generate=False)
    assert no_gen["gen_accuracy"] is None and no_gen["by_day"]["2026-11-21"]["gen_accuracy"] is None
    assert no_gen["probes"][0]["reply"] is None and no_gen["mc_accuracy"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        ev.evaluate(model, tokenizer, [])


def test_evaluate_end_to_end_on_the_trained_model(trained):
    model, tokenizer = trained
    result = ev.evaluate(model, tokenizer, [probe("Miso", ["Lisbon"])], max_new_tokens=6)
    assert result["mc_accuracy"] == 1.0 and result["gen_accuracy"] == 1.0
    assert "Miso" in result["probes"][0]["reply"]


def test_format_table_contains_the_numbers():
    result = {
        "n": 4, "mc_accuracy": 0.75, "gen_accuracy": None,
        "by_kind": {"recall": {"n": 3, "mc_accuracy": 2 / 3, "gen_accuracy": None},
                    "update": {"n": 1, "mc_accuracy": 1.0, "gen_accuracy": None}},
        "by_day": {"2026-11-20": {"n": 4, "mc_accuracy": 0.75, "gen_accuracy": None}},
        "probes": [],
    }
    table = ev.format_table(result)
    lines = table.splitlines()
    assert lines[1].split() == ["overall", "4", "0.750", "-"]
    assert lines[2].split() == ["kind", "recall", "3", "0.667", "-"]
    assert lines[3].split() == ["kind", "update", "1", "1.000", "-"]
    assert lines[4].split() == ["day", "2026-11-20", "4", "0.750", "-"]


def test_general_drift_zero_for_same_stack_positive_when_new_is_perturbed(tiny_dir):
    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu")))
    model = build_stack(base, [], DistillConfig(rank=4, lora_alpha=8))
    assert ev.general_drift(model, tokenizer, TEXTS, [], None) == 0.0
    assert ev.general_drift(model, tokenizer, TEXTS, ["new"], ["new"]) == 0.0
    # lora_B starts at zero: `new` is an identity, and the computed KL is (numerically) zero.
    assert ev.general_drift(model, tokenizer, TEXTS, [], ["new"]) == pytest.approx(0.0, abs=1e-7)

    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and ".new." in name:
                param.add_(0.3 * torch.randn_like(param))
    drift = ev.general_drift(model, tokenizer, TEXTS, [], ["new"])
    assert drift > 1e-4

    # Hand check: token-weighted mean KL(base || new) over the two texts, one at a time.
    total, count = 0.0, 0
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            with adapters(model, []):
                ref = F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
            with adapters(model, ["new"]):
                cand = F.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
            total += F.kl_div(cand, ref, log_target=True, reduction="sum").item()
            count += ids.shape[1]
    assert drift == pytest.approx(total / count, rel=1e-4)
    # The adapters context restores the stack: `new` active and still the only trainable set.
    assert list(model.base_model.active_adapters) == ["new"]
    assert all(("lora_" in n and ".new." in n) == p.requires_grad for n, p in model.named_parameters())


def test_general_drift_truncates_to_max_len(tiny_dir):
    base, tokenizer = load_base(str(tiny_dir), plan_device(LoadConfig(device="cpu")))
    model = build_stack(base, [], DistillConfig(rank=4, lora_alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.3 * torch.randn_like(param))
    head = tokenizer.decode(tokenizer(TEXTS[0])["input_ids"][:5])
    assert ev.general_drift(model, tokenizer, [TEXTS[0]], [], ["new"], max_len=5) == pytest.approx(
        ev.general_drift(model, tokenizer, [head], [], ["new"]), rel=1e-5
    )


def test_perplexity_is_exp_of_mean_token_nll(tiny):
    model, tokenizer = tiny
    total, count = 0.0, 0
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            total += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    # The texts differ in length: the batched, padded figure must equal the one-at-a-time one.
    assert ev.perplexity(model, tokenizer, TEXTS) == pytest.approx(math.exp(total / count), rel=1e-5)
    assert 1 < ev.perplexity(model, tokenizer, TEXTS) < math.inf
