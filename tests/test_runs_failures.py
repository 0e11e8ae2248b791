"""How runs end when they do not simply complete: cancelled mid-answer (the upstream call is hung
up), expired while waiting on the client or on a slow model, failed by upstream errors (after
retries), cut short by token limits. Every one of them reaches a terminal state."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import ALICE_KEY, DB_KIND, make_client
from tests.fake_upstream import FakeUpstream, Reply, chat_chunk
from tests.harness import AgentProcess, Database, ServerProcess
from tests.runs_support import (
    POLL_MS,
    USAGE,
    WEATHER_TOOL,
    RunKit,
    answer,
    kit,
    sse_post,
    tool_call_answer,
    wait_until,
)

__all__ = ["kit"]  # the fixture, imported for pytest
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated

RETRIES = 3  # the engine's default CLICKY_CHATS_MODEL_RETRIES: one call and three retries


def slow_answer(pieces: int = 40, interval_s: float = 0.2) -> Reply:
    """An answer that takes pieces * interval_s seconds to arrive."""
    return Reply.stream(answer(*[f"word{index} " for index in range(pieces)]), interval_s=interval_s)


def answer_started(kit: RunKit, thread_id: str) -> Any:
    """The run's answer, once some of it has been written."""

    def started() -> Any:
        replies = [m for m in kit.messages(thread_id) if m.role == "assistant" and m.content]
        return replies[0] if replies else None

    return wait_until(started, what="the answer to start")


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_mid_answer_hangs_up_on_the_model_and_keeps_what_was_said(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Talk for a while.")
    kit.fake.script("chat/completions", slow_answer())
    run = kit.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    answer_started(kit, thread.id)

    cancelling = kit.runs.cancel(run.id, thread_id=thread.id)
    assert cancelling.status == "cancelling"  # an agent holds the run: it stops the work
    asked = time.monotonic()
    cancelled = kit.poll(run)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert time.monotonic() - asked < 0.8  # the agent hears of the cancel at once, not at its next heartbeat
    assert cancelled.completed_at is None and cancelled.failed_at is None and cancelled.expires_at is None

    (reply,) = [m for m in kit.messages(thread.id) if m.role == "assistant"]
    assert reply.status == "incomplete" and reply.incomplete_at is not None
    assert reply.incomplete_details is not None and reply.incomplete_details.reason == "run_cancelled"
    said = reply.content[0].text.value
    assert said.startswith("word0 ") and len(said) < len("".join(f"word{i} " for i in range(40)))
    (step,) = kit.runs.steps.list(run.id, thread_id=thread.id).data
    assert step.status == "cancelled" and step.cancelled_at is not None
    wait_until(lambda: kit.fake.disconnects >= 1, within_s=3, what="the model call to be hung up")
    # The thread is free for the next run.
    assert kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS
    ).status == ("completed")


def test_cancel_while_streaming_ends_the_stream_with_cancelled(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Stream for a while.")
    kit.fake.script("chat/completions", slow_answer())

    with kit.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        names = []
        for event in stream:
            names.append(event.event)
            if event.event == "thread.message.delta" and names.count(event.event) == 1:
                assert stream.current_run is not None
                kit.runs.cancel(stream.current_run.id, thread_id=thread.id)
        final = stream.get_final_run()

    assert final.status == "cancelled"
    # Deltas already on their way may still arrive after `cancelling`; then the work is closed.
    assert [name for name in names if name != "thread.message.delta"][-4:] == [
        "thread.run.cancelling",
        "thread.message.incomplete",
        "thread.run.step.cancelled",
        "thread.run.cancelled",
    ]
    message = stream.get_final_messages()[0]
    assert message.status == "incomplete" and message.content[0].text.value.startswith("word0 ")


def test_cancel_while_waiting_on_tool_outputs_is_immediate(kit: RunKit) -> None:
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather?")
    kit.fake.script("chat/completions", Reply.stream(tool_call_answer(("call_c1", "get_weather", ['{"city":"Riga"}']))))
    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    assert run.status == "requires_action"

    cancelled = kit.runs.cancel(run.id, thread_id=thread.id)

    # No agent holds a run that waits on the client, so nobody else would finish the cancel.
    assert cancelled.status == "cancelled" and cancelled.required_action is None
    (step,) = kit.runs.steps.list(run.id, thread_id=thread.id).data
    assert step.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        kit.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_c1", "output": "x"}]
        )


