"""Sleep stage 1a: the teacher writes the night's training data and its held-out probes.

The teacher is the "smaller self": base + the active stack, with the day's conversations in its
prompt, exactly as the chat holds today in its short-term memory. The student will see the
same requests without the conversations. From the day the teacher produces:

- *questions* about the day: sampled from the teacher ("write a question about something the
  user told you"), plus restatement requests built from each user turn ("What did I tell you
  about Lisbon?"), plus the user's own turns replayed as prompts;
- *answers*: `teacher_samples` sampled continuations per prompt (the GKD teacher-sampled part),
  and a greedy answer that becomes an imitation *memory* for the RL term;
- *restatements*: for each salient word of a user turn, "What do you remember about Lisbon?"
  with the user's own words quoted ("You told me: ...") among the continuations the teacher
  scores. A small teacher answers open questions poorly, but with the day in context it copies
  reliably, so its distribution over a quote carries the facts;
- *cloze prompts* (dreamer/cloze.py): each salient word of a user turn blanked out ("Fill in
  the blank from what I told you: \"My sister Ana moved to ___\""); the continuation is the
  user's own sentence, scored by the teacher holding that turn (it copies the missing word),
  and it is also an imitation memory; the same blank, asked for the bare missing word with the
  user's own word as the label, feeds the cloze recall term (dreamer.distill);
- *probes*, label-free (dreamer/cloze.py): the same blanks worded differently, the true word
  against other salient words of the day, kept only if the teacher prefers the true word.

    dreamer sleep --now            # runs this stage first; `--dry-run` shows what it would use
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch

from dreamer.cloze import FILL, cloze_probes, clozes, focused_system, recall_prompts
from dreamer.prompt_cache import PromptCache
from dreamer.sleep_config import MemoriesConfig
from dreamer.weights import adapters

QUESTION_REQUEST = (
    "Write one short question that checks whether you remember something the user told you today. "
    "Write only the question."
)
TRAIN_ASK = "What do you remember about {topic}?"
QUOTE = "You told me: {turn}"
MAX_ROWS = 32  # sequences decoded together in one generate() call
TEACHER_BATCHES = 5  # questions, greedy answers, sampled answers, cloze prompts, probe checks: the progress bar
GENERAL_RESTATEMENTS = ("What do you remember about me?", "What did I tell you today?")
STOPWORDS = set(
    "a an the and or but if of to in on at for with about from by as is are was were be been am i you he she it we "
    "they my your his her its our their me him us them this that these those what which who whom when where why how "
    "do does did have has had not no yes so too very just also can could would should will shall may might must "
    "there here then than into over under after before again today tomorrow yesterday really please thanks "
    "called named favourite favorite lives works one last next".split()
)


@dataclass
class Example:
    """One distillation prompt: what the student sees, what the teacher sees, and how."""

    kind: str  # today | replay | anchor
    student: list[dict]
    teacher: list[dict]
    teacher_adapters: list[str] | None  # active stack for the teacher; None = base alone
    samples: list[str] = field(default_factory=list)


@dataclass
class Memories:
    examples: list[Example]
    documents: list[tuple[list[dict], str]]  # (student prompt, teacher-written memory) for imitation
    clozes: list[tuple[list[dict], str, list[str]]]  # (student prompt, missing word, other words of the day)
    probes: list[dict]
    counts: dict


def transcript(conversations: list[dict], tokenizer, max_tokens: int) -> str:
    """The day as text for the teacher's prompt; the newest turns win when it is too long."""
    lines = []
    for conversation in conversations:
        for message in conversation["messages"]:
            speaker = "User" if message["role"] == "user" else "You" if message["role"] == "assistant" else "Note"
            lines.append(f"- {speaker}: {' '.join(message['content'].split())}")
    kept, used = [], 0
    for line in reversed(lines):
        cost = len(tokenizer(line, add_special_tokens=False)["input_ids"])
        if used + cost > max_tokens:
            break
        kept.insert(0, line)
        used += cost
    return "\n".join(kept)


