"""Ingesting vector-store files in the agents, never in a request: extract the text, chunk it,
embed the chunks through the upstream, store them.

A store file is claimed the way a run is (agents/runs.py): a compare-and-set on its fencing token
(SKIP LOCKED on PostgreSQL), a lease renewed by a heartbeat, and every write made with the file's
row locked and the token checked, so an agent that lost its claim (the file was deleted, its batch
cancelled, or its lease taken over) writes nothing more. A file whose agent dies is taken over
when the lease runs out and started again from scratch; after MAX_ATTEMPTS claims it fails.

Memory stays flat whatever the file's size: text is read and decoded in blocks, chunks are cut
from a bounded buffer, and they are embedded and written EMBED_BATCH at a time.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath
from typing import IO, Any

import numpy as np
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import F, Q

from agents import engine, kra, search
from agents.db import db
from agents.runs import LeaseLost
from api_v1.models import Chunk, VectorStoreFile
from clicky_chats.config import env_int

log = logging.getLogger("clicky_chats.agents")

MAX_ATTEMPTS = 3
# The token estimate: UTF-8 bytes / 4, close to OpenAI's tokenizers for English and code, and
# conservative (more tokens) for other scripts. tiktoken would download its tables at run time.
BYTES_PER_TOKEN = 4
READ_BLOCK = 1024 * 1024
# Chunks per embeddings request (and per database write), and a cap on their text per request.
EMBED_BATCH = 64
EMBED_BATCH_CHARS = 400_000


class IngestFailed(Exception):
    """The file cannot be ingested: code is unsupported_file, invalid_file or server_error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- extraction ----------------------------------------------------------------------------------

TEXT_EXTENSIONS = frozenset(
    """.txt .text .md .markdown .mdx .rst .adoc .org .tex .csv .tsv .json .jsonl .ndjson .xml .yaml .yml
    .toml .ini .cfg .conf .log .py .pyi .js .mjs .cjs .ts .tsx .jsx .java .kt .kts .scala .groovy .c .h
    .cc .cpp .cxx .hpp .hh .cs .go .rs .rb .php .pl .pm .sh .bash .zsh .ps1 .bat .swift .m .mm .r .lua
    .sql .css .scss .less .vue .svelte .dart .ex .exs .erl .hs .ml .clj .el .vim .tf .proto .graphql
    .gradle .properties .env .dockerfile .makefile .diff .patch .srt .vtt""".split()
)
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml"})
# Formats we know and cannot read: answered unsupported_file rather than guessed at.
BINARY_EXTENSIONS = frozenset(
    """.png .jpg .jpeg .gif .bmp .webp .tiff .ico .mp3 .wav .ogg .flac .m4a .mp4 .mov .avi .mkv .webm
    .zip .gz .tgz .bz2 .xz .7z .rar .tar .exe .dll .so .dylib .bin .iso .dmg .doc .xls .xlsx .ppt .pptx
    .odt .ods .odp .rtf .epub .sqlite .db .parquet .pkl .npy""".split()
)
SKIPPED_HTML_TAGS = frozenset({"script", "style", "noscript", "template", "svg"})
BLOCK_HTML_TAGS = frozenset(
    """p div br hr li ul ol tr td th table section article header footer nav aside main h1 h2 h3 h4
    h5 h6 pre blockquote dt dd title""".split()
)
SPACES = re.compile(r"[ \t\r\f\v]+")
BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")


def file_kind(filename: str, head: bytes) -> str:
    """pdf | docx | html | text, from the name and the first bytes; raises IngestFailed otherwise."""
    suffix = PurePath(filename.lower()).suffix
    if head.startswith(b"%PDF") or suffix == ".pdf":
        return "pdf"
    if suffix == ".docx":
        return "docx"
    if suffix in HTML_EXTENSIONS:
        return "html"
    if suffix in TEXT_EXTENSIONS:
        return "text"
    if suffix in BINARY_EXTENSIONS:
        raise IngestFailed("unsupported_file", f"Files of type '{suffix}' are not supported for file search.")
    if _looks_like_text(head):
        return "html" if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")) else "text"
    raise IngestFailed("unsupported_file", f"The file '{filename}' is not text, PDF or docx.")


