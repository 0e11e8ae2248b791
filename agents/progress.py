"""What an agent writes while it advances a run, each call one transaction under the fencing
token: a stale agent's call raises LeaseLost and changes nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, transaction

from agents import server_calls
from agents.db import connection_lost
from agents.runs import (
    MAX_ATTEMPTS,
    Events,
    claim_runs,
    finish_cancelled,
    finish_expired,
    finish_failed,
    locked_run,
    new_step,
)
from api_v1 import render
from api_v1.models import Message, Run, RunStep
from clicky_chats.ids import new_id, now_ns, now_seconds

log = logging.getLogger("clicky_chats.agents")

CHARS_PER_TOKEN = 4  # a rough estimate; no tokenizer download is needed at run time


@dataclass
class TurnContext:
    """Everything the engine needs to make the next model call of a run."""

    run_id: str
    status: str
    model: str
    payload: dict[str, Any]
    max_completion_tokens: int | None
    completion_tokens_used: int
    # Set when the run must end incomplete instead of calling the model: the reason.
    incomplete_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # What agents/toolbox.py needs to build the run's server-side tools (a claim's first turn only).
    toolbox_inputs: dict[str, Any] = field(default_factory=dict)
    # A tool_calls step whose server-side calls still wait to run (after a confirmation).
    pending_step_id: str | None = None


@dataclass
class Claim:
    """A run this agent now holds, and its first turn when the claim could begin it at once."""

    run_id: str
    fence: int
    attempts: int
    expires_at: int | None
    turn: TurnContext | None


def claim(owner: str, capacity: int, lease_s: float) -> list[Claim]:
    """Claims up to `capacity` runs and begins each (in_progress, its first model request) in the
    same transaction, the claim and the begin one UPDATE of each run: one commit before the model
    is called, not two.

    Should beginning fail (a bug meeting some run's data), the runs are claimed again without it,
    and the engine begins each on its own, which fails that run the usual way."""
    try:
        return _claim(owner, capacity, lease_s, begin=True)
    except Exception as exc:
        if isinstance(exc, DatabaseError) and connection_lost(exc):
            raise  # db() reconnects and tries it all again
        log.exception("could not begin the runs with their claim; claiming them alone")
        return _claim(owner, capacity, lease_s, begin=False)


def _claim(owner: str, capacity: int, lease_s: float, *, begin: bool) -> list[Claim]:
    turns: dict[str, TurnContext] = {}

    def begin_claimed(run: Run, events: Events) -> None:
        if run.attempts <= MAX_ATTEMPTS:  # past it the engine fails the run instead
            turns[run.id] = _begin_locked(run, events, continuing=False, with_toolbox=True)

    with transaction.atomic():
        claimed = claim_runs(owner, capacity, lease_s, begin_claimed if begin else None)
    return [Claim(run.id, run.fence, run.attempts, run.expires_at, turns.get(run.id)) for run in claimed]


def begin(run_id: str, fence: int, *, continuing: bool = False, with_toolbox: bool = True) -> TurnContext:
    """Moves a claimed run to in_progress (or picks up one a crashed agent held) and gathers the
    model request for its next turn. `continuing` is this agent's own next turn of the run."""
    with locked_run(run_id, fence=fence) as (run, events):
        return _begin_locked(run, events, continuing=continuing, with_toolbox=with_toolbox)


def _begin_locked(run: Run, events: Events, *, continuing: bool, with_toolbox: bool) -> TurnContext:
    """begin() on a run already locked by the caller's transaction. `with_toolbox` gathers what
    the run's server tools are built from, which the engine needs once per claim."""
    if run.status in ("cancelling", *Run.TERMINAL):
        return TurnContext(run.id, run.status, run.model, {}, None, 0)
    never_begun = run.started_at is None  # so it has no steps yet
    if run.status == "queued":
        run.status = "in_progress"
        if run.started_at is None:
            run.started_at = now_seconds()
        events.save_run("status", "started_at")
        events.run_event("in_progress")
    elif not continuing:
        # Taken over from an agent that died mid-turn: drop its half-written turn; this
        # agent makes the call again, so the thread ends with exactly one answer.
        RunStep.objects.filter(run=run, status="in_progress").delete()
        Message.objects.filter(run_id=run.id, status="in_progress").delete()
    steps = [] if never_begun else list(RunStep.objects.filter(run=run).order_by("created_ns", "pk"))
    context = _turn_context(run, steps)
    if with_toolbox:
        context.toolbox_inputs = server_calls.toolbox_inputs(run)
    context.pending_step_id = server_calls.pending_step(steps)
    return context


def _turn_context(run: Run, steps: list[RunStep]) -> TurnContext:
    history = list(
        Message.objects.filter(thread_id=run.thread_id, created_ns__lt=run.created_ns).order_by("created_ns", "pk")
    )
    strategy = run.truncation_strategy or {}
    if strategy.get("type") == "last_messages" and strategy.get("last_messages"):
        history = history[-int(strategy["last_messages"]) :]
    conversation = [_chat_message(message) for message in history]
    conversation += _this_run_so_far(steps)
    system = [{"role": "system", "content": run.instructions}] if run.instructions else []
    incomplete_reason = None
    if run.max_prompt_tokens:
        while conversation and _estimate(system + conversation) > run.max_prompt_tokens and len(conversation) > 1:
            conversation.pop(0)  # the oldest goes first, as OpenAI's auto truncation does
        if _estimate(system + conversation) > run.max_prompt_tokens:
            incomplete_reason = "max_prompt_tokens"
    payload: dict[str, Any] = {
        "model": run.model,
        "messages": system + conversation,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    functions = [tool for tool in run.tools if tool.get("type") == "function"]
    if functions:
        payload["tools"] = functions
        if run.tool_choice is not None:
            payload["tool_choice"] = (
                run.tool_choice if isinstance(run.tool_choice, str) else _chat_tool_choice(run.tool_choice)
            )
        payload["parallel_tool_calls"] = run.parallel_tool_calls
    if run.response_format is not None:
        payload["response_format"] = run.response_format
    for name in ("temperature", "top_p", "reasoning_effort"):
        if getattr(run, name) is not None:
            payload[name] = getattr(run, name)
    used = (run.usage or {}).get("completion_tokens", 0)
    if run.max_completion_tokens:
        if used >= run.max_completion_tokens:  # earlier turns spent the run's whole budget
            incomplete_reason = "max_completion_tokens"
        payload["max_completion_tokens"] = max(1, run.max_completion_tokens - used)
    return TurnContext(
        run.id,
        run.status,
        run.model,
        payload,
        run.max_completion_tokens,
        used,
        incomplete_reason,
    )


def _chat_tool_choice(choice: dict[str, Any]) -> Any:
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice["function"]["name"]}}
    return "auto"


