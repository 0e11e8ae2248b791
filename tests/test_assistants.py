"""The Assistants API objects through the official SDK: assistants, threads and messages, their exact
shapes against the OpenAI spec, cursor pagination, project isolation, bad input, and the Django admin
that shows them. Runs appear only where a message needs one; the run engine has its own tests."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from jsonschema import Draft202012Validator

from tests.conftest import ALICE_KEY, make_client
from tests.fake_upstream import FakeUpstream, Reply, text_stream
from tests.harness import ServerProcess

MODEL = "fake-model"
POLL_MS = 50  # the SDK's poll helpers otherwise wait a second between looks
MAX_MESSAGE_CHARS = 256_000  # OpenAI's limit on a message's content

# AssistantObject, ThreadObject, MessageObject and what they reference, copied from the spec.
SCHEMAS = json.loads((Path(__file__).parent / "openai_assistants_schemas.json").read_text())


def assert_spec_object(schema: str, data: dict[str, Any]) -> None:
    """`data` is exactly the spec's object: every property present (null where the spec allows it),
    nothing else, and every value valid against the schema."""
    properties = SCHEMAS["components"]["schemas"][schema]["properties"]
    assert set(data) == set(properties), (
        f"{schema}: extra {set(data) - set(properties)}, missing {set(properties) - set(data)}"
    )
    validator = Draft202012Validator({"$ref": f"#/components/schemas/{schema}", "components": SCHEMAS["components"]})
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors, f"{schema} does not match the spec: {errors}"


def assert_list_envelope(data: dict[str, Any]) -> None:
    assert set(data) == {"object", "data", "first_id", "last_id", "has_more"}
    assert data["object"] == "list"
    assert data["first_id"] == (data["data"][0]["id"] if data["data"] else None)
    assert data["last_id"] == (data["data"][-1]["id"] if data["data"] else None)


def assert_api_error(error: openai.APIStatusError, status: int, param: str | None) -> None:
    """A 4xx in OpenAI's envelope that names the offending field."""
    assert error.status_code == status, error
    body = error.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    assert body["type"] == "invalid_request_error"
    assert isinstance(body["message"], str) and body["message"]
    assert body["param"] == param, body
    if param is not None and body["code"] is not None:  # a validation error says what it refused
        assert param in body["message"], body


def expect_error(status: int, param: str | None, call: Callable[[], Any]) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert_api_error(caught.value, status, param)
    return caught.value


def raw_json(response: Any) -> dict[str, Any]:
    """The JSON body of a `with_raw_response` call, after the strict SDK has parsed it too."""
    response.parse()
    assert response.http_request.headers["OpenAI-Beta"] == "assistants=v2"
    return response.http_response.json()  # type: ignore[no-any-return]


def manage_json(server: ServerProcess, code: str) -> Any:
    """Runs `code` in `manage.py shell` on the server's database; it prints one JSON value."""
    return json.loads(server.manage("shell", "--no-imports", "-c", code).stdout)


def stored_counts(server: ServerProcess, project: str) -> dict[str, int]:
    """What the database holds for a project, past anything the API might hide."""
    return manage_json(  # type: ignore[no-any-return]
        server,
        "import json; from api_v1.models import Assistant, Message, Thread; "
        f"print(json.dumps({{m.__name__: m.objects.filter(project={project!r}).count() "
        "for m in (Assistant, Thread, Message)}))",
    )


@dataclass
class Project:
    name: str
    key: str
    client: openai.OpenAI


def new_project(server: ServerProcess) -> Project:
    """A project of its own (a key made by createapikey), for tests that need to see a whole list."""
    name = "proj-" + secrets.token_hex(4)
    key = server.manage("createapikey", "--project", name, "--name", "test_assistants").stdout.strip()
    return Project(name, key, make_client(server, key))


@pytest.fixture
def fresh(server: ServerProcess) -> Iterator[Project]:
    project = new_project(server)
    with project.client:
        yield project


@pytest.fixture(scope="module")
def empty_project(server: ServerProcess) -> Iterator[Project]:
    """A project that bad requests must leave empty."""
    project = new_project(server)
    with project.client:
        yield project


def function_tool(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **extra}}


