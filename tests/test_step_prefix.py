"""The system turn shared by a training step's passes: the losses and gradients of whole prompts."""

import random
from contextlib import contextmanager

import pytest
import torch
from peft import LoraConfig, get_peft_model

from dreamer.bench.tiny import make_tiny_model_dir
from dreamer.lm.generation import chat_ids
from dreamer.lm.scoring import pad_id, tail_logprobs
from dreamer.lm.step_prefix import StepPrefix
from dreamer.lm.weights import NEW, adapters, load_base, plan_device
from dreamer.sleep.config import DistillConfig, LoadConfig
from dreamer.sleep.seeding import distill as distill_module
from dreamer.sleep.seeding.distill import batch_reply_logits, cloze_loss, distill
from dreamer.sleep.seeding.memories import Example
from dreamer.sleep.seeding.rewards import SemanticJudge

SYSTEM = "You are dreamer, a personal assistant. Answer helpfully and briefly. Today is Monday, 03 March 2025."


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    base, tokenizer = load_base(str(make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m")),
                                plan_device(LoadConfig(device="cpu")))
    torch.manual_seed(0)
    # Random A and B in the attention and the MLP, so the system turn's keys and values depend
    # on the expert and a gradient that did not flow back through them would show.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)
    return get_peft_model(base, config, adapter_name=NEW), tokenizer


def lora_params(model):
    return [p for n, p in model.named_parameters() if "lora_" in n]


def gradients(model, run) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`run()`'s loss and the expert's gradient of it."""
    model.zero_grad(set_to_none=True)
    loss = run()
    return loss.detach(), [p.grad.clone() for p in lora_params(model)]


@contextmanager
def in_float64(model):
    """The model in float64 (and back: float32 -> float64 -> float32 is exact)."""
    model.double()
    try:
        yield
    finally:
        model.float()


def restore(model, state: dict) -> None:
    """The expert's weights as `state` holds them."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


def flat(grads) -> torch.Tensor:
    return torch.cat([g.double().flatten() for g in grads])


def relative_rounding(want_grads, exact_grads) -> float:
    """How far float32 whole prompts' gradient is from the float64 one, relative to its size."""
    want, exact = flat(want_grads), flat(exact_grads)
    return ((want - exact).norm() / exact.norm()).item() + torch.finfo(torch.float32).eps


def assert_close_grads(grads, want_grads, exact_grads):
    """`grads` (shared turn, float32) are as near the float64 gradient of whole prompts as float32
    whole prompts are (`want_grads`): the tolerance is that measured rounding, times 10, never a
    constant tuned on one machine. ("float64": the model's weights and matrix products; the
    RMSNorms and the loss heads still round to float32, so the reference is a little rounder than
    float64, and a bug below ten times float32's rounding would pass.) A gradient that did not flow
    back through the shared system turn is off by far more (the last tests check that this can fail)."""
    got, exact = flat(grads), flat(exact_grads)
    assert exact.norm() > 0
    rounding = relative_rounding(want_grads, exact_grads) * exact.norm()
    assert (got - exact).norm() <= 10 * rounding, ((got - exact).norm() / rounding).item()


def assert_close_losses(got: float, want: float, exact: float, relative: float):
    """A loss against float64 whole prompts: within 10 times the larger of float32 whole prompts' own
    error and the gradient's measured relative rounding (`relative`) of it; one scalar's own error
    may land near zero by chance, the gradient's (a norm over thousands of entries) does not."""
    rounding = max(abs(want - exact), relative * abs(exact))
    assert abs(got - exact) <= 10 * rounding, (got, want, exact)


def assert_same(got, want, exact):
    """Shared-turn loss and gradient (`got`) against float32 whole prompts (`want`), both measured
    from the float64 whole prompts (`exact`)."""
    assert_close_losses(float(got[0]), float(want[0]), float(exact[0]), relative_rounding(want[1], exact[1]))
    assert_close_grads(got[1], want[1], exact[1])


def shared_whole_exact(model, loss):
    """`loss(prefix)`'s value and gradient: with the shared turn, whole, and whole in float64."""
    shared, whole = gradients(model, lambda: loss(True)), gradients(model, lambda: loss(False))
    with in_float64(model):
        exact = gradients(model, lambda: loss(False))
    return shared, whole, exact


def test_the_system_turn_is_a_prefix_of_the_chat_prompts(lora_model):
    model, tokenizer = lora_model
    with adapters(model, [NEW]):
        shared = StepPrefix.open(model, tokenizer, SYSTEM, [NEW])
    prompt = chat_ids(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi?"}])
    assert shared is not None and shared.covers(prompt)
    assert not shared.covers(chat_ids(tokenizer, [{"role": "user", "content": "Hi?"}]))
    assert not shared.covers(shared.ids)  # nothing after it: nothing to encode
    assert StepPrefix.open(model, tokenizer, None, [NEW]) is None


def test_reply_passes_with_the_shared_system_turn_match_whole_prompts(lora_model):
    """Prompts with and without the system turn in one call: logits and gradients as encoded whole."""
    model, tokenizer = lora_model
    rng = random.Random(0)
    users = ["Where does my sister live?", "What is my cat called? Tell me.", "Hello"]
    prompts = [chat_ids(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}])
               for u in users[:2]] + [chat_ids(tokenizer, [{"role": "user", "content": users[2]}])]
    replies = [[rng.randrange(3, 300) for _ in range(n)] for n in (4, 1, 6)]
    weights = [torch.randn(1, len(r), model.config.vocab_size, generator=torch.Generator().manual_seed(i))
               for i, r in enumerate(replies)]

    def loss(prefix):
        with adapters(model, [NEW]):
            shared = StepPrefix.open(model, tokenizer, SYSTEM, [NEW]) if prefix else None
            logits = batch_reply_logits(model, prompts, replies, pad_id(tokenizer), shared)
        total = sum((lg * w).sum() for lg, w in zip(logits, weights))
        total.backward()
        if shared is not None:
            assert shared.uses == 1  # one pass for the two prompts that begin with it
            shared.backward()
        return total

    assert_same(*shared_whole_exact(model, loss))


