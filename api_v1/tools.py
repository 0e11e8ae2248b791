"""Validating the `tools` of assistants and runs, as the OpenAI spec and API limit them."""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from clicky_chats import validation as v

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_ASSISTANT_TOOLS = 128
MAX_RUN_TOOLS = 20  # the spec: a run may override its assistant's tools with at most 20
TOOL_TYPES = ("code_interpreter", "file_search", "function")
V1_TOOL_TYPES = ("code_interpreter", "retrieval", "function")
RANKERS = ("auto", "default_2024_08_21")


def check_tools(
    tools: Any,
    param: str = "tools",
    *,
    max_items: int = MAX_ASSISTANT_TOOLS,
    version: str = "v2",
    gptscript: bool = False,
) -> list[dict[str, Any]]:
    """Checks tools as sent. `version` is the Assistants dialect: v1 knows `retrieval` where v2
    has `file_search`. With `gptscript`, `{type: "gptscript", "x-tool": id}` items (the Rubra UI's
    x-tools and builtins) pass too; api_v1/dialect.py turns both into what is stored."""
    if not isinstance(tools, list):
        raise v.invalid(param, "expected an array of tools.", "invalid_type")
    if len(tools) > max_items:
        raise v.invalid(param, f"there can be at most {max_items} tools, got {len(tools)}.", "array_above_max_length")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        where = f"{param}[{index}]"
        if not isinstance(tool, dict):
            raise v.invalid(where, "expected a tool object.", "invalid_type")
        kind = tool.get("type")
        if kind == "gptscript" and gptscript:
            if not isinstance(tool.get("x-tool"), str) or not tool["x-tool"]:
                raise v.invalid(f"{where}.x-tool", "expected the id of an x-tool or the name of a builtin tool.")
            continue
        if kind == "retrieval" and version != "v1":
            raise v.invalid(
                f"{where}.type",
                "'retrieval' is the Assistants v1 tool: in v2 use 'file_search' (with "
                "tool_resources.file_search), or send the header 'OpenAI-Beta: assistants=v1'.",
            )
        if kind == "file_search" and version == "v1":
            raise v.invalid(
                f"{where}.type",
                "'file_search' is the Assistants v2 tool: in v1 use 'retrieval' (with file_ids), or send the "
                "header 'OpenAI-Beta: assistants=v2'.",
            )
        allowed = V1_TOOL_TYPES if version == "v1" else TOOL_TYPES
        if kind not in allowed:
            raise v.invalid(f"{where}.type", f"'{kind}' is not one of {', '.join(repr(t) for t in allowed)}.")
        if kind == "function":
            name = _check_function(tool.get("function"), f"{where}.function")
            if name in names:
                raise v.invalid(f"{where}.function.name", f"the function name '{name}' is used twice.")
            names.add(name)
        if kind == "file_search" and tool.get("file_search") is not None:
            _check_file_search(tool["file_search"], f"{where}.file_search")
    return tools


def _check_function(function: Any, where: str) -> str:
    if not isinstance(function, dict):
        raise v.invalid(where, "expected a function object with a name.", "invalid_type")
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise v.invalid(
            f"{where}.name",
            f"{name!r} is not a valid function name: use a-z, A-Z, 0-9, underscores and dashes, at most 64.",
        )
    if function.get("description") is not None and not isinstance(function["description"], str):
        raise v.invalid(f"{where}.description", "expected a string.", "invalid_type")
    parameters = function.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise v.invalid(f"{where}.parameters", "expected a JSON Schema object.", "invalid_type")
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            raise v.invalid(f"{where}.parameters", f"not a valid JSON Schema: {exc.message}") from None
    if function.get("strict") is not None and not isinstance(function["strict"], bool):
        raise v.invalid(f"{where}.strict", "expected a boolean.", "invalid_type")
    return name


def _check_file_search(options: Any, where: str) -> None:
    if not isinstance(options, dict):
        raise v.invalid(where, "expected an object.", "invalid_type")
    v.check(
        options,
        {"max_num_results": v.integer(minimum=1, maximum=50), "ranking_options": v.obj()},
        prefix=f"{where}.",
    )
    ranking = options.get("ranking_options")
    if ranking is not None:
        v.check(
            ranking,
            {"ranker": v.string(enum=RANKERS), "score_threshold": v.number(minimum=0, maximum=1)},
            required=("score_threshold",),
            prefix=f"{where}.ranking_options.",
        )


def check_response_format(value: Any, param: str = "response_format") -> Any:
    if value == "auto":
        return value
    if not isinstance(value, dict):
        raise v.invalid(param, "expected 'auto' or an object with a type.", "invalid_type")
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise v.invalid(f"{param}.type", f"'{kind}' is not one of 'text', 'json_object', 'json_schema'.")
    if kind == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise v.invalid(f"{param}.json_schema", "expected an object with a name and a schema.")
        if not FUNCTION_NAME.match(schema["name"]):
            raise v.invalid(
                f"{param}.json_schema.name",
                f"{schema['name']!r} is not a valid name: use a-z, A-Z, 0-9, underscores and dashes, at most 64.",
            )
        v.check(schema, {"description": v.string(), "strict": v.boolean()}, prefix=f"{param}.json_schema.")
        if schema.get("schema") is not None:
            try:
                Draft202012Validator.check_schema(schema["schema"])
            except SchemaError as exc:
                raise v.invalid(f"{param}.json_schema.schema", f"not a valid JSON Schema: {exc.message}") from None
    return value


def check_tool_resources(value: Any, param: str = "tool_resources") -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise v.invalid(param, "expected an object.", "invalid_type")
    code = value.get("code_interpreter")
    if code is not None:
        if not isinstance(code, dict):
            raise v.invalid(f"{param}.code_interpreter", "expected an object.", "invalid_type")
        v.check(code, {"file_ids": v.array(max_items=20, items=v.string())}, prefix=f"{param}.code_interpreter.")
    search = value.get("file_search")
    if search is not None:
        if not isinstance(search, dict):
            raise v.invalid(f"{param}.file_search", "expected an object.", "invalid_type")
        v.check(
            search,
            {
                "vector_store_ids": v.array(max_items=1, items=v.string()),
                "vector_stores": v.array(max_items=1, items=v.obj()),
            },
            prefix=f"{param}.file_search.",
        )
        if len(search.get("vector_store_ids") or []) + len(search.get("vector_stores") or []) > 1:
            raise v.invalid(f"{param}.file_search", "at most 1 vector store can be attached, by id or made here.")
    return value
