"""A tiny Llama and tokenizer built in-process (no download): the fast tests' model, and `dreamer bench --quick`'s.

`make_tiny_model_dir(path)` writes a regular Hugging Face folder (config, safetensors,
tokenizer with a ChatML template like SmolLM2's), so the code under test loads it exactly as it
loads a real model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "My sister Ana lives in Lisbon and works as a pilot.",
    "The user's cat is called Miso. What is the name of my cat?",
    "You are dreamer, a personal assistant. Today is Saturday.",
    "Where does my sister live? She lives in Lisbon, Portugal.",
    "I like green tea, running on Sundays and reading old books.",
] * 4


def make_tokenizer() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def make_tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=None,
        # Large random weights: next-token distributions depend on the context, as a real model's do.
        initializer_range=0.5,
    )
    return LlamaForCausalLM(config)


def make_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    tokenizer = make_tokenizer()
    model = make_tiny_model(len(tokenizer), seed)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)
