"""Cloud tuning jobs: shared JSONL examples -> Vertex AI supervised tuning -> a tuned backend in the config.

The flow (``tune_vertex``): check the config target and the data (nothing is sent if either is wrong),
split train/validation, convert to the Vertex supervised-tuning rows, upload them to Cloud Storage
(Vertex reads tuning datasets only from there), start the job with ``client.tunings.tune``, poll
``client.tunings.get`` with a progress display until a terminal state, and on success write a
``kind: tuned`` backend into the config file atomically.

The Gemini Developer API is refused: google-genai's request for it carries no examples (see
``_require_vertex``).
"""

from __future__ import annotations

import asyncio
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field

from genroute.errors import BackendError, BackendRejected, BackendUnavailable, ConfigError, UsageError
from genroute.public_model import ConfigModel
from genroute.tuning.config_file import (NAME_PATTERN, check_target, register_tuned_backend,
                                         require_same_base)
from genroute.tuning.data import DEFAULT_MAX_CHARS, Example, load_examples, split
from genroute.tuning.storage import default_credentials, upload_jsonl

if TYPE_CHECKING:
    from google import genai
    from google.genai import types
    from rich.console import Console

    from genroute.engines.gemini import GeminiEngine

#: How long one call to the tuning API may take (the engine's client sets no HTTP timeout of its own).
_CALL_TIMEOUT_S = 120.0

AdapterSize = Literal["ADAPTER_SIZE_ONE", "ADAPTER_SIZE_TWO", "ADAPTER_SIZE_FOUR", "ADAPTER_SIZE_EIGHT",
                      "ADAPTER_SIZE_SIXTEEN", "ADAPTER_SIZE_THIRTY_TWO"]


class VertexTuningSettings(ConfigModel):
    """What to tune and how: base model, backend name, data checks, split and hyperparameters."""

    # Finite floats only: an infinite learning_rate_multiplier would be sent to Vertex as it is.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    base_model: str = Field(min_length=1, description="Model to tune, e.g. gemini-2.5-flash.")
    name: str = Field(pattern=NAME_PATTERN, description="Backend (and tuned model) name.")
    engine: str | None = Field(default=None, description="Vertex AI engine in the config (default: the only one).")
    staging_uri: str | None = Field(default=None, pattern=r"^gs://[^/]+(/.*)?$",
                                    description="gs://bucket/prefix where Vertex datasets are uploaded.")
    system: str | None = Field(default=None, description="System line used in training and by the backend.")
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int = 0
    min_examples: int = Field(default=10, ge=1)
    max_chars: int = Field(default=DEFAULT_MAX_CHARS, gt=0)
    epochs: int | None = Field(default=None, gt=0)
    learning_rate_multiplier: float | None = Field(default=None, gt=0)
    adapter_size: AdapterSize | None = Field(default=None, description="LoRA adapter size (Vertex AI).")
    poll_interval_s: float = Field(default=30.0, gt=0)
    timeout_s: float | None = Field(default=None, gt=0, description="Stop waiting (the job keeps running).")
    replace: bool = Field(default=False, description="Overwrite an existing backend of the same name.")
    progress: bool = Field(default=True,
                           description="Draw the waiting spinner (each state change is logged either way).")
    tasks: tuple[str, ...] = Field(default=(), description="Tasks the backend is for (a ladder routes them to it).")
    tuning_usd_per_1m_tokens: float | None = Field(
        default=None, ge=0, description="USD per 1M training tokens that graduation prices the job at (default: the "
                                        "pricing table's unverified list price for the base model).")


@dataclass(frozen=True)
class PreparedData:
    """Checked examples, split, and as Vertex supervised-tuning rows."""

    train: list[Example]
    validation: list[Example]
    train_rows: list[dict[str, Any]]
    validation_rows: list[dict[str, Any]]


@dataclass(frozen=True)
class TuningResult:
    """How a tuning job ended and where its model is served."""

    job: str
    state: str
    backend: str
    model: str | None
    endpoint: str | None
    #: ``None`` when not known: ``resume_vertex`` waits for a job whose data this process never saw.
    train_examples: int | None
    validation_examples: int | None
    config_path: Path | None


