"""The run flows that touch several models, each in one named function: create a run, claim it,
write its progress under the fencing token, submit tool outputs, cancel, expire.

Every state change and the events announcing it commit in one transaction, with the run row
locked, so the stored event log always agrees with `runs.retrieve`.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from agents import bus
from api_v1 import render
from api_v1 import threads as thread_flows
from api_v1 import tools as tool_rules
from api_v1.models import Assistant, Message, Run, RunEvent, RunStep, Thread
from clicky_chats import validation as v
from clicky_chats.errors import ApiError
from clicky_chats.ids import new_id, now_ns, now_seconds
from clicky_chats.scoping import get_scoped, scoped

# Statuses an agent picks up: new work, and runs to finish cancelling.
CLAIMABLE = ("queued", "in_progress", "cancelling")
MAX_ATTEMPTS = 3


class LeaseLost(Exception):
    """This agent no longer holds the run: another claimed it, or it was deleted."""


# --- events ------------------------------------------------------------------------------------


class Events:
    """Events to append to a locked run; written when the transaction's work is done."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.pending: list[tuple[str, dict[str, Any]]] = []
        # Run fields changed in this transaction that flush() saves with the event counter, in one
        # UPDATE instead of two.
        self.run_fields: set[str] = set()
        self.written = False  # the last flush inserted events

    def save_run(self, *fields: str) -> None:
        """Saves these fields of the run when the events are written (at the end of locked_run)."""
        self.run_fields.update(fields)

    def add(self, event: str, data: dict[str, Any]) -> None:
        # A copy: rendered objects share their lists with the model (a message's content), and a
        # write later in the same transaction must not change what this event said it was.
        self.pending.append((event, copy.deepcopy(data)))

    def run_event(self, status_event: str | None = None) -> None:
        self.add(f"thread.run.{status_event or self.run.status}", render.run(self.run, "rubra"))

    def flush(self, only_if: Q | None = None) -> bool:
        """Writes the pending events and the run's changed fields. With `only_if`, the run's UPDATE
        is a compare-and-set on it (False when it matched nothing)."""
        fields, self.run_fields = self.run_fields, set()
        self.written = bool(self.pending)
        if self.pending:
            start = self.run.next_event_index
            now = time.time()
            RunEvent.objects.bulk_create(
                RunEvent(run_id=self.run.id, index=start + offset, event=event, data=data, created_at=now)
                for offset, (event, data) in enumerate(self.pending)
            )
            self.run.next_event_index = start + len(self.pending)
            fields.add("next_event_index")
        if fields:
            if only_if is None and self.pending:
                Run.objects.filter(pk=self.run.id).update(**{name: getattr(self.run, name) for name in fields})
            elif only_if is None:
                self.run.save(update_fields=sorted(fields))
            elif not Run.objects.filter(only_if, pk=self.run.id).update(
                **{name: getattr(self.run, name) for name in fields}
            ):
                return False
        if self.pending:
            self.pending.clear()
            bus.publish(self.run.id)
        return True

    def flush_new(self) -> None:
        """flush() for a run not stored yet: it is inserted with its event counter already set, and
        its events announced to nobody (no stream can wait on a run before it exists)."""
        self.run.next_event_index = len(self.pending)
        self.run.save(force_insert=True)
        now = time.time()
        RunEvent.objects.bulk_create(
            RunEvent(run_id=self.run.id, index=index, event=event, data=data, created_at=now)
            for index, (event, data) in enumerate(self.pending)
        )
        self.pending.clear()


def new_step(run: Run, events: Events, kind: str, details: dict[str, Any]) -> RunStep:
    """A run step in progress, announced (created, then in_progress) in the run's event log."""
    step = RunStep.objects.create(
        id=new_id("step_"),
        project=run.project,
        run=run,
        thread_id=run.thread_id,
        assistant_id=run.assistant_id,
        created_at=now_seconds(),
        created_ns=now_ns(),
        type=kind,
        status="in_progress",
        step_details=details,
    )
    events.add("thread.run.step.created", render.run_step(step, "rubra"))
    events.add("thread.run.step.in_progress", render.run_step(step, "rubra"))
    return step


@contextlib.contextmanager
def locked_run(run_id: str, *, fence: int | None = None, project: str | None = None) -> Iterator[tuple[Run, Events]]:
    """A transaction holding the run's row. With `fence`, only the agent holding that claim gets
    in; anyone else gets LeaseLost and writes nothing."""
    with transaction.atomic():
        query = Run.objects.select_for_update().filter(pk=run_id)
        if project is not None:
            query = query.filter(project=project)
        run = query.first()
        if run is None:
            if fence is not None:
                raise LeaseLost(run_id)
            raise ApiError(f"No run found with id '{run_id}'.", status=404)
        if fence is not None and run.fence != fence:
            raise LeaseLost(run_id)
        events = Events(run)
        yield run, events
        events.flush()


