"""Which intent ("route") a request is about, so a tenant can allow only some of them.

A small, explainable, rule-based classifier: fast enough for the request path (one regular
expression scan and a few set intersections), no model call, no training.

    text ──▶ keyword hits per route (whole words/phrases; "price*" matches any ending)
         ──▶ best overlap with the route's example requests (content words, crude stemming)
         ──▶ score = hits + 2 * overlap ──▶ best route, if its score reaches the threshold

The shipped routes live in ``routes.yaml``; a tenant adds or replaces routes with
``route_definitions``. The text classified is the last user message; when that alone is
inconclusive (a follow-up such as "and the second one?"), the last three user messages together.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

EXAMPLE_WEIGHT = 2.0
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "to",
        "of",
        "in",
        "on",
        "for",
        "and",
        "or",
        "but",
        "with",
        "my",
        "me",
        "i",
        "you",
        "your",
        "it",
        "this",
        "that",
        "these",
        "those",
        "what",
        "which",
        "who",
        "how",
        "do",
        "does",
        "did",
        "can",
        "could",
        "should",
        "would",
        "will",
        "please",
        "there",
        "about",
        "from",
        "at",
        "by",
        "as",
        "if",
        "so",
        "than",
        "then",
        "them",
        "they",
        "we",
        "our",
        "us",
        "he",
        "she",
        "his",
        "her",
        "its",
        "have",
        "has",
        "had",
        "not",
        "no",
        "yes",
        "any",
        "some",
        "all",
        "more",
        "most",
        "very",
        "just",
        "also",
        "into",
        "out",
        "up",
        "down",
        "der",
        "die",
        "das",
        "und",
        "oder",
        "ist",
        "ein",
        "eine",
        "ich",
        "du",
        "sie",
        "wir",
        "mit",
        "für",
        "von",
        "zu",
        "auf",
    ]
)
_SUFFIXES = ("ings", "ing", "ies", "es", "ed", "s")


@dataclass(frozen=True, slots=True)
class IntentRoute:
    name: str
    description: str
    keywords: tuple[str, ...]
    examples: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Classification:
    route: str | None  # None: no route reached the threshold
    score: float
    scores: Mapping[str, float]


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> frozenset[str]:
    return frozenset(_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP)


def _keyword_source(keyword: str) -> str:
    prefix = keyword.endswith("*")
    words = keyword.rstrip("*").strip().split()
    body = r"\s+".join(re.escape(w) for w in words)
    return rf"(?<!\w){body}" + (r"\w*" if prefix else r"(?!\w)")


class IntentClassifier:
    def __init__(self, routes: Iterable[IntentRoute], threshold: float = 1.0) -> None:
        self.routes = {r.name: r for r in routes}
        self.threshold = threshold
        names, sources = [], []
        for route in self.routes.values():
            for keyword in route.keywords:
                names.append(route.name)
                sources.append(_keyword_source(keyword))
        self._names = names
        self._pattern = (
            re.compile("|".join(f"(?P<k{i}>{s})" for i, s in enumerate(sources)), re.IGNORECASE)
            if sources
            else None
        )
        self._examples = {
            r.name: [content_words(e) for e in r.examples if content_words(e)]
            for r in self.routes.values()
        }

    def classify(self, text: str) -> Classification:
        scores = dict.fromkeys(self.routes, 0.0)
        if self._pattern is not None:
            seen: set[int] = set()
            for match in self._pattern.finditer(text):
                index = int((match.lastgroup or "k0")[1:])
                if index not in seen:  # each keyword counts once
                    seen.add(index)
                    scores[self._names[index]] += 1.0
        words = content_words(text)
        if words:
            for name, examples in self._examples.items():
                best = max((_overlap(words, e) for e in examples), default=0.0)
                scores[name] += EXAMPLE_WEIGHT * best
        best_name = max(scores, key=lambda n: scores[n], default=None)
        if best_name is None or scores[best_name] < self.threshold:
            return Classification(None, scores.get(best_name or "", 0.0), scores)
        return Classification(best_name, scores[best_name], scores)


def _overlap(words: frozenset[str], example: frozenset[str]) -> float:
    """Cosine similarity of two sets of words."""
    shared = len(words & example)
    return shared / (len(words) * len(example)) ** 0.5 if shared else 0.0


@functools.cache
def shipped_routes() -> dict[str, IntentRoute]:
    raw = yaml.safe_load(resources.files("switchboard.policy").joinpath("routes.yaml").read_text())
    return {name: route_from(name, spec) for name, spec in raw.items()}


def route_from(name: str, spec: Mapping[str, Any]) -> IntentRoute:
    return IntentRoute(
        name=name,
        description=str(spec.get("description") or ""),
        keywords=tuple(str(k) for k in spec.get("keywords") or ()),
        examples=tuple(str(e) for e in spec.get("examples") or ()),
    )
