"""Function tools through the polling helpers: a call makes the run wait in requires_action, the
outputs send it on, and the next model request carries the call and its output. Bad submissions
are refused without touching the run."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import openai
import pytest

from tests.fake_upstream import Reply, chat_chunk
from tests.runs_support import (
    POLL_MS,
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

SECOND_USAGE = {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}


def waiting_run(kit: RunKit, *calls: tuple[str, str, list[str]], **run_fields: Any) -> Any:
    """A run in requires_action on the given calls, the next answer scripted as plain text."""
    assistant = kit.assistant(tools=[WEATHER_TOOL, TIME_TOOL])
    thread = kit.thread("What is the weather, and the time?")
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(*calls)),
        Reply.stream(answer("All ", "done.", usage=SECOND_USAGE)),
    )
    run = kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS, **run_fields
    )
    assert run.status == "requires_action", run
    return run


def pending_calls(run: Any) -> list[tuple[str, str, str]]:
    assert run.required_action is not None and run.required_action.type == "submit_tool_outputs"
    return [
        (call.id, call.function.name, call.function.arguments)
        for call in run.required_action.submit_tool_outputs.tool_calls
    ]


def test_a_function_call_round_trip(kit: RunKit) -> None:
    run = waiting_run(kit, ("call_w1", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}']))

    assert pending_calls(run) == [("call_w1", "get_weather", '{"city": "Paris"}')]
    assert all(call.type == "function" for call in run.required_action.submit_tool_outputs.tool_calls)
    assert run.usage is None  # usage is null until the run is terminal
    assert run.expires_at is not None and run.expires_at > run.created_at
    (tool_step,) = kit.runs.steps.list(run.id, thread_id=run.thread_id).data
    assert tool_step.type == "tool_calls" and tool_step.status == "in_progress"
    assert tool_step.step_details.tool_calls[0].function.output is None
    first_request = kit.fake.last("chat/completions").json()

    done = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": "call_w1", "output": "18 C and sunny"}],
        poll_interval_ms=POLL_MS,
    )

    assert done.status == "completed" and done.required_action is None
    assert done.usage is not None
    assert done.usage.model_dump() == {key: USAGE[key] + SECOND_USAGE[key] for key in USAGE}  # both turns
    second_request = kit.fake.last("chat/completions").json()
    assert second_request["messages"][: len(first_request["messages"])] == first_request["messages"]
    assert second_request["messages"][len(first_request["messages"]) :] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "18 C and sunny"},
    ]
    steps = kit.runs.steps.list(run.id, thread_id=run.thread_id, order="asc").data
    assert [(step.type, step.status) for step in steps] == [
        ("tool_calls", "completed"),
        ("message_creation", "completed"),
    ]
    assert steps[0].step_details.tool_calls[0].function.output == "18 C and sunny"
    assert steps[0].usage is not None and steps[0].usage.model_dump() == USAGE
    assert steps[1].usage is not None and steps[1].usage.model_dump() == SECOND_USAGE
    assert [m.content[0].text.value for m in kit.messages(run.thread_id) if m.role == "assistant"] == ["All done."]


def test_parallel_calls_are_all_listed_and_all_required(kit: RunKit) -> None:
    run = waiting_run(
        kit, ("call_a", "get_weather", ['{"city":"Rome"}']), ("call_b", "get_time", ['{"zone":', '"CET"}'])
    )
    assert pending_calls(run) == [
        ("call_a", "get_weather", '{"city":"Rome"}'),
        ("call_b", "get_time", '{"zone":"CET"}'),
    ]

    with pytest.raises(openai.BadRequestError) as caught:
        kit.runs.submit_tool_outputs(
            run.id, thread_id=run.thread_id, tool_outputs=[{"tool_call_id": "call_a", "output": "x"}]
        )
    assert "call_b" in caught.value.message
    assert kit.runs.retrieve(run.id, thread_id=run.thread_id).model_dump() == run.model_dump()

    done = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        # in any order: each output names its call
        tool_outputs=[{"tool_call_id": "call_b", "output": "12:00"}, {"tool_call_id": "call_a", "output": "rain"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"
    tail = kit.fake.last("chat/completions").json()["messages"][-3:]
    assert [call["id"] for call in tail[0]["tool_calls"]] == ["call_a", "call_b"]
    assert tail[1:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "rain"},
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
    ]
    (tool_step,) = [s for s in kit.runs.steps.list(run.id, thread_id=run.thread_id).data if s.type == "tool_calls"]
    assert [call.function.output for call in tool_step.step_details.tool_calls] == ["rain", "12:00"]


@pytest.mark.parametrize(
    ("outputs", "param"),
    [
        ([{"tool_call_id": "call_x", "output": "one"}], "tool_outputs"),  # call_y has none
        ([], "tool_outputs"),
        (
            [
                {"tool_call_id": "call_x", "output": "one"},
                {"tool_call_id": "call_y", "output": "two"},
                {"tool_call_id": "call_zzz", "output": "three"},
            ],
            "tool_outputs[2].tool_call_id",
        ),
        (
            [
                {"tool_call_id": "call_x", "output": "one"},
                {"tool_call_id": "call_x", "output": "again"},
                {"tool_call_id": "call_y", "output": "two"},
            ],
            "tool_outputs[1].tool_call_id",
        ),
        ([{"output": "no id"}, {"tool_call_id": "call_y", "output": "two"}], "tool_outputs[0]"),
        (
            [{"tool_call_id": "call_x", "output": 42}, {"tool_call_id": "call_y", "output": "two"}],
            "tool_outputs[0].output",
        ),
        ("not a list", "tool_outputs"),
    ],
)
def test_bad_tool_outputs_are_400_and_change_nothing(kit: RunKit, outputs: Any, param: str) -> None:
    run = waiting_run(kit, ("call_x", "get_weather", ['{"city":"Bern"}']), ("call_y", "get_time", ["{}"]))
    steps_before = kit.runs.steps.list(run.id, thread_id=run.thread_id).to_dict()
    path = f"threads/{run.thread_id}/runs/{run.id}/submit_tool_outputs"

    error = assert_envelope(api(kit.server, "POST", path, {"tool_outputs": outputs}), 400)

    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert kit.runs.retrieve(run.id, thread_id=run.thread_id).model_dump() == run.model_dump()
    assert kit.runs.steps.list(run.id, thread_id=run.thread_id).to_dict() == steps_before
    # The run still takes a good submission afterwards.
    done = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": "call_x", "output": "one"}, {"tool_call_id": "call_y", "output": "two"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"


def test_tool_outputs_for_a_run_not_waiting_are_400(kit: RunKit) -> None:
    run = waiting_run(kit, ("call_once", "get_weather", ['{"city":"Lima"}']))
    outputs = [{"tool_call_id": "call_once", "output": "warm"}]
    done = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=run.thread_id, tool_outputs=outputs, poll_interval_ms=POLL_MS
    )
    assert done.status == "completed"

    with pytest.raises(openai.BadRequestError) as caught:
        kit.runs.submit_tool_outputs(run.id, thread_id=run.thread_id, tool_outputs=outputs)
    assert caught.value.status_code == 400 and "completed" in caught.value.message
    assert kit.runs.retrieve(run.id, thread_id=run.thread_id).model_dump() == done.model_dump()

    plain = kit.runs.create_and_poll(thread_id=run.thread_id, assistant_id=run.assistant_id, poll_interval_ms=POLL_MS)
    assert plain.status == "completed"
    with pytest.raises(openai.BadRequestError):
        kit.runs.submit_tool_outputs(plain.id, thread_id=plain.thread_id, tool_outputs=[])


def test_two_submissions_at_once_one_is_taken_one_is_400(kit: RunKit) -> None:
    run = waiting_run(kit, ("call_race", "get_weather", ['{"city":"Graz"}']))
    path = f"threads/{run.thread_id}/runs/{run.id}/submit_tool_outputs"

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(
            pool.map(
                lambda n: api(
                    kit.server, "POST", path, {"tool_outputs": [{"tool_call_id": "call_race", "output": f"v{n}"}]}
                ),
                range(3),
            )
        )

    assert sorted(response.status_code for response in answers) == [200, 400, 400], [r.text for r in answers]
    taken = next(response.json() for response in answers if response.status_code == 200)
    assert taken["status"] == "queued" and taken["required_action"] is None
    done = kit.poll(run)
    assert done.status == "completed"
    (tool_step,) = [s for s in kit.runs.steps.list(run.id, thread_id=run.thread_id).data if s.type == "tool_calls"]
    (output,) = [call.function.output for call in tool_step.step_details.tool_calls]
    assert output in ("v0", "v1", "v2")
    assert kit.fake.last("chat/completions").json()["messages"][-1]["content"] == output


def test_a_call_the_upstream_sent_without_an_id_gets_one(kit: RunKit) -> None:
    """Some OpenAI-compatible servers stream calls without ids; the run still needs one to match
    the outputs against."""
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather?")
    chunks = [
        chat_chunk(role="assistant"),
        chat_chunk(tool_calls=[{"index": 0, "function": {"name": "get_weather", "arguments": '{"city":"Nice"}'}}]),
        chat_chunk(finish_reason="tool_calls"),
    ]
    kit.fake.script("chat/completions", Reply.stream(chunks), Reply.stream(answer("Nice weather.")))
    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    ((call_id, name, arguments),) = pending_calls(run)
    assert call_id.startswith("call_") and len(call_id) > len("call_")
    assert (name, arguments) == ("get_weather", '{"city":"Nice"}')
    done = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call_id, "output": "sun"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"
    assert kit.fake.last("chat/completions").json()["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call_id,
        "content": "sun",
    }


def test_words_and_a_call_in_one_answer(kit: RunKit) -> None:
    """Models often say something before calling a function; both are kept, and the model is
    later shown them as the one assistant message they were."""
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather?")
    call = tool_call_answer(("call_w", "get_weather", ['{"city":"Gent"}']))
    chunks = [call[0], chat_chunk("Let me "), chat_chunk("check."), *call[1:]]
    kit.fake.script("chat/completions", Reply.stream(chunks), Reply.stream(answer("Mild.")))

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert pending_calls(run) == [("call_w", "get_weather", '{"city":"Gent"}')]
    steps = kit.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [(step.type, step.status) for step in steps] == [
        ("message_creation", "completed"),
        ("tool_calls", "in_progress"),
    ]
    (said,) = [m for m in kit.messages(thread.id) if m.role == "assistant"]
    assert said.status == "completed" and said.content[0].text.value == "Let me check."

    done = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": "call_w", "output": "12 C"}],
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"
    assert kit.fake.last("chat/completions").json()["messages"][-2:] == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_w",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Gent"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w", "content": "12 C"},
    ]


def test_two_rounds_of_calls_in_one_run(kit: RunKit) -> None:
    assistant = kit.assistant(tools=[WEATHER_TOOL, TIME_TOOL])
    thread = kit.thread("Weather, then time.")
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(("call_r1", "get_weather", ['{"city":"Kyiv"}']))),
        Reply.stream(tool_call_answer(("call_r2", "get_time", ['{"zone":"EET"}']))),
        Reply.stream(answer("Cold, and noon.")),
    )
    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    assert pending_calls(run) == [("call_r1", "get_weather", '{"city":"Kyiv"}')]
    run = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": "call_r1", "output": "-5"}],
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "requires_action"
    assert pending_calls(run) == [("call_r2", "get_time", '{"zone":"EET"}')]
    run = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": "call_r2", "output": "12:00"}],
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed"
    assert run.usage is not None and run.usage.total_tokens == 3 * USAGE["total_tokens"]

    sent = kit.fake.last("chat/completions").json()["messages"]
    assert [(m["role"], m.get("tool_call_id")) for m in sent[-4:]] == [
        ("assistant", None),
        ("tool", "call_r1"),
        ("assistant", None),
        ("tool", "call_r2"),
    ]
    steps = kit.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [step.type for step in steps] == ["tool_calls", "tool_calls", "message_creation"]
