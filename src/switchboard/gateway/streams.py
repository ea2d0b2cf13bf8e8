"""A stream on its way from the upstream to the client: counted as it passes, and metered once
when it closes (finished, failed, or cut by the client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from switchboard.errors import SwitchboardError, UpstreamTimeout, UpstreamUnavailable
from switchboard.gateway.routing import Deployment
from switchboard.gateway.tokens import estimate_prompt_tokens
from switchboard.metering.usage import UsageEvent
from switchboard.providers.base import JSON, ChunkStream

CLIENT_CLOSED = 499


class ClientStream(Protocol):
    """What a surface's streaming response needs: batches of chunks, and hooks that meter."""

    def __aiter__(self) -> AsyncIterator[list[JSON]]: ...

    def client_gone(self) -> None: ...

    def fail(self, exc: SwitchboardError) -> None: ...

    async def aclose(self) -> None: ...


class CannedStream:
    """Chunks the gateway already has (a refusal, a cache hit): no upstream, one batch."""

    def __init__(
        self, event: UsageEvent, chunks: list[JSON], finish: Callable[[UsageEvent], None]
    ) -> None:
        self.event = event
        self._chunks = chunks
        self._finish = finish
        self._done = False

    async def __aiter__(self) -> AsyncIterator[list[JSON]]:
        if self.event.ttft_ms is None:
            self.event.ttft_ms = 0
        yield self._chunks

    def client_gone(self) -> None:
        self.event.status, self.event.error = CLIENT_CLOSED, "client closed the connection"

    def fail(self, exc: SwitchboardError) -> None:
        self.event.status, self.event.error = exc.status_code, exc.message

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._finish(self.event)


class Prefetched:
    """An upstream stream whose first batch has already arrived (so it can no longer be
    retried elsewhere without duplicating output)."""

    def __init__(
        self, stream: ChunkStream, rest: AsyncIterator[list[JSON]], first: list[JSON]
    ) -> None:
        self.stream = stream
        self.rest = rest
        self.first = first


async def open_stream(
    deployment: Deployment, body: JSON, *, first_byte: float | None
) -> Prefetched:
    """Start the upstream stream and wait (at most ``first_byte`` s) for its first batch."""
    stream: ChunkStream | None = None
    try:
        async with asyncio.timeout(first_byte):
            stream = await deployment.provider.stream_chat(body)
            rest = aiter(stream)
            first = await anext(rest)
    except StopAsyncIteration:
        await _close(stream)
        raise UpstreamUnavailable(
            f"{deployment.label} ended the stream before any output"
        ) from None
    except TimeoutError:
        await _close(stream)
        raise UpstreamTimeout(f"{deployment.label} sent nothing within {first_byte} s") from None
    except BaseException:
        await _close(stream)
        raise
    return Prefetched(stream, rest, first)


async def _close(stream: ChunkStream | None) -> None:
    if stream is not None:
        await stream.aclose()


class MeteredStream:
    """The upstream's chunks on their way to the client, counted as they pass.

    Chunks are relabelled with the model name that served; the usage chunk the gateway asked
    for itself is dropped unless the client asked for usage too. ``finish`` records the event.
    """

    def __init__(
        self,
        *,
        event: UsageEvent,
        deployment: Deployment,
        upstream: Prefetched,
        body: JSON,
        include_usage: bool,
        finish: Callable[[UsageEvent, Deployment, int, int, JSON | None], None],
        on_complete: Callable[[list[JSON]], Awaitable[None]] | None = None,
    ) -> None:
        self.event = event
        self._deployment = deployment
        self._upstream = upstream
        self._body = body
        self._include_usage = include_usage
        self._finish = finish
        self._on_complete = on_complete
        self._seen: list[JSON] | None = [] if on_complete is not None else None
        self._completed = False
        self._deltas = 0
        self._usage: dict[str, Any] | None = None
        self._finished = False
        self._client_gone = False
        self._last: JSON = {}

    def __aiter__(self) -> AsyncIterator[list[JSON]]:
        return self._relay()

    async def _batches(self) -> AsyncIterator[list[JSON]]:
        yield self._upstream.first
        total = self._deployment.timeouts.total
        if total is None:
            async for batch in self._upstream.rest:
                yield batch
            return
        deadline = asyncio.get_running_loop().time() + total - self._elapsed()
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    batch = await anext(self._upstream.rest)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamTimeout(
                    f"{self._deployment.label} did not finish within {total} s"
                ) from None
            yield batch

    def _elapsed(self) -> float:
        return time.perf_counter() - self.event.started

    async def _relay(self) -> AsyncIterator[list[JSON]]:
        try:
            async for batch in self._batches():
                out = self._pass(batch)
                if out:
                    if self.event.ttft_ms is None:
                        self.event.ttft_ms = round(self._elapsed() * 1000)
                    yield out
        except SwitchboardError as exc:
            self.event.status, self.event.error = exc.status_code, exc.message
            self._deployment.health.breaker.record_failure()
            raise
        if self._include_usage and self._usage is None:
            # The upstream ignored include_usage: the client asked for usage, so it gets our
            # count, marked as estimated in the usage event.
            yield [self._estimated_usage_chunk()]
        self._completed = True

    def _pass(self, batch: list[JSON]) -> list[JSON]:
        """The chunks of one batch the client gets, relabelled; counts deltas and usage."""
        model = self._deployment.model
        keep_usage = self._include_usage
        out: list[JSON] = []
        if self._seen is not None:
            self._seen.extend(batch)
        for chunk in batch:
            usage = chunk.get("usage")
            if usage:
                self._usage = usage
            chunk["model"] = model
            choices = chunk.get("choices")
            if not choices:
                if keep_usage and usage:
                    out.append(chunk)
                continue
            if not keep_usage:
                chunk.pop("usage", None)
            for choice in choices:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls"):
                    self._deltas += 1
            out.append(chunk)
            self._last = chunk
        return out

    def _estimated_usage_chunk(self) -> JSON:
        last = self._last
        prompt = estimate_prompt_tokens(self._body["messages"])
        self._usage = {
            "prompt_tokens": prompt,
            "completion_tokens": self._deltas,
            "total_tokens": prompt + self._deltas,
        }
        self.event.tokens_estimated = True
        return {
            "id": last.get("id", ""),
            "object": "chat.completion.chunk",
            "created": last.get("created", 0),
            "model": self._deployment.model,
            "choices": [],
            "usage": self._usage,
        }

    def fail(self, exc: SwitchboardError) -> None:
        """A failure on the way to the client (e.g. translating a chunk) after the relay."""
        if self.event.error is None:
            self.event.status, self.event.error = exc.status_code, exc.message

    def client_gone(self) -> None:
        self._client_gone = True

    async def aclose(self) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            await self._upstream.stream.aclose()
        finally:
            self._settle()
        if self._completed and not self._client_gone and self._on_complete and self._seen:
            await self._on_complete(self._seen)

    def _settle(self) -> None:
        event = self.event
        if self._client_gone:
            event.status, event.error = CLIENT_CLOSED, "client closed the connection mid-stream"
        usage = self._usage
        if usage and usage.get("prompt_tokens") is not None:
            tokens_in = int(usage["prompt_tokens"])
            tokens_out = int(usage.get("completion_tokens") or 0)
        else:
            event.tokens_estimated = True
            tokens_in = estimate_prompt_tokens(self._body["messages"])
            tokens_out = self._deltas
        self._finish(event, self._deployment, tokens_in, tokens_out, usage)
