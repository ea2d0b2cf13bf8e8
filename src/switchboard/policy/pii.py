"""Built-in PII detectors: email, phone, payment card (Luhn-checked), IBAN (mod-97-checked).

Each detector finds spans in a text; `redact` replaces them with a placeholder such as
``[EMAIL]``. Checksums keep false positives down: a 16-digit order number is not a card unless
its Luhn digit is right, and a string shaped like an IBAN is not one unless mod 97 gives 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# The phone and card patterns begin with the character a match begins with, and look behind
# after it: `re` then skips straight to the candidates (a pattern that begins with a look-behind
# is tried at every position). They match exactly what their readable forms match:
#   phone: (?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}
#          (?:[\s.-]?\d{2,4}){2,4}(?!\w)
#   card:  (?<!\d)(?:\d[ -]?){12,18}\d(?!\d)
# (tests/test_guardrails.py compares them on random texts).
# International (+CC ...) or grouped national numbers, 8-15 digits in all.
_PHONE = re.compile(
    r"(?:\+(?<![\w+]\+)\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}"
    r"|\((?<![\w+]\()\d{1,4}\)[\s.-]?\d{2,4}"
    r"|\d(?<![\w+]\d)\d{1,3})"
    r"(?:[\s.-]?\d{2,4}){2,4}(?!\w)"
)
_CARD = re.compile(r"\d(?<!\d\d)(?:[ -]?\d){12,18}(?!\d)")
# \b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b, beginning with its first letter.
_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
# Calendar dates (2026-11-23, 23.11.2026, 11/23/2026) have a phone number's shape: they are
# taken out before phone numbers are looked for.
_DATE = re.compile(
    r"(?:\d(?<!\d\d)\d{3}([-/.])(\d\d?)\1(\d\d?)|\d(?<!\d\d)\d?([-/.])\d\d?\4\d{4})(?!\d)"
)
_NON_DIGIT = re.compile(r"\D")


@dataclass(frozen=True, slots=True)
class Span:
    kind: str
    start: int
    end: int


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rotated = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rotated)
    return int(number) % 97 == 1


def _digits(text: str) -> str:
    return _NON_DIGIT.sub("", text)


def _is_date(match: re.Match[str]) -> bool:
    """A real month and day, and a year from 1900 to 2099 (0301-12-12 is a phone number)."""
    text = match[0]
    if match[1]:  # year first: month, then day
        year = int(text[:4])
        month_day_ok = 1 <= int(match[2]) <= 12 and 1 <= int(match[3]) <= 31
    else:  # day and month in either order, then the year
        year = int(text[-4:])
        first, second = (int(part) for part in re.split(r"[-/.]", text)[:2])
        month_day_ok = 1 <= min(first, second) <= 12 and max(first, second) <= 31
    return month_day_ok and 1900 <= year <= 2099


def _without_dates(text: str) -> str:
    """``text`` with every calendar date blanked out, the same length (spans stay valid)."""
    return _DATE.sub(lambda m: "_" * len(m[0]) if _is_date(m) else m[0], text)


def _find_email(text: str) -> Iterable[Span]:
    for m in _EMAIL.finditer(text):
        yield Span("email", m.start(), m.end())


def _find_card(text: str) -> Iterable[Span]:
    for m in _CARD.finditer(text):
        digits = _digits(m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            yield Span("credit_card", m.start(), m.end())


def _find_iban(text: str) -> Iterable[Span]:
    for m in _IBAN.finditer(text):
        if iban_ok(m.group()):
            yield Span("iban", m.start(), m.end())


def _find_phone(text: str) -> Iterable[Span]:
    dateless = _phone_text(text)
    return () if dateless is None else _phones(dateless)


def _phone_text(text: str) -> str | None:
    """``text`` without its dates, or None when what is left has too few digits for a phone
    number (a date's digits make none)."""
    dateless = _without_dates(text)
    return dateless if digit_count(dateless) >= MIN_DIGITS["phone"] else None


def _phones(dateless: str) -> Iterable[Span]:
    for m in _PHONE.finditer(dateless):
        if 8 <= len(_digits(m.group())) <= 15:
            yield Span("phone", m.start(), m.end())


# Order matters where shapes overlap: a card or IBAN is reported as such, not as a phone.
DETECTORS: dict[str, Callable[[str], Iterable[Span]]] = {
    "email": _find_email,
    "credit_card": _find_card,
    "iban": _find_iban,
    "phone": _find_phone,
}


# The kinds whose candidates a checksum confirms: (kind, its pattern, its detector).
_CHECKSUMMED = (("iban", _IBAN, _find_iban), ("credit_card", _CARD, _find_card))

# What a text must contain before a detector's regex is worth running (checked in C, so
# most texts, which hold no PII, cost almost nothing): an "@", or enough digits.
_ASCII_DIGITS = b"0123456789"
MIN_DIGITS = {"credit_card": 13, "phone": 8, "iban": 6}


def digit_count(text: str) -> int:
    """How many ASCII digits ``text`` holds. Counted on its UTF-8 bytes, where an ASCII digit
    is always one byte of its own: ``bytes.translate`` deletes with a table in C, about ten
    times faster than ``str.translate`` with a dict (which looks every character up)."""
    raw = text.encode("utf-8", "surrogatepass")
    return len(raw) - len(raw.translate(None, _ASCII_DIGITS))


def fewest_digits(kinds: Iterable[str]) -> int:
    """The fewest digits a text needs before any of ``kinds`` but email can be in it."""
    return min((MIN_DIGITS[k] for k in kinds if k in MIN_DIGITS), default=1 << 30)


def might_hold(text: str, kinds: Collection[str]) -> bool:
    """False only if `find` would find nothing of ``kinds`` in ``text``; it builds no spans
    and stops at the first finding. An "@" counts as a possible email. Most texts with numbers
    in them (dates, amounts, versions) hold nothing a detector reports, and are cleared here
    by a digit count and a regular-expression search or two, in C: a detector (a generator)
    only runs when its pattern finds a candidate."""
    if "email" in kinds and "@" in text:
        return True
    digits = digit_count(text)
    for kind, pattern, finder in _CHECKSUMMED:
        if (
            kind in kinds
            and digits >= MIN_DIGITS[kind]
            and pattern.search(text)
            and any(True for _ in finder(text))
        ):
            return True
    if "phone" in kinds and digits >= MIN_DIGITS["phone"]:
        dateless = _phone_text(text)
        if dateless is not None and _PHONE.search(dateless):
            return any(True for _ in _phones(dateless))
    return False


def find(text: str, kinds: Iterable[str] = DETECTORS) -> list[Span]:
    """Non-overlapping spans of the given kinds, in text order."""
    found: list[Span] = []
    digits = digit_count(text)
    for kind in kinds:
        if digits < MIN_DIGITS.get(kind, 0) or (kind == "email" and "@" not in text):
            continue
        for span in DETECTORS[kind](text):
            if not any(s.start < span.end and span.start < s.end for s in found):
                found.append(span)
    return sorted(found, key=lambda s: s.start)


def redact(text: str, spans: list[Span]) -> str:
    out, last = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        out.append(text[last : span.start])
        out.append(f"[{span.kind.upper()}]")
        last = span.end
    out.append(text[last:])
    return "".join(out)
