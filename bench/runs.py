"""What the run engine adds on top of the model upstream: orchestration overhead, time to the first
streamed delta, throughput across agent processes, and database writes per long answer.

One run starts fake upstreams (tests/fake_upstream.py, each its own process) and clicky-chats
(`manage.py serve` and `manage.py runagent` via tests/harness.py), then:

1. overhead: streamed runs (`POST /threads/{id}/runs` with `stream: true`, read until
   thread.run.completed) against a fake answering after 20 ms, paced 5 ms per chunk, interleaved
   with the same streamed chat completion sent straight to the fake; the overhead is the run's time
   minus the direct call's, at p50 and p99. On SQLite with the agents in the server process, and on
   PostgreSQL with a separate `runagent`. Runs created without `stream` and polled the way the SDK's
   poll helpers do (every openai-poll-after-ms) are reported for reference.
2. first delta: in the same streamed runs, the time to the first thread.message.delta minus the
   direct call's time to its first content chunk.
3. throughput: 1 and then 2 `runagent` processes (two slots each), idle, then 500 runs submitted at
   once on 500 threads, against a fake answering after 100 ms; runs/s from the first run's creation
   to the last one's completion (the stored events' timestamps), lost and duplicated runs from the
   database. The same with 16 slots per agent, for reference: there CPU is the bound.
4. writes: a run whose answer streams as 1,000 one-word chunks, a chunk every 1 ms and every 10 ms;
   write transactions counted from PostgreSQL's transaction-id counter (every transaction that
   writes takes one; nothing else writes to this PostgreSQL meanwhile), rows (roughly) from
   pg_stat_database.

Results print as a table and go to bench/results/runs.json with the machine's description and, per
phase, the CPU the rest of the machine used meanwhile. See bench/README.md.

    .venv/bin/python -m bench.runs            # or: make bench-runs
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import requests
import uvloop

from bench.chat_proxy import (
    Connection,
    Exchange,
    FakeProcess,
    NoiseMeter,
    machine_info,
    percentile,
    report,
    summary,
)
from tests.harness import ROOT, AgentProcess, Database, ServerProcess, _to_conninfo

BENCH_KEY = "sk-bench-runs"
RESULTS_PATH = ROOT / "bench" / "results" / "runs.json"
MODEL = "fake-model"

# Phases 1 and 2: the fake's default stream (role, 4 content pieces, finish, usage) paced like a
# model's, so the first delta and the end of the answer are distinct moments.
UPSTREAM_LATENCY_MS = 20.0
STREAM_INTERVAL_MS = 5.0
# Phase 3: each model call waits 100 ms before answering, so agents spend their time waiting on it.
THROUGHPUT_LATENCY_MS = 100.0
# Phase 4: a 1,000-token answer, one word per chunk, at a fast model's pace (1,000 tokens/s) and at
# a typical one's (100 tokens/s): the engine coalesces by time, so the slower answer is the harder.
LONG_ANSWER_WORDS = 1000
LONG_ANSWER_PACES_MS = (1.0, 10.0)
TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")
# The SDK's poll helpers wait what the run carries in openai-poll-after-ms (api_v1/run_views.py).
SDK_POLL_MS = 200

# The targets of issue 3, item 8.
TARGET_OVERHEAD_P50_MS = 30.0
TARGET_FIRST_DELTA_MS = 30.0
TARGET_SCALING_RATIO = 1.7
TARGET_WRITES_PER_ANSWER = 50


@dataclass(frozen=True)
class Plan:
    """How much of each phase to run: about 3.5 minutes on a quiet 2-core machine, 5-7 beside test suites."""

    latency_runs: int = 250
    latency_warmup: int = 20
    polled_runs: int = 25
    latency_agent_concurrency: int = 4  # runagent's default
    throughput_runs: int = 500
    # Two slots per agent: a run's time is mostly the 100 ms upstream wait, and two agents together
    # stay well under this 2-core machine, so the ratio shows how the engine scales, not the box.
    throughput_agent_concurrency: int = 2
    # For reference, the same with slots to spare: then CPU (agents, PostgreSQL, fake) is the bound.
    saturated_runs: int = 200
    saturated_agent_concurrency: int = 16
    submit_connections: int = 16
    throughput_deadline_s: float = 150.0  # a run not completed by then counts as lost
    long_answers: int = 1  # per pace: the count is exact, give or take a lease renewal


QUICK_PLAN = Plan(
    latency_runs=60, latency_warmup=5, polled_runs=5, throughput_runs=100, saturated_runs=60, long_answers=1
)


# --- HTTP ---------------------------------------------------------------------------------------


def http_request(method: str, host: str, port: int, path: str, body: Any = None) -> bytes:
    """One raw keep-alive HTTP/1.1 request for chat_proxy's Connection."""
    payload = b"" if body is None else orjson.dumps(body)
    head = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Authorization: Bearer {BENCH_KEY}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


