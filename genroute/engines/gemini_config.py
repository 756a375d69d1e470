"""Config of a ``gemini`` engine: Developer API or Vertex AI, checked before anything is sent."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from genroute.bounds import check_headers
from genroute.engines.retry import RetryConfig
from genroute.errors import without_secrets
from genroute.public_model import ConfigModel


class VertexConfig(ConfigModel):
    """Vertex AI location; ``None`` fields fall back to ``GOOGLE_CLOUD_PROJECT``/``GOOGLE_CLOUD_LOCATION``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project: str | None = None
    location: str | None = None


#: The most texts the Developer API's ``batchEmbedContents`` takes in one request.
_DEVELOPER_EMBED_BATCH = 100


class GeminiEngineConfig(ConfigModel):
    """Config of a ``gemini`` engine (Developer API unless ``vertex`` is set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["gemini"] = "gemini"
    # Before the key: the key's check reads it.
    vertex: VertexConfig | None = None
    api_key_env: str = Field(default="GEMINI_API_KEY", description="Env var holding the key; GOOGLE_API_KEY is the fallback.")
    # min_length: the SDK raises a bare ValueError for an empty key, on the first request.
    api_key: SecretStr | None = Field(default=None, min_length=1,
                                      description="Inline key (discouraged: prefer api_key_env).")
    base_url: str | None = Field(default=None, description="Overrides GOOGLE_GEMINI_BASE_URL / GOOGLE_VERTEX_BASE_URL.")
    api_version: str | None = None
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="HTTP headers sent with every request (a gateway's or proxy's own, e.g. its auth); their "
                    "values are masked and scrubbed from errors like the key. The engine's own X-Server-Timeout "
                    "wins.")
    timeout_s: float = Field(default=60.0, gt=0, allow_inf_nan=False, description="Per-attempt timeout (seconds).")
    retry: RetryConfig = RetryConfig()
    embed_batch_size: int = Field(default=100, ge=1, le=250, description="Texts per embedding request (at most "
                                  "100 on the Developer API, 250 on Vertex AI).")
    trust_env: bool | None = Field(
        default=None,
        description="Whether async requests read proxy settings and netrc from the environment on every request "
                    "(true), never (false), or only where some are set when an event loop makes its first call "
                    "(null). Developer API only: Vertex AI always uses the SDK's own session.")

    @field_validator("embed_batch_size")
    @classmethod
    def _batch_fits(cls, value: int, info: ValidationInfo) -> int:
        # The Developer API answers a batchEmbedContents of more than 100 texts with 400 INVALID_ARGUMENT: every
        # ingest would fail at its first batch.
        if value > _DEVELOPER_EMBED_BATCH and info.data.get("vertex") is None:
            raise ValueError(f"the Gemini Developer API embeds at most {_DEVELOPER_EMBED_BATCH} texts a request "
                             "(Vertex AI: 250)")
        return value

    @field_validator("api_key")
    @classmethod
    def _not_for_vertex(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # The Vertex client authenticates with Application Default Credentials: a key here was ignored, silently.
        if value is not None and info.data.get("vertex") is not None:
            raise ValueError("Vertex AI does not take an API key here: it uses Application Default Credentials "
                             "(gcloud auth application-default login, a service account), or credentials passed "
                             "in engine_options")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _a_name(cls, value: str) -> str:
        # The key pasted here instead of the variable's name would be printed by the "no API key: set ..." error.
        if without_secrets(value) != value:
            raise ValueError("holds what looks like an API key, not the name of an environment variable: "
                             "put the key in that variable (or in api_key)")
        if not value.strip():  # else "no API key: set  (or GOOGLE_API_KEY)", naming no variable
            raise ValueError("must name an environment variable (default GEMINI_API_KEY)")
        return value

    @field_validator("headers")
    @classmethod
    def _header_lines(cls, value: dict[str, SecretStr], info: ValidationInfo) -> dict[str, SecretStr]:
        check_headers({name: secret.get_secret_value() for name, secret in value.items()})
        # Sent over the engine's own key (in any case of its name): the key it says it sends would not be the one.
        if key := next((name for name in value if name.lower() == "x-goog-api-key"), None):
            raise ValueError(f"{key!r}: the engine sends its API key in that header: give the key as api_key_env "
                             "(or api_key), not in headers")
        # Vertex AI: google-genai sets Authorization to its credentials' token on every request, so this one was
        # replaced unsent, in whatever case it was spelt.
        if info.data.get("vertex") is not None and (
                auth := next((name for name in value if name.lower() == "authorization"), None)):
            raise ValueError(f"{auth!r}: with vertex, the engine sends the OAuth token of its Google Cloud credentials "
                             "in that header (Application Default Credentials, or credentials passed in "
                             "engine_options): give the credentials there, not a header")
        return value

    def header_values(self) -> dict[str, str]:
        """``headers`` as sent."""
        return {name: value.get_secret_value() for name, value in self.headers.items()}

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # Caught here, before anything is sent: the HTTP client would refuse it on every request, as a retryable
        # transport error after the retries' waits.
        problem = None if value is None else url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def url_problem(url: str) -> str | None:
    """What keeps ``url`` from being an endpoint override (``base_url``, ``GOOGLE_GEMINI_BASE_URL``), if anything."""
    parts = urlsplit(url)
    ok = parts.scheme in ("http", "https") and parts.hostname
    return None if ok else "must be an http:// or https:// URL with a host"
