"""The agent loop: claim work from the database, advance it, repeat; stop cleanly when asked.

Issue 3 gives `tick` its work (claiming and advancing runs). Until then the loop idles, which is
what `runagent` and `serve --with-agents` rely on to start and stop cleanly.
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections

log = logging.getLogger("clicky_chats.agents")


class AgentLoop:
    def __init__(self, *, concurrency: int = 4, poll_interval_s: float = 1.0, name: str = "agent") -> None:
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self.name = name
        self.stopping = threading.Event()
        self.stopped = threading.Event()

    def run_forever(self) -> None:
        log.info("%s started (concurrency %d)", self.name, self.concurrency)
        try:
            while not self.stopping.is_set():
                close_old_connections()
                worked = self.tick()
                if not worked:
                    self.stopping.wait(self.poll_interval_s)
        finally:
            close_old_connections()
            self.stopped.set()
            log.info("%s stopped", self.name)

    def tick(self) -> bool:
        """One pass over the queue; True when it found work, so the loop goes on without sleeping."""
        return False

    def stop(self) -> None:
        self.stopping.set()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name=self.name, daemon=True)
        thread.start()
        return thread
