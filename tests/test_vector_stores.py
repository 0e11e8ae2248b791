"""Vector stores through the official SDK: stores, store files and file batches with the poll
helpers, ingestion by the agents (text, markdown, HTML, PDF, docx; broken and unsupported files),
and search with filters, thresholds and deletion, on both search backends.

Ingestion runs in the agents (inside the server on SQLite, a separate `runagent` on PostgreSQL).
The search tests use a server of their own whose embedding model is the fake upstream's
bag-of-words embedder, so texts that share words are close and "the right file first" means
something; they run once per backend (pgvector only on PostgreSQL).
"""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import VectorStore
from openai.types.vector_stores import VectorStoreFile

from tests.conftest import ALICE_KEY, BOB_KEY, DB_KIND, make_client, running_stack
from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import AgentProcess, Database, ServerProcess
from tests.runs_support import api, assert_envelope, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

POLL_MS = 50
GARDEN = (
    "Tomato plants need deep watering twice a week. Water the soil at the base of each tomato plant "
    "in the morning, and mulch the garden bed so the roots stay cool and moist."
)
COOKING = (
    "To bake sourdough bread, feed the starter the night before, mix flour water and salt, fold the "
    "dough every half hour, then bake it in a hot oven inside a covered pot."
)
ASTRONOMY = (
    "Jupiter is the largest planet of the solar system. Its great red spot is a storm larger than "
    "Earth, and its moons Io, Europa, Ganymede and Callisto were found by Galileo."
)


# --- helpers -------------------------------------------------------------------------------------


def upload(client: openai.OpenAI, name: str, content: bytes, purpose: str = "assistants") -> str:
    return client.files.create(file=(name, content), purpose=purpose).id  # type: ignore[arg-type]


def wait_ingested(client: openai.OpenAI, store_id: str) -> VectorStore:
    """Polls the store until nothing is in progress, checking file_counts adds up on every look."""

    def settled() -> VectorStore | None:
        store = client.vector_stores.retrieve(store_id)
        counts = store.file_counts
        assert counts.in_progress + counts.completed + counts.failed + counts.cancelled == counts.total
        return store if counts.in_progress == 0 else None

    return wait_until(settled, within_s=30, what=f"{store_id} to finish ingesting")


def make_pdf(*lines: str) -> bytes:
    """A minimal valid one-page PDF showing `lines` in Helvetica."""
    shown = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
    content = f"BT /F1 12 Tf 72 720 Td {shown} ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        " /Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def make_docx(*paragraphs: str) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "cell alpha", "cell beta"
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def content_text(client: openai.OpenAI, store_id: str, file_id: str) -> list[str]:
    return [part.text for part in client.vector_stores.files.content(file_id, vector_store_id=store_id)]


# --- stores --------------------------------------------------------------------------------------


def test_store_create_retrieve_update_and_delete(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(
        name="handbook", description="the staff handbook", metadata={"team": "ops"},
        expires_after={"anchor": "last_active_at", "days": 7},
    )  # fmt: skip
    assert store.id.startswith("vs_") and store.object == "vector_store"
    assert store.name == "handbook" and store.metadata == {"team": "ops"}
    assert store.status == "completed" and store.usage_bytes == 0
    assert store.file_counts.model_dump() == {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0}
    assert store.expires_after is not None and store.expires_after.days == 7
    assert store.last_active_at is not None and store.expires_at == store.last_active_at + 7 * 86400

    found = client.vector_stores.retrieve(store.id)
    assert found.model_dump() == store.model_dump()

    updated = client.vector_stores.update(store.id, name="renamed", metadata={"team": "eng"}, expires_after=None)
    assert updated.name == "renamed" and updated.metadata == {"team": "eng"}
    assert updated.expires_after is None and updated.expires_at is None

    deleted = client.vector_stores.delete(store.id)
    assert deleted.id == store.id and deleted.deleted is True and deleted.object == "vector_store.deleted"
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)


def test_store_list_pages_newest_first(client: openai.OpenAI) -> None:
    made = [client.vector_stores.create(name=f"page-{index}").id for index in range(3)]
    first = client.vector_stores.list(limit=2)
    assert [store.id for store in first.data][:2] == made[::-1][:2]
    assert first.has_more is True
    second = client.vector_stores.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == made[0]
    oldest_first = [store.id for store in client.vector_stores.list(order="asc", limit=100)]
    assert oldest_first.index(made[0]) < oldest_first.index(made[1]) < oldest_first.index(made[2])


