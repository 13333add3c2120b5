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

    def prefix(self, model, messages: list[dict], names, prompt: list[int]) -> list[int] | None:
        """The cached prefix ids if `prompt` starts with them (computing the cache once), else None."""
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
        prefix = self.entries[key][0]
        return prefix if len(prompt) > len(prefix) and prompt[: len(prefix)] == prefix else None

    def past(self, messages: list[dict], names, copies: int = 1):
        """A private copy of the prefix's cache (found by `prefix`), expanded to `copies` rows."""
        private = copy.deepcopy(self.entries[(tuple(names or ()), messages[0]["content"])][1])
        if copies > 1:
            private.batch_repeat_interleave(copies)
        return private
