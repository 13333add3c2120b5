"""Deep sleep: the active experts folded into the chat model's weights, one GGUF with no adapter.

    dreamer memory --fold            # (re)build what the chat serves for the active stack

Every promoted night adds a LoRA expert, and llama.cpp applies each one at every token: decode
slows with every night (docs/BENCHMARKS.md, "Deep sleep"). Folding writes the chat's GGUF again
with the experts merged in, in llama.cpp's own layout (the rows of q/k permuted as
`dreamer.morning.export_gguf.convert` does for the adapters):

    W' = dequantize(W) + sum over experts e of  scale_e * alpha_e / r_e * B_e @ A_e

written on the chat model's own grid (`fold_type = "grid"`, the default where the chat model's
projections are Q4_0, Q4_1 or Q8_0: dreamer.morning.grid_fold), or quantized to another type
(Q8_0 by default elsewhere) with the `gguf` package's port of ggml's reference quantizers. Only the
tensors an expert touches are rewritten; every other tensor (embeddings, norms) and all metadata
are copied byte for byte. The model is streamed tensor by tensor; only the experts' LoRA matrices
are held whole (12 MiB a night for cpu-tiny's).

Why not simply quantize again to the base's Q4_1: a Q4_1 weight dequantizes onto its own 4-bit
grid, and a night's delta is far below half a grid step, so nearest rounding puts most of the
night back; Q8_0 has ~16x finer steps, and the grid fold rounds at random in proportion. Measured
with `python -m benchmarks.fold_quality` and `python -m benchmarks.fold_nights`.

Where it lives (storage.manifest: the manifest's `served` entry names it, and the chat loads it
instead of its configured model; both are named after the experts' folders, `served_key`):

    DREAMER_HOME/adapters/served/stack-<key>.gguf     the active experts folded in
                                 stack-<key>.json     the chat model it was folded from, the type
                                 (the same two for the stack before, kept for a quick rollback)

Written to `.partial-PID` and renamed, sidecar first: a kill leaves the old model serving and
at worst a partial file that `remove_stale` (or storage.recovery) deletes. After each fold only
the active stack's and the previous stack's files are kept (disk: two models); rolling back
further folds the version's experts again.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.manifest import SERVED, fold_made, served_files, served_key
from storage.paths import adapters_dir, ensure_private_dir, make_private
from storage.store import pid_alive

FOLD_TYPE = "Q8_0"
AUTO = "auto"


class FoldError(RuntimeError):
    """The stack cannot be folded into this chat model; the message says why."""


@dataclass(frozen=True)
class Folded:
    path: Path
    tensors: int  # rewritten with the experts merged in
    seconds: float
    bytes: int
    qtype: str = FOLD_TYPE


def resolve_fold_type(fold_type: str, chat_model: Path) -> str:
    """The type a fold is written in: `fold_type`, or for "auto" the chat model's own grid where
    dreamer writes it (its size and decode speed, judged against Q8_0 on 14 paired nights:
    docs/BENCHMARKS.md, "Deep sleep"), else Q8_0. FoldError for "grid" on a model whose grid
    dreamer does not write."""
    from dreamer.morning.grid_fold import GRID, grid_problem

    if fold_type not in (AUTO, GRID):
        return fold_type
    problem = grid_problem(chat_model)
    if problem and fold_type == GRID:
        raise FoldError(problem)
    return FOLD_TYPE if problem else GRID


def fold_stack(home: Path, chat_model: Path, folders: list[Path], names: list[Path] | None = None,
               qtype: str = FOLD_TYPE) -> Folded:
    """Fold the experts in `folders` (oldest first, scale 1) into `chat_model`, as the manifest will
    look for them: under the names `names` (their final folders; tonight's expert is still a
    candidate folder while it is folded), with a sidecar naming the source and the type (`qtype`,
    "auto" resolved: resolve_fold_type)."""
    from dreamer.morning.grid_fold import GRID

    qtype = resolve_fold_type(qtype, chat_model)  # a FoldError here leaves an earlier fold as it was
    model, sidecar = served_files(home, [str(p) for p in (names or folders)])
    ensure_private_dir(model.parent)
    # The sidecar last, and an old one (a fold of these experts of another type or source) gone
    # first: a kill in between leaves a model without a sidecar, which is served as adapters and
    # folded again, never a model labelled as what it is not.
    sidecar.unlink(missing_ok=True)
    folded = fold(chat_model, [(Path(f), 1.0) for f in folders], model, qtype,
                  names=[Path(p).name for p in (names or folders)],
                  requantize=grid_requantize if qtype == GRID else None)
    partial = sidecar.with_name(f"{sidecar.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps({"source": str(chat_model), "type": qtype,
                                   "experts": [Path(p).name for p in (names or folders)]}, indent=1))
    make_private(partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, sidecar)
    return folded


def expert_deltas(experts: list[tuple[Path, float]]) -> dict[str, list[tuple[np.ndarray, np.ndarray, float]]]:
    """{gguf tensor name: [(B, A, factor), ...]} for the experts, in llama.cpp's layout."""
    from dreamer.morning.export_gguf import base_config_from_metadata, convert, read_peft

    deltas: dict[str, list] = {}
    for folder, scale in experts:
        adapter_config, tensors = read_peft(Path(folder))
        _, alpha, converted = convert(tensors, adapter_config, base_config_from_metadata(Path(folder)))
        for name, a in converted.items():
            if not name.endswith(".lora_a"):
                continue
            b = converted[name[:-1] + "b"]
            deltas.setdefault(name.removesuffix(".lora_a"), []).append((b, a, scale * alpha / a.shape[0]))
    return deltas