WEATHER_TOOL = function_tool(
    "get_weather",
    description="The current weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    strict=True,
)
TOOLS = [
    {"type": "code_interpreter"},
    {
        "type": "file_search",
        "file_search": {
            "max_num_results": 7,
            "ranking_options": {"ranker": "default_2024_08_21", "score_threshold": 0.25},
        },
    },
    WEATHER_TOOL,
]
# No Files or vector store API exists yet to make real ids from; the server stores these as given.
TOOL_RESOURCES = {"code_interpreter": {"file_ids": ["file-abc123"]}, "file_search": {"vector_store_ids": ["vs_abc123"]}}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "weather_report",
        "description": "A short weather report.",
        "schema": {
            "type": "object",
            "properties": {"summary": {"type": "string"}, "celsius": {"type": "number"}},
            "required": ["summary", "celsius"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
FULL_ASSISTANT: dict[str, Any] = {
    "model": MODEL,
    "name": "Weather bot",
    "description": "Answers questions about the weather.",
    "instructions": "You are a weather assistant. Use the tools.",
    "tools": TOOLS,
    "tool_resources": TOOL_RESOURCES,
    "metadata": {"team": "forecast", "tier": "gold"},
    "temperature": 0.3,
    "top_p": 0.9,
    "response_format": RESPONSE_FORMAT,
}


# --- assistants ------------------------------------------------------------------------------------


def test_assistant_create_with_every_field_then_retrieve(client: openai.OpenAI) -> None:
    before = int(time.time())
    created = raw_json(client.beta.assistants.with_raw_response.create(**FULL_ASSISTANT))
    assert_spec_object("AssistantObject", created)
    assert created["id"].startswith("asst_")
    assert created["object"] == "assistant"
    assert before <= created["created_at"] <= int(time.time()) + 1
    for field, value in FULL_ASSISTANT.items():
        assert created[field] == value, field
    retrieved = raw_json(client.beta.assistants.with_raw_response.retrieve(created["id"]))
    assert retrieved == created
    # The typed view agrees with the wire.
    typed = client.beta.assistants.retrieve(created["id"])
    assert (
        typed.tools[2].type == "function"
        and typed.tools[2].function.parameters == WEATHER_TOOL["function"]["parameters"]
    )


def test_assistant_created_with_only_a_model_has_every_key(client: openai.OpenAI) -> None:
    created = raw_json(client.beta.assistants.with_raw_response.create(model=MODEL))
    assert_spec_object("AssistantObject", created)
    assert {
        k: created[k] for k in ("name", "description", "instructions", "tool_resources", "temperature", "top_p")
    } == (dict.fromkeys(("name", "description", "instructions", "tool_resources", "temperature", "top_p")))
    assert created["tools"] == [] and created["metadata"] == {} and created["response_format"] == "auto"


@pytest.mark.parametrize("response_format", ["auto", {"type": "text"}, {"type": "json_object"}])
def test_assistant_response_formats_echo(client: openai.OpenAI, response_format: Any) -> None:
    created = raw_json(client.beta.assistants.with_raw_response.create(model=MODEL, response_format=response_format))
    assert_spec_object("AssistantObject", created)
    assert created["response_format"] == response_format


def test_assistant_modify_changes_only_the_given_fields(client: openai.OpenAI) -> None:
    original = raw_json(client.beta.assistants.with_raw_response.create(**FULL_ASSISTANT))
    asst_id = original["id"]

    renamed = raw_json(
        client.beta.assistants.with_raw_response.update(asst_id, name="Storm bot", metadata={"owner": "ops"})
    )
    assert_spec_object("AssistantObject", renamed)
    assert renamed["name"] == "Storm bot"
    assert renamed["metadata"] == {"owner": "ops"}  # replaced, not merged
    assert {k: v for k, v in renamed.items() if k not in ("name", "metadata")} == {
        k: v for k, v in original.items() if k not in ("name", "metadata")
    }

    retooled = raw_json(
        client.beta.assistants.with_raw_response.update(
            asst_id, tools=[{"type": "code_interpreter"}], temperature=1.5, response_format="auto", description=None
        )
    )
    assert retooled["tools"] == [{"type": "code_interpreter"}]
    assert retooled["temperature"] == 1.5
    assert retooled["response_format"] == "auto"
    assert retooled["description"] is None
    for unchanged in ("name", "metadata", "instructions", "top_p", "model", "tool_resources", "created_at"):
        assert retooled[unchanged] == renamed[unchanged], unchanged

    # An empty modify changes nothing, and what came back is what is stored.
    assert raw_json(client.beta.assistants.with_raw_response.update(asst_id)) == retooled
    assert raw_json(client.beta.assistants.with_raw_response.retrieve(asst_id)) == retooled
    cleared = raw_json(client.beta.assistants.with_raw_response.update(asst_id, metadata={}, tool_resources=None))
    assert (cleared["metadata"], cleared["tool_resources"]) == ({}, None)
    assert_spec_object("AssistantObject", cleared)


def test_values_at_the_limits_are_accepted(client: openai.OpenAI) -> None:
    at_limit = {f"k{i:02d}": "v" for i in range(15)} | {"k" * 64: "v" * 512}
    tools = [function_tool(f"f{i}") for i in range(127)] + [function_tool("f" * 64)]
    asst = raw_json(
        client.beta.assistants.with_raw_response.create(
            model=MODEL, name="n" * 256, description="d" * 512, metadata=at_limit, tools=tools, temperature=2, top_p=0
        )
    )
    assert_spec_object("AssistantObject", asst)
    assert (len(asst["tools"]), asst["metadata"], asst["temperature"], asst["top_p"]) == (128, at_limit, 2, 0)
    thread = client.beta.threads.create(metadata=at_limit)
    assert thread.metadata == at_limit
    message = client.beta.threads.messages.create(thread.id, role="user", content="hi", metadata=at_limit)
    assert message.metadata == at_limit


def test_rubra_tier_adds_the_assistant_extensions(server: ServerProcess, client: openai.OpenAI) -> None:
    asst = raw_json(client.beta.assistants.with_raw_response.create(model=MODEL, reasoning_effort="high"))
    assert "reasoning_effort" not in asst and "gptscript_tools" not in asst  # not in the spec's object
    with make_client(server, tier="/v1/rubra") as rubra:
        extended = raw_json(rubra.beta.assistants.with_raw_response.retrieve(asst["id"]))
    assert extended == {**asst, "reasoning_effort": "high", "gptscript_tools": []}


def test_assistant_delete_then_404(client: openai.OpenAI) -> None:
    asst = client.beta.assistants.create(model=MODEL, name="short-lived")
    deleted = client.beta.assistants.delete(asst.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (asst.id, "assistant.deleted", True)
    expect_error(404, None, lambda: client.beta.assistants.retrieve(asst.id))
    expect_error(404, None, lambda: client.beta.assistants.update(asst.id, name="back"))
    expect_error(404, None, lambda: client.beta.assistants.delete(asst.id))
    assert asst.id not in {a.id for a in client.beta.assistants.list(limit=100)}


def test_assistant_list_pages_over_many_made_in_one_second(fresh: Project, server: ServerProcess) -> None:
    sdk = fresh.client
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda index: sdk.beta.assistants.create(model=MODEL, name=f"a{index}"), range(25)))
    # The point: many share a created_at second, so ordering and cursors cannot rest on it.
    assert max(collections.Counter(a.created_at for a in made).values()) >= 5
    # Made in parallel, their order is the one the database gave them; oldest first.
    ids = manage_json(
        server,
        "import json; from api_v1.models import Assistant; print(json.dumps(list(Assistant.objects.filter("
        f"project={fresh.name!r}).order_by('created_ns', 'id').values_list('id', flat=True))))",
    )
    assert sorted(ids) == sorted(a.id for a in made)

    walked = [a.id for a in sdk.beta.assistants.list(limit=7)]  # the SDK follows `after` itself
    assert walked == ids[::-1]  # newest first by default; each exactly once
    assert [a.id for a in sdk.beta.assistants.list(limit=4, order="asc")] == ids

    first = raw_json(sdk.beta.assistants.with_raw_response.list(limit=7))
    assert_list_envelope(first)
    assert [a["id"] for a in first["data"]] == ids[:-8:-1] and first["has_more"] is True
    for item in first["data"]:
        assert_spec_object("AssistantObject", item)
    pages = list(sdk.beta.assistants.list(limit=7).iter_pages())
    assert [len(page.data) for page in pages] == [7, 7, 7, 4]
    assert [page.has_more for page in pages] == [True, True, True, False]
    assert len(sdk.beta.assistants.list().data) == 20  # the default limit

    def page(**query: Any) -> tuple[list[str], bool]:
        listed = raw_json(sdk.beta.assistants.with_raw_response.list(**query))
        assert_list_envelope(listed)
        return [a["id"] for a in listed["data"]], listed["has_more"]

    assert page(order="asc", after=ids[4], limit=5) == (ids[5:10], True)
    assert page(order="asc", before=ids[10], limit=3) == (ids[7:10], True)
    assert page(order="asc", before=ids[3], limit=10) == (ids[:3], False)
    assert page(order="desc", after=ids[20], limit=100) == (ids[19::-1], False)
    assert page(order="desc", before=ids[3], limit=2) == (ids[5:3:-1], True)
    assert page(order="desc", after=ids[12], before=ids[8], limit=10) == (ids[11:8:-1], False)
    assert page(order="asc", after=ids[-1]) == ([], False)

    expect_error(400, "limit", lambda: sdk.beta.assistants.list(limit=0))
    expect_error(400, "limit", lambda: sdk.beta.assistants.list(limit=101))
    expect_error(400, "order", lambda: sdk.beta.assistants.list(order="sideways"))  # type: ignore[arg-type]
    expect_error(400, "after", lambda: sdk.beta.assistants.list(after="asst_nobodyhasthisid"))


# --- threads ---------------------------------------------------------------------------------------


def test_thread_create_empty(client: openai.OpenAI) -> None:
    created = raw_json(client.beta.threads.with_raw_response.create())
    assert_spec_object("ThreadObject", created)
    assert created["id"].startswith("thread_") and created["object"] == "thread"
    assert created["metadata"] == {} and created["tool_resources"] is None
    assert client.beta.threads.messages.list(created["id"]).data == []


def test_thread_create_with_messages_of_every_content_kind(client: openai.OpenAI) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Which unit do you want?"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Celsius. Here is the sky:"},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky.png", "detail": "low"}},
                {"type": "image_file", "image_file": {"file_id": "file-sky123", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky2.png"}},
            ],
            "attachments": [{"file_id": "file-notes1", "tools": [{"type": "code_interpreter"}]}],
            "metadata": {"source": "camera"},
        },
    ]
    created = raw_json(
        client.beta.threads.with_raw_response.create(
            messages=messages,  # type: ignore[arg-type]
            tool_resources={"code_interpreter": {"file_ids": ["file-data1"]}},
            metadata={"customer": "c-42"},
        )
    )
    assert_spec_object("ThreadObject", created)
    assert created["tool_resources"] == {"code_interpreter": {"file_ids": ["file-data1"]}}
    assert created["metadata"] == {"customer": "c-42"}

    listed = raw_json(client.beta.threads.messages.with_raw_response.list(created["id"], order="asc"))
    assert_list_envelope(listed)
    stored = listed["data"]
    for message in stored:
        assert_spec_object("MessageObject", message)
        assert message["thread_id"] == created["id"] and message["id"].startswith("msg_")
        assert message["status"] == "completed" and isinstance(message["completed_at"], int)
        assert (
            message["assistant_id"],
            message["run_id"],
            message["incomplete_at"],
            message["incomplete_details"],
        ) == (
            None,
            None,
            None,
            None,
        )
    assert [m["role"] for m in stored] == ["user", "assistant", "user"]
    assert stored[0]["content"] == [
        {"type": "text", "text": {"value": "What is the weather in Oslo?", "annotations": []}}
    ]
    assert stored[1]["content"] == [{"type": "text", "text": {"value": "Which unit do you want?", "annotations": []}}]
    assert stored[2]["content"] == [
        {"type": "text", "text": {"value": "Celsius. Here is the sky:", "annotations": []}},
        {"type": "image_url", "image_url": {"url": "https://example.com/sky.png", "detail": "low"}},
        {"type": "image_file", "image_file": {"file_id": "file-sky123", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/sky2.png", "detail": "auto"}},
    ]
    assert stored[2]["attachments"] == messages[2]["attachments"]
    assert stored[2]["metadata"] == {"source": "camera"}
    assert stored[0]["attachments"] is None and stored[0]["metadata"] == {}


def test_thread_retrieve_modify_delete(client: openai.OpenAI, server: ServerProcess) -> None:
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
        metadata={"a": "1", "b": "2"},
        tool_resources={"code_interpreter": {"file_ids": ["file-x1"]}},
    )
    retrieved = raw_json(client.beta.threads.with_raw_response.retrieve(thread.id))
    assert_spec_object("ThreadObject", retrieved)
    assert retrieved["metadata"] == {"a": "1", "b": "2"}

    modified = raw_json(client.beta.threads.with_raw_response.update(thread.id, metadata={"c": "3"}))
    assert modified["metadata"] == {"c": "3"}  # replaced, not merged
    assert modified["tool_resources"] == {"code_interpreter": {"file_ids": ["file-x1"]}}
    modified = raw_json(
        client.beta.threads.with_raw_response.update(
            thread.id, tool_resources={"file_search": {"vector_store_ids": ["vs_x1"]}}
        )
    )
    assert modified["tool_resources"] == {"file_search": {"vector_store_ids": ["vs_x1"]}}
    assert modified["metadata"] == {"c": "3"}
    assert raw_json(client.beta.threads.with_raw_response.retrieve(thread.id)) == modified

    message_ids = [m.id for m in client.beta.threads.messages.list(thread.id)]
    assert len(message_ids) == 2
    deleted = client.beta.threads.delete(thread.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (thread.id, "thread.deleted", True)
    expect_error(404, None, lambda: client.beta.threads.retrieve(thread.id))
    expect_error(404, None, lambda: client.beta.threads.update(thread.id, metadata={}))
    expect_error(404, None, lambda: client.beta.threads.delete(thread.id))
    expect_error(404, None, lambda: client.beta.threads.messages.list(thread.id))
    expect_error(404, None, lambda: client.beta.threads.messages.retrieve(message_ids[0], thread_id=thread.id))
    remaining = manage_json(
        server,
        "import json; from api_v1.models import Message; "
        f"print(json.dumps(Message.objects.filter(id__in={message_ids!r}).count()))",
    )
    assert remaining == 0


# --- messages --------------------------------------------------------------------------------------


def test_message_create_list_retrieve_modify_delete(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    made = []
    for index in range(5):
        response = client.beta.threads.messages.with_raw_response.create(
            thread.id, role="user" if index % 2 == 0 else "assistant", content=f"message {index}"
        )
        body = raw_json(response)
        assert_spec_object("MessageObject", body)
        assert body["role"] == ("user" if index % 2 == 0 else "assistant")
        assert body["content"] == [{"type": "text", "text": {"value": f"message {index}", "annotations": []}}]
        made.append(body)
    ids = [m["id"] for m in made]

    def listed(**query: Any) -> list[str]:
        page = raw_json(client.beta.threads.messages.with_raw_response.list(thread.id, **query))
        assert_list_envelope(page)
        return [m["id"] for m in page["data"]]

    assert listed() == ids[::-1]
    assert listed(order="asc") == ids
    assert listed(order="asc", after=ids[1], limit=2) == ids[2:4]
    assert listed(order="desc", before=ids[1]) == ids[:1:-1]
    assert listed(order="desc", after=ids[3]) == ids[2::-1]
    assert [m.id for m in client.beta.threads.messages.list(thread.id, limit=2, order="asc")] == ids

    retrieved = raw_json(client.beta.threads.messages.with_raw_response.retrieve(ids[2], thread_id=thread.id))
    assert retrieved == made[2]

    first = raw_json(
        client.beta.threads.messages.with_raw_response.update(
            ids[2], thread_id=thread.id, metadata={"x": "1", "y": "2"}
        )
    )
    assert first["metadata"] == {"x": "1", "y": "2"}
    second = raw_json(
        client.beta.threads.messages.with_raw_response.update(ids[2], thread_id=thread.id, metadata={"z": "3"})
    )
    assert second["metadata"] == {"z": "3"}
    assert {k: v for k, v in second.items() if k != "metadata"} == {k: v for k, v in made[2].items() if k != "metadata"}

    deleted = client.beta.threads.messages.delete(ids[2], thread_id=thread.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (ids[2], "thread.message.deleted", True)
    expect_error(404, None, lambda: client.beta.threads.messages.retrieve(ids[2], thread_id=thread.id))
    expect_error(404, None, lambda: client.beta.threads.messages.delete(ids[2], thread_id=thread.id))
    assert listed(order="asc") == ids[:2] + ids[3:]


def test_messages_filtered_by_run(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("chat/completions", Reply.stream(text_stream("It is 12 degrees in Oslo.")))
    asst = client.beta.assistants.create(model=MODEL, instructions="Answer briefly.")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather in Oslo?"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=POLL_MS)
    assert run.status == "completed", run.last_error

    by_run = raw_json(client.beta.threads.messages.with_raw_response.list(thread.id, run_id=run.id))
    assert_list_envelope(by_run)
    assert len(by_run["data"]) == 1
    answer = by_run["data"][0]
    assert_spec_object("MessageObject", answer)
    assert (answer["role"], answer["run_id"], answer["assistant_id"], answer["status"]) == (
        "assistant",
        run.id,
        asst.id,
        "completed",
    )
    assert answer["content"][0]["text"]["value"] == "It is 12 degrees in Oslo."
    assert len(client.beta.threads.messages.list(thread.id).data) == 2
    other = client.beta.threads.create(messages=[{"role": "user", "content": "unrelated"}])
    assert client.beta.threads.messages.list(other.id, run_id=run.id).data == []


def test_no_message_while_a_run_is_active(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    # The model takes two seconds to start answering, so the run stays active meanwhile.
    fake_upstream.script("chat/completions", Reply.stream(text_stream("Done thinking."), delay_s=2))
    asst = client.beta.assistants.create(model=MODEL)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Think slowly."}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    assert run.status in ("queued", "in_progress")

    expect_error(400, "thread_id", lambda: client.beta.threads.messages.create(thread.id, role="user", content="hurry"))
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status in ("queued", "in_progress")
    assert [m.role for m in client.beta.threads.messages.list(thread.id)] == ["user"]  # nothing was added

    finished = client.beta.threads.runs.poll(run.id, thread.id, poll_interval_ms=POLL_MS)
    assert finished.status == "completed", finished.last_error
    client.beta.threads.messages.create(thread.id, role="user", content="thanks")
    assert [m.role for m in client.beta.threads.messages.list(thread.id, order="asc")] == ["user", "assistant", "user"]


# --- isolation between projects --------------------------------------------------------------------


def test_bob_cannot_reach_alices_objects(client: openai.OpenAI, bob: openai.OpenAI) -> None:
    asst = client.beta.assistants.create(model=MODEL, name="alice's", metadata={"owner": "alice"})
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "alice's secret"}], metadata={"owner": "alice"}
    )
    message = client.beta.threads.messages.list(thread.id).data[0]
    before = (
        client.beta.assistants.retrieve(asst.id).to_dict(),
        client.beta.threads.retrieve(thread.id).to_dict(),
        client.beta.threads.messages.retrieve(message.id, thread_id=thread.id).to_dict(),
    )
    bobs_thread = bob.beta.threads.create()

    attempts: list[Callable[[], Any]] = [
        lambda: bob.beta.assistants.retrieve(asst.id),
        lambda: bob.beta.assistants.update(asst.id, name="bob's now"),
        lambda: bob.beta.assistants.delete(asst.id),
        lambda: bob.beta.threads.retrieve(thread.id),
        lambda: bob.beta.threads.update(thread.id, metadata={"owner": "bob"}),
        lambda: bob.beta.threads.delete(thread.id),
        lambda: bob.beta.threads.messages.list(thread.id),
        lambda: bob.beta.threads.messages.create(thread.id, role="user", content="bob was here"),
        lambda: bob.beta.threads.messages.retrieve(message.id, thread_id=thread.id),
        lambda: bob.beta.threads.messages.update(message.id, thread_id=thread.id, metadata={"owner": "bob"}),
        lambda: bob.beta.threads.messages.delete(message.id, thread_id=thread.id),
        # Her message id under his own thread is no way in either.
        lambda: bob.beta.threads.messages.retrieve(message.id, thread_id=bobs_thread.id),
        lambda: bob.beta.threads.messages.delete(message.id, thread_id=bobs_thread.id),
    ]
    for attempt in attempts:
        error = expect_error(404, None, attempt)
        assert "alice" not in str(error.body)
    # Her assistant cannot drive a run on his thread; the 404 reads exactly like a missing one.
    taken = expect_error(
        404, "assistant_id", lambda: bob.beta.threads.runs.create(bobs_thread.id, assistant_id=asst.id)
    )
    missing = expect_error(
        404, "assistant_id", lambda: bob.beta.threads.runs.create(bobs_thread.id, assistant_id="asst_" + "x" * 24)
    )
    assert taken.body["message"].replace(asst.id, "ID") == missing.body["message"].replace("asst_" + "x" * 24, "ID")  # type: ignore[index]

    bobs_asst = bob.beta.assistants.create(model=MODEL)
    bob_sees = {a.id for a in bob.beta.assistants.list(limit=100)}
    assert bobs_asst.id in bob_sees and asst.id not in bob_sees
    assert [m.id for m in bob.beta.threads.messages.list(bobs_thread.id)] == []
    assert bobs_asst.id not in {a.id for a in client.beta.assistants.list(limit=100)}

    after = (
        client.beta.assistants.retrieve(asst.id).to_dict(),
        client.beta.threads.retrieve(thread.id).to_dict(),
        client.beta.threads.messages.retrieve(message.id, thread_id=thread.id).to_dict(),
    )
    assert after == before
    assert [m.id for m in client.beta.threads.messages.list(thread.id)] == [message.id]


# --- bad input -------------------------------------------------------------------------------------

TOO_MANY_PAIRS = {f"key{i}": "v" for i in range(17)}
LONG_KEY = {"k" * 65: "v"}
LONG_VALUE = {"note": "v" * 513}

# (overrides to a valid assistant, the param the error must name)
BAD_ASSISTANTS: dict[str, tuple[dict[str, Any], str]] = {
    "parameters not a JSON Schema": (
        {"tools": [function_tool("f", parameters={"type": 12})]},
        "tools[0].function.parameters",
    ),
    "parameters not an object": ({"tools": [function_tool("f", parameters=["a"])]}, "tools[0].function.parameters"),
    "129 tools": ({"tools": [function_tool(f"f{i}") for i in range(129)]}, "tools"),
    "function name with a space": ({"tools": [function_tool("has space")]}, "tools[0].function.name"),
    "function name of 65 chars": ({"tools": [function_tool("f" * 65)]}, "tools[0].function.name"),
    "function name with a dot": ({"tools": [WEATHER_TOOL, function_tool("a.b")]}, "tools[1].function.name"),
    "function without a name": ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    "duplicate function names": (
        {"tools": [function_tool("same"), {"type": "code_interpreter"}, function_tool("same")]},
        "tools[2].function.name",
    ),
    "unknown tool type": ({"tools": [{"type": "web_browser"}]}, "tools[0].type"),
    "tools not an array": ({"tools": {"type": "code_interpreter"}}, "tools"),
    "file_search max_num_results 51": (
        {"tools": [{"type": "file_search", "file_search": {"max_num_results": 51}}]},
        "tools[0].file_search.max_num_results",
    ),
    "file_search unknown ranker": (
        {
            "tools": [
                {"type": "file_search", "file_search": {"ranking_options": {"ranker": "best", "score_threshold": 0.5}}}
            ]
        },
        "tools[0].file_search.ranking_options.ranker",
    ),
    "file_search score_threshold 1.5": (
        {"tools": [{"type": "file_search", "file_search": {"ranking_options": {"score_threshold": 1.5}}}]},
        "tools[0].file_search.ranking_options.score_threshold",
    ),
    "two vector stores": (
        {"tool_resources": {"file_search": {"vector_store_ids": ["vs_1", "vs_2"]}}},
        "tool_resources.file_search.vector_store_ids",
    ),
    "two new vector stores": (
        {"tool_resources": {"file_search": {"vector_stores": [{"file_ids": []}, {"file_ids": []}]}}},
        "tool_resources.file_search.vector_stores",
    ),
    "a vector store by id and a new one": (
        {"tool_resources": {"file_search": {"vector_store_ids": ["vs_1"], "vector_stores": [{"file_ids": []}]}}},
        "tool_resources.file_search",
    ),
    "a new vector store not an object": (
        {"tool_resources": {"file_search": {"vector_stores": ["vs_1"]}}},
        "tool_resources.file_search.vector_stores[0]",
    ),
    "a NUL character in the name": ({"name": "Weather\x00bot"}, "name"),
    "a NUL character in a metadata key": ({"metadata": {"a\x00b": "v"}}, "metadata.a\x00b"),
    "a NUL character deep in a tool": (
        {"tools": [function_tool("f", parameters={"type": "object", "description": "\x00"})]},
        "tools[0].function.parameters.description",
    ),
    "21 code interpreter files": (
        {"tool_resources": {"code_interpreter": {"file_ids": [f"file-{i}" for i in range(21)]}}},
        "tool_resources.code_interpreter.file_ids",
    ),
    "temperature 'hot'": ({"temperature": "hot"}, "temperature"),
    "temperature 2.5": ({"temperature": 2.5}, "temperature"),
    "top_p 2": ({"top_p": 2}, "top_p"),
    "metadata of 17 pairs": ({"metadata": TOO_MANY_PAIRS}, "metadata"),
    "metadata key of 65 chars": ({"metadata": LONG_KEY}, "metadata"),
    "metadata value of 513 chars": ({"metadata": LONG_VALUE}, "metadata.note"),
    "metadata value not a string": ({"metadata": {"n": 1}}, "metadata.n"),
    "name of 257 chars": ({"name": "n" * 257}, "name"),
    "description of 513 chars": ({"description": "d" * 513}, "description"),
    "instructions not a string": ({"instructions": ["be nice"]}, "instructions"),
    "function strict 'yes'": ({"tools": [function_tool("f", strict="yes")]}, "tools[0].function.strict"),
    "function description a number": ({"tools": [function_tool("f", description=3)]}, "tools[0].function.description"),
    "tool not an object": ({"tools": ["code_interpreter"]}, "tools[0]"),
    "unknown response_format": ({"response_format": {"type": "yaml"}}, "response_format.type"),
    "json_schema not a JSON Schema": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": 12}}}},
        "response_format.json_schema.schema",
    ),
    "json_schema name with a space": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "my report"}}},
        "response_format.json_schema.name",
    ),
}


