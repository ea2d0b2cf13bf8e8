"""Guardrails: PII detectors with checksums, sensitive patterns, refusal rules, blocked tools,
a guardrail registered as a plugin, and PII redaction that survives chunked streams."""

from __future__ import annotations

import gc
import random
import re
from collections.abc import Iterator
from typing import Any

import pytest

from switchboard.policy import (
    GuardrailPolicy,
    RefusalRule,
    guard_prompt,
    guardrails,
    pii,
)
from switchboard.policy.response_guard import StreamScreen, TextScreen, screen_completion

VALID_CARD = "4111 1111 1111 1111"  # the Visa test number: Luhn-valid
INVALID_CARD = "4111 1111 1111 1112"
VALID_IBANS = [
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "FR1420041010050500013M02606",
]
INVALID_IBAN = "DE89 3704 0044 0532 0130 01"


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def kinds(text: str) -> list[str]:
    return [s.kind for s in pii.find(text)]


def test_luhn_and_iban_checksums() -> None:
    assert pii.luhn_ok("4111111111111111")
    assert not pii.luhn_ok("4111111111111112")
    for iban in VALID_IBANS:
        assert pii.iban_ok(iban), iban
    assert not pii.iban_ok(INVALID_IBAN)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("mail me at jane.doe+ai@example.co.uk please", ["email"]),
        (f"card {VALID_CARD} exp 12/29", ["credit_card"]),
        (f"card {INVALID_CARD}", []),
        ("order 1234567812345678 shipped", []),  # 16 digits, wrong Luhn digit
        (f"IBAN {VALID_IBANS[0]}", ["iban"]),
        (f"IBAN {INVALID_IBAN}", []),
        ("call +49 30 1234 5678 now", ["phone"]),
        ("call (030) 1234-5678", ["phone"]),
        ("the year 2026 and 42 apples", []),
        ("a@b.io and 4111-1111-1111-1111", ["email", "credit_card"]),
    ],
)
def test_detectors(text: str, found: list[str]) -> None:
    assert kinds(text) == found


def test_detector_patterns_match_what_their_readable_forms_match() -> None:
    """pii.py writes the phone and card patterns so that `re` can skip to their first
    character; the spans must be those of the plain forms its comment gives."""
    readable = {
        "phone": re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}"
            r"(?:[\s.-]?\d{2,4}){2,4}(?!\w)"
        ),
        "card": re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"),
        "iban": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
    }
    fast = {"phone": pii._PHONE, "card": pii._CARD, "iban": pii._IBAN}
    rng = random.Random(11)
    alphabets = {
        "phone": "0123456789" * 3 + " -.+()aZ_\n\t\u00e9",
        "card": "0123456789" * 3 + " -.+()aZ_\n\t\u00e9",
        "iban": "0123456789DEGBXa \u00e9_-",
    }
    for _ in range(20_000):
        for kind, pattern in readable.items():
            text = "".join(rng.choice(alphabets[kind]) for _ in range(rng.randint(0, 48)))
            want = [m.span() for m in pattern.finditer(text)]
            assert [m.span() for m in fast[kind].finditer(text)] == want, (kind, text)


def test_might_hold_is_false_only_when_find_finds_nothing() -> None:
    rng = random.Random(5)
    pieces = [
        "call +49 30 1234 5678", "2026-11-23", "23.11.2026", "1250000 EUR", "order 12345678",
        f"card {VALID_CARD}", f"card {INVALID_CARD}", f"IBAN {VALID_IBANS[0]}", "a@b.io",
        "the year 2026", "hello", "030 1234", "5678", "+44", "(030)",
    ]  # fmt: skip
    kind_sets = [set(pii.DETECTORS), {"phone"}, {"credit_card", "iban"}, {"email"}, set()]
    for _ in range(3_000):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        kinds = rng.choice(kind_sets)
        found = pii.find(text, kinds)
        if "@" in text and "email" in kinds:
            assert pii.might_hold(text, kinds)
        else:
            assert pii.might_hold(text, kinds) == bool(found), (text, kinds)


@pytest.mark.parametrize(
    ("text", "phones"),
    [
        ("meeting on 2026-11-23 at 14:30", []),
        ("born 23.11.2026, due 11/30/2026", []),
        ("on 2026-11-23 call 030 1234 5678", ["030 1234 5678"]),
        ("call +49 30 1234 5678", ["+49 30 1234 5678"]),
        ("0301-23-45", ["0301-23-45"]),  # no month 23: not a date
        ("0301-12-12", ["0301-12-12"]),  # no year 301 either
        ("12.12.0301", ["12.12.0301"]),
        ("2026-13-01", ["2026-13-01"]),
        ("45.11.2026", ["45.11.2026"]),
    ],
)
def test_calendar_dates_are_not_phone_numbers(text: str, phones: list[str]) -> None:
    found = [text[s.start : s.end] for s in pii.find(text) if s.kind == "phone"]
    assert found == phones


