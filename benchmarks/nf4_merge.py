"""What merging a night's stack into an NF4 base would cost: the question `gpu-qlora` raises.

    python -m benchmarks.nf4_merge --home HOME [--out benchmarks/results/nf4_merge.json]

On CUDA a night trains on the base in 4-bit NF4 (QLoRA) and today keeps the earlier experts as
adapters on it (`merge_stack` is off in `gpu-qlora`). Merging them into the training weights, as
`cpu-tiny` does in fp32, means one of two things: quantize the merged weights to NF4 again
(peft's merge into a bitsandbytes layer: dequantize, add, quantize), or keep the merged weights
in bf16. This measures both on HOME's promoted experts, with bitsandbytes' own NF4 quantizer
(`quantize_4bit`: blocks of 64, double quantization, as `load_base` asks for), on the CPU:

    W            the base in fp32                      W + D        its experts merged (the reference)
    N(W)         the base as NF4 holds it               N(W) + D     NF4 base, experts as adapters (today's CUDA night)
    N(N(W) + D)  merged, quantized to NF4 again         bf16(N(W) + D)  merged, kept in bf16

N rounds every linear layer transformers quantizes (all but lm_head); D, the experts' change,
touches only the layers they adapt. The NF4 weights of every layer are checked against what
`load_base` holds when it loads the same base in NF4 (`nf4_check`). The probes are the active
nights' (the gate's old probes), the first 48. Per condition, on the probe sentences ("question
answer") and on held-out general text: the mean per-token KL to the reference, the KL to today's
CUDA night (N(W) + D), the probes asked as the gate asks them (closed book, the chat's system
prompt dated the last night's day): the answer's loss as the whole reply (mean NLL a token) and
multiple choice (the answer above every distractor), and "memory kept": the share of the answer
loss that the experts remove on the same base which the merged weights still remove (defined
for the two merges only). One caveat: the experts were trained on the fp32 base (a cpu-tiny
home); the matmuls run in fp32, where CUDA computes in bf16.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import torch

from benchmarks.fold_quality import kl
from benchmarks.machine import command_line, git_commit, machine, write_record


def nf4_round(weight: torch.Tensor) -> torch.Tensor:
    """The weight as a bitsandbytes NF4 layer holds it (blocks of 64, double quantization), dequantized."""
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    packed, state = quantize_4bit(weight.contiguous(), blocksize=64, quant_type="nf4", compress_statistics=True)
    return dequantize_4bit(packed, state).to(weight.dtype)


def quantized_layers(model) -> list[str]:
    """The linear layers transformers' bitsandbytes loading turns into NF4: every one but lm_head."""
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head")]


def experts_change(source: str, experts: list[Path], model, layers: list[str]) -> dict[str, torch.Tensor]:
    """D per adapted layer: the experts merged in fp32 (peft), less the base."""
    from dreamer.lm.weights import build_stack, load_base, plan_device
    from dreamer.sleep.config import LoadConfig

    merged = dict(build_stack(load_base(source, plan_device(LoadConfig(device="cpu", threads=1)))[0], experts, None)
                  .merge_and_unload().named_modules())
    modules = dict(model.named_modules())
    change = {name: merged[name].weight.detach() - modules[name].weight.detach() for name in layers}
    return {name: delta for name, delta in change.items() if delta.abs().max() > 0}


