"""The model upstream: one pooled aiohttp client per event loop, and the relays the proxy views use.

aiohttp rather than httpx: on our 2-core machines httpx's AsyncClient added 4-5 ms per proxied
request against aiohttp's ~0.8 ms, and cut throughput 4x (performance-and-reliability.md, A5).

The upstream base URL and key come only from configuration; a request body never chooses where
a call goes or which key it carries (LiteLLM CVE-2024-6587).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse

from clicky_chats.errors import ApiError, envelope, error_type_for
from clicky_chats.sse import EventCutter

log = logging.getLogger("clicky_chats.upstream")

_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()
# Headers of an upstream answer worth handing to the client: the SDK reads the retry ones.
RELAYED_HEADERS = (
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "openai-processing-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    found = _sessions.get(loop)
    if found is None or found.closed:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300)
        found = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )
        _sessions[loop] = found
    return found


def upstream_url(path: str) -> str:
    return f"{settings.CONFIG.model_base_url}/{path.lstrip('/')}"


def _auth_headers() -> dict[str, str]:
    headers = {"Accept-Encoding": "identity", "User-Agent": "clicky-chats"}
    if settings.CONFIG.model_api_key:
        headers["Authorization"] = f"Bearer {settings.CONFIG.model_api_key}"
    return headers


def _timeout(streaming: bool) -> aiohttp.ClientTimeout:
    seconds = settings.CONFIG.model_timeout_s
    if streaming:
        # A stream may run long; what must not happen is a silence longer than the timeout.
        return aiohttp.ClientTimeout(total=None, connect=min(seconds, 30.0), sock_read=seconds)
    return aiohttp.ClientTimeout(total=seconds, connect=min(seconds, 30.0))


def unreachable(exc: BaseException) -> ApiError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return ApiError(
            f"The model upstream did not answer within {settings.CONFIG.model_timeout_s:g} s "
            "(CLICKY_CHATS_MODEL_TIMEOUT_S).",
            status=504,
            code="upstream_timeout",
        )
    reason = str(exc) or type(exc).__name__
    return ApiError(
        f"Could not reach the model upstream at {settings.CONFIG.model_base_url}: {reason}",
        status=502,
        code="upstream_unreachable",
    )


async def open_upstream(
    method: str,
    path: str,
    *,
    body: bytes | None,
    content_type: str | None,
    streaming: bool,
    params: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """Sends the request and returns the response with its body unread. Raises ApiError 502/504."""
    headers = _auth_headers()
    if content_type:
        headers["Content-Type"] = content_type
    try:
        return await session().request(
            method, upstream_url(path), data=body, headers=headers, params=params, timeout=_timeout(streaming)
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise unreachable(exc) from None


def relayed_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {name: upstream.headers[name] for name in RELAYED_HEADERS if name in upstream.headers}


def upstream_error_body(status: int, raw: bytes) -> dict[str, Any]:
    """The upstream's error in OpenAI's envelope, whatever shape it came in."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return {
                **parsed,
                "error": {
                    **error,
                    "type": error.get("type") or error_type_for(status),
                    "param": error.get("param"),
                    "code": error.get("code"),
                },
            }
        if isinstance(error, str):  # Ollama, llama.cpp: {"error": "model not found"}
            return envelope(error, status=status)
        if isinstance(parsed.get("detail"), str):  # FastAPI-based servers
            return envelope(parsed["detail"], status=status)
        if isinstance(parsed.get("message"), str):
            return envelope(parsed["message"], status=status)
    text = raw.decode("utf-8", "replace").strip()[:1000] or "(empty body)"
    return envelope(f"The model upstream answered {status}: {text}", status=status)


class UpstreamFailed(ApiError):
    """The upstream's own error answer, to be handed to the client as it is."""

    def __init__(self, relayed: HttpResponse) -> None:
        super().__init__("the model upstream answered with an error", status=relayed.status_code)
        self.relayed = relayed

    def response(self) -> HttpResponse:
        return self.relayed


async def read_body(upstream: aiohttp.ClientResponse) -> bytes:
    """The whole body, the connection back in the pool; a broken or silent upstream is 502/504."""
    try:
        return await upstream.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise unreachable(exc) from None
    finally:
        upstream.release()