def test_store_without_a_name_renders_an_empty_string(client: openai.OpenAI) -> None:
    store = client.vector_stores.create()
    assert store.name == ""  # the spec's name is a string; the strict SDK refuses null


def test_hidden_stores_are_never_listed_or_served(client: openai.OpenAI, server: ServerProcess) -> None:
    # Hidden stores are made by the Assistants v1 dialect (an assistant's file_ids), which has no
    # endpoint of its own yet: make one the way that code will, through the models.
    made = server.manage(
        "shell",
        "-c",
        "from api_v1.models import VectorStore; from clicky_chats.ids import new_id, now_ns, now_seconds; "
        "s = VectorStore.objects.create(id=new_id('vs_'), project='alice', created_at=now_seconds(), "
        "created_ns=now_ns(), hidden=True); print(s.id)",
    )
    hidden_id = made.stdout.strip().splitlines()[-1]
    assert hidden_id.startswith("vs_")
    listed = [store.id for store in client.vector_stores.list(limit=100)]
    assert hidden_id not in listed
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(hidden_id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.list(hidden_id)


def test_store_validation_answers_400_in_the_envelope(server: ServerProcess) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"expires_after": {"anchor": "last_active_at", "days": 0}}, "expires_after.days"),
        ({"expires_after": {"anchor": "created_at", "days": 3}}, "expires_after.anchor"),
        ({"name": 5}, "name"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"file_ids": "file-x"}, "file_ids"),
        ({"file_ids": ["f"], "chunking_strategy": {"type": "fancy"}}, "chunking_strategy.type"),
        (
            {
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0},
                }
            },
            "chunking_strategy.static.max_chunk_size_tokens",
        ),
        (
            {
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 101},
                }
            },
            "chunking_strategy.static.chunk_overlap_tokens",
        ),
    ]
    for body, param in cases:
        error = assert_envelope(api(server, "POST", "vector_stores", body), 400)
        assert error["param"] == param, (body, error)
    missing = assert_envelope(api(server, "POST", "vector_stores", {"file_ids": ["file-doesnotexist"]}), 404)
    assert missing["param"] == "file_ids[0]"


def test_another_project_sees_nothing(client: openai.OpenAI, bob: openai.OpenAI) -> None:
    file_id = upload(client, "alice.txt", b"alice's private notes about the quarterly plan")
    store = client.vector_stores.create(name="alice-only", file_ids=[file_id])
    wait_ingested(client, store.id)

    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.retrieve(store.id)
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.update(store.id, name="mine")
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.delete(store.id)
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.files.retrieve(file_id, vector_store_id=store.id)
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.search(store.id, query="quarterly plan")
    assert store.id not in [s.id for s in bob.vector_stores.list(limit=100)]
    # Nor can bob put alice's file in a store of his.
    bobs = bob.vector_stores.create(name="bob's")
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.files.create(bobs.id, file_id=file_id)
    with pytest.raises(openai.NotFoundError):
        bob.vector_stores.file_batches.create(bobs.id, file_ids=[file_id])
    assert client.vector_stores.retrieve(store.id).name == "alice-only"


# --- store files and ingestion -------------------------------------------------------------------


def test_store_created_with_file_ids_ingests_them(client: openai.OpenAI) -> None:
    first = upload(client, "garden.txt", GARDEN.encode())
    second = upload(client, "bread.md", f"# Bread\n\n{COOKING}\n".encode())
    store = client.vector_stores.create(name="two files", file_ids=[first, second])
    assert store.file_counts.total == 2

    done = wait_ingested(client, store.id)
    assert done.status == "completed"
    assert done.file_counts.model_dump() == {"in_progress": 0, "completed": 2, "failed": 0, "cancelled": 0, "total": 2}
    files = {item.id: item for item in client.vector_stores.files.list(store.id)}
    assert set(files) == {first, second}
    assert all(item.status == "completed" and item.last_error is None for item in files.values())
    assert done.usage_bytes == sum(item.usage_bytes for item in files.values()) > len(GARDEN) + len(COOKING)
    assert content_text(client, store.id, first) == [GARDEN]
    assert "# Bread" in content_text(client, store.id, second)[0]


