"""The transformers runtime: streams, stops, and swaps the PEFT stack like the llama.cpp one."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from agent.models import ModelError
from agent.runtime import Adapter
from agent.stack_watch import StackWatcher
from dreamer.morning.hf_runtime import TransformersRuntime
from dreamer.lm.weights import base_fingerprint
from storage.manifest import write_manifest
from dreamer.bench.tiny import make_tiny_model_dir

PROMPT = [{"role": "user", "content": "Where does my sister live?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def expert(model_dir, folder, seed):
    """A strong random LoRA saved as a dreamer expert (PEFT folder + metadata.json)."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    model.save_pretrained(folder)
    (folder / "metadata.json").write_text(json.dumps({"base": base_fingerprint(base)}))
    return folder


def reply(runtime) -> str:
    return "".join(runtime.stream(PROMPT, max_tokens=12, temperature=0.0))


def test_swaps_the_stack_and_keeps_it_on_failure(model_dir, tmp_path):
    runtime = TransformersRuntime(str(model_dir), device="cpu")
    base_reply = reply(runtime)
    assert base_reply and runtime.count_tokens("Lisbon") >= 1
    one, two = expert(model_dir, tmp_path / "n1", 1), expert(model_dir, tmp_path / "n2", 2)

    runtime.load_adapters([Adapter(one)])
    with_one = reply(runtime)
    assert with_one != base_reply
    runtime.load_adapters([Adapter(one), Adapter(two)])
    assert sorted(runtime.model.base_model.active_adapters) == ["expert1", "expert2"]
    with_both = reply(runtime)
    assert with_both != with_one

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text(json.dumps({"base": {"hidden_size": 999}}))
    with pytest.raises(ModelError, match="previous memory stays active"):
        runtime.load_adapters([Adapter(one), Adapter(broken)])
    assert reply(runtime) == with_both and [a.path for a in runtime.adapters] == [one, two]

    runtime.load_adapters([Adapter(one)])  # a rollback: night 2 is freed
    assert list(runtime.model.peft_config) == ["expert1"] and reply(runtime) == with_one
    runtime.load_adapters([Adapter(one, scale=0.0)])  # a scale of 0 is the base again
    assert reply(runtime) == base_reply
    runtime.load_adapters([])
    assert runtime.model is runtime.base and not hasattr(runtime.model, "peft_config")
    assert reply(runtime) == base_reply


def test_stop_ends_a_reply_early(model_dir):
    runtime = TransformersRuntime(str(model_dir), device="cpu")
    stop = threading.Event()
    pieces = []
    for piece in runtime.stream(PROMPT, max_tokens=200, temperature=0.0, stop=stop):
        pieces.append(piece)
        stop.set()
    assert len(pieces) == 1
    assert reply(runtime)  # still usable: the generation thread ended and the lock is free


def test_the_watcher_hands_it_peft_folders(model_dir, tmp_path):
    runtime = TransformersRuntime(str(model_dir), device="cpu")
    one = expert(model_dir, tmp_path / "n1", 1)
    write_manifest({"version": 1, "night": 1, "experts": [
        {"night": 1, "day": "2026-11-21", "path": str(one), "gguf_path": None, "scale": 1.0}]}, tmp_path)
    watcher = StackWatcher(runtime, tmp_path)
    swap = watcher.apply(watcher.pending())
    assert swap.label == "night 1" and runtime.adapters == [Adapter(one)]


def test_the_repeat_penalty_looks_at_the_last_tokens_only_as_llama_cpp_does():
    from dreamer.morning.hf_runtime import RecentRepeatPenalty

    scores = torch.tensor([[2.0, -2.0, 1.0, 3.0]])
    ids = torch.tensor([[3, 0, 1]])  # token 3 is outside a window of 2
    out = RecentRepeatPenalty(2.0, window=2)(ids, scores.clone())
    assert out.tolist() == [[1.0, -4.0, 1.0, 3.0]]


def test_a_reply_that_runs_to_the_limit_is_cut(model_dir):
    runtime = TransformersRuntime(str(model_dir), device="cpu")
    "".join(runtime.stream(PROMPT, max_tokens=3, temperature=0.0))
    assert runtime.finish_reason == "length"  # the tiny random model never ends within 3 tokens
