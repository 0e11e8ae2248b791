"""The vector-store search engine: embed the query through the upstream, find the nearest chunks,
re-rank them with a keyword score, and answer in the `vector_store.search_results.page` item shape.

Finding the nearest chunks sits behind one small interface, `Backend`, with two implementations
that honour the same contract (cosine similarity of unit vectors, best first):

* `NumpyBackend` (default, SQLite or PostgreSQL): brute force over the float32 embeddings stored in
  `Chunk.embedding`, kept per store in an in-process cache that is checked against the database on
  every search (chunk count and highest id), grown in place when chunks are only added, and bounded
  by CLICKY_CHATS_SEARCH_CACHE_MB.
* `PgvectorBackend` (PostgreSQL with the `vector` extension): a side table per embedding dimension,
  `clicky_chunk_vectors_<d>`, with an HNSW index, filled when chunks are written and back-filled
  the first time a process searches a store. Its rows go with their chunk (ON DELETE CASCADE).

Ranking is hybrid: the backend returns a candidate pool by cosine similarity, and each candidate's
score is 0.75 x similarity + 0.25 x the share of the query's terms the chunk contains. With
`ranking_options.ranker = "none"` the score is the similarity alone.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import numpy as np
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction

from agents import kra
from api_v1.models import Chunk, VectorStoreFile
from api_v1.vector_stores import store_touch
from clicky_chats import upstream
from clicky_chats import validation as v
from clicky_chats.errors import ApiError

log = logging.getLogger("clicky_chats.search")

VECTOR_WEIGHT = 0.75
KEYWORD_WEIGHT = 0.25
RANKERS = ("none", "auto", "default-2024-11-15")
MAX_FILTER_DEPTH = 8
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")


# --- the results contract ------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    chunk_id: int
    store_file_id: int
    similarity: float  # cosine similarity of the chunk and the closest query, -1..1
    text: str | None = None  # when the backend read it along the way (saves a query)


class Backend(Protocol):
    name: str

    def index(self, chunks: Sequence[Chunk]) -> None:
        """Called in the transaction that writes `chunks`, so the index never sees a half-written file."""

    def nearest(
        self,
        files_by_store: Mapping[str, Collection[int]],
        allowed: Collection[int] | None,
        queries: np.ndarray,
        limit: int,
    ) -> list[Candidate]:
        """Up to `limit` chunks, most similar first. `files_by_store` holds each store's completed
        files (pks): what may be searched; `allowed` the ones that passed the filters (None: all).
        `queries` is (q, d) with unit rows; a chunk's similarity is its best over the queries."""


# --- embeddings ----------------------------------------------------------------------------------


