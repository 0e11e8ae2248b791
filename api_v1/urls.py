"""/v1 routes. The same patterns serve /v1/rubra (api_rubra.urls adds its extension routes first)."""

from __future__ import annotations

from django.urls import path

from api_v1 import proxy_views as proxy

urlpatterns = [
    path("chat/completions", proxy.chat_completions),
    path("chat/completions/<str:completion_id>", proxy.chat_completion_detail),
    path("chat/completions/<str:completion_id>/messages", proxy.chat_completion_messages),
    path("completions", proxy.completions),
    path("embeddings", proxy.embeddings),
    path("moderations", proxy.moderations),
    path("images/generations", proxy.image_generations),
    path("images/edits", proxy.image_edits),
    path("images/variations", proxy.image_variations),
    path("audio/speech", proxy.audio_speech),
    path("audio/transcriptions", proxy.audio_transcriptions),
    path("audio/translations", proxy.audio_translations),
    path("models", proxy.models_list),
    path("models/<path:model>", proxy.model_detail),
]
