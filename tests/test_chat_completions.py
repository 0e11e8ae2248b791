"""The chat-completions proxy through the official SDK, sync and async: what reaches the upstream,
what comes back, streams (order, pacing, tool calls, helpers), structured outputs, stored
completions, every way the upstream can fail, and clients that hang up mid-stream."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2  # the HTTP client this SDK version is built on
import openai
import orjson
import pytest
import requests
from pydantic import BaseModel

from tests.conftest import ALICE_KEY, make_async_client, make_client
from tests.fake_upstream import FakeUpstream, Reply, chat_chunk, chat_completion, text_stream
from tests.harness import Database, ServerProcess, free_port, wait_until

MODEL = "fake-model"
USER = [{"role": "user", "content": "Say hello."}]
UPSTREAM_KEY = "sk-upstream-secret"  # what harness.ServerProcess configures as CLICKY_CHATS_MODEL_API_KEY
TIMEOUT_S = 3.0  # harness.ServerProcess sets CLICKY_CHATS_MODEL_TIMEOUT_S=3
USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


# --- helpers -----------------------------------------------------------------------------------


def new_tag() -> str:
    """A metadata value only this test uses, so lists see only this test's completions."""
    return uuid.uuid4().hex


def sse_bytes(chunks: list[dict[str, Any]], *, done: bool = True) -> bytes:
    """The exact bytes the fake upstream sends for these chunks."""
    body = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def raw_post(
    server: ServerProcess, body: bytes | dict[str, Any], *, path: str = "chat/completions", stream: bool = False
) -> requests.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(
        f"{server.url}/v1/{path}",
        data=data,
        headers={"Authorization": f"Bearer {ALICE_KEY}", "Content-Type": "application/json"},
        stream=stream,
        timeout=20,
    )


