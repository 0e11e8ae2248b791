"""The Assistants v1 dialect (`OpenAI-Beta: assistants=v1`) beside v2, through the official SDK.

The SDK is v2-only: it sets `OpenAI-Beta: assistants=v2` on every beta call, over its
default_headers, so the v1 client here puts v1 back with a request hook, as the `openai` npm client
4.28 (the Rubra UI's) and openai-python up to 1.20 sent it. Where the strict SDK cannot parse a
faithful v1 object (a `retrieval` tool is not in its v2 tool union; a v1 run has no
`parallel_tool_calls`, which its Run requires) the calls go through a loose client and the tests
check the JSON themselves.

The v1 key sets below are the `required` lists of OpenAI's v1 spec (openai-openapi 399458ce, the
one the Go clicky-chats pinned).
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx2
import openai
import orjson
import pytest
import requests

from tests.conftest import ALICE_KEY, make_client, running_stack
from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import Database, ServerProcess
from tests.runs_support import MODEL, answer, tool_call_answer, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SCHEMAS = json.loads((Path(__file__).parent / "openai_assistants_schemas.json").read_text())["components"]["schemas"]
V1_ASSISTANT_KEYS = {
    "id",
    "object",
    "created_at",
    "name",
    "description",
    "model",
    "instructions",
    "tools",
    "file_ids",
    "metadata",
}
V1_THREAD_KEYS = {"id", "object", "created_at", "metadata"}
V1_MESSAGE_KEYS = {
    "id",
    "object",
    "created_at",
    "thread_id",
    "status",
    "incomplete_details",
    "completed_at",
    "incomplete_at",
    "role",
    "content",
    "assistant_id",
    "run_id",
    "file_ids",
    "metadata",
}
V1_RUN_KEYS = {
    "id",
    "object",
    "created_at",
    "thread_id",
    "assistant_id",
    "status",
    "required_action",
    "last_error",
    "expires_at",
    "started_at",
    "cancelled_at",
    "failed_at",
    "completed_at",
    "model",
    "instructions",
    "tools",
    "file_ids",
    "metadata",
    "usage",
}
V1_STEP_KEYS = {
    "id",
    "object",
    "created_at",
    "assistant_id",
    "thread_id",
    "run_id",
    "type",
    "status",
    "step_details",
    "last_error",
    "expired_at",
    "cancelled_at",
    "failed_at",
    "completed_at",
    "metadata",
    "usage",
}
HANDBOOK = b"# Office handbook\n\nThe office cat is named Biscuit and sleeps on the printer every afternoon.\n"
RECIPES = b"# Recipes\n\nPancakes need flour, milk, eggs and a hot pan.\n"
TERMINAL = ("completed", "failed", "cancelled", "expired")


def force_v1(request: httpx2.Request) -> None:
    request.headers["OpenAI-Beta"] = "assistants=v1"


def v1_client(server: ServerProcess, key: str = ALICE_KEY, *, strict: bool = True) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url + "/v1",
        api_key=key,
        max_retries=0,
        timeout=20,
        default_headers={"OpenAI-Beta": "assistants=v1"},
        http_client=httpx2.Client(event_hooks={"request": [force_v1]}),
        _strict_response_validation=strict,
    )


def body(response: Any) -> dict[str, Any]:
    """The JSON of a `with_raw_response` call, which must have been sent as v1 or v2 as meant."""
    return response.http_response.json()  # type: ignore[no-any-return]


def v1_json(response: Any) -> dict[str, Any]:
    assert response.http_request.headers["OpenAI-Beta"] == "assistants=v1"
    return body(response)


def expect_error(status: int, param: str | None, call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == status, caught.value.response.text
    error: dict[str, Any] = caught.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    return error


def manage_json(server: ServerProcess, code: str) -> Any:
    """Runs `code` in `manage.py shell` on the server's database; it prints one JSON value."""
    return json.loads(server.manage("shell", "--no-imports", "-c", code).stdout)


