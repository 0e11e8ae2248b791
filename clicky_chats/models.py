from __future__ import annotations

from django.db import models


class ApiKey(models.Model):
    """A bearer key made by `manage.py createapikey`. Only a prefix and an HMAC digest are kept."""

    project = models.CharField(max_length=64, db_index=True)
    prefix = models.CharField(max_length=16, db_index=True)
    digest = models.CharField(max_length=64)
    name = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.project})"


class ProjectObject(models.Model):
    """Base of every stored API object: a public string id, its project, and a total order.

    `created_ns` orders lists; ties (two processes in one nanosecond) are broken by id, so cursor
    pagination stays exact even when many objects share one second.
    """

    id = models.CharField(primary_key=True, max_length=64)
    project = models.CharField(max_length=64)
    created_at = models.BigIntegerField()
    created_ns = models.BigIntegerField()

    class Meta:
        abstract = True


class IdempotencyKey(models.Model):
    """A POST's `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): claimed by inserting
    this row, so the unique constraint decides which of two racing requests runs; the answer is
    kept for the repeats. See clicky_chats/idempotency.py."""

    IN_FLIGHT = "in_flight"
    DONE = "done"
    STATES = [(IN_FLIGHT, "in flight"), (DONE, "done")]

    project = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=512)
    # SHA-256 of the query string and the body: the same key with another payload is refused.
    fingerprint = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=STATES, default=IN_FLIGHT)
    created_at = models.DateTimeField(db_index=True)
    response_status = models.PositiveSmallIntegerField(null=True)
    response_content_type = models.CharField(max_length=255, blank=True, default="")
    response_headers = models.JSONField(default=dict)
    response_body = models.BinaryField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "key", "method", "path"], name="idempotency_key_once_per_scope")
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.key!r} ({self.project}, {self.state})"
