"""The Files and Uploads APIs through the official SDK: bytes stored and served back exactly (text,
binary, past the in-memory spool limit), lists, deletes that take the stored bytes and every vector
store's copy with them, the upload helpers, every bad input answered 4xx with nothing half-written,
and project isolation."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.conftest import ALICE_KEY, make_client
from tests.fake_upstream import FakeUpstream
from tests.harness import Database, ServerProcess

SPOOL_LIMIT = 2 * 1024 * 1024  # FILE_UPLOAD_MAX_MEMORY_SIZE: bodies past it are spooled to disk
SMALL_FILE_LIMIT = 256 * 1024
FILE_KEYS = {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "expires_at", "status_details"}
UPLOAD_KEYS = {"id", "object", "bytes", "created_at", "expires_at", "filename", "purpose", "status", "file"}
PDF_LIKE = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\nstream\n"
    + bytes(range(256)) * 64
    + b"\r\n\x00\x00\xff\xfe\nendstream\n%%EOF\n"
)


# --- helpers -----------------------------------------------------------------------------------------


def auth(key: str = ALICE_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def stored_files(server: ServerProcess) -> dict[str, bytes]:
    """Every file in the server's storage, by path, with its bytes."""
    root = server.directory / "data" / "files"
    if not root.exists():
        return {}
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def manage_json(server: ServerProcess, code: str) -> Any:
    """Runs `code` in `manage.py shell` against the server's database; it prints one JSON value."""
    return json.loads(server.manage("shell", "--no-imports", "-c", code).stdout)


def file_rows(server: ServerProcess) -> list[str]:
    """The ids of alice's files, as the API lists them."""
    response = requests.get(server.url + "/v1/files", headers=auth(), timeout=10)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["data"]]


def assert_api_error(error: openai.APIStatusError, status: int, param: str | None, code: str | None = None) -> None:
    """A 4xx in OpenAI's envelope that names the offending field."""
    assert error.status_code == status, error
    body = error.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    assert body["type"] == "invalid_request_error"
    assert isinstance(body["message"], str) and body["message"]
    assert body["param"] == param, body
    if code is not None:
        assert body["code"] == code, body


