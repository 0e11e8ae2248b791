"""Running the engine's blocking database work from async code."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, close_old_connections, connection

log = logging.getLogger("clicky_chats.agents")

P = ParamSpec("P")
T = TypeVar("T")

# How long an agent keeps trying while the database is away (a restart, a failover).
RECONNECT_FOR_S = 60.0


def _reset_connection() -> None:
    try:
        connection.close()
    except Exception:  # closing a broken connection may itself fail; it is gone either way
        pass


async def db(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs `fn` on the agent's database thread. A lost connection is reopened and the call tried
    again: each of our calls is one transaction, so a retry repeats all of it or none."""
    call = sync_to_async(fn, thread_sensitive=True)
    waited = 0.0
    delay = 0.2
    while True:
        try:
            return await call(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            if connection.vendor == "sqlite" and "locked" not in str(exc):
                raise
            if waited >= RECONNECT_FOR_S:
                raise
            log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
            await sync_to_async(_reset_connection, thread_sensitive=True)()
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)


async def refresh_connection() -> None:
    await sync_to_async(close_old_connections, thread_sensitive=True)()