def test_digit_count_counts_ascii_digits_in_any_text() -> None:
    assert pii.digit_count("") == 0
    assert pii.digit_count("call +49 30 1234 5678") == 12
    # Non-ASCII letters and digits of other scripts are not ASCII digits; a lone surrogate
    # (which JSON can carry) does not break the count.
    assert pii.digit_count("Zürich ٣٤٥ 12 \u2013 日本 7\ud800") == 3
    text = "".join(random.Random(7).choice("a1é٣9 \u00b2") for _ in range(500))
    assert pii.digit_count(text) == sum(c in "0123456789" for c in text)


def test_redact_replaces_each_span() -> None:
    text = f"me: jane@example.com, card {VALID_CARD}."
    assert pii.redact(text, pii.find(text)) == "me: [EMAIL], card [CREDIT_CARD]."


def test_nothing_configured_changes_nothing() -> None:
    body = chat("my password is hunter2")
    verdict = guard_prompt(GuardrailPolicy(), body)
    assert verdict.refusal is None
    assert verdict.body == body
    assert verdict.findings == ()


def test_sensitive_patterns_plain_and_regex_refuse_with_the_reason() -> None:
    policy = GuardrailPolicy(
        sensitive_prompt_patterns=("password", r"re:credit\s+card"),
        sensitive_reason="Sensitive data is not allowed here.",
    )
    assert guard_prompt(policy, chat("What's my PASSWORD?")).refusal == (
        "Sensitive data is not allowed here."
    )
    assert guard_prompt(policy, chat("my credit   card number")).refusal is not None
    assert guard_prompt(policy, chat("pass the word")).refusal is None


def test_refusal_rules_contains_and_regex() -> None:
    policy = GuardrailPolicy(
        refusal_rules=(
            RefusalRule("contains", "hack", "Security violation"),
            RefusalRule("regex", r"\bbomb\b", "Violence"),
        )
    )
    assert guard_prompt(policy, chat("how to HACK a server")).refusal == "Security violation"
    assert guard_prompt(policy, chat("a bomb threat")).refusal == "Violence"
    assert guard_prompt(policy, chat("bombastic prose")).refusal is None


def test_only_what_people_and_tools_wrote_is_checked() -> None:
    policy = GuardrailPolicy(refusal_rules=(RefusalRule("contains", "hack", "Security"),))
    body: dict[str, Any] = {
        "model": "m",
        "messages": [
            {"role": "assistant", "content": "I will not help you hack."},
            {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
        ],
    }
    assert guard_prompt(policy, body).refusal is None
    body["messages"].append({"role": "tool", "tool_call_id": "c1", "content": "hack result"})
    assert guard_prompt(policy, body).refusal == "Security"


def test_pii_actions_block_redact_and_log() -> None:
    text = f"I am jane@example.com, card {VALID_CARD}, phone +44 20 7946 0958"
    redacting = GuardrailPolicy(
        pii_actions={"email": "redact", "credit_card": "redact", "phone": "log"}
    )
    body = chat(text)
    verdict = guard_prompt(redacting, body)
    assert verdict.refusal is None
    assert verdict.body["messages"][0]["content"] == (
        "I am [EMAIL], card [CREDIT_CARD], phone +44 20 7946 0958"
    )
    assert set(verdict.findings) == {"pii:email:redact", "pii:credit_card:redact", "pii:phone:log"}
    assert body["messages"][0]["content"] == text  # the caller's request is left alone
    blocking = GuardrailPolicy(pii_actions={"credit_card": "block"})
    assert guard_prompt(blocking, chat(text)).refusal == (
        "The request contains personal data (credit_card)."
    )


def test_pii_redaction_reaches_content_parts() -> None:
    body: dict[str, Any] = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "reach me at a@b.org"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
    }
    verdict = guard_prompt(GuardrailPolicy(pii_actions={"email": "redact"}), body)
    parts = verdict.body["messages"][0]["content"]
    assert parts[0]["text"] == "reach me at [EMAIL]"
    assert parts[1] == body["messages"][0]["content"][1]


def test_unknown_pii_kind_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="passport"):
        guard_prompt(GuardrailPolicy(pii_actions={"passport": "block"}), chat("x"))


