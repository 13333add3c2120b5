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
touches only the layers they adapt. The NF4 weights are checked against what `load_base` holds
when it loads the same base in NF4 (`nf4_check`). Per condition, on the home's probe sentences
("question answer") and on held-out general text: the mean per-token KL to the reference, the
KL to today's CUDA night (N(W) + D), the probes asked as the night's gate asks them (closed book,
the chat template): the answer's loss as the whole reply (mean NLL a token) and multiple choice
(the answer above every distractor), and "memory kept": the share of the answer loss the experts
remove on the same base that the condition still removes. One caveat: the experts were trained
on the fp32 base (a cpu-tiny home); the matmuls run in fp32, where CUDA computes in bf16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

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


def token_kl(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per-position KL(reference || other) of two [positions, vocabulary] logit rows."""
    p, q = reference.double().log_softmax(-1), other.double().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "nf4_merge.json")
    args = parser.parse_args(argv)

    from dreamer.lm.scoring import option_scores
    from dreamer.lm.weights import build_stack, load_base, plan_device, training_source
    from dreamer.sleep.config import LoadConfig
    from dreamer.sleep.gate import general_texts
    from storage import Store
    from storage.manifest import read_manifest
    from storage.paths import cache_dir

    experts = read_manifest(args.home)["experts"]
    if not experts:
        raise SystemExit(f"{args.home} has no active experts to merge")
    record = {"command": command_line("benchmarks.nf4_merge", argv), "machine": machine(load=True),
              "commit": git_commit(), "experts": len(experts)}
    source = training_source("", cache_dir(args.home))
    plan = plan_device(LoadConfig(device="cpu", threads=1))
    model, tokenizer = load_base(source, plan)
    layers = quantized_layers(model)
    modules = dict(model.named_modules())
    base = {name: modules[name].weight.detach().clone() for name in layers}
    merged = build_stack(load_base(source, plan)[0], [Path(e["path"]) for e in experts], None).merge_and_unload()
    merged_modules = dict(merged.named_modules())
    change = {name: merged_modules[name].weight.detach() - base[name] for name in layers}
    change = {name: delta for name, delta in change.items() if delta.abs().max() > 0}
    del merged, merged_modules

    nf4_base = {name: nf4_round(w) for name, w in base.items()}
    loaded = dict(load_base(source, plan_device(LoadConfig(device="cpu", threads=1, quantization="nf4")))[0]
                  .named_modules())
    from bitsandbytes.functional import dequantize_4bit

    checked = layers[0]
    held = dequantize_4bit(loaded[checked].weight.data, loaded[checked].weight.quant_state).float()
    record["nf4_check"] = {"layer": checked, "max_abs_gap": float((held - nf4_base[checked]).abs().max())}
    del loaded

    def with_change(weights: dict, rounding=None) -> dict:
        out = dict(weights)
        for name, delta in change.items():
            out[name] = weights[name] + delta if rounding is None else rounding(weights[name] + delta)
        return out

    conditions = {
        "fp32 base, no memory": base,
        "fp32 base + experts (reference)": with_change(base),
        "NF4 base, no memory": nf4_base,
        "NF4 base + experts as adapters (today's CUDA night)": with_change(nf4_base),
        "merged, quantized to NF4 again": with_change(nf4_base, nf4_round),
        "merged, kept in bf16": with_change(nf4_base, lambda w: w.to(torch.bfloat16).float()),
    }
    reference, today = "fp32 base + experts (reference)", "NF4 base + experts as adapters (today's CUDA night)"
    store = Store(args.home / "dreamer.db")
    probes = list(store.db.query("select question, answer, distractors from probes"))[:48]
    texts = {"general": [tokenizer(t, add_special_tokens=False).input_ids[:256] for t in general_texts()[:24]],
             "probes": [tokenizer(f"{p['question']} {p['answer']}", add_special_tokens=False).input_ids[:256]
                        for p in probes]}

    def asked() -> tuple[float, int]:
        """(mean NLL of the answer as the whole reply to the question, asked closed book in the chat
        template; multiple-choice probes right: the answer scored above every distractor)."""
        losses, right = [], 0
        for probe in probes:
            scores = option_scores(model, tokenizer, probe["question"], [probe["answer"], *json.loads(probe["distractors"])])
            losses.append(-scores[0])
            right += scores[0] > max(scores[1:])
        return sum(losses) / len(losses), right

    def mean_kl(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return round(float(torch.cat([token_kl(x, y) for x, y in zip(a, b)]).mean()), 5)

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
                                  "answer_loss": round(loss[condition], 4), "mc_right": right}
    figures[reference]["kl_probes_to_today"] = mean_kl(kept[today]["probes"], kept[reference]["probes"])
    for condition, row in figures.items():  # the share of the answer loss the experts remove, on the same base
        fp32 = condition.startswith("fp32")
        bare = loss["fp32 base, no memory" if fp32 else "NF4 base, no memory"]
        full = loss[reference if fp32 else today]
        row["memory_kept"] = round((bare - loss[condition]) / (bare - full), 3)
    record["conditions"] = {c: figures[c] for c in conditions}
    record["texts"] = {kind: len(items) for kind, items in texts.items()}
    record["probes"] = len(probes)
    record["changed_layers"] = len(change)
    write_record(args.out, record)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
