"""The ASGI application: Django, plus the lifespan events that start and stop in-process agents."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from clicky_chats.asgi_handler import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clicky_chats.settings")

django_application = get_asgi_application()
# Imported only now: the middleware module needs the apps that get_asgi_application() set up.
from clicky_chats.middleware import RequestBodyLimit  # noqa: E402

http_application = RequestBodyLimit(django_application)
log = logging.getLogger("clicky_chats.asgi")


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await http_application(scope, receive, send)


async def _lifespan(receive: Any, send: Any) -> None:
    from django.conf import settings

    from agents.loop import AgentLoop
    from clicky_chats import auth
    from clicky_chats.asgi_handler import load_and_freeze
    from clicky_chats.config import env_bool

    agents: AgentLoop | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            load_and_freeze()
            if not settings.CONFIG.api_keys:
                api_is_open = await asyncio.to_thread(auth.KeyRing().refresh_open_mode)
                if api_is_open:
                    log.warning(
                        "no API keys are configured: the API is open to anyone who can reach it, as the "
                        "project 'default'. Set CLICKY_CHATS_API_KEYS or run `manage.py createapikey`."
                    )
            # Read at start-up, not from CONFIG: `serve --with-agents` sets it after settings loaded.
            if env_bool("CLICKY_CHATS_WITH_AGENTS", False):
                agents = AgentLoop(name="in-process agent")
                agents.start_in_thread()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if agents is not None:
                agents.stop()
                await asyncio.to_thread(agents.stopped.wait, 30)
            from clicky_chats.upstream import close_session

            await close_session()
            await send({"type": "lifespan.shutdown.complete"})
            return
