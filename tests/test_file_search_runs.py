"""file_search inside runs: the agent offers the model a search over the assistant's and the
thread's vector stores, runs it, records a file_search tool call step, gives the results back to
the model, and turns citation markers in the answer into file_citation annotations."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import AssistantEventHandler
from openai.types.beta.threads.runs import ToolCall

from tests.fake_upstream import Reply
from tests.runs_support import RunKit, answer, kit, tool_call_answer
from tests.test_vector_stores import COOKING, GARDEN, upload, wait_ingested

__all__ = ["kit"]  # the fixture, imported for pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
INCLUDE_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"


def garden_and_cooking_store(client: openai.OpenAI) -> tuple[str, str, str]:
    garden = upload(client, "garden.txt", GARDEN.encode())
    cooking = upload(client, "bread.txt", COOKING.encode())
    store = client.vector_stores.create(name="household", file_ids=[garden, cooking])
    assert wait_ingested(client, store.id).file_counts.completed == 2
    return store.id, garden, cooking


def script_search_then_answer(kit: RunKit, query: str, text: str) -> None:
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(("call_search1", "file_search", [f'{{"query": "{query}"}}']))),
        Reply.stream(answer(text)),
    )


def test_a_run_searches_the_assistants_store_and_cites_the_file(kit: RunKit, client: openai.OpenAI) -> None:
    store_id, garden, _cooking = garden_and_cooking_store(client)
    assistant = kit.assistant(
        tools=[{"type": "file_search", "file_search": {"max_num_results": 1}}],
        tool_resources={"file_search": {"vector_store_ids": [store_id]}},
    )
    thread = kit.thread("How often should I water tomato plants?")
    script_search_then_answer(kit, "watering tomato plants", "Twice a week, at the base【0†garden.txt】.")

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50)

    assert run.status == "completed", run.last_error
    chats = [request.json() for request in kit.fake.requests if request.path == "chat/completions"]
    offered = chats[-2]
    assert any(tool["function"]["name"] == "file_search" for tool in offered["tools"])
    # The model got the garden text back as the search's output, and only one result (max_num_results).
    follow_up = kit.fake.last("chat/completions").json()["messages"]
    tool_message = next(message for message in follow_up if message["role"] == "tool")
    assert tool_message["tool_call_id"] == "call_search1"
    assert "Tomato plants need deep watering" in tool_message["content"]
    assert "sourdough" not in tool_message["content"]

    steps = list(kit.runs.steps.list(run.id, thread_id=thread.id, order="asc"))
    assert [step.type for step in steps] == ["tool_calls", "message_creation"]
    call = steps[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert call.type == "file_search" and call.id == "call_search1"
    assert call.file_search.ranking_options is not None
    assert [result.file_id for result in call.file_search.results] == [garden]
    assert call.file_search.results[0].content is None  # content only when include[] asks

    detailed = kit.runs.steps.retrieve(steps[0].id, thread_id=thread.id, run_id=run.id, include=[INCLUDE_CONTENT])
    result = detailed.step_details.tool_calls[0].file_search.results[0]  # type: ignore[union-attr]
    assert result.content is not None and GARDEN in result.content[0].text

    message = kit.messages(thread.id)[-1]
    text = message.content[0].text
    assert text.value == "Twice a week, at the base【0†garden.txt】."
    [annotation] = text.annotations
    assert annotation.type == "file_citation" and annotation.file_citation.file_id == garden
    assert text.value[annotation.start_index : annotation.end_index] == annotation.text == "【0†garden.txt】"


def test_the_threads_own_store_is_searched_too(kit: RunKit, client: openai.OpenAI) -> None:
    store_id, _garden, cooking = garden_and_cooking_store(client)
    assistant = kit.assistant(tools=[{"type": "file_search"}])
    thread = kit.track(
        client.beta.threads.create(
            messages=[{"role": "user", "content": "How do I bake bread?"}],
            tool_resources={"file_search": {"vector_store_ids": [store_id]}},
        )
    )
    script_search_then_answer(kit, "bake sourdough bread", "Feed the starter first.")

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50)

    assert run.status == "completed", run.last_error
    step = next(iter(kit.runs.steps.list(run.id, thread_id=thread.id, order="asc")))
    results = step.step_details.tool_calls[0].file_search.results  # type: ignore[union-attr]
    assert results[0].file_id == cooking


def test_streaming_shows_the_search_as_a_file_search_tool_call(kit: RunKit, client: openai.OpenAI) -> None:
    store_id, _garden, _cooking = garden_and_cooking_store(client)
    assistant = kit.assistant(
        tools=[{"type": "file_search"}], tool_resources={"file_search": {"vector_store_ids": [store_id]}}
    )
    thread = kit.thread("water?")
    script_search_then_answer(kit, "water tomato", "Twice a week.")
    seen: list[ToolCall] = []

    class Handler(AssistantEventHandler):
        def on_tool_call_done(self, tool_call: ToolCall) -> None:
            seen.append(tool_call)

    with kit.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=Handler()) as stream:
        stream.until_done()
        final: Any = stream.get_final_run()

    assert final.status == "completed"
    # The SDK reports a call done again at every later step and run end; the call is the same one.
    assert seen and {(call.type, call.id) for call in seen} == {("file_search", "call_search1")}


def test_a_run_without_stores_gets_an_empty_search(kit: RunKit) -> None:
    assistant = kit.assistant(tools=[{"type": "file_search"}])
    thread = kit.thread("anything in my files?")
    script_search_then_answer(kit, "anything", "Nothing found.")

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50)

    assert run.status == "completed", run.last_error
    tool_message = next(m for m in kit.fake.last("chat/completions").json()["messages"] if m["role"] == "tool")
    assert tool_message["content"] == "No results were found in the files."


def test_attachments_for_file_search_fill_the_threads_store(kit: RunKit, client: openai.OpenAI) -> None:
    garden = upload(client, "garden.txt", GARDEN.encode())
    thread = kit.track(
        client.beta.threads.create(
            messages=[
                {
                    "role": "user",
                    "content": "How should I water these?",
                    "attachments": [{"file_id": garden, "tools": [{"type": "file_search"}]}],
                }
            ]
        )
    )
    store_ids = thread.tool_resources.file_search.vector_store_ids  # type: ignore[union-attr]
    assert store_ids and len(store_ids) == 1
    wait_ingested(client, store_ids[0])
    cooking = upload(client, "bread.txt", COOKING.encode())
    client.beta.threads.messages.create(
        thread.id,
        role="user",
        content="and bread?",
        attachments=[{"file_id": cooking, "tools": [{"type": "file_search"}]}],
    )
    assert client.beta.threads.retrieve(thread.id).tool_resources.file_search.vector_store_ids == store_ids  # type: ignore[union-attr]
    store = wait_ingested(client, store_ids[0])
    assert store.file_counts.completed == 2
    assistant = kit.assistant(tools=[{"type": "file_search"}])
    script_search_then_answer(kit, "water tomato plants", "Twice a week.")

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50)

    assert run.status == "completed", run.last_error
    step = next(iter(kit.runs.steps.list(run.id, thread_id=thread.id, order="asc")))
    assert step.step_details.tool_calls[0].file_search.results[0].file_id == garden  # type: ignore[union-attr]


def test_inline_vector_stores_become_real_stores(client: openai.OpenAI) -> None:
    garden = upload(client, "garden.txt", GARDEN.encode())
    assistant = client.beta.assistants.create(
        model="fake-model",
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_stores": [{"file_ids": [garden], "metadata": {"made": "inline"}}]}},
    )
    [store_id] = assistant.tool_resources.file_search.vector_store_ids  # type: ignore[union-attr]
    store = wait_ingested(client, store_id)
    assert store.metadata == {"made": "inline"} and store.file_counts.completed == 1


def test_an_attachment_of_a_missing_file_stores_nothing(client: openai.OpenAI) -> None:
    gone = upload(client, "gone.txt", b"soon gone")
    client.files.delete(gone)
    before = len(list(client.vector_stores.list(limit=100)))
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.create(
            messages=[
                {
                    "role": "user",
                    "content": "hi",
                    "attachments": [{"file_id": gone, "tools": [{"type": "file_search"}]}],
                }
            ]
        )
    assert len(list(client.vector_stores.list(limit=100))) == before