def _looks_like_text(head: bytes) -> bool:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF8)):
        return True
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # only a character cut at the end of the sample


def _encoding(head: bytes) -> str:
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return "cp1252"  # not UTF-8: the likeliest legacy encoding, and it rarely fails
    return "utf-8"


def _text_blocks(stream: IO[bytes], head: bytes, filename: str) -> Iterator[str]:
    if b"\x00" in head and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise IngestFailed("invalid_file", f"The file '{filename}' is named like text but holds binary data.")
    decoder = codecs.getincrementaldecoder(_encoding(head))(errors="replace")
    while block := stream.read(READ_BLOCK):
        yield decoder.decode(block)
    yield decoder.decode(b"", final=True)


class _HtmlText(HTMLParser):
    """The visible text of an HTML document, fed in blocks: tags stripped, scripts and styles
    dropped, block elements on lines of their own."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIPPED_HTML_TAGS:
            self.skipping += 1
        elif tag in BLOCK_HTML_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIPPED_HTML_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag in BLOCK_HTML_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return BLANK_LINES.sub("\n\n", SPACES.sub(" ", text))


def _html_blocks(stream: IO[bytes], head: bytes, filename: str) -> Iterator[str]:
    parser = _HtmlText()
    for block in _text_blocks(stream, head, filename):
        parser.feed(block)
        yield parser.take()
    parser.close()
    yield parser.take()


def _pdf_pages(stream: IO[bytes], filename: str) -> Iterator[str]:
    import pypdf

    try:
        reader = pypdf.PdfReader(stream)
        if reader.is_encrypted and not reader.decrypt(""):
            raise IngestFailed("invalid_file", f"The PDF '{filename}' is encrypted.")
        pages = reader.pages
        for index in range(len(pages)):
            yield (pages[index].extract_text() or "") + "\n\n"
    except IngestFailed:
        raise
    except Exception as exc:  # pypdf raises many kinds on broken input, all meaning "not a readable PDF"
        raise IngestFailed("invalid_file", f"The PDF '{filename}' could not be read: {exc}") from None


def _docx_blocks(stream: IO[bytes], filename: str) -> Iterator[str]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(stream)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise IngestFailed("invalid_file", f"The docx file '{filename}' could not be read: {exc}") from None
    except Exception as exc:  # python-docx wraps XML and packaging errors in several kinds
        raise IngestFailed("invalid_file", f"The docx file '{filename}' could not be read: {exc}") from None
    body = document.element.body
    for element in body.iterchildren():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "p":
            yield Paragraph(element, document).text + "\n"
        elif tag == "tbl":
            table = Table(element, document)
            for row in table.rows:
                yield "\t".join(cell.text for cell in row.cells) + "\n"
            yield "\n"


def extract(stream: IO[bytes], filename: str) -> Iterator[str]:
    """The file's text, in pieces, reading as little at a time as the format allows."""
    head = stream.read(64 * 1024)
    kind = file_kind(filename, head)
    stream.seek(0)
    if kind == "pdf":
        return _pdf_pages(stream, filename)
    if kind == "docx":
        return _docx_blocks(stream, filename)
    if kind == "html":
        return _html_blocks(stream, head, filename)
    return _text_blocks(stream, head, filename)


# --- chunking ------------------------------------------------------------------------------------

WHITESPACE = re.compile(r"\s")
BREAKS = ("\n\n", "\n", ". ", " ")