@pytest.mark.parametrize("case", BAD_ASSISTANTS)
def test_bad_assistant_create_is_400_and_stores_nothing(empty_project: Project, case: str) -> None:
    overrides, param = BAD_ASSISTANTS[case]
    sdk = empty_project.client
    expect_error(400, param, lambda: sdk.beta.assistants.create(**{"model": MODEL, **overrides}))
    assert sdk.beta.assistants.list(limit=100).data == []


def test_assistant_create_without_a_model_is_400(empty_project: Project) -> None:
    sdk = empty_project.client
    error = expect_error(400, "model", lambda: sdk.beta.assistants.create(model=None))  # type: ignore[arg-type]
    assert error.code == "missing_required_parameter"
    assert sdk.beta.assistants.list(limit=100).data == []


@pytest.fixture(scope="module")
def victim(server: ServerProcess) -> Iterator[tuple[openai.OpenAI, dict[str, Any]]]:
    """One assistant that every bad modify aims at; it must come through each unchanged."""
    with make_client(server) as sdk:
        yield sdk, sdk.beta.assistants.create(**FULL_ASSISTANT).to_dict()


@pytest.mark.parametrize("case", BAD_ASSISTANTS)
def test_bad_assistant_modify_is_400_and_changes_nothing(
    victim: tuple[openai.OpenAI, dict[str, Any]], case: str
) -> None:
    sdk, original = victim
    overrides, param = BAD_ASSISTANTS[case]
    expect_error(400, param, lambda: sdk.beta.assistants.update(original["id"], **{"name": "changed", **overrides}))
    assert sdk.beta.assistants.retrieve(original["id"]).to_dict() == original


