"""Dreaming, step 2: keep the dreams that measurably help.

1. **First filter**, cheap: for each dream, the loss gap on its reply, the student's (the stack
   plus tonight's expert, closed book) minus the teacher's (the view it was written under: the
   day in context, or the stack alone for a rehearsal). A large gap is what the student does not
   yet know; a gap near zero is a dream it has already learned. The `keep` largest are kept,
   plus `keep_random` of the rest at random (exploration: the filter is only a guess). The paper
   ranks by the SFT-loss gradient; the gap needs no backward pass and ranks the same way on the
   quantity that matters here, what the teacher knows and the student does not.
2. **Reward**, measured: for each kept dream, a throwaway copy of tonight's expert trains
   `inner_steps` steps on it (cross-entropy on the reply, closed book), then tau is measured,
   closed book, over held-out self-probes: today's probes that the gate does not use, plus
   earlier nights' probes (so a dream that protects old memories earns its reward too). The
   dream is rewarded when tau rises by more than `min_improvement`. Two measures
   (`reward_measure`):
   - `asked` (the presets): the share of the probes whose greedy reply names the answer and none
     of the probe's wrong options (so a dream that teaches the chat to list the day's words earns
     nothing), each probe's sentence asked as a user asks the chat, under its system prompt
     ("Remind me: my cat is called ...?"). What the user meets is the reply, and one dream's copy can change many
     replies at once: the bench's replies named 2.6 fewer facts of 20 after an average copy,
     while the right options' probabilities rose (benchmarks/dream_reward_asked.py). Over every
     held-out probe (`reward_probes = "all"`) this measure ranked dreams by what they did to the
     bench's replies best of those tried (Spearman +0.71, against +0.56 for `choice` on the own
     fact).
   - `choice`: the right option's probability among each cloze probe's options. It sits near
     the ceiling after stage 1 (0.96-0.99: stage 1 trains exactly those clozes), and rises for a
     dream that says a fact's word in any reply.
   With `reward_probes = "own"` only the probes of the dream's own fact count (its sentence's
   blanks; the earlier answer a rehearsal re-tells). The copy is the live expert's parameters
   saved before and written back after each dream, bit for bit, with a fresh optimizer each
   time: nothing a throwaway copy did survives it.

    dreamer sleep --now      # with [dreaming] enabled = true
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from dreamer.eval.replies import names_the_answer
from dreamer.lm.generation import chat_ids, sample_many
from dreamer.lm.prompt_cache import PromptCache
from dreamer.lm.scoring import inference, option_scores, tail_logprobs
from dreamer.lm.weights import NEW, adapters, trainable_parameters
from dreamer.sleep.config import DreamingConfig
from dreamer.sleep.dreaming.write import Dream, blanked_sentence
from dreamer.sleep.seeding.cloze import BLANK
from dreamer.sleep.seeding.distill import continuation_ids, teacher_logits


def expert_state(model, name: str = NEW) -> dict[str, torch.Tensor]:
    """A copy of one adapter's LoRA parameters (the throwaway copy's starting point)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n}


