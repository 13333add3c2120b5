"""`TransformersRuntime`: chat on a Hugging Face model with the PEFT adapter stack.

    dreamer chat --runtime transformers      # the train_model (or the embedded model's f32 cache)

For users who chat on a GPU with a Hugging Face model. It implements the same
`agent.runtime.ChatRuntime` as the llama.cpp runtime and swaps the stack the same way, but
reads each expert's PEFT folder instead of its GGUF (`adapter_format = "peft"`), so the
manifest the chat watches serves both. It lives in `dreamer` because `agent` never imports torch.

Swapping: every expert is loaded once under its own adapter name and checked against the base
(dreamer's metadata.json); then exactly the stack's experts are made active together, each
with its scale, and those no longer in the stack are deleted. A failed load deletes what it
had added and keeps the running stack. Generation and swaps share one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from agent.models import ModelError
from agent.runtime import Adapter


class _StopOn:
    """A transformers StoppingCriteria that ends generation once `event` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class RecentRepeatPenalty:
    """llama.cpp's repeat penalty (penalty_last_n 64): a token among the last `window` tokens of the
    context has its logit divided by `penalty` (multiplied, when negative). transformers' own
    `repetition_penalty` covers the whole prompt, which would push the reply away from the very
    names and facts its context holds."""

    def __init__(self, penalty: float, window: int = 64) -> None:
        self.penalty, self.window = penalty, window

    def __call__(self, input_ids, scores):
        recent = input_ids[:, -self.window:]
        picked = scores.gather(1, recent)
        picked = torch.where(picked > 0, picked / self.penalty, picked * self.penalty)
        return scores.scatter(1, recent, picked)


class TransformersRuntime:
    adapter_format = "peft"

    def __init__(self, source: str, name: str = "", device: str | None = None) -> None:
        from transformers import AutoModelForCausalLM

        from dreamer.lm.chat_tokenizer import align_generation, load_chat_tokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            self.tokenizer = load_chat_tokenizer(source)
            self.base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
            align_generation(self.base, self.tokenizer)
        except (OSError, ValueError) as err:
            raise ModelError(f"transformers could not load {source}: {err}") from None
        self.base.to(self.device).eval()
        self.model = self.base  # a PeftModel once an expert is loaded
        self.name = name or Path(source).name
        self.adapters: list[Adapter] = []
        self.finish_reason: str | None = None  # of the last reply: "length" when cut at max_tokens
        self._names: dict[Path, str] = {}
        self._counter = 0
        self._lock = threading.Lock()

    # --- generation ----------------------------------------------------------
    def stream(self, messages: Sequence[dict], *, max_tokens: int, temperature: float, top_p: float = 1.0,
               min_p: float = 0.0, repeat_penalty: float = 1.0, stop=None) -> Iterator[str]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        stop = stop or threading.Event()
        finished = threading.Event()  # set when the caller leaves early, so generate() ends too
        with self._lock:
            ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)["input_ids"].to(self.device)
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "min_p": min_p or None,
                        "top_k": 40} if temperature > 0 else {"do_sample": False}  # top_k as llama.cpp's
            if repeat_penalty != 1.0:  # as llama.cpp applies it: the last 64 tokens, not the whole prompt
                from transformers import LogitsProcessorList

                sampling["logits_processor"] = LogitsProcessorList([RecentRepeatPenalty(repeat_penalty)])
            self.finish_reason = None
            produced: list[tuple[int, int]] = []  # (tokens generated, the last one)
            errors: list[BaseException] = []

            def run() -> None:
                try:
                    with torch.no_grad():
                        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                            streamer=streamer, pad_token_id=self.tokenizer.pad_token_id,
                                            stopping_criteria=StoppingCriteriaList([_StopOn(stop), _StopOn(finished)]),
                                            **sampling)
                    produced.append((out.shape[1] - ids.shape[1], int(out[0, -1])))
                except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                    errors.append(err)
                    streamer.end()

            worker = threading.Thread(target=run, name="dreamer-hf-generate", daemon=True)
            worker.start()
            drained = False
            try:
                for piece in streamer:
                    if stop.is_set():
                        return
                    if piece:
                        yield piece
                drained = True
            finally:
                finished.set()
                if not drained:  # left early: read on to the end signal, which generate() sends as it stops
                    for _ in streamer:
                        pass
                worker.join()
            if errors:
                raise ModelError(f"generation failed: {errors[0]}")
            if drained and produced:
                length, last = produced[0]
                ended = last in {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}  # its own end, at the limit
                self.finish_reason = "length" if length >= max_tokens and not ended else "stop"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- adapter stack ---------------------------------------------------------
    def load_adapters(self, adapters: Sequence[Adapter]) -> None:
        """Make exactly `adapters` active (with their scales); [] = the base alone."""
        from peft import PeftModel

        from dreamer.lm.weights import AdapterMismatch, base_fingerprint, check_adapter

        with self._lock:
            added: list[str] = []
            try:
                for adapter in adapters:
                    path = Path(adapter.path)
                    if path in self._names:
                        continue
                    check_adapter(path, base_fingerprint(self.base))
                    self._counter += 1
                    name = f"expert{self._counter}"
                    if self.model is self.base:
                        self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=name).eval()
                    else:
                        self.model.load_adapter(str(path), adapter_name=name)
                    self.model.to(self.device)
                    added.append(name)
                    self._names[path] = name
            except (AdapterMismatch, OSError, ValueError, RuntimeError) as err:
                for path, name in list(self._names.items()):
                    if name in added:
                        self._forget(path)
                raise ModelError(f"could not load the adapter stack: {err}; the previous memory stays active") from None
            keep = {Path(a.path) for a in adapters}
            for path in [p for p in self._names if p not in keep]:
                self._forget(path)
            if adapters:
                self.model.base_model.set_adapter([self._names[Path(a.path)] for a in adapters])
                for adapter in adapters:
                    for module in self.model.modules():
                        if hasattr(module, "set_scale"):
                            module.set_scale(self._names[Path(adapter.path)], adapter.scale)
            self.adapters = list(adapters)

    def _forget(self, path: Path) -> None:
        """Free one expert; the last one gone, the model is the bare base again."""
        name = self._names.pop(path)
        if not self._names:
            self.model = self.model.unload()  # removes the LoRA layers, returns the base model
            self.base = self.model
            return
        if name in self.model.base_model.active_adapters:
            self.model.base_model.set_adapter(list(self._names.values())[:1])
        self.model.delete_adapter(name)
