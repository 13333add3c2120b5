"""The arms of `dreamer bench`: the memories a user could pick, each given the same days.

    base     no memory: the weights alone.
    context  the whole history in the prompt (the upper bound while it fits).
    recall   the chat's own retrieval (agent.memory.recall over every day) in the prompt: the
             text-memory alternative (what mem0, Letta or ChatGPT's memory do, in dreamer's words).
    naive    a new LoRA expert a night, next-token cross-entropy on the raw day rendered with
             the chat template, cut in max_seq_len windows.
    distill  a new LoRA expert a night, context distillation: the teacher (the stack with the
             day in its prompt, dreamer.sleep.seeding.memories) answers the memory writer's
             questions; cross-entropy on (question without the day -> answer). No replay, drift
             term or gate.
    sleep    dreamer's night, stage 1 alone (`[dreaming] enabled = false`): `sleep_now` in the arm's
             own DREAMER_HOME, with its gate (a rejected night leaves the stack as it was).
    dream    the same night with Dreaming on (`[dreaming] enabled = true`, the preset's other
             settings): paired with `sleep`, same days and night seeds, only Dreaming differs.
naive and distill use the preset's rank, alpha, targets, learning rate, steps, batch, schedule and
clipping, and stack their experts night after night as dreamer does (the earlier ones frozen).
Each night runs in its own fresh process (dreamer.bench.run); its wall time and peak resident
memory (VmHWM) are its own.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path


@dataclass(frozen=True)
class Arm:
    name: str
    memory: str  # what the prompt carries when scored: none | context | recall
    trains: bool


ARMS = {a.name: a for a in (Arm("base", "none", False), Arm("context", "context", False),
                            Arm("recall", "recall", False), Arm("naive", "none", True),
                            Arm("distill", "none", True), Arm("sleep", "none", True), Arm("dream", "none", True))}
NIGHTS = ("sleep", "dream")  # the arms that run dreamer's own night


class LogPhases:
    """sleep_now's progress sink inside a night's process: one line as each phase starts."""

    def __init__(self, label: str, log) -> None:
        self.label, self.log = label, log

    def phase(self, name: str, total: int | None = None):
        self.log(f"{self.label}: {name}")
        return lambda n=1: None


def sleep_night(home: str, source: str, records: list[dict], cfg, label: str, log_path: str) -> dict:
    """One dreamer night in `home`: the day imported (once), then `sleep_now`."""
    import os

    from dreamer.morning.stack import active_paths
    from dreamer.sleep.night import sleep_now
    from dreamer.sleep.report import process_memory_mb
    from storage import Store

    os.environ["DREAMER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    store = Store(Path(home) / "dreamer.db")
    try:
        day = records[0]["day"]
        if not any(row["day"] == day for row in store.day_counts()):  # a resumed night: imported already
            store.import_conversations(records)
        start = time.perf_counter()
        outcome = sleep_now(store, night_config(source), cfg, home=Path(home),
                            progress=LogPhases(label, _logger(log_path)))
        metrics = outcome.metrics or {}
        return {"status": outcome.status, "message": outcome.message, "wall_s": round(time.perf_counter() - start, 1),
                "peak_rss_mb": round(process_memory_mb(), 1), "experts": [str(p) for p in active_paths(store)],
                "gate": metrics.get("gate"), "phases": metrics.get("phase_seconds"),
                "dreaming": metrics.get("dreaming"), "report": outcome.report}
    finally:
        store.close()


def night_config(source: str):
    """The sleep arms' config: deep sleep folds into the training model's chat twin, the embedded
    GGUF for the embedded model, the tiny model's own for --quick; a --model folder has no known
    GGUF twin, so its nights are not folded (the scores come from transformers either way)."""
    from dreamer.bench.tiny import chat_twin
    from dreamer.lm.weights import EMBEDDED_CACHE
    from storage import Config

    twin = chat_twin(source)
    return Config(train_model=source, model=str(twin or ""), fold=twin is not None or Path(source).name == EMBEDDED_CACHE)


def baseline_night(arm: str, out_dir: str, prior: list[str], source: str, day: dict, cfg, seed: int) -> dict:
    """One naive or distill night: a new expert trained through the frozen `prior` ones, saved to `out_dir`."""
    import torch

    from agent.memory import system_message
    from dreamer.lm.generation import chat_ids
    from dreamer.lm.weights import base_fingerprint, build_stack, load_base, plan_device, stack_names, \
        trainable_parameters
    from dreamer.morning.stack import save_candidate
    from dreamer.sleep.report import process_memory_mb
    from dreamer.sleep.seeding.distill import clip_prompt, continuation_ids
    from dreamer.sleep.seeding.memories import write_memories
    from storage import Config

    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    base, tok = load_base(source, plan_device(cfg.load))
    model = build_stack(base, [Path(p) for p in prior], cfg.distill)
    system = system_message(Config(), date.fromisoformat(day["day"]))  # what the chat's prompt said that day
    max_len, info = cfg.load.max_seq_len, {}
    groups = []  # each a list of (ids, labels): one is drawn per sequence of a batch
    if arm == "naive":  # the chat as it was, loss on every token (the facts are in the user's turns)
        for record in day["records"]:
            ids = chat_ids(tok, [{"role": "system", "content": system}] + record["messages"])
            groups += [[(ids[i:i + max_len], ids[i:i + max_len])] for i in range(0, len(ids) - 1, max_len)]
    else:
        teacher_start = time.perf_counter()
        memories = write_memories(model, tok, day["records"], day=day["day"], base_system=system,
                                  stack=stack_names(model, include_new=False), cfg=cfg.memories, rng=rng)
        info = {"teacher_s": round(time.perf_counter() - teacher_start, 1), "counts": memories.counts}
        for example in memories.examples:  # loss on the teacher's answer only
            group = []
            for text in example.samples:
                reply = continuation_ids(tok, text)[: max_len // 2]
                prompt = clip_prompt(chat_ids(tok, example.student), max_len, len(reply))
                group.append((prompt + reply, [-100] * len(prompt) + reply))
            if group:
                groups.append(group)
    if not groups:
        raise RuntimeError(f"{arm}: nothing to train on for {day['day']}")
    d, device = cfg.distill, next(model.parameters()).device
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=d.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # the same warm-up + cosine as dreamer.sleep.seeding.distill
        optimizer, lambda s: min(1.0, (s + 1) / max(1, d.steps // 10)) * 0.5 * (1 + math.cos(math.pi * s / d.steps)))
    losses, train_start = [], time.perf_counter()
    model.train()
    for _ in range(d.steps):
        total = 0.0
        for _ in range(d.batch_size):  # like dreamer: a prompt at random, then one of its answers
            ids, labels = rng.choice(rng.choice(groups))
            loss = model(input_ids=torch.tensor([ids], device=device),
                         labels=torch.tensor([labels], device=device)).loss / d.batch_size
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, d.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    model.eval()
    out = Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    save_candidate(model, partial, {"base": base_fingerprint(base), "arm": arm, "day": day["day"]})
    if out.exists():  # trained before a kill that came before the result was recorded
        shutil.rmtree(out)
    partial.rename(out)  # whole or absent: a killed night is trained again on resume
    info.update(train_s=round(time.perf_counter() - train_start, 1), loss_first=sum(losses[:5]) / len(losses[:5]),
                loss_last=sum(losses[-5:]) / len(losses[-5:]))
    return {"status": "trained", "message": f"{arm}: {d.steps} steps x {d.batch_size}", "metrics": info,
            "wall_s": round(time.perf_counter() - start, 1), "peak_rss_mb": round(process_memory_mb(), 1),
            "experts": prior + [str(out)]}


def _logger(path: str):
    def log(text: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    return log
