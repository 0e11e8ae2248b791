"""`Idempotency-Key` on POST requests, through the official SDK's `extra_headers`: a repeat gets the
first answer and runs nothing again, another payload is a 422, a request still running is a 409, an
answer a retry may change releases the key, a client that gives up still gets its answer on the
retry, and keys are per project, shared by every server on one database, and expire."""

from __future__ import annotations

import concurrent.futures
import contextlib
import secrets
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import openai
import psycopg
import pytest
from openai.types.chat import ChatCompletion

from tests.conftest import ALICE_KEY, BOB_KEY, make_client
from tests.fake_upstream import FakeUpstream, Reply, chat_completion
from tests.harness import Database, ServerProcess, _to_conninfo
from tests.runs_support import MODEL, RunKit, kit, wait_until

__all__ = ["kit"]  # the fixture, imported for pytest
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated

HEADER = "Idempotency-Key"
TABLE = "clicky_chats_idempotencykey"
HELLO = [{"role": "user", "content": "hello"}]


def new_key() -> str:
    return "test-" + secrets.token_hex(8)


def keyed(key: str) -> dict[str, str]:
    return {HEADER: key}


def stored(server: ServerProcess, where: str = "", *params: Any) -> list[tuple[Any, ...]]:
    """(project, key, state, response_status) of the kept keys; `where` uses %s placeholders."""
    dsn = server.env["CLICKY_CHATS_DSN"]
    query = f"SELECT project, key, state, response_status FROM {TABLE} {where} ORDER BY id"
    if dsn.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(dsn.removeprefix("sqlite:///"))) as conn:
            return conn.execute(query.replace("%s", "?"), params).fetchall()
    with psycopg.connect(_to_conninfo(dsn), autocommit=True) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def stored_key(server: ServerProcess, key: str) -> list[tuple[Any, ...]]:
    return stored(server, "WHERE key = %s", key)


def chat_requests(fake: FakeUpstream) -> int:
    return sum(1 for recorded in fake.requests if recorded.path == "chat/completions")


def assert_key_error(error: openai.APIStatusError, status: int, code: str) -> None:
    """OpenAI's envelope, naming the header as the param."""
    assert error.status_code == status, error
    body = error.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", HEADER, code)
    assert isinstance(body["message"], str) and body["message"]


# --- a repeat gets the first answer ------------------------------------------------------------


def test_a_retried_assistant_create_returns_the_first_assistant_and_creates_one(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    key, name = new_key(), "idempotent " + secrets.token_hex(4)
    first = client.beta.assistants.with_raw_response.create(model=MODEL, name=name, extra_headers=keyed(key))
    again = client.beta.assistants.with_raw_response.create(model=MODEL, name=name, extra_headers=keyed(key))

    assert first.status_code == again.status_code == 200
    assert again.parse() == first.parse()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    # Each request has its own id; the replay does not pretend to be the first request.
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert [a.id for a in client.beta.assistants.list(limit=100) if a.name == name] == [first.parse().id]
    assert stored_key(server, key) == [("alice", key, "done", 200)]


def test_a_retried_message_create_adds_one_message(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    key = new_key()
    first = client.beta.threads.messages.create(thread.id, role="user", content="only once", extra_headers=keyed(key))
    again = client.beta.threads.messages.create(thread.id, role="user", content="only once", extra_headers=keyed(key))

    assert again == first
    assert [message.id for message in client.beta.threads.messages.list(thread.id)] == [first.id]


def test_a_retried_run_create_starts_one_run(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("hello")
    key = new_key()
    first = kit.runs.create(thread.id, assistant_id=assistant.id, extra_headers=keyed(key))
    again = kit.runs.create(thread.id, assistant_id=assistant.id, extra_headers=keyed(key))

    assert again.id == first.id
    assert kit.wait(first, "completed").status == "completed"
    assert [run.id for run in kit.runs.list(thread.id)] == [first.id]
    assert chat_requests(kit.fake) == 1
    assert [m.role for m in kit.messages(thread.id)] == ["user", "assistant"]


def test_a_kept_client_error_is_replayed(client: openai.OpenAI, server: ServerProcess) -> None:
    """A 4xx other than those the SDK retries is an answer like any other: a retry gets it again."""
    key = new_key()
    with pytest.raises(openai.BadRequestError) as first:
        client.beta.assistants.create(model=MODEL, temperature=5, extra_headers=keyed(key))
    with pytest.raises(openai.BadRequestError) as again:
        client.beta.assistants.create(model=MODEL, temperature=5, extra_headers=keyed(key))

    assert again.value.body == first.value.body
    assert first.value.body["param"] == "temperature"  # type: ignore[index]
    assert again.value.response.headers["idempotent-replayed"] == "true"
    assert stored_key(server, key) == [("alice", key, "done", 400)]


# --- conflicts ---------------------------------------------------------------------------------


def test_the_same_key_with_another_body_is_a_422(client: openai.OpenAI) -> None:
    key, name, other = new_key(), "first " + secrets.token_hex(4), "second " + secrets.token_hex(4)
    first = client.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(key))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.beta.assistants.create(model=MODEL, name=other, extra_headers=keyed(key))

    assert_key_error(caught.value, 422, "idempotency_key_reused")
    names = {a.name for a in client.beta.assistants.list(limit=100)}
    assert name in names and other not in names
    # The key still belongs to the first request.
    assert client.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(key)) == first


def test_two_projects_use_the_same_key_independently(client: openai.OpenAI, bob: openai.OpenAI) -> None:
    key, name = new_key(), "shared key " + secrets.token_hex(4)
    alices = client.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(key))
    bobs = bob.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(key))

    assert bobs.id != alices.id
    assert client.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(key)) == alices
    assert bob.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(key)) == bobs
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.retrieve(bobs.id)