def estimate_tokens(text: str) -> int:
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    return -(-size // BYTES_PER_TOKEN)


def _window(buffer: str, start: int, size: int, overlap: int) -> tuple[int, int]:
    """Where the chunk starting at `start` ends, and where the next one starts."""
    end = min(len(buffer), start + size)
    window = buffer[start:end]
    if window and not window.isascii():
        # Wider characters cost more tokens: shrink the window to the same estimate.
        ratio = len(window.encode("utf-8")) / len(window)
        end = min(len(buffer), start + max(1, int(size / ratio)))
        overlap = int(overlap / ratio)
    if end < len(buffer):
        low = start + (end - start) // 2
        for mark in BREAKS:
            cut = buffer.rfind(mark, low, end)
            if cut != -1:
                end = cut + len(mark)
                break
    next_start = end
    if overlap:
        next_start = end - overlap
        space = WHITESPACE.search(buffer, next_start, end)
        if space is not None:
            next_start = space.end()
    return end, max(next_start, start + 1)


def chunk_text(pieces: Iterable[str], max_tokens: int, overlap_tokens: int) -> Iterator[str]:
    """Windows of at most `max_tokens` (estimated) overlapping by about `overlap_tokens`, cut at a
    paragraph, line, sentence or word boundary where one is near. Holds one window plus one piece."""
    size, overlap = max_tokens * BYTES_PER_TOKEN, overlap_tokens * BYTES_PER_TOKEN
    buffer, start, covered = "", 0, 0
    for piece in pieces:
        if not piece:
            continue
        buffer = buffer[start:] + piece
        covered, start = max(0, covered - start), 0
        while len(buffer) - start > size:
            end, next_start = _window(buffer, start, size, overlap)
            text = buffer[start:end].strip()
            if text:
                yield text
            covered, start = end, next_start
    while start < len(buffer) and covered < len(buffer):
        end, next_start = _window(buffer, start, size, overlap)
        text = buffer[start:end].strip()
        if text:
            yield text
        covered, start = end, next_start


def batches(chunks: Iterator[str]) -> list[str]:
    """The next embeddings request's worth of chunks ([] at the end)."""
    batch: list[str] = []
    chars = 0
    for text in chunks:
        batch.append(text)
        chars += len(text)
        if len(batch) >= EMBED_BATCH or chars >= EMBED_BATCH_CHARS:
            break
    return batch


# --- claiming and fenced writes (run on the agent's database thread) ------------------------------


def ingest_claim(capacity: int, lease_s: float) -> list[tuple[int, int, int]]:
    """Claims up to `capacity` store files waiting for ingestion; returns (pk, fence, attempt)."""
    now = time.time()
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    claimed: list[tuple[int, int, int]] = []
    with transaction.atomic():
        candidates = VectorStoreFile.objects.filter(free, status="in_progress").order_by("created_ns")
        if connection.vendor == "postgresql":
            candidates = candidates.select_for_update(skip_locked=True)
        for pk, fence, attempts in list(candidates.values_list("pk", "fence", "attempts")[:capacity]):
            won = VectorStoreFile.objects.filter(free, pk=pk, fence=fence, status="in_progress").update(
                lease_expires_at=now + lease_s, fence=fence + 1, attempts=F("attempts") + 1
            )
            if won:
                claimed.append((pk, fence + 1, attempts + 1))
    return claimed


def ingest_renew(pk: int, fence: int, lease_s: float) -> None:
    if not VectorStoreFile.objects.filter(pk=pk, fence=fence, status="in_progress").update(
        lease_expires_at=time.time() + lease_s
    ):
        raise LeaseLost(pk)


def ingest_release(pk: int, fence: int) -> None:
    """Gives the file back (the agent is stopping); the attempt does not count against it."""
    VectorStoreFile.objects.filter(pk=pk, fence=fence, status="in_progress").update(
        lease_expires_at=None, attempts=F("attempts") - 1
    )


def _locked(pk: int, fence: int) -> VectorStoreFile:
    """Call inside a transaction: the store file's row, locked, if this claim still holds it."""
    found = VectorStoreFile.objects.select_for_update().filter(pk=pk, status="in_progress").first()
    if found is None or found.fence != fence:
        raise LeaseLost(pk)
    return found


@dataclass(frozen=True)
class Job:
    storage_name: str
    filename: str
    size: int
    max_tokens: int
    overlap_tokens: int


def ingest_start(pk: int, fence: int) -> Job:
    """What to ingest; drops whatever an earlier, interrupted attempt wrote."""
    with transaction.atomic():
        store_file = _locked(pk, fence)
        Chunk.objects.filter(store_file=store_file).delete()
        VectorStoreFile.objects.filter(pk=pk).update(usage_bytes=0, last_error=None)
        static = (store_file.chunking_strategy or {}).get("static") or {}
        return Job(
            storage_name=store_file.file.storage_name,
            filename=store_file.file.filename,
            size=store_file.file.bytes,
            max_tokens=int(static.get("max_chunk_size_tokens", 800)),
            overlap_tokens=int(static.get("chunk_overlap_tokens", 400)),
        )


def write_chunks(pk: int, fence: int, first_ordinal: int, texts: list[str], vectors: np.ndarray) -> int:
    """Stores one batch of chunks with their embeddings; returns the bytes they use."""
    with transaction.atomic():
        store_file = _locked(pk, fence)
        rows = [
            Chunk(
                store_file_id=pk,
                vector_store_id=store_file.vector_store_id,
                file_id=store_file.file_id,
                ordinal=first_ordinal + offset,
                text=text,
                embedding=vectors[offset].astype("<f4").tobytes(),
                dimensions=int(vectors.shape[1]),
            )
            for offset, text in enumerate(texts)
        ]
        created = Chunk.objects.bulk_create(rows)
        search.backend().index(created)
        used = sum(len(row.text.encode("utf-8")) + len(row.embedding) for row in rows)
        VectorStoreFile.objects.filter(pk=pk).update(usage_bytes=F("usage_bytes") + used)
    return used


def ingest_complete(pk: int, fence: int) -> None:
    with transaction.atomic():
        _locked(pk, fence)
        VectorStoreFile.objects.filter(pk=pk).update(status="completed", last_error=None, lease_expires_at=None)


def ingest_fail(pk: int, fence: int, code: str, message: str) -> None:
    """Ends the file failed; its partial chunks go, so it never shows half in search results."""
    with transaction.atomic():
        _locked(pk, fence)
        Chunk.objects.filter(store_file_id=pk).delete()
        VectorStoreFile.objects.filter(pk=pk).update(
            status="failed",
            last_error={"code": code, "message": message[:1000]},
            usage_bytes=0,
            lease_expires_at=None,
        )


# --- the pipeline --------------------------------------------------------------------------------


class _Source:
    """The stored file, opened in a worker thread, with its extracted chunks."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.stream: IO[bytes] | None = None
        self.chunks: Iterator[str] | None = None

    def open(self) -> None:
        try:
            self.stream = default_storage.open(self.job.storage_name, "rb")
        except (FileNotFoundError, OSError) as exc:
            raise IngestFailed("server_error", f"The file's contents are missing from storage: {exc}") from None
        self.chunks = chunk_text(extract(self.stream, self.job.filename), self.job.max_tokens, self.job.overlap_tokens)

    def next_batch(self) -> list[str]:
        assert self.chunks is not None
        return batches(self.chunks)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


async def _ingest(pk: int, fence: int, attempts: int, config: engine.Settings) -> None:
    if attempts > MAX_ATTEMPTS:
        raise IngestFailed("server_error", f"Ingestion was interrupted {MAX_ATTEMPTS} times; giving up.")
    started = time.monotonic()
    job = await db(ingest_start, pk, fence)
    if kra.enabled():
        # An external knowledge-retrieval-api does its own chunking and embedding.
        try:
            await kra.ingest_store_file(pk)
        except kra.KraError as exc:
            raise IngestFailed("server_error", f"The knowledge-retrieval-api refused the file: {exc}") from None
        await db(ingest_complete, pk, fence)
        return
    source = _Source(job)
    prefetch: asyncio.Future[list[str]] | None = None
    chunks, embedding_s = 0, 0.0
    try:
        await asyncio.to_thread(source.open)
        prefetch = asyncio.ensure_future(asyncio.to_thread(source.next_batch))
        while True:
            batch = await prefetch
            prefetch = None
            if not batch:
                break
            # Cut the next batch while this one is embedded and written.
            prefetch = asyncio.ensure_future(asyncio.to_thread(source.next_batch))
            asked = time.monotonic()
            try:
                vectors = await search.embed_texts(batch, retries=config.retries, backoff_s=config.backoff_s)
            except search.EmbeddingError as exc:
                raise IngestFailed("server_error", exc.message) from None
            finally:
                embedding_s += time.monotonic() - asked
            await db(write_chunks, pk, fence, chunks, batch, vectors)
            chunks += len(batch)
        if chunks == 0:
            raise IngestFailed("invalid_file", f"No text could be extracted from '{job.filename}'.")
    finally:
        if prefetch is not None:
            # A worker thread may still be reading: let it finish before its file is closed.
            with contextlib.suppress(BaseException):
                await asyncio.shield(prefetch)
        await asyncio.to_thread(source.close)
    await db(ingest_complete, pk, fence)
    # bench/search.py reads this line: throughput is reported without the upstream's share.
    log.info(
        "store file %s completed: %d bytes, %d chunks in %.3f s (%.3f s waiting for embeddings)",
        pk,
        job.size,
        chunks,
        time.monotonic() - started,
        embedding_s,
    )


async def ingest(pk: int, fence: int, attempts: int, config: engine.Settings) -> None:
    """Ingests one claimed store file to completed or failed, with a heartbeat beside it."""
    work = asyncio.current_task()
    assert work is not None
    lost: list[bool] = []
    heartbeat = asyncio.create_task(_heartbeat(pk, fence, config, work, lost))
    try:
        await _ingest(pk, fence, attempts, config)
    except asyncio.CancelledError:
        if not lost:  # shutting down: hand the file to another agent at once
            with contextlib.suppress(Exception):
                await db(ingest_release, pk, fence)
            raise
    except LeaseLost:
        log.info("store file %s: claim lost (deleted, cancelled or taken over)", pk)
    except IngestFailed as exc:
        log.info("store file %s failed: %s (%s)", pk, exc.message, exc.code)
        with contextlib.suppress(LeaseLost):
            await db(ingest_fail, pk, fence, exc.code, exc.message)
    except Exception:
        log.exception("store file %s: unexpected error", pk)
        with contextlib.suppress(LeaseLost):
            await db(
                ingest_fail, pk, fence, "server_error", "The file could not be ingested because of an internal error."
            )
    finally:
        heartbeat.cancel()


async def _heartbeat(pk: int, fence: int, config: engine.Settings, work: asyncio.Task[Any], lost: list[bool]) -> None:
    while True:
        await asyncio.sleep(config.heartbeat_s)
        try:
            await db(ingest_renew, pk, fence, config.lease_s)
        except LeaseLost:
            lost.append(True)
            work.cancel()
            return


class Ingestor:
    """The agent loop's ingestion slots: claims waiting store files and ingests each in a task."""

    def __init__(self, config: engine.Settings, concurrency: int | None = None) -> None:
        self.config = config
        # Files ingested at once by one agent loop, beside its runs.
        self.concurrency = concurrency or env_int("CLICKY_CHATS_INGEST_CONCURRENCY", 2, minimum=1)
        self.tasks: set[asyncio.Task[None]] = set()

    def has_room(self) -> bool:
        return len(self.tasks) < self.concurrency

    async def claim(self, on_done: Callable[[], None]) -> int:
        """Starts ingesting as many waiting files as there are free slots; returns how many."""
        free = self.concurrency - len(self.tasks)
        if free <= 0:
            return 0
        claimed = await db(ingest_claim, free, self.config.lease_s)
        for pk, fence, attempts in claimed:
            task = asyncio.create_task(ingest(pk, fence, attempts, self.config))
            self.tasks.add(task)

            def done(finished: asyncio.Task[None]) -> None:
                self.tasks.discard(finished)
                on_done()

            task.add_done_callback(done)
        return len(claimed)

    async def shutdown(self) -> None:
        """Stops at once: each file is released for another agent (ingestion restarts cleanly)."""
        if not self.tasks:
            return
        for task in list(self.tasks):
            task.cancel()
        await asyncio.wait(set(self.tasks), timeout=10)