# --- creating a run ----------------------------------------------------------------------------

RUN_RULES: dict[str, v.Rule] = {
    "assistant_id": v.string(nonempty=True),
    "model": v.string(nonempty=True),
    "instructions": v.string(max_length=256_000),
    "additional_instructions": v.string(max_length=256_000),
    "additional_messages": v.array(),
    "metadata": v.metadata(),
    "temperature": v.number(minimum=0, maximum=2),
    "top_p": v.number(minimum=0, maximum=1),
    "stream": v.boolean(),
    "max_prompt_tokens": v.integer(minimum=256),
    "max_completion_tokens": v.integer(minimum=256),
    "truncation_strategy": v.obj(),
    "parallel_tool_calls": v.boolean(),
    "reasoning_effort": v.string(),
}


def check_run_body(project: str, body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Validates a run request against its assistant; returns the run's fields."""
    v.check(body, RUN_RULES, required=("assistant_id",), prefix=prefix)
    assistant = get_scoped(Assistant, project, body["assistant_id"], noun="assistant", param="assistant_id")
    instructions = body["instructions"] if body.get("instructions") is not None else (assistant.instructions or "")
    if body.get("additional_instructions"):
        instructions = (
            f"{instructions}\n\n{body['additional_instructions']}" if instructions else body["additional_instructions"]
        )
    tools = (
        tool_rules.check_tools(body["tools"], f"{prefix}tools", max_items=tool_rules.MAX_RUN_TOOLS)
        if body.get("tools") is not None
        else assistant.tools
    )
    response_format = body.get("response_format", assistant.response_format)
    if response_format is not None:
        response_format = tool_rules.check_response_format(response_format, f"{prefix}response_format")
    truncation = body.get("truncation_strategy")
    if truncation is not None:
        v.check(
            truncation,
            {"type": v.string(enum=("auto", "last_messages")), "last_messages": v.integer(minimum=1)},
            required=("type",),
            prefix=f"{prefix}truncation_strategy.",
        )
        truncation = {"type": truncation["type"], "last_messages": truncation.get("last_messages")}
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        _check_tool_choice(tool_choice, tools, f"{prefix}tool_choice")
    additional = [
        thread_flows.check_new_message(item, f"{prefix}additional_messages[{index}]")
        for index, item in enumerate(body.get("additional_messages") or [])
    ]
    return {
        "assistant_id": assistant.id,
        "model": body.get("model") or assistant.model,
        "instructions": instructions,
        "tools": tools,
        "metadata": body.get("metadata") or {},
        "temperature": body["temperature"] if body.get("temperature") is not None else assistant.temperature,
        "top_p": body["top_p"] if body.get("top_p") is not None else assistant.top_p,
        "max_prompt_tokens": body.get("max_prompt_tokens"),
        "max_completion_tokens": body.get("max_completion_tokens"),
        "truncation_strategy": truncation,
        "tool_choice": tool_choice,
        # An explicit null means "not given", as the spec allows it: the column takes no NULL.
        "parallel_tool_calls": body["parallel_tool_calls"] if body.get("parallel_tool_calls") is not None else True,
        "response_format": None if response_format == "auto" else response_format,
        "reasoning_effort": body.get("reasoning_effort") or assistant.reasoning_effort,
        "_additional_messages": additional,
    }


def _check_tool_choice(choice: Any, tools: list[dict[str, Any]], param: str) -> None:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise v.invalid(param, f"'{choice}' is not one of 'none', 'auto', 'required'.")
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("function", "file_search", "code_interpreter"):
        raise v.invalid(param, "expected 'none', 'auto', 'required' or {type, function?}.")
    if choice["type"] == "function":
        name = (choice.get("function") or {}).get("name")
        names = {tool["function"]["name"] for tool in tools if tool.get("type") == "function"}
        if name not in names:
            raise v.invalid(f"{param}.function.name", f"the run has no function tool named {name!r}.")


def run_create(
    project: str, thread_id: str, fields: dict[str, Any], *, thread_event: dict[str, Any] | None = None
) -> Run:
    """Queues a run on a thread that has no active run (400 otherwise), with its first events."""
    additional = fields.pop("_additional_messages", [])
    with transaction.atomic():
        thread = thread_flows.lock_thread(project, thread_id)
        running = thread_flows.active_run(thread)
        if running is not None:
            raise ApiError(f"Thread {thread.id} already has an active run {running.id}.", param="thread_id")
        for message in additional:
            thread_flows.new_message(project, thread, message)
        now = now_seconds()
        run = Run(
            id=new_id("run_"),
            project=project,
            thread=thread,
            created_at=now,
            created_ns=now_ns(),
            status="queued",
            expires_at=now + settings.CONFIG.run_expiry_s,
            **fields,
        )
        events = Events(run)
        if thread_event is not None:
            events.add("thread.created", thread_event)
        events.run_event("created")
        events.run_event("queued")
        events.flush_new()
        bus.publish(bus.QUEUE)
    return run


def thread_and_run_create(project: str, body: dict[str, Any]) -> Run:
    """POST /threads/runs: a new thread (with its messages) and a run on it, all or nothing."""
    fields = check_run_body(project, body)
    thread_body = body.get("thread") or {}
    if not isinstance(thread_body, dict):
        raise v.invalid("thread", "expected an object.", "invalid_type")
    cleaned = thread_flows.check_thread_body(thread_body, "thread")
    with transaction.atomic():
        thread = thread_flows.thread_create(project, cleaned)
        return run_create(project, thread.id, fields, thread_event=render.thread(thread))


# --- reading -----------------------------------------------------------------------------------


def get_run(project: str, thread_id: str, run_id: str) -> Run:
    thread = get_scoped(Thread, project, thread_id, noun="thread")
    found = Run.objects.filter(thread=thread, pk=run_id).first()
    if found is None:
        raise ApiError(f"No run found with id '{run_id}'.", status=404)
    return found


def get_step(project: str, thread_id: str, run_id: str, step_id: str) -> RunStep:
    run = get_run(project, thread_id, run_id)
    found = RunStep.objects.filter(run=run, pk=step_id).first()
    if found is None:
        raise ApiError(f"No run step found with id '{step_id}'.", status=404)
    return found


def run_update(project: str, thread_id: str, run_id: str, body: dict[str, Any]) -> Run:
    v.check(body, {"metadata": v.metadata()})
    get_run(project, thread_id, run_id)
    with locked_run(run_id, project=project) as (run, _events):
        if body.get("metadata") is not None:
            run.metadata = body["metadata"]
            run.save(update_fields=["metadata"])
    return run


# --- claiming (agents) -------------------------------------------------------------------------


def claim_runs(
    owner: str, capacity: int, lease_s: float, begin: Callable[[Run, Events], None] | None = None
) -> list[Run]:
    """Claims up to `capacity` runs whose lease is free, inside the caller's transaction; returns
    them as now stored, each with its new fencing token and attempt count. `begin`, given, starts
    each run's work in the same transaction: what it changes of the run is written with the claim,
    in one UPDATE, and the events it adds with it.

    The claim is a compare-and-set on the fencing token, so two agents racing for one run cannot
    both win; on PostgreSQL, SKIP LOCKED keeps them from even queueing on the same rows (and the
    rows stay locked until the caller commits). The thread comes along: beginning a run needs it."""
    now = time.time()
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    candidates = Run.objects.filter(free, status__in=CLAIMABLE).select_related("thread").order_by("created_ns")
    if connection.vendor == "postgresql":
        candidates = candidates.select_for_update(skip_locked=True, of=("self",))
    claimed: list[Run] = []
    for run in list(candidates[:capacity]):
        seen_fence = run.fence
        run.lease_owner, run.lease_expires_at = owner, now + lease_s
        run.fence, run.attempts = seen_fence + 1, run.attempts + 1
        events = Events(run)
        events.save_run("lease_owner", "lease_expires_at", "fence", "attempts")
        if begin is not None:
            begin(run, events)
        if events.flush(only_if=Q(free, fence=seen_fence, status__in=CLAIMABLE)):
            claimed.append(run)
        elif events.written:  # lost the compare-and-set after writing events: undo it all
            raise LeaseLost(run.id)
    return claimed


def run_renew(run_id: str, fence: int, lease_s: float) -> str:
    """Extends the lease; returns the run's status. Raises LeaseLost if the claim is gone."""
    updated = Run.objects.filter(pk=run_id, fence=fence).update(lease_expires_at=time.time() + lease_s)
    if not updated:
        raise LeaseLost(run_id)
    status = Run.objects.filter(pk=run_id).values_list("status", flat=True).first()
    if status is None:
        raise LeaseLost(run_id)
    return status


def run_status(run_id: str, fence: int) -> str:
    """The run's status, read only; raises LeaseLost if this claim is gone (a newer fence)."""
    found = Run.objects.filter(pk=run_id).values_list("status", "fence").first()
    if found is None or found[1] != fence:
        raise LeaseLost(run_id)
    return found[0]


def run_release(run_id: str, fence: int) -> None:
    """Gives the run back without finishing it, so another agent can take it at once."""
    Run.objects.filter(pk=run_id, fence=fence).update(lease_owner=None, lease_expires_at=None)


# --- client actions ----------------------------------------------------------------------------


def open_tool_step(run: Run) -> RunStep | None:
    """The run's newest tool_calls step still in progress, locked (call with the run locked)."""
    return (
        RunStep.objects.select_for_update()
        .filter(run=run, type="tool_calls", status="in_progress")
        .order_by("-created_ns")
        .first()
    )


def run_submit_tool_outputs(project: str, thread_id: str, run_id: str, body: dict[str, Any]) -> tuple[Run, int]:
    """Records one output per pending call and queues the run again. Returns the run and the
    index of the first event this submission adds (where its stream starts)."""
    v.check(body, {"tool_outputs": v.array(), "stream": v.boolean()}, required=("tool_outputs",))
    get_run(project, thread_id, run_id)
    with locked_run(run_id, project=project) as (run, events):
        if run.status != "requires_action" or not run.required_action:
            raise ApiError(f"Runs in status '{render.run(run)['status']}' do not accept tool outputs.", param="run_id")
        pending = [call["id"] for call in run.required_action["submit_tool_outputs"]["tool_calls"]]
        outputs: dict[str, str] = {}
        for index, item in enumerate(body["tool_outputs"]):
            where = f"tool_outputs[{index}]"
            if not isinstance(item, dict) or not isinstance(item.get("tool_call_id"), str):
                raise v.invalid(where, "expected an object with a tool_call_id.", "invalid_type")
            call_id = item["tool_call_id"]
            output = item.get("output", "")
            if not isinstance(output, str):
                raise v.invalid(f"{where}.output", "expected a string.", "invalid_type")
            if call_id not in pending:
                raise v.invalid(f"{where}.tool_call_id", f"no pending tool call with id '{call_id}'.")
            if call_id in outputs:
                raise v.invalid(f"{where}.tool_call_id", f"tool call '{call_id}' has more than one output.")
            outputs[call_id] = output
        missing = [call_id for call_id in pending if call_id not in outputs]
        if missing:
            raise v.invalid(
                "tool_outputs", f"expected an output for every pending tool call; missing {', '.join(missing)}."
            )
        start = run.next_event_index
        now = now_seconds()
        step = open_tool_step(run)
        if step is not None:
            calls = step.step_details.get("tool_calls", [])
            for call in calls:
                if call.get("type") == "function" and call.get("id") in outputs:
                    call["function"]["output"] = outputs[call["id"]]
            step.status, step.completed_at = "completed", now
            step.save(update_fields=["step_details", "status", "completed_at"])
            events.add("thread.run.step.completed", render.run_step(step, "rubra"))
        requeue(run, events)
    return run, start


def run_confirm(project: str, thread_id: str, run_id: str, body: dict[str, Any]) -> tuple[Run, int]:
    """A person approves or denies the server-side call the run waits on; the run goes on either
    way (a denied call tells the model the user said no). Returns the run and where its stream
    picks up."""
    v.check(body, {"confirmation": v.obj(), "stream": v.boolean()}, required=("confirmation",))
    decision = body["confirmation"]
    v.check(
        decision,
        {"tool_call_id": v.string(nonempty=True), "confirmation": v.boolean()},
        required=("tool_call_id", "confirmation"),
        prefix="confirmation.",
    )
    get_run(project, thread_id, run_id)
    with locked_run(run_id, project=project) as (run, events):
        waiting = (run.required_action or {}).get("x-confirm") or {}
        if run.status != "requires_confirmation" or not waiting:
            raise ApiError(f"Run {run_id} is not waiting for a confirmation (status '{run.status}').", param="run_id")
        if decision["tool_call_id"] != waiting.get("id"):
            raise v.invalid("confirmation.tool_call_id", f"the run waits on tool call '{waiting.get('id')}'.")
        step = open_tool_step(run)
        if step is not None:
            for call in step.step_details.get("tool_calls", []):
                if call.get("id") == waiting["id"]:
                    call["x-confirmation"] = decision["confirmation"]
            step.save(update_fields=["step_details"])
        # Recorded with the decision, so it comes before whatever the agent then does with it.
        from api_rubrax.tool_events import record

        record(
            step.id if step else run.id,
            "callConfirm",
            {"tool_call_id": waiting["id"], "run_id": run.id, "confirmed": decision["confirmation"]},
        )
        start = run.next_event_index
        requeue(run, events)
    return run, start


def requeue(run: Run, events: Events) -> None:
    """Queues a run again once the client has answered it. A fresh stretch of work, so the count
    of claims that gives up on a run its agents keep dying on starts again: otherwise a run with
    MAX_ATTEMPTS rounds of tool calls would fail as if interrupted."""
    run.status, run.required_action, run.attempts = "queued", None, 0
    run.save(update_fields=["status", "required_action", "attempts"])
    events.run_event("queued")
    bus.publish(bus.QUEUE)


def run_cancel(project: str, thread_id: str, run_id: str) -> Run:
    get_run(project, thread_id, run_id)
    with locked_run(run_id, project=project) as (run, events):
        if run.status not in ("queued", "in_progress", "requires_action", "requires_confirmation"):
            raise ApiError(f"Cannot cancel run with status '{render.run(run)['status']}'.", param="run_id")
        held = run.lease_expires_at is not None and run.lease_expires_at > time.time()
        run.status = "cancelling"
        run.save(update_fields=["status"])
        events.run_event("cancelling")
        if held:
            bus.publish(bus.cancel_key(run.id))  # its agent stops the work now, not at its next heartbeat
        else:
            finish_cancelled(run, events)  # no agent holds it, so nobody else will finish it
    return run


# --- endings (called with the run locked) ------------------------------------------------------


def close_open_work(run: Run, events: Events, *, step_status: str, message_reason: str | None) -> None:
    """Ends the run's unfinished messages and steps along with it: each message before its step,
    the order in which a finished turn closes them too."""
    now = now_seconds()
    for message in Message.objects.filter(run_id=run.id, status="in_progress").order_by("created_ns"):
        message.status, message.incomplete_at = "incomplete", now
        message.incomplete_details = {"reason": message_reason} if message_reason else None
        message.save()
        events.add("thread.message.incomplete", render.message(message))
    stamp = {"cancelled": "cancelled_at", "failed": "failed_at", "expired": "expired_at"}.get(step_status)
    for step in RunStep.objects.filter(run=run, status="in_progress").order_by("created_ns"):
        step.status = step_status
        if stamp:
            setattr(step, stamp, now)
        if step_status == "failed":
            step.last_error = run.last_error
        step.save()
        events.add(f"thread.run.step.{step_status}", render.run_step(step, "rubra"))


def finish_cancelled(run: Run, events: Events) -> None:
    close_open_work(run, events, step_status="cancelled", message_reason="run_cancelled")
    run.status, run.cancelled_at = "cancelled", now_seconds()
    run.required_action = None
    run.lease_owner, run.lease_expires_at = None, None
    run.save()
    events.run_event("cancelled")


def finish_failed(run: Run, events: Events, code: str, message: str) -> None:
    run.last_error = {"code": code, "message": message}
    close_open_work(run, events, step_status="failed", message_reason="run_failed")
    run.status, run.failed_at = "failed", now_seconds()
    run.required_action = None
    run.lease_owner, run.lease_expires_at = None, None
    run.save()
    events.run_event("failed")


def finish_expired(run: Run, events: Events) -> None:
    close_open_work(run, events, step_status="expired", message_reason="run_expired")
    run.status = "expired"
    run.required_action = None
    run.lease_owner, run.lease_expires_at = None, None
    run.save()
    events.run_event("expired")


def expire_overdue(now: int | None = None) -> int:
    """Expires runs past `expires_at` that no agent holds (waiting on the client, or orphaned)."""
    now = now or now_seconds()
    overdue = Run.objects.filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=time.time()),
        status__in=Run.ACTIVE,
        expires_at__lt=now,
    ).values_list("id", flat=True)[:100]
    expired = 0
    for run_id in list(overdue):
        with locked_run(run_id) as (run, events):
            if run.status in Run.ACTIVE and not (run.lease_expires_at and run.lease_expires_at > time.time()):
                finish_expired(run, events)
                expired += 1
    return expired


def scoped_runs(project: str, thread_id: str) -> Any:
    thread = get_scoped(Thread, project, thread_id, noun="thread")
    return scoped(Run, project).filter(thread=thread)
