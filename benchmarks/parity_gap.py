"""How far llama.cpp's Q4_1 kernels sit from transformers' fp32 on this CPU, with and without an expert.

    .venv/bin/python -m benchmarks.parity_gap [--label native] [--out benchmarks/results/parity_gap_native.json]

The parity tests (tests/test_export.py) bound the exported expert's gap by a multiple of the
base's own gap measured in the same run, because that gap depends on the CPU family's kernels
(AVX2, AVX-512, AMX). This script records the figures the bound is made of, per prompt: KL at
the next token between transformers + PEFT and llama.cpp + the exported GGUF, for the base alone,
for a random rank-8 expert on every projection (exported correctly), and for the same expert
exported without the q/k row permutation (a real export bug, the control); the expert's own
effect on the distribution; and which SIMD features llama.cpp was built with. Run it with another
llama-cpp-python build first on PYTHONPATH to measure that build (`--label`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPTS = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
           "The quick brown fox jumps over the", "Once upon a time, in a small village,",
           "My sister lives in Lisbon and works as a", "def fibonacci(n):\n    "]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="native", help="names the llama.cpp build measured")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(f"bench-out/parity_gap_{args.label}.json")

    import llama_cpp
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from agent.runtime import Adapter
    from dreamer.morning.export_gguf import base_config_summary, convert, export_expert, read_peft, write_gguf
    from dreamer.lm.weights import embedded_training_dir
    from tests.test_export import ALL, hf_logprobs, kl, llama_with
    from agent.llama_runtime import LlamaRuntime
    from agent.models import embedded_gguf_path

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = AutoModelForCausalLM.from_pretrained(embedded_training_dir(root / "cache"), dtype=torch.float32)
        torch.manual_seed(0)  # after the cache is built, which draws random numbers of its own
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=ALL, init_lora_weights=False)).eval()
        folder = root / "expert"
        model.save_pretrained(folder)
        summary = base_config_summary(base)
        (folder / "metadata.json").write_text(json.dumps({"base_config": summary}))
        exported = export_expert(folder)
        adapter_config, state = read_peft(folder)
        _, alpha, tensors = convert(state, adapter_config, {**summary, "architectures": ["Qwen2ForCausalLM"]})
        unpermuted = write_gguf(root / "unpermuted.gguf", "llama", alpha, tensors)
        runtime = LlamaRuntime(embedded_gguf_path(), n_ctx=512, n_threads=1)
        for prompt in PROMPTS:
            tokens = runtime.llm.tokenize(prompt.encode(), add_bos=False, special=True)
            hf_base, hf_adapted = hf_logprobs(model, tokens, False), hf_logprobs(model, tokens, True)
            rows.append({"prompt": prompt[:32], "base_gap": round(kl(hf_base, llama_with(runtime, None, tokens)), 5),
                         "adapted_gap": round(kl(hf_adapted, llama_with(runtime, exported, tokens)), 5),
                         "unpermuted_gap": round(kl(hf_adapted, llama_with(runtime, unpermuted, tokens)), 5),
                         "expert_effect": round(kl(hf_base, hf_adapted), 3)})
            print(json.dumps(rows[-1]), flush=True)
    features = llama_cpp.llama_print_system_info().decode()
    record = {"command": "python -m benchmarks.parity_gap " + " ".join(argv if argv is not None else sys.argv[1:]),
              "label": args.label, "llama_cpp": str(Path(llama_cpp.__file__).parent),
              "llama_features": " ".join(p.split("=")[0].split(":")[-1].strip() for p in features.split("|")
                                         if p.strip().endswith("= 1")),
              "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()}, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
