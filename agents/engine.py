"""Advancing one claimed run, top to bottom:

1. begin: the run goes in_progress; gather the conversation for the model (done by the claim's
   own transaction, agents/progress.py claim, for a claim's first turn).
2. call the model, streaming; write the answer as it arrives (coalesced) as a message, and any
   function calls as a tool_calls step.
3. finish the turn: completed, incomplete (token limits), or requires_action (function calls); or
   run the server-side tools the model called, the last output stored with the next turn's begin.
Beside it a heartbeat watches the run and renews the lease, and stops the work when the run is
cancelled, expires, or this agent's claim is lost. Every write carries the claim's fencing token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from django.conf import settings

from agents import bus, progress, server_calls, toolbox
from agents.db import db
from agents.runs import MAX_ATTEMPTS, LeaseLost, run_release, run_renew, run_status
from api_rubrax import tool_events
from api_v1.models import Run
from clicky_chats import upstream
from clicky_chats.config import env_float, env_int
from clicky_chats.errors import ApiError
from clicky_chats.ids import new_id, now_seconds
from clicky_chats.sse import SSEReader

log = logging.getLogger("clicky_chats.agents")

# Deltas are written at most every FLUSH_EVERY_S at first, so a long answer costs tens of writes,
# not thousands; after the first second the window widens with the answer's age (a tenth of it, up
# to MAX_FLUSH_EVERY_S), so a slow answer's writes grow with the log of its length, not with it.
FLUSH_EVERY_S = 0.1
FLUSH_WIDENING = 0.1
MAX_FLUSH_EVERY_S = 1.0
# A server call's tool events wait this long for its output, to be written with it in one go.
HOLD_EVENTS_S = 0.1


class Stop(Exception):
    """Why the heartbeat stopped the work: cancelled, expired, lost, or shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TurnFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Settings:
    lease_s: float = field(default_factory=lambda: env_float("CLICKY_CHATS_RUN_LEASE_S", 30.0))
    retries: int = field(default_factory=lambda: env_int("CLICKY_CHATS_MODEL_RETRIES", 3, minimum=0))
    backoff_s: float = field(default_factory=lambda: env_float("CLICKY_CHATS_MODEL_BACKOFF_S", 0.5))

    @property
    def heartbeat_s(self) -> float:
        """How often the agent looks at a run it drives: cancelled, expired, or claimed by another."""
        return min(self.lease_s / 3, 1.0)

    @property
    def renew_every_s(self) -> float:
        """How often it extends the lease, a write: a third of the lease, so two thirds are always
        left, and a long answer costs a renewal every 10 s (the default lease), not every second."""
        return self.lease_s / 3


async def drive(claim: progress.Claim, config: Settings) -> None:
    """Advances a claimed run until it needs the client, ends, or is stopped."""
    run_id, fence = claim.run_id, claim.fence
    work = asyncio.current_task()
    assert work is not None
    stop: dict[str, str] = {}
    heartbeat = asyncio.create_task(_heartbeat(run_id, fence, config, work, stop, claim.expires_at))
    try:
        await _advance(run_id, fence, claim.attempts, claim.turn)
    except asyncio.CancelledError:
        reason = stop.get("reason", "shutdown")
        await _stopped(run_id, fence, reason)
        if reason == "shutdown":
            raise
    except LeaseLost:
        log.warning("run %s: lease lost; another agent has it", run_id)
    except Exception:
        log.exception("run %s: unexpected error", run_id)
        with contextlib.suppress(LeaseLost):
            await db(progress.fail, run_id, fence, "server_error", "The run failed because of an internal error.")
    finally:
        heartbeat.cancel()


async def _stopped(run_id: str, fence: int, reason: str) -> None:
    if reason == "lost":  # the heartbeat found another claim: say so, as a refused write does
        log.warning("run %s: lease lost; another agent has it", run_id)
        return
    with contextlib.suppress(LeaseLost):
        if reason == "cancel":
            await db(progress.cancel, run_id, fence)
        elif reason == "expire":
            await db(progress.expire, run_id, fence)
        elif reason == "shutdown":
            await db(run_release, run_id, fence)  # another agent picks it up at once