def _estimate(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content") or ""
        text = content if isinstance(content, str) else " ".join(str(part.get("text", "")) for part in content)
        total += 4 + len(text) // CHARS_PER_TOKEN + len(str(message.get("tool_calls", ""))) // CHARS_PER_TOKEN
    return total


def _chat_message(message: Message) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if part.get("type") == "text":
            parts.append({"type": "text", "text": part["text"]["value"]})
        elif part.get("type") == "image_url":
            parts.append({"type": "image_url", "image_url": part["image_url"]})
        elif part.get("type") == "refusal" and message.role == "assistant":
            parts.append({"type": "refusal", "refusal": part["refusal"]})
    if all(part["type"] == "text" for part in parts):
        return {"role": message.role, "content": "".join(part["text"] for part in parts)}
    return {"role": message.role, "content": parts}


def _this_run_so_far(steps: list[RunStep]) -> list[dict[str, Any]]:
    """The run's own earlier turns (from its steps, oldest first): its answers, its tool calls and
    their outputs, in order."""
    completed = [step for step in steps if step.status == "completed"]
    message_ids = [
        step.step_details["message_creation"]["message_id"]
        for step in completed
        if step.step_details.get("type") == "message_creation"
    ]
    messages = Message.objects.in_bulk(message_ids) if message_ids else {}
    turns: list[dict[str, Any]] = []
    for step in completed:
        details = step.step_details
        if details.get("type") == "message_creation":
            found = messages.get(details["message_creation"]["message_id"])
            if found is not None:
                turns.append(_chat_message(found))
            continue
        calls = [server_calls.as_function_call(call) for call in details.get("tool_calls", [])]
        calls = [call for call in calls if call is not None]
        if not calls:
            continue
        turns.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]},
                    }
                    for call in calls
                ],
            }
        )
        for call in calls:
            turns.append({"role": "tool", "tool_call_id": call["id"], "content": call["output"] or ""})
    return _as_spoken(turns)


