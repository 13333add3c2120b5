"""What `[load] merge_stack` saves a night: a training pass through N earlier experts as adapters
against the same experts merged into the weights, on the embedded model.

    python -m benchmarks.merge_step [--experts 7] [--rounds 5] [--out benchmarks/results/merge_step.json]

N random experts shaped like cpu-tiny's (rank 16, alpha 32, the MLP projections), tonight's
trainable one on top. One step = forward and backward of 4 sequences of 256 tokens, one torch
thread, as the night trains; the two models alternate round by round and the median is kept.
The logits of the two are compared too (the merge must not change the model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.machine import command_line, git_commit, machine, write_record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experts", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "merge_step.json")
    args = parser.parse_args(argv)

    from peft import get_peft_model

    from dreamer.lm.weights import base_fingerprint, build_stack, load_base, plan_device, training_source
    from dreamer.morning.export_gguf import base_config_summary
    from dreamer.sleep.config import DistillConfig, LoadConfig
    from dreamer.lm.weights import lora_config
    from storage.paths import cache_dir

    plan = plan_device(LoadConfig(device="cpu", threads=1))
    source = training_source("", cache_dir())
    distill = DistillConfig(rank=16, lora_alpha=32, targets="mlp")
    folder = Path(tempfile.mkdtemp(prefix="merge-step-"))
    experts = []
    for i in range(args.experts):
        base, _ = load_base(source, plan)
        torch.manual_seed(i)
        model = get_peft_model(base, lora_config(base, distill))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.01)  # a trained expert's B is small, not zero
        path = folder / f"run-{i + 1:04d}"
        model.save_pretrained(path)
        (path / "metadata.json").write_text(json.dumps({"base": base_fingerprint(base),
                                                         "base_config": base_config_summary(base)}))
        experts.append(path)
    stacked = build_stack(load_base(source, plan)[0], experts, distill)
    merged = build_stack(build_stack(load_base(source, plan)[0], experts, None).merge_and_unload(), [], distill)
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (4, 256))
    with torch.no_grad():  # tonight's expert starts at B = 0: both must be the same model
        gap = (stacked(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max().item()

    def step(model) -> float:
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"adapters": [], "merged": []}
    step(stacked), step(merged)  # warm-up
    for _ in range(args.rounds):
        times["adapters"].append(step(stacked))
        times["merged"].append(step(merged))
    median = {k: round(statistics.median(v), 3) for k, v in times.items()}
    record = {"command": command_line("benchmarks.merge_step", argv), "machine": machine(load=True),
              "commit": git_commit(), "experts": args.experts, "step": "forward+backward, 4 x 256 tokens, 1 thread",
              "max_logit_gap": gap, "median_s": median, "speedup": round(median["adapters"] / median["merged"], 2),
              "rounds": {k: [round(x, 3) for x in v] for k, v in times.items()}}
    write_record(args.out, record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
