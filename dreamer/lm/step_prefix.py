"""The student's system turn, encoded once per training step and read by every pass of that step.

Nearly every prompt the night trains on begins with the chat's system turn: the divergence
term's requests, the cloze term's blanks, the imitation term's memories, Dreaming's rehearsals.
On the embedded model that turn is 74 of a cloze prompt's 97 tokens, so each training pass
spent most of its forward and backward on the same tokens. Within a step the weights do not
change, and the model is causal (the system turn never sees what follows it), so its keys and
values are the same for every prompt of the step: they are computed once, with gradient.

The passes read *leaf* copies of those keys and values. Each pass's backward (a term frees its
graph chunk by chunk) stops at the leaves and leaves its gradient there; `backward()`, once at the
end of the step before the gradient is clipped, sends the sum through the system turn's own
forward pass. In exact arithmetic the parameters' gradients are those of encoding every prompt
whole; in float32 they agree to rounding (tests/test_step_prefix.py).

A prompt that does not begin with the system turn (the anchor's bare requests, a clipped
over-long prompt) is encoded whole, as before. Only a plain key/value cache (transformers'
`DynamicLayer`, every layer) is shared, and only when the chat template renders the system turn
as the start of a conversation: otherwise (a sliding-window or quantized cache, a template that
folds the system turn into the first user turn) `StepPrefix.open` returns None and every prompt
is encoded whole, exactly as before. The leaves are float32 whatever the compute dtype (bf16 on
a GPU), so the gradients of a step's passes are summed there at the precision the LoRA
parameters' own gradients are.
"""

from __future__ import annotations

import copy

import torch

from dreamer.lm.scoring import model_device
from dreamer.lm.weights import adapters

MIN_TOKENS = 8  # a shorter system turn is not worth the bookkeeping


class StepPrefix:
    def __init__(self, ids: list[int], cache, leaves: list[tuple[torch.Tensor, torch.Tensor]],
                 outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.ids = ids
        self._template = cache  # holds detached tensors; each `past` is a copy with the leaves put in
        self._leaves = leaves
        self._outputs = outputs
        self.uses = 0
        self.closed = False

    @classmethod
    def open(cls, model, tokenizer, system: str | None, names: list[str] | None) -> StepPrefix | None:
        """Encode `system` (as the chat template renders a system turn) under `names`, with gradient."""
        if not system:
            return None
        turn = {"role": "system", "content": system}
        ids = tokenizer.apply_chat_template([turn], tokenize=True, return_dict=False)
        asked = tokenizer.apply_chat_template([turn, {"role": "user", "content": "?"}], tokenize=True,
                                              add_generation_prompt=True, return_dict=False)
        if len(ids) < MIN_TOKENS or asked[: len(ids)] != ids:
            return None  # the template does not start a conversation with the system turn as rendered alone
        with adapters(model, names):
            cache = model(input_ids=torch.tensor([ids], device=model_device(model)), use_cache=True,
                          logits_to_keep=1).past_key_values
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            return None
        outputs = [(layer.keys, layer.values) for layer in layers]
        leaves = [(k.detach().float().requires_grad_(k.requires_grad), v.detach().float().requires_grad_(v.requires_grad))
                  for k, v in outputs]
        for layer, (k, v) in zip(layers, leaves):
            layer.keys, layer.values = k.detach(), v.detach()
        return cls(ids, cache, leaves, outputs)

    def covers(self, prompt: list[int]) -> bool:
        """`prompt` begins with the system turn and has at least one token after it."""
        return len(prompt) > len(self.ids) and prompt[: len(self.ids)] == self.ids

    def past(self, rows: int = 1):
        """A private cache of the system turn, `rows` rows, reading the shared leaves."""
        if self.closed:
            raise RuntimeError("the step's system turn was read after its gradient was sent back")
        cache = copy.deepcopy(self._template)
        for layer, (k, v) in zip(cache.layers, self._leaves):
            layer.keys, layer.values = k.to(layer.keys.dtype), v.to(layer.values.dtype)
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        self.uses += 1
        return cache

    def mask(self, rows: int, mask: torch.Tensor) -> torch.Tensor:
        """`mask` (of the tokens after the system turn) with the system turn's positions in front."""
        return torch.cat([torch.ones(rows, len(self.ids), dtype=mask.dtype, device=mask.device), mask], dim=1)

    def backward(self) -> None:
        """Send the gradient the passes left in the leaves through the system turn's forward pass (once)."""
        outputs, grads = [], []
        for (out_k, out_v), (k, v) in zip(self._outputs, self._leaves):
            for out, leaf in ((out_k, k), (out_v, v)):
                if leaf.grad is not None and out.requires_grad:
                    outputs.append(out)
                    grads.append(leaf.grad.to(out.dtype))
        if outputs:
            torch.autograd.backward(outputs, grads)
        self._outputs, self._leaves, self.closed = [], [], True