@dataclass
class Peer:
    """One HTTP server we talk to over a keep-alive connection, reopened when it closes."""

    host: str
    port: int
    connection: Connection | None = None

    async def send(self, method: str, path: str, body: Any = None) -> Exchange:
        if self.connection is None or self.connection.closed:
            self.connection = await Connection.open(self.host, self.port)
        exchange = await self.connection.send(http_request(method, self.host, self.port, path, body))
        if exchange.status >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {exchange.status}: {exchange.body[:300]!r}")
        return exchange

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def sse_arrivals(exchange: Exchange) -> list[tuple[float, str, bytes]]:
    """The stream's events as (arrival time, event name, data), an event arriving with the body
    chunk that completes it."""
    events: list[tuple[float, str, bytes]] = []
    buffer = b""
    for arrived, chunk in zip(exchange.arrivals, exchange.chunks, strict=True):
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            name, data = "message", b""
            for line in block.split(b"\n"):
                if line.startswith(b"event: "):
                    name = line[len(b"event: ") :].decode()
                elif line.startswith(b"data: "):
                    data = line[len(b"data: ") :]
            if block.strip():
                events.append((arrived, name, data))
    return events


def first_content_ms(exchange: Exchange) -> float:
    """Time from a chat-completion stream's request to its first chunk carrying text."""
    for arrived, _name, data in sse_arrivals(exchange):
        if data and data != b"[DONE]":
            choices = orjson.loads(data).get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                return (arrived - exchange.started) * 1000
    raise RuntimeError("the fake's stream carried no content")


# --- processes ----------------------------------------------------------------------------------


def start_server(database: Database, upstream: FakeProcess, *, with_agents: bool) -> ServerProcess:
    return ServerProcess(
        database,
        upstream.url,
        env={"CLICKY_CHATS_API_KEYS": f"bench:{BENCH_KEY}", "CLICKY_CHATS_MODEL_TIMEOUT_S": "60"},
        with_agents=with_agents,
    ).start()


def start_agents(server: ServerProcess, upstream: FakeProcess, count: int, concurrency: int) -> list[AgentProcess]:
    """`count` runagent processes, started side by side; they then race for the same runs."""
    agents = [
        AgentProcess(server, "--concurrency", str(concurrency), env={"CLICKY_CHATS_MODEL_BASE_URL": upstream.url})
        for _ in range(count)
    ]
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(AgentProcess.start, agents))
    return agents


def stop_all(*processes: Any) -> None:
    for process in processes:
        if process is not None:
            process.stop()


def pids(*processes: Any) -> list[int]:
    return [process.process.pid for process in processes if process is not None and process.process is not None]


async def post_all(server: ServerProcess, requests_: list[tuple[str, Any]], connections: int) -> list[Any]:
    """POSTs each (path, body) over `connections` keep-alive connections at once; the parsed
    answers in the order of the requests."""
    answers: list[Any] = [None] * len(requests_)
    pending = list(reversed(range(len(requests_))))

    async def worker() -> None:
        peer = Peer("127.0.0.1", server.port)
        while pending:
            index = pending.pop()
            path, body = requests_[index]
            answers[index] = orjson.loads((await peer.send("POST", path, body)).body)
        peer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return answers


def setup_objects(server: ServerProcess, threads: int, loop: asyncio.AbstractEventLoop) -> tuple[str, list[str]]:
    """An assistant and `threads` threads with one user message each (not timed)."""
    assistant = {"model": MODEL, "instructions": "You are a benchmark."}
    (created,) = loop.run_until_complete(post_all(server, [("/v1/assistants", assistant)], 1))
    bodies = [
        ("/v1/threads", {"messages": [{"role": "user", "content": f"Say hello, number {index}."}]})
        for index in range(threads)
    ]
    return created["id"], [thread["id"] for thread in loop.run_until_complete(post_all(server, bodies, 8))]


