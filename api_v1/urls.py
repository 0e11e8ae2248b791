"""/v1 routes. The same patterns serve /v1/rubra, where views add the extension fields."""

from __future__ import annotations

from django.urls import path

from api_rubrax.urls import FLAT_ALIASES
from api_v1 import proxy_views as proxy
from api_v1 import run_views
from api_v1 import vector_store_views as stores
from api_v1.assistant_views import AssistantViewSet, MessageViewSet, ThreadViewSet
from api_v1.file_views import FileViewSet, UploadPartViewSet, UploadViewSet

# OpenAI modifies with POST on the object's own path, not PUT or PATCH.
COLLECTION = {"get": "list", "post": "create"}
ITEM = {"get": "retrieve", "post": "update", "delete": "destroy"}

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
    # Assistants API
    path("assistants", AssistantViewSet.as_view(COLLECTION)),
    path("assistants/<str:pk>", AssistantViewSet.as_view(ITEM)),
    path("threads", ThreadViewSet.as_view({"post": "create"})),
    path("threads/runs", run_views.thread_and_run),
    path("threads/<str:pk>", ThreadViewSet.as_view(ITEM)),
    path("threads/<str:thread_id>/messages", MessageViewSet.as_view(COLLECTION)),
    path("threads/<str:thread_id>/messages/<str:pk>", MessageViewSet.as_view(ITEM)),
    path("threads/<str:thread_id>/runs", run_views.runs),
    path("threads/<str:thread_id>/runs/<str:run_id>", run_views.run_detail),
    path("threads/<str:thread_id>/runs/<str:run_id>/cancel", run_views.run_cancel),
    path("threads/<str:thread_id>/runs/<str:run_id>/submit_tool_outputs", run_views.run_submit_tool_outputs),
    path("threads/<str:thread_id>/runs/<str:run_id>/steps", run_views.run_steps),
    path("threads/<str:thread_id>/runs/<str:run_id>/steps/<str:step_id>", run_views.run_step_detail),
    # Files and uploads
    path("files", FileViewSet.as_view({"get": "list", "post": "create"})),
    path("files/<str:pk>", FileViewSet.as_view({"get": "retrieve", "delete": "destroy"})),
    path("files/<str:pk>/content", FileViewSet.as_view({"get": "content"})),
    path("uploads", UploadViewSet.as_view({"post": "create"})),
    path("uploads/<str:pk>/parts", UploadPartViewSet.as_view({"post": "create"})),
    path("uploads/<str:pk>/complete", UploadViewSet.as_view({"post": "complete"})),
    path("uploads/<str:pk>/cancel", UploadViewSet.as_view({"post": "cancel"})),
    # Vector stores
    path("vector_stores", stores.stores),
    path("vector_stores/<str:vector_store_id>", stores.store_detail),
    path("vector_stores/<str:vector_store_id>/search", stores.store_search),
    path("vector_stores/<str:vector_store_id>/files", stores.store_files),
    path("vector_stores/<str:vector_store_id>/files/<str:file_id>", stores.store_file_detail),
    path("vector_stores/<str:vector_store_id>/files/<str:file_id>/content", stores.store_file_content),
    path("vector_stores/<str:vector_store_id>/file_batches", stores.file_batches),
    path("vector_stores/<str:vector_store_id>/file_batches/<str:batch_id>", stores.file_batch_detail),
    path("vector_stores/<str:vector_store_id>/file_batches/<str:batch_id>/cancel", stores.file_batch_cancel),
    path("vector_stores/<str:vector_store_id>/file_batches/<str:batch_id>/files", stores.file_batch_files),
    # clicky-chats' own APIs under the flat names the later Rubra UI uses.
    *FLAT_ALIASES,
]
