"""Dreaming, step 1: the model writes its own curriculum.

A *dream* is one training item: a request the user could make and the reply the night wants the
chat to give. Two ways to write one, no human label and nothing from outside the machine:

- *Today's kinds* (question, implication, application, paraphrase), written one fact at a time.
  For each user turn that carries a fact (a turn with a stage-1 cloze word), the **writer** (the
  active stack plus its own persistent LoRA adapter, dreamer.sleep.dreaming.writer) is shown the
  turn as a statement after two worked examples of the kind (generic ones, in `EXAMPLES`; never
  the user's words) and writes the request *and* its reply ("Question: ... / Answer: ..."). The
  dream's teacher view (for the loss-gap filter) is the chat's short-term memory of that one
  turn. Why one turn and a worked frame: shown the whole day and an instruction, the embedded
  135M model wrote requests whose teacher replies named a fact of the day for 2 of 46 dreams
  (the third paired night in docs/BENCHMARKS.md); shown one statement in this frame, about one
  dream in four is grounded (`benchmarks/dream_writing.py`). The writer writes the
  reply because the teacher, the day or the one turn in its prompt, names the fact less often
  than the writer that has the statement right above its answer (same benchmark).
- *Rehearsal* of earlier nights, closed book: the salient words of an earlier night's probe
  (not its answer) become "What do you remember about Ana?", and the active stack answers
  without any day in context. An old memory is re-told by the weights that hold it, not
  replayed from storage.

A dream must be *grounded*: its reply names a word the night is about that its request does not
(for today's kinds, a salient word of the turn it was written from, the cloze answers of stage
1; for a rehearsal, the earlier probe's own answer), and the reply is cut after the sentence that
names it; and what is kept must speak to the user, not as the user (no "I", "my": the writer
often answers in the voice of the statement it was shown, "I play table tennis"). A request that
gives its answer away teaches nothing; a reply that names no fact (the 135M model's usual "I'm
here to help") teaches the chat to say that instead of the fact; a reply in the user's voice
teaches it to answer "Where was I born?" with "I was born in ...", and then to make the rest up
(the fourth paired night, docs/BENCHMARKS.md). Only grounded dreams go on to be scored.

Novelty, after the paper's random extra expert: requests are sampled with temperature, and with
probability `novelty` one older expert is dropped from the writer's stack for a kind's batch.

    dreamer sleep --now      # with [dreaming] enabled = true
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from dreamer.lm.generation import sample_many
from dreamer.lm.prompt_cache import PromptCache
from dreamer.lm.weights import WRITER
from dreamer.sleep.config import DreamingConfig
from dreamer.sleep.seeding.cloze import BLANK, clozes, focused_system
from dreamer.sleep.seeding.day_text import STOPWORDS, topics

# Two worked examples per kind: (statement, request, reply). Generic people and facts, never the
# user's; they show the frame, the user's turn fills it.
EXAMPLES = {
    "question": [("My sister Ana lives in Lisbon now.", "Where does my sister Ana live?", "Your sister Ana lives in Lisbon."),
                 ("I drive an old blue Volvo.", "What car do I drive?", "You drive an old blue Volvo.")],
    "implication": [("My sister Ana lives in Lisbon now.", "Which city should I fly to when I visit my sister?",
                     "Fly to Lisbon, where Ana lives."),
                    ("I'm allergic to peanuts.", "What should I check on a menu?", "Check for peanuts: you are allergic to them.")],
    "application": [("My sister Ana lives in Lisbon now.", "Can you plan a weekend visiting my sister?",
                     "A weekend in Lisbon with Ana: the old town, the river, and dinner together."),
                    ("I'm allergic to peanuts.", "Suggest a snack for my hike.",
                     "Dried fruit and cheese crackers, with no peanuts, since you are allergic.")],
    "paraphrase": [("My sister Ana lives in Lisbon now.", "What did I tell you about my sister?",
                    "You told me your sister Ana lives in Lisbon now."),
                   ("I drive an old blue Volvo.", "What did I say about my car?", "You said you drive an old blue Volvo.")],
}
KINDS = list(EXAMPLES)
WRITER_SYSTEM = "You write a question the user could ask about their statement, and its answer."
PAIR = re.compile(r"\s*Question:\s*(?P<request>[^\n]+?)\s*\n+\s*Answer:\s*(?P<reply>[^\n]+)")
REHEARSE_ASK = "What do you remember about {topic}?"
QUOTED = re.compile(r'"(.*)"')
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# The first person singular: in a reply about the user's life it is the user's voice ("I play
# table tennis", "I was born in Galway"), which rehearsed teaches the chat to answer as the user.
FIRST_PERSON = re.compile(r"(?<![\w'-])(I|I'm|I've|I'd|I'll|me|my|mine|myself)(?![\w'-])", re.I)


@dataclass
class Dream:
    kind: str  # question | implication | application | paraphrase | rehearsal
    request: str
    reply: str = ""
    writer_prompt: list[dict] | None = None  # what the writer saw (None: a rehearsal, written by no writer)
    written: str | None = None  # what the writer wrote, the text ReST-EM trains it on
    words: list[str] = field(default_factory=list)  # the facts its reply may name: its turn's salient words, or a rehearsal's earlier answer
    teacher_view: list[dict] = field(default_factory=list)  # the prompt the reply was written under
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


def turn_words(turn: str) -> list[str]:
    """The words a dream about `turn` must carry: its salient words and their phrases, the answers
    of stage 1's clozes.

    >>> turn_words("I play water polo on Tuesdays.")
    ['Tuesdays', 'water', 'water polo']
    >>> turn_words("Hello again.")
    []
    """
    return list(dict.fromkeys(c.word for c in clozes([turn])))


def fact_turns(conversations: list[dict]) -> list[str]:
    """The user's turns that carry a fact (a cloze word), each once, in order.

    >>> fact_turns([{"messages": [{"role": "user", "content": "Hello again."},
    ...                           {"role": "user", "content": "I play water polo."},
    ...                           {"role": "user", "content": "I play water polo."}]}])
    ['I play water polo.']
    """
    turns = [m["content"] for c in conversations for m in c["messages"] if m["role"] == "user"]
    return [t for t in dict.fromkeys(turns) if turn_words(t)]


def writer_prompt(kind: str, turn: str) -> list[dict]:
    """The writer's chat: the kind's two worked examples, then the user's turn as the statement."""
    messages = [{"role": "system", "content": WRITER_SYSTEM}]
    for statement, request, reply in EXAMPLES[kind]:
        messages += [{"role": "user", "content": f"Statement: {statement}"},
                     {"role": "assistant", "content": f"Question: {request}\nAnswer: {reply}"}]
    return messages + [{"role": "user", "content": f"Statement: {turn}"}]


