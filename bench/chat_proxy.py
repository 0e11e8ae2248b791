"""What clicky-chats adds on top of the model upstream, on the chat-completions proxy path.

One run starts a fake upstream (tests/fake_upstream.py, its own process, a fixed 20 ms service time)
and clicky-chats (`manage.py serve` on SQLite, via tests/harness.py), then sends the same
chat-completion requests straight to the upstream and through us, interleaved, so a burst of noise
from elsewhere on the machine lands on both sides alike. The client is raw keep-alive HTTP/1.1 on
asyncio + uvloop with httptools' C parser: httpx or the openai SDK would add more milliseconds of
their own than the proxy under test.

Phases: latency at concurrency 1; streaming time to first and last chunk at concurrency 1, with the
chunk sequences compared; throughput at concurrency 32 against `serve --workers 2`; server RSS
sampled across 10,000 proxied requests. Results print as a table and go to
bench/results/chat_proxy.json with the machine's description. See bench/README.md.

    .venv/bin/python -m bench.chat_proxy            # or: make bench
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httptools
import orjson
import requests
import uvloop

from tests.harness import ROOT, Database, ServerProcess, connections_per_process, free_port, process_tree

UPSTREAM_LATENCY_MS = 20.0
# The fake's default stream is 6 events and [DONE]; pacing them shows whether we relay or buffer.
STREAM_INTERVAL_MS = 5.0
BENCH_KEY = "sk-bench-chat-proxy"
RESULTS_PATH = ROOT / "bench" / "results" / "chat_proxy.json"
CHAT_BODY = orjson.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "Say hello."}]})
STREAM_BODY = orjson.dumps(
    {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello."}], "stream": True}
)

# The budgets of issue 2, item 14.
TARGET_P50_RATIO = 1.10
TARGET_P99_RATIO = 1.25
TARGET_TTFC_ADDED_MS = 3.0
TARGET_THROUGHPUT_RATIO = 0.80
TARGET_RSS_DRIFT_PCT = 10.0


@dataclass(frozen=True)
class Plan:
    """How much of each phase to run; the full plan stays well under five minutes."""

    c1_pairs: int = 1500
    c1_warmup: int = 50
    c1_round: int = 250  # pairs per round, for the spread of round medians
    stream_pairs: int = 300
    stream_warmup: int = 10
    c32_concurrency: int = 32
    c32_rounds: int = 3
    c32_window_s: float = 4.0
    c32_warmup_s: float = 0.5
    rss_requests: int = 10_000
    rss_sample_every: int = 500
    rss_stream_every: int = 10  # one request in ten streams, so both relay paths are watched for leaks


QUICK_PLAN = Plan(
    c1_pairs=200,
    c1_warmup=20,
    c1_round=100,
    stream_pairs=40,
    stream_warmup=5,
    c32_rounds=1,
    c32_window_s=2.0,
    rss_requests=2000,
    rss_sample_every=250,
)


# --- a lean HTTP/1.1 client ---------------------------------------------------------------------


@dataclass
class Exchange:
    """One request and its response, with the client-side clock at each step."""

    started: float
    status: int = 0
    finished: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # when each body chunk came in
    chunks: list[bytes] = field(default_factory=list)

    @property
    def latency_ms(self) -> float:
        return (self.finished - self.started) * 1000

    @property
    def first_chunk_ms(self) -> float:
        return (self.arrivals[0] - self.started) * 1000

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time; timestamps are taken in the parser's
    callbacks, so the measured time does not include waking the awaiting coroutine."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._exchange: Exchange | None = None
        self._waiter: asyncio.Future[Exchange] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        _transport, connection = await asyncio.get_running_loop().create_connection(cls, host, port)
        return connection

    async def send(self, request: bytes) -> Exchange:
        if self.closed or self.transport is None:
            raise ConnectionError("the connection is closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._exchange = Exchange(started=time.perf_counter())
        self.transport.write(request)
        return await self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        if self._exchange is not None:
            self._exchange.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._exchange is not None:
            self._exchange.arrivals.append(time.perf_counter())
            self._exchange.chunks.append(body)

    def on_message_complete(self) -> None:
        if self._exchange is not None and self._waiter is not None and not self._waiter.done():
            self._exchange.finished = time.perf_counter()
            self._waiter.set_result(self._exchange)


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int

    def request(self, body: bytes) -> bytes:
        """The same request for either side; only the Host header differs. The fake upstream
        ignores the key, so both sides get the same headers."""
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {BENCH_KEY}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def connect(self) -> Connection:
        return await Connection.open(self.host, self.port)


class Pool:
    """Keep-alive connections to one target, reopened when the server closes one."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.errors: list[str] = []

    async def send(self, connection: Connection, request: bytes) -> tuple[Connection, Exchange | None]:
        try:
            if connection.closed:
                connection = await self.target.connect()
            exchange = await connection.send(request)
        except (OSError, httptools.HttpParserError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            connection.close()
            return await self.target.connect(), None
        if exchange.status != 200:
            self.errors.append(f"HTTP {exchange.status}: {exchange.body[:200]!r}")
            return connection, None
        return connection, exchange


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values) if values else float("nan"),
        "min": min(values, default=float("nan")),
        "max": max(values, default=float("nan")),
    }


