"""Runs through the official SDK: the polling helpers, create-and-run, list/retrieve/modify, steps,
exactly what the model is sent for a run, and the rules on who may run what, when.

Streams, tool calls and failures have their own files (test_runs_stream.py, test_runs_tools.py,
test_runs_failures.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import openai
import pytest

from tests.conftest import make_async_client
from tests.fake_upstream import Reply, chat_chunk
from tests.runs_support import (
    MODEL,
    POLL_MS,
    TERMINAL,
    TIME_TOOL,
    USAGE,
    WEATHER_TOOL,
    RunKit,
    answer,
    api,
    assert_envelope,
    kit,
    tool_call_answer,
)

__all__ = ["kit"]  # the fixture, imported for pytest
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated

FILE_SEARCH_INCLUDE = "step_details.tool_calls[*].file_search.results[*].content"


def model_request(kit: RunKit) -> dict[str, Any]:
    return kit.fake.last("chat/completions").json()


# --- the polling helpers -----------------------------------------------------------------------


def test_create_and_poll_completes_with_the_answer_its_step_and_usage(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Say hello.")
    kit.fake.script("chat/completions", Reply.stream(answer("Hello", " there", "!")))

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "completed"
    assert run.assistant_id == assistant.id and run.thread_id == thread.id and run.model == MODEL
    assert run.started_at is not None and run.completed_at is not None and run.completed_at >= run.started_at
    assert run.expires_at is None  # terminal runs no longer expire
    assert run.last_error is None and run.required_action is None and run.incomplete_details is None
    assert run.usage is not None and run.usage.model_dump() == USAGE

    user, reply = kit.messages(thread.id)
    assert user.role == "user" and reply.role == "assistant"
    assert reply.status == "completed" and reply.completed_at is not None
    assert reply.run_id == run.id and reply.assistant_id == assistant.id
    assert [part.type for part in reply.content] == ["text"]
    assert reply.content[0].text.value == "Hello there!"

    steps = list(kit.runs.steps.list(run.id, thread_id=thread.id))
    assert len(steps) == 1
    step = steps[0]
    assert step.type == "message_creation" and step.status == "completed" and step.completed_at is not None
    assert step.step_details.type == "message_creation"
    assert step.step_details.message_creation.message_id == reply.id
    assert step.run_id == run.id and step.thread_id == thread.id and step.assistant_id == assistant.id
    assert step.usage is not None and step.usage.model_dump() == USAGE


def test_poll_needs_no_interval_the_server_says_when_to_look_again(kit: RunKit) -> None:
    """Without poll_interval_ms the SDK waits a whole second between looks unless the server sends
    `openai-poll-after-ms`, as OpenAI does; a quick answer must not cost a second."""
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    run = kit.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "queued"
    started = time.monotonic()
    done = kit.runs.poll(run.id, thread_id=thread.id)
    assert done.status == "completed"
    assert time.monotonic() - started < 0.9


def test_create_and_poll_async(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Say hello.")
    kit.fake.script("chat/completions", Reply.stream(answer("Async ", "hello.")))

    async def main() -> tuple[Any, list[Any]]:
        async with make_async_client(kit.server) as client:
            run = await client.beta.threads.runs.create_and_poll(
                thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS
            )
            page = await client.beta.threads.messages.list(thread.id, run_id=run.id)
            return run, page.data

    run, messages = asyncio.run(main())
    assert run.status == "completed"
    assert [message.content[0].text.value for message in messages] == ["Async hello."]


def test_runs_on_several_threads_at_once_each_get_their_answer(kit: RunKit) -> None:
    assistant = kit.assistant()
    threads = [kit.thread(f"Question {index}.") for index in range(4)]
    kit.fake.script("chat/completions", *[Reply.stream(answer("Answer."), delay_s=1.0) for _ in threads])

    async def main() -> list[Any]:
        async with make_async_client(kit.server) as client:
            return await asyncio.gather(
                *[
                    client.beta.threads.runs.create_and_poll(
                        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS
                    )
                    for thread in threads
                ]
            )

    started = time.monotonic()
    runs = asyncio.run(main())
    # Four slow answers side by side: one after another they would take over 4 s. (The margin is
    # for a loaded machine, where the agent's one database thread serialises the runs' writes.)
    assert time.monotonic() - started < 3.0
    assert [run.status for run in runs] == ["completed"] * 4
    for thread in threads:
        assert [m.role for m in kit.messages(thread.id)] == ["user", "assistant"]
    asked = sorted(r.json()["messages"][-1]["content"] for r in kit.fake.requests if r.path == "chat/completions")
    assert asked == [f"Question {index}." for index in range(4)]


def test_create_and_run_poll_makes_the_thread_and_answers_on_it(kit: RunKit) -> None:
    assistant = kit.assistant()
    kit.fake.script("chat/completions", Reply.stream(answer("Made ", "a thread.")))

    run = kit.track(
        kit.client.beta.threads.create_and_run_poll(
            assistant_id=assistant.id,
            thread={"messages": [{"role": "user", "content": "Start."}], "metadata": {"origin": "test"}},
            poll_interval_ms=POLL_MS,
        )
    )

    assert run.status == "completed"
    assert kit.client.beta.threads.retrieve(run.thread_id).metadata == {"origin": "test"}
    assert [(m.role, m.content[0].text.value) for m in kit.messages(run.thread_id)] == [
        ("user", "Start."),
        ("assistant", "Made a thread."),
    ]
    assert model_request(kit)["messages"][-1] == {"role": "user", "content": "Start."}


def test_create_and_run_stream_starts_with_the_new_thread(kit: RunKit) -> None:
    assistant = kit.assistant()
    kit.fake.script("chat/completions", Reply.stream(answer("Streamed ", "and made.")))

    with kit.client.beta.threads.create_and_run_stream(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "Go."}]}
    ) as stream:
        events = list(stream)
        final_run = stream.get_final_run()
        final_messages = stream.get_final_messages()
    kit.track(final_run)

    assert events[0].event == "thread.created"
    assert events[0].data.id == final_run.thread_id
    assert [event.event for event in events[1:4]] == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
    ]
    assert events[-1].event == "thread.run.completed"
    assert final_run.status == "completed"
    assert [message.content[0].text.value for message in final_messages] == ["Streamed and made."]


# --- list, retrieve, modify; steps -------------------------------------------------------------


def test_runs_list_retrieve_and_modify_metadata(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("One.")
    first = kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, metadata={"n": "1"}, poll_interval_ms=POLL_MS
    )
    second = kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, metadata={"n": "2"}, poll_interval_ms=POLL_MS
    )

    assert [run.id for run in kit.runs.list(thread.id)] == [second.id, first.id]  # newest first
    assert [run.id for run in kit.runs.list(thread.id, order="asc")] == [first.id, second.id]
    page = kit.runs.list(thread.id, limit=1, order="asc")
    assert [run.id for run in page.data] == [first.id] and page.has_more is True
    assert [run.id for run in kit.runs.list(thread.id, limit=1, order="asc", after=first.id).data] == [second.id]

    retrieved = kit.runs.retrieve(first.id, thread_id=thread.id)
    assert retrieved.model_dump() == first.model_dump()

    updated = kit.runs.update(first.id, thread_id=thread.id, metadata={"n": "1", "reviewed": "yes"})
    assert updated.id == first.id and updated.metadata == {"n": "1", "reviewed": "yes"}
    assert updated.status == "completed"
    assert kit.runs.retrieve(first.id, thread_id=thread.id).metadata == {"n": "1", "reviewed": "yes"}
    assert kit.runs.retrieve(second.id, thread_id=thread.id).metadata == {"n": "2"}

    with pytest.raises(openai.BadRequestError):
        kit.runs.update(first.id, thread_id=thread.id, metadata={"k" * 65: "too long a key"})
    with pytest.raises(openai.NotFoundError):
        kit.runs.retrieve("run_doesnotexist", thread_id=thread.id)


def test_steps_list_and_retrieve_accept_include(kit: RunKit) -> None:
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather in Paris?")
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(("call_p1", "get_weather", ['{"city":', '"Paris"}']))),
        Reply.stream(answer("Sunny.")),
    )
    # include[] is a query parameter on runs.create as well; the server must take it.
    run = kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, include=[FILE_SEARCH_INCLUDE], poll_interval_ms=POLL_MS
    )
    assert run.status == "requires_action"
    run = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_p1", "output": "sunny"}]
    )
    assert run.status == "completed"

    steps = list(kit.runs.steps.list(run.id, thread_id=thread.id, include=[FILE_SEARCH_INCLUDE], order="asc"))
    assert [step.type for step in steps] == ["tool_calls", "message_creation"]
    tool_step, message_step = steps
    call = tool_step.step_details.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("call_p1", "function", "get_weather")
    assert (call.function.arguments, call.function.output) == ('{"city":"Paris"}', "sunny")

    for step in steps:
        again = kit.runs.steps.retrieve(step.id, thread_id=thread.id, run_id=run.id, include=[FILE_SEARCH_INCLUDE])
        assert again.model_dump() == step.model_dump()
    page = kit.runs.steps.list(run.id, thread_id=thread.id, limit=1, order="desc")
    assert [step.id for step in page.data] == [message_step.id] and page.has_more is True
    with pytest.raises(openai.NotFoundError):
        kit.runs.steps.retrieve("step_doesnotexist", thread_id=thread.id, run_id=run.id)


# --- what the model receives -------------------------------------------------------------------


def test_the_model_gets_instructions_plus_additional_and_the_thread_in_order(kit: RunKit) -> None:
    assistant = kit.assistant(instructions="Be terse.")
    thread = kit.thread("First question.")
    kit.client.beta.threads.messages.create(thread.id, role="assistant", content="First answer.")
    kit.client.beta.threads.messages.create(
        thread.id, role="user", content=[{"type": "text", "text": "Second "}, {"type": "text", "text": "question."}]
    )

    run = kit.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        additional_instructions="Answer in French.",
        additional_messages=[{"role": "user", "content": "And one more."}],
        poll_interval_ms=POLL_MS,
    )

    assert run.status == "completed"
    sent = model_request(kit)
    system, *conversation = sent["messages"]
    assert system["role"] == "system"
    assert system["content"].startswith("Be terse.") and system["content"].endswith("Answer in French.")
    assert run.instructions == system["content"]  # the run shows the instructions it ran with
    assert conversation == [
        {"role": "user", "content": "First question."},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question."},
        {"role": "user", "content": "And one more."},
    ]
    assert sent["model"] == MODEL and sent["stream"] is True
    assert "tools" not in sent and "temperature" not in sent and "max_completion_tokens" not in sent
    # additional_messages became thread messages, before the answer.
    assert [m.content[0].text.value for m in kit.messages(thread.id)][-2:] == [
        "And one more.",
        "Hello from the fake upstream.",
    ]


def test_the_run_instructions_replace_the_assistants(kit: RunKit) -> None:
    assistant = kit.assistant(instructions="Assistant's own words.")
    thread = kit.thread("Hi.")

    run = kit.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        instructions="The run's words.",
        additional_instructions="And a postscript.",
        poll_interval_ms=POLL_MS,
    )
    system = model_request(kit)["messages"][0]
    assert system["role"] == "system" and "Assistant's own words." not in system["content"]
    assert system["content"].startswith("The run's words.") and system["content"].endswith("And a postscript.")
    assert run.instructions == system["content"]

    kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, instructions="", poll_interval_ms=POLL_MS)
    assert model_request(kit)["messages"][0]["role"] != "system"  # empty instructions: no system message


def test_the_model_gets_tools_tool_choice_format_and_sampling(kit: RunKit) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
    assistant = kit.assistant(tools=[WEATHER_TOOL], temperature=0.2, top_p=0.5)
    thread = kit.thread("Weather?")

    run = kit.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        tools=[WEATHER_TOOL, TIME_TOOL],  # the run's tools replace the assistant's
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        response_format=response_format,
        temperature=0.7,
        max_completion_tokens=300,
        poll_interval_ms=POLL_MS,
    )

    assert run.status == "completed"
    sent = model_request(kit)
    assert sent["tools"] == [WEATHER_TOOL, TIME_TOOL]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert sent["parallel_tool_calls"] is True
    assert sent["response_format"] == response_format
    assert sent["temperature"] == 0.7 and sent["top_p"] == 0.5  # top_p from the assistant
    assert sent["max_completion_tokens"] == 300
    assert run.tool_choice.model_dump(exclude_none=True) == {"type": "function", "function": {"name": "get_time"}}
    assert run.response_format.model_dump(exclude_none=True)["json_schema"]["name"] == "reply"
    assert [tool.model_dump(exclude_none=True) for tool in run.tools] == [WEATHER_TOOL, TIME_TOOL]

    kit.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        tool_choice="required",
        parallel_tool_calls=False,
        poll_interval_ms=POLL_MS,
    )
    sent = model_request(kit)
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "required"
    assert sent["parallel_tool_calls"] is False
    assert sent["temperature"] == 0.2 and sent["top_p"] == 0.5


def test_truncation_last_messages_sends_only_the_newest(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("m1", "m2", "m3", "m4")

    run = kit.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        truncation_strategy={"type": "last_messages", "last_messages": 2},
        poll_interval_ms=POLL_MS,
    )
    assert run.truncation_strategy is not None
    assert run.truncation_strategy.model_dump() == {"type": "last_messages", "last_messages": 2}
    conversation = [m for m in model_request(kit)["messages"] if m["role"] != "system"]
    assert conversation == [{"role": "user", "content": "m3"}, {"role": "user", "content": "m4"}]

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    assert run.truncation_strategy is not None and run.truncation_strategy.type == "auto"
    conversation = [m["content"] for m in model_request(kit)["messages"] if m["role"] != "system"]
    assert conversation == ["m1", "m2", "m3", "m4", "Hello from the fake upstream."]


# --- who may run what, when --------------------------------------------------------------------


def test_a_second_run_on_a_busy_thread_is_400(kit: RunKit) -> None:
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather?")
    kit.fake.script("chat/completions", Reply.stream(tool_call_answer(("call_b1", "get_weather", ['{"city":"Oslo"}']))))
    waiting = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    assert waiting.status == "requires_action"

    with pytest.raises(openai.BadRequestError) as caught:
        kit.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert caught.value.status_code == 400 and waiting.id in caught.value.message
    error = assert_envelope(api(kit.server, "POST", f"threads/{thread.id}/runs", {"assistant_id": assistant.id}), 400)
    assert error["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        kit.client.beta.threads.messages.create(thread.id, role="user", content="Meanwhile.")
    assert [run.id for run in kit.runs.list(thread.id)] == [waiting.id]  # nothing was created

    cancelled = kit.runs.cancel(waiting.id, thread_id=thread.id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert kit.wait(waiting, "cancelled").status == "cancelled"
    # Once the run has ended, the thread takes a new one.
    assert kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS
    ).status == ("completed")


def test_two_runs_created_at_once_on_one_thread_one_wins_one_is_400(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Race.")
    kit.fake.script("chat/completions", Reply.stream(answer("Slow."), delay_s=0.5))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: api(kit.server, "POST", f"threads/{thread.id}/runs", {"assistant_id": assistant.id}), range(4)
            )
        )

    assert sorted(response.status_code for response in answers) == [200, 400, 400, 400], [r.text for r in answers]
    for response in answers:
        if response.status_code == 400:
            assert_envelope(response, 400)
    (run,) = kit.runs.list(thread.id).data
    assert kit.poll(run).status == "completed"


def test_runs_on_another_projects_thread_are_404(kit: RunKit, bob: openai.OpenAI) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Alice's.")
    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    bobs_assistant = bob.beta.assistants.create(model=MODEL)

    for attempt in (
        lambda: bob.beta.threads.runs.create(thread_id=thread.id, assistant_id=bobs_assistant.id),
        lambda: bob.beta.threads.runs.list(thread.id),
        lambda: bob.beta.threads.runs.retrieve(run.id, thread_id=thread.id),
        lambda: bob.beta.threads.runs.update(run.id, thread_id=thread.id, metadata={"x": "y"}),
        lambda: bob.beta.threads.runs.cancel(run.id, thread_id=thread.id),
        lambda: bob.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id, tool_outputs=[]),
        lambda: bob.beta.threads.runs.steps.list(run.id, thread_id=thread.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    # Alice cannot use Bob's assistant on her own thread either.
    with pytest.raises(openai.NotFoundError):
        kit.runs.create(thread_id=thread.id, assistant_id=bobs_assistant.id)
    assert kit.runs.retrieve(run.id, thread_id=thread.id).metadata == {}


def test_a_run_id_under_the_wrong_thread_is_404(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread, other = kit.thread("a"), kit.thread("b")
    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    with pytest.raises(openai.NotFoundError):
        kit.runs.retrieve(run.id, thread_id=other.id)
    with pytest.raises(openai.NotFoundError):
        kit.runs.cancel(run.id, thread_id=other.id)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_completion_tokens": 10}, "max_completion_tokens"),
        ({"max_prompt_tokens": 255}, "max_prompt_tokens"),
        ({"truncation_strategy": {"type": "newest"}}, "truncation_strategy.type"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
        ({"additional_messages": [{"role": "system", "content": "x"}]}, "additional_messages[0].role"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        (  # a run may override the assistant's tools with at most 20
            {
                "tools": [
                    {"type": "function", "function": {"name": f"f{index}", "parameters": {"type": "object"}}}
                    for index in range(21)
                ]
            },
            "tools",
        ),
    ],
)
def test_bad_run_requests_are_400_and_create_nothing(kit: RunKit, fields: dict[str, Any], param: str) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    response = api(kit.server, "POST", f"threads/{thread.id}/runs", {"assistant_id": assistant.id, **fields})
    error = assert_envelope(response, 400)
    assert error["param"] is not None and error["param"].startswith(param), error
    assert list(kit.runs.list(thread.id)) == []
    assert len(kit.messages(thread.id)) == 1


def test_token_limits_take_any_64_bit_integer_and_refuse_larger(kit: RunKit) -> None:
    # Found while fuzzing: max_prompt_tokens past 2**31 - 1 did not fit PostgreSQL's INTEGER column,
    # and past 2**63 - 1 not SQLite's either; each was a 500. The columns are BIGINT now, and an
    # integer past 64 bits is a 400 naming the field.
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    run = kit.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        max_prompt_tokens=2**31,
        max_completion_tokens=2**63 - 1,
        poll_interval_ms=POLL_MS,
    )
    assert (run.max_prompt_tokens, run.max_completion_tokens) == (2**31, 2**63 - 1)
    other = kit.thread("Hi.")
    response = api(
        kit.server, "POST", f"threads/{other.id}/runs", {"assistant_id": assistant.id, "max_prompt_tokens": 2**63}
    )
    error = assert_envelope(response, 400)
    assert error["param"] == "max_prompt_tokens" and error["code"] == "invalid_value"
    assert list(kit.runs.list(other.id)) == []


def test_parallel_tool_calls_null_means_not_given(kit: RunKit) -> None:
    # Found by Schemathesis (POST /v1/threads/runs with "parallel_tool_calls": null, which the spec
    # allows). Raw HTTP: the SDK leaves a None argument out instead of sending null.
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    response = api(
        kit.server, "POST", f"threads/{thread.id}/runs", {"assistant_id": assistant.id, "parallel_tool_calls": None}
    )
    assert response.status_code == 200, response.text
    run = kit.wait(kit.runs.retrieve(response.json()["id"], thread_id=thread.id), *TERMINAL)
    assert run.parallel_tool_calls is True


def test_a_missing_assistant_or_thread_is_404(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    assert_envelope(api(kit.server, "POST", f"threads/{thread.id}/runs", {"assistant_id": "asst_nope"}), 404)
    assert_envelope(api(kit.server, "POST", "threads/thread_nope/runs", {"assistant_id": assistant.id}), 404)
    error = assert_envelope(api(kit.server, "POST", f"threads/{thread.id}/runs", {}), 400)
    assert error["param"] == "assistant_id"


def test_an_empty_answer_still_makes_a_message(kit: RunKit) -> None:
    """Every finished turn without function calls leaves a message_creation step and its message,
    even when the model said nothing: clients read the answer from there."""
    assistant = kit.assistant()
    thread = kit.thread("Say nothing.")
    kit.fake.script("chat/completions", Reply.stream(answer()))

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "completed"
    (reply,) = [m for m in kit.messages(thread.id) if m.role == "assistant"]
    assert reply.status == "completed" and reply.content == [] and reply.run_id == run.id
    (step,) = kit.runs.steps.list(run.id, thread_id=thread.id).data
    assert step.type == "message_creation" and step.step_details.message_creation.message_id == reply.id


def test_a_refusal_is_stored_as_a_refusal_part(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Something I must refuse.")
    chunks = [
        chat_chunk(role="assistant"),
        {**chat_chunk(), "choices": [{"index": 0, "delta": {"refusal": "I can't "}, "finish_reason": None}]},
        {**chat_chunk(), "choices": [{"index": 0, "delta": {"refusal": "help with that."}, "finish_reason": None}]},
        chat_chunk(finish_reason="stop"),
    ]
    kit.fake.script("chat/completions", Reply.stream(chunks))

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "completed"
    (reply,) = [m for m in kit.messages(thread.id) if m.role == "assistant"]
    assert [part.model_dump() for part in reply.content] == [{"type": "refusal", "refusal": "I can't help with that."}]
    kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    assert model_request(kit)["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": "I can't help with that."}],
    }
