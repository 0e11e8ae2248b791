"""The agent loop: claim runs, drive each in its own task, sweep expired runs, repeat; stop
cleanly when asked.

A run is claimed with a lease and a fencing token (agents/runs.py); the loop wakes at once when
a run is queued in this process or, on PostgreSQL, in any process (LISTEN/NOTIFY), and otherwise
polls every `poll_interval_s`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid

from agents import bus, engine, ingest, progress
from agents.db import db, refresh_connection
from agents.runs import expire_overdue
from clicky_chats import upstream
from clicky_chats.config import env_float

log = logging.getLogger("clicky_chats.agents")

SWEEP_EVERY_S = 1.0
# On SIGTERM, runs in flight get this long to finish before they are released to other agents.
GRACE_S = 10.0


class AgentLoop:
    def __init__(self, *, concurrency: int = 4, poll_interval_s: float = 0.5, name: str = "agent") -> None:
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.name = name
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.settings = engine.Settings()
        self.grace_s = env_float("CLICKY_CHATS_AGENT_GRACE_S", GRACE_S)
        self.ingestor = ingest.Ingestor(self.settings)
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: bus.Waiter | None = None
        self._hurry: asyncio.Event | None = None
        self._claiming = False  # a run claim is in flight

    def run_forever(self) -> None:
        try:
            asyncio.run(self.main())
        finally:
            self.stopped.set()

    async def main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = bus.Waiter(bus.QUEUE)
        self._hurry = asyncio.Event()
        bus.start_pg_listener()
        log.info("%s started (concurrency %d, owner %s)", self.name, self.concurrency, self.owner)
        running: dict[asyncio.Task[None], str] = {}
        last_sweep = 0.0
        try:
            while not self.stopping.is_set():
                try:
                    claimed = []
                    free = self.concurrency - len(running)
                    if free > 0:
                        # Claimed and begun in one transaction: each comes with its first model request.
                        self._claiming = True
                        try:
                            claimed = await db(progress.claim, self.owner, free, self.settings.lease_s)
                        finally:
                            self._claiming = False
                    for claim in claimed:
                        task = asyncio.create_task(engine.drive(claim, self.settings))
                        running[task] = claim.run_id
                        task.add_done_callback(self._finished(running))
                    # Vector-store files waiting for ingestion, in slots of their own beside the runs.
                    ingesting = await self.ingestor.claim(self._wake.event.set)
                    if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                        last_sweep = time.monotonic()
                        # Once a sweep, not every pass: on SQLite (CONN_MAX_AGE 0) it reconnects, and
                        # every run's writes queue behind the loop's on the one database thread.
                        await refresh_connection()
                        expired = await db(expire_overdue)
                        if expired:
                            log.info("%s expired %d run(s)", self.name, expired)
                    # A claim that left slots free found every claimable run: another pass would find
                    # none. New runs wake the loop (bus.QUEUE), so none is missed by waiting.
                    if ingesting and self.ingestor.has_room():
                        continue  # more may be waiting
                    await self._wake.wait(self.poll_interval_s)
                except Exception:
                    # The database away for longer than db() waits, or a bug: the loop must outlive
                    # it, or every run would stall until someone restarted the agent.
                    log.exception("%s: pass failed; trying again shortly", self.name)
                    await asyncio.sleep(min(5.0, self.poll_interval_s * 4))
        finally:
            await self.ingestor.shutdown()  # at once: ingestion restarts cleanly elsewhere
            await self._shutdown(running)
            self._wake.close()
            await upstream.close_session()
            log.info("%s stopped", self.name)

    def _finished(self, running: dict[asyncio.Task[None], str]):  # type: ignore[no-untyped-def]
        def done(task: asyncio.Task[None]) -> None:
            was_full = len(running) >= self.concurrency
            running.pop(task, None)
            # A slot is free: look for work, if runs may have waited for one. While slots were free,
            # every queued run was claimed when it was announced; but a claim under way asked for
            # the slots free when it began, not this one.
            if (was_full or self._claiming) and self._wake is not None:
                self._wake.event.set()

        return done

    async def _shutdown(self, running: dict[asyncio.Task[None], str]) -> None:
        if not running:
            return
        log.info("%s finishing %d run(s) before stopping", self.name, len(running))
        assert self._hurry is not None
        finishing = asyncio.ensure_future(asyncio.wait(set(running), timeout=self.grace_s))
        hurried = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait({finishing, hurried}, return_when=asyncio.FIRST_COMPLETED)
        finishing.cancel()
        hurried.cancel()
        pending = [task for task in running if not task.done()]
        for task in pending:
            task.cancel()  # drive() releases the run on cancellation, for another agent to finish
        if pending:
            await asyncio.wait(pending, timeout=5)

    def stop(self, *, at_once: bool = False) -> None:
        """Stops claiming work; runs in flight get the grace period to finish, or none `at_once`.
        Either way, what is still unfinished is released for another agent to take at once."""
        self.stopping.set()
        if self._loop is None or self._wake is None or self._hurry is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.event.set)
            if at_once:
                self._loop.call_soon_threadsafe(self._hurry.set)
        except RuntimeError:  # the loop has already closed
            pass

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name=self.name, daemon=True)
        thread.start()
        return thread