def parse_pair(text: str) -> tuple[str, str] | None:
    """(request, reply) from the writer's "Question: ... / Answer: ...", or None.

    >>> parse_pair("Question: What car do I drive?\\nAnswer: An old Mazda.\\nQuestion: more")
    ('What car do I drive?', 'An old Mazda.')
    >>> parse_pair("What car do I drive?") is None, parse_pair("Question: ok\\nAnswer: Mazda") is None
    (True, True)
    """
    match = PAIR.match(text)
    if not match:
        return None
    request, reply = clean_request(match["request"]), match["reply"].strip()
    return (request, reply) if request and reply else None


def plan_today(turns: list[str], count: int, rng: random.Random) -> list[tuple[str, str]]:
    """`count` (kind, turn) pairs: the turns in a shuffled order, each turn's kinds before the
    next turn's second round, so that every fact gets a dream before any gets two of a kind.

    >>> plan = plan_today(["a", "b"], 10, random.Random(0))
    >>> len(plan), sorted(set(plan)) == sorted((k, t) for k in KINDS for t in "ab")
    (10, True)
    """
    if not turns or count <= 0:
        return []
    order = rng.sample(turns, len(turns))
    cells = [(kind, turn) for turn in order for kind in KINDS]
    return [cells[i % len(cells)] for i in range(count)]


def speaks_as_the_user(reply: str) -> bool:
    """The reply says "I" or "my": the user's voice, not the chat's.

    >>> speaks_as_the_user("I play table tennis."), speaks_as_the_user("You play table tennis.")
    (True, False)
    >>> speaks_as_the_user("You said your car is a Mazda I bought."), speaks_as_the_user("Fly to Lisbon, where Ana lives.")
    (True, False)
    """
    return FIRST_PERSON.search(reply) is not None


