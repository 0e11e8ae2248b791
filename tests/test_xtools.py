"""x-tools through /v1/rubra/x (raw HTTP: the SDK knows nothing of them): create, read, list,
change and delete; inspect; tool files by URL, fetched once at create and again only on
`retool`; env_vars; running a tool outside any assistant, with and without a stream, and with
confirmation; the flat `/v1/x-tools` paths; and bad input, each a 4xx in OpenAI's envelope."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import ALICE_KEY, BOB_KEY, make_client
from tests.fake_upstream import FakeUpstream, Reply, chat_completion
from tests.harness import Database, ServerProcess, free_port
from tests.runs_support import MODEL, assert_envelope
from tests.tools_support import McpSite, Site, mcp_site, read_sse, site, tool_server, xapi

__all__ = ["mcp_site", "site"]  # fixtures, imported for pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ECHO = "Name: echo\nDescription: Repeats the input\n\n#!sys.echo\n"
ENV_PRINTER = 'Name: show-token\nDescription: Prints its token\n\n#!/bin/sh\nprintf "%s" "$TOKEN"\n'


@pytest.fixture(scope="module")
def tools_server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    env = {"CLICKY_CHATS_ALLOW_COMMAND_TOOLS": "true", "CLICKY_CHATS_TOOL_ALLOWED_HOSTS": "127.0.0.1"}
    with tool_server(database, fake_upstream, env) as server:
        yield server


def create(server: ServerProcess, **body: Any) -> dict[str, Any]:
    response = xapi(server, "POST", "tools", body)
    assert response.status_code == 200, response.text
    return response.json()


def closed_port_url(path: str = "/") -> str:
    """A loopback URL nothing listens on."""
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return f"http://127.0.0.1:{port}{path}"


# --- CRUD ------------------------------------------------------------------------------------


def test_create_read_list_change_and_delete(tools_server: ServerProcess) -> None:
    made = create(tools_server, contents=ECHO)
    assert made["id"].startswith("tool_") and made["object"] == "tool"
    assert (made["name"], made["description"], made["type"]) == ("echo", "Repeats the input", "gptscript")
    assert made["contents"] == ECHO and made["url"] is None and made["subtool"] is None
    assert made["env_vars"] == [] and made["requires_confirmation"] is False
    assert isinstance(made["created_at"], int)

    assert xapi(tools_server, "GET", f"tools/{made['id']}").json() == made
    second = create(tools_server, contents="Name: clock\nDescription: The time\n\n#!sys.time.now\n")
    page = xapi(tools_server, "GET", "tools?limit=1").json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [tool["id"] for tool in page["data"]] == [second["id"]]  # newest first
    following = xapi(tools_server, "GET", f"tools?limit=1&after={second['id']}").json()
    assert [tool["id"] for tool in following["data"]] == [made["id"]]

    changed = xapi(
        tools_server,
        "POST",
        f"tools/{made['id']}",
        {"contents": "Name: parrot\nDescription: Says it again\n\n#!sys.echo\n", "requires_confirmation": True},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["description"]) == ("parrot", "Says it again")
    assert changed.json()["requires_confirmation"] is True
    assert xapi(tools_server, "GET", f"tools/{made['id']}").json() == changed.json()

    # Another project sees none of it, and cannot touch it.
    assert xapi(tools_server, "GET", f"tools/{made['id']}", key=BOB_KEY).status_code == 404
    assert made["id"] not in [t["id"] for t in xapi(tools_server, "GET", "tools?limit=100", key=BOB_KEY).json()["data"]]
    assert xapi(tools_server, "DELETE", f"tools/{made['id']}", key=BOB_KEY).status_code == 404

    deleted = xapi(tools_server, "DELETE", f"tools/{made['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": made["id"], "object": "tool.deleted", "deleted": True}
    error = assert_envelope(xapi(tools_server, "GET", f"tools/{made['id']}"), 404)
    assert made["id"] in error["message"]
    assert_envelope(xapi(tools_server, "DELETE", f"tools/{made['id']}"), 404)


def test_a_subtool_of_a_file_becomes_the_tool(tools_server: ServerProcess) -> None:
    contents = ECHO + "---\nName: clock\nDescription: The time now\n\n#!sys.time.now\n"
    made = create(tools_server, contents=contents, subtool="clock")
    assert (made["name"], made["description"], made["subtool"]) == ("clock", "The time now", "clock")
    back = xapi(tools_server, "POST", f"tools/{made['id']}", {"subtool": "echo"})
    assert back.status_code == 200 and back.json()["name"] == "echo"


def test_env_vars_keep_every_equals_sign_after_the_first(tools_server: ServerProcess) -> None:
    made = create(tools_server, contents=ENV_PRINTER, env_vars=["TOKEN=a=b==c", "EMPTY="])
    assert made["env_vars"] == ["TOKEN=a=b==c", "EMPTY="]

    ran = xapi(tools_server, "POST", "tools/run", {"tool_id": made["id"]})

    assert ran.status_code == 200, ran.text
    assert ran.json()["status"] == "completed" and ran.json()["output"] == "a=b==c"
    changed = xapi(tools_server, "POST", f"tools/{made['id']}", {"env_vars": ["TOKEN=x=y"]})
    assert changed.json()["env_vars"] == ["TOKEN=x=y"]
    assert xapi(tools_server, "POST", "tools/run", {"tool_id": made["id"]}).json()["output"] == "x=y"


# --- tools by URL ------------------------------------------------------------------------------


def test_a_url_tool_is_fetched_at_create_and_again_only_on_retool(tools_server: ServerProcess, site: Site) -> None:
    site.text("/files/greeter.gpt", "Description: Greets\n\n#!sys.echo\n")
    url = site.url("/files/greeter.gpt")

    made = create(tools_server, url=url, env_vars=["A=1"])

    assert site.hits["/files/greeter.gpt"] == 1
    assert made["url"] == url and made["name"] == "greeter"  # a file without a Name is named after itself
    assert made["contents"] == "Description: Greets\n\n#!sys.echo\n"
    site.text("/files/greeter.gpt", "Name: greeter2\nDescription: Greets better\n\n#!sys.echo\n")

    xapi(tools_server, "GET", f"tools/{made['id']}")
    xapi(tools_server, "GET", "tools")
    kept = xapi(tools_server, "POST", f"tools/{made['id']}", {"env_vars": ["A=2"], "requires_confirmation": False})
    ran = xapi(tools_server, "POST", "tools/run", {"tool_id": made["id"], "input": {"input": "hi"}})
    assert kept.status_code == 200 and ran.json()["output"] == "hi"
    assert site.hits["/files/greeter.gpt"] == 1  # reading, changing other fields and running never refetch
    assert kept.json()["description"] == "Greets"

    refetched = xapi(tools_server, "POST", f"tools/{made['id']}", {"retool": True})

    assert refetched.status_code == 200, refetched.text
    assert site.hits["/files/greeter.gpt"] == 2
    assert (refetched.json()["name"], refetched.json()["description"]) == ("greeter2", "Greets better")
    assert refetched.json()["env_vars"] == ["A=2"]


def test_inspect_describes_a_file_without_storing_it(tools_server: ServerProcess, site: Site) -> None:
    contents = (
        "Name: main\nDescription: The entry\nTools: helper\nArgs: q: the question\n\nAnswer q.\n"
        "---\nName: helper\nDescription: Helps\nArgs: x: a value\n\n#!python3 -c 'print(1)'\n"
    )
    before = len(xapi(tools_server, "GET", "tools?limit=100").json()["data"])

    inspected = xapi(tools_server, "POST", "tools/inspect", {"contents": contents})

    assert inspected.status_code == 200, inspected.text
    assert inspected.json() == {
        "object": "tool.inspection",
        "entry": "main",
        "tools": [
            {
                "name": "main",
                "description": "The entry",
                "args": {"q": "the question"},
                "tools": ["helper"],
                "kind": "prompt",
            },
            {"name": "helper", "description": "Helps", "args": {"x": "a value"}, "tools": [], "kind": "command"},
        ],
    }
    assert (
        xapi(tools_server, "POST", "tools/inspect", {"contents": contents, "subtool": "helper"}).json()["entry"]
        == "helper"
    )
    site.text("/files/inspected.gpt", contents)
    by_url = xapi(tools_server, "POST", "tools/inspect", {"url": site.url("/files/inspected.gpt")})
    assert by_url.status_code == 200 and by_url.json()["tools"] == inspected.json()["tools"]
    assert len(xapi(tools_server, "GET", "tools?limit=100").json()["data"]) == before
    bad = assert_envelope(
        xapi(tools_server, "POST", "tools/inspect", {"contents": "Name: x\nTemperature: hot\n\nx"}), 400
    )
    assert bad["param"] == "contents" and "line 2" in bad["message"]


# --- running a tool on its own ------------------------------------------------------------------


def test_run_a_tool_by_contents_and_by_id(tools_server: ServerProcess) -> None:
    ran = xapi(tools_server, "POST", "tools/run", {"contents": ECHO, "input": {"input": "by contents"}})
    assert ran.status_code == 200, ran.text
    body = ran.json()
    assert body["object"] == "tool.run" and body["id"].startswith("toolrun_")
    assert (body["status"], body["output"], body["error"], body["tool_id"]) == ("completed", "by contents", None, None)

    made = create(tools_server, contents='Name: shout\nArgs: text: what\n\n#!/bin/sh\necho "$TEXT" | tr a-z A-Z\n')
    by_id = xapi(tools_server, "POST", "tools/run", {"tool_id": made["id"], "input": '{"text": "quiet words"}'})
    assert by_id.json()["output"] == "QUIET WORDS\n" and by_id.json()["tool_id"] == made["id"]


def test_a_prompt_tool_run_alone_has_a_scratch_directory_of_its_own(
    tools_server: ServerProcess, fake_upstream: FakeUpstream
) -> None:
    notes = "Name: notes\nDescription: Keeps notes\nTools: sys.write, sys.read\n\nWrite the note, then read it back.\n"

    def call(name: str, arguments: dict[str, str]) -> Reply:
        tool_call = {
            "id": f"call_{name}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        return Reply.json(chat_completion(None, tool_calls=[tool_call], finish_reason="tool_calls"))

    fake_upstream.script(
        "chat/completions",
        call("sys_write", {"filename": "sub/note.txt", "content": "remember the milk"}),
        call("sys_read", {"filename": "sub/note.txt"}),
        call("sys_read", {"filename": "../../../etc/hostname"}),
        Reply.json(chat_completion("The note says: remember the milk")),
    )

    ran = xapi(tools_server, "POST", "tools/run", {"contents": notes, "input": "go"})

    assert ran.status_code == 200, ran.text
    assert ran.json()["output"] == "The note says: remember the milk"
    requests_made = [r.json() for r in fake_upstream.requests if r.path == "chat/completions"]
    assert requests_made[0]["model"] == "gpt-4o-mini"  # CLICKY_CHATS_TOOL_MODEL's default: no run to take it from
    assert requests_made[0]["messages"][1] == {"role": "user", "content": "go"}
    results = [m["content"] for m in requests_made[-1]["messages"] if m["role"] == "tool"]
    assert results[0] == "Wrote sub/note.txt"
    assert results[1] == "remember the milk"
    assert results[2].startswith("The tool sys.read failed:") and "working directory" in results[2]


def test_run_a_tool_with_a_stream(tools_server: ServerProcess) -> None:
    response = requests.post(
        f"{tools_server.url}/v1/rubra/x/tools/run",
        json={"contents": ECHO, "input": {"input": "streamed"}, "stream": True},
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        stream=True,
        timeout=(5, 20),
    )
    events = read_sse(response)

    assert [data["type"] for _name, data in events[:-1]] == ["callStart", "callFinish"]
    assert events[-1][1] == "[DONE]"
    start, finish = events[0][1], events[1][1]
    assert start["tool"] == "echo" and json.loads(start["input"]) == {"input": "streamed"}
    assert finish["output"] == "streamed" and finish["time"] >= start["time"]


def test_run_an_mcp_tool(tools_server: ServerProcess, mcp_site: McpSite) -> None:
    made = create(tools_server, type="mcp", server_url=mcp_site.url, server_label="calc")
    assert made["name"] == "calc" and made["server_url"] == mcp_site.url and made["allowed_tools"] is None
    assert "4 tools" in made["description"]

    ran = xapi(
        tools_server, "POST", "tools/run", {"tool_id": made["id"], "subtool": "total", "input": {"numbers": [2, 3]}}
    )

    assert ran.status_code == 200, ran.text
    assert ran.json()["output"] == "total=5"
    missing = assert_envelope(xapi(tools_server, "POST", "tools/run", {"tool_id": made["id"]}), 400)
    assert missing["param"] == "subtool"
    limited = xapi(tools_server, "POST", f"tools/{made['id']}", {"allowed_tools": ["ping"]})
    assert limited.status_code == 200 and limited.json()["allowed_tools"] == ["ping"]
    assert "1 tools" in limited.json()["description"]
    unknown = xapi(
        tools_server, "POST", "tools", {"type": "mcp", "server_url": mcp_site.url, "allowed_tools": ["ping", "pong"]}
    )
    error = assert_envelope(unknown, 400)
    assert error["param"] == "allowed_tools[1]" and "no tool 'pong'" in error["message"]


def test_a_tool_run_that_needs_confirmation(tools_server: ServerProcess) -> None:
    made = create(tools_server, contents=ECHO, requires_confirmation=True)

    held = xapi(tools_server, "POST", "tools/run", {"tool_id": made["id"], "input": {"input": "careful"}})
    assert held.status_code == 200 and held.json()["status"] == "requires_confirmation"
    assert held.json()["output"] is None
    run_id = held.json()["id"]

    approved = xapi(tools_server, "POST", f"tools/runs/{run_id}/confirm", {"confirmation": True})
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["output"]) == ("completed", "careful")
    again = assert_envelope(xapi(tools_server, "POST", f"tools/runs/{run_id}/confirm", {"confirmation": True}), 400)
    assert "not waiting for confirmation" in again["message"] and "completed" in again["message"]

    denied_run = xapi(tools_server, "POST", "tools/run", {"tool_id": made["id"], "input": {"input": "no"}}).json()
    denied = xapi(tools_server, "POST", f"tools/runs/{denied_run['id']}/confirm", {"confirmation": False})
    assert denied.status_code == 200
    assert (denied.json()["status"], denied.json()["output"]) == ("cancelled", "The user denied this tool call.")

    streamed_run = xapi(tools_server, "POST", "tools/run", {"tool_id": made["id"], "input": {"input": "live"}}).json()
    response = requests.post(
        f"{tools_server.url}/v1/rubra/x/tools/runs/{streamed_run['id']}/confirm",
        json={"confirmation": True, "stream": True},
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        stream=True,
        timeout=(5, 20),
    )
    events = read_sse(response)
    assert [data["type"] for _name, data in events[:-1]] == ["callConfirm", "callConfirm", "callStart", "callFinish"]
    assert events[1][1]["confirmed"] is True and events[3][1]["output"] == "live"

    other = xapi(tools_server, "POST", f"tools/runs/{streamed_run['id']}/confirm", {"confirmation": True}, key=BOB_KEY)
    assert_envelope(other, 404)
    assert_envelope(xapi(tools_server, "POST", "tools/runs/toolrun_nope/confirm", {"confirmation": True}), 404)
    not_bool = assert_envelope(xapi(tools_server, "POST", f"tools/runs/{run_id}/confirm", {"confirmation": "yes"}), 400)
    assert not_bool["param"] == "confirmation"


# --- the flat paths of the later Rubra UI -------------------------------------------------------


def flat(server: ServerProcess, method: str, path: str, body: Any = None) -> requests.Response:
    """The later Rubra UI calls these with a bare fetch: no Authorization header at all, so only
    a server without keys answers it; here alice's key stands in for the open project."""
    return xapi(server, method, path, body, prefix="/v1")