def assert_healthy(server: ServerProcess) -> None:
    assert server.process is not None and server.process.poll() is None, server.log()
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def assert_envelope(response: requests.Response | httpx2.Response, status: int) -> dict[str, Any]:
    """The answer is OpenAI's error envelope with all four keys; returns the inner error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def stored_ids(client: openai.OpenAI, **filters: Any) -> list[str]:
    return [completion.id for completion in client.chat.completions.list(**filters)]


def tool_call_chunks(chunk_id: str) -> list[dict[str, Any]]:
    """Two parallel tool calls, arguments split over several deltas, as OpenAI streams them."""
    first = {
        "index": 0,
        "id": "call_weather1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    second = {"index": 1, "id": "call_time2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
    return [
        chat_chunk(role="assistant", id=chunk_id),
        chat_chunk(tool_calls=[first], id=chunk_id),
        chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}], id=chunk_id),
        chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}], id=chunk_id),
        chat_chunk(tool_calls=[second], id=chunk_id),
        chat_chunk(tool_calls=[{"index": 1, "function": {"arguments": '{"tz": "CET"}'}}], id=chunk_id),
        chat_chunk(finish_reason="tool_calls", id=chunk_id),
    ]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
    },
]


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: list[str]


# --- 1. non-streamed relay ----------------------------------------------------------------------


def test_create_relays_every_field_unchanged_with_our_upstream_key(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fields: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "Answer in French."},
            {"role": "system", "content": "Be brief.", "name": "rules"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "n": 2,
        "stop": ["\n\n", "END"],
        "max_completion_tokens": 64,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 3,
        "seed": 42,
        "response_format": {"type": "json_object"},
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "user": "user-1234",
        "reasoning_effort": "low",
        "service_tier": "auto",
        "prompt_cache_key": "cache-1",
        "safety_identifier": "safe-1",
    }
    unknown = {"top_k": 40, "x_sampler": {"mirostat": 2, "tau": 5.0, "nested": [1, None, "two"]}}

    raw = client.chat.completions.with_raw_response.create(**fields, extra_body=unknown)

    seen = fake_upstream.last("chat/completions")
    assert seen.method == "POST"
    assert seen.json() == {**fields, **unknown}
    assert seen.body == raw.http_response.request.content  # the very bytes the SDK sent
    assert seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert not any(ALICE_KEY in value for value in seen.headers.values()), "the client's key leaked upstream"


def test_create_returns_unknown_response_fields(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    answer = chat_completion("Bonjour.")
    answer["x_upstream_node"] = {"gpu": 7, "queue_ms": 12.5}
    answer["choices"][0]["message"]["reasoning_content"] = "The user greets me; greet back."
    answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
    fake_upstream.script("chat/completions", Reply.json(answer, headers={"openai-processing-ms": "31"}))

    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    completion = raw.parse()

    assert raw.http_response.content == orjson.dumps(answer)  # byte for byte what the upstream sent
    assert raw.headers["openai-processing-ms"] == "31"
    assert raw.headers["x-request-id"].startswith("req_")
    assert completion.id == answer["id"]
    assert completion.choices[0].message.content == "Bonjour."
    assert completion.model_extra == {"x_upstream_node": {"gpu": 7, "queue_ms": 12.5}}
    assert completion.choices[0].message.model_extra == {"reasoning_content": "The user greets me; greet back."}


def test_async_create_relays_request_and_response(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    answer = chat_completion("Hola.")
    answer["x_trace"] = "abc"
    fake_upstream.script("chat/completions", Reply.json(answer))

    async def run() -> openai.types.chat.ChatCompletion:
        async with make_async_client(server) as client:
            return await client.chat.completions.create(
                model=MODEL, messages=USER, temperature=0, extra_body={"min_p": 0.05}
            )

    completion = asyncio.run(run())

    assert completion.choices[0].message.content == "Hola."
    assert completion.model_extra == {"x_trace": "abc"}
    seen = fake_upstream.last("chat/completions")
    assert seen.json() == {"model": MODEL, "messages": USER, "temperature": 0, "min_p": 0.05}
    assert seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


# --- 2. streaming -------------------------------------------------------------------------------


def test_stream_relays_every_chunk_in_order(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    chunks = text_stream("Hello there, this is streamed.", pieces=6, usage=True)
    fake_upstream.script("chat/completions", Reply.stream(chunks))

    with client.chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
    ) as stream:
        received = [chunk.to_dict() for chunk in stream]

    assert received == chunks
    assert received[-1]["choices"] == [] and received[-1]["usage"] == USAGE
    assert fake_upstream.last("chat/completions").headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert fake_upstream.last("chat/completions").json() == {
        "model": MODEL,
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_stream_bytes_are_the_upstreams_and_end_with_done(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    # Raw HTTP: the SDK swallows `[DONE]`, and this checks the wire itself.
    chunks = text_stream("Byte for byte.", usage=True)
    fake_upstream.script("chat/completions", Reply.stream(chunks))

    response = raw_post(
        server,
        {"model": MODEL, "messages": USER, "stream": True, "stream_options": {"include_usage": True}},
        stream=True,
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    body = response.raw.read()
    assert body == sse_bytes(chunks)
    assert body.endswith(b"data: [DONE]\n\n")


def split_writes(chunks: list[dict[str, Any]]) -> list[bytes]:
    """The chunks as CRLF events with a keep-alive comment, cut mid-line and between an event's two
    line endings, each piece a separate write, as a proxy in front of an upstream may deliver them."""
    events = [b"data: " + orjson.dumps(chunk) + b"\r\n\r\n" for chunk in chunks]
    pieces = [events[0][:20], events[0][20:-2], b"\r\n", b": keep-alive\r\n\r\n" + events[1][:-1], events[1][-1:]]
    return [*pieces, *events[2:], b"data: [DONE]\r\n\r\n"]


@pytest.mark.parametrize("store", [False, True], ids=["plain", "store"])
def test_events_split_across_writes_relay_byte_for_byte(
    store: bool, server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    for_raw, for_sdk = text_stream("Split up.", pieces=2), text_stream("Split again.", pieces=2)
    fake_upstream.script(
        "chat/completions",
        Reply.stream(split_writes(for_raw), interval_s=0.05, done=False),
        Reply.stream(split_writes(for_sdk), interval_s=0.05, done=False),
    )

    response = raw_post(server, {"model": MODEL, "messages": USER, "stream": True, "store": store}, stream=True)
    assert response.raw.read() == b"".join(split_writes(for_raw))
    with client.chat.completions.create(model=MODEL, messages=USER, stream=True, store=store) as stream:
        assert [chunk.to_dict() for chunk in stream] == for_sdk
    if store:
        assert client.chat.completions.retrieve(for_sdk[0]["id"]).choices[0].message.content == "Split again."


def test_async_stream_relays_every_chunk_in_order(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    chunks = text_stream("Async streaming works too.", pieces=5)
    fake_upstream.script("chat/completions", Reply.stream(chunks))

    async def run() -> list[dict[str, Any]]:
        async with make_async_client(server) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
            return [chunk.to_dict() async for chunk in stream]

    assert asyncio.run(run()) == chunks


def test_stream_helper_builds_the_final_completion(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    text = "The stream helper puts this back together."
    chunks = text_stream(text, pieces=5, usage=True)
    fake_upstream.script("chat/completions", Reply.stream(chunks))

    with client.chat.completions.stream(model=MODEL, messages=USER, stream_options={"include_usage": True}) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()

    assert deltas == [chunk["choices"][0]["delta"]["content"] for chunk in chunks[:-2]]  # "" first, then 5 pieces
    assert "".join(deltas) == text
    assert final.choices[0].message.content == text
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.total_tokens == 12
    assert fake_upstream.last("chat/completions").json()["stream"] is True


def test_async_stream_helper_builds_the_final_completion(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    text = "Async helper, same result."
    fake_upstream.script("chat/completions", Reply.stream(text_stream(text, usage=True)))

    async def run() -> tuple[list[str], Any]:
        async with make_async_client(server) as client:
            async with client.chat.completions.stream(
                model=MODEL, messages=USER, stream_options={"include_usage": True}
            ) as stream:
                kinds = [event.type async for event in stream]
                return kinds, await stream.get_final_completion()

    kinds, final = asyncio.run(run())

    assert kinds[-2:] == ["content.done", "chunk"]  # the usage chunk comes after the content is done
    assert final.choices[0].message.content == text
    assert final.usage is not None and final.usage.completion_tokens == 7


def _arrival_times_sync(client: openai.OpenAI) -> list[float]:
    with client.chat.completions.create(model=MODEL, messages=USER, stream=True) as stream:
        return [time.monotonic() for _chunk in stream]


async def _arrival_times_async(server: ServerProcess) -> list[float]:
    async with make_async_client(server) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        return [time.monotonic() async for _chunk in stream]


@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_stream_is_not_buffered(
    flavor: str, server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    interval_s = 0.3
    chunks = text_stream("one two three four five six", pieces=5)  # 7 chunks: 1.8 s from first to last
    fake_upstream.script("chat/completions", Reply.stream(chunks, interval_s=interval_s))

    arrivals = _arrival_times_sync(client) if flavor == "sync" else asyncio.run(_arrival_times_async(server))

    assert len(arrivals) == len(chunks)
    # Buffered, everything would land together at the end; relayed, the spread is the upstream's.
    upstream_spread = interval_s * (len(chunks) - 1)
    assert arrivals[-1] - arrivals[0] > upstream_spread * 0.6
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert sum(gap > interval_s / 2 for gap in gaps) > len(gaps) / 2  # paced like the upstream, mostly


def test_tool_call_deltas_relay_intact(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    chunks = tool_call_chunks("chatcmpl-tools" + new_tag())
    fake_upstream.script("chat/completions", Reply.stream(chunks), Reply.stream(chunks))

    with client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, stream=True) as stream:
        received = [chunk.to_dict() for chunk in stream]
    with client.chat.completions.stream(model=MODEL, messages=USER, tools=TOOLS) as helper:
        final = helper.get_final_completion()

    assert received == chunks
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert [(call.id, call.function.name, call.function.arguments) for call in calls] == [
        ("call_weather1", "get_weather", '{"city": "Paris"}'),
        ("call_time2", "get_time", '{"tz": "CET"}'),
    ]
    assert final.choices[0].finish_reason == "tool_calls"


# --- 3. structured outputs ----------------------------------------------------------------------


def test_parse_returns_the_pydantic_model(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(
        "chat/completions",
        Reply.json(chat_completion('{"city": "Paris", "temperature_c": 21.5, "conditions": ["sunny", "dry"]}')),
    )

    completion = client.chat.completions.parse(model=MODEL, messages=USER, response_format=Weather)

    assert completion.choices[0].message.parsed == Weather(
        city="Paris", temperature_c=21.5, conditions=["sunny", "dry"]
    )
    sent = fake_upstream.last("chat/completions").json()["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Weather" and sent["json_schema"]["strict"] is True
    assert set(sent["json_schema"]["schema"]["required"]) == {"city", "temperature_c", "conditions"}


def test_async_parse_and_streamed_parse(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    answer = '{"city": "Oslo", "temperature_c": -3, "conditions": ["snow"]}'
    fake_upstream.script(
        "chat/completions", Reply.json(chat_completion(answer)), Reply.stream(text_stream(answer, pieces=7))
    )

    async def run() -> tuple[Any, Any]:
        async with make_async_client(server) as client:
            parsed = await client.chat.completions.parse(model=MODEL, messages=USER, response_format=Weather)
            async with client.chat.completions.stream(model=MODEL, messages=USER, response_format=Weather) as stream:
                streamed = await stream.get_final_completion()
            return parsed, streamed

    parsed, streamed = asyncio.run(run())

    expected = Weather(city="Oslo", temperature_c=-3, conditions=["snow"])
    assert parsed.choices[0].message.parsed == expected
    assert streamed.choices[0].message.parsed == expected


# --- 4. stored completions ----------------------------------------------------------------------


def test_stored_completion_lifecycle(server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    tag = new_tag()
    created = client.chat.completions.create(
        model=MODEL, messages=USER, store=True, metadata={"run": tag, "topic": "greeting"}
    )

    stored = client.chat.completions.retrieve(created.id)
    assert stored.id == created.id
    assert stored.choices[0].message.content == created.choices[0].message.content
    assert stored.usage == created.usage and stored.model == created.model and stored.created == created.created
    assert stored.metadata == {"run": tag, "topic": "greeting"}
    assert stored_ids(client, metadata={"run": tag}) == [created.id]

    updated = client.chat.completions.update(created.id, metadata={"run": tag, "topic": "farewell"})
    assert updated.id == created.id and updated.metadata == {"run": tag, "topic": "farewell"}
    assert client.chat.completions.retrieve(created.id).metadata == {"run": tag, "topic": "farewell"}
    assert stored_ids(client, metadata={"run": tag, "topic": "greeting"}) == []
    assert stored_ids(client, metadata={"run": tag, "topic": "farewell"}) == [created.id]

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.update(created.id, metadata={"run": 5})  # type: ignore[dict-item]
    assert caught.value.param == "metadata.run"
    # Raw HTTP: the SDK always sends `metadata`.
    error = assert_envelope(raw_post(server, {}, path=f"chat/completions/{created.id}"), 400)
    assert (error["param"], error["code"]) == ("metadata", "missing_required_parameter")
    cleared = client.chat.completions.update(created.id, metadata=None)  # the spec allows null: it clears
    assert cleared.metadata == {}
    assert stored_ids(client, metadata={"run": tag}) == []

    deleted = client.chat.completions.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "chat.completion.deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.update(created.id, metadata={"a": "b"})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.messages.list(created.id)


def test_unstored_completion_is_not_listed(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    tag = new_tag()
    created = client.chat.completions.create(model=MODEL, messages=USER, metadata={"run": tag})
    assert stored_ids(client, metadata={"run": tag}) == []
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(created.id)


def test_async_stored_completion_lifecycle(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    tag = new_tag()

    async def run() -> None:
        async with make_async_client(server) as client:
            created = await client.chat.completions.create(
                model=MODEL, messages=USER, store=True, metadata={"run": tag}
            )
            stored = await client.chat.completions.retrieve(created.id)
            assert stored.choices[0].message.content == created.choices[0].message.content
            listed = [item.id async for item in client.chat.completions.list(metadata={"run": tag})]
            assert listed == [created.id]
            updated = await client.chat.completions.update(created.id, metadata={"run": tag, "k": "v"})
            assert updated.metadata == {"run": tag, "k": "v"}
            assert (await client.chat.completions.delete(created.id)).deleted is True
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.retrieve(created.id)

    asyncio.run(run())


@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_streamed_store_is_retrievable_at_once(
    flavor: str, server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    tag = new_tag()
    text = "Stored while streaming."
    tool_stream_id = "chatcmpl-storetools" + tag
    fake_upstream.script(
        "chat/completions",
        Reply.stream(text_stream(text, pieces=3, usage=True)),
        Reply.stream(tool_call_chunks(tool_stream_id)),
    )
    options: dict[str, Any] = {"model": MODEL, "messages": USER, "store": True, "metadata": {"run": tag}}

    if flavor == "sync":
        with client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True}) as stream:
            text_ids = {chunk.id for chunk in stream}
        # Retrieved the moment the stream ends: the server stores before it sends [DONE].
        text_stored = client.chat.completions.retrieve(text_ids.pop())
        with client.chat.completions.create(**options, tools=TOOLS, stream=True) as stream:
            tool_ids = {chunk.id for chunk in stream}
        tool_stored = client.chat.completions.retrieve(tool_ids.pop())
    else:

        async def run() -> tuple[Any, Any]:
            async with make_async_client(server) as sdk:
                stream = await sdk.chat.completions.create(
                    **options, stream=True, stream_options={"include_usage": True}
                )
                first = await sdk.chat.completions.retrieve({chunk.id async for chunk in stream}.pop())
                stream = await sdk.chat.completions.create(**options, tools=TOOLS, stream=True)
                second = await sdk.chat.completions.retrieve({chunk.id async for chunk in stream}.pop())
                return first, second

        text_stored, tool_stored = asyncio.run(run())

    assert text_stored.object == "chat.completion"
    assert text_stored.choices[0].message.content == text
    assert text_stored.choices[0].message.role == "assistant"
    assert text_stored.choices[0].finish_reason == "stop"
    assert text_stored.usage is not None and text_stored.usage.total_tokens == 12
    assert text_stored.metadata == {"run": tag}

    assert tool_stored.id == tool_stream_id
    assert tool_stored.choices[0].finish_reason == "tool_calls"
    calls = tool_stored.choices[0].message.tool_calls or []
    assert [(call.id, call.function.name, call.function.arguments) for call in calls] == [
        ("call_weather1", "get_weather", '{"city": "Paris"}'),
        ("call_time2", "get_time", '{"tz": "CET"}'),
    ]
    assert stored_ids(client, metadata={"run": tag}) == [text_stored.id, tool_stored.id]


def test_store_survives_an_upstream_with_odd_fields(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    # Raw HTTP: the strict SDK would refuse this answer's `created`; the proxy must still store it.
    answer = chat_completion("Odd but fine.", id=None)
    answer["id"] = None
    answer["created"] = "just now"
    fake_upstream.script("chat/completions", Reply.json(answer))

    response = raw_post(server, {"model": MODEL, "messages": USER, "store": True})

    assert response.status_code == 200, response.text
    completion_id = response.json()["id"]
    assert completion_id.startswith("chatcmpl-")  # a fresh id for the one the upstream left out
    retrieved = requests.get(
        f"{server.url}/v1/chat/completions/{completion_id}",
        headers={"Authorization": f"Bearer {ALICE_KEY}"},
        timeout=10,
    ).json()
    assert retrieved["choices"][0]["message"]["content"] == "Odd but fine."


def test_list_filters_and_paginates_within_one_second(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    tag = new_tag()
    same_second = int(time.time())
    ids: list[str] = []
    for index in range(25):
        model = "fake-other" if index % 5 == 0 else MODEL
        # Random ids, so id order says nothing about creation order; one `created` second for all.
        answer = {**chat_completion(f"answer {index}", model=model, id=f"chatcmpl-{uuid.uuid4().hex}")}
        answer["created"] = same_second
        fake_upstream.script("chat/completions", Reply.json(answer))
        parity = "even" if index % 2 == 0 else "odd"
        done = client.chat.completions.create(
            model=model, messages=USER, store=True, metadata={"run": tag, "parity": parity}
        )
        ids.append(done.id)
    assert ids != sorted(ids)  # else the test could not tell id order from creation order

    first_page = client.chat.completions.list(metadata={"run": tag})
    assert [item.id for item in first_page.data] == ids[:20]  # default limit 20, oldest first
    assert first_page.has_more is True
    assert {item.created for item in first_page.data} == {same_second}

    assert stored_ids(client, metadata={"run": tag}, limit=7) == ids  # the SDK follows `after`
    assert stored_ids(client, metadata={"run": tag}, limit=4, order="desc") == ids[::-1]

    page = client.chat.completions.list(metadata={"run": tag}, limit=5, after=ids[9])
    assert [item.id for item in page.data] == ids[10:15] and page.has_more is True
    page = client.chat.completions.list(metadata={"run": tag}, limit=5, after=ids[21])
    assert [item.id for item in page.data] == ids[22:] and page.has_more is False
    page = client.chat.completions.list(metadata={"run": tag}, limit=3, after=ids[9], order="desc")
    assert [item.id for item in page.data] == [ids[8], ids[7], ids[6]] and page.has_more is True

    assert stored_ids(client, metadata={"run": tag}, model="fake-other") == ids[::5]
    assert stored_ids(client, metadata={"run": tag, "parity": "odd"}) == ids[1::2]
    assert stored_ids(client, metadata={"run": tag, "parity": "even"}, model=MODEL) == [
        item for position, item in enumerate(ids) if position % 2 == 0 and position % 5 != 0
    ]
    assert stored_ids(client, metadata={"run": tag, "parity": "neither"}) == []
    assert stored_ids(client, metadata={"run": tag}, model="no-such-model") == []

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.list(limit=0)
    assert caught.value.param == "limit"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.list(after="chatcmpl-never-stored")
    assert caught.value.param == "after"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.list(order="sideways")  # type: ignore[arg-type]
    assert caught.value.param == "order"


def test_list_reads_metadata_keys_literally(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    # Keys that a JSON path would misread: an array index, path syntax, a quote, non-ASCII text.
    tag = new_tag()
    keys = ["0", "a.b", "x__y", 'say "hi"', "$[1]", "grüße", "back\\slash"]
    ids = {
        key: client.chat.completions.create(
            model=MODEL, messages=USER, store=True, metadata={"run": tag, key: f"value {position}"}
        ).id
        for position, key in enumerate(keys)
    }

    for position, key in enumerate(keys):
        assert stored_ids(client, metadata={"run": tag, key: f"value {position}"}) == [ids[key]], key
        assert stored_ids(client, metadata={"run": tag, key: "value 99"}) == [], key


def test_stored_messages_are_listed(server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "this?"}, image]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        {"role": "user", "content": "So?", "name": "ann"},
    ]
    created = client.chat.completions.create(model=MODEL, messages=messages, store=True)  # type: ignore[arg-type]

    # The SDK types a stored message's role as "assistant" only, so the strict client cannot read
    # a page holding developer/user/tool messages; raw HTTP checks the wire, a loose client the SDK.
    url = f"{server.url}/v1/chat/completions/{created.id}/messages"
    headers = {"Authorization": f"Bearer {ALICE_KEY}"}
    listed = requests.get(url, headers=headers, timeout=10).json()
    assert listed["object"] == "list" and listed["has_more"] is False
    data = listed["data"]
    assert [item["role"] for item in data] == ["developer", "user", "assistant", "tool", "user"]
    assert len({item["id"] for item in data}) == 5
    assert (listed["first_id"], listed["last_id"]) == (data[0]["id"], data[-1]["id"])
    assert data[0]["content"] == "Be brief." and data[0]["content_parts"] is None
    assert data[1]["content"] == "What is this?"
    assert data[1]["content_parts"] == messages[1]["content"]
    assert data[2]["content"] is None and data[2]["tool_calls"] == messages[2]["tool_calls"]
    assert data[3]["content"] == "a cat" and data[3]["tool_call_id"] == "call_1"
    assert data[4]["content"] == "So?" and data[4]["name"] == "ann"

    page = requests.get(url, headers=headers, params={"limit": 2, "after": data[1]["id"]}, timeout=10).json()
    assert [item["id"] for item in page["data"]] == [data[2]["id"], data[3]["id"]] and page["has_more"] is True
    page = requests.get(url, headers=headers, params={"order": "desc", "limit": 2}, timeout=10).json()
    assert [item["id"] for item in page["data"]] == [data[4]["id"], data[3]["id"]]

    loose = openai.OpenAI(base_url=server.url + "/v1", api_key=ALICE_KEY, max_retries=0)
    with loose:
        walked = list(loose.chat.completions.messages.list(created.id, limit=2))
    assert [(item.id, item.role) for item in walked] == [(item["id"], item["role"]) for item in data]

    # A page holding only the assistant message is within the strict SDK's typing.
    strict_page = client.chat.completions.messages.list(created.id, limit=1, after=data[1]["id"])
    assert [(item.id, item.tool_calls[0].id) for item in strict_page.data] == [(data[2]["id"], "call_1")]  # type: ignore[index]


def test_other_project_cannot_see_a_stored_completion(
    client: openai.OpenAI, bob: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    tag = new_tag()
    created = client.chat.completions.create(model=MODEL, messages=USER, store=True, metadata={"run": tag})
    bobs_own = bob.chat.completions.create(model=MODEL, messages=USER, store=True, metadata={"run": tag})

    for attempt in (
        lambda: bob.chat.completions.retrieve(created.id),
        lambda: bob.chat.completions.update(created.id, metadata={"owner": "bob"}),
        lambda: bob.chat.completions.delete(created.id),
        lambda: bob.chat.completions.messages.list(created.id),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            attempt()
        assert created.id in str(caught.value.message)  # the same 404 as for an id that never existed

    assert stored_ids(bob, metadata={"run": tag}) == [bobs_own.id]
    assert created.id not in stored_ids(bob, limit=100)
    assert stored_ids(client, metadata={"run": tag}) == [created.id]
    assert client.chat.completions.retrieve(created.id).metadata == {"run": tag}


def test_repeated_upstream_ids_stay_retrievable(
    client: openai.OpenAI, bob: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    # Ollama numbers its completions chatcmpl-0..999, so stored ids collide soon, across projects too.
    tag = new_tag()
    repeated = "chatcmpl-" + tag
    stream_of = lambda text: [  # noqa: E731
        chat_chunk("", role="assistant", id=repeated),
        chat_chunk(text, id=repeated),
        chat_chunk(finish_reason="stop", id=repeated),
    ]
    fake_upstream.script(
        "chat/completions",
        Reply.json(chat_completion("first", id=repeated)),
        Reply.json(chat_completion("second", id=repeated)),
        Reply.stream(stream_of("third")),
        Reply.stream(stream_of("bob's")),
    )
    options: dict[str, Any] = {"model": MODEL, "messages": USER, "store": True, "metadata": {"run": tag}}

    first = client.chat.completions.create(**options)
    second = client.chat.completions.create(**options)
    with client.chat.completions.create(**options, stream=True) as stream:
        third_ids = {chunk.id for chunk in stream}
    with bob.chat.completions.create(**options, stream=True) as stream:
        bobs_ids = {chunk.id for chunk in stream}

    assert first.id == repeated
    assert len(third_ids) == 1 and len(bobs_ids) == 1  # one id per stream, as the SDK expects
    third_id, bobs_id = third_ids.pop(), bobs_ids.pop()
    assert len({first.id, second.id, third_id, bobs_id}) == 4
    assert client.chat.completions.retrieve(first.id).choices[0].message.content == "first"
    assert client.chat.completions.retrieve(second.id).choices[0].message.content == "second"
    assert client.chat.completions.retrieve(third_id).choices[0].message.content == "third"
    assert bob.chat.completions.retrieve(bobs_id).choices[0].message.content == "bob's"
    assert stored_ids(client, metadata={"run": tag}) == [first.id, second.id, third_id]


# --- 5. errors ----------------------------------------------------------------------------------


def _create(client: openai.OpenAI, stream: bool, **extra: Any) -> Any:
    """A create that reads the whole answer, streamed or not."""
    if not stream:
        return client.chat.completions.create(model=MODEL, messages=USER, **extra)
    with client.chat.completions.create(model=MODEL, messages=USER, stream=True, **extra) as chunks:
        return list(chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("status", "error_class", "error"),
    [
        (400, openai.BadRequestError, {"type": "invalid_request_error", "param": "temperature", "code": "bad_temp"}),
        (404, openai.NotFoundError, {"type": "invalid_request_error", "param": None, "code": "model_not_found"}),
        (429, openai.RateLimitError, {"type": "requests", "param": None, "code": "rate_limit_exceeded"}),
        (500, openai.InternalServerError, {"type": "server_error", "param": None, "code": None}),
    ],
)
def test_upstream_errors_pass_through(
    stream: bool,
    status: int,
    error_class: type[openai.APIStatusError],
    error: dict[str, Any],
    server: ServerProcess,
    client: openai.OpenAI,
    fake_upstream: FakeUpstream,
) -> None:
    message = f"upstream says no ({status})"
    headers = {"retry-after": "7", "x-ratelimit-remaining-requests": "0"} if status == 429 else {}
    fake_upstream.script("chat/completions", Reply.error(status, message, **error, headers=headers))

    with pytest.raises(error_class) as caught:
        _create(client, stream)

    assert caught.value.status_code == status
    assert caught.value.body == {"message": message, **error}
    assert assert_envelope(caught.value.response, status) == {"message": message, **error}
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert_healthy(server)


@pytest.mark.parametrize(
    ("reply", "status", "message_part"),
    [
        (Reply.json({"error": 'model "llama9" not found, try pulling it first'}, status=404), 404, "llama9"),
        (Reply.raw(b"Internal Server Error", status=500), 500, "Internal Server Error"),
        (Reply.raw(b"<html>Bad Gateway</html>", status=502, content_type="text/html"), 502, "Bad Gateway"),
        (Reply.json({"detail": "Field required: messages"}, status=422), 422, "Field required"),
        (Reply.raw(b"", status=503), 503, "(empty body)"),
    ],
    ids=["ollama-string", "plain-text", "html", "fastapi-detail", "empty"],
)
def test_upstream_errors_of_other_shapes_get_our_envelope(
    reply: Reply,
    status: int,
    message_part: str,
    server: ServerProcess,
    client: openai.OpenAI,
    fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.script("chat/completions", reply)

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=USER)

    error = assert_envelope(caught.value.response, status)
    assert message_part in error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert caught.value.body == error
    assert_healthy(server)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hello"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"model": ""}, "model"),
        ({"model": 7}, "model"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"seed": True}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "magic"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"stream": "yes"}, "stream"),
        ({"store": "true"}, "store"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": "usage"}, "stream_options"),
        ({"metadata": {"k": 5}}, "metadata.k"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_bad_input_is_a_400_naming_the_param(
    fields: dict[str, Any], param: str, server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    body = {"model": MODEL, "messages": USER, **fields}

    # extra_body puts the fields on the wire exactly as given, past the SDK's own parameters.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=USER, extra_body=body)

    error = assert_envelope(caught.value.response, 400)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert fake_upstream.requests == []  # refused here, never relayed


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b'{"model": "fake-model", "messages": [', None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b'["model", "messages"]', None, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", "missing_required_parameter"),
        (b'{"model": "fake-model"}', "messages", "missing_required_parameter"),
        (b'{"model": "fake-model", "messages": null}', "messages", "missing_required_parameter"),
    ],
    ids=["truncated", "empty", "array", "no-model", "no-messages", "null-messages"],
)
def test_malformed_or_incomplete_body_is_a_400(
    body: bytes, param: str | None, code: str, server: ServerProcess, fake_upstream: FakeUpstream
) -> None:
    # Raw HTTP: the SDK cannot send malformed JSON.
    error = assert_envelope(raw_post(server, body), 400)
    assert (error["param"], error["code"]) == (param, code)
    assert fake_upstream.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_upstream_that_hangs_is_a_504(
    stream: bool, server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script("chat/completions", Reply.hang())
    started = time.monotonic()

    with pytest.raises(openai.APIStatusError) as caught:
        _create(client, stream)

    elapsed = time.monotonic() - started
    assert TIMEOUT_S * 0.9 < elapsed < TIMEOUT_S + 5
    error = assert_envelope(caught.value.response, 504)
    assert error["code"] == "upstream_timeout" and error["type"] == "server_error"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert_healthy(server)


@pytest.mark.parametrize("store", [False, True], ids=["plain", "store"])
def test_garbage_upstream_answer_is_a_502(
    store: bool, server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    tag = new_tag()
    fake_upstream.script("chat/completions", Reply.raw(b"<html>It works!</html>", content_type="text/html"))

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=USER, store=store, metadata={"run": tag})

    error = assert_envelope(caught.value.response, 502)
    assert error["code"] == "upstream_bad_response" and "It works!" in error["message"]
    assert stored_ids(client, metadata={"run": tag}) == []
    assert_healthy(server)


@pytest.fixture(scope="module")
def server_without_upstream(database: Database) -> Iterator[ServerProcess]:
    """A second server whose upstream is a loopback port nobody listens on."""
    closed_port = free_port()
    proc = ServerProcess(
        database,
        f"http://127.0.0.1:{closed_port}/v1",
        env={"CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}"},
        with_agents=False,
    ).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_unreachable_upstream_is_a_502(stream: bool, server_without_upstream: ServerProcess) -> None:
    with make_client(server_without_upstream) as client, pytest.raises(openai.APIStatusError) as caught:
        _create(client, stream)

    error = assert_envelope(caught.value.response, 502)
    assert error["code"] == "upstream_unreachable" and error["type"] == "server_error"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert_healthy(server_without_upstream)


@pytest.mark.parametrize("store", [False, True], ids=["plain", "store"])
def test_stream_broken_midway_ends_with_an_error_frame(
    store: bool, server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    tag = new_tag()
    chunks = text_stream("This answer never finishes, sadly.", pieces=6)
    fake_upstream.script("chat/completions", Reply.stream(chunks, interval_s=0.1, break_after=3))
    received: list[dict[str, Any]] = []

    with pytest.raises(openai.APIError) as caught:
        with client.chat.completions.create(
            model=MODEL, messages=USER, stream=True, store=store, metadata={"run": tag}
        ) as stream:
            for chunk in stream:
                received.append(chunk.to_dict())

    assert received == chunks[:3]
    assert not isinstance(caught.value, openai.APIStatusError)  # raised from inside the stream
    assert "model upstream" in caught.value.message
    assert caught.value.body is not None and caught.value.body["type"] == "server_error"  # type: ignore[index]
    assert stored_ids(client, metadata={"run": tag}) == []  # half an answer is not stored
    assert_healthy(server)


def test_stream_broken_inside_an_event_still_raises_api_error(
    server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    # The upstream dies halfway through writing an event. Relayed as it came, the client would hold
    # half a JSON line with our error frame glued on, and fail with a JSON decode error instead.
    chunks = text_stream("Half an event follows.", pieces=3)
    partial = b'data: {"id": "chatcmpl-x", "object": "chat.com'
    fake_upstream.script(
        "chat/completions", Reply.stream([*chunks[:2], partial, *chunks[2:]], interval_s=0.1, break_after=3)
    )
    received: list[dict[str, Any]] = []

    with pytest.raises(openai.APIError) as caught:
        with client.chat.completions.create(model=MODEL, messages=USER, stream=True) as stream:
            for chunk in stream:
                received.append(chunk.to_dict())

    assert received == chunks[:2]
    assert "model upstream" in caught.value.message
    assert_healthy(server)


@pytest.mark.parametrize("store", [False, True], ids=["plain", "store"])
def test_upstream_error_frame_mid_stream_is_relayed_and_not_stored(
    store: bool, server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    # vLLM and LiteLLM report a failure after the stream has started as an error frame.
    tag = new_tag()
    chunks = text_stream("Out of memory soon.", pieces=4)
    error_frame = {"error": {"message": "CUDA out of memory", "type": "server_error", "param": None, "code": 500}}
    fake_upstream.script("chat/completions", Reply.stream([*chunks[:3], error_frame]))
    received: list[dict[str, Any]] = []

    with pytest.raises(openai.APIError) as caught:
        with client.chat.completions.create(
            model=MODEL, messages=USER, stream=True, store=store, metadata={"run": tag}
        ) as stream:
            for chunk in stream:
                received.append(chunk.to_dict())

    assert received == chunks[:3]
    assert caught.value.message == "CUDA out of memory"
    assert stored_ids(client, metadata={"run": tag}) == []
    assert_healthy(server)


def test_stream_that_hangs_midway_is_cut_at_the_timeout(
    server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    chunks = text_stream("Then the upstream fell silent.", pieces=4)
    fake_upstream.script("chat/completions", Reply.stream(chunks, hang_after=2))
    received: list[dict[str, Any]] = []
    started = time.monotonic()

    with pytest.raises(openai.APIError) as caught:
        with client.chat.completions.create(model=MODEL, messages=USER, stream=True) as stream:
            for chunk in stream:
                received.append(chunk.to_dict())

    elapsed = time.monotonic() - started
    assert received == chunks[:2]
    assert TIMEOUT_S * 0.9 < elapsed < TIMEOUT_S + 5
    assert "did not answer within" in caught.value.message
    assert caught.value.code == "upstream_timeout"
    assert_healthy(server)


def test_async_client_sees_the_same_errors(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    chunks = text_stream("Cut short.", pieces=4)
    fake_upstream.script(
        "chat/completions",
        Reply.error(429, "slow down", type="tokens", code="rate_limit_exceeded", headers={"retry-after": "2"}),
        Reply.stream(chunks, interval_s=0.1, break_after=2),
    )

    async def run() -> tuple[openai.RateLimitError, openai.APIError, int]:
        async with make_async_client(server) as client:
            with pytest.raises(openai.RateLimitError) as limited:
                await client.chat.completions.create(model=MODEL, messages=USER)
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model=MODEL, messages=[])
            seen = 0
            with pytest.raises(openai.APIError) as broken:
                stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
                async for _chunk in stream:
                    seen += 1
            return limited.value, broken.value, seen

    limited, broken, seen = asyncio.run(run())

    assert limited.response.headers["retry-after"] == "2"
    assert limited.body == {"message": "slow down", "type": "tokens", "param": None, "code": "rate_limit_exceeded"}
    assert seen == 2 and not isinstance(broken, openai.APIStatusError)
    assert_healthy(server)


# --- 6. clients that hang up --------------------------------------------------------------------


def test_client_disconnect_closes_the_upstream_stream(
    server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    chunks = text_stream("word " * 60, pieces=60)
    fake_upstream.script("chat/completions", Reply.stream(chunks, interval_s=0.05))

    stream = client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    for received, _chunk in enumerate(stream, start=1):
        if received == 3:
            break
    stream.close()  # drops the connection mid-stream

    wait_until(lambda: fake_upstream.disconnects == 1, within_s=10, what="the upstream stream to be closed")
    assert_healthy(server)


def test_async_disconnect_of_a_stored_stream_stores_nothing(
    server: ServerProcess, client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    tag = new_tag()
    chunks = text_stream("word " * 60, pieces=60)
    fake_upstream.script("chat/completions", Reply.stream(chunks, interval_s=0.05))

    async def run() -> str:
        async with make_async_client(server) as sdk:
            stream = await sdk.chat.completions.create(
                model=MODEL, messages=USER, stream=True, store=True, metadata={"run": tag}
            )
            async for chunk in stream:
                completion_id = chunk.id
                break
            await stream.close()
            return completion_id

    completion_id = asyncio.run(run())

    wait_until(lambda: fake_upstream.disconnects == 1, within_s=10, what="the upstream stream to be closed")
    assert fake_upstream.last("chat/completions").json()["store"] is True
    time.sleep(0.3)  # had a store been under way, it would have landed by now
    assert stored_ids(client, metadata={"run": tag}) == []
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(completion_id)
    assert_healthy(server)


def test_server_is_healthy_after_everything(server: ServerProcess, client: openai.OpenAI) -> None:
    assert_healthy(server)
    assert client.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content