def nf4_check(source: str, nf4_base: dict[str, torch.Tensor]) -> dict:
    """The largest gap, over every layer, between `nf4_round` and what `load_base` holds in NF4."""
    from bitsandbytes.functional import dequantize_4bit

    from dreamer.lm.weights import load_base, plan_device
    from dreamer.sleep.config import LoadConfig

    loaded = dict(load_base(source, plan_device(LoadConfig(device="cpu", threads=1, quantization="nf4")))[0]
                  .named_modules())
    gap = max(float((dequantize_4bit(loaded[n].weight.data, loaded[n].weight.quant_state).float() - w).abs().max())
              for n, w in nf4_base.items())
    return {"layers": len(nf4_base), "max_abs_gap": gap}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "nf4_merge.json")
    args = parser.parse_args(argv)

    from agent.memory import system_message
    from dreamer.lm.scoring import option_scores
    from dreamer.lm.weights import load_base, plan_device, training_source
    from dreamer.sleep.config import LoadConfig
    from dreamer.sleep.gate import general_texts
    from storage import Config, Store, ledger
    from storage.manifest import read_manifest
    from storage.paths import cache_dir

    experts = read_manifest(args.home)["experts"]
    if not experts:
        raise SystemExit(f"{args.home} has no active experts to merge")
    record = {"command": command_line("benchmarks.nf4_merge", argv), "machine": machine(load=True),
              "commit": git_commit(), "experts": len(experts)}
    source = training_source("", cache_dir(args.home))
    model, tokenizer = load_base(source, plan_device(LoadConfig(device="cpu", threads=1)))
    modules = dict(model.named_modules())
    layers = quantized_layers(model)
    base = {name: modules[name].weight.detach().clone() for name in layers}
    change = experts_change(source, [Path(e["path"]) for e in experts], model, layers)
    nf4_base = {name: nf4_round(w) for name, w in base.items()}
    record["nf4_check"] = nf4_check(source, nf4_base)

    def with_change(weights: dict, rounding=lambda w: w) -> dict:
        return {**weights, **{name: rounding(weights[name] + delta) for name, delta in change.items()}}

    reference, today = "fp32 base + experts (reference)", "NF4 base + experts as adapters (today's CUDA night)"
    merges = {"merged, quantized to NF4 again": with_change(nf4_base, nf4_round),
              "merged, kept in bf16": with_change(nf4_base, lambda w: w.to(torch.bfloat16).float())}
    conditions = {"fp32 base, no memory": base, reference: with_change(base), "NF4 base, no memory": nf4_base,
                  today: with_change(nf4_base), **merges}
    probes = ledger.replay_probes(Store(args.home / "dreamer.db"))[:48]
    system = system_message(Config(), date.fromisoformat(experts[-1]["day"]))
    texts = {"general": [tokenizer(t, add_special_tokens=False).input_ids[:256] for t in general_texts()[:24]],
             "probes": [tokenizer(f"{p['question']} {p['answer']}", add_special_tokens=False).input_ids[:256]
                        for p in probes]}

    def asked() -> tuple[float, int]:
        """(mean NLL of the answer as the whole reply, multiple-choice probes right)."""
        losses, right = [], 0
        for probe in probes:
            scores = option_scores(model, tokenizer, probe["question"], [probe["answer"], *probe["distractors"]],
                                   system=system)
            losses.append(-scores[0])
            right += scores[0] > max(scores[1:])
        return sum(losses) / len(losses), right

    def mean_kl(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        sums = [kl(x.double().numpy(), y.double().numpy()) for x, y in zip(a, b)]
        return round(sum(t for t, _ in sums) / sum(n for _, n in sums), 5)

    # The reference's and today's logits are kept (a general text's are 256 x 49152 floats); every
    # other condition's are reduced to its figures as soon as they are made.
    kept: dict[str, dict[str, list[torch.Tensor]]] = {}
    figures, loss = {}, {}
    with torch.no_grad():
        for condition in [reference, today, *[c for c in conditions if c not in (reference, today)]]:
            for name in layers:
                modules[name].weight.data.copy_(conditions[condition][name])
            logits = {kind: [model(input_ids=torch.tensor([ids])).logits[0] for ids in items]
                      for kind, items in texts.items()}
            if condition in (reference, today):
                kept[condition] = logits
            loss[condition], right = asked()
            figures[condition] = {"kl_general": mean_kl(kept[reference]["general"], logits["general"]),
                                  "kl_probes": mean_kl(kept[reference]["probes"], logits["probes"]),
                                  "kl_probes_to_today": mean_kl(kept[today]["probes"], logits["probes"])
                                  if today in kept else None,  # the reference comes first: filled in below
                                  "answer_loss": round(loss[condition], 4), "mc_right": right, "memory_kept": None}
    figures[reference]["kl_probes_to_today"] = mean_kl(kept[today]["probes"], kept[reference]["probes"])
    bare = loss["NF4 base, no memory"]
    for condition in merges:  # the share of the answer loss the experts remove on the NF4 base
        figures[condition]["memory_kept"] = round((bare - loss[condition]) / (bare - loss[today]), 3)
    record["conditions"] = {c: figures[c] for c in conditions}
    record["texts"] = {kind: len(items) for kind, items in texts.items()}
    record["probes"] = len(probes)
    record["changed_layers"] = len(change)
    write_record(args.out, record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
