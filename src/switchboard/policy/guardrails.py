"""Per-tenant guardrails on prompts (and, streaming-safe, on responses).

A guardrail looks at a request in the internal (OpenAI) format and may note a finding, change
the request (redact PII, drop a blocked tool), or refuse it with a reason. Guardrails are
plugins: each is a factory registered under a name with `register`, which builds it from the
tenant's `GuardrailPolicy` (or returns None when the policy does not ask for it). The built-in
ones below are registered exactly the way an extension would register its own, as datasette
registers its defaults as plugins.

    policy ──▶ [factory(policy) for each registered guardrail] ──▶ inspect(request) in order
                                                                    │
                              refused? ──▶ Verdict(refusal_reason)  │ findings, edited body
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from switchboard.policy import pii
from switchboard.policy.intents import IntentClassifier
from switchboard.policy.literals import required_literal

JSON = dict[str, Any]
PiiAction = Literal["block", "redact", "log"]


@dataclass(frozen=True, slots=True)
class RefusalRule:
    type: Literal["contains", "regex"]
    pattern: str
    reason: str


@dataclass(frozen=True, slots=True, eq=False)
class GuardrailPolicy:
    """A tenant's guardrail settings, in the shape of the tenant config API. Compared and
    hashed by identity: each cached tenant config holds one, and its guardrails are built once
    per policy (see `_chain`)."""

    sensitive_prompt_patterns: tuple[str, ...] = ()  # plain (case-insensitive) or "re:<regex>"
    sensitive_reason: str = "The request contains sensitive content."
    refusal_rules: tuple[RefusalRule, ...] = ()
    pii_actions: Mapping[str, PiiAction] = field(default_factory=dict)  # kind -> action
    pii_on_responses: bool = False
    blocked_tools: tuple[str, ...] = ()
    blocked_tools_action: Literal["remove", "refuse"] = "remove"
    allowed_routes: tuple[str, ...] = ()  # intents the tenant allows; () allows every one
    intents: IntentClassifier | None = None  # built from the shipped and tenant routes
    route_refusal_reason: str = ""
    allow_unclassified: bool = False


PromptText = tuple[JSON, str, str]  # (the dict holding the text, its key, the text)


class GuardedRequest:
    """What guardrails see and may change. `body` starts as a shallow copy of the request;
    a guardrail that edits message text calls `editable` first, which copies the messages
    once (most requests are never edited, so most requests never pay for the copy), and
    `edited` after, so the next guardrail sees the new texts.

    The prompt texts and their lower-cased forms are worked out once, up front, for every
    guardrail: ``prompt_texts`` and ``lowered`` (also as `texts()`, for extensions)."""

    __slots__ = ("body", "copied", "findings", "lowered", "prompt_texts", "refusal")

    def __init__(self, body: JSON) -> None:
        self.body = body
        self.findings: list[str] = []
        self.refusal: str | None = None
        self.copied = False
        self.prompt_texts: list[PromptText]
        self.lowered: list[str]
        self.edited()

    def editable(self) -> None:
        if not self.copied:
            self.body["messages"] = copy.deepcopy(self.body.get("messages"))
            self.copied = True
            self.edited()

    def edited(self) -> None:
        """The message texts changed (or are new): work out `prompt_texts` and `lowered`."""
        found: list[PromptText] = []
        lowered: list[str] = []
        for message in self.body.get("messages") or ():
            if message.get("role") == "assistant":
                continue
            content = message.get("content")
            if isinstance(content, str):
                found.append((message, "content", content))
                lowered.append(content.lower())
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        found.append((part, "text", part["text"]))
                        lowered.append(part["text"].lower())
        self.prompt_texts = found
        self.lowered = lowered

    def texts(self) -> list[PromptText]:
        """(container, key, text) for every prompt text a person or tool wrote."""
        return self.prompt_texts

    def refuse(self, reason: str) -> None:
        if self.refusal is None:
            self.refusal = reason


@dataclass(frozen=True, slots=True)
class Verdict:
    body: JSON
    refusal: str | None
    findings: tuple[str, ...]


class Guardrail(Protocol):
    @property
    def name(self) -> str: ...

    def inspect(self, request: GuardedRequest) -> None: ...


GuardrailFactory = Callable[[GuardrailPolicy], Guardrail | None]
_REGISTRY: dict[str, GuardrailFactory] = {}
_version = [0]  # bumped on every (un)registration, so built chains are rebuilt


def register(name: str) -> Callable[[GuardrailFactory], GuardrailFactory]:
    """Add a guardrail factory; they run in registration order."""

    def decorator(factory: GuardrailFactory) -> GuardrailFactory:
        _REGISTRY[name] = factory
        _version[0] += 1
        return factory

    return decorator


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
    _version[0] += 1


def registered() -> list[str]:
    return list(_REGISTRY)


@functools.lru_cache(maxsize=4096)
def _chain(policy: GuardrailPolicy, registry_version: int) -> tuple[Guardrail, ...]:
    built = (factory(policy) for factory in _REGISTRY.values())
    return tuple(g for g in built if g is not None)


def guard_prompt(policy: GuardrailPolicy, body: JSON) -> Verdict:
    """Run every applicable guardrail over ``body`` (never changing the caller's copy); stop
    at the first refusal."""
    request = inspect_prompt(policy, body)
    return Verdict(request.body, request.refusal, tuple(request.findings))


def inspect_prompt(policy: GuardrailPolicy, body: JSON) -> GuardedRequest:
    """`guard_prompt` without the `Verdict`: the request as the guardrails left it."""
    request = GuardedRequest({**body})
    for guardrail in _chain(policy, _version[0]):
        guardrail.inspect(request)
        if request.refusal is not None:
            break
    return request


def screen_prompt(policy: GuardrailPolicy, body: JSON) -> tuple[JSON, str | None]:
    """The body to send on (a copy if a guardrail changed it) and the refusal reason, if any:
    what `guard_prompt` decides. A request the built-in guardrails find nothing in (most
    requests) is cleared in one call by `QuickClear`; any other goes through the chain."""
    quick = _quick(policy, _version[0])
    if quick is not None and quick.clears(body):
        return body, None
    request = inspect_prompt(policy, body)
    return request.body, request.refusal


# --- built-in guardrails, registered like any extension ----------------------------------


def _alternation(patterns: list[str]) -> re.Pattern[str] | None:
    """One scan for many regular expressions; the group that matched names the pattern."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?P<p{i}>{p})" for i, p in enumerate(patterns)), re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class PatternRule:
    """Refuses a request whose prompt text holds one of several patterns, case-insensitively:
    the sensitive patterns and the refusal rules are two of these. Plain text is looked up
    with ``in`` on the lower-cased text (C speed); only real regular expressions go through
    the regex engine, whose case-insensitive alternations are slow. Plain patterns are checked
    first, then regular expressions, each in the order given; the first found decides."""

    name: str
    plain: tuple[tuple[str, int], ...]  # (lower-cased text, index of the pattern)
    regex: re.Pattern[str] | None  # every regular expression, one group each
    regex_index: tuple[int, ...]  # group number -> index of the pattern
    # Per regular expression, text every match of it contains (`literals`); None when one of
    # them has none: only a text holding one of these can match `regex`.
    regex_hints: tuple[str, ...] | None
    findings: tuple[str, ...]  # per pattern: what is noted when it is found
    reasons: tuple[str, ...]  # per pattern: the refusal reason

    @classmethod
    def build(cls, name: str, patterns: list[tuple[str, bool, str, str]]) -> PatternRule | None:
        """``patterns``: (text, is_regex, finding, reason) in priority order."""
        if not patterns:
            return None
        plain = tuple(
            (text.lower(), i) for i, (text, is_regex, _, _) in enumerate(patterns) if not is_regex
        )
        regexes = [(text, i) for i, (text, is_regex, _, _) in enumerate(patterns) if is_regex]
        hints = [required_literal(text) for text, _ in regexes]
        return cls(
            name,
            plain,
            _alternation([text for text, _ in regexes]),
            tuple(i for _, i in regexes),
            tuple(h for h in hints if h is not None) if None not in hints else None,
            tuple(finding for _, _, finding, _ in patterns),
            tuple(reason for _, _, _, reason in patterns),
        )

    def inspect(self, request: GuardedRequest) -> None:
        found = None
        lowered = request.lowered
        for i, (_, _, text) in enumerate(request.prompt_texts):
            if self.plain:
                low = lowered[i]
                for needle, index in self.plain:
                    if needle in low:
                        found = index
                        break
            if found is None and self.regex is not None:
                match = self.regex.search(text)
                if match and match.lastgroup:
                    found = self.regex_index[int(match.lastgroup[1:])]
            if found is not None:
                request.findings.append(self.findings[found])
                request.refuse(self.reasons[found])
                return


