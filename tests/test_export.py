"""PEFT LoRA expert -> llama.cpp LoRA GGUF: names, shapes, alpha, q/k permutation, refusals."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from dreamer.morning.export_gguf import ExportError, base_config_summary, convert, export_expert, permute_rows
from dreamer.bench.tiny import make_tiny_model

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_expert(tmp_path, targets=ALL, rank=4, alpha=8, **extra):
    """A tiny Llama with a random (non-zero) LoRA saved as PEFT + dreamer's metadata.json."""
    base = make_tiny_model(64)
    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, **extra)
    model = get_peft_model(base, lora)
    folder = tmp_path / "night-0001"
    model.save_pretrained(folder)
    (folder / "metadata.json").write_text(json.dumps({"base_config": base_config_summary(base)}))
    return folder, model


def read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: reader.fields[name] for name in reader.fields}
    tensors = {t.name: (tuple(int(x) for x in t.shape), np.array(t.data)) for t in reader.tensors}
    return fields, tensors


def field_value(field):
    return field.contents()


def test_tensor_names_shapes_alpha_and_metadata(tmp_path):
    folder, model = save_expert(tmp_path)
    out = export_expert(folder)
    fields, tensors = read(out)
    assert field_value(fields["general.type"]) == "adapter"
    assert field_value(fields["adapter.type"]) == "lora"
    assert field_value(fields["general.architecture"]) == "llama"
    assert field_value(fields["adapter.lora.alpha"]) == pytest.approx(8.0)
    expected = {f"blk.{i}.{name}.weight.lora_{side}" for i in range(2) for side in "ab"
                for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected
    # GGUF stores ggml's ne (reversed torch shape): lora_a ne = [in, r], lora_b ne = [r, out].
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert tensors["blk.0.attn_q.weight.lora_a"][0] == (q.in_features, 4)
    assert tensors["blk.0.attn_q.weight.lora_b"][0] == (4, q.out_features)
    k = model.base_model.model.model.layers[0].self_attn.k_proj
    assert tensors["blk.0.attn_k.weight.lora_b"][0] == (4, k.out_features)  # 2 kv heads: fewer rows
    a = q.lora_A["default"].weight.detach().numpy()
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight.lora_a"][1], a)  # A is written as is
    v = model.base_model.model.model.layers[1].self_attn.v_proj.lora_B["default"].weight.detach().numpy()
    np.testing.assert_array_equal(tensors["blk.1.attn_v.weight.lora_b"][1], v)  # v: no permutation


def test_an_mlp_only_expert_exports_only_its_ffn_tensors(tmp_path):  # distill.targets = "mlp"
    folder, _ = save_expert(tmp_path, targets=["gate_proj", "up_proj", "down_proj"])
    _, tensors = read(export_expert(folder))
    assert set(tensors) == {f"blk.{i}.{name}.weight.lora_{side}" for i in range(2) for side in "ab"
                            for name in ("ffn_gate", "ffn_up", "ffn_down")}


def test_q_and_k_rows_are_permuted_like_the_base_conversion(tmp_path):
    """transformers' own GGUF loader un-permutes q/k; applied to our B it must give PEFT's B back."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    folder, model = save_expert(tmp_path, targets=["q_proj", "k_proj"])
    _, tensors = read(export_expert(folder))
    unpermute = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    layer = model.base_model.model.model.layers[1].self_attn
    for name, module in (("attn_q", layer.q_proj), ("attn_k", layer.k_proj)):
        ours = tensors[f"blk.1.{name}.weight.lora_b"][1]
        peft_b = module.lora_B["default"].weight.detach().numpy()
        assert not np.array_equal(ours, peft_b)
        back = unpermute.process(ours, f"blk.1.{name}.weight").weights
        np.testing.assert_array_equal(back, peft_b)
    # and permuting B permutes the rows of the delta B @ A, which is what the converted base has
    b, a = np.random.default_rng(0).normal(size=(16, 3)), np.random.default_rng(1).normal(size=(3, 8))
    np.testing.assert_allclose(permute_rows(b, 4) @ a, permute_rows(b @ a, 4))


def test_rslora_alpha_is_rescaled(tmp_path):
    folder, _ = save_expert(tmp_path, rank=4, alpha=8, use_rslora=True)
    fields, _ = read(export_expert(folder))
    assert field_value(fields["adapter.lora.alpha"]) == pytest.approx(16.0)  # 8 * sqrt(4): alpha'/r = 8/sqrt(4)


@pytest.mark.parametrize("extra, message", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "lora_only"}, "biases"),
    ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
])
def test_unrepresentable_adapters_are_refused(tmp_path, extra, message):
    folder, _ = save_expert(tmp_path, targets=["q_proj", "v_proj"], **extra)
    with pytest.raises(ExportError, match=message):
        export_expert(folder)
    assert not (folder / "adapter.gguf").exists()


@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_embeddings_and_tied_head_are_refused(tmp_path, target):
    folder, _ = save_expert(tmp_path, targets=[target])
    with pytest.raises(ExportError, match=target):
        export_expert(folder)


def test_an_expert_saved_before_base_config_existed_exports_from_its_base_folder(tmp_path):
    folder, model = save_expert(tmp_path, targets=["q_proj", "k_proj"])
    base_dir = tmp_path / "base"
    model.get_base_model().save_pretrained(base_dir)  # writes config.json with `architectures`
    (folder / "metadata.json").write_text(json.dumps({"base_source": str(base_dir)}))
    fields, tensors = read(export_expert(folder))
    assert field_value(fields["general.architecture"]) == "llama" and "blk.1.attn_k.weight.lora_b" in tensors
    assert json.loads((folder / "metadata.json").read_text())["base_config"]["num_key_value_heads"] == 2


def test_missing_metadata_and_unknown_architecture_are_named(tmp_path):
    folder, _ = save_expert(tmp_path, targets=["q_proj"])
    (folder / "metadata.json").write_text("{}")
    with pytest.raises(ExportError, match="neither base_config nor a base_source"):
        export_expert(folder)
    config = {"architectures": ["GPT2LMHeadModel"], "num_hidden_layers": 2, "num_attention_heads": 4}
    with pytest.raises(ExportError, match="GPT2LMHeadModel is not supported"):
        convert({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 4))},
                {"r": 2, "lora_alpha": 4}, config)
    with pytest.raises(ExportError, match="not a PEFT adapter folder"):
        export_expert(tmp_path, base_config={"architectures": ["LlamaForCausalLM"]})


# --- on the embedded model, through a real llama.cpp ---------------------------------------------

def build_embedded_pair(root):
    """(HF LoRA model, exported GGUF, unpermuted GGUF, llama.cpp runtime) on SmolLM2-135M, under `root`.

    The random expert is drawn after the base is loaded (building the training cache draws
    random numbers of its own), so it is the same whether or not the cache existed: the expert
    benchmarks/parity_gap.py measures.
    """
    from transformers import AutoModelForCausalLM

    from agent.llama_runtime import LlamaRuntime
    from agent.models import embedded_gguf_path
    from dreamer.lm.weights import embedded_training_dir
    from dreamer.morning.export_gguf import read_peft, write_gguf

    base = AutoModelForCausalLM.from_pretrained(embedded_training_dir(root / "cache"), dtype=torch.float32)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=ALL, init_lora_weights=False)
    model = get_peft_model(base, lora).eval()  # random A and B: a strong, known change of the model
    folder = root / "night-0001"
    model.save_pretrained(folder)
    summary = base_config_summary(base)
    (folder / "metadata.json").write_text(json.dumps({"base_config": summary}))
    exported = export_expert(folder)
    # Control: the same adapter without the q/k row permutation must visibly disagree.
    adapter_config, state = read_peft(folder)
    _, alpha, tensors = convert(state, adapter_config, {**summary, "architectures": ["Qwen2ForCausalLM"]})  # no permutation
    unpermuted = write_gguf(root / "unpermuted.gguf", "llama", alpha, tensors)
    return model, exported, unpermuted, LlamaRuntime(embedded_gguf_path(), n_ctx=512, n_threads=1)


@pytest.fixture(scope="module")
def embedded_pair(tmp_path_factory):
    return build_embedded_pair(tmp_path_factory.mktemp("export"))


def llama_logprobs(runtime, tokens):
    import llama_cpp

    runtime.llm.reset()
    runtime.llm.eval(tokens)
    pointer = llama_cpp.llama_get_logits_ith(runtime.llm._ctx.ctx, -1)
    return torch.log_softmax(torch.tensor(np.ctypeslib.as_array(pointer, shape=(runtime.llm.n_vocab(),)).copy()), -1)


def kl(p, q):
    return float((p.exp() * (p - q)).sum())


def hf_logprobs(model, tokens, adapted: bool):
    with torch.no_grad():
        if adapted:
            return torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1], -1)
        with model.disable_adapter():
            return torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1], -1)


def llama_with(runtime, adapter_path, tokens):
    from agent.runtime import Adapter

    runtime.load_adapters([Adapter(adapter_path)] if adapter_path else [])
    try:
        return llama_logprobs(runtime, tokens)
    finally:
        runtime.load_adapters([])


CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [CHAT, "The quick brown fox jumps over the", "Once upon a time, in a small village,",
           "My sister lives in Lisbon and works as a", "def fibonacci(n):\n    "]
# The exported expert's mean gap may be this many times the base's own mean llama.cpp-vs-fp32 gap.
# Measured (benchmarks/parity_gap.py, docs/BENCHMARKS.md "Parity across CPU families"): 1.4-2.1
# times with AVX-512 and AVX2-only kernels, while the export without the q/k permutation (a real
# export bug) lands 40-69 times away. 8 sits between the two with room on both sides, and the
# control below must exceed the same bound in the same run, so the bound is checked on every CPU.
GAP_FACTOR = 8.0


@pytest.mark.integration
def test_llama_cpp_with_the_exported_expert_matches_transformers_with_peft(embedded_pair):
    """KL(transformers+PEFT || llama.cpp+GGUF) at the next token, over four prompts, against the
    gap the base alone shows on this CPU.

    transformers runs the dequantized Q4_1 weights in fp32; llama.cpp runs its own Q4_1 kernels,
    whose rounding differs by CPU family (AVX2, AVX-512, AMX). So the tolerance is not a constant:
    it is GAP_FACTOR times the base's own gap (KL between the two bases, no adapter), measured
    here on the same prompts. The random expert moves the distribution by 1-4 nats, so a right
    export stays near the base's gap and a wrong one (the unpermuted control) lands far outside.
    """
    model, exported, unpermuted, runtime = embedded_pair
    base_gap, adapted_gap, wrong_gap, effect = [], [], [], []
    for prompt in PROMPTS:
        tokens = runtime.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        hf_base, hf_adapted = hf_logprobs(model, tokens, False), hf_logprobs(model, tokens, True)
        base_gap.append(kl(hf_base, llama_with(runtime, None, tokens)))
        adapted_gap.append(kl(hf_adapted, llama_with(runtime, exported, tokens)))
        wrong_gap.append(kl(hf_adapted, llama_with(runtime, unpermuted, tokens)))
        effect.append(kl(hf_base, hf_adapted))
    bound = GAP_FACTOR * float(np.mean(base_gap))
    figures = (f"base gap {np.round(base_gap, 4)}, adapted {np.round(adapted_gap, 4)}, "
               f"unpermuted {np.round(wrong_gap, 4)}, bound {bound:.4f}")
    assert min(effect) > 0.5, f"the expert barely changes the model: {effect}"
    assert float(np.mean(adapted_gap)) < bound, figures
    assert float(np.mean(wrong_gap)) > bound, f"the bound cannot tell a wrong export apart: {figures}"
    assert min(wrong_gap) > max(adapted_gap), figures


def first_unexplained_divergence(model, runtime, adapter_path, tokens, reference) -> int | None:
    """Where llama.cpp's greedy choice leaves transformers' greedy `reference` continuation for a
    reason the base's own noise cannot explain, or None.

    At each step (teacher-forced on the reference), a different argmax is explained only when
    transformers' margin between its choice and llama.cpp's is within the base's own disagreement
    at that prefix: the largest |log p| difference between the two bases over transformers' top 5.
    """
    for index in range(len(reference)):
        prefix = tokens + reference[:index]
        ours = llama_with(runtime, adapter_path, prefix)
        choice = int(ours.argmax())
        if choice == reference[index]:
            continue
        hf_adapted, hf_base = hf_logprobs(model, prefix, True), hf_logprobs(model, prefix, False)
        top = hf_base.topk(5).indices
        noise = float((hf_base[top] - llama_with(runtime, None, prefix)[top]).abs().max())
        margin = float(hf_adapted[reference[index]] - hf_adapted[choice])
        return None if margin <= 2 * noise else index
    return None


@pytest.mark.integration
def test_the_same_greedy_continuation(embedded_pair):
    """The 12-token greedy reply agrees, token by token, except where the two runtimes' bases
    themselves cannot tell the top tokens apart. Control: llama.cpp without the expert must leave
    it (the unpermuted export keeps this short reply; the KL test above tells that one apart)."""
    model, exported, _, runtime = embedded_pair
    tokens = runtime.llm.tokenize(CHAT.encode(), add_bos=False, special=True)
    with torch.no_grad():
        reference = model.generate(torch.tensor([tokens]), max_new_tokens=12, do_sample=False)[0, len(tokens):].tolist()
    assert first_unexplained_divergence(model, runtime, exported, tokens, reference) is None
    assert first_unexplained_divergence(model, runtime, None, tokens, reference) is not None
