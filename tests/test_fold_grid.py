"""Folds on the chat model's own grid: the product's `fold_type = "grid"` (dreamer.morning.grid_fold),
in a fold and in a night, and benchmarks.fold_grid's roundings measured beside it."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from benchmarks.fold_grid import (CALIBRATED, STOCHASTIC, calibrated_levels, input_hessians, module_tensor_names,
                                  q4_1_minimums, requantizer)
from dreamer.morning.fold import FoldError, ensure_folded, expert_deltas, fold, resolve_fold_type
from dreamer.morning.grid_fold import GRID, LAYOUTS, MIN_STEP, grid_levels, grid_problem, pack, unpack
from storage.manifest import fold_made, read_manifest
from tests.test_fold import _promote, save_expert, tensors, tiny_pair  # noqa: F401 (a fixture)
from tests.test_sleep import night


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
    moved = {STOCHASTIC: 0, CALIBRATED: 0, GRID: 0}
    for qtype, hessian_set in ((STOCHASTIC, None), (CALIBRATED, hessians), (GRID, None)):
        once = fold(quantized, [(night, 1.0)], tmp_path / "a.gguf", qtype, requantize=requantizer(qtype, hessian_set))
        again = fold(quantized, [(night, 1.0)], tmp_path / "b.gguf", qtype, requantize=requantizer(qtype, hessian_set))
        assert once.path.read_bytes() == again.path.read_bytes()
        for tensor in gguf.GGUFReader(str(once.path)).tensors:
            if tensor.name in changed:
                assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1
                new, old = np.asarray(tensor.data).reshape(-1, 20), np.asarray(source[tensor.name].data).reshape(-1, 20)
                np.testing.assert_array_equal(new[:, :4], old[:, :4])  # d and m, byte for byte
                moved[qtype] += int((new[:, 4:] != old[:, 4:]).sum())
    assert min(moved.values()) > 0, moved  # levels moved: the change is not dropped
    with pytest.raises(FoldError, match="own Q4_1 grid"):
        fold(model_dir / "model.gguf", [(night, 1.0)], tmp_path / "c.gguf", STOCHASTIC, requantize=requantizer(STOCHASTIC))
    with pytest.raises(FoldError, match='fold_type "grid" writes Q4_0, Q4_1, Q8_0 tensors, but blk.0.* is F32'):
        fold(model_dir / "model.gguf", [(night, 1.0)], tmp_path / "c.gguf", GRID, requantize=requantizer(GRID))
    assert "has blk.0." in grid_problem(model_dir / "model.gguf") and grid_problem(quantized) is None


def test_calibrated_rounding_reproduces_part_of_a_small_change_on_its_inputs():
    """On correlated inputs, error feedback over the columns turns a change far below one grid step
    into level flips that carry part of it (nearest rounding carries none), without a larger output
    error than dropping the change."""
    rng = np.random.default_rng(0)
    rows, columns = 64, 256
    raw = gguf.quants.quantize(rng.normal(0, 0.05, (rows, columns)).astype(np.float32), gguf.GGMLQuantizationType.Q4_1)
    d, levels = unpack(raw, "Q4_1", rows, columns)
    m = q4_1_minimums(raw, rows, columns)
    np.testing.assert_array_equal(pack(raw, "Q4_1", levels), raw)
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


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_unpack_reads_ggml_s_own_block_layouts_and_pack_writes_them_back(kind):
    rng = np.random.default_rng(1)
    rows, columns = 8, 96
    qtype = gguf.GGMLQuantizationType[kind]
    raw = gguf.quants.quantize(rng.normal(0, 0.05, (rows, columns)).astype(np.float32), qtype)
    d, levels = unpack(raw, kind, rows, columns)
    np.testing.assert_array_equal(pack(raw, kind, levels), raw)
    values = gguf.quants.dequantize(raw, qtype).reshape(rows, columns)
    if kind == "Q4_1":  # w = d q + m
        expected = np.repeat(d, 32, axis=1) * levels + np.repeat(q4_1_minimums(raw, rows, columns), 32, axis=1)
    else:  # Q4_0: w = d (q - 8); Q8_0: w = d q
        expected = np.repeat(d, 32, axis=1) * (levels - (8 if kind == "Q4_0" else 0))
    np.testing.assert_allclose(expected, values, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_the_grid_fold_keeps_the_change_it_does_not_leave_out_on_average(kind):
    """Where |change| >= MIN_STEP of a step the levels move by the change on average (their summed
    move over the summed change, near 1); below it they do not move; never past the type's range."""
    rng = np.random.default_rng(2)
    rows, columns = 64, 512
    qtype = gguf.GGMLQuantizationType[kind]
    raw = gguf.quants.quantize(rng.normal(0, 0.05, (rows, columns)).astype(np.float32), qtype)
    d, levels = unpack(raw, kind, rows, columns)
    steps = rng.normal(0, 0.15, (rows, columns))  # the change, in grid steps
    new = grid_levels("blk.0.ffn_up.weight", kind, d, levels, steps * np.repeat(d, 32, axis=1))
    moved, kept = new - levels, np.abs(steps) >= MIN_STEP
    low, high = LAYOUTS[kind][2:]
    inside = kept & (levels > low) & (levels < high)  # a level at the edge cannot move outward
    assert (moved[~kept] == 0).all() and kept.mean() > 0.6
    ups, downs = steps[inside] > 0, steps[inside] < 0
    assert abs(moved[inside][ups].sum() / steps[inside][ups].sum() - 1) < 0.1
    assert abs(moved[inside][downs].sum() / steps[inside][downs].sum() - 1) < 0.1
    assert new.min() >= low and new.max() <= high and np.abs(moved).max() <= 1


