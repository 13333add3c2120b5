"""Sleep stage 1b: generalized distillation of the day into tonight's LoRA expert.

    L = alpha * D  -  (1 - alpha) * E[r]  +  eta * C  +  kappa * K

D, the GKD term: for a batch of prompts x, a continuation y is taken from the teacher's
samples (probability 1 - lmbda) or sampled now from the student itself (probability lmbda,
on-policy; no gradient through sampling). The teacher scores y *with* its view of x (the day
in context, or the earlier stack, or the bare base for the general anchor), the student scores
y *without* it, and D is the token-level divergence (forward KL, reverse KL or JSD(beta))
between the two next-token distributions over y's tokens.

E[r], Learning-to-Imitate: a teacher-written memory d is cut at a random point; the student
completes the prefix `rl_group` times; each completion gets r = gamma * r_sem + (1 - gamma) *
r_abs against the true rest of d (dreamer.sleep.seeding.rewards), and the policy gradient with a group-mean
baseline pushes the student toward completions that mean and read like the memory
(REINFORCE on the mean token log-probability of each completion).

C, the cloze recall term ([dreamer], not in the paper): each step, `cloze_batch` of the day's
cloze prompts (dreamer.sleep.seeding.cloze: a salient word or phrase of a user turn blanked out), asked
without the day: cross-entropy on the missing word, plus a softmax over it and
`cloze_negatives` other salient words of the day, so the word is tied to its sentence rather
than made likely after any blank. The label is the user's own word: no human labels. It is
there because the 135M teacher's distribution is a weak target for one word of a sentence
(p = 0.37 on the blank when reading the sentence back, 0.004 when asked for the bare word),
and the fact is exactly that word. eta = `cloze_weight`; 0 gives the paper's objective.

K, the drift term ([dreamer]): each step, per-token KL(active stack || student) over every
token of `drift_batch` general texts (the bare base's answers to assets/general_prompts.jsonl),
the gate's drift measure on texts the gate does not use (it holds out assets/general_heldout.jsonl).
The anchor prompts below pull only the student's *replies* toward the base; K holds the whole
next-token distribution on plain text, where the cloze term's drift shows. kappa = `drift_weight`.

The mix of prompts per step: today's (teacher = old stack + day in context), replay of earlier
nights' probes (teacher = old stack, no context: keeps old memories) and general text
(teacher = base: keeps skills). Only the new expert's parameters receive gradients.

The student's prompts nearly all begin with the chat's system turn; each step encodes it once,
with gradient, for every pass of D, C and E[r] (dreamer.lm.step_prefix), which gives the
gradient of encoding each prompt whole.

    dreamer sleep --now --preset cpu-tiny      # this stage is the bulk of the night
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dreamer.sleep.seeding.divergences import token_divergence
from dreamer.lm.generation import chat_ids, sample_many
from dreamer.lm.prompt_cache import PromptCache
from dreamer.lm.scoring import pad_id, right_padded, tail_logprobs, text_batches
from dreamer.lm.step_prefix import StepPrefix
from dreamer.lm.weights import NEW, adapters, trainable_parameters
from dreamer.sleep.config import DistillConfig
from dreamer.sleep.seeding.memories import Example
from dreamer.sleep.seeding.rewards import group_advantages, imitation_reward


@dataclass
class DistillLog:
    steps: int = 0
    divergence: list[float] = field(default_factory=list)
    cloze: list[float] = field(default_factory=list)
    drift: list[float] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    on_policy: int = 0
    off_policy: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        def mean(values, tail=None):
            values = values[-tail:] if tail else values
            return sum(values) / len(values) if values else None

        return {
            "steps": self.steps, "on_policy_samples": self.on_policy, "teacher_samples": self.off_policy,
            "divergence_first": mean(self.divergence[:5]), "divergence_last": mean(self.divergence, 5),
            "reward_mean": mean(self.reward), "reward_last": mean(self.reward, 5),
            "cloze_loss_first": mean(self.cloze[:5]), "cloze_loss_last": mean(self.cloze, 5),
            "drift_first": mean(self.drift[:5]), "drift_last": mean(self.drift, 5), "seconds": round(self.seconds, 1),
        }


def continuation_ids(tokenizer, text: str) -> list[int]:
    """y as the assistant's reply: its tokens plus end-of-turn, so the student learns to stop."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def reply_logits(model, prompt: list[int], reply: list[int], past=None) -> torch.Tensor:
    """Logits at the positions that predict `reply` after `prompt`: [1, len(reply), vocab].

    With `past` (the KV cache of what precedes `prompt`), only `prompt` + `reply` are encoded.
    """
    ids = torch.tensor([prompt + reply], device=model.device)
    # Only the reply's positions matter: skipping the vocabulary projection for the prompt (the
    # teacher's holds the whole day) saves most of a forward pass on a small model.
    extra = {} if past is None else {"past_key_values": past, "use_cache": True}
    width = ids.shape[1]
    logits = model(input_ids=ids, logits_to_keep=len(reply) + 1, **extra).logits
    return kept_positions(logits, width - len(reply) - 1, width, width)[:, :-1].float()