def connect(server: ServerProcess) -> psycopg.Connection[Any]:
    """The server's own PostgreSQL database, for counting what the runs left behind."""
    return psycopg.connect(_to_conninfo(server.env["CLICKY_CHATS_DSN"]), autocommit=True)


def postmaster_pid(server: ServerProcess) -> list[int]:
    """The PostgreSQL server's main process (its backends are its children), so the CPU they spend
    on our runs counts as ours and not as other load; [] on SQLite."""
    if not server.env["CLICKY_CHATS_DSN"].startswith("postgres"):
        return []
    with connect(server) as pg:
        (backend,) = pg.execute("SELECT pg_backend_pid()").fetchone()  # type: ignore[misc]
        with open(f"/proc/{backend}/stat", "rb") as handle:  # while the backend lives
            stat = handle.read()
    return [int(stat[stat.rindex(b")") + 2 :].split()[1])]


def query(server: ServerProcess, sql: str, ids: list[str]) -> list[tuple[Any, ...]]:
    with connect(server) as pg:
        return pg.execute(sql, [ids]).fetchall()


# --- phases 1 and 2: overhead and first delta ---------------------------------------------------


async def latency_phase(
    server: ServerProcess, upstream: FakeProcess, assistant_id: str, thread_ids: list[str], plan: Plan
) -> dict[str, Any]:
    """Streamed runs interleaved with the same streamed call straight to the fake, in random order
    within each pair, so noise from elsewhere lands on both sides alike."""
    ours, fake = Peer("127.0.0.1", server.port), Peer("127.0.0.1", upstream.port)
    # The request the engine makes, usage included: without stream_options the fake leaves out the
    # usage chunk, and the direct side would end one paced chunk (5 ms) before the run's model call.
    chat = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    direct_total: list[float] = []
    direct_first: list[float] = []
    run_total: list[float] = []
    run_first_delta: list[float] = []
    failures: list[str] = []
    order = random.Random(8)
    threads = iter(thread_ids)
    for index in range(plan.latency_warmup + plan.latency_runs):
        measured = index >= plan.latency_warmup
        sides = ["direct", "run"]
        order.shuffle(sides)
        for side in sides:
            if side == "direct":
                exchange = await fake.send("POST", "/v1/chat/completions", chat)
                if measured:
                    direct_total.append(exchange.latency_ms)
                    direct_first.append(first_content_ms(exchange))
                continue
            thread_id = next(threads)
            exchange = await ours.send(
                "POST", f"/v1/threads/{thread_id}/runs", {"assistant_id": assistant_id, "stream": True}
            )
            events = sse_arrivals(exchange)
            done = [at for at, name, _data in events if name == "thread.run.completed"]
            deltas = [at for at, name, _data in events if name == "thread.message.delta"]
            if not done or not deltas:
                failures.append(f"run on {thread_id}: {[name for _at, name, _data in events][-3:]}")
                continue
            if measured:
                run_total.append((done[0] - exchange.started) * 1000)
                run_first_delta.append((deltas[0] - exchange.started) * 1000)
    ours.close()
    fake.close()
    return {
        "direct_ms": summary(direct_total),
        "run_ms": summary(run_total),
        "overhead_ms": {
            "p50": percentile(run_total, 50) - percentile(direct_total, 50),
            "p99": percentile(run_total, 99) - percentile(direct_total, 99),
        },
        "direct_first_chunk_ms": summary(direct_first),
        "run_first_delta_ms": summary(run_first_delta),
        "first_delta_after_first_chunk_ms": {
            "p50": percentile(run_first_delta, 50) - percentile(direct_first, 50),
            "p99": percentile(run_first_delta, 99) - percentile(direct_first, 99),
        },
        "failures": failures,
    }