def hidden_store_files(server: ServerProcess, store_id: str) -> dict[str, Any]:
    """What the database holds for a store: whether it exists and is hidden, its files' states."""
    return manage_json(  # type: ignore[no-any-return]
        server,
        "import json; from api_v1.models import VectorStore, VectorStoreFile; "
        f"s = VectorStore.objects.filter(pk={store_id!r}).first(); "
        "print(json.dumps({'exists': s is not None, 'hidden': bool(s and s.hidden), 'files': "
        f"dict(VectorStoreFile.objects.filter(vector_store_id={store_id!r}).values_list('file_id', 'status'))}}))",
    )


def store_of(client: openai.OpenAI, assistant_id: str) -> str | None:
    """The vector store a v2 client sees on the assistant."""
    resources = client.beta.assistants.retrieve(assistant_id).tool_resources
    if resources is None or resources.file_search is None or not resources.file_search.vector_store_ids:
        return None
    return resources.file_search.vector_store_ids[0]


def upload(client: openai.OpenAI, name: str, content: bytes) -> str:
    return client.files.create(file=(name, content), purpose="assistants").id


def poll_run(client: openai.OpenAI, thread_id: str, run_id: str) -> dict[str, Any]:
    """Polls a run (through a loose v1 client) to a terminal status; its last JSON."""
    found: dict[str, Any] = {}

    def ended() -> bool:
        found["run"] = v1_json(client.beta.threads.runs.with_raw_response.retrieve(run_id, thread_id=thread_id))
        return found["run"]["status"] in TERMINAL

    wait_until(ended, what=f"run {run_id} to end")
    return found["run"]


# --- assistants' file_ids --------------------------------------------------------------------------


def test_v1_file_ids_fill_a_hidden_store_that_the_agents_ingest(server: ServerProcess, client: openai.OpenAI) -> None:
    handbook, recipes = upload(client, "handbook.md", HANDBOOK), upload(client, "recipes.md", RECIPES)
    with v1_client(server, strict=False) as v1:  # loose: the answer has a `retrieval` tool
        made = v1_json(
            v1.beta.assistants.with_raw_response.create(
                model=MODEL, name="librarian", extra_body={"file_ids": [handbook, recipes]}
            )
        )
        assert set(made) == V1_ASSISTANT_KEYS
        assert (made["tools"], made["file_ids"]) == ([{"type": "retrieval"}], [handbook, recipes])
        assert v1_json(v1.beta.assistants.with_raw_response.retrieve(made["id"])) == made
        listed = v1_json(v1.beta.assistants.with_raw_response.list(limit=100))
        assert made in listed["data"]

    # A v2 client sees the same assistant in v2 terms: file_search over the store, no file_ids.
    as_v2 = body(client.beta.assistants.with_raw_response.retrieve(made["id"]))
    assert set(as_v2) == set(SCHEMAS["AssistantObject"]["properties"])
    assert as_v2["tools"] == [{"type": "file_search"}]
    store_id = as_v2["tool_resources"]["file_search"]["vector_store_ids"][0]
    assert store_id.startswith("vs_") and store_id not in {s.id for s in client.vector_stores.list(limit=100)}

    def ingested() -> dict[str, Any] | None:
        stored = hidden_store_files(server, store_id)
        return stored if set(stored["files"].values()) == {"completed"} else None

    stored = wait_until(ingested, within_s=60, what="the agents to ingest the assistant's files")
    assert stored == {"exists": True, "hidden": True, "files": {handbook: "completed", recipes: "completed"}}