GOOD_MESSAGE = {"role": "user", "content": "fine"}
# (one bad message placed among good ones, the param the error must name)
BAD_THREAD_MESSAGES: dict[str, tuple[dict[str, Any], str]] = {
    "content over the limit": (
        {"role": "user", "content": "x" * (MAX_MESSAGE_CHARS + 1)},
        "messages[1].content",
    ),
    "content parts over the limit together": (
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x" * (MAX_MESSAGE_CHARS // 2)},
                {"type": "text", "text": "y" * (MAX_MESSAGE_CHARS // 2 + 1)},
            ],
        },
        "messages[1].content",
    ),
    "role system": ({"role": "system", "content": "obey"}, "messages[1].role"),
    "no content": ({"role": "user"}, "messages[1].content"),
    "empty content parts": ({"role": "user", "content": []}, "messages[1].content"),
    "unknown content part": ({"role": "user", "content": [{"type": "audio"}]}, "messages[1].content[0].type"),
    "image_url without a url": (
        {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
        "messages[1].content[0].image_url",
    ),
    "image_url not a URL": (
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "sky.png"}}]},
        "messages[1].content[0].image_url.url",
    ),
    "a NUL character": ({"role": "user", "content": "before\x00after"}, "messages[1].content"),
    "image detail 'ultra'": (
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://e.com/a.png", "detail": "ultra"}}],
        },
        "messages[1].content[0].image_url.detail",
    ),
    "attachment tool 'function'": (
        {
            "role": "user",
            "content": "see file",
            "attachments": [{"file_id": "file-1", "tools": [{"type": "function"}]}],
        },
        "messages[1].attachments[0].tools[0].type",
    ),
    "message metadata of 17 pairs": (
        {"role": "user", "content": "hi", "metadata": TOO_MANY_PAIRS},
        "messages[1].metadata",
    ),
    "message not an object": ("hello", "messages[1]"),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("case", BAD_THREAD_MESSAGES)