def kept_positions(logits: torch.Tensor, start: int, stop: int, width: int) -> torch.Tensor:
    """Logits of positions start..stop-1 of a `width`-token input, asked for with `logits_to_keep`.

    An architecture whose forward lacks `logits_to_keep` (older ones in transformers) takes it
    into **kwargs and returns every position; reading the last ones of that as if they were the
    kept ones would silently score the wrong tokens, so such output is sliced here.

    >>> import torch
    >>> kept_positions(torch.arange(5.0)[None, :, None], 1, 3, 5).flatten().tolist()
    [1.0, 2.0]
    >>> kept_positions(torch.arange(2.0)[None, :, None], 1, 3, 5).flatten().tolist()
    [0.0, 1.0]
    """
    if logits.shape[1] == stop - start:
        return logits
    if logits.shape[1] == width:
        return logits[:, start:stop]
    raise ValueError(f"the model returned logits for {logits.shape[1]} positions; asked for {stop - start} of {width}")


def teacher_logits(model, cache: PromptCache, messages: list[dict], names, reply: list[int]) -> torch.Tensor:
    """The teacher's logits over `reply`, reusing the cached day prefix when there is one."""
    prompt = chat_ids(cache.tokenizer, messages)
    prefix = cache.prefix(model, messages, names, prompt)
    if prefix is None:
        return reply_logits(model, prompt, reply)
    return reply_logits(model, prompt[len(prefix):], reply, past=cache.past(messages, names))


def clip_prompt(ids: list[int], max_len: int, reply_len: int) -> list[int]:
    """Keep the end of an over-long prompt (the request is at the end; the day's start is cut)."""
    room = max(8, max_len - reply_len)
    return ids[-room:]


def batch_reply_logits(model, prompts: list[list[int]], replies: list[list[int]], pad: int,
                       prefix: StepPrefix | None = None) -> list[torch.Tensor]:
    """`reply_logits` for many (prompt, reply) pairs in one right-padded forward pass.

    One pass instead of one per pair: on a GPU a small model's step is bound by kernel launches,
    not arithmetic. Right padding, because with a causal mask no real token attends to the
    padding after it, so each pair's logits are those of its own pass. The model's own forward
    makes the logits (so a head that scales or soft-caps them does so here too, as for the
    teacher); only the positions from the earliest reply's start to the latest reply's end go
    through the vocabulary projection (one pair: exactly its reply's, as `reply_logits`). With
    `prefix` (the step's shared system turn), the pairs whose prompt begins with it go in a pass
    of their own that encodes only what follows it; the others in a pass of their own.
    """
    shared = [i for i, p in enumerate(prompts) if prefix is not None and prefix.covers(p)]
    if not shared:
        return _reply_pass(model, prompts, replies, pad, None)
    whole = [i for i in range(len(prompts)) if i not in shared]
    out: list[torch.Tensor | None] = [None] * len(prompts)
    for group, past, cut in ((shared, prefix, len(prefix.ids)), (whole, None, 0)):
        if group:
            got = _reply_pass(model, [prompts[i][cut:] for i in group], [replies[i] for i in group], pad, past)
            for i, logits in zip(group, got):
                out[i] = logits
    return out


