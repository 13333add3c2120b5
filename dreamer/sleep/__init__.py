"""The night: its stages in order over one `Night` (dreamer.sleep.night), their configs and
presets (dreamer.sleep.config), the gate and the morning report. Stage 1, Knowledge Seeding,
lives in `seeding/`; stage 2, Dreaming, will live beside it in `dreaming/`."""
