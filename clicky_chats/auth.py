"""Bearer-key authentication: every request is resolved to the project its key belongs to.

Keys come from CLICKY_CHATS_API_KEYS (held in memory as digests) and from `createapikey` (held in the
database as prefix + HMAC-SHA256 digest, peppered with the server secret). Digests are compared
with `hmac.compare_digest`. With no key configured anywhere, the API is open as project `default`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time

from django.conf import settings

log = logging.getLogger("clicky_chats.auth")

KEY_PREFIX = "sk-cc-"
PREFIX_LENGTH = len(KEY_PREFIX) + 8
OPEN_PROJECT = "default"
# How long a key found in the database is trusted without asking again. A deleted key stops
# working within this many seconds; the proxy path stays free of a query per request.
CACHE_SECONDS = 10.0


def key_digest(key: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), key.encode(), hashlib.sha256).hexdigest()


def key_prefix(key: str) -> str:
    return key[:PREFIX_LENGTH]


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """Answers "which project does this key belong to?" for one process."""

    def __init__(self) -> None:
        self._env = [(key_digest(key), project) for key, project in settings.CONFIG.api_keys.items()]
        self._lock = threading.Lock()
        self._found: dict[str, tuple[str, float]] = {}
        self._db_has_keys: tuple[bool, float] = (False, 0.0)

    def env_project(self, digest: str) -> str | None:
        match = None
        for known, project in self._env:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(known, digest):
                match = project
        return match

    def cached(self, digest: str) -> str | None:
        hit = self._found.get(digest)
        if hit and hit[1] > time.monotonic():
            return hit[0]
        return None

    def open_mode_known(self) -> bool | None:
        """True/False when we know whether the API is open; None when the database must be asked."""
        if self._env:
            return False
        has_keys, until = self._db_has_keys
        if until > time.monotonic():
            return not has_keys
        return None

    def lookup_db(self, key: str, digest: str) -> str | None:
        """Blocking: finds a database key. Call from a thread under ASGI."""
        from clicky_chats.models import ApiKey

        match = None
        for row in ApiKey.objects.filter(prefix=key_prefix(key)).only("digest", "project"):
            if hmac.compare_digest(row.digest, digest):
                match = row.project
        if match is not None:
            with self._lock:
                self._found[digest] = (match, time.monotonic() + CACHE_SECONDS)
        return match

    def refresh_open_mode(self) -> bool:
        """Blocking: asks the database whether any key exists. Returns True when the API is open."""
        from clicky_chats.models import ApiKey

        has_keys = ApiKey.objects.exists()
        self._db_has_keys = (has_keys, time.monotonic() + CACHE_SECONDS)
        return not has_keys and not self._env


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def resolve_fast(ring: KeyRing, token: str | None) -> str | None:
    """The project for this token from memory alone, or None when the database must be asked."""
    if token:
        digest = key_digest(token)
        project = ring.env_project(digest) or ring.cached(digest)
        if project:
            return project
    if ring.open_mode_known() is True:
        return OPEN_PROJECT
    return None


def resolve_slow(ring: KeyRing, token: str | None) -> str | None:
    """Blocking: the project for this token, asking the database; None means unauthorized."""
    open_mode = ring.open_mode_known()
    if open_mode is None:
        open_mode = ring.refresh_open_mode()
    if open_mode:
        return OPEN_PROJECT
    if not token:
        return None
    return ring.lookup_db(token, key_digest(token))