async def polled_phase(server: ServerProcess, assistant_id: str, thread_ids: list[str]) -> dict[str, Any]:
    """Runs created without `stream`, then retrieved every SDK_POLL_MS until completed, as the SDK's
    create_and_poll does: what a polling client sees, poll interval included."""
    ours = Peer("127.0.0.1", server.port)
    totals: list[float] = []
    for thread_id in thread_ids:
        started = time.perf_counter()
        exchange = await ours.send("POST", f"/v1/threads/{thread_id}/runs", {"assistant_id": assistant_id})
        run = orjson.loads(exchange.body)
        while run["status"] in ("queued", "in_progress"):
            await asyncio.sleep(SDK_POLL_MS / 1000)
            run = orjson.loads((await ours.send("GET", f"/v1/threads/{thread_id}/runs/{run['id']}")).body)
        if run["status"] == "completed":
            totals.append((time.perf_counter() - started) * 1000)
    ours.close()
    return {"poll_interval_ms": SDK_POLL_MS, "run_ms": summary(totals), "failed": len(thread_ids) - len(totals)}


def measure_latency(
    server: ServerProcess, f20: FakeProcess, plan: Plan, loop: asyncio.AbstractEventLoop
) -> dict[str, Any]:
    """Phases 1 and 2 on one server: with its own agents (SQLite), or with one runagent (PostgreSQL)."""
    separate_agent = not server.with_agents
    agents = start_agents(server, f20, 1, plan.latency_agent_concurrency) if separate_agent else []
    try:
        assistant_id, thread_ids = setup_objects(
            server, plan.latency_warmup + plan.latency_runs + plan.polled_runs, loop
        )
        postgres = postmaster_pid(server)
        meter = NoiseMeter(lambda: [os.getpid(), *postgres, *pids(f20, server, *agents)])
        gc.collect()
        gc.disable()  # the client's collector pauses would land in either side's tail
        mark = meter.start()
        streamed = loop.run_until_complete(
            latency_phase(server, f20, assistant_id, thread_ids[: -plan.polled_runs], plan)
        )
        streamed["noise"] = meter.stop(mark)
        gc.enable()
        polled = loop.run_until_complete(polled_phase(server, assistant_id, thread_ids[-plan.polled_runs :]))
    finally:
        stop_all(*agents)
    return {
        "agents": "one runagent process" if separate_agent else "in the server process",
        "streamed": streamed,
        "polled": polled,
    }


# --- phase 3: throughput ------------------------------------------------------------------------


def run_statuses(server: ServerProcess, run_ids: list[str]) -> dict[str, int]:
    rows = query(server, "SELECT status, count(*) FROM api_v1_run WHERE id = ANY(%s) GROUP BY status", run_ids)
    return {status: count for status, count in rows}


def throughput_batch(
    server: ServerProcess,
    upstream: FakeProcess,
    agent_count: int,
    runs: int,
    concurrency: int,
    plan: Plan,
    loop: asyncio.AbstractEventLoop,
) -> dict[str, Any]:
    """`agent_count` runagents, started and idle, then `runs` runs submitted at once on as many new
    threads (over `submit_connections` connections)."""
    assistant_id, thread_ids = setup_objects(server, runs, loop)
    submissions = [(f"/v1/threads/{thread_id}/runs", {"assistant_id": assistant_id}) for thread_id in thread_ids]
    agents: list[AgentProcess] = []
    postgres = postmaster_pid(server)
    meter = NoiseMeter(lambda: [os.getpid(), *postgres, *pids(upstream, server, *agents)])
    try:
        agents = start_agents(server, upstream, agent_count, concurrency)
        mark = meter.start()
        began = time.perf_counter()
        run_ids = [run["id"] for run in loop.run_until_complete(post_all(server, submissions, plan.submit_connections))]
        submit_s = time.perf_counter() - began
        deadline = time.monotonic() + plan.throughput_deadline_s
        while time.monotonic() < deadline:
            statuses = run_statuses(server, run_ids)
            if sum(count for status, count in statuses.items() if status in TERMINAL) >= len(run_ids):
                break
            time.sleep(0.2)
        noise = meter.stop(mark)
    finally:
        stop_all(*agents)
    statuses = run_statuses(server, run_ids)
    (first_created, last_done), *_ = query(
        server,
        "SELECT min(CASE WHEN event = 'thread.run.created' THEN created_at END),"
        " max(CASE WHEN event = 'thread.run.completed' THEN created_at END)"
        " FROM api_v1_runevent WHERE run_id = ANY(%s)",
        run_ids,
    )
    duplicated_threads = query(
        server,
        "SELECT thread_id FROM api_v1_message WHERE role = 'assistant' AND thread_id = ANY(%s)"
        " GROUP BY thread_id HAVING count(*) > 1",
        thread_ids,
    )
    duplicated_runs = query(
        server,
        "SELECT run_id FROM api_v1_runstep WHERE type = 'message_creation' AND run_id = ANY(%s)"
        " GROUP BY run_id HAVING count(*) > 1",
        run_ids,
    )
    reclaimed = query(server, "SELECT count(*) FROM api_v1_run WHERE attempts > 1 AND id = ANY(%s)", run_ids)[0][0]
    completed = statuses.get("completed", 0)
    seconds = (last_done - first_created) if completed else float("nan")
    return {
        "agents": agent_count,
        "agent_concurrency": concurrency,
        "runs": len(run_ids),
        "submit_seconds": round(submit_s, 2),
        "seconds": seconds,
        "runs_per_s": completed / seconds if completed else 0.0,
        "statuses": statuses,
        "lost": len(run_ids) - completed,
        "duplicated": len({row[0] for row in duplicated_threads}) + len(duplicated_runs),
        "duplicated_threads": [row[0] for row in duplicated_threads][:10],
        "duplicated_runs": [row[0] for row in duplicated_runs][:10],
        "claimed_more_than_once": reclaimed,
        # CPU of clicky-chats, PostgreSQL, the fake and this client per run while the batch ran.
        "cpu_ms_per_run": noise["our_cpu_cores"] * noise["seconds"] * 1000 / len(run_ids),
        "noise": noise,
    }


