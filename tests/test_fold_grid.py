"""benchmarks.fold_grid: folds on the chat model's own Q4_1 grid, measured beside Q8_0 by
benchmarks.fold_quality (not offered as a fold_type)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from benchmarks.fold_grid import (CALIBRATED, STOCHASTIC, calibrated_levels, input_hessians, module_tensor_names,
                                  pack, requantizer, unpack)
from dreamer.morning.fold import FoldError, expert_deltas, fold
from tests.test_fold import save_expert, tensors, tiny_pair  # noqa: F401 (a fixture)


def q4_base(tiny_pair, tmp_path):  # noqa: F811
    """The tiny model with one expert folded in at Q4_1: a base on Q4_1's grid, as the embedded one is."""
    model_dir, experts = tiny_pair
    quantized = tmp_path / "q4.gguf"
    fold(model_dir / "model.gguf", [(experts[0], 1.0)], quantized, "Q4_1")
    return model_dir, quantized


def test_stochastic_rounding_keeps_a_small_change_on_average_where_nearest_rounding_erases_it(tiny_pair, tmp_path):  # noqa: F811
    """A change of a few hundredths of a grid step: nearest rounding on Q4_1 again keeps almost none
    of it; rounding at random in proportion keeps it on average (projection near 1)."""
    model_dir, quantized = q4_base(tiny_pair, tmp_path)
    before = tensors(quantized)
    expert = save_expert(model_dir, tmp_path / "night", seed=3)
    unit = tensors(fold(quantized, [(expert, 1.0)], tmp_path / "unit.gguf", "F32").path)
    names = [n for n in before if "attn_" in n or "ffn_" in n]
    steps = [np.ptp(before[n].reshape(-1, 32), axis=1).mean() / 15 for n in names]
    scale = 0.04 * float(np.mean(steps)) / float(np.mean([np.sqrt(((unit[n] - before[n]) ** 2).mean()) for n in names]))
    exact = tensors(fold(quantized, [(expert, scale)], tmp_path / "exact.gguf", "F32").path)
    kept = {}
    for name, kwargs in {"Q4_1": {}, STOCHASTIC: {"requantize": requantizer(STOCHASTIC)}}.items():
        after = tensors(fold(quantized, [(expert, scale)], tmp_path / f"{name}.gguf", name, **kwargs).path)
        moved = sum(float(((after[n] - before[n]) * (exact[n] - before[n])).sum()) for n in names)
        kept[name] = moved / sum(float(((exact[n] - before[n]) ** 2).sum()) for n in names)
    assert kept["Q4_1"] < 0.3 and 0.7 < kept[STOCHASTIC] < 1.3, kept


def test_a_grid_fold_keeps_each_block_s_scale_is_reproducible_and_needs_a_q4_1_base(tiny_pair, tmp_path):  # noqa: F811
    model_dir, quantized = q4_base(tiny_pair, tmp_path)
    night = save_expert(model_dir, tmp_path / "night", seed=5, scale=0.1)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    changed = set(expert_deltas([(night, 1.0)]))
    hessians = input_hessians(base, [[1, 5, 9, 13, 2, 7], [3, 4, 8, 20, 11]], module_tensor_names(base, changed))
    assert set(hessians) == changed
    source = {t.name: t for t in gguf.GGUFReader(str(quantized)).tensors}
    moved = {STOCHASTIC: 0, CALIBRATED: 0}
    for qtype, hessian_set in ((STOCHASTIC, None), (CALIBRATED, hessians)):
        once = fold(quantized, [(night, 1.0)], tmp_path / "a.gguf", qtype, requantize=requantizer(qtype, hessian_set))
        again = fold(quantized, [(night, 1.0)], tmp_path / "b.gguf", qtype, requantize=requantizer(qtype, hessian_set))
        assert once.path.read_bytes() == again.path.read_bytes()
        for tensor in gguf.GGUFReader(str(once.path)).tensors:
            if tensor.name in changed:
                assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1
                new, old = np.asarray(tensor.data).reshape(-1, 20), np.asarray(source[tensor.name].data).reshape(-1, 20)
                np.testing.assert_array_equal(new[:, :4], old[:, :4])  # d and m, byte for byte
                moved[qtype] += int((new[:, 4:] != old[:, 4:]).sum())
    assert moved[STOCHASTIC] > 0 and moved[CALIBRATED] > 0, moved  # levels moved: the change is not dropped
    with pytest.raises(FoldError, match="own Q4_1 grid"):
        fold(model_dir / "model.gguf", [(night, 1.0)], tmp_path / "c.gguf", STOCHASTIC, requantize=requantizer(STOCHASTIC))


def test_calibrated_rounding_reproduces_part_of_a_small_change_on_its_inputs():
    """On correlated inputs, error feedback over the columns turns a change far below one grid step
    into level flips that carry part of it (nearest rounding carries none), without a larger output
    error than dropping the change."""
    rng = np.random.default_rng(0)
    rows, columns = 64, 256
    raw = gguf.quants.quantize(rng.normal(0, 0.05, (rows, columns)).astype(np.float32), gguf.GGMLQuantizationType.Q4_1)
    d, m, levels = unpack(raw, rows, columns)
    np.testing.assert_array_equal(pack(raw, levels), raw)
    np.testing.assert_allclose(np.repeat(d, 32, axis=1) * levels + np.repeat(m, 32, axis=1),  # the layout gguf reads
                               gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1).reshape(rows, columns), atol=1e-6)
    x = rng.normal(size=(3000, 16)) @ rng.normal(size=(16, columns)) * 0.3 + rng.normal(size=(3000, columns)) * 0.1
    change = rng.normal(size=(rows, 2)) @ rng.normal(size=(2, columns))
    change *= 0.04 * d.mean() / np.sqrt((change ** 2).mean())
    flipped = calibrated_levels(d, m, levels, change, x.T @ x / len(x))
    grid = lambda lv: np.repeat(d, 32, axis=1) * lv + np.repeat(m, 32, axis=1)  # noqa: E731
    signal = change @ x.T
    moved = (grid(flipped) - grid(levels)) @ x.T
    kept = float((moved * signal).sum() / (signal ** 2).sum())
    error = np.sqrt(((moved - signal) ** 2).mean() / (signal ** 2).mean())
    assert kept > 0.5 and error <= 1.05, (kept, error)
    assert np.abs(flipped - levels).max() <= 2