def test_v1_modify_follows_file_ids_with_the_store_and_the_retrieval_tool(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    handbook, recipes = upload(client, "handbook.md", HANDBOOK), upload(client, "recipes.md", RECIPES)
    with v1_client(server, strict=False) as v1:
        made = v1_json(
            v1.beta.assistants.with_raw_response.create(
                model=MODEL, tools=[{"type": "code_interpreter"}], extra_body={"file_ids": [handbook]}
            )
        )
        assert made["tools"] == [{"type": "code_interpreter"}, {"type": "retrieval"}]
        store_id = store_of(client, made["id"])
        assert store_id is not None

        def modify(**fields: Any) -> dict[str, Any]:
            return v1_json(v1.beta.assistants.with_raw_response.update(made["id"], extra_body=fields))

        swapped = modify(file_ids=[recipes])
        assert (swapped["file_ids"], swapped["tools"]) == ([recipes], made["tools"])
        assert store_of(client, made["id"]) == store_id
        assert set(hidden_store_files(server, store_id)["files"]) == {recipes}

        renamed = modify(name="kept files")  # no file_ids: the files stay
        assert (renamed["name"], renamed["file_ids"]) == ("kept files", [recipes])

        emptied = modify(file_ids=[])
        assert (emptied["file_ids"], emptied["tools"]) == ([], [{"type": "code_interpreter"}])
        assert store_of(client, made["id"]) is None
        assert hidden_store_files(server, store_id)["exists"] is False

        back = modify(file_ids=[handbook, recipes], tools=[])
        assert (back["file_ids"], back["tools"]) == ([handbook, recipes], [{"type": "retrieval"}])
        new_store = store_of(client, made["id"])
        assert new_store not in (None, store_id)

        v1.beta.assistants.delete(made["id"])
    assert hidden_store_files(server, new_store)["exists"] is False  # the store goes with its assistant
    assert {f.id for f in client.files.list()} >= {handbook, recipes}  # the files stay


def test_a_v2_change_of_tool_resources_drops_the_hidden_store(server: ServerProcess, client: openai.OpenAI) -> None:
    handbook = upload(client, "handbook.md", HANDBOOK)
    with v1_client(server, strict=False) as v1:
        made = v1_json(v1.beta.assistants.with_raw_response.create(model=MODEL, extra_body={"file_ids": [handbook]}))
    hidden = store_of(client, made["id"])
    visible = client.vector_stores.create(name="shared")
    client.beta.assistants.update(made["id"], tool_resources={"file_search": {"vector_store_ids": [visible.id]}})
    assert store_of(client, made["id"]) == visible.id
    assert hidden is not None and hidden_store_files(server, hidden)["exists"] is False
    with v1_client(server, strict=False) as v1:
        assert v1_json(v1.beta.assistants.with_raw_response.retrieve(made["id"]))["file_ids"] == []


def test_file_ids_must_be_the_callers_own_files(
    server: ServerProcess, client: openai.OpenAI, bob: openai.OpenAI
) -> None:
    mine, bobs = upload(client, "handbook.md", HANDBOOK), upload(bob, "bob.md", RECIPES)
    before = {a.id for a in client.beta.assistants.list(limit=100)}
    with v1_client(server, strict=False) as v1:
        create = v1.beta.assistants.create
        expect_error(404, "file_ids[1]", lambda: create(model=MODEL, extra_body={"file_ids": [mine, bobs]}))
        expect_error(404, "file_ids[0]", lambda: create(model=MODEL, extra_body={"file_ids": ["file-nope"]}))
        expect_error(400, "file_ids", lambda: create(model=MODEL, extra_body={"file_ids": mine}))
        expect_error(400, "file_ids[0]", lambda: create(model=MODEL, extra_body={"file_ids": [7]}))
        expect_error(400, "file_ids", lambda: create(model=MODEL, extra_body={"file_ids": [mine] * 21}))
        made = create(model=MODEL)
        expect_error(
            404, "file_ids[0]", lambda: v1.beta.assistants.update(made.id, extra_body={"file_ids": ["file-nope"]})
        )
        assert v1_json(v1.beta.assistants.with_raw_response.retrieve(made.id))["file_ids"] == []

        thread = v1.beta.threads.create()
        add = v1.beta.threads.messages.create
        expect_error(
            404, "file_ids[0]", lambda: add(thread.id, role="user", content="hi", extra_body={"file_ids": [bobs]})
        )
        expect_error(
            400, "file_ids", lambda: add(thread.id, role="user", content="hi", extra_body={"file_ids": [mine] * 11})
        )
        expect_error(
            404,
            "messages[1].file_ids[0]",
            lambda: v1.beta.threads.create(
                messages=[
                    {"role": "user", "content": "first"},
                    {"role": "user", "content": "second", "file_ids": ["file-nope"]},  # type: ignore[typeddict-unknown-key]
                ]
            ),
        )
        assert v1.beta.threads.messages.list(thread.id).data == []
    assert {a.id for a in client.beta.assistants.list(limit=100)} - before == {made.id}


def test_retrieval_is_the_v1_tool_and_file_search_the_v2_one(server: ServerProcess, client: openai.OpenAI) -> None:
    retrieval: Any = {"type": "retrieval"}
    error = expect_error(400, "tools[0].type", lambda: client.beta.assistants.create(model=MODEL, tools=[retrieval]))
    assert "file_search" in error["message"] and "assistants=v1" in error["message"]
    with v1_client(server, strict=False) as v1:
        error = expect_error(
            400, "tools[0].type", lambda: v1.beta.assistants.create(model=MODEL, tools=[{"type": "file_search"}])
        )
        assert "retrieval" in error["message"]
        made = v1.beta.assistants.create(model=MODEL)
        thread = v1.beta.threads.create()
        expect_error(
            400,
            "tools[0].type",
            lambda: client.beta.threads.runs.create(thread.id, assistant_id=made.id, tools=[retrieval]),
        )
        expect_error(
            400,
            "tools[1].type",
            lambda: client.beta.assistants.update(made.id, tools=[{"type": "code_interpreter"}, retrieval]),
        )


# --- v1 objects ------------------------------------------------------------------------------------


def test_v1_objects_have_v1_fields_and_v2_objects_never_show_file_ids(
    server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    handbook = upload(client, "handbook.md", HANDBOOK)
    fake_upstream.script("chat/completions", Reply.stream(answer("Biscuit ", "is the cat.")))
    with v1_client(server) as v1, v1_client(server, strict=False) as loose:
        asst = v1_json(
            v1.beta.assistants.with_raw_response.create(
                model=MODEL, instructions="Answer briefly.", tools=[{"type": "code_interpreter"}], temperature=0.3
            )
        )
        assert set(asst) == V1_ASSISTANT_KEYS and asst["file_ids"] == []
        assert client.beta.assistants.retrieve(asst["id"]).temperature is None  # not a v1 field: ignored

        thread = v1_json(
            v1.beta.threads.with_raw_response.create(
                messages=[{"role": "user", "content": "Who is the cat?", "file_ids": [handbook]}],  # type: ignore[typeddict-unknown-key]
                metadata={"topic": "cats"},
            )
        )
        assert set(thread) == V1_THREAD_KEYS and thread["metadata"] == {"topic": "cats"}
        later = v1_json(
            v1.beta.threads.messages.with_raw_response.create(
                thread["id"], role="user", content="And the printer?", extra_body={"file_ids": [handbook]}
            )
        )
        assert set(later) == V1_MESSAGE_KEYS and later["file_ids"] == [handbook]

        run = v1_json(loose.beta.threads.runs.with_raw_response.create(thread["id"], assistant_id=asst["id"]))
        assert set(run) == V1_RUN_KEYS and run["tools"] == [{"type": "code_interpreter"}]
        ended = poll_run(loose, thread["id"], run["id"])
        assert set(ended) == V1_RUN_KEYS and ended["status"] == "completed" and ended["usage"] is not None

        messages = v1_json(v1.beta.threads.messages.with_raw_response.list(thread["id"]))["data"]
        assert [m["role"] for m in messages] == ["assistant", "user", "user"]  # newest first
        assert all(set(m) == V1_MESSAGE_KEYS for m in messages)
        assert [m["file_ids"] for m in messages] == [[], [handbook], [handbook]]
        assert messages[0]["content"][0]["text"]["value"] == "Biscuit is the cat."

        steps = v1_json(loose.beta.threads.runs.steps.with_raw_response.list(run["id"], thread_id=thread["id"]))
        assert steps["data"] and all(set(step) == V1_STEP_KEYS for step in steps["data"])

    # The same objects through v2: their v2 fields, and never file_ids.
    v2_messages = body(client.beta.threads.messages.with_raw_response.list(thread["id"]))["data"]
    assert all(set(m) == set(SCHEMAS["MessageObject"]["properties"]) for m in v2_messages)
    assert v2_messages[1]["attachments"] == [{"file_id": handbook, "tools": [{"type": "file_search"}]}]
    v2_run = client.beta.threads.runs.with_raw_response.retrieve(run["id"], thread_id=thread["id"])
    assert v2_run.parse().parallel_tool_calls is True and "file_ids" not in body(v2_run)  # strict: v2's run
    v2_thread = body(client.beta.threads.with_raw_response.retrieve(thread["id"]))
    assert set(v2_thread) == set(SCHEMAS["ThreadObject"]["properties"])


def test_a_v1_run_names_its_tools_the_v1_way(server: ServerProcess, client: openai.OpenAI) -> None:
    with v1_client(server) as v1, v1_client(server, strict=False) as loose:
        asst = v1.beta.assistants.create(model=MODEL)
        thread = v1.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
        run = v1_json(
            loose.beta.threads.runs.with_raw_response.create(
                thread.id,
                assistant_id=asst.id,
                tools=[{"type": "retrieval"}, {"type": "code_interpreter"}],  # type: ignore[list-item]
            )
        )
        assert run["tools"] == [{"type": "retrieval"}, {"type": "code_interpreter"}]
        poll_run(loose, thread.id, run["id"])
    assert [t.type for t in client.beta.threads.runs.retrieve(run["id"], thread_id=thread.id).tools] == [
        "file_search",
        "code_interpreter",
    ]


def test_a_v1_stream_carries_v1_objects(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("chat/completions", Reply.stream(answer("streamed ", "in v1")))
    with v1_client(server) as v1:
        asst = v1.beta.assistants.create(model=MODEL)
    # Raw SSE: the SDK's stream helpers parse events into its v2 types.
    response = requests.post(
        f"{server.url}/v1/threads/runs",
        data=orjson.dumps(
            {
                "assistant_id": asst.id,
                "stream": True,
                "thread": {"messages": [{"role": "user", "content": "hi", "file_ids": []}]},
            }
        ),
        headers={
            "Authorization": f"Bearer {ALICE_KEY}",
            "OpenAI-Beta": "assistants=v1",
            "Content-Type": "application/json",
        },
        stream=True,
        timeout=20,
    )
    assert response.status_code == 200, response.text
    events: list[tuple[str, Any]] = []
    name = ""
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            data = line[len("data: ") :]
            events.append((name, data if data == "[DONE]" else orjson.loads(data)))
    names = [event for event, _ in events]
    assert names[0] == "thread.created" and names[-2:] == ["thread.run.completed", "done"]
    for event, data in events:
        if event.startswith("thread.run.step."):
            if event != "thread.run.step.delta":
                assert set(data) == V1_STEP_KEYS
        elif event.startswith("thread.run."):
            assert set(data) == V1_RUN_KEYS, event
        elif event.startswith("thread.message.") and event != "thread.message.delta":
            assert set(data) == V1_MESSAGE_KEYS, event
        elif event == "thread.created":
            assert set(data) == V1_THREAD_KEYS


# --- the Rubra extensions --------------------------------------------------------------------------


def test_gptscript_tools_in_both_rubra_encodings(server: ServerProcess, client: openai.OpenAI) -> None:
    def raw(method: str, path: str, payload: Any = None) -> requests.Response:
        # No OpenAI-Beta header, as the Rubra UI's own fetches: v1 on /v1/rubra.
        return requests.request(
            method,
            server.url + path,
            data=None if payload is None else orjson.dumps(payload),
            headers={"Authorization": f"Bearer {ALICE_KEY}", "Content-Type": "application/json"},
            timeout=20,
        )

    made = raw(
        "POST",
        "/v1/rubra/assistants",
        {"model": MODEL, "tools": [{"type": "code_interpreter"}], "gptscript_tools": ["internet_search"]},
    )
    assert made.status_code == 200, made.text
    asst = made.json()
    assert set(asst) == V1_ASSISTANT_KEYS | {"gptscript_tools"}
    assert (asst["tools"], asst["gptscript_tools"]) == ([{"type": "code_interpreter"}], ["internet_search"])
    # The flat v1 dialect shows them among the tools, the way the later Rubra UI reads and writes them.
    with v1_client(server, strict=False) as v1:
        flat = v1_json(v1.beta.assistants.with_raw_response.retrieve(asst["id"]))
        assert flat["tools"] == [{"type": "code_interpreter"}, {"type": "gptscript", "x-tool": "internet_search"}]
        changed = v1_json(
            v1.beta.assistants.with_raw_response.update(
                asst["id"],
                tools=[{"type": "gptscript", "x-tool": "site_browsing"}],  # type: ignore[list-item]
            )
        )
        assert changed["tools"] == [{"type": "gptscript", "x-tool": "site_browsing"}]
        expect_error(
            404,
            "tools[1].x-tool",
            lambda: v1.beta.assistants.update(
                asst["id"],
                tools=[{"type": "code_interpreter"}, {"type": "gptscript", "x-tool": "tool_nope"}],  # type: ignore[list-item]
            ),
        )
    assert raw("GET", f"/v1/rubra/assistants/{asst['id']}").json()["gptscript_tools"] == ["site_browsing"]
    missing = raw("POST", f"/v1/rubra/assistants/{asst['id']}", {"gptscript_tools": ["tool_nope"]})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "gptscript_tools[0]"
    # v2 on /v1 knows neither the items nor the list; a v2 tools change leaves them be.
    v2_view = body(client.beta.assistants.with_raw_response.retrieve(asst["id"]))
    assert v2_view["tools"] == [] and "gptscript_tools" not in v2_view
    gptscript: Any = {"type": "gptscript", "x-tool": "internet_search"}
    expect_error(400, "tools[0].type", lambda: client.beta.assistants.update(asst["id"], tools=[gptscript]))
    client.beta.assistants.update(asst["id"], tools=[{"type": "code_interpreter"}])
    assert raw("GET", f"/v1/rubra/assistants/{asst['id']}").json()["gptscript_tools"] == ["site_browsing"]


def test_the_header_decides_on_every_tier(server: ServerProcess) -> None:
    with make_client(server, tier="/v1/rubra") as rubra_v2:  # the SDK's own header: v2 on /v1/rubra too
        asst = body(rubra_v2.beta.assistants.with_raw_response.create(model=MODEL))
    assert "file_ids" not in asst and "tool_resources" in asst
    no_header = requests.get(
        f"{server.url}/v1/assistants/{asst['id']}", headers={"Authorization": f"Bearer {ALICE_KEY}"}, timeout=20
    )
    assert set(no_header.json()) == set(SCHEMAS["AssistantObject"]["properties"])  # /v1 defaults to v2


# --- retrieval inside a run ------------------------------------------------------------------------


def test_a_v1_run_retrieves_from_the_assistants_files(
    server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    handbook = upload(client, "handbook.md", HANDBOOK)
    with v1_client(server, strict=False) as v1:
        asst = v1.beta.assistants.create(model=MODEL, extra_body={"file_ids": [handbook]})
        store_id = store_of(client, asst.id)
        assert store_id is not None
        wait_until(
            lambda: hidden_store_files(server, store_id)["files"] == {handbook: "completed"},
            within_s=60,
            what="the handbook to be ingested",
        )
        fake_upstream.script(
            "chat/completions",
            Reply.stream(tool_call_answer(("call_cat", "file_search", ['{"query": "office cat name"}']))),
            Reply.stream(answer("The cat is Biscuit.")),
        )
        thread = v1.beta.threads.create(messages=[{"role": "user", "content": "What is the office cat called?"}])
        run = v1_json(v1.beta.threads.runs.with_raw_response.create(thread.id, assistant_id=asst.id))
        ended = poll_run(v1, thread.id, run["id"])
        assert ended["status"] == "completed", ended
        steps = v1_json(v1.beta.threads.runs.steps.with_raw_response.list(run["id"], thread_id=thread.id, order="asc"))
    calls = [
        call for step in steps["data"] if step["type"] == "tool_calls" for call in step["step_details"]["tool_calls"]
    ]
    assert calls == [{"id": "call_cat", "type": "retrieval", "retrieval": {}}]
    second = fake_upstream.last("chat/completions").json()
    tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 1 and "Biscuit" in tool_messages[0]["content"]


# --- the knowledge-retrieval-api (CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL) -------------------------


class FakeKra(http.server.BaseHTTPRequestHandler):
    """gptscript-ai/knowledge 6e36c0b's API under /v1, ranking documents (paragraphs) by shared words."""

    datasets: ClassVar[dict[str, list[dict[str, Any]]]] = {}
    calls: ClassVar[list[tuple[str, str, Any]]] = []

    def _answer(self, status: int, payload: Any) -> None:
        data = orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = orjson.loads(self.rfile.read(length)) if length else None
        self.calls.append((method, self.path, payload))
        parts = self.path.strip("/").split("/")  # v1, datasets, ...
        if parts[:2] != ["v1", "datasets"]:
            self._answer(404, {"error": "not found"})
        elif method == "POST" and parts[2:] == ["create"]:
            self.datasets[payload["id"]] = []
            self._answer(200, payload)
        elif len(parts) < 3 or parts[2] not in self.datasets:
            self._answer(404, {"error": f"dataset {parts[2:3]} not found"})
        elif method == "GET" and len(parts) == 3:
            self._answer(200, {"id": parts[2], "embed_dim": 0})
        elif method == "DELETE" and len(parts) == 3:
            del self.datasets[parts[2]]
            self._answer(200, {"id": parts[2]})
        elif method == "POST" and parts[3:] == ["ingest"]:
            text = base64.b64decode(payload["content"]).decode()
            made = []
            for paragraph in filter(None, (p.strip() for p in text.split("\n\n"))):
                made.append(f"doc-{len(self.calls)}-{len(made)}")
                metadata = {"file_id": payload["file_id"], "filename": payload["filename"]}
                self.datasets[parts[2]].append({"content": paragraph, "metadata": metadata})
            self._answer(200, {"documents": made, "ingest": payload})
        elif method == "POST" and parts[3:] == ["retrieve"]:
            words = set(payload["prompt"].lower().split())
            scored = [
                {**doc, "similarity_score": len(words & set(doc["content"].lower().split())) / len(words)}
                for doc in self.datasets[parts[2]]
            ]
            scored.sort(key=lambda doc: -doc["similarity_score"])
            self._answer(200, {"results": scored[: payload.get("topk", 5)]})
        else:
            self._answer(400, {"error": "unsupported"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def kra_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKra)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def kra_server(database: Database, fake_upstream: FakeUpstream, kra_url: str) -> Iterator[ServerProcess]:
    with running_stack(
        database,
        fake_upstream.base_url,
        {
            "CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}",
            "CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL": kra_url,
            "CLICKY_CHATS_EMBEDDING_MODEL": "fake-bow-embedder",
        },
    ) as proc:
        yield proc


def shell_json(server: ServerProcess, code: str) -> Any:
    """Runs `code` (which defines `async def main()` returning something JSON-able) in the server's
    environment: its database and its CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL."""
    program = f"import asyncio, json\n{code}\nprint(json.dumps(asyncio.run(main())))"
    completed = server.manage("shell", "--no-imports", "-c", program, check=False)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_knowledge_retrieval_api_ingests_and_searches_in_search_stores_shape(kra_server: ServerProcess) -> None:
    FakeKra.calls.clear()
    with make_client(kra_server) as client, v1_client(kra_server, strict=False) as v1:
        handbook, recipes = upload(client, "handbook.md", HANDBOOK), upload(client, "recipes.md", RECIPES)
        asst = v1.beta.assistants.create(model=MODEL, extra_body={"file_ids": [handbook, recipes]})
        store_id = store_of(client, asst.id)
        assert store_id is not None
        wait_until(
            lambda: set(hidden_store_files(kra_server, store_id)["files"].values()) == {"completed"},
            within_s=60,
            what="the files to be ingested",
        )
        # The agents ingested each file through the KRA (it chunks and embeds on its own).
        dataset = store_id.lower()
        ingested = [payload for method, path, payload in FakeKra.calls if path.endswith("/ingest")]
        # A set: ingestion is at least once (a file whose lease ran out on a loaded machine goes again).
        assert {(p["file_id"], p["filename"], base64.b64decode(p["content"])) for p in ingested} == {
            (handbook, "handbook.md", HANDBOOK),
            (recipes, "recipes.md", RECIPES),
        }
        assert ("POST", "/v1/datasets/create", {"id": dataset, "embed_dim": 0}) in FakeKra.calls

        def search(query: str) -> dict[str, Any]:
            """kra.search, and search_stores (which hands the search to the KRA when it is set)."""
            return shell_json(  # type: ignore[no-any-return]
                kra_server,
                "from agents import kra, search\n"
                "async def main():\n"
                f"    found = await kra.search('alice', [{store_id!r}], {query!r}, 3)\n"
                f"    local = await search.search_stores('alice', [{store_id!r}], {query!r}, 3)\n"
                "    return {'kra': found, 'local_keys': [sorted(item) for item in local]}",
            )

        answer_ = search("what is the office cat named")
        found = answer_["kra"]
        assert found and answer_["local_keys"]  # the same item shape as our own search's
        assert all(sorted(item) == answer_["local_keys"][0] for item in found)
        assert found[0]["file_id"] == handbook and found[0]["filename"] == "handbook.md"
        assert "Biscuit" in found[0]["content"][0]["text"] and found[0]["content"][0]["type"] == "text"
        assert found == sorted(found, key=lambda item: -item["score"])

        # The KRA keeps a file its store no longer has (its removal is a stub); search drops it.
        v1.beta.assistants.update(asst.id, extra_body={"file_ids": [handbook]})
        pancakes = search("pancakes flour milk eggs")["kra"]
        assert recipes not in {item["file_id"] for item in pancakes}
        assert any(payload and payload.get("prompt") == "pancakes flour milk eggs" for _m, _p, payload in FakeKra.calls)

    # Failures are KraError, never a hang or a crash.
    refused = shell_json(
        kra_server,
        "from agents import kra\n"
        "async def main():\n"
        "    errors = []\n"
        "    for api in (kra.KnowledgeRetrievalApi('http://127.0.0.1:9/v1', timeout_s=5), kra.configured()):\n"
        "        try:\n"
        "            await api.ingest('no-such-dataset', 'file-x', 'x.md', b'x')\n"
        "        except kra.KraError as exc:\n"
        "            errors.append([exc.status, exc.message])\n"
        "    return errors",
    )
    assert refused[0][0] is None and "cannot be reached" in refused[0][1]
    assert refused[1][0] == 404 and "no-such-dataset" in refused[1][1]


def test_a_v1_run_retrieves_through_the_knowledge_retrieval_api(
    kra_server: ServerProcess, fake_upstream: FakeUpstream
) -> None:
    with make_client(kra_server) as client, v1_client(kra_server, strict=False) as v1:
        handbook = upload(client, "handbook.md", HANDBOOK)
        asst = v1.beta.assistants.create(model=MODEL, extra_body={"file_ids": [handbook]})
        store_id = store_of(client, asst.id)
        assert store_id is not None
        wait_until(
            lambda: set(hidden_store_files(kra_server, store_id)["files"].values()) == {"completed"},
            within_s=60,
            what="the file to be ingested by the KRA",
        )
        thread = v1.beta.threads.create(messages=[{"role": "user", "content": "What is the cat called?"}])
        fake_upstream.script(
            "chat/completions",
            Reply.stream(tool_call_answer(("call_kra", "file_search", ['{"query": "office cat name"}']))),
            Reply.stream(answer("Biscuit.")),
        )
        run = v1.beta.threads.runs.create(thread.id, assistant_id=asst.id)
        done = wait_until(
            lambda: (
                (found := v1.beta.threads.runs.retrieve(run.id, thread_id=thread.id)).status in ("completed", "failed")
                and found
            ),
            within_s=30,
            what="the run to end",
        )
        assert done.status == "completed", done.last_error
        messages = fake_upstream.last("chat/completions").json()["messages"]
        tool_output = next(message["content"] for message in messages if message["role"] == "tool")
        assert "Biscuit" in tool_output  # the passage came from the KRA's retrieve


def test_a_knowledge_retrieval_api_url_must_be_http(database: Database, fake_upstream: FakeUpstream) -> None:
    # The Go clicky-chats also took a gptscript tool reference here; we run none, so start-up says so.
    proc = ServerProcess(database, fake_upstream.base_url, env={"CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL": "kra.gpt"})
    refused = proc.manage("check", check=False)
    assert refused.returncode != 0
    assert "CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL must be an http:// or https:// URL" in refused.stderr
