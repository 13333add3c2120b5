"""One model file: a GGUF's facts, sleep support refused by name, one model checked against its
training folder, `dreamer model use` and `dreamer models`, and the chat's GGUF dequantized for a night."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from dreamer.cli.main import cli
from dreamer.lm.model_files import ModelFileError, gguf_facts, require_sleep_support, same_model


def gguf_of_arch(path, arch: str):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_embedding_length(8)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.zeros((3, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_facts_support_and_same_model(tmp_path, tiny_dir):
    twin = tiny_dir / "model.gguf"
    facts = gguf_facts(twin)
    config = json.loads((tiny_dir / "config.json").read_text())
    assert (facts.architecture, facts.width, facts.layers) == ("llama", config["hidden_size"], config["num_hidden_layers"])
    require_sleep_support(facts)
    same_model(facts, tiny_dir)

    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 1}))
    with pytest.raises(ModelFileError, match="different models .*layers"):
        same_model(facts, other)

    gemma = gguf_facts(gguf_of_arch(tmp_path / "g.gguf", "gemma3"))
    with pytest.raises(ModelFileError, match="its architecture is 'gemma3'; sleep trains on llama, qwen2, qwen3"):
        require_sleep_support(gemma)
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(ModelFileError, match="not a GGUF model file"):
        gguf_facts(tmp_path / "text.gguf")


def test_model_use_sets_one_file_and_refuses_what_sleep_cannot_train(tmp_path, tiny_dir, dreamer_home):
    dreamer_home.mkdir(parents=True, exist_ok=True)
    (dreamer_home / "config.toml").write_text('train_model = "/somewhere/else"\nday_boundary = "05:00"\n')
    result = CliRunner().invoke(cli, ["model", "use", str(gguf_of_arch(tmp_path / "g.gguf", "gemma3"))])
    assert result.exit_code == 1 and "its architecture is 'gemma3'" in result.output
    assert "train_model" in (dreamer_home / "config.toml").read_text()  # nothing written

    result = CliRunner().invoke(cli, ["model", "use", str(tiny_dir / "model.gguf")])
    assert result.exit_code == 0, result.output
    assert "train_model cleared" in result.output
    from storage import load_config

    config = load_config()
    assert (config.model, config.train_model, config.day_boundary) == (str(tiny_dir / "model.gguf"), "", "05:00")

    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    assert "llama" in result.output and "sleep:       supported; trains on this file" in result.output
    assert "cpu-tiny   fits" in result.output


def test_model_use_refuses_a_training_folder_of_another_model(tmp_path, tiny_dir):
    other = tmp_path / "other"
    shutil.copytree(tiny_dir, other)
    config = json.loads((tiny_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_size": config["hidden_size"] * 2}))
    result = CliRunner().invoke(cli, ["model", "use", str(tiny_dir / "model.gguf"), "--train-model", str(other)])
    assert result.exit_code == 1 and "are different models (width" in result.output
    result = CliRunner().invoke(cli, ["model", "use", str(tiny_dir / "model.gguf"), "--train-model", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    from storage import load_config

    assert (load_config().model, load_config().train_model) == (str(tiny_dir / "model.gguf"), str(tiny_dir))


def test_model_use_refuses_while_the_memory_holds_nights_of_another_model(store, tiny_dir):
    from storage import ledger

    run = ledger.start_run(store, "2026-11-21", "cpu-tiny")
    ledger.promote(store, run, {"night": 1, "day": "2026-11-21", "path": "/x", "gguf_path": ""}, [])
    result = CliRunner().invoke(cli, ["model", "use", str(tiny_dir / "model.gguf")])
    assert result.exit_code == 1 and "dreamer rollback 0" in result.output


def test_a_night_trains_on_the_chats_own_gguf_dequantized(tmp_path):
    """No train_model: the chat's GGUF (a tiny one this test writes with the gguf package, its
    vocabulary included) becomes the training folder: the same weights and the same tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dreamer.bench.tiny import make_tiny_model, make_tokenizer, write_chat_twin
    from dreamer.lm.weights import training_source

    tokenizer = make_tokenizer()
    model = make_tiny_model(len(tokenizer))
    chat = write_chat_twin(model, tmp_path / "my-model.gguf", tokenizer=tokenizer)
    source = training_source("", tmp_path / "cache", chat)
    assert source.startswith(str(tmp_path / "cache" / "gguf-"))
    assert training_source("", tmp_path / "cache", chat) == source  # made once
    loaded = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    theirs = loaded.state_dict()
    assert all(torch.equal(weight, theirs[name]) for name, weight in model.state_dict().items())
    text = "My sister Ana lives in Lisbon."
    assert AutoTokenizer.from_pretrained(source)(text)["input_ids"] == tokenizer(text)["input_ids"]
    same_model(gguf_facts(chat), source)
