"""Tuning data in Cloud Storage, where Vertex AI reads it: JSONL rows uploaded with the Storage JSON API (media
upload) under the application-default credentials (``genroute.jsonl.write_jsonl`` writes them to a local file)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from genroute.errors import BackendRejected, BackendUnavailable, ConfigError
from genroute.jsonl import jsonl_bytes

#: Storage API root; ``STORAGE_EMULATOR_HOST`` (the google-cloud-storage convention) overrides it.
_STORAGE_ROOT = "https://storage.googleapis.com"
_CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


async def upload_jsonl(uri: str, rows: Sequence[dict[str, Any]], *, credentials: Any) -> str:
    """Upload rows to ``gs://bucket/object`` with the Cloud Storage JSON API (media upload)."""
    import httpx

    bucket, _, obj = uri.removeprefix("gs://").partition("/")
    root = os.environ.get("STORAGE_EMULATOR_HOST") or _STORAGE_ROOT
    root = root if "://" in root else f"http://{root}"
    from genroute.engines.errors import map_error

    headers = {"Content-Type": "application/jsonl"}
    try:
        await asyncio.to_thread(_authorize, credentials, headers)
    except Exception as exc:  # a token refresh that failed: no network, a revoked or expired refresh token
        raise map_error(exc)
    try:
        async with httpx.AsyncClient(timeout=120) as http:
            response = await http.post(f"{root.rstrip('/')}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
                                       params={"uploadType": "media", "name": obj}, content=jsonl_bytes(rows),
                                       headers=headers)
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"upload to {uri} failed: {type(exc).__name__}: {exc}") from None
    code = response.status_code
    if code >= 400:
        kind = BackendUnavailable if code in (408, 429) or code >= 500 else BackendRejected
        raise kind(f"upload to {uri} failed: HTTP {code} {response.text[:300]}", status=code)
    return uri


def _authorize(credentials: Any, headers: dict[str, str]) -> None:
    """Put a bearer token in ``headers``, refreshing ``credentials`` if needed (blocking)."""
    if not credentials.valid:
        import google.auth.transport.requests

        credentials.refresh(google.auth.transport.requests.Request())
    credentials.apply(headers)


def default_credentials() -> Any:
    """The application-default Google Cloud credentials (``ConfigError`` naming ``credentials`` when none are set
    up)."""
    import google.auth

    from genroute.engines.errors import cut_credentials_chain

    try:
        credentials, _ = google.auth.default(scopes=[_CLOUD_SCOPE])
    except Exception as exc:  # DefaultCredentialsError and transport errors alike mean "not set up"
        cut_credentials_chain(exc)  # ``from None`` still keeps it as the context
        raise ConfigError(f"no Google Cloud credentials for the upload: {exc}", field="credentials") from None
    return credentials
