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

import logging

SENTINEL = "dreamer sentinel reply"
log = logging.getLogger(__name__)


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens: its named ones and every added token marked special.

    Both, because loaders differ: transformers 5.17 leaves `<|im_end|>` out of
    `all_special_ids` for the embedded GGUF, though it marks the added token special.
    """
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant's message, or None.

    ChatML (SmolLM2): `<|im_end|>`; Llama 3: `<|eot_id|>`; Llama 2 (`content + ' ' + eos`):
    `</s>`. None when the template closes a turn with plain text only, or cannot render the
    probe conversation.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as err:  # noqa: BLE001 - a template may refuse this chat (system turn required, ...)
        log.warning("the chat template cannot render a probe conversation (%s): keeping eos %r", err,
                    tokenizer.eos_token)
        return None
    if SENTINEL not in text:
        return None
    after = text[text.rindex(SENTINEL) + len(SENTINEL):]
    specials = special_ids(tokenizer)
    # The first special token after the message, past any whitespace ("content\n<|im_end|>"),
    # and nothing but whitespace before it: then it is what closes the turn.
    for token in tokenizer(after, add_special_tokens=False)["input_ids"] if after else []:
        if token in specials:
            return token
        if tokenizer.decode([token]).strip():
            break
    log.warning("the chat template closes an assistant turn with no special token: keeping eos %r",
                tokenizer.eos_token)
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
        # Keep the config's other stops (Llama 3 Instruct lists three), the end of turn first.
        others = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        stops = list(dict.fromkeys([tokenizer.eos_token_id] + [i for i in others if i is not None]))
        config.eos_token_id = stops[0] if len(stops) == 1 else stops
        config.pad_token_id = tokenizer.pad_token_id
