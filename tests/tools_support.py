"""What the server-tool tests share: servers started with the settings a tool test needs, raw
calls to /v1/rubra/x, a loopback web site the tests script (HTTP tools, tool files served by URL,
redirects), a loopback MCP server, and an SSE reader.

Everything listens on 127.0.0.1 only: tests never reach beyond loopback."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import requests
import uvicorn
from aiohttp import web
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from tests.conftest import ALICE_KEY, BOB_KEY, running_stack
from tests.fake_upstream import FakeUpstream
from tests.harness import Database, ServerProcess, free_port, wait_until

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextmanager
def tool_server(database: Database, fake: FakeUpstream, env: dict[str, str]) -> Iterator[ServerProcess]:
    """A server with alice's and bob's keys and `env`, its agents run as the suite runs them."""
    settings = {
        "CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
        "CLICKY_CHATS_MODEL_BACKOFF_S": "0.05",
        **env,
    }
    with running_stack(database, fake.base_url, settings) as server:
        yield server


def xapi(
    server: ServerProcess,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str = ALICE_KEY,
    prefix: str = "/v1/rubra/x",
) -> requests.Response:
    """A raw call to our own API (the SDK knows nothing of it)."""
    return requests.request(
        method,
        f"{server.url}{prefix}/{path.lstrip('/')}",
        data=None if body is None else orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=60,
    )


def read_sse(response: requests.Response) -> list[tuple[str | None, Any]]:
    """A whole SSE answer as (event name or None, data parsed as JSON; `[DONE]` as it is)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[tuple[str | None, Any]] = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next((line[len("event: ") :] for line in lines if line.startswith("event: ")), None)
        data = "\n".join(line[len("data: ") :] for line in lines if line.startswith("data: "))
        events.append((name, data if data == "[DONE]" else orjson.loads(data)))
    return events


def sse_get(server: ServerProcess, path: str, *, key: str = ALICE_KEY, timeout_s: float = 20) -> list[Any]:
    response = requests.get(
        f"{server.url}{path}", headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=(5, timeout_s)
    )
    return read_sse(response)


# --- a loopback web site -----------------------------------------------------------------------


class Site:
    """An aiohttp server on 127.0.0.1 whose routes a test sets; it counts and keeps every request."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.routes: dict[tuple[str, str], Handler] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.bodies: dict[str, list[bytes]] = collections.defaultdict(list)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}/{path.lstrip('/')}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method.upper(), "/" + path.lstrip("/"))] = handler

    def text(self, path: str, body: str, content_type: str = "text/plain", status: int = 200) -> None:
        async def answer(_request: web.Request) -> web.StreamResponse:
            return web.Response(text=body, content_type=content_type, status=status)

        self.route("GET", path, answer)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.bodies[request.path].append(await request.read())
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return web.Response(text="no such page", status=404)
        return await handler(request)

    def start(self) -> Site:
        thread = threading.Thread(target=self._serve, name="test-site", daemon=True)
        thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test site did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)


# --- a loopback MCP server ---------------------------------------------------------------------


class Query(BaseModel):
    """A nested model, so the tool's input schema carries `$defs` and a `$ref`."""

    text: str = Field(description="what to look up")
    limit: int = Field(default=3, description="at most this many results")


def make_mcp_server() -> MCPServer:
    mcp = MCPServer("test-mcp")

    @mcp.tool(description="Looks a word up in the test dictionary.")
    def lookup(query: Query) -> str:
        return f"definition of {query.text} (limit {query.limit})"

    @mcp.tool(description="Adds numbers up.")
    def total(numbers: list[int]) -> str:
        return f"total={sum(numbers)}"

    @mcp.tool(description="Answers pong.")
    def ping() -> str:
        return "pong"

    @mcp.tool(description="Always fails.")
    def broken() -> str:
        raise ValueError("the broken tool broke")

    return mcp


class McpSite:
    """The MCP server above over streamable HTTP, on a free loopback port, in a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        app = make_mcp_server().streamable_http_app(host="127.0.0.1")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="test-mcp", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> McpSite:
        self.thread.start()
        wait_until(lambda: self.server.started, within_s=20, what="the MCP server to start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


# --- fixtures the tool test modules share (imported there for pytest) ------------------------------


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    made = Site().start()
    yield made
    made.stop()


@pytest.fixture(scope="module")
def mcp_site() -> Iterator[McpSite]:
    made = McpSite().start()
    yield made
    made.stop()
