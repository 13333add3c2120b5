"""Cloze memories: each salient word of a user turn, blanked out, becomes a question.

"My sister Ana moved to ___ last year." asks from the rest of the sentence to the missing word,
which is the direction a later question asks ("Where does my sister Ana live?"); the answer is
the user's own word, so no label is needed. Measured on the synthetic days of
`benchmarks/sleep_quality.py` (docs/BENCHMARKS.md, "Why cloze"): the 135M teacher writes poor
questions of its own, and restatements keyed by a word teach the wrong direction (word ->
sentence), while cloze prompts teach the association between the fact's words.

The teacher for a cloze prompt holds the turn it came from in its short-term memory, the line
the chat's own recall (agent/memory.py) would find for it: a 135M model copies one relevant line
far more reliably than it finds it in a whole day.

Gate probes come from the same blanks, worded differently, with distractors taken from the
other salient words of the *same* day (same kind first: a capitalised word for a capitalised
word). A model that merely favours today's words whatever the question scores chance on them;
only one that ties each word to its sentence gains.

    dreamer sleep --now        # memories.write_memories calls this stage
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from dreamer.lm.scoring import option_scores
from dreamer.lm.weights import adapters
from dreamer.sleep.seeding.day_text import STOPWORDS, teacher_system, topics

FILL = 'Fill in the blank from what I told you: "{blanked}"'
ASK = 'Which word did I leave out here: "{blanked}"'  # the cloze recall term's prompt
PROBE = 'Which word is missing from what I told you? "{blanked}"'
BLANK = "___"


@dataclass(frozen=True)
class Cloze:
    turn: str  # the user's turn, whitespace normalised
    word: str  # the blanked word: the answer
    blanked: str


def clozes(user_turns: list[str], limit: int = 3) -> list[Cloze]:
    """Clozes of the salient words (`memories.topics(turn, limit)`) of each user turn, in order, no repeats.

    Each salient word is blanked alone and, where it is part of a short phrase (`phrase`), with
    its phrase: many facts are two words ("water polo", "chai latte").

    >>> [c.blanked for c in clozes(["My sister Ana moved to Lisbon."])]
    ['My sister ___ moved to Lisbon.', 'My sister Ana moved to ___.', 'My ___ Ana moved to Lisbon.']
    >>> [c.word for c in clozes(["I play water polo and read Ursula Le Guin."], limit=4)]
    ['Ursula', 'Ursula Le Guin', 'Le', 'Guin', 'water', 'water polo']
    >>> [c.blanked for c in clozes(["I'm sure Ana's cat is Tom."], limit=1)]
    ["I'm sure ___'s cat is Tom."]
    """

    out = []
    for turn in user_turns:
        text = " ".join(turn.split())
        for word in topics(text, limit=limit):
            for answer in (word, phrase(text, word)):
                # A whole word, or a name before its possessive ("Ana's" -> "___'s").
                blanked = re.sub(rf"(?<![\w'-]){re.escape(answer or '')}(?![\w-]|'(?!s\b))", BLANK, text, count=1)
                if answer and blanked != text:
                    out.append(Cloze(text, answer, blanked))
    return list(dict.fromkeys(out))


def phrase(text: str, word: str) -> str | None:
    """The short phrase `word` belongs to in `text`, or None.

    A capitalised word: the run of capitalised words around it ("Ursula Le Guin"). Another: the
    next content word when that one ends the phrase ("water polo in"), else the content word
    before it ("a chai latte"). Punctuation ends a phrase.

    >>> phrase("I drink a chai latte before work.", "latte"), phrase("She is a veterinary nurse.", "veterinary")
    ('chai latte', 'veterinary nurse')
    >>> phrase("We adopted a kitten last week.", "kitten") is None
    True
    """

    tokens = re.findall(r"[A-Za-zÀ-ÿ][\w'-]*|[^\w\s]", text)  # words and punctuation marks

    def content(i: int) -> bool:
        w = tokens[i] if 0 <= i < len(tokens) else "."
        return w[0].isalpha() and "'" not in w and w.lower() not in STOPWORDS

    if word not in tokens:
        return None
    i = tokens.index(word)
    if word[0].isupper():
        start, end = i, i
        while start > 1 and content(start - 1) and tokens[start - 1][0].isupper():  # not the sentence's first word
            start -= 1
        while content(end + 1) and tokens[end + 1][0].isupper():
            end += 1
        return " ".join(tokens[start:end + 1]) if end > start else None
    if content(i + 1) and not content(i + 2) and not tokens[i + 1][0].isupper():
        return f"{word} {tokens[i + 1]}"
    if content(i - 1) and not content(i - 2) and not tokens[i - 1][0].isupper():
        return f"{tokens[i - 1]} {word}"
    return None


def focused_system(base_system: str, turn: str) -> str:
    """The teacher's short-term memory for a prompt about `turn`: the one line recall would find."""

    return teacher_system(base_system, f"- User: {turn}")


def distractor_words(item: Cloze, pool: list[str], count: int, rng: random.Random) -> list[str]:
    """Other salient words of the day, not in this turn; the same kind (capitalised or not) first."""
    others = [w for w in dict.fromkeys(pool) if w != item.word and w.lower() not in item.turn.lower()]
    rng.shuffle(others)
    others.sort(key=lambda w: w[0].isupper() != item.word[0].isupper())  # stable: shuffled within a kind
    return others[:count]


def recall_prompts(items: list[Cloze], closed: list[dict], rng: random.Random) -> list[tuple[list[dict], str, list[str]]]:
    """The cloze recall term's data: (student prompt without the day, missing word, the day's other words)."""
    pool = [c.word for c in items]
    return [(closed + [{"role": "user", "content": ASK.format(blanked=item.blanked)}], item.word,
             distractor_words(item, pool, len(pool), rng)) for item in items]


def cloze_probes(model, tokenizer, items: list[Cloze], *, day: str, base_system: str, stack: list[str],
                 distractors: int, rng: random.Random) -> list[dict]:
    """Closed-book probes, kept when the teacher holding the turn prefers the true word."""

    pool = [c.word for c in items]
    probes = []
    with adapters(model, stack):
        for item in items:
            wrong = distractor_words(item, pool, distractors, rng)
            if not wrong:
                continue
            question = PROBE.format(blanked=item.blanked)
            scores = option_scores(model, tokenizer, question, [item.word, *wrong],
                                   system=focused_system(base_system, item.turn))
            if scores[0] > max(scores[1:]):
                probes.append({"day": day, "question": question, "answer": item.word, "distractors": wrong,
                               "kind": "recall"})
    return probes