def test_files_upload_and_poll_with_attributes_and_their_update(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="upload and poll")
    done = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("notes.md", b"Meeting notes: ship the search engine on Friday."),
        attributes={"author": "alice", "year": 2025, "draft": False},
        poll_interval_ms=POLL_MS,
    )
    assert isinstance(done, VectorStoreFile) and done.status == "completed"
    assert done.vector_store_id == store.id and done.attributes == {"author": "alice", "year": 2025, "draft": False}
    assert done.chunking_strategy is not None and done.chunking_strategy.model_dump() == {
        "type": "static",
        "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
    }
    updated = client.vector_stores.files.update(done.id, vector_store_id=store.id, attributes={"author": "bob"})
    assert updated.attributes == {"author": "bob"}
    assert client.vector_stores.files.retrieve(done.id, vector_store_id=store.id).attributes == {"author": "bob"}


def test_attributes_are_checked(client: openai.OpenAI, server: ServerProcess) -> None:
    store = client.vector_stores.create(name="attributes")
    file_id = upload(client, "a.txt", b"attribute checks")
    for attributes, param in [
        ({"k": {"nested": 1}}, "attributes.k"),
        ({f"key{i}": i for i in range(17)}, "attributes"),
        ({"k": "x" * 513}, "attributes.k"),
    ]:
        body = {"file_id": file_id, "attributes": attributes}
        error = assert_envelope(api(server, "POST", f"vector_stores/{store.id}/files", body), 400)
        assert error["param"] == param


def test_static_chunking_cuts_overlapping_windows(client: openai.OpenAI) -> None:
    sentences = [f"Sentence number {index} talks about topic {index % 7} in some detail." for index in range(200)]
    text = " ".join(sentences)
    store = client.vector_stores.create(name="static chunks")
    done = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("long.txt", text.encode()),
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50}},
        poll_interval_ms=POLL_MS,
    )
    assert done.status == "completed"
    assert done.chunking_strategy is not None and done.chunking_strategy.model_dump()["static"] == {
        "max_chunk_size_tokens": 100,
        "chunk_overlap_tokens": 50,
    }
    chunks = content_text(client, store.id, done.id)
    assert len(chunks) > len(text) // 400  # ~100 tokens (~400 characters) each, overlapping
    assert all(len(chunk) <= 400 for chunk in chunks)
    for before, after in itertools.pairwise(chunks):
        assert after[:40] in before  # each chunk starts inside the one before it
    assert chunks[0].startswith("Sentence number 0 ") and chunks[-1].endswith("topic 3 in some detail.")


def test_formats_are_extracted_as_text(client: openai.OpenAI) -> None:
    html = (
        b"<!doctype html><html><head><title>Greenhouse</title><style>p {color: red}</style>"
        b"<script>var secret = 'never indexed';</script></head>"
        b"<body><h1>Greenhouse guide</h1><p>Open the vents &amp; water early.</p></body></html>"
    )
    pdf = make_pdf("Invoice number 4711", "Total due: 99 euros")
    docx_bytes = make_docx("Quarterly report", "Revenue grew by ten percent.")
    json_text = b'{"name": "config", "retries": 3}'
    csv_text = b"city,population\nParis,2100000\nLyon,520000\n"
    code = b"def greet(name):\n    return f'hello {name}'\n"
    uploads = {
        "page.html": html,
        "invoice.pdf": pdf,
        "report.docx": docx_bytes,
        "config.json": json_text,
        "cities.csv": csv_text,
        "greet.py": code,
    }
    ids = {name: upload(client, name, content) for name, content in uploads.items()}
    store = client.vector_stores.create(name="formats", file_ids=list(ids.values()))
    wait_ingested(client, store.id)
    statuses = {item.id: (item.status, item.last_error) for item in client.vector_stores.files.list(store.id)}
    assert all(status == "completed" for status, _ in statuses.values()), statuses

    page = "\n".join(content_text(client, store.id, ids["page.html"]))
    assert "Greenhouse guide" in page and "Open the vents & water early." in page
    assert "<" not in page and "never indexed" not in page and "color: red" not in page
    invoice = "\n".join(content_text(client, store.id, ids["invoice.pdf"]))
    assert "Invoice number 4711" in invoice and "Total due: 99 euros" in invoice
    report = "\n".join(content_text(client, store.id, ids["report.docx"]))
    assert "Quarterly report" in report and "Revenue grew by ten percent." in report and "cell beta" in report
    assert content_text(client, store.id, ids["config.json"]) == [json_text.decode()]
    assert content_text(client, store.id, ids["cities.csv"]) == [csv_text.decode().strip()]
    assert content_text(client, store.id, ids["greet.py"]) == [code.decode().strip()]