def teacher_system(base_system: str, day_text: str) -> str:
    # Same wording as the chat's short-term memory (agent/memory.py), so the teacher is the
    # model exactly as it behaved during the day.
    return f"{base_system}\n\nEarlier today you and the user said:\n{day_text}"


def topics(text: str, limit: int = 2) -> list[str]:
    """Salient words of a user turn: capitalised words inside the sentence first, then long ones.

    >>> topics("My sister Ana lives in Lisbon and works as a pilot.")
    ['Ana', 'Lisbon']
    >>> topics("I'm told Ana's brother, who's a nurse, is in Porto.", limit=3)
    ['Ana', 'Porto', 'brother']
    """
    # Contractions ("I'm", "There's") are never the fact; a possessive keeps its name ("Ana's" -> "Ana").
    words = [re.sub(r"'s$", "", w) for w in re.findall(r"[A-Za-zÀ-ÿ][\w'-]*", text)]
    kept = [(i, w) for i, w in enumerate(words) if "'" not in w and w.lower() not in STOPWORDS]
    capitals = [w for i, w in kept if i > 0 and w[0].isupper()]
    longer = sorted((w for _, w in kept if len(w) > 4), key=len, reverse=True)
    return list(dict.fromkeys(capitals + longer))[:limit]


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


@torch.no_grad()
def sample_many(model, tokenizer, conversations: list[list[dict]], names, *, n: int, max_new_tokens: int,
                temperature: float | None, cache: PromptCache | None = None) -> list[list[str]]:
    """n continuations for each chat prompt, decoded together in one batch (temperature None = greedy).

    Decoding a small model on a CPU costs about the same per step for one sequence or thirty,
    so the night batches its prompts. When every prompt starts with the same long system turn
    (the day), that prefix is encoded once (`cache`) and each row is laid out as
    prefix + padding + question, the padding masked out.
    """
    if not conversations:
        return []
    per_call = max(1, MAX_ROWS // n)
    if len(conversations) > per_call:  # bound the KV cache: a long day times many rows adds up
        return [row for start in range(0, len(conversations), per_call)
                for row in sample_many(model, tokenizer, conversations[start:start + per_call], names, n=n,
                                       max_new_tokens=max_new_tokens, temperature=temperature, cache=cache)]
    prompts = [chat_ids(tokenizer, messages) for messages in conversations]
    pad = tokenizer.pad_token_id
    kwargs = {"do_sample": False} if temperature is None else {"do_sample": True, "temperature": temperature, "top_p": 0.95}
    with adapters(model, names):
        prefixes = [cache.prefix(model, m, names, p) if cache is not None else None
                    for m, p in zip(conversations, prompts)]
        shared = prefixes[0] is not None and all(q == prefixes[0] for q in prefixes)
        start = len(prefixes[0]) if shared else 0
        width = max(len(p) - start for p in prompts)
        rows, masks = [], []
        for prompt in prompts:
            tail = prompt[start:]
            gap = width - len(tail)
            rows += [prompt[:start] + [pad] * gap + tail] * n  # left padding when nothing is shared
            masks += [[1] * start + [0] * gap + [1] * len(tail)] * n
        ids = torch.tensor(rows, device=model.device)
        if shared:
            kwargs["past_key_values"] = cache.past(conversations[0], names, copies=len(rows))
        out = model.generate(
            input_ids=ids, attention_mask=torch.tensor(masks, device=model.device), max_new_tokens=max_new_tokens,
            pad_token_id=pad, **kwargs,
        )
    texts = [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True).strip() for row in out]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def sample(model, tokenizer, messages, names, *, n: int, max_new_tokens: int, temperature: float | None,
           cache: PromptCache | None = None) -> list[str]:
    """n continuations of one chat prompt (see `sample_many`)."""
    return sample_many(model, tokenizer, [messages], names, n=n, max_new_tokens=max_new_tokens,
                       temperature=temperature, cache=cache)[0]


def is_question(text: str) -> bool:
    words = text.split()
    return text.endswith("?") and 3 <= len(words) <= 30


