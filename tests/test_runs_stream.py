"""Run streams: through the SDK's event handlers (sync and async) and as raw SSE, for the event
order of §4.2, the delta rules the SDK's merging depends on, tool calls that continue in a second
stream, and the coalescing that keeps a long answer to a few stored deltas."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openai import AssistantEventHandler, AsyncAssistantEventHandler
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Message, MessageDelta, Text, TextDelta
from openai.types.beta.threads.runs import RunStep, RunStepDelta, ToolCall, ToolCallDelta

from tests.conftest import make_async_client
from tests.fake_upstream import Reply
from tests.runs_support import (
    TIME_TOOL,
    USAGE,
    WEATHER_TOOL,
    RunKit,
    answer,
    kit,
    sse_post,
    tool_call_answer,
)

__all__ = ["kit"]  # the fixture, imported for pytest
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated

# Paced pieces, each longer apart than the engine's 0.1 s coalescing window, so each is its own delta.
PACING_S = 0.25

TEXT_ANSWER_ORDER = [
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
    "thread.message.delta",
    "thread.message.completed",
    "thread.run.step.completed",
    "thread.run.completed",
]


def squeeze(names: list[str]) -> list[str]:
    """Event names with each run of deltas folded into one: how many deltas a stream has depends
    on timing, their place in the order does not."""
    folded: list[str] = []
    for name in names:
        if not (name.endswith(".delta") and folded and folded[-1] == name):
            folded.append(name)
    return folded


class Recorder(AssistantEventHandler):
    """Writes down every callback, in order, with what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    def names(self, callback: str) -> list[Any]:
        return [value for name, value in self.calls if name == callback]

    def on_event(self, event: AssistantStreamEvent) -> None:
        self.calls.append(("event", event.event))

    def on_text_created(self, text: Text) -> None:
        self.calls.append(("text_created", text.value))

    def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.calls.append(("text_delta", delta.value))

    def on_text_done(self, text: Text) -> None:
        self.calls.append(("text_done", text.value))

    def on_message_created(self, message: Message) -> None:
        self.calls.append(("message_created", message.id))

    def on_message_delta(self, delta: MessageDelta, snapshot: Message) -> None:
        self.calls.append(("message_delta", snapshot.id))

    def on_message_done(self, message: Message) -> None:
        self.calls.append(("message_done", message))

    def on_run_step_created(self, run_step: RunStep) -> None:
        self.calls.append(("step_created", run_step.type))

    def on_run_step_delta(self, delta: RunStepDelta, snapshot: RunStep) -> None:
        self.calls.append(("step_delta", snapshot.id))

    def on_run_step_done(self, run_step: RunStep) -> None:
        self.calls.append(("step_done", run_step))

    def on_tool_call_created(self, tool_call: ToolCall) -> None:
        self.calls.append(("tool_call_created", tool_call.model_copy(deep=True)))

    def on_tool_call_delta(self, delta: ToolCallDelta, snapshot: ToolCall) -> None:
        self.calls.append(("tool_call_delta", delta))

    def on_tool_call_done(self, tool_call: ToolCall) -> None:
        self.calls.append(("tool_call_done", tool_call.model_copy(deep=True)))

    def on_exception(self, exception: Exception) -> None:
        self.calls.append(("exception", exception))

    def on_end(self) -> None:
        self.calls.append(("end", None))


