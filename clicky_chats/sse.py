"""Server-sent events: an incremental reader for upstream streams, a cutter that relays them whole
event by whole event, and the frame writer for ours."""

from __future__ import annotations

import re
from collections.abc import Iterator

import orjson

# The blank line that ends an event: two line endings (CRLF, LF, or a CR not followed by LF). A CR
# at the very end of the data waits for the next byte, which may be its LF.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?=[^\n])|\n){2}")
# Longer than this without a blank line, it is not an event stream we can cut; hand it on as it is.
MAX_PARTIAL_EVENT = 1 << 20


class SSEReader:
    """Feed it bytes as they arrive; it yields each complete event's (event, data)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> Iterator[tuple[str | None, bytes]]:
        self._buffer += chunk
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                return
            line = self._buffer[:newline].rstrip(b"\r")
            self._buffer = self._buffer[newline + 1 :]
            if not line:
                if self._data:
                    yield self._event, b"\n".join(self._data)
                self._event, self._data = None, []
            elif line.startswith(b":"):
                continue  # a comment, e.g. a keep-alive
            else:
                name, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if name == b"data":
                    self._data.append(value)
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")


class EventCutter:
    """Cuts a byte stream into whole events, each with the blank line that ends it, byte for byte.
    A relay that hands on only whole events never leaves a client holding half of one, so an error
    frame written after an upstream breaks off is read as a frame of its own."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events this chunk completes, in order; a partial one waits for the rest."""
        if self._partial:
            # Only the tail of what was kept can be the start of a blank line split across chunks.
            scan_from = max(0, len(self._partial) - 3)
            buffer = self._partial + chunk
        else:
            scan_from, buffer = 0, chunk
        events: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(buffer, scan_from):
            events.append(buffer[start : match.end()])
            start = match.end()
        self._partial = buffer[start:]
        if len(self._partial) > MAX_PARTIAL_EVENT:
            events.append(self.rest())
        return events

    def rest(self) -> bytes:
        """What is left of an unfinished event, at the end of the stream."""
        rest, self._partial = self._partial, b""
        return rest


def frame(data: object, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"
