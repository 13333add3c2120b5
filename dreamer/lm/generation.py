"""Generation every stage uses: chat prompts as token ids, and batched sampling with an adapter stack.

    sample_many(model, tokenizer, chats, names, n=2, max_new_tokens=48, temperature=0.7)

`names` picks the LoRA experts active while sampling (None: the base alone); chats that share
a prefix (the teacher's day) can reuse its KV cache (dreamer.lm.prompt_cache).
"""

from __future__ import annotations

import torch

from dreamer.lm.prompt_cache import PromptCache
from dreamer.lm.weights import adapters

MAX_ROWS = 32  # sequences decoded together in one generate() call


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


@torch.no_grad()
def sample_many(model, tokenizer, conversations: list[list[dict]], names, *, n: int, max_new_tokens: int,
                temperature: float | None, cache: PromptCache | None = None) -> list[list[str]]:
    """n continuations for each chat prompt, decoded together in one batch (temperature None = greedy).

    Decoding a small model on a CPU costs about the same per step for one sequence or thirty,
    so the night batches its prompts. When every prompt starts with the same long system turn
    (the day), that prefix is encoded once (`cache`) and each row is laid out as
    prefix + padding + question, the padding masked out.
    """
    if not conversations:
        return []
    per_call = max(1, MAX_ROWS // n)
    if len(conversations) > per_call:  # bound the KV cache: a long day times many rows adds up
        return [row for start in range(0, len(conversations), per_call)
                for row in sample_many(model, tokenizer, conversations[start:start + per_call], names, n=n,
                                       max_new_tokens=max_new_tokens, temperature=temperature, cache=cache)]
    prompts = [chat_ids(tokenizer, messages) for messages in conversations]
    pad = tokenizer.pad_token_id
    kwargs = {"do_sample": False} if temperature is None else {"do_sample": True, "temperature": temperature, "top_p": 0.95}
    with adapters(model, names):
        prefixes = [cache.prefix(model, m, names, p) if cache is not None else None
                    for m, p in zip(conversations, prompts)]
        shared = prefixes[0] is not None and all(q == prefixes[0] for q in prefixes)
        start = len(prefixes[0]) if shared else 0
        width = max(len(p) - start for p in prompts)
        rows, masks = [], []
        for prompt in prompts:
            tail = prompt[start:]
            gap = width - len(tail)
            rows += [prompt[:start] + [pad] * gap + tail] * n  # left padding when nothing is shared
            masks += [[1] * start + [0] * gap + [1] * len(tail)] * n
        ids = torch.tensor(rows, device=model.device)
        if shared:
            kwargs["past_key_values"] = cache.past(conversations[0], names, copies=len(rows))
        out = model.generate(
            input_ids=ids, attention_mask=torch.tensor(masks, device=model.device), max_new_tokens=max_new_tokens,
            pad_token_id=pad, **kwargs,
        )
    texts = [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True).strip() for row in out]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def sample(model, tokenizer, messages, names, *, n: int, max_new_tokens: int, temperature: float | None,
           cache: PromptCache | None = None) -> list[str]:
    """n continuations of one chat prompt (see `sample_many`)."""
    return sample_many(model, tokenizer, [messages], names, n=n, max_new_tokens=max_new_tokens,
                       temperature=temperature, cache=cache)[0]
