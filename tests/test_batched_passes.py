"""The distillation's batched passes give what one pass per sequence gives."""

import random

import pytest
import torch
from peft import LoraConfig, get_peft_model

from dreamer.sleep.seeding.distill import batch_reply_logits, divergence_loss, reply_logits
from dreamer.sleep.seeding.divergences import token_divergence
from dreamer.lm.scoring import pad_id
from dreamer.sleep.seeding.memories import Example
from dreamer.lm.generation import chat_ids
from dreamer.lm.prompt_cache import PromptCache
from dreamer.sleep.config import DistillConfig, LoadConfig
from dreamer.lm.weights import NEW, adapters, load_base, plan_device
from dreamer.bench.tiny import make_tiny_model_dir


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    base, tokenizer = load_base(str(make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m")),
                                plan_device(LoadConfig(device="cpu")))
    torch.manual_seed(0)
    # Random A and B, so the expert changes the logits and a wrong row or position would show.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(base, config, adapter_name=NEW), tokenizer


def test_batch_reply_logits_match_one_pass_each(lora_model):
    model, tokenizer = lora_model
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 300) for _ in range(n)] for n in (5, 17, 1, 9)]
    replies = [[rng.randrange(3, 300) for _ in range(n)] for n in (3, 1, 7, 4)]
    with torch.no_grad():
        batched = batch_reply_logits(model, prompts, replies, pad_id(tokenizer))
        for prompt, reply, got in zip(prompts, replies, batched):
            want = reply_logits(model, prompt, reply)
            assert got.shape == want.shape == (1, len(reply), model.config.vocab_size)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_divergence_gradient_matches_one_pass_each(lora_model):
    """The batched divergence term trains the expert exactly as the per-example loop did."""
    model, tokenizer = lora_model
    ask = [{"role": "user", "content": q} for q in ("Where does Ana live?", "What is my cat called? Tell me.")]
    examples = [Example("today", [m], [{"role": "system", "content": "Ana lives in Lisbon. The cat is Miso."}, m],
                        None, ["x"]) for m in ask]
    replies = [tokenizer("In Lisbon.", add_special_tokens=False)["input_ids"],
               tokenizer("Miso, I think", add_special_tokens=False)["input_ids"]]
    cfg = DistillConfig(divergence="jsd", beta=0.5)
    params = [p for n, p in model.named_parameters() if "lora_" in n]

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in params]

    batched = divergence_loss(model, tokenizer, examples, replies, [], cfg, 256, PromptCache(tokenizer))
    got = grads(batched.sum())
    reference = []
    for example, reply in zip(examples, replies):
        with torch.no_grad(), adapters(model, None):
            teacher = reply_logits(model, chat_ids(tokenizer, example.teacher), reply)
        with adapters(model, [NEW]):
            student = reply_logits(model, chat_ids(tokenizer, example.student), reply)
        reference.append(token_divergence(student, teacher, "jsd", beta=0.5))
    want = grads(torch.stack(reference).sum())
    torch.testing.assert_close(batched.detach(), torch.stack(reference).detach(), rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("pass_batch", [1, 2, 8])
def test_policy_gradient_matches_one_pass_each(lora_model, pass_batch):
    """The imitation term's REINFORCE loss, `pass_batch` completions a pass, against one pass each."""
    from dreamer.sleep.seeding.distill import policy_gradient_loss, through_end

    model, tokenizer = lora_model
    prompt = chat_ids(tokenizer, [{"role": "user", "content": "My sister Ana lives in"}])
    pad = tokenizer.pad_token_id
    completions = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (" Lisbon.", " a city", " Porto, I think")]
    completions[1] = completions[1] + [tokenizer.eos_token_id, pad, pad]  # a row that ended, padded by generate()
    advantages = [0.7, -0.2, 0.0]  # the zero one is skipped: no signal
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    model.zero_grad(set_to_none=True)
    loss = policy_gradient_loss(model, tokenizer, prompt, completions, advantages, [], pass_batch)
    loss.backward()
    got = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    want_loss = torch.zeros(())
    with adapters(model, [NEW]):
        for completion, advantage in zip(completions, advantages):
            completion = through_end(completion, tokenizer.eos_token_id)  # the end of turn is scored, the padding not
            logits = reply_logits(model, prompt, completion)
            logprob = torch.log_softmax(logits, -1).gather(-1, torch.tensor([completion])[..., None])
            want_loss = want_loss - advantage * logprob.mean() / len(completions)
    want_loss.backward()
    torch.testing.assert_close(loss.detach(), want_loss.detach(), rtol=1e-4, atol=1e-6)
    for g, w in zip(got, [p.grad for p in params]):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-6)
    assert policy_gradient_loss(model, tokenizer, prompt, completions, [0.0] * 3, []).item() == 0.0


def test_batch_reply_logits_keep_the_models_own_head():
    """A head that soft-caps its logits (Gemma 2) does so in the batched pass too."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0,
                          initializer_range=0.5)
    model = Gemma2ForCausalLM(config).eval()
    prompts, replies = [[5, 6, 7, 8], [9, 10]], [[11, 12], [13, 14, 15]]
    with torch.no_grad():
        batched = batch_reply_logits(model, prompts, replies, 0)
        for prompt, reply, got in zip(prompts, replies, batched):
            assert got.abs().max() <= 2.0  # capped
            torch.testing.assert_close(got, reply_logits(model, prompt, reply), rtol=1e-4, atol=1e-4)


class IgnoresLogitsToKeep(torch.nn.Module):
    """A model whose forward takes `logits_to_keep` into **kwargs and returns every position."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.device = model.device

    def forward(self, logits_to_keep=None, **kwargs):
        return self.model(**kwargs)


def test_reply_logits_from_a_model_without_logits_to_keep(lora_model):
    model, tokenizer = lora_model
    plain = IgnoresLogitsToKeep(model)
    prompts, replies = [[5, 6, 7, 8], [9, 10]], [[11, 12], [13, 14, 15]]
    with torch.no_grad():
        for prompt, reply, got in zip(prompts, replies, batch_reply_logits(plain, prompts, replies, pad_id(tokenizer))):
            want = reply_logits(model, prompt, reply)
            torch.testing.assert_close(reply_logits(plain, prompt, reply), want)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_distill_doctests():
    import doctest

    from dreamer.sleep.seeding import distill

    result = doctest.testmod(distill)
    assert result.attempted > 0 and result.failed == 0


def test_tail_logprobs_share_the_prompt_and_match_a_full_pass_per_tail(lora_model):
    """The tails after one cached prompt: what prompt + tail encoded whole gives, gradients included."""
    from dreamer.lm.scoring import tail_logprobs

    model, tokenizer = lora_model
    rng = random.Random(1)
    prompt = [rng.randrange(3, 300) for _ in range(23)]
    tails = [[rng.randrange(3, 300) for _ in range(n)] for n in (4, 1, 6)]
    got = tail_logprobs(model, tokenizer, prompt, tails)
    for tail, mine in zip(tails, got):
        logits = model(input_ids=torch.tensor([prompt + tail])).logits[0, len(prompt) - 1 : -1].float()
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tail)[:, None]).squeeze(-1)
        torch.testing.assert_close(mine, want, rtol=1e-4, atol=1e-4)
        grads = [torch.autograd.grad(x.sum(), [p for n, p in model.named_parameters() if "lora_B" in n][0],
                                     retain_graph=True)[0]
                 for x in (mine, want)]
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)