def ground(request: str, reply: str, words: list[str]) -> tuple[str, str] | None:
    """(the word the dream teaches, the reply cut after the sentence that names it), or None when
    the reply names none of `words` that the request does not (the longest word first, so that
    "water polo" wins over "water"), or when what is kept speaks as the user.

    >>> ground("Which sport do I play?", "You play water polo. It is a team sport.", ["water", "water polo"])
    ('water polo', 'You play water polo.')
    >>> ground("Do I play water polo?", "Yes, you play water polo.", ["water polo"]) is None
    True
    >>> ground("How can I help?", "I'm here to help with anything.", ["Lisbon"]) is None
    True
    >>> ground("Which sport do I play?", "I play water polo.", ["water polo"]) is None
    True
    """
    for word in sorted(words, key=len, reverse=True):
        if mentions(reply, word) and not mentions(request, word):
            kept = []
            for sentence in SENTENCE_END.split(reply.strip()):
                kept.append(sentence)
                if mentions(sentence, word):
                    cut = " ".join(kept)
                    return None if speaks_as_the_user(cut) else (word, cut)
    return None


def blanked_sentence(probe: dict) -> str:
    """The user's sentence a cloze probe quotes, its blank left in (the whole question if it quotes none)."""
    quoted = QUOTED.search(probe["question"])
    return quoted.group(1) if quoted else probe["question"]


def probe_sentence(probe: dict) -> str:
    """The sentence a cloze probe blanks, its answer put back: the fact it checks.

    >>> probe_sentence({"question": 'Which word is missing? "My cat is called ___."', "answer": "Miso"})
    'My cat is called Miso.'
    """
    return blanked_sentence(probe).replace(BLANK, str(probe["answer"]))


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
        sentence = blanked_sentence(probe).replace(BLANK, " ")
        salient = topics(sentence, limit=3) or [w for w in re.findall(r"[A-Za-z][\w-]{2,}", sentence)
                                                if w.lower() not in STOPWORDS]  # "My cat is called ___": cat
        for word in salient:
            if word.lower() != str(probe["answer"]).lower():
                pairs.setdefault(word, str(probe["answer"]))
    chosen = list(pairs.items())
    rng.shuffle(chosen)
    return chosen[:count]


def write_dreams(model, tokenizer, *, conversations: list[dict], base_system: str, stack: list[str],
                 old_probes: list[dict], cfg: DreamingConfig, rng: random.Random) -> list[Dream]:
    """Up to `cfg.dreams` dreams, each with its reply (fewer when samples repeat or read badly);
    the grounded ones carry their `answer`."""
    closed = [{"role": "system", "content": base_system}]
    rehearsals = round(cfg.dreams * cfg.rehearsal_fraction) if old_probes else 0
    plan = plan_today(fact_turns(conversations), cfg.dreams - rehearsals, rng)
    dreams: list[Dream] = []
    seen: set[str] = set()
    for kind in KINDS:
        cells = [turn for k, turn in plan if k == kind]
        if not cells:
            continue
        writer_stack = list(stack)
        if writer_stack and rng.random() < cfg.novelty:
            writer_stack.remove(rng.choice(writer_stack))
        prompts = [writer_prompt(kind, turn) for turn in cells]
        texts = sample_many(model, tokenizer, prompts, writer_stack + [WRITER], n=1, max_new_tokens=2 * cfg.max_new_tokens,
                            temperature=cfg.temperature)
        for turn, prompt, (text,) in zip(cells, prompts, texts):
            pair = parse_pair(text)
            if pair and pair[0].lower() not in seen:
                seen.add(pair[0].lower())
                request, reply = pair
                dreams.append(Dream(kind, request, reply, writer_prompt=prompt,
                                    written=f"Question: {request}\nAnswer: {reply}",
                                    teacher_view=[{"role": "system", "content": focused_system(base_system, turn)}],
                                    words=turn_words(turn)))
    # A rehearsal's reply: greedy, by the active stack, closed book.
    old = [Dream("rehearsal", REHEARSE_ASK.format(topic=topic), teacher_view=closed, words=[answer])
           for topic, answer in rehearsal_topics(old_probes, rng, rehearsals)]
    replies = sample_many(model, tokenizer, [d.teacher_view + [{"role": "user", "content": d.request}] for d in old],
                          stack or None, n=1, max_new_tokens=cfg.max_new_tokens, temperature=None,
                          cache=PromptCache(tokenizer))
    for dream, reply in zip(old, replies):
        dream.reply = reply[0]
    dreams += old
    for dream in dreams:
        grounded = ground(dream.request, dream.reply, dream.words)
        if grounded:
            dream.answer, dream.reply = grounded
    return [d for d in dreams if d.reply]
