"""The in-process fast path: a request's rates, leases and budgets decided in one synchronous
call on the in-process stores (`MemoryLimiter`, `MemoryBudgets`), for a single worker.

    try_admit ──▶ read every bucket, lease list and budget counter ──▶ all fit?
                    yes ──▶ write them all ──▶ the x-ratelimit-* headers, rendered
                    no, or a budget counter not seeded yet ──▶ None, nothing written

It decides exactly as `MemoryLimiter.admit`, `MemoryLimiter.acquire` and
`MemoryBudgets.reserve` would in sequence (the same formulas, in the same order of operations),
but only the case where everything fits: that is nearly every request, and it needs no
`Decision`, no `RuleState` and no coroutine. Anything else returns None and the caller takes
the general path, which decides again and explains the refusal (429 with the rule, seeding a
budget counter from the ledger, alerts). The general path serves the Redis backends too.

Why one function with a precompiled plan: on a busy server the other requests' work evicts
this code and its data from the CPU caches between two requests, so what a step costs there is
mostly the memory it touches, about three times what it costs in a tight loop. A `Compiled`
plan therefore holds the very bucket objects and lease lists (no table lookups), the rules'
constants and their header values, in as few objects as possible; it is made once per cached
plan and again after the limiter's sweep (a new ``generation``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from switchboard.limits.base import (
    EPS,
    REQUESTS_HEADERS,
    TOKENS_HEADERS,
    Rule,
    Scope,
    format_duration,
)
from switchboard.limits.budgets import MemoryBudgets
from switchboard.limits.memory import Bucket, Leases, MemoryLimiter, drop_expired

Headers = list[tuple[bytes, bytes]]

_MAX_DURATIONS = 4096


class LocalRule:
    """One rate rule of a plan, with the bucket it counts in."""

    __slots__ = ("bucket", "interval", "limit", "limit_header", "window")

    def __init__(self, bucket: Bucket, rule: Rule) -> None:
        self.bucket = bucket
        self.interval = rule.interval
        self.window = rule.window_seconds
        self.limit = rule.limit
        self.limit_header = rule.limit_header


class Compiled:
    """A plan in the form `LocalGate.try_admit` reads."""

    __slots__ = ("budgets", "generation", "leases", "requests", "requests_if_full", "tokens")

    def __init__(  # noqa: PLR0917 -- built in one place, `LocalGate.compile`
        self,
        generation: int,
        requests: tuple[LocalRule, ...],
        requests_if_full: Headers,
        tokens: tuple[LocalRule, ...],
        leases: tuple[tuple[Leases, int], ...],
        budgets: tuple[tuple[Scope, int], ...],
    ) -> None:
        self.generation = generation
        self.requests = requests  # rules a request costs 1 in
        # Their x-ratelimit headers when every one of their buckets was full before the request
        # (a request then leaves each with one interval of backlog, so the headers are always
        # the same): the usual case for a tenant that is not near its limits.
        self.requests_if_full = requests_if_full
        self.tokens = tokens  # rules a request costs its tokens in
        self.leases = leases  # (the scope's lease list, most at once)
        self.budgets = budgets  # (scope, monthly limit in nano-dollars)


class LocalGate:
    def __init__(
        self, limiter: MemoryLimiter, budgets: MemoryBudgets | None, lease_seconds: float
    ) -> None:
        self._limiter = limiter
        self._budgets = budgets
        self._lease_seconds = lease_seconds
        self._durations: dict[int, bytes] = {}  # reset in whole ms -> its header text

    def compile(
        self,
        rules: Sequence[tuple[Scope, Rule]],
        leases: Sequence[tuple[Scope, int]],
        budgets: Sequence[tuple[Scope, int]],
    ) -> Compiled:
        limiter = self._limiter
        limiter.maybe_sweep(limiter.clock())  # the tables grow here too

        def local(name: str) -> tuple[LocalRule, ...]:
            return tuple(
                LocalRule(limiter.bucket(scope, rule), rule)
                for scope, rule in rules
                if rule.name == name
            )

        # `_take` itself works out the headers of full buckets: on copies, at a clock of 0.
        full = tuple(LocalRule(Bucket(0.0), rule) for _, rule in rules if rule.name == "requests")
        return Compiled(
            limiter.generation,
            local("requests"),
            self._take(full, 1, 0.0, REQUESTS_HEADERS) if full else [],
            local("tokens"),
            tuple((limiter.leases(scope), most) for scope, most in leases),
            tuple(budgets) if self._budgets is not None else (),
        )

    def try_admit(  # noqa: C901, PLR0912 -- one function on purpose: see the module docstring
        self, plan: Compiled, tokens: int, amount: int, month: str
    ) -> Headers | None:
        """Take one request of ``tokens`` tokens and ``amount`` nano-dollars (in ``month``)
        from every rule, lease list and budget of ``plan``, and return its x-ratelimit
        headers; or, unless all of them fit, take nothing and return None."""
        now = self._limiter.clock()
        # Read and check. `late` is base.py's formula, in the same order of operations; a full
        # bucket (tat not after now) always fits, as the formula gives. A request needs one
        # free unit of a requests rule (its cost, 1, capped by a limit of at least 1).
        full = True  # every requests bucket full: their headers are known (`requests_if_full`)
        for rule in plan.requests:
            tat = rule.bucket.tat
            if tat > now:
                if (tat - now) + rule.interval - rule.window > EPS:
                    return None
                full = False
        for rule in plan.tokens:
            tat = rule.bucket.tat
            if tat > now:
                need = tokens if tokens < rule.limit else rule.limit
                if (tat - now) + (need if need > 1 else 1) * rule.interval - rule.window > EPS:
                    return None
        for held, most in plan.leases:
            if len(held) >= most:
                if held[0] <= now:
                    drop_expired(held, now)  # as MemoryLimiter does
                if len(held) >= most:
                    return None
        if plan.budgets:
            counters = self._budgets.counters  # type: ignore[union-attr]  # compile() checked
            for scope, limit in plan.budgets:
                spent = counters.get((scope, month))
                if spent is None or spent + amount > limit:
                    return None  # a counter to seed from the ledger, or refused: general path
            for scope, _ in plan.budgets:
                counters[(scope, month)] += amount
        # Everything fits: write, and say how much is left of the tightest rule of each kind.
        if not plan.requests:
            out: Headers = []
        elif full:
            for rule in plan.requests:
                rule.bucket.tat = now + rule.interval  # what `_take` writes into a full bucket
            out = [*plan.requests_if_full]
        else:
            out = self._take(plan.requests, 1, now, REQUESTS_HEADERS)
        if plan.tokens:
            out += self._take(plan.tokens, tokens, now, TOKENS_HEADERS)
        if plan.leases:
            deadline = now + self._lease_seconds
            for held, _ in plan.leases:
                if not held or held[-1] <= deadline:
                    held.append(deadline)
                else:
                    bisect.insort(held, deadline)
        return out

    def _take(
        self, rules: tuple[LocalRule, ...], cost: int, now: float, names: tuple[bytes, ...]
    ) -> Headers:
        """Take ``cost`` from every rule's bucket; the x-ratelimit headers of the tightest
        (fewest remaining, then the longest reset, as `base.headers` picks)."""
        tightest = rules[0]
        fewest, longest = -1, 0.0
        for rule in rules:
            bucket = rule.bucket
            tat = bucket.tat
            tat = tat if tat > now else now
            if cost > 0:
                tat += cost * rule.interval
                bucket.tat = tat
            backlog = tat - now
            free = math.floor((rule.window - backlog) / rule.interval + EPS)
            limit = rule.limit
            remaining = limit if free > limit else (free if free > 0 else 0)
            if fewest < 0 or remaining < fewest or (remaining == fewest and backlog > longest):
                tightest, fewest, longest = rule, remaining, backlog
        reset = self._durations.get(math.ceil(longest * 1000 - 1e-6)) or self._duration(longest)
        return [
            (names[0], tightest.limit_header),
            (names[1], b"%d" % fewest),
            (names[2], reset),
        ]

    def release(self, plan: Compiled) -> bool:
        """Give back the oldest live lease in each of the plan's lease lists, as
        `MemoryLimiter.release_soon` does by scope; False, giving back nothing, when a sweep
        has replaced the lists since the plan was compiled (release by scope then)."""
        limiter = self._limiter
        if plan.generation != limiter.generation:
            return False
        now = limiter.clock()
        for held, _ in plan.leases:
            if held and held[0] <= now:
                drop_expired(held, now)
            if held:
                del held[0]
        return True

    def _duration(self, seconds: float) -> bytes:
        """`format_duration`, as bytes, remembered per whole millisecond (the text only
        depends on that)."""
        ms = math.ceil(seconds * 1000 - 1e-6)
        text = self._durations.get(ms)
        if text is None:
            if len(self._durations) >= _MAX_DURATIONS:
                self._durations.clear()
            text = self._durations[ms] = format_duration(seconds).encode()
        return text