def test_cloze_term_with_the_shared_system_turn_matches_whole_prompts(lora_model):
    model, tokenizer = lora_model
    closed = [{"role": "system", "content": SYSTEM}]
    batch = [(closed + [{"role": "user", "content": 'Fill in the blank: "My sister Ana moved to ___"'}], "Lisbon",
              ["Porto", "pilot"]),
             (closed + [{"role": "user", "content": 'Fill in the blank: "My cat is called ___"'}], "Miso", ["Ana"])]

    def loss(prefix):
        with adapters(model, [NEW]):
            shared = StepPrefix.open(model, tokenizer, SYSTEM, [NEW]) if prefix else None
        total = cloze_loss(model, tokenizer, batch, [], shared)
        total.backward()
        if shared is not None:
            assert shared.uses == 2
            shared.backward()
        return total

    assert_same(*shared_whole_exact(model, loss))


def test_tail_logprobs_without_a_system_turn_ignore_the_prefix(lora_model):
    model, tokenizer = lora_model
    prompt = chat_ids(tokenizer, [{"role": "user", "content": "Where does Ana live?"}])
    with adapters(model, [NEW]), torch.no_grad():
        shared = StepPrefix.open(model, tokenizer, SYSTEM, [NEW])
        got = tail_logprobs(model, tokenizer, prompt, [[5, 6]], shared)
        want = tail_logprobs(model, tokenizer, prompt, [[5, 6]])
    assert shared.uses == 0
    torch.testing.assert_close(got[0], want[0])


