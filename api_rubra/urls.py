"""/v1/rubra serves every /v1 endpoint; views read `request.api_tier` to add extension fields."""

from __future__ import annotations

from api_v1.urls import urlpatterns as v1_patterns

urlpatterns = [*v1_patterns]
