"""The tools a run's agent runs itself, offered to the model as functions beside the client's own:
file_search (and the v1 `retrieval`), x-tools (gptscript tool sets and MCP servers) and the
built-ins an assistant can name in `gptscript_tools`.

Each `ServerTool` knows the function the model sees and how to run a call; what a call returns is
the output the model gets and the step record the client sees (a `file_search` item, or a
`function` item with its output).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async

from agents.tools import gptscript, mcp_client, outbound, runner, sandbox
from clicky_chats.config import env_str

log = logging.getLogger("clicky_chats.toolbox")

Emit = Callable[..., Awaitable[None]]
BUILTIN_NAMES = ("retrieval", "site_browsing", "internet_search", "code_interpreter")
CITATION = re.compile(r"【(\d+)(?::\d+)?†[^】]*】")
FILE_SEARCH_INSTRUCTIONS = (
    "Search the user's uploaded files. Results are numbered; when you use a result, cite it with its marker, "
    "e.g. 【0†source】."
)


@dataclass
class ToolResult:
    output: str
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServerTool:
    name: str
    kind: str
    definition: dict[str, Any]
    call: Callable[[str, Emit], Awaitable[ToolResult]]
    requires_confirmation: bool = False
    describe: str = ""
    # How a call is shown in the run step: a "function" item, or a "file_search" or
    # "code_interpreter" item as OpenAI shows its own tools.
    record_kind: str = "function"


def _function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


def _query_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "what to look for"}},
        "required": ["query"],
    }


def _arguments(raw: str) -> dict[str, Any]:
    try:
        parsed = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {"input": raw}
    return parsed if isinstance(parsed, dict) else {"input": parsed}


def file_search_tool(name: str, project: str, store_ids: list[str], options: dict[str, Any]) -> ServerTool:
    ranking = options.get("ranking_options") or {}
    threshold = float(ranking.get("score_threshold") or 0.0)
    max_results = int(options.get("max_num_results") or 20)

    async def call(arguments: str, emit: Emit) -> ToolResult:
        from agents.search import EmbeddingError, search_stores

        query = str(_arguments(arguments).get("query") or _arguments(arguments).get("input") or "")
        await emit("callStart", tool=name, input=query)
        try:
            results = await search_stores(
                project, store_ids, query, max_results, threshold, None, ranker=ranking.get("ranker") or "auto"
            )
            error = None
        except EmbeddingError as exc:
            results, error = [], str(exc)
        items = [
            {"file_id": r["file_id"], "file_name": r["filename"], "score": r["score"], "content": r["content"]}
            for r in results
        ]
        if error:
            output = f"The file search failed: {error}"
        elif not items:
            output = "No results were found in the files."
        else:
            output = "\n\n".join(
                f"【{index}†{item['file_name']}】\n" + "\n".join(part["text"] for part in item["content"])
                for index, item in enumerate(items)
            )
        await emit("callFinish", tool=name, output=output[:2000], error=error)
        record = {
            "type": "file_search",
            "file_search": {
                "ranking_options": {"ranker": ranking.get("ranker") or "auto", "score_threshold": threshold},
                "results": items,
            },
        }
        return ToolResult(runner.cap_output(output), record)

    return ServerTool(
        name,
        "file_search",
        _function(name, FILE_SEARCH_INSTRUCTIONS, _query_schema()),
        call,
        describe="search the files",
        record_kind="file_search",
    )


def gptscript_tool(name: str, toolset: gptscript.ToolSet, env: dict[str, str], model: str, confirm: bool) -> ServerTool:
    entry = toolset.entry

    async def call(arguments: str, emit: Emit) -> ToolResult:
        ctx = runner.CallContext(env_vars=env, model=model, emit=emit)
        return ToolResult(await runner.run_tool(toolset, entry, arguments, ctx))

    action = entry.instruction_line if entry.kind != "prompt" else f"the tool {entry.name}"
    return ServerTool(
        name,
        "gptscript",
        _function(name, entry.description or entry.name, runner.schema_of(entry)),
        call,
        confirm,
        describe=action,
    )


def mcp_tool(name: str, server_url: str, tool: dict[str, Any], confirm: bool) -> ServerTool:
    async def call(arguments: str, emit: Emit) -> ToolResult:
        args = _arguments(arguments)
        await emit("callStart", tool=tool["name"], input=args)
        try:
            output, error = (
                await mcp_client.call_tool(server_url, tool["name"], args, sandbox.Limits.from_env().timeout_s),
                None,
            )
        except mcp_client.McpError as exc:
            output, error = f"The tool {tool['name']} failed: {exc}", str(exc)
        output = runner.cap_output(output)
        await emit("callFinish", tool=tool["name"], output=output, error=error)
        return ToolResult(output)

    return ServerTool(
        name,
        "mcp",
        _function(name, tool["description"] or tool["name"], tool["parameters"]),
        call,
        confirm,
        describe=f"{tool['name']} on {server_url}",
    )


def builtin_tool(builtin: str, name: str, file_search: ServerTool | None, confirm: bool) -> ServerTool | None:
    if builtin == "retrieval":
        return file_search
    if builtin == "site_browsing":

        async def browse(arguments: str, emit: Emit) -> ToolResult:
            args = _arguments(arguments)
            url = str(args.get("url") or args.get("input") or "")
            await emit("callStart", tool=builtin, input=url)
            try:
                output = await runner.run_builtin(
                    "sys.http.html2text", {"url": url}, json.dumps(args), runner.CallContext()
                )
                error = None
            except (runner.ToolError, outbound.OutboundRefused, Exception) as exc:
                output, error = f"The page could not be read: {exc}", str(exc)
            output = runner.cap_output(output)
            await emit("callFinish", tool=builtin, output=output, error=error)
            return ToolResult(output)

        schema = {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}
        return ServerTool(
            name,
            "builtin",
            _function(name, "Read the text of a web page.", schema),
            browse,
            confirm,
            describe="read a web page",
        )
    if builtin == "internet_search":

        async def search(arguments: str, emit: Emit) -> ToolResult:
            query = str(_arguments(arguments).get("query") or "")
            await emit("callStart", tool=builtin, input=query)
            endpoint = env_str("CLICKY_CHATS_SEARCH_URL", "")
            if not endpoint:
                output, error = "Internet search is not configured on this server (CLICKY_CHATS_SEARCH_URL).", "unset"
            else:
                from urllib.parse import quote

                try:
                    status, _type, text = await outbound.fetch_text(
                        f"{endpoint}{'&' if '?' in endpoint else '?'}q={quote(query)}", max_bytes=runner.output_cap()
                    )
                    output, error = (text, None) if status < 400 else (f"The search answered {status}.", str(status))
                except Exception as exc:  # refused or unreachable: the model hears why
                    output, error = f"The search failed: {exc}", str(exc)
            await emit("callFinish", tool=builtin, output=output[:2000], error=error)
            return ToolResult(runner.cap_output(output))

        return ServerTool(
            name,
            "builtin",
            _function(name, "Search the internet.", _query_schema()),
            search,
            confirm,
            describe="search the internet",
        )
    if builtin == "code_interpreter":

        async def interpret(arguments: str, emit: Emit) -> ToolResult:
            code = str(_arguments(arguments).get("code") or _arguments(arguments).get("input") or "")
            await emit("callStart", tool=builtin, input=code)
            if not sandbox.command_tools_allowed():
                output, error = "Code execution is disabled on this server.", "disabled"
            else:
                with sandbox.fresh_workdir() as workdir:
                    env = sandbox.tool_environment({}, {}, "{}", str(workdir))
                    result = await sandbox.run_command(["python3", "-c", code], env=env, workdir=str(workdir))
                output, error = result.as_tool_output(), None if result.exit_code == 0 else result.stderr
            output = runner.cap_output(output)
            await emit("callFinish", tool=builtin, output=output, error=error)
            return ToolResult(
                output,
                {
                    "type": "code_interpreter",
                    "code_interpreter": {"input": code, "outputs": [{"type": "logs", "logs": output}]},
                },
            )

        schema = {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python code"}},
            "required": ["code"],
        }
        return ServerTool(
            name,
            "builtin",
            _function(name, "Run Python code and see what it prints.", schema),
            interpret,
            confirm,
            describe="run Python code",
            record_kind="code_interpreter",
        )
    return None


async def build(inputs: dict[str, Any]) -> dict[str, ServerTool]:
    """The server tools of a run, by function name. `inputs` comes from progress.toolbox_inputs."""
    taken: set[str] = set(inputs["client_functions"])
    tools: dict[str, ServerTool] = {}
    project, confirm_default = inputs["project"], inputs["confirm_default"]
    search: ServerTool | None = None
    if inputs["file_search"] is not None:
        search = file_search_tool(
            runner.function_name("file_search", taken), project, inputs["vector_store_ids"], inputs["file_search"]
        )
        tools[search.name] = search
    for builtin in inputs["builtins"]:
        if builtin == "retrieval" and search is not None:
            continue
        if builtin == "retrieval":
            search = file_search_tool(runner.function_name("retrieval", taken), project, inputs["vector_store_ids"], {})
            tools[search.name] = search
            continue
        made = builtin_tool(builtin, runner.function_name(builtin, taken), search, confirm_default)
        if made is not None:
            tools[made.name] = made
    for xtool in inputs["xtools"]:
        try:
            if xtool["type"] == "mcp":
                for listed in await mcp_client.list_tools(xtool["server_url"], xtool["allowed_tools"]):
                    made = mcp_tool(
                        runner.function_name(f"{xtool['server_label']}_{listed['name']}", taken),
                        xtool["server_url"],
                        listed,
                        xtool["requires_confirmation"],
                    )
                    tools[made.name] = made
            else:
                toolset = await sync_to_async(gptscript.parse)(
                    xtool["contents"], subtool=xtool["subtool"], default_name=xtool["name"]
                )
                made = gptscript_tool(
                    runner.function_name(toolset.entry.name, taken),
                    toolset,
                    xtool["env"],
                    inputs["model"],
                    xtool["requires_confirmation"],
                )
                tools[made.name] = made
        except (mcp_client.McpError, gptscript.ToolFileError, outbound.OutboundRefused) as exc:
            # A tool that cannot be loaded is left out; the run goes on with the others.
            log.warning("x-tool %s is unavailable for this run: %s", xtool["id"], exc)
    return tools


def citations(text: str, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_citation annotations for the 【n†...】 markers in `text` that name a search result."""
    annotations = []
    for match in CITATION.finditer(text):
        index = int(match.group(1))
        if 0 <= index < len(results):
            annotations.append(
                {
                    "type": "file_citation",
                    "text": match.group(0),
                    "start_index": match.start(),
                    "end_index": match.end(),
                    "file_citation": {"file_id": results[index]["file_id"]},
                }
            )
    return annotations
