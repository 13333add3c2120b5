"""dreamer's data files, installed as the package `dreamer.assets` (pyproject's package-dir):
the sleep presets (`presets/*.toml`), the general prompts of the anchor and drift terms
(`general_prompts.jsonl`) and the gate's held-out general text (`general_heldout.jsonl`).
Code finds them with `importlib.resources.files("dreamer.assets")`, so an installed wheel
carries them as a source checkout does."""