def vertex_row(example: Example, system: str | None = None) -> dict[str, Any]:
    """One Vertex supervised-tuning row: a user turn with the input, a model turn with the output."""
    row: dict[str, Any] = {
        "contents": [
            {"role": "user", "parts": [{"text": example.input}]},
            {"role": "model", "parts": [{"text": example.output}]},
        ]
    }
    if system:
        row["systemInstruction"] = {"role": "system", "parts": [{"text": system}]}
    return row


def prepare_data(path: str | Path, settings: VertexTuningSettings) -> PreparedData:
    """Load and check the JSONL (``UsageError`` naming the line), split it and convert it."""
    examples = load_examples(path, min_examples=settings.min_examples, max_chars=settings.max_chars)
    from genroute.knowledge.examples import input_key

    # Copies of one input on one side: a validation example repeating a training one measures memory.
    train, validation = split(examples, settings.validation_fraction, settings.seed, key=lambda e: input_key(e.input))
    return PreparedData(
        train=train, validation=validation,
        train_rows=[vertex_row(e, settings.system) for e in train],
        validation_rows=[vertex_row(e, settings.system) for e in validation],
    )


async def start_job(client: genai.Client, settings: VertexTuningSettings, *, training_uri: str,
                    validation_uri: str | None = None) -> types.TuningJob:
    """Create a Vertex AI supervised tuning job on datasets already in Cloud Storage."""
    from google.genai import types

    from genroute.engines.errors import map_error

    _require_vertex(client)
    config: dict[str, Any] = {
        "tuned_model_display_name": settings.name,
        "epoch_count": settings.epochs,
        "learning_rate_multiplier": settings.learning_rate_multiplier,
        "adapter_size": settings.adapter_size,
    }
    if validation_uri is not None:
        config["validation_dataset"] = types.TuningValidationDataset(gcs_uri=validation_uri)
    job_config = types.CreateTuningJobConfig(**{k: v for k, v in config.items() if v is not None})
    try:
        with warnings.catch_warnings():
            # The SDK flags tuning as experimental on every call; say it once in the docs, not per job.
            warnings.filterwarnings("ignore", message=".*tuning implementation is experimental")
            async with asyncio.timeout(_CALL_TIMEOUT_S):
                return await client.aio.tunings.tune(base_model=settings.base_model,
                                                     training_dataset=types.TuningDataset(gcs_uri=training_uri),
                                                     config=job_config)
    except Exception as exc:
        raise map_error(exc, backend=settings.name)


