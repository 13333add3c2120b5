"""`ReportScreen`: last night's morning report, shown once on the first launch after it; and, on a
home's very first launch, the first-run card (`first_run_card`) in the same panel."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown, Static


class ReportScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("enter", "dismiss", "Close", show=False),
    ]

    def __init__(self, report: str, hint: str = "Esc or Enter closes; `dreamer memory` lists every night.") -> None:
        super().__init__()
        self.report = report
        self.hint = hint

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="report"):
            yield Markdown(self.report)
            yield Static(self.hint, classes="hint", markup=False)


def first_run_card(model_name: str, embedded: bool, sleep_time: str) -> str:
    """What a new user needs before the first message: what sleep does and when, the keys, the model."""
    model = (f"The model is the embedded **{model_name}**: 135M parameters, quick on any CPU, but small: it "
             "often answers vaguely, and a night teaches it less than a bigger model learns. A 1-3B instruct "
             "model answers far better: set `model` (its GGUF) and `train_model` (the same model as a Hugging "
             "Face folder) in config.toml (README, \"Configuration\")."
             if embedded else f"The model is **{model_name}** (`model` in config.toml).")
    return f"""# Welcome to dreamer

Chat as with any assistant. Every message stays on this computer.

**At night dreamer sleeps**: it learns the day's conversations into its own weights (one small
expert a night), checks that it remembers them and did not get worse at anything else, and the
chat uses the new memory from then on. Run a night now with `dreamer sleep --now`, or every night
at {sleep_time} with `dreamer schedule --install-systemd` (or `dreamer daemon`).

- `F1` or `?` lists the keys; `F2` shows what it has learned about you and what it learns tonight
- `Ctrl+L` keeps this conversation out of every night; `Ctrl+F` forgets it, memory included

{model}
"""
