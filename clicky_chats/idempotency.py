"""`Idempotency-Key` on POST requests (draft-ietf-httpapi-idempotency-key-header-07).

The OpenAI SDK retries a POST after a timeout, 408, 409, 429 or 5xx, but sends no key of its own, so
a retried "create" could create twice. A client that sends `Idempotency-Key: <key>` gets this:

- The first request claims the key and runs; its answer is kept for CLICKY_CHATS_IDEMPOTENCY_TTL_S.
- A repeat (same project, method, path, query and body) gets that answer back, status, body and
  the OpenAI headers, marked `Idempotent-Replayed: true`; nothing runs again.
- The same key with another payload: 422. The same key while the first is still running: 409,
  which the SDK retries (after `Retry-After`).
- An answer a retry may change (408, 409, 429, 5xx, an exception) is not kept: the key is released.
- A client that gives up (the SDK's timeout) does not stop a keyed request: it runs to its end, so
  the SDK's retry finds its answer instead of running it a second time.
- `stream: true` and multipart uploads are refused with 400: a stream cannot be replayed, and an
  upload's body goes to storage as it arrives, so there is no body to compare a repeat with. Any
  other answer that streams (audio) holds the key while it streams and releases it at the end.

Claiming is an INSERT against a unique constraint, so two processes racing on one key cannot both
win, on SQLite and on PostgreSQL alike. A request without the header pays one dict lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import orjson
from asgiref.sync import ThreadSensitiveContext, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import IntegrityError, close_old_connections, connections, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils import timezone

from clicky_chats.errors import ApiError
from clicky_chats.middleware import _too_large
from clicky_chats.models import IdempotencyKey

log = logging.getLogger("clicky_chats.idempotency")

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Longer than any path of ours (ids are at most 64 characters); such a request is a 404 anyway.
MAX_PATH_LENGTH = 512
# The headers of a kept answer that are part of it. Not x-request-id (each request has its own),
# not the upstream's x-ratelimit-* (its budget at that moment; a replay spends none), and not
# retry-after or x-should-retry (they come with answers that are never kept).
REPLAYED_HEADERS = ("allow", "openai-poll-after-ms", "openai-processing-ms")
# Expired keys are deleted at most this often per process, by the request that happens to come.
PURGE_EVERY_S = 600.0
# A claim older than the upstream timeout plus this was left by a server that died mid-request (a
# keyed request runs to its end even when its client leaves); the next request with the key takes it.
ABANDONED_AFTER_MARGIN_S = 60.0

# Idle threads kept for keyed requests (see IdempotencyMiddleware._keyed); each may hold a connection.
IDLE_THREADS_KEPT = 8

_next_purge = 0.0
_idle_threads: list[ThreadPoolExecutor] = []
# Keyed requests whose client left, running to their end; referenced so they are not collected.
_orphans: set[asyncio.Task[None]] = set()


def is_retryable(status: int) -> bool:
    """The statuses the SDK retries, because a retry may get another answer: never kept."""
    return status in (408, 409, 429) or status >= 500


class IdempotencyMiddleware:
    """Async-native, after ApiMiddleware (it needs request.project)."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        raw_key = request.META.get("HTTP_IDEMPOTENCY_KEY")
        if raw_key is None or request.method != "POST" or request.project is None:
            return await self.get_response(request)
        if len(request.path_info) > MAX_PATH_LENGTH:
            return await self.get_response(request)
        running = asyncio.ensure_future(self._keyed(request, raw_key))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            _finish_orphan(running)
            raise

    async def _keyed(self, request: HttpRequest, raw_key: str) -> HttpResponseBase:
        """A keyed request's sync code runs on a thread of ours, not the request's: it may outlive
        the request (_finish_orphan), and asgiref refuses a request's sync calls once it has ended."""
        thread = _idle_threads.pop() if _idle_threads else ThreadPoolExecutor(1, thread_name_prefix="keyed-request")
        try:
            async with ThreadSensitiveContext(executor=thread):
                return await self._respond(request, raw_key)
        finally:
            if len(_idle_threads) < IDLE_THREADS_KEPT:
                _idle_threads.append(thread)
            else:
                thread.submit(connections.close_all)
                thread.shutdown(wait=False)

    async def _respond(self, request: HttpRequest, raw_key: str) -> HttpResponseBase:
        try:
            claimed = await sync_to_async(claim)(request, raw_key)
        except ApiError as exc:
            return exc.response()
        if isinstance(claimed, HttpResponse):
            return claimed  # the kept answer
        try:
            response = await self.get_response(request)
        except BaseException:
            await _settle(claimed.release)
            raise
        if response.streaming:
            if response.is_async:
                response.streaming_content = _release_at_end(response.streaming_content, claimed)
            else:
                await _settle(claimed.release)  # no POST of ours streams synchronously
        elif is_retryable(response.status_code):
            await _settle(claimed.release)
        else:
            await _settle(claimed.keep, response)
        return response


