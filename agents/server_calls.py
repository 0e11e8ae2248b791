"""The run's calls to server-side tools, as stored in its tool_calls steps.

A server call sits in the step beside the client's function calls, marked `_server`, with its
output null until the agent has run it. `file_search` and `code_interpreter` calls keep the function
call the model made under `_call`, so the next model request can replay it. Keys starting with `_`
never reach a client (api_v1/render.py strips them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Max

from agents import bus
from agents.runs import Events, locked_run, new_step
from agents.toolbox import BUILTIN_NAMES, citations
from agents.tools import sandbox
from api_v1 import render
from api_v1.models import Assistant, Message, Run, RunStep
from clicky_chats.config import env_bool
from clicky_chats.ids import now_seconds


def toolbox_inputs(run: Run) -> dict[str, Any]:
    """What agents/toolbox.build needs, read inside the run's transaction."""
    from api_rubrax.models import XTool
    from api_rubrax.xtools import env_dict

    assistant = Assistant.objects.filter(pk=run.assistant_id).first()
    named = list((assistant.gptscript_tools if assistant else None) or [])
    named += [tool.get("x-tool") for tool in run.tools if tool.get("type") == "gptscript" and tool.get("x-tool")]
    builtins = [name for name in dict.fromkeys(named) if name in BUILTIN_NAMES]
    kinds = {tool.get("type") for tool in run.tools}
    if "retrieval" in kinds and "retrieval" not in builtins:
        builtins.append("retrieval")
    if "code_interpreter" in kinds and sandbox.command_tools_allowed() and "code_interpreter" not in builtins:
        builtins.append("code_interpreter")
    file_search = next((tool.get("file_search") or {} for tool in run.tools if tool.get("type") == "file_search"), None)
    store_ids: list[str] = []
    for resources in ((assistant.tool_resources if assistant else None), run.thread.tool_resources):
        store_ids += ((resources or {}).get("file_search") or {}).get("vector_store_ids") or []
    xtool_ids = [name for name in dict.fromkeys(named) if name not in BUILTIN_NAMES]
    xtools = [
        {
            "id": tool.id,
            "type": tool.type,
            "name": tool.name,
            "contents": tool.contents or "",
            "subtool": tool.subtool,
            "env": env_dict(tool.env_vars),
            "server_url": tool.server_url,
            "server_label": tool.server_label or tool.name,
            "allowed_tools": tool.allowed_tools,
            "requires_confirmation": tool.requires_confirmation,
        }
        for tool in XTool.objects.filter(project=run.project, pk__in=xtool_ids)
    ]
    return {
        "project": run.project,
        "model": run.model,
        "client_functions": [t["function"]["name"] for t in run.tools if t.get("type") == "function"],
        "file_search": file_search,
        "vector_store_ids": list(dict.fromkeys(store_ids)),
        "builtins": builtins,
        "xtools": xtools,
        "confirm_default": env_bool("CLICKY_CHATS_CONFIRM", False),
    }


def pending_step(steps: list[RunStep]) -> str | None:
    """Of the run's steps (oldest first), the newest in-progress tool_calls step whose server calls
    have not all run, if any."""
    for step in reversed(steps):
        if step.type != "tool_calls" or step.status != "in_progress":
            continue
        if any(call.get("_server") and _output(call) is None for call in step.step_details.get("tool_calls", [])):
            return step.id
    return None


def _output(call: dict[str, Any]) -> Any:
    if "_call" in call:
        return call["_call"].get("output")
    return (call.get("function") or {}).get("output")


def as_function_call(call: dict[str, Any]) -> dict[str, Any] | None:
    """A stored call as the function call the model made: {id, name, arguments, output}."""
    if "_call" in call:
        inner = call["_call"]
        return {"id": call["id"], "name": inner["name"], "arguments": inner["arguments"], "output": inner.get("output")}
    if call.get("type") == "function":
        function = call["function"]
        return {
            "id": call["id"],
            "name": function["name"],
            "arguments": function["arguments"],
            "output": function.get("output"),
        }
    return None


def _record(call: dict[str, Any], kind: str) -> dict[str, Any]:
    base = {"id": call["id"], "_server": True}
    if kind == "file_search":
        return {
            **base,
            "type": "file_search",
            "file_search": {},
            "_call": {"name": call["name"], "arguments": call["arguments"], "output": None},
        }
    if kind == "code_interpreter":
        return {
            **base,
            "type": "code_interpreter",
            "code_interpreter": {"input": "", "outputs": []},
            "_call": {"name": call["name"], "arguments": call["arguments"], "output": None},
        }
    return {
        **base,
        "type": "function",
        "function": {"name": call["name"], "arguments": call["arguments"], "output": None},
    }


def _public(call: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in call.items() if not key.startswith("_")}


def _delta(events: Events, step_id: str, items: list[dict[str, Any]]) -> None:
    events.add(
        "thread.run.step.delta",
        {
            "id": step_id,
            "object": "thread.run.step.delta",
            "delta": {"step_details": {"type": "tool_calls", "tool_calls": items}},
        },
    )


def add_server_calls(
    run: Run,
    events: Events,
    step_id: str | None,
    calls: list[dict[str, Any]],
    kinds: dict[str, str],
    usage: dict[str, Any],
) -> str:
    """Puts the model's calls to server tools into the turn's tool_calls step (made if needed)."""
    if step_id is None:
        step = new_step(run, events, "tool_calls", {"type": "tool_calls", "tool_calls": []})
    else:
        step = RunStep.objects.get(pk=step_id)
    stored = step.step_details["tool_calls"]
    items = []
    for call in calls:
        record = _record(call, kinds.get(call["name"], "function"))
        items.append({"index": len(stored), **_public(record)})
        stored.append(record)
    step.usage = usage
    step.save(update_fields=["step_details", "usage"])
    _delta(events, step.id, items)
    return step.id


