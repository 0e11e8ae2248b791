"""Server-side tools in runs, end to end: an assistant on /v1/rubra names x-tools in
`gptscript_tools`, the fake upstream is scripted to call the tool's function and then answer, and
the agent runs the tool itself. Every kind: gptscript built-ins, an HTTP tool, command tools,
a prompt tool (a nested model conversation) and MCP. Then the step events, confirmation, the run
re-attach stream and the thread list."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from aiohttp import web

from tests.conftest import ALICE_KEY, BOB_KEY, make_client
from tests.fake_upstream import FakeUpstream, Reply, chat_completion
from tests.harness import Database, ServerProcess, free_port, wait_until
from tests.runs_support import MODEL, POLL_MS, RunKit, answer, tool_call_answer
from tests.tools_support import McpSite, Site, mcp_site, read_sse, site, sse_get, tool_server, xapi

__all__ = ["mcp_site", "site"]  # fixtures, imported for pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated


@pytest.fixture(scope="module")
def tools_server(database: Database, fake_upstream: FakeUpstream, site: Site) -> Iterator[ServerProcess]:
    env = {
        "CLICKY_CHATS_ALLOW_COMMAND_TOOLS": "true",
        "CLICKY_CHATS_TOOL_ALLOWED_HOSTS": "127.0.0.1",
        "CLICKY_CHATS_SEARCH_URL": site.url("/search?format=text"),
    }
    with tool_server(database, fake_upstream, env) as server:
        yield server


@pytest.fixture
def kit(tools_server: ServerProcess, fake_upstream: FakeUpstream) -> Iterator[RunKit]:
    """A run kit on /v1/rubra. Its end check lists runs on /v1, where a run held for confirmation
    reads in_progress: the strict SDK has no `requires_confirmation` status to parse."""
    with make_client(tools_server, tier="/v1/rubra") as rubra, make_client(tools_server) as plain:
        made = RunKit(rubra, tools_server, fake_upstream)
        yield made
        checker = RunKit(plain, tools_server, fake_upstream)
        checker.thread_ids = made.thread_ids
        checker.assert_all_runs_ended()


def create_tool(server: ServerProcess, **body: Any) -> dict[str, Any]:
    response = xapi(server, "POST", "tools", body)
    assert response.status_code == 200, response.text
    return response.json()


def assistant_with(kit: RunKit, *tool_ids: str) -> Any:
    return kit.client.beta.assistants.create(
        model=MODEL, instructions="Use the tools.", extra_body={"gptscript_tools": list(tool_ids)}
    )


def run_calling(
    kit: RunKit, assistant: Any, calls: list[tuple[str, str, str]], *nested: Reply, then: str = "All done."
) -> tuple[Any, Any]:
    """Runs the assistant with the model scripted to make `calls` (id, function, arguments), any
    `nested` replies for prompt tools, then to answer `then`; returns the completed run and its
    tool_calls step."""
    thread = kit.thread("Please use your tools.")
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(*[(call_id, name, [arguments]) for call_id, name, arguments in calls])),
        *nested,
        Reply.stream(answer(then)),
    )
    run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
    assert run.status == "completed", (run.status, run.last_error)
    steps = kit.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [step.type for step in steps] == ["tool_calls", "message_creation"]
    assert steps[0].status == "completed"
    (message,) = [m for m in kit.messages(thread.id) if m.role == "assistant"]
    assert message.content[0].text.value == then
    return run, steps[0]


def outputs(step: Any) -> dict[str, str]:
    return {call.id: call.function.output for call in step.step_details.tool_calls}


def offered(request_body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The functions a model request offered, by name."""
    return {tool["function"]["name"]: tool["function"] for tool in request_body.get("tools", [])}


def model_requests(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [recorded.json() for recorded in fake.requests if recorded.path == "chat/completions"]


def tool_messages(request_body: dict[str, Any]) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in request_body["messages"] if m["role"] == "tool"}


