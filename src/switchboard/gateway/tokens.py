"""Token estimates for when an upstream reports no usage (e.g. a stream cut short)."""

from __future__ import annotations

from typing import Any


def estimate_text_tokens(text: str) -> int:
    """About four characters a token for English text, never less than one for non-empty."""
    return (len(text) + 3) // 4


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += estimate_text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += estimate_text_tokens(part["text"])
        total += 4  # role and framing tokens per message, as OpenAI counts them
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