async def _settle(action: Callable[..., None], *args: Any) -> None:
    """Keeps or releases a claim. The request's own answer goes out even when that fails; the key
    then stays claimed until it counts as abandoned."""
    try:
        await sync_to_async(action)(*args)
    except Exception:
        log.exception("could not update the claim on an %s", HEADER)


async def _release_at_end(chunks: AsyncIterator[bytes], claimed: Claim) -> AsyncIterator[bytes]:
    try:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    finally:
        # Whoever reads the stream runs this (the request, or _finish_orphan, or the loop closing an
        # abandoned stream), maybe after the request's thread context ended: any thread will do.
        await sync_to_async(_release_from_any_thread, thread_sensitive=False)(claimed)


def _release_from_any_thread(claimed: Claim) -> None:
    close_old_connections()  # what request_started and request_finished do on a request's thread
    try:
        claimed.release()
    finally:
        close_old_connections()


def _finish_orphan(running: asyncio.Future[HttpResponseBase]) -> None:
    """The client left (the SDK's timeout, say) and is likely to retry with the same key: the
    request still runs to its end, so the retry gets its answer rather than a second execution.
    An answer that streams is read to its end, which releases the key."""

    async def finish() -> None:
        try:
            response = await running
            if response.streaming:
                async for _chunk in response:
                    pass
        except Exception:
            log.exception("a keyed request whose client left failed")

    task = asyncio.ensure_future(finish())
    _orphans.add(task)
    task.add_done_callback(_orphans.discard)


# --- the database side (sync, on the keyed request's thread) -----------------------------------


class Claim:
    """This request's hold on its key: `keep` stores its answer, `release` lets the key go. Both
    name the row, so a claim taken over from a dead server is never touched by a late original."""

    def __init__(self, pk: int) -> None:
        self.pk = pk

    def keep(self, response: HttpResponse) -> None:
        headers = {name: response[name] for name in REPLAYED_HEADERS if response.has_header(name)}
        IdempotencyKey.objects.filter(pk=self.pk, state=IdempotencyKey.IN_FLIGHT).update(
            state=IdempotencyKey.DONE,
            response_status=response.status_code,
            response_content_type=response.get("Content-Type", ""),
            response_headers=headers,
            response_body=response.content,
        )

    def release(self) -> None:
        IdempotencyKey.objects.filter(pk=self.pk, state=IdempotencyKey.IN_FLIGHT).delete()


