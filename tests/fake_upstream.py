"""A real OpenAI-compatible HTTP server on loopback, scripted per test.

Tests queue replies per path (`fake.script("chat/completions", Reply.stream([...]))`); a path with
nothing queued gets a sensible default answer, so a test scripts only what it is about. Every
request is recorded (unless `record=False`: a long benchmark run would otherwise keep every request
in memory). Run it alone with `python -m tests.fake_upstream --port 9100 --latency-ms 20`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import math
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Reply:
    kind: str  # json | stream | raw | hang | drop
    status: int = 200
    body: Any = None
    chunks: list[Any] = field(default_factory=list)
    interval_s: float = 0.0
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    done: bool = True
    hang_after: int | None = None  # stream: stop sending (but keep the socket) after N chunks
    break_after: int | None = None  # stream: close the socket mid-body after N chunks

    @classmethod
    def json(
        cls, body: Any, status: int = 200, *, delay_s: float = 0.0, headers: dict[str, str] | None = None
    ) -> Reply:
        return cls("json", status=status, body=body, delay_s=delay_s, headers=headers or {})

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        return cls("json", status=status, body=body, headers=headers or {})

    @classmethod
    def raw(cls, body: bytes, status: int = 200, content_type: str = "text/plain") -> Reply:
        return cls("raw", status=status, body=body, content_type=content_type)

    @classmethod
    def stream(
        cls,
        chunks: list[Any],
        *,
        interval_s: float = 0.0,
        delay_s: float = 0.0,
        done: bool = True,
        hang_after: int | None = None,
        break_after: int | None = None,
    ) -> Reply:
        """Each item is a JSON-able object sent as one `data:` event, or raw bytes sent as they are."""
        return cls(
            "stream",
            chunks=chunks,
            interval_s=interval_s,
            delay_s=delay_s,
            done=done,
            hang_after=hang_after,
            break_after=break_after,
        )

    @classmethod
    def hang(cls) -> Reply:
        return cls("hang")

    @classmethod
    def drop(cls) -> Reply:
        """Close the connection without answering."""
        return cls("drop")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: dict[str, str]
    # When the request arrived (time.monotonic), for benchmarks that time the gaps between calls.
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return orjson.loads(self.body)


def chat_chunk(
    content: str | None = None,
    *,
    role: str | None = None,
    finish_reason: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    id: str = "chatcmpl-fake",
    model: str = "fake-model",
    usage: dict[str, Any] | None = None,
    choices: bool = True,
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}] if choices else [],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def chat_completion(
    content: str | None = "Hello from the fake upstream.",
    *,
    model: str = "fake-model",
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
    id: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": id or f"chatcmpl-fake{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        "system_fingerprint": "fp_fake",
    }


def text_stream(text: str, *, model: str = "fake-model", pieces: int = 4, usage: bool = False) -> list[dict[str, Any]]:
    """The chunks OpenAI would send for `text`: a role chunk, content pieces, a finish chunk."""
    chunk_id = f"chatcmpl-fake{time.time_ns()}"
    size = max(1, -(-len(text) // pieces))
    chunks = [chat_chunk("", role="assistant", id=chunk_id, model=model)]
    chunks += [chat_chunk(text[i : i + size], id=chunk_id, model=model) for i in range(0, len(text), size)]
    chunks.append(chat_chunk(finish_reason="stop", id=chunk_id, model=model))
    if usage:
        chunks.append(
            chat_chunk(
                id=chunk_id,
                model=model,
                choices=False,
                usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            )
        )
    return chunks


# text-embedding-3-large's size, the most any OpenAI embedding model has.
MAX_DIMENSIONS = 3072


def fake_embedding(text: str, dimensions: int = 8) -> list[float]:
    """Deterministic: the same text always embeds the same way."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(text)) or 1
    return [((seed * (k + 3)) % 97) / 97.0 for k in range(dimensions)]


# Embedding models whose name contains this get bag_of_words_embedding instead of fake_embedding.
BAG_OF_WORDS_MARK = "bow"


def bag_of_words_embedding(text: str, dimensions: int = 64) -> list[float]:
    """Texts that share words embed close together (each word counts into a bucket chosen by a
    stable hash; the vector has unit length), so retrieval can be tested for meaning, not noise."""
    vector = [0.0] * dimensions
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        vector[zlib.crc32(word.encode()) % dimensions] += 1.0
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


