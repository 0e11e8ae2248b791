"""Running one gptscript tool call: built-ins, HTTP tools, command tools and prompt tools.

Every call reports what happens through `emit` (callStart, callChat, callProgress, callFinish),
which the engine stores as the step's tool events. Outbound requests use the guarded client;
commands run in the sandbox; output given to the model is capped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import html.parser
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from agents.tools import outbound, sandbox
from agents.tools.gptscript import Tool, ToolSet
from clicky_chats import upstream
from clicky_chats.config import env_int, env_str
from clicky_chats.errors import ApiError

log = logging.getLogger("clicky_chats.tools")

Emit = Callable[..., Awaitable[None]]
MAX_PROMPT_TURNS = 8


async def _no_emit(event_type: str, **data: Any) -> None:
    return None


def output_cap() -> int:
    return env_int("CLICKY_CHATS_TOOL_OUTPUT_MAX_BYTES", 64 * 1024, minimum=256)


def cap_output(text: str) -> str:
    limit = output_cap()
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore") + f"\n[output cut at {limit} bytes]"


class ToolError(Exception):
    """A tool failed in a way the model should hear about (not a server fault)."""


@dataclass
class CallContext:
    env_vars: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    emit: Emit = _no_emit
    depth: int = 0
    # The directory sys.read and sys.write work in: a prompt tool's own fresh directory.
    workdir: str | None = None


def function_name(name: str, taken: set[str]) -> str:
    """A function name the upstream accepts ([a-zA-Z0-9_-], at most 64), unique among `taken`."""
    base = re.sub(r"[^a-zA-Z0-9_-]", "_", name).strip("_")[:56] or "tool"
    candidate, number = base, 2
    while candidate in taken:
        candidate = f"{base}_{number}"
        number += 1
    taken.add(candidate)
    return candidate


def parse_arguments(raw: str | dict[str, Any] | None) -> tuple[dict[str, str], str]:
    """The call's arguments as string values (what command tools get as env vars) and as JSON."""
    if isinstance(raw, dict):
        data: Any = raw
    else:
        text = (raw or "").strip()
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            data = {"input": text}
    if not isinstance(data, dict):
        data = {"input": data}
    values = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    return values, json.dumps(data)


async def run_tool(toolset: ToolSet, tool: Tool, arguments: str | dict[str, Any] | None, ctx: CallContext) -> str:
    """Runs a tool; returns its output for the model. A tool's own failure becomes an output that
    says so, so the model can react; it never fails the run."""
    args, input_json = parse_arguments(arguments)
    await ctx.emit("callStart", tool=tool.name, input=input_json)
    try:
        output = await _dispatch(toolset, tool, args, input_json, ctx)
        error = None
    except (ToolError, outbound.OutboundRefused) as exc:
        output, error = f"The tool {tool.name} failed: {exc}", str(exc)
    except Exception as exc:  # httpx2 errors and the like: a tool failure, told to the model
        if isinstance(exc, ApiError):
            output, error = f"The tool {tool.name} failed: {exc.message}", exc.message
        else:
            output, error = f"The tool {tool.name} failed: {exc}", f"{type(exc).__name__}: {exc}"
    output = cap_output(output)
    await ctx.emit("callFinish", tool=tool.name, output=output, error=error)
    return output


async def _dispatch(toolset: ToolSet, tool: Tool, args: dict[str, str], input_json: str, ctx: CallContext) -> str:
    kind = tool.kind
    if kind == "builtin":
        return await run_builtin(tool.instruction_line, args, input_json, ctx)
    if kind == "http":
        status, _type, text = await outbound.fetch_text(
            tool.instruction_line,
            method="POST",
            json=json.loads(input_json),
            max_bytes=output_cap(),
            timeout_s=sandbox.Limits.from_env().timeout_s,
        )
        if status >= 400:
            raise ToolError(f"{tool.instruction_line} answered {status}: {text[:500]}")
        return text
    if kind == "command":
        return await _run_command_tool(tool, args, input_json, ctx)
    return await _run_prompt_tool(toolset, tool, args, input_json, ctx)


