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