def grid_requantize(tensor, parts: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """`fold`'s `requantize` for fold_type "grid": the tensor's change on its own grid (dreamer.morning.grid_fold)."""
    from dreamer.morning.grid_fold import GridError, grid_tensor

    try:
        return grid_tensor(tensor, expert_change(parts))
    except GridError as err:
        raise FoldError(str(err)) from None


def expert_change(parts: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """One tensor's change [out, in] from its `expert_deltas` parts: each B @ A times its factor, summed."""
    return sum(np.float32(factor) * (b @ a) for b, a, factor in parts)


def fold(model_path: Path, experts: list[tuple[Path, float]], out: Path, qtype: str = FOLD_TYPE,
         names: list[str] | None = None, only: set[str] | None = None, requantize=None) -> Folded:
    """Write `model_path` with `experts` ((PEFT folder, scale), oldest first) merged in, to `out`;
    the file's `dreamer.folded_experts` lists `names` (default: the folders' names). With `only`,
    the tensors outside it keep the source's bytes, their change dropped (benchmarks.fold_quality
    measures what that costs). With `requantize(tensor, parts) -> bytes`, each changed tensor is
    written in the source's own type by that function instead (dreamer.morning.grid_fold, and
    benchmarks.fold_grid's calibrated rounding), `qtype` only naming it."""
    import gguf

    started = time.monotonic()
    target = None if requantize else gguf.GGMLQuantizationType[qtype]
    deltas = {name: parts for name, parts in expert_deltas(experts).items() if only is None or name in only}
    reader = gguf.GGUFReader(str(model_path))
    by_name = {t.name: t for t in reader.tensors}
    missing = sorted(set(deltas) - set(by_name))
    if missing:
        raise FoldError(f"{model_path} has no tensor {missing[0]} that the experts change: the experts were "
                        "trained on another model than the chat's")
    for name, parts in deltas.items():  # every shape checked before a byte is written
        tensor = by_name[name]
        shape = (tensor.data.shape[0], int(tensor.shape[0]))
        for b, a, _ in parts:
            if (b.shape[0], a.shape[1]) != shape:
                raise FoldError(f"{name} is {shape} in {model_path} but an expert's change is "
                                f"{(b.shape[0], a.shape[1])}: the experts were trained on another model")
    arch = str(reader.fields["general.architecture"].contents())
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    ensure_private_dir(out.parent)
    writer = gguf.GGUFWriter(str(partial), arch, endianess=reader.endianess)
    types = {}
    try:
        _copy_metadata(reader, writer, gguf)
        writer.add_string("dreamer.folded_experts", ",".join(names or [Path(f).name for f, _ in experts]))
        for tensor in reader.tensors:
            if tensor.name in deltas and requantize is None:
                rows, columns = tensor.data.shape[0], int(tensor.shape[0])
                block = gguf.GGML_QUANT_SIZES[target][0]
                # A row that the type's blocks do not tile is written in F16 instead.
                types[tensor.name] = target if columns % block == 0 else gguf.GGMLQuantizationType.F16
                shape = gguf.quant_shape_to_byte_shape((rows, columns), types[tensor.name])
                writer.add_tensor_info(tensor.name, shape, np.dtype(np.uint8), shape[0] * shape[1],
                                       raw_dtype=types[tensor.name])
            else:
                writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                       raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            data = tensor.data
            if tensor.name in deltas and requantize:
                data = requantize(tensor, deltas[tensor.name])
            elif tensor.name in deltas:
                data = gguf.quants.quantize(merged(tensor, deltas[tensor.name], gguf), types[tensor.name])
            writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        writer.close()
        with open(partial, "rb") as handle:  # the manifest will point at it: on disk before the rename
            os.fsync(handle.fileno())
        os.chmod(partial, 0o600)
        os.replace(partial, out)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return Folded(out, len(deltas), time.monotonic() - started, out.stat().st_size, qtype)


def merged(tensor, parts: list[tuple[np.ndarray, np.ndarray, float]], gguf) -> np.ndarray:
    """The tensor's float32 weights [out, in] plus each expert's B @ A times its factor."""
    weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=True)
    weight = weight.reshape(tensor.data.shape[0], int(tensor.shape[0]))
    for b, a, factor in parts:
        weight += np.float32(factor) * (b @ a)
    return weight


def _copy_metadata(reader, writer, gguf) -> None:
    """Every key of the source but the ones GGUFWriter writes itself."""
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith(("GGUF.", "dreamer.")):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)


