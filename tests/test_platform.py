"""The platform around the endpoints: keys and projects, the error envelope for every kind of bad
request, strict configuration, the service endpoints, the management commands and the /v1/rubra
tier. Everything runs against real server processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
import yaml

from tests.conftest import ALICE_KEY, DB_KIND, make_async_client, make_client
from tests.fake_upstream import FakeUpstream, chat_completion
from tests.harness import ROOT, Database, ServerProcess, connections_per_process, process_tree

SMALL_LIMIT = 2048
SMALL_FILE_LIMIT = 8192


def auth(key: str = ALICE_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_envelope(response: requests.Response, status: int, *, code: str | None = None) -> dict[str, object]:
    """An OpenAI error: the status, the four keys of the envelope, JSON, and a request id."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["x-request-id"].startswith("req_")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert error["code"] == code
    return error


def assert_healthy(server: ServerProcess) -> None:
    response = requests.get(server.url + "/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def manage_json(server: ServerProcess, code: str) -> object:
    """Runs `code` in `manage.py shell` against the server's database; it prints one JSON value."""
    return json.loads(server.manage("shell", "--no-imports", "-c", code).stdout)


def stored_completion_project(server: ServerProcess, completion_id: str) -> str:
    return str(
        manage_json(
            server,
            "import json; from api_v1.models import StoredChatCompletion as S; "
            f"print(json.dumps(S.objects.get(id={completion_id!r}).project))",
        )
    )


# --- keys and projects -----------------------------------------------------------------------------


def test_missing_key_is_401(server: ServerProcess) -> None:
    response = requests.post(server.url + "/v1/embeddings", json={"model": "m", "input": "x"}, timeout=10)
    error = assert_envelope(response, 401, code="invalid_api_key")
    assert "Authorization" in str(error["message"])


@pytest.mark.parametrize("header", ["Bearer sk-wrong", "Basic c2stYWxpY2UtdGVzdC1rZXk=", "Bearer ", ALICE_KEY])
def test_wrong_key_is_401(server: ServerProcess, header: str) -> None:
    response = requests.get(server.url + "/v1/models", headers={"Authorization": header}, timeout=10)
    assert_envelope(response, 401, code="invalid_api_key")


def test_wrong_key_through_the_sdk(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    with make_client(server, "sk-not-a-key") as sdk, pytest.raises(openai.AuthenticationError) as caught:
        sdk.embeddings.create(model="fake-embedder", input="x", encoding_format="float")
    assert caught.value.code == "invalid_api_key"
    assert fake_upstream.requests == []  # refused before anything reached the upstream


def test_createapikey_makes_a_working_key_for_its_project(server: ServerProcess) -> None:
    made = server.manage("createapikey", "--project", "carol", "--name", "carol's laptop")
    key = made.stdout.strip()
    assert key.startswith("sk-cc-") and len(key) > 30
    assert "\n" not in key

    with make_client(server, key) as carol:
        completion = carol.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], store=True
        )
        assert carol.chat.completions.retrieve(completion.id).id == completion.id
    with make_client(server) as alice, pytest.raises(openai.NotFoundError):
        alice.chat.completions.retrieve(completion.id)
    assert stored_completion_project(server, completion.id) == "carol"

    # Only a prefix and a digest are kept: nothing in the table can be used as the key.
    rows = manage_json(
        server,
        "import json; from clicky_chats.models import ApiKey; "
        "print(json.dumps(list(ApiKey.objects.filter(project='carol').values('prefix', 'digest', 'name'))))",
    )
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert key.startswith(row["prefix"]) and len(row["prefix"]) < len(key) // 2
    assert len(row["digest"]) == 64 and key not in row["digest"]
    assert row["name"] == "carol's laptop"
    assert key not in json.dumps(rows)


