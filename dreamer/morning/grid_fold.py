"""Deep sleep on the chat model's own grid: `fold_type = "grid"`, the nights folded in at the
chat model's size and decode speed.

A fold at Q8_0 keeps the nights but makes every changed projection bigger than the base's 4-bit
one (SmolLM2's fold: 127 MiB against 94, decode 0.83-0.96x over 14 nights); a fold quantized to Q4_1 again
rounds them away, because a night moves a weight by a few hundredths of its grid step d
(docs/BENCHMARKS.md, "Deep sleep"). This fold keeps every block's scale (and minimum) byte for
byte and moves only the integer levels q, so the file is the base's size and type:

    c = change / d                              # the experts' change, in grid steps
    q' = floor(q + c + u)   where |c| >= MIN_STEP,   u ~ uniform[0, 1) fixed per weight
    q' = q                  elsewhere

Rounding up or down at random in proportion (stochastic rounding) keeps the change on average
over the many weights a layer's output sums, where nearest rounding keeps none of it; the price is
noise, about |c| (1 - |c|) d^2 per weight. Weights the nights moved by less than MIN_STEP of a step
carry little of the change for their noise: leaving them as they were lowered the KL from what the
night trained on both general text and the nights' probes (0.108 -> 0.066 and 0.129 -> 0.081 on a
six-night home; `python -m benchmarks.grid_threshold`). `u` is seeded by the tensor's name, so a
fold is reproducible on one machine and numpy (a rollback folds the same file again) and a
weight's level only moves when the summed change of the nights crosses its own threshold.

Block types written (ggml's layouts, 32 weights a block): Q4_0 (f16 d, 16 bytes of nibbles;
w = d (q - 8)), Q4_1 (f16 d, f16 m, 16 bytes; w = d q + m) and Q8_0 (f16 d, 32 int8; w = d q).
A chat model whose changed tensors are of another type (K-quants, F16) cannot be folded this way:
`grid_problem` says so before a night trains.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

GRID = "grid"
MIN_STEP = 0.05  # changes below this share of a grid step are left out (module docstring)
BLOCK = 32
# type name: (bytes a block, bytes before the levels, lowest level, highest level)
LAYOUTS = {"Q4_0": (18, 2, 0, 15), "Q4_1": (20, 4, 0, 15), "Q8_0": (34, 2, -127, 127)}


def unpack(raw: np.ndarray, kind: str, rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """(d [rows, blocks] float32, levels [rows, columns] int) of a tensor's bytes in block type `kind`."""
    size, head, _, _ = LAYOUTS[kind]
    blocks = np.asarray(raw).reshape(rows, columns // BLOCK, size)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    body = blocks[..., head:]
    if kind == "Q8_0":
        levels = body.copy().view(np.int8).astype(np.int16)
    else:
        levels = np.concatenate([body & 0x0F, body >> 4], axis=-1).astype(np.int16)
    return d, levels.reshape(rows, columns)


def pack(raw: np.ndarray, kind: str, levels: np.ndarray) -> np.ndarray:
    """The tensor's bytes with new levels, every block's scale (and minimum) as it was."""
    size, head, _, _ = LAYOUTS[kind]
    rows, columns = levels.shape
    out = np.asarray(raw).reshape(rows, columns // BLOCK, size).copy()
    grouped = levels.reshape(rows, columns // BLOCK, BLOCK)
    if kind == "Q8_0":
        out[..., head:] = grouped.astype(np.int8).view(np.uint8)
    else:
        grouped = grouped.astype(np.uint8)
        out[..., head:] = grouped[..., :16] | (grouped[..., 16:] << np.uint8(4))
    return out.reshape(np.asarray(raw).shape)


def grid_levels(name: str, kind: str, d: np.ndarray, levels: np.ndarray, change: np.ndarray,
                min_step: float = MIN_STEP) -> np.ndarray:
    """The new levels (module docstring): floor(q + c + u) where |c| >= min_step, else q."""
    _, _, low, high = LAYOUTS[kind]
    steps = np.repeat(np.where(d == 0, 0.0, 1.0 / np.where(d == 0, 1.0, d)), BLOCK, axis=1) * change
    noise = np.random.default_rng(zlib.crc32(name.encode())).random(levels.shape, dtype=np.float32)
    moved = np.floor(levels + steps + noise).clip(low, high)
    return np.where(np.abs(steps) >= min_step, moved, levels).astype(np.int16)


class GridError(ValueError):
    """A tensor of a type this module does not write (dreamer.morning.fold turns it into a FoldError)."""


def grid_tensor(tensor, change: np.ndarray, min_step: float = MIN_STEP) -> np.ndarray:
    """One changed tensor's bytes (a gguf ReaderTensor) with `change` [out, in] folded on its own grid."""
    kind = tensor.tensor_type.name
    if kind not in LAYOUTS:
        raise GridError(f"fold_type \"grid\" writes {', '.join(LAYOUTS)} tensors, but {tensor.name} is {kind}: "
                        "set fold_type = \"Q8_0\"")
    rows, columns = tensor.data.shape[0], int(tensor.shape[0])
    d, levels = unpack(tensor.data, kind, rows, columns)
    return pack(tensor.data, kind, grid_levels(tensor.name, kind, d, levels, change, min_step))


def grid_problem(chat_model: Path) -> str | None:
    """Why `chat_model` cannot be folded on its own grid (a decoder projection of a type this module
    does not write), or None; checked before a night trains."""
    import gguf

    for tensor in gguf.GGUFReader(str(chat_model)).tensors:
        if tensor.name.startswith("blk.") and tensor.name.endswith(".weight") and len(tensor.shape) == 2 \
                and tensor.tensor_type.name not in LAYOUTS:
            return (f"fold_type \"grid\" keeps the chat model's own grid, which dreamer writes for "
                    f"{', '.join(LAYOUTS)} tensors; {chat_model.name} has {tensor.name} in "
                    f"{tensor.tensor_type.name}: set fold_type = \"Q8_0\"")
    return None