def remove_stale(home: Path, keep: list[list[str]]) -> list[Path]:
    """Delete folded models of stacks not in `keep` (lists of expert paths), and the partial
    files of processes that are gone."""
    folder = adapters_dir(home) / SERVED
    if not folder.is_dir():
        return []
    wanted = {served_key(paths) for paths in keep if paths}
    removed = []
    for path in folder.iterdir():
        partial = re.fullmatch(r"stack-\w+\.(gguf|json)\.partial-(\d+)", path.name)
        whole = re.fullmatch(r"stack-(\w+)\.(gguf|json)", path.name)
        if (partial and not pid_alive(int(partial.group(2)))) or (whole and whole.group(1) not in wanted):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# --- when to fold: the sleep's promotion and repair, `dreamer rollback`, `dreamer memory --fold` ---
def chat_model_to_fold(config) -> Path | None:
    """The chat GGUF a fold is made from, or None when nothing is folded (fold off, or the
    transformers chat runtime, which applies the PEFT experts itself)."""
    if not config.fold or config.chat_runtime != "llama":
        return None
    from agent.models import resolve_chat_model

    return resolve_chat_model(config.model_path())[0]


def ensure_folded(home: Path, config, expert_paths: list[str]) -> Folded | None:
    """Fold these experts unless folding is off or their folded model is already whole on disk, from
    this chat model and of the configured type (a damaged one is made again, and one of another
    `fold_type`); None when nothing was written."""
    from dreamer.morning.stack import gguf_problem

    chat_model = chat_model_to_fold(config)
    if chat_model is None or not expert_paths:
        return None
    model = served_files(home, expert_paths)[0]
    wanted = (str(chat_model), resolve_fold_type(config.fold_type, chat_model))
    if fold_made(home, expert_paths) == wanted and gguf_problem(model) is None:
        return None
    return fold_stack(home, chat_model, [Path(p) for p in expert_paths], qtype=wanted[1])
