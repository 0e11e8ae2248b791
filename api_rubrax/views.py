"""/v1/rubra/x: x-tools, tool runs, the thread list, run event streams, step events, confirmation.
CRUD over DRF; anything that may stream is a plain async view."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponseBase
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from agents import runs as run_flows
from api_rubrax import tool_events, tool_runs, xtools
from api_rubrax.models import XTool
from api_v1 import render
from api_v1.assistant_views import body_of
from api_v1.models import Run, Thread
from api_v1.run_views import DONE, run_event_stream, sse_response
from clicky_chats import validation as v
from clicky_chats.pagination import page_params, paginate
from clicky_chats.scoping import get_scoped, scoped
from clicky_chats.views import api_endpoint, json_ok


class ToolViewSet(viewsets.ViewSet):
    schema = None  # described by clicky_chats/schema.py's table

    def list(self, request: Request) -> Response:
        return Response(paginate(scoped(XTool, request.project), page_params(request.query_params), xtools.render_tool))

    def create(self, request: Request) -> Response:
        return Response(xtools.render_tool(xtools.tool_create(request.project, body_of(request))))

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(xtools.render_tool(get_scoped(XTool, request.project, pk, noun="tool")))

    def update(self, request: Request, pk: str) -> Response:
        return Response(xtools.render_tool(xtools.tool_update(request.project, pk, body_of(request))))

    def destroy(self, request: Request, pk: str) -> Response:
        get_scoped(XTool, request.project, pk, noun="tool").delete()
        return Response({"id": pk, "object": "tool.deleted", "deleted": True})

    def inspect(self, request: Request) -> Response:
        return Response(xtools.inspect_tools(body_of(request)))


class ThreadListViewSet(viewsets.ViewSet):
    """Every thread of the project, newest first: the OpenAI API has no thread list."""

    schema = None  # described by clicky_chats/schema.py's table

    def list(self, request: Request) -> Response:
        page = paginate(scoped(Thread, request.project), page_params(request.query_params), render.thread)
        return Response(page)


@api_endpoint("POST")
async def tool_run(request: HttpRequest) -> HttpResponseBase:
    body = v.read_json(request)
    project = request.project
    run, needs_confirmation = await sync_to_async(tool_runs.start)(project, body)
    return await _run_or_stream(project, run.id, body.get("stream") is True, needs_confirmation)


@api_endpoint("POST")
async def tool_run_confirm(request: HttpRequest, run_id: str) -> HttpResponseBase:
    body = v.read_json(request)
    v.check(body, {"confirmation": v.boolean(), "stream": v.boolean()}, required=("confirmation",))
    project = request.project
    run = await sync_to_async(tool_runs.confirm)(project, run_id, body["confirmation"])
    return await _run_or_stream(project, run.id, body.get("stream") is True, run.status != "in_progress")


async def _run_or_stream(project: str, run_id: str, stream: bool, idle: bool) -> HttpResponseBase:
    """Runs the tool now unless it waits for confirmation or is over; answers the result, or
    streams its events."""
    if stream:
        import asyncio

        task = None if idle else asyncio.ensure_future(tool_runs.execute(project, run_id))

        async def events() -> Any:
            try:
                async for chunk in tool_events.live(run_id, 0, lambda: idle or tool_runs.is_finished(run_id)):
                    yield chunk
            finally:
                if task is not None:
                    await task  # the tool finishes even if the client leaves

        return sse_response(events())
    run = await (sync_to_async(_get_run)(project, run_id) if idle else tool_runs.execute(project, run_id))
    return json_ok(tool_runs.render(run))


def _get_run(project: str, run_id: str) -> Any:
    from api_rubrax.models import ToolRun

    return get_scoped(ToolRun, project, run_id, noun="tool run")


def _index(request: HttpRequest) -> int:
    raw = request.GET.get("index") or "0"
    try:
        index = int(raw)
    except ValueError:
        raise v.invalid("index", f"expected a whole number, got {raw!r}.", "invalid_type") from None
    if index < 0:
        raise v.invalid("index", "must be 0 or more.")
    return index


@api_endpoint("GET")
async def run_stream(request: HttpRequest, thread_id: str, run_id: str) -> HttpResponseBase:
    """The run's stored events from `index` as SSE: a replay, then live while the run goes on."""
    index = _index(request)
    run = await sync_to_async(run_flows.get_run)(request.project, thread_id, run_id)
    if index > run.next_event_index:
        # Nothing there yet, and the stream would miss the end of the run it waited past.
        raise v.invalid("index", f"the run has {run.next_event_index} events so far.")
    if index == run.next_event_index and run.status in Run.TERMINAL:
        return sse_response(_only_done())  # all said: nothing more will come
    return sse_response(run_event_stream(run_id, index, "rubra", replay=True))


async def _only_done() -> AsyncIterator[bytes]:
    yield DONE


@api_endpoint("GET")
async def step_events(request: HttpRequest, thread_id: str, run_id: str, step_id: str) -> HttpResponseBase:
    index = _index(request)
    step = await sync_to_async(run_flows.get_step)(request.project, thread_id, run_id, step_id)
    if request.GET.get("stream") in ("true", "1"):
        return sse_response(tool_events.live(step.id, index, lambda: _step_over(step.id)))
    events = await sync_to_async(tool_events.events_from)(step.id, index)
    return json_ok({"object": "list", "data": events, "first_id": None, "last_id": None, "has_more": False})


def _step_over(step_id: str) -> bool:
    from api_v1.models import RunStep

    return RunStep.objects.filter(pk=step_id).exclude(status="in_progress").exists()


@api_endpoint("POST")
async def run_confirm(request: HttpRequest, thread_id: str, run_id: str) -> HttpResponseBase:
    """Approves or denies the tool call a run waits on; with `stream`, follows the run from there."""
    body = v.read_json(request)
    run, start = await sync_to_async(run_flows.run_confirm)(request.project, thread_id, run_id, body)
    if body.get("stream") is True:
        return sse_response(run_event_stream(run.id, start, "rubra"))
    return json_ok(render.run(run, "rubra"))
