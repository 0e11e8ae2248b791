from __future__ import annotations

import os
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Serve the API with uvicorn (uvloop + httptools); --with-agents also runs the agent loop."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.CONFIG.server_host)
        parser.add_argument("--port", type=int, default=settings.CONFIG.server_port)
        parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
        parser.add_argument(
            "--with-agents",
            action="store_true",
            default=settings.CONFIG.with_agents,
            help="also run the agent loop in each server process (CLICKY_CHATS_WITH_AGENTS)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workers"] < 1:
            self.stderr.write("--workers must be at least 1")
            raise SystemExit(2)
        # Worker processes import the app afresh; the environment is how they learn the choice.
        os.environ["CLICKY_CHATS_WITH_AGENTS"] = "true" if options["with_agents"] else "false"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clicky_chats.settings")
        # uvicorn, not granian: a Django async view measured 1.09 ms p50 under uvicorn against
        # 1.57 ms under granian on our 2-core machines (performance-and-reliability.md, A5).
        uvicorn.run(
            "clicky_chats.asgi:application",
            host=options["host"],
            port=options["port"],
            workers=options["workers"],
            loop="uvloop",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_config=None,  # keep Django's LOGGING; uvicorn's own config would drop its handlers
            log_level="info",
            timeout_graceful_shutdown=30,
        )