def _tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def test_blocked_tools_are_removed_or_refused() -> None:
    body = chat("go", tools=[_tool("mcp_finance"), _tool("search")], tool_choice="auto")
    removed = guard_prompt(GuardrailPolicy(blocked_tools=("mcp_finance",)), body)
    assert [t["function"]["name"] for t in removed.body["tools"]] == ["search"]
    assert removed.findings == ("blocked_tool:mcp_finance",)
    only_blocked = chat("go", tools=[_tool("mcp_finance")], tool_choice="auto")
    stripped = guard_prompt(GuardrailPolicy(blocked_tools=("mcp_finance",)), only_blocked)
    assert "tools" not in stripped.body
    assert "tool_choice" not in stripped.body
    refusing = GuardrailPolicy(blocked_tools=("mcp_finance",), blocked_tools_action="refuse")
    assert "mcp_finance" in (guard_prompt(refusing, body).refusal or "")


def test_the_first_refusal_wins_and_stops_the_chain() -> None:
    policy = GuardrailPolicy(
        sensitive_prompt_patterns=("secret",),
        sensitive_reason="sensitive",
        refusal_rules=(RefusalRule("contains", "secret", "rule"),),
    )
    verdict = guard_prompt(policy, chat("a secret"))
    assert verdict.refusal == "sensitive"
    assert all(not f.startswith("refusal:") for f in verdict.findings)


@pytest.fixture
def shouting_guardrail() -> Iterator[None]:
    """An extension registers itself exactly like the built-ins do."""

    class NoShouting:
        name = "no_shouting"

        def inspect(self, request: guardrails.GuardedRequest) -> None:
            for _container, _key, text in request.texts():
                if text.isupper():
                    request.refuse("Please do not shout.")

    guardrails.register("no_shouting")(lambda policy: NoShouting())
    try:
        yield
    finally:
        guardrails.unregister("no_shouting")


@pytest.mark.usefixtures("shouting_guardrail")
def test_a_registered_plugin_runs_with_the_built_ins() -> None:
    assert "no_shouting" in guardrails.registered()
    assert guard_prompt(GuardrailPolicy(), chat("HELLO THERE")).refusal == "Please do not shout."
    assert guard_prompt(GuardrailPolicy(), chat("hello there")).refusal is None


@pytest.mark.parametrize("size", [1, 3, 7, 50])
def test_stream_redaction_catches_pii_split_across_chunks(size: int) -> None:
    text = (
        "Sure. Contact jane.doe@example.com or pay with 4111 1111 1111 1111; "
        "IBAN DE89 3704 0044 0532 0130 00. Thanks!"
    )
    redactor = TextScreen({"email": "redact", "credit_card": "redact", "iban": "redact"})
    out = "".join(redactor.feed(text[i : i + size]) for i in range(0, len(text), size))
    out += redactor.flush()
    assert out == "Sure. Contact [EMAIL] or pay with [CREDIT_CARD]; IBAN [IBAN]. Thanks!"


def test_stream_redaction_holds_back_no_more_than_its_window() -> None:
    redactor = TextScreen({"email": "redact"}, hold=10)
    emitted = redactor.feed("x" * 25)
    assert emitted == "x" * 15
    assert redactor.flush() == "x" * 10


def test_a_block_kind_withholds_the_rest_and_never_leaks_a_piece() -> None:
    text = "Your card is 4111 1111 1111 1111, keep it safe. More text follows here."
    for size in (1, 5, 13, 100):
        screen = TextScreen({"credit_card": "block", "email": "redact"})
        out = "".join(screen.feed(text[i : i + size]) for i in range(0, len(text), size))
        out += screen.flush()
        assert "4111" not in out
        assert "1111" not in out
        assert out.endswith("(credit_card).]")
        assert screen.blocked == "credit_card"
        assert screen.findings == ["pii:credit_card:block"]


def test_logged_kinds_pass_and_are_recorded() -> None:
    screen = TextScreen({"email": "log"})
    assert screen.feed("mail me at a@example.com") + screen.flush() == "mail me at a@example.com"
    assert screen.findings == ["pii:email:log"]


def test_whole_answers_are_screened_per_choice() -> None:
    answer: dict[str, Any] = {
        "choices": [
            {"index": 0, "message": {"content": "a@example.com"}, "finish_reason": "stop"},
            {"index": 1, "message": {"content": "IBAN DE89 3704 0044 0532 0130 00"}},
            {"index": 2, "message": {"content": None, "tool_calls": []}},
        ]
    }
    findings = screen_completion({"email": "redact", "iban": "block"}, answer)
    assert answer["choices"][0]["message"]["content"] == "[EMAIL]"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert "DE89" not in answer["choices"][1]["message"]["content"]
    assert answer["choices"][1]["finish_reason"] == "content_filter"
    assert findings == ["pii:email:redact", "pii:iban:block"]


