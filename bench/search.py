"""Vector-store search and ingestion, measured.

Search latency: synthetic chunks of 1536 dimensions (1000 topic centres, each chunk a centre plus
noise) are written straight into the database, 10k then 100k in one store, and the search engine's
`rank()` (filters, the backend's nearest chunks, texts, keyword re-ranking) is timed for queries near
a random centre, warm, with NumPy on SQLite and PostgreSQL and with pgvector's HNSW index on
PostgreSQL. The query's embedding (an upstream call) is not part of it. pgvector's recall@10 is
measured against NumPy's exact answer, and a third pgvector line times a 10k store in a table that
also holds the 100k one (HNSW finds too few of its rows and falls back to the exact scan).

Ingestion: a generated text file is uploaded through the API and ingested by a `runagent` process
against a fake upstream in its own process. Throughput is MB per minute without the time spent
waiting for embeddings (the agent logs it); the agent's peak RSS is read from /proc.

    .venv/bin/python -m bench.search                        # all of it (about 15 minutes)
    .venv/bin/python -m bench.search --part search --sizes 10000
    .venv/bin/python -m bench.search --part ingest --ingest-mb 200 --db sqlite

Results print as a table and go to bench/results/search.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import requests

from tests.harness import ROOT, AgentProcess, Database, ServerProcess, free_port

DIMS = 1536
CENTRES = 1000
QUERIES = 200
RESULTS_PATH = ROOT / "bench" / "results" / "search.json"
BENCH_KEY = "sk-bench-search"
WORDS = (
    "river mountain engine garden ledger planet harvest signal bridge window copper lantern orbit "
    "meadow circuit anchor canyon falcon glacier harbor island jungle kernel lagoon marble nectar "
    "oasis pepper quartz rocket saddle timber umbrella valley walnut yonder zephyr"
).split()
# The targets of issue 4, item 9.
TARGET_PGVECTOR_P50_MS = 50.0
TARGET_NUMPY_P50_MS = 200.0


# --- search latency (runs inside a worker process with Django set up on one database) -------------


def _chunk_text(index: int, centre: int) -> str:
    words = " ".join(WORDS[(centre + k * 7) % len(WORDS)] for k in range(30))
    return f"Chunk {index} of topic {centre}: {words}."


def _worker_search(sizes: list[int], kind: str) -> dict[str, Any]:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clicky_chats.settings")
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from agents import search
    from api_v1.models import Chunk, File, VectorStore, VectorStoreFile

    call_command("migrate", verbosity=0)
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((CENTRES, DIMS)).astype(np.float32)

    def make_store(name: str) -> VectorStore:
        return VectorStore.objects.create(
            id=f"vs_bench_{name}", project="bench", created_at=int(time.time()), created_ns=time.time_ns(), name=name
        )

    def add_files(store: VectorStore, prefix: str, count: int) -> list[VectorStoreFile]:
        """Completed files: the engine treats a completed file's chunks as final, so every batch of
        chunks goes into files of its own."""
        now = int(time.time())
        made = []
        for index in range(count):
            source = File.objects.create(
                id=f"file-bench-{store.name}-{prefix}-{index}",
                project="bench",
                created_at=now,
                created_ns=time.time_ns(),
                filename=f"{prefix}-{index}.txt",
                purpose="assistants",
                bytes=0,
                storage_name="none",
            )
            made.append(
                VectorStoreFile.objects.create(
                    vector_store=store,
                    file=source,
                    project="bench",
                    created_at=now,
                    created_ns=time.time_ns(),
                    status="completed",
                    chunking_strategy={"type": "static", "static": {}},
                    attributes={"index": index},
                )
            )
        return made

    def add_chunks(store: VectorStore, files: list[VectorStoreFile], start: int, stop: int) -> float:
        began = time.perf_counter()
        for low in range(start, stop, 2000):
            high = min(stop, low + 2000)
            topics = rng.integers(0, CENTRES, high - low)
            vectors = centres[topics] + 0.6 * rng.standard_normal((high - low, DIMS)).astype(np.float32)
            Chunk.objects.bulk_create(
                Chunk(
                    store_file=files[index % len(files)],
                    vector_store_id=store.id,
                    file_id=files[index % len(files)].file_id,
                    ordinal=index,
                    text=_chunk_text(index, int(topic)),
                    embedding=vector.astype("<f4").tobytes(),
                    dimensions=DIMS,
                )
                for index, topic, vector in zip(range(low, high), topics, vectors, strict=True)
            )
        return time.perf_counter() - began

    def queries() -> np.ndarray:
        topics = rng.integers(0, CENTRES, QUERIES)
        return centres[topics] + 0.6 * rng.standard_normal((QUERIES, DIMS)).astype(np.float32)

    def timed(store_id: str, backend: Any, vectors: np.ndarray) -> tuple[list[float], list[list[str]]]:
        for vector in vectors[:3]:  # warm: caches, connections, plans
            search.rank("bench", [store_id], ["topic"], vector[None, :], 10, 0.0, None, using=backend)
        latencies, answers = [], []
        for vector in vectors:
            began = time.perf_counter()
            found = search.rank("bench", [store_id], ["topic"], vector[None, :], 10, 0.0, None, using=backend)
            latencies.append((time.perf_counter() - began) * 1000)
            answers.append([item["content"][0]["text"] for item in found])
        return latencies, answers

    def summary(latencies: list[float]) -> dict[str, float]:
        ordered = sorted(latencies)
        return {
            "p50_ms": round(ordered[len(ordered) // 2], 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
            "mean_ms": round(sum(ordered) / len(ordered), 2),
        }

    def recall(exact: list[list[str]], approximate: list[list[str]]) -> float:
        hits = sum(len(set(a) & set(e)) for a, e in zip(approximate, exact, strict=True))
        return round(hits / max(1, sum(len(e) for e in exact)), 3)

    results: list[dict[str, Any]] = []
    store = make_store("main")
    files: list[VectorStoreFile] = []
    pg_backend = search.PgvectorBackend() if kind == "postgres" else None
    have = 0
    for size in sizes:
        added = add_files(store, f"upto{size}", 100)
        insert_s = add_chunks(store, added, have, size)
        files += added
        have = size
        vectors = queries()
        numpy_backend = search.NumpyBackend(4 * 1024 * 1024 * 1024)  # cold: nothing cached
        began = time.perf_counter()
        numpy_backend.matrix(store.id, DIMS, frozenset(f.pk for f in files))
        cold_s = time.perf_counter() - began
        numpy_latencies, exact = timed(store.id, numpy_backend, vectors)
        results.append(
            {
                "backend": "numpy",
                "db": kind,
                "chunks": size,
                **summary(numpy_latencies),
                "cold_load_s": round(cold_s, 2),
                "insert_s": round(insert_s, 1),
            }
        )
        print(f"  {kind} numpy {size}: {results[-1]}", file=sys.stderr, flush=True)
        if pg_backend is None:
            continue
        table = pg_backend.ensure_table(DIMS, with_index=False)
        with connection.cursor() as cursor:  # a bulk load goes faster without the index, then the index
            cursor.execute(f"DROP INDEX IF EXISTS {table}_hnsw")
        began = time.perf_counter()
        pg_backend._synced.discard((store.id, DIMS))  # searching marked it synced: back-fill the new rows
        pg_backend.sync(store.id, DIMS)
        load_s = time.perf_counter() - began
        began = time.perf_counter()
        pg_backend.build_index(DIMS, maintenance_work_mem="2GB")
        index_s = time.perf_counter() - began
        pg_latencies, approximate = timed(store.id, pg_backend, vectors)
        results.append(
            {
                "backend": "pgvector",
                "db": kind,
                "chunks": size,
                **summary(pg_latencies),
                "recall_at_10": recall(exact, approximate),
                "load_s": round(load_s, 1),
                "index_build_s": round(index_s, 1),
            }
        )
        print(f"  {kind} pgvector {size}: {results[-1]}", file=sys.stderr, flush=True)
    if pg_backend is not None and len(sizes) > 1:
        # A small store in a table that also holds a big one.
        small = make_store("small")
        add_chunks(small, add_files(small, "all", 10), 0, sizes[0])
        table = search.vector_table(DIMS)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX IF EXISTS {table}_hnsw")
        pg_backend.sync(small.id, DIMS)
        pg_backend.build_index(DIMS, maintenance_work_mem="2GB")
        vectors = queries()
        _numpy, exact = timed(small.id, numpy_backend, vectors)
        latencies, approximate = timed(small.id, pg_backend, vectors)
        results.append(
            {
                "backend": "pgvector",
                "db": kind,
                "chunks": sizes[0],
                "note": f"a {sizes[0]} store in a table of {sizes[0] + sizes[-1]}",
                **summary(latencies),
                "recall_at_10": recall(exact, approximate),
            }
        )
        print(f"  {kind} pgvector small store: {results[-1]}", file=sys.stderr, flush=True)
    return {"search": results}


def run_search(kind: str, sizes: list[int]) -> list[dict[str, Any]]:
    database = Database(kind).start()
    directory = Path(tempfile.mkdtemp(prefix="clicky-bench-search-"))
    try:
        env = {
            **os.environ,
            "CLICKY_CHATS_DSN": database.new_dsn(directory),
            "CLICKY_CHATS_DATA_DIR": str(directory / "data"),
            "CLICKY_CHATS_SECRET_KEY": "bench",
        }
        worker = subprocess.run(
            [sys.executable, "-m", "bench.search", "--worker", kind, "--sizes", ",".join(map(str, sizes))],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            check=True,
            timeout=3600,
        )
        return list(orjson.loads(worker.stdout.splitlines()[-1])["search"])
    finally:
        database.stop()


# --- ingestion ---------------------------------------------------------------------------------


def _write_text(path: Path, megabytes: int) -> int:
    rng = np.random.default_rng(11)
    vocabulary = np.array([*WORDS, "the", "of", "and", "a", "to", "in", "is", "it", "that", "for"])
    written = 0
    with open(path, "w") as out:
        while written < megabytes * 1024 * 1024:
            words = vocabulary[rng.integers(0, len(vocabulary), 150_000)]
            lines = [" ".join(words[i : i + 15]) + "." for i in range(0, len(words), 15)]
            block = "\n".join(" ".join(lines[i : i + 6]) for i in range(0, len(lines), 6)) + "\n\n"
            out.write(block)
            written += len(block)
    return written


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


COMPLETED = re.compile(r"store file \d+ completed: (\d+) bytes, (\d+) chunks in ([\d.]+) s \(([\d.]+) s waiting")


def run_ingest(kind: str, megabytes: int) -> dict[str, Any]:
    database = Database(kind).start()
    fake_port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(fake_port), "--no-record"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = ServerProcess(
        database,
        f"http://127.0.0.1:{fake_port}/v1",
        env={
            "CLICKY_CHATS_API_KEYS": f"bench:{BENCH_KEY}",
            "CLICKY_CHATS_EMBEDDING_MODEL": "fake-bow-embedder",
            "CLICKY_CHATS_MAX_REQUEST_BYTES": str((megabytes + 16) * 1024 * 1024),
            "CLICKY_CHATS_MODEL_TIMEOUT_S": "120",
        },
        with_agents=False,
    )
    agent: AgentProcess | None = None
    try:
        _wait_for_port(fake_port)
        server.start()
        agent = AgentProcess(server).start()
        assert agent.process is not None
        source = server.directory / "big.txt"
        size = _write_text(source, megabytes)
        headers = {"Authorization": f"Bearer {BENCH_KEY}"}
        with open(source, "rb") as handle:
            uploaded = requests.post(
                server.url + "/v1/files",
                headers=headers,
                files={"file": ("big.txt", handle, "text/plain")},
                data={"purpose": "assistants"},
                timeout=600,
            )
        uploaded.raise_for_status()
        file_id = uploaded.json()["id"]
        source.unlink()
        store = requests.post(
            server.url + "/v1/vector_stores", headers=headers, json={"file_ids": [file_id]}, timeout=60
        ).json()
        peak_sampled = 0
        began = time.monotonic()
        while True:
            state = requests.get(f"{server.url}/v1/vector_stores/{store['id']}/files/{file_id}", headers=headers).json()
            peak_sampled = max(peak_sampled, _rss_kb(agent.process.pid, "VmRSS"))
            if state["status"] != "in_progress":
                break
            if time.monotonic() - began > 3600:
                raise RuntimeError("ingestion did not finish within an hour")
            time.sleep(0.5)
        peak_kb = max(peak_sampled, _rss_kb(agent.process.pid, "VmHWM"))
        if state["status"] != "completed":
            raise RuntimeError(f"ingestion ended {state['status']}: {state['last_error']}")
        found = COMPLETED.search(agent.log())
        if found is None:
            raise RuntimeError("the agent logged no completion line")
        _bytes, chunks, total_s, embedding_s = int(found[1]), int(found[2]), float(found[3]), float(found[4])
        mb = size / (1024 * 1024)
        return {
            "db": kind,
            "file_mb": round(mb, 1),
            "chunks": chunks,
            "total_s": round(total_s, 1),
            "embedding_wait_s": round(embedding_s, 1),
            "mb_per_min_without_embedding": round(mb / ((total_s - embedding_s) / 60), 1),
            "mb_per_min_with_fake_embedding": round(mb / (total_s / 60), 1),
            "agent_peak_rss_mb": round(peak_kb / 1024, 1),
        }
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        fake.terminate()
        fake.wait(10)
        database.stop()


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise RuntimeError("the fake upstream did not start")


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "search", "ingest"), default="all")
    parser.add_argument("--db", choices=("both", "sqlite", "postgres"), default="both")
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts for the search part")
    parser.add_argument("--ingest-mb", type=int, default=200, help="size of the generated file to ingest")
    parser.add_argument("--worker", choices=("sqlite", "postgres"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",") if size]
    if options.worker:
        print(orjson.dumps(_worker_search(sizes, options.worker)).decode())
        return
    kinds = ["sqlite", "postgres"] if options.db == "both" else [options.db]
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join(["python -m bench.search", *sys.argv[1:]]),
    }
    if options.part in ("all", "search"):
        report["search"] = [row for kind in kinds for row in run_search(kind, sizes)]
        print(f"{'backend':9} {'db':9} {'chunks':>7} {'p50 ms':>8} {'p99 ms':>8}  notes")
        for row in report["search"]:
            extras = {k: v for k, v in row.items() if k not in ("backend", "db", "chunks", "p50_ms", "p99_ms")}
            print(
                f"{row['backend']:9} {row['db']:9} {row['chunks']:>7} {row['p50_ms']:>8} {row['p99_ms']:>8}  {extras}"
            )
    if options.part in ("all", "ingest"):
        report["ingest"] = [run_ingest(kind, options.ingest_mb) for kind in kinds]
        for row in report["ingest"]:
            print("ingest", row)
    # A partial run (one part, one database) updates its own rows and keeps the others'.
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    previous = orjson.loads(RESULTS_PATH.read_bytes()) if RESULTS_PATH.exists() else {}
    for part in ("search", "ingest"):
        if part in report:
            kept = [row for row in previous.get(part, []) if row["db"] not in kinds]
            report[part] = kept + report[part]
        elif part in previous:
            report[part] = previous[part]
    RESULTS_PATH.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