def test_cancel_of_a_finished_run_is_400(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    assert run.status == "completed"

    with pytest.raises(openai.BadRequestError) as caught:
        kit.runs.cancel(run.id, thread_id=thread.id)
    assert caught.value.status_code == 400 and "completed" in caught.value.message
    assert kit.runs.retrieve(run.id, thread_id=thread.id).model_dump() == run.model_dump()


# --- expiry ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_expiry(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """A server whose runs expire two seconds after they are created."""
    env = {"CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}", "CLICKY_CHATS_RUN_EXPIRY_S": "2"}
    in_server = DB_KIND != "postgres"
    server = ServerProcess(database, fake_upstream.base_url, env=env, with_agents=in_server).start()
    agent = None if in_server else AgentProcess(server).start()
    yield server
    if agent is not None:
        agent.stop()
    server.stop()


@pytest.fixture
def expiry_kit(quick_expiry: ServerProcess, fake_upstream: FakeUpstream) -> Iterator[RunKit]:
    with make_client(quick_expiry) as client:
        made = RunKit(client, quick_expiry, fake_upstream)
        yield made
        made.assert_all_runs_ended()


def test_a_run_left_waiting_on_tool_outputs_expires(expiry_kit: RunKit) -> None:
    kit = expiry_kit
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather?")
    kit.fake.script("chat/completions", Reply.stream(tool_call_answer(("call_e1", "get_weather", ['{"city":"Baku"}']))))
    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    assert run.status == "requires_action" and run.expires_at is not None
    assert run.expires_at - run.created_at == 2

    expired = kit.wait(run, "expired", within_s=5)

    assert expired.required_action is None and expired.expires_at is None
    assert time.time() >= run.expires_at
    (step,) = kit.runs.steps.list(run.id, thread_id=thread.id).data
    assert step.status == "expired" and step.expired_at is not None
    with pytest.raises(openai.BadRequestError):
        kit.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_e1", "output": "x"}]
        )
    with pytest.raises(openai.BadRequestError):
        kit.runs.cancel(run.id, thread_id=thread.id)


def test_a_run_whose_model_outlasts_the_expiry_expires(expiry_kit: RunKit) -> None:
    kit = expiry_kit
    assistant = kit.assistant()
    thread = kit.thread("Take your time.")
    kit.fake.script("chat/completions", slow_answer(pieces=40, interval_s=0.2))  # 8 s
    run = kit.runs.create(thread_id=thread.id, assistant_id=assistant.id)

    expired = kit.wait(run, "expired", within_s=5)

    assert expired.expires_at is None
    (reply,) = [m for m in kit.messages(thread.id) if m.role == "assistant"]
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None and reply.incomplete_details.reason == "run_expired"
    wait_until(lambda: kit.fake.disconnects >= 1, within_s=3, what="the model call to be hung up")


# --- upstream errors ---------------------------------------------------------------------------


def model_calls(kit: RunKit) -> int:
    return sum(1 for recorded in kit.fake.requests if recorded.path == "chat/completions")


