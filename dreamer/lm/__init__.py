"""The language model every stage uses: base weights and the LoRA stack, the chat tokenizer,
generation and scoring helpers (torch and transformers; nothing here knows about a night)."""
