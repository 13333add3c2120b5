"""Folds on the chat model's own Q4_1 grid beside deep sleep's product ones, measured by
benchmarks.fold_quality: plain stochastic rounding (`STOCHASTIC`: the product's `fold_type =
"grid"`, dreamer.morning.grid_fold, without its MIN_STEP) and rounding by error feedback
(`CALIBRATED`), not offered: it keeps too little of the nights (docs/BENCHMARKS.md, "Deep sleep").

Folding at Q8_0 keeps the nights but makes the chat's projections a third bigger (and its decode
slower); folding at Q4_1 again rounds them away, because a night moves a weight by a few
hundredths of a grid step. Rounding each weight on its own is the problem, not the grid: what the
chat needs kept is each layer's *output*, W x, and a change too small for one weight is not too
small for the sum over a row. So the weights are rounded together, with error feedback over the
inputs (GPTQ, Frantar et al. 2022), on the base's grid:

    target T = dequantize(W) + the experts' change          # [out, in], what the night trained
    H = X^T X over calibration activations X of the layer's input, damped by 1% of its mean diagonal
    U = the upper Cholesky factor of H^-1
    for each input column j, in order:
        q_j = the nearest level of column j's own block (the base's scale d and minimum m kept)
        T[:, j+1:] -= ((T[:, j] - q_j) / U[j, j]) * U[j, j+1:]     # the error moved where X can absorb it

so the rounding error of early columns is taken up by later ones in the directions the layer's
inputs actually span. Each block keeps its d and m byte for byte; only 4-bit levels move.
"""

from __future__ import annotations

import numpy as np

from dreamer.morning.fold import grid_requantize
from dreamer.morning.grid_fold import BLOCK, GRID, grid_levels, pack, unpack

CALIBRATED = "Q4_1-calibrated"
STOCHASTIC = "Q4_1-stochastic"
GRID_TYPES = (CALIBRATED, STOCHASTIC, GRID)
DAMP = 0.01


def requantizer(qtype: str, hessians: dict[str, np.ndarray] | None = None):
    """The `requantize` that dreamer.morning.fold.fold calls for each changed tensor, for `qtype`
    (CALIBRATED needs `hessians`, {tensor name: X^T X of its input})."""
    import gguf

    from dreamer.morning.fold import FoldError, expert_change

    if qtype == GRID:
        return grid_requantize

    def requantize(tensor, parts: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
        if tensor.tensor_type != gguf.GGMLQuantizationType.Q4_1:
            raise FoldError(f"{qtype} keeps the model's own Q4_1 grid, but {tensor.name} is {tensor.tensor_type.name}")
        rows, columns = tensor.data.shape[0], int(tensor.shape[0])
        d, levels = unpack(tensor.data, "Q4_1", rows, columns)
        change = expert_change(parts)
        if qtype == CALIBRATED:
            if not hessians or tensor.name not in hessians:
                raise FoldError(f"{qtype} needs the calibration statistics of {tensor.name}'s input, and has none")
            levels = calibrated_levels(d, q4_1_minimums(tensor.data, rows, columns), levels, change,
                                       hessians[tensor.name])
        else:
            levels = grid_levels(tensor.name, "Q4_1", d, levels, change, min_step=0.0)
        return pack(tensor.data, "Q4_1", levels)

    return requantize


def q4_1_minimums(raw: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """m [rows, blocks] of a Q4_1 tensor's bytes (each block: f16 d, f16 m, 16 bytes of levels)."""
    blocks = np.asarray(raw).reshape(rows, columns // BLOCK, 20)
    return blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)


def calibrated_levels(d: np.ndarray, m: np.ndarray, levels: np.ndarray, change: np.ndarray,
                      hessian: np.ndarray, block: int = 128) -> np.ndarray:
    """The levels that reproduce (dequantize(W) + change) x best over the calibration inputs, by the
    error feedback in the module docstring (GPTQ's lazy batches of `block` columns), the inputs
    taken in order of falling activity (GPTQ's act-order: the errors go to the quieter inputs)."""
    rows, columns = levels.shape
    order = np.argsort(-np.diag(hessian), kind="stable")
    dd, mm = np.repeat(d, BLOCK, axis=1)[:, order], np.repeat(m, BLOCK, axis=1)[:, order]
    old = levels[:, order].astype(np.float64)
    target = dd * old + mm + change[:, order]
    h = np.array(hessian, dtype=np.float64)[np.ix_(order, order)]
    dead = np.diag(h) == 0  # an input never active: its weights cannot matter
    h[dead, dead] = 1.0
    h += DAMP * np.mean(np.diag(h)) * np.eye(columns)
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    safe = np.where(dd == 0, 1.0, dd)
    out = old.copy()
    for start in range(0, columns, block):
        stop = min(start + block, columns)
        part, errors = target[:, start:stop].copy(), np.zeros((rows, stop - start))
        for k in range(stop - start):
            j = start + k
            level = np.clip(np.rint((part[:, k] - mm[:, j]) / safe[:, j]), 0, 15)
            level = np.where(dd[:, j] == 0, old[:, j], level)
            error = (part[:, k] - (dd[:, j] * level + mm[:, j])) / upper[j, j]
            part[:, k + 1:] -= np.outer(error, upper[j, start + k + 1:stop])
            errors[:, k], out[:, j] = error, level
        target[:, stop:] -= errors @ upper[start:stop, stop:]
    restored = np.empty_like(out)
    restored[:, order] = out
    return restored


def input_hessians(model, token_lists: list[list[int]], gguf_names: dict[str, str]) -> dict[str, np.ndarray]:
    """{gguf tensor name: X^T X / tokens} of each named module's input over the token lists, run
    through `model` (a transformers model: the trained stack, so the inputs are what the folded
    model should reproduce). `gguf_names` maps module names (e.g. model.layers.0.self_attn.q_proj)
    to tensor names (blk.0.attn_q.weight)."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    modules = dict(model.named_modules())
    hooks = []

    def hook_for(name: str):
        def accumulate(_module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return accumulate

    for module_name, tensor_name in gguf_names.items():
        hooks.append(modules[module_name].register_forward_pre_hook(hook_for(tensor_name)))
    try:
        with torch.no_grad():
            for ids in token_lists:
                model(input_ids=torch.tensor([ids]))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (total / counts[name]).numpy() for name, total in sums.items()}


def module_tensor_names(model, wanted: set[str]) -> dict[str, str]:
    """{module name in `model` (a transformers model, PEFT-wrapped or not): GGUF tensor name} for
    the projections whose tensors are in `wanted`."""
    import re

    import gguf

    from dreamer.morning.export_gguf import ARCHITECTURES

    config = model.config
    arch_name = ARCHITECTURES[config.architectures[0]][0]
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name)
    names = gguf.get_tensor_name_map(arch, int(config.num_hidden_layers))
    found = {}
    for module_name, _ in model.named_modules():
        match = re.search(r"(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj)$", module_name)
        tensor = names.get_name(match.group(1) + ".weight", try_suffixes=(".weight",)) if match else None
        if tensor in wanted:
            found[module_name] = tensor
    return found