def _reply_pass(model, prompts, replies, pad, prefix) -> list[torch.Tensor]:
    ids, mask = right_padded([p + r for p, r in zip(prompts, replies)], pad, model.device)
    extra = {} if prefix is None else {"past_key_values": prefix.past(len(prompts)),
                                       "attention_mask": prefix.mask(len(prompts), mask)}
    # Position t predicts token t + 1: a reply is predicted from len(prompt) - 1 on.
    starts = [len(p) - 1 for p in prompts]
    first, last = min(starts), max(s + len(r) for s, r in zip(starts, replies))
    keep = torch.arange(first, last, device=model.device)
    logits = model(input_ids=ids, **({"attention_mask": mask} | extra), logits_to_keep=keep).logits
    logits = kept_positions(logits, first, last, ids.shape[1])
    return [logits[row, s - first : s - first + len(r)].float()[None] for row, (s, r) in enumerate(zip(starts, replies))]


def divergence_loss(model, tokenizer, examples: list[Example], replies: list[list[int]], stack: list[str],
                    cfg: DistillConfig, max_len: int, prefixes: PromptCache,
                    shared: StepPrefix | None = None) -> torch.Tensor:
    """Each example's mean per-token divergence (teacher with its view, student without), [len(examples)]."""
    teachers = []
    with torch.no_grad():
        for example, reply in zip(examples, replies):
            with adapters(model, example.teacher_adapters):
                # The teacher's prompt is not clipped: the day in its context is the point
                # (memories.MemoriesConfig.max_context_tokens already bounds it).
                teachers.append(teacher_logits(model, prefixes, example.teacher, example.teacher_adapters, reply))
    prompts = [clip_prompt(chat_ids(tokenizer, e.student), max_len, len(r)) for e, r in zip(examples, replies)]
    with adapters(model, stack + [NEW]):
        students = batch_reply_logits(model, prompts, replies, pad_id(tokenizer), shared)
    return torch.stack([token_divergence(student, teacher, cfg.divergence, beta=cfg.beta)
                        for student, teacher in zip(students, teachers)])


def imitation_loss(model, tokenizer, document: tuple[list[dict], str], stack: list[str], cfg: DistillConfig,
                   judge, rng: random.Random, shared: StepPrefix | None = None) -> tuple[torch.Tensor, list[float]]:
    """REINFORCE with a group-mean baseline on completions of a memory's prefix."""
    messages, memory = document
    words = memory.split()
    if len(words) < 4:
        return torch.zeros((), device=model.device), []
    cut = rng.randint(max(1, len(words) // 3), max(1, (2 * len(words)) // 3))
    prefix, rest = " ".join(words[:cut]), " ".join(words[cut:])
    prompt = chat_ids(tokenizer, messages) + tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt], device=model.device)
    with torch.no_grad(), adapters(model, stack + [NEW]):
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0,
            max_new_tokens=cfg.rl_new_tokens, num_return_sequences=cfg.rl_group, pad_token_id=tokenizer.pad_token_id,
        )
    completions_ids = [row[len(prompt):].tolist() for row in out]
    completions = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions_ids]
    rewards = imitation_reward(completions, [rest] * len(completions), judge=judge, gamma=cfg.gamma, z0=cfg.z0,
                               sem_threshold=cfg.sem_threshold)
    advantages = group_advantages(rewards, len(completions))
    return policy_gradient_loss(model, tokenizer, prompt, completions_ids, advantages, stack, cfg.pass_batch,
                                shared), rewards


def through_end(tokens: list[int], end: int) -> list[int]:
    """`tokens` up to and including the first `end` (all of them when there is none).

    >>> through_end([5, 6, 2, 2, 2], 2), through_end([5, 6], 2), through_end([2, 2], 2)
    ([5, 6, 2], [5, 6], [2])
    """
    return tokens[: tokens.index(end) + 1] if end in tokens else tokens


