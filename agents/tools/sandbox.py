"""Running command tools: a fresh temporary directory, a scrubbed environment, resource limits,
a wall-clock timeout and a capped output; under bubblewrap with no network when configured.

Command tools are off unless CLICKY_CHATS_ALLOW_COMMAND_TOOLS=true (checked where tools are
created); this module is how they run once allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from clicky_chats.config import ConfigError, env_bool, env_float, env_int, env_str, env_url

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


SANDBOXES = ("none", "bwrap")


def command_tools_allowed() -> bool:
    return env_bool("CLICKY_CHATS_ALLOW_COMMAND_TOOLS", False)


def sandbox_mode() -> str:
    mode = env_str("CLICKY_CHATS_TOOL_SANDBOX", "none").strip().lower()
    if mode not in SANDBOXES:
        raise ConfigError(f"CLICKY_CHATS_TOOL_SANDBOX must be one of {', '.join(SANDBOXES)}, not {mode!r}")
    return mode


def check_settings() -> None:
    """Reads every tool setting once, so a bad value stops start-up (config.load calls this)
    instead of failing each tool call; they are read again where tools run."""
    Limits.from_env()
    command_tools_allowed()
    env_bool("CLICKY_CHATS_CONFIRM", False)
    if sandbox_mode() == "bwrap" and shutil.which("bwrap") is None:
        raise ConfigError("CLICKY_CHATS_TOOL_SANDBOX=bwrap but bubblewrap (bwrap) is not installed")
    if env_str("CLICKY_CHATS_SEARCH_URL", ""):
        env_url("CLICKY_CHATS_SEARCH_URL", "")


@dataclass(frozen=True)
class Limits:
    timeout_s: float
    cpu_s: int
    memory_bytes: int
    file_bytes: int
    processes: int
    output_bytes: int

    @classmethod
    def from_env(cls) -> Limits:
        timeout = env_float("CLICKY_CHATS_TOOL_TIMEOUT_S", 30.0)
        return cls(
            timeout_s=timeout,
            # A little past the wall clock, so a busy loop is reported as the timeout it hit.
            cpu_s=int(timeout) + 2,
            memory_bytes=env_int("CLICKY_CHATS_TOOL_MEMORY_BYTES", 512 * 1024 * 1024, minimum=16 * 1024 * 1024),
            file_bytes=env_int("CLICKY_CHATS_TOOL_FILE_BYTES", 64 * 1024 * 1024, minimum=1024),
            processes=env_int("CLICKY_CHATS_TOOL_PROCESSES", 64, minimum=1),
            output_bytes=env_int("CLICKY_CHATS_TOOL_OUTPUT_MAX_BYTES", 64 * 1024, minimum=256),
        )


@dataclass
class CommandResult:
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    timeout_s: float = 0.0
    output_bytes: int = 0

    def as_tool_output(self) -> str:
        """What the model sees: stdout, or the failure with its exit code and stderr."""
        if self.timed_out:
            return f"The tool call took longer than {self.timeout_s:g} s and was stopped."
        if self.exit_code != 0:
            return f"The tool exited with code {self.exit_code}: {self.stderr.strip() or self.stdout.strip()}"
        if self.truncated:
            return self.stdout + f"\n[output cut at {self.output_bytes} bytes]"
        return self.stdout


# Names an argument may never set, even one a tool declares: they would change which program runs
# or what it loads (bash even runs the commands in $BASH_ENV), or hide the tool's own files.
RESERVED_NAMES = frozenset(
    {"PATH", "HOME", "LANG", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "TMPDIR"}
)
RESERVED_PREFIXES = ("GPTSCRIPT_", "LD_", "DYLD_", "LC_", "PYTHON", "PERL", "RUBY", "NODE_", "BASH_FUNC")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def exportable(name: str) -> bool:
    upper = name.upper()
    return bool(ENV_NAME.match(name)) and upper not in RESERVED_NAMES and not upper.startswith(RESERVED_PREFIXES)


def tool_environment(env_vars: dict[str, str], args: dict[str, str], input_json: str, workdir: str) -> dict[str, str]:
    """Only PATH, HOME, LANG, the tool's own env_vars, its args (as given and upper-cased) and
    GPTSCRIPT_INPUT: never the server's secrets. An argument never overrides a reserved name."""
    env = {"PATH": SAFE_PATH, "HOME": workdir, "LANG": "C.UTF-8"}
    env.update(env_vars)
    for name, value in args.items():
        if exportable(name) and "\0" not in value:
            env[name] = value
            env[name.upper()] = value
    env["GPTSCRIPT_INPUT"] = input_json
    env["GPTSCRIPT_TOOL_DIR"] = workdir
    return env


