"""The API objects, exactly as the spec shapes them: every field present, null where allowed.

`tier` is "v1" or "rubra"; extension fields appear only on /v1/rubra.
"""

from __future__ import annotations

from typing import Any

from api_v1.models import Assistant, Message, Run, RunStep, Thread

FILE_SEARCH_CONTENT_INCLUDE = "step_details.tool_calls[*].file_search.results[*].content"


def assistant(obj: Assistant, tier: str = "v1") -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": obj.id,
        "object": "assistant",
        "created_at": obj.created_at,
        "name": obj.name,
        "description": obj.description,
        "model": obj.model,
        "instructions": obj.instructions,
        "tools": obj.tools,
        "tool_resources": obj.tool_resources,
        "metadata": obj.metadata,
        "temperature": obj.temperature,
        "top_p": obj.top_p,
        "response_format": obj.response_format if obj.response_format is not None else "auto",
    }
    if tier == "rubra":
        # The spec's assistant object has no reasoning_effort (only its requests do), so /v1 keeps
        # it out and the strict key set; runs still inherit it.
        data["reasoning_effort"] = obj.reasoning_effort
        data["gptscript_tools"] = obj.gptscript_tools or []
    return data


def thread(obj: Thread) -> dict[str, Any]:
    return {
        "id": obj.id,
        "object": "thread",
        "created_at": obj.created_at,
        "tool_resources": obj.tool_resources,
        "metadata": obj.metadata,
    }


def message(obj: Message) -> dict[str, Any]:
    return {
        "id": obj.id,
        "object": "thread.message",
        "created_at": obj.created_at,
        "thread_id": obj.thread_id,
        "status": obj.status,
        "incomplete_details": obj.incomplete_details,
        "completed_at": obj.completed_at,
        "incomplete_at": obj.incomplete_at,
        "role": obj.role,
        "content": obj.content,
        "assistant_id": obj.assistant_id,
        "run_id": obj.run_id,
        "attachments": obj.attachments,
        "metadata": obj.metadata,
    }


def run(obj: Run, tier: str = "v1") -> dict[str, Any]:
    status = obj.status
    required_action = obj.required_action
    if status == "requires_confirmation" and tier != "rubra":
        # /v1 knows no such status: to an OpenAI client the run is still working.
        status, required_action = "in_progress", None
    return {
        "id": obj.id,
        "object": "thread.run",
        "created_at": obj.created_at,
        "thread_id": obj.thread_id,
        "assistant_id": obj.assistant_id,
        "status": status,
        "required_action": required_action,
        "last_error": obj.last_error,
        "expires_at": None if status in Run.TERMINAL else obj.expires_at,
        "started_at": obj.started_at,
        "cancelled_at": obj.cancelled_at,
        "failed_at": obj.failed_at,
        "completed_at": obj.completed_at,
        "incomplete_details": obj.incomplete_details,
        "model": obj.model,
        "instructions": obj.instructions or "",
        "tools": obj.tools,
        "metadata": obj.metadata,
        # The spec: null until the run is terminal, though the engine sums it turn by turn.
        "usage": obj.usage if status in Run.TERMINAL else None,
        "temperature": obj.temperature,
        "top_p": obj.top_p,
        "max_prompt_tokens": obj.max_prompt_tokens,
        "max_completion_tokens": obj.max_completion_tokens,
        "truncation_strategy": obj.truncation_strategy or {"type": "auto", "last_messages": None},
        "tool_choice": obj.tool_choice if obj.tool_choice is not None else "auto",
        "parallel_tool_calls": obj.parallel_tool_calls,
        "response_format": obj.response_format if obj.response_format is not None else "auto",
        "reasoning_effort": obj.reasoning_effort,
    }


def run_step(obj: RunStep, tier: str = "v1", include: frozenset[str] = frozenset()) -> dict[str, Any]:
    details = obj.step_details
    if details.get("type") == "tool_calls":
        details = {**details, "tool_calls": [_tool_call(call, tier, include) for call in details.get("tool_calls", [])]}
    return {
        "id": obj.id,
        "object": "thread.run.step",
        "created_at": obj.created_at,
        "assistant_id": obj.assistant_id,
        "thread_id": obj.thread_id,
        "run_id": obj.run_id,
        "type": obj.type,
        "status": obj.status,
        "step_details": details,
        "last_error": obj.last_error,
        "expired_at": obj.expired_at,
        "cancelled_at": obj.cancelled_at,
        "failed_at": obj.failed_at,
        "completed_at": obj.completed_at,
        "metadata": obj.metadata,
        "usage": obj.usage,
    }


def _tool_call(call: dict[str, Any], tier: str, include: frozenset[str]) -> dict[str, Any]:
    # Keys starting with "_" are the engine's own bookkeeping (agents/server_calls.py).
    call = {key: value for key, value in call.items() if not key.startswith("_")}
    if call.get("type") == "function" and tier != "rubra":
        call.pop("x-confirmation", None)
    if call.get("type") == "file_search" and FILE_SEARCH_CONTENT_INCLUDE not in include:
        search = dict(call.get("file_search") or {})
        if "results" in search:
            search["results"] = [{k: v for k, v in r.items() if k != "content"} for r in search["results"]]
        call["file_search"] = search
    return call


def event_for_tier(event: str, data: Any, tier: str) -> Any | None:
    """A stored run event as a client of `tier` sees it (events are stored in the /v1/rubra form);
    None when that tier does not see the event at all."""
    if tier == "rubra" or not isinstance(data, dict):
        return data
    if event == "thread.run.requires_confirmation":
        return None
    if data.get("object") == "thread.run" and data.get("status") == "requires_confirmation":
        return {**data, "status": "in_progress", "required_action": None}
    if data.get("object") == "thread.run.step" and data.get("type") == "tool_calls":
        details = data["step_details"]
        calls = [{k: v for k, v in call.items() if k != "x-confirmation"} for call in details.get("tool_calls", [])]
        return {**data, "step_details": {**details, "tool_calls": calls}}
    return data
