"""Tool-call overhead: how long the run engine takes from the model's call of a server-side tool to
the next model request, with a sys.echo tool (so the tool itself costs nothing); and what the
command sandbox adds to `python3 -c 'print(1)'` beyond the interpreter's own start.

    .venv/bin/python -m bench.tools [--runs N]

Both are measured against a direct reference in the same run: the fake upstream's clock for the
gap between the two model requests of a run, and the same command started directly for the
sandbox. Targets (issue 5): sys.echo overhead p50 <= 20 ms; command tool <= 100 ms beyond the
interpreter's start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.fake_upstream import FakeUpstream, Reply, chat_chunk
from tests.harness import Database, ServerProcess

ECHO_TOOL = "Name: echo\nDescription: Echoes its input\nArgs: input: the text\n\n#!sys.echo\n"
RESULTS = Path(__file__).resolve().parent / "results" / "tools.json"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def echo_overhead(runs: int) -> dict[str, Any]:
    """Runs on SQLite with agents in the server: per run, the gap between the model request that
    ends in the echo call and the model request that carries its output."""
    fake = FakeUpstream().start()
    database = Database("sqlite").start()
    server = ServerProcess(database, fake.base_url, env={"CLICKY_CHATS_API_KEYS": ""}).start()
    gaps: list[float] = []
    try:
        api = server.url + "/v1/rubra"
        tool_id = requests.post(server.url + "/v1/rubra/x/tools", json={"contents": ECHO_TOOL}, timeout=10).json()["id"]
        assistant = requests.post(
            api + "/assistants", json={"model": "fake-model", "gptscript_tools": [tool_id]}, timeout=10
        ).json()["id"]
        for index in range(runs + 3):  # three warm-ups
            fake.reset()
            call = [
                {
                    "index": 0,
                    "id": "call_echo",
                    "type": "function",
                    "function": {"name": "echo", "arguments": '{"input": "hi"}'},
                }
            ]
            fake.script(
                "chat/completions",
                Reply.stream([chat_chunk(role="assistant", tool_calls=call), chat_chunk(finish_reason="tool_calls")]),
                Reply.stream([chat_chunk("done", role="assistant"), chat_chunk(finish_reason="stop")]),
            )
            thread = requests.post(api + "/threads", json={"messages": [{"role": "user", "content": "go"}]}, timeout=10)
            body = {"assistant_id": assistant, "stream": True}
            with requests.post(f"{api}/threads/{thread.json()['id']}/runs", json=body, stream=True, timeout=30) as run:
                text = run.text
            assert "thread.run.completed" in text, text[-500:]
            chats = [r for r in fake.requests if r.path == "chat/completions"]
            assert len(chats) == 2 and "hi" in json.dumps(chats[1].json()["messages"][-1])
            if index >= 3:
                gaps.append((chats[1].at - chats[0].at) * 1000)
    finally:
        server.stop()
        database.stop()
        fake.stop()
    return {"runs": runs, "p50_ms": statistics.median(gaps), "p99_ms": percentile(gaps, 0.99)}


async def _time(argv: list[str], env: dict[str, str], workdir: str, sandboxed: bool) -> float:
    from agents.tools import sandbox

    started = time.perf_counter()
    if sandboxed:
        result = await sandbox.run_command(argv, env=env, workdir=workdir)
        assert result.exit_code == 0 and result.stdout.strip() == "1", result
    else:
        process = await asyncio.create_subprocess_exec(*argv, cwd=workdir, env=env, stdout=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        assert out.strip() == b"1"
    return (time.perf_counter() - started) * 1000


async def command_overhead(rounds: int) -> dict[str, Any]:
    from agents.tools import sandbox

    argv = ["python3", "-c", "print(1)"]
    direct: list[float] = []
    through: list[float] = []
    with sandbox.fresh_workdir() as workdir:
        env = sandbox.tool_environment({}, {}, "{}", str(workdir))
        for index in range(rounds + 3):
            pair = [await _time(argv, env, str(workdir), False), await _time(argv, env, str(workdir), True)]
            if index >= 3:
                direct.append(pair[0])
                through.append(pair[1])
    return {
        "rounds": rounds,
        "direct_p50_ms": statistics.median(direct),
        "sandboxed_p50_ms": statistics.median(through),
        "added_p50_ms": statistics.median(through) - statistics.median(direct),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    options = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clicky_chats.settings")
    os.environ.setdefault("CLICKY_CHATS_ALLOW_COMMAND_TOOLS", "true")
    import django

    django.setup()
    echo = echo_overhead(options.runs)
    command = asyncio.run(command_overhead(options.runs))
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "sys_echo_tool_call": echo,
        "command_tool": command,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"sys.echo tool call -> next model request: p50 {echo['p50_ms']:.1f} ms, p99 {echo['p99_ms']:.1f} ms "
        f"over {echo['runs']} runs (target p50 <= 20 ms)"
    )
    print(
        f"python3 -c 'print(1)': direct p50 {command['direct_p50_ms']:.1f} ms, sandboxed p50 "
        f"{command['sandboxed_p50_ms']:.1f} ms, added {command['added_p50_ms']:.1f} ms (target <= 100 ms)"
    )


if __name__ == "__main__":
    main()
