"""Django's ASGI handler, tuned for the chat proxy's hot path: reused threads, and no garbage cycles.

Django enters a fresh `ThreadSensitiveContext` per request, and asgiref then starts a thread for
it (the request signals hop there even when the view never touches the database) and another
thread to join it at the end: two thread starts per request, on the chat proxy path too. With 32
concurrent chat requests, one worker did 1.7-2.9x the requests per second with reused threads
(e.g. 224 -> 487 req/s; bench/chat_proxy.py's client, both handlers measured alternately in the same
runs on a 2-core machine).

asgiref lets a context be given its executor. A pool of one-thread executors keeps what Django
relies on (one request's sync code runs on one thread, one call at a time) without the thread
starts. A reused thread keeps its database connection between requests, as a WSGI thread does:
`close_old_connections` on request_started/request_finished applies CONN_MAX_AGE to it, so SQLite's
(0) closes it after every request and PostgreSQL's (60 s) lets the next request reuse it.

Two more things kept a worker busy collecting garbage instead of answering (a full collection every
second or two under load, each walking ~180,000 objects):
- Every request left a reference cycle. Once the response is out, uvicorn answers the receive()
  that Django's disconnect listener is waiting in with `http.disconnect`; the listener raises
  RequestAborted, and that exception's traceback holds Django's handle() frame, which holds the
  listener task, which holds the exception: request, response and body buffers stay alive until the
  cyclic collector runs. After the response has been sent there is nothing left to abort, so the
  listener is left waiting, and Django cancels it as it does when the response finishes first.
- The modules loaded at start-up (and the URLconf, which Django would import on the first
  request) are frozen out of the collector's reach with gc.freeze(), at lifespan start-up.
Together, with 32 concurrent chat requests on one worker: 0.80-0.88 CPU ms per request instead of
1.20-1.37, and 628-651 req/s instead of 238-287 in the same runs.

Django's handle() still hopped to the request's thread twice per request: request_started's
sync receivers (`asend`) and `sync_to_async(response.close)`, which sends request_finished. Their
receivers (Django's close_old_connections and reset_queries; close_caches; reset_urlconf) look after
the database connections of the thread they run on, and the chat proxy never runs sync code, so
both hops bought nothing there. `_handle()` below is Django 5.2's handle() with the two hops made
lazy: request_started's receivers run on the request's thread just before the first sync call it
is given (so close_old_connections still retires an obsolete connection and arms PostgreSQL's
health check before any query), and a request whose thread ran nothing closes its response right
on the event loop, where request_finished's receivers find no connection of this request to close.
A request that did run sync code closes its response on its thread, as Django does.
"""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import connections
from django.http import HttpResponseBase
from django.urls import set_script_prefix

# Idle threads kept after a burst; each may hold one database connection. Fewer than a worker's
# usual concurrency and threads are started and stopped all the time again (32 concurrent requests
# on one worker with 16 kept: 4% of its time went to starting threads).
IDLE_THREADS_KEPT = 32


class RequestThread(ThreadPoolExecutor):
    """The one thread a request's sync code runs on (asgiref's thread-sensitive calls, Django's
    ORM, sync middleware and views all come here), reused by later requests.

    `begin()` hands it the request's request_started dispatch; the first call submitted after that
    runs it first, on this thread, so a request that never submits anything never pays the hop."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="request")
        self._request_started: Callable[[], object] | None = None
        self.ran_sync_code = False
        self._has_thread = False  # ThreadPoolExecutor starts its thread at the first submit

    def begin(self, request_started: Callable[[], object]) -> None:
        self._request_started = request_started
        self.ran_sync_code = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        # Called from the event loop's thread only (asyncio's run_in_executor), so no lock.
        self._has_thread = True
        request_started = self._request_started
        if request_started is None:
            return super().submit(fn, *args, **kwargs)
        self._request_started = None
        self.ran_sync_code = True

        def started_first() -> Any:
            # A receiver's exception reaches the awaiting sync_to_async call, as Django's asend
            # would raise it out of handle().
            request_started()
            return fn(*args, **kwargs)

        return super().submit(started_first)

    def retire(self) -> None:
        """Stops the thread, if one was ever started, once it has run what it was given; its
        connections are closed first (CONN_MAX_AGE may have kept one open), not left to the
        garbage collector."""
        self._request_started = None
        if self._has_thread:
            super().submit(connections.close_all)
        self.shutdown(wait=False)


class PooledThreadASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        # Touched only from the event loop's thread, so no lock.
        self._idle: list[RequestThread] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        response_sent = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal response_sent
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_sent = True

        async def receive_until_sent() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.disconnect" and response_sent:
                await asyncio.Future()  # wait to be cancelled (see the module's docstring)
            return message

        thread = self._idle.pop() if self._idle else RequestThread()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self._handle(scope, receive_until_sent, tracking_send, thread)
        finally:
            # A sync call the request abandoned (client gone) may still be running; the next
            # request on this thread then queues behind it, as it would on Django's shared thread.
            if len(self._idle) < IDLE_THREADS_KEPT:
                self._idle.append(thread)
            else:
                thread.retire()

    async def _handle(self, scope: dict[str, Any], receive: Any, send: Any, thread: RequestThread) -> None:
        """Django 5.2's ASGIHandler.handle() with its two thread hops made lazy (module docstring)."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        thread.begin(functools.partial(signals.request_started.send, sender=self.__class__, scope=scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await self._close_response(error_response, thread)
            return

        async def process_request(request: Any, send: Any) -> HttpResponseBase:
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client went away during send_response
            return response

        # As Django: the disconnect listener goes first, so that its errors cannot keep
        # process_request() from being cancelled.
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()  # views may handle their cancellation
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            if thread.ran_sync_code:
                await signals.request_finished.asend(sender=self.__class__)
            else:
                signals.request_finished.send(sender=self.__class__)
        else:
            await self._close_response(response, thread)
        body_file.close()

    @staticmethod
    async def _close_response(response: HttpResponseBase, thread: RequestThread) -> None:
        if thread.ran_sync_code:
            await sync_to_async(response.close)()
        else:
            # Nothing of this request's ran on a thread, so nothing to close there; here on the
            # loop, request_finished's receivers see only the loop thread's (empty) connections.
            response.close()


def get_asgi_application() -> PooledThreadASGIHandler:
    """django.core.asgi.get_asgi_application(), with our handler."""
    django.setup(set_prefix=False)
    return PooledThreadASGIHandler()


# Container objects allocated (net of those freed) before the youngest generation is collected;
# CPython's default is 700. 32 requests in flight hold several thousand between them, so at 700 a
# worker collected ~90 times a second, each pass walking those live objects only to promote them
# (and every tenth pass walking the older generation too): 6-8 % of its CPU. Requests leave no
# reference cycles (above), so a larger threshold frees no less in the end.
GEN0_THRESHOLD = 10_000


def load_and_freeze() -> None:
    """At start-up: import the URLconf (every view module) now rather than on the first request,
    then move everything alive into gc's permanent generation, which full collections skip, and
    collect the young generation less often."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - the attribute access is the import
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
