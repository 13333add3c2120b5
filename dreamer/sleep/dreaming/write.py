"""Dreaming, step 1: the model writes its own curriculum.

A *dream* is one training item: a request the user could make and the reply the night wants the
chat to give. Two ways to write one, no human label and nothing from outside the machine:

- *Today's kinds* (question, implication, application, paraphrase). The **writer** (the active
  stack plus its own persistent LoRA adapter, dreamer.sleep.dreaming.writer, with the day in its
  context as the chat held it) samples requests, one instruction per kind ("Write one request
  where something the user told you today should shape your answer"); the **teacher** (the active
  stack with the day in context, no writer) answers each greedily. The writer only writes the
  requests, so what it learns (ReST-EM) is which requests are worth training on.
- *Rehearsal* of earlier nights, closed book: the salient words of an earlier night's probe
  (not its answer) become "What do you remember about Ana?", and the active stack answers
  without any day in context. An old memory is re-told by the weights that hold it, not
  replayed from storage.

A dream must be *grounded*: its reply names a word the night is about that its request does not
(for today's kinds, one of the day's salient words, the cloze answers of stage 1; for a
rehearsal, the earlier probe's own answer), and the reply is cut after the sentence that names
it. A request that gives its answer away teaches nothing, and a reply that names no fact of the
day (the 135M writer's usual "I'm here to help") teaches the chat to say that instead of the
fact: on the first paired nights such dreams were most of the rewarded ones, and recall fell.
Only grounded dreams go on to be scored.

Novelty, after the paper's random extra expert: each batch of requests is sampled with
temperature, and with probability `novelty` one older expert is dropped from the writer's stack
for that batch.

    dreamer sleep --now      # with [dreaming] enabled = true
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from dreamer.lm.generation import sample, sample_many
from dreamer.lm.prompt_cache import PromptCache
from dreamer.lm.weights import WRITER
from dreamer.sleep.config import DreamingConfig
from dreamer.sleep.seeding.cloze import clozes
from dreamer.sleep.seeding.day_text import STOPWORDS, teacher_system, topics
from dreamer.sleep.seeding.memories import transcript

INSTRUCTIONS = {
    "question": ("Write one short question the user could ask you later to check that you remember something they "
                 "told you today, in other words than theirs. Write only the question."),
    "implication": ("Write one short question about what follows from something the user told you today for their "
                    "plans or their life: where to go, what to buy, what to expect. Write only the question."),
    "application": ("Write one short request the user could make later, for a suggestion, a plan or advice, where "
                    "something they told you today should shape your answer. Write only the request."),
    "paraphrase": "Write one short question that asks you to say again something the user told you today. Write only the question.",
}
REHEARSE_ASK = "What do you remember about {topic}?"
QUOTED = re.compile(r'"(.*)"')
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Dream:
    kind: str  # question | implication | application | paraphrase | rehearsal
    request: str
    reply: str = ""
    writer_prompt: list[dict] | None = None  # what the writer saw (None: a rehearsal, written by no writer)
    teacher_view: list[dict] = field(default_factory=list)  # the prompt the reply was written under
    expected: str | None = None  # a rehearsal's earlier probe answer, the word its reply must name
    answer: str | None = None  # the word the reply names and the request does not (None: not grounded)
    gap: float | None = None  # student minus teacher loss on the reply (the first filter)
    tau_delta: float | None = None  # change of tau after a throwaway copy trained on it
    rewarded: bool = False

    def shown(self) -> dict:
        return {"kind": self.kind, "request": self.request, "reply": self.reply, "answer": self.answer,
                "gap": self.gap, "tau_delta": self.tau_delta}


def clean_request(text: str) -> str | None:
    """The first line of a sampled request, if it reads like one.

    >>> clean_request("Where does my sister live?\\nShe lives in Lisbon.")
    'Where does my sister live?'
    >>> clean_request("ok") is None, clean_request('"Suggest a gift for my niece."')
    (True, 'Suggest a gift for my niece.')
    """
    line = text.strip().split("\n")[0].strip().strip('"').strip()
    words = line.split()
    return line if 3 <= len(words) <= 40 and any(c.isalpha() for c in line) else None


def mentions(text: str, word: str) -> bool:
    """`word` occurs in `text` as whole words, casefolded.

    >>> mentions("Your sister lives in Lisbon.", "lisbon"), mentions("Lisboner", "Lisbon")
    (True, False)
    """
    return re.search(rf"(?<![\w-]){re.escape(word.casefold())}(?![\w-])", text.casefold()) is not None


def day_words(conversations: list[dict]) -> list[str]:
    """The words a dream about today must carry: the salient words of the user's turns and their
    phrases, the answers of stage 1's clozes.

    >>> day_words([{"messages": [{"role": "user", "content": "Hello again."},
    ...                          {"role": "user", "content": "I play water polo on Tuesdays."}]}])
    ['Tuesdays', 'water', 'water polo']
    """
    turns = [m["content"] for c in conversations for m in c["messages"] if m["role"] == "user"]
    return list(dict.fromkeys(c.word for c in clozes(turns)))


def ground(request: str, reply: str, words: list[str]) -> tuple[str, str] | None:
    """(the word the dream teaches, the reply cut after the sentence that names it), or None when
    the reply names none of `words` that the request does not: the longest word first, so that
    "water polo" wins over "water".

    >>> ground("Which sport do I play?", "You play water polo. It is a team sport.", ["water", "water polo"])
    ('water polo', 'You play water polo.')
    >>> ground("Do I play water polo?", "Yes, you play water polo.", ["water polo"]) is None
    True
    >>> ground("How can I help?", "I'm here to help with anything.", ["Lisbon"]) is None
    True
    """
    for word in sorted(words, key=len, reverse=True):
        if mentions(reply, word) and not mentions(request, word):
            kept = []
            for sentence in SENTENCE_END.split(reply.strip()):
                kept.append(sentence)
                if mentions(sentence, word):
                    return word, " ".join(kept)
    return None


def split_counts(total: int, kinds: list[str]) -> dict[str, int]:
    """`total` dreams spread over `kinds` as evenly as possible, the first kinds taking the rest.

    >>> split_counts(6, ["a", "b", "c", "d"])
    {'a': 2, 'b': 2, 'c': 1, 'd': 1}
    """
    return {kind: total // len(kinds) + (i < total % len(kinds)) for i, kind in enumerate(kinds)}


def rehearsal_topics(old_probes: list[dict], rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(salient word, the probe's answer) of earlier nights' probe sentences, the word never the
    answer, shuffled: the rehearsal asks about the word, and is grounded if the stack's reply
    names the answer.

    >>> rehearsal_topics([{"question": 'Which word is missing? "My cat is called ___."', "answer": "Miso"}],
    ...                  random.Random(0), 2)
    [('cat', 'Miso')]
    """
    pairs = {}
    for probe in old_probes:
        quoted = QUOTED.search(probe["question"])
        sentence = (quoted.group(1) if quoted else probe["question"]).replace("___", " ")
        salient = topics(sentence, limit=3) or [w for w in re.findall(r"[A-Za-z][\w-]{2,}", sentence)
                                                if w.lower() not in STOPWORDS]  # "My cat is called ___": cat
        for word in salient:
            if word.lower() != str(probe["answer"]).lower():
                pairs.setdefault(word, str(probe["answer"]))
    chosen = list(pairs.items())
    rng.shuffle(chosen)
    return chosen[:count]