def step_events(server: ServerProcess, run: Any, step: Any, query: str = "") -> list[dict[str, Any]]:
    response = xapi(server, "GET", f"threads/{run.thread_id}/runs/{run.id}/steps/{step.id}/events{query}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["has_more"] is False
    return body["data"]


# --- each kind of tool in a run ----------------------------------------------------------------


def test_gptscript_builtins_echo_and_the_time(kit: RunKit, tools_server: ServerProcess) -> None:
    echo = create_tool(tools_server, contents="Name: echo\nDescription: Repeats the input\n\n#!sys.echo\n")
    clock = create_tool(tools_server, contents="Name: clock\nDescription: The time now\n\n#!sys.time.now\n")
    assistant = assistant_with(kit, echo["id"], clock["id"])
    before = dt.datetime.now(dt.UTC)

    _run, step = run_calling(
        kit, assistant, [("call_e", "echo", '{"input": "hello there"}'), ("call_t", "clock", "{}")]
    )

    first, second = model_requests(kit.fake)
    functions = offered(first)
    assert functions["echo"]["description"] == "Repeats the input"
    assert functions["echo"]["parameters"]["properties"] == {
        "input": {"type": "string", "description": "the text to echo"}
    }
    assert functions["clock"]["parameters"]["properties"] == {}
    said = outputs(step)
    assert said["call_e"] == "hello there"
    now = dt.datetime.fromisoformat(said["call_t"])
    assert before - dt.timedelta(seconds=1) <= now <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert tool_messages(second) == said  # the model heard exactly what the step shows
    assert step.step_details.tool_calls[0].function.arguments == '{"input": "hello there"}'


def test_an_http_tool_posts_its_arguments(kit: RunKit, tools_server: ServerProcess, site: Site) -> None:
    async def weather(request: web.Request) -> web.StreamResponse:
        asked = await request.json()
        return web.Response(text=f"sunny in {asked['city']}")

    site.route("POST", "/weather", weather)
    tool = create_tool(
        tools_server,
        contents=f"Name: weather\nDescription: The weather\nArgs: city: the city\n\n#!{site.url('/weather')}\n",
    )
    assistant = assistant_with(kit, tool["id"])

    _run, step = run_calling(kit, assistant, [("call_h", "weather", '{"city": "Oslo"}')])

    assert outputs(step) == {"call_h": "sunny in Oslo"}
    assert json.loads(site.bodies["/weather"][-1]) == {"city": "Oslo"}
    assert offered(model_requests(kit.fake)[0])["weather"]["parameters"]["properties"] == {
        "city": {"type": "string", "description": "the city"}
    }


COMMANDS = """Name: greet
Description: Greets someone
Args: name: who to greet

#!python3 -c 'import sys; print("hello, " + sys.argv[1] + "!")' ${name}

---
Name: describe
Description: Shows what a shell script is given
Args: text: some text

#!/bin/sh
echo "upper=$TEXT"
echo "as given=$text"
echo "input=$GPTSCRIPT_INPUT"

---
Name: fail
Description: Always fails

#!/bin/sh
echo "partial output"
echo "the disk is on fire" >&2
exit 3
"""


def test_command_tools_get_their_arguments_and_report_failure(kit: RunKit, tools_server: ServerProcess) -> None:
    tool_ids = [
        create_tool(tools_server, contents=COMMANDS, subtool=name)["id"] for name in ("greet", "describe", "fail")
    ]
    assistant = assistant_with(kit, *tool_ids)

    _run, step = run_calling(
        kit,
        assistant,
        [
            ("call_g", "greet", '{"name": "Ada Lovelace"}'),  # one argv word despite the space
            ("call_d", "describe", '{"text": "it\'s \\"quoted\\""}'),
            ("call_f", "fail", "{}"),
        ],
    )

    said = outputs(step)
    assert said["call_g"] == "hello, Ada Lovelace!\n"
    assert said["call_d"] == ('upper=it\'s "quoted"\nas given=it\'s "quoted"\ninput={"text": "it\'s \\"quoted\\""}\n')
    assert said["call_f"] == "The tool exited with code 3: the disk is on fire"
    assert tool_messages(model_requests(kit.fake)[1]) == said


PROMPT_TOOLS = """Name: poet
Description: Writes a short poem
Args: topic: what the poem is about
Tools: rhymer, sys.echo
Temperature: 0.7

Write a two-line poem about the topic. Ask the rhymer for a rhyme.

---
Name: rhymer
Description: Finds a rhyme
Args: word: the word to rhyme with

#!python3 -c 'import os; print(os.environ["WORD"] + "-rhyme")'
"""


def test_a_prompt_tool_is_a_nested_conversation_with_its_own_tools(kit: RunKit, tools_server: ServerProcess) -> None:
    tool = create_tool(tools_server, contents=PROMPT_TOOLS)
    assistant = assistant_with(kit, tool["id"])
    nested_call = {"id": "call_n1", "type": "function", "function": {"name": "rhymer", "arguments": '{"word": "hat"}'}}

    _run, step = run_calling(
        kit,
        assistant,
        [("call_p", "poet", '{"topic": "cats"}')],
        Reply.json(chat_completion(None, tool_calls=[nested_call], finish_reason="tool_calls")),
        Reply.json(chat_completion("A cat in a hat-rhyme")),
    )

    assert outputs(step) == {"call_p": "A cat in a hat-rhyme"}
    _first, nested_first, nested_second, _last = model_requests(kit.fake)
    assert nested_first.get("stream") is not True
    assert nested_first["model"] == MODEL  # the run's model
    assert nested_first["temperature"] == 0.7
    assert nested_first["messages"] == [
        {"role": "system", "content": "Write a two-line poem about the topic. Ask the rhymer for a rhyme."},
        {"role": "user", "content": '{"topic": "cats"}'},
    ]
    assert set(offered(nested_first)) == {"rhymer", "sys_echo"}
    assert tool_messages(nested_second) == {"call_n1": "hat-rhyme\n"}
    events = step_events(tools_server, _run, step)
    assert [(e["type"], e["tool"]) for e in events] == [
        ("callStart", "poet"),
        ("callChat", "poet"),
        ("callStart", "rhymer"),
        ("callFinish", "rhymer"),
        ("callChat", "poet"),
        ("callFinish", "poet"),
    ]
    assert {e["tool_call_id"] for e in events} == {"call_p"}


def test_mcp_tools_with_refs_arrays_and_no_arguments(
    kit: RunKit, tools_server: ServerProcess, mcp_site: McpSite
) -> None:
    every = create_tool(tools_server, type="mcp", server_url=mcp_site.url, server_label="dict")
    limited = create_tool(
        tools_server, type="mcp", server_url=mcp_site.url, server_label="limited", allowed_tools=["ping"]
    )
    assert every["type"] == "mcp" and limited["allowed_tools"] == ["ping"]
    assistant = assistant_with(kit, every["id"], limited["id"])

    _run, step = run_calling(
        kit,
        assistant,
        [
            ("call_l", "dict_lookup", '{"query": {"text": "cat"}}'),
            ("call_s", "dict_total", '{"numbers": [1, 2, 39]}'),
            ("call_p", "limited_ping", "{}"),
            ("call_b", "dict_broken", ""),
        ],
    )

    functions = offered(model_requests(kit.fake)[0])
    assert {name for name in functions if name.startswith("limited_")} == {"limited_ping"}  # allowed_tools
    assert {name for name in functions if name.startswith("dict_")} == {
        "dict_lookup",
        "dict_total",
        "dict_ping",
        "dict_broken",
    }
    lookup = functions["dict_lookup"]["parameters"]
    assert lookup["properties"]["query"] == {"$ref": "#/$defs/Query"}  # the schema reaches the model whole
    assert lookup["$defs"]["Query"]["required"] == ["text"]
    assert functions["dict_total"]["parameters"]["properties"]["numbers"]["type"] == "array"
    assert functions["limited_ping"]["parameters"]["properties"] == {}
    said = outputs(step)
    assert said["call_l"] == "definition of cat (limit 3)"
    assert said["call_s"] == "total=42"
    assert said["call_p"] == "pong"
    assert said["call_b"].startswith("The MCP tool broken reported an error")


def test_the_named_builtins_search_and_browse(kit: RunKit, tools_server: ServerProcess, site: Site) -> None:
    async def search(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"results for {request.query['q']} ({request.query['format']})")

    async def page(_request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<html><body><h1>Cats</h1><p>Cats sleep a lot.</p></body></html>", content_type="text/html"
        )

    site.route("GET", "/search", search)
    site.route("GET", "/cats.html", page)
    assistant = assistant_with(kit, "internet_search", "site_browsing")

    _run, step = run_calling(
        kit,
        assistant,
        [
            ("call_q", "internet_search", '{"query": "sleepy cats"}'),
            ("call_b", "site_browsing", json.dumps({"url": site.url("/cats.html")})),
        ],
    )

    functions = offered(model_requests(kit.fake)[0])
    assert functions["internet_search"]["parameters"]["required"] == ["query"]
    assert functions["site_browsing"]["parameters"]["required"] == ["url"]
    assert outputs(step) == {"call_q": "results for sleepy cats (text)", "call_b": "Cats\nCats sleep a lot."}


def test_step_events_list_and_stream(kit: RunKit, tools_server: ServerProcess) -> None:
    tool = create_tool(tools_server, contents="Name: echo\nDescription: Repeats\n\n#!sys.echo\n")
    assistant = assistant_with(kit, tool["id"])
    run, step = run_calling(
        kit, assistant, [("call_1", "echo", '{"input": "one"}'), ("call_2", "echo", '{"input": "two"}')]
    )

    events = step_events(tools_server, run, step)
    assert [(e["type"], e["tool_call_id"]) for e in events] == [
        ("callStart", "call_1"),
        ("callFinish", "call_1"),
        ("callStart", "call_2"),
        ("callFinish", "call_2"),
    ]
    assert [e["index"] for e in events] == [0, 1, 2, 3]
    start, finish = events[0], events[1]
    assert start["object"] == "tool.event" and start["run_id"] == run.id and start["tool"] == "echo"
    assert json.loads(start["input"]) == {"input": "one"}
    assert finish["output"] == "one" and finish["error"] is None
    times = [e["time"] for e in events]
    assert times == sorted(times) and run.created_at - 1 <= times[0] <= time.time()

    assert step_events(tools_server, run, step, "?index=2") == events[2:]
    streamed = sse_get(
        tools_server, f"/v1/rubra/x/threads/{run.thread_id}/runs/{run.id}/steps/{step.id}/events?stream=true"
    )
    assert [data for _name, data in streamed] == [*events, "[DONE]"]
    # The flat alias of the later Rubra UI revision.
    flat = requests.get(
        f"{tools_server.url}/v1/threads/{run.thread_id}/runs/{run.id}/steps/{step.id}/x-events",
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        timeout=20,
    )
    assert flat.status_code == 200 and flat.json()["data"] == events
    # Another project sees none of it.
    other = xapi(tools_server, "GET", f"threads/{run.thread_id}/runs/{run.id}/steps/{step.id}/events", key=BOB_KEY)
    assert other.status_code == 404 and other.json()["error"]["message"]


def start_a_slow_tool(kit: RunKit, tools_server: ServerProcess, sleep_s: int) -> tuple[Any, Any]:
    """A run whose model calls a command tool that sleeps `sleep_s` seconds; returns the run and
    its tool_calls step once that step is listed (the tool is then starting or running)."""
    tool = create_tool(
        tools_server,
        contents=f'Name: slow\nDescription: Takes its time\n\n#!/bin/sh\nsleep {sleep_s}\necho "slept"\n',
    )
    assistant = assistant_with(kit, tool["id"])
    thread = kit.thread("Be slow.")
    kit.fake.script(
        "chat/completions", Reply.stream(tool_call_answer(("call_s", "slow", ["{}"]))), Reply.stream(answer("ok"))
    )
    run = kit.runs.create(thread_id=thread.id, assistant_id=assistant.id)

    def tool_step() -> Any:
        steps = kit.runs.steps.list(run.id, thread_id=thread.id).data
        return next((s for s in steps if s.type == "tool_calls"), None)

    return run, wait_until(tool_step, what="the tool_calls step")


def test_step_events_stream_live_while_a_tool_runs(kit: RunKit, tools_server: ServerProcess) -> None:
    run, step = start_a_slow_tool(kit, tools_server, sleep_s=2)
    opened = time.time()
    streamed = sse_get(
        tools_server, f"/v1/rubra/x/threads/{run.thread_id}/runs/{run.id}/steps/{step.id}/events?stream=true"
    )

    assert [data["type"] for _name, data in streamed[:-1]] == ["callStart", "callFinish"]
    assert streamed[-1][1] == "[DONE]"
    assert streamed[1][1]["output"] == "slept\n"
    assert streamed[1][1]["time"] > opened  # the stream was open while the tool ran
    assert kit.poll(run).status == "completed"


def test_a_slow_tools_start_is_listed_while_it_runs(kit: RunKit, tools_server: ServerProcess) -> None:
    """The agent holds a call's events back to write them with its output, but only briefly: a
    tool still running has its callStart listed before it finishes."""
    run, step = start_a_slow_tool(kit, tools_server, sleep_s=3)

    def started_only() -> bool:
        return [event["type"] for event in step_events(tools_server, run, step)] == ["callStart"]

    wait_until(started_only, what="callStart listed while the tool still runs")
    assert kit.poll(run).status == "completed"
    events = step_events(tools_server, run, step)
    assert [event["type"] for event in events] == ["callStart", "callFinish"]
    assert events[1]["time"] - events[0]["time"] >= 2.5  # each stamped when emitted, not when written


def test_tools_that_fail_at_run_time_tell_the_model_and_the_run_goes_on(
    kit: RunKit, tools_server: ServerProcess, site: Site
) -> None:
    async def broken(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="the database exploded", status=500)

    async def page(_request: web.Request) -> web.StreamResponse:
        markup = "<html><head><title>t</title></head><body><p>Hello <b>page</b></p><script>x()</script></body></html>"
        return web.Response(text=markup, content_type="text/html")

    site.route("POST", "/broken", broken)
    site.route("GET", "/page.html", page)
    closed = free_port()
    files = [
        f"Name: broken\nDescription: Fails\n\n#!{site.url('/broken')}\n",
        f"Name: unreachable\nDescription: Nobody home\n\n#!http://127.0.0.1:{closed}/x\n",
        "Name: reader\nDescription: Reads a page\n\n#!sys.http.html2text\n",
        "Name: missing\nDescription: Runs a program that is not there\n\n#!no-such-program --now\n",
    ]
    assistant = assistant_with(kit, *[create_tool(tools_server, contents=contents)["id"] for contents in files])
    started = time.monotonic()

    _run, step = run_calling(
        kit,
        assistant,
        [
            ("call_b", "broken", "{}"),
            ("call_u", "unreachable", "{}"),
            ("call_r", "reader", json.dumps({"url": site.url("/page.html")})),
            ("call_m", "missing", "{}"),
        ],
    )

    said = outputs(step)
    assert said["call_b"] == f"The tool broken failed: {site.url('/broken')} answered 500: the database exploded"
    assert said["call_u"].startswith("The tool unreachable failed:")
    assert said["call_r"] == "Hello page"
    assert said["call_m"].startswith("The tool exited with code 127:")
    assert "no-such-program: No such file or directory" in said["call_m"]
    assert time.monotonic() - started < 30


def test_an_mcp_server_that_is_down_leaves_its_tools_out(kit: RunKit, tools_server: ServerProcess) -> None:
    doomed = McpSite().start()
    gone = create_tool(tools_server, type="mcp", server_url=doomed.url, server_label="doomed")
    doomed.stop()
    echo = create_tool(tools_server, contents="Name: echo\nDescription: Repeats\n\n#!sys.echo\n")
    assistant = assistant_with(kit, gone["id"], echo["id"])
    started = time.monotonic()

    _run, step = run_calling(kit, assistant, [("call_e", "echo", '{"input": "still here"}')])

    assert outputs(step) == {"call_e": "still here"}
    for request in model_requests(kit.fake):
        assert "echo" in offered(request) and not any(name.startswith("doomed_") for name in offered(request))
    assert time.monotonic() - started < 30


# --- confirmation ------------------------------------------------------------------------------


def rubra_run(server: ServerProcess, thread_id: str, run_id: str) -> dict[str, Any]:
    response = requests.get(
        f"{server.url}/v1/rubra/threads/{thread_id}/runs/{run_id}",
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    return response.json()


def confirm(server: ServerProcess, run: Any, call_id: str, approved: bool, **extra: Any) -> requests.Response:
    return xapi(
        server,
        "POST",
        f"threads/{run.thread_id}/runs/{run.id}/confirm",
        {"confirmation": {"tool_call_id": call_id, "confirmation": approved}, **extra},
    )


def run_waiting_for_confirmation(kit: RunKit, server: ServerProcess, text: str = "confirm me") -> tuple[Any, Any]:
    """A run held in requires_confirmation on an echo tool's call `call_c`, the model's answer
    after it scripted."""
    tool = create_tool(server, contents="Name: echo\nDescription: Repeats\n\n#!sys.echo\n", requires_confirmation=True)
    assert tool["requires_confirmation"] is True
    assistant = assistant_with(kit, tool["id"])
    thread = kit.thread("Echo, carefully.")
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(("call_c", "echo", [json.dumps({"input": text})]))),
        Reply.stream(answer("Finished.")),
    )
    run = kit.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    waiting = wait_until(
        lambda: (found := rubra_run(server, thread.id, run.id))["status"] == "requires_confirmation" and found,
        what="the run to wait for confirmation",
    )
    return run, waiting