@register("sensitive_prompt_patterns")
def _sensitive(policy: GuardrailPolicy) -> Guardrail | None:
    return PatternRule.build(
        "sensitive_prompt_patterns",
        [
            (p[3:], True, f"sensitive:{p}", policy.sensitive_reason)
            if p.startswith("re:")
            else (p, False, f"sensitive:{p}", policy.sensitive_reason)
            for p in policy.sensitive_prompt_patterns
        ],
    )


@register("refusal_rules")
def _refusals(policy: GuardrailPolicy) -> Guardrail | None:
    return PatternRule.build(
        "refusal_rules",
        [
            (r.pattern, r.type == "regex", f"refusal:{r.reason}", r.reason)
            for r in policy.refusal_rules
        ],
    )


@dataclass(frozen=True, slots=True)
class PiiGuard:
    name = "pii"
    actions: Mapping[str, PiiAction]
    email: bool  # whether emails are looked for: only then does an "@" count
    fewest_digits: int  # no other kind fits in a text with fewer digits

    def inspect(self, request: GuardedRequest) -> None:
        redact = False
        for _container, _key, text in request.prompt_texts:
            # Most prompts hold no PII: a C-speed look for what each kind needs comes first
            # (QuickClear has already cleared most texts with numbers in them).
            if not (self.email and "@" in text) and (pii.digit_count(text) < self.fewest_digits):
                continue
            for span in pii.find(text, self.actions):
                action = self.actions[span.kind]
                request.findings.append(f"pii:{span.kind}:{action}")
                if action == "block":
                    request.refuse(f"The request contains personal data ({span.kind}).")
                    return
                redact = redact or action == "redact"
        if not redact:
            return
        request.editable()
        kinds = [k for k, a in self.actions.items() if a == "redact"]
        for container, key, text in request.prompt_texts:
            spans = pii.find(text, kinds)
            if spans:
                container[key] = pii.redact(text, spans)
        request.edited()


