"""Fault tests for the run engine: an agent killed or paused past its lease, stopped with SIGTERM,
an upstream that dies mid-answer, a database restart, and SQLite under contention.

Each PostgreSQL test drives its own server (no in-process agents) and two `runagent` processes with
a 2 s lease, so a takeover happens within seconds; the client is the official SDK. Which agent holds
a run is read from the run row's lease_owner ("host:pid:nonce").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import time
from collections.abc import Iterator
from typing import Any

import openai
import psycopg
import pytest

from tests.conftest import ALICE_KEY, DB_KIND, make_async_client, make_client
from tests.fake_upstream import FakeUpstream, Reply, chat_chunk, text_stream
from tests.harness import AgentProcess, Database, ServerProcess, _to_conninfo, wait_until

# The SDK marks the whole Assistants API deprecated; these tests exercise it on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning"),
]

postgres_only = pytest.mark.skipif(
    DB_KIND != "postgres",
    reason="agent takeover, fencing and reconnects need several processes on one PostgreSQL "
    "(run with CLICKY_CHATS_TEST_DB=postgres)",
)

LEASE_S = 2.0
FAULT_ENV = {
    "CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}",
    "CLICKY_CHATS_RUN_LEASE_S": str(LEASE_S),
    "CLICKY_CHATS_MODEL_BACKOFF_S": "0.05",
}
# Long enough for a takeover (lease expiry + a claim poll + the answer), short enough to fail fast.
TAKEOVER_S = 20.0
TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
    },
}


def slow_answer(text: str, pieces: int, interval_s: float) -> Reply:
    """A streamed answer paced so a fault can strike while the agent is writing it."""
    return Reply.stream(text_stream(text, pieces=pieces, usage=True), interval_s=interval_s)


def tool_call_answer(call_id: str, arguments: str, interval_s: float = 0.0) -> Reply:
    chunks = [
        chat_chunk(role="assistant"),
        chat_chunk(
            tool_calls=[
                {"index": 0, "id": call_id, "type": "function", "function": {"name": "lookup", "arguments": ""}}
            ]
        ),
        chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": arguments}}]),
        chat_chunk(finish_reason="tool_calls"),
        chat_chunk(choices=False, usage=USAGE),
    ]
    return Reply.stream(chunks, interval_s=interval_s)


# --- the run row, read beside the API -------------------------------------------------------------


def connect(server: ServerProcess) -> psycopg.Connection[Any]:
    return psycopg.connect(_to_conninfo(server.env["CLICKY_CHATS_DSN"]), autocommit=True)


def run_row(server: ServerProcess, run_id: str) -> dict[str, Any]:
    with connect(server) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT status, lease_owner, lease_expires_at, fence, attempts FROM api_v1_run WHERE id = %s", [run_id]
        )
        found = cursor.fetchone()
    assert found is not None, run_id
    return dict(zip(("status", "lease_owner", "lease_expires_at", "fence", "attempts"), found, strict=True))


def run_events(server: ServerProcess, run_id: str) -> list[tuple[int, str]]:
    with connect(server) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT index, event FROM api_v1_runevent WHERE run_id = %s ORDER BY index", [run_id])
        return list(cursor.fetchall())


def holder(server: ServerProcess, run_id: str, agents: list[AgentProcess]) -> AgentProcess | None:
    """The agent whose claim on the run is current, if any."""
    owner = run_row(server, run_id)["lease_owner"]
    if not owner:
        return None
    pid = int(owner.split(":")[-2])
    found = [agent for agent in agents if agent.process is not None and agent.process.pid == pid]
    assert found, f"the run is held by {owner}, which is none of this test's agents"
    return found[0]


# --- what a finished run must look like ------------------------------------------------------------


def wait_for_status(client: openai.OpenAI, thread_id: str, run_id: str, *statuses: str, within_s: float) -> Any:
    def reached() -> Any:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        return run if run.status in statuses else None

    return wait_until(reached, within_s=within_s, what=f"run {run_id} to become {' or '.join(statuses)}")


def assistant_messages(client: openai.OpenAI, thread_id: str) -> list[Any]:
    return [m for m in client.beta.threads.messages.list(thread_id, order="asc") if m.role == "assistant"]


def text_of(message: Any) -> str:
    return "".join(part.text.value for part in message.content if part.type == "text")


def assert_one_answer(client: openai.OpenAI, thread_id: str, run_id: str, text: str) -> None:
    """The thread holds exactly one answer, completed, and the run one completed step that made it."""
    answers = assistant_messages(client, thread_id)
    assert [(m.status, text_of(m), m.run_id) for m in answers] == [("completed", text, run_id)]
    steps = list(client.beta.threads.runs.steps.list(run_id, thread_id=thread_id, order="asc"))
    creations = [s for s in steps if s.type == "message_creation"]
    assert [(s.status, s.step_details.message_creation.message_id) for s in creations] == [("completed", answers[0].id)]
    assert all(s.status == "completed" for s in steps), [(s.type, s.status) for s in steps]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    if DB_KIND != "postgres":
        pytest.skip("the fault tests run on PostgreSQL (CLICKY_CHATS_TEST_DB=postgres)")
    server = ServerProcess(database, fake_upstream.base_url, env=FAULT_ENV, with_agents=False).start()
    yield server
    server.stop()


def start_agents(server: ServerProcess, count: int = 2, env: dict[str, str] | None = None) -> list[AgentProcess]:
    """Agents started side by side (each takes a Django start-up)."""
    made = [AgentProcess(server, "--poll-interval", "0.2", env=env) for _ in range(count)]
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        list(pool.map(AgentProcess.start, made))
    return made


def stop_agents(agents: list[AgentProcess]) -> None:
    for agent in agents:
        if agent.process is not None and agent.process.poll() is None:
            agent.signal(signal.SIGCONT)  # a paused agent could not act on SIGTERM
        agent.stop()


@pytest.fixture(scope="module")
def agent_pool(fault_server: ServerProcess) -> Iterator[list[AgentProcess]]:
    pool: list[AgentProcess] = []
    yield pool
    stop_agents(pool)


@pytest.fixture
def agents(fault_server: ServerProcess, agent_pool: list[AgentProcess]) -> list[AgentProcess]:
    """Two live agents: the ones a test killed or stopped are replaced before the next test."""
    for agent in agent_pool:
        if agent.process is not None and agent.process.poll() is None:
            agent.signal(signal.SIGCONT)
    agent_pool[:] = [agent for agent in agent_pool if agent.process is not None and agent.process.poll() is None]
    agent_pool.extend(start_agents(fault_server, 2 - len(agent_pool)) if len(agent_pool) < 2 else [])
    return list(agent_pool)


@pytest.fixture
def fault_client(fault_server: ServerProcess) -> Iterator[openai.OpenAI]:
    with make_client(fault_server) as sdk:
        yield sdk


def new_thread(client: openai.OpenAI, **assistant_fields: Any) -> tuple[str, str]:
    """An assistant and a thread with one question; returns (assistant id, thread id)."""
    assistant = client.beta.assistants.create(model="fake-model", instructions="Answer briefly.", **assistant_fields)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "What is the answer?"}])
    return assistant.id, thread.id


def wait_for_partial_answer(client: openai.OpenAI, thread_id: str) -> Any:
    """The assistant message being written, once some of its text is stored."""

    def partial() -> Any:
        found = [m for m in assistant_messages(client, thread_id) if m.status == "in_progress" and text_of(m)]
        return found[0] if found else None

    return wait_until(partial, within_s=10, what="the first agent to store part of its answer")


# --- 1. an agent killed -------------------------------------------------------------------------


@postgres_only
def test_an_agent_killed_mid_answer_is_replaced_and_the_stream_sees_one_answer(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(
        "chat/completions",
        slow_answer("the answer the killed agent never finished writing", pieces=20, interval_s=0.3),
        slow_answer("The survivor's answer.", pieces=3, interval_s=0.0),
    )
    assistant_id, thread_id = new_thread(fault_client)
    run_id = ""
    killed: AgentProcess | None = None
    seen: list[str] = []
    # The client streams across the crash: its stream goes on with the survivor's events.
    with fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id, stream=True) as stream:
        for event in stream:
            seen.append(event.event)
            if event.event == "thread.run.created":
                run_id = event.data.id
            if event.event == "thread.message.delta" and killed is None:
                killed = holder(fault_server, run_id, agents)
                assert killed is not None
                killed.signal(signal.SIGKILL)
                killed.process.wait(5)  # type: ignore[union-attr]
    assert killed is not None and killed.process is not None and killed.process.returncode == -signal.SIGKILL
    assert seen[-1] == "thread.run.completed", seen
    run = fault_client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
    assert run.status == "completed" and run.last_error is None
    assert_one_answer(fault_client, thread_id, run_id, "The survivor's answer.")
    row = run_row(fault_server, run_id)
    assert row["lease_owner"] is None and row["attempts"] >= 2
    assert len([r for r in fake_upstream.requests if r.path == "chat/completions"]) == 2


@postgres_only
def test_an_agent_killed_after_requires_action_leaves_the_run_to_the_other(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(
        "chat/completions",
        tool_call_answer("call_lookup_1", '{"key": "k1"}', interval_s=0.3),
        slow_answer("Looked it up: v1.", pieces=2, interval_s=0.0),
    )
    assistant_id, thread_id = new_thread(fault_client, tools=[LOOKUP_TOOL])
    run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    writer = wait_until(lambda: holder(fault_server, run.id, agents), within_s=10, what="an agent to claim the run")
    run = wait_for_status(fault_client, thread_id, run.id, "requires_action", within_s=10)
    writer.signal(signal.SIGKILL)
    writer.process.wait(5)  # type: ignore[union-attr]
    assert run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_lookup_1", "lookup", '{"key": "k1"}')
    ]
    fault_client.beta.threads.runs.submit_tool_outputs(
        run.id, thread_id=thread_id, tool_outputs=[{"tool_call_id": "call_lookup_1", "output": "v1"}]
    )
    run = wait_for_status(fault_client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
    assert run.status == "completed"
    assert_one_answer(fault_client, thread_id, run.id, "Looked it up: v1.")
    steps = list(fault_client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc"))
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert steps[0].step_details.tool_calls[0].function.output == "v1"
    # The survivor sent the model the call and its output.
    sent = fake_upstream.last("chat/completions").json()["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_lookup_1", "content": "v1"}


@postgres_only
def test_a_run_cancelled_while_its_agent_lies_dead_ends_cancelled(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("chat/completions", slow_answer("an answer cut short by a cancel", pieces=20, interval_s=0.3))
    assistant_id, thread_id = new_thread(fault_client)
    run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    wait_for_partial_answer(fault_client, thread_id)
    killed = holder(fault_server, run.id, agents)
    assert killed is not None and killed.process is not None
    killed.signal(signal.SIGKILL)
    killed.process.wait(5)
    # Its lease still runs, so the cancel waits for an agent: the survivor, once the lease is out.
    assert fault_client.beta.threads.runs.cancel(run.id, thread_id=thread_id).status == "cancelling"
    run = wait_for_status(fault_client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
    assert run.status == "cancelled" and run.cancelled_at is not None
    answers = assistant_messages(fault_client, thread_id)
    assert [(m.status, m.incomplete_details and m.incomplete_details.reason) for m in answers] == [
        ("incomplete", "run_cancelled")
    ]
    steps = list(fault_client.beta.threads.runs.steps.list(run.id, thread_id=thread_id))
    assert [(s.type, s.status) for s in steps] == [("message_creation", "cancelled")]
    assert len([r for r in fake_upstream.requests if r.path == "chat/completions"]) == 1
    assert run_events(fault_server, run.id)[-1][1] == "thread.run.cancelled"


def test_many_rounds_of_tool_calls_are_not_counted_as_interruptions(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    """Each submission of tool outputs queues the run for a fresh claim; only claims of the same
    stretch of work (an agent died or let go of it) count towards giving up on the run."""
    rounds = 5
    fake_upstream.script(
        "chat/completions",
        *[tool_call_answer(f"call_round_{n}", f'{{"key": "k{n}"}}') for n in range(rounds)],
        slow_answer("Done after five lookups.", pieces=2, interval_s=0.0),
    )
    assistant_id, thread_id = new_thread(client, tools=[LOOKUP_TOOL])
    run = client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    for n in range(rounds):
        run = wait_for_status(client, thread_id, run.id, "requires_action", *TERMINAL, within_s=TAKEOVER_S)
        assert run.status == "requires_action", (n, run.last_error)
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread_id, tool_outputs=[{"tool_call_id": f"call_round_{n}", "output": f"v{n}"}]
        )
    run = wait_for_status(client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
    assert run.status == "completed", run.last_error
    assert_one_answer(client, thread_id, run.id, "Done after five lookups.")


# --- 2. an agent paused past its lease ------------------------------------------------------------


@postgres_only
def test_an_agent_paused_past_its_lease_is_fenced_out_when_it_wakes(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(
        "chat/completions",
        slow_answer("a stale answer from the paused agent", pieces=20, interval_s=0.25),
        slow_answer("The second agent's answer.", pieces=3, interval_s=0.0),
    )
    assistant_id, thread_id = new_thread(fault_client)
    run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    wait_for_partial_answer(fault_client, thread_id)
    paused = holder(fault_server, run.id, agents)
    assert paused is not None
    paused.signal(signal.SIGSTOP)
    try:
        finished = wait_for_status(fault_client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
        assert finished.status == "completed"
        events_before = run_events(fault_server, run.id)
        row_before = run_row(fault_server, run.id)
    finally:
        paused.signal(signal.SIGCONT)
    # Woken, the first agent still streams its stale answer and tries to write it: it must learn it
    # lost the run and write nothing.
    wait_until(
        lambda: f"run {run.id}: lease lost" in paused.log(),
        within_s=15,
        what="the paused agent to notice its lost lease",
    )
    assert "Traceback" not in paused.log()
    after = fault_client.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert (after.status, after.completed_at, after.usage) == ("completed", finished.completed_at, finished.usage)
    assert_one_answer(fault_client, thread_id, run.id, "The second agent's answer.")
    assert run_events(fault_server, run.id) == events_before
    assert events_before[-1][1] == "thread.run.completed"
    assert run_row(fault_server, run.id) == row_before


@postgres_only
def test_an_answer_longer_than_the_lease_stays_with_the_agent_that_claimed_it(
    database: Database, fake_upstream: FakeUpstream
) -> None:
    """The heartbeat looks at the run every second but renews the lease only every third of it (a
    write saved); renewed that way, an answer that outlasts the lease is never taken over. Its own
    server and agents: a 6 s lease, renewed every 2 s."""
    lease = {**FAULT_ENV, "CLICKY_CHATS_RUN_LEASE_S": "6"}
    server = ServerProcess(database, fake_upstream.base_url, env=lease, with_agents=False).start()
    started = start_agents(server)
    try:
        with make_client(server) as client:
            fake_upstream.script("chat/completions", slow_answer("Slow but sure.", pieces=14, interval_s=0.6))
            assistant_id, thread_id = new_thread(client)
            run = client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
            finished = wait_for_status(client, thread_id, run.id, *TERMINAL, within_s=40)
            assert finished.status == "completed", finished.last_error
            assert finished.completed_at - finished.started_at >= 8  # the answer outlasted the lease
            assert_one_answer(client, thread_id, run.id, "Slow but sure.")
            row = run_row(server, run.id)
            assert (row["fence"], row["attempts"]) == (1, 1)  # claimed once, by one agent
            assert len([r for r in fake_upstream.requests if r.path == "chat/completions"]) == 1
        for agent in started:
            assert "lease lost" not in agent.log() and "Traceback" not in agent.log(), agent.log()
    finally:
        stop_agents(started)
        server.stop()


@postgres_only
def test_a_run_that_cannot_be_begun_fails_alone(database: Database, fake_upstream: FakeUpstream) -> None:
    """An agent claims and begins runs in one transaction. When beginning fails (here: a stored
    message the engine cannot read), the runs are claimed without it and each begun on its own: the
    bad one fails with server_error, the one claimed beside it is answered. Its own server and
    agent, since a failure here leaves a traceback in the agent's log."""
    server = ServerProcess(database, fake_upstream.base_url, env=FAULT_ENV, with_agents=False).start()
    (agent,) = start_agents(server, count=1)
    try:
        with make_client(server) as client:
            fake_upstream.script("chat/completions", slow_answer("The good run's answer.", pieces=2, interval_s=0.0))
            assistant_id, bad_thread = new_thread(client)
            good_thread = client.beta.threads.create(messages=[{"role": "user", "content": "Hello?"}]).id
            with connect(server) as conn:
                conn.execute(
                    "UPDATE api_v1_message SET content = %s WHERE thread_id = %s", ['[{"type": "text"}]', bad_thread]
                )
            bad = client.beta.threads.runs.create(bad_thread, assistant_id=assistant_id)
            good = client.beta.threads.runs.create(good_thread, assistant_id=assistant_id)
            bad = wait_for_status(client, bad_thread, bad.id, *TERMINAL, within_s=TAKEOVER_S)
            assert bad.status == "failed" and bad.last_error is not None
            assert bad.last_error.code == "server_error"
            good = wait_for_status(client, good_thread, good.id, *TERMINAL, within_s=TAKEOVER_S)
            assert good.status == "completed", good.last_error
            assert_one_answer(client, good_thread, good.id, "The good run's answer.")
        assert "could not begin the runs with their claim" in agent.log()
        assert agent.process is not None and agent.process.poll() is None
    finally:
        stop_agents([agent])
        server.stop()


