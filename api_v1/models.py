from __future__ import annotations

from django.db import models

from clicky_chats.models import ProjectObject


class StoredChatCompletion(ProjectObject):
    """A chat completion made with `store: true`: the request as sent and the answer as received
    (assembled from its chunks when streamed)."""

    model = models.CharField(max_length=256)
    metadata = models.JSONField(default=dict)
    request = models.JSONField()
    completion = models.JSONField()

    class Meta:
        indexes = [models.Index(fields=["project", "created_ns"]), models.Index(fields=["project", "model"])]

    def __str__(self) -> str:
        return self.id