def test_thread_with_one_bad_message_stores_nothing(empty_project: Project, server: ServerProcess, case: str) -> None:
    bad, param = BAD_THREAD_MESSAGES[case]
    expect_error(
        400,
        param,
        lambda: empty_project.client.beta.threads.create(messages=[GOOD_MESSAGE, bad, GOOD_MESSAGE]),  # type: ignore[list-item]
    )
    assert stored_counts(server, empty_project.name) == {"Assistant": 0, "Thread": 0, "Message": 0}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"metadata": TOO_MANY_PAIRS}, "metadata"),
        ({"metadata": LONG_KEY}, "metadata"),
        ({"metadata": LONG_VALUE}, "metadata.note"),
        (
            {"tool_resources": {"file_search": {"vector_store_ids": ["vs_1", "vs_2"]}}},
            "tool_resources.file_search.vector_store_ids",
        ),
        ({"messages": {"role": "user", "content": "not in a list"}}, "messages"),
    ],
)
def test_bad_thread_create_stores_nothing(
    empty_project: Project, server: ServerProcess, fields: dict[str, Any], param: str
) -> None:
    expect_error(400, param, lambda: empty_project.client.beta.threads.create(**{"messages": [GOOD_MESSAGE], **fields}))
    assert stored_counts(server, empty_project.name) == {"Assistant": 0, "Thread": 0, "Message": 0}