def test_a_500_on_every_attempt_fails_the_run(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    kit.fake.script("chat/completions", *[Reply.error(500, "the model is down", type="server_error")] * (RETRIES + 1))

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "failed" and run.failed_at is not None and run.completed_at is None
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert "the model is down" in run.last_error.message and "500" in run.last_error.message
    assert model_calls(kit) == RETRIES + 1
    assert [m.role for m in kit.messages(thread.id)] == ["user"]  # no half answer left behind
    assert kit.runs.steps.list(run.id, thread_id=thread.id).data == []


def test_a_429_on_every_attempt_fails_with_rate_limit_after_honouring_retry_after(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    limited = Reply.error(429, "slow down", type="rate_limit_error", headers={"retry-after-ms": "300"})
    kit.fake.script("chat/completions", *[limited] * (RETRIES + 1))
    started = time.monotonic()

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "rate_limit_exceeded"
    assert "slow down" in run.last_error.message
    assert model_calls(kit) == RETRIES + 1
    assert time.monotonic() - started >= RETRIES * 0.3  # it waited as told, not its own 0.05 s backoff


def test_one_500_then_success_completes(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    kit.fake.script(
        "chat/completions", Reply.error(500, "a blip", type="server_error"), Reply.stream(answer("Second ", "try."))
    )

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "completed" and run.last_error is None
    assert model_calls(kit) == 2
    assert [m.content[0].text.value for m in kit.messages(thread.id) if m.role == "assistant"] == ["Second try."]


def test_a_429_then_success_waits_as_told_and_completes(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    limited = Reply.error(429, "slow down", type="rate_limit_error", headers={"retry-after": "1"})
    kit.fake.script("chat/completions", limited, Reply.stream(answer("Patience ", "paid.")))
    started = time.monotonic()

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "completed" and run.last_error is None
    assert time.monotonic() - started >= 1.0  # retry-after is in seconds
    assert model_calls(kit) == 2


def test_a_400_from_the_model_fails_at_once(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    kit.fake.script("chat/completions", Reply.error(400, "context too long for this model"))

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "failed" and run.last_error is not None
    assert "context too long" in run.last_error.message
    assert model_calls(kit) == 1  # a refusal is not retried


@pytest.mark.parametrize(
    ("chunks", "said"),
    [
        ([b"data: {this is not json\n\n"], None),
        ([chat_chunk("Half an ans", role="assistant"), b"data: [1, 2, 3]\n\n"], "Half an ans"),
        (
            [chat_chunk("Half", role="assistant"), {"error": {"message": "the model crashed", "type": "server_error"}}],
            "Half",
        ),
    ],
    ids=["not-json", "not-an-object", "error-mid-stream"],
)
def test_a_garbage_stream_fails_the_run(kit: RunKit, chunks: list[Any], said: str | None) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    # Paced, so what came before the garbage is written before the garbage arrives.
    kit.fake.script("chat/completions", Reply.stream(chunks, interval_s=0.3))

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "failed" and run.failed_at is not None
    assert run.last_error is not None and run.last_error.code == "server_error" and run.last_error.message
    replies = [message for message in kit.messages(thread.id) if message.role == "assistant"]
    steps = kit.runs.steps.list(run.id, thread_id=thread.id).data
    if said is None:
        assert replies == [] and steps == []
        return
    # What was written before the garbage stays, closed along with the run.
    (reply,) = replies
    assert reply.content[0].text.value == said and reply.status == "incomplete"
    assert reply.incomplete_details is not None and reply.incomplete_details.reason == "run_failed"
    (step,) = steps
    assert step.status == "failed" and step.failed_at is not None
    assert step.last_error is not None and step.last_error.model_dump() == run.last_error.model_dump()


def test_a_failure_reaches_a_stream_as_run_failed_then_done(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    kit.fake.script("chat/completions", *[Reply.error(503, "overloaded", type="server_error")] * (RETRIES + 1))

    events = sse_post(kit.server, f"threads/{thread.id}/runs", {"assistant_id": assistant.id})

    assert [name for name, _ in events][-2:] == ["thread.run.failed", "done"]
    failed = events[-2][1]
    assert failed["status"] == "failed" and failed["last_error"]["code"] == "server_error"
    assert "overloaded" in failed["last_error"]["message"]


# --- token limits ------------------------------------------------------------------------------


def test_hitting_max_completion_tokens_makes_the_run_and_message_incomplete(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Write a long essay.")
    usage = {"prompt_tokens": 10, "completion_tokens": 256, "total_tokens": 266}
    kit.fake.script(
        "chat/completions", Reply.stream(answer("It was a dark ", "and stormy", usage=usage, finish_reason="length"))
    )

    run = kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=256, poll_interval_ms=POLL_MS
    )

    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    assert run.usage is not None and run.usage.model_dump() == usage
    assert kit.fake.last("chat/completions").json()["max_completion_tokens"] == 256
    (reply,) = [m for m in kit.messages(thread.id) if m.role == "assistant"]
    assert reply.status == "incomplete" and reply.incomplete_at is not None
    assert reply.incomplete_details is not None and reply.incomplete_details.reason == "max_tokens"
    assert reply.content[0].text.value == "It was a dark and stormy"


def test_max_completion_tokens_counts_across_the_turns_of_a_run(kit: RunKit) -> None:
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather?")
    first_usage = {"prompt_tokens": 10, "completion_tokens": 100, "total_tokens": 110}
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(("call_t1", "get_weather", ['{"city":"Pisa"}']), usage=first_usage)),
        Reply.stream(answer("Fine.")),
    )
    run = kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=300, poll_interval_ms=POLL_MS
    )
    run = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": "call_t1", "output": "ok"}],
        poll_interval_ms=POLL_MS,
    )
    assert run.status == "completed"
    assert kit.fake.last("chat/completions").json()["max_completion_tokens"] == 200  # 300 less the 100 spent


def test_a_thread_too_long_for_max_prompt_tokens_is_incomplete_without_calling_the_model(kit: RunKit) -> None:
    assistant = kit.assistant(instructions="")
    thread = kit.thread("x" * 4000)  # about 1,000 tokens, in one message that cannot be dropped

    run = kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_prompt_tokens=256, poll_interval_ms=POLL_MS
    )

    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_prompt_tokens"
    assert run.completed_at is not None and run.expires_at is None
    assert model_calls(kit) == 0
    assert [m.role for m in kit.messages(thread.id)] == ["user"]


def test_max_prompt_tokens_drops_the_oldest_messages_first(kit: RunKit) -> None:
    assistant = kit.assistant(instructions="")
    thread = kit.thread("a" * 600, "b" * 600, "c" * 600)  # about 150 tokens each

    run = kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_prompt_tokens=256, poll_interval_ms=POLL_MS
    )

    assert run.status == "completed"
    assert [m["content"][0] for m in kit.fake.last("chat/completions").json()["messages"]] == ["c"]
    assert run.usage is not None and run.usage.model_dump() == USAGE