def test_broken_and_unsupported_files_end_failed_with_last_error(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="bad files")
    corrupt = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id,
        file=("broken.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\nthis is not a pdf body"),
        poll_interval_ms=POLL_MS,
    )
    assert corrupt.status == "failed"
    assert corrupt.last_error is not None and corrupt.last_error.code == "invalid_file"
    assert "broken.pdf" in corrupt.last_error.message

    # An image is a fine file (purpose vision), but there is no text in it to search.
    image_id = upload(client, "photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, purpose="vision")
    image = client.vector_stores.files.create_and_poll(image_id, vector_store_id=store.id, poll_interval_ms=POLL_MS)
    assert image.status == "failed"
    assert image.last_error is not None and image.last_error.code == "unsupported_file"

    # A PDF with no text at all (a scan, say) cannot be searched either.
    blank = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("blank.pdf", make_pdf()), poll_interval_ms=POLL_MS
    )
    assert blank.status == "failed" and blank.last_error is not None and blank.last_error.code == "invalid_file"

    done = client.vector_stores.retrieve(store.id)
    assert done.file_counts.failed == 3 and done.file_counts.in_progress == 0 and done.usage_bytes == 0
    failed = [item.id for item in client.vector_stores.files.list(store.id, filter="failed")]
    assert sorted(failed) == sorted([corrupt.id, image.id, blank.id])
    assert list(client.vector_stores.files.list(store.id, filter="completed")) == []
    assert content_text(client, store.id, corrupt.id) == []


def test_embedding_upstream_errors_fail_the_file(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("embeddings", Reply.error(400, "This model does not support embeddings.", code="bad_model"))
    store = client.vector_stores.create(name="upstream says no")
    done = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("x.txt", b"some words to embed"), poll_interval_ms=POLL_MS
    )
    assert done.status == "failed" and done.last_error is not None
    assert done.last_error.code == "server_error"
    assert "This model does not support embeddings." in done.last_error.message


def test_a_retried_upstream_failure_still_completes(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("embeddings", Reply.error(503, "overloaded", type="server_error"))
    store = client.vector_stores.create(name="retries")
    done = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("y.txt", b"embedding after a retry"), poll_interval_ms=POLL_MS
    )
    assert done.status == "completed"
    assert [r.path for r in fake_upstream.requests].count("embeddings") >= 2


def test_store_file_errors(client: openai.OpenAI, server: ServerProcess) -> None:
    store = client.vector_stores.create(name="errors")
    assert_envelope(api(server, "POST", f"vector_stores/{store.id}/files", {}), 400)
    missing = assert_envelope(api(server, "POST", f"vector_stores/{store.id}/files", {"file_id": "file-nope"}), 404)
    assert missing["param"] == "file_id"
    bad_filter = assert_envelope(api(server, "GET", f"vector_stores/{store.id}/files?filter=done"), 400)
    assert bad_filter["param"] == "filter"
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.retrieve("file-nope", vector_store_id=store.id)
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.list("vs_doesnotexist")
    file_id = upload(client, "z.txt", b"attach twice")
    once = client.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id, poll_interval_ms=POLL_MS)
    again = client.vector_stores.files.create(store.id, file_id=file_id)
    assert again.id == once.id and again.status == "completed"  # attaching again changes nothing
    assert client.vector_stores.retrieve(store.id).file_counts.total == 1


def test_deleting_a_store_file_removes_it_and_its_chunks(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="delete file")
    done = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("gone.txt", b"text that will be deleted"), poll_interval_ms=POLL_MS
    )
    assert client.vector_stores.retrieve(store.id).usage_bytes > 0
    deleted = client.vector_stores.files.delete(done.id, vector_store_id=store.id)
    assert deleted.deleted is True and deleted.object == "vector_store.file.deleted"
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.content(done.id, vector_store_id=store.id)
    after = client.vector_stores.retrieve(store.id)
    assert after.file_counts.total == 0 and after.usage_bytes == 0
    assert client.files.retrieve(done.id).id == done.id  # the file itself stays


