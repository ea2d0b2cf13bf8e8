"""PII in answers: the tenant's ``pii_actions`` applied to what the model wrote, when the tenant
sets ``pii_on_responses``. Whole answers are checked at once; streams are checked as they pass,
without letting a match out in pieces:

    delta text ──▶ buffer ──▶ a block kind found? ──▶ withhold the rest, finish "content_filter"
                        └──▶ release all but the last ``hold`` characters (a match that spans
                             the cut is held back whole), redacting redact kinds

``block`` replaces the answer (or the rest of the stream) with a notice and sets
``finish_reason: "content_filter"``; ``redact`` swaps each match for a placeholder such as
``[EMAIL]``; ``log`` only records the finding. Only message text is checked (not tool-call
arguments). The upstream's tokens are still metered: it wrote them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from switchboard.policy import pii
from switchboard.policy.guardrails import PiiAction

log = logging.getLogger("switchboard.guardrails")

JSON = dict[str, Any]
HOLD = 48  # characters held back in a stream: longer than any match the detectors make


def withheld(kind: str) -> str:
    return f"[The rest of this answer was withheld: it contained personal data ({kind}).]"


@dataclass(slots=True)
class TextScreen:
    """One stream of text (one choice), screened as it arrives."""

    actions: Mapping[str, PiiAction]
    hold: int = HOLD
    findings: list[str] = field(default_factory=list)
    blocked: str | None = None  # the kind that blocked the rest
    _buffer: str = ""

    def feed(self, text: str) -> str:
        if self.blocked is not None:
            return ""
        self._buffer += text
        return self._release(len(self._buffer) - self.hold)

    def flush(self) -> str:
        if self.blocked is not None:
            return ""
        return self._release(len(self._buffer))

    def _release(self, cut: int) -> str:
        if cut <= 0:
            return ""
        spans = pii.find(self._buffer, self.actions)
        for span in spans:
            if self.actions[span.kind] == "block":
                self.blocked = span.kind
                self.findings.append(f"pii:{span.kind}:block")
                self._buffer = ""
                return withheld(span.kind)
            if span.start < cut < span.end:
                cut = span.start  # never split a match: hold it back whole
        released = [s for s in spans if s.end <= cut]
        self.findings += [f"pii:{s.kind}:{self.actions[s.kind]}" for s in released]
        redact = [s for s in released if self.actions[s.kind] == "redact"]
        out = pii.redact(self._buffer[:cut], redact)
        self._buffer = self._buffer[cut:]
        return out


def screen_completion(actions: Mapping[str, PiiAction], result: JSON) -> list[str]:
    """Screen every choice of a whole answer in place; return the findings."""
    findings: list[str] = []
    for choice in result.get("choices") or []:
        message = choice.get("message") or {}
        content = message.get("content")
        if not isinstance(content, str) or not content:
            continue
        screen = TextScreen(actions)
        message["content"] = screen.feed(content) + screen.flush()
        findings += screen.findings
        if screen.blocked is not None:
            choice["finish_reason"] = "content_filter"
    return findings


class StreamScreen:
    """Screens the ``delta.content`` of streamed chunks, per choice index."""

    def __init__(self, actions: Mapping[str, PiiAction]) -> None:
        self._actions = actions
        self._screens: dict[int, TextScreen] = {}

    def _screen(self, index: int) -> TextScreen:
        screen = self._screens.get(index)
        if screen is None:
            screen = self._screens[index] = TextScreen(self._actions)
        return screen

    def batch(self, chunks: list[JSON]) -> list[JSON]:
        for chunk in chunks:
            for choice in chunk.get("choices") or []:
                screen = self._screen(int(choice.get("index") or 0))
                delta = choice.get("delta")
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    delta["content"] = screen.feed(delta["content"])
                if choice.get("finish_reason") is not None:
                    rest = screen.flush()
                    if rest:
                        delta = choice.setdefault("delta", {})
                        delta["content"] = (delta.get("content") or "") + rest
                    if screen.blocked is not None:
                        choice["finish_reason"] = "content_filter"
        return chunks

    def tail(self) -> list[JSON]:
        """What is still held back when a stream ends without a finish_reason (rare)."""
        out = []
        for index, screen in self._screens.items():
            rest = screen.flush()
            if rest:
                out.append({"index": index, "delta": {"content": rest}, "finish_reason": None})
        return out

    @property
    def findings(self) -> list[str]:
        return [f for s in self._screens.values() for f in s.findings]
