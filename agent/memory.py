"""Short-term memory: what the agent remembers of today before it sleeps.

The prompt is built from, in order:
1. the system prompt (what the agent is) and today's date;
2. *recall*: earlier turns of the same day from any conversation that match the new message
   (FTS5 over the messages table, best match first), within `memory_token_budget` tokens;
3. the current conversation, newest turns first, within what is left of the context window
   after the reply's `max_reply_tokens`.
A long message is stored whole; only its copy in the prompt is cut to `max_message_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from storage import Config, Store

Counter = Callable[[str], int]
SAFETY_TOKENS = 32  # chat-template tokens per message that count_tokens does not see


def truncate(text: str, max_tokens: int, count: Counter) -> str:
    """The longest prefix of `text` that fits in `max_tokens` with the cut mark, or `text` if it fits.

    A binary search over the length: it ends after about log2(len(text)) counts whatever the
    budget (a budget smaller than the mark itself gives the bare prefix that fits, maybe "").
    """
    if count(text) <= max_tokens:
        return text
    mark = " […]"
    if count(mark) > max_tokens:
        mark = ""
    low, high = 0, len(text)  # text[:low] + mark fits; text[:high] + mark does not
    while high - low > 1:
        middle = (low + high) // 2
        if count(text[:middle] + mark) <= max_tokens:
            low = middle
        else:
            high = middle
    return text[:low] + mark if low else ""


def system_message(config: Config, today: date) -> str:
    return f"{config.system_prompt}\nToday is {today:%A, %d %B %Y}."


def recall(store: Store, config: Config, query: str, skip_ids: set[int], count: Counter,
           every_day: bool = False) -> list[str]:
    """Lines of today's earlier turns relevant to `query`, within the memory budget.

    `every_day` searches every stored day instead (what `dreamer bench`'s `recall` arm measures:
    this retrieval as a long-term text memory).
    """
    lines, used = [], 0
    for row in store.search_day(None if every_day else store.today(), query, limit=40):
        if row["id"] in skip_ids or row["role"] == "system":
            continue
        speaker = "User" if row["role"] == "user" else "You"
        line = f"- {speaker}: {truncate(row['content'], config.max_message_tokens, count)}"
        cost = count(line)
        if used + cost > config.memory_token_budget:
            continue  # a shorter match further down may still fit
        lines.append(line)
        used += cost
    return lines


def build_prompt(store: Store, config: Config, conversation_id: int, count: Counter) -> list[dict]:
    """Chat messages for the model; the newest user turn must already be stored."""
    history = [
        m
        for m in store.messages(conversation_id)
        if m["status"] != "generating" and m["content"].strip() and m["role"] != "system"
    ]
    query = history[-1]["content"] if history else ""
    system = system_message(config, store.today())
    budget = config.n_ctx - config.max_reply_tokens - config.memory_token_budget - count(system) - SAFETY_TOKENS

    window: list[dict] = []
    for message in reversed(history):
        content = truncate(message["content"], config.max_message_tokens, count)
        cost = count(content) + SAFETY_TOKENS
        if cost > budget and window:
            break
        window.insert(0, {"id": message["id"], "role": message["role"], "content": content})
        budget -= cost

    remembered = recall(store, config, query, {m["id"] for m in window}, count)
    if remembered:
        system += "\n\nEarlier today you and the user said:\n" + "\n".join(remembered)
    return [{"role": "system", "content": system}] + [{"role": m["role"], "content": m["content"]} for m in window]