def test_a_call_that_needs_confirmation_holds_the_run_until_approved(kit: RunKit, tools_server: ServerProcess) -> None:
    run, waiting = run_waiting_for_confirmation(kit, tools_server, "approved words")

    assert waiting["required_action"]["type"] == "confirm"
    assert waiting["required_action"]["x-confirm"]["id"] == "call_c"
    assert "sys.echo" in waiting["required_action"]["x-confirm"]["action"]
    assert "approved words" in waiting["required_action"]["x-confirm"]["action"]
    with make_client(tools_server) as plain:  # /v1 has no such status: the run is still working
        seen = plain.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
        assert seen.status == "in_progress" and seen.required_action is None
    time.sleep(0.5)
    assert rubra_run(tools_server, run.thread_id, run.id)["status"] == "requires_confirmation"  # still held
    assert len(model_requests(kit.fake)) == 1

    response = confirm(tools_server, run, "call_c", True)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == run.id and response.json()["status"] == "queued"
    done = kit.poll(run)
    assert done.status == "completed"
    step = next(s for s in kit.runs.steps.list(run.id, thread_id=run.thread_id).data if s.type == "tool_calls")
    assert outputs(step) == {"call_c": "approved words"}
    assert tool_messages(model_requests(kit.fake)[1]) == {"call_c": "approved words"}
    types = [e["type"] for e in step_events(tools_server, run, step)]
    assert types == ["callConfirm", "callConfirm", "callStart", "callFinish"]
    assert step_events(tools_server, run, step)[1]["confirmed"] is True