def measure_throughput(
    server: ServerProcess, f100: FakeProcess, plan: Plan, loop: asyncio.AbstractEventLoop
) -> dict[str, Any]:
    results: dict[str, Any] = {"upstream_latency_ms": THROUGHPUT_LATENCY_MS}
    for name, runs, concurrency in (
        ("upstream_bound", plan.throughput_runs, plan.throughput_agent_concurrency),
        ("saturated", plan.saturated_runs, plan.saturated_agent_concurrency),
    ):
        one = throughput_batch(server, f100, 1, runs, concurrency, plan, loop)
        two = throughput_batch(server, f100, 2, runs, concurrency, plan, loop)
        ratio = two["runs_per_s"] / one["runs_per_s"] if one["runs_per_s"] else float("nan")
        results[name] = {"one_agent": one, "two_agents": two, "ratio": ratio}
    return results


# --- phase 4: writes per long answer ------------------------------------------------------------


def pg_counters(pg: psycopg.Connection[Any]) -> dict[str, int]:
    """The cluster's next transaction id (every writing transaction takes one; reading it takes
    none) and this database's cumulative statistics."""
    pg.execute("SELECT pg_stat_clear_snapshot()")
    (next_xid,) = pg.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()  # type: ignore[misc]
    row = pg.execute(
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database"
        " WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return {"next_xid": next_xid, "xact_commit": row[0], "inserted": row[1], "updated": row[2], "deleted": row[3]}


def settled_counters(pg: psycopg.Connection[Any]) -> dict[str, int]:
    """Statistics once every session has reported: PostgreSQL's backends flush theirs at most once
    a second, and an idle one within ten."""
    last = pg_counters(pg)
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = pg_counters(pg)
        if all(now[key] == last[key] for key in ("inserted", "updated", "deleted")):
            return now
        last = now
    return last


def long_answer_run(
    server: ServerProcess, pg: psycopg.Connection[Any], assistant_id: str, thread_id: str
) -> dict[str, Any]:
    before = settled_counters(pg)
    started = time.perf_counter()
    answer = requests.post(
        f"{server.url}/v1/threads/{thread_id}/runs",
        json={"assistant_id": assistant_id, "stream": True},
        headers={"Authorization": f"Bearer {BENCH_KEY}"},
        timeout=120,
    )
    elapsed = time.perf_counter() - started
    events = [line for line in answer.text.splitlines() if line.startswith("event: ")]
    # Once the stream ends the engine still returns from its last write; its heartbeat then stops.
    time.sleep(0.5)
    after = settled_counters(pg)
    run_id, message_text, event_rows = pg.execute(
        "SELECT r.id, m.content::text, (SELECT count(*) FROM api_v1_runevent e WHERE e.run_id = r.id)"
        " FROM api_v1_run r JOIN api_v1_message m ON m.run_id = r.id WHERE r.thread_id = %s",
        [thread_id],
    ).fetchone()  # type: ignore[misc]
    return {
        "seconds": round(elapsed, 2),
        "completed": "event: thread.run.completed" in events,
        "words_stored": message_text.count(" w") + message_text.count('"w'),
        "delta_events": events.count("event: thread.message.delta"),
        "run_events": event_rows,
        "write_transactions": after["next_xid"] - before["next_xid"],
        # From PostgreSQL's cumulative statistics, which sessions report late and which also count
        # autovacuum's work: approximate, unlike write_transactions.
        "all_transactions_approx": after["xact_commit"] - before["xact_commit"],
        "rows_inserted_approx": after["inserted"] - before["inserted"],
        "rows_updated_approx": after["updated"] - before["updated"],
        "run_id": run_id,
    }


def measure_writes(
    server: ServerProcess, fakes: dict[float, FakeProcess], plan: Plan, loop: asyncio.AbstractEventLoop
) -> dict[str, Any]:
    pg = connect(server)
    postgres = postmaster_pid(server)
    results: dict[str, Any] = {"words": LONG_ANSWER_WORDS, "paces": {}}
    try:
        assistant_id, thread_ids = setup_objects(server, plan.long_answers * len(fakes), loop)
        threads = iter(thread_ids)
        for pace_ms, upstream in fakes.items():
            agents = start_agents(server, upstream, 1, 4)
            try:
                meter = NoiseMeter(lambda: [os.getpid(), *postgres, *pids(upstream, server, *agents)])  # noqa: B023
                mark = meter.start()
                answers = [long_answer_run(server, pg, assistant_id, next(threads)) for _ in range(plan.long_answers)]
                results["paces"][f"{pace_ms:g}"] = {
                    "chunk_interval_ms": pace_ms,
                    "answers": answers,
                    "write_transactions": max(answer["write_transactions"] for answer in answers),
                    "noise": meter.stop(mark),
                }
            finally:
                stop_all(*agents)
    finally:
        pg.close()
    return results


# --- the run ------------------------------------------------------------------------------------


def timed(results: dict[str, Any], phase: str, measure: Callable[[], dict[str, Any]]) -> None:
    began = time.monotonic()
    results["phases"][phase] = measure()
    results["phases"][phase]["phase_seconds"] = round(time.monotonic() - began, 1)


PHASES = ("latency_sqlite", "latency_postgres", "throughput", "writes")


def run(plan: Plan, phases: tuple[str, ...] = PHASES) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "runs",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "setup": {
            "upstream_latency_ms": UPSTREAM_LATENCY_MS,
            "stream_interval_ms": STREAM_INTERVAL_MS,
            "throughput_upstream_latency_ms": THROUGHPUT_LATENCY_MS,
            "long_answer_words": LONG_ANSWER_WORDS,
            "long_answer_paces_ms": LONG_ANSWER_PACES_MS,
            "client": "raw keep-alive HTTP/1.1, asyncio + uvloop, httptools parser (bench/chat_proxy.py)",
            "plan": plan.__dict__,
            "phases": list(phases),
        },
        "phases": {},
    }
    began = time.monotonic()
    f20 = FakeProcess(UPSTREAM_LATENCY_MS, interval_ms=STREAM_INTERVAL_MS)
    f100 = FakeProcess(THROUGHPUT_LATENCY_MS)
    long_fakes = {pace: FakeProcess(0.0, interval_ms=pace, words=LONG_ANSWER_WORDS) for pace in LONG_ANSWER_PACES_MS}
    for fake in (f20, f100, *long_fakes.values()):
        fake.wait_ready()
    sqlite = Database("sqlite").start()
    postgres = Database("postgres").start()
    servers: list[ServerProcess] = []
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        # The server's own upstream is used only by its in-process agents (SQLite); runagent
        # processes are each pointed at the fake their phase needs.
        if "latency_sqlite" in phases:
            servers.append(start_server(sqlite, f20, with_agents=True))
            timed(results, "latency_sqlite", lambda: measure_latency(servers[-1], f20, plan, loop))
            stop_all(servers[-1])
        if set(phases) - {"latency_sqlite"}:
            servers.append(start_server(postgres, f20, with_agents=False))
        if "latency_postgres" in phases:
            timed(results, "latency_postgres", lambda: measure_latency(servers[-1], f20, plan, loop))
        if "throughput" in phases:
            timed(results, "throughput", lambda: measure_throughput(servers[-1], f100, plan, loop))
        if "writes" in phases:
            timed(results, "writes", lambda: measure_writes(servers[-1], long_fakes, plan, loop))
    finally:
        stop_all(*servers, f20, f100, *long_fakes.values())
        for server in servers:
            shutil.rmtree(server.directory, ignore_errors=True)
        sqlite.stop()
        postgres.stop()
        loop.close()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["seconds"] = round(time.monotonic() - began, 1)
    results["verdict"] = verdict(results["phases"])
    return results


