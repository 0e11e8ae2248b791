"""Django's ASGI handler, with each request's sync code run on a reused thread instead of a new one.

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
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler

# Idle threads kept after a burst; each may hold one database connection.
IDLE_THREADS_KEPT = 16


class PooledThreadASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        # Touched only from the event loop's thread, so no lock.
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            # A sync call the request abandoned (client gone) may still be running; the next
            # request on this thread then queues behind it, as it would on Django's shared thread.
            if len(self._idle) < IDLE_THREADS_KEPT:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)


def get_asgi_application() -> PooledThreadASGIHandler:
    """django.core.asgi.get_asgi_application(), with the pooled handler."""
    django.setup(set_prefix=False)
    return PooledThreadASGIHandler()