def test_the_flat_x_tools_paths(tools_server: ServerProcess, site: Site) -> None:
    site.text("/files/flat.gpt", "Name: flat\nDescription: From the flat path\n\n#!sys.echo\n")
    made = flat(tools_server, "POST", "x-tools", {"url": site.url("/files/flat.gpt"), "env_vars": ["K=V=W"]})
    assert made.status_code == 200, made.text
    tool = made.json()
    assert (tool["name"], tool["env_vars"]) == ("flat", ["K=V=W"])

    listed = flat(tools_server, "GET", "x-tools").json()
    assert tool["id"] in [t["id"] for t in listed["data"]]
    assert {"id", "name", "description", "url"} <= set(listed["data"][0])
    assert flat(tools_server, "GET", f"x-tools/{tool['id']}").json() == tool
    assert flat(tools_server, "POST", f"x-tools/{tool['id']}", {"requires_confirmation": True}).json()[
        "requires_confirmation"
    ]
    put = flat(tools_server, "PUT", f"x-tools/{tool['id']}", {"env_vars": ["K=2"]})  # the UI's edit route uses PUT
    assert put.status_code == 200 and put.json()["env_vars"] == ["K=2"]
    assert flat(tools_server, "POST", "x-tools/inspect", {"contents": ECHO}).json()["entry"] == "echo"
    ran = flat(tools_server, "POST", "x-tools/run", {"contents": ECHO, "input": {"input": "flat run"}})
    assert ran.json()["output"] == "flat run"
    held = flat(tools_server, "POST", "x-tools/run", {"tool_id": tool["id"], "input": {"input": "x"}}).json()
    confirmed = flat(tools_server, "POST", f"x-tools/runs/{held['id']}/confirm", {"confirmation": True})
    assert confirmed.json()["status"] == "completed"
    # The /v1/rubra tier serves the flat paths too, and both are one store.
    assert xapi(tools_server, "GET", f"x-tools/{tool['id']}", prefix="/v1/rubra").status_code == 200
    assert flat(tools_server, "DELETE", f"x-tools/{tool['id']}").json()["deleted"] is True
    assert xapi(tools_server, "GET", f"tools/{tool['id']}").status_code == 404


