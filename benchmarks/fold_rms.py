"""How far a night moves the chat model's weights, in steps of its own Q4_1 grid.

Why a Q4_1 fold erases the nights (docs/BENCHMARKS.md, "Deep sleep"): each Q4_1 block of 32 weights
is stored as d * q + m (q in 0..15), so weights sit on a grid of step d; an expert moves them by
delta = B @ A * alpha / r. For every Q4_1 block of the MLP projections the experts train, this
measures RMS(delta over the block) / d, for each night alone and for the whole stack (the sum of
the nights' deltas, what a fold adds). A value well under 0.5 means a second Q4_1 rounding puts most
weights back on the grid point they came from.

    python -m benchmarks.fold_rms --home HOME     # a home's active experts; writes benchmarks/results/fold_rms.json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import numpy as np

from benchmarks.machine import command_line, git_commit, machine, write_record

OUT = Path(__file__).parent / "results" / "fold_rms.json"
GGUF_NAMES = {"down_proj": "ffn_down", "gate_proj": "ffn_gate", "up_proj": "ffn_up"}


def q4_1_steps(tensor) -> np.ndarray:
    """Each block's step d, shaped (rows, blocks): a Q4_1 block is d (f16), m (f16), 16 bytes of 4-bit q."""
    blocks = tensor.data.reshape(tensor.data.shape[0], -1, 20)
    return blocks[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32)


def expert_deltas(folder: Path) -> dict[tuple[int, str], np.ndarray]:
    from safetensors.numpy import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(str(folder / "adapter_model.safetensors"))
    deltas = {}
    for key, a in weights.items():
        if not key.endswith("lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        layer, proj = int(module.split(".layers.")[1].split(".")[0]), module.rsplit(".", 1)[1]
        if proj in GGUF_NAMES:
            deltas[(layer, proj)] = (weights[f"{module}.lora_B.weight"] @ a) * scale
    return deltas


def block_rms_in_steps(delta: np.ndarray, steps: np.ndarray) -> np.ndarray:
    rows, width = delta.shape
    per_block = np.sqrt((delta.reshape(rows, width // 32, 32) ** 2).mean(-1))
    return (per_block / np.maximum(steps, 1e-12)).ravel()


def summary(values: np.ndarray) -> dict:
    return {"median": round(float(np.median(values)), 4), "p90": round(float(np.percentile(values, 90)), 4),
            "max": round(float(values.max()), 4), "blocks": int(values.size)}


def main(argv=None) -> int:
    from gguf import GGUFReader

    from agent.models import embedded_gguf_path

    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True, help="a DREAMER_HOME on the embedded model")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with sqlite3.connect(f"file:{args.home / 'dreamer.db'}?mode=ro", uri=True) as db:
        experts = [(night, Path(path)) for night, path in
                   db.execute("select night, path from adapters where status = 'active' order by night")]
    tensors = {t.name: t for t in GGUFReader(str(embedded_gguf_path())).tensors}
    total: dict[tuple[int, str], np.ndarray] = {}
    nights = []
    for night, folder in experts:
        values = []
        for (layer, proj), delta in expert_deltas(folder).items():
            tensor = tensors[f"blk.{layer}.{GGUF_NAMES[proj]}.weight"]
            if tensor.tensor_type.name != "Q4_1":
                continue
            values.append(block_rms_in_steps(delta, q4_1_steps(tensor)))
            total[(layer, proj)] = total.get((layer, proj), 0) + delta
        nights.append({"night": night, **summary(np.concatenate(values))})
    stack = np.concatenate([block_rms_in_steps(d, q4_1_steps(tensors[f"blk.{l}.{GGUF_NAMES[p]}.weight"]))
                            for (l, p), d in total.items()])
    record = {"command": command_line("benchmarks.fold_rms", argv), "machine": machine(), "commit": git_commit(),
              "home": str(args.home), "nights": nights, "stack": {"experts": len(experts), **summary(stack)}}
    write_record(args.out, record)
    print(json.dumps(record["stack"]), *[json.dumps(n) for n in nights], sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
