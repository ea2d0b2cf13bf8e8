"""Rate and concurrency limits per tenant, key and user: the model both backends share.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one number).
A rule of ``limit`` per ``window_seconds`` is a bucket of ``limit`` units that refills one unit
every ``interval = window / limit`` seconds. Its whole state is the *theoretical arrival time*
``tat``: the moment the bucket is full again. ``backlog = max(tat - now, 0)``.

    check (cost c)      need = clamp(c, 1, limit)      late = backlog + need*interval - window
      late <= EPS  ──▶  fits; if every check of the request fits: tat = max(tat, now) + c*interval
      late >  EPS  ──▶  refused; nothing is written for any check; Retry-After = late

    remaining = floor((window - backlog) / interval)   reset = backlog (until the bucket is full)

Why GCRA and not the two-window sliding counter: GCRA is exact (no estimate at window
boundaries, so replicas sharing Redis admit precisely ``limit`` in a burst), keeps one key per
(scope, rule), gives a closed-form Retry-After, and ``reset`` means what OpenAI's
``x-ratelimit-reset-*`` headers mean: time until the limit is back to its initial state. The
contract it gives is the token bucket's: a burst of up to ``limit``, then ``limit`` per window
sustained; any span of one window admits less than ``2 * limit``.

Cost: a request costs 1 against ``requests`` rules and its estimated tokens against ``tokens``
rules. Cost 0 is a check only: it passes when at least one unit is free and consumes nothing.
A cost above the limit is checked as ``limit`` (it passes on a full bucket, then leaves the scope
in debt until it drains), so an oversize request is never refused forever. ``settle`` adds the
difference between the real and the estimated tokens afterwards (negative refunds).

Concurrency limits are leases that expire: ``acquire`` takes a slot valid for ``ttl_seconds``,
``release`` returns the oldest lease this process holds on the scope. A worker that dies without
releasing loses its slots after the TTL, never later; a request that outlives the TTL stops
counting, so the TTL must exceed the longest request (the upstream read timeout and a margin).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from switchboard.errors import RateLimited, SwitchboardError

RuleName = Literal["requests", "tokens"]
Scope = str  # "tenant:<id>", "key:<id>", "user:<tenant>:<user>"; build them with the helpers

EPS = 1e-6  # seconds of slack in comparisons; both backends use the same float arithmetic
_MAX_USER = 128


class LimiterUnavailable(SwitchboardError):
    """The shared limiter store cannot be reached and the limiter is set to fail closed."""

    status_code = 503
    error_type = "server_error"
    code = "rate_limiter_unavailable"


@dataclass(frozen=True, slots=True)
class Rule:
    name: RuleName
    limit: int
    window_seconds: int
    # Derived once: rules are built once per tenant config and used on every request, as dict
    # keys too (a frozen dataclass would otherwise hash its fields on every lookup).
    interval: float = field(init=False, repr=False, compare=False)  # seconds per unit
    limit_header: bytes = field(init=False, repr=False, compare=False)  # x-ratelimit-limit-*
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in ("requests", "tokens"):
            raise ValueError(f"rule name must be 'requests' or 'tokens', not {self.name!r}")
        if self.limit < 1 or self.window_seconds < 1:
            raise ValueError("a rule needs limit >= 1 and window_seconds >= 1")
        object.__setattr__(self, "interval", self.window_seconds / self.limit)
        object.__setattr__(self, "limit_header", str(self.limit).encode())
        object.__setattr__(self, "_hash", hash((self.name, self.limit, self.window_seconds)))

    def __hash__(self) -> int:
        return self._hash


Check = tuple[Scope, Rule, int]  # (scope, rule, cost)


@dataclass(slots=True)  # not frozen: one is made per rule per request, and frozen inits are slow
class RuleState:
    """Where one (scope, rule) stands after a decision: enough for the x-ratelimit headers."""

    scope: Scope
    rule: Rule
    limit: int
    remaining: int
    reset_seconds: float  # until the bucket is full again (OpenAI's "reset")
    retry_after_seconds: float  # until this check's cost would fit; 0 when it fitted


@dataclass(slots=True)
class Decision:
    allowed: bool
    states: list[RuleState] = field(default_factory=list)
    degraded: bool = False  # the store was unreachable and the limiter failed open


class Limiter(Protocol):
    async def admit(self, checks: Sequence[Check], *, distinct: bool = False) -> Decision:
        """Consume every check's cost if all of them fit, else nothing. One call per request.
        ``distinct``: the caller vouches that no (scope, rule) repeats and no cost is negative,
        so the checks need no merging."""
        ...

    async def settle(self, scope: Scope, rule: Rule, delta: int) -> None:
        """Add ``delta`` units (real minus estimated tokens; negative refunds) after the fact."""
        ...

    async def acquire(self, scope: Scope, limit: int, ttl_seconds: float) -> bool:
        """Take one of ``limit`` concurrent slots for at most ``ttl_seconds``."""
        ...

    async def release(self, scope: Scope) -> None:
        """Give back the oldest slot this process holds on ``scope`` (no-op if none)."""
        ...

    def release_soon(self, scopes: Sequence[Scope]) -> None:
        """`release` each, without waiting: at once in process, in the background otherwise."""
        ...

    async def aclose(self) -> None: ...


def tenant_scope(tenant_id: str) -> Scope:
    return f"tenant:{tenant_id}"


def key_scope(key_id: str) -> Scope:
    return f"key:{key_id}"


def user_scope(tenant_id: str, user: str) -> Scope:
    """The end user named by the caller; long names are hashed so a caller cannot grow keys."""
    if len(user) > _MAX_USER:
        user = "sha256-" + hashlib.sha256(user.encode()).hexdigest()
    return f"user:{tenant_id}:{user}"


def merge_checks(checks: Sequence[Check]) -> list[Check]:
    """One check per (scope, rule), costs summed, first-seen order (a bucket is written once)."""
    if len(checks) == 1 and checks[0][2] >= 0:
        return list(checks)
    merged: dict[tuple[Scope, Rule], int] = {}
    for scope, rule, cost in checks:
        if cost < 0:
            raise ValueError(f"cost must be >= 0, not {cost}")
        merged[(scope, rule)] = merged.get((scope, rule), 0) + cost
    return [(scope, rule, cost) for (scope, rule), cost in merged.items()]


def rule_state(scope: Scope, rule: Rule, backlog: float, late: float) -> RuleState:
    limit = rule.limit
    free = math.floor((rule.window_seconds - backlog) / rule.interval + EPS)
    return RuleState(
        scope,
        rule,
        limit,
        limit if free > limit else (free if free > 0 else 0),
        backlog if backlog > 0.0 else 0.0,
        late if late > EPS else 0.0,
    )


def retry_after(decision: Decision) -> float:
    """Seconds until every check of the refused request would fit (0 when it was allowed)."""
    if decision.allowed:
        return 0.0
    return max((s.retry_after_seconds for s in decision.states), default=0.0)


def rate_limited(decision: Decision) -> RateLimited:
    """The 429 for a refused decision, naming the tightest rule."""
    worst = max(decision.states, key=lambda s: s.retry_after_seconds)
    rule = worst.rule
    return RateLimited(
        f"Rate limit reached for {worst.scope}: {rule.limit} {rule.name} per "
        f"{format_duration(rule.window_seconds)}; retry after "
        f"{format_duration(worst.retry_after_seconds)}",
        retry_after=retry_after(decision),
    )


def format_duration(seconds: float) -> str:
    """OpenAI's (Go's) duration text: "12ms", "1s", "1.5s", "6m0s", "1h0m0s"."""
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


REQUESTS_HEADERS = (
    b"x-ratelimit-limit-requests",
    b"x-ratelimit-remaining-requests",
    b"x-ratelimit-reset-requests",
)
TOKENS_HEADERS = (
    b"x-ratelimit-limit-tokens",
    b"x-ratelimit-remaining-tokens",
    b"x-ratelimit-reset-tokens",
)


def headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} from the tightest state per rule
    name (fewest remaining, then the longest reset). Rule names without a state are left out.
    One pass over the states: this runs on every response of a tenant with limits."""
    requests: RuleState | None = None
    tokens: RuleState | None = None
    for state in decision.states:
        if state.rule.name == "requests":
            if requests is None or _tighter(state, requests):
                requests = state
        elif tokens is None or _tighter(state, tokens):
            tokens = state
    out: list[tuple[bytes, bytes]] = []
    if requests is not None:
        out += _state_headers(REQUESTS_HEADERS, requests)
    if tokens is not None:
        out += _state_headers(TOKENS_HEADERS, tokens)
    return out


def _tighter(state: RuleState, than: RuleState) -> bool:
    """Fewer remaining, or as many and a longer reset."""
    return state.remaining < than.remaining or (
        state.remaining == than.remaining and state.reset_seconds > than.reset_seconds
    )


def _state_headers(
    names: tuple[bytes, bytes, bytes], state: RuleState
) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes], tuple[bytes, bytes]]:
    limit_h, remaining_h, reset_h = names
    return (
        (limit_h, state.rule.limit_header),
        (remaining_h, b"%d" % state.remaining),
        (reset_h, format_duration(state.reset_seconds).encode()),
    )
