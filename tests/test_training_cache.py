"""The embedded model's training cache: the dequantized GGUF saved as a plain HF folder."""

import json

from dreamer.sleep.config import LoadConfig
from dreamer.lm.weights import EMBEDDED_CACHE, embedded_training_dir, load_base, plan_device
from dreamer.bench.tiny import make_tiny_model_dir

GGUF_ENTRY = {"dequantize": False, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "quant_method": "gguf"}


def test_a_cache_marked_gguf_loads_in_nf4(tmp_path):
    """A cache written by the old code kept the GGUF loader's quantization_config, and
    transformers then refused NF4 ("quantized with GgufConfig but you are passing a
    BitsAndBytesConfig"): the first CUDA night failed on it. Opening the cache removes it."""
    target = make_tiny_model_dir(tmp_path / EMBEDDED_CACHE)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "quantization_config": GGUF_ENTRY}))

    assert embedded_training_dir(tmp_path) == target
    cleaned = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in cleaned
    assert cleaned == config  # nothing else changed
    base, _ = load_base(str(target), plan_device(LoadConfig(device="cpu", quantization="nf4")))
    assert type(base.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"


def test_other_quantization_entries_are_kept(tmp_path):
    """Only the GGUF loader's entry is dropped: a folder the user quantized on purpose stays as it is."""
    target = make_tiny_model_dir(tmp_path / EMBEDDED_CACHE)
    config = json.loads((target / "config.json").read_text())
    bnb = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (target / "config.json").write_text(json.dumps({**config, "quantization_config": bnb}))
    embedded_training_dir(tmp_path)
    assert json.loads((target / "config.json").read_text())["quantization_config"] == bnb


def test_two_processes_making_the_cache_at_once_both_get_it(tmp_path, monkeypatch):
    """A bench's two lanes on a fresh home made the cache at once; the second rename failed and took
    its lane down. Now the process that finds the folder in place drops its own copy and uses it."""
    import os

    from dreamer.lm import weights

    target = tmp_path / EMBEDDED_CACHE
    stale = tmp_path / f"{EMBEDDED_CACHE}.partial-999999999"  # a killed process's leftover
    stale.mkdir()

    def write_while_another_finishes(folder, gguf=None):
        make_tiny_model_dir(folder)
        make_tiny_model_dir(target)  # the other lane renamed its copy into place meanwhile

    monkeypatch.setattr(weights, "write_dequantized", write_while_another_finishes)
    assert embedded_training_dir(tmp_path) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == [EMBEDDED_CACHE]  # no partial folder is left
    assert not (tmp_path / f"{EMBEDDED_CACHE}.partial-{os.getpid()}").exists()