def test_store_files_list_pages_and_filters(client: openai.OpenAI) -> None:
    ids = [upload(client, f"p{index}.txt", f"page file {index}".encode()) for index in range(3)]
    store = client.vector_stores.create(name="file pages")
    for file_id in ids:
        client.vector_stores.files.create(store.id, file_id=file_id)
    wait_ingested(client, store.id)
    first = client.vector_stores.files.list(store.id, limit=2)
    assert [item.id for item in first.data] == ids[::-1][:2] and first.has_more
    rest = client.vector_stores.files.list(store.id, limit=2, after=first.data[-1].id)
    assert [item.id for item in rest.data] == [ids[0]] and not rest.has_more
    assert [item.id for item in client.vector_stores.files.list(store.id, order="asc", filter="completed")] == ids
    assert list(client.vector_stores.files.list(store.id, filter="in_progress")) == []


def test_a_file_whose_agent_dies_is_taken_over(database: Database, fake_upstream: FakeUpstream) -> None:
    # A server of its own, without agents inside, and a short lease: the agent is killed mid-file.
    proc = ServerProcess(
        database,
        fake_upstream.base_url,
        env={
            "CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}",
            "CLICKY_CHATS_EMBEDDING_MODEL": "fake-bow-embedder",
            "CLICKY_CHATS_RUN_LEASE_S": "2",
        },
        with_agents=False,
    ).start()
    first = AgentProcess(proc).start()
    second: AgentProcess | None = None
    try:
        with make_client(proc) as client:
            fake_upstream.script("embeddings", Reply.hang())
            store = client.vector_stores.create(name="takeover")
            file_id = upload(client, "orphan.txt", GARDEN.encode())
            client.vector_stores.files.create(store.id, file_id=file_id)
            wait_until(lambda: any(r.path == "embeddings" for r in fake_upstream.requests), what="the first agent")
            assert first.process is not None
            first.process.kill()  # no goodbye: its lease simply runs out
            first.process.wait(10)
            assert client.vector_stores.files.retrieve(file_id, vector_store_id=store.id).status == "in_progress"

            second = AgentProcess(proc).start()
            done = client.vector_stores.files.poll(file_id, vector_store_id=store.id, poll_interval_ms=POLL_MS)
            assert done.status == "completed" and done.last_error is None
            assert content_text(client, store.id, file_id) == [GARDEN]
    finally:
        if second is not None:
            second.stop()
        first.stop()
        proc.stop()


# --- file batches --------------------------------------------------------------------------------


def test_file_batches_upload_and_poll(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="batch")
    existing = upload(client, "existing.txt", b"an earlier upload joins the batch")
    batch = client.vector_stores.file_batches.upload_and_poll(
        store.id,
        files=[(f"b{index}.txt", f"batch file number {index}".encode()) for index in range(4)],
        file_ids=[existing],
        poll_interval_ms=POLL_MS,
    )
    assert batch.id.startswith("vsfb_") and batch.object == "vector_store.files_batch"
    assert batch.status == "completed" and batch.vector_store_id == store.id
    assert batch.file_counts.model_dump() == {"in_progress": 0, "completed": 5, "failed": 0, "cancelled": 0, "total": 5}
    listed = list(client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id))
    assert len(listed) == 5 and existing in {item.id for item in listed}
    assert client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id).status == "completed"
    assert client.vector_stores.retrieve(store.id).file_counts.completed == 5