def test_a_request_still_in_flight_answers_409_then_its_answer(
    server: ServerProcess, fake_upstream: FakeUpstream
) -> None:
    key = new_key()
    fake_upstream.script("chat/completions", Reply.json(chat_completion(id="chatcmpl-held"), delay_s=2.0))
    with make_client(server) as first_client, make_client(server) as second_client:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(
                first_client.chat.completions.create, model=MODEL, messages=HELLO, extra_headers=keyed(key)
            )
            wait_until(lambda: chat_requests(fake_upstream), what="the first request to reach the upstream")
            with pytest.raises(openai.ConflictError) as caught:
                second_client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=keyed(key))
            assert first.result().id == "chatcmpl-held"

        assert_key_error(caught.value, 409, "idempotency_key_in_flight")
        # The SDK retries a 409, after this long.
        assert caught.value.response.headers["retry-after"] == "1"
        again = second_client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=keyed(key))
    assert again == first.result()
    assert chat_requests(fake_upstream) == 1


@pytest.mark.parametrize(
    ("status", "error"), [(500, openai.InternalServerError), (429, openai.RateLimitError)], ids=["500", "429"]
)
def test_an_answer_a_retry_may_change_releases_the_key(
    client: openai.OpenAI,
    server: ServerProcess,
    fake_upstream: FakeUpstream,
    status: int,
    error: type[openai.APIStatusError],
) -> None:
    key = new_key()
    fake_upstream.script("chat/completions", Reply.error(status, "try again", type="server_error"))
    with pytest.raises(error):
        client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=keyed(key))
    assert stored_key(server, key) == []

    completion = client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=keyed(key))
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert chat_requests(fake_upstream) == 2
    assert stored_key(server, key) == [("alice", key, "done", 200)]


def test_a_client_that_gives_up_gets_the_answer_on_its_retry(
    client: openai.OpenAI, server: ServerProcess, fake_upstream: FakeUpstream
) -> None:
    """The SDK's timeout closes the connection and retries with the same headers: the first request
    runs on to its end, so the retry gets its answer and the upstream is asked once."""
    key = new_key()
    fake_upstream.script("chat/completions", Reply.json(chat_completion(id="chatcmpl-patient"), delay_s=1.5))
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).chat.completions.create(model=MODEL, messages=HELLO, extra_headers=keyed(key))

    def retried() -> ChatCompletion | None:
        try:
            return client.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=keyed(key))
        except openai.ConflictError:  # still running: what the SDK would retry
            return None

    completion = wait_until(retried, what="the first request's answer")
    assert completion.id == "chatcmpl-patient"
    assert chat_requests(fake_upstream) == 1


# --- what a key cannot be used with ------------------------------------------------------------


def test_a_stream_refuses_a_key(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    """A stream cannot be kept and replayed, so the key would protect nothing: a clear 400."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, stream=True, extra_headers=keyed(new_key()))
    assert_key_error(caught.value, 400, "idempotency_key_not_supported")
    assert "stream" in caught.value.message
    assert chat_requests(fake_upstream) == 0


def test_a_run_stream_refuses_a_key(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("hello")
    with pytest.raises(openai.BadRequestError) as caught:
        kit.runs.create(thread.id, assistant_id=assistant.id, stream=True, extra_headers=keyed(new_key()))
    assert_key_error(caught.value, 400, "idempotency_key_not_supported")
    assert list(kit.runs.list(thread.id)) == []


def test_a_multipart_upload_refuses_a_key(client: openai.OpenAI) -> None:
    """An upload's body is streamed to storage, not kept in memory to compare a repeat with."""
    name = f"keyed-{secrets.token_hex(4)}.txt"
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=(name, b"hello"), purpose="assistants", extra_headers=keyed(new_key()))
    assert_key_error(caught.value, 400, "idempotency_key_not_supported")
    assert "multipart" in caught.value.message
    assert name not in {file.filename for file in client.files.list()}


@pytest.mark.parametrize("key", ["", "k" * 256, '""'], ids=["empty", "256-chars", "empty-quoted"])
def test_a_bad_key_is_a_400_naming_the_header(client: openai.OpenAI, key: str) -> None:
    name = "bad key " + secrets.token_hex(4)
    with pytest.raises(openai.BadRequestError) as caught:
        client.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(key))
    assert_key_error(caught.value, 400, "invalid_idempotency_key")
    assert name not in {a.name for a in client.beta.assistants.list(limit=100)}


