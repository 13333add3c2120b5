"""The day as the teacher reads it: salient words of a user turn, and the teacher's system prompt.

Shared by the memory writer (dreamer.sleep.seeding.memories) and the cloze prompts
(dreamer.sleep.seeding.cloze), which both pick the words a night should teach.
"""

from __future__ import annotations

import re

STOPWORDS = set(
    "a an the and or but if of to in on at for with about from by as is are was were be been am i you he she it we "
    "they my your his her its our their me him us them this that these those what which who whom when where why how "
    "do does did have has had not no yes so too very just also can could would should will shall may might must "
    "there here then than into over under after before again today tomorrow yesterday really please thanks "
    "called named favourite favorite lives works one last next".split()
    # Greetings and small talk carry no fact: blanked ("___ again." -> Hello), they became probes,
    # cloze labels and restatements that taught the model to answer questions with "Hello"
    # (the 14-night run: 0 of 25 replies after night 1, 31 of 77 after night 5).
    + "hello hi hey hiya morning afternoon evening goodbye bye cheers welcome sorry okay minute".split()
)


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
    >>> topics("Hello again."), topics("Good morning!")
    ([], [])
    """
    # Contractions ("I'm", "There's") are never the fact; a possessive keeps its name ("Ana's" -> "Ana").
    words = [re.sub(r"'s$", "", w) for w in re.findall(r"[A-Za-zÀ-ÿ][\w'-]*", text)]
    kept = [(i, w) for i, w in enumerate(words) if "'" not in w and w.lower() not in STOPWORDS]
    capitals = [w for i, w in kept if i > 0 and w[0].isupper()]
    longer = sorted((w for _, w in kept if len(w) > 4), key=len, reverse=True)
    return list(dict.fromkeys(capitals + longer))[:limit]