class EmbeddingError(Exception):
    """The upstream could not embed: `status` is what a client should see (429 passes through)."""

    def __init__(
        self, message: str, status: int = 502, *, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable  # a 429, a 5xx or a lost connection may go through later
        self.retry_after = retry_after


def _retry_after(headers: Any) -> float | None:
    try:
        return float(headers.get("retry-after", ""))
    except ValueError:
        return None


async def embed_once(texts: list[str]) -> np.ndarray:
    """One `POST /embeddings` with the configured model -> a float32 (len(texts), d) array."""
    body = orjson.dumps({"model": settings.CONFIG.embedding_model, "input": texts})
    try:
        answer = await upstream.open_upstream(
            "POST", "embeddings", body=body, content_type="application/json", streaming=False
        )
    except ApiError as exc:  # unreachable (502) or timed out (504)
        raise EmbeddingError(exc.message, status=exc.status, retryable=True) from None
    if answer.status >= 400:
        try:
            raw = await answer.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise EmbeddingError(upstream.unreachable(exc).message, retryable=True) from None
        finally:
            answer.release()
        message = upstream.upstream_error_body(answer.status, raw)["error"]["message"]
        raise EmbeddingError(
            f"The embedding model upstream answered {answer.status}: {message}",
            status=429 if answer.status == 429 else 502,
            retryable=answer.status == 429 or answer.status >= 500,
            retry_after=_retry_after(answer.headers),
        ) from None
    try:
        _raw, parsed = await upstream.read_json_answer(answer)
    except ApiError as exc:
        raise EmbeddingError(exc.message, status=exc.status, retryable=exc.status in (502, 504)) from None
    return _vectors_from(parsed, len(texts))


def _vectors_from(parsed: dict[str, Any], expected: int) -> np.ndarray:
    data = parsed.get("data")
    if not isinstance(data, list) or len(data) != expected:
        raise EmbeddingError(
            f"The embedding upstream answered with {len(data or [])} embeddings for {expected} inputs."
        )
    rows: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * expected
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        embedding = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < expected:
            raise EmbeddingError("The embedding upstream answered with an embedding of no valid index.")
        if isinstance(embedding, str):  # an upstream that answers base64 whatever was asked
            vector = np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
        elif isinstance(embedding, list) and embedding:
            vector = np.asarray(embedding, dtype=np.float32)
        else:
            raise EmbeddingError("The embedding upstream answered with an embedding that is not a list of numbers.")
        rows[index] = vector
    dims = {row.shape[0] for row in rows}
    if len(dims) != 1 or 0 in dims:
        raise EmbeddingError("The embedding upstream answered with embeddings of different lengths.")
    matrix = np.vstack(rows)
    if not np.isfinite(matrix).all():
        raise EmbeddingError("The embedding upstream answered with embeddings that are not finite numbers.")
    return matrix


async def embed_texts(texts: list[str], *, retries: int = 0, backoff_s: float = 0.5) -> np.ndarray:
    """embed_once, retried after a 429, a 5xx or a lost connection (an upstream retry-after wins)."""
    attempt = 0
    while True:
        try:
            return await embed_once(texts)
        except EmbeddingError as exc:
            if not exc.retryable or attempt >= retries:
                raise
            delay = exc.retry_after if exc.retry_after is not None else backoff_s * 2**attempt
            attempt += 1
            await asyncio.sleep(min(delay, 30.0))


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # a zero vector stays zero: similar to nothing
    return (matrix / norms).astype(np.float32, copy=False)


# --- keywords ------------------------------------------------------------------------------------

WORD = re.compile(r"[^\W_]+")
STOPWORDS = frozenset(
    """a an and are as at be but by can could did do does for from had has have how i if in into is it
    its me my no not of on or our she so than that the their them then there these they this to
    was we were what when where which who whom why will with would you your""".split()
)


def terms_of(text: str) -> set[str]:
    return {word for word in WORD.findall(text.lower()) if word not in STOPWORDS}


def keyword_score(query_terms: set[str], text: str) -> float:
    """The share of the query's terms that the chunk contains, 0..1."""
    if not query_terms:
        return 0.0
    return len(query_terms & terms_of(text)) / len(query_terms)


def rewrite_query(query: str) -> str:
    """`rewrite_query: true` without a model call: the query's content words, in order."""
    words = [word for word in WORD.findall(query) if word.lower() not in STOPWORDS]
    return " ".join(words) or query


# --- filters on file attributes ------------------------------------------------------------------


def check_filters(value: Any, param: str = "filters", depth: int = 0) -> dict[str, Any]:
    """A ComparisonFilter {type, key, value} or CompoundFilter {type: and|or, filters}."""
    if not isinstance(value, dict):
        raise v.invalid(param, "expected a comparison or compound filter object.", "invalid_type")
    if depth > MAX_FILTER_DEPTH:
        raise v.invalid(param, f"filters nest at most {MAX_FILTER_DEPTH} levels deep.")
    kind = value.get("type")
    if kind in ("and", "or"):
        v.check(value, {"filters": v.array(min_items=1, max_items=64)}, required=("filters",), prefix=f"{param}.")
        return {
            "type": kind,
            "filters": [
                check_filters(item, f"{param}.filters[{index}]", depth + 1)
                for index, item in enumerate(value["filters"])
            ],
        }
    if kind not in COMPARISONS:
        allowed = ", ".join(repr(k) for k in (*COMPARISONS, "and", "or"))
        raise v.invalid(f"{param}.type", f"'{kind}' is not one of {allowed}.")
    v.check(value, {"key": v.string(nonempty=True)}, required=("key", "value"), prefix=f"{param}.")
    operand = value["value"]
    if kind in ("in", "nin"):
        if not isinstance(operand, list) or not all(
            _is_scalar(item) and not isinstance(item, bool) for item in operand
        ):
            raise v.invalid(f"{param}.value", f"'{kind}' compares with an array of strings or numbers.", "invalid_type")
    elif not _is_scalar(operand):
        raise v.invalid(f"{param}.value", "expected a string, a number or a boolean.", "invalid_type")
    elif kind in ("gt", "gte", "lt", "lte") and isinstance(operand, bool):
        raise v.invalid(f"{param}.value", f"'{kind}' compares with a number or a string.", "invalid_type")
    return {"type": kind, "key": value["key"], "value": operand}


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _kind(value: Any) -> str:
    """Values compare only within one kind: True is not 1, and "2" is not 2."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "other"


def _equal(left: Any, right: Any) -> bool:
    return _kind(left) == _kind(right) and left == right


def matches(condition: dict[str, Any] | None, attributes: dict[str, Any]) -> bool:
    """Whether a file's attributes pass a checked filter. A missing key fails every comparison
    except ne and nin."""
    if condition is None:
        return True
    kind = condition["type"]
    if kind == "and":
        return all(matches(item, attributes) for item in condition["filters"])
    if kind == "or":
        return any(matches(item, attributes) for item in condition["filters"])
    operand = condition["value"]
    if condition["key"] not in attributes:
        return kind in ("ne", "nin")
    actual = attributes[condition["key"]]
    if kind == "eq":
        return _equal(actual, operand)
    if kind == "ne":
        return not _equal(actual, operand)
    if kind == "in":
        return any(_equal(actual, item) for item in operand)
    if kind == "nin":
        return not any(_equal(actual, item) for item in operand)
    if _kind(actual) != _kind(operand) or _kind(actual) not in ("number", "string"):
        return False
    if kind == "gt":
        return bool(actual > operand)
    if kind == "gte":
        return bool(actual >= operand)
    if kind == "lt":
        return bool(actual < operand)
    return bool(actual <= operand)


# --- backend (a): NumPy over the stored float32 embeddings ---------------------------------------


@dataclass(frozen=True)
class _StoreMatrix:
    files: frozenset[int]  # the store files whose chunks are all here
    chunk_ids: np.ndarray  # int64 (n,)
    store_file_ids: np.ndarray  # int64 (n,)
    vectors: np.ndarray  # float32 (n, d), unit rows

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.chunk_ids.nbytes + self.store_file_ids.nbytes)

    def keep(self, rows: np.ndarray, files: frozenset[int]) -> _StoreMatrix:
        return _StoreMatrix(files, self.chunk_ids[rows], self.store_file_ids[rows], self.vectors[rows])


# Store files per query when loading chunks (SQLite allows only so many bound parameters).
LOAD_FILES_PER_QUERY = 500


def _load_files(store_file_ids: Sequence[int], dims: int) -> _StoreMatrix:
    """The chunks of these (completed) store files, read straight into one preallocated array: a
    100k x 1536 store is 600 MB, which must not be copied around on the way."""
    groups = [
        list(store_file_ids[start : start + LOAD_FILES_PER_QUERY])
        for start in range(0, len(store_file_ids), LOAD_FILES_PER_QUERY)
    ]
    capacity = sum(Chunk.objects.filter(store_file_id__in=group).count() for group in groups)
    vectors = np.empty((capacity, dims), dtype=np.float32)
    chunk_ids = np.empty(capacity, dtype=np.int64)
    owners = np.empty(capacity, dtype=np.int64)
    count = 0
    for group in groups:
        rows = (
            Chunk.objects.filter(store_file_id__in=group)
            .order_by("id")
            .values_list("id", "store_file_id", "dimensions", "embedding")
        )
        for chunk_id, store_file_id, chunk_dims, embedding in rows.iterator(chunk_size=2000):
            if chunk_dims != dims or count == capacity:
                continue  # embedded by another model; or (never for a completed file) added since
            vectors[count] = np.frombuffer(embedding, dtype="<f4")
            chunk_ids[count], owners[count] = chunk_id, store_file_id
            count += 1
    if count < capacity:
        vectors, chunk_ids, owners = vectors[:count].copy(), chunk_ids[:count].copy(), owners[:count].copy()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    vectors /= norms
    return _StoreMatrix(frozenset(store_file_ids), chunk_ids, owners, vectors)


class NumpyBackend:
    """Brute force over each store's embeddings, cached per process.

    A completed file's chunks never change (a file is only ever re-ingested after it failed or was
    cancelled, and then it had none), so the cache is kept current by the set of completed files
    the search is given anyway: chunks of files not cached yet are loaded and appended, and rows of
    files no longer there (deleted) are dropped. No query per search is needed to validate it."""

    name = "numpy"

    def __init__(self, cache_bytes: int) -> None:
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, int], _StoreMatrix] = OrderedDict()
        self._lock = threading.Lock()

    def index(self, chunks: Sequence[Chunk]) -> None:
        """Nothing to do: the embeddings in the chunk rows are the index."""

    def matrix(self, store_id: str, dims: int, files: frozenset[int]) -> _StoreMatrix:
        """The embeddings of exactly these store files of the store."""
        key = (store_id, dims)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None and cached.files == files:
            return cached
        current = cached
        if current is not None and current.files - files:
            rows = np.isin(current.store_file_ids, np.fromiter(current.files & files, dtype=np.int64))
            current = current.keep(rows, current.files & files)
        missing = sorted(files - current.files) if current is not None else sorted(files)
        if missing:
            added = _load_files(missing, dims)
            if current is None:
                current = added
            else:
                current = _StoreMatrix(
                    current.files | added.files,
                    np.concatenate([current.chunk_ids, added.chunk_ids]),
                    np.concatenate([current.store_file_ids, added.store_file_ids]),
                    np.concatenate([current.vectors, added.vectors]),
                )
        assert current is not None
        self._remember(key, current)
        return current

    def _remember(self, key: tuple[str, int], matrix: _StoreMatrix) -> None:
        with self._lock:
            self._cache.pop(key, None)
            if matrix.nbytes > self.cache_bytes:
                return
            self._cache[key] = matrix
            total = sum(item.nbytes for item in self._cache.values())
            while total > self.cache_bytes and self._cache:
                _key, evicted = self._cache.popitem(last=False)
                total -= evicted.nbytes

    def nearest(
        self,
        files_by_store: Mapping[str, Collection[int]],
        allowed: Collection[int] | None,
        queries: np.ndarray,
        limit: int,
    ) -> list[Candidate]:
        allowed_ids = np.fromiter(allowed, dtype=np.int64) if allowed is not None else None
        found: list[Candidate] = []
        for store_id, files in files_by_store.items():
            if not files:
                continue
            matrix = self.matrix(store_id, queries.shape[1], frozenset(files))
            if not len(matrix.chunk_ids):
                continue
            similarity = (matrix.vectors @ queries.T).max(axis=1)
            if allowed_ids is not None:
                similarity[~np.isin(matrix.store_file_ids, allowed_ids)] = -np.inf
            take = min(limit, int(np.isfinite(similarity).sum()))
            if take == 0:
                continue
            best = np.argpartition(-similarity, take - 1)[:take]
            found.extend(
                Candidate(int(matrix.chunk_ids[i]), int(matrix.store_file_ids[i]), float(similarity[i])) for i in best
            )
        found.sort(key=lambda c: (-c.similarity, c.chunk_id))
        return found[:limit]


# --- backend (b): PostgreSQL with pgvector and an HNSW index -------------------------------------

# pgvector indexes `vector` columns of at most 2000 dimensions; wider ones are searched exactly.
HNSW_MAX_DIMS = 2000
# Advisory lock key (arbitrary, fixed) serialising the creation of the side tables.
SCHEMA_LOCK = 0x636C69636B79


def vector_table(dims: int) -> str:
    return f"clicky_chunk_vectors_{int(dims)}"


class PgvectorBackend:
    name = "pgvector"

    def __init__(self) -> None:
        self._tables: set[int] = set()
        self._synced: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        # hnsw.ef_search as last set on each connection.
        self._ef_search: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def _raw(self) -> Any:
        """The psycopg connection under Django's, with the vector type adapted (numpy <-> vector)."""
        from pgvector.psycopg import register_vector

        connection.ensure_connection()
        raw = connection.connection
        if raw.adapters.types.get("vector") is None:
            register_vector(raw)
        return raw

    def ensure_table(self, dims: int, *, with_index: bool = True) -> str:
        table = vector_table(dims)
        if dims in self._tables:
            return table
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK])
            cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
            cursor.execute("SELECT to_regclass(%s)", [table])
            if cursor.fetchone()[0] is None:
                cursor.execute(
                    f"CREATE TABLE {table} ("
                    " chunk_id bigint PRIMARY KEY REFERENCES api_v1_chunk (id) ON DELETE CASCADE,"
                    " vector_store_id varchar(64) NOT NULL,"
                    " store_file_id bigint NOT NULL,"
                    f" embedding vector({int(dims)}) NOT NULL)"
                )
                if dims <= HNSW_MAX_DIMS:
                    # Kept in the row, not TOASTed: a filtered HNSW scan re-reads each candidate's
                    # vector, and detoasting them made 10k-row searches five times slower.
                    cursor.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE PLAIN")
                cursor.execute(f"CREATE INDEX {table}_store ON {table} (vector_store_id, store_file_id)")
        if with_index:
            self.build_index(dims)
        with self._lock:
            self._tables.add(dims)
        return table

    def build_index(self, dims: int, maintenance_work_mem: str | None = None) -> None:
        """The HNSW index (a bulk load is faster without it, then this)."""
        if dims > HNSW_MAX_DIMS:
            return
        table = vector_table(dims)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK])
            if maintenance_work_mem:
                cursor.execute("SELECT set_config('maintenance_work_mem', %s, true)", [maintenance_work_mem])
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops)"
            )

    def _insert(self, table: str, rows: list[tuple[int, str, int, np.ndarray]]) -> None:
        if not rows:
            return
        columns = "chunk_id, vector_store_id, store_file_id, embedding"
        raw = self._raw()
        if len(rows) < 256:  # an ingestion batch
            with raw.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %b) ON CONFLICT (chunk_id) DO NOTHING", rows
                )
            return
        # A back-fill: COPY (binary) is many times faster than INSERTs, but knows no ON CONFLICT,
        # and another process may be back-filling the same rows; so COPY into a scratch table first.
        with transaction.atomic(), raw.cursor() as cursor:
            cursor.execute(f"CREATE TEMPORARY TABLE clicky_vectors_load (LIKE {table}) ON COMMIT DROP")
            with cursor.copy(f"COPY clicky_vectors_load ({columns}) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "varchar", "int8", "vector"])
                for row in rows:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM clicky_vectors_load"
                " ON CONFLICT (chunk_id) DO NOTHING"
            )

    def index(self, chunks: Sequence[Chunk]) -> None:
        by_dims: dict[int, list[tuple[int, str, int, np.ndarray]]] = {}
        for chunk in chunks:
            vector = np.frombuffer(bytes(chunk.embedding), dtype="<f4")
            by_dims.setdefault(chunk.dimensions, []).append(
                (chunk.pk, chunk.vector_store_id, chunk.store_file_id, vector)
            )
        for dims, rows in by_dims.items():
            self._insert(self.ensure_table(dims), rows)

    def sync(self, store_id: str, dims: int) -> None:
        """Back-fills chunks written while another backend was configured; once per store and process."""
        if (store_id, dims) in self._synced:
            return
        table = self.ensure_table(dims)
        missing = (
            Chunk.objects.filter(vector_store_id=store_id, dimensions=dims)
            .extra(where=[f"NOT EXISTS (SELECT 1 FROM {table} v WHERE v.chunk_id = api_v1_chunk.id)"])
            .values_list("id", "store_file_id", "embedding")
        )
        batch: list[tuple[int, str, int, np.ndarray]] = []
        for chunk_id, store_file_id, embedding in missing.iterator(chunk_size=2000):
            batch.append((chunk_id, store_id, store_file_id, np.frombuffer(bytes(embedding), dtype="<f4")))
            if len(batch) >= 5000:
                self._insert(table, batch)
                batch = []
        self._insert(table, batch)
        with self._lock:
            self._synced.add((store_id, dims))

    def nearest(
        self,
        files_by_store: Mapping[str, Collection[int]],
        allowed: Collection[int] | None,
        queries: np.ndarray,
        limit: int,
    ) -> list[Candidate]:
        dims = queries.shape[1]
        table = self.ensure_table(dims)
        for store_id in files_by_store:
            self.sync(store_id, dims)
        searched = list(allowed) if allowed is not None else [pk for files in files_by_store.values() for pk in files]
        if not searched:
            return []
        # Only completed files count: a file still being ingested has some of its rows here already.
        where = "vector_store_id = ANY(%s) AND store_file_id = ANY(%s)"
        params = [list(files_by_store), searched]
        best: dict[int, Candidate] = {}
        raw = self._raw()
        # The HNSW scan yields ef_search candidates before the WHERE filters them: ask for enough.
        # Set per connection, not per query: every statement is a round trip.
        ef_search = max(40, min(1000, limit * 4))
        with raw.cursor() as cursor:
            if connection.in_atomic_block:  # a rollback would undo a session SET unseen
                cursor.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
            elif self._ef_search.get(raw) != ef_search:
                cursor.execute(f"SET hnsw.ef_search = {int(ef_search)}")
                self._ef_search[raw] = ef_search
            for query in queries:
                cursor.execute(
                    "SELECT n.chunk_id, n.store_file_id, n.distance, c.text FROM"
                    f" (SELECT chunk_id, store_file_id, embedding <=> %b AS distance FROM {table}"
                    f"  WHERE {where} ORDER BY embedding <=> %b LIMIT %s) n"
                    " JOIN api_v1_chunk c ON c.id = n.chunk_id",
                    [query, *params, query, limit],
                )
                rows = cursor.fetchall()
                if len(rows) < limit:
                    # The approximate scan came up short (a small store among many, or strict
                    # filters); the exact scan over these files' rows is then the answer.
                    cursor.execute(
                        "SELECT n.chunk_id, n.store_file_id, n.distance, c.text FROM"
                        f" (SELECT chunk_id, store_file_id, (embedding <=> %b) + 0 AS distance FROM {table}"
                        f"  WHERE {where} ORDER BY distance LIMIT %s) n"
                        " JOIN api_v1_chunk c ON c.id = n.chunk_id",
                        [query, *params, limit],
                    )
                    rows = cursor.fetchall()
                for chunk_id, store_file_id, distance, text in rows:
                    similarity = 1.0 - float(distance)
                    if chunk_id not in best or best[chunk_id].similarity < similarity:
                        best[chunk_id] = Candidate(chunk_id, store_file_id, similarity, text)
        return sorted(best.values(), key=lambda c: (-c.similarity, c.chunk_id))[:limit]


