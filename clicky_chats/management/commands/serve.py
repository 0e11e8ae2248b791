"""`manage.py serve`: uvicorn, with one listening socket per worker process.

uvicorn's own supervisor (`uvicorn.run(workers=N)`) binds one socket and every worker accepts from
it. Whichever worker is awake takes the connection, so keep-alive clients opened together land
unevenly: 32 connections from the chat-proxy benchmark split 32/0, 30/2 or 22/10 over two workers,
and the busy worker set the throughput. Here each worker gets its own SO_REUSEPORT socket on the
same port, and the kernel spreads connections over them by a hash of their addresses. The workers
are still uvicorn's: the parent binds the sockets, starts `uvicorn.Server(config).run(sockets=[one])`
in each through uvicorn's `Process` (the spawn wrapper its supervisor uses), and takes over only what
that supervisor did with them: restart a worker that dies, replace them all on SIGHUP, stop them
all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Process

# uvicorn's logger, so that the parent's lines read like the workers' own.
log = logging.getLogger("uvicorn.error")
WORKER_START_TIMEOUT_S = 60


class Command(BaseCommand):
    help = "Serve the API with uvicorn (uvloop + httptools); --with-agents also runs the agent loop."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.CONFIG.server_host)
        parser.add_argument("--port", type=int, default=settings.CONFIG.server_port)
        parser.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
        parser.add_argument(
            "--with-agents",
            action="store_true",
            default=settings.CONFIG.with_agents,
            help="also run the agent loop in each server process (CLICKY_CHATS_WITH_AGENTS)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        host, port, workers = options["host"], options["port"], options["workers"]
        if workers < 1:
            self.stderr.write("--workers must be at least 1")
            raise SystemExit(2)
        # Worker processes import the app afresh; the environment is how they learn the choice.
        os.environ["CLICKY_CHATS_WITH_AGENTS"] = "true" if options["with_agents"] else "false"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clicky_chats.settings")
        # uvicorn, not granian: a Django async view measured 1.09 ms p50 under uvicorn against
        # 1.57 ms under granian on our 2-core machines (performance-and-reliability.md, A5).
        config = uvicorn.Config(
            "clicky_chats.asgi:application",
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            # httptools, with a response's head and body in one write (http_protocol.py).
            http="clicky_chats.http_protocol:CoalescingHttpToolsProtocol",
            lifespan="on",
            access_log=False,
            log_config=None,  # keep Django's LOGGING; uvicorn's own config would drop its handlers
            log_level="info",
            timeout_graceful_shutdown=30,
        )
        try:
            sockets = listening_sockets(host, port, workers, config.backlog)
        except OSError as exc:
            self.stderr.write(f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}")
            raise SystemExit(1) from None
        bound_port = sockets[0].getsockname()[1]
        log.info("Listening on http://%s:%d with %d worker(s) (Press CTRL+C to quit)", host, bound_port, workers)
        try:
            if workers == 1:
                server = uvicorn.Server(config)
                server.run(sockets=sockets)
                if not server.started:  # the app failed at start-up (uvicorn.run exits so too)
                    raise SystemExit(STARTUP_FAILURE)
            else:
                raise SystemExit(supervise(config, sockets))
        finally:
            for sock in sockets:
                sock.close()


def listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """`count` listening sockets on host:port; more than one share it through SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if count > 1:
        # SO_REUSEPORT lets any socket of the same user that also sets it join the port, another
        # `serve` on the same port included, which would then take a share of our connections
        # without an error. A plain bind first fails on any listener there, ours or not.
        # (SO_REUSEADDR, as uvicorn sets, so connections of a previous run in TIME_WAIT don't.)
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = probe.getsockname()[1]  # port 0 picks one here; every worker then shares it
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            # Listening now, not when a worker is up, closes the port to the probe above at once,
            # and a connection that comes early waits in the backlog for its worker.
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def supervise(config: uvicorn.Config, sockets: list[socket.socket]) -> int:
    """Runs one uvicorn worker per socket until SIGINT or SIGTERM; returns the exit status.

    A worker that dies is started again on its socket (while it is down, the connections the
    kernel hashes to that socket wait in its backlog); one that fails at start-up stops them all,
    since a new one would fail the same way. SIGHUP replaces the workers one at a time, as
    uvicorn's supervisor does: each new one serves before the old one is stopped."""
    stop = threading.Event()
    restart = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("Received %s, stopping the workers.", signal.Signals(signum).name)
        stop.set()

    def request_restart(signum: int, frame: FrameType | None) -> None:
        log.info("Received SIGHUP, replacing the workers.")
        restart.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    signal.signal(signal.SIGHUP, request_restart)

    def start(sock: socket.socket) -> Process:
        process = Process(config, [sock])
        process.start()
        return process

    workers = [start(sock) for sock in sockets]
    status = 0
    while not stop.wait(0.5):
        if restart.is_set():
            restart.clear()
            for index, old in enumerate(workers):
                new = start(sockets[index])
                # Django and the agent loop take seconds to start on a busy machine, more than
                # uvicorn's health-check timeout.
                if not new.wait_until_ready(WORKER_START_TIMEOUT_S, stop):
                    new.kill()
                    new.join()
                    log.error("Worker [%s] did not start in time; keeping [%s].", new.pid, old.pid)
                    break
                old.terminate()
                old.join()
                workers[index] = new
        for index, worker in enumerate(workers):
            if worker.process.is_alive():
                continue
            worker.join()
            if worker.exitcode == STARTUP_FAILURE:
                log.error("Worker [%s] failed to start; stopping.", worker.pid)
                status = 1
                stop.set()
                break
            log.warning("Worker [%s] exited with %s; starting another.", worker.pid, worker.exitcode)
            workers[index] = start(sockets[index])
    # Each worker finishes its requests and its lifespan shutdown (the agent loop) on SIGTERM.
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join()
    return status
