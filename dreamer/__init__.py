"""dreamer: the sleep engine, the command line and the scheduler.

`dreamer` never imports textual; `dreamer chat` hands over to `agent.tui`.
"""

__version__ = "0.1.0"
