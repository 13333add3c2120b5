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
- *cloze prompts* (dreamer/sleep/seeding/cloze.py): each salient word of a user turn blanked out ("Fill in
  the blank from what I told you: \"My sister Ana moved to ___\""); the continuation is the
  user's own sentence, scored by the teacher holding that turn (it copies the missing word),
  and it is also an imitation memory; the same blank, asked for the bare missing word with the
  user's own word as the label, feeds the cloze recall term (dreamer.sleep.seeding.distill);
- *probes*, label-free (dreamer/sleep/seeding/cloze.py): the same blanks worded differently, the true word
  against other salient words of the day, kept only if the teacher prefers the true word.

    dreamer sleep --now            # runs this stage first; `--dry-run` shows what it would use
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from dreamer.sleep.seeding.cloze import FILL, cloze_probes, clozes, focused_system, recall_prompts
from dreamer.lm.prompt_cache import PromptCache
from dreamer.sleep.config import MemoriesConfig
from dreamer.lm.generation import sample, sample_many
from dreamer.sleep.seeding.day_text import teacher_system, topics

QUESTION_REQUEST = (
    "Write one short question that checks whether you remember something the user told you today. "
    "Write only the question."
)
TRAIN_ASK = "What do you remember about {topic}?"
QUOTE = "You told me: {turn}"
TEACHER_BATCHES = 5  # questions, greedy answers, sampled answers, cloze prompts, probe checks: the progress bar
GENERAL_RESTATEMENTS = ("What do you remember about me?", "What did I tell you today?")


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
