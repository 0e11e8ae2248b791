"""What keeps tools from hurting the server: command tools off unless an operator allows them;
a command sees only its own environment, never the server's secrets; runaway commands are
stopped (time, memory, file size) and their output capped; and tools reach no private address
unless the host is allowed, however the address is spelt, redirects included."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from agents.tools import outbound
from tests.conftest import ALICE_KEY, make_client
from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import ROOT, Database, ServerProcess
from tests.runs_support import MODEL, POLL_MS, RunKit, answer, assert_envelope, tool_call_answer
from tests.tools_support import Site, tool_server, xapi

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DECOY_SECRET = "decoy-cloud-secret-0451"
OUTPUT_CAP = 2000


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    made = Site().start()
    yield made
    made.stop()


@pytest.fixture(scope="module")
def guarded(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """Command tools allowed, with tight limits; only the host name `localhost` may be reached
    on loopback (127.0.0.1 by its address may not); a secret in the environment that no tool
    may see."""
    env = {
        "CLICKY_CHATS_ALLOW_COMMAND_TOOLS": "true",
        "CLICKY_CHATS_TOOL_TIMEOUT_S": "2",
        "CLICKY_CHATS_TOOL_MEMORY_BYTES": str(128 * 1024 * 1024),
        "CLICKY_CHATS_TOOL_FILE_BYTES": str(64 * 1024),
        "CLICKY_CHATS_TOOL_OUTPUT_MAX_BYTES": str(OUTPUT_CAP),
        "CLICKY_CHATS_TOOL_ALLOWED_HOSTS": "localhost",
        "AWS_SECRET_ACCESS_KEY": DECOY_SECRET,
        "OPENAI_API_KEY": "sk-decoy-openai-key",
    }
    with tool_server(database, fake_upstream, env) as server:
        yield server


def run_tool(server: ServerProcess, contents: str, tool_input: Any = None, **fields: Any) -> dict[str, Any]:
    response = xapi(server, "POST", "tools/run", {"contents": contents, "input": tool_input or {}, **fields})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed", response.json()
    return response.json()


# --- command tools are off unless allowed -------------------------------------------------------


def test_command_tools_are_refused_by_default(server: ServerProcess) -> None:
    command = "Name: list\nDescription: Lists files\n\n#!/bin/sh\nls /\n"
    error = assert_envelope(xapi(server, "POST", "tools", {"contents": command}), 400)
    assert error["code"] == "command_tools_disabled" and error["param"] == "contents"
    assert "CLICKY_CHATS_ALLOW_COMMAND_TOOLS=true" in error["message"] and "list" in error["message"]
    # A command anywhere in the file counts, not only in the entry tool.
    hidden = "Name: friendly\nTools: helper\n\nBe nice.\n---\nName: helper\n\n#!python3 -c 'print(1)'\n"
    error = assert_envelope(xapi(server, "POST", "tools", {"contents": hidden}), 400)
    assert error["code"] == "command_tools_disabled" and "helper" in error["message"]
    assert_envelope(xapi(server, "POST", "tools/run", {"contents": command}), 400)
    # Built-ins are no commands: they stay usable.
    echo = xapi(server, "POST", "tools/run", {"contents": "Name: e\n\n#!sys.echo\n", "input": {"input": "ok"}})
    assert echo.json()["output"] == "ok"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLICKY_CHATS_ALLOW_COMMAND_TOOLS", "sure"),
        ("CLICKY_CHATS_TOOL_SANDBOX", "bubblewrap"),  # a typo must never mean "no sandbox"
        ("CLICKY_CHATS_TOOL_TIMEOUT_S", "30s"),
        ("CLICKY_CHATS_TOOL_TIMEOUT_S", "0"),
        ("CLICKY_CHATS_TOOL_OUTPUT_MAX_BYTES", "10"),
        ("CLICKY_CHATS_TOOL_MEMORY_BYTES", "lots"),
        ("CLICKY_CHATS_TOOL_FILE_BYTES", "1"),
        ("CLICKY_CHATS_TOOL_PROCESSES", "0"),
        ("CLICKY_CHATS_CONFIRM", "maybe"),
        ("CLICKY_CHATS_SEARCH_URL", "ftp://search.example"),
    ],
)
def test_bad_tool_settings_stop_start_up(server: ServerProcess, variable: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**server.env, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr
    assert lines[0].startswith("clicky-chats: configuration error:")


# --- a command's environment --------------------------------------------------------------------


ENV_DUMP = """Name: dump
Description: Prints its environment
Args: city: a city