def test_a_text_answer_streams_in_order_through_the_handler(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Tell me something.")
    pieces = ["The quick ", "brown fox ", "jumps over ", "the lazy dog."]
    kit.fake.script("chat/completions", Reply.stream(answer(*pieces), interval_s=PACING_S))

    with kit.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=Recorder()) as stream:
        stream.until_done()
        final_run = stream.get_final_run()
        final_messages = stream.get_final_messages()
        final_steps = stream.get_final_run_steps()
    recorder = stream

    assert squeeze(recorder.names("event")) == TEXT_ANSWER_ORDER
    deltas = recorder.names("text_delta")
    assert "".join(deltas) == "".join(pieces)
    assert len(deltas) >= 3  # paced pieces arrive as they come, not in one lump at the end
    assert recorder.names("text_created") == [pieces[0]]
    assert recorder.names("text_done") == ["".join(pieces)]
    (done_message,) = recorder.names("message_done")
    assert done_message.status == "completed" and done_message.content[0].text.value == "".join(pieces)
    (done_step,) = recorder.names("step_done")
    assert done_step.type == "message_creation" and done_step.status == "completed"
    assert done_step.step_details.message_creation.message_id == done_message.id
    assert done_step.usage is not None and done_step.usage.model_dump() == USAGE
    assert recorder.names("exception") == [] and recorder.calls[-1] == ("end", None)

    assert final_run.status == "completed" and final_run.usage is not None and final_run.usage.model_dump() == USAGE
    assert [message.id for message in final_messages] == [done_message.id]
    assert [step.id for step in final_steps] == [done_step.id]
    # What the stream showed is what is stored.
    stored = kit.client.beta.threads.messages.retrieve(done_message.id, thread_id=thread.id)
    assert stored.model_dump() == done_message.model_dump()
    assert kit.runs.retrieve(final_run.id, thread_id=thread.id).model_dump() == final_run.model_dump()


def test_the_raw_stream_follows_the_delta_rules_and_ends_with_done(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    kit.fake.script("chat/completions", Reply.stream(answer("One, ", "two, ", "three."), interval_s=PACING_S))

    events = sse_post(kit.server, f"threads/{thread.id}/runs", {"assistant_id": assistant.id})

    names = [name for name, _ in events]
    assert names[-1] == "done" and events[-1][1] == "[DONE]"
    assert squeeze(names[:-1]) == TEXT_ANSWER_ORDER
    created = next(data for name, data in events if name == "thread.message.created")
    assert created["content"] == [] and created["status"] == "in_progress"
    deltas = [data for name, data in events if name == "thread.message.delta"]
    assert len(deltas) >= 3
    assert all(delta["id"] == created["id"] and delta["object"] == "thread.message.delta" for delta in deltas)
    first, *later = [delta["delta"]["content"] for delta in deltas]
    # The first delta for index 0 opens the part (type, annotations); later ones add only text,
    # since the SDK concatenates strings and appends lists on every repeat.
    assert first == [{"index": 0, "type": "text", "text": {"value": "One, ", "annotations": []}}]
    assert all(len(parts) == 1 and parts[0]["index"] == 0 for parts in later)
    assert all(set(parts[0]["text"]) == {"value"} for parts in later)
    assert "".join(parts[0]["text"]["value"] for parts in [first, *later]) == "One, two, three."
    completed = next(data for name, data in events if name == "thread.message.completed")
    assert completed["content"][0]["text"] == {"value": "One, two, three.", "annotations": []}
    run_events = [
        data for name, data in events if name.startswith("thread.run.") and not name.startswith("thread.run.step")
    ]
    assert [data["status"] for data in run_events] == ["queued", "queued", "in_progress", "completed"]
    assert all(data["usage"] is None for data in run_events[:-1]) and run_events[-1]["usage"] == USAGE


def test_tool_calls_stream_then_submit_tool_outputs_stream_finishes_the_run(kit: RunKit) -> None:
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather in Paris?")
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(("call_s1", "get_weather", ['{"city"', ': "Pa', 'ris"}'])), interval_s=PACING_S),
        Reply.stream(answer("Sunny ", "in Paris.")),
    )

    with kit.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=Recorder()) as stream:
        stream.until_done()
    first = stream
    waiting = first.current_run
    assert waiting is not None and waiting.status == "requires_action"
    assert squeeze(first.names("event")) == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",
        "thread.run.requires_action",
    ]
    (created,) = first.names("tool_call_created")
    assert created.id == "call_s1" and created.type == "function" and created.function.name == "get_weather"
    (done_call,) = first.names("tool_call_done")
    assert (done_call.id, done_call.function.name) == ("call_s1", "get_weather")
    assert done_call.function.arguments == '{"city": "Paris"}'  # the deltas merged to the whole
    assert [call.id for call in waiting.required_action.submit_tool_outputs.tool_calls] == ["call_s1"]

    with kit.runs.submit_tool_outputs_stream(
        run_id=waiting.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": "call_s1", "output": "sunny"}],
        event_handler=Recorder(),
    ) as stream:
        stream.until_done()
        final_run = stream.get_final_run()
    second = stream

    assert (
        squeeze(second.names("event"))
        == [
            "thread.run.step.completed",  # the tool step from the first stream, now with its output
            "thread.run.queued",
            "thread.run.in_progress",
            *TEXT_ANSWER_ORDER[3:],
        ]
    )
    tool_step = second.names("step_done")[0]
    assert tool_step.type == "tool_calls" and tool_step.step_details.tool_calls[0].function.output == "sunny"
    assert "".join(second.names("text_delta")) == "Sunny in Paris."
    assert final_run.id == waiting.id and final_run.status == "completed"
    assert second.names("exception") == []