# --- processes: pinning, RSS and CPU from /proc -------------------------------------------------


def pin_tree(root: int, cpus: set[int]) -> None:
    """Affinity is per thread on Linux: set it on every thread of every process in the tree.
    Threads made later inherit it from the thread that makes them."""
    for pid in process_tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass


def rss_bytes(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def cpu_ticks(pids: Iterable[int]) -> int:
    """User + system time of these processes (and their reaped children), in clock ticks."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total


def machine_ticks() -> dict[str, int]:
    """The machine's CPU time since boot by kind (/proc/stat's first line), in clock ticks."""
    with open("/proc/stat") as handle:
        values = [int(value) for value in handle.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return {"tasks": user + nice + system, "interrupts": irq + softirq, "steal": steal}


class NoiseMeter:
    """CPU the rest of the machine used during a phase: other engineers' test suites share these
    two cores, and a phase that ran beside one says so in its results. Interrupt time (loopback
    networking is mostly softirq) and the hypervisor's steal are reported apart."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self.roots = roots
        self.clock_hz = os.sysconf("SC_CLK_TCK")

    def _ours(self) -> int:
        pids = {pid for root in self.roots() for pid in process_tree(root)}
        return cpu_ticks(pids)

    def start(self) -> tuple[float, dict[str, int], int]:
        return time.monotonic(), machine_ticks(), self._ours()

    def stop(self, started: tuple[float, dict[str, int], int]) -> dict[str, float]:
        began, machine_before, ours_before = started
        elapsed = time.monotonic() - began
        machine = {kind: ticks - machine_before[kind] for kind, ticks in machine_ticks().items()}
        ours = self._ours() - ours_before

        def cores(ticks: int) -> float:
            return round(ticks / self.clock_hz / elapsed, 3)

        return {
            "seconds": round(elapsed, 2),
            "our_cpu_cores": cores(ours),
            "other_cpu_cores": cores(max(0, machine["tasks"] - ours)),
            "interrupt_cpu_cores": cores(machine["interrupts"]),
            "steal_cpu_cores": cores(machine["steal"]),
        }


# --- the processes under test -------------------------------------------------------------------


