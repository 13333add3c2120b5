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
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import command_line, machine, write_record  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="native", help="names the llama.cpp build measured")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(f"bench-out/parity_gap_{args.label}.json")

    import llama_cpp

    from tests.test_export import PROMPTS, build_embedded_pair, hf_logprobs, kl, llama_with

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, exported, unpermuted, runtime = build_embedded_pair(Path(tmp))
        for prompt in PROMPTS:
            tokens = runtime.llm.tokenize(prompt.encode(), add_bos=False, special=True)
            hf_base, hf_adapted = hf_logprobs(model, tokens, False), hf_logprobs(model, tokens, True)
            rows.append({"prompt": prompt[:32], "base_gap": round(kl(hf_base, llama_with(runtime, None, tokens)), 5),
                         "adapted_gap": round(kl(hf_adapted, llama_with(runtime, exported, tokens)), 5),
                         "unpermuted_gap": round(kl(hf_adapted, llama_with(runtime, unpermuted, tokens)), 5),
                         "expert_effect": round(kl(hf_base, hf_adapted), 3)})
            print(json.dumps(rows[-1]), flush=True)
    features = llama_cpp.llama_print_system_info().decode()
    record = {"command": command_line("benchmarks.parity_gap", argv), "label": args.label,
              "llama_cpp": str(Path(llama_cpp.__file__).parent),
              "llama_features": " ".join(p.split("=")[0].split(":")[-1].strip() for p in features.split("|")
                                         if p.strip().endswith("= 1")),
              "machine": machine(), "rows": rows}
    write_record(out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
