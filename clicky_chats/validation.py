"""Reading JSON request bodies and checking known fields by type, range and enum, as the OpenAI spec
does. Unknown fields are left alone: clients such as the Rubra UI echo fields back."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from django.http import HttpRequest
from rest_framework.parsers import BaseParser

from clicky_chats.errors import ApiError

Rule = Callable[[Any, str], None]

METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
# What a stored integer column (BIGINT) holds; OpenAI's own integers are int64 at most.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def read_json(request: HttpRequest) -> dict[str, Any]:
    content_type = request.content_type or ""
    if content_type and not content_type.endswith("json"):
        raise ApiError(
            f"Unsupported content type '{content_type}'; send the body as application/json.",
            status=415,
            code="unsupported_media_type",
        )
    body = parse_json(request.body or b"")
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.", status=400, code="invalid_json")
    if b"\\u0000" in request.body:  # JSON spells NUL only this way; the full walk runs only then
        check_no_nul(body)
    return body


def parse_json(raw: bytes) -> Any:
    """orjson refuses what Python's json lets through to the database, each a 500 there: a lone
    surrogate (\\ud800, which has no UTF-8), an integer past 64 bits, NaN and Infinity."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            f"We could not parse the JSON body of your request ({exc}). Send valid JSON.",
            status=400,
            code="invalid_json",
        ) from None


class JsonParser(BaseParser):
    """DRF's JSON bodies (the viewsets) read as the plain views read theirs: with parse_json."""

    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return parse_json(stream.read())