def verdict(phases: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    for name in ("latency_sqlite", "latency_postgres"):
        if name not in phases:
            continue
        streamed = phases[name]["streamed"]
        overhead = streamed["overhead_ms"]["p50"]
        first = streamed["first_delta_after_first_chunk_ms"]["p50"]
        checks[f"{name}_overhead_p50_ms"] = {
            "value": overhead,
            "target": f"<= {TARGET_OVERHEAD_P50_MS:g}",
            "met": overhead <= TARGET_OVERHEAD_P50_MS,
        }
        checks[f"{name}_first_delta_p50_ms"] = {
            "value": first,
            "target": f"<= {TARGET_FIRST_DELTA_MS:g}",
            "met": first <= TARGET_FIRST_DELTA_MS,
        }
        failed = len(streamed["failures"]) + phases[name]["polled"]["failed"]
        checks[f"{name}_all_runs_completed"] = {"value": failed, "target": "0 failed", "met": failed == 0}
    if "throughput" in phases:
        _throughput_checks(phases["throughput"], checks)
    if "writes" in phases:
        _writes_checks(phases["writes"], checks)
    return checks


def _throughput_checks(throughput: dict[str, Any], checks: dict[str, dict[str, Any]]) -> None:
    bound = throughput["upstream_bound"]
    checks["throughput_ratio"] = {
        "value": bound["ratio"],
        "target": f">= {TARGET_SCALING_RATIO:g}",
        "met": bound["ratio"] >= TARGET_SCALING_RATIO,
    }
    batches = [
        throughput[name][agents] for name in ("upstream_bound", "saturated") for agents in ("one_agent", "two_agents")
    ]
    for key in ("lost", "duplicated"):
        value = sum(batch[key] for batch in batches)
        checks[f"throughput_{key}"] = {"value": value, "target": "0", "met": value == 0}


def _writes_checks(writes: dict[str, Any], checks: dict[str, dict[str, Any]]) -> None:
    # Judged at both paces: a fast model's (as tests/test_runs_stream.py's thousand-token test
    # streams) and a typical one's, the harder, since the engine coalesces by time.
    for pace, measured in writes["paces"].items():
        count = measured["write_transactions"]
        complete = all(answer["completed"] for answer in measured["answers"])
        checks[f"writes_per_answer_at_{pace}ms"] = {
            "value": count,
            "target": f"<= {TARGET_WRITES_PER_ANSWER}",
            "met": complete and count <= TARGET_WRITES_PER_ANSWER,
        }


def table(results: dict[str, Any]) -> str:
    phases, checks, machine = results["phases"], results["verdict"], results["machine"]

    def mark(check: str) -> str:
        return "ok" if checks[check]["met"] else "MISSED"

    def row(label: str, measured: str, reference: str, value: str, target: str, status: str) -> str:
        return f"{label:<48}{measured:>10}{reference:>16}{value:>8}  {target:<10}{status}"

    lines = [
        f"run-engine benchmark: {machine['cpu_model']} x{machine['cores']}, {machine['python']}, "
        f"{results['seconds']:g} s",
        row("", "run", "upstream", "added", "target", ""),
    ]
    noise: dict[str, Any] = {}
    for name, label in (("latency_sqlite", "SQLite, in-server agents"), ("latency_postgres", "PG + runagent")):
        if name not in phases:
            continue
        noise[name.removeprefix("latency_")] = phases[name]["streamed"]["noise"]
        streamed, polled = phases[name]["streamed"], phases[name]["polled"]
        run_ms, direct_ms = streamed["run_ms"], streamed["direct_ms"]
        lines += [
            row(
                f"{label}: run p50 ms (n={run_ms['n']})",
                f"{run_ms['p50']:.1f}",
                f"{direct_ms['p50']:.1f}",
                f"{streamed['overhead_ms']['p50']:+.1f}",
                f"<= {TARGET_OVERHEAD_P50_MS:g}",
                mark(f"{name}_overhead_p50_ms"),
            ),
            row(
                f"{label}: run p99 ms",
                f"{run_ms['p99']:.1f}",
                f"{direct_ms['p99']:.1f}",
                f"{streamed['overhead_ms']['p99']:+.1f}",
                "",
                "",
            ),
            row(
                f"{label}: first delta p50 ms",
                f"{streamed['run_first_delta_ms']['p50']:.1f}",
                f"{streamed['direct_first_chunk_ms']['p50']:.1f}",
                f"{streamed['first_delta_after_first_chunk_ms']['p50']:+.1f}",
                f"<= {TARGET_FIRST_DELTA_MS:g}",
                mark(f"{name}_first_delta_p50_ms"),
            ),
            row(
                f"{label}: polled ({polled['poll_interval_ms']} ms), p50",
                f"{polled['run_ms']['p50']:.1f}",
                "",
                "",
                "reference",
                "",
            ),
        ]
    if "throughput" in phases:
        lines += _throughput_rows(phases["throughput"], checks, row, mark)
        bound = phases["throughput"]["upstream_bound"]
        noise["1 agent"] = bound["one_agent"]["noise"]
        noise["2 agents"] = bound["two_agents"]["noise"]
    if "writes" in phases:
        lines += _writes_rows(phases["writes"], checks, row, mark)
    lines.append(
        "other load on the machine (CPU cores busy outside this benchmark): "
        + ", ".join(f"{name} {value['other_cpu_cores']:.2f}" for name, value in noise.items())
    )
    return "\n".join(lines)


Row = Callable[[str, str, str, str, str, str], str]


def _throughput_rows(
    throughput: dict[str, Any], checks: dict[str, Any], row: Row, mark: Callable[[str], str]
) -> list[str]:
    lines = []
    for name, judged in (("upstream_bound", True), ("saturated", False)):
        batch = throughput[name]
        one, two = batch["one_agent"], batch["two_agents"]
        lines += [
            row(
                f"{one['runs']} runs, c={one['agent_concurrency']}: 1 / 2 runagents, runs/s",
                f"{one['runs_per_s']:.1f}",
                f"{two['runs_per_s']:.1f}",
                f"{batch['ratio']:.2f}x",
                f">= {TARGET_SCALING_RATIO:g}x" if judged else "reference",
                mark("throughput_ratio") if judged else "",
            ),
        ]
    lost = checks["throughput_lost"]["value"]
    duplicated = checks["throughput_duplicated"]["value"]
    lines.append(
        row(
            "lost / duplicated runs, all four batches",
            f"{lost}",
            f"{duplicated}",
            "",
            "0 / 0",
            "ok" if checks["throughput_lost"]["met"] and checks["throughput_duplicated"]["met"] else "MISSED",
        )
    )
    return lines


def _writes_rows(writes: dict[str, Any], checks: dict[str, Any], row: Row, mark: Callable[[str], str]) -> list[str]:
    lines = []
    for pace, measured in writes["paces"].items():
        answer = max(measured["answers"], key=lambda item: item["write_transactions"])
        check = f"writes_per_answer_at_{pace}ms"
        lines.append(
            row(
                f"1,000-chunk answer, a chunk every {pace} ms: writes",
                f"{answer['write_transactions']}",
                f"({answer['delta_events']} deltas)",
                "",
                f"<= {TARGET_WRITES_PER_ANSWER}" if check in checks else "reference",
                mark(check) if check in checks else "",
            )
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run; numbers are rough")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"JSON results (default {RESULTS_PATH})")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, of {','.join(PHASES)} (default: all)",
    )
    options = parser.parse_args(argv)
    phases = tuple(name for name in PHASES if name in options.phases.split(","))
    unknown = set(options.phases.split(",")) - set(PHASES)
    if unknown or not phases:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    results = run(QUICK_PLAN if options.quick else Plan(), phases)
    return report(results, table(results), options.output, strict=options.strict)


if __name__ == "__main__":
    sys.exit(main())
