"""`dreamer models` and `dreamer model use`: which model, whether sleep can train on it, what fits.

    dreamer models                 # the configured model, its size and architecture, sleep support,
                                   # this machine's memory, which presets fit, a night's estimated time
    dreamer model use PATH.gguf    # chat and sleep on this GGUF (config.toml's `model`; `train_model` cleared)
    dreamer model use PATH.gguf --train-model DIR   # ... training on DIR, checked to be the same model
    dreamer chat -m PATH.gguf      # one chat on another GGUF, config unchanged

One file is enough: a night dequantizes the chat's GGUF for training on first use
(dreamer.lm.model_files). Memory figures for presets are the one night measured here, scaled by
the model's parameters: the embedded 135M model peaked at 3.0 GB in `cpu-tiny` (docs/BENCHMARKS.md,
"Months of nights"), about 22 bytes a parameter with the runtime's own overhead.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click

from dreamer.cli.errors import DreamerError
from storage import ConfigError, dreamer_home, load_config
from storage.paths import config_path

def machine_memory() -> tuple[float, str | None, float]:
    """(RAM GiB, CUDA device name or None, its memory GiB)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return ram, props.name, props.total_memory / 2**30
    return ram, None, 0.0


@click.command()
def models() -> None:
    """The configured model, whether sleep can train on it, and which presets fit this machine."""
    from agent.models import ModelError, resolve_chat_model
    from dreamer.cli.common import open_store
    from dreamer.lm.model_files import ModelFileError, gguf_facts
    from dreamer.sleep.estimate import REFERENCE, estimate_night

    config = load_config()
    try:
        path, name = resolve_chat_model(config.model_path())
        facts = gguf_facts(path)
    except (ModelError, ModelFileError) as err:
        raise DreamerError(str(err)) from None
    click.echo(f"chat model:  {name}  {path}")
    click.echo(f"             {facts.architecture}, {facts.parameters / 1e6:.1f}M parameters, {facts.file_type}, "
               f"{facts.bytes / 2**20:.0f} MiB; vocabulary {facts.vocab}, width {facts.width}, {facts.layers} layers")
    if not facts.sleep_supported:
        click.echo(f"sleep:       not supported: {facts.architecture} (sleep trains on llama, qwen2 and qwen3 GGUFs)")
    elif config.train_model:
        click.echo(f"sleep:       supported; trains on train_model {config.train_model} (checked to be the same model)")
    else:
        click.echo("sleep:       supported; trains on this file, dequantized once into the cache on the first night")
    ram, gpu, vram = machine_memory()
    click.echo(f"this machine: {os.cpu_count()} cores, {ram:.1f} GiB RAM, "
               + (f"{gpu} with {vram:.1f} GiB" if gpu else "no CUDA GPU"))
    measured = REFERENCE["cpu-tiny"]  # the embedded model's measured night, scaled by parameters
    need = facts.parameters * measured["peak_mb"] * 2**20 / measured["parameters"] / 2**30
    store = open_store(config, write=False)
    cpu_fits = "fits" if need < 0.8 * ram else "does not fit"
    click.echo(f"  cpu-tiny   {cpu_fits}: a night needs about {need:.1f} GiB (scaled from the 135M model's measured "
               f"3.0 GB peak); {estimate_night(store, 'cpu-tiny', 100, config)}")
    if gpu:
        weights = facts.parameters * 0.56 / 2**30  # NF4: 4 bits a weight plus its block scales
        click.echo(f"  gpu-qlora  the NF4 weights take about {weights:.1f} of {vram:.1f} GiB; activations and the "
                   "experts come on top (not measured here: no GPU night has run)")
    else:
        click.echo("  gpu-qlora  needs a CUDA GPU")
    click.echo(f"  `auto` (sleep_preset) picks {'gpu-qlora' if gpu else 'cpu-tiny'} here")


@click.group()
def model() -> None:
    """Choose the model: `dreamer model use PATH.gguf`."""


@model.command("use")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--train-model", type=click.Path(file_okay=False, path_type=Path),
              help="train on this Hugging Face folder of the same model instead of the GGUF dequantized")
def use(path: Path, train_model: Path | None) -> None:
    """Chat and sleep on this GGUF from now on (sets `model`; `train_model` cleared, or --train-model)."""
    from dreamer.lm.model_files import ModelFileError, gguf_facts, require_sleep_support, same_model

    path = path.expanduser().resolve()
    try:
        facts = gguf_facts(path)
        require_sleep_support(facts)
        if train_model is not None:
            train_model = train_model.expanduser().resolve()
            if not (train_model / "config.json").is_file():
                raise ModelFileError(f"{train_model}: not a Hugging Face model folder (no config.json)")
            same_model(facts, train_model)
    except ModelFileError as err:
        raise DreamerError(str(err)) from None
    config = load_config()  # a broken config.toml is named before anything is written
    from dreamer.cli.common import open_store

    active = open_store(config).active_adapters()
    if active and Path(config.model_path() or "") != path:
        raise DreamerError(
            f"the memory's {len(active)} night(s) were trained on the current model, and no other model can "
            "apply them: `dreamer rollback 0` first (the base alone; the nights stay on disk, and `dreamer "
            "rollback V` brings them back with the old model), then `dreamer model use` again")
    target = config_path(dreamer_home())
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    cleared = re.search(r"^train_model\s*=.*$", text, flags=re.M) is not None
    text = re.sub(r"^(train_model|model)\s*=.*\n?", "", text, flags=re.M)
    text = f"model = {json.dumps(str(path))}\n" + text  # a JSON string is a valid TOML basic string
    if train_model is not None:
        text = f"train_model = {json.dumps(str(train_model))}\n" + text
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    try:
        load_config(partial)  # the new file is checked before it replaces the old one
    except ConfigError as err:
        partial.unlink()
        raise DreamerError(f"config.toml not changed: {err}") from None
    partial.replace(target)  # atomic: a crash leaves the old file
    trains = (f"; nights train on {train_model} (the same model)" if train_model is not None else
              "; train_model cleared: the first night dequantizes this file for training" if cleared else
              "; the first night dequantizes it for training")
    click.echo(f"model: {facts.name} ({facts.architecture}, {facts.parameters / 1e6:.0f}M parameters) from {path}{trains}")
    click.echo("a running chat keeps its model until it is restarted")