async def _heartbeat(
    run_id: str, fence: int, config: Settings, work: asyncio.Task[Any], stop: dict[str, str], expires: int | None
) -> None:
    """Looks at the run every heartbeat_s (at once when told it was cancelled) and renews the lease
    every renew_every_s. `expires` is the run's expires_at, as the claim read it."""
    cancelled = bus.Waiter(bus.cancel_key(run_id))
    renewed = time.monotonic()  # the claim has just set the lease
    try:
        while True:
            await cancelled.wait(config.heartbeat_s)
            try:
                if time.monotonic() - renewed >= config.renew_every_s - config.heartbeat_s / 2:
                    status = await db(run_renew, run_id, fence, config.lease_s)
                    renewed = time.monotonic()
                else:
                    status = await db(run_status, run_id, fence)  # a read: no write transaction
            except LeaseLost:
                stop["reason"] = "lost"
                work.cancel()
                return
            if status == "cancelling":
                stop["reason"] = "cancel"
            elif expires is not None and now_seconds() >= expires:
                stop["reason"] = "expire"
            if stop:
                work.cancel()
                return
    finally:
        cancelled.close()


async def _advance(run_id: str, fence: int, attempts: int, turn: progress.TurnContext | None) -> None:
    """Turn after turn of the run. `turn` is the first one when the claim began it already; each
    round of server tools hands back the next one, begun with its last output."""
    if attempts > MAX_ATTEMPTS:
        await db(
            progress.fail, run_id, fence, "server_error", f"The run was interrupted {MAX_ATTEMPTS} times; giving up."
        )
        return
    continuing = False
    tools: dict[str, toolbox.ServerTool] | None = None
    while True:
        if turn is None:
            turn = await db(progress.begin, run_id, fence, continuing=continuing, with_toolbox=tools is None)
        continuing = True
        if turn.status == "cancelling":
            await db(progress.cancel, run_id, fence)
            return
        if turn.status in Run.TERMINAL:
            return
        if tools is None:  # once per claim: an MCP server's tool list is not fetched every turn
            tools = await toolbox.build(turn.toolbox_inputs)
        if turn.pending_step_id is not None:
            # Server-side calls wait from before (a confirmation, a takeover): run them, then go on.
            outcome, turn = await _run_server_calls(run_id, fence, turn.pending_step_id, None, tools)
            if outcome != "continue":
                return
            continue
        if turn.incomplete_reason is not None:
            await db(progress.end_incomplete, run_id, fence, turn.incomplete_reason)
            return
        if tools:
            turn.payload.setdefault("tools", []).extend(tool.definition for tool in tools.values())
        try:
            ended = await _model_turn(run_id, fence, turn, tools)
        except TurnFailed as failure:
            await db(progress.fail, run_id, fence, failure.code, failure.message)
            return
        if ended.status != "tools":
            return
        # The model asked for server-side tools: run them; the last output begins the next turn.
        assert ended.tool_step_id is not None
        outcome, turn = await _run_server_calls(run_id, fence, ended.tool_step_id, ended.server_calls, tools)
        if outcome != "continue":
            return