def test_file_batch_with_per_file_attributes(client: openai.OpenAI, server: ServerProcess) -> None:
    store = client.vector_stores.create(name="per-file")
    red, blue = upload(client, "red.txt", b"red things"), upload(client, "blue.txt", b"blue things")
    batch = client.vector_stores.file_batches.create_and_poll(
        store.id,
        files=[
            {"file_id": red, "attributes": {"color": "red"}},
            {
                "file_id": blue,
                "attributes": {"color": "blue"},
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 0},
                },
            },
        ],
        poll_interval_ms=POLL_MS,
    )
    assert batch.file_counts.completed == 2
    red_file = client.vector_stores.files.retrieve(red, vector_store_id=store.id)
    blue_file = client.vector_stores.files.retrieve(blue, vector_store_id=store.id)
    assert red_file.attributes == {"color": "red"} and blue_file.attributes == {"color": "blue"}
    assert blue_file.chunking_strategy is not None
    assert blue_file.chunking_strategy.model_dump()["static"]["max_chunk_size_tokens"] == 200

    both = {"file_ids": [red], "files": [{"file_id": blue}]}
    assert_envelope(api(server, "POST", f"vector_stores/{store.id}/file_batches", both), 400)
    assert_envelope(api(server, "POST", f"vector_stores/{store.id}/file_batches", {}), 400)
    empty = assert_envelope(api(server, "POST", f"vector_stores/{store.id}/file_batches", {"file_ids": []}), 400)
    assert empty["param"] == "file_ids"
    unknown = {"files": [{"file_id": red}, {"file_id": "file-missing"}]}
    assert assert_envelope(api(server, "POST", f"vector_stores/{store.id}/file_batches", unknown), 404)["param"] == (
        "files[1].file_id"
    )


