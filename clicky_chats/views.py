"""Plain async views' shared plumbing, and the service endpoints outside the API tiers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from clicky_chats.errors import ApiError

log = logging.getLogger("clicky_chats.views")

AsyncView = Callable[..., Awaitable[HttpResponseBase]]


def api_endpoint(*methods: str) -> Callable[[AsyncView], AsyncView]:
    """Marks a plain async API view: the allowed methods, and ApiError answered in the envelope
    right here (not through the middleware's exception hook, which would cost a thread hop)."""
    allowed = frozenset(methods)

    def decorate(view: AsyncView) -> AsyncView:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if request.method not in allowed:
                response = ApiError(f"Method {request.method} is not allowed on this path.", status=405).response()
                response["Allow"] = ", ".join(sorted(allowed))
                return response
            try:
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()

        wrapper.csrf_exempt = True  # type: ignore[attr-defined]
        return wrapper

    return decorate


def json_ok(data: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json")


async def not_found_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return ApiError(f"Unknown request URL: {request.method} {request.path}.", status=404, code="unknown_url").response()


def _ping_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def healthz(request: HttpRequest) -> HttpResponse:
    try:
        await sync_to_async(_ping_database)()
    except Exception as exc:  # any database failure means unhealthy
        log.error("health check failed: %s", exc)
        return json_ok({"status": "error", "database": "unreachable"}, status=503)
    return json_ok({"status": "ok", "database": "ok"})