async def _run_server_calls(
    run_id: str,
    fence: int,
    step_id: str,
    calls: list[dict[str, Any]] | None,
    tools: dict[str, toolbox.ServerTool],
) -> tuple[str, progress.TurnContext | None]:
    """Runs the step's pending server-side calls in order (`calls`, or read from the step). Returns
    "continue" with the next turn, begun in the transaction that stores the last output, or what
    the run now waits for (requires_confirmation, requires_action) with None."""
    if calls is None:
        calls = await db(server_calls.pending_server_calls, run_id, fence, step_id)
    last: server_calls.ServerOutput | None = None
    for call in calls:
        if last is not None:  # each output is stored before the next call runs, the last with the settle
            await db(server_calls.record_server_output, run_id, fence, step_id, last)
            last = None
        tool = tools.get(call["name"])
        if tool is None:
            last = server_calls.ServerOutput(
                call["id"], f"The tool {call['name']} is not available on this server any more."
            )
        elif call.get("confirmation") is False:
            last = server_calls.ServerOutput(call["id"], "The user denied this tool call.")
        elif tool.requires_confirmation and call.get("confirmation") is None:
            action = f"{tool.describe or tool.name} with {call['arguments'] or '{}'}"
            await db(server_calls.await_confirmation, run_id, fence, step_id, call, tool.name, action)
            return "requires_confirmation", None
        else:
            held = HeldToolEvents(run_id, fence, step_id, {"tool_call_id": call["id"], "run_id": run_id})
            try:
                result = await tool.call(call["arguments"], held.emit)
            except Exception:
                # The run fails over it (drive); what the tool said before it broke stays on record.
                unwritten = await held.close()
                if unwritten:
                    with contextlib.suppress(Exception):
                        await db(server_calls.record_tool_events, run_id, fence, step_id, unwritten)
                raise
            finally:
                remaining = await held.close()
            last = server_calls.ServerOutput(call["id"], result.output, result.record, remaining)
    return await db(progress.finish_server_calls, run_id, fence, step_id, last)


class HeldToolEvents:
    """The tool events (callStart, callFinish, ...) of one running server call, held back so a
    quick call's events go into the transaction that stores its output instead of one each. A call
    still running HOLD_EVENTS_S after an event has what it emitted written then, so a live
    watcher of the step's tool events sees a long call's progress as it happens."""

    def __init__(self, run_id: str, fence: int, step_id: str, extra: dict[str, Any]) -> None:
        self.run_id, self.fence, self.step_id, self.extra = run_id, fence, step_id, extra
        self.held: list[tuple[str, dict[str, Any], float]] = []
        self.writer: asyncio.Task[None] | None = None
        self.writing = False
        self.closed = False

    async def emit(self, event_type: str, **data: Any) -> None:
        # As api_rubrax/tool_events.py's own emitter stores what a tool says.
        self.held.append((event_type, {**self.extra, **tool_events._jsonable(data)}, time.time()))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.create_task(self._write_later())

    async def _write_later(self) -> None:
        await asyncio.sleep(HOLD_EVENTS_S)
        self.writing = True  # from here the write runs to its end: cancelled, it might half happen
        batch, self.held = self.held, []
        try:
            await db(server_calls.record_tool_events, self.run_id, self.fence, self.step_id, batch)
        except LeaseLost:
            pass  # the output's write finds out too, and stops the run's work
        except Exception:
            log.exception("run %s: could not write tool events", self.run_id)
        finally:
            self.writing = False
            if self.held and not self.closed:  # emitted during the write: their turn comes next
                self.writer = asyncio.create_task(self._write_later())

    async def close(self) -> list[tuple[str, dict[str, Any], float]]:
        """Stops the timed writes (waiting for one under way); returns what is still held."""
        self.closed = True
        while self.writer is not None and not self.writer.done():
            if self.writing:
                await asyncio.shield(self.writer)
            else:
                self.writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.writer
        held, self.held = self.held, []
        return held