async def wait_for_job(client: genai.Client, name: str, *, poll_interval_s: float = 30.0,
                       timeout_s: float | None = None, console: Console | None = None,
                       max_poll_failures: int = 5, progress: bool = True) -> types.TuningJob:
    """Poll a tuning job until it ends, showing its state (on stderr unless ``console`` says otherwise: stdout is
    the caller's, e.g. ``genroute graduate``'s report); transient poll failures are tolerated."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from genroute.engines.errors import map_error

    start = time.monotonic()
    failures = 0
    last_state: str | None = None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console or Console(stderr=True), transient=False, disable=not progress) as bar:
        task = bar.add_task(f"tuning job {name}: submitted", total=None)
        while True:
            try:
                async with asyncio.timeout(_CALL_TIMEOUT_S):
                    job = await client.aio.tunings.get(name=name)
                failures = 0
            except Exception as exc:
                error = map_error(exc)
                failures += 1
                if not isinstance(error, BackendUnavailable) or failures >= max_poll_failures:
                    raise error
                job = None
            if job is not None:
                state = _state(job)
                if state != last_state:
                    bar.console.log(f"tuning job {name}: {state}")
                    last_state = state
                bar.update(task, description=f"tuning job {name}: {state}")
                if job.has_ended:
                    return job
            if timeout_s is not None and time.monotonic() - start + poll_interval_s > timeout_s:
                raise BackendUnavailable(
                    f"tuning job {name} still {last_state} after {timeout_s:g} s; it keeps running: "
                    f"wait for it with `genroute tune --resume {name} ...` (or resume_vertex)"
                )
            await asyncio.sleep(poll_interval_s)


def engine_from_config(config_path: str | Path, engine: str | None, *, credentials: Any = None) -> GeminiEngine:
    """The Gemini engine the tuned backend will use, built from the router config."""
    from genroute.engines.gemini import GeminiEngine

    name, engine_config = vertex_engine(config_path, engine)
    return GeminiEngine(name, engine_config, credentials=credentials)


def vertex_engine(config_path: str | Path, engine: str | None) -> tuple[str, Any]:
    """The name and the validated config of the engine to tune with (``engine``, else the config's only Vertex AI
    engine); ``ConfigError`` naming ``engine`` otherwise. Builds nothing: callers check it before writing anything."""
    from genroute.config import load_config, validate_kind
    from genroute.engines.gemini import GeminiEngine

    config = load_config(config_path)
    if engine is None:  # the only Vertex AI engine: a Developer API one beside it cannot tune
        vertex = [n for n, e in config.engines.items() if e.get("kind") == "gemini" and e.get("vertex") is not None]
        if not vertex:
            raise ConfigError("cloud tuning needs a Vertex AI engine (`vertex:` in its config) and there is none; "
                              "for the Gemini Developer API use its own console, or tune locally", field="engine")
        if len(vertex) > 1:
            raise ConfigError(f"name the Vertex AI engine to tune with (found: {', '.join(vertex)})", field="engine")
        engine = vertex[0]
    raw = config.engines.get(engine)
    if raw is None:
        raise ConfigError(f"no engine {engine!r} in {config_path}", field="engine")
    cls, engine_config = validate_kind("engines", raw, field=f"engines.{engine}")
    if cls is not GeminiEngine:
        raise ConfigError(f"engine {engine!r} is {raw.get('kind')!r}; cloud tuning needs a gemini engine",
                          field="engine")
    return engine, engine_config


async def tune_vertex(data: str | Path, settings: VertexTuningSettings, *, config_path: str | Path | None = None,
                      engine: GeminiEngine | None = None, credentials: Any = None,
                      console: Console | None = None, register: bool = True) -> TuningResult:
    """Run a whole cloud tuning job and register the tuned model as a backend in ``config_path``.

    ``register=False`` checks ``config_path`` as for registering and writes nothing: the caller writes the entry
    (``genroute graduate`` writes it with its challenger policy, in one write)."""
    engine, owned = _engine(settings, config_path, engine, credentials)
    try:
        if settings.staging_uri is None:
            raise UsageError("Vertex AI reads tuning data from Cloud Storage: set staging_uri (gs://bucket/prefix)",
                             field="staging_uri")
        prepared = prepare_data(data, settings)
        creds = credentials if credentials is not None else await asyncio.to_thread(default_credentials)
        stem = f"{settings.staging_uri.rstrip('/')}/{settings.name}-{int(time.time())}"
        training_uri = await upload_jsonl(f"{stem}-train.jsonl", prepared.train_rows, credentials=creds)
        validation_uri = None
        if prepared.validation_rows:
            validation_uri = await upload_jsonl(f"{stem}-validation.jsonl", prepared.validation_rows,
                                                credentials=creds)
        job = await start_job(engine.client, settings, training_uri=training_uri, validation_uri=validation_uri)
        if job.name is None:
            raise BackendRejected("the tuning service returned a job without a name", backend=settings.name)
        return await _finish(engine, job.name, settings, config_path, console,
                             counts=(len(prepared.train), len(prepared.validation)), register=register)
    finally:
        if owned:
            await engine.aclose()


async def resume_vertex(job: str, settings: VertexTuningSettings, *, config_path: str | Path | None = None,
                        engine: GeminiEngine | None = None, credentials: Any = None,
                        console: Console | None = None) -> TuningResult:
    """Wait for a job started earlier (e.g. after ``timeout_s``) and register its model like ``tune_vertex``."""
    engine, owned = _engine(settings, config_path, engine, credentials)
    try:
        return await _finish(engine, job, settings, config_path, console, counts=(None, None))
    finally:
        if owned:
            await engine.aclose()


def run_vertex_tuning(data: str | Path | None, settings: VertexTuningSettings, *,
                      config_path: str | Path | None = None, resume: str | None = None, credentials: Any = None,
                      console: Console | None = None) -> TuningResult:
    """Sync ``tune_vertex`` (or ``resume_vertex`` when ``resume`` names a job) for the CLI."""
    from genroute.runtime.portal import refuse_inside_loop, run_sync

    refuse_inside_loop("run_vertex_tuning", instead="await tune_vertex()")
    if resume is not None:
        return run_sync(resume_vertex(resume, settings, config_path=config_path, credentials=credentials,
                                      console=console), "run_vertex_tuning", instead="await resume_vertex()")
    if data is None:
        raise UsageError("a JSONL data file is required", field="data")
    return run_sync(tune_vertex(data, settings, config_path=config_path, credentials=credentials, console=console),
                    "run_vertex_tuning", instead="await tune_vertex()")


def _engine(settings: VertexTuningSettings, config_path: str | Path | None, engine: GeminiEngine | None,
            credentials: Any) -> tuple[GeminiEngine, bool]:
    """The engine to tune with (and whether we built it); checks made before anything is sent."""
    if config_path is not None:
        check_target(config_path, settings.name, replace=settings.replace,
                     served_by=None if engine is None else engine.name)
        _require_base_price(config_path, settings.base_model)
    owned = engine is None
    if engine is None:
        if config_path is None:
            raise UsageError("pass config_path or engine", field="config_path")
        engine = engine_from_config(config_path, settings.engine, credentials=credentials)
    _require_vertex(engine.client)
    return engine, owned


async def _finish(engine: GeminiEngine, name: str, settings: VertexTuningSettings,
                  config_path: str | Path | None, console: Console | None, *,
                  counts: tuple[int | None, int | None], register: bool = True) -> TuningResult:
    """Wait for the job; on success register its endpoint (or model) as a tuned backend."""
    job = await wait_for_job(engine.client, name, poll_interval_s=settings.poll_interval_s,
                             timeout_s=settings.timeout_s, console=console, progress=settings.progress)
    state = _state(job)
    if not job.has_succeeded:
        detail = job.error.message if job.error is not None and job.error.message else "no error detail"
        raise BackendRejected(f"tuning job {name} ended in {state}: {detail}", backend=settings.name)
    require_same_base(job.base_model, settings.base_model, config_path=config_path, job=name)
    tuned = job.tuned_model
    model = tuned.model if tuned is not None else None
    endpoint = tuned.endpoint if tuned is not None else None
    serve = endpoint or model
    if serve is None:
        raise BackendError(f"tuning job {name} succeeded but named no model or endpoint", backend=settings.name)
    if config_path is not None and register:
        register_tuned_backend(
            config_path, settings.name, engine=engine.name, model=serve, base_model=settings.base_model,
            system=settings.system, tuning_job=name, replace=settings.replace, tasks=settings.tasks,
        )
    return TuningResult(
        job=name, state=state, backend=settings.name, model=model, endpoint=endpoint,
        train_examples=counts[0], validation_examples=counts[1],
        config_path=Path(config_path) if config_path is not None and register else None,
    )


def _require_base_price(config_path: str | Path, base_model: str) -> None:
    """Refuse, before anything is sent, a base model the config cannot price: the tuned backend (billed at its
    base model's rates) would make the whole config fail to build."""
    from genroute.config import load_config
    from genroute.runtime.pricing import Pricing

    if Pricing(load_config(config_path).pricing).lookup(base_model) is None:
        raise UsageError(f"no price known for model {base_model!r}, so the tuned backend could not be priced; "
                         "add it under `pricing` in the config (USD per 1M tokens)", field="base_model")


def _require_vertex(client: genai.Client) -> None:
    if not client.vertexai:
        # google-genai's Developer API tuning path drops inline examples from the request (seen with
        # 3.6.1: only baseModel, displayName and hyperparameters are sent), so a job would get no data.
        raise UsageError("cloud tuning needs a Vertex AI engine (`vertex:` in the engine config); "
                         "for the Gemini Developer API use its own console, or tune locally", field="engine")


def _state(job: types.TuningJob) -> str:
    state = job.state
    return str(getattr(state, "value", state) or "JOB_STATE_UNSPECIFIED")
