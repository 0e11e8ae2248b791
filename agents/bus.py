"""Waking whoever waits on a run: stream views wait for new events, agents wait for new work.

Inside one process a notification sets asyncio events directly (agents in the server with
`--with-agents`). Across processes on PostgreSQL, writers call pg_notify in the same transaction
and every process LISTENs; SQLite has no such channel, so waiters also poll on a short timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict

from django.db import connection, transaction

log = logging.getLogger("clicky_chats.bus")

CHANNEL = "clicky_chats"
QUEUE = "queue"  # the payload that means "a run is waiting to be claimed"


def cancel_key(run_id: str) -> str:
    """What the agent driving a run waits on, to stop the work as soon as the client cancels."""
    return f"cancel:{run_id}"


_lock = threading.Lock()
_waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)


def notify_local(key: str) -> None:
    with _lock:
        waiters = list(_waiters.get(key, ()))
    for loop, event in waiters:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # that loop has closed
            pass


def publish(key: str) -> None:
    """Call inside the transaction that wrote the change: waiters wake once it commits."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, key])
    transaction.on_commit(lambda: notify_local(key))


class Waiter:
    """A standing subscription: notifications that arrive between waits are not lost."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        with _lock:
            _waiters[key].add((self.loop, self.event))

    async def wait(self, within_s: float) -> bool:
        """Waits for a notification, at most `within_s` seconds. True when notified."""
        try:
            await asyncio.wait_for(self.event.wait(), within_s)
            return True
        except TimeoutError:
            return False
        finally:
            self.event.clear()

    def close(self) -> None:
        with _lock:
            _waiters[self.key].discard((self.loop, self.event))
            if not _waiters[self.key]:
                _waiters.pop(self.key, None)


_listener_started = False


def start_pg_listener() -> None:
    """On PostgreSQL, one thread per process LISTENs and relays notifications to local waiters."""
    global _listener_started
    if connection.vendor != "postgresql" or _listener_started:
        return
    _listener_started = True
    threading.Thread(target=_listen_forever, name="pg-listen", daemon=True).start()


def _listen_forever() -> None:
    import time

    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    while True:
        try:
            with psycopg.connect(**params, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                for note in conn.notifies():
                    notify_local(note.payload)
        except Exception as exc:  # the database restarted or the network broke: listen again
            log.warning("LISTEN connection lost (%s); reconnecting", exc)
            time.sleep(1.0)