# --- bad input ---------------------------------------------------------------------------------


def test_a_tool_file_that_cannot_be_parsed_names_the_line(tools_server: ServerProcess) -> None:
    error = assert_envelope(
        xapi(
            tools_server,
            "POST",
            "tools",
            {"contents": "Name: a\nDescription: fine\nArgs: no colon here\n\n#!sys.echo\n"},
        ),
        400,
    )
    assert error["param"] == "contents" and "line 3" in error["message"]
    error = assert_envelope(
        xapi(tools_server, "POST", "tools", {"contents": ECHO + "---\nName: echo\n\n#!sys.echo\n"}), 400
    )
    assert "line 6" in error["message"] and "defined twice" in error["message"]
    error = assert_envelope(xapi(tools_server, "POST", "tools", {"contents": ECHO, "subtool": "nope"}), 400)
    assert error["param"] == "subtool" and "no tool named 'nope'" in error["message"]
    error = assert_envelope(xapi(tools_server, "POST", "tools", {"contents": "Name: a\nTools: ghost\n\nGo.\n"}), 400)
    assert "line 2" in error["message"] and "'ghost'" in error["message"]
    # A file that cannot be used is refused on change too, and the stored tool stays as it was.
    made = create(tools_server, contents=ECHO)
    error = assert_envelope(
        xapi(tools_server, "POST", f"tools/{made['id']}", {"contents": "Name: a\nTemperature: x\n\nx"}), 400
    )
    assert "line 2" in error["message"]
    assert xapi(tools_server, "GET", f"tools/{made['id']}").json() == made
    assert_envelope(xapi(tools_server, "POST", f"tools/{made['id']}", {"subtool": "nope"}), 400)