@postgres_only
def test_a_slot_freed_while_the_agent_claims_is_filled_without_waiting_for_a_poll(
    database: Database, fake_upstream: FakeUpstream
) -> None:
    """Runs claimed together end together; the slot one frees while the agent is claiming for the
    other must be filled at once, not at the next idle poll (30 s here, so a missed wake-up cannot
    hide behind a short one). The runs are queued before the agent (two slots) starts, so its first
    claim takes two. Its own server and agent."""
    server = ServerProcess(database, fake_upstream.base_url, env=FAULT_ENV, with_agents=False).start()
    agent = AgentProcess(server, "--concurrency", "2", "--poll-interval", "30")
    try:
        with make_client(server) as client:
            count = 8
            fake_upstream.script(
                "chat/completions", *[slow_answer("Answered.", pieces=2, interval_s=0.1) for _ in range(count)]
            )
            assistant_id, _ = new_thread(client)
            threads = [
                client.beta.threads.create(messages=[{"role": "user", "content": "Hi?"}]).id for _ in range(count)
            ]
            made = [client.beta.threads.runs.create(thread, assistant_id=assistant_id) for thread in threads]
            agent.start()
            started = time.monotonic()
            finished = [wait_for_status(client, run.thread_id, run.id, *TERMINAL, within_s=25) for run in made]
            assert [run.status for run in finished] == ["completed"] * count
            assert time.monotonic() - started < 25  # four rounds of two; a missed wake-up costs 30 s
        assert "Traceback" not in agent.log()
    finally:
        stop_agents([agent])
        server.stop()