def write_memories(
    model, tokenizer, conversations: list[dict], *, day: str, base_system: str, stack: list[str],
    cfg: MemoriesConfig, rng: random.Random, progress=lambda n=1: None,
) -> Memories:
    """`base_system` is the chat's system prompt for `day` (agent.memory.system_message)."""
    day_text = transcript(conversations, tokenizer, cfg.max_context_tokens)
    with_day = teacher_system(base_system, day_text)
    closed = [{"role": "system", "content": base_system}]
    opened = [{"role": "system", "content": with_day}]
    cache = PromptCache(tokenizer)
    gen = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, cache=cache)

    # --- questions: sampled from the teacher, and built from the user's own turns ---------
    user_turns = [m["content"] for c in conversations for m in c["messages"] if m["role"] == "user"]
    wanted = cfg.questions_per_conversation * len(conversations)
    sampled = sample(model, tokenizer, opened + [{"role": "user", "content": QUESTION_REQUEST}], stack, n=wanted, **gen)
    progress()
    generated = [q for q in dict.fromkeys(s.split("\n")[0].strip() for s in sampled) if is_question(q)]
    questions = list(generated)
    quotes = {}  # restatement prompt -> the user's own words, quoted
    for turn in user_turns:
        for topic in topics(turn):
            quotes.setdefault(TRAIN_ASK.format(topic=topic), QUOTE.format(turn=" ".join(turn.split())))
    built = list(quotes)

    # --- teacher answers: greedy (memories, probe answers) and sampled (GKD targets) ---------
    answers = sample_many(model, tokenizer, [opened + [{"role": "user", "content": q}] for q in questions], stack,
                          n=1, max_new_tokens=cfg.max_new_tokens, temperature=None, cache=cache)
    greedy = {question: answer[0] for question, answer in zip(questions, answers)}
    progress()
    prompts = list(dict.fromkeys(questions + built + list(GENERAL_RESTATEMENTS) + user_turns))
    sampled_answers = sample_many(model, tokenizer, [opened + [{"role": "user", "content": p}] for p in prompts],
                                  stack, n=cfg.teacher_samples, **gen)
    progress()
    examples, documents = [], []
    for prompt, samples in zip(prompts, sampled_answers):
        user = {"role": "user", "content": prompt}
        if prompt in greedy:
            samples.append(greedy[prompt])
            documents.append((closed + [user], greedy[prompt]))
        if prompt in quotes:
            samples.append(quotes[prompt])
            documents.append((closed + [user], quotes[prompt]))
        samples = [s for s in samples if s]
        if samples:
            examples.append(Example("today", closed + [user], opened + [user], stack or None, samples))

    # --- cloze prompts: the reply is the user's own sentence, scored by the teacher holding it ---
    # Asked for the bare word, the teacher puts almost no mass on it (p = 0.004 on the synthetic
    # day); reading the sentence back, it copies the missing word from the turn it holds (p =
    # 0.37, the student without it 0.01; `benchmarks/training_signal.py sharpness`). So the
    # continuation is the sentence, and the divergence at the blank carries the fact; it is
    # also an imitation memory.
    items = clozes(user_turns)
    recall = recall_prompts(items, closed, rng)
    for item in items:
        request = {"role": "user", "content": FILL.format(blanked=item.blanked)}
        teacher_view = [{"role": "system", "content": focused_system(base_system, item.turn)}, request]
        examples.append(Example("today", closed + [request], teacher_view, stack or None, [item.turn]))
        documents.append((closed + [request], item.turn))
    progress()

    probes = cloze_probes(model, tokenizer, items, day=day, base_system=base_system, stack=stack,
                          distractors=cfg.distractors, rng=rng)
    progress()
    counts = {
        "user_turns": len(user_turns), "questions_generated": len(generated), "questions_from_turns": len(built),
        "cloze_prompts": len(items),
        "training_prompts": len(examples), "memories": len(documents), "probes": len(probes),
    }
    return Memories(examples, documents, recall, probes, counts)
