"""What the OpenAI spec says about the fields of the endpoints we relay. Only known fields are
checked; the rest go to the upstream untouched."""

from __future__ import annotations

from typing import Any

from clicky_chats import validation as v
from clicky_chats.errors import ApiError

ROLES = ("developer", "system", "user", "assistant", "tool", "function")


def _message(value: Any, name: str) -> None:
    if not isinstance(value, dict):
        raise v.invalid(name, "expected a message object.", "invalid_type")
    role = value.get("role")
    if role not in ROLES:
        raise v.invalid(f"{name}.role", f"'{role}' is not one of {', '.join(repr(r) for r in ROLES)}.")
    content = value.get("content")
    if content is None and role not in ("assistant", "function"):
        raise ApiError(
            f"Missing required parameter: '{name}.content'.",
            status=400,
            param=f"{name}.content",
            code="missing_required_parameter",
        )
    if content is not None and not isinstance(content, str | list):
        raise v.invalid(f"{name}.content", "expected a string or an array of content parts.", "invalid_type")
    if role == "tool" and not isinstance(value.get("tool_call_id"), str):
        raise ApiError(
            f"Missing required parameter: '{name}.tool_call_id'.",
            status=400,
            param=f"{name}.tool_call_id",
            code="missing_required_parameter",
        )


def _tool(value: Any, name: str) -> None:
    if not isinstance(value, dict):
        raise v.invalid(name, "expected a tool object.", "invalid_type")
    kind = value.get("type")
    if kind not in ("function", "custom"):
        raise v.invalid(f"{name}.type", f"'{kind}' is not one of 'function', 'custom'.")
    if kind == "function":
        function = value.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ApiError(
                f"Missing required parameter: '{name}.function.name'.",
                status=400,
                param=f"{name}.function.name",
                code="missing_required_parameter",
            )


def _response_format(value: Any, name: str) -> None:
    if not isinstance(value, dict):
        raise v.invalid(name, "expected an object.", "invalid_type")
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise v.invalid(f"{name}.type", f"'{kind}' is not one of 'text', 'json_object', 'json_schema'.")
    if kind == "json_schema" and not isinstance(value.get("json_schema"), dict):
        raise ApiError(
            f"Missing required parameter: '{name}.json_schema'.",
            status=400,
            param=f"{name}.json_schema",
            code="missing_required_parameter",
        )


_stop = v.any_of(v.string(), v.array(max_items=4, items=v.string()), expected="a string or an array of up to 4 strings")

CHAT: dict[str, v.Rule] = {
    "model": v.string(nonempty=True),
    "messages": v.array(min_items=1, items=_message),
    "stream": v.boolean(),
    "stream_options": v.obj(),
    "store": v.boolean(),
    "metadata": v.metadata(),
    "temperature": v.number(minimum=0, maximum=2),
    "top_p": v.number(minimum=0, maximum=1),
    "n": v.integer(minimum=1, maximum=128),
    "max_tokens": v.integer(minimum=1),
    "max_completion_tokens": v.integer(minimum=1),
    "presence_penalty": v.number(minimum=-2, maximum=2),
    "frequency_penalty": v.number(minimum=-2, maximum=2),
    "logit_bias": v.obj(),
    "logprobs": v.boolean(),
    "top_logprobs": v.integer(minimum=0, maximum=20),
    "seed": v.integer(),
    "stop": _stop,
    "tools": v.array(max_items=128, items=_tool),
    "tool_choice": v.any_of(
        v.string(enum=("none", "auto", "required")), v.obj(), expected="'none', 'auto', 'required' or a tool object"
    ),
    "parallel_tool_calls": v.boolean(),
    "response_format": _response_format,
    "user": v.string(),
    "reasoning_effort": v.string(),
    "service_tier": v.string(),
}

COMPLETIONS: dict[str, v.Rule] = {
    "model": v.string(nonempty=True),
    "prompt": v.any_of(v.string(), v.array(min_items=1), expected="a string or an array"),
    "stream": v.boolean(),
    "stream_options": v.obj(),
    "temperature": v.number(minimum=0, maximum=2),
    "top_p": v.number(minimum=0, maximum=1),
    "n": v.integer(minimum=1, maximum=128),
    "max_tokens": v.integer(minimum=0),
    "stop": _stop,
}

EMBEDDINGS: dict[str, v.Rule] = {
    "model": v.string(nonempty=True),
    "input": v.any_of(v.string(), v.array(min_items=1, max_items=2048), expected="a string or a non-empty array"),
    "encoding_format": v.string(enum=("float", "base64")),
    "dimensions": v.integer(minimum=1),
    "user": v.string(),
}

MODERATIONS: dict[str, v.Rule] = {
    "input": v.any_of(v.string(), v.array(min_items=1), expected="a string or a non-empty array"),
    "model": v.string(nonempty=True),
}

IMAGE_GENERATIONS: dict[str, v.Rule] = {
    "prompt": v.string(nonempty=True),
    "model": v.string(),
    "n": v.integer(minimum=1, maximum=10),
    "response_format": v.string(enum=("url", "b64_json")),
    "stream": v.boolean(),
}

SPEECH: dict[str, v.Rule] = {
    "model": v.string(nonempty=True),
    "input": v.string(nonempty=True, max_length=4096),
    "voice": v.any_of(v.string(nonempty=True), v.obj(), expected="a voice name or object"),
    "response_format": v.string(enum=("mp3", "opus", "aac", "flac", "wav", "pcm")),
    "speed": v.number(minimum=0.25, maximum=4.0),
    "stream_format": v.string(enum=("sse", "audio")),
}


def check_stream_options(body: dict[str, Any]) -> None:
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise v.invalid("stream_options", "stream_options are only allowed when 'stream' is true.")