def row_locked(server: ServerProcess, run_id: str) -> bool:
    """True while some transaction holds the run's row lock (taken and let go at once otherwise)."""
    with connect(server) as conn, conn.cursor() as cursor:
        try:
            cursor.execute("SELECT id FROM api_v1_run WHERE id = %s FOR UPDATE NOWAIT", [run_id])
        except psycopg.errors.LockNotAvailable:
            return True
    return False


@postgres_only
def test_an_agent_paused_holding_the_run_row_lock_does_not_lock_its_successor_out(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    """Paused inside one of its writes, an agent holds the run's row lock: the database must end
    that transaction, or no other agent can claim the run (nor a client cancel it)."""
    fake_upstream.script(
        "chat/completions",
        slow_answer("a" * 800, pieces=400, interval_s=0.05),
        slow_answer("The second agent's answer.", pieces=3, interval_s=0.0),
    )
    assistant_id, thread_id = new_thread(fault_client)
    run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    wait_for_partial_answer(fault_client, thread_id)
    paused = holder(fault_server, run.id, agents)
    assert paused is not None

    def pause_inside_a_write() -> bool:
        paused.signal(signal.SIGSTOP)
        if row_locked(fault_server, run.id):
            return True
        paused.signal(signal.SIGCONT)
        time.sleep(0.003)  # let it run a little, to land elsewhere next time
        return False

    wait_until(pause_inside_a_write, within_s=15, what="to pause the agent while it holds the run's row lock")
    try:
        finished = wait_for_status(fault_client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
    finally:
        paused.signal(signal.SIGCONT)
    assert finished.status == "completed"
    assert_one_answer(fault_client, thread_id, run.id, "The second agent's answer.")
    wait_until(
        lambda: f"run {run.id}: lease lost" in paused.log(),
        within_s=15,
        what="the paused agent to notice its lost lease",
    )
    assert paused.process is not None and paused.process.poll() is None, paused.log()
    # However PostgreSQL's ending of the stalled session reaches it (a closed socket, or the 25P03
    # error first), the agent reconnects and is refused by the fence: no crash, no traceback.
    assert "Traceback" not in paused.log()


# --- 3. the upstream dies mid-answer ------------------------------------------------------------


@postgres_only
def test_an_upstream_that_dies_mid_answer_fails_the_run_with_server_error(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    chunks = text_stream("an answer the upstream never finishes", pieces=10, usage=True)
    fake_upstream.script("chat/completions", Reply.stream(chunks, interval_s=0.05, break_after=4))
    assistant_id, thread_id = new_thread(fault_client)
    run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    run = wait_for_status(fault_client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert run.failed_at is not None and run.completed_at is None
    # What was written of the answer stays, marked incomplete; the step that wrote it failed.
    answers = assistant_messages(fault_client, thread_id)
    assert [(m.status, m.incomplete_details and m.incomplete_details.reason) for m in answers] == [
        ("incomplete", "run_failed")
    ]
    assert text_of(answers[0]) == "an answer the upstream never finishes"[: len(text_of(answers[0]))]
    assert 0 < len(text_of(answers[0])) < len("an answer the upstream never finishes")
    steps = list(fault_client.beta.threads.runs.steps.list(run.id, thread_id=thread_id))
    assert [(s.type, s.status, s.last_error and s.last_error.code) for s in steps] == [
        ("message_creation", "failed", "server_error")
    ]
    row = run_row(fault_server, run.id)
    assert (row["lease_owner"], row["lease_expires_at"]) == (None, None)
    assert run_events(fault_server, run.id)[-1][1] == "thread.run.failed"


@postgres_only
def test_an_upstream_that_goes_silent_mid_answer_fails_the_run_instead_of_holding_it(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    """The heartbeat keeps renewing the lease of a run whose upstream went quiet; only the read
    timeout (CLICKY_CHATS_MODEL_TIMEOUT_S, 3 s here) ends it."""
    chunks = text_stream("an answer that stops halfway", pieces=10, usage=True)
    fake_upstream.script("chat/completions", Reply.stream(chunks, hang_after=4))
    assistant_id, thread_id = new_thread(fault_client)
    run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    run = wait_for_status(fault_client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert [m.status for m in assistant_messages(fault_client, thread_id)] == ["incomplete"]


@postgres_only
def test_a_connection_the_upstream_drops_before_answering_is_retried(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("chat/completions", Reply.drop(), slow_answer("Answered on the retry.", 2, 0.0))
    assistant_id, thread_id = new_thread(fault_client)
    run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    run = wait_for_status(fault_client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
    assert run.status == "completed"
    assert_one_answer(fault_client, thread_id, run.id, "Answered on the retry.")
    assert len([r for r in fake_upstream.requests if r.path == "chat/completions"]) == 2


# --- 4. the database restarts ---------------------------------------------------------------------


@postgres_only
def test_agents_reconnect_after_the_database_restarts(fake_upstream: FakeUpstream) -> None:
    database = Database("postgres").start()  # its own PostgreSQL: a restart must disturb no other test
    if not database.can_restart:
        database.stop()
        pytest.skip("CLICKY_CHATS_TEST_PG_DSN names a PostgreSQL these tests cannot restart")
    server = ServerProcess(database, fake_upstream.base_url, env=FAULT_ENV, with_agents=False).start()
    started = start_agents(server)
    try:
        with make_client(server) as client:
            # Whoever finishes the first run (its agent, or the other after a takeover) says the same.
            fake_upstream.script(
                "chat/completions",
                slow_answer("Answered across the restart.", pieces=10, interval_s=0.3),
                slow_answer("Answered across the restart.", pieces=2, interval_s=0.0),
            )
            assistant_id, thread_id = new_thread(client)
            first = client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
            wait_for_partial_answer(client, thread_id)
            database.stop_postgres()
            try:
                for agent in started:
                    wait_until(
                        lambda a=agent: "database unavailable" in a.log(),
                        within_s=15,
                        what="each agent to lose the database",
                    )
            finally:
                database.start_postgres()
            finished = wait_for_status(client, thread_id, first.id, *TERMINAL, within_s=30)
            assert finished.status == "completed", finished.last_error
            assert_one_answer(client, thread_id, first.id, "Answered across the restart.")

            # A run made after the restart is claimed and answered.
            fake_upstream.reset()  # the first run may not have needed its takeover answer
            fake_upstream.script("chat/completions", slow_answer("After the restart.", pieces=2, interval_s=0.0))
            _, second_thread = new_thread(client)
            second = client.beta.threads.runs.create(second_thread, assistant_id=assistant_id)
            second = wait_for_status(client, second_thread, second.id, *TERMINAL, within_s=30)
            assert second.status == "completed", second.last_error
            assert_one_answer(client, second_thread, second.id, "After the restart.")
        for agent in started:
            assert agent.process is not None and agent.process.poll() is None, agent.log()
            assert "Traceback" not in agent.log()
    finally:
        stop_agents(started)
        server.stop()
        database.stop()


# --- 5. a graceful stop ---------------------------------------------------------------------------


def holder_of_partial_answer(
    server: ServerProcess, client: openai.OpenAI, thread_id: str, run_id: str, agents: list[AgentProcess]
) -> AgentProcess:
    wait_for_partial_answer(client, thread_id)
    found = holder(server, run_id, agents)
    assert found is not None
    return found


@postgres_only
def test_sigterm_lets_the_run_in_flight_finish_then_exits_0(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("chat/completions", slow_answer("Finished during the grace period.", 10, 0.2))
    assistant_id, thread_id = new_thread(fault_client)
    run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    stopping = holder_of_partial_answer(fault_server, fault_client, thread_id, run.id, agents)
    stopping.signal(signal.SIGTERM)
    assert stopping.process is not None and stopping.process.wait(15) == 0, stopping.log()
    assert "finishing 1 run(s) before stopping" in stopping.log()
    # It finished the run itself before exiting: nobody else had to take it over.
    done = fault_client.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
    assert done.status == "completed"
    assert_one_answer(fault_client, thread_id, run.id, "Finished during the grace period.")
    assert run_row(fault_server, run.id)["attempts"] == 1
    assert "Traceback" not in stopping.log()


@postgres_only
def test_sigterm_past_the_grace_period_releases_the_run_to_another_agent(
    fault_server: ServerProcess,
    agent_pool: list[AgentProcess],
    fault_client: openai.OpenAI,
    fake_upstream: FakeUpstream,
) -> None:
    stop_agents(agent_pool)  # this test needs agents with a short grace period
    started = start_agents(fault_server, env={"CLICKY_CHATS_AGENT_GRACE_S": "0.5"})
    try:
        fake_upstream.script(
            "chat/completions",
            slow_answer("too long to finish in half a second of grace", pieces=30, interval_s=0.3),
            slow_answer("The other agent's answer.", pieces=2, interval_s=0.0),
        )
        assistant_id, thread_id = new_thread(fault_client)
        run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
        stopping = holder_of_partial_answer(fault_server, fault_client, thread_id, run.id, started)
        claim = run_row(fault_server, run.id)["lease_owner"]
        stopping.signal(signal.SIGTERM)
        assert stopping.process is not None and stopping.process.wait(10) == 0, stopping.log()
        # Released, not abandoned: the claim is gone at exit, so the other agent need not wait out the lease.
        assert run_row(fault_server, run.id)["lease_owner"] != claim
        done = wait_for_status(fault_client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
        assert done.status == "completed"
        assert_one_answer(fault_client, thread_id, run.id, "The other agent's answer.")
        assert "Traceback" not in stopping.log()
    finally:
        stop_agents(started)


@postgres_only
def test_a_second_sigterm_stops_the_agent_at_once(
    fault_server: ServerProcess, agents: list[AgentProcess], fault_client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(
        "chat/completions",
        slow_answer("an answer far longer than the wait for a second signal", pieces=40, interval_s=0.3),
        slow_answer("The other agent's answer.", pieces=2, interval_s=0.0),
    )
    assistant_id, thread_id = new_thread(fault_client)
    run = fault_client.beta.threads.runs.create(thread_id, assistant_id=assistant_id)
    stopping = holder_of_partial_answer(fault_server, fault_client, thread_id, run.id, agents)
    claim = run_row(fault_server, run.id)["lease_owner"]
    stopping.signal(signal.SIGTERM)
    wait_until(
        lambda: "finishing 1 run(s) before stopping" in stopping.log(),
        within_s=10,
        what="the agent to enter its grace period",
    )
    stopping.signal(signal.SIGTERM)
    assert stopping.process is not None
    started_at = time.monotonic()
    stopping.process.wait(10)
    assert time.monotonic() - started_at < 5, stopping.log()  # not the 10 s grace period
    assert stopping.process.returncode == 1, stopping.log()
    # Even in a hurry it gave the run back rather than leave it to its lease to run out.
    assert run_row(fault_server, run.id)["lease_owner"] != claim
    assert "Traceback" not in stopping.log() and " ERROR " not in stopping.log(), stopping.log()
    done = wait_for_status(fault_client, thread_id, run.id, *TERMINAL, within_s=TAKEOVER_S)
    assert done.status == "completed"
    assert_one_answer(fault_client, thread_id, run.id, "The other agent's answer.")


# --- 6. SQLite under contention --------------------------------------------------------------------


def test_sqlite_with_three_agent_loops_completes_twenty_runs_at_once(fake_upstream: FakeUpstream) -> None:
    """One SQLite file shared by the server (with its in-process agents) and two runagent
    processes: writers queue on the busy timeout, so no "database is locked" escapes."""
    server = ServerProcess(Database("sqlite"), fake_upstream.base_url, env=FAULT_ENV, with_agents=True).start()
    started = start_agents(server)
    count = 20
    try:
        fake_upstream.script(
            "chat/completions", *[slow_answer(f"Answer {n}.", pieces=4, interval_s=0.05) for n in range(count)]
        )
        with make_client(server) as client:
            assistant = client.beta.assistants.create(model="fake-model", instructions="Answer briefly.")

        async def create_all() -> list[Any]:
            async with make_async_client(server) as sdk:
                return await asyncio.gather(
                    *(
                        sdk.beta.threads.create_and_run(
                            assistant_id=assistant.id,
                            thread={"messages": [{"role": "user", "content": f"Question {n}"}]},
                        )
                        for n in range(count)
                    )
                )

        runs = asyncio.run(create_all())
        with make_client(server) as client:
            finished = [wait_for_status(client, run.thread_id, run.id, *TERMINAL, within_s=60) for run in runs]
            assert [run.status for run in finished] == ["completed"] * count, [r.last_error for r in finished]
            answers = sorted(text_of(m) for run in runs for m in assistant_messages(client, run.thread_id))
        assert answers == sorted(f"Answer {n}." for n in range(count))
        # One model call per run: no run was driven twice.
        assert sum(1 for r in fake_upstream.requests if r.path == "chat/completions") == count
        logs = {"server": server.log(), **{f"agent {n}": agent.log() for n, agent in enumerate(started)}}
        for name, text in logs.items():
            assert "Traceback" not in text, f"{name}:\n{text}"
            errors = [line for line in text.splitlines() if " ERROR " in line or "database is locked" in line]
            assert not errors, f"{name}:\n{text}"
    finally:
        stop_agents(started)
        server.stop()
