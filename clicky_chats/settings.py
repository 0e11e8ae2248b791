"""Django settings. Everything an operator sets comes from the environment via `config.load()`."""

from __future__ import annotations

import sys

from clicky_chats import config as _config

try:
    CONFIG = _config.load()
except _config.ConfigError as _exc:
    # Stop start-up with one clear line naming the variable, not a traceback.
    sys.stderr.write(f"clicky-chats: configuration error: {_exc}\n")
    raise SystemExit(2) from None

SECRET_KEY = CONFIG.secret_key
DEBUG = CONFIG.debug
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "clicky_chats",
    "api_v1",
    "api_rubra",
    "api_rubrax",
    "agents",
]

# The API path carries only async-native middlewares: each sync MiddlewareMixin costs a thread hop
# under ASGI (~0.5 ms each, measured). The admin's session/auth/messages stack is wrapped around
# /admin requests only, inside ApiMiddleware. IdempotencyMiddleware comes after it, since it needs
# request.project; a request without an Idempotency-Key costs it one header lookup.
MIDDLEWARE = [
    "clicky_chats.middleware.ApiMiddleware",
    "clicky_chats.idempotency.IdempotencyMiddleware",
]
# The admin checks look for its middlewares in MIDDLEWARE; ApiMiddleware applies them to /admin.
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410"]

ROOT_URLCONF = "clicky_chats.urls"
ASGI_APPLICATION = "clicky_chats.asgi.application"
WSGI_APPLICATION = "clicky_chats.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": CONFIG.database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Django refuses bodies over this when they are read; the middleware refuses a declared
# Content-Length over it before reading anything.
DATA_UPLOAD_MAX_MEMORY_SIZE = CONFIG.max_request_bytes
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Uploaded files go through Django's storage API, so S3 (django-storages) is a setting, not a rewrite.
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": CONFIG.data_dir / "files"},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

STATIC_URL = "static/"
STATIC_ROOT = CONFIG.data_dir / "static"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # orjson, as the plain views: Python's json lets lone surrogates and huge integers through to a 500.
    "DEFAULT_PARSER_CLASSES": ["clicky_chats.validation.JsonParser"],
    "EXCEPTION_HANDLER": "clicky_chats.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "clicky-chats",
    "DESCRIPTION": "A self-hosted OpenAI-compatible server.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # 3.1, as OpenAI's own spec: its JSON Schema spells "or null" for any schema, not only typed ones.
    "OAS_VERSION": "3.1.0",
    # Swagger UI from our own static files (drf-spectacular-sidecar), not a CDN: /v1/docs works
    # on a machine with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "clicky_chats.schema.describe_api",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "WARNING"},
    },
}