class FakeUpstream:
    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = True,
        stream_interval_s: float = 0.0,
        stream_words: int = 0,
    ) -> None:
        self.latency_s = latency_s
        self.record = record
        # Pacing of the default (unscripted) chat stream, so a benchmark can tell relaying from buffering.
        self.stream_interval_s = stream_interval_s
        # With N > 0 the default chat stream answers N words, one content chunk each (a long answer
        # for benchmarks that count what the run engine writes per token); 0 keeps the greeting.
        self.stream_words = stream_words
        self.host = host
        self.port = port
        self.requests: list[Recorded] = []
        self.queues: dict[str, collections.deque[Reply]] = collections.defaultdict(collections.deque)
        self.models = ["fake-model", "fake-embedder"]
        self.ignore_encoding_format = False
        self.disconnects = 0  # streams the client (us) closed before the end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # --- scripting --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def script(self, path: str, *replies: Reply) -> None:
        self.queues[path.strip("/")].extend(replies)

    def reset(self) -> None:
        self.requests.clear()
        self.queues.clear()
        self.models = ["fake-model", "fake-embedder"]
        self.ignore_encoding_format = False
        self.disconnects = 0

    def last(self, path: str) -> Recorded:
        for recorded in reversed(self.requests):
            if recorded.path == path.strip("/"):
                return recorded
        raise AssertionError(f"the fake upstream saw no request to {path}")

    # --- serving ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/v1/{path:.*}", self._handle)
        return app

    def start(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self._serve, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake upstream did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start_site())
        self._ready.set()
        self._loop.run_forever()

    async def _start_site(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _shutdown(self) -> None:
        """Closes the site, then ends the handlers still running (a scripted hang sleeps an hour), so
        none is left pending when the loop stops."""
        assert self._runner is not None
        await self._runner.cleanup()
        running = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"].strip("/")
        body = await request.read()
        if self.record:
            self.requests.append(Recorded(request.method, path, dict(request.headers), body, dict(request.query)))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        queue = self.queues.get(path)
        reply = queue.popleft() if queue else self._default(request.method, path, body, request.headers)
        return await self._send(request, reply)

    async def _send(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.kind == "hang":
            await asyncio.sleep(3600)
        if reply.kind == "drop":
            request.transport.close()  # type: ignore[union-attr]
            raise asyncio.CancelledError
        if reply.kind == "json":
            return web.Response(
                body=orjson.dumps(reply.body),
                status=reply.status,
                headers=reply.headers,
                content_type="application/json",
            )
        if reply.kind == "raw":
            return web.Response(
                body=reply.body, status=reply.status, headers=reply.headers, content_type=reply.content_type
            )
        response = web.StreamResponse(
            status=reply.status, headers={"Content-Type": "text/event-stream", **reply.headers}
        )
        await response.prepare(request)
        chunks = reply.chunks if reply.break_after is None else reply.chunks[: reply.break_after]
        try:
            for index, chunk in enumerate(chunks):
                if reply.hang_after is not None and index >= reply.hang_after:
                    await asyncio.sleep(3600)
                if index and reply.interval_s:
                    await asyncio.sleep(reply.interval_s)
                data = chunk if isinstance(chunk, bytes) else b"data: " + orjson.dumps(chunk) + b"\n\n"
                await response.write(data)
            if len(chunks) == len(reply.chunks):
                if reply.done:
                    await response.write(b"data: [DONE]\n\n")
                await response.write_eof()
        except ConnectionResetError:  # the client went away: counted, not an error of ours
            self.disconnects += 1
            return response
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        if len(chunks) < len(reply.chunks):
            # An upstream that dies mid-answer, one interval after its last chunk (the client's
            # aiohttp drops bytes it has not read yet when the connection breaks, so a break in the
            # same instant would eat them): the chunked body never gets its closing chunk.
            await asyncio.sleep(reply.interval_s)
            request.transport.close()  # type: ignore[union-attr]
            raise asyncio.CancelledError
        return response

    # --- default answers --------------------------------------------------------------------

    def _default(self, method: str, path: str, body: bytes, headers: Any) -> Reply:
        payload: dict[str, Any] = {}
        if body and headers.get("Content-Type", "").startswith("application/json"):
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                return Reply.error(400, "fake upstream: bad JSON")
        model = payload.get("model") or "fake-model"
        if path == "models" and method == "GET":
            return Reply.json(
                {
                    "object": "list",
                    "data": [
                        {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake"}
                        for name in self.models
                    ],
                }
            )
        if path == "chat/completions":
            if model not in self.models:
                return Reply.error(
                    404, f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found"
                )
            if payload.get("stream"):
                usage = bool((payload.get("stream_options") or {}).get("include_usage"))
                if self.stream_words:
                    width = len(str(self.stream_words))  # equal-length words split one to a chunk
                    text = "".join(f"w{index:0{width}d} " for index in range(self.stream_words))
                    pieces = self.stream_words
                else:
                    text, pieces = "Hello from the fake upstream.", 4
                return Reply.stream(
                    text_stream(text, model=model, pieces=pieces, usage=usage),
                    interval_s=self.stream_interval_s,
                )
            return Reply.json(chat_completion(model=model))
        if path == "completions":
            return Reply.json(
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"text": " world", "index": 0, "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        if path == "embeddings":
            dimensions = payload.get("dimensions")
            if dimensions is not None and not (isinstance(dimensions, int) and 1 <= dimensions <= MAX_DIMENSIONS):
                # As OpenAI refuses them; a fuzzed 2**63 would otherwise be a list the fake never finishes.
                return Reply.error(400, f"dimensions must be between 1 and {MAX_DIMENSIONS}.", param="dimensions")
            inputs = payload.get("input")
            texts = [inputs] if isinstance(inputs, str) else [str(item) for item in inputs or []]
            as_base64 = payload.get("encoding_format") == "base64" and not self.ignore_encoding_format
            data = []
            bag_of_words = BAG_OF_WORDS_MARK in str(model)
            for index, text in enumerate(texts):
                if bag_of_words:
                    vector = bag_of_words_embedding(text, payload.get("dimensions") or 64)
                else:
                    vector = fake_embedding(text, payload.get("dimensions") or 8)
                encoded: Any = (
                    base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
                )
                data.append({"object": "embedding", "index": index, "embedding": encoded})
            return Reply.json(
                {
                    "object": "list",
                    "data": data,
                    "model": model,
                    "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
                }
            )
        if path == "moderations":
            categories = [
                "harassment",
                "harassment/threatening",
                "hate",
                "hate/threatening",
                "illicit",
                "illicit/violent",
                "self-harm",
                "self-harm/instructions",
                "self-harm/intent",
                "sexual",
                "sexual/minors",
                "violence",
                "violence/graphic",
            ]
            return Reply.json(
                {
                    "id": "modr-fake",
                    "model": payload.get("model") or "omni-moderation-latest",
                    "results": [
                        {
                            "flagged": False,
                            "categories": dict.fromkeys(categories, False),
                            "category_scores": dict.fromkeys(categories, 0.01),
                            "category_applied_input_types": {c: ["text"] for c in categories},
                        }
                    ],
                }
            )
        if path.startswith("images/"):
            return Reply.json(
                {
                    "created": int(time.time()),
                    "data": [{"b64_json": base64.b64encode(b"PNG").decode(), "revised_prompt": None}],
                }
            )
        if path == "audio/speech":
            return Reply.raw(b"ID3fake-mp3-bytes" * 64, content_type="audio/mpeg")
        if path in ("audio/transcriptions", "audio/translations"):
            if b'name="response_format"\r\n\r\ntext' in body:
                return Reply.raw(b"hello from the fake upstream\n", content_type="text/plain")
            return Reply.json({"text": "hello from the fake upstream"})
        return Reply.error(404, f"fake upstream: no route for {method} /v1/{path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--stream-interval-ms", type=float, default=0.0, help="pacing of the default chat stream")
    parser.add_argument(
        "--stream-words", type=int, default=0, help="the default chat stream answers N words, one chunk each"
    )
    parser.add_argument("--no-record", action="store_true", help="keep no requests in memory (long benchmark runs)")
    options = parser.parse_args()
    fake = FakeUpstream(
        latency_s=options.latency_ms / 1000,
        host=options.host,
        port=options.port,
        record=not options.no_record,
        stream_interval_s=options.stream_interval_ms / 1000,
        stream_words=options.stream_words,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(fake.app(), host=options.host, port=options.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
