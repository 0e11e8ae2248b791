"""The Rubra UI's contract with the API server (rubra-ui-contract.md §3 rows 1-19 and §4), replayed
call by call for both UI revisions: 45dcd03 (flat `/v1` and `x-` paths, gptscript tools as
`{type: "gptscript", "x-tool": id}` items) and 71b3b8d (`/v1/rubra` and `/v1/rubra/x`, a separate
`gptscript_tools` list).

The UI's server makes two kinds of calls, and so do these tests:

* "oa": the `openai` npm client 4.28.4, which sends a bearer key, `OpenAI-Beta: assistants=v1`, an
  empty `OpenAI-Organization` and `Content-Type: application/json` even on bodiless GETs and
  DELETEs. Here the official Python SDK with those headers: it sets `assistants=v2` on every beta
  call over its default_headers, so a request hook puts v1 back (and adds the other two).
* "raw": a bare fetch with no Authorization header at all, and no OpenAI-Beta either: plain
  `requests` here.

The server runs with no API keys (open mode, which the raw calls need) and
CLICKY_CHATS_DEFAULT_ASSISTANTS_VERSION=v1, since the raw calls on /v1 name no dialect.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import orjson
import pytest
import requests

from tests.conftest import running_stack
from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import Database, ServerProcess
from tests.runs_support import answer, tool_call_answer, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

UI_KEY = "sk-nuxt-api-key"  # NUXT_API_KEY: the openai client needs one, and any value will do
TERMINAL = ("completed", "failed", "cancelled", "expired")  # where the UI stops polling
POLL_S = 0.5  # the UI polls every 500 ms, the first time 500 ms after creating the run
WEATHER_TOOL = b"""Name: weather
Description: Tells the weather in a city
Args: city: the city

Say that it is sunny in ${city}.
"""
HANDBOOK = b"# Office handbook\n\nThe office cat is named Biscuit and sleeps on the printer every afternoon.\n"


@dataclass(frozen=True)
class Revision:
    name: str
    assistants: str  # rows 2, 4, 5 (raw)
    x_threads: str  # row 7 (raw)
    x_tools: str  # rows 17-19 (raw)
    tools_as_items: bool

    def encode_tools(self, names: list[str], code_interpreter: bool) -> dict[str, Any]:
        """The form's tool choices as the revision sends them (contract §4.3)."""
        code = [{"type": "code_interpreter"}] if code_interpreter else []
        if self.tools_as_items:
            return {"tools": [{"type": "gptscript", "x-tool": name} for name in names] + code}
        return {"tools": code, "gptscript_tools": names}

    def decode_tools(self, assistant: dict[str, Any]) -> list[str]:
        """The form's tool choices read back: `x["x-tool"] || x.type`, without retrieval."""
        names = [tool.get("x-tool") or tool["type"] for tool in assistant["tools"] if tool["type"] != "retrieval"]
        if not self.tools_as_items:
            names += assistant["gptscript_tools"]
        return names


FLAT = Revision("45dcd03", "/v1/assistants", "/v1/x-threads", "/v1/x-tools", tools_as_items=True)
RUBRA = Revision("71b3b8d", "/v1/rubra/assistants", "/v1/rubra/x/threads", "/v1/rubra/x/tools", tools_as_items=False)
REVISIONS = [pytest.param(FLAT, id=FLAT.name), pytest.param(RUBRA, id=RUBRA.name)]


