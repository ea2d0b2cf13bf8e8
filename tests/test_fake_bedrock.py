"""The fake Bedrock, driven by boto3: if AWS's own SDK is satisfied with its wire format and
its signature checks refuse what AWS refuses, the adapter's tests against it mean something."""

from __future__ import annotations

import gc
import json
import warnings
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from fakes import bedrock_upstream
from fakes.server import ServerThread

ACCESS_KEY = "AKIDFAKEBEDROCKTEST1"
SECRET_KEY = "fake-bedrock-secret-key-for-tests"
REGION = "eu-west-3"
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
TOOLS: dict[str, Any] = {
    "tools": [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": "Weather for a city",
                "inputSchema": {
                    "json": {"type": "object", "properties": {"location": {"type": "string"}}}
                },
            }
        }
    ]
}


@pytest.fixture(autouse=True)
def _collect_dropped_sockets() -> Iterator[None]:
    """botocore can leave the connection of an error response to the garbage collector; the
    socket's ResourceWarning would then fail whichever later test the collector happens to
    run in (once in a while, not reproducibly). Collect here, after each test of this file,
    where that warning is expected and ignored."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def fake() -> Iterator[ServerThread]:
    with ServerThread(bedrock_upstream.create_app(ACCESS_KEY, SECRET_KEY, REGION)) as server:
        yield server
    while _CLIENTS:  # a client dropped unclosed warns (an error here) whenever GC finds it
        _CLIENTS.pop().close()


_CLIENTS: list[BaseClient] = []


def _client(
    fake: ServerThread,
    service: str = "bedrock-runtime",
    secret: str = SECRET_KEY,
    key: str = ACCESS_KEY,
) -> BaseClient:
    client = boto3.client(
        service,
        region_name=REGION,
        endpoint_url=fake.url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=None,
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )
    _CLIENTS.append(client)
    return client


@pytest.fixture(scope="module")
def runtime(fake: ServerThread) -> BaseClient:
    return _client(fake)


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def _code(err: pytest.ExceptionInfo[ClientError]) -> str:
    return str(err.value.response["Error"]["Code"])


def test_converse_text_and_usage(runtime: Any) -> None:
    reply = runtime.converse(
        modelId=CLAUDE,
        messages=[_user("hello there")],
        system=[{"text": "be brief"}],
        inferenceConfig={"maxTokens": 50, "temperature": 0.2, "stopSequences": ["END"]},
    )
    assert reply["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": "Echo: hello there"}],
    }
    assert reply["stopReason"] == "end_turn"
    # "be brief" and "hello there" are the prompt; "Echo: hello there" the completion.
    assert reply["usage"] == {"inputTokens": 4, "outputTokens": 3, "totalTokens": 7}


def test_model_ids_with_colons_and_slashes_are_signed_as_sent(
    runtime: Any, fake: ServerThread
) -> None:
    arn = "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/eu.anthropic.claude-3-5-sonnet-20240620-v1:0"
    for model in ("eu.anthropic.claude-3-5-sonnet-20240620-v1:0", arn):
        reply = runtime.converse(modelId=model, messages=[_user("hi")])
        assert reply["output"]["message"]["content"] == [{"text": "Echo: hi"}]
    assert fake.app.state.requests[-1].path == f"/model/{arn}/converse"


def test_tool_use_round_trip(runtime: Any) -> None:
    messages: list[Any] = [_user("weather in Paris?")]
    first = runtime.converse(modelId=CLAUDE, messages=messages, toolConfig=TOOLS)
    assert first["stopReason"] == "tool_use"
    (block,) = first["output"]["message"]["content"]
    use = block["toolUse"]
    assert (use["name"], use["input"]) == ("get_weather", {"location": "Paris"})
    assert use["toolUseId"].startswith("tooluse_")
    messages += [
        first["output"]["message"],
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": "sunny, 21C"}]}}
            ],
        },
    ]
    second = runtime.converse(modelId=CLAUDE, messages=messages, toolConfig=TOOLS)
    assert second["output"]["message"]["content"] == [{"text": "Tool result: sunny, 21C"}]
    assert second["stopReason"] == "end_turn"


def _events(runtime: Any, model: str, **kwargs: Any) -> list[dict[str, Any]]:
    reply = runtime.converse_stream(modelId=model, **kwargs)
    return list(reply["stream"])


def test_converse_stream_text(runtime: Any) -> None:
    events = _events(runtime, CLAUDE, messages=[_user("count the words here")])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart"
    assert kinds[-4:] == ["contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
    )
    assert text == "Echo: count the words here"
    assert kinds.count("contentBlockDelta") == 5
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"] == {
        "inputTokens": 4,
        "outputTokens": 5,
        "totalTokens": 9,
    }


def test_converse_stream_tool_use(runtime: Any) -> None:
    events = _events(runtime, CLAUDE, messages=[_user("weather in Paris?")], toolConfig=TOOLS)
    (start,) = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert start["start"]["toolUse"]["name"] == "get_weather"
    fragments = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "contentBlockDelta" in e
    ]
    assert len(fragments) == 2
    assert json.loads("".join(fragments)) == {"location": "Paris"}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"


def test_exception_event_mid_stream(runtime: Any) -> None:
    reply = runtime.converse_stream(modelId="throttle-midstream", messages=[_user("one two")])
    seen: list[dict[str, Any]] = []
    with pytest.raises(EventStreamError) as err:
        seen.extend(reply["stream"])
    assert err.value.response["Error"]["Code"] == "throttlingException"
    assert any("contentBlockDelta" in e for e in seen)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "ValidationException"),
        (403, "AccessDeniedException"),
        (404, "ResourceNotFoundException"),
        (424, "ModelErrorException"),
        (429, "ThrottlingException"),
        (500, "InternalServerException"),
        (503, "ServiceUnavailableException"),
    ],
)
def test_error_triggers(runtime: Any, status: int, code: str) -> None:
    with pytest.raises(ClientError) as err:
        runtime.converse(modelId=f"error-{status}", messages=[_user("x")])
    assert _code(err) == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    with pytest.raises(ClientError) as streamed:
        runtime.converse_stream(modelId=f"error-{status}", messages=[_user("x")])
    assert _code(streamed) == code


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]}, "alternate"),
        ({"messages": [_user("a"), _user("b")]}, "alternate"),
        ({"messages": [{"role": "user", "content": []}]}, "is empty"),
        ({"messages": [_user("  ")]}, "is blank"),
        (
            {
                "messages": [
                    _user("x"),
                    {
                        "role": "assistant",
                        "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}],
                    },
                ]
            },
            "toolConfig field must be defined",
        ),
        (
            {
                "messages": [
                    _user("x"),
                    {
                        "role": "assistant",
                        "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"toolResult": {"toolUseId": "t2", "content": [{"text": "r"}]}}
                        ],
                    },
                ],
                "toolConfig": TOOLS,
            },
            "Expected toolResult blocks",
        ),
    ],
)
def test_bodies_bedrock_would_refuse(runtime: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ClientError) as err:
        runtime.converse(modelId=CLAUDE, **kwargs)
    assert _code(err) == "ValidationException"
    assert message in err.value.response["Error"]["Message"]


def test_wrong_secret_key_fails_the_signature(fake: ServerThread) -> None:
    with pytest.raises(ClientError) as err:
        _client(fake, secret="not-the-secret").converse(modelId=CLAUDE, messages=[_user("x")])
    assert _code(err) == "InvalidSignatureException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_unknown_access_key_is_unrecognized(fake: ServerThread) -> None:
    with pytest.raises(ClientError) as err:
        _client(fake, key="AKIDSOMEONEELSE00000").converse(modelId=CLAUDE, messages=[_user("x")])
    assert _code(err) == "UnrecognizedClientException"


def test_unsigned_request_is_refused(fake: ServerThread) -> None:
    response = httpx.post(f"{fake.url}/model/{CLAUDE}/converse", json={"messages": []}, timeout=5)
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"].startswith("MissingAuthenticationTokenException")


def test_tampered_body_fails_verification(fake: ServerThread) -> None:
    client = _client(fake)

    def tamper(request: Any, **_: Any) -> None:
        # The same length, so only the payload hash differs from what was signed.
        request.body = request.body.replace(b"hello", b"hallo")

    client.meta.events.register("before-send.bedrock-runtime.Converse", tamper)
    with pytest.raises(ClientError) as err:
        client.converse(modelId=CLAUDE, messages=[_user("hello")])
    assert _code(err) == "InvalidSignatureException"
    assert fake.app.state.requests[-1].body["messages"][0]["content"][0]["text"] == "hallo"


def test_tampered_path_fails_verification(fake: ServerThread) -> None:
    client = _client(fake)

    def retarget(request: Any, **_: Any) -> None:
        request.url = request.url.replace("sonnet", "sonnes")

    client.meta.events.register("before-send.bedrock-runtime.Converse", retarget)
    with pytest.raises(ClientError) as err:
        client.converse(modelId=CLAUDE, messages=[_user("hello")])
    assert _code(err) == "InvalidSignatureException"


def test_invoke_model_titan_embeddings(runtime: Any) -> None:
    vectors = []
    for text in ("alpha", "beta gamma"):
        reply = runtime.invoke_model(
            modelId="amazon.titan-embed-text-v2:0",
            body=json.dumps({"inputText": text}),
            contentType="application/json",
            accept="application/json",
        )
        data = json.loads(reply["body"].read())
        assert data["inputTextTokenCount"] == len(text.split())
        assert len(data["embedding"]) == 8
        vectors.append(data["embedding"])
    assert vectors[0] != vectors[1]
    with pytest.raises(ClientError) as err:
        runtime.invoke_model(modelId=CLAUDE, body=json.dumps({"inputText": "x"}))
    assert _code(err) == "ValidationException"


def test_control_plane_lists_foundation_models(fake: ServerThread) -> None:
    models = _client(fake, service="bedrock").list_foundation_models()["modelSummaries"]
    assert [m["modelId"] for m in models] == list(bedrock_upstream.FOUNDATION_MODELS)
