"""The real stack, once per test session: a fake upstream on loopback, a database (SQLite, or
PostgreSQL when CLICKY_CHATS_TEST_DB=postgres), and `manage.py serve` in a subprocess. Clients are
the official SDK with strict response validation."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.harness import AgentProcess, Database, ServerProcess

ALICE_KEY = "sk-alice-test-key"
BOB_KEY = "sk-bob-test-key"
DB_KIND = os.environ.get("CLICKY_CHATS_TEST_DB", "sqlite")


def pytest_report_header() -> str:
    return f"clicky-chats database: {DB_KIND}"


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _fresh_script(request: pytest.FixtureRequest) -> None:
    if "fake_upstream" in request.fixturenames:
        request.getfixturevalue("fake_upstream").reset()


@pytest.fixture(scope="session")
def database() -> Iterator[Database]:
    db = Database(DB_KIND).start()
    yield db
    db.stop()


# Runs are driven by agents inside the server on SQLite (the embedded set-up), and by a separate
# `runagent` process on PostgreSQL (the scale-out set-up), so both paths are tested.
AGENTS_IN_SERVER = DB_KIND != "postgres"


@contextlib.contextmanager
def running_stack(database: Database, upstream_url: str, env: dict[str, str]) -> Iterator[ServerProcess]:
    """A server with its agents as the suite runs them (inside it on SQLite, a `runagent` beside
    it on PostgreSQL), stopped when the block ends."""
    proc = ServerProcess(database, upstream_url, env=env, with_agents=AGENTS_IN_SERVER).start()
    agent = None if AGENTS_IN_SERVER else AgentProcess(proc).start()
    try:
        yield proc
    finally:
        if agent is not None:
            agent.stop()
        proc.stop()


@pytest.fixture(scope="session")
def server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """The main server: keys for two projects, alice and bob."""
    with running_stack(
        database,
        fake_upstream.base_url,
        {
            "CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
            "CLICKY_CHATS_MODEL_BACKOFF_S": "0.05",
            # Vector stores embed with the fake's bag-of-words model, so search ranks by shared words.
            "CLICKY_CHATS_EMBEDDING_MODEL": "fake-bow-embedder",
        },
    ) as proc:
        yield proc


def make_client(server: ServerProcess, key: str = ALICE_KEY, tier: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url + tier, api_key=key, max_retries=0, timeout=20, _strict_response_validation=True
    )


def make_async_client(server: ServerProcess, key: str = ALICE_KEY, tier: str = "/v1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=server.url + tier, api_key=key, max_retries=0, timeout=20, _strict_response_validation=True
    )


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with make_client(server) as sdk:
        yield sdk


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with make_client(server, BOB_KEY) as sdk:
        yield sdk
