"""Scoring every stage uses: prompts as ids, padded batches, log-probabilities of continuations.

Used by the evaluation (dreamer.eval.evaluate), the gate, the cloze probes and the distillation.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

KL_BATCH = 4  # texts per forward pass in general_drift: 2 x [4, 256, 49k] fp32 logits ~ 0.4 GB

@contextmanager
def inference(model):
    """eval() mode (no dropout) and no_grad inside; the caller's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def model_device(model) -> torch.device:
    # PeftModel and NF4 models both keep their weights on the compute device.
    return next(model.parameters()).device


def prompt_ids(tokenizer, question: str, system: str | None = None) -> list[int]:
    """Token ids of the chat template applied to one user turn (the question), ready to reply.

    Closed book by default; `system` puts a system turn first (the sleep's teacher uses it to
    check a probe with the day in context).
    """
    turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    # The template already wrote any special tokens it wants; don't let the tokenizer add a BOS.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def right_padded(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pad is None else pad  # any id works: padded positions are masked and never read


def option_scores(model, tokenizer, question: str, options: list[str], system: str | None = None) -> list[float]:
    """Mean per-token log-probability of each option as the whole assistant reply.

    Each option is tokenized on its own and appended to the same prompt ids, so all options
    are scored after an identical prefix (tokenizing prompt + option as one string could merge
    tokens across the boundary). One right-padded batch: with a causal mask the real tokens
    never attend to the padding after them, so a score does not depend on the other options.
    """
    prompt = prompt_ids(tokenizer, question, system)
    tails = [tokenizer(option, add_special_tokens=False)["input_ids"] for option in options]
    for option, tail in zip(options, tails):
        if not tail:
            raise ValueError(f"option {option!r} has no tokens")
    with inference(model):
        return [picked.mean().item() for picked in tail_logprobs(model, tokenizer, prompt, tails)]


def tail_logprobs(model, tokenizer, prompt: list[int], tails: list[list[int]], prefix=None) -> list[torch.Tensor]:
    """Per-token log-probabilities of each tail after the same `prompt` ids, one per tail.

    The prompt is encoded once and its KV cache shared by every tail: the tails (a few tokens
    each: answer options, a blanked word) then cost only their own tokens, where encoding
    prompt + tail per row cost the prompt (the chat's system prompt and the question, a hundred
    tokens and more) once per option, and the vocabulary projection of every prompt position.
    Identical in exact arithmetic to one right-padded pass over prompt + tail per row; with a
    causal mask a tail never sees another's tokens or the padding. Gradients flow when the
    caller allows them (the sleep's cloze recall term trains on these; `option_scores` wraps
    them in `inference`). With `prefix` (a training step's `dreamer.lm.step_prefix.StepPrefix`),
    a prompt that begins with its system turn encodes only what follows it.
    """
    device = model_device(model)
    if len(prompt) < 2:
        raise ValueError("tail_logprobs needs a prompt of at least two tokens")
    # The prompt's last token is encoded with the tails: its logits predict each tail's first token.
    shared = prefix is not None and prefix.covers(prompt[:-1])
    head, extra = (prompt[len(prefix.ids):-1], {"past_key_values": prefix.past()}) if shared else (prompt[:-1], {})
    past = model(input_ids=torch.tensor([head], device=device), use_cache=True, logits_to_keep=1, **extra).past_key_values
    if len(tails) > 1:
        past.batch_repeat_interleave(len(tails))
    ids, mask = right_padded([[prompt[-1]] + tail for tail in tails], pad_id(tokenizer), device)
    mask = torch.cat([torch.ones(len(tails), len(prompt) - 1, dtype=mask.dtype, device=device), mask], dim=1)
    width = max(len(tail) for tail in tails)
    logits = model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=True).logits[:, :width]
    logprobs = F.log_softmax(logits.float(), dim=-1)
    return [logprobs[row, :len(tail)].gather(-1, torch.tensor(tail, device=logprobs.device)[:, None]).squeeze(-1)
            for row, tail in enumerate(tails)]


def text_batches(tokenizer, texts: list[str], max_len: int, device):
    """(ids, mask) batches of at most KL_BATCH right-padded texts, each cut to `max_len` tokens."""
    if not texts:
        raise ValueError("no texts")
    encoded = [tokenizer(text, truncation=True, max_length=max_len)["input_ids"] for text in texts]
    encoded = [ids for ids in encoded if ids]
    if not encoded:
        raise ValueError("the texts have no tokens")
    for start in range(0, len(encoded), KL_BATCH):
        yield right_padded(encoded[start : start + KL_BATCH], pad_id(tokenizer), device)