def test_a_denied_call_tells_the_model(kit: RunKit, tools_server: ServerProcess) -> None:
    run, _waiting = run_waiting_for_confirmation(kit, tools_server)

    # The flat alias of the later Rubra UI revision, under /v1.
    response = requests.post(
        f"{tools_server.url}/v1/threads/{run.thread_id}/runs/{run.id}/x-confirm",
        json={"confirmation": {"tool_call_id": "call_c", "confirmation": False}},
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        timeout=20,
    )

    assert response.status_code == 200, response.text
    assert kit.poll(run).status == "completed"
    denied = "The user denied this tool call."
    step = next(s for s in kit.runs.steps.list(run.id, thread_id=run.thread_id).data if s.type == "tool_calls")
    assert outputs(step) == {"call_c": denied}
    assert tool_messages(model_requests(kit.fake)[1]) == {"call_c": denied}
    assert "callStart" not in [e["type"] for e in step_events(tools_server, run, step)]  # the tool never ran


def test_confirm_with_stream_follows_the_run_to_its_end(kit: RunKit, tools_server: ServerProcess) -> None:
    run, _waiting = run_waiting_for_confirmation(kit, tools_server, "streamed")

    response = requests.post(
        f"{tools_server.url}/v1/rubra/x/threads/{run.thread_id}/runs/{run.id}/confirm",
        json={"confirmation": {"tool_call_id": "call_c", "confirmation": True}, "stream": True},
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        stream=True,
        timeout=(5, 20),
    )
    events = read_sse(response)

    names = [name for name, _data in events]
    assert names[0] == "thread.run.queued"
    assert names[-2:] == ["thread.run.completed", "done"]
    assert "thread.run.in_progress" in names and "thread.message.completed" in names
    outputs_streamed = [
        call["function"]["output"]
        for name, data in events
        if name == "thread.run.step.delta"
        for call in data["delta"]["step_details"]["tool_calls"]
        if call.get("function", {}).get("output") is not None
    ]
    assert outputs_streamed == ["streamed"]


