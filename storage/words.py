"""One word, one count, everywhere the user reads one: a `message` is one turn of either side."""


def count(n: int, noun: str) -> str:
    """"1 message", "8 messages"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