def test_an_answer_that_breaks_off_without_an_ending_fails(kit: RunKit) -> None:
    """A stream that closes with neither a finish_reason nor [DONE] was cut off, not finished."""
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    kit.fake.script(
        "chat/completions", Reply.stream([chat_chunk("", role="assistant"), chat_chunk("Half an")], done=False)
    )

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "failed" and run.last_error is not None and run.last_error.code == "server_error"
    (reply,) = [m for m in kit.messages(thread.id) if m.role == "assistant"]
    assert reply.status == "incomplete" and reply.content[0].text.value == "Half an"


def test_an_answer_that_goes_silent_fails_after_the_model_timeout(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Hi.")
    kit.fake.script("chat/completions", Reply.stream(answer("Then ", "nothing", " more"), hang_after=2))
    run = kit.runs.create(thread_id=thread.id, assistant_id=assistant.id)

    failed = kit.wait(run, "failed", within_s=6)  # the harness sets CLICKY_CHATS_MODEL_TIMEOUT_S=3

    assert failed.last_error is not None and failed.last_error.code == "server_error"


def test_a_content_filtered_answer_leaves_the_message_incomplete(kit: RunKit) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Something filtered.")
    kit.fake.script("chat/completions", Reply.stream(answer("I was say", finish_reason="content_filter")))

    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)

    assert run.status == "completed"  # a run's incomplete reasons are only its token limits
    (reply,) = [m for m in kit.messages(thread.id) if m.role == "assistant"]
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None and reply.incomplete_details.reason == "content_filter"


def test_a_spent_completion_budget_ends_the_run_before_another_model_call(kit: RunKit) -> None:
    assistant = kit.assistant(tools=[WEATHER_TOOL])
    thread = kit.thread("Weather?")
    spent = {"prompt_tokens": 10, "completion_tokens": 256, "total_tokens": 266}
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(("call_sp", "get_weather", ['{"city":"Turku"}']), usage=spent)),
    )
    run = kit.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=256, poll_interval_ms=POLL_MS
    )
    assert run.status == "requires_action"

    run = kit.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": "call_sp", "output": "cold"}],
        poll_interval_ms=POLL_MS,
    )

    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    assert model_calls(kit) == 1
    assert run.usage is not None and run.usage.model_dump() == spent
