"""The night's end of turn comes from the chat template, not from whatever eos a loader guessed."""

import pytest
import torch
from transformers import AutoTokenizer, LogitsProcessorList

from dreamer.lm.chat_tokenizer import align_generation, end_of_turn_id, load_chat_tokenizer
from dreamer.sleep.seeding.distill import continuation_ids
from dreamer.sleep.config import LoadConfig
from dreamer.lm.weights import load_base, plan_device
from dreamer.bench.tiny import make_tiny_model_dir, make_tokenizer


def test_end_of_turn_is_what_closes_an_assistant_message():
    tokenizer = make_tokenizer()
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == "<|im_end|>"


LLAMA3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
          "{% endfor %}")


@pytest.mark.parametrize("template, end", [
    (LLAMA3, "<|eot_id|>"),  # an end of turn that is not the tokenizer's eos
    ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n<|im_end|>\n{% endfor %}", "<|im_end|>"),
    ("{% for m in messages %}{{ m['content'] }} {{ eos_token }}{% endfor %}", "<|im_end|>"),  # Llama 2's ' ' + eos
])
def test_end_of_turn_for_other_templates(template, end):
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tokenizer.chat_template = template
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer)) == end


def test_a_template_that_refuses_the_probe_chat_gives_none():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    assert end_of_turn_id(tokenizer) is None


def test_generation_keeps_the_configs_other_stops():
    from types import SimpleNamespace

    tokenizer = make_tokenizer()
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[0, 1], pad_token_id=None))
    align_generation(model, tokenizer)
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, 0, 1]
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_a_template_without_an_end_token_gives_none():
    tokenizer = make_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_id(tokenizer) is None
    tokenizer.chat_template = None
    assert end_of_turn_id(tokenizer) is None


def wrong_eos_dir(tmp_path):
    """A model folder whose tokenizer and generation config say eos = <|im_start|>, as
    transformers 5.17 reads the embedded SmolLM2 GGUF (no pad token either)."""
    path = make_tiny_model_dir(tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.eos_token = "<|im_start|>"
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).eos_token == "<|im_start|>"
    return path


def test_a_wrong_eos_is_corrected_for_training_and_sampling(tmp_path):
    path = wrong_eos_dir(tmp_path)
    tokenizer = load_chat_tokenizer(str(path))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == im_end and tokenizer.pad_token_id == im_end
    assert continuation_ids(tokenizer, "Lisbon")[-1] == im_end  # replies are trained to close the turn

    model, tokenizer = load_base(str(path), plan_device(LoadConfig(device="cpu")))
    assert tokenizer.eos_token_id == im_end
    assert model.generation_config.eos_token_id == im_end and model.generation_config.pad_token_id == im_end
    # generate() now stops where the turn ends: make the model say <|im_end|> and nothing follows.
    def say_end(input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, im_end] = 0.0
        return forced

    ids = torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                                      return_dict=False)])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         logits_processor=LogitsProcessorList([say_end]))
    assert out[0, ids.shape[1]:].tolist() == [im_end]


def test_the_transformers_chat_runtime_stops_at_the_end_of_turn_too(tmp_path):
    from dreamer.morning.hf_runtime import TransformersRuntime

    runtime = TransformersRuntime(str(wrong_eos_dir(tmp_path)), device="cpu")
    im_end = runtime.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert runtime.tokenizer.eos_token_id == im_end
    assert runtime.base.generation_config.eos_token_id == im_end