def test_a_255_character_key_and_its_quoted_form_are_one_key(client: openai.OpenAI) -> None:
    """The draft sends the key as a structured-field string ("..."); most clients send it bare."""
    key = secrets.token_hex(8) + "k" * 239
    first = client.beta.assistants.create(model=MODEL, extra_headers=keyed(key))
    again = client.beta.assistants.with_raw_response.create(model=MODEL, extra_headers=keyed(f'"{key}"'))
    assert again.parse() == first
    assert again.headers["idempotent-replayed"] == "true"


def test_without_a_key_nothing_is_kept(client: openai.OpenAI, server: ServerProcess) -> None:
    before = stored(server)
    name = "no key " + secrets.token_hex(4)
    client.beta.assistants.create(model=MODEL, name=name)
    client.beta.assistants.create(model=MODEL, name=name)
    # A key on a GET means nothing: reads are safe to repeat.
    client.beta.assistants.list(limit=1, extra_headers=keyed(new_key()))

    assert len([a for a in client.beta.assistants.list(limit=100) if a.name == name]) == 2
    assert stored(server) == before


# --- several servers, and time -----------------------------------------------------------------


@contextlib.contextmanager
def another_server(database: Database, fake: FakeUpstream, **env: str) -> Iterator[ServerProcess]:
    """A server without agents (nothing here needs runs); `env` may name another's database."""
    proc = ServerProcess(
        database,
        fake.base_url,
        env={"CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}", **env},
        with_agents=False,
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_servers_on_one_database_share_keys(
    server: ServerProcess, database: Database, fake_upstream: FakeUpstream
) -> None:
    """The claim is the database's unique constraint, so another process sees it at once."""
    key = new_key()
    fake_upstream.script("chat/completions", Reply.json(chat_completion(id="chatcmpl-one-of-two"), delay_s=2.0))
    with (
        another_server(database, fake_upstream, CLICKY_CHATS_DSN=server.env["CLICKY_CHATS_DSN"]) as neighbour,
        make_client(server) as here,
        make_client(neighbour) as there,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(here.chat.completions.create, model=MODEL, messages=HELLO, extra_headers=keyed(key))
        wait_until(lambda: chat_requests(fake_upstream), what="the first request to reach the upstream")
        with pytest.raises(openai.ConflictError):
            there.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=keyed(key))
        assert first.result().id == "chatcmpl-one-of-two"
        assert there.chat.completions.create(model=MODEL, messages=HELLO, extra_headers=keyed(key)) == first.result()
    assert chat_requests(fake_upstream) == 1


def test_a_claim_left_by_a_dead_server_is_taken_over(client: openai.OpenAI, server: ServerProcess) -> None:
    """A keyed request runs to its end even when its client leaves, so a claim still in flight
    longer than the upstream timeout (3 s here) plus a minute was left by a server that died."""
    model, fresh, dead = new_key(), new_key(), new_key()
    name = "taken over " + secrets.token_hex(4)
    client.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(model))
    # Two claims on the same request as another server would leave them: one just made, one
    # made 64 s ago and never finished.
    server.manage(
        "shell",
        "-c",
        "from datetime import timedelta\n"
        "from django.utils import timezone\n"
        "from clicky_chats.models import IdempotencyKey\n"
        f"model = IdempotencyKey.objects.get(project='alice', key={model!r})\n"
        f"for key, age in (({fresh!r}, 0), ({dead!r}, 64)):\n"
        "    IdempotencyKey.objects.create(project='alice', key=key, method='POST', path=model.path,\n"
        "        fingerprint=model.fingerprint, created_at=timezone.now() - timedelta(seconds=age))\n",
    )
    with pytest.raises(openai.ConflictError):
        client.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(fresh))
    created = client.beta.assistants.create(model=MODEL, name=name, extra_headers=keyed(dead))
    assert client.beta.assistants.retrieve(created.id) == created
    assert stored_key(server, fresh) == [("alice", fresh, "in_flight", None)]
    assert stored_key(server, dead) == [("alice", dead, "done", 200)]


def test_a_key_expires_after_the_ttl(database: Database, fake_upstream: FakeUpstream) -> None:
    key = new_key()
    with (
        another_server(database, fake_upstream, CLICKY_CHATS_IDEMPOTENCY_TTL_S="1") as short,
        make_client(short) as sdk,
    ):
        first = sdk.beta.assistants.create(model=MODEL, name="kept a second", extra_headers=keyed(key))
        assert sdk.beta.assistants.create(model=MODEL, name="kept a second", extra_headers=keyed(key)) == first
        time.sleep(1.1)
        later = sdk.beta.assistants.with_raw_response.create(
            model=MODEL, name="kept a second", extra_headers=keyed(key)
        )
        assert later.parse().id != first.id
        assert "idempotent-replayed" not in later.headers
        assert stored_key(short, key) == [("alice", key, "done", 200)]
