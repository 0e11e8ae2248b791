"""Schemathesis against the real server: every operation of /v1/openapi.yaml, on /v1, /v1/rubra and
/v1/rubra/x, with inputs that fit the schema and inputs that break it. Whatever comes in, the answer
is never a 5xx, matches the schema (a 2xx its object, a 4xx OpenAI's error envelope) and has a
documented content type.

Derandomized and bounded (FUZZ_EXAMPLES per operation; CLICKY_CHATS_FUZZ_EXAMPLES raises it for a
longer hunt), so the suite runs the same cases every time. Path parameters are mostly the ids of
objects made beforehand, so bodies reach the code behind the 404.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import hypothesis
import orjson
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import make_client, running_stack
from tests.fake_upstream import FakeUpstream
from tests.harness import Database, ServerProcess

FUZZ_KEY = "sk-fuzz-test-key"
FUZZ_EXAMPLES = int(os.environ.get("CLICKY_CHATS_FUZZ_EXAMPLES", "10"))
# A regular expression over "METHOD /path" to fuzz only some operations while hunting a bug.
FUZZ_ONLY = re.compile(os.environ.get("CLICKY_CHATS_FUZZ_ONLY", ""))
SEED = 20260101
# Tools fetch `url`/`server_url` from the network; fuzzed ones go to loopback, which the tools' guard
# refuses (the test's traffic stays on this machine, and the refusal path is fuzzed too).
REFUSED_URL = "http://127.0.0.1:9/tool.gpt"
ECHO_TOOL = "Name: echo\nDescription: Says its input back\nArgs: input: what to say\n\n#!sys.echo\n"


@pytest.fixture(scope="module")
def fuzz_server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """A server of its own: the fuzzer fills a project with junk no other test should list."""
    with running_stack(
        database,
        fake_upstream.base_url,
        {
            "CLICKY_CHATS_API_KEYS": f"fuzz:{FUZZ_KEY}",
            "CLICKY_CHATS_MODEL_BACKOFF_S": "0.05",
            "CLICKY_CHATS_EMBEDDING_MODEL": "fake-bow-embedder",
        },
    ) as proc:
        yield proc


def x_post(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Our own APIs, which the SDK does not know."""
    answer = requests.post(
        f"{server.url}/v1/rubra/x/{path}", json=body, headers={"Authorization": f"Bearer {FUZZ_KEY}"}, timeout=20
    )
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def make_objects(server: ServerProcess) -> dict[str, str]:
    """One of everything a path names, by the path parameter's name."""
    with make_client(server, FUZZ_KEY) as sdk:
        file = sdk.files.create(file=("notes.txt", b"apples are red\nbananas are yellow\n"), purpose="assistants")
        store = sdk.vector_stores.create(name="fuzzed", file_ids=[file.id])
        batch = sdk.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=[file.id])
        assistant = sdk.beta.assistants.create(model="fake-model", instructions="Answer briefly.")
        thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
        message = sdk.beta.threads.messages.list(thread_id=thread.id).data[0]
        run = sdk.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50)
        assert run.status == "completed", run.last_error
        step = sdk.beta.threads.runs.steps.list(run_id=run.id, thread_id=thread.id).data[0]
        upload = sdk.uploads.create(bytes=6, filename="part.txt", mime_type="text/plain", purpose="assistants")
        completion = sdk.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], store=True
        )
    tool = x_post(server, "tools", {"contents": ECHO_TOOL})
    tool_run = x_post(server, "tools/run", {"tool_id": tool["id"], "input": {"input": "hi"}})
    return {
        "file_id": file.id,
        "vector_store_id": store.id,
        "batch_id": batch.id,
        "assistant_id": assistant.id,
        "thread_id": thread.id,
        "message_id": message.id,
        "run_id": run.id,
        "step_id": step.id,
        "upload_id": upload.id,
        "completion_id": completion.id,
        "tool_id": tool["id"],
        "tool_run_id": tool_run["id"],
        "model": "fake-model",
    }


@pytest.fixture(scope="module")
def known_ids(fuzz_server: ServerProcess) -> dict[str, str]:
    return make_objects(fuzz_server)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerProcess) -> BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {FUZZ_KEY}"},
            "request-timeout": 15,
            "generation": {"deterministic": True, "database": "none"},
        }
    )
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/v1/openapi.yaml", config=config)


def error_envelope(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx and 5xx is JSON in OpenAI's envelope, with a message that says something."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{response.status_code} answered as {content_type!r}"
    body = orjson.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the envelope: {body!r}"
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, f"envelope fields: {sorted(error)}"
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_envelope,
]


def steer_away_from_the_network(case: Case) -> None:
    if isinstance(case.body, dict):
        for name in ("url", "server_url"):
            if isinstance(case.body.get(name), str):
                case.body[name] = REFUSED_URL


def fuzz(operation: APIOperation, base_url: str, known: dict[str, str], examples: int) -> None:
    """`examples` cases of the operation, half fitting its schema and half breaking it; path
    parameters are the known objects' ids (but for DELETE, so they outlive the run) or fuzzed ones."""
    names = re.findall(r"\{(\w+)\}", operation.path)
    real = {name: known[name] for name in names if name in known}
    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategies.append(operation.as_strategy(mode))
        if real and operation.method.upper() != "DELETE":
            strategies.append(operation.as_strategy(mode, path_parameters=real))

    # Schemathesis's own pytest integration (from_fixture) does not run on pytest 9, hence Hypothesis
    # by hand; derandomized, so every run sends the same cases.
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=st.one_of(strategies))
    def call(case: Case) -> None:
        steer_away_from_the_network(case)
        case.call_and_validate(base_url=base_url, checks=CHECKS)

    call()


def describe(exc: BaseException) -> str:
    """The failure with what Schemathesis found inside it (Hypothesis wraps it in groups)."""
    text = str(exc)
    for inner in getattr(exc, "exceptions", ()):
        text += "\n" + describe(inner)
    return text


def test_every_operation_answers_per_schema(
    fuzz_server: ServerProcess, api_schema: BaseSchema, known_ids: dict[str, str]
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 150, "the schema lost operations"
    operations = [operation for operation in operations if FUZZ_ONLY.search(operation.label)]
    failures: list[str] = []
    for operation in operations:
        try:
            fuzz(operation, fuzz_server.url, known_ids, FUZZ_EXAMPLES)
        # Every operation gets its turn, and all failures are reported together. Schemathesis's
        # FailureGroup is a BaseExceptionGroup, not an Exception.
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label}:\n{describe(exc)}")
    assert not failures, f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)


def test_the_schema_names_every_tier(fuzz_server: ServerProcess) -> None:
    """The schema the fuzzer reads covers the routes of all three tiers, runs included."""
    document = requests.get(f"{fuzz_server.url}/v1/openapi.yaml?format=json", timeout=20).json()
    paths = document["paths"]
    for route in (
        "/v1/threads/{thread_id}/runs",
        "/v1/rubra/threads/{thread_id}/runs/{run_id}/steps/{step_id}",
        "/v1/rubra/x/tools/run",
        "/v1/x-tools/{tool_id}",
        "/v1/rubra/x/threads/{thread_id}/runs/{run_id}/steps/{step_id}/events",
    ):
        assert route in paths, route
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