@dataclass
class Ui:
    """The UI server's two ways of calling the API, recording what they sent."""

    url: str
    sent: list[httpx2.Request] = field(default_factory=list)
    raw_sent: list[requests.PreparedRequest] = field(default_factory=list)

    def _hook(self, request: httpx2.Request) -> None:
        if request.url.path.startswith(("/v1/assistants", "/v1/threads")):
            request.headers["OpenAI-Beta"] = "assistants=v1"
        request.headers["OpenAI-Organization"] = ""
        if request.method in ("GET", "DELETE"):
            request.headers["Content-Type"] = "application/json"
        self.sent.append(request)

    def oa(self, *, strict: bool = True) -> openai.OpenAI:
        """The openai client. Loose (strict=False) for assistants and runs: v1's `retrieval` and
        gptscript tools are outside the SDK's v2 tool union, and a v1 run has no
        `parallel_tool_calls`, which the SDK's Run requires."""
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=UI_KEY,
            max_retries=0,
            timeout=20,
            default_headers={"OpenAI-Beta": "assistants=v1"},
            http_client=httpx2.Client(event_hooks={"request": [self._hook]}),
            _strict_response_validation=strict,
        )

    def raw(self, method: str, path: str, payload: Any = None, **headers: str) -> requests.Response:
        """apiFetch: `Accept: application/json`, Content-Type only with a body, no Authorization."""
        with requests.Session() as session:
            session.trust_env = False  # no ~/.netrc credentials sneaking in
            sent = {"Accept": "application/json", **headers}
            data = None
            if payload is not None:
                sent["Content-Type"] = "application/json"
                data = orjson.dumps(payload)
            prepared = session.prepare_request(requests.Request(method, self.url + path, data=data, headers=sent))
            assert "Authorization" not in prepared.headers
            self.raw_sent.append(prepared)
            return session.send(prepared, timeout=20)

    def raw_json(self, method: str, path: str, payload: Any = None) -> Any:
        response = self.raw(method, path, payload)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def raw_list_all(self, path: str) -> list[dict[str, Any]]:
        """Rows 2 and 7: while `object == "list"` and `has_more`, ask again with after=<last_id>."""
        page = self.raw_json("GET", path)
        items = list(page["data"])
        while page["object"] == "list" and page["has_more"]:
            page = self.raw_json("GET", f"{path}?after={page['last_id']}")
            items += page["data"]
        return items


def json_of(response: Any) -> dict[str, Any]:
    return response.http_response.json()  # type: ignore[no-any-return]


class ToolFiles(http.server.BaseHTTPRequestHandler):
    """Serves the tool file that "Add tool from a URL" names."""

    def do_GET(self) -> None:
        if self.path != "/weather.gpt":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(WEATHER_TOOL)))
        self.end_headers()
        self.wfile.write(WEATHER_TOOL)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def tool_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ToolFiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/weather.gpt"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def ui_server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    with running_stack(
        database,
        fake_upstream.base_url,
        {
            "CLICKY_CHATS_API_KEYS": "",  # open mode: the raw calls carry no key
            "CLICKY_CHATS_DEFAULT_ASSISTANTS_VERSION": "v1",
            "CLICKY_CHATS_EMBEDDING_MODEL": "fake-bow-embedder",
            "CLICKY_CHATS_TOOL_ALLOWED_HOSTS": "127.0.0.1",  # the tool file is served on loopback
            "CLICKY_CHATS_MODEL_BACKOFF_S": "0.05",
        },
    ) as proc:
        yield proc


@pytest.fixture
def ui(ui_server: ServerProcess) -> Ui:
    return Ui(ui_server.url)


def poll(client: openai.OpenAI, thread_id: str, run_id: str, status: str) -> dict[str, Any]:
    """Row 10: the UI's poll loop (no timeout in the UI; a deadline here)."""
    deadline = time.monotonic() + 20
    run: dict[str, Any] = {"status": status}
    while run["status"] not in TERMINAL:
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']}"
        time.sleep(POLL_S)
        run = json_of(client.beta.threads.runs.with_raw_response.retrieve(run_id, thread_id=thread_id))
    return run


def list_messages(client: openai.OpenAI, thread_id: str) -> list[Any]:
    """Row 13: no query string; while has_more, ask again after the id of the last item."""
    page = client.beta.threads.messages.list(thread_id)
    messages = list(page.data)
    while page.has_more:
        page = client.beta.threads.messages.list(thread_id, after=page.data[-1].id)
        messages += page.data
    return messages


def run_to_the_end(loose: openai.OpenAI, strict: openai.OpenAI, thread_id: str, assistant_id: str) -> list[Any]:
    """Rows 9, 10 and 13: create the run with only assistant_id, poll it, list the messages once."""
    created = json_of(loose.beta.threads.runs.with_raw_response.create(thread_id, assistant_id=assistant_id))
    assert created["id"].startswith("run_") and created["status"] in ("queued", "in_progress", *TERMINAL)
    ended = poll(loose, thread_id, created["id"], created["status"])
    assert ended["status"] == "completed", ended
    # Right after `completed` the UI lists the messages once: the reply must be there already.
    messages = list_messages(strict, thread_id)
    assert messages[0].role == "assistant" and messages[0].run_id == created["id"]
    assert messages[0].content and messages[0].content[0].type == "text" and messages[0].content[0].text.value
    return messages


# --- the calls -------------------------------------------------------------------------------------


