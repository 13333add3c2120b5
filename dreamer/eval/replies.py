"""Does a reply name a value: the one matcher behind the bench's headline (dreamer.bench.score)
and Dreaming's reward asked as the chat asks (dreamer.sleep.dreaming.score).

A reply names a value when the value occurs in it, casefolded, as whole words, in one of its
forms: as written, without a leading article, a small number as a word or as digits. A reply
that also names one of the probe's wrong options names nothing: listing the day's words is not
knowing which one is asked for.
"""

from __future__ import annotations

import re

NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def forms(value: str) -> set[str]:
    """The ways a reply may name a value: as written, without a leading article, a number as a word or digits."""
    value = value.strip().casefold()
    bare = re.sub(r"^(the|a|an) ", "", value)
    out = {value, bare}
    if bare in NUMBERS:
        out.add(str(NUMBERS.index(bare)))
    elif bare.isdigit() and int(bare) < len(NUMBERS):
        out.add(NUMBERS[int(bare)])
    return out


def names(text: str, value: str) -> bool:
    """`value` occurs in `text` (casefolded) as whole words, in one of its forms ("ten" is not in "often",
    "0" is not in "-18.0", "8" is in "8 legs." and "8.")."""
    return any(re.search(rf"(?<![\w.,-]){re.escape(form)}(?![\w]|[.,]\d)" if form.isdigit() else
                         rf"(?<!\w){re.escape(form)}(?!\w)", text) for form in forms(value))


def said(reply: str) -> str:
    """A reply as the matchers read it: casefolded, typographic apostrophes plain."""
    return reply.casefold().replace("’", "'")


def names_the_answer(reply: str, answer: str, distractors=()) -> bool:
    """The reply names `answer` and none of `distractors`.

    >>> names_the_answer("Your cat is called Miso.", "Miso", ["Milo"])
    True
    >>> names_the_answer("Miso, Milo or Rex.", "Miso", ["Milo"]), names_the_answer("It has 8 legs.", "eight")
    (False, True)
    """
    text = said(reply)
    return names(text, answer) and not any(names(text, d) for d in distractors)
