"""Stage 1, Knowledge Seeding: the teacher (the model with the day in its context) writes
memories, cloze prompts and probes; generalized distillation moves them into a new expert."""