def test_a_v1_stream_goes_on_through_a_confirmation_it_cannot_see(kit: RunKit, tools_server: ServerProcess) -> None:
    tool = create_tool(
        tools_server, contents="Name: echo\nDescription: Repeats\n\n#!sys.echo\n", requires_confirmation=True
    )
    assistant = assistant_with(kit, tool["id"])
    thread = kit.thread("Echo, carefully.")
    kit.fake.script(
        "chat/completions",
        Reply.stream(tool_call_answer(("call_v", "echo", ['{"input": "seen on v1"}']))),
        Reply.stream(answer("Finished.")),
    )
    streamed: dict[str, Any] = {}

    def follow() -> None:  # an OpenAI client streaming on /v1, which knows nothing of confirmation
        response = requests.post(
            f"{tools_server.url}/v1/threads/{thread.id}/runs",
            json={"assistant_id": assistant.id, "stream": True},
            headers={"Authorization": f"Bearer {ALICE_KEY}", "OpenAI-Beta": "assistants=v2"},
            stream=True,
            timeout=(5, 20),
        )
        streamed["events"] = read_sse(response)

    follower = threading.Thread(target=follow)
    follower.start()
    with make_client(
        tools_server
    ) as plain:  # /v1: the run may already wait, which the strict SDK cannot read on /v1/rubra
        run = wait_until(
            lambda: next(iter(plain.beta.threads.runs.list(thread_id=thread.id).data), None),
            what="the streamed run to be created",
        )
    wait_until(
        lambda: rubra_run(tools_server, thread.id, run.id)["status"] == "requires_confirmation",
        what="the run to wait for confirmation",
    )
    time.sleep(0.3)
    assert follower.is_alive()  # the /v1 stream stays open: to its client the run is still working

    assert confirm(tools_server, run, "call_v", True).status_code == 200
    follower.join(30)

    names = [name for name, _data in streamed["events"]]
    assert "thread.run.requires_confirmation" not in names
    assert names[-2:] == ["thread.run.completed", "done"]
    statuses = [
        data["status"]
        for name, data in streamed["events"]
        if name and name.startswith("thread.run.") and "status" in data
    ]
    assert "requires_confirmation" not in statuses


