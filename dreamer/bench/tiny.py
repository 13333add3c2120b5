"""A tiny Llama and tokenizer built in-process (no download): the fast tests' model, and `dreamer bench --quick`'s.

`make_tiny_model_dir(path)` writes a regular Hugging Face folder (config, safetensors,
tokenizer with a ChatML template like SmolLM2's), so the code under test loads it exactly as it
loads a real model, and its chat twin `model.gguf`: the same weights in llama.cpp's layout and
names (float32, q/k rows permuted as llama.cpp's converter does), which deep sleep folds the
nights into (dreamer.morning.fold). The twin has no tokenizer: llama.cpp cannot chat with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    write_chat_twin(model, Path(path) / TWIN)
    return Path(path)


TWIN = "model.gguf"


def chat_twin(model_dir: str | Path) -> Path | None:
    """The tiny model's GGUF twin, if `model_dir` is a tiny model folder."""
    path = Path(model_dir) / TWIN
    return path if path.is_file() else None


def write_chat_twin(model, path: Path, tokenizer=None) -> Path:
    """`model`'s weights as llama.cpp names and lays them out (any architecture the export knows);
    with `tokenizer` (a byte-level BPE, as the tiny model's), its vocabulary too, so transformers can
    load the file back as a whole model (the one-file training path's test)."""
    import gguf

    from dreamer.morning.export_gguf import ARCHITECTURES, permute_rows

    cfg = model.config
    arch_name, permute = ARCHITECTURES[type(model).__name__]
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    if tokenizer is not None:
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        writer.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else 10000.0)
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([token for token, _ in vocab])
        writer.add_token_types([gguf.TokenType.CONTROL if token in SPECIAL else gguf.TokenType.NORMAL
                                for token, _ in vocab])
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
        writer.add_bos_token_id(tokenizer.bos_token_id)
        writer.add_eos_token_id(tokenizer.eos_token_id)
        writer.add_pad_token_id(tokenizer.pad_token_id)
        writer.add_chat_template(tokenizer.chat_template)
    for hf_name, tensor in model.state_dict().items():
        weight = tensor.detach().float().numpy()
        if permute and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in hf_name else cfg.num_key_value_heads
            weight = permute_rows(weight, heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None or (hf_name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        writer.add_tensor(name, np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return path