def assert_envelope(response: requests.Response, status: int, *, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == param, body
    return body["error"]  # type: ignore[no-any-return]


class NothingWritten:
    """Asserts a block left no file row and no stored bytes behind."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def __enter__(self) -> NothingWritten:
        self.rows = set(file_rows(self.server))
        self.stored = stored_files(self.server)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            assert set(file_rows(self.server)) == self.rows
            assert stored_files(self.server) == self.stored


def assert_file_object(data: dict[str, Any], *, filename: str, purpose: str, size: int) -> None:
    assert set(data) == FILE_KEYS, data
    assert data["id"].startswith("file-")
    assert data["object"] == "file"
    assert data["filename"] == filename and data["purpose"] == purpose and data["bytes"] == size
    assert data["status"] == "processed" and data["status_details"] is None
    assert abs(data["created_at"] - time.time()) < 60


def create_raw(
    server: ServerProcess, files: dict[str, Any], data: dict[str, str], key: str = ALICE_KEY
) -> requests.Response:
    """POST /files as multipart/form-data, even with no file part: plain fields go as parts without a filename."""
    parts = {**{name: (None, value) for name, value in data.items()}, **files}
    return requests.post(server.url + "/v1/files", headers=auth(key), files=parts, timeout=30)


# --- create, retrieve, content -----------------------------------------------------------------------


def test_create_from_memory_stores_the_bytes_and_serves_them_back(client: openai.OpenAI, server: ServerProcess) -> None:
    text = "Notes: naïve café, 東京, emoji 🚀.\n".encode()
    before = stored_files(server)
    created = client.files.create(file=("notes.txt", text), purpose="assistants")
    assert_file_object(created.model_dump(), filename="notes.txt", purpose="assistants", size=len(text))
    assert created.expires_at is None

    # The bytes went to storage, once.
    new = {path: data for path, data in stored_files(server).items() if path not in before}
    assert list(new.values()) == [text]

    assert client.files.retrieve(created.id) == created
    content = client.files.content(created.id)
    assert content.content == text
    assert content.response.headers["content-type"] == "text/plain; charset=utf-8"
    assert content.response.headers["content-length"] == str(len(text))


def test_create_from_a_temp_file_keeps_binary_bytes_exact(
    client: openai.OpenAI, server: ServerProcess, tmp_path: Path
) -> None:
    path = tmp_path / "paper.pdf"
    path.write_bytes(PDF_LIKE)
    with path.open("rb") as handle:
        created = client.files.create(file=handle, purpose="assistants")
    assert_file_object(created.model_dump(), filename="paper.pdf", purpose="assistants", size=len(PDF_LIKE))
    content = client.files.content(created.id)
    assert content.content == PDF_LIKE
    assert content.response.headers["content-type"] == "application/pdf"

    # A Path works as well (the SDK opens it).
    from_path = client.files.create(file=path, purpose="user_data")
    assert client.files.content(from_path.id).read() == PDF_LIKE


def test_files_past_the_spool_limit_stream_through_intact(client: openai.OpenAI, tmp_path: Path) -> None:
    # Random binary, 3 MB: larger than the in-memory spool, served back byte for byte.
    binary = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "big.pdf"
    path.write_bytes(binary)
    created = client.files.create(file=path, purpose="assistants")
    assert created.bytes == len(binary) > SPOOL_LIMIT
    assert hashlib.sha256(client.files.content(created.id).content).digest() == hashlib.sha256(binary).digest()

    # UTF-8 text of multi-byte characters, 3 MB: characters straddle every chunk boundary, and the
    # incremental check must not mistake that for bad text.
    line = "héllo wörld ✓ 🚀 東京\n".encode()
    text = line * (3 * 1024 * 1024 // len(line) + 1)
    created_text = client.files.create(file=("big.md", text), purpose="assistants")
    assert created_text.bytes == len(text)
    assert client.files.content(created_text.id).content == text


def test_streamed_content_answers_the_raw_request_too(client: openai.OpenAI, server: ServerProcess) -> None:
    data = b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    created = client.files.create(file=("batch.jsonl", data), purpose="batch")
    with requests.get(
        f"{server.url}/v1/files/{created.id}/content", headers={**auth(), "Accept": "*/*"}, stream=True, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/jsonl; charset=utf-8"
        assert b"".join(response.iter_content(7)) == data


def test_wait_for_processing_returns_at_once(client: openai.OpenAI) -> None:
    created = client.files.create(file=("a.py", b"print('hi')\n"), purpose="assistants")
    started = time.monotonic()
    done = client.files.wait_for_processing(created.id, poll_interval=0.05, max_wait_seconds=5)
    assert done.status == "processed"
    assert time.monotonic() - started < 2


def test_every_supported_type_for_its_purpose(client: openai.OpenAI) -> None:
    accepted = {
        "assistants": ["a.c", "a.cpp", "a.cs", "a.css", "a.csv", "a.go", "a.html", "a.java", "a.js", "a.json"],
        "user_data": ["a.md", "a.php", "a.py", "a.rb", "a.sh", "a.tex", "a.ts", "a.txt", "A.TXT"],
        "fine-tune": ["train.jsonl"],
        "vision": ["a.png", "a.jpg", "a.jpeg", "a.gif", "a.webp"],
    }
    for purpose, names in accepted.items():
        for name in names:
            created = client.files.create(file=(name, b"x = 1\n"), purpose=purpose)  # type: ignore[arg-type]
            assert created.filename == name and created.purpose == purpose
    for name in ("a.doc", "a.docx", "a.pptx"):
        assert client.files.create(file=(name, b"PK\x03\x04\xff\x00"), purpose="assistants").bytes == 6


def test_evals_purpose(server: ServerProcess) -> None:
    # Raw HTTP: the SDK's FileObject types `purpose` without "evals", though it sends it.
    response = create_raw(server, {"file": ("cases.jsonl", b'{"input": "x"}\n')}, {"purpose": "evals"})
    assert response.status_code == 200, response.text
    created = response.json()
    # Gone again, or every strict files.list after this test would fail to parse it.
    deleted = requests.delete(f"{server.url}/v1/files/{created['id']}", headers=auth(), timeout=10)
    assert deleted.json() == {"id": created["id"], "object": "file", "deleted": True}
    assert_file_object(created, filename="cases.jsonl", purpose="evals", size=15)


def test_expires_after(client: openai.OpenAI) -> None:
    created = client.files.create(
        file=("short.txt", b"soon gone"),
        purpose="assistants",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600
    assert client.files.retrieve(created.id).expires_at == created.expires_at
    # Batch input expires after 30 days unless told otherwise, as at OpenAI.
    batch = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert batch.expires_at == batch.created_at + 30 * 24 * 3600


def test_an_expired_file_is_gone(client: openai.OpenAI, server: ServerProcess) -> None:
    created = client.files.create(
        file=("old.txt", b"old"), purpose="assistants", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    # An hour is too long to wait: move its expiry into the past.
    server.manage(
        "shell", "-c", f"from api_v1.models import File; File.objects.filter(id={created.id!r}).update(expires_at=1)"
    )
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    assert created.id not in {f.id for f in client.files.list()}
    # The next create removes it, bytes and all.
    client.files.create(file=("new.txt", b"new"), purpose="assistants")
    remaining = manage_json(
        server,
        f"from api_v1.models import File; print(File.objects.filter(id={created.id!r}).count())",
    )
    assert remaining == 0
    assert b"old" not in stored_files(server).values()


def test_rubra_tier_serves_the_same_files(server: ServerProcess, client: openai.OpenAI) -> None:
    with make_client(server, tier="/v1/rubra") as rubra:
        created = rubra.files.create(file=("r.txt", b"rubra"), purpose="assistants")
        assert rubra.files.content(created.id).content == b"rubra"
    assert client.files.retrieve(created.id).filename == "r.txt"


def test_concurrent_creates(server: ServerProcess) -> None:
    # vector_stores.file_batches.upload_and_poll sends five at once.
    def create(index: int) -> str:
        with make_client(server) as sdk:
            return sdk.files.create(file=(f"c{index}.txt", f"file {index}".encode()), purpose="assistants").id

    with ThreadPoolExecutor(5) as pool:
        ids = list(pool.map(create, range(10)))
    assert len(set(ids)) == 10
    with make_client(server) as sdk:
        for index, file_id in enumerate(ids):
            assert sdk.files.content(file_id).content == f"file {index}".encode()


# --- list ------------------------------------------------------------------------------------------


def test_list_orders_filters_and_pages(client: openai.OpenAI, server: ServerProcess) -> None:
    made = [client.files.create(file=(f"l{i}.txt", b"x"), purpose="user_data").id for i in range(3)]
    image = client.files.create(file=("pic.png", b"\x89PNG\r\n\x1a\n"), purpose="vision").id

    everything = client.files.list()
    ids = [f.id for f in everything.data]
    assert everything.has_more is False
    # Newest first by default.
    positions = [ids.index(file_id) for file_id in [*made, image]]
    assert positions == sorted(positions, reverse=True)

    ascending = [f.id for f in client.files.list(order="asc").data]
    assert [ascending.index(i) for i in made] == sorted(ascending.index(i) for i in made)

    vision = [f.id for f in client.files.list(purpose="vision")]
    assert image in vision and not set(made) & set(vision)
    assert all(f.purpose == "vision" for f in client.files.list(purpose="vision"))

    # Pages of one, walked by the SDK with `after`.
    first = client.files.list(limit=1, order="asc")
    assert len(first.data) == 1 and first.has_more is True
    walked = [f.id for f in client.files.list(limit=1, order="asc")]
    assert walked == ascending

    # A raw list: the cursor envelope, and the default limit of 10000.
    raw = requests.get(server.url + "/v1/files", headers=auth(), timeout=10).json()
    assert set(raw) == {"object", "data", "first_id", "last_id", "has_more"}
    assert raw["first_id"] == raw["data"][0]["id"] and raw["last_id"] == raw["data"][-1]["id"]
    assert client.files.list(limit=10000).data == everything.data


def test_list_rejects_bad_parameters(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.list(limit=10001)
    assert_api_error(exc.value, 400, "limit")
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.list(purpose="nonsense")
    assert_api_error(exc.value, 400, "purpose")
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.list(after="file-doesnotexist")
    assert_api_error(exc.value, 400, "after")


# --- delete ------------------------------------------------------------------------------------------


def test_delete_removes_the_row_and_the_stored_bytes(client: openai.OpenAI, server: ServerProcess) -> None:
    payload = b"delete me " + os.urandom(64)
    created = client.files.create(file=("gone.pdf", payload), purpose="assistants")
    assert payload in stored_files(server).values()

    deleted = client.files.delete(created.id)
    assert deleted.model_dump() == {"id": created.id, "object": "file", "deleted": True}
    assert payload not in stored_files(server).values()
    with pytest.raises(openai.NotFoundError) as exc:
        client.files.retrieve(created.id)
    assert_api_error(exc.value, 404, None)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)
    assert created.id not in {f.id for f in client.files.list()}


def test_delete_removes_the_file_from_every_vector_store(client: openai.OpenAI, server: ServerProcess) -> None:
    kept = client.files.create(file=("kept.txt", b"kept"), purpose="assistants")
    doomed = client.files.create(file=("doomed.txt", b"doomed"), purpose="assistants")
    # Two stores hold both files, each with an ingested chunk. Made through the ORM: the point here is
    # what deleting a file does to the rows that reference it.
    setup = f"""
import json
from api_v1.models import Chunk, VectorStore, VectorStoreFile
stores = []
for name in ("vs-a", "vs-b"):
    store = VectorStore.objects.create(
        id="vs_" + name + "{doomed.id[-8:]}", project="alice", created_at=1, created_ns=1, name=name
    )
    stores.append(store.id)
    for file_id in ({kept.id!r}, {doomed.id!r}):
        row = VectorStoreFile.objects.create(vector_store=store, file_id=file_id, project="alice", created_at=1,
            created_ns=1, status="completed", chunking_strategy={{"type": "static"}})
        Chunk.objects.create(store_file=row, vector_store_id=store.id, file_id=file_id, ordinal=0, text="t",
            embedding=b"\\x00" * 4, dimensions=1)
print(json.dumps(stores))
"""
    stores = manage_json(server, setup)
    count = f"""
import json
from api_v1.models import Chunk, VectorStoreFile
ids = {stores!r}
print(json.dumps({{
    "files": sorted(VectorStoreFile.objects.filter(vector_store_id__in=ids).values_list("file_id", flat=True)),
    "chunks": sorted(Chunk.objects.filter(vector_store_id__in=ids).values_list("file_id", flat=True)),
}}))
"""
    assert manage_json(server, count) == {
        "files": sorted([kept.id, doomed.id] * 2),
        "chunks": sorted([kept.id, doomed.id] * 2),
    }
    client.files.delete(doomed.id)
    assert manage_json(server, count) == {"files": [kept.id, kept.id], "chunks": [kept.id, kept.id]}


# --- bad input -----------------------------------------------------------------------------------------


def test_wrong_or_missing_purpose(client: openai.OpenAI, server: ServerProcess) -> None:
    with NothingWritten(server):
        with pytest.raises(openai.BadRequestError) as exc:
            client.files.create(file=("a.txt", b"x"), purpose="homework")  # type: ignore[arg-type]
        assert_api_error(exc.value, 400, "purpose", "invalid_value")
        error = assert_envelope(create_raw(server, {"file": ("a.txt", b"x")}, {}), 400, param="purpose")
        assert error["code"] == "missing_required_parameter"


def test_missing_file_part(server: ServerProcess) -> None:
    with NothingWritten(server):
        error = assert_envelope(create_raw(server, {}, {"purpose": "assistants"}), 400, param="file")
        assert error["code"] == "missing_required_parameter"
        # A form field named `file` is not a file.
        error = assert_envelope(create_raw(server, {}, {"purpose": "assistants", "file": "text"}), 400, param="file")
        assert "file part" in error["message"]
        # Another field name carries no file.
        assert_envelope(create_raw(server, {"document": ("a.txt", b"x")}, {"purpose": "assistants"}), 400, param="file")


def test_not_multipart_is_415(server: ServerProcess) -> None:
    response = requests.post(server.url + "/v1/files", headers=auth(), json={"purpose": "assistants"}, timeout=10)
    assert response.status_code == 415
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_zero_byte_file(client: openai.OpenAI, server: ServerProcess) -> None:
    with NothingWritten(server):
        with pytest.raises(openai.BadRequestError) as exc:
            client.files.create(file=("empty.txt", b""), purpose="assistants")
        assert_api_error(exc.value, 400, "file", "empty_file")


@pytest.mark.parametrize(
    ("filename", "purpose"),
    [
        ("tool.exe", "assistants"),
        ("noextension", "assistants"),
        ("photo.png", "assistants"),
        ("data.jsonl", "user_data"),
        ("notes.txt", "batch"),
        ("train.json", "fine-tune"),
        ("cases.csv", "evals"),
        ("scan.pdf", "vision"),
        ("archive.zip", "user_data"),
    ],
)
def test_unsupported_type_for_purpose(server: ServerProcess, filename: str, purpose: str) -> None:
    with NothingWritten(server):
        error = assert_envelope(
            create_raw(server, {"file": (filename, b"content")}, {"purpose": purpose}), 400, param="file"
        )
        assert error["code"] == "unsupported_file"
        assert filename in error["message"]


def test_text_that_is_not_utf8(client: openai.OpenAI, server: ServerProcess) -> None:
    with NothingWritten(server):
        latin1 = "café déjà vu".encode("latin-1")
        with pytest.raises(openai.BadRequestError) as exc:
            client.files.create(file=("latin1.txt", latin1), purpose="assistants")
        assert_api_error(exc.value, 400, "file", "invalid_file_encoding")

        # A bad byte 3 MB in, past the spool limit and many chunks: found while streaming.
        late = b"a" * (3 * 1024 * 1024) + b"\xff" + b"b" * 1000
        with pytest.raises(openai.BadRequestError) as exc:
            client.files.create(file=("late.py", late), purpose="assistants")
        assert_api_error(exc.value, 400, "file", "invalid_file_encoding")
        assert str(3 * 1024 * 1024) in exc.value.message

        # A multi-byte character cut off at the very end.
        with pytest.raises(openai.BadRequestError) as exc:
            client.files.create(file=("cut.jsonl", b'{"a": "\xe6\x9d'), purpose="batch")
        assert_api_error(exc.value, 400, "file", "invalid_file_encoding")

        # UTF-16 is text, but not UTF-8.
        with pytest.raises(openai.BadRequestError) as exc:
            client.files.create(file=("wide.md", "hi".encode("utf-16")), purpose="assistants")
        assert_api_error(exc.value, 400, "file", "invalid_file_encoding")

    # Binary types are not text: any bytes go.
    assert client.files.create(file=("any.pdf", b"\xff\xfe\x00"), purpose="assistants").bytes == 3


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"}, "expires_after.anchor"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
        ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ],
)
def test_bad_expires_after(server: ServerProcess, fields: dict[str, str], param: str) -> None:
    with NothingWritten(server):
        response = create_raw(server, {"file": ("a.txt", b"x")}, {"purpose": "assistants", **fields})
        assert_envelope(response, 400, param=param)


def test_unknown_ids_are_404(client: openai.OpenAI) -> None:
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as exc:
            call("file-nope")
        assert_api_error(exc.value, 404, None)


# --- size limit ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_files_server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        database,
        fake_upstream.base_url,
        env={"CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}", "CLICKY_CHATS_MAX_FILE_BYTES": str(SMALL_FILE_LIMIT)},
        with_agents=False,
    ).start()
    yield proc
    proc.stop()


def test_oversize_file_is_413_and_nothing_is_stored(small_files_server: ServerProcess) -> None:
    server = small_files_server
    with make_client(server) as sdk, NothingWritten(server):
        with pytest.raises(openai.APIStatusError) as exc:
            sdk.files.create(file=("big.pdf", b"\x01" * (SMALL_FILE_LIMIT + 1)), purpose="assistants")
        assert_api_error(exc.value, 413, "file", "file_too_large")
        assert str(SMALL_FILE_LIMIT) in exc.value.message
        # Far over, past the spool limit too.
        with pytest.raises(openai.APIStatusError) as exc:
            sdk.files.create(file=("bigger.txt", b"a" * (3 * 1024 * 1024)), purpose="assistants")
        assert_api_error(exc.value, 413, "file", "file_too_large")

        # Exactly at the limit is fine (here the body limit is the larger CLICKY_CHATS_MAX_REQUEST_BYTES).
        at_limit = os.urandom(SMALL_FILE_LIMIT)
        created = sdk.files.create(file=("exact.pdf", at_limit), purpose="assistants")
        assert sdk.files.content(created.id).content == at_limit
        sdk.files.delete(created.id)


def test_declared_body_over_the_file_limit_is_refused_before_it_is_read(small_files_server: ServerProcess) -> None:
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=xyz\r\n"
        b"Authorization: Bearer " + ALICE_KEY.encode() + b"\r\nContent-Length: 100000000000\r\n\r\n"
    )
    with NothingWritten(small_files_server):
        with socket.create_connection(("127.0.0.1", small_files_server.port), timeout=10) as sock:
            sock.sendall(head + b"--xyz\r\n")
            received = b""
            while not received.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
    head_part, _, body = received.partition(b"\r\n\r\n")
    assert head_part.split(b" ", 2)[1] == b"413"
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_uploads_over_the_file_limit(small_files_server: ServerProcess) -> None:
    with make_client(small_files_server) as sdk, NothingWritten(small_files_server):
        with pytest.raises(openai.BadRequestError) as exc:
            sdk.uploads.create(
                filename="big.pdf", purpose="assistants", bytes=SMALL_FILE_LIMIT + 1, mime_type="application/pdf"
            )
        assert_api_error(exc.value, 400, "bytes")
        upload = sdk.uploads.create(
            filename="big.pdf", purpose="assistants", bytes=SMALL_FILE_LIMIT, mime_type="application/pdf"
        )
        with pytest.raises(openai.APIStatusError) as exc:
            sdk.uploads.parts.create(upload_id=upload.id, data=b"\x00" * (SMALL_FILE_LIMIT + 1))
        assert_api_error(exc.value, 413, "data", "file_too_large")
        sdk.uploads.cancel(upload.id)


# --- uploads -------------------------------------------------------------------------------------------


def test_upload_file_chunked_from_disk(client: openai.OpenAI, server: ServerProcess, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    path = tmp_path / "large.pdf"
    path.write_bytes(data)
    before = stored_files(server)
    upload = client.uploads.upload_file_chunked(
        file=path, mime_type="application/pdf", purpose="assistants", part_size=1024 * 1024
    )
    assert set(upload.model_dump()) == UPLOAD_KEYS
    assert upload.status == "completed" and upload.bytes == len(data) and upload.filename == "large.pdf"
    assert upload.id.startswith("upload_") and upload.expires_at == upload.created_at + 3600
    assert upload.file is not None
    assert_file_object(upload.file.model_dump(), filename="large.pdf", purpose="assistants", size=len(data))
    assert client.files.content(upload.file.id).content == data
    assert client.files.retrieve(upload.file.id) == upload.file
    # The parts are gone; only the assembled file stays.
    new = [path for path in stored_files(server) if path not in before]
    assert len(new) == 1


def test_upload_file_chunked_from_memory_with_md5(client: openai.OpenAI) -> None:
    text = ("line ✓ 東京\n" * 50_000).encode()
    upload = client.uploads.upload_file_chunked(
        file=text,
        filename="lines.txt",
        bytes=len(text),
        mime_type="text/plain",
        purpose="assistants",
        part_size=100_001,  # splits multi-byte characters between parts
        md5=hashlib.md5(text).hexdigest(),
    )
    assert upload.status == "completed" and upload.file is not None
    assert client.files.content(upload.file.id).content == text


def test_manual_upload_joins_parts_in_the_order_given(client: openai.OpenAI, server: ServerProcess) -> None:
    upload = client.uploads.create(
        filename="joined.jsonl", purpose="fine-tune", bytes=11, mime_type="application/jsonl"
    )
    assert upload.status == "pending" and upload.file is None and upload.purpose == "fine-tune"
    # Sent out of order; complete says the order.
    second = client.uploads.parts.create(upload_id=upload.id, data=b'"b"}\n')
    first = client.uploads.parts.create(upload_id=upload.id, data=b'{"a": ')
    spare = client.uploads.parts.create(upload_id=upload.id, data=b"not used")
    assert first.object == "upload.part" and first.upload_id == upload.id and first.id.startswith("part_")
    parts_on_disk = stored_files(server)
    assert {b'"b"}\n', b'{"a": ', b"not used"} <= set(parts_on_disk.values())

    # A wrong total is refused, and the upload stays usable.
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id, spare.id])
    assert_api_error(exc.value, 400, "part_ids")
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id], md5="0" * 32)
    assert_api_error(exc.value, 400, "md5")

    done = client.uploads.complete(upload_id=upload.id, part_ids=[first.id, second.id])
    assert done.status == "completed" and done.file is not None
    assert done.file.filename == "joined.jsonl" and done.file.bytes == 11
    assert client.files.content(done.file.id).content == b'{"a": "b"}\n'
    # Every part's bytes are gone, the unused one's too.
    assert not {b'"b"}\n', b'{"a": ', b"not used"} & set(stored_files(server).values())


def test_upload_expires_after_is_the_files(client: openai.OpenAI) -> None:
    upload = client.uploads.create(
        filename="e.txt",
        purpose="assistants",
        bytes=2,
        mime_type="text/plain",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    part = client.uploads.parts.create(upload_id=upload.id, data=b"ok")
    done = client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert done.file is not None and done.file.expires_at == done.file.created_at + 7200


def test_cancel_drops_the_parts(client: openai.OpenAI, server: ServerProcess) -> None:
    with NothingWritten(server):
        upload = client.uploads.create(filename="c.txt", purpose="assistants", bytes=4, mime_type="text/plain")
        part = client.uploads.parts.create(upload_id=upload.id, data=b"data")
        cancelled = client.uploads.cancel(upload.id)
        assert cancelled.status == "cancelled" and cancelled.file is None
    for call in (
        lambda: client.uploads.cancel(upload.id),
        lambda: client.uploads.complete(upload_id=upload.id, part_ids=[part.id]),
        lambda: client.uploads.parts.create(upload_id=upload.id, data=b"more"),
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            call()
        assert_api_error(exc.value, 400, None, "invalid_upload_state")
        assert "cancelled" in exc.value.message


def test_a_completed_upload_takes_nothing_more(client: openai.OpenAI) -> None:
    upload = client.uploads.create(filename="d.txt", purpose="assistants", bytes=1, mime_type="text/plain")
    part = client.uploads.parts.create(upload_id=upload.id, data=b"d")
    client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    for call in (
        lambda: client.uploads.complete(upload_id=upload.id, part_ids=[part.id]),
        lambda: client.uploads.cancel(upload.id),
        lambda: client.uploads.parts.create(upload_id=upload.id, data=b"d"),
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            call()
        assert_api_error(exc.value, 400, None, "invalid_upload_state")


def test_an_expired_upload_takes_nothing_more(client: openai.OpenAI, server: ServerProcess) -> None:
    upload = client.uploads.create(filename="x.txt", purpose="assistants", bytes=3, mime_type="text/plain")
    part = client.uploads.parts.create(upload_id=upload.id, data=b"xyz")
    assert b"xyz" in stored_files(server).values()
    # An hour is too long to wait: move its expiry into the past.
    server.manage(
        "shell", "-c", f"from api_v1.models import Upload; Upload.objects.filter(id={upload.id!r}).update(expires_at=1)"
    )
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert_api_error(exc.value, 400, None, "invalid_upload_state")
    assert "expired" in exc.value.message
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload_id=upload.id, data=b"abc")
    # Its parts were dropped on the way.
    assert b"xyz" not in stored_files(server).values()


def test_upload_bad_input(client: openai.OpenAI, server: ServerProcess) -> None:
    good = {"filename": "a.txt", "purpose": "assistants", "bytes": 3, "mime_type": "text/plain"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "purpose": "homework"}, "purpose"),
        ({**good, "bytes": 0}, "bytes"),
        ({**good, "bytes": "3"}, "bytes"),
        ({**good, "filename": ""}, "filename"),
        ({**good, "filename": "a.exe"}, "filename"),
        ({**good, "filename": "a.txt", "purpose": "vision"}, "filename"),
        ({k: v for k, v in good.items() if k != "mime_type"}, "mime_type"),
        ({k: v for k, v in good.items() if k != "filename"}, "filename"),
        ({**good, "expires_after": {"anchor": "created_at", "seconds": 5}}, "expires_after.seconds"),
    ]
    for body, param in cases:
        response = requests.post(server.url + "/v1/uploads", headers=auth(), json=body, timeout=10)
        assert_envelope(response, 400, param=param)

    upload = client.uploads.create(**good)  # type: ignore[arg-type]
    part = client.uploads.parts.create(upload_id=upload.id, data=b"abc")
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[])
    assert_api_error(exc.value, 400, "part_ids")
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=[part.id, part.id])
    assert_api_error(exc.value, 400, "part_ids")
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.complete(upload_id=upload.id, part_ids=["part_unknown"])
    assert_api_error(exc.value, 400, "part_ids")
    with pytest.raises(openai.BadRequestError) as exc:
        client.uploads.parts.create(upload_id=upload.id, data=b"")
    assert_api_error(exc.value, 400, "data", "empty_file")
    missing_data = requests.post(
        f"{server.url}/v1/uploads/{upload.id}/parts", headers=auth(), files={"x": (None, "1")}, timeout=10
    )
    assert_envelope(missing_data, 400, param="data")
    with pytest.raises(openai.NotFoundError):
        client.uploads.parts.create(upload_id="upload_nope", data=b"x")
    with pytest.raises(openai.NotFoundError):
        client.uploads.complete(upload_id="upload_nope", part_ids=["part_x"])
    with pytest.raises(openai.NotFoundError):
        client.uploads.cancel("upload_nope")
    # After all that, the upload still completes.
    done = client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert done.file is not None and client.files.content(done.file.id).content == b"abc"


def test_upload_of_text_that_is_not_utf8(client: openai.OpenAI, server: ServerProcess) -> None:
    text = "Grüße".encode("latin-1")
    with NothingWritten(server):
        upload = client.uploads.create(filename="g.txt", purpose="assistants", bytes=len(text), mime_type="text/plain")
        part = client.uploads.parts.create(upload_id=upload.id, data=text)  # a part alone is not checked
        with pytest.raises(openai.BadRequestError) as exc:
            client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
        assert_api_error(exc.value, 400, "part_ids", "invalid_file_encoding")
        client.uploads.cancel(upload.id)


# --- isolation ------------------------------------------------------------------------------------


def test_another_projects_files_and_uploads_are_invisible(client: openai.OpenAI, bob: openai.OpenAI) -> None:
    alices = client.files.create(file=("private.txt", b"alice only"), purpose="assistants")
    bobs = bob.files.create(file=("bob.txt", b"bob only"), purpose="assistants")
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError) as exc:
            call(alices.id)
        assert_api_error(exc.value, 404, None)
    assert alices.id not in {f.id for f in bob.files.list()}
    assert bobs.id not in {f.id for f in client.files.list()}
    with pytest.raises(openai.BadRequestError):
        bob.files.list(after=alices.id)  # not a cursor bob can page from
    assert client.files.content(alices.id).content == b"alice only"

    upload = client.uploads.create(filename="u.txt", purpose="assistants", bytes=2, mime_type="text/plain")
    part = client.uploads.parts.create(upload_id=upload.id, data=b"hi")
    with pytest.raises(openai.NotFoundError):
        bob.uploads.parts.create(upload_id=upload.id, data=b"hi")
    with pytest.raises(openai.NotFoundError):
        bob.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    with pytest.raises(openai.NotFoundError):
        bob.uploads.cancel(upload.id)
    # Nor can bob's upload take alice's part.
    bobs_upload = bob.uploads.create(filename="b.txt", purpose="assistants", bytes=2, mime_type="text/plain")
    with pytest.raises(openai.BadRequestError) as exc:
        bob.uploads.complete(upload_id=bobs_upload.id, part_ids=[part.id])
    assert_api_error(exc.value, 400, "part_ids")
    done = client.uploads.complete(upload_id=upload.id, part_ids=[part.id])
    assert done.file is not None
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(done.file.id)