@dataclass
class TurnWriter:
    """Collects a streamed answer and writes it in coalesced pieces."""

    run_id: str
    fence: int
    message_step: tuple[str, str] | None = None
    tool_step_id: str | None = None
    # Message content not yet written, as (kind, text) with kind "text" or "refusal".
    pieces: list[tuple[str, str]] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    known_calls: int = 0
    last_flush: float = 0.0
    first_flush: float | None = None  # when the answer's first delta was written
    usage: dict[str, Any] = field(default_factory=dict)
    finish_reason: str | None = None
    # Functions the agent runs itself: their calls are kept aside, not streamed as the client's.
    server_names: frozenset[str] = frozenset()

    def pending(self) -> bool:
        return bool(self.pieces) or any(
            (index >= self.known_calls or fragment["arguments"]) and fragment["name"] not in self.server_names
            for index, fragment in self.calls.items()
        )

    def server_calls(self) -> list[dict[str, Any]]:
        return [
            {"id": fragment["id"] or new_id("call_"), "name": fragment["name"], "arguments": fragment["arguments"]}
            for _index, fragment in sorted(self.calls.items())
            if fragment["name"] in self.server_names
        ]

    def _add(self, kind: str, text: str) -> None:
        if self.pieces and self.pieces[-1][0] == kind:
            self.pieces[-1] = (kind, self.pieces[-1][1] + text)
        else:
            self.pieces.append((kind, text))

    def take_chunk(self, chunk: dict[str, Any]) -> None:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self._add("text", delta["content"])
            if delta.get("refusal"):
                self._add("refusal", delta["refusal"])
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                fragment = self.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
                fragment["id"] = fragment["id"] or call.get("id") or ""
                function = call.get("function") or {}
                fragment["name"] += function.get("name") or ""
                fragment["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def window_s(self, now: float) -> float:
        """How long pending deltas may wait now: FLUSH_EVERY_S, widening as the answer goes on."""
        age = 0.0 if self.first_flush is None else now - self.first_flush
        return min(MAX_FLUSH_EVERY_S, max(FLUSH_EVERY_S, age * FLUSH_WIDENING))

    def flush_in(self) -> float | None:
        """Seconds until pending deltas are due (None when nothing waits)."""
        if not self.pending():
            return None
        now = time.monotonic()
        return max(0.0, self.last_flush + self.window_s(now) - now)

    async def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.pending() or (not force and now - self.last_flush < self.window_s(now)):
            return
        self.last_flush = now
        if self.first_flush is None:
            self.first_flush = now
        if self.pieces:
            pieces, self.pieces = self.pieces, []
            if self.message_step is None:
                self.message_step = await db(progress.open_message, self.run_id, self.fence, pieces)
            else:
                await db(progress.append_content, self.run_id, self.fence, self.message_step[1], pieces)
        if self.calls:
            ready = self._ready_calls()
            if ready:
                if self.tool_step_id is None:
                    self.tool_step_id = await db(progress.open_tool_step, self.run_id, self.fence)
                await db(progress.append_tool_calls, self.run_id, self.fence, self.tool_step_id, ready)

    def _ready_calls(self) -> dict[int, dict[str, Any]]:
        """What to write of the calls now: a new call whole (id, name, arguments so far), a known
        one only its new arguments. OpenAI sends id and name in a call's first fragment."""
        ready: dict[int, dict[str, Any]] = {}
        client = [index for index in sorted(self.calls) if self.calls[index]["name"] not in self.server_names]
        for position, index in enumerate(client):
            fragment = self.calls[index]
            if position >= self.known_calls:
                fragment["id"] = fragment["id"] or new_id("call_")
                self.known_calls = position + 1
                ready[position] = dict(fragment)
            elif fragment["arguments"]:
                ready[position] = {"arguments": fragment["arguments"]}
            fragment["arguments"] = ""
        return ready


async def _model_turn(
    run_id: str, fence: int, turn: progress.TurnContext, tools: dict[str, toolbox.ServerTool]
) -> progress.TurnEnd:
    writer = TurnWriter(run_id, fence, server_names=frozenset(tools))
    answer = await _open_model_stream(turn.payload)
    reader = SSEReader()
    finished = False  # [DONE] seen
    pending_read: asyncio.Future[bytes] | None = None
    try:
        while True:
            if pending_read is None:
                pending_read = asyncio.ensure_future(answer.content.readany())
            timeout = writer.flush_in()
            done, _ = await asyncio.wait({pending_read}, timeout=timeout)
            if not done:
                await writer.flush()
                continue
            raw = pending_read.result()
            pending_read = None
            if not raw:
                break
            for _event, data in reader.feed(raw):
                if data.strip() == b"[DONE]":
                    finished = True
                    continue
                chunk = _parse_chunk(data)
                writer.take_chunk(chunk)
            await writer.flush()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise TurnFailed(
            "server_error", f"The model upstream broke off its answer: {exc or type(exc).__name__}"
        ) from None
    finally:
        if pending_read is not None:
            pending_read.cancel()  # stopped mid-read (cancelled, expired): nobody awaits it now
        answer.close()  # hangs up on the model, whatever it was still going to say
    last_pieces: list[tuple[str, str]] = []
    if writer.message_step is not None and not writer.calls and (writer.finish_reason is not None or finished):
        # A plain answer's last text goes in with the turn's end: one transaction, not two.
        last_pieces, writer.pieces = writer.pieces, []
    await writer.flush(force=True)
    if writer.finish_reason is None and not finished:
        # The body ended cleanly but the answer did not: no finish_reason, no [DONE].
        raise TurnFailed("server_error", "The model upstream ended its answer before finishing it.")
    server_call_list = writer.server_calls()  # once: it mints the ids the model left out
    if writer.message_step is None and writer.tool_step_id is None and not server_call_list:
        # The model said nothing: the turn still leaves its (empty) message, as OpenAI's do.
        writer.message_step = await db(progress.open_message, run_id, fence)
    return await db(
        progress.finish_turn,
        run_id,
        fence,
        message_step=writer.message_step,
        tool_step_id=writer.tool_step_id,
        usage=_usage(writer.usage),
        finish_reason=writer.finish_reason,
        calls_pending=writer.tool_step_id is not None,
        server_call_list=server_call_list,
        toolbox_kinds={name: tool.record_kind for name, tool in tools.items()},
        pieces=last_pieces,
    )


def _parse_chunk(data: bytes) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise TurnFailed("server_error", "The model upstream sent a stream that is not JSON.") from None
    if not isinstance(chunk, dict):
        raise TurnFailed("server_error", "The model upstream sent a stream item that is not an object.")
    if isinstance(chunk.get("error"), dict | str):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise TurnFailed("server_error", f"The model upstream failed mid-answer: {message}")
    return chunk


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _open_model_stream(payload: dict[str, Any]) -> aiohttp.ClientResponse:
    """Opens the streamed model call, retrying 429 and 5xx answers and lost connections with a
    bounded backoff that honours retry-after."""
    config = Settings()
    body = orjson.dumps(payload)
    last: TurnFailed | None = None
    for attempt in range(config.retries + 1):
        delay = config.backoff_s * (2**attempt)
        try:
            answer = await upstream.open_upstream(
                "POST", "chat/completions", body=body, content_type="application/json", streaming=True
            )
        except ApiError as exc:
            last = TurnFailed("server_error", exc.message)
        else:
            if answer.status < 400:
                return answer
            error = await upstream.error_response(answer)
            message = orjson.loads(error.content)["error"]["message"]
            if answer.status == 429:
                last = TurnFailed("rate_limit_exceeded", f"The model upstream is rate limited: {message}")
            elif answer.status >= 500:
                last = TurnFailed("server_error", f"The model upstream failed ({answer.status}): {message}")
            else:
                raise TurnFailed("server_error", f"The model upstream refused the request ({answer.status}): {message}")
            delay = _retry_after(answer.headers, delay)
        if attempt < config.retries:
            await asyncio.sleep(min(delay, settings.CONFIG.model_timeout_s))
    assert last is not None
    raise last


def _retry_after(headers: Any, default: float) -> float:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, min(float(value) * scale, 60.0))
            except ValueError:
                continue
    return default