def test_bad_confirmations_are_refused(kit: RunKit, tools_server: ServerProcess) -> None:
    run, _waiting = run_waiting_for_confirmation(kit, tools_server)

    wrong = confirm(tools_server, run, "call_nope", True)
    assert wrong.status_code == 400, wrong.text
    assert wrong.json()["error"]["param"] == "confirmation.tool_call_id"
    assert "call_c" in wrong.json()["error"]["message"]
    missing = xapi(tools_server, "POST", f"threads/{run.thread_id}/runs/{run.id}/confirm", {"confirmation": {}})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "confirmation.tool_call_id"
    not_bool = confirm(tools_server, run, "call_c", "yes")  # type: ignore[arg-type]
    assert not_bool.status_code == 400 and not_bool.json()["error"]["param"] == "confirmation.confirmation"
    other_project = xapi(
        tools_server,
        "POST",
        f"threads/{run.thread_id}/runs/{run.id}/confirm",
        {"confirmation": {"tool_call_id": "call_c", "confirmation": True}},
        key=BOB_KEY,
    )
    assert other_project.status_code == 404
    assert rubra_run(tools_server, run.thread_id, run.id)["status"] == "requires_confirmation"  # untouched

    assert confirm(tools_server, run, "call_c", False).status_code == 200
    assert kit.poll(run).status == "completed"
    again = confirm(tools_server, run, "call_c", True)
    assert again.status_code == 400 and "not waiting for a confirmation" in again.json()["error"]["message"]


