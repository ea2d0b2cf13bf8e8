"""PII in answers, on the real request path: a tenant with ``pii_on_responses`` gets the
model's answers redacted or withheld, plain and streamed, through the OpenAI and Ollama
surfaces; the matched text never reaches the client, and the tokens are still metered."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from conftest import RunningGateway

pytestmark = pytest.mark.slow
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "how do I pay?"}]


def tenant(gateway: RunningGateway, name: str, actions: dict[str, str]) -> str:
    key = gateway.new_tenant(name)
    slug = gateway.keys[f"{name}:slug"]
    config = {"pii_actions": actions, "pii_on_responses": True}
    response = gateway.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=config)
    assert response.status_code == 200, response.text
    return key


def test_answers_are_redacted_plain_and_streamed(gateway: RunningGateway) -> None:
    key = tenant(gateway, "redact-out", {"email": "redact", "credit_card": "redact"})
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with client:
        plain = client.chat.completions.create(model="leaky", messages=ASK)
        stream = client.chat.completions.create(
            model="leaky",
            messages=ASK,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            usage = chunk.usage or usage
    expected = "Sure. Write to [EMAIL] or pay with [CREDIT_CARD]; IBAN DE89 3704 0044 0532 0130 00. Thanks!"
    assert plain.choices[0].message.content == expected
    assert "".join(pieces) == expected
    assert usage is not None
    assert usage.completion_tokens == 19  # the upstream's words, metered as written
    rows = gateway.usage("redact-out", at_least=2)
    assert [r["tokens_output"] for r in rows] == [19, 19]


def test_a_blocked_kind_withholds_the_answer(gateway: RunningGateway) -> None:
    key = tenant(gateway, "block-out", {"iban": "block", "email": "redact"})
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with client:
        plain = client.chat.completions.create(model="leaky", messages=ASK)
        stream = client.chat.completions.create(model="leaky", messages=ASK, stream=True)
        pieces, finish = [], None
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
    for text, reason in (
        (plain.choices[0].message.content, plain.choices[0].finish_reason),
        ("".join(pieces), finish),
    ):
        assert text is not None
        assert "DE89" not in text
        assert "jane.doe" not in text
        assert "withheld" in text
        assert reason == "content_filter"


def test_the_ollama_surface_screens_answers_too(gateway: RunningGateway) -> None:
    key = tenant(gateway, "ollama-out", {"credit_card": "redact"})
    lines: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        gateway.url + "/api/chat",
        json={"model": "leaky", "messages": ASK},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        lines = [orjson.loads(line) for line in response.iter_lines() if line]
    text = "".join(line["message"]["content"] for line in lines if "message" in line)
    assert "[CREDIT_CARD]" in text
    assert "4111" not in text
    assert lines[-1]["done"] is True


def test_tenants_without_the_setting_get_answers_untouched(gateway: RunningGateway) -> None:
    key = gateway.new_tenant("plain-out")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with client:
        answer = client.chat.completions.create(model="leaky", messages=ASK)
    assert "jane.doe@example.com" in (answer.choices[0].message.content or "")
