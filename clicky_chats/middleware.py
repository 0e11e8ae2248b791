"""The one middleware on the API path: request ids, the body limit, bearer auth and the error envelope.

It is written async-native (no MiddlewareMixin thread hop) because it runs on the chat proxy's hot
path. Admin requests get Django's session/auth/messages stack, which the API never needs.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponseBase

from clicky_chats import auth
from clicky_chats.errors import ApiError

log = logging.getLogger("clicky_chats.request")

# Paths under /v1 anyone may read: the API's own description.
PUBLIC_PATHS = ("/v1/openapi.yaml", "/v1/docs")
# Where a body is a file upload, which may be as large as a file (CLICKY_CHATS_MAX_FILE_BYTES).
FILE_UPLOAD_PATH = re.compile(r"^/v1/(?:rubra/)?(?:files|uploads/[^/]+/parts)$")


MULTIPART_HEADROOM = 64 * 1024


def body_limit(path: str) -> tuple[int, str]:
    """The most bytes a request body to `path` may have, and the variable that sets it."""
    config = settings.CONFIG
    if FILE_UPLOAD_PATH.match(path) and config.max_file_bytes > config.max_request_bytes:
        # Room for the multipart framing around a file of exactly the limit; the file's own size
        # is held to the limit by the upload handler (api_v1/files.py).
        return config.max_file_bytes + MULTIPART_HEADROOM, "CLICKY_CHATS_MAX_FILE_BYTES"
    return config.max_request_bytes, "CLICKY_CHATS_MAX_REQUEST_BYTES"


def api_tier(path: str) -> str | None:
    """Which API tier a path belongs to, or None when it is not an API path."""
    if path.startswith("/v1/rubra/x/") or path == "/v1/rubra/x":
        return "rubrax"
    if path.startswith("/v1/rubra/") or path == "/v1/rubra":
        return "rubra"
    if path.startswith("/v1/") or path == "/v1":
        return "v1"
    return None


class ApiMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.admin_chain = SessionMiddleware(AuthenticationMiddleware(MessageMiddleware(get_response)))
        self.ring = auth.KeyRing()
        if not settings.CONFIG.api_keys:
            log.debug("no API keys in CLICKY_CHATS_API_KEYS; keys made with createapikey still apply")

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        request_id = _start(request)
        early = self._check_limits(request)
        if early is None and request.api_tier and not request.path_info.startswith(PUBLIC_PATHS):
            token = auth.bearer_token(request.headers.get("Authorization", ""))
            project = auth.resolve_fast(self.ring, token) or auth.resolve_slow(self.ring, token)
            early = self._authorize(request, project)
        if early is not None:
            return _finish(early, request_id)
        handler = self.admin_chain if request.path_info.startswith("/admin") else self.get_response
        return _finish(handler(request), request_id)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        request_id = _start(request)
        early = self._check_limits(request)
        if early is None and request.api_tier and not request.path_info.startswith(PUBLIC_PATHS):
            token = auth.bearer_token(request.headers.get("Authorization", ""))
            project = auth.resolve_fast(self.ring, token)
            if project is None:
                project = await sync_to_async(auth.resolve_slow)(self.ring, token)
            early = self._authorize(request, project)
        if early is not None:
            return _finish(early, request_id)
        if request.path_info.startswith("/admin"):
            return _finish(await self.admin_chain(request), request_id)
        return _finish(await self.get_response(request), request_id)

    def _check_limits(self, request: HttpRequest) -> HttpResponseBase | None:
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            declared = int(length)
        except ValueError:
            return ApiError("Content-Length is not a number.", status=400).response()
        limit, variable = body_limit(request.path_info)
        if declared > limit:
            return _too_large(limit, variable).response()
        return _refuse_nul(request)

    def _authorize(self, request: HttpRequest, project: str | None) -> HttpResponseBase | None:
        if project is None:
            has_header = bool(request.headers.get("Authorization"))
            message = (
                "Incorrect API key provided. You can make a key with `manage.py createapikey`."
                if has_header
                else "You didn't provide an API key. Send it in the Authorization header as 'Bearer YOUR_KEY'."
            )
            return ApiError(message, status=401, code="invalid_api_key").response()
        request.project = project
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        if isinstance(exception, ApiError):
            return exception.response()
        if isinstance(exception, RequestDataTooBig):  # Django's own check, at DATA_UPLOAD_MAX_MEMORY_SIZE
            return _too_large(settings.CONFIG.max_request_bytes, "CLICKY_CHATS_MAX_REQUEST_BYTES").response()
        # Django's own answers to these would be HTML pages (and a 404 from the static files view
        # names the path on disk); they are the client's mistakes, not server errors.
        if isinstance(exception, Http404):
            return ApiError(
                f"Unknown request URL: {request.method} {request.path}.", status=404, code="unknown_url"
            ).response()
        if isinstance(exception, PermissionDenied):
            return ApiError("You are not allowed to do this.", status=403).response()
        if isinstance(exception, BadRequest | SuspiciousOperation):
            return ApiError("The request is malformed.", status=400).response()
        if getattr(request, "api_tier", None) is None and settings.DEBUG:
            return None  # outside the API, let Django's debug page show it
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError("The server had an error while processing your request.", status=500).response()


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RequestBodyLimit:
    """ASGI wrapper: refuses a body over its `body_limit` while it arrives.

    Django's ASGI handler reads the whole body (to a temporary file) before any middleware runs,
    so a client could otherwise fill the disk with one upload, declared or chunked. A declared
    Content-Length over the limit is answered before a byte of the body is read; a body without
    one is counted as it comes and cut off at the limit. Either way the connection is closed,
    since the rest of the body would still be on its way.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, variable = body_limit(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length":
                # The server delivers no more than a declared length; a bad number is the
                # middleware's 400.
                if value.isdigit() and int(value) > limit:
                    await _send_too_large(send, limit, variable)
                    return
                await self.app(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    await _send_too_large(send, limit, variable)
                    return {"type": "http.disconnect"}  # Django stops reading and answers nothing
            return message

        await self.app(scope, counting_receive, send)


async def _send_too_large(send: Send, limit: int, variable: str) -> None:
    body = orjson.dumps(_too_large(limit, variable).body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", ("req_" + uuid.uuid4().hex).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _refuse_nul(request: HttpRequest) -> HttpResponseBase | None:
    """A NUL character (%00) in the path or the query string: PostgreSQL cannot take it in any text
    parameter, so every lookup by such an id or cursor would fail there as a 500 (SQLite took it)."""
    if "\x00" in request.path_info:
        return ApiError(
            "Invalid value in the URL path: it cannot contain the NUL character (%00).",
            status=400,
            param="path",
            code="invalid_value",
        ).response()
    if "%00" in request.META.get("QUERY_STRING", ""):
        name = next((key for key, values in request.GET.lists() if "\x00" in key + "".join(values)), "query")
        return ApiError(
            f"Invalid value for '{name}': it cannot contain the NUL character (%00).",
            status=400,
            param=name,
            code="invalid_value",
        ).response()
    return None


def _too_large(limit: int, variable: str) -> ApiError:
    return ApiError(
        f"Request body is larger than the limit of {limit} bytes ({variable}).",
        status=413,
        code="request_too_large",
    )


def _start(request: HttpRequest) -> str:
    request_id = "req_" + uuid.uuid4().hex
    request.request_id = request_id
    request.api_tier = api_tier(request.path_info)
    request.project = None
    return request_id


def _finish(response: HttpResponseBase, request_id: str) -> HttpResponseBase:
    response["x-request-id"] = request_id
    return response
