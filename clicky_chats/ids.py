"""Object ids: OpenAI's prefixes and a random base62 suffix."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now_seconds() -> int:
    return int(time.time())


def now_ns() -> int:
    """The ordering key of a new object: lists sort by (created_ns, id), so objects made in the same
    second keep their order and cursors stay exact."""
    return time.time_ns()