def _as_spoken(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One answer that both said something and called functions is stored as a message step
    followed by a tool_calls step; the model wrote it as one assistant message, so it is shown
    the same way (two assistant messages in a row trip up some chat templates)."""
    spoken: list[dict[str, Any]] = []
    for turn in turns:
        previous = spoken[-1] if spoken else None
        if (
            turn.get("tool_calls")
            and previous is not None
            and previous["role"] == "assistant"
            and "tool_calls" not in previous
            and isinstance(previous.get("content"), str)
        ):
            previous["tool_calls"] = turn["tool_calls"]
            continue
        spoken.append(turn)
    return spoken


# --- writing a turn as it streams --------------------------------------------------------------


def open_message(run_id: str, fence: int, pieces: list[tuple[str, str]] | None = None) -> tuple[str, str]:
    """A message_creation step and its assistant message, empty or with its first `pieces` as its
    first delta (one transaction before the first delta, not two); returns (step id, message id)."""
    with locked_run(run_id, fence=fence) as (run, events):
        message_id = new_id("msg_")
        step = new_step(
            run,
            events,
            "message_creation",
            {"type": "message_creation", "message_creation": {"message_id": message_id}},
        )
        message = Message(
            id=message_id,
            project=run.project,
            thread_id=run.thread_id,
            created_at=now_seconds(),
            created_ns=now_ns(),
            status="in_progress",
            role="assistant",
            content=[],
            assistant_id=run.assistant_id,
            run_id=run.id,
        )
        events.add("thread.message.created", render.message(message))
        events.add("thread.message.in_progress", render.message(message))
        if pieces:
            message.content = []  # a new list: the events above hold the empty one as it was
            _append_pieces(message, pieces, events)
        message.save(force_insert=True)  # stored once, with its first text
        return step.id, message.id


def append_content(run_id: str, fence: int, message_id: str, pieces: list[tuple[str, str]]) -> None:
    """Adds (kind, text) pieces, kind "text" or "refusal", to the message as one delta event."""
    with locked_run(run_id, fence=fence) as (_run, events):
        message = Message.objects.get(pk=message_id)
        _append_pieces(message, pieces, events)
        message.save(update_fields=["content"])


def _append_pieces(message: Message, pieces: list[tuple[str, str]], events: Events) -> None:
    """Adds the pieces to `message.content` (the caller saves it) and their delta to `events`.

    A piece continuing the message's last part of its kind extends it and its delta carries only
    the new text; a new part's first delta carries the whole part (annotations included), since
    the SDK concatenates strings and appends lists on every repeat."""
    first = not message.content
    parts: list[dict[str, Any]] = []
    for kind, text in pieces:
        last = message.content[-1] if message.content else None
        if last is not None and last["type"] == kind:
            index = len(message.content) - 1
            if kind == "text":
                last["text"]["value"] += text
                parts.append({"index": index, "type": "text", "text": {"value": text}})
            else:
                last["refusal"] += text
                parts.append({"index": index, "type": "refusal", "refusal": text})
            continue
        index = len(message.content)
        if kind == "text":
            message.content.append({"type": "text", "text": {"value": text, "annotations": []}})
            parts.append({"index": index, "type": "text", "text": {"value": text, "annotations": []}})
        else:
            message.content.append({"type": "refusal", "refusal": text})
            parts.append({"index": index, "type": "refusal", "refusal": text})
    delta: dict[str, Any] = {"content": parts}
    if first:
        delta["role"] = "assistant"
    events.add("thread.message.delta", {"id": message.id, "object": "thread.message.delta", "delta": delta})


def open_tool_step(run_id: str, fence: int) -> str:
    with locked_run(run_id, fence=fence) as (run, events):
        return new_step(run, events, "tool_calls", {"type": "tool_calls", "tool_calls": []}).id


def append_tool_calls(run_id: str, fence: int, step_id: str, fragments: dict[int, dict[str, Any]]) -> None:
    """Merges argument fragments into the step's calls; the delta names id, type and name only the
    first time a call appears, as the SDK's delta merging demands."""
    with locked_run(run_id, fence=fence) as (_run, events):
        step = RunStep.objects.get(pk=step_id)
        calls = step.step_details["tool_calls"]
        delta_calls = []
        for index in sorted(fragments):
            fragment = fragments[index]
            if "id" in fragment:
                calls.append(
                    {
                        "id": fragment["id"],
                        "type": "function",
                        "function": {"name": fragment["name"], "arguments": fragment["arguments"], "output": None},
                    }
                )
                delta_calls.append(
                    {
                        "index": index,
                        "id": fragment["id"],
                        "type": "function",
                        "function": {"name": fragment["name"], "arguments": fragment["arguments"], "output": None},
                    }
                )
            else:
                calls[index]["function"]["arguments"] += fragment["arguments"]
                delta_calls.append(
                    {"index": index, "type": "function", "function": {"arguments": fragment["arguments"]}}
                )
        step.save(update_fields=["step_details"])
        events.add(
            "thread.run.step.delta",
            {
                "id": step_id,
                "object": "thread.run.step.delta",
                "delta": {"step_details": {"type": "tool_calls", "tool_calls": delta_calls}},
            },
        )


def _add_usage(total: dict[str, Any] | None, usage: dict[str, Any]) -> dict[str, Any]:
    result = dict(total or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        result[key] = int(result.get(key, 0)) + int(usage.get(key, 0) or 0)
    return result


@dataclass
class TurnEnd:
    """How a model turn ended: the run's new status, or "tools" with the step whose server calls
    the agent runs next."""

    status: str
    tool_step_id: str | None = None
    # The step's server calls, as server_calls.pending_server_calls lists them.
    server_calls: list[dict[str, Any]] = field(default_factory=list)


def finish_turn(
    run_id: str,
    fence: int,
    *,
    message_step: tuple[str, str] | None,
    tool_step_id: str | None,
    usage: dict[str, Any],
    finish_reason: str | None,
    calls_pending: bool,
    server_call_list: list[dict[str, Any]] | None = None,
    toolbox_kinds: dict[str, str] | None = None,
    pieces: list[tuple[str, str]] | None = None,
) -> TurnEnd:
    """Closes the turn's message and steps and moves the run on; returns the run's new status
    ("tools" when the agent runs server tools next, with their step).
    `pieces`, the answer's last text not yet written, go into the message first (as its last delta).

    The model's finish_reason decides how: "length" cuts the message and the run short (the
    run's token limit), "content_filter" cuts only the message."""
    cut_short = finish_reason == "length"
    message_cut = {"length": "max_tokens", "content_filter": "content_filter"}.get(finish_reason or "")
    with locked_run(run_id, fence=fence) as (run, events):
        now = now_seconds()
        run.usage = _add_usage(run.usage, usage)
        if message_step is not None:
            step_id, message_id = message_step
            message = Message.objects.get(pk=message_id)
            if pieces:
                _append_pieces(message, pieces, events)
            if message_cut:
                message.status, message.incomplete_at = "incomplete", now
                message.incomplete_details = {"reason": message_cut}
                events.add("thread.message.incomplete", render.message(message))
            else:
                message.status, message.completed_at = "completed", now
                events.add("thread.message.completed", render.message(message))
            if "file_search" in (toolbox_kinds or {}).values():  # only file search results are cited
                server_calls.annotate_citations(run, message)
            message.save()
            step = RunStep.objects.get(pk=step_id)
            step.status, step.completed_at, step.usage = "completed", now, usage
            step.save(update_fields=["status", "completed_at", "usage"])
            events.add("thread.run.step.completed", render.run_step(step, "rubra"))
        if server_call_list and not cut_short:
            # The agent runs these itself next; the run stays in_progress meanwhile.
            step_id = server_calls.add_server_calls(
                run, events, tool_step_id, server_call_list, toolbox_kinds or {}, usage
            )
            events.save_run("usage")
            pending = [{**call, "confirmation": None} for call in server_call_list]
            return TurnEnd("tools", step_id, pending)
        if tool_step_id is not None and calls_pending and not cut_short:
            step = RunStep.objects.get(pk=tool_step_id)
            step.usage = usage
            step.save(update_fields=["usage"])
            calls = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
                }
                for call in step.step_details["tool_calls"]
            ]
            run.status = "requires_action"
            run.required_action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": calls}}
            run.lease_owner, run.lease_expires_at = None, None
            events.save_run("usage", "status", "required_action", "lease_owner", "lease_expires_at")
            events.run_event("requires_action")
            return TurnEnd(run.status)
        if tool_step_id is not None:  # cut short mid-call: the call never became whole
            RunStep.objects.filter(pk=tool_step_id).update(status="failed", failed_at=now)
        if cut_short:
            run.status, run.incomplete_details = "incomplete", {"reason": "max_completion_tokens"}
            run.completed_at = now
        else:
            run.status, run.completed_at = "completed", now
        run.lease_owner, run.lease_expires_at = None, None
        events.save_run("usage", "status", "incomplete_details", "completed_at", "lease_owner", "lease_expires_at")
        events.run_event(run.status)
        return TurnEnd(run.status)