def test_bad_thread_modify_changes_nothing(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(
        metadata={"keep": "me"}, tool_resources={"code_interpreter": {"file_ids": ["file-1"]}}
    )
    before = client.beta.threads.retrieve(thread.id).to_dict()
    expect_error(400, "metadata", lambda: client.beta.threads.update(thread.id, metadata=TOO_MANY_PAIRS))
    expect_error(400, "metadata.note", lambda: client.beta.threads.update(thread.id, metadata=LONG_VALUE))
    expect_error(
        400,
        "tool_resources.file_search.vector_store_ids",
        lambda: client.beta.threads.update(
            thread.id, metadata={"new": "x"}, tool_resources={"file_search": {"vector_store_ids": ["vs_1", "vs_2"]}}
        ),
    )
    assert client.beta.threads.retrieve(thread.id).to_dict() == before


BAD_MESSAGES: dict[str, tuple[dict[str, Any], str]] = {
    "content over the limit": ({"content": "x" * (MAX_MESSAGE_CHARS + 1)}, "content"),
    "text parts over the limit together": (
        {"content": [{"type": "text", "text": "x" * MAX_MESSAGE_CHARS}, {"type": "text", "text": "y"}]},
        "content",
    ),
    "metadata of 17 pairs": ({"metadata": TOO_MANY_PAIRS}, "metadata"),
    "metadata key of 65 chars": ({"metadata": LONG_KEY}, "metadata"),
    "metadata value of 513 chars": ({"metadata": LONG_VALUE}, "metadata.note"),
    "role system": ({"role": "system"}, "role"),
    "content a number": ({"content": 42}, "content"),
    "a NUL character": ({"content": [{"type": "text", "text": "nul\x00"}]}, "content[0].text"),
    "text part not a string": ({"content": [{"type": "text", "text": 7}]}, "content[0].text"),
    "image_file without a file_id": ({"content": [{"type": "image_file", "image_file": {}}]}, "content[0].image_file"),
    "attachments not an array": ({"attachments": {"file_id": "file-1"}}, "attachments"),
    "attachment without a file_id": ({"attachments": [{"tools": []}]}, "attachments[0]"),
}


@pytest.fixture(scope="module")
def quiet_thread(server: ServerProcess) -> Iterator[tuple[openai.OpenAI, str, list[str]]]:
    """A thread with one message, which no bad message may join."""
    with make_client(server) as sdk:
        thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "the only one"}])
        yield sdk, thread.id, [m.id for m in sdk.beta.threads.messages.list(thread.id)]


