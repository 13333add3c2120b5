"""Dreaming, step 4: rehearse the rewarded dreams into tonight's expert.

The same expert stage 1 trained keeps training (a night stays one expert): `rehearse_epochs`
passes over the rewarded dreams, at most `rehearse_steps` steps, each on `rehearse_batch` of
them (cross-entropy on the reply, closed book, the chat's system prompt), plus a drift term
(below) weighted `rehearse_drift_scale` times stage 1's `distill.drift_weight`. The gate then
measures the expert as rehearsal left it. Steps follow the number of rewarded dreams: a fixed 20
steps over three dreams was 27 passes over each, which learned their wording (loss 1.45 ->
0.02) and with it their chatty replies.

The reply rehearsed (`rehearse_reply`) is the fact the dream names, alone ("answer"), or the
sentence the writer wrote ("dream"). Stage 1 leaves the facts answerable as bare words (its
cloze term trains the word as the whole reply); rehearsing the writer's sentences turned those
answers into sentences that no longer reached the fact, while the fact alone raised them
(benchmarks/dream_rehearsal.py). The dreams are still chosen on the writer's sentence (the loss
gap and the throwaway copies train on it) and rehearsed in the answer form: the combination that
study measured.

The drift term (`rehearse_drift`) is stage 1's on general text ("text"), or the same divergence
where the general questions are asked as the chat asks them ("chat"): the system prompt, a
general question, the bare base's answer; KL(active stack || expert) over the reply's tokens,
the place the bench's general probes and the user meet a rehearsal's side effects. Or ("self")
the reference is the expert as stage 1 left it, not the active stack: before the first step it
answers the general questions itself (greedy, under the system prompt) and its logits over those
answers are kept; each step pays KL(expert before rehearsal || expert) on a sample of them. Stage 1
has already moved the chat's answers (the cloze term makes them bare words, and the gate passed
that expert), so "chat" pulls the rehearsal toward a reply form stage 1 left, while "self" holds
only what the rehearsal itself moves: Dreaming can add facts, not undo stage 1's other answers.

    dreamer sleep --now      # with [dreaming] enabled = true
"""

from __future__ import annotations

import math
import random

import torch

from dreamer.lm.generation import chat_ids, sample_many
from dreamer.lm.scoring import pad_id
from dreamer.lm.step_prefix import StepPrefix
from dreamer.lm.weights import NEW, adapters, trainable_parameters
from dreamer.sleep.config import DreamingConfig
from dreamer.sleep.dreaming.score import asked_as_chat, reply_loss, student_view
from dreamer.sleep.dreaming.write import Dream
from dreamer.sleep.seeding.distill import batch_reply_logits, continuation_ids, drift_loss
from dreamer.sleep.seeding.divergences import token_divergence


def rehearsal_steps(dreams: int, cfg: DreamingConfig) -> int:
    """Steps for `dreams` rewarded dreams: `rehearse_epochs` passes, at most `rehearse_steps`.

    >>> rehearsal_steps(3, DreamingConfig(rehearse_epochs=4, rehearse_batch=4, rehearse_steps=20))
    3
    >>> rehearsal_steps(0, DreamingConfig()), rehearsal_steps(100, DreamingConfig(rehearse_steps=20))
    (0, 20)
    """
    return min(cfg.rehearse_steps, math.ceil(cfg.rehearse_epochs * dreams / cfg.rehearse_batch))


def rehearsed_reply(dream: Dream, cfg: DreamingConfig) -> str:
    """The reply a dream is rehearsed with: the fact alone (`rehearse_reply = "answer"`), or the writer's sentence.

    >>> dream = Dream("question", "What is my cat called?", reply="Your cat is called Miso.", answer="Miso")
    >>> [rehearsed_reply(dream, DreamingConfig(rehearse_reply=form)) for form in ("answer", "dream")]
    ['Miso', 'Your cat is called Miso.']
    """
    return dream.answer if cfg.rehearse_reply == "answer" and dream.answer else dream.reply


def chat_turn_ids(tokenizer, turns: list[tuple[str, str]], system: str) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, reply ids) of (question, answer) `turns`, each asked under the chat's `system` prompt."""
    prompts = [chat_ids(tokenizer, asked_as_chat(system, question)) for question, _ in turns]
    return prompts, [continuation_ids(tokenizer, answer) for _, answer in turns]


