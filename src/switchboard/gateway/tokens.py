"""Token estimates for when an upstream reports no usage (e.g. a stream cut short)."""

from __future__ import annotations

from typing import Any


def estimate_text_tokens(text: str) -> int:
    """About four characters a token for English text, never less than one for non-empty."""
    return (len(text) + 3) // 4


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """`estimate_text_tokens` of every text in ``messages``, and 4 a message. It runs on every
    request with a token limit or a budget: the text estimate of a plain message is written
    out here, not called, to spare a call per message."""
    total = 0
    for message in messages:
        total += 4  # role and framing tokens per message, as OpenAI counts them
        content = message.get("content")
        if isinstance(content, str):
            total += (len(content) + 3) // 4
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += estimate_text_tokens(part["text"])
    return total


def estimate_input_tokens(value: Any) -> int:
    if isinstance(value, str):
        return estimate_text_tokens(value)
    if isinstance(value, list):
        return sum(
            estimate_text_tokens(v) if isinstance(v, str) else len(v) if isinstance(v, list) else 1
            for v in value
        )
    return 0