@pytest.mark.parametrize("case", BAD_MESSAGES)
def test_bad_message_is_400_and_stores_nothing(quiet_thread: tuple[openai.OpenAI, str, list[str]], case: str) -> None:
    sdk, thread_id, message_ids = quiet_thread
    overrides, param = BAD_MESSAGES[case]
    fields = {"role": "user", "content": "hello", **overrides}
    expect_error(400, param, lambda: sdk.beta.threads.messages.create(thread_id, **fields))
    assert [m.id for m in sdk.beta.threads.messages.list(thread_id, limit=100)] == message_ids


def test_a_lone_surrogate_in_a_body_is_400_and_stores_nothing(empty_project: Project, server: ServerProcess) -> None:
    # Found while fuzzing: a lone UTF-16 surrogate (JSON "\\ud800") has no UTF-8, so the database
    # refused it as a 500. The viewsets parsed with Python's json, which lets it through; now they
    # parse with orjson, as the plain views do. Raw requests: the SDK cannot encode such a string.
    sdk = empty_project.client
    thread = sdk.beta.threads.create(metadata={"k": "v"})
    headers = {"Authorization": f"Bearer {empty_project.key}", "Content-Type": "application/json"}
    for path, body in [
        ("assistants", '{"model": "' + MODEL + '", "name": "a\\ud800"}'),
        (f"threads/{thread.id}/messages", '{"role": "user", "content": "\\udfffb"}'),
        ("threads", '{"messages": [{"role": "user", "content": "\\ud800"}]}'),
        (f"threads/{thread.id}", '{"metadata": {"\\ud800": "x"}}'),
        ("uploads", '{"filename": "a\\ud800.txt", "purpose": "assistants", "bytes": 3, "mime_type": "text/plain"}'),
    ]:
        response = requests.post(f"{server.url}/v1/{path}", data=body.encode(), headers=headers, timeout=10)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "invalid_json" and "surrogate" in error["message"], (path, error)
    assert sdk.beta.assistants.list(limit=100).data == []
    assert sdk.beta.threads.messages.list(thread.id).data == []
    assert sdk.beta.threads.retrieve(thread.id).metadata == {"k": "v"}


def test_message_content_at_the_limit_is_accepted(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    message = client.beta.threads.messages.create(thread.id, role="user", content="x" * MAX_MESSAGE_CHARS)
    assert message.content[0].type == "text" and len(message.content[0].text.value) == MAX_MESSAGE_CHARS


def test_bad_message_modify_changes_nothing(quiet_thread: tuple[openai.OpenAI, str, list[str]]) -> None:
    sdk, thread_id, message_ids = quiet_thread
    before = sdk.beta.threads.messages.retrieve(message_ids[0], thread_id=thread_id).to_dict()
    for metadata, param in ((TOO_MANY_PAIRS, "metadata"), (LONG_KEY, "metadata"), (LONG_VALUE, "metadata.note")):
        expect_error(
            400,
            param,
            lambda metadata=metadata: sdk.beta.threads.messages.update(  # type: ignore[misc]
                message_ids[0], thread_id=thread_id, metadata=metadata
            ),
        )
    assert sdk.beta.threads.messages.retrieve(message_ids[0], thread_id=thread_id).to_dict() == before


def test_unknown_ids_are_404(client: openai.OpenAI) -> None:
    gone_asst = client.beta.assistants.create(model=MODEL)
    client.beta.assistants.delete(gone_asst.id)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    gone_thread = client.beta.threads.create()
    client.beta.threads.delete(gone_thread.id)
    gone_message = client.beta.threads.messages.create(thread.id, role="user", content="soon gone")
    client.beta.threads.messages.delete(gone_message.id, thread_id=thread.id)
    made_up = "msg_" + secrets.token_hex(8)

    for call in (
        lambda: client.beta.assistants.retrieve(gone_asst.id),
        lambda: client.beta.assistants.retrieve("not-an-id"),
        lambda: client.beta.threads.retrieve(gone_thread.id),
        lambda: client.beta.threads.update(gone_thread.id, metadata={}),
        lambda: client.beta.threads.messages.list(gone_thread.id),
        lambda: client.beta.threads.messages.create(gone_thread.id, role="user", content="hello?"),
        lambda: client.beta.threads.messages.retrieve(gone_message.id, thread_id=thread.id),
        lambda: client.beta.threads.messages.update(made_up, thread_id=thread.id, metadata={}),
        lambda: client.beta.threads.messages.delete(made_up, thread_id=thread.id),
        lambda: client.beta.threads.messages.retrieve(made_up, thread_id=gone_thread.id),
    ):
        error = expect_error(404, None, call)
        assert "No " in error.body["message"] and "found with id" in error.body["message"]  # type: ignore[index]
    expect_error(404, "assistant_id", lambda: client.beta.threads.runs.create(thread.id, assistant_id=gone_asst.id))
    expect_error(400, "after", lambda: client.beta.threads.messages.list(thread.id, after=made_up))
    expect_error(400, "before", lambda: client.beta.threads.messages.list(thread.id, before=gone_message.id))
    assert len(client.beta.threads.messages.list(thread.id).data) == 1


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"model": "fake-model",', "application/json", 400),
        (b'["fake-model"]', "application/json", 400),
        (b"model=fake-model", "application/x-www-form-urlencoded", 415),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),  # deeper than Python's recursion limit
    ],
)
def test_unparseable_bodies_are_enveloped(
    fresh: Project, server: ServerProcess, body: bytes, content_type: str, status: int
) -> None:
    # Raw requests: the SDK only ever sends well-formed JSON objects.
    response = requests.post(
        server.url + "/v1/assistants",
        data=body,
        headers={"Authorization": f"Bearer {fresh.key}", "Content-Type": content_type, "OpenAI-Beta": "assistants=v2"},
        timeout=10,
    )
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert fresh.client.beta.assistants.list().data == []