class FakeProcess:
    """tests/fake_upstream.py as its own process, with its latency and its default stream's shape
    (pinned to `cpus` when given). Shared by the benchmarks."""

    def __init__(
        self, latency_ms: float, *, interval_ms: float = 0.0, words: int = 0, cpus: set[int] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = tempfile.NamedTemporaryFile(prefix="bench-fake-upstream-", suffix=".log", delete=False)
        command = [
            sys.executable,
            "-m",
            "tests.fake_upstream",
            "--port",
            str(self.port),
            "--latency-ms",
            f"{latency_ms:g}",
            "--stream-interval-ms",
            f"{interval_ms:g}",
            "--stream-words",
            str(words),
            "--no-record",
        ]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        if cpus:
            pin_tree(self.process.pid, cpus)

    def wait_ready(self) -> FakeProcess:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the fake upstream exited with {self.process.returncode}")
            try:
                if requests.get(self.url + "/models", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("the fake upstream did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        os.unlink(self.log.name)


def start_server(database: Database, upstream: FakeProcess, workers: int) -> ServerProcess:
    # --with-agents as in `make run`: the idle agent loop is part of what a deployment runs.
    return ServerProcess(
        database, upstream.url, env={"CLICKY_CHATS_API_KEYS": f"bench:{BENCH_KEY}"}, workers=workers
    ).start()


def stop_server(server: ServerProcess) -> None:
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


def server_pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


# --- phases -------------------------------------------------------------------------------------


async def latency_c1(direct: Target, proxied: Target, plan: Plan) -> dict[str, Any]:
    """Pairs of the same request, one to each side, in random order within each pair."""
    pools = {target.name: Pool(target) for target in (direct, proxied)}
    connections = {target.name: await target.connect() for target in (direct, proxied)}
    requests_ = {target.name: target.request(CHAT_BODY) for target in (direct, proxied)}
    samples: dict[str, list[float]] = {direct.name: [], proxied.name: []}
    order = random.Random(14)
    for index in range(plan.c1_warmup + plan.c1_pairs):
        pair = [direct, proxied]
        order.shuffle(pair)
        for target in pair:
            name = target.name
            connections[name], exchange = await pools[name].send(connections[name], requests_[name])
            if exchange is not None and index >= plan.c1_warmup:
                samples[name].append(exchange.latency_ms)
    for connection in connections.values():
        connection.close()
    rounds = []
    for start in range(0, plan.c1_pairs, plan.c1_round):
        direct_round = samples[direct.name][start : start + plan.c1_round]
        proxied_round = samples[proxied.name][start : start + plan.c1_round]
        if direct_round and proxied_round:
            rounds.append(percentile(proxied_round, 50) / percentile(direct_round, 50))
    return {
        "direct": summary(samples[direct.name]),
        "proxied": summary(samples[proxied.name]),
        "round_p50_ratios": [round(value, 4) for value in rounds],
        "errors": {name: pool.errors[:10] for name, pool in pools.items() if pool.errors},
        "error_counts": {name: len(pool.errors) for name, pool in pools.items()},
    }


def sse_events(body: bytes) -> list[bytes]:
    """The stream's `data:` payloads in order, with the per-response id and timestamp taken out
    (the fake mints them per request); everything else must match byte for byte."""
    events = []
    for block in body.split(b"\n\n"):
        block = block.strip()
        if not block:
            continue
        if not block.startswith(b"data: "):
            events.append(block)
            continue
        payload = block[len(b"data: ") :]
        if payload == b"[DONE]":
            events.append(payload)
            continue
        parsed = orjson.loads(payload)
        parsed.pop("id", None)
        parsed.pop("created", None)
        events.append(orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS))
    return events


async def streaming_c1(direct: Target, proxied: Target, plan: Plan) -> dict[str, Any]:
    pools = {target.name: Pool(target) for target in (direct, proxied)}
    connections = {target.name: await target.connect() for target in (direct, proxied)}
    requests_ = {target.name: target.request(STREAM_BODY) for target in (direct, proxied)}
    first: dict[str, list[float]] = {direct.name: [], proxied.name: []}
    last: dict[str, list[float]] = {direct.name: [], proxied.name: []}
    transfer_chunks: dict[str, list[int]] = {direct.name: [], proxied.name: []}
    reference: list[bytes] | None = None
    mismatches: dict[str, int] = {direct.name: 0, proxied.name: 0}
    mismatch_example: dict[str, Any] = {}
    order = random.Random(15)
    for index in range(plan.stream_warmup + plan.stream_pairs):
        pair = [direct, proxied]
        order.shuffle(pair)
        for target in pair:
            name = target.name
            connections[name], exchange = await pools[name].send(connections[name], requests_[name])
            if exchange is None or index < plan.stream_warmup:
                continue
            events = sse_events(exchange.body)
            if reference is None:
                reference = events
            if events != reference:
                mismatches[name] += 1
                mismatch_example.setdefault(name, [event.decode(errors="replace") for event in events])
            first[name].append(exchange.first_chunk_ms)
            last[name].append(exchange.latency_ms)
            transfer_chunks[name].append(len(exchange.chunks))
    for connection in connections.values():
        connection.close()
    return {
        "events_per_stream": len(reference or []),
        "reference_events": [event.decode(errors="replace") for event in reference or []],
        "mismatched_streams": mismatches,
        "mismatch_examples": mismatch_example,
        "first_chunk_ms": {name: summary(values) for name, values in first.items()},
        "last_chunk_ms": {name: summary(values) for name, values in last.items()},
        "transfer_chunks_p50": {name: percentile(values, 50) for name, values in transfer_chunks.items()},
        "errors": {name: pool.errors[:10] for name, pool in pools.items() if pool.errors},
    }


async def throughput_window(target: Target, plan: Plan, server_root: int | None = None) -> dict[str, Any]:
    """`concurrency` connections, each sending back to back, for a warm-up and then a measured window."""
    pool = Pool(target)
    request = target.request(CHAT_BODY)
    connections = [await target.connect() for _ in range(plan.c32_concurrency)]
    await asyncio.sleep(0.05)  # let the workers accept them
    split = sorted(connections_per_process(server_root, target.port).values(), reverse=True) if server_root else []
    ticks_before = cpu_ticks(process_tree(server_root)) if server_root else 0
    finished: list[tuple[float, float]] = []
    stopping = False

    async def worker(connection: Connection) -> None:
        while not stopping:
            connection, exchange = await pool.send(connection, request)
            if exchange is not None:
                finished.append((exchange.finished, exchange.latency_ms))
        connection.close()

    workers = [asyncio.ensure_future(worker(connection)) for connection in connections]
    await asyncio.sleep(plan.c32_warmup_s)
    window_start = time.perf_counter()
    await asyncio.sleep(plan.c32_window_s)
    window_end = time.perf_counter()
    stopping = True
    await asyncio.gather(*workers)
    in_window = [latency for at, latency in finished if window_start <= at <= window_end]
    server_ticks = cpu_ticks(process_tree(server_root)) - ticks_before if server_root else 0
    return {
        # Server CPU (all its processes, warm-up included) over every request it answered.
        "server_cpu_ms_per_request": server_ticks * 1000 / os.sysconf("SC_CLK_TCK") / max(1, len(finished)),
        "requests": len(in_window),
        "seconds": window_end - window_start,
        "latencies": in_window,
        "errors": len(pool.errors),
        "error_examples": pool.errors[:5],
        "connections_per_worker": split,
    }


async def throughput_c32(direct: Target, proxied: Target, plan: Plan, server_root: int) -> dict[str, Any]:
    windows: dict[str, list[dict[str, Any]]] = {direct.name: [], proxied.name: []}
    for round_index in range(plan.c32_rounds):
        pair = [direct, proxied] if round_index % 2 == 0 else [proxied, direct]
        for target in pair:
            root = server_root if target is proxied else None
            windows[target.name].append(await throughput_window(target, plan, root))
    result: dict[str, Any] = {"concurrency": plan.c32_concurrency}
    for name, measured in windows.items():
        total = sum(window["requests"] for window in measured)
        seconds = sum(window["seconds"] for window in measured)
        latencies = [latency for window in measured for latency in window["latencies"]]
        result[name] = {
            "requests_per_s": total / seconds,
            "round_requests_per_s": [round(window["requests"] / window["seconds"], 1) for window in measured],
            "latency_ms": summary(latencies),
            "errors": sum(window["errors"] for window in measured),
            "error_examples": [example for window in measured for example in window["error_examples"]][:5],
        }
    result[proxied.name]["connections_per_worker"] = [
        window["connections_per_worker"] for window in windows[proxied.name]
    ]
    result[proxied.name]["server_cpu_ms_per_request"] = sum(
        window["server_cpu_ms_per_request"] for window in windows[proxied.name]
    ) / len(windows[proxied.name])
    return result


async def rss_drift(proxied: Target, root_pid: int, plan: Plan) -> dict[str, Any]:
    pool = Pool(proxied)
    chat, stream = proxied.request(CHAT_BODY), proxied.request(STREAM_BODY)
    connections = [await proxied.connect() for _ in range(plan.c32_concurrency)]
    samples = [(0, rss_bytes(root_pid))]
    sent = 0

    async def worker(connection: Connection, until: int) -> Connection:
        nonlocal sent
        while sent < until:
            sent += 1
            request = stream if sent % plan.rss_stream_every == 0 else chat
            connection, _exchange = await pool.send(connection, request)
        return connection

    while sent < plan.rss_requests:
        until = min(sent + plan.rss_sample_every, plan.rss_requests)
        connections = list(await asyncio.gather(*(worker(connection, until) for connection in connections)))
        samples.append((sent, rss_bytes(root_pid)))
    for connection in connections:
        connection.close()
    first, last = samples[0][1], samples[-1][1]
    return {
        "requests": sent,
        "streaming_share": 1 / plan.rss_stream_every,
        "processes": len(process_tree(root_pid)),
        "first_mib": first / 2**20,
        "last_mib": last / 2**20,
        "max_mib": max(value for _sent, value in samples) / 2**20,
        "drift_pct": (last - first) / first * 100,
        "samples_mib": [[count, round(value / 2**20, 2)] for count, value in samples],
        "errors": len(pool.errors),
        "error_examples": pool.errors[:5],
    }


# --- the run ------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        memory_kib = int(handle.readline().split()[1])
    packages = {}
    for name in ("Django", "uvicorn", "uvloop", "httptools", "aiohttp", "orjson", "asgiref"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": packages,
        "git_commit": commit,
        "load_average_at_start": os.getloadavg(),
    }


def run(plan: Plan, pin: bool) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "chat_proxy",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "setup": {
            "upstream_latency_ms": UPSTREAM_LATENCY_MS,
            "stream_interval_ms": STREAM_INTERVAL_MS,
            "database": "sqlite",
            "client": "raw keep-alive HTTP/1.1, asyncio + uvloop, httptools parser",
            "pinning": (
                "c=1 phases: client and fake upstream on CPU0, the 1-worker server on CPU1; "
                "c=32 and RSS phases: everything on both CPUs"
                if pin
                else "none"
            ),
            "plan": plan.__dict__,
        },
        "phases": {},
    }
    began = time.monotonic()
    database = Database("sqlite").start()
    upstream = FakeProcess(UPSTREAM_LATENCY_MS, interval_ms=STREAM_INTERVAL_MS, cpus={0} if pin else None).wait_ready()
    direct = Target("direct", "127.0.0.1", upstream.port)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    if pin:
        os.sched_setaffinity(0, {0})
    try:
        # --- one worker: latency and streaming at concurrency 1
        server = start_server(database, upstream, workers=1)
        try:
            if pin:
                pin_tree(server_pid(server), {1})
            proxied = Target("proxied", "127.0.0.1", server.port)
            meter = NoiseMeter(lambda: [os.getpid(), upstream.process.pid, server_pid(server)])
            gc.collect()
            gc.freeze()  # the client's own collector pauses would land in either side's tail
            gc.disable()
            mark = meter.start()
            results["phases"]["latency_c1"] = loop.run_until_complete(latency_c1(direct, proxied, plan))
            results["phases"]["latency_c1"]["noise"] = meter.stop(mark)
            mark = meter.start()
            results["phases"]["streaming_c1"] = loop.run_until_complete(streaming_c1(direct, proxied, plan))
            results["phases"]["streaming_c1"]["noise"] = meter.stop(mark)
            gc.enable()
        finally:
            stop_server(server)

        # --- two workers: throughput at concurrency 32, then RSS across 10,000 proxied requests
        if pin:
            os.sched_setaffinity(0, {0, 1})
            pin_tree(upstream.process.pid, {0, 1})
        server = start_server(database, upstream, workers=2)
        try:
            proxied = Target("proxied", "127.0.0.1", server.port)
            meter = NoiseMeter(lambda: [os.getpid(), upstream.process.pid, server_pid(server)])
            gc.collect()
            gc.disable()
            mark = meter.start()
            results["phases"]["throughput_c32"] = loop.run_until_complete(
                throughput_c32(direct, proxied, plan, server_pid(server))
            )
            results["phases"]["throughput_c32"]["noise"] = meter.stop(mark)
            mark = meter.start()
            results["phases"]["rss"] = loop.run_until_complete(rss_drift(proxied, server_pid(server), plan))
            results["phases"]["rss"]["noise"] = meter.stop(mark)
            gc.enable()
        finally:
            stop_server(server)
    finally:
        upstream.stop()
        database.stop()
        loop.close()
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["seconds"] = round(time.monotonic() - began, 1)
    results["verdict"] = verdict(results["phases"])
    return results


def verdict(phases: dict[str, Any]) -> dict[str, dict[str, Any]]:
    latency, streaming = phases["latency_c1"], phases["streaming_c1"]
    throughput, rss = phases["throughput_c32"], phases["rss"]
    p50_ratio = latency["proxied"]["p50"] / latency["direct"]["p50"]
    p99_ratio = latency["proxied"]["p99"] / latency["direct"]["p99"]
    ttfc_added = streaming["first_chunk_ms"]["proxied"]["p50"] - streaming["first_chunk_ms"]["direct"]["p50"]
    identical = not any(streaming["mismatched_streams"].values()) and streaming["events_per_stream"] > 0
    throughput_ratio = throughput["proxied"]["requests_per_s"] / throughput["direct"]["requests_per_s"]
    errors = (
        bool(latency["errors"])
        or bool(streaming["errors"])
        or throughput["direct"]["errors"]
        or throughput["proxied"]["errors"]
        or rss["errors"]
    )
    return {
        "c1_p50_ratio": {"value": p50_ratio, "target": f"<= {TARGET_P50_RATIO}", "met": p50_ratio <= TARGET_P50_RATIO},
        "c1_p99_ratio": {"value": p99_ratio, "target": f"<= {TARGET_P99_RATIO}", "met": p99_ratio <= TARGET_P99_RATIO},
        "stream_first_chunk_added_ms": {
            "value": ttfc_added,
            "target": f"<= {TARGET_TTFC_ADDED_MS}",
            "met": ttfc_added <= TARGET_TTFC_ADDED_MS,
        },
        "stream_chunks_identical": {"value": identical, "target": "identical", "met": identical},
        "c32_throughput_ratio": {
            "value": throughput_ratio,
            "target": f">= {TARGET_THROUGHPUT_RATIO}",
            "met": throughput_ratio >= TARGET_THROUGHPUT_RATIO,
        },
        "rss_drift_pct": {
            "value": rss["drift_pct"],
            "target": f"within +-{TARGET_RSS_DRIFT_PCT:g}",
            "met": abs(rss["drift_pct"]) <= TARGET_RSS_DRIFT_PCT,
        },
        "no_errors": {"value": not errors, "target": "no failed requests", "met": not errors},
    }


def table(results: dict[str, Any]) -> str:
    phases, checks = results["phases"], results["verdict"]
    latency, streaming = phases["latency_c1"], phases["streaming_c1"]
    throughput, rss = phases["throughput_c32"], phases["rss"]
    machine = results["machine"]

    def mark(check: str) -> str:
        return "ok" if checks[check]["met"] else "MISSED"

    def row(label: str, direct: str, proxied: str, added: str, ratio: str, target: str, status: str) -> str:
        return f"{label:<34}{direct:>10}{proxied:>10}{added:>10}{ratio:>8}  {target:<10}{status}"

    first, last = streaming["first_chunk_ms"], streaming["last_chunk_ms"]
    direct_rps, proxied_rps = throughput["direct"]["requests_per_s"], throughput["proxied"]["requests_per_s"]
    lines = [
        f"chat proxy benchmark: fake upstream +{UPSTREAM_LATENCY_MS:g} ms, SQLite, "
        f"{machine['cpu_model']} x{machine['cores']}, {machine['python']}, {results['seconds']:g} s",
        row("", "direct", "via us", "added", "ratio", "target", ""),
        row(
            f"c=1 latency p50 ms (n={latency['direct']['n']})",
            f"{latency['direct']['p50']:.2f}",
            f"{latency['proxied']['p50']:.2f}",
            f"{latency['proxied']['p50'] - latency['direct']['p50']:+.2f}",
            f"{checks['c1_p50_ratio']['value']:.3f}",
            f"<= {TARGET_P50_RATIO}",
            mark("c1_p50_ratio"),
        ),
        row(
            "c=1 latency p99 ms",
            f"{latency['direct']['p99']:.2f}",
            f"{latency['proxied']['p99']:.2f}",
            f"{latency['proxied']['p99'] - latency['direct']['p99']:+.2f}",
            f"{checks['c1_p99_ratio']['value']:.3f}",
            f"<= {TARGET_P99_RATIO}",
            mark("c1_p99_ratio"),
        ),
        row(
            f"stream first chunk p50 ms (n={first['direct']['n']})",
            f"{first['direct']['p50']:.2f}",
            f"{first['proxied']['p50']:.2f}",
            f"{checks['stream_first_chunk_added_ms']['value']:+.2f}",
            "",
            f"<= +{TARGET_TTFC_ADDED_MS:g} ms",
            mark("stream_first_chunk_added_ms"),
        ),
        row(
            "stream first chunk p99 ms",
            f"{first['direct']['p99']:.2f}",
            f"{first['proxied']['p99']:.2f}",
            f"{first['proxied']['p99'] - first['direct']['p99']:+.2f}",
            "",
            "",
            "",
        ),
        row(
            "stream last chunk p50 ms",
            f"{last['direct']['p50']:.2f}",
            f"{last['proxied']['p50']:.2f}",
            f"{last['proxied']['p50'] - last['direct']['p50']:+.2f}",
            "",
            "",
            "",
        ),
        row(
            f"stream events ({streaming['events_per_stream']} per stream)",
            f"{streaming['mismatched_streams']['direct']} diff",
            f"{streaming['mismatched_streams']['proxied']} diff",
            "",
            "",
            "identical",
            mark("stream_chunks_identical"),
        ),
        row(
            f"c={throughput['concurrency']} throughput req/s (2 workers)",
            f"{direct_rps:.0f}",
            f"{proxied_rps:.0f}",
            "",
            f"{checks['c32_throughput_ratio']['value']:.3f}",
            f">= {TARGET_THROUGHPUT_RATIO}",
            mark("c32_throughput_ratio"),
        ),
        row(
            f"c={throughput['concurrency']} latency p50 / p99 ms",
            f"{throughput['direct']['latency_ms']['p50']:.1f}/{throughput['direct']['latency_ms']['p99']:.0f}",
            f"{throughput['proxied']['latency_ms']['p50']:.1f}/{throughput['proxied']['latency_ms']['p99']:.0f}",
            "",
            "",
            "",
            "",
        ),
        f"  (c={throughput['concurrency']}: server CPU {throughput['proxied']['server_cpu_ms_per_request']:.2f} ms per "
        "proxied request; connections per worker in each window: "
        + ", ".join("/".join(map(str, split)) for split in throughput["proxied"]["connections_per_worker"])
        + ")",
        row(
            f"server RSS MiB over {rss['requests']:,} req",
            f"{rss['first_mib']:.1f}",
            f"{rss['last_mib']:.1f}",
            f"{rss['drift_pct']:+.1f}%",
            "",
            f"+-{TARGET_RSS_DRIFT_PCT:g}%",
            mark("rss_drift_pct"),
        ),
        "  (RSS columns: first and last sample, summed over "
        f"{rss['processes']} server processes; drift in the 'added' column)",
        "other load on the machine (CPU cores busy outside this benchmark): "
        + ", ".join(f"{name} {phase['noise']['other_cpu_cores']:.2f}" for name, phase in phases.items()),
    ]
    if not checks["no_errors"]["met"]:
        lines.append("FAILED REQUESTS: see the errors fields in the JSON")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 40 s); numbers are rough")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement to the scheduler")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help=f"JSON results (default {RESULTS_PATH})")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    options = parser.parse_args(argv)
    pin = not options.no_pin and len(os.sched_getaffinity(0)) >= 2
    results = run(QUICK_PLAN if options.quick else Plan(), pin=pin)
    return report(results, table(results), options.output, strict=options.strict)


def report(results: dict[str, Any], printed: str, output: Path, *, strict: bool) -> int:
    """Prints the table, writes the JSON (whole or not at all) and gives the exit status: 1 when
    `strict` and a target was missed. Every benchmark of ours ends here."""
    print(printed)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".json.tmp")
    partial.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    partial.replace(output)
    print(f"results: {output}")
    missed = [name for name, check in results["verdict"].items() if not check["met"]]
    return 1 if strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