@torch.no_grad()
def restore_state(model, state: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        if n in state:
            p.copy_(state[n])


def reply_loss(model, tokenizer, messages: list[dict], reply: str, names: list[str], shared=None) -> torch.Tensor:
    """Mean cross-entropy of `reply` (then end of turn) as the assistant's answer to `messages`
    (`shared`: a training step's system turn, dreamer.lm.step_prefix)."""
    with adapters(model, names):
        return -tail_logprobs(model, tokenizer, chat_ids(tokenizer, messages), [continuation_ids(tokenizer, reply)],
                              shared)[0].mean()


def asked_as_chat(system: str, question: str) -> list[dict]:
    """A question as the chat asks it, closed book: its system prompt, then the question."""
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def student_view(dream: Dream, system: str) -> list[dict]:
    return asked_as_chat(system, dream.request)


def loss_gaps(model, tokenizer, dreams: list[Dream], stack: list[str], system: str) -> None:
    """Set each dream's `gap`: student loss (closed book) minus teacher loss (its own view)."""
    cache = PromptCache(tokenizer)
    with inference(model):
        for dream in dreams:
            reply = continuation_ids(tokenizer, dream.reply)
            teacher_names = stack or None
            with adapters(model, teacher_names):
                logits = teacher_logits(model, cache, dream.teacher_view + [{"role": "user", "content": dream.request}],
                                        teacher_names, reply)
            target = torch.tensor(reply, device=logits.device)
            teacher = -torch.log_softmax(logits[0], -1).gather(-1, target[:, None]).mean().item()
            student = reply_loss(model, tokenizer, student_view(dream, system), dream.reply, stack + [NEW]).item()
            dream.gap = student - teacher


def first_filter(dreams: list[Dream], cfg: DreamingConfig, rng: random.Random) -> list[Dream]:
    """The `keep` largest gaps, plus `keep_random` of the rest at random."""
    ranked = sorted(dreams, key=lambda d: d.gap, reverse=True)
    kept, rest = ranked[:cfg.keep], ranked[cfg.keep:]
    return kept + rng.sample(rest, min(cfg.keep_random, len(rest)))


def probe_probabilities(model, tokenizer, probes: list[dict], names: list[str], system: str) -> list[float]:
    """Each probe's right answer's probability among its options, closed book."""
    with adapters(model, names):
        return [torch.softmax(torch.tensor(option_scores(model, tokenizer, probe["question"],
                                                         [probe["answer"], *probe["distractors"]], system=system)),
                              0)[0].item() for probe in probes]


def asked_request(probe: dict) -> str:
    """A cloze probe's sentence asked as a user asks the chat (a probe quoting none: as written).

    >>> asked_request({"question": 'Which word is missing? "My cat is called ___."', "answer": "Miso"})
    'Remind me: My cat is called ...?'
    """
    sentence = blanked_sentence(probe)
    if BLANK not in sentence:
        return probe["question"]
    return "Remind me: " + sentence.rstrip().rstrip(".!").replace(BLANK, "...") + "?"


def replies_named(model, tokenizer, probes: list[dict], names: list[str], system: str,
                  max_new_tokens: int) -> list[float]:
    """Per probe, 1.0 if the greedy reply to its `asked_request`, closed book, names its answer and
    none of its wrong options (the bench's matcher, dreamer.eval.replies)."""
    chats = [asked_as_chat(system, asked_request(p)) for p in probes]
    replies = sample_many(model, tokenizer, chats, names, n=1, max_new_tokens=max_new_tokens, temperature=None,
                          cache=PromptCache(tokenizer))
    return [float(names_the_answer(reply, str(probe["answer"]), [str(d) for d in probe.get("distractors", ())]))
            for (reply,), probe in zip(replies, probes)]


def probe_scores(model, tokenizer, probes: list[dict], names: list[str], system: str,
                 cfg: DreamingConfig) -> list[float]:
    """Each probe's score under `cfg.reward_measure`; tau is their mean."""
    if cfg.reward_measure == "asked":
        return replies_named(model, tokenizer, probes, names, system, cfg.max_new_tokens)
    return probe_probabilities(model, tokenizer, probes, names, system)


def own_probes(dream: Dream, probes: list[dict]) -> list[int]:
    """The probes of the fact a dream is about: those whose answer is one of its words (its
    sentence's cloze words, or the earlier answer a rehearsal re-tells).

    >>> own_probes(Dream("question", "Where does Ana live?", words=["Ana", "Lisbon"]),
    ...            [{"answer": "Miso"}, {"answer": "lisbon"}])
    [1]
    """
    words = {w.casefold() for w in dream.words}
    return [i for i, probe in enumerate(probes) if str(probe["answer"]).casefold() in words]


def measured_probes(dream: Dream, probes: list[dict], cfg: DreamingConfig) -> list[int]:
    """The probes a dream's tau is measured on (`reward_probes`); none: it cannot be scored."""
    return own_probes(dream, probes) if cfg.reward_probes == "own" else list(range(len(probes)))


def train_copy(model, tokenizer, dream: Dream, names: list[str], system: str, steps: int, lr: float) -> None:
    """A throwaway copy's steps: tonight's expert trained on one dream's reply, closed book, with a
    fresh optimizer (the caller saves and restores the expert around it)."""
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for _ in range(steps):
        reply_loss(model, tokenizer, student_view(dream, system), dream.reply, names).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def reward_dreams(model, tokenizer, dreams: list[Dream], probes: list[dict], stack: list[str], system: str,
                  cfg: DreamingConfig, progress: Callable = lambda n=1: None) -> float:
    """Set each dream's `tau_delta` and `rewarded`; tau of tonight's expert as it was, returned.

    A dream with no probe to be measured on (`measured_probes`) is not trained, and not rewarded.
    Tonight's expert is exactly as it was when this returns (or raises).
    """
    names = stack + [NEW]
    before = probe_scores(model, tokenizer, probes, names, system, cfg)
    state = expert_state(model)
    try:
        for dream in dreams:
            measured = measured_probes(dream, probes, cfg)
            if not measured:
                dream.tau_delta, dream.rewarded = None, False
                progress()
                continue
            train_copy(model, tokenizer, dream, names, system, cfg.inner_steps, cfg.inner_learning_rate)
            after = probe_scores(model, tokenizer, [probes[i] for i in measured], names, system, cfg)
            dream.tau_delta = (sum(after) - sum(before[i] for i in measured)) / len(measured)
            dream.rewarded = dream.tau_delta > cfg.min_improvement
            restore_state(model, state)
            progress()
    finally:
        restore_state(model, state)
        for param in trainable_parameters(model):
            param.grad = None
    return sum(before) / len(before)
