"""The regular expressions' literal prefilter (`policy.literals`): it may only ever skip a
search that would have found nothing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.policy import literals
from switchboard.policy.literals import required_literal


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [
        (r"credit\s+card", "cred"),  # not "credit": re matches an i as U+0131 and U+0130 too
        ("password", "word"),  # and an s as the long s, U+017F
        (r"\bfoo bar\b", "foo bar"),
        ("Bomb", "bomb"),
        (r"x{2}card", "card"),  # a repeated literal is not a required run
        ("(card)", None),  # nor one inside a group
        ("card|bomb", None),  # nor one of several alternatives
        ("card|cart", "car"),  # unless they share it: re's parser takes it out in front
        ("[ck]ard", "ard"),
        ("caf\u00e9", "caf"),  # only ASCII goes into a run
        ("(?x) c a r d", "card"),  # re's own parser reads the pattern
        ("[", None),  # a pattern re rejects: always searched, never skipped
        ("", None),
    ],
)
def test_the_longest_safe_top_level_run(pattern: str, literal: str | None) -> None:
    assert required_literal(pattern) == literal


_PIECES = [
    "a",
    "b",
    "c",
    "i",
    "s",
    "k",
    "K",
    "1",
    " ",
    "-",
    r"\s",
    r"\d",
    ".",
    "x?",
    "(ab|c)",
    "[ab]",
]
# Texts with the characters whose case-insensitive matches str.lower does not give alike.
_TEXT = st.text(alphabet="abcisk ABCISK1-\u0131\u0130\u017f\u212a\u00e9", max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6), _TEXT)
def test_a_text_without_the_literal_never_matches(pieces: list[str], text: str) -> None:
    pattern = "".join(pieces)
    literal = required_literal(pattern)
    if literal is not None and literal not in text.lower():
        assert re.search(pattern, text, re.IGNORECASE) is None


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("credit card", "CRED\u0130T CARD"),
        ("credit card", "cred\u0131t card"),
        ("secret", "\u017fecret"),
        ("kind", "\u212aind"),  # the Kelvin sign, which str.lower makes a k
    ],
)
def test_the_characters_re_matches_beyond_case(pattern: str, text: str) -> None:
    assert re.search(pattern, text, re.IGNORECASE)
    literal = required_literal(pattern)
    assert literal is not None
    assert literal in text.lower()


def test_without_re_s_parser_every_expression_is_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(literals, "_parser", None)
    assert required_literal(r"credit\s+card") is None