def test_a_distillation_step_has_the_gradient_of_whole_prompts(lora_model, monkeypatch):
    """One whole step of `distill` (every term, anchors without the system turn among the prompts),
    with the system turn shared and with it encoded in every pass: the same gradient."""
    model, tokenizer = lora_model
    # A judge for which the first completion means what the memory means and the others do not, so
    # the imitation term has advantages and runs its passes (it embeds completions, then references).
    judge = SemanticJudge(embed_fn=lambda texts: torch.tensor([[1.0, 0.0] if i == 0 or i >= len(texts) // 2 else
                                                               [0.0, 1.0] for i in range(len(texts))]))
    closed = [{"role": "system", "content": SYSTEM}]
    today = [Example("today", closed + [{"role": "user", "content": q}], [{"role": "system", "content": "Ana: Lisbon."},
                                                                         {"role": "user", "content": q}], None, [a])
             for q, a in (("Where does Ana live?", "In Lisbon."), ("What does Ana do?", "She is a pilot."))]
    anchor = [Example("anchor", [{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Name a colour."}],
                      None, ["Blue."])]
    documents = [(closed + [{"role": "user", "content": "Where does Ana live?"}], "My sister Ana lives in Lisbon now.")]
    clozes = [(closed + [{"role": "user", "content": 'Fill in: "Ana lives in ___"'}], "Lisbon", ["pilot", "Miso"])]
    cfg = DistillConfig(steps=1, batch_size=4, lmbda=0.5, anchor_fraction=0.5, alpha=0.8, rl_every=1, rl_group=3,
                        rl_new_tokens=6, cloze_batch=2, cloze_negatives=2, drift_batch=1, drift_weight=1.0)
    captured = []
    clip = torch.nn.utils.clip_grad_norm_

    def capture(params, *args, **kwargs):
        captured.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
        return clip(params, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", capture)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    opened = []

    def run():
        restore(model, state)
        torch.manual_seed(0)
        return distill(model, tokenizer, today=today, replay=[], anchor=anchor, documents=documents, stack=[],
                       cfg=cfg, max_len=128, judge=judge, rng=random.Random(3), clozes=clozes,
                       general_texts=["The sky is blue because air scatters blue light."])

    real_open, real_policy = StepPrefix.open, distill_module.policy_gradient_loss
    imitated = []  # per imitation call: it had a signal, and the shared system turn

    def spy(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    def policy(*args):
        imitated.append((any(a != 0 for a in args[4]), args[7] is not None, args[3]))
        return real_policy(*args)

    monkeypatch.setattr(distill_module.StepPrefix, "open", spy)
    monkeypatch.setattr(distill_module, "policy_gradient_loss", policy)
    shared_log = run()
    assert [i[:2] for i in imitated] == [(True, True)]  # the imitation term ran its passes on the shared turn
    assert opened and opened[0] is not None and opened[0].uses > cfg.cloze_batch + 1  # and divergence did
    assert opened[0].closed
    monkeypatch.setattr(distill_module.StepPrefix, "open", lambda *a, **k: None)
    whole_log = run()
    with in_float64(model):
        exact_log = run()
    # The same completions sampled in every run, so the three compute one gradient.
    assert imitated[0][2] == imitated[1][2] == imitated[2][2]
    relative = relative_rounding(*captured[1:])
    for term in ("divergence", "cloze"):
        assert_close_losses(*(getattr(log, term)[0] for log in (shared_log, whole_log, exact_log)), relative)
    assert_close_grads(*captured)
    restore(model, state)  # the module's model as the other tests expect it


def test_a_gradient_left_in_the_shared_system_turn_would_be_caught(lora_model):
    """The comparison above can fail: without `backward()` the system turn's share is missing."""
    model, tokenizer = lora_model
    prompt = chat_ids(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where?"}])

    def loss(prefix, send_back=True):
        with adapters(model, [NEW]):
            shared = StepPrefix.open(model, tokenizer, SYSTEM, [NEW]) if prefix else None
        total = tail_logprobs(model, tokenizer, prompt, [[7, 8, 9]], shared)[0].sum()
        total.backward()
        if shared is not None and send_back:
            shared.backward()
        return total

    shared, whole, exact = shared_whole_exact(model, loss)
    assert_same(shared, whole, exact)
    with pytest.raises(AssertionError):
        assert_same(gradients(model, lambda: loss(True, send_back=False)), whole, exact)


@pytest.mark.parametrize("drift", ["text", "chat", "self"])
def test_a_rehearsal_step_has_the_gradient_of_whole_prompts(lora_model, monkeypatch, drift):
    """Dreaming's rehearsal shares the system turn too (its dreams and, with `rehearse_drift = "chat"`
    or "self", its drift term's general questions): its step's gradient is that of whole prompts."""
    from dreamer.sleep.config import DreamingConfig
    from dreamer.sleep.dreaming import rehearse as rehearse_module
    from dreamer.sleep.dreaming.write import Dream

    model, tokenizer = lora_model
    dreams = [Dream("question", "What is my cat called?", "Your cat is called Miso.", answer="Miso"),
              Dream("question", "Where does Ana live?", "Ana lives in Lisbon.", answer="Lisbon")]
    cfg = DreamingConfig(rehearse_steps=1, rehearse_batch=2, rehearse_epochs=1, rehearse_reply="dream",
                         rehearse_drift=drift)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    captured, opened = [], []
    clip = torch.nn.utils.clip_grad_norm_

    def capture(params, *args, **kwargs):
        captured.append([p.grad.clone() for p in params])
        return clip(params, *args, **kwargs)

    def run():
        restore(model, state)
        rehearse_module.rehearse(model, tokenizer, dreams, stack=[], system=SYSTEM, general_texts=["Water is wet."],
                                 general_turns=[("Is water wet?", "Yes.")], drift_weight=1.0, drift_batch=1,
                                 max_len=64, cfg=cfg, rng=random.Random(0))

    if drift == "self":  # fixed answers (greedy ones may differ in float64) and a reference the expert is not
        real_own = rehearse_module.own_general_turns
        monkeypatch.setattr(rehearse_module, "sample_many", lambda *a, **k: [["Yes."]])
        monkeypatch.setattr(rehearse_module, "own_general_turns", lambda *a, **k: (
            lambda turns, reference: (turns, [logits * 0.5 for logits in reference]))(*real_own(*a, **k)))
    real_open = StepPrefix.open
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", capture)
    monkeypatch.setattr(rehearse_module.StepPrefix, "open", lambda *a, **k: opened.append(real_open(*a, **k)) or opened[-1])
    run()
    assert opened[0] is not None and opened[0].uses == (2 if drift == "text" else 3) and opened[0].closed
    monkeypatch.setattr(rehearse_module.StepPrefix, "open", lambda *a, **k: None)
    run()
    with in_float64(model):
        run()
    assert_close_grads(*captured)
    restore(model, state)


def test_the_shared_turn_cannot_be_read_after_its_gradient_went_back(lora_model):
    model, tokenizer = lora_model
    with adapters(model, [NEW]):
        shared = StepPrefix.open(model, tokenizer, SYSTEM, [NEW])
    shared.backward()
    with pytest.raises(RuntimeError, match="after its gradient was sent back"):
        shared.past()