def invalid(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(f"Invalid value for '{param}': {message}", status=400, param=param, code=code)


def check_no_nul(body: Any) -> None:
    """Refuses a NUL character in any string of a JSON body, naming where it is: PostgreSQL stores it
    in neither text nor jsonb, so it would fail there as a 500 while SQLite took it."""
    pending: list[tuple[Any, str]] = [(body, "")]  # a loop, not recursion: bodies may nest deeply
    while pending:
        value, path = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise invalid(path or "body", "text cannot contain the NUL character (\\u0000).")
        elif isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if "\x00" in key:
                    raise invalid(where, "keys cannot contain the NUL character (\\u0000).")
                pending.append((item, where))
        elif isinstance(value, list):
            pending.extend((item, f"{path}[{index}]") for index, item in enumerate(value))


def described(rule: Rule, json_schema: dict[str, Any]) -> Rule:
    """Attaches the JSON Schema of what `rule` accepts, which the OpenAPI description
    (clicky_chats/schema.py) reads, so the published schema cannot drift from the checks."""
    rule.json_schema = json_schema  # type: ignore[attr-defined]
    return rule


def schema_of(rule: Rule) -> dict[str, Any]:
    """What a rule accepts as JSON Schema; `{}` (anything) for a rule nobody described."""
    return dict(getattr(rule, "json_schema", {}))


def nullable(json_schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, or JSON null (which `check` treats as not given)."""
    kind = json_schema.get("type")
    if isinstance(kind, str) and "enum" not in json_schema:
        return {**json_schema, "type": [kind, "null"]}
    return {"anyOf": [json_schema, {"type": "null"}]}


def body_schema(rules: dict[str, Rule], *, required: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON Schema of a body `check(body, rules, required=...)` accepts: unknown fields are
    allowed, and a field that is not required may be null."""
    needed = list(required)
    properties = {
        name: schema_of(rule) if name in needed else nullable(schema_of(rule)) for name, rule in rules.items()
    }
    for name in needed:
        properties.setdefault(name, {})
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if needed:
        schema["required"] = needed
    return schema


def check(body: dict[str, Any], rules: dict[str, Rule], *, required: Iterable[str] = (), prefix: str = "") -> None:
    """Checks the known fields of `body`; `prefix` names where the body sits (e.g. "messages[0].")."""
    for name in required:
        if body.get(name) is None:
            raise ApiError(
                f"Missing required parameter: '{prefix}{name}'.",
                status=400,
                param=f"{prefix}{name}",
                code="missing_required_parameter",
            )
    for name, rule in rules.items():
        if name in body and body[name] is not None:
            rule(body[name], f"{prefix}{name}")


def string(*, enum: Iterable[str] | None = None, nonempty: bool = False, max_length: int | None = None) -> Rule:
    allowed = tuple(enum) if enum is not None else None

    def rule(value: Any, name: str) -> None:
        if not isinstance(value, str):
            raise invalid(name, "expected a string.", "invalid_type")
        if nonempty and not value:
            raise invalid(name, "expected a non-empty string.")
        if max_length is not None and len(value) > max_length:
            raise invalid(name, f"expected at most {max_length} characters, got {len(value)}.")
        if allowed is not None and value not in allowed:
            raise invalid(name, f"'{value}' is not one of {', '.join(repr(a) for a in allowed)}.")

    json_schema: dict[str, Any] = {"type": "string"}
    if nonempty:
        json_schema["minLength"] = 1
    if max_length is not None:
        json_schema["maxLength"] = max_length
    if allowed is not None:
        json_schema["enum"] = list(allowed)
    return described(rule, json_schema)


def number(*, minimum: float | None = None, maximum: float | None = None, integer: bool = False) -> Rule:
    def rule(value: Any, name: str) -> None:
        kinds = (int,) if integer else (int, float)
        if (
            isinstance(value, bool)
            or not isinstance(value, kinds)
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise invalid(name, "expected an integer." if integer else "expected a number.", "invalid_type")
        if integer and not INT64_MIN <= value <= INT64_MAX:
            raise invalid(name, f"{value} is out of the range of a 64-bit integer.")
        if minimum is not None and value < minimum:
            raise invalid(name, f"{value} is below the minimum of {minimum}.")
        if maximum is not None and value > maximum:
            raise invalid(name, f"{value} is above the maximum of {maximum}.")

    json_schema: dict[str, Any] = {"type": "integer", "format": "int64"} if integer else {"type": "number"}
    if minimum is not None:
        json_schema["minimum"] = minimum
    if maximum is not None:
        json_schema["maximum"] = maximum
    return described(rule, json_schema)


def integer(*, minimum: int | None = None, maximum: int | None = None) -> Rule:
    return number(minimum=minimum, maximum=maximum, integer=True)


def boolean() -> Rule:
    def rule(value: Any, name: str) -> None:
        if not isinstance(value, bool):
            raise invalid(name, "expected a boolean.", "invalid_type")

    return described(rule, {"type": "boolean"})


def obj() -> Rule:
    def rule(value: Any, name: str) -> None:
        if not isinstance(value, dict):
            raise invalid(name, "expected an object.", "invalid_type")

    return described(rule, {"type": "object"})


def array(*, min_items: int = 0, max_items: int | None = None, items: Rule | None = None) -> Rule:
    def rule(value: Any, name: str) -> None:
        if not isinstance(value, list):
            raise invalid(name, "expected an array.", "invalid_type")
        if len(value) < min_items:
            raise invalid(
                name, f"expected at least {min_items} item(s).", "empty_array" if min_items == 1 else "invalid_value"
            )
        if max_items is not None and len(value) > max_items:
            raise invalid(name, f"expected at most {max_items} items, got {len(value)}.")
        if items is not None:
            for index, item in enumerate(value):
                items(item, f"{name}[{index}]")

    json_schema: dict[str, Any] = {"type": "array"}
    if min_items:
        json_schema["minItems"] = min_items
    if max_items is not None:
        json_schema["maxItems"] = max_items
    if items is not None:
        json_schema["items"] = schema_of(items)
    return described(rule, json_schema)


def any_of(*rules: Rule, expected: str) -> Rule:
    def rule(value: Any, name: str) -> None:
        for candidate in rules:
            try:
                candidate(value, name)
                return
            except ApiError:
                continue
        raise invalid(name, f"expected {expected}.", "invalid_type")

    return described(rule, {"anyOf": [schema_of(candidate) for candidate in rules]})


def metadata() -> Rule:
    def rule(value: Any, name: str) -> None:
        if not isinstance(value, dict):
            raise invalid(name, "expected an object of string keys and string values.", "invalid_type")
        if len(value) > METADATA_MAX_PAIRS:
            raise invalid(name, f"at most {METADATA_MAX_PAIRS} pairs are allowed, got {len(value)}.")
        for key, item in value.items():
            if len(key) > METADATA_MAX_KEY:
                raise invalid(name, f"key '{key[:70]}' is longer than {METADATA_MAX_KEY} characters.")
            if not isinstance(item, str):
                raise invalid(f"{name}.{key}", "expected a string.", "invalid_type")
            if len(item) > METADATA_MAX_VALUE:
                raise invalid(f"{name}.{key}", f"values are at most {METADATA_MAX_VALUE} characters.")

    return described(
        rule,
        {
            "type": "object",
            "maxProperties": METADATA_MAX_PAIRS,
            "propertyNames": {"maxLength": METADATA_MAX_KEY},
            "additionalProperties": {"type": "string", "maxLength": METADATA_MAX_VALUE},
        },
    )