def test_createapikey_refuses_a_bad_project(server: ServerProcess) -> None:
    result = server.manage("createapikey", "--project", "x" * 65, check=False)
    assert result.returncode != 0
    assert "--project" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def open_server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """A server with no keys anywhere: the API is open as the project `default`."""
    proc = ServerProcess(database, fake_upstream.base_url)
    proc.env.pop("CLICKY_CHATS_API_KEYS", None)  # in case the calling shell has it set
    proc.start()
    yield proc
    proc.stop()


def test_open_server_takes_any_key_as_project_default(open_server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    with make_client(open_server, "sk-anything") as first, make_client(open_server, "another-bearer") as second:
        completion = first.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], store=True
        )
        assert second.chat.completions.retrieve(completion.id).id == completion.id
    assert stored_completion_project(open_server, completion.id) == "default"
    # Even no Authorization header at all is let in.
    response = requests.get(open_server.url + "/v1/models", timeout=10)
    assert response.status_code == 200


def test_open_server_warns_at_start_up(open_server: ServerProcess) -> None:
    log = open_server.log()
    assert "WARNING" in log and "no API keys are configured" in log


def test_server_with_keys_does_not_warn(server: ServerProcess) -> None:
    assert "no API keys are configured" not in server.log()


# --- errors in the envelope ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/chat", "/v1/embeddings/extra", "/v1/rubra/x/nope", "/nope", "/v2"])
def test_unknown_path_is_404(server: ServerProcess, path: str) -> None:
    response = requests.get(server.url + path, headers=auth(), timeout=10)
    error = assert_envelope(response, 404, code="unknown_url")
    assert path in str(error["message"])
    assert_healthy(server)


def test_missing_static_file_is_404_without_the_path_on_disk(server: ServerProcess) -> None:
    response = requests.get(server.url + "/static/admin/css/no-such-file.css", timeout=10)
    error = assert_envelope(response, 404, code="unknown_url")
    assert str(ROOT) not in str(error["message"]) and ".venv" not in str(error["message"])


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/openapi.yaml"), ("DELETE", "/v1/docs")])
def test_wrong_method_on_the_service_pages_is_a_json_405(server: ServerProcess, method: str, path: str) -> None:
    # These views render YAML and HTML; their errors are still the JSON envelope.
    response = requests.request(method, server.url + path, timeout=10)
    error = assert_envelope(response, 405)
    assert method in str(error["message"])


def test_trailing_slash_is_404_not_a_redirect(server: ServerProcess) -> None:
    response = requests.post(
        server.url + "/v1/embeddings/", headers=auth(), json={"model": "m", "input": "x"}, allow_redirects=False
    )
    assert_envelope(response, 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/embeddings", "POST"),
        ("GET", "/v1/audio/speech", "POST"),
        ("PUT", "/v1/images/edits", "POST"),
        ("POST", "/v1/models", "GET"),
        ("DELETE", "/v1/models/fake-model", "GET"),
    ],
)
def test_wrong_method_is_405(server: ServerProcess, method: str, path: str, allowed: str) -> None:
    response = requests.request(method, server.url + path, headers=auth(), timeout=10)
    error = assert_envelope(response, 405)
    assert method in str(error["message"])
    assert response.headers["Allow"] == allowed
    assert_healthy(server)


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/assistants/asst_%00x", "path"),
        ("/v1/rubra/threads/thread_%00/messages", "path"),
        ("/v1/threads/thread_%00/runs/run_x", "path"),
        ("/v1/rubra/x/tools/tool_%00", "path"),
        ("/v1/vector_stores?after=vs_%00", "after"),
        ("/v1/chat/completions?limit=5&model=gpt%00", "model"),
    ],
)
def test_nul_in_the_url_is_400(server: ServerProcess, path: str, param: str) -> None:
    # Found by tests/test_fuzz.py: PostgreSQL takes no NUL in a text parameter, so each of these
    # lookups was a 500 there (and a 404 on SQLite).
    response = requests.get(server.url + path, headers=auth(), timeout=10)
    error = assert_envelope(response, 400, code="invalid_value")
    assert error["param"] == param
    assert "NUL" in str(error["message"])
    assert_healthy(server)


