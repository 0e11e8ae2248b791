"""x-tools: validating, creating and changing the server-side tools assistants can use."""

from __future__ import annotations

import re
from typing import Any

from asgiref.sync import async_to_sync
from django.db import transaction

from agents.tools import gptscript, mcp_client, outbound, sandbox
from api_rubrax.models import XTool
from clicky_chats import validation as v
from clicky_chats.errors import ApiError
from clicky_chats.ids import new_id, now_ns, now_seconds
from clicky_chats.scoping import get_scoped

BUILTIN_NAMES = ("retrieval", "site_browsing", "internet_search", "code_interpreter")
MAX_TOOL_FILE_BYTES = 1024 * 1024
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

TOOL_RULES: dict[str, v.Rule] = {
    "type": v.string(enum=("gptscript", "mcp")),
    "url": v.string(nonempty=True, max_length=2048),
    "contents": v.string(nonempty=True, max_length=MAX_TOOL_FILE_BYTES),
    "subtool": v.string(max_length=256),
    "env_vars": v.array(max_items=100, items=v.string()),
    "requires_confirmation": v.boolean(),
    "server_url": v.string(nonempty=True, max_length=2048),
    "server_label": v.string(max_length=256),
    "allowed_tools": v.array(items=v.string(nonempty=True)),
    "retool": v.boolean(),
}


def check_env_vars(items: list[str]) -> list[str]:
    for index, item in enumerate(items):
        name, sep, _value = item.partition("=")  # values may themselves contain "="
        if not sep or not ENV_NAME.match(name):
            raise v.invalid(f"env_vars[{index}]", f"{item!r} is not of the form KEY=VALUE.")
    return items


def env_dict(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


async def fetch_tool_file(url: str) -> str:
    try:
        # One byte over the limit tells a file that is too large from one that just fits.
        status, content_type, text = await outbound.fetch_text(url, max_bytes=MAX_TOOL_FILE_BYTES + 1)
    except Exception as exc:  # refused, unreachable, timed out: all a bad URL for the caller
        raise v.invalid("url", f"the tool file could not be fetched: {exc or type(exc).__name__}") from None
    if status >= 400:
        raise v.invalid("url", f"fetching the tool file answered {status}.")
    if len(text.encode("utf-8")) > MAX_TOOL_FILE_BYTES:
        raise v.invalid("url", f"the tool file is larger than {MAX_TOOL_FILE_BYTES} bytes.")
    if "html" in content_type.lower() or text.lstrip().lower().startswith(("<!doctype html", "<html")):
        raise v.invalid("url", "the URL answered with an HTML page, not a tool file (link the raw file).")
    return text


def load_toolset(contents: str, subtool: str | None, url: str | None = None) -> gptscript.ToolSet:
    default = (url or "").rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0] or "main"
    try:
        toolset = gptscript.parse(contents, subtool=subtool, default_name=default)
    except gptscript.ToolFileError as exc:
        param = "subtool" if subtool and "no tool named" in str(exc) else ("url" if url else "contents")
        raise v.invalid(param, f"the tool file cannot be used: {exc}") from None
    if not sandbox.command_tools_allowed():
        commands = [tool.name for tool in toolset.tools if tool.kind == "command"]
        if commands:
            raise ApiError(
                f"Command tools are disabled on this server ({', '.join(commands)}); an operator can enable them "
                "with CLICKY_CHATS_ALLOW_COMMAND_TOOLS=true.",
                param="contents",
                code="command_tools_disabled",
            )
    return toolset


def source_of(body: dict[str, Any]) -> tuple[str, str | None]:
    """The tool file's text and URL from a request's `contents` or `url`."""
    if body.get("contents"):
        return body["contents"], body.get("url")
    if body.get("url"):
        return async_to_sync(fetch_tool_file)(body["url"]), body["url"]
    raise ApiError("Give either 'url' or 'contents'.", param="contents", code="missing_required_parameter")