def test_a_night_with_fold_type_grid_serves_the_chat_model_s_own_size_and_type(tiny_pair, store, tiny_dir,
                                                                              dreamer_home, fake_judge, monkeypatch):
    """A night on a Q4_1 chat model folds on its grid: the served file has the source's tensor types
    and size; changing fold_type folds again; a model the grid fold cannot write stops the night
    before it trains, and changes nothing."""
    import dreamer.sleep.stages as stages
    from storage import Config

    real_check = stages.check_foldable

    model_dir, _ = tiny_pair
    chat = dreamer_home / "chat-q4_1.gguf"  # the tiny model's Q4_1 twin: every projection on a 4-bit grid
    fold(tiny_dir / "model.gguf", [(save_expert(tiny_dir, dreamer_home / "zero", seed=1), 0.0)], chat, "Q4_1")
    real = Config
    monkeypatch.setattr("tests.test_sleep.Config", lambda **kw: real(**{**kw, "model": str(chat)}, fold_type=GRID))
    _promote(store, tiny_dir, dreamer_home, fake_judge, monkeypatch, "My sister Ana lives in Lisbon.")
    served = read_manifest(dreamer_home)["served"]
    source = {t.name: t.tensor_type for t in gguf.GGUFReader(str(chat)).tensors}
    assert {t.name: t.tensor_type for t in gguf.GGUFReader(served["model"]).tensors} == source
    assert abs(Path(served["model"]).stat().st_size - chat.stat().st_size) < 4096  # the folded_experts key
    paths = [e["path"] for e in read_manifest(dreamer_home)["experts"]]
    assert fold_made(dreamer_home, paths) == (str(chat), GRID)
    assert ensure_folded(dreamer_home, real(model=str(chat), fold_type=GRID), paths) is None  # whole: kept
    again = ensure_folded(dreamer_home, real(model=str(chat), fold_type="Q8_0"), paths)  # another type: made again
    assert again is not None and fold_made(dreamer_home, paths) == (str(chat), "Q8_0")
    assert ensure_folded(dreamer_home, real(model=str(chat)), paths).qtype == GRID  # the default, auto: its grid
    assert resolve_fold_type("auto", chat) == GRID and resolve_fold_type("auto", tiny_dir / "model.gguf") == "Q8_0"

    from click.testing import CliRunner

    from dreamer.cli.main import cli

    # No active stack (so the start's repair folds nothing), and the F32 twin: no grid to keep.
    (dreamer_home / "config.toml").write_text(f'model = "{chat}"\nfold_type = "grid"\n')
    assert CliRunner().invoke(cli, ["rollback", "0"]).exit_code == 0
    monkeypatch.setattr("tests.test_sleep.Config", lambda **kw: real(**kw, fold_type=GRID))
    monkeypatch.setattr(stages, "distill", lambda *a, **k: pytest.fail("trained before the fold check"))
    checked = []
    monkeypatch.setattr(stages, "check_foldable", lambda config: checked.append(1) or real_check(config))
    before = read_manifest(dreamer_home)
    conversation = store.new_conversation()
    store.add_message(conversation, "user", "My cat is called Miso.")
    waiting = store.unconsolidated_count()
    with pytest.raises(FoldError, match='fold_type "grid" keeps the chat model.s own grid.*set fold_type = "Q8_0"'):
        night(store, tiny_dir, dreamer_home, fake_judge)
    assert checked and read_manifest(dreamer_home) == before and store.unconsolidated_count() == waiting