def test_streamed_chunks_are_screened_per_choice_and_flushed_at_the_finish() -> None:
    screen = StreamScreen({"email": "redact"})
    text = "write to jane.doe@example.com today"

    def chunk(index: int, content: str | None, finish: str | None = None) -> dict[str, Any]:
        delta = {} if content is None else {"content": content}
        return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    out: dict[int, str] = {0: "", 1: ""}
    for i in range(0, len(text), 4):
        for index in (0, 1):
            for c in screen.batch([chunk(index, text[i : i + 4])]):
                out[index] += c["choices"][0]["delta"].get("content", "")
    for index in (0, 1):
        [done] = screen.batch([chunk(index, None, "stop")])
        out[index] += done["choices"][0]["delta"].get("content", "")
        assert done["choices"][0]["finish_reason"] == "stop"
    assert out == {0: "write to [EMAIL] today", 1: "write to [EMAIL] today"}
    assert screen.findings == ["pii:email:redact", "pii:email:redact"]


# --- clearing a request in one call ---------------------------------------------------------

_FRAGMENTS = [
    "hello there",
    "What's my PASSWORD?",
    "my credit   card",
    "a CRED\u0130T CARD",  # the dotted capital I lower-cases to two characters; re reads an i
    "a cred\u0131t card and a \u017fecret",  # re reads the dotless i as i, the long s as s
    "the card of credit",
    "a secret card",
    "how to hack a server",
    "write to jane@example.com",
    f"card {VALID_CARD}",
    f"card {INVALID_CARD}",
    f"IBAN {VALID_IBANS[1]}",
    "call +44 20 7946 0958",
    "order 12345678",
    "the year 2026",
    "BOMB",
    "meeting on 2026-11-23 at 14:30",  # numbers, but nothing a detector reports
    "a budget of 1250000 EUR for Q3",
    "on 23.11.2026 call 030 1234 5678",
]
_POLICIES = [
    GuardrailPolicy(
        sensitive_prompt_patterns=("password", r"re:credit\s+card"),
        refusal_rules=(RefusalRule("contains", "hack", "Security violation"),),
        pii_actions={"email": "redact", "credit_card": "block", "iban": "block", "phone": "log"},
        blocked_tools=("mcp_finance",),
    ),
    GuardrailPolicy(refusal_rules=(RefusalRule("regex", r"\bbomb\b", "Violence"),)),
    GuardrailPolicy(
        sensitive_prompt_patterns=(r"re:secret\s*card", r"re:cred[a-z]t card", "re:\u017fecret"),
    ),
    GuardrailPolicy(pii_actions={"email": "log"}),
    GuardrailPolicy(pii_actions={"phone": "redact", "iban": "log"}, blocked_tools=("x",)),
    GuardrailPolicy(blocked_tools=("mcp_finance",), blocked_tools_action="refuse"),
]


def _random_body(rng: random.Random) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 3)):
        role = rng.choice(["user", "user", "system", "assistant", "tool"])
        roll = rng.random()
        if roll < 0.75:
            content: Any = " ".join(rng.sample(_FRAGMENTS, rng.randint(1, 2)))
        elif roll < 0.9:
            content = [{"type": "text", "text": rng.choice(_FRAGMENTS)}]
        else:
            content = None
        messages.append({"role": role, "content": content})
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if rng.random() < 0.2:
        body["tools"] = [
            {"type": "function", "function": {"name": rng.choice(["mcp_finance", "search"])}}
        ]
    return body


@pytest.mark.parametrize("seed", range(4))
def test_the_quick_clear_decides_as_the_chain_does(seed: int) -> None:
    rng = random.Random(seed)
    cleared = 0
    for _ in range(400):
        policy = rng.choice(_POLICIES)
        body = _random_body(rng)
        chain = guardrails.inspect_prompt(policy, body)
        quick = guardrails._quick(policy, guardrails._version[0])
        assert quick is not None
        if quick.clears(body):
            cleared += 1
            assert chain.findings == []  # it clears only what the chain finds nothing in
            assert chain.refusal is None
            assert chain.body == body
        assert guardrails.screen_prompt(policy, body) == (chain.body, chain.refusal)
    assert 40 < cleared < 360  # both ways were taken


