"""What the run tests share: a per-test kit that creates assistants and threads and, when the test
ends, proves every run it touched reached a terminal state; scripted model answers; a raw SSE
reader for the checks the SDK's stream helpers hide."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
import requests
from openai.types.beta import Assistant, Thread
from openai.types.beta.threads import Run

from tests.conftest import ALICE_KEY
from tests.fake_upstream import FakeUpstream, chat_chunk
from tests.harness import ServerProcess, wait_until

MODEL = "fake-model"
POLL_MS = 50  # the SDK's poll helpers otherwise wait a second between looks
DEADLINE_S = 10.0
TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


class RunKit:
    """Creates what a run test needs and remembers every thread, so the teardown can check that
    no run was left queued, in progress, waiting on tool outputs or cancelling."""

    def __init__(self, client: openai.OpenAI, server: ServerProcess, fake: FakeUpstream) -> None:
        self.client = client
        self.server = server
        self.fake = fake
        self.thread_ids: list[str] = []

    @property
    def runs(self) -> Any:
        return self.client.beta.threads.runs

    def assistant(self, **fields: Any) -> Assistant:
        fields.setdefault("model", MODEL)
        fields.setdefault("instructions", "You are a test assistant.")
        return self.client.beta.assistants.create(**fields)

    def thread(self, *texts: str) -> Thread:
        thread = self.client.beta.threads.create(messages=[{"role": "user", "content": text} for text in texts])
        return self.track(thread)

    def track(self, thread: Any) -> Any:
        """Remembers a thread (or the thread of a run) the server created for this test."""
        self.thread_ids.append(getattr(thread, "thread_id", None) or thread.id)
        return thread

    def wait(self, run: Run, *statuses: str, within_s: float = DEADLINE_S) -> Run:
        """The run, once its status is one of `statuses`."""
        found: dict[str, Run] = {}

        def reached() -> bool:
            found["run"] = self.runs.retrieve(run.id, thread_id=run.thread_id)
            return found["run"].status in statuses

        wait_until(reached, within_s=within_s, what=f"run {run.id} to become {' or '.join(statuses)}")
        return found["run"]

    def poll(self, run: Run) -> Run:
        return self.runs.poll(run.id, thread_id=run.thread_id, poll_interval_ms=POLL_MS)

    def messages(self, thread_id: str) -> list[Any]:
        return list(self.client.beta.threads.messages.list(thread_id, order="asc"))

    def assert_all_runs_ended(self) -> None:
        for thread_id in self.thread_ids:
            for run in self.runs.list(thread_id):
                if run.status not in TERMINAL:
                    self.wait(run, *TERMINAL)


@pytest.fixture
def kit(client: openai.OpenAI, server: ServerProcess, fake_upstream: FakeUpstream) -> Iterator[RunKit]:
    made = RunKit(client, server, fake_upstream)
    yield made
    made.assert_all_runs_ended()


# --- scripted model answers --------------------------------------------------------------------


def answer(*pieces: str, usage: dict[str, int] | None = USAGE, finish_reason: str = "stop") -> list[dict[str, Any]]:
    """A streamed chat answer made of these text pieces, as OpenAI sends it."""
    chunks = [chat_chunk("", role="assistant")]
    chunks += [chat_chunk(piece) for piece in pieces]
    chunks.append(chat_chunk(finish_reason=finish_reason))
    if usage is not None:
        chunks.append(chat_chunk(choices=False, usage=usage))
    return chunks


def tool_call_answer(*calls: tuple[str, str, list[str]], usage: dict[str, int] | None = USAGE) -> list[dict[str, Any]]:
    """A streamed answer calling functions: each call is (call id, function name, argument
    fragments); OpenAI names the id and function in a call's first fragment only."""
    chunks = [chat_chunk(role="assistant")]
    for index, (call_id, name, fragments) in enumerate(calls):
        chunks.append(
            chat_chunk(
                tool_calls=[
                    {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                ]
            )
        )
        chunks += [chat_chunk(tool_calls=[{"index": index, "function": {"arguments": part}}]) for part in fragments]
    chunks.append(chat_chunk(finish_reason="tool_calls"))
    if usage is not None:
        chunks.append(chat_chunk(choices=False, usage=usage))
    return chunks


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}


# --- raw HTTP ----------------------------------------------------------------------------------


def api(server: ServerProcess, method: str, path: str, body: Any = None, *, key: str = ALICE_KEY) -> requests.Response:
    return requests.request(
        method,
        f"{server.url}/v1/{path.lstrip('/')}",
        data=None if body is None else orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "OpenAI-Beta": "assistants=v2"},
        timeout=20,
    )


def sse_post(server: ServerProcess, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    """POSTs with stream:true and reads the whole SSE answer as (event, data) pairs, data parsed as
    JSON except for `done`'s literal [DONE]."""
    response = requests.post(
        f"{server.url}/v1/{path.lstrip('/')}",
        data=orjson.dumps({**body, "stream": True}),
        headers={"Authorization": f"Bearer {ALICE_KEY}", "Content-Type": "application/json"},
        stream=True,
        # A server that kept the stream open after `done` would show here as a read timeout
        # (its keep-alives come every 15 s); no scripted answer pauses this long.
        timeout=(5, 5),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events: list[tuple[str, Any]] = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = next(line[len("event: ") :] for line in lines if line.startswith("event: "))
        data = "\n".join(line[len("data: ") :] for line in lines if line.startswith("data: "))
        events.append((name, data if data == "[DONE]" else orjson.loads(data)))
    return events


def assert_envelope(response: requests.Response, status: int) -> dict[str, Any]:
    """The answer is OpenAI's error envelope with all four keys; returns the inner error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]
