"""The endpoints we relay to the model upstream, other than chat: embeddings, moderations, legacy
completions, images, audio and models. Each test drives the real server with the official SDK and
checks both what the client got and what the fake upstream received."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP

import openai
import pytest
import requests

from tests.conftest import ALICE_KEY, make_async_client, make_client
from tests.fake_upstream import FakeUpstream, Recorded, Reply, fake_embedding
from tests.harness import Database, ServerProcess

UPSTREAM_KEY = "sk-upstream-secret"  # what tests/harness.py gives every server as its upstream key
# Binary on purpose: CR/LF pairs, NULs and high bytes must all reach the upstream unchanged.
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8 + b"\r\n--not-a-boundary\r\n"
AUDIO_BYTES = b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(range(256)) * 4


def float32(values: list[float]) -> list[float]:
    """`values` as they come back from a round trip through little-endian float32 (base64 embeddings)."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def decode_base64_floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def assert_our_upstream_key(recorded: Recorded) -> None:
    """The upstream call carries the server's own key, never the client's."""
    assert recorded.headers.get("Authorization") == f"Bearer {UPSTREAM_KEY}"
    assert ALICE_KEY not in str(recorded.headers)


def multipart_parts(recorded: Recorded) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart body the upstream received: name -> (filename, content)."""
    content_type = recorded.headers["Content-Type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + recorded.body
    )
    assert message.is_multipart()
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[str(name)] = (part.get_filename(), part.get_payload(decode=True))
    return parts


def loose_client(server: ServerProcess, key: str = ALICE_KEY) -> openai.OpenAI:
    """The SDK without strict validation, for the answers strict mode cannot type (see each use)."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20)


# --- embeddings ----------------------------------------------------------------------------------


