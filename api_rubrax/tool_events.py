"""The event log of tool calls: written as a call runs, read as a list or a live stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, transaction
from django.db.models import Max

from agents import bus
from api_rubrax.models import ToolEvent
from clicky_chats.sse import frame

CALL_EVENT_TYPES = ("callStart", "callProgress", "callChat", "callConfirm", "callFinish")


def record(subject_id: str, event_type: str, data: dict[str, Any]) -> ToolEvent:
    """Appends an event for a step or a tool run; indexes are dense and ordered per subject."""
    for _attempt in range(5):
        try:
            with transaction.atomic():
                top = ToolEvent.objects.filter(subject_id=subject_id).aggregate(top=Max("index"))["top"]
                event = ToolEvent.objects.create(
                    subject_id=subject_id,
                    index=0 if top is None else top + 1,
                    type=event_type,
                    data=data,
                    time=time.time(),
                )
                bus.publish(f"tool:{subject_id}")
                return event
        except IntegrityError:  # two writers took the same index; the loser tries again
            continue
    raise RuntimeError(f"could not record a tool event for {subject_id}")


def render(event: ToolEvent) -> dict[str, Any]:
    return {"object": "tool.event", "index": event.index, "type": event.type, "time": event.time, **event.data}


def events_from(subject_id: str, index: int) -> list[dict[str, Any]]:
    return [render(e) for e in ToolEvent.objects.filter(subject_id=subject_id, index__gte=index).order_by("index")]


def emitter(subject_id: str, extra: dict[str, Any] | None = None) -> Callable[..., Any]:
    """An async `emit(type, **data)` for the tool runner that records into this subject's log."""

    async def emit(event_type: str, **data: Any) -> None:
        await sync_to_async(record)(subject_id, event_type, {**(extra or {}), **_jsonable(data)})

    return emit


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(data, default=str))


async def live(subject_id: str, index: int, is_done: Callable[[], Any], poll_s: float = 0.1) -> AsyncIterator[bytes]:
    """SSE of the subject's events from `index`, live until `is_done()` says the calls are over;
    ends with `data: [DONE]`."""
    waiter = bus.Waiter(f"tool:{subject_id}")
    try:
        while True:
            events = await sync_to_async(events_from)(subject_id, index)
            for event in events:
                index = event["index"] + 1
                yield frame(event)
            if not events:
                if await sync_to_async(is_done)():
                    events = await sync_to_async(events_from)(subject_id, index)
                    for event in events:
                        yield frame(event)
                    yield b"data: [DONE]\n\n"
                    return
                await waiter.wait(poll_s)
    finally:
        waiter.close()