def test_a_run_waiting_for_confirmation_can_be_cancelled(kit: RunKit, tools_server: ServerProcess) -> None:
    run, _waiting = run_waiting_for_confirmation(kit, tools_server)
    cancelled = kit.runs.cancel(run.id, thread_id=run.thread_id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert kit.poll(run).status == "cancelled"


@pytest.fixture(scope="module")
def quick_expiry(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """A server whose runs expire three seconds after they are created, and whose tools ask for
    confirmation unless told otherwise (CLICKY_CHATS_CONFIRM)."""
    env = {"CLICKY_CHATS_RUN_EXPIRY_S": "3", "CLICKY_CHATS_CONFIRM": "true"}
    with tool_server(database, fake_upstream, env) as server:
        yield server


def test_confirmation_by_default(quick_expiry: ServerProcess) -> None:
    echo = "Name: echo\n\n#!sys.echo\n"
    assert create_tool(quick_expiry, contents=echo)["requires_confirmation"] is True
    assert create_tool(quick_expiry, contents=echo, requires_confirmation=False)["requires_confirmation"] is False
    held = xapi(quick_expiry, "POST", "tools/run", {"tool_id": create_tool(quick_expiry, contents=echo)["id"]})
    assert held.json()["status"] == "requires_confirmation"


def test_a_run_waiting_for_confirmation_still_expires(quick_expiry: ServerProcess, fake_upstream: FakeUpstream) -> None:
    with make_client(quick_expiry, tier="/v1/rubra") as rubra:
        kit = RunKit(rubra, quick_expiry, fake_upstream)
        run, waiting = run_waiting_for_confirmation(kit, quick_expiry)
        assert waiting["expires_at"] - waiting["created_at"] == 3

        expired = wait_until(
            lambda: (found := rubra_run(quick_expiry, run.thread_id, run.id))["status"] == "expired" and found,
            what="the run to expire",
        )

    assert expired["required_action"] is None and expired["expires_at"] is None
    late = confirm(quick_expiry, run, "call_c", True)
    assert late.status_code == 400
    assert len(model_requests(fake_upstream)) == 1  # the model never heard back


# --- the run re-attach stream ------------------------------------------------------------------


def test_the_stream_of_a_finished_run_replays_from_any_index(kit: RunKit, tools_server: ServerProcess) -> None:
    tool = create_tool(tools_server, contents="Name: echo\nDescription: Repeats\n\n#!sys.echo\n")
    assistant = assistant_with(kit, tool["id"])
    run, _step = run_calling(kit, assistant, [("call_r", "echo", '{"input": "replayed"}')], then="Replayed answer.")

    everything = sse_get(tools_server, f"/v1/rubra/x/threads/{run.thread_id}/runs/{run.id}/stream")
    names = [name for name, _data in everything]
    assert names[:2] == ["thread.run.created", "thread.run.queued"]
    assert names[-2:] == ["thread.run.completed", "done"]
    assert everything[-1][1] == "[DONE]"
    assert names.count("thread.run.step.created") == 2  # the tool step and the message step
    assert everything[-2][1]["id"] == run.id and everything[-2][1]["status"] == "completed"

    middle = len(everything) // 2
    tail = sse_get(tools_server, f"/v1/rubra/x/threads/{run.thread_id}/runs/{run.id}/stream?index={middle}")
    assert tail == everything[middle:]
    flat = sse_get(tools_server, f"/v1/threads/{run.thread_id}/runs/{run.id}/x-stream?index={middle}")
    assert flat == everything[middle:]
    stored = len(everything) - 1  # every stored event, then `done`
    at_the_end = sse_get(tools_server, f"/v1/rubra/x/threads/{run.thread_id}/runs/{run.id}/stream?index={stored}")
    assert at_the_end == [("done", "[DONE]")]  # nothing more will come: the run is over
    past = xapi(tools_server, "GET", f"threads/{run.thread_id}/runs/{run.id}/stream?index={stored + 1}")
    assert past.status_code == 400 and f"{stored} events" in past.json()["error"]["message"]

    bad = xapi(tools_server, "GET", f"threads/{run.thread_id}/runs/{run.id}/stream?index=-1")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "index"
    bad = xapi(tools_server, "GET", f"threads/{run.thread_id}/runs/{run.id}/stream?index=two")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "index"
    unknown = xapi(tools_server, "GET", f"threads/{run.thread_id}/runs/run_nope/stream")
    assert unknown.status_code == 404


def test_the_stream_follows_a_slow_run_live(kit: RunKit, tools_server: ServerProcess) -> None:
    assistant = kit.assistant()
    thread = kit.thread("Talk slowly.")
    kit.fake.script("chat/completions", Reply.stream(answer("one ", "two ", "three ", "four"), interval_s=0.4))
    run = kit.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    response = requests.get(
        f"{tools_server.url}/v1/rubra/x/threads/{thread.id}/runs/{run.id}/stream",
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        stream=True,
        timeout=(5, 20),
    )
    assert response.status_code == 200
    seen: list[tuple[str, str]] = []  # (event, run status when the event arrived)
    name = ""
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[len("event: ") :]
            if name == "thread.message.delta":
                seen.append((name, kit.runs.retrieve(run.id, thread_id=thread.id).status))
            else:
                seen.append((name, ""))
    deltas = [status for event, status in seen if event == "thread.message.delta"]
    assert deltas and deltas[0] == "in_progress"  # the first words arrived while the run went on
    assert [event for event, _status in seen][-2:] == ["thread.run.completed", "done"]


# --- the thread list ---------------------------------------------------------------------------


def list_threads(
    server: ServerProcess, query: str = "", *, key: str = ALICE_KEY, path: str = "threads"
) -> dict[str, Any]:
    response = xapi(server, "GET", f"{path}{query}", key=key)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_thread_list_is_newest_first_paged_and_per_project(kit: RunKit, tools_server: ServerProcess) -> None:
    mine = [kit.thread(f"thread {n}").id for n in range(3)]
    with make_client(tools_server, BOB_KEY) as bob:
        theirs = bob.beta.threads.create(metadata={"assistantId": "asst_bob"}).id

    page = list_threads(tools_server, "?limit=2")
    assert page["object"] == "list" and page["has_more"] is True
    assert [t["id"] for t in page["data"]] == [mine[2], mine[1]]
    assert page["first_id"] == mine[2] and page["last_id"] == mine[1]
    assert page["data"][0]["object"] == "thread" and page["data"][0]["created_at"] >= page["data"][1]["created_at"]
    following = list_threads(tools_server, f"?limit=2&after={page['last_id']}")
    assert following["data"][0]["id"] == mine[0]

    every: list[str] = []
    after = ""
    while True:
        chunk = list_threads(tools_server, f"?limit=100{after}")
        every += [t["id"] for t in chunk["data"]]
        if not chunk["has_more"]:
            break
        after = f"&after={chunk['last_id']}"
    assert set(mine) <= set(every) and theirs not in every
    assert [t["id"] for t in list_threads(tools_server, key=BOB_KEY)["data"]] == [theirs]
    assert list_threads(tools_server, key=BOB_KEY)["data"][0]["metadata"] == {"assistantId": "asst_bob"}

    flat = requests.get(
        f"{tools_server.url}/v1/x-threads?limit=2", headers={"Authorization": f"Bearer {ALICE_KEY}"}, timeout=20
    )
    assert flat.status_code == 200 and [t["id"] for t in flat.json()["data"]] == [mine[2], mine[1]]
    ascending = list_threads(tools_server, "?limit=1&order=asc")
    assert ascending["data"][0]["id"] == every[-1]
    bad = xapi(tools_server, "GET", "threads?limit=0")
    assert bad.status_code == 400