@register("pii")
def _pii(policy: GuardrailPolicy) -> Guardrail | None:
    actions = policy.pii_actions
    unknown = set(actions) - set(pii.DETECTORS)
    if unknown:
        raise ValueError(f"unknown PII kinds: {', '.join(sorted(unknown))}")
    if not actions:
        return None
    return PiiGuard(dict(actions), "email" in actions, pii.fewest_digits(actions))


@dataclass(frozen=True, slots=True)
class BlockedTools:
    name = "blocked_tools"
    blocked: frozenset[str]
    refuse: bool

    def inspect(self, request: GuardedRequest) -> None:
        tools = request.body.get("tools")
        if not tools:
            return
        names = [(t.get("function") or {}).get("name") for t in tools]
        hit = [n for n in names if n in self.blocked]
        if not hit:
            return
        request.findings.extend(f"blocked_tool:{n}" for n in hit)
        if self.refuse:
            request.refuse(f"The tool {hit[0]!r} is not allowed for this tenant.")
            return
        kept = [t for t, n in zip(tools, names, strict=True) if n not in self.blocked]
        request.body["tools"] = kept
        if not kept:
            request.body.pop("tools", None)
            request.body.pop("tool_choice", None)


@register("blocked_tools")
def _blocked_tools(policy: GuardrailPolicy) -> Guardrail | None:
    if not policy.blocked_tools:
        return None
    return BlockedTools(frozenset(policy.blocked_tools), policy.blocked_tools_action == "refuse")


@dataclass(frozen=True, slots=True)
class AllowedRoutes:
    """Refuses a request whose intent (see `intents`) is not among the tenant's routes."""

    name = "allowed_routes"
    allowed: frozenset[str]
    classifier: IntentClassifier
    reason: str
    allow_unclassified: bool

    def inspect(self, request: GuardedRequest) -> None:
        asked = [m for m in request.body.get("messages") or [] if m.get("role") == "user"]
        if not asked:
            return
        texts = [_plain_text(m.get("content")) for m in asked[-3:]]
        verdict = self.classifier.classify(texts[-1])
        if verdict.route is None and len(texts) > 1:
            verdict = self.classifier.classify(" ".join(texts))
        route = verdict.route
        request.findings.append(f"route:{route or 'unclassified'}")
        if route in self.allowed or (route is None and self.allow_unclassified):
            return
        request.refuse(self.reason)


def _plain_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


@register("allowed_routes")
def _allowed_routes(policy: GuardrailPolicy) -> Guardrail | None:
    if not policy.allowed_routes or policy.intents is None:
        return None
    reason = policy.route_refusal_reason or (
        "This assistant only helps with: " + ", ".join(policy.allowed_routes) + "."
    )
    return AllowedRoutes(
        frozenset(policy.allowed_routes), policy.intents, reason, policy.allow_unclassified
    )


# --- clearing a request in one call -----------------------------------------------------


