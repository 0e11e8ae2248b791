"""Runs and run steps. Plain async views, since create, create-and-run and submit_tool_outputs may
answer with a stream; the flows live in agents/runs.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from agents import bus
from agents import runs as flows
from api_v1 import dialect, render
from api_v1.models import Run, RunEvent, RunStep
from clicky_chats import validation as v
from clicky_chats.pagination import page_params, paginate
from clicky_chats.sse import frame
from clicky_chats.views import api_endpoint, json_ok

# A stream ends after the event that hands control back to the client, or a terminal one.
STREAM_ENDS = frozenset(
    f"thread.run.{status}"
    for status in (
        "requires_action",
        "requires_confirmation",
        "completed",
        "failed",
        "cancelled",
        "expired",
        "incomplete",
    )
)
PAUSES = frozenset(("thread.run.requires_action", "thread.run.requires_confirmation"))
KEEP_ALIVE_S = 15.0
# Sent with unfinished runs, as OpenAI does: the SDK's poll helpers wait this long between looks
# instead of their default whole second.
POLL_AFTER_MS = 200
DONE = b"event: done\ndata: [DONE]\n\n"


def tier_of(request: HttpRequest) -> str:
    return "rubra" if getattr(request, "api_tier", "v1") == "rubra" else "v1"


def include_of(request: HttpRequest) -> frozenset[str]:
    return frozenset(request.GET.getlist("include[]") + request.GET.getlist("include"))


def _events_from(run_id: str, index: int) -> list[tuple[int, str, Any]]:
    return list(
        RunEvent.objects.filter(run_id=run_id, index__gte=index).order_by("index").values_list("index", "event", "data")
    )


def _run_exists(run_id: str) -> bool:
    return Run.objects.filter(pk=run_id).exists()


async def run_event_stream(
    run_id: str, start: int, tier: str, *, stop_at_pause: bool = True, version: str = "v2", replay: bool = False
) -> AsyncIterator[bytes]:
    """The run's stored events from `start` as SSE, live: it waits for the agent (in this process
    or another) to write more, until the run pauses for the client or ends. `version` is the
    Assistants dialect the client speaks."""
    bus.start_pg_listener()
    waiter = bus.Waiter(run_id)
    # Without LISTEN/NOTIFY (SQLite, agents in another process) new events are found by polling.
    poll_s = 1.0 if connection.vendor == "postgresql" else 0.05
    index = start
    quiet_s = 0.0
    try:
        while True:
            events = await sync_to_async(_events_from)(run_id, index)
            for position, (event_index, event, data) in enumerate(events):
                index = event_index + 1
                visible = render.event_for_tier(event, data, tier)
                if visible is not None:
                    name = event
                    if version == dialect.V1:
                        name, visible = dialect.event_v1(event, visible)
                    yield frame(visible, name)
                # A pause this tier cannot see (requires_confirmation on /v1) is no end: to its
                # client the run is still working, so the stream goes on when it does.
                if stop_at_pause and event in STREAM_ENDS and visible is not None:
                    # A replay goes past a pause the run has since moved on from.
                    moved_on = event in PAUSES and (
                        position < len(events) - 1 or await sync_to_async(_events_from)(run_id, index)
                    )
                    if not (replay and moved_on):
                        yield DONE
                        return
            if events:
                quiet_s = 0.0
                continue
            if not await waiter.wait(poll_s):
                quiet_s += poll_s
                if quiet_s >= KEEP_ALIVE_S:
                    quiet_s = 0.0
                    if not await sync_to_async(_run_exists)(run_id):
                        yield frame(
                            {
                                "error": {
                                    "message": f"Run {run_id} was deleted.",
                                    "type": "invalid_request_error",
                                    "param": None,
                                    "code": None,
                                }
                            },
                            "error",
                        )
                        return
                    yield b": keep-alive\n\n"
    finally:
        waiter.close()


def run_response(run: Run, tier: str, version: str = "v2") -> HttpResponse:
    response = json_ok(dialect.run(run, tier, version))
    if run.status in Run.ACTIVE:
        response["openai-poll-after-ms"] = str(POLL_AFTER_MS)
    return response


def sse_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def request_body(project: str, body: dict[str, Any], version: str) -> dict[str, Any]:
    """A run request in the v2 form the run flows check (v1's tools and file_ids translated)."""
    return dialect.v1_run_body(project, body) if version == dialect.V1 else body


@api_endpoint("GET", "POST")
async def runs(request: HttpRequest, thread_id: str) -> HttpResponseBase:
    project, tier, version = request.project, tier_of(request), dialect.version_of(request)
    if request.method == "GET":
        params = page_params(request.GET)
        page = await sync_to_async(
            lambda: paginate(flows.scoped_runs(project, thread_id), params, lambda run: dialect.run(run, tier, version))
        )()
        return json_ok(page)
    body = v.read_json(request)

    def create() -> Run:
        fields = flows.check_run_body(project, request_body(project, body, version))
        return flows.run_create(project, thread_id, fields)

    run = await sync_to_async(create)()
    if body.get("stream") is True:
        return sse_response(run_event_stream(run.id, 0, tier, version=version))
    return run_response(run, tier, version)


@api_endpoint("POST")
async def thread_and_run(request: HttpRequest) -> HttpResponseBase:
    project, tier, version = request.project, tier_of(request), dialect.version_of(request)
    body = v.read_json(request)
    run = await sync_to_async(lambda: flows.thread_and_run_create(project, request_body(project, body, version)))()
    if body.get("stream") is True:
        return sse_response(run_event_stream(run.id, 0, tier, version=version))
    return run_response(run, tier, version)


@api_endpoint("GET", "POST")
async def run_detail(request: HttpRequest, thread_id: str, run_id: str) -> HttpResponse:
    project, tier, version = request.project, tier_of(request), dialect.version_of(request)
    if request.method == "GET":
        return run_response(await sync_to_async(flows.get_run)(project, thread_id, run_id), tier, version)
    body = v.read_json(request)
    return run_response(await sync_to_async(flows.run_update)(project, thread_id, run_id, body), tier, version)


@api_endpoint("POST")
async def run_cancel(request: HttpRequest, thread_id: str, run_id: str) -> HttpResponse:
    run = await sync_to_async(flows.run_cancel)(request.project, thread_id, run_id)
    return run_response(run, tier_of(request), dialect.version_of(request))


@api_endpoint("POST")
async def run_submit_tool_outputs(request: HttpRequest, thread_id: str, run_id: str) -> HttpResponseBase:
    tier, version = tier_of(request), dialect.version_of(request)
    body = v.read_json(request)
    run, start = await sync_to_async(flows.run_submit_tool_outputs)(request.project, thread_id, run_id, body)
    if body.get("stream") is True:
        return sse_response(run_event_stream(run.id, start, tier, version=version))
    return run_response(run, tier, version)


@api_endpoint("GET")
async def run_steps(request: HttpRequest, thread_id: str, run_id: str) -> HttpResponse:
    project, tier, include = request.project, tier_of(request), include_of(request)
    version = dialect.version_of(request)
    params = page_params(request.GET)

    def page() -> dict[str, Any]:
        run = flows.get_run(project, thread_id, run_id)
        steps = RunStep.objects.filter(run=run)
        return paginate(steps, params, lambda step: dialect.run_step(step, tier, version, include))

    return json_ok(await sync_to_async(page)())


@api_endpoint("GET")
async def run_step_detail(request: HttpRequest, thread_id: str, run_id: str, step_id: str) -> HttpResponse:
    step = await sync_to_async(flows.get_step)(request.project, thread_id, run_id, step_id)
    return json_ok(dialect.run_step(step, tier_of(request), dialect.version_of(request), include_of(request)))