def chat_drift_loss(model, tokenizer, turns: list[tuple[str, str]], stack: list[str], system: str,
                    shared: StepPrefix | None = None, reference: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Mean per-token KL(reference || student) over the replies of (question, answer) `turns`,
    each asked under the chat's `system` prompt (`shared`: the step's system turn). The reference
    is the active stack, computed now, unless `reference` gives each turn's reply logits."""
    prompts, replies = chat_turn_ids(tokenizer, turns, system)
    if reference is None:
        with torch.no_grad(), adapters(model, stack):
            reference = batch_reply_logits(model, prompts, replies, pad_id(tokenizer))
    with adapters(model, stack + [NEW]):
        student = batch_reply_logits(model, prompts, replies, pad_id(tokenizer), shared)
    tokens = sum(len(reply) for reply in replies)
    return sum(token_divergence(s, r, "forward_kl") * len(reply)
               for s, r, reply in zip(student, reference, replies)) / tokens


def own_general_turns(model, tokenizer, questions: list[str], stack: list[str], system: str,
                      max_new_tokens: int) -> tuple[list[tuple[str, str]], list[torch.Tensor]]:
    """The expert's own greedy answers to general `questions` (under the chat's `system` prompt) and
    its reply logits over them: the "self" drift term's reference, taken before the first step."""
    answers = sample_many(model, tokenizer, [asked_as_chat(system, q) for q in questions], stack + [NEW], n=1,
                          max_new_tokens=max_new_tokens, temperature=None)
    turns = [(q, a[0]) for q, a in zip(questions, answers) if a[0].strip()]
    if not turns:
        return [], []
    prompts, replies = chat_turn_ids(tokenizer, turns, system)
    with torch.no_grad(), adapters(model, stack + [NEW]):
        # a copy of each reply's rows: a slice would keep the whole padded batch alive through the rehearsal
        reference = [logits.detach().clone() for logits in batch_reply_logits(model, prompts, replies, pad_id(tokenizer))]
    return turns, reference


def rehearse(model, tokenizer, dreams: list[Dream], *, stack: list[str], system: str, general_texts: list[str],
             drift_weight: float, drift_batch: int, max_len: int, cfg: DreamingConfig, rng: random.Random,
             general_turns: list[tuple[str, str]] = (), progress=lambda n=1: None) -> dict:
    """Train tonight's expert on `dreams`; its mean dream loss on the first and last steps.

    `general_texts` feed the "text" drift term, `general_turns` (question, the bare base's answer) the "chat"
    one and their questions the "self" one."""
    if not dreams:
        return {"steps": 0}
    if drift_weight > 0 and cfg.rehearse_drift in ("chat", "self") and not general_turns:
        raise ValueError(f"dreaming.rehearse_drift = \"{cfg.rehearse_drift}\" needs general questions; none were given")
    model.eval()
    reference: list[torch.Tensor] = []
    if drift_weight > 0 and cfg.rehearse_drift == "self":  # the expert as stage 1 left it, before any step
        general_turns, reference = own_general_turns(model, tokenizer, [q for q, _ in general_turns], stack, system,
                                                     cfg.max_new_tokens)
        if not general_turns:
            raise ValueError("dreaming.rehearse_drift = \"self\": the expert answered none of the general questions")
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.rehearse_learning_rate, weight_decay=0.0)
    optimizer.zero_grad(set_to_none=True)  # a gradient an earlier pass left on the expert is not this step's
    losses, drifts = [], []
    model.train()
    order: list[Dream] = []
    for _ in range(rehearsal_steps(len(dreams), cfg)):
        batch = []
        for _ in range(cfg.rehearse_batch):  # epochs: every dream once before any twice
            if not order:
                order = rng.sample(dreams, len(dreams))
            batch.append(order.pop())
        shared = StepPrefix.open(model, tokenizer, system, stack + [NEW])  # the system turn, once a step
        total = 0.0
        for dream in batch:  # backward per dream: its graph is freed before the next
            reply = rehearsed_reply(dream, cfg)
            loss = reply_loss(model, tokenizer, student_view(dream, system), reply, stack + [NEW], shared) / len(batch)
            loss.backward()
            total += loss.item()
        losses.append(total)
        general = general_texts if cfg.rehearse_drift == "text" else general_turns
        if drift_weight > 0 and general:
            picked = rng.sample(range(len(general)), min(drift_batch, len(general)))
            sample = [general[i] for i in picked]
            if cfg.rehearse_drift == "text":
                drift = drift_loss(model, tokenizer, sample, stack, max_len)
            else:
                drift = chat_drift_loss(model, tokenizer, sample, stack, system, shared,
                                        [reference[i] for i in picked] if reference else None)
            (drift_weight * drift).backward()
            drifts.append(drift.item())
        if shared is not None:
            shared.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress()
    model.eval()
    return {"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1],
            "drift_last": drifts[-1] if drifts else None}