def test_embeddings_as_floats(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    texts = ["the quick brown fox", "jumps over"]
    result = client.embeddings.create(model="fake-embedder", input=texts, encoding_format="float", dimensions=5)

    assert [item.embedding for item in result.data] == [fake_embedding(text, 5) for text in texts]
    assert [item.index for item in result.data] == [0, 1]
    assert result.model == "fake-embedder"
    assert result.usage.prompt_tokens == 2
    recorded = fake_upstream.last("embeddings")
    assert recorded.json() == {
        "model": "fake-embedder",
        "input": texts,
        "encoding_format": "float",
        "dimensions": 5,
    }
    assert_our_upstream_key(recorded)


def test_embeddings_as_floats_async(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    async def embed() -> list[list[float]]:
        async with make_async_client(server) as sdk:
            result = await sdk.embeddings.create(model="fake-embedder", input="async text", encoding_format="float")
            return [item.embedding for item in result.data]

    assert asyncio.run(embed()) == [fake_embedding("async text")]
    assert_our_upstream_key(fake_upstream.last("embeddings"))


def test_embeddings_in_base64_by_default(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    # With no encoding_format the SDK asks for base64 and decodes it itself; strict validation
    # would reject the base64 string before the SDK gets to decode it, so this needs a loose client.
    with loose_client(server) as sdk:
        raw = sdk.embeddings.with_raw_response.create(model="fake-embedder", input=["one", "two"])
        wire = raw.http_response.json()
        result = raw.parse()

    assert fake_upstream.last("embeddings").json()["encoding_format"] == "base64"
    assert all(isinstance(item["embedding"], str) for item in wire["data"])
    assert [item.embedding for item in result.data] == [float32(fake_embedding(t)) for t in ("one", "two")]


def test_embeddings_converted_to_base64_when_the_upstream_ignores_encoding_format(
    server: ServerProcess, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.ignore_encoding_format = True
    # Loose client: the strict one cannot validate base64 strings (see the test above).
    with loose_client(server) as sdk:
        raw = sdk.embeddings.with_raw_response.create(model="fake-embedder", input=["alpha", "beta"], dimensions=6)
        wire = raw.http_response.json()
        decoded_by_sdk = raw.parse()
        explicit = sdk.embeddings.create(model="fake-embedder", input="gamma", encoding_format="base64")

    # The upstream answered with floats; the client still got base64 float32, as it asked.
    assert fake_upstream.requests[-1].json()["encoding_format"] == "base64"
    assert [decode_base64_floats(item["embedding"]) for item in wire["data"]] == [
        float32(fake_embedding(text, 6)) for text in ("alpha", "beta")
    ]
    assert [item.embedding for item in decoded_by_sdk.data] == [
        float32(fake_embedding(text, 6)) for text in ("alpha", "beta")
    ]
    # An explicit encoding_format makes the SDK hand back the string as it came.
    assert isinstance(explicit.data[0].embedding, str)
    assert decode_base64_floats(explicit.data[0].embedding) == float32(fake_embedding("gamma"))
    assert wire["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


def test_embeddings_floats_stay_floats_when_the_upstream_ignores_encoding_format(
    client: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.ignore_encoding_format = True
    result = client.embeddings.create(model="fake-embedder", input="delta", encoding_format="float")
    assert result.data[0].embedding == fake_embedding("delta")


def test_embeddings_upstream_error_is_relayed(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(
        "embeddings", Reply.error(400, "This model's maximum context length is 8192 tokens.", param="input")
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="fake-embedder", input="too long", encoding_format="float")
    assert caught.value.body == {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "param": "input",
        "code": None,
    }
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


# --- moderations -----------------------------------------------------------------------------------


def test_moderations(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    result = client.moderations.create(input=["is this fine?"], model="omni-moderation-latest")

    assert result.id == "modr-fake"
    assert result.results[0].flagged is False
    assert result.results[0].categories.hate_threatening is False
    recorded = fake_upstream.last("moderations")
    assert recorded.json() == {"input": ["is this fine?"], "model": "omni-moderation-latest"}
    assert_our_upstream_key(recorded)


def test_moderations_async(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    async def moderate() -> bool:
        async with make_async_client(server) as sdk:
            result = await sdk.moderations.create(input="async input")
            return result.results[0].flagged

    assert asyncio.run(moderate()) is False
    assert fake_upstream.last("moderations").json() == {"input": "async input"}


# --- legacy completions ----------------------------------------------------------------------------


def text_completion_chunk(text: str, finish_reason: str | None = None) -> dict[str, object]:
    return {
        "id": "cmpl-streamed",
        "object": "text_completion",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
    }


def test_completions(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    result = client.completions.create(model="fake-model", prompt="Hello", max_tokens=5)

    assert result.object == "text_completion"
    assert result.choices[0].text == " world"
    assert result.usage is not None and result.usage.total_tokens == 2
    recorded = fake_upstream.last("completions")
    assert recorded.json() == {"model": "fake-model", "prompt": "Hello", "max_tokens": 5}
    assert_our_upstream_key(recorded)


# OpenAI streams legacy completions with `"finish_reason": null` on every chunk but the last, which
# the SDK's Completion type (a Literal without None) rejects in strict mode: streamed completions
# are read with a loose client.


def test_completions_streamed(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    pieces = ["Once", " upon", " a", " time"]
    fake_upstream.script(
        "completions",
        Reply.stream([text_completion_chunk(piece) for piece in pieces] + [text_completion_chunk("", "stop")]),
    )
    with loose_client(server) as sdk:
        chunks = list(sdk.completions.create(model="fake-model", prompt="Tell a story", stream=True))

    assert "".join(chunk.choices[0].text for chunk in chunks) == "Once upon a time"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake_upstream.last("completions").json()["stream"] is True


def test_completions_streamed_async(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(
        "completions",
        Reply.stream([text_completion_chunk("a"), text_completion_chunk("b"), text_completion_chunk("", "length")]),
    )

    async def collect() -> list[str]:
        # Loose: see test_completions_streamed.
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=ALICE_KEY, max_retries=0) as sdk:
            stream = await sdk.completions.create(model="fake-model", prompt="x", stream=True)
            return [chunk.choices[0].text async for chunk in stream]

    assert asyncio.run(collect()) == ["a", "b", ""]
    assert fake_upstream.last("completions").json() == {"model": "fake-model", "prompt": "x", "stream": True}


# --- images ----------------------------------------------------------------------------------------


def test_image_generation(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    result = client.images.generate(prompt="a red square", model="gpt-image-1", n=1, size="1024x1024")

    assert result.data is not None and base64.b64decode(result.data[0].b64_json or "") == b"PNG"
    recorded = fake_upstream.last("images/generations")
    assert recorded.json() == {"prompt": "a red square", "model": "gpt-image-1", "n": 1, "size": "1024x1024"}
    assert_our_upstream_key(recorded)


def test_image_edit_multipart(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    mask = PNG_BYTES[::-1]
    result = client.images.edit(
        image=("square.png", PNG_BYTES, "image/png"),
        mask=("mask.png", mask, "image/png"),
        prompt="make it blue",
        n=2,
    )

    assert result.data is not None and len(result.data) == 1
    recorded = fake_upstream.last("images/edits")
    parts = multipart_parts(recorded)
    assert parts["image"] == ("square.png", PNG_BYTES)
    assert parts["mask"] == ("mask.png", mask)
    assert parts["prompt"] == (None, b"make it blue")
    assert parts["n"] == (None, b"2")
    assert_our_upstream_key(recorded)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks variations deprecated
def test_image_variation_multipart_async(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    async def vary() -> int:
        async with make_async_client(server) as sdk:
            result = await sdk.images.create_variation(image=("v.png", PNG_BYTES, "image/png"), n=1)
            return len(result.data or [])

    assert asyncio.run(vary()) == 1
    recorded = fake_upstream.last("images/variations")
    assert multipart_parts(recorded)["image"] == ("v.png", PNG_BYTES)
    assert_our_upstream_key(recorded)


# --- audio -----------------------------------------------------------------------------------------


def test_audio_speech_binary(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    audio = b"ID3\x04\x00" + bytes(range(256)) * 40  # more than one network chunk, binary throughout
    fake_upstream.script("audio/speech", Reply.raw(audio, content_type="audio/mpeg"))
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="Hello there", response_format="mp3"
    ) as response:
        assert response.headers["content-type"] == "audio/mpeg"
        assert response.headers["x-request-id"].startswith("req_")
        received = response.read()

    assert received == audio
    recorded = fake_upstream.last("audio/speech")
    assert recorded.json() == {"model": "tts-1", "voice": "alloy", "input": "Hello there", "response_format": "mp3"}
    assert_our_upstream_key(recorded)


def test_audio_speech_binary_async(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    async def speak() -> bytes:
        async with make_async_client(server) as sdk:
            async with sdk.audio.speech.with_streaming_response.create(
                model="tts-1", voice="nova", input="async speech"
            ) as response:
                return await response.read()

    assert asyncio.run(speak()) == b"ID3fake-mp3-bytes" * 64  # the fake upstream's default answer


SUBTITLES = {
    "text": ("hello from the upstream\n", "text/plain"),
    "srt": ("1\n00:00:00,000 --> 00:00:01,500\nhello from the upstream\n\n", "application/x-subrip"),
    "vtt": ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nhello from the upstream\n\n", "text/vtt"),
}


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations deprecated
@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
@pytest.mark.parametrize("response_format", ["json", "text", "srt", "vtt"])
def test_audio_to_text(client: openai.OpenAI, fake_upstream: FakeUpstream, endpoint: str, response_format: str) -> None:
    if response_format in SUBTITLES:
        body, content_type = SUBTITLES[response_format]
        fake_upstream.script(f"audio/{endpoint}", Reply.raw(body.encode(), content_type=content_type))
    resource = client.audio.transcriptions if endpoint == "transcriptions" else client.audio.translations
    result = resource.create(
        file=("speech.wav", AUDIO_BYTES, "audio/wav"),
        model="whisper-1",
        response_format=response_format,  # type: ignore[arg-type]
        prompt="a greeting",
    )

    if response_format == "json":
        assert result.text == "hello from the fake upstream"  # type: ignore[union-attr]
    else:
        assert result == SUBTITLES[response_format][0]  # the SDK hands text formats back as str
    recorded = fake_upstream.last(f"audio/{endpoint}")
    parts = multipart_parts(recorded)
    assert parts["file"] == ("speech.wav", AUDIO_BYTES)
    assert parts["model"] == (None, b"whisper-1")
    assert parts["response_format"] == (None, response_format.encode())
    assert parts["prompt"] == (None, b"a greeting")
    assert_our_upstream_key(recorded)


def test_audio_transcription_async(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    async def transcribe() -> str:
        async with make_async_client(server) as sdk:
            result = await sdk.audio.transcriptions.create(
                file=("a.wav", AUDIO_BYTES, "audio/wav"), model="whisper-1", response_format="text"
            )
            return result

    assert asyncio.run(transcribe()) == "hello from the fake upstream\n"
    assert multipart_parts(fake_upstream.last("audio/transcriptions"))["file"] == ("a.wav", AUDIO_BYTES)


def test_audio_upstream_error_is_relayed_in_the_envelope(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    # An upstream that answers an error with plain text (not OpenAI's envelope) still reaches the
    # client as the envelope, with the upstream's status.
    fake_upstream.script("audio/transcriptions", Reply.raw(b"unsupported audio codec", status=422))
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.audio.transcriptions.create(file=("a.wav", AUDIO_BYTES, "audio/wav"), model="whisper-1")
    assert caught.value.body == {
        "message": "The model upstream answered 422: unsupported audio codec",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


# --- models ----------------------------------------------------------------------------------------


@pytest.fixture
def fresh_server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """A server whose model list cache is empty, for tests about what that cache does."""
    proc = ServerProcess(database, fake_upstream.base_url, env={"CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}"})
    proc.start()
    yield proc
    proc.stop()


def model_requests(fake_upstream: FakeUpstream) -> list[Recorded]:
    return [recorded for recorded in fake_upstream.requests if recorded.path.startswith("models")]


def test_models_come_from_the_upstream_and_are_cached(fresh_server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    fake_upstream.models = ["fake-model", "org/model", "ft:fake-model:acme:custom:abc123"]
    with make_client(fresh_server) as sdk:
        listed = sdk.models.list()
        assert [model.id for model in listed.data] == fake_upstream.models
        assert all(model.owned_by == "fake" and model.created == 1700000000 for model in listed.data)
        assert len(model_requests(fake_upstream)) == 1
        assert_our_upstream_key(model_requests(fake_upstream)[0])

        # Within the cache's lifetime neither a list nor a retrieve asks the upstream again.
        assert [model.id for model in sdk.models.list().data] == fake_upstream.models
        with_slash = sdk.models.retrieve("org/model")
        fine_tuned = sdk.models.retrieve("ft:fake-model:acme:custom:abc123")
        assert len(model_requests(fake_upstream)) == 1
        assert (with_slash.id, with_slash.object, with_slash.owned_by) == ("org/model", "model", "fake")
        assert fine_tuned.id == "ft:fake-model:acme:custom:abc123"

        # A model pulled into the upstream since then: a retrieve that misses the cached list asks
        # the upstream again rather than answer 404, and the list shows it from then on.
        fake_upstream.models = [*fake_upstream.models, "just-pulled"]
        assert sdk.models.retrieve("just-pulled").id == "just-pulled"
        assert len(model_requests(fake_upstream)) == 2
        assert "just-pulled" in [model.id for model in sdk.models.list().data]
        assert len(model_requests(fake_upstream)) == 2


def test_models_async(server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    async def list_and_retrieve() -> tuple[list[str], str]:
        async with make_async_client(server) as sdk:
            listed = [model.id async for model in sdk.models.list()]
            retrieved = await sdk.models.retrieve("fake-embedder")
            return listed, retrieved.id

    listed, retrieved = asyncio.run(list_and_retrieve())
    assert "fake-model" in listed and "fake-embedder" in listed
    assert retrieved == "fake-embedder"


def test_models_from_an_upstream_that_is_not_openai(fresh_server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(
        "models",
        Reply.error(503, "upstream is loading", type="server_error"),
        # Ollama and llama.cpp answer without `created` or `owned_by`; the strict SDK needs both.
        Reply.json({"object": "list", "data": [{"id": "llama3:8b"}, {"id": "qwen"}]}),
    )
    with make_client(fresh_server) as sdk:
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.models.list()
        listed = sdk.models.list().data

    # The error is relayed as it came, and is not cached.
    assert caught.value.status_code == 503
    assert caught.value.body == {"message": "upstream is loading", "type": "server_error", "param": None, "code": None}
    assert [(model.id, model.object, model.created, model.owned_by) for model in listed] == [
        ("llama3:8b", "model", 0, "upstream"),
        ("qwen", "model", 0, "upstream"),
    ]


def test_unknown_model_is_404(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body == {
        "message": "The model 'no-such-model' does not exist",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


CONFIGURED_MODELS = ["local-llm", "team/embedder", "whisper-1"]


@pytest.fixture(scope="module")
def configured_models_server(database: Database, fake_upstream: FakeUpstream) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        database,
        fake_upstream.base_url,
        env={"CLICKY_CHATS_API_KEYS": f"alice:{ALICE_KEY}", "CLICKY_CHATS_MODELS": " , ".join(CONFIGURED_MODELS)},
    )
    proc.start()
    yield proc
    proc.stop()


def test_configured_models_are_served_without_the_upstream(
    configured_models_server: ServerProcess, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.models = ["something-else"]
    with make_client(configured_models_server) as sdk:
        assert [model.id for model in sdk.models.list().data] == CONFIGURED_MODELS
        retrieved = sdk.models.retrieve("team/embedder")
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve("something-else")

    assert (retrieved.id, retrieved.object) == ("team/embedder", "model")
    assert model_requests(fake_upstream) == []


def test_configured_models_async(configured_models_server: ServerProcess, fake_upstream: FakeUpstream) -> None:
    async def listed() -> list[str]:
        async with make_async_client(configured_models_server) as sdk:
            return [model.id async for model in sdk.models.list()]

    assert asyncio.run(listed()) == CONFIGURED_MODELS
    assert model_requests(fake_upstream) == []


def test_models_need_a_key(server: ServerProcess) -> None:
    response = requests.get(server.url + "/v1/models", timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


# --- an upstream that fails ------------------------------------------------------------------------


def test_upstream_that_drops_the_connection_is_502(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("moderations", Reply.drop())
    with pytest.raises(openai.InternalServerError) as caught:
        client.moderations.create(input="anything")
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"
    # Final: the SDK must not repeat a request the upstream could not take.
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_upstream_that_does_not_answer_is_504(client: openai.OpenAI, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("audio/transcriptions", Reply.hang())
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        client.audio.transcriptions.create(file=("a.wav", AUDIO_BYTES, "audio/wav"), model="whisper-1")
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert time.monotonic() - started < 10  # the harness sets CLICKY_CHATS_MODEL_TIMEOUT_S=3


def test_upstream_refusing_our_key_is_502_not_401(
    client: openai.OpenAI, server: ServerProcess, fake_upstream: FakeUpstream
) -> None:
    # OpenAI's own 401 message quotes part of the key it refused: here, the server's.
    fake_upstream.script(
        "embeddings",
        Reply.error(401, "Incorrect API key provided: sk-upstr******cret.", code="invalid_api_key"),
    )
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model="fake-embedder", input="x", encoding_format="float")
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth_failed"
    assert "CLICKY_CHATS_MODEL_API_KEY" in caught.value.message
    assert "sk-upstr" not in caught.value.message
    # The operator finds the upstream's own words in the log.
    deadline = time.monotonic() + 5
    while "sk-upstr******cret" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "the model upstream refused CLICKY_CHATS_MODEL_API_KEY" in server.log()