async def _run_command_tool(tool: Tool, args: dict[str, str], input_json: str, ctx: CallContext) -> str:
    if not sandbox.command_tools_allowed():
        raise ToolError("command tools are disabled on this server (CLICKY_CHATS_ALLOW_COMMAND_TOOLS)")
    with sandbox.fresh_workdir() as workdir:
        script_path = None
        if tool.script.strip():
            script_path = os.path.join(str(workdir), "tool-script")
            await asyncio.to_thread(Path(script_path).write_text, tool.script)
        # Only the arguments the tool declares reach its environment: the model may send any keys.
        declared = {name: value for name, value in args.items() if name in tool.args}
        env = sandbox.tool_environment(ctx.env_vars, declared, input_json, str(workdir))
        try:
            argv = sandbox.interpreter_argv(tool.instruction_line, env, script_path)
        except ValueError as exc:
            raise ToolError(str(exc)) from None
        result = await sandbox.run_command(argv, env=env, workdir=str(workdir))
    return result.as_tool_output()


# --- built-ins ---------------------------------------------------------------------------------


class _TextExtractor(html.parser.HTMLParser):
    SKIP = {"script", "style", "noscript", "head"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in ("p", "br", "div", "li", "h1", "h2", "h3", "h4", "tr"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(markup)
    text = "".join(extractor.parts)
    return re.sub(r"\n\s*\n+", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()


def _path_in(workdir: str, relative: str) -> Path:
    target = Path(workdir, relative).resolve()
    if not relative or not target.is_relative_to(Path(workdir).resolve()):
        raise ToolError("sys.read and sys.write may only touch files inside the tool's working directory")
    return target


def _write_in(workdir: str, relative: str, content: str) -> str:
    target = _path_in(workdir, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    return f"Wrote {relative}"


def _read_in(workdir: str, relative: str) -> str:
    target = _path_in(workdir, relative)
    if not target.is_file():
        raise ToolError(f"no file {relative}")
    return target.read_text(errors="replace")


BUILTIN_PARAMETERS: dict[str, dict[str, Any]] = {
    "sys.echo": {"input": "the text to echo"},
    "sys.time.now": {},
    "sys.http.get": {"url": "the URL to get"},
    "sys.http.html2text": {"url": "the URL of the page"},
    "sys.read": {"filename": "the file to read"},
    "sys.write": {"filename": "the file to write", "content": "what to write"},
}


def builtin_schema(name: str) -> dict[str, Any]:
    properties = {
        key: {"type": "string", "description": text} for key, text in BUILTIN_PARAMETERS.get(name, {}).items()
    }
    return {"type": "object", "properties": properties, "required": list(properties)}


def schema_of(tool: Tool) -> dict[str, Any]:
    """The parameters the model sees: the tool's declared args; a built-in that declares none
    takes the built-in's own (sys.echo's `input`, sys.http.get's `url`, ...)."""
    if tool.kind == "builtin" and not tool.args:
        return builtin_schema(tool.instruction_line)
    return tool.parameters_schema()


async def run_builtin(name: str, args: dict[str, str], input_json: str, ctx: CallContext) -> str:
    if name == "sys.echo":
        return args.get("input", input_json if args else "")
    if name == "sys.time.now":
        return dt.datetime.now(dt.UTC).isoformat()
    if name in ("sys.http.get", "sys.http.html2text"):
        url = args.get("url") or args.get("input")
        if not url:
            raise ToolError(f"{name} needs a url")
        status, content_type, text = await outbound.fetch_text(
            url, max_bytes=output_cap() * 4, timeout_s=sandbox.Limits.from_env().timeout_s
        )
        if status >= 400:
            raise ToolError(f"{url} answered {status}")
        if name == "sys.http.html2text" or "html" in content_type:
            text = html_to_text(text) if name == "sys.http.html2text" else text
        return text
    if name in ("sys.read", "sys.write"):
        if ctx.workdir is None:
            raise ToolError(f"{name} works only inside a tool's own working directory")
        relative = args.get("filename") or args.get("path") or ""
        if name == "sys.write":
            return await asyncio.to_thread(_write_in, ctx.workdir, relative, args.get("content", ""))
        return await asyncio.to_thread(_read_in, ctx.workdir, relative)
    raise ToolError(f"unknown built-in {name}")


# --- prompt tools ------------------------------------------------------------------------------


async def _run_prompt_tool(
    toolset: ToolSet, tool: Tool, args: dict[str, str], input_json: str, ctx: CallContext
) -> str:
    """A nested conversation: the body is the instructions, the args the input; the tool's own
    `Tools:` are offered as functions. Its final text is the result."""
    if ctx.depth >= 4:
        raise ToolError("tools call each other too deeply")
    if ctx.workdir is None:
        # The conversation's own directory, where its sys.read and sys.write work; gone after it.
        with sandbox.fresh_workdir() as workdir:
            return await _run_prompt_tool(toolset, tool, args, input_json, dataclasses.replace(ctx, workdir=workdir))
    model = tool.model or ctx.model or env_str("CLICKY_CHATS_TOOL_MODEL", "gpt-4o-mini")
    taken: set[str] = set()
    offered: dict[str, Tool | str] = {}
    functions = []
    for ref in tool.tools:
        target: Tool | str = toolset.get(ref) or ref
        name = function_name(ref, taken)
        offered[name] = target
        description = target.description if isinstance(target, Tool) else f"The built-in {ref}"
        schema = schema_of(target) if isinstance(target, Tool) else builtin_schema(target)
        functions.append(
            {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}
        )
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": tool.body},
        {"role": "user", "content": args["input"] if list(args) == ["input"] else input_json},
    ]
    for _turn in range(MAX_PROMPT_TURNS):
        payload: dict[str, Any] = {"model": model, "messages": messages}
        if functions:
            payload["tools"] = functions
        if tool.temperature is not None:
            payload["temperature"] = tool.temperature
        if tool.max_tokens is not None:
            payload["max_tokens"] = tool.max_tokens
        if tool.json_response:
            payload["response_format"] = {"type": "json_object"}
        answer = await _chat(payload)
        await ctx.emit("callChat", tool=tool.name, request=payload, response=answer)
        message = (answer.get("choices") or [{}])[0].get("message") or {}
        calls = message.get("tool_calls") or []
        if not calls:
            return message.get("content") or ""
        messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
        for call in calls:
            function = call.get("function") or {}
            target = offered.get(function.get("name", ""))
            if target is None:
                result = f"There is no tool named {function.get('name')!r}."
            elif isinstance(target, Tool):
                sub = CallContext(ctx.env_vars, ctx.model, ctx.emit, ctx.depth + 1, ctx.workdir)
                result = await run_tool(toolset, target, function.get("arguments"), sub)
            else:
                sub_args, sub_json = parse_arguments(function.get("arguments"))
                try:
                    result = cap_output(await run_builtin(target, sub_args, sub_json, ctx))
                except (ToolError, outbound.OutboundRefused) as exc:
                    result = f"The tool {target} failed: {exc}"
            messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": result})
    raise ToolError(f"the prompt tool {tool.name} did not finish within {MAX_PROMPT_TURNS} model calls")


async def _chat(payload: dict[str, Any]) -> dict[str, Any]:
    answer = await upstream.open_upstream(
        "POST", "chat/completions", body=orjson.dumps(payload), content_type="application/json", streaming=False
    )
    if answer.status >= 400:
        failed = await upstream.error_response(answer)
        raise ToolError(f"the model call failed ({answer.status}): {orjson.loads(failed.content)['error']['message']}")
    _raw, parsed = await upstream.read_json_answer(answer)
    return parsed