def test_cancelling_a_batch_stops_its_ingestion(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    # The upstream never answers the first embedding requests: the batch stays in progress.
    fake_upstream.script("embeddings", Reply.hang(), Reply.hang())
    store = client.vector_stores.create(name="cancel")
    ids = [upload(client, f"c{index}.txt", f"cancel me {index}".encode()) for index in range(2)]
    batch = client.vector_stores.file_batches.create(store.id, file_ids=ids)
    assert batch.status == "in_progress" and batch.file_counts.in_progress == 2
    wait_until(lambda: any(r.path == "embeddings" for r in fake_upstream.requests), what="an agent to start embedding")

    cancelled = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
    assert cancelled.status == "cancelled"
    assert cancelled.file_counts.model_dump() == {
        "in_progress": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 2,
        "total": 2,
    }
    assert client.vector_stores.file_batches.poll(batch.id, vector_store_id=store.id).status == "cancelled"
    # The agents' hung calls time out (CLICKY_CHATS_MODEL_TIMEOUT_S is 3 s in tests) and are
    # retried; whatever an agent does then must write nothing: the files stay cancelled.
    time.sleep(4)
    statuses = {item.status for item in client.vector_stores.files.list(store.id)}
    assert statuses == {"cancelled"}
    assert client.vector_stores.retrieve(store.id).usage_bytes == 0
    finished = client.vector_stores.file_batches.create_and_poll(store.id, file_ids=ids, poll_interval_ms=POLL_MS)
    assert finished.file_counts.completed == 2  # cancelled files attached again are ingested again


# --- search (both backends) ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["numpy", "pgvector"])
def search_server(
    request: pytest.FixtureRequest, server: ServerProcess, database: Database, fake_upstream: FakeUpstream
) -> Iterator[ServerProcess]:
    """The main server for the default NumPy backend; a server of its own for pgvector."""
    if request.param == "numpy":
        yield server
        return
    if DB_KIND != "postgres":
        pytest.skip("the pgvector backend needs PostgreSQL (run with CLICKY_CHATS_TEST_DB=postgres)")
    with running_stack(
        database,
        fake_upstream.base_url,
        {
            "CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY},bob:{BOB_KEY}",
            "CLICKY_CHATS_EMBEDDING_MODEL": server.env["CLICKY_CHATS_EMBEDDING_MODEL"],
            "CLICKY_CHATS_SEARCH_BACKEND": "pgvector",
        },
    ) as proc:
        yield proc


@pytest.fixture
def searcher(search_server: ServerProcess, fake_upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with make_client(search_server) as sdk:
        yield sdk


def topic_store(client: openai.OpenAI) -> tuple[str, dict[str, str]]:
    """A store with three files on three topics, each with attributes."""
    ids = {
        "garden": upload(client, "garden.txt", GARDEN.encode()),
        "cooking": upload(client, "bread.txt", COOKING.encode()),
        "astronomy": upload(client, "jupiter.txt", ASTRONOMY.encode()),
    }
    store = client.vector_stores.create(name="topics")
    batch = client.vector_stores.file_batches.create_and_poll(
        store.id,
        files=[
            {"file_id": ids["garden"], "attributes": {"topic": "garden", "year": 2023, "public": True}},
            {"file_id": ids["cooking"], "attributes": {"topic": "cooking", "year": 2024, "public": True}},
            {"file_id": ids["astronomy"], "attributes": {"topic": "astronomy", "year": 2025, "public": False}},
        ],
        poll_interval_ms=POLL_MS,
    )
    assert batch.file_counts.completed == 3
    return store.id, ids


def test_search_ranks_the_right_file_first(searcher: openai.OpenAI) -> None:
    store_id, ids = topic_store(searcher)
    for query, expected in [
        ("how often should I water my tomato plants", "garden"),
        ("bake bread with a sourdough starter", "cooking"),
        ("moons of the largest planet", "astronomy"),
    ]:
        results = list(searcher.vector_stores.search(store_id, query=query))
        assert results, query
        assert results[0].file_id == ids[expected], (query, [(r.filename, r.score) for r in results])
        assert all(0 <= r.score <= 1 for r in results)
        assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    top = next(iter(searcher.vector_stores.search(store_id, query="tomato plants watering", max_num_results=1)))
    assert top.filename == "garden.txt" and top.content[0].type == "text" and top.content[0].text == GARDEN
    assert top.attributes == {"topic": "garden", "year": 2023, "public": True}
    assert len(list(searcher.vector_stores.search(store_id, query="water", max_num_results=2))) == 2


def test_search_page_shape_and_queries(searcher: openai.OpenAI, search_server: ServerProcess) -> None:
    store_id, ids = topic_store(searcher)
    # The raw page: search_query and next_page are not exposed by the SDK's SyncPage.
    page = api(search_server, "POST", f"vector_stores/{store_id}/search", {"query": ["red spot storm", "Galileo"]})
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["object"] == "vector_store.search_results.page"
    assert body["search_query"] == ["red spot storm", "Galileo"]
    assert body["has_more"] is False and body["next_page"] is None
    assert body["data"][0]["file_id"] == ids["astronomy"]
    assert set(body["data"][0]) == {"file_id", "filename", "score", "attributes", "content"}

    rewritten = api(
        search_server,
        "POST",
        f"vector_stores/{store_id}/search",
        {"query": "What is the best way to bake the bread?", "rewrite_query": True},
    ).json()
    assert rewritten["search_query"] == ["best way bake bread"]
    assert rewritten["data"][0]["file_id"] == ids["cooking"]

    plain = list(searcher.vector_stores.search(store_id, query="sourdough oven", ranking_options={"ranker": "none"}))
    assert plain[0].file_id == ids["cooking"]

    for body, param in [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "x", "max_num_results": 51}, "max_num_results"),
        ({"query": "x", "max_num_results": 0}, "max_num_results"),
        ({"query": "x", "ranking_options": {"score_threshold": 1.5}}, "ranking_options.score_threshold"),
        ({"query": "x", "ranking_options": {"ranker": "best"}}, "ranking_options.ranker"),
        ({"query": "x", "filters": {"type": "like", "key": "k", "value": 1}}, "filters.type"),
        ({"query": "x", "filters": {"type": "in", "key": "k", "value": "a"}}, "filters.value"),
        ({"query": "x", "filters": {"type": "and", "filters": []}}, "filters.filters"),
        (
            {"query": "x", "filters": {"type": "or", "filters": [{"type": "eq", "key": "k"}]}},
            "filters.filters[0].value",
        ),
    ]:
        error = assert_envelope(api(search_server, "POST", f"vector_stores/{store_id}/search", body), 400)
        assert error["param"] == param, (body, error)


