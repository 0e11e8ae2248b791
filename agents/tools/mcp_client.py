"""MCP tools: list and call the tools of an MCP server over streamable HTTP, with the official
`mcp` SDK, through the address-checked client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from agents.tools import outbound

CONNECT_TIMEOUT_S = 15.0


class McpError(Exception):
    """An MCP server we cannot use (down, refused, or answering nonsense)."""


@asynccontextmanager
async def mcp_session(server_url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> AsyncIterator[ClientSession]:
    outbound.check_url_scheme(server_url)
    async with outbound.guarded_client(timeout_s=timeout_s) as http:
        async with streamable_http_client(server_url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await asyncio.wait_for(session.initialize(), timeout_s)
                yield session


def _schema(tool: Any) -> dict[str, Any]:
    schema = tool.input_schema if hasattr(tool, "input_schema") else tool.inputSchema
    if not isinstance(schema, dict):
        raise McpError(f"the MCP tool {tool.name!r} has no JSON schema for its input")
    schema = dict(schema)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return schema


async def list_tools(server_url: str, allowed_tools: list[str] | None = None) -> list[dict[str, Any]]:
    """The server's tools as {name, description, parameters}, filtered by `allowed_tools`."""
    try:
        async with mcp_session(server_url) as session:
            listed = await asyncio.wait_for(session.list_tools(), CONNECT_TIMEOUT_S)
    except McpError:
        raise
    except Exception as exc:  # the SDK raises many kinds for a server that is down or broken
        raise McpError(f"cannot list the tools of the MCP server at {server_url}: {_reason(exc)}") from None
    tools = []
    for tool in listed.tools:
        if allowed_tools is not None and tool.name not in allowed_tools:
            continue
        tools.append({"name": tool.name, "description": tool.description or "", "parameters": _schema(tool)})
    return tools


async def call_tool(server_url: str, name: str, arguments: dict[str, Any], timeout_s: float) -> str:
    """Calls a tool; its content as text for the model. A tool error comes back as text too."""
    try:
        async with mcp_session(server_url) as session:
            result = await asyncio.wait_for(session.call_tool(name, arguments), timeout_s)
    except Exception as exc:
        raise McpError(f"the MCP call {name} failed: {_reason(exc)}") from None
    parts = []
    for item in getattr(result, "content", None) or []:
        text = getattr(item, "text", None)
        parts.append(text if text is not None else json.dumps(item.model_dump(mode="json")))
    structured = getattr(result, "structured_content", None) or getattr(result, "structuredContent", None)
    if not parts and structured is not None:
        parts.append(json.dumps(structured))
    output = "\n".join(parts)
    if getattr(result, "is_error", False) or getattr(result, "isError", False):
        return f"The MCP tool {name} reported an error: {output}"
    return output


def _reason(exc: BaseException) -> str:
    # anyio task groups wrap the real failure in ExceptionGroups; report the innermost.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__
