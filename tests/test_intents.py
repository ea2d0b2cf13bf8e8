"""The allowed-routes guardrail: the intent classifier on its own, the tenant config that
names routes, and refusals through the real gateway (OpenAI surface, metered as refusals)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from pydantic import ValidationError

from conftest import RunningGateway
from switchboard.policy.guardrails import guard_prompt
from switchboard.policy.intents import IntentClassifier, IntentRoute, shipped_routes
from switchboard.policy.tenant_config import TenantConfig


@pytest.fixture(scope="module")
def shipped() -> IntentClassifier:
    return IntentClassifier(shipped_routes().values())


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ("which laptop is cheaper, the dell or the lenovo?", "PRICE_COMPARE"),
        ("Wie viel kostet das günstigste Angebot?", "PRICE_COMPARE"),
        ("how many calories are in a banana", "DIET_NUTRITION"),
        ("Is a Mediterranean diet good for weight loss?", "DIET_NUTRITION"),
        ("write a python script that parses a csv file", "CODING"),
        ("where is my package, it has not arrived", "CUSTOMER_SUPPORT"),
        ("translate 'good morning' into German", "TRANSLATION"),
        ("what is the capital of France", None),
        ("how do I get into my neighbour's wifi", None),
    ],
)
def test_shipped_routes_classify_common_requests(
    shipped: IntentClassifier, text: str, route: str | None
) -> None:
    assert shipped.classify(text).route == route


def test_keywords_match_whole_words_and_prefixes() -> None:
    classifier = IntentClassifier(
        [IntentRoute("WINE", "", ("wine*", "red grape"), ())], threshold=1.0
    )
    assert classifier.classify("Which WINES go with fish?").route == "WINE"
    assert classifier.classify("a red   grape variety").route == "WINE"
    assert classifier.classify("swine flu").route is None  # not inside another word
    assert classifier.classify("red grapes").route is None  # a phrase without * is exact


def policy_for(config: dict[str, Any]) -> Any:
    return TenantConfig.model_validate(config).guardrail_policy


def chat(*texts: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": t} for t in texts]}


def test_requests_outside_the_allowed_routes_are_refused() -> None:
    policy = policy_for({"allowed_routes": ["PRICE_COMPARE", "DIET_NUTRITION"]})
    assert guard_prompt(policy, chat("compare the price of two blenders")).refusal is None
    verdict = guard_prompt(policy, chat("write a python function"))
    assert verdict.refusal == "This assistant only helps with: PRICE_COMPARE, DIET_NUTRITION."
    assert verdict.findings == ("route:CODING",)
    assert guard_prompt(policy, chat("tell me a joke")).findings == ("route:unclassified",)


def test_follow_ups_are_read_with_the_turns_before_them() -> None:
    policy = policy_for({"allowed_routes": ["PRICE_COMPARE"]})
    follow_up = chat("compare prices of the pixel 9 and the iphone 16", "and the pro models?")
    assert guard_prompt(policy, follow_up).refusal is None


def test_tenants_define_their_own_routes_and_reasons() -> None:
    policy = policy_for(
        {
            "allowed_routes": ["INSURANCE"],
            "route_definitions": {
                "INSURANCE": {
                    "keywords": ["insur*", "policy holder", "claim*"],
                    "examples": ["how do I file a claim for water damage"],
                }
            },
            "route_refusal_reason": "I can only answer insurance questions.",
            "allow_unclassified": True,
        }
    )
    assert guard_prompt(policy, chat("my insurance claim was denied")).refusal is None
    assert guard_prompt(policy, chat("tell me a joke")).refusal is None  # unclassified allowed
    refused = guard_prompt(policy, chat("compare the prices of two cars"))
    assert refused.refusal == "I can only answer insurance questions."


def test_unknown_routes_are_rejected_with_the_known_ones_named() -> None:
    with pytest.raises(ValidationError) as err:
        TenantConfig.model_validate({"allowed_routes": ["PRICE_COMPARE", "ASTROLOGY"]})
    assert "ASTROLOGY" in str(err.value)
    assert "DIET_NUTRITION" in str(err.value)


@pytest.mark.slow
def test_the_gateway_refuses_off_route_requests_as_normal_answers(
    gateway: RunningGateway,
) -> None:
    key = gateway.new_tenant("routes")
    slug = gateway.keys["routes:slug"]
    config = {"allowed_routes": ["PRICE_COMPARE"]}
    assert gateway.admin("PUT", f"/admin/v1/tenants/{slug}/config", json=config).status_code == 200
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as client:
        allowed = client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "is the pixel cheaper?"}]
        )
        refused = client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "write a sql query"}]
        )
    assert allowed.choices[0].finish_reason == "stop"
    assert refused.choices[0].finish_reason == "content_filter"
    assert refused.choices[0].message.content == "This assistant only helps with: PRICE_COMPARE."
    rows = gateway.usage("routes", at_least=2)
    reasons = sorted(str(r["refusal_reason"]) for r in rows)
    assert reasons == ["None", "This assistant only helps with: PRICE_COMPARE."]
    refusal = next(r for r in rows if r["refusal_reason"])
    assert (refusal["tokens_input"], refusal["tokens_output"]) == (0, 0)