def test_models_and_files(ui: Ui) -> None:
    with ui.oa() as oa:
        models = oa.models.list()  # row 1: data[].id; not paginated
        ids = [model.id for model in models.data]
        assert "fake-model" in ids
        uploaded = oa.files.create(file=("handbook.md", HANDBOOK), purpose="assistants")  # row 16
        assert uploaded.id.startswith("file-")
        listed = {item.id: item for item in oa.files.list().data}  # row 15: id, filename, bytes
        assert (listed[uploaded.id].filename, listed[uploaded.id].bytes) == ("handbook.md", len(HANDBOOK))
        oa.files.delete(uploaded.id)  # row 20, reachable only by calling the route directly
        assert uploaded.id not in {item.id for item in oa.files.list().data}


@pytest.mark.parametrize("rev", REVISIONS)
def test_a_ui_session_call_by_call(ui: Ui, rev: Revision, tool_url: str, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(
        "chat/completions",
        Reply.stream(answer("Hello ", "from the assistant.")),
        Reply.stream(answer("Second ", "answer.")),
    )
    with ui.oa() as oa, ui.oa(strict=False) as loose:
        # Rows 18 and 17: add a tool from a URL (only the status is read), then the Tools page.
        added = ui.raw("POST", rev.x_tools, {"url": tool_url, "env_vars": ["UNITS=metric"]})
        assert added.status_code == 200, added.text
        tools_page = ui.raw_json("GET", rev.x_tools)  # only the first page
        tool = next(item for item in tools_page["data"] if item["url"] == tool_url)
        assert (tool["name"], tool["description"]) == ("weather", "Tells the weather in a city")
        assert tool["id"].startswith("tool_")

        handbook = oa.files.create(file=("handbook.md", HANDBOOK), purpose="assistants").id  # row 16

        # Row 4: create; the UI navigates to the id.
        form = {
            "name": f"Helper {rev.name}",
            "model": "fake-model",
            "description": "",
            "instructions": "Be helpful.",
            "file_ids": [handbook],
            "metadata": {},
            **rev.encode_tools(["internet_search", tool["id"]], code_interpreter=True),
        }
        created = ui.raw_json("POST", rev.assistants, form)
        assistant_id = created["id"]
        assert assistant_id.startswith("asst_")

        # Row 2: the left nav's list, paged by last_id; the edit form's fields.
        listed = next(item for item in ui.raw_list_all(rev.assistants) if item["id"] == assistant_id)
        assert (listed["name"], listed["model"], listed["instructions"]) == (form["name"], "fake-model", "Be helpful.")
        assert (listed["description"], listed["metadata"], listed["file_ids"]) == ("", {}, [handbook])
        assert sorted(rev.decode_tools(listed)) == sorted(["internet_search", tool["id"], "code_interpreter"])
        assert {"type": "retrieval"} in listed["tools"]  # added by the server for the file_ids

        # Row 3: the same assistant by direct link, through the openai client on /v1.
        direct = json_of(loose.beta.assistants.with_raw_response.retrieve(assistant_id))
        assert (direct["id"], direct["file_ids"], direct["description"]) == (assistant_id, [handbook], "")
        assert {"type": "retrieval"} in direct["tools"]
        if rev.tools_as_items:
            assert FLAT.decode_tools(direct) == rev.decode_tools(listed)

        # Row 5: save the whole object as last seen, minus id/object/created_at, tools re-encoded and
        # any extra field echoed. The form never sends retrieval: file_ids alone decide it.
        edited = {key: value for key, value in listed.items() if key not in ("id", "object", "created_at")}
        names = [name for name in rev.decode_tools(listed) if name != "code_interpreter"]
        edited.update(rev.encode_tools(names, code_interpreter=True), name="Renamed", file_ids=[])
        edited["x-extension"] = {"echoed": True}
        saved = ui.raw_json("POST", f"{rev.assistants}/{assistant_id}", edited)
        assert (saved["name"], saved["file_ids"]) == ("Renamed", [])
        assert {"type": "retrieval"} not in saved["tools"]
        assert sorted(rev.decode_tools(saved)) == sorted(rev.decode_tools(listed))
        edited = {key: value for key, value in saved.items() if key not in ("id", "object", "created_at")}
        edited.update(rev.encode_tools(names, code_interpreter=False), file_ids=[handbook])
        saved = ui.raw_json("POST", f"{rev.assistants}/{assistant_id}", edited)
        assert saved["file_ids"] == [handbook] and {"type": "retrieval"} in saved["tools"]
        assert sorted(rev.decode_tools(saved)) == sorted(names)

        # Row 8: the first message to the assistant.
        thread = oa.beta.threads.create(
            messages=[{"content": "Hi there", "role": "user"}], metadata={"assistantId": assistant_id}
        )
        assert thread.metadata == {"assistantId": assistant_id}
        assert len(thread.id.split("_")[1][:8]) == 8  # the thread header's label
        # Rows 9, 10, 13.
        messages = run_to_the_end(loose, oa, thread.id, assistant_id)
        assert [(m.role, m.content[0].text.value) for m in messages] == [  # type: ignore[union-attr]
            ("assistant", "Hello from the assistant."),
            ("user", "Hi there"),
        ]
        # Row 12, then 9, 10 and 13 again.
        oa.beta.threads.messages.create(thread.id, content="Once more", role="user")
        messages = run_to_the_end(loose, oa, thread.id, assistant_id)
        assert [m.role for m in messages] == ["assistant", "user", "assistant", "user"]  # newest first
        # Row 11: open the thread.
        opened = oa.beta.threads.retrieve(thread.id)
        assert (opened.id, opened.created_at, opened.metadata) == (thread.id, thread.created_at, thread.metadata)

        # Row 8 with an empty text: no messages at all.
        empty = oa.beta.threads.create(messages=[], metadata={"assistantId": assistant_id})
        assert list_messages(oa, empty.id) == []
        # Row 7: the thread list, grouped by created_at, linked by metadata.assistantId.
        threads = {item["id"]: item for item in ui.raw_list_all(rev.x_threads)}
        assert threads[thread.id]["metadata"] == {"assistantId": assistant_id}
        assert threads[thread.id]["created_at"] == thread.created_at and empty.id in threads

        # Row 14: "Clear history" deletes up to 4 at once.
        extra = [oa.beta.threads.create(metadata={"assistantId": assistant_id}) for _ in range(2)]
        doomed = [thread.id, empty.id, *(t.id for t in extra)]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda thread_id: oa.beta.threads.delete(thread_id), doomed))
        assert all(result.deleted for result in results)
        assert not set(doomed) & {item["id"] for item in ui.raw_list_all(rev.x_threads)}

        # Row 19: delete the tool. The assistant still names it, and saving the form as last seen
        # still works (a run leaves the missing tool out).
        assert ui.raw_json("DELETE", f"{rev.x_tools}/{tool['id']}")["deleted"] is True
        assert tool["id"] not in {item["id"] for item in ui.raw_json("GET", rev.x_tools)["data"]}
        last_seen = next(item for item in ui.raw_list_all(rev.assistants) if item["id"] == assistant_id)
        edited = {key: value for key, value in last_seen.items() if key not in ("id", "object", "created_at")}
        edited.update(rev.encode_tools(rev.decode_tools(last_seen), code_interpreter=False), name="After the tool")
        assert ui.raw_json("POST", f"{rev.assistants}/{assistant_id}", edited)["name"] == "After the tool"

        # Row 6: remove the assistant.
        assert oa.beta.assistants.delete(assistant_id).deleted
        assert assistant_id not in {item["id"] for item in ui.raw_list_all(rev.assistants)}

    # What the UI sent: every beta call as v1, bodiless GET/DELETE with a JSON content type.
    beta = [r for r in ui.sent if r.url.path.startswith(("/v1/assistants", "/v1/threads"))]
    assert beta and all(r.headers["OpenAI-Beta"] == "assistants=v1" for r in beta)
    bodiless = [r for r in ui.sent if r.method in ("GET", "DELETE")]
    assert bodiless and all(r.headers["Content-Type"] == "application/json" and not r.content for r in bodiless)
    assert all(r.headers["OpenAI-Organization"] == "" for r in ui.sent)


