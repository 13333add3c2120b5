"""Dreaming, step 3: learn to dream (ReST-EM).

The dream writer is its own LoRA adapter (`writer`), applied over the active stack while it
writes dreams (dreamer.sleep.dreaming.write) and never part of what the chat serves. After the
rewards are in, the writer trains `writer_steps` steps of cross-entropy on what it wrote for its
*rewarded* dreams (request and reply), under the very prompt it wrote them from (the kind's worked
examples and the user's turn): the E-step keeps the samples that earned a reward, the M-step
raises their likelihood. No rewarded dream, or `writer_learning_rate = 0` (the untrained
baseline), and the writer is left exactly as it was.

Where it lives: a promoted night whose writer learned saves it inside its own expert folder
(`run-NNNN/writer/`), so it is renamed into place, promoted and rolled back together with that
night's expert; a night loads the writer of the newest active expert that has one, or starts a
fresh one (its B matrices zero: the first night's writer writes as the stack alone). A rejected,
failed or interrupted night leaves every writer on disk as it was.

    dreamer sleep --now      # with [dreaming] enabled = true; `dreamer memory` lists its history
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from dreamer.lm.prompt_cache import PromptCache
from dreamer.lm.weights import WRITER, adapters, lora_config, stack_names, trainable_parameters, use_adapters
from dreamer.sleep.config import DistillConfig, DreamingConfig
from dreamer.sleep.dreaming.write import Dream
from dreamer.sleep.seeding.distill import continuation_ids, teacher_logits

FOLDER = "writer"  # inside an expert's folder


def saved_writer(experts: list[Path]) -> Path | None:
    """The writer folder of the newest expert that has one."""
    for path in reversed(experts):
        if (Path(path) / FOLDER / "adapter_config.json").is_file():
            return Path(path) / FOLDER
    return None


def attach_writer(model, experts: list[Path], cfg: DreamingConfig, distill: DistillConfig) -> Path | None:
    """Load the saved writer (trainable) or add a fresh one; the folder it came from, or None."""
    if WRITER in model.peft_config:
        raise RuntimeError("the model already has a dream writer")
    folder = saved_writer(experts)
    if folder is not None:
        model.load_adapter(str(folder), adapter_name=WRITER, is_trainable=True)
    else:
        shape = DistillConfig(**{**vars(distill), "rank": cfg.writer_rank, "lora_alpha": 2 * cfg.writer_rank})
        model.add_adapter(WRITER, lora_config(model, shape))
    use_adapters(model, stack_names(model))  # the stack as before; only tonight's expert trainable
    return folder


def detach_writer(model) -> None:
    if WRITER in model.peft_config:
        model.delete_adapter(WRITER)
        use_adapters(model, stack_names(model))


def train_writer(model, tokenizer, rewarded: list[Dream], stack: list[str], cfg: DreamingConfig,
                 rng: random.Random) -> dict:
    """ReST-EM's M-step on what the writer wrote for its rewarded dreams; its loss before and after."""
    items = [d for d in rewarded if d.writer_prompt is not None and d.written]
    if not items or cfg.writer_learning_rate == 0:
        why = "no rewarded dream to learn from" if not items else "writer_learning_rate = 0 (untrained writer)"
        return {"trained": False, "why": why, "steps": 0}
    losses = []
    names = stack + [WRITER]
    cache = PromptCache(tokenizer)
    with adapters(model, names, trainable=WRITER):
        params = trainable_parameters(model)
        optimizer = torch.optim.AdamW(params, lr=cfg.writer_learning_rate, weight_decay=0.0)
        order = []
        for _ in range(cfg.writer_steps):
            if not order:
                order = rng.sample(items, len(items))
            dream = order.pop()
            target = continuation_ids(tokenizer, dream.written)
            logits = teacher_logits(model, cache, dream.writer_prompt, names, target)
            loss = torch.nn.functional.cross_entropy(logits[0], torch.tensor(target, device=logits.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    return {"trained": True, "steps": len(losses), "examples": len(items), "loss_first": losses[0],
            "loss_last": losses[-1]}


def save_writer(model, expert_folder: Path) -> Path:
    """The writer as a PEFT folder inside tonight's (candidate) expert folder."""
    model.save_pretrained(str(expert_folder), selected_adapters=[WRITER])  # PEFT nests it under its name
    folder = Path(expert_folder) / FOLDER
    if not (folder / "adapter_config.json").is_file():
        raise RuntimeError(f"the dream writer was not saved where expected ({folder})")
    return folder
