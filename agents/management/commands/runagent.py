from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agents.loop import AgentLoop


class Command(BaseCommand):
    help = "Run the agent loop: claim runs from the database and drive them until SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=4, help="runs advanced at once (default 4)")
        parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between idle polls")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1:
            self.stderr.write("--concurrency must be at least 1")
            raise SystemExit(2)
        loop = AgentLoop(concurrency=options["concurrency"], poll_interval_s=options["poll_interval"])
        signals_seen = 0

        def on_signal(signum: int, frame: FrameType | None) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                loop.stop()  # finish what we hold within the grace period, release the rest, exit 0
            elif signals_seen == 2:
                loop.stop(at_once=True)  # release what we hold now (one write per run), exit 1
            else:
                raise SystemExit(1)  # the release itself is stuck (the database is away): just go

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        loop.run_forever()
        if signals_seen > 1:
            raise SystemExit(1)