_backends: dict[str, Backend] = {}


def backend(name: str | None = None) -> Backend:
    """The configured backend (CLICKY_CHATS_SEARCH_BACKEND), one per process."""
    name = name or settings.CONFIG.search_backend
    found = _backends.get(name)
    if found is None:
        if name == "pgvector":
            found = PgvectorBackend()
        else:
            found = NumpyBackend(settings.CONFIG.search_cache_mb * 1024 * 1024)
        _backends[name] = found
    return found


# --- ranking -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SearchedFile:
    file_id: str
    filename: str
    attributes: dict[str, Any]


def candidate_pool(max_num_results: int) -> int:
    """How many nearest chunks the keyword re-ranking chooses from."""
    return min(200, max(50, 5 * max_num_results))


def rank(
    project: str,
    vector_store_ids: Sequence[str],
    queries: Sequence[str],
    query_vectors: np.ndarray,
    max_num_results: int,
    score_threshold: float,
    filters: dict[str, Any] | None,
    ranker: str = "auto",
    *,
    using: Backend | None = None,
) -> list[dict[str, Any]]:
    """The best chunks of the stores' completed files whose attributes pass `filters`, best first,
    as search result items {file_id, filename, score, attributes, content}. `using` overrides the
    configured backend (the benchmark compares them)."""
    files = VectorStoreFile.objects.filter(
        project=project, vector_store_id__in=list(vector_store_ids), status="completed"
    ).values_list("id", "vector_store_id", "file_id", "file__filename", "attributes")
    files_by_store: dict[str, list[int]] = {store_id: [] for store_id in vector_store_ids}
    searched: dict[int, _SearchedFile] = {}
    for pk, store_id, file_id, filename, attributes in files:
        files_by_store[store_id].append(pk)
        if matches(filters, attributes or {}):
            searched[pk] = _SearchedFile(file_id, filename, attributes or {})
    if not searched or not len(queries):
        return []
    allowed = None if filters is None else set(searched)
    pool = max_num_results if ranker == "none" else candidate_pool(max_num_results)
    candidates = (using or backend()).nearest(files_by_store, allowed, unit_rows(query_vectors), pool)
    texts = {c.chunk_id: c.text for c in candidates if c.text is not None}
    unread = [c.chunk_id for c in candidates if c.text is None]
    if unread:
        texts.update(Chunk.objects.filter(pk__in=unread).values_list("id", "text"))
    query_terms: set[str] = set().union(*(terms_of(query) for query in queries))
    scored: list[tuple[float, int, Candidate]] = []
    for candidate in candidates:
        text = texts.get(candidate.chunk_id)
        if text is None:
            continue  # deleted since the backend saw it
        similarity = min(1.0, max(0.0, candidate.similarity))
        score = (
            similarity
            if ranker == "none"
            else VECTOR_WEIGHT * similarity + KEYWORD_WEIGHT * keyword_score(query_terms, text)
        )
        if score >= score_threshold:
            scored.append((score, candidate.chunk_id, candidate))
    scored.sort(key=lambda item: (-item[0], item[1]))
    results = []
    for score, chunk_id, candidate in scored[:max_num_results]:
        store_file = searched[candidate.store_file_id]
        results.append(
            {
                "file_id": store_file.file_id,
                "filename": store_file.filename,
                "score": round(score, 6),
                "attributes": store_file.attributes,
                "content": [{"type": "text", "text": texts[chunk_id]}],
            }
        )
    return results


async def search_stores(
    project: str,
    vector_store_ids: Sequence[str],
    query: str | Sequence[str],
    max_num_results: int = 10,
    score_threshold: float = 0.0,
    filters: dict[str, Any] | None = None,
    *,
    ranker: str = "auto",
) -> list[dict[str, Any]]:
    """Searches stores of `project` (hidden ones too) for the run engine's file_search and for
    POST /vector_stores/{id}/search. `filters` must have passed check_filters. Raises
    EmbeddingError when the upstream cannot embed the query."""
    if kra.enabled():  # CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL: the external service searches
        try:
            return await kra.search(project, vector_store_ids, query, max_num_results, score_threshold, filters)
        except kra.KraError as exc:
            raise EmbeddingError(f"The knowledge-retrieval-api failed: {exc}") from None
    queries = [query] if isinstance(query, str) else list(query)
    queries = [text for text in queries if text.strip()]
    if not queries or not vector_store_ids:
        return []
    vectors = await embed_texts(queries)

    def ranked() -> list[dict[str, Any]]:
        store_touch(vector_store_ids)
        return rank(project, vector_store_ids, queries, vectors, max_num_results, score_threshold, filters, ranker)

    return await sync_to_async(ranked)()
