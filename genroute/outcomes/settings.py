"""The ``outcomes`` config section: where outcomes go, how shadows are scored, and what (if anything) is captured."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from genroute.bounds import NOT_BOOL, PathText
from genroute.errors import ConfigError, UsageError, without_secrets
from genroute.public_model import ConfigModel

#: Scrub hook: gets ``{"input": str, "output": str, "task": str | None}``, returns it cleaned, or ``None`` to drop it.
ScrubHook = Callable[[dict[str, Any]], "dict[str, Any] | None"]


#: The shortest ``refresh_every_s``: a refresh reads the outcome store, so a millisecond period kept a third of a
#: core busy while the router was idle.
MIN_REFRESH_S = 0.1


class OutcomeSettings(ConfigModel):
    """Outcome recording, shadow scoring, opt-in capture of labeled examples, and policy refresh."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: PathText | None = Field(default=None, description=(
        "SQLite file. Default: $GENROUTE_OUTCOMES_PATH, else (in a config file) <file stem>-outcomes.db beside "
        "the file; a config given as a dict must name one. With the shared state store: optional, an archive of "
        "every write this process reads (the full history; refresh and graduation read it)."))
    synchronous: Literal["normal", "full"] = Field(
        default="normal",
        description="The SQLite file's commits (WAL mode): normal, synced at checkpoints, a commit survives the "
                    "process crashing; full, each commit synced, it also survives the machine losing power.")
    store: Literal["auto", "sqlite", "state"] = Field(
        default="auto", description="auto: the shared state store when the router's `state` is shared (Redis), "
                                    "else the SQLite file; sqlite or state to choose.")
    shared_max_items: Annotated[int | None, NOT_BOOL] = Field(
        default=100_000, ge=1,
        description="In the shared state store: writes its list keeps (a shadow's pair and a "
        "feedback are one write each); each append trims the oldest beyond this on the server. None: no cap.")
    shared_max_age_s: Annotated[float | None, NOT_BOOL] = Field(
        default=None, gt=0, allow_inf_nan=False,
        description="In the shared state store: also trim writes older than this many seconds.")
    scorer: str = Field(
        default="normalized_exact",
        description="How a shadow's answer is scored against the served one (and both against a feedback label): "
                    "a bench scorer name, module:function, judge:BACKEND, or validator:NAME (scores each side alone).")
    pass_score: Annotated[float, NOT_BOOL] = Field(default=0.5, ge=0.0, le=1.0,
                                                   description="Feedback score that accepts an answer.")
    capture: bool = Field(default=False, description="Keep input + accepted output as a labeled example (opt-in).")
    scrub: str | None = Field(default=None, description="module:callable scrub hook applied before anything is kept.")
    refresh_every_s: Annotated[float | None, NOT_BOOL] = Field(
        default=None, ge=MIN_REFRESH_S, allow_inf_nan=False,
        description=f"Refresh policies from outcomes this often (at least {MIN_REFRESH_S} s).")
    min_n: Annotated[int, NOT_BOOL] = Field(default=20, ge=1,
                                            description="Outcome stats replace benchmark stats from this many records.")
    max_pending: Annotated[int, NOT_BOOL] = Field(default=10_000, ge=1,
                                                  description="Recent requests kept in memory for feedback.")


REDACTED = "[REDACTED]"


def redact_secrets(text: str, extra: tuple[str, ...] = ()) -> str:
    """``text`` with anything that looks like a credential (API keys, tokens, private keys, URL user and password:
    ``genroute.errors.without_secrets``) and every string in ``extra`` replaced."""
    if not isinstance(text, str):  # a number or None was a TypeError from the regular expressions
        raise UsageError(f"must be text, not {type(text).__name__}", field="text")
    given: object = extra  # a caller's: its annotation is a promise
    secrets = None if isinstance(given, str) or not isinstance(given, Iterable) else list(given)
    if secrets is None or not all(isinstance(s, str) for s in secrets):
        # Its value is never shown: it holds (or is) a secret.
        raise UsageError(f"must be a tuple of secret strings, not {type(given).__name__}", field="extra")
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return without_secrets(text, REDACTED)


def sqlite_path(settings: OutcomeSettings) -> str:
    """The outcome store's SQLite file: ``outcomes.path``, else ``$GENROUTE_OUTCOMES_PATH``; ``ConfigError`` naming
    ``outcomes.path`` when neither says (no default shared by every application on the machine)."""
    from genroute.config import OUTCOMES_PATH_ENV

    path = settings.path or os.environ.get(OUTCOMES_PATH_ENV)
    if not path:
        raise ConfigError(f"say where outcomes are kept: set `path` (a SQLite file) or {OUTCOMES_PATH_ENV}; a config "
                          "file has the default <file stem>-outcomes.db beside it", field="outcomes.path")
    return path


def resolve_scrub(settings: OutcomeSettings, scrub: ScrubHook | None) -> ScrubHook | None:
    """The scrub hook: the one passed in code, else the one the config names."""
    if scrub is not None:
        return scrub
    if settings.scrub is None:
        return None
    from genroute.config import import_object

    hook = import_object(settings.scrub, field="outcomes.scrub")
    if not callable(hook):
        raise ConfigError(f"{settings.scrub!r} is not callable", field="outcomes.scrub")
    return hook


def settings_from(raw: OutcomeSettings | Mapping[str, Any] | None) -> OutcomeSettings | None:
    """Validated settings (``ConfigError`` naming ``outcomes.<field>``)."""
    from genroute.config_errors import validated_model

    return None if raw is None else validated_model(OutcomeSettings, raw, "outcomes")
