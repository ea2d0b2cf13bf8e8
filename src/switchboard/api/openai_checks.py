"""Checks on OpenAI request bodies: cheap, hand-written, and precise about which field is wrong.

Fields we do not check are passed to the upstream as they are, so new OpenAI parameters work
without a gateway release.
"""

from __future__ import annotations

from typing import Any

from switchboard.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _need(ok: bool, param: str | None, message: str) -> None:
    if not ok:
        raise InvalidRequest(message, param=param)


def _model(body: Any) -> None:
    _need(isinstance(body, dict), None, "request body must be a JSON object")
    model = body.get("model")
    _need(isinstance(model, str) and bool(model), "model", "'model' is required: a model name")


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
    _need(ok, name, f"'{name}' must be a number from {low} to {high}")


def _integer(body: dict[str, Any], name: str, low: int, high: int) -> None:
    value = body.get(name)
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    _need(ok, name, f"'{name}' must be an integer from {low} to {high}")


def check_chat(body: Any) -> None:
    _model(body)
    messages = body.get("messages")
    _need(
        isinstance(messages, list) and bool(messages),
        "messages",
        "'messages' is required: a non-empty list of messages",
    )
    for i, message in enumerate(messages):
        _check_message(i, message)
    stream = body.get("stream")
    _need(stream is None or isinstance(stream, bool), "stream", "'stream' must be true or false")
    options = body.get("stream_options")
    _need(
        options is None or isinstance(options, dict),
        "stream_options",
        "'stream_options' must be an object",
    )
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "presence_penalty", -2, 2)
    _integer(body, "n", 1, 128)
    _integer(body, "max_tokens", 1, 10_000_000)
    _integer(body, "max_completion_tokens", 1, 10_000_000)
    tools = body.get("tools")
    if tools is not None:
        _need(isinstance(tools, list), "tools", "'tools' must be a list")
        for i, tool in enumerate(tools):
            ok = isinstance(tool, dict) and isinstance(
                (tool.get("function") or {}).get("name"), str
            )
            _need(ok, f"tools[{i}]", "each tool needs a 'function' with a 'name'")
    choice = body.get("tool_choice")
    _need(
        choice is None or isinstance(choice, str | dict),
        "tool_choice",
        "'tool_choice' must be a string or an object",
    )
    fmt = body.get("response_format")
    _need(
        fmt is None or (isinstance(fmt, dict) and isinstance(fmt.get("type"), str)),
        "response_format",
        "'response_format' must be an object with a 'type'",
    )
    user = body.get("user")
    _need(user is None or isinstance(user, str), "user", "'user' must be a string")


def _check_message(i: int, message: Any) -> None:
    param = f"messages[{i}]"
    _need(isinstance(message, dict), param, "each message must be an object")
    role = message.get("role")
    _need(role in ROLES, f"{param}.role", f"role must be one of {', '.join(sorted(ROLES))}")
    content = message.get("content")
    ok = (
        content is None
        or isinstance(content, str)
        or (isinstance(content, list) and all(isinstance(p, dict) and "type" in p for p in content))
    )
    _need(ok, f"{param}.content", "content must be a string or a list of content parts")
    if content is None:
        _need(
            role == "assistant" and bool(message.get("tool_calls") or message.get("function_call")),
            f"{param}.content",
            "content is required (only an assistant message with tool_calls may omit it)",
        )
    if role == "tool":
        _need(
            isinstance(message.get("tool_call_id"), str),
            f"{param}.tool_call_id",
            "a tool message needs the 'tool_call_id' it answers",
        )


def check_embeddings(body: Any) -> None:
    _model(body)
    value = body.get("input")
    ok = (isinstance(value, str) and bool(value)) or (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, str | int | list) and not isinstance(v, bool) for v in value)
    )
    _need(ok, "input", "'input' is required: a string, a list of strings or of token ids")
    fmt = body.get("encoding_format")
    _need(
        fmt in (None, "float", "base64"),
        "encoding_format",
        "'encoding_format' must be float or base64",
    )