def _looked_at(policy: GuardrailPolicy, texts: list[str]) -> list[str]:
    """Screen a request of ``texts`` (new string objects, as a fresh request parses them);
    which of them the guardrails looked at."""
    looked_at: list[str] = []
    real_lower = str.lower

    class Spy(str):
        def lower(self) -> str:
            looked_at.append(str(self))
            return real_lower(self)

    body = {"model": "m", "messages": [{"role": "user", "content": Spy(t)} for t in texts]}
    assert guardrails.screen_prompt(policy, body)[1] is None
    return looked_at


def test_a_conversation_s_cleared_turns_are_not_looked_at_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(guardrails, "_cleared", guardrails.ClearedTexts(limit_chars=10_000))
    policy = GuardrailPolicy(sensitive_prompt_patterns=("password",), pii_actions={"email": "log"})
    history = [f"turn {i}: tell me about the sea" for i in range(5)]
    assert _looked_at(policy, history) == history  # the first time: all but the last kept
    assert sorted(guardrails._cleared) == history[:-1]
    assert _looked_at(policy, [*history, "and the ocean?"]) == [history[-1], "and the ocean?"]
    # From then on a turn looks at its last two messages: the newest, and the one before,
    # the newest of the turn before.
    turns = [*history, "and the ocean?", "and rivers?"]
    assert _looked_at(policy, turns) == ["and the ocean?", "and rivers?"]
    assert _looked_at(policy, [*turns, "and lakes?"]) == ["and rivers?", "and lakes?"]


def test_a_question_asked_once_is_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guardrails, "_cleared", guardrails.ClearedTexts(limit_chars=10_000))
    policy = GuardrailPolicy(sensitive_prompt_patterns=("password",))
    system = {"role": "system", "content": "You are a helpful assistant."}
    for i in range(20):
        body = {"model": "m", "messages": [system, {"role": "user", "content": f"question {i}"}]}
        assert guardrails.screen_prompt(policy, body)[1] is None
    assert list(guardrails._cleared) == ["You are a helpful assistant."]  # sent again each time


def test_a_text_cleared_under_one_policy_is_still_checked_under_another() -> None:
    text = "my password is hunter2"
    lenient = GuardrailPolicy(sensitive_prompt_patterns=("credit card",))
    strict = GuardrailPolicy(sensitive_prompt_patterns=("password",))
    conversation = {
        "model": "m",
        "messages": [{"role": "user", "content": text}, {"role": "user", "content": "and?"}],
    }
    for _ in range(2):  # cleared (and kept) under the lenient policy
        assert guardrails.screen_prompt(lenient, conversation)[1] is None
    assert guardrails._cleared.get(text) is not None
    assert guardrails.screen_prompt(strict, conversation)[1] == (
        "The request contains sensitive content."
    )


def test_the_cleared_texts_are_bounded() -> None:
    cleared = guardrails.ClearedTexts(limit_chars=100)
    for i in range(30):
        cleared.keep(f"{i:010d}", 1)  # ten characters each
        assert len(cleared) <= 10
        assert sum(map(len, cleared)) <= 100
    assert cleared.get(f"{29:010d}") == 1
    assert f"{0:010d}" not in cleared


def test_the_cleared_texts_give_the_collector_nothing_to_walk() -> None:
    """Remembering a text must not add an object the cyclic collector tracks (a set of
    (quick clear, text) tuples did: every full collection walked every one of them)."""
    policy = GuardrailPolicy(sensitive_prompt_patterns=("password",))
    texts = [f"a text nobody wrote before, number {i}" for i in range(200)]

    def conversation(text: str) -> dict[str, Any]:
        return {"model": "m", "messages": [{"role": "user", "content": t} for t in (text, "so?")]}

    guardrails.screen_prompt(policy, conversation(texts[0]))  # the quick clear, built
    gc.collect()
    before = len(gc.get_objects())
    for text in texts[1:]:
        assert guardrails.screen_prompt(policy, conversation(text))[1] is None
    assert all(guardrails._cleared.get(text) is not None for text in texts[1:])
    gc.collect()
    assert len(gc.get_objects()) - before < 20


@pytest.mark.usefixtures("shouting_guardrail")
def test_an_extension_in_the_chain_turns_the_quick_clear_off() -> None:
    policy = GuardrailPolicy(blocked_tools=("x",))
    assert guardrails._quick(policy, guardrails._version[0]) is None
    assert guardrails.screen_prompt(policy, chat("HELLO THERE")) == (
        chat("HELLO THERE"),
        "Please do not shout.",
    )
