"""The text every match of a case-insensitive regular expression must contain: a prefilter.

A guardrail's regular expression (``re:credit\\s+card``) is searched with ``re.IGNORECASE``,
which walks the text character by character: about 70 instructions a character, the dearest
part of clearing a plain prompt. Most such patterns hold a run of plain letters every match
contains (``cred``); when the lower-cased text (which the quick clear has already) does not
hold that run, the expression cannot match, and the search is skipped. This is what RE2 and
Hyperscan call a literal prefilter.

Only characters whose case-insensitive matches are exactly what ``str.lower`` maps to them go
into a run: ASCII letters other than ``i`` and ``s`` (``re`` also matches them as the dotless
i, U+0131, the long s, U+017F, and the dotted capital I, U+0130, which ``str.lower`` turns
into two characters), ASCII digits, punctuation and the space. A run is taken only from the
top level of the expression (inside a group, a repetition or an alternative, a literal is not
required), and none is given for an expression ``re`` cannot parse: such an expression is
always searched.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

# `re`'s own parser (`sre_parse` is its deprecated public name); private, so reached with care:
# without it, or with anything unexpected in what it returns, there is no prefilter, never a
# wrong one.
try:
    _parser: Any = importlib.import_module("re._parser")
    _LITERAL: Any = importlib.import_module("re._constants").LITERAL
except (ImportError, AttributeError):  # another Python's `re`
    _parser = _LITERAL = None

# What may go into a run: printable ASCII, without the letters whose case-insensitive matches
# str.lower does not give (see the module docstring).
_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - set("iIsS")


def required_literal(pattern: str) -> str | None:
    """The longest run of characters (lower-cased) that every match of ``pattern``, searched
    case-insensitively, contains; None when there is none to be sure of."""
    if _parser is None:
        return None
    try:
        parsed = _parser.parse(pattern, re.IGNORECASE)  # as the guardrails compile it
        items = list(parsed.data)
    except Exception:  # a pattern `re` rejects, or a parser that changed
        return None
    best = run = ""
    for item in items:
        op, value = item if isinstance(item, tuple) and len(item) == 2 else (None, None)
        char = chr(value) if op is _LITERAL and isinstance(value, int) else ""
        if char and char in _SAFE:
            run += char.lower()
            if len(run) > len(best):
                best = run
        else:
            run = ""
    return best or None
