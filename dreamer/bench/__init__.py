"""`dreamer bench`: the continual-learning benchmark: the same days for every kind of memory.

days (synthetic days and probes) and data (a user's own), arms (the memories compared), score
(asked as the chat asks), run (the nights, resumable), report (Markdown and plots), tiny (the
tests' model, for --quick).
"""
