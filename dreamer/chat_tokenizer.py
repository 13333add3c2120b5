"""The training side's tokenizer, with its end of turn read from the chat template.

Every reply the night trains on ends with the token that closes an assistant turn, and every
sample stops there. `tokenizer.eos_token` is not a reliable name for it: transformers 5.17
reads the embedded SmolLM2 GGUF's tokenizer with eos = `<|im_start|>` (5.23 gives `<|im_end|>`,
as the GGUF's own metadata says), and a night trained that way taught its expert to open a new
turn after each answer (docs/BENCHMARKS.md, "The CUDA path"). Instruct models such as Llama 3
also close a turn with a token (`<|eot_id|>`) other than their end of text. So the end of turn
is what the chat template writes right after an assistant message, when that is a special token.
"""

from __future__ import annotations

SENTINEL = "dreamer sentinel reply"


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant's message, or None.

    ChatML (SmolLM2): `<|im_end|>`; Llama 3: `<|eot_id|>`; a template that ends a turn with
    plain text only: None.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if SENTINEL not in text:
        return None
    after = text[text.rindex(SENTINEL) + len(SENTINEL):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    # A special token decodes to nothing when special tokens are skipped; plain text (a template
    # that closes a turn with a newline only) does not, and then there is no end-of-turn token.
    if ids and tokenizer.decode(ids[:1], skip_special_tokens=True) == "":
        return ids[0]
    return None


def fix_end_of_turn(tokenizer):
    """Make `eos_token` the chat template's end of turn (and the pad token, if there is none)."""
    end = end_of_turn_id(tokenizer)
    if end is not None and end != tokenizer.eos_token_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(end)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_chat_tokenizer(source: str):
    """`AutoTokenizer.from_pretrained(source)` offline, with `fix_end_of_turn` applied."""
    from transformers import AutoTokenizer

    return fix_end_of_turn(AutoTokenizer.from_pretrained(source, local_files_only=True))


def align_generation(model, tokenizer) -> None:
    """generate() stops at the end of turn and pads with the pad token, whatever the config says."""
    config = getattr(model, "generation_config", None)
    if config is not None:
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