def test_tool_call_deltas_name_id_and_function_only_once(kit: RunKit) -> None:
    """The SDK merges deltas by concatenating strings, so an id or name sent twice comes out
    doubled; `type` is required on every delta by the spec and merged by replacement."""
    assistant = kit.assistant(tools=[WEATHER_TOOL, TIME_TOOL])
    thread = kit.thread("Weather and time?")
    kit.fake.script(
        "chat/completions",
        Reply.stream(
            tool_call_answer(
                ("call_d1", "get_weather", ['{"ci', 'ty":"Os', 'lo"}']), ("call_d2", "get_time", ['{"zo', 'ne":"CET"}'])
            ),
            interval_s=PACING_S / 2,
        ),
    )

    events = sse_post(kit.server, f"threads/{thread.id}/runs", {"assistant_id": assistant.id})

    names = [name for name, _ in events]
    assert names[-2:] == ["thread.run.requires_action", "done"]
    step = next(data for name, data in events if name == "thread.run.step.created")
    assert step["type"] == "tool_calls" and step["step_details"] == {"type": "tool_calls", "tool_calls": []}
    assert names.index("thread.run.step.created") < names.index("thread.run.step.delta")
    deltas = [data for name, data in events if name == "thread.run.step.delta"]
    assert len(deltas) >= 3
    seen: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        assert delta["id"] == step["id"] and delta["object"] == "thread.run.step.delta"
        assert delta["delta"]["step_details"]["type"] == "tool_calls"
        for call in delta["delta"]["step_details"]["tool_calls"]:
            assert call["type"] == "function"
            index = call["index"]
            if index not in seen:
                assert set(call) == {"index", "id", "type", "function"}, call
                assert index == len(seen)  # indexes open in order, without gaps
                seen[index] = {"id": call["id"], "name": call["function"]["name"], "arguments": ""}
            else:
                assert "id" not in call and "name" not in call["function"], call
            seen[index]["arguments"] += call["function"].get("arguments") or ""
    assert list(seen.values()) == [
        {"id": "call_d1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"id": "call_d2", "name": "get_time", "arguments": '{"zone":"CET"}'},
    ]
    waiting = events[-2][1]
    assert [
        (c["id"], c["function"]["arguments"]) for c in waiting["required_action"]["submit_tool_outputs"]["tool_calls"]
    ] == [
        ("call_d1", '{"city":"Oslo"}'),
        ("call_d2", '{"zone":"CET"}'),
    ]
    kit.runs.cancel(waiting["id"], thread_id=thread.id)


def test_a_thousand_token_answer_is_whole_and_stored_as_few_deltas(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Count.")
    tokens = [f"t{index} " for index in range(1000)]
    # Paced over a second or so, as a real model would send them, so coalescing has something to do.
    kit.fake.script("chat/completions", Reply.stream(answer(*tokens), interval_s=0.001))

    events = sse_post(kit.server, f"threads/{thread.id}/runs", {"assistant_id": assistant.id})

    deltas = [data for name, data in events if name == "thread.message.delta"]
    text = "".join(delta["delta"]["content"][0]["text"]["value"] for delta in deltas)
    assert text == "".join(tokens)
    assert 3 <= len(deltas) <= 50, len(deltas)
    run = next(data for name, data in events if name == "thread.run.completed")
    (message,) = kit.client.beta.threads.messages.list(thread.id, run_id=run["id"]).data
    assert message.content[0].text.value == "".join(tokens)


def test_a_slow_answer_is_stored_in_deltas_that_widen_as_it_goes_on(kit: RunKit) -> None:
    """At 100 tokens/s a 0.1 s window would store a five-second answer as ~50 deltas; the window
    widens after the first second (a tenth of the answer's age), so it takes about half that. The
    first second still streams at the 0.1 s pace."""
    assistant = kit.assistant()
    thread = kit.thread("Count slowly.")
    tokens = [f"s{index} " for index in range(500)]
    kit.fake.script("chat/completions", Reply.stream(answer(*tokens), interval_s=0.01))

    events = sse_post(kit.server, f"threads/{thread.id}/runs", {"assistant_id": assistant.id})

    deltas = [data for name, data in events if name == "thread.message.delta"]
    assert "".join(delta["delta"]["content"][0]["text"]["value"] for delta in deltas) == "".join(tokens)
    assert 5 <= len(deltas) <= 36, len(deltas)


def test_an_async_handler_streams_the_text(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Async, please.")
    kit.fake.script("chat/completions", Reply.stream(answer("Async ", "stream ", "works."), interval_s=PACING_S))

    class Handler(AsyncAssistantEventHandler):
        def __init__(self) -> None:
            super().__init__()
            self.done: list[str] = []

        async def on_message_done(self, message: Message) -> None:
            self.done.append(message.content[0].text.value)

    async def main() -> tuple[list[str], Handler, Any]:
        async with make_async_client(kit.server) as client:
            async with client.beta.threads.runs.stream(
                thread_id=thread.id, assistant_id=assistant.id, event_handler=Handler()
            ) as stream:
                pieces = [piece async for piece in stream.text_deltas]
                return pieces, stream, await stream.get_final_run()

    pieces, handler, run = asyncio.run(main())
    assert "".join(pieces) == "Async stream works." and len(pieces) >= 2
    assert handler.done == ["Async stream works."]
    assert run.status == "completed"


def test_an_async_tool_round_trip_over_two_streams(kit: RunKit) -> None:
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather in Bonn?")
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(("call_as", "get_weather", ['{"city":', '"Bonn"}'])), interval_s=PACING_S / 2),
        Reply.stream(answer("Grey ", "skies."), interval_s=PACING_S / 2),
    )

    class Handler(AsyncAssistantEventHandler):
        def __init__(self) -> None:
            super().__init__()
            self.calls_done: list[ToolCall] = []

        async def on_tool_call_done(self, tool_call: ToolCall) -> None:
            self.calls_done.append(tool_call)

    async def main() -> tuple[Any, list[ToolCall], Any, str]:
        async with make_async_client(kit.server) as client:
            runs = client.beta.threads.runs
            async with runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=Handler()) as first:
                await first.until_done()
            waiting = first.current_run
            assert waiting is not None
            async with runs.submit_tool_outputs_stream(
                run_id=waiting.id,
                thread_id=thread.id,
                tool_outputs=[{"tool_call_id": "call_as", "output": "grey"}],
                event_handler=Handler(),
            ) as second:
                text = "".join([piece async for piece in second.text_deltas])
                return waiting, first.calls_done, await second.get_final_run(), text

    waiting, calls, final, text = asyncio.run(main())
    assert waiting.status == "requires_action"
    assert [(call.id, call.function.arguments) for call in calls] == [("call_as", '{"city":"Bonn"}')]
    assert final.status == "completed" and final.id == waiting.id
    assert text == "Grey skies."


def test_create_with_stream_true_yields_typed_events(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Raw SDK stream.")
    stream = kit.runs.create(thread_id=thread.id, assistant_id=assistant.id, stream=True)
    events = list(stream)
    assert events[0].event == "thread.run.created" and events[0].data.status == "queued"
    assert events[-1].event == "thread.run.completed" and events[-1].data.status == "completed"
    assert (
        "".join(
            part.text.value
            for event in events
            if event.event == "thread.message.delta"
            for part in event.data.delta.content or []
            if part.type == "text" and part.text and part.text.value
        )
        == "Hello from the fake upstream."
    )