def _mcp_fields(body: dict[str, Any]) -> dict[str, Any]:
    if not body.get("server_url"):
        raise ApiError("An MCP tool needs a 'server_url'.", param="server_url", code="missing_required_parameter")
    try:
        tools = async_to_sync(mcp_client.list_tools)(body["server_url"], body.get("allowed_tools"))
    except (mcp_client.McpError, outbound.OutboundRefused) as exc:
        raise v.invalid("server_url", str(exc)) from None
    found = {tool["name"] for tool in tools}
    for index, name in enumerate(body.get("allowed_tools") or []):
        if name not in found:
            raise v.invalid(f"allowed_tools[{index}]", f"the MCP server at {body['server_url']} has no tool {name!r}.")
    label = body.get("server_label") or re.sub(r"[^A-Za-z0-9_-]", "_", body["server_url"].split("//", 1)[-1])[:64]
    return {
        "name": label,
        "description": body.get("description") or f"MCP server {label} ({len(tools)} tools)",
        "server_url": body["server_url"],
        "server_label": label,
        "allowed_tools": body.get("allowed_tools"),
    }


def tool_create(project: str, body: dict[str, Any]) -> XTool:
    v.check(body, TOOL_RULES)
    kind = body.get("type") or ("mcp" if body.get("server_url") else "gptscript")
    fields: dict[str, Any] = {
        "type": kind,
        "env_vars": check_env_vars(body.get("env_vars") or []),
        "requires_confirmation": body.get("requires_confirmation", default_confirmation()),
    }
    if kind == "mcp":
        fields.update(_mcp_fields(body))
    else:
        contents, url = source_of(body)
        toolset = load_toolset(contents, body.get("subtool"), url)
        fields.update(
            name=toolset.entry.name,
            description=toolset.entry.description,
            url=url,
            contents=contents,
            subtool=body.get("subtool"),
        )
    return XTool.objects.create(
        id=new_id("tool_"), project=project, created_at=now_seconds(), created_ns=now_ns(), **fields
    )


def tool_update(project: str, tool_id: str, body: dict[str, Any]) -> XTool:
    v.check(body, TOOL_RULES)
    found = get_scoped(XTool, project, tool_id, noun="tool")
    if "env_vars" in body and body["env_vars"] is not None:
        found.env_vars = check_env_vars(body["env_vars"])
    if body.get("requires_confirmation") is not None:
        found.requires_confirmation = body["requires_confirmation"]
    if found.type == "mcp":
        if any(key in body for key in ("server_url", "allowed_tools", "server_label")):
            merged = {
                "server_url": found.server_url,
                "allowed_tools": found.allowed_tools,
                "server_label": found.server_label,
                **{k: b for k, b in body.items() if b is not None},
            }
            for name, value in _mcp_fields(merged).items():
                setattr(found, name, value)
    else:
        refetch = body.get("retool") is True or body.get("contents") or (body.get("url") and body["url"] != found.url)
        subtool = body.get("subtool", found.subtool)
        if refetch:
            contents, url = source_of({"contents": body.get("contents"), "url": body.get("url") or found.url})
        else:
            contents, url = found.contents or "", found.url
        toolset = load_toolset(contents, subtool, url)
        found.contents, found.url, found.subtool = contents, url, subtool
        found.name, found.description = toolset.entry.name, toolset.entry.description
    with transaction.atomic():
        found.save()
    return found


def default_confirmation() -> bool:
    from clicky_chats.config import env_bool

    return env_bool("CLICKY_CHATS_CONFIRM", False)


def render_tool(tool: XTool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": tool.id,
        "object": "tool",
        "created_at": tool.created_at,
        "name": tool.name,
        "description": tool.description,
        "type": tool.type,
        "url": tool.url,
        "contents": tool.contents,
        "subtool": tool.subtool,
        "env_vars": tool.env_vars,
        "requires_confirmation": tool.requires_confirmation,
    }
    if tool.type == "mcp":
        data.update(server_label=tool.server_label, server_url=tool.server_url, allowed_tools=tool.allowed_tools)
    return data


def inspect_tools(body: dict[str, Any]) -> dict[str, Any]:
    v.check(body, TOOL_RULES)
    contents, url = source_of(body)
    try:
        toolset = gptscript.parse(
            contents,
            subtool=body.get("subtool"),
            default_name=(url or "main").rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0],
        )
    except gptscript.ToolFileError as exc:
        raise v.invalid("contents" if not url else "url", f"the tool file cannot be used: {exc}") from None
    return {"object": "tool.inspection", **toolset.describe()}