def claim(request: HttpRequest, raw_key: str) -> Claim | HttpResponse:
    """Claims the key for this request, or answers it: the kept answer, or an ApiError (400 for a
    key or request we cannot take, 422 for another payload, 409 while the first one runs)."""
    close_old_connections()  # a pooled thread's connection, as request_started would
    key = parse_key(raw_key)
    fingerprint = request_fingerprint(request)
    now = timezone.now()
    _purge_now_and_then(now)
    scope = {"project": request.project, "key": key, "method": request.method, "path": request.path_info}
    for _attempt in range(3):
        try:
            with transaction.atomic():
                row = IdempotencyKey.objects.create(**scope, fingerprint=fingerprint, created_at=now)
            return Claim(row.pk)
        except IntegrityError:
            pass
        found = IdempotencyKey.objects.filter(**scope).first()
        if found is None:
            continue  # released since our insert failed
        if _is_expired(found, now) or _is_abandoned(found, now):
            IdempotencyKey.objects.filter(pk=found.pk, state=found.state).delete()
            continue
        if found.fingerprint != fingerprint:
            raise ApiError(
                f"This {HEADER} was already used with a different request body; use a new key for a new request.",
                status=422,
                param=HEADER,
                code="idempotency_key_reused",
            )
        if found.state == IdempotencyKey.IN_FLIGHT:
            break
        return replay(found)
    raise ApiError(
        f"A request with this {HEADER} is still being processed; retry after it has finished.",
        status=409,
        param=HEADER,
        code="idempotency_key_in_flight",
        headers={"Retry-After": "1"},
    )


def parse_key(raw: str) -> str:
    # The draft sends the key as a structured-field string ("..."); most clients send it bare.
    key = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if not key or len(key) > MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise ApiError(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            param=HEADER,
            code="invalid_idempotency_key",
        )
    return key


def request_fingerprint(request: HttpRequest) -> str:
    """SHA-256 of the query string and the body; refuses the requests whose answer cannot be kept."""
    if (request.content_type or "").startswith("multipart/"):
        raise ApiError(
            f"{HEADER} is not supported on multipart uploads: the body is streamed to storage as it "
            "arrives, so a repeat cannot be compared with it. Send the upload without the key.",
            param=HEADER,
            code="idempotency_key_not_supported",
        )
    try:
        body = request.body
    except RequestDataTooBig:
        raise _too_large(settings.CONFIG.max_request_bytes, "CLICKY_CHATS_MAX_REQUEST_BYTES") from None
    if b'"stream"' in body and _asks_for_stream(body):
        raise ApiError(
            f"{HEADER} cannot be used with `stream: true`: a stream cannot be kept and replayed. "
            "Send the key without streaming, or stream without the key.",
            param=HEADER,
            code="idempotency_key_not_supported",
        )
    digest = hashlib.sha256(request.META.get("QUERY_STRING", "").encode("latin-1"))
    digest.update(b"\n")
    digest.update(body)
    return digest.hexdigest()


def _asks_for_stream(body: bytes) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False  # the view answers a body it cannot parse
    return isinstance(parsed, dict) and parsed.get("stream") is True


def replay(found: IdempotencyKey) -> HttpResponse:
    response = HttpResponse(
        bytes(found.response_body or b""),
        status=found.response_status,
        content_type=found.response_content_type or "application/json",
    )
    for name, value in found.response_headers.items():
        response[name] = value
    response["Idempotent-Replayed"] = "true"
    return response


def _is_expired(found: IdempotencyKey, now: datetime) -> bool:
    return found.created_at < now - timedelta(seconds=settings.CONFIG.idempotency_ttl_s)


def _is_abandoned(found: IdempotencyKey, now: datetime) -> bool:
    limit = settings.CONFIG.model_timeout_s + ABANDONED_AFTER_MARGIN_S
    return found.state == IdempotencyKey.IN_FLIGHT and found.created_at < now - timedelta(seconds=limit)


def _purge_now_and_then(now: datetime) -> None:
    global _next_purge
    if time.monotonic() < _next_purge:
        return
    _next_purge = time.monotonic() + PURGE_EVERY_S
    IdempotencyKey.objects.filter(created_at__lt=now - timedelta(seconds=settings.CONFIG.idempotency_ttl_s)).delete()
