"""KV cache of the teacher's long shared prefix: the system prompt that holds the day.

Every request the teacher answers during a night starts with the same system turn (the day's
conversations), so its keys and values are computed once per adapter stack and copied for each
use; only the question (and the reply) are encoded again. A prompt that does not start with the
cached prefix is simply encoded in full. Used by memory writing (generation) and distillation
(teacher logits); outputs are identical to encoding the whole prompt.
"""

from __future__ import annotations

import copy

import torch

MIN_PREFIX_TOKENS = 32  # below this the copy costs about what it saves


class PromptCache:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.entries: dict[tuple, tuple[list[int], object]] = {}

    def lookup(self, model, messages: list[dict], names, prompt: list[int], copies: int = 1):
        """(prefix length, a private copy of its cache expanded to `copies` rows) or None."""
        if not messages or messages[0]["role"] != "system":
            return None
        key = (tuple(names or ()), messages[0]["content"])
        if key not in self.entries:
            prefix = self.tokenizer.apply_chat_template(messages[:1], tokenize=True, return_dict=False)
            if len(prefix) < MIN_PREFIX_TOKENS:
                return None
            with torch.no_grad():
                ids = torch.tensor([prefix], device=model.device)
                self.entries[key] = (prefix, model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values)
        prefix, cache = self.entries[key]
        if len(prompt) <= len(prefix) or prompt[: len(prefix)] != prefix:
            return None
        private = copy.deepcopy(cache)
        if copies > 1:
            private.batch_repeat_interleave(copies)
        return len(prefix), private