@pytest.mark.parametrize("rev", REVISIONS)
def test_lists_page_by_last_id(ui: Ui, rev: Revision) -> None:
    marker = f"paging-{rev.name}-{time.monotonic_ns()}"
    made = [ui.raw_json("POST", rev.assistants, {"model": "fake-model", "name": marker})["id"] for _ in range(23)]
    walked = [item["id"] for item in ui.raw_list_all(rev.assistants) if item["name"] == marker]
    assert walked == list(reversed(made))  # newest first, each once, across pages of 20
    threads = [ui.raw_json("POST", "/v1/threads", {"metadata": {"assistantId": made[0]}})["id"] for _ in range(22)]
    listed = [item["id"] for item in ui.raw_list_all(rev.x_threads) if item["id"] in threads]
    assert listed == list(reversed(threads))


def test_a_failed_run_shows_its_error(ui: Ui, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("chat/completions", Reply.error(400, "The model refused this request."))
    with ui.oa() as oa, ui.oa(strict=False) as loose:
        assistant_id = ui.raw_json("POST", "/v1/assistants", {"model": "fake-model"})["id"]
        thread = oa.beta.threads.create(
            messages=[{"content": "Hi", "role": "user"}], metadata={"assistantId": assistant_id}
        )
        run = json_of(loose.beta.threads.runs.with_raw_response.create(thread.id, assistant_id=assistant_id))
        ended = poll(loose, thread.id, run["id"], run["status"])
    assert ended["status"] == "failed" and ended["last_error"]["message"]  # shown in a toast


def test_protocol_details(ui: Ui) -> None:
    # Bodiless GET and DELETE with Content-Type: application/json, as the openai client sends them.
    assert ui.raw("GET", "/v1/assistants", **{"Content-Type": "application/json"}).status_code == 200
    assistant_id = ui.raw_json("POST", "/v1/assistants", {"model": "fake-model"})["id"]
    gone = ui.raw("DELETE", f"/v1/assistants/{assistant_id}", **{"Content-Type": "application/json"})
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    # An empty OpenAI-Organization header, and the Host the UI's NUXT_API names.
    for host in ("localhost:8080", "127.0.0.1:8080"):
        answered = ui.raw("GET", "/v1/x-threads", **{"OpenAI-Organization": "", "Host": host})
        assert answered.status_code == 200 and answered.json()["object"] == "list"
    # Any bearer key works in open mode too.
    keyed = requests.get(ui.url + "/v1/models", headers={"Authorization": "Bearer anything"}, timeout=20)
    assert keyed.status_code == 200


@pytest.mark.parametrize("rev", REVISIONS)
def test_the_server_runs_the_ui_assistants_tools_itself(
    ui: Ui, ui_server: ServerProcess, rev: Revision, fake_upstream: FakeUpstream
) -> None:
    """§4.2: retrieval over the assistant's files and the gptscript builtins run inside the server
    (no requires_action, no confirmation), and the run completes."""
    with ui.oa() as oa, ui.oa(strict=False) as loose:
        handbook = oa.files.create(file=("handbook.md", HANDBOOK), purpose="assistants").id
        form = {"model": "fake-model", "file_ids": [handbook], **rev.encode_tools(["internet_search"], False)}
        assistant_id = ui.raw_json("POST", rev.assistants, form)["id"]
        store = ui_server.manage(
            "shell",
            "--no-imports",
            "-c",
            "from api_v1.models import VectorStoreFile; "
            f"print(VectorStoreFile.objects.get(file_id={handbook!r}).vector_store_id)",
        ).stdout.strip()

        def ingested() -> bool:
            status = ui_server.manage(
                "shell",
                "--no-imports",
                "-c",
                "from api_v1.models import VectorStoreFile; "
                f"print(VectorStoreFile.objects.get(vector_store_id={store!r}, file_id={handbook!r}).status)",
            ).stdout.strip()
            return status == "completed"

        wait_until(ingested, within_s=60, what="the handbook to be ingested")
        fake_upstream.script(
            "chat/completions",
            Reply.stream(
                tool_call_answer(
                    ("call_files", "file_search", ['{"query": "office cat"}']),
                    ("call_web", "internet_search", ['{"query": "cats"}']),
                )
            ),
            Reply.stream(answer("The cat is Biscuit.")),
        )
        thread = oa.beta.threads.create(
            messages=[{"content": "Who is the cat?", "role": "user"}], metadata={"assistantId": assistant_id}
        )
        messages = run_to_the_end(loose, oa, thread.id, assistant_id)
    assert messages[0].content[0].text.value.startswith("The cat is Biscuit.")  # type: ignore[union-attr]
    outputs = {
        m["tool_call_id"]: m["content"]
        for m in fake_upstream.last("chat/completions").json()["messages"]
        if m["role"] == "tool"
    }
    assert "Biscuit" in outputs["call_files"]
    assert "not configured" in outputs["call_web"]  # no CLICKY_CHATS_SEARCH_URL: the model hears why
