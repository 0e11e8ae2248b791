"""Starting the real stack for tests and benchmarks: a database, and `manage.py serve` processes."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests

T = TypeVar("T")


def wait_until(condition: Callable[[], T], *, within_s: float = 15.0, what: str, poll_s: float = 0.02) -> T:
    """Polls `condition` until it returns something truthy, and returns that; fails the test at the
    deadline, naming `what` it waited for. Deadlines are generous: they bound a failing test only."""
    deadline = time.monotonic() + within_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {within_s} s waiting for {what}")
        time.sleep(poll_s)


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Database:
    """One database for a server: a temporary SQLite file, or a fresh database on a PostgreSQL."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._pgserver: Any = None
        self._pg_admin_dsn: str | None = None

    def start(self) -> Database:
        if self.kind == "postgres":
            explicit = os.environ.get("CLICKY_CHATS_TEST_PG_DSN")
            if explicit:
                self._pg_admin_dsn = explicit
            else:
                import pgserver

                data = tempfile.mkdtemp(prefix="clicky-pg-")
                self._pgserver = pgserver.get_server(data, cleanup_mode="stop")
                socket_dir = urllib.parse.parse_qs(urllib.parse.urlparse(self._pgserver.get_uri()).query)["host"][0]
                self._pg_admin_dsn = f"postgres://postgres@{urllib.parse.quote(socket_dir, safe='')}/postgres"
        return self

    def new_dsn(self, directory: Path) -> str:
        """A DSN for a database nobody else uses."""
        if self.kind == "sqlite":
            return f"sqlite:///{directory / 'clicky-chats.db'}"
        import psycopg

        name = "clicky_test_" + secrets.token_hex(6)
        admin = _to_conninfo(self._pg_admin_dsn or "")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        parsed = urllib.parse.urlparse(self._pg_admin_dsn)
        return urllib.parse.urlunparse(parsed._replace(path="/" + name))

    @property
    def can_restart(self) -> bool:
        """True when this object started the PostgreSQL itself (not one named by a DSN)."""
        return self._pgserver is not None

    def stop_postgres(self) -> None:
        """Stops the PostgreSQL server, ending every session (fault tests restart it under agents)."""
        import pgserver

        assert self._pgserver is not None, "only a PostgreSQL this harness started can be stopped"
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._pgserver.pgdata, user=self._pgserver.system_user)

    def start_postgres(self) -> None:
        """Starts it again on the same data directory and socket."""
        assert self._pgserver is not None
        self._pgserver.ensure_postgres_running()

    def stop(self) -> None:
        if self._pgserver is not None:
            self._pgserver.cleanup()


def _to_conninfo(dsn: str) -> str:
    """psycopg takes URLs, but not a percent-encoded socket path as host; spell it out."""
    parsed = urllib.parse.urlparse(dsn)
    host = urllib.parse.unquote(parsed.hostname or "") if parsed.hostname else ""
    if parsed.netloc.split("@")[-1].startswith("%2F") or parsed.netloc.split("@")[-1].startswith("%2f"):
        host = urllib.parse.unquote(parsed.netloc.split("@")[-1].split(":")[0])
    parts = [f"dbname={parsed.path.lstrip('/') or 'postgres'}", f"user={parsed.username or 'postgres'}"]
    if host:
        parts.append(f"host={host}")
    if parsed.port:
        parts.append(f"port={parsed.port}")
    if parsed.password:
        parts.append(f"password={parsed.password}")
    return " ".join(parts)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def stop_process(process: subprocess.Popen[bytes] | None) -> int | None:
    """SIGTERM, as an operator would stop it; SIGKILL only if it has not stopped in 20 s."""
    if process is None or process.poll() is not None:
        return process.returncode if process else None
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(5)


class ServerProcess:
    """`manage.py serve` in a subprocess with its own data dir, database and environment."""

    def __init__(
        self,
        database: Database,
        upstream_url: str,
        env: dict[str, str] | None = None,
        workers: int = 1,
        with_agents: bool = True,
        migrate: bool = True,
    ) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="clicky-server-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.with_agents = with_agents
        self.migrate = migrate
        self.env = {
            **os.environ,
            "CLICKY_CHATS_DSN": database.new_dsn(self.directory),
            "CLICKY_CHATS_DATA_DIR": str(self.directory / "data"),
            "CLICKY_CHATS_MODEL_BASE_URL": upstream_url,
            "CLICKY_CHATS_MODEL_API_KEY": "sk-upstream-secret",
            "CLICKY_CHATS_MODEL_TIMEOUT_S": "3",
            "CLICKY_CHATS_SECRET_KEY": "test-secret-" + secrets.token_hex(8),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / "server.log"

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start(self) -> ServerProcess:
        if self.migrate:
            self.manage("migrate", "--noinput")
        command = [sys.executable, "manage.py", "serve", "--port", str(self.port), "--workers", str(self.workers)]
        if self.with_agents:
            command.append("--with-agents")
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the server did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return read_log(self.log_path)

    def stop(self) -> int | None:
        return stop_process(self.process)


class AgentProcess:
    """`manage.py runagent` in a subprocess, sharing a server's database and environment."""

    def __init__(self, server: ServerProcess, *args: str, env: dict[str, str] | None = None) -> None:
        self.server = server
        self.args = args
        self.env = {**server.env, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = server.directory / f"agent-{secrets.token_hex(3)}.log"

    def start(self) -> AgentProcess:
        log = open(self.log_path, "wb")  # kept open for the process's life
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runagent", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60  # a hang detector: Django start-up is slow on a busy machine
        while time.monotonic() < deadline:
            if "started" in self.log():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"the agent did not start:\n{self.log()}")

    def log(self) -> str:
        return read_log(self.log_path)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> int | None:
        return stop_process(self.process)


# --- a server's processes, from /proc (tests and benchmarks) ---------------------------------------


def process_tree(root: int) -> list[int]:
    """The root and all its descendants (`serve`'s parent process and its spawned workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; the fields after it are fixed.
        parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def connections_per_process(root: int, port: int) -> dict[int, int]:
    """How many established connections to `port` each process of the tree holds (the processes
    holding none left out): the worker that accepts a connection keeps it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    counts: dict[int, int] = {}
    for pid in process_tree(root):
        held = 0
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    held += 1
        except OSError:
            continue
        if held:
            counts[pid] = held
    return counts