def test_search_filters_on_attributes(searcher: openai.OpenAI) -> None:
    store_id, ids = topic_store(searcher)

    def found(filters: dict[str, Any]) -> set[str]:
        return {r.file_id for r in searcher.vector_stores.search(store_id, query="water bread planet", filters=filters)}

    assert found({"type": "eq", "key": "topic", "value": "cooking"}) == {ids["cooking"]}
    assert found({"type": "ne", "key": "topic", "value": "cooking"}) == {ids["garden"], ids["astronomy"]}
    assert found({"type": "gte", "key": "year", "value": 2024}) == {ids["cooking"], ids["astronomy"]}
    assert found({"type": "lt", "key": "year", "value": 2024}) == {ids["garden"]}
    assert found({"type": "in", "key": "topic", "value": ["garden", "astronomy"]}) == {ids["garden"], ids["astronomy"]}
    assert found({"type": "nin", "key": "topic", "value": ["garden", "astronomy"]}) == {ids["cooking"]}
    assert found({"type": "eq", "key": "public", "value": False}) == {ids["astronomy"]}
    assert found({"type": "eq", "key": "year", "value": "2023"}) == set()  # a string is not a number
    assert found({"type": "eq", "key": "missing", "value": "x"}) == set()
    compound = {
        "type": "or",
        "filters": [
            {"type": "eq", "key": "topic", "value": "garden"},
            {
                "type": "and",
                "filters": [
                    {"type": "eq", "key": "public", "value": False},
                    {"type": "gt", "key": "year", "value": 2024},
                ],
            },
        ],
    }
    assert found(compound) == {ids["garden"], ids["astronomy"]}
    # The filter narrows the candidates: the cooking file still answers a garden question.
    results = list(
        searcher.vector_stores.search(
            store_id, query="tomato plants", filters={"type": "eq", "key": "topic", "value": "cooking"}
        )
    )
    assert [r.file_id for r in results] == [ids["cooking"]]


def test_search_score_threshold(searcher: openai.OpenAI) -> None:
    store_id, ids = topic_store(searcher)
    query = "tomato plants need deep watering"
    everything = list(searcher.vector_stores.search(store_id, query=query))
    assert len(everything) == 3 and everything[0].file_id == ids["garden"]
    cut = (everything[0].score + everything[1].score) / 2
    above = list(searcher.vector_stores.search(store_id, query=query, ranking_options={"score_threshold": cut}))
    assert [r.file_id for r in above] == [ids["garden"]] and above[0].score >= cut
    assert list(searcher.vector_stores.search(store_id, query=query, ranking_options={"score_threshold": 1})) == []


def test_deleted_files_leave_the_results(searcher: openai.OpenAI) -> None:
    store_id, ids = topic_store(searcher)
    assert next(iter(searcher.vector_stores.search(store_id, query="tomato garden"))).file_id == ids["garden"]
    searcher.vector_stores.files.delete(ids["garden"], vector_store_id=store_id)
    after = {r.file_id for r in searcher.vector_stores.search(store_id, query="tomato garden")}
    assert after == {ids["cooking"], ids["astronomy"]}
    # Deleting the File itself takes it out of every store as well.
    searcher.files.delete(ids["cooking"])
    assert {r.file_id for r in searcher.vector_stores.search(store_id, query="bread")} == {ids["astronomy"]}
    searcher.vector_stores.delete(store_id)
    with pytest.raises(openai.NotFoundError):
        searcher.vector_stores.search(store_id, query="bread")


def test_search_sees_only_completed_files_of_its_store(searcher: openai.OpenAI) -> None:
    store_id, ids = topic_store(searcher)
    other = searcher.vector_stores.create(name="other")
    searcher.vector_stores.files.upload_and_poll(
        vector_store_id=other.id, file=("tomatoes.txt", GARDEN.encode()), poll_interval_ms=POLL_MS
    )
    results = list(searcher.vector_stores.search(store_id, query="tomato plants", max_num_results=50))
    assert {r.file_id for r in results} == set(ids.values())
    in_other = list(searcher.vector_stores.search(other.id, query="tomato plants"))
    assert [r.filename for r in in_other] == ["tomatoes.txt"]


def test_search_of_an_upstream_that_cannot_embed(
    searcher: openai.OpenAI, search_server: ServerProcess, fake_upstream: FakeUpstream
) -> None:
    store = searcher.vector_stores.create(name="upstream down")
    fake_upstream.script("embeddings", Reply.error(500, "embedder on fire", type="server_error"))
    error = assert_envelope(api(search_server, "POST", f"vector_stores/{store.id}/search", {"query": "hello"}), 502)
    assert "embedder on fire" in error["message"]
    fake_upstream.script("embeddings", Reply.error(429, "slow down", type="requests"))
    assert_envelope(api(search_server, "POST", f"vector_stores/{store.id}/search", {"query": "hello"}), 429)