#!python3 -c 'import json, os; print(json.dumps(dict(os.environ), sort_keys=True))'
"""


def secrets_of(server: ServerProcess) -> list[str]:
    return [
        server.env["CLICKY_CHATS_MODEL_API_KEY"],
        server.env["CLICKY_CHATS_SECRET_KEY"],
        server.env["CLICKY_CHATS_DSN"],
        ALICE_KEY,
        DECOY_SECRET,
        "sk-decoy-openai-key",
    ]


def test_a_command_sees_no_secret(guarded: ServerProcess, fake_upstream: FakeUpstream) -> None:
    made = xapi(guarded, "POST", "tools", {"contents": ENV_DUMP, "env_vars": ["MY_SETTING=on=off"]}).json()
    with make_client(guarded, tier="/v1/rubra") as rubra:
        kit = RunKit(rubra, guarded, fake_upstream)
        assistant = rubra.beta.assistants.create(model=MODEL, extra_body={"gptscript_tools": [made["id"]]})
        thread = kit.thread("Show me.")
        # The model sends its declared argument and some it made up, one aimed at bash's start-up file.
        arguments = json.dumps({"city": "Paris", "BASH_ENV": "$(id)", "path": "/tmp", "extra": "x"})
        fake_upstream.script(
            "chat/completions",
            Reply.stream(tool_call_answer(("call_env", "dump", [arguments]))),
            Reply.stream(answer("Shown.")),
        )
        run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
        assert run.status == "completed"
        step = next(s for s in kit.runs.steps.list(run.id, thread_id=thread.id).data if s.type == "tool_calls")

    output = step.step_details.tool_calls[0].function.output
    environment = json.loads(output)
    assert set(environment) == {
        "PATH",
        "HOME",
        "LANG",
        "GPTSCRIPT_INPUT",
        "GPTSCRIPT_TOOL_DIR",
        "MY_SETTING",
        "city",
        "CITY",
    }
    assert environment["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert environment["MY_SETTING"] == "on=off" and environment["CITY"] == "Paris"
    assert environment["HOME"] == environment["GPTSCRIPT_TOOL_DIR"] and environment["HOME"].startswith("/tmp/")
    assert json.loads(environment["GPTSCRIPT_INPUT"]) == json.loads(arguments)  # all of it, as data only
    for secret in secrets_of(guarded):
        assert secret not in output


def test_a_command_inherits_no_open_files_of_the_server(guarded: ServerProcess) -> None:
    # Only its stdin, stdout and stderr (and the directory listdir itself opens): none of the
    # server's sockets or database files, nor spare copies of its own pipes.
    lister = "Name: fds\n\n#!python3 -c 'import os; print(sorted(int(fd) for fd in os.listdir(\"/proc/self/fd\")))'\n"
    assert run_tool(guarded, lister)["output"] == "[0, 1, 2, 3]\n"


def test_a_command_runs_in_a_fresh_directory_that_is_removed(guarded: ServerProcess) -> None:
    script = 'Name: where\n\n#!/bin/sh\npwd\nls -A | tr "\\n" " "\necho\necho leftover > note.txt\n'
    first = run_tool(guarded, script)["output"].split("\n")
    second = run_tool(guarded, script)["output"].split("\n")
    assert first[0] != second[0] and first[0].startswith("/tmp/clicky-tool-")
    assert first[1].split() == ["tool-script"] and second[1].split() == ["tool-script"]  # nothing left behind
    assert subprocess.run(["test", "-e", first[0]], check=False).returncode != 0  # gone after the call


# --- runaway commands ---------------------------------------------------------------------------


def test_a_command_that_never_ends_is_stopped_at_the_timeout(guarded: ServerProcess) -> None:
    started = time.monotonic()
    slept = run_tool(guarded, "Name: sleepy\n\n#!python3 -c 'import time; time.sleep(600)'\n")
    busy = run_tool(guarded, "Name: busy\n\n#!python3 -c 'while True: pass'\n")
    elapsed = time.monotonic() - started

    assert slept["output"] == "The tool call took longer than 2 s and was stopped."
    assert busy["output"] == "The tool call took longer than 2 s and was stopped."
    assert elapsed < 15


def survivors(marker: str) -> str:
    found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True, check=False)
    return found.stdout.strip()


def test_a_stopped_command_takes_its_children_with_it(guarded: ServerProcess) -> None:
    marker = "613.25"  # a sleep length no other process on this machine uses
    result = run_tool(guarded, f"Name: forker\n\n#!/bin/sh\nsleep {marker} &\nsleep {marker}\n")
    assert "longer than 2 s" in result["output"]
    time.sleep(0.5)
    assert survivors(marker) == ""


def test_a_finished_command_leaves_nothing_running(guarded: ServerProcess) -> None:
    marker = "614.75"
    result = run_tool(guarded, f"Name: daemon\n\n#!/bin/sh\nsleep {marker} > /dev/null 2>&1 &\necho started\n")
    assert result["output"] == "started\n"
    time.sleep(0.5)
    assert survivors(marker) == ""


def test_a_command_that_takes_too_much_memory_fails(guarded: ServerProcess) -> None:
    result = run_tool(guarded, "Name: hog\n\n#!python3 -c 'data = bytearray(1024 * 1024 * 1024)'\n")
    assert result["output"].startswith("The tool exited with code 1:")
    assert "MemoryError" in result["output"]


def test_a_command_that_writes_too_large_a_file_is_killed(guarded: ServerProcess) -> None:
    result = run_tool(guarded, "Name: filler\n\n#!/bin/sh\nexec head -c 1000000 /dev/zero > big.bin\n")
    assert result["output"] == "The tool exited with code -25: (killed by signal SIGXFSZ: a resource limit was hit)"
    sized = run_tool(guarded, "Name: sizer\n\n#!/bin/sh\n(head -c 1000000 /dev/zero > big.bin)\nwc -c < big.bin\n")
    assert sized["output"].strip() == str(64 * 1024)  # the file stopped growing at the limit


def test_output_is_capped(guarded: ServerProcess) -> None:
    result = run_tool(guarded, "Name: chatty\n\n#!python3 -c 'print(\"x\" * 50000)'\n")
    assert result["output"] == "x" * OUTPUT_CAP + f"\n[output cut at {OUTPUT_CAP} bytes]"
    # Failures are capped as well: stderr can be as long as it likes.
    noisy = run_tool(guarded, "Name: noisy\n\n#!python3 -c 'import sys; sys.exit(\"e\" * 50000)'\n")
    assert len(noisy["output"].encode()) <= OUTPUT_CAP + 100 and "[output cut at" in noisy["output"]
    echoed = run_tool(guarded, "Name: e\n\n#!sys.echo\n", {"input": "y" * 10000})
    assert echoed["output"] == "y" * OUTPUT_CAP + f"\n[output cut at {OUTPUT_CAP} bytes]"


# --- private addresses --------------------------------------------------------------------------


NONE_ALLOWED: frozenset[str] = frozenset()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
        "169.254.169.254",  # the cloud metadata service
        "fe80::1",
        "10.0.0.1",
        "10.255.255.254",
        "172.16.0.1",
        "172.31.255.1",
        "192.168.1.1",
        "100.64.0.1",
        "fd00::1",
        "224.0.0.1",
        "255.255.255.255",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    ],
)
def test_private_addresses_are_refused(address: str) -> None:
    with pytest.raises(outbound.OutboundRefused, match="refused to connect"):
        outbound.decide("somewhere.example", [address], NONE_ALLOWED)


def test_public_addresses_pass_and_private_ones_are_dropped_beside_them() -> None:
    assert outbound.decide("example.com", ["93.184.215.14"], NONE_ALLOWED) == ["93.184.215.14"]
    assert outbound.decide("example.com", ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"], NONE_ALLOWED)
    assert outbound.decide("mixed.example", ["10.0.0.5", "8.8.8.8"], NONE_ALLOWED) == ["8.8.8.8"]
    assert outbound.decide("172.32.0.1", ["172.32.0.1"], NONE_ALLOWED) == ["172.32.0.1"]  # just past 172.16/12


def test_an_allowed_host_may_use_any_address() -> None:
    assert outbound.decide("localhost", ["127.0.0.1", "::1"], frozenset({"localhost"})) == ["127.0.0.1", "::1"]
    assert outbound.decide("LocalHost", ["127.0.0.1"], frozenset({"localhost"})) == ["127.0.0.1"]
    assert outbound.decide("[::1]", ["::1"], frozenset({"::1"})) == ["::1"]
    with pytest.raises(outbound.OutboundRefused):
        outbound.decide("127.0.0.1", ["127.0.0.1"], frozenset({"localhost"}))  # the name was allowed, not this


@pytest.mark.parametrize("spelling", ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "0x7f000001"])
def test_other_spellings_of_loopback_resolve_to_it_and_are_refused(spelling: str) -> None:
    addresses = asyncio.run(outbound.resolve(spelling, 80))
    assert set(addresses) == {"127.0.0.1"}
    with pytest.raises(outbound.OutboundRefused):
        outbound.decide(spelling, addresses, NONE_ALLOWED)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://example.com/", "dict://x:11/"]
)
def test_only_http_and_https_urls(url: str) -> None:
    with pytest.raises(outbound.OutboundRefused, match="only http and https"):
        outbound.check_url_scheme(url)
    with pytest.raises(outbound.OutboundRefused):
        asyncio.run(outbound.fetch_text(url, max_bytes=100))


def redirect_to(target: str) -> Any:
    async def handler(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(target)

    return handler


def test_tool_files_are_fetched_only_from_allowed_hosts(guarded: ServerProcess, site: Site) -> None:
    site.text("/files/ok.gpt", "Name: ok\n\n#!sys.echo\n")
    by_name = xapi(guarded, "POST", "tools", {"url": site.url("/files/ok.gpt", host="localhost")})
    assert by_name.status_code == 200, by_name.text  # `localhost` is allowed

    error = assert_envelope(xapi(guarded, "POST", "tools", {"url": site.url("/files/ok.gpt")}), 400)
    assert "refused to connect to 127.0.0.1" in error["message"]
    # Other spellings of the address are refused when connecting: the check sees what they resolve to.
    for spelling in ("2130706433", "0x7f.1", "[::ffff:127.0.0.1]", "[::1]", "0.0.0.0"):
        error = assert_envelope(xapi(guarded, "POST", "tools", {"url": site.url("/files/ok.gpt", host=spelling)}), 400)
        assert "refused to connect to" in error["message"], spelling
    # The octal spelling is not even taken for a URL (outbound.resolve would see through it too).
    error = assert_envelope(xapi(guarded, "POST", "tools", {"url": site.url("/files/ok.gpt", host="0177.0.0.1")}), 400)
    assert "Invalid IPv4 address" in error["message"]
    assert site.hits["/files/ok.gpt"] == 1  # only the allowed fetch got through


def test_a_redirect_from_an_allowed_host_to_a_private_one_is_refused(guarded: ServerProcess, site: Site) -> None:
    site.text("/files/target.gpt", "Name: target\n\n#!sys.echo\n")
    site.route("GET", "/files/bounce.gpt", redirect_to(site.url("/files/target.gpt")))  # to 127.0.0.1
    site.route("GET", "/files/gopher.gpt", redirect_to("gopher://127.0.0.1:70/_stats"))
    site.route("GET", "/files/local.gpt", redirect_to(site.url("/files/target.gpt", host="localhost")))

    error = assert_envelope(
        xapi(guarded, "POST", "tools", {"url": site.url("/files/bounce.gpt", host="localhost")}), 400
    )
    assert "refused to connect to 127.0.0.1" in error["message"]
    assert site.hits["/files/bounce.gpt"] == 1 and site.hits["/files/target.gpt"] == 0
    error = assert_envelope(
        xapi(guarded, "POST", "tools", {"url": site.url("/files/gopher.gpt", host="localhost")}), 400
    )
    assert "could not be fetched" in error["message"]
    followed = xapi(guarded, "POST", "tools", {"url": site.url("/files/local.gpt", host="localhost")})
    assert followed.status_code == 200 and followed.json()["name"] == "target"  # allowed to allowed is fine


def test_tools_in_a_run_cannot_reach_private_addresses(
    guarded: ServerProcess, site: Site, fake_upstream: FakeUpstream
) -> None:
    async def secret(_request: web.Request) -> web.StreamResponse:
        return web.Response(text="internal secret page")

    site.route("GET", "/internal", secret)
    site.route("POST", "/internal", secret)
    fetcher = "Name: fetch\nDescription: Gets a page\nArgs: url: the page\n\n#!sys.http.get\n"
    poster = f"Name: post\nDescription: Posts\n\n#!{site.url('/internal')}\n"
    tool_ids = [xapi(guarded, "POST", "tools", {"contents": c}).json()["id"] for c in (fetcher, poster)]
    with make_client(guarded, tier="/v1/rubra") as rubra:
        kit = RunKit(rubra, guarded, fake_upstream)
        assistant = rubra.beta.assistants.create(model=MODEL, extra_body={"gptscript_tools": tool_ids})
        thread = kit.thread("Fetch.")
        fake_upstream.script(
            "chat/completions",
            Reply.stream(
                tool_call_answer(
                    ("call_get", "fetch", [json.dumps({"url": site.url("/internal", host="169.254.169.254")})]),
                    ("call_get2", "fetch", [json.dumps({"url": site.url("/internal")})]),
                    ("call_post", "post", ["{}"]),
                )
            ),
            Reply.stream(answer("Could not.")),
        )
        run = kit.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=POLL_MS)
        assert run.status == "completed"
        step = next(s for s in kit.runs.steps.list(run.id, thread_id=thread.id).data if s.type == "tool_calls")

    said = {call.id: call.function.output for call in step.step_details.tool_calls}
    assert said["call_get"].startswith("The tool fetch failed") and "169.254.169.254" in said["call_get"]
    assert (
        said["call_get2"].startswith("The tool fetch failed") and "refused to connect to 127.0.0.1" in said["call_get2"]
    )
    assert said["call_post"].startswith("The tool post failed") and "refused to connect" in said["call_post"]
    assert site.hits["/internal"] == 0
