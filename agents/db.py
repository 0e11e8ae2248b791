"""Running the engine's blocking database work from async code."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection

log = logging.getLogger("clicky_chats.agents")

P = ParamSpec("P")
T = TypeVar("T")

# How long an agent keeps trying while the database is away (a restart, a failover).
RECONNECT_FOR_S = 60.0

# PostgreSQL ending our session for a stalled transaction (25P03) arrives as an InternalError, not
# an OperationalError, yet the connection is just as gone: reconnect and retry like any other loss.
_SESSION_ENDED_SQLSTATES = frozenset({"25P03"})


def connection_lost(exc: DatabaseError) -> bool:
    """True when `exc` means the connection is gone (retry on a new one), not that the SQL failed."""
    if connection.vendor == "sqlite":
        return isinstance(exc, OperationalError) and "locked" in str(exc)
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return getattr(exc.__cause__, "sqlstate", None) in _SESSION_ENDED_SQLSTATES


def _reset_connection() -> None:
    try:
        connection.close()
    except Exception:  # closing a broken connection may itself fail; it is gone either way
        pass


@functools.cache
def _stall_limit_ms() -> int:
    from agents.engine import Settings  # the engine imports this module

    return max(1000, int(Settings().lease_s * 1000))


def _on_agent_connection(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Calls `fn` on a connection whose stalled transactions PostgreSQL ends after one lease.

    An agent paused or cut off between two statements of a write still holds the run's row lock;
    left alone, the agent taking the run over could never claim it, nor a client cancel it. Once a
    lease has passed the claim is forfeit anyway, so ending that transaction loses nothing."""
    if connection.vendor == "postgresql":
        connection.ensure_connection()
        backend = connection.connection.info.backend_pid
        if _bounded_backend.get(connection.alias) != backend:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('idle_in_transaction_session_timeout', %s, false)", [str(_stall_limit_ms())]
                )
            _bounded_backend[connection.alias] = backend
    return fn(*args, **kwargs)


# Per database alias, the server process whose session already carries the limit. Only the agent's
# database thread touches it (sync_to_async with thread_sensitive=True).
_bounded_backend: dict[str, int] = {}


async def db(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs `fn` on the agent's database thread. A lost connection is reopened and the call tried
    again: each of our calls is one transaction, so a retry repeats all of it or none."""
    call = sync_to_async(functools.partial(_on_agent_connection, fn), thread_sensitive=True)
    waited = 0.0
    delay = 0.2
    while True:
        try:
            return await call(*args, **kwargs)
        except DatabaseError as exc:
            if not connection_lost(exc) or waited >= RECONNECT_FOR_S:
                raise
            log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
            await sync_to_async(_reset_connection, thread_sensitive=True)()
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)


async def refresh_connection() -> None:
    await sync_to_async(close_old_connections, thread_sensitive=True)()