class ClearedTexts(dict[str, int]):
    """Texts a quick clear found nothing in, each with the tag of the quick clear that cleared
    it. A chat client sends the whole conversation again with every turn, so without this
    every turn would look at every earlier message again (a ten-turn conversation: about
    57 µs a request, against the newest message alone).

    Only what a client will send again is kept: the messages before a request's last one (its
    conversation so far, and the system prompt). The last one, the new question, is kept when
    it comes back as an earlier turn; a question asked once, as most are, is never held. Kept
    texts are bounded by their characters, and all dropped at once when full. A text cleared
    under another policy since is looked at again. Strings and ints only: the garbage
    collector has nothing in it to walk."""

    __slots__ = ("_chars", "_limit")

    def __init__(self, limit_chars: int) -> None:
        super().__init__()
        self._chars = 0
        self._limit = limit_chars

    def keep(self, text: str, tag: int) -> None:
        size = len(text)
        if self._chars + size > self._limit:
            self.clear()
            self._chars = 0
        self[text] = tag
        self._chars += size


# Shared by every quick clear of the process; a few MB at most.
_cleared = ClearedTexts(limit_chars=2_000_000)
_tags = itertools.count(1)  # never reused, so no text is taken as cleared by the wrong policy


@dataclass(frozen=True, slots=True, eq=False)
class QuickClear:
    """Everything a chain of built-in guardrails looks for in a prompt, gathered to clear a
    request that holds none of it in one call. On a busy server the other requests' work
    evicts code from the CPU caches between two uses, so what the chain costs there is mostly
    how many functions it calls; this is one. It only ever says "nothing here": anything that
    might be a finding (a pattern, what could be PII, tools, content in parts) sends the request
    through the chain, which decides as always. A chain with an extension, or with allowed
    routes (which always note the route), is never cleared this way. Texts it has cleared
    before (a conversation's earlier turns) are not looked at again (`ClearedTexts`, under
    this quick clear's own ``tag``)."""

    needles: tuple[str, ...]  # every plain pattern, lower-cased
    regexes: tuple[tuple[re.Pattern[str], tuple[str, ...] | None], ...]  # with their hints
    pii_kinds: frozenset[str]  # the PII guard's kinds; empty without one
    pii_email: bool  # emails among them: an "@" may be one
    pii_digits: int  # the fewest digits any other kind needs
    tools: bool
    tag: int = field(default_factory=lambda: next(_tags))

    def clears(self, body: JSON) -> bool:
        """True only if no guardrail of the chain would note or change anything."""
        if self.tools and body.get("tools"):
            return False
        cleared, tag = _cleared, self.tag
        messages = body.get("messages") or ()
        last = messages[-1] if messages else None  # the new question: not kept (`ClearedTexts`)
        for message in messages:
            if message.get("role") == "assistant":
                continue
            text = message.get("content")
            if not isinstance(text, str):
                if text is None:
                    continue
                return False  # content in parts: the chain reads them
            if cleared.get(text) == tag:
                continue
            if not self._finds_nothing(text):
                return False
            if message is not last:
                cleared.keep(text, tag)
        return True

    def _finds_nothing(self, text: str) -> bool:
        if self.needles or self.regexes:
            low = text.lower()
            for needle in self.needles:
                if needle in low:
                    return False
            for regex, hints in self.regexes:
                if hints is not None:  # a match needs one of them (`literals`): look for those
                    for hint in hints:
                        if hint in low:
                            break
                    else:
                        continue
                if regex.search(text):
                    return False
        return not (
            self.pii_kinds
            # Most texts hold no "@" and too few digits: a C-speed look decides first.
            and ((self.pii_email and "@" in text) or pii.digit_count(text) >= self.pii_digits)
            and pii.might_hold(text, self.pii_kinds)
        )


@functools.lru_cache(maxsize=4096)
def _quick(policy: GuardrailPolicy, registry_version: int) -> QuickClear | None:
    needles: list[str] = []
    regexes: list[tuple[re.Pattern[str], tuple[str, ...] | None]] = []
    pii_guard: PiiGuard | None = None
    tools = False
    for guardrail in _chain(policy, registry_version):
        if isinstance(guardrail, PatternRule):
            needles += [needle for needle, _ in guardrail.plain]
            if guardrail.regex is not None:
                regexes.append((guardrail.regex, guardrail.regex_hints))
        elif isinstance(guardrail, PiiGuard):
            pii_guard = guardrail
        elif isinstance(guardrail, BlockedTools):
            tools = True
        else:
            return None
    return QuickClear(
        tuple(needles),
        tuple(regexes),
        frozenset(pii_guard.actions) if pii_guard is not None else frozenset(),
        pii_guard is not None and pii_guard.email,
        pii_guard.fewest_digits if pii_guard is not None else 0,
        tools,
    )