def _with_limits(argv: list[str], limits: Limits) -> list[str]:
    """Resource limits through util-linux's prlimit, applied before the tool's own code runs.
    (A preexec_fn would do the same, but is unsafe in our multi-threaded server.)"""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise RuntimeError("command tools need util-linux's prlimit to set their resource limits")
    return [
        prlimit,
        f"--cpu={limits.cpu_s}",
        f"--as={limits.memory_bytes}",
        f"--fsize={limits.file_bytes}",
        f"--nproc={limits.processes}",
        "--core=0",
        "--",
        *argv,
    ]


def _wrap_bwrap(argv: list[str], workdir: str) -> list[str]:
    """Under bubblewrap: no network, a read-only system, only the work dir writable."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise RuntimeError("CLICKY_CHATS_TOOL_SANDBOX=bwrap but bubblewrap (bwrap) is not installed")
    binds = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for path in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.exists(path):
            binds += ["--ro-bind", path, path]
    return [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        *binds,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
        workdir,
        workdir,
        "--chdir",
        workdir,
        *argv,
    ]


async def run_command(
    argv: list[str],
    *,
    env: dict[str, str],
    workdir: str,
    limits: Limits | None = None,
) -> CommandResult:
    """Runs argv under the limits; its stdin is empty (a tool gets its input from its arguments).

    Spawned by the standard library, not the event loop: uvloop's children inherit duplicates of
    their stdout and stderr, so anything a tool left in the background held the pipes open. Once
    the tool exits (or times out) its whole process group is killed, background work included."""
    limits = limits or Limits.from_env()
    argv = _with_limits(argv, limits)
    if sandbox_mode() == "bwrap":
        argv = _wrap_bwrap(argv, workdir)
    process = subprocess.Popen(  # noqa: ASYNC220 - a quick fork and exec; the waiting is async below
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    assert process.stdout is not None and process.stderr is not None
    readers = asyncio.gather(
        _read_capped(process.stdout, limits.output_bytes), _read_capped(process.stderr, limits.output_bytes)
    )
    timed_out = False
    try:
        try:
            await asyncio.wait_for(_exited(process), limits.timeout_s)
        except TimeoutError:
            timed_out = True
    finally:
        _kill_group(process.pid)  # whatever it left running goes with it, and the pipes close
        if process.poll() is None:
            process.wait()  # killed: at once
    (out, out_cut), (err, _) = await readers
    if timed_out:
        return CommandResult(None, "", "", timed_out=True, timeout_s=limits.timeout_s)
    exit_code = process.returncode
    stderr = err.decode("utf-8", "replace")
    if exit_code is not None and exit_code < 0:
        stderr = (stderr + f"\n(killed by signal {signal.Signals(-exit_code).name}: a resource limit was hit)").strip()
    return CommandResult(
        exit_code, out.decode("utf-8", "ignore"), stderr, truncated=out_cut, output_bytes=limits.output_bytes
    )


async def _read_capped(pipe: IO[bytes], cap: int) -> tuple[bytes, bool]:
    """All of a pipe up to `cap` bytes, and whether there was more. It keeps draining past the cap,
    so the child never blocks on a full pipe."""
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    transport, _protocol = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), pipe)
    data = b""
    truncated = False
    try:
        while chunk := await stream.read(65536):
            room = cap - len(data)
            if len(chunk) > room:
                truncated = True
            if room > 0:
                data += chunk[:room]
    finally:
        transport.close()
    return data, truncated


async def _exited(process: subprocess.Popen[bytes]) -> None:
    """Waits for the process to exit without a thread: a pidfd wakes the loop when it does."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfds here (old kernel): look every 20 ms
        while process.poll() is None:  # noqa: ASYNC110 - nothing else to wait on
            await asyncio.sleep(0.02)
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(None))
    try:
        if process.poll() is None:
            await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    process.poll()  # reaps it, and sets returncode


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpreter_argv(instruction: str, env: dict[str, str], script_path: str | None) -> list[str]:
    """`#!python3 -c '...' ${x}` -> argv. The line is split into words first, then each `${name}`
    in a word becomes that variable of the tool's environment (its args, env_vars and
    GPTSCRIPT_INPUT; empty when unset, as in gptscript), so a value stays inside its one word
    whatever quotes or spaces it holds. The script file is appended when the tool has a script
    body."""
    try:
        words = shlex.split(instruction)
    except ValueError as exc:
        raise ValueError(f"the #! line cannot be split into words: {exc}") from None
    argv = [_PLACEHOLDER.sub(lambda match: env.get(match.group(1), ""), word) for word in words]
    if argv and argv[0] == "/usr/bin/env" and len(argv) > 1:
        argv = argv[1:]
    if not argv:
        raise ValueError("the #! line names no program")
    if script_path is not None:
        argv.append(script_path)
    return argv


@contextlib.contextmanager
def fresh_workdir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="clicky-tool-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