def write_dreams(model, tokenizer, *, conversations: list[dict], base_system: str, stack: list[str],
                 old_probes: list[dict], cfg: DreamingConfig, max_context_tokens: int,
                 rng: random.Random) -> list[Dream]:
    """Up to `cfg.dreams` dreams, each with its reply (fewer when samples repeat or read badly);
    the grounded ones carry their `answer`."""
    day_text = transcript(conversations, tokenizer, max_context_tokens)
    opened = [{"role": "system", "content": teacher_system(base_system, day_text)}]
    closed = [{"role": "system", "content": base_system}]
    cache = PromptCache(tokenizer)
    rehearsals = round(cfg.dreams * cfg.rehearsal_fraction) if old_probes else 0
    dreams: list[Dream] = []
    seen: set[str] = set()
    for kind, count in split_counts(cfg.dreams - rehearsals, list(INSTRUCTIONS)).items():
        if not count:
            continue
        writer_stack = list(stack)
        if writer_stack and rng.random() < cfg.novelty:
            writer_stack.remove(rng.choice(writer_stack))
        prompt = opened + [{"role": "user", "content": INSTRUCTIONS[kind]}]
        for text in sample(model, tokenizer, prompt, writer_stack + [WRITER], n=count,
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, cache=cache):
            request = clean_request(text)
            if request and request.lower() not in seen:
                seen.add(request.lower())
                dreams.append(Dream(kind, request, writer_prompt=prompt, teacher_view=opened))
    for topic, answer in rehearsal_topics(old_probes, rng, rehearsals):
        dreams.append(Dream("rehearsal", REHEARSE_ASK.format(topic=topic), teacher_view=closed, expected=answer))
    # The replies: greedy, by the teacher (the active stack; the day in context for today's kinds),
    # in two batches so that today's share the day's cached prefix.
    for group in ([d for d in dreams if d.kind != "rehearsal"], [d for d in dreams if d.kind == "rehearsal"]):
        replies = sample_many(model, tokenizer, [d.teacher_view + [{"role": "user", "content": d.request}] for d in group],
                              stack or None, n=1, max_new_tokens=cfg.max_new_tokens, temperature=None, cache=cache)
        for dream, reply in zip(group, replies):
            dream.reply = reply[0]
    words = day_words(conversations)
    for dream in dreams:
        grounded = ground(dream.request, dream.reply, [dream.expected] if dream.expected else words)
        if grounded:
            dream.answer, dream.reply = grounded
    return [d for d in dreams if d.reply]