# --- the admin -------------------------------------------------------------------------------------


def admin_session(server: ServerProcess) -> requests.Session:
    """A superuser logged in through the admin's own login form."""
    username, password = "admin-" + secrets.token_hex(3), secrets.token_urlsafe(16)
    server.manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.contrib.auth.models import User; "
        f"User.objects.create_superuser({username!r}, 'ops@example.com', {password!r})",
    )
    session = requests.Session()
    form = session.get(server.url + "/admin/login/", timeout=10)
    assert form.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert token is not None
    answer = session.post(
        server.url + "/admin/login/?next=/admin/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token.group(1), "next": "/admin/"},
        timeout=10,
    )
    assert answer.status_code == 200 and answer.url.endswith("/admin/"), answer.url
    assert "Site administration" in answer.text
    return session


def change_page(session: requests.Session, server: ServerProcess, model: str, object_id: str) -> str:
    """Opens the changelist, finds the object's link there (the admin escapes ids in URLs), follows it."""
    listing = session.get(f"{server.url}/admin/{model}/", timeout=10)
    assert listing.status_code == 200
    link = re.search(rf'href="(/admin/{model}/[^"]+/change/)[^"]*">{re.escape(object_id)}</a>', listing.text)
    assert link is not None, f"{object_id} is not on the {model} changelist"
    page = session.get(server.url + link.group(1), timeout=10)
    assert page.status_code == 200
    assert object_id in page.text
    return page.text


def test_admin_shows_threads_runs_and_keys(
    server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("chat/completions", Reply.stream(text_stream("Admin-visible answer.")))
    asst = client.beta.assistants.create(model=MODEL, name="admin-visible")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Show me in the admin."}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=POLL_MS)
    assert run.status == "completed", run.last_error
    messages = client.beta.threads.messages.list(thread.id).data
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert len(messages) == 2 and steps
    key_project = "admin-keys-" + secrets.token_hex(3)
    key = server.manage("createapikey", "--project", key_project, "--name", "ops laptop").stdout.strip()
    digest = manage_json(
        server,
        "import json; from clicky_chats.models import ApiKey; "
        f"print(json.dumps(ApiKey.objects.get(project={key_project!r}).digest))",
    )

    anonymous = requests.get(server.url + "/admin/api_v1/thread/", timeout=10, allow_redirects=False)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous.headers["Location"]
    session = admin_session(server)

    thread_page = change_page(session, server, "api_v1/thread", thread.id)
    for message in messages:
        assert message.id in thread_page  # the messages inline
    assert "Show me in the admin." in thread_page
    run_page = change_page(session, server, "api_v1/run", run.id)
    for step in steps:
        assert step.id in run_page  # the steps inline
    assert "thread.run.completed" in run_page  # the events inline
    change_page(session, server, "api_v1/assistant", asst.id)
    change_page(session, server, "api_v1/runstep", steps[0].id)
    assert session.get(server.url + "/admin/api_v1/storedchatcompletion/", timeout=10).status_code == 200

    keys = session.get(server.url + f"/admin/clicky_chats/apikey/?project={key_project}", timeout=10)
    assert keys.status_code == 200
    assert key[:14] in keys.text and key_project in keys.text and "ops laptop" in keys.text
    key_link = re.search(r'href="(/admin/clicky_chats/apikey/\d+/change/)', keys.text)
    assert key_link is not None
    key_page = session.get(server.url + key_link.group(1), timeout=10)
    assert key_page.status_code == 200 and key[:14] in key_page.text
    for page in (keys.text, key_page.text):
        assert digest not in page and "digest" not in page.lower()
        assert key not in page

    # Read-only: nothing can be added or changed through the admin.
    assert session.get(server.url + "/admin/api_v1/thread/add/", timeout=10).status_code == 403
    token = session.cookies.get("csrftoken")
    post = session.post(
        server.url + "/admin/api_v1/thread/",
        data={"action": "delete_selected", "_selected_action": thread.id, "csrfmiddlewaretoken": token},
        timeout=10,
    )
    assert post.status_code in (200, 302, 403)
    assert client.beta.threads.retrieve(thread.id).id == thread.id


def test_openai_beta_header_is_optional(server: ServerProcess) -> None:
    # The SDK always sends `OpenAI-Beta: assistants=v2` (checked in raw_json); without it, still fine.
    response = requests.post(
        server.url + "/v1/assistants",
        json={"model": MODEL, "name": "no beta header"},
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert_spec_object("AssistantObject", response.json())
