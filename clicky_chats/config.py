"""Strict configuration from the environment.

Every setting of ours is read here, once, at start-up. A bad value stops start-up with a message
that names the variable, so an operator never runs with a silently ignored typo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import dj_database_url


class ConfigError(Exception):
    """A configuration variable has a value we cannot use."""


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {number}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, not {number}")
    return number


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if number <= minimum:
        raise ConfigError(f"{name} must be greater than {minimum}, not {number}")
    return number


def env_url(name: str, default: str) -> str:
    value = env_str(name, default).strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL, not {value!r}")
    return value


def parse_api_keys(raw: str) -> dict[str, str]:
    """`[project:]key,...` -> {key: project}. A bare key belongs to the project `default`."""
    keys: dict[str, str] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        project, sep, key = entry.rpartition(":")
        if not sep:
            project = "default"
        project, key = project.strip(), key.strip()
        if not key or not project:
            raise ConfigError(f"CLICKY_CHATS_API_KEYS has an empty project or key in {entry!r}")
        if keys.get(key, project) != project:
            raise ConfigError(f"CLICKY_CHATS_API_KEYS gives one key to two projects, {keys[key]!r} and {project!r}")
        keys[key] = project
    return keys


def parse_dsn(raw: str) -> dict[str, object]:
    """CLICKY_CHATS_DSN -> a Django DATABASES entry (SQLite or PostgreSQL only)."""
    if raw.startswith("postgresql://"):
        raw = "postgres://" + raw.removeprefix("postgresql://")
    if not raw.startswith(("sqlite://", "postgres://")):
        raise ConfigError(
            f"CLICKY_CHATS_DSN must start with sqlite:// or postgres://, not {raw.split('://')[0]!r}://..."
        )
    try:
        db = dict(dj_database_url.parse(raw))
    except Exception as exc:  # the library raises several kinds for a malformed URL
        raise ConfigError(f"CLICKY_CHATS_DSN cannot be parsed: {exc}") from None
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock at BEGIN so two
        # writers queue on the busy timeout instead of failing with "database is locked" mid-way.
        db["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": ("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;"),
        }
    else:
        db["ENGINE"] = "django.db.backends.postgresql"
        db.setdefault("OPTIONS", {})
        db["CONN_MAX_AGE"] = 60
        db["CONN_HEALTH_CHECKS"] = True
    return db


def parse_search_backend(raw: str, dsn: str) -> str:
    """numpy (any database) or pgvector (PostgreSQL with the `vector` extension)."""
    backend = raw.strip().lower()
    if backend not in ("numpy", "pgvector"):
        raise ConfigError(f"CLICKY_CHATS_SEARCH_BACKEND must be numpy or pgvector, not {raw!r}")
    if backend == "pgvector" and not dsn.startswith(("postgres://", "postgresql://")):
        raise ConfigError("CLICKY_CHATS_SEARCH_BACKEND=pgvector needs a PostgreSQL CLICKY_CHATS_DSN")
    return backend


def parse_assistants_version(raw: str) -> str:
    """The Assistants API version of /v1 requests that send no `OpenAI-Beta: assistants=...` header:
    v2, or v1 for the Rubra UI, whose own (unauthenticated) calls send none."""
    version = raw.strip().lower()
    if version not in ("v1", "v2"):
        raise ConfigError(f"CLICKY_CHATS_DEFAULT_ASSISTANTS_VERSION must be v1 or v2, not {raw!r}")
    return version


@dataclass(frozen=True)
class Config:
    dsn: str
    database: dict[str, object]
    server_host: str
    server_port: int
    model_base_url: str
    model_api_key: str
    model_timeout_s: float
    models: tuple[str, ...]
    api_keys: dict[str, str] = field(repr=False)
    data_dir: Path
    max_request_bytes: int
    debug: bool
    with_agents: bool
    secret_key: str = field(repr=False)
    run_expiry_s: int
    max_file_bytes: int
    embedding_model: str
    knowledge_retrieval_api_url: str
    search_backend: str
    search_cache_mb: int
    default_assistants_version: str
    idempotency_ttl_s: int


def load_secret_key(data_dir: Path) -> str:
    """CLICKY_CHATS_SECRET_KEY, else a random key kept in the data dir so restarts keep it.

    The key signs admin sessions and peppers the API-key digests: losing it invalidates every
    key made with `createapikey`, so it lives beside the data, not in memory only.
    """
    explicit = os.environ.get("CLICKY_CHATS_SECRET_KEY", "")
    if explicit:
        return explicit
    path = data_dir / "secret_key"
    try:
        if path.exists():
            return path.read_text().strip()
        import secrets

        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key
    except FileExistsError:  # another process wrote it first
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"CLICKY_CHATS_DATA_DIR {data_dir} is not writable: {exc}") from None


def writable_data_dir(raw: str) -> Path:
    """The data dir, made if missing. Checked at start-up, not at the first upload that needs it."""
    data_dir = Path(raw).resolve()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"CLICKY_CHATS_DATA_DIR {data_dir} cannot be made: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"CLICKY_CHATS_DATA_DIR {data_dir} is not writable")
    return data_dir


def load() -> Config:
    # The tool settings are read where tools run (agents/tools/sandbox.py knows them); reading
    # them here as well stops start-up on a bad one.
    from agents.tools.sandbox import check_settings

    check_settings()
    dsn = env_str("CLICKY_CHATS_DSN", "sqlite:///clicky-chats.db")
    data_dir = writable_data_dir(env_str("CLICKY_CHATS_DATA_DIR", "./data"))
    models = tuple(m.strip() for m in env_str("CLICKY_CHATS_MODELS", "").split(",") if m.strip())
    return Config(
        dsn=dsn,
        database=parse_dsn(dsn),
        server_host=env_str("CLICKY_CHATS_SERVER_HOST", "127.0.0.1"),
        server_port=env_int("CLICKY_CHATS_SERVER_PORT", 8080, minimum=1, maximum=65535),
        model_base_url=env_url("CLICKY_CHATS_MODEL_BASE_URL", "https://api.openai.com/v1"),
        model_api_key=env_str("CLICKY_CHATS_MODEL_API_KEY", os.environ.get("OPENAI_API_KEY", "")),
        model_timeout_s=env_float("CLICKY_CHATS_MODEL_TIMEOUT_S", 600.0),
        models=models,
        api_keys=parse_api_keys(env_str("CLICKY_CHATS_API_KEYS", "")),
        data_dir=data_dir,
        max_request_bytes=env_int("CLICKY_CHATS_MAX_REQUEST_BYTES", 32 * 1024 * 1024, minimum=1024),
        debug=env_bool("CLICKY_CHATS_DEBUG", False),
        with_agents=env_bool("CLICKY_CHATS_WITH_AGENTS", False),
        secret_key=load_secret_key(data_dir),
        run_expiry_s=env_int("CLICKY_CHATS_RUN_EXPIRY_S", 600, minimum=1),
        max_file_bytes=env_int("CLICKY_CHATS_MAX_FILE_BYTES", 512 * 1024 * 1024, minimum=1),
        embedding_model=env_str("CLICKY_CHATS_EMBEDDING_MODEL", "text-embedding-3-small"),
        # Optional; the Go clicky-chats also took a gptscript tool reference here, which we do not run.
        knowledge_retrieval_api_url=(
            env_url("CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL", "")
            if env_str("CLICKY_CHATS_KNOWLEDGE_RETRIEVAL_API_URL", "")
            else ""
        ),
        search_backend=parse_search_backend(env_str("CLICKY_CHATS_SEARCH_BACKEND", "numpy"), dsn),
        search_cache_mb=env_int("CLICKY_CHATS_SEARCH_CACHE_MB", 1024, minimum=0),
        default_assistants_version=parse_assistants_version(env_str("CLICKY_CHATS_DEFAULT_ASSISTANTS_VERSION", "v2")),
        # How long a POST's Idempotency-Key and its stored answer are kept (clicky_chats/idempotency.py).
        idempotency_ttl_s=env_int("CLICKY_CHATS_IDEMPOTENCY_TTL_S", 24 * 60 * 60, minimum=1),
    )
