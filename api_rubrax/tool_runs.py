"""Running an x-tool outside any assistant (POST /tools/run), with confirmation when the tool
asks for it."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async

from agents.tools import runner, sandbox
from api_rubrax import tool_events, xtools
from api_rubrax.models import ToolRun, XTool
from clicky_chats import validation as v
from clicky_chats.errors import ApiError
from clicky_chats.ids import new_id, now_ns, now_seconds
from clicky_chats.scoping import get_scoped


def _input(value: Any, name: str) -> None:
    if not isinstance(value, str | dict):
        raise v.invalid(name, "expected the tool's arguments as an object, or a string.", "invalid_type")


RUN_RULES: dict[str, v.Rule] = {
    "tool_id": v.string(nonempty=True),
    "url": v.string(nonempty=True),
    "contents": v.string(nonempty=True),
    "subtool": v.string(),
    "input": _input,
    "stream": v.boolean(),
}


def render(run: ToolRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "object": "tool.run",
        "created_at": run.created_at,
        "tool_id": run.tool_id,
        "status": run.status,
        "output": run.output,
        "error": run.error,
    }


def start(project: str, body: dict[str, Any]) -> tuple[ToolRun, bool]:
    """Validates and stores a tool run; returns it and whether it waits for confirmation."""
    v.check(body, RUN_RULES)
    spec: dict[str, Any]
    confirm = False
    if body.get("tool_id"):
        tool = get_scoped(XTool, project, body["tool_id"], noun="tool", param="tool_id")
        confirm = tool.requires_confirmation
        spec = {"tool_id": tool.id, "subtool": body.get("subtool") or tool.subtool}
        if tool.type == "gptscript":
            xtools.load_toolset(tool.contents or "", spec["subtool"], tool.url)
        elif not spec["subtool"]:
            raise ApiError("Running an MCP tool needs 'subtool': the name of the server's tool.", param="subtool")
    else:
        contents, url = xtools.source_of(body)
        xtools.load_toolset(contents, body.get("subtool"), url)
        spec = {"contents": contents, "url": url, "subtool": body.get("subtool")}
    run = ToolRun.objects.create(
        id=new_id("toolrun_"),
        project=project,
        created_at=now_seconds(),
        created_ns=now_ns(),
        tool_id=spec.get("tool_id"),
        spec=spec,
        input=body.get("input"),
        status="requires_confirmation" if confirm else "in_progress",
    )
    if confirm:
        tool_events.record(
            run.id, "callConfirm", {"input": body.get("input"), "message": "This tool asks for confirmation."}
        )
    return run, confirm


async def execute(project: str, run_id: str) -> ToolRun:
    """Runs a stored tool run to its end, recording its events."""
    run = await sync_to_async(ToolRun.objects.get)(pk=run_id, project=project)
    emit = tool_events.emitter(run.id)
    try:
        output = await _call(project, run, emit)
        run.status, run.output = "completed", output
    except ApiError as exc:
        run.status, run.error = "failed", exc.message
    await sync_to_async(run.save)(update_fields=["status", "output", "error"])
    return run


async def _call(project: str, run: ToolRun, emit: Any) -> str:
    spec = run.spec
    env: dict[str, str] = {}
    if spec.get("tool_id"):
        tool = await sync_to_async(get_scoped)(XTool, project, spec["tool_id"], noun="tool")
        env = xtools.env_dict(tool.env_vars)
        if tool.type == "mcp":
            from agents.tools import mcp_client

            args, _json = runner.parse_arguments(run.input if isinstance(run.input, dict | str) else None)
            await emit("callStart", tool=spec["subtool"], input=run.input)
            try:
                output = await mcp_client.call_tool(
                    tool.server_url or "",
                    spec["subtool"],
                    dict(run.input or {}) if isinstance(run.input, dict) else args,
                    sandbox.Limits.from_env().timeout_s,
                )
                error = None
            except mcp_client.McpError as exc:
                output, error = f"The tool failed: {exc}", str(exc)
            output = runner.cap_output(output)
            await emit("callFinish", tool=spec["subtool"], output=output, error=error)
            return output
        contents, url = tool.contents or "", tool.url
    else:
        contents, url = spec["contents"], spec.get("url")
    toolset = await sync_to_async(xtools.load_toolset)(contents, spec.get("subtool"), url)
    ctx = runner.CallContext(env_vars=env, emit=emit)
    return await runner.run_tool(toolset, toolset.entry, run.input, ctx)


def confirm(project: str, run_id: str, approved: bool) -> ToolRun:
    run = get_scoped(ToolRun, project, run_id, noun="tool run")
    decided = (
        {"status": "in_progress"}
        if approved
        else {"status": "cancelled", "output": "The user denied this tool call.", "error": "denied"}
    )
    # Only one decision wins, however many arrive at once: the tool runs at most once.
    if not ToolRun.objects.filter(pk=run.id, status="requires_confirmation").update(**decided):
        run.refresh_from_db()
        raise ApiError(f"Tool run {run_id} is not waiting for confirmation (status '{run.status}').", param="run_id")
    run.refresh_from_db()
    tool_events.record(run.id, "callConfirm", {"confirmed": approved})
    if not approved:
        tool_events.record(run.id, "callFinish", {"output": run.output, "error": "denied"})
    return run


def is_finished(run_id: str) -> bool:
    return ToolRun.objects.filter(pk=run_id).exclude(status="in_progress").exists()
