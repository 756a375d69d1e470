"""The tuned-model backend: a supervised-fine-tuned model that gets the bare input as its prompt.

The model is a Vertex AI tuned endpoint (``projects/P/locations/L/endpoints/E``), a tuned model resource,
or, on the local engine, a model name whose engine carries a LoRA adapter or a tuned model's GGUF as its
``model_path`` (an engine with neither is a ``ConfigError``: it would serve the bundled base model). SFT taught the
model the task,
so no instructions or examples are sent: the short prompt is the saving that tuning buys.

Calls are priced at ``base_model``'s rates unless ``pricing`` names the tuned model itself (by its full
resource name, e.g. ``projects/P/locations/L/endpoints/E`` or ``tunedModels/x``).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from genroute.backends.base import BackendConfig, Prepared, SingleCallBackend
from genroute.errors import ConfigError

if TYPE_CHECKING:
    from genroute.runtime.resources import Resources
    from genroute.runtime.context import RunContext
    from genroute.runtime.pricing import Pricing
    from genroute.types import GenerateRequest


class TunedConfig(BackendConfig):
    """A tuned model; ``base_model`` is what it is priced as (tuned calls bill at base rates)."""

    kind: Literal["tuned"] = "tuned"
    base_model: str = Field(min_length=1, description="The model the tuned one was trained from (pricing).")
    tuning_job: str | None = Field(default=None, description="The tuning job that produced the model.")


class TunedBackend(SingleCallBackend):
    """Sends the bare input (and an optional minimal system line) to a tuned model."""

    kind = "tuned"
    Config = TunedConfig
    capabilities = frozenset({"tuned"})
    config: TunedConfig

    def __init__(self, name: str, config: TunedConfig, resources: Resources) -> None:
        super().__init__(name, config, resources)
        engine = resources.engines.get(config.engine)
        if (engine is not None and not engine.lora_path and "lora_path" in type(engine.config).model_fields
                and not getattr(engine.config, "model_path", None)):
            # A local engine with neither an adapter nor a model file of its own serves the bundled base model: the
            # "tuned" answers and their bench scores would be the base model's. (A model_path may be a tuned model
            # merged into one GGUF, as other tools write them; genroute's own local tuning writes adapters.)
            raise ConfigError(f"a tuned backend on a local engine needs its LoRA adapter (or a tuned model's GGUF in "
                              f"model_path): without either, engine {config.engine!r} serves the untuned base model",
                              field=f"engines.{config.engine}.lora_path")
        # A local LoRA adapter learned the Gemma chat template around one user turn; any other
        # rendering of the prompt silently degrades it.
        if engine is not None and engine.lora_path and getattr(engine.config, "prompt_format", None) != "gemma":
            raise ConfigError(
                "a LoRA adapter was trained on the Gemma chat template: set prompt_format: gemma",
                field=f"engines.{config.engine}.prompt_format",
            )

        if engine is not None:
            _check_resource(config.model, engine.provider, field=f"backends.{name}.model")
            vertex = getattr(engine.config, "vertex", None)
            if engine.provider == "gcp.vertex_ai" and vertex is not None:
                _check_vertex_name(config.model, _host_location(getattr(engine, "base_url", None),
                                                                vertex.location),
                                   field=f"backends.{name}.model", engine=config.engine)

    def facts(self) -> dict[str, Any]:
        return {"model": self.config.model, "base_model": self.config.base_model}

    def billed_as(self, pricing: Pricing) -> tuple[str, str]:
        """The model calls are priced as, and its config field: the tuned model if ``pricing`` names it,
        else the base model."""
        model, key = pricing.tuned_billed_as(self.config.model, self.config.base_model)
        return model, f"backends.{self.name}.{key}"

    async def prepare(self, request: GenerateRequest, ctx: RunContext) -> Prepared:
        # One user turn holding the input verbatim: the same shape the model was trained on
        # (Vertex SFT rows and the local LoRA chat template both use a single user turn).
        return Prepared(
            model=self.config.model,
            contents=request.input,
            config=self.config.generation.to_genai(system=self.config.system),
            price_as=self.billed_as(ctx.pricing)[0],
        )


def _check_resource(model: str, provider: str, *, field: str) -> None:
    """``ConfigError`` naming ``field`` if ``model`` is a resource name of the other Gemini API than ``provider``'s:
    the SDK would put it under a path of its own API (``/v1/models/projects/...``, ``.../publishers/tunedModels/
    models/x``) and every request would be refused."""
    if provider == "gcp.gemini" and model.startswith("projects/"):
        raise ConfigError(f"{model!r} is a Vertex AI resource: serve it on an engine with `vertex:` (a Gemini "
                          "Developer API tuned model is named tunedModels/NAME)", field=field)
    if provider == "gcp.vertex_ai" and model.startswith(("tunedModels/", "endpoints/")):
        raise ConfigError(f"{model!r} is not a Vertex AI resource name: a tuned model there is "
                          "projects/P/locations/L/endpoints/E (tunedModels/NAME is the Gemini Developer API's)",
                          field=field)


#: The Vertex AI resource names a tuned model is served under: an endpoint, a model (``@version`` optional) or a
#: publisher's model, each under its project and location.
_VERTEX_NAME = re.compile(r"projects/[^/\s]+/locations/(?P<location>[^/\s]+)/"
                          r"(?:endpoints/[^/\s]+|models/[^/\s]+|publishers/[^/\s]+/models/[^/\s]+)")
#: Locations whose Vertex AI host serves other locations' resources (``aiplatform.googleapis.com``, and the
#: multi-region ``aiplatform.<us|eu>.rep.googleapis.com``); any other is a regional host that serves its own only.
_NOT_REGIONAL = frozenset({"global", "us", "eu"})


def _host_location(base_url: str | None, location: str | None) -> str | None:
    """The one location whose resources the engine's Vertex AI host serves, or None if it serves any: google-genai's
    regional host ``{location}-aiplatform.googleapis.com`` (``vertex.location``, else ``GOOGLE_CLOUD_LOCATION``,
    else ``global``); a ``base_url`` naming such a host, its location; any other ``base_url`` (a gateway) is taken
    to route by the path."""
    if base_url is not None:
        host = urlsplit(base_url).hostname or ""
        match = re.fullmatch(r"([a-z0-9-]+)-aiplatform\.googleapis\.com", host)
        return match[1] if match else None
    where = location or os.environ.get("GOOGLE_CLOUD_LOCATION") or "global"
    return None if where in _NOT_REGIONAL else where


def _check_vertex_name(model: str, location: str | None, *, field: str, engine: str) -> None:
    """``ConfigError`` naming ``field`` for a Vertex AI tuned model name every request would be refused for: the
    SDK sends any name that does not start with ``projects/`` as a Google model (``publishers/google/models/
    <name>``), a malformed ``projects/...`` path as it is, and a regional host refuses another location's
    resource ("The provided location ID doesn't match the endpoint")."""
    form = "projects/P/locations/L/endpoints/E"
    if model.isdigit():
        raise ConfigError(f"{model!r} is an endpoint ID alone, which would be sent as a Google model name: write "
                          f"the endpoint's resource name, {form.removesuffix('E')}{model}", field=field)
    if model != model.strip() or "://" in model or re.search(r"\s", model):
        raise ConfigError(f"{model!r} is not a model name: write the tuned endpoint as {form} (no URL, no spaces)",
                          field=field)
    if not model.startswith("projects/"):
        return  # a Google model name (gemini-2.5-flash, publishers/google/models/...)
    match = _VERTEX_NAME.fullmatch(model)
    if match is None and "/tuningJobs/" in model:
        raise ConfigError(f"{model!r} is a tuning job, not a model: serve the endpoint it made ({form}, its "
                          "tunedModel.endpoint)", field=field)
    if match is None:
        raise ConfigError(f"{model!r} is not a Vertex AI model resource: write the tuned endpoint as {form} (or a "
                          "model as projects/P/locations/L/models/M)", field=field)
    if location is not None and match["location"] != location:
        raise ConfigError(f"{model!r} is in location {match['location']!r}, but engine {engine!r} calls Vertex AI "
                          f"in {location!r}, whose host refuses another location's resources: serve it from an engine "
                          f"in {match['location']!r} (vertex.location, or its base_url's host)", field=field)