def finish_server_calls(
    run_id: str, fence: int, step_id: str, last: server_calls.ServerOutput | None
) -> tuple[str, TurnContext | None]:
    """The step's last server call's output, the step settled and, when the run goes on, its next
    turn begun: one transaction between a tool's answer and the next model request, not three.
    Returns "continue" with the turn, or what the run now waits for (requires_action) with None."""
    with locked_run(run_id, fence=fence) as (run, events):
        step = RunStep.objects.get(pk=step_id)
        if last is not None:
            server_calls.store_output(step, events, last)
        outcome = server_calls.settle_step(run, events, step)
        if outcome != "continue":
            return outcome, None
        return outcome, _begin_locked(run, events, continuing=True, with_toolbox=False)


def end_incomplete(run_id: str, fence: int, reason: str) -> None:
    """Ends the run before a model call it has no tokens left for."""
    with locked_run(run_id, fence=fence) as (run, events):
        run.status, run.incomplete_details, run.completed_at = "incomplete", {"reason": reason}, now_seconds()
        run.lease_owner, run.lease_expires_at = None, None
        run.save()
        events.run_event("incomplete")


def fail(run_id: str, fence: int, code: str, message: str) -> None:
    with locked_run(run_id, fence=fence) as (run, events):
        if run.status not in Run.TERMINAL:
            finish_failed(run, events, code, message)


def cancel(run_id: str, fence: int) -> None:
    with locked_run(run_id, fence=fence) as (run, events):
        if run.status not in Run.TERMINAL:
            finish_cancelled(run, events)


def expire(run_id: str, fence: int) -> None:
    with locked_run(run_id, fence=fence) as (run, events):
        if run.status not in Run.TERMINAL:
            finish_expired(run, events)