def policy_gradient_loss(model, tokenizer, prompt: list[int], completions: list[list[int]], advantages: list[float],
                         stack: list[str], pass_batch: int = 1, shared: StepPrefix | None = None) -> torch.Tensor:
    """−(1/G) Σ advantage · mean token log-probability of each completion, the student's.

    The completions are scored `pass_batch` to a forward pass.
    """
    # Completions with no advantage carry no signal: they are left out of the forward passes.
    # Each is scored through its end of turn (stopping is part of what is rewarded); the
    # padding generate() puts after it is not.
    scored = [(through_end(c, tokenizer.eos_token_id), a) for c, a in zip(completions, advantages) if a != 0]
    loss = torch.zeros((), device=model.device)
    logits = []
    with adapters(model, stack + [NEW]):
        for first in range(0, len(scored), pass_batch):
            chunk = [c for c, _ in scored[first:first + pass_batch]]
            logits += batch_reply_logits(model, [prompt] * len(chunk), chunk, pad_id(tokenizer), shared)
    for part, (completion, advantage) in zip(logits, scored):
        logprob = torch.log_softmax(part, -1).gather(-1, torch.tensor([completion], device=model.device)[..., None])
        loss = loss - advantage * logprob.mean() / len(completions)
    return loss


def cloze_loss(model, tokenizer, batch: list[tuple[list[dict], str, list[str]]], stack: list[str],
               shared: StepPrefix | None = None) -> torch.Tensor:
    """The cloze recall term, averaged over `batch` of (student prompt, missing word, other words).

    Per blank: cross-entropy of the missing word as the whole reply (then end of turn), plus,
    when other words are given, a softmax over the options' mean token log-probabilities (the
    score `dreamer eval` ranks options by) with the missing word as the class. The first part
    makes the word come out; the second ties it to its sentence rather than to every blank.
    """
    total = torch.zeros((), device=model.device)
    with adapters(model, stack + [NEW]):
        for messages, word, others in batch:
            options = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in [word, *others]]
            options[0] = options[0] + [tokenizer.eos_token_id]  # the word as the whole reply
            per_token = tail_logprobs(model, tokenizer, chat_ids(tokenizer, messages), options, shared)
            total = total - per_token[0].mean()
            if others:
                scores = torch.stack([per_token[0][:-1].mean()] + [t.mean() for t in per_token[1:]])
                total = total - torch.log_softmax(scores, 0)[0]
    return total / len(batch)


def drift_loss(model, tokenizer, texts: list[str], stack: list[str], max_len: int) -> torch.Tensor:
    """Mean per-token KL(active stack || student) over every real token of `texts`."""
    batches = list(text_batches(tokenizer, texts, max_len, model.device))
    tokens = sum(int(mask.sum()) for _, mask in batches)
    total = torch.zeros((), device=model.device)
    for ids, mask in batches:
        with torch.no_grad(), adapters(model, stack):
            reference = model(input_ids=ids, attention_mask=mask).logits.float()
        with adapters(model, stack + [NEW]):
            student = model(input_ids=ids, attention_mask=mask).logits.float()
        total = total + token_divergence(student, reference, "forward_kl", mask=mask) * int(mask.sum()) / tokens
    return total