async def error_response(upstream: aiohttp.ClientResponse) -> HttpResponse:
    raw = await read_body(upstream)
    if upstream.status == 401:
        # The client's key was fine; ours was not. Relayed, a 401 would make the SDK blame the
        # client's key, and OpenAI's message quotes part of ours.
        log.error(
            "the model upstream refused CLICKY_CHATS_MODEL_API_KEY: %s",
            upstream_error_body(401, raw)["error"]["message"],
        )
        return ApiError(
            "The model upstream refused this server's credentials (CLICKY_CHATS_MODEL_API_KEY); "
            "the server's operator has to fix them.",
            status=502,
            code="upstream_auth_failed",
        ).response()
    response = HttpResponse(
        orjson.dumps(upstream_error_body(upstream.status, raw)),
        status=upstream.status,
        content_type="application/json",
    )
    for name, value in relayed_headers(upstream).items():
        response[name] = value
    return response


async def read_json_answer(upstream: aiohttp.ClientResponse) -> tuple[bytes, dict[str, Any]]:
    """The raw bytes and parsed object of a successful JSON answer; garbage is a 502."""
    raw = await read_body(upstream)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        snippet = raw[:200].decode("utf-8", "replace")
        raise ApiError(
            f"The model upstream sent a response that is not a JSON object: {snippet!r}",
            status=502,
            code="upstream_bad_response",
        )
    return raw, parsed


def json_response(raw: bytes, upstream: aiohttp.ClientResponse) -> HttpResponse:
    response = HttpResponse(raw, status=upstream.status, content_type="application/json")
    for name, value in relayed_headers(upstream).items():
        response[name] = value
    return response


def stream_error_frame(error: ApiError) -> bytes:
    """An error after the stream has started can only travel inside it; the SDK raises APIError."""
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"


async def relay_chunks(
    upstream: aiohttp.ClientResponse,
    rewrite: Callable[[bytes], Awaitable[bytes]] | None = None,
    at_end: Callable[[], Awaitable[bytes]] | None = None,
) -> AsyncIterator[bytes]:
    """Each upstream chunk, the moment it arrives, unchanged. Closing this iterator (the client went
    away) closes the upstream connection. `rewrite` turns each chunk into what the client gets;
    `at_end` runs once after the upstream finished cleanly, and what it returns is sent last."""
    try:
        async for chunk in upstream.content.iter_any():
            if rewrite is not None:
                chunk = await rewrite(chunk)
            if chunk:
                yield chunk
        if at_end is not None:
            tail = await at_end()
            if tail:
                yield tail
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("upstream stream broke off: %r", exc)
        yield stream_error_frame(unreachable(exc))
    finally:
        upstream.close()


def relay_events(
    upstream: aiohttp.ClientResponse,
    on_event: Callable[[bytes], Awaitable[bytes]] | None = None,
    at_end: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[bytes]:
    """An upstream event stream, each event handed on as soon as it is whole, byte for byte (or as
    `on_event` rewrites it). A partial event is held back, so the error frame that follows a break
    never lands inside one. `at_end` runs once after the upstream finished cleanly."""
    cutter = EventCutter()

    async def whole_events(chunk: bytes) -> bytes:
        events = cutter.feed(chunk)
        if on_event is None:
            return b"".join(events)
        return b"".join([await on_event(event) for event in events])

    async def finish() -> bytes:
        if at_end is not None:
            await at_end()
        # An unterminated last event goes on as it came; SSE parsers drop it, as they would have.
        return cutter.rest()

    return relay_chunks(upstream, whole_events, finish)


def streaming_response(
    upstream: aiohttp.ClientResponse, chunks: AsyncIterator[bytes], *, content_type: str | None = None
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        chunks, status=upstream.status, content_type=content_type or upstream.headers.get("Content-Type", "")
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # tell a fronting nginx not to buffer the stream
    for name, value in relayed_headers(upstream).items():
        response[name] = value
    return response


async def relay_raw(
    method: str, path: str, *, body: bytes | None, content_type: str | None
) -> HttpResponse | StreamingHttpResponse:
    """Forward a body as it is (multipart uploads, binary audio) and stream the answer back as it
    comes, with the upstream's own content type; errors are put in the envelope."""
    upstream = await open_upstream(method, path, body=body, content_type=content_type, streaming=True)
    if upstream.status >= 400:
        return await error_response(upstream)
    return streaming_response(upstream, relay_chunks(upstream))


async def close_session() -> None:
    """Closes this event loop's upstream client (each loop has its own: server, in-process agents)."""
    found = _sessions.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()