def pending_server_calls(run_id: str, fence: int, step_id: str) -> list[dict[str, Any]]:
    with locked_run(run_id, fence=fence):
        step = RunStep.objects.get(pk=step_id)
        pending = []
        for call in step.step_details["tool_calls"]:
            if call.get("_server") and _output(call) is None:
                function = as_function_call(call) or {}
                pending.append(
                    {
                        "id": call["id"],
                        "name": function.get("name", ""),
                        "arguments": function.get("arguments", ""),
                        "confirmation": call.get("x-confirmation"),
                    }
                )
        return pending


def await_confirmation(run_id: str, fence: int, step_id: str, call: dict[str, Any], tool: str, action: str) -> None:
    """Holds the run in requires_confirmation until a person approves or denies the call. The
    step's callConfirm event is written with it, so it always comes before the decision's."""
    from api_rubrax.tool_events import record

    with locked_run(run_id, fence=fence) as (run, events):
        record(
            step_id,
            "callConfirm",
            {"tool_call_id": call["id"], "run_id": run_id, "tool": tool, "input": call["arguments"], "action": action},
        )
        run.status = "requires_confirmation"
        run.required_action = {"type": "confirm", "x-confirm": {"id": call["id"], "action": action}}
        run.lease_owner, run.lease_expires_at = None, None
        run.save()
        events.run_event("requires_confirmation")


def record_tool_events(run_id: str, fence: int, step_id: str, held: list[tuple[str, dict[str, Any], float]]) -> None:
    """Writes tool events a running server call emitted, as (type, data, time emitted)."""
    with locked_run(run_id, fence=fence):
        _write_tool_events(step_id, held)


def _write_tool_events(step_id: str, held: list[tuple[str, dict[str, Any], float]]) -> None:
    """Appends `held` to the step's tool event log (api_rubrax/tool_events.py), with the run
    locked: every writer of a step's log holds its run, so the next index is ours to take."""
    if not held:
        return
    from api_rubrax.models import ToolEvent

    top = ToolEvent.objects.filter(subject_id=step_id).aggregate(top=Max("index"))["top"]
    start = 0 if top is None else top + 1
    ToolEvent.objects.bulk_create(
        ToolEvent(subject_id=step_id, index=start + offset, type=event_type, data=data, time=at)
        for offset, (event_type, data, at) in enumerate(held)
    )
    bus.publish(f"tool:{step_id}")


@dataclass
class ServerOutput:
    """What one server call produced, and the tool events it emitted that are not written yet."""

    call_id: str
    output: str
    record: dict[str, Any] = field(default_factory=dict)
    held_events: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)


def record_server_output(run_id: str, fence: int, step_id: str, result: ServerOutput) -> None:
    """Stores one call's output (and its held tool events); the step stays in progress."""
    with locked_run(run_id, fence=fence) as (_run, events):
        step = RunStep.objects.get(pk=step_id)
        store_output(step, events, result)
        step.save(update_fields=["step_details"])


def store_output(step: RunStep, events: Events, result: ServerOutput) -> None:
    """Puts a call's output into the step (the caller saves it), with its delta event; its tool
    events go first, as they were emitted while it ran."""
    _write_tool_events(step.id, result.held_events)
    stored = step.step_details["tool_calls"]
    for index, call in enumerate(stored):
        if call["id"] != result.call_id:
            continue
        if "_call" in call:
            call["_call"]["output"] = result.output
            for key, value in result.record.items():
                if key != "type":
                    call[key] = value
            kind = call["type"]  # "file_search" or "code_interpreter": the item keeps its payload there
            payload = dict(call.get(kind) or {})
            if kind == "code_interpreter":  # delta list items carry their index (the SDK merges by it)
                payload["outputs"] = [{"index": i, **out} for i, out in enumerate(payload.get("outputs", []))]
            delta = {"index": index, "type": kind, kind: payload}
        else:
            call["function"]["output"] = result.output
            delta = {"index": index, "type": "function", "function": {"output": result.output}}
        _delta(events, step.id, [delta])
        return


def settle_step(run: Run, events: Events, step: RunStep) -> str:
    """After the server calls ran (the run locked): the client's own calls, if any, put the run in
    requires_action; otherwise the step completes and the run goes on ("continue"). Saves the step."""
    client_calls = [
        call
        for call in step.step_details["tool_calls"]
        if call.get("type") == "function" and not call.get("_server") and call["function"].get("output") is None
    ]
    if client_calls:
        step.save(update_fields=["step_details"])
        run.status = "requires_action"
        run.required_action = {
            "type": "submit_tool_outputs",
            "submit_tool_outputs": {
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
                    }
                    for call in client_calls
                ]
            },
        }
        run.lease_owner, run.lease_expires_at = None, None
        events.save_run("status", "required_action", "lease_owner", "lease_expires_at")
        events.run_event("requires_action")
        return "requires_action"
    step.status, step.completed_at = "completed", now_seconds()
    step.save(update_fields=["step_details", "status", "completed_at"])
    events.add("thread.run.step.completed", render.run_step(step, "rubra"))
    return "continue"


def annotate_citations(run: Run, message: Message) -> None:
    """file_citation annotations for markers that name results of the run's latest file search."""
    results: list[dict[str, Any]] = []
    for step in RunStep.objects.filter(run=run, type="tool_calls").order_by("-created_ns"):
        searches = [c for c in step.step_details.get("tool_calls", []) if c.get("type") == "file_search"]
        if searches:
            results = searches[-1].get("file_search", {}).get("results") or []
            break
    if not results:
        return
    for part in message.content:
        if part.get("type") == "text":
            part["text"]["annotations"] = citations(part["text"]["value"], results)