@pytest.mark.parametrize(
    ("env_vars", "param"),
    [
        (["NOEQUALS"], "env_vars[0]"),
        (["A=1", "1BAD=x"], "env_vars[1]"),
        (["=value"], "env_vars[0]"),
        ([7], "env_vars[0]"),
        ("A=1", "env_vars"),
    ],
)
def test_env_vars_must_be_key_equals_value(tools_server: ServerProcess, env_vars: Any, param: str) -> None:
    error = assert_envelope(xapi(tools_server, "POST", "tools", {"contents": ECHO, "env_vars": env_vars}), 400)
    assert error["param"] == param


def test_urls_that_fail_or_are_not_tool_files(tools_server: ServerProcess, site: Site) -> None:
    site.text("/files/page.html", "<!DOCTYPE html><html><body>Tools!</body></html>", content_type="text/html")
    site.text("/files/sneaky.gpt", "<html><body>not a tool</body></html>", content_type="text/plain")
    site.text("/files/gone.gpt", "gone", status=410)

    for url, complaint in [
        (site.url("/files/page.html"), "HTML page"),
        (site.url("/files/sneaky.gpt"), "HTML page"),
        (site.url("/files/gone.gpt"), "answered 410"),
        (site.url("/files/missing.gpt"), "answered 404"),
        (closed_port_url("/tool.gpt"), "could not be fetched"),
        ("ftp://127.0.0.1/tool.gpt", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
    ]:
        error = assert_envelope(xapi(tools_server, "POST", "tools", {"url": url}), 400)
        assert error["param"] == "url" and complaint in error["message"], (url, error)
    retool = create(tools_server, url=site.url("/files/gone.gpt").replace("gone", "fine"), contents=ECHO)
    refused = assert_envelope(xapi(tools_server, "POST", f"tools/{retool['id']}", {"retool": True}), 400)
    assert "answered 404" in refused["message"]


def test_a_tool_file_over_the_size_limit(tools_server: ServerProcess, site: Site) -> None:
    site.text("/files/huge.gpt", "Name: huge\n\n" + "x" * (1024 * 1024))
    error = assert_envelope(xapi(tools_server, "POST", "tools", {"url": site.url("/files/huge.gpt")}), 400)
    assert "larger than 1048576 bytes" in error["message"]
    error = assert_envelope(xapi(tools_server, "POST", "tools", {"contents": "x" * (1024 * 1024 + 1)}), 400)
    assert error["param"] == "contents"


def test_mcp_servers_that_are_down(tools_server: ServerProcess) -> None:
    error = assert_envelope(
        xapi(
            tools_server, "POST", "tools", {"type": "mcp", "server_url": closed_port_url("/mcp"), "server_label": "x"}
        ),
        400,
    )
    assert error["param"] == "server_url" and "cannot list the tools" in error["message"]
    error = assert_envelope(xapi(tools_server, "POST", "tools", {"type": "mcp"}), 400)
    assert error["param"] == "server_url"


def test_other_bad_bodies(tools_server: ServerProcess) -> None:
    assert assert_envelope(xapi(tools_server, "POST", "tools", {}), 400)["param"] == "contents"
    assert (
        assert_envelope(xapi(tools_server, "POST", "tools", {"contents": ECHO, "type": "shell"}), 400)["param"]
        == "type"
    )
    assert assert_envelope(xapi(tools_server, "POST", "tools", {"contents": 5}), 400)["param"] == "contents"
    assert (
        assert_envelope(xapi(tools_server, "POST", "tools", {"contents": ECHO, "requires_confirmation": "yes"}), 400)[
            "param"
        ]
        == "requires_confirmation"
    )
    raw = requests.post(
        f"{tools_server.url}/v1/rubra/x/tools",
        data=b"{not json",
        headers={"Authorization": f"Bearer {ALICE_KEY}", "Content-Type": "application/json"},
        timeout=20,
    )
    assert_envelope(raw, 400)
    assert_envelope(xapi(tools_server, "POST", "tools", [ECHO]), 400)
    assert (
        assert_envelope(xapi(tools_server, "POST", "tools/run", {"contents": ECHO, "input": [1, 2]}), 400)["param"]
        == "input"
    )
    assert assert_envelope(xapi(tools_server, "POST", "tools/run", {"tool_id": "tool_nope"}), 404)["param"] == "tool_id"
    assert_envelope(xapi(tools_server, "POST", "tools/run", {}), 400)


def test_unknown_tools_in_an_assistant_are_refused(tools_server: ServerProcess) -> None:
    made = create(tools_server, contents=ECHO)
    with make_client(tools_server, tier="/v1/rubra") as rubra:
        kept = rubra.beta.assistants.create(
            model=MODEL, extra_body={"gptscript_tools": [made["id"], "internet_search"]}
        )
        assert kept.model_extra is not None and kept.model_extra["gptscript_tools"] == [made["id"], "internet_search"]
    response = xapi(
        tools_server,
        "POST",
        "assistants",
        {"model": MODEL, "gptscript_tools": [made["id"], "tool_nope"]},
        prefix="/v1/rubra",
    )
    # An id naming nothing is a missing object, as OpenAI answers for unknown ids in a body.
    error = assert_envelope(response, 404)
    assert error["param"] == "gptscript_tools[1]" and "tool_nope" in error["message"]
    theirs = create_for(tools_server, BOB_KEY)
    error = assert_envelope(
        xapi(tools_server, "POST", "assistants", {"model": MODEL, "gptscript_tools": [theirs]}, prefix="/v1/rubra"), 404
    )
    assert error["param"] == "gptscript_tools[0]"


def create_for(server: ServerProcess, key: str) -> str:
    response = xapi(server, "POST", "tools", {"contents": ECHO}, key=key)
    assert response.status_code == 200, response.text
    return response.json()["id"]