def lr_scale(step: int, steps: int) -> float:
    """The night's learning-rate factor: linear warmup over the first tenth, then cosine to 0."""
    return min(1.0, (step + 1) / max(1, steps // 10)) * 0.5 * (1 + math.cos(math.pi * step / steps))


def student_system(today: list[Example]) -> str | None:
    """The system turn today's student prompts begin with (the chat's), if they have one."""
    first = today[0].student[0] if today and today[0].student else None
    return first["content"] if first and first["role"] == "system" else None


def pick(pools: dict[str, list], weights: dict[str, float], rng: random.Random):
    kinds = [k for k in pools if pools[k] and weights[k] > 0]
    kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
    return rng.choice(pools[kind])


def distill(
    model, tokenizer, *, today: list[Example], replay: list[Example], anchor: list[Example],
    documents: list, stack: list[str], cfg: DistillConfig, max_len: int, judge, rng: random.Random,
    clozes: list[tuple[list[dict], str, list[str]]] = (), general_texts: list[str] = (),
    on_step: Callable[[int, dict], None] = lambda step, info: None,
) -> DistillLog:
    """Train the `new` adapter in place; `on_step` reports progress (and may raise to stop).

    `clozes` are (student prompt, missing word, other words of the day) for the cloze recall term;
    each step takes `cloze_negatives` of the other words. `general_texts` feed the drift term.
    """
    if not today:
        raise ValueError("no training prompts for today: nothing to distil")
    params = trainable_parameters(model)
    if not params:
        raise RuntimeError("the model has no trainable parameters: the new expert is missing")
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_scale(s, cfg.steps))
    pools = {"today": today, "replay": replay, "anchor": anchor}
    weights = {"today": 1 - cfg.replay_fraction - cfg.anchor_fraction, "replay": cfg.replay_fraction,
               "anchor": cfg.anchor_fraction}
    log, started = DistillLog(), time.monotonic()
    prefixes = PromptCache(tokenizer)
    system = student_system(today)
    optimizer.zero_grad(set_to_none=True)  # a gradient an earlier pass left on the expert is not this step's
    model.train()
    for step in range(cfg.steps):
        batch = [pick(pools, weights, rng) for _ in range(cfg.batch_size)]
        on_policy = [rng.random() < cfg.lmbda for _ in batch]
        # The student's own continuations, sampled together (no gradient flows through sampling).
        fresh = iter(sample_many(model, tokenizer, [e.student for e, on in zip(batch, on_policy) if on],
                                 stack + [NEW], n=1, max_new_tokens=cfg.rl_new_tokens, temperature=1.0))
        log.on_policy += sum(on_policy)
        log.off_policy += len(batch) - sum(on_policy)
        replies = [continuation_ids(tokenizer, next(fresh)[0] if on else rng.choice(example.samples))[: max_len // 2]
                   for example, on in zip(batch, on_policy)]
        # The system turn the student's prompts share, encoded once for this step's passes.
        shared = StepPrefix.open(model, tokenizer, system, stack + [NEW])
        total = 0.0
        for first in range(0, len(batch), cfg.pass_batch):  # backward per chunk: its graph is freed before the next
            chunk = slice(first, first + cfg.pass_batch)
            loss = divergence_loss(model, tokenizer, batch[chunk], replies[chunk], stack, cfg, max_len, prefixes, shared)
            loss = loss.sum() / cfg.batch_size
            (cfg.alpha * loss).backward()
            total += loss.item()
        log.divergence.append(total)
        if cfg.cloze_weight > 0 and clozes:
            picked = [rng.choice(clozes) for _ in range(cfg.cloze_batch)]
            picked = [(m, w, rng.sample(o, min(cfg.cloze_negatives, len(o)))) for m, w, o in picked]
            loss = cloze_loss(model, tokenizer, picked, stack, shared)
            (cfg.cloze_weight * loss).backward()
            log.cloze.append(loss.item())
        if cfg.drift_weight > 0 and general_texts:
            loss = drift_loss(model, tokenizer, rng.sample(general_texts, min(cfg.drift_batch, len(general_texts))),
                              stack, max_len)
            (cfg.drift_weight * loss).backward()
            log.drift.append(loss.item())
        if cfg.alpha < 1 and documents and step % cfg.rl_every == 0:
            rl_loss, rewards = imitation_loss(model, tokenizer, rng.choice(documents), stack, cfg, judge, rng, shared)
            if rl_loss.requires_grad:
                ((1 - cfg.alpha) * rl_loss).backward()
            if rewards:
                log.reward.append(sum(rewards) / len(rewards))
        if shared is not None:
            shared.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        log.steps = step + 1
        on_step(step + 1, {"divergence": total, "reward": log.reward[-1] if log.reward else None})
    model.eval()
    log.seconds = time.monotonic() - started
    return log