def test_malformed_json_is_400(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    for body in (b'{"model": "m", "input": ', b"[1, 2]", b"", b'{"model": "\xff"}'):
        response = requests.post(
            server.url + "/v1/embeddings",
            headers={**auth(), "Content-Type": "application/json"},
            data=body,
            timeout=10,
        )
        assert_envelope(response, 400, code="invalid_json")
    assert fake_upstream.requests == []
    assert_healthy(server)


def test_wrong_content_type_is_415(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    as_text = requests.post(
        server.url + "/v1/embeddings",
        headers={**auth(), "Content-Type": "text/plain"},
        data='{"model": "m", "input": "x"}',
        timeout=10,
    )
    assert_envelope(as_text, 415, code="unsupported_media_type")
    as_form = requests.post(server.url + "/v1/moderations", headers=auth(), data={"input": "x"}, timeout=10)
    assert_envelope(as_form, 415, code="unsupported_media_type")
    # An upload endpoint wants multipart; JSON is refused before it reaches the upstream.
    as_json = requests.post(
        server.url + "/v1/audio/transcriptions", headers=auth(), json={"model": "whisper-1"}, timeout=10
    )
    assert_envelope(as_json, 415, code="unsupported_media_type")
    no_type = requests.post(server.url + "/v1/images/variations", headers=auth(), data=b"raw bytes", timeout=10)
    assert_envelope(no_type, 415, code="unsupported_media_type")
    assert fake_upstream.requests == []
    assert_healthy(server)


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        ("/v1/embeddings", {"model": "fake-embedder"}, "input", "missing_required_parameter"),
        ("/v1/embeddings", {"model": "fake-embedder", "input": 5}, "input", "invalid_type"),
        ("/v1/embeddings", {"model": "fake-embedder", "input": []}, "input", "invalid_type"),
        ("/v1/embeddings", {"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
        ("/v1/embeddings", {"model": "m", "input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
        ("/v1/completions", {"model": "m", "prompt": "x", "temperature": 3}, "temperature", "invalid_value"),
        ("/v1/completions", {"model": "m", "prompt": "x", "stream_options": {}}, "stream_options", "invalid_value"),
        ("/v1/moderations", {"model": "m"}, "input", "missing_required_parameter"),
        ("/v1/images/generations", {"prompt": "x", "n": 11}, "n", "invalid_value"),
        ("/v1/audio/speech", {"model": "tts-1", "input": "hi"}, "voice", "missing_required_parameter"),
        ("/v1/audio/speech", {"model": "tts-1", "input": "hi", "voice": "a", "speed": 9}, "speed", "invalid_value"),
    ],
)
def test_validation_error_is_400_with_param(
    server: ServerProcess, fake_upstream: FakeUpstream, path: str, body: dict[str, object], param: str, code: str
) -> None:
    response = requests.post(server.url + path, headers=auth(), json=body, timeout=10)
    error = assert_envelope(response, 400, code=code)
    assert error["param"] == param
    assert param in str(error["message"])
    assert fake_upstream.requests == []


def test_validation_error_through_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
    assert caught.value.param == "input"
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_unknown_fields_are_passed_on(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    client.embeddings.create(
        model="fake-embedder",
        input="x",
        encoding_format="float",
        extra_body={"truncate_prompt_tokens": 512, "x_custom": {"nested": [1, 2]}},
    )
    sent = fake_upstream.last("embeddings").json()
    assert sent["truncate_prompt_tokens"] == 512 and sent["x_custom"] == {"nested": [1, 2]}


@pytest.fixture(scope="module")
def small_limit_server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        database,
        fake_upstream.base_url,
        env={
            "CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}",
            "CLICKY_CHATS_MAX_REQUEST_BYTES": str(SMALL_LIMIT),
            "CLICKY_CHATS_MAX_FILE_BYTES": str(SMALL_FILE_LIMIT),
        },
    )
    proc.start()
    yield proc
    proc.stop()


def test_body_over_the_limit_is_413(small_limit_server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    url = small_limit_server.url
    big = {"model": "fake-embedder", "input": "x" * SMALL_LIMIT, "encoding_format": "float"}
    declared = requests.post(url + "/v1/embeddings", headers=auth(), json=big, timeout=10)
    error = assert_envelope(declared, 413, code="request_too_large")
    assert str(SMALL_LIMIT) in str(error["message"])

    # Sent chunked, with no Content-Length to refuse it by, it is still cut off at the limit.
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "fake-embedder", "input": "'
        for _ in range(64):
            yield b"y" * 1024
        yield b'"}'

    chunked = requests.post(
        url + "/v1/embeddings", headers={**auth(), "Content-Type": "application/json"}, data=chunks(), timeout=10
    )
    assert_envelope(chunked, 413, code="request_too_large")

    upload = requests.post(
        url + "/v1/audio/transcriptions",
        headers=auth(),
        files={"file": ("a.wav", b"\x00" * SMALL_LIMIT * 2, "audio/wav")},
        data={"model": "whisper-1"},
        timeout=10,
    )
    assert_envelope(upload, 413, code="request_too_large")
    assert fake_upstream.requests == []

    # The limit refuses, it does not break: the same server still answers what fits.
    assert_healthy(small_limit_server)
    with make_client(small_limit_server) as sdk:
        small = sdk.embeddings.create(model="fake-embedder", input="fits", encoding_format="float")
    assert len(small.data) == 1


def raw_http_answer(server: ServerProcess, request_head: bytes, body_start: bytes) -> tuple[int, dict[str, object]]:
    """Sends a request head and only the start of its body, then reads the answer: proof that the
    server answered without waiting for (or reading) the rest."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request_head + body_start)
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"\r\nx-request-id: req_" in head.lower()
    return status, json.loads(body)


def test_declared_body_over_the_limit_is_refused_before_it_is_sent(small_limit_server: ServerProcess) -> None:
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + ALICE_KEY.encode() + b"\r\nContent-Length: 1000000000\r\n\r\n"
    )
    status, body = raw_http_answer(small_limit_server, head, b'{"model": "m", "input": "')
    assert status == 413
    assert body["error"]["code"] == "request_too_large"  # type: ignore[index]
    assert_healthy(small_limit_server)


def test_chunked_body_is_cut_off_at_the_limit(small_limit_server: ServerProcess) -> None:
    head = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + ALICE_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 1000
    # Over the limit, and never finished: the answer cannot come from reading to the end.
    status, body = raw_http_answer(small_limit_server, head, (b"3e8\r\n" + piece + b"\r\n") * 3)
    assert status == 413
    assert body["error"]["code"] == "request_too_large"  # type: ignore[index]
    assert_healthy(small_limit_server)


@pytest.mark.parametrize("target", ["files", "rubra files", "upload parts"])
def test_file_uploads_have_the_file_size_limit(small_limit_server: ServerProcess, target: str) -> None:
    path, field = {"files": ("/v1/files", "file"), "rubra files": ("/v1/rubra/files", "file")}.get(target, ("", "data"))
    if target == "upload parts":
        made = requests.post(
            small_limit_server.url + "/v1/uploads",
            headers=auth(),
            json={
                "filename": "notes.txt",
                "purpose": "assistants",
                "bytes": SMALL_FILE_LIMIT,
                "mime_type": "text/plain",
            },
            timeout=10,
        )
        assert made.status_code == 200, made.text
        path = f"/v1/uploads/{made.json()['id']}/parts"

    def upload(size: int) -> requests.Response:
        return requests.post(
            small_limit_server.url + path,
            headers=auth(),
            files={field: ("notes.txt", b"n" * size, "text/plain")},
            data={"purpose": "assistants"},
            timeout=10,
        )

    # Over the request limit but within the file limit: past the body limit, to the endpoint.
    assert upload(SMALL_LIMIT * 2).status_code == 200
    # A file of exactly the limit fits, multipart framing and all; one byte more does not.
    assert upload(SMALL_FILE_LIMIT).status_code == 200
    assert_envelope(upload(SMALL_FILE_LIMIT + 1), 413, code="file_too_large")
    # A body far past the limit is refused before it is read.
    too_big = upload(SMALL_FILE_LIMIT + 128 * 1024)
    error = assert_envelope(too_big, 413, code="request_too_large")
    assert "CLICKY_CHATS_MAX_FILE_BYTES" in str(error["message"])


def test_body_over_the_limit_is_413_before_authentication(small_limit_server: ServerProcess) -> None:
    response = requests.post(small_limit_server.url + "/v1/embeddings", data=b"z" * (SMALL_LIMIT + 1), timeout=10)
    assert_envelope(response, 413, code="request_too_large")


# --- configuration ---------------------------------------------------------------------------------


def run_manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLICKY_CHATS_SERVER_PORT", "abc"),
        ("CLICKY_CHATS_SERVER_PORT", "70000"),
        ("CLICKY_CHATS_DSN", "mysql://x"),
        ("CLICKY_CHATS_DSN", "postgres://user@host:notaport/db"),
        ("CLICKY_CHATS_DEBUG", "maybe"),
        ("CLICKY_CHATS_WITH_AGENTS", "sometimes"),
        ("CLICKY_CHATS_MODEL_BASE_URL", "ftp://models.example"),
        ("CLICKY_CHATS_MODEL_TIMEOUT_S", "-1"),
        ("CLICKY_CHATS_MODEL_TIMEOUT_S", "soon"),
        ("CLICKY_CHATS_MAX_REQUEST_BYTES", "10"),
        ("CLICKY_CHATS_API_KEYS", "alice:"),
        ("CLICKY_CHATS_API_KEYS", "alice:sk-same,bob:sk-same"),
        ("CLICKY_CHATS_RUN_EXPIRY_S", "0"),
        ("CLICKY_CHATS_DATA_DIR", "{a_file}/data"),
    ],
)
def test_bad_configuration_stops_check_with_one_line(
    server: ServerProcess, tmp_path: Path, variable: str, value: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    result = run_manage({**server.env, variable: value.format(a_file=a_file)}, "check")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "sk-same" not in lines[0]  # keys are secrets, even in an error
    assert result.stdout == ""


def test_good_configuration_passes_check(server: ServerProcess) -> None:
    result = run_manage(server.env, "check")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_bad_configuration_stops_serve(server: ServerProcess) -> None:
    result = run_manage({**server.env, "CLICKY_CHATS_SERVER_PORT": "eighty"}, "serve")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "clicky-chats: configuration error: CLICKY_CHATS_SERVER_PORT must be a whole number, not 'eighty'"
    ]


# --- service endpoints -----------------------------------------------------------------------------


def test_healthz(server: ServerProcess) -> None:
    response = requests.get(server.url + "/healthz", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok", "database": "ok"}
    assert response.headers["x-request-id"].startswith("req_")


def test_openapi_yaml_lists_the_endpoints(server: ServerProcess) -> None:
    response = requests.get(server.url + "/v1/openapi.yaml", timeout=10)  # public: no key
    assert response.status_code == 200
    schema = yaml.safe_load(response.text)
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "clicky-chats"
    paths = schema["paths"]
    for path, method in [
        ("/v1/chat/completions", "post"),
        ("/v1/chat/completions", "get"),
        ("/v1/embeddings", "post"),
        ("/v1/models", "get"),
        ("/v1/models/{model}", "get"),
        ("/v1/audio/transcriptions", "post"),
        ("/v1/rubra/chat/completions", "post"),
        ("/v1/rubra/models", "get"),
        ("/healthz", "get"),
    ]:
        assert method in paths[path], (path, method)
    assert "multipart/form-data" in paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    operation_ids = [op["operationId"] for ops in paths.values() for op in ops.values() if isinstance(op, dict)]
    assert len(operation_ids) == len(set(operation_ids))


def test_docs_page(server: ServerProcess) -> None:
    response = requests.get(server.url + "/v1/docs", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "swagger" in response.text.lower()
    assert "/v1/openapi.yaml" in response.text
    # Swagger UI's own files come from this server, so the page works with no internet.
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', response.text)
    assert assets and all(asset.startswith("/static/") for asset in assets), assets
    for asset in assets:
        assert requests.get(server.url + asset, timeout=10).status_code == 200, asset


def test_admin_login_page(server: ServerProcess) -> None:
    response = requests.get(server.url + "/admin/login/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert 'name="username"' in response.text and 'name="password"' in response.text
    # The admin is not the API: no key is asked for, and its pages send people to log in.
    redirect = requests.get(server.url + "/admin/", allow_redirects=False, timeout=10)
    assert redirect.status_code == 302
    assert redirect.headers["Location"].startswith("/admin/login/")
    stylesheet = requests.get(server.url + "/static/admin/css/base.css", timeout=10)
    assert stylesheet.status_code == 200


# --- management commands ---------------------------------------------------------------------------


def wait_for_text(path: Path, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout_s} s:\n{content}")


def test_runagent_starts_and_stops_on_sigterm(server: ServerProcess, tmp_path: Path) -> None:
    log_path = tmp_path / "runagent.log"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "manage.py", "runagent", "--poll-interval", "10"],
            cwd=ROOT,
            env=server.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_text(log_path, "agent started", 30)
        assert agent.poll() is None
        signalled = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        # It idles for up to --poll-interval between passes; SIGTERM must not wait that out.
        assert agent.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 5
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert "agent stopped" in log_path.read_text()


def start_two_workers(database: Database, fake_upstream: FakeUpstream) -> ServerProcess:
    proc = ServerProcess(
        database, fake_upstream.base_url, env={"CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}"}, workers=2
    ).start()
    assert proc.process is not None
    return proc


@contextlib.contextmanager
def two_workers_exiting_0(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """A two-worker server for the block; stopped after it, it must exit 0 (unless the block failed)."""
    proc = start_two_workers(database, fake_upstream)
    try:
        yield proc
    finally:
        returncode = proc.stop()
    assert returncode == 0, proc.log()


def test_serve_with_two_workers(database: Database, fake_upstream: FakeUpstream) -> None:
    proc = start_two_workers(database, fake_upstream)
    try:
        with make_client(proc) as sdk:
            for index in range(12):
                result = sdk.embeddings.create(model="fake-embedder", input=f"n{index}", encoding_format="float")
                assert len(result.data) == 1
        wait_for_text(proc.log_path, "Application startup complete", 10)
        assert proc.log().count("Started server process") == 2
    finally:
        signalled = time.monotonic()
        returncode = proc.stop()
    assert time.monotonic() - signalled < 15
    assert returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in proc.log()
    with pytest.raises(requests.ConnectionError):
        requests.get(proc.url + "/healthz", timeout=2)


@pytest.mark.skipif(DB_KIND != "postgres", reason="PostgreSQL keeps connections between requests (CONN_MAX_AGE)")
def test_request_threads_reconnect_after_postgresql_restarts(fake_upstream: FakeUpstream) -> None:
    database = Database("postgres").start()  # its own PostgreSQL: a restart must disturb no other test
    if not database.can_restart:
        database.stop()
        pytest.skip("CLICKY_CHATS_TEST_PG_DSN names a PostgreSQL these tests cannot restart")
    proc = ServerProcess(
        database, fake_upstream.base_url, env={"CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}"}, with_agents=False
    ).start()
    try:
        with make_client(proc) as sdk:
            stored = sdk.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], store=True
            )
            assert sdk.chat.completions.retrieve(stored.id).id == stored.id
            # The request threads keep their connections between requests, and the restart ends
            # them all. close_old_connections arms the health check, so the next query reconnects
            # rather than failing with a 500: it runs at request_finished on the thread of a
            # request that used the database, and at request_started just before a request's
            # first sync call (asgi_handler.py); with neither, this fails.
            database.stop_postgres()
            database.start_postgres()
            for _ in range(3):
                assert sdk.chat.completions.retrieve(stored.id).id == stored.id
    finally:
        proc.stop()
        database.stop()


# `serve --workers N` gives each worker a listening socket of its own (SO_REUSEPORT), so the kernel,
# not whichever worker is awake, decides who gets a connection.


def open_keepalive_connections(proc: ServerProcess, count: int, timeout_s: float = 10) -> list[socket.socket]:
    """`count` keep-alive connections, each having had one /healthz answered (so a worker has
    accepted it and holds it)."""
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{proc.port}\r\n\r\n".encode()
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", proc.port), timeout=timeout_s)
        connections.append(connection)
        connection.sendall(request)
        answer = b""
        while not answer.endswith(b"\r\n0\r\n\r\n"):  # the end of a chunked body
            chunk = connection.recv(4096)
            assert chunk, f"the server closed the connection after {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
    return connections


def connections_by_worker(proc: ServerProcess, timeout_s: float = 10) -> dict[int, int]:
    """Opens 32 keep-alive connections, answered, and says how many each worker process holds."""
    connections = open_keepalive_connections(proc, 32, timeout_s=timeout_s)
    try:
        return connections_per_process(proc.process.pid, proc.port)  # type: ignore[union-attr]
    finally:
        for connection in connections:
            connection.close()


def is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"  # a zombie has ended


def wait_until_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still running after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    running = [pid for pid in pids if is_running(pid)]
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = [pid for pid in running if is_running(pid)]
    return running


def data_segments_received(connection: socket.socket) -> int:
    """tcpi_data_segs_in of Linux's struct tcp_info: TCP segments with data that came in."""
    info = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[152:156], sys.byteorder)


def test_an_answer_head_and_body_arrive_in_one_segment(server: ServerProcess) -> None:
    # uvicorn writes the head and the body separately; serve's protocol sends them as one write
    # (http_protocol.py), which on loopback is one segment. Two writes would make it 2 per answer.
    [connection] = open_keepalive_connections(server, 1)
    try:
        before = data_segments_received(connection)
        for _ in range(10):
            connection.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
            answer = b""
            while not answer.endswith(b"\r\n0\r\n\r\n"):
                chunk = connection.recv(65536)
                assert chunk, f"the server closed the connection after {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
        assert data_segments_received(connection) - before == 10
    finally:
        connection.close()


@pytest.fixture(scope="module")
def two_workers(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    proc = start_two_workers(database, fake_upstream)
    yield proc
    proc.stop()


def test_serve_workers_share_the_connections(two_workers: ServerProcess) -> None:
    assert two_workers.process is not None
    connections = open_keepalive_connections(two_workers, 32)
    try:
        held = connections_per_process(two_workers.process.pid, two_workers.port)
    finally:
        for connection in connections:
            connection.close()
    # The kernel hashes each connection to one of two sockets: all but 3 on one worker has a
    # probability of ~3e-6. With one shared socket, splits of 32/0 and 30/2 were the rule.
    assert len(held) == 2, held
    assert sum(held.values()) == 32
    assert min(held.values()) >= 4, held
    assert two_workers.process.pid not in held  # the parent only listens


@pytest.mark.parametrize("occupant", ["a one-worker server", "a two-worker server"])
def test_serve_on_a_port_in_use_is_a_one_line_error(request: pytest.FixtureRequest, occupant: str) -> None:
    # A second server on a two-worker server's port matters most: SO_REUSEPORT would let it join
    # the port and quietly take a share of the first one's connections.
    holder: ServerProcess = request.getfixturevalue("server" if occupant == "a one-worker server" else "two_workers")
    for workers in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "manage.py", "serve", "--port", str(holder.port), "--workers", workers],
            cwd=ROOT,
            env=holder.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert result.stderr == f"serve: cannot listen on 127.0.0.1:{holder.port}: Address already in use\n"
    assert_healthy(holder)
    connections = open_keepalive_connections(holder, 8)
    for connection in connections:
        connection.close()


def test_serve_sigterm_stops_every_worker_and_exits_0(database: Database, fake_upstream: FakeUpstream) -> None:
    with two_workers_exiting_0(database, fake_upstream) as proc:
        tree = process_tree(proc.process.pid)
        workers = list(connections_by_worker(proc))
    assert len(workers) == 2
    assert wait_until_gone(tree, 10) == []
    assert proc.log().count("Finished server process") == 2  # both shut down, not killed


def test_serve_starts_a_new_worker_when_one_dies(database: Database, fake_upstream: FakeUpstream) -> None:
    with two_workers_exiting_0(database, fake_upstream) as proc:
        victim, survivor = connections_by_worker(proc)
        os.kill(victim, signal.SIGKILL)
        wait_for_text(proc.log_path, f"Worker [{victim}] exited with -9; starting another.", 10)
        # Connections the kernel hashes to the dead worker's socket wait in its backlog for the
        # new worker (its start-up takes seconds), so every one of them is answered.
        held = connections_by_worker(proc, timeout_s=60)
        assert len(held) == 2 and survivor in held and victim not in held, held


def test_serve_sighup_replaces_every_worker(database: Database, fake_upstream: FakeUpstream) -> None:
    with two_workers_exiting_0(database, fake_upstream) as proc:
        old = list(connections_by_worker(proc))
        assert len(old) == 2
        proc.process.send_signal(signal.SIGHUP)
        # Each new worker starts before its old one stops, so the port answers throughout.
        deadline = time.monotonic() + 120
        while wait_until_gone(old, 0) and time.monotonic() < deadline:
            assert_healthy(proc)
            time.sleep(0.2)
        assert wait_until_gone(old, 0) == [], proc.log()
        new = connections_by_worker(proc)
        assert len(new) == 2 and not set(new) & set(old), (old, new)
    assert "did not start in time" not in proc.log()


# --- the /v1/rubra tier ----------------------------------------------------------------------------


def test_rubra_tier_serves_the_v1_endpoints(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    with make_client(server, tier="/v1/rubra") as sdk:
        completion = sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content == chat_completion()["choices"][0]["message"]["content"]
        assert "fake-model" in [model.id for model in sdk.models.list().data]
        assert sdk.models.retrieve("fake-embedder").id == "fake-embedder"
        embedded = sdk.embeddings.create(model="fake-embedder", input="rubra", encoding_format="float")
        assert len(embedded.data[0].embedding) == 8
        audio = b"RIFF" + bytes(range(256))
        text = sdk.audio.transcriptions.create(file=("a.wav", audio, "audio/wav"), model="whisper-1")
        assert text.text == "hello from the fake upstream"
    assert fake_upstream.last("chat/completions").headers["Authorization"] == "Bearer sk-upstream-secret"
    assert audio in fake_upstream.last("audio/transcriptions").body
    # Each answer has its own request id.
    request_ids = {completion._request_id, embedded._request_id, text._request_id}
    assert len(request_ids) == 3 and all(str(rid).startswith("req_") for rid in request_ids)


def test_rubra_tier_streams_async(server: ServerProcess) -> None:
    async def stream() -> str:
        async with make_async_client(server, tier="/v1/rubra") as sdk:
            chunks = await sdk.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            return "".join([chunk.choices[0].delta.content or "" async for chunk in chunks if chunk.choices])

    assert asyncio.run(stream()) == "Hello from the fake upstream."


def test_rubra_tier_needs_a_key(server: ServerProcess) -> None:
    response = requests.get(server.url + "/v1/rubra/models", timeout=10)
    assert_envelope(response, 401, code="invalid_api_key")
    with make_client(server, "sk-wrong", tier="/v1/rubra") as sdk, pytest.raises(openai.AuthenticationError):
        sdk.models.list()
