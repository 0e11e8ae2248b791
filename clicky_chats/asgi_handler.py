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
"""

from __future__ import annotations

import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

# Idle threads kept after a burst; each may hold one database connection. Fewer than a worker's
# usual concurrency and threads are started and stopped all the time again (32 concurrent requests
# on one worker with 16 kept: 4% of its time went to starting threads).
IDLE_THREADS_KEPT = 32


class PooledThreadASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        # Touched only from the event loop's thread, so no lock.
        self._idle: list[ThreadPoolExecutor] = []

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

        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive_until_sent, tracking_send)
        finally:
            # A sync call the request abandoned (client gone) may still be running; the next
            # request on this thread then queues behind it, as it would on Django's shared thread.
            if len(self._idle) < IDLE_THREADS_KEPT:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)


def get_asgi_application() -> PooledThreadASGIHandler:
    """django.core.asgi.get_asgi_application(), with our handler."""
    django.setup(set_prefix=False)
    return PooledThreadASGIHandler()


def load_and_freeze() -> None:
    """At start-up: import the URLconf (every view module) now rather than on the first request,
    then move everything alive into gc's permanent generation, which full collections skip."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - the attribute access is the import
    gc.collect()
    gc.freeze()
