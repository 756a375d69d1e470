"""The genroute error tree.

GenrouteError
├── UsageError            the caller used the API wrongly (bad request, sync call inside a running loop);
│   │                     ``field`` names the input at fault, ``message`` says what is wrong with it
│   └── ConfigError       a configuration value is invalid; ``field`` is its dotted path (``file`` and
│                         ``line``: where a config file writes it)
├── DeadlineExceeded      the request's deadline (``timeout_s``) passed before an answer: not retried, not
│                         fallen through (a stream cut by it after its first chunk is ``StreamInterrupted``)
├── BudgetExceeded        a budget has no room for the request (or, per rung, for that rung: the next rung
│                         is tried; when every rung was refused the caller gets this error itself)
├── StateUnavailable      the shared state store is unreachable (or answers with an error) and ``state.on_error``
│                         is ``closed``
└── BackendError          a backend or engine failed at run time
    ├── BackendUnavailable    retryable: 408/429/5xx, timeouts, refused/reset connections
    │   ├── RateLimited       a configured rate limit has no room before the deadline (nothing was sent)
    │   └── CircuitOpen       the backend's circuit breaker is open (nothing was sent)
    ├── BackendRejected       final: the provider refused the request (4xx other than 408/429)
    ├── NoRelevantContext     retrieval found nothing above the threshold (a policy may escalate)
    ├── ToolLoopExceeded      the function-calling loop hit max steps or its deadline
    ├── ValidationFailed      a validator rejected a backend's answer
    ├── StreamInterrupted     a stream failed after its first chunk was sent (no fallback possible)
    └── AllRungsFailed        every rung of a decision failed; ``attempts`` lists why

google-genai and transport errors are mapped to this tree in exactly one place:
``genroute.engines.errors.map_error``.

A public pydantic model built with bad input (``GenerateRequest(...)``, ``RouterConfig(...)``, ``model_validate``)
raises ``UsageError`` (``ConfigError`` for a configuration) with pydantic's ``ValidationError`` as ``__cause__``,
in exactly one place too: ``genroute.public_model``. It is not also a ``ValueError``: one tree.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    # The public names, as the docstrings give them: genroute.types' models raise these errors (its base,
    # genroute.public_model, converts pydantic's), so this module names them through the package, not the module.
    from genroute import RungAttempt, ToolCall, Usage

E = TypeVar("E", bound="GenrouteError")

#: The user (and password) part of a URL: ``https://user:secret@host`` -> ``https://***@host``. The user may be
#: empty (``redis://:secret@host``) and the password may hold a ``/``.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)(?:[^/\s@'\":]+|[^/\s@'\":]*:[^\s@'\"]+)@")
#: A URL's ``password`` query option: ``redis://host/0?password=secret`` -> ``...?password=***`` (redis-py reads it
#: as the password, as it reads ``redis://:secret@host``).
_URL_PASSWORD_OPTION = re.compile(r"(?i)([?&]password=)[^&#\s'\"]+")
#: Text shaped like a credential wherever it stands: the one list every redaction (errors, captured outcomes) uses.
_SECRETS = re.compile(
    r"AIza[0-9A-Za-z_\-]{20,}"                      # Google API keys
    r"|\bsk-[A-Za-z0-9_\-]{16,}"                     # common provider keys
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"               # GitHub fine-grained tokens
    r"|\b(?:ya29|gh[oprsu]|xox[abp])[._\-][A-Za-z0-9._\-]{10,}"  # Google OAuth / GitHub / Slack tokens
    r"|(?i:bearer)\s+[A-Za-z0-9._\-+/=]{16,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"                # AWS access key ids
    # AWS secret access keys: 40 base64 characters, after their name or alone with both cases and a digit
    # (so a hex digest, all lower case, is not one).
    r"|(?i:aws_?secret_?access_?key|secret_?access_?key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}"
    r"|(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[a-z])(?=[A-Za-z0-9/+]{0,39}[0-9])"
    r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)


def without_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it (``user:secret@``, a ``password=`` query option)
    replaced by ``***`` (for reprs, dumps and errors)."""
    if "@" in text:
        text = _URL_USERINFO.sub(r"\1***@", text)
    return _URL_PASSWORD_OPTION.sub(r"\1***", text) if "password=" in text.lower() else text


def without_secrets(text: str, mask: str = "***") -> str:
    """``text`` with anything shaped like a credential (API keys, tokens, private keys: ``mask``) and the
    credentials of URLs (``***``) replaced."""
    return without_credentials(_SECRETS.sub(mask, text))


def header_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The secrets a client's configured headers hold (a Chroma server's, a Gemini gateway's), to scrub from
    errors: each value, and the credential of ``Scheme credential``."""
    found: list[str] = []
    for value in headers.values():
        parts = value.split()
        found += [value, parts[-1]] if len(parts) > 1 else [value]
    return tuple(v for v in found if len(v) >= 4)  # a one-letter value would blank out every message


class GenrouteError(Exception):
    """Root of every error genroute raises.

    When the router raises it, ``cost_usd`` is what the failed request cost (every rung tried: calls that
    timed out, were cancelled or cut short cost what the provider bills for them), ``usage`` their tokens
    (a ``genroute.Usage``) and ``cost_estimated`` whether part of that is genroute's estimate;
    ``cloud_equivalent_cost_usd`` what a free (local) model's tokens among them would cost at its reference model's
    prices, as a result's (``None``: no local model was called). ``trace_id`` is the request's trace (32 hex digits,
    as ``GenerateResult.trace_id``; one a sampler left out too), None when it had no trace.
    """

    cost_usd: float = 0.0
    usage: Usage | None = None
    cost_estimated: bool = False
    cloud_equivalent_cost_usd: float | None = None
    trace_id: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take keyword-only arguments (``field``, ``backend``, ``attempts``...) that ``Exception``'s own
        # reduce would not pass back (``AllRungsFailed`` could not be unpickled at all): rebuild the error from its
        # arguments without ``__init__``, then restore every attribute, so it crosses a process boundary whole.
        return _rebuilt, (type(self), self.args), self.__dict__


class UsageError(GenrouteError):
    """The caller used the API wrongly; ``field`` names the offending input when known.

    ``message`` and ``field`` are kept apart (re-raise with ``exc.message`` under another field);
    ``str()`` shows both as ``"field: message"``.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def __repr__(self) -> str:
        field = f", field={self.field!r}" if self.field is not None else ""
        return f"{type(self).__name__}({self.message!r}{field})"


class ConfigError(UsageError):
    """A configuration value is invalid; ``field`` is its dotted path, and for a config file ``file`` and ``line``
    say where the file writes it (or the nearest setting above it), when known."""

    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = f" ({self.file}, line {self.line})" if self.file is not None else ""
        return super().__str__() + where


class BackendError(GenrouteError):
    """A backend or engine failed at run time.

    ``backend``: in an error the router raises, the backend (rung) whose call failed; an engine called directly
    names itself.
    ``tool_calls``: the tool calls a function-calling backend made before it failed (tools with side effects may
    have run), empty otherwise.
    """

    tool_calls: tuple[ToolCall, ...] = ()

    def __init__(self, message: str, *, backend: str | None = None, status: int | None = None) -> None:
        self.backend = backend
        self.status = status
        super().__init__(message)

    def __repr__(self) -> str:
        named = "".join(f", {key}={value!r}" for key, value in (("backend", self.backend), ("status", self.status))
                        if value is not None)
        return f"{type(self).__name__}({str(self)!r}{named})"


class BackendUnavailable(BackendError):
    """Retryable failure: rate limit, server error, timeout or connection failure.

    ``out_of_time`` is set when retries stopped because another attempt could not finish before the
    request's deadline: the router then raises ``DeadlineExceeded`` (the deadline, not the backend, ended it).
    """

    out_of_time: bool = False

    def __init__(self, message: str, *, backend: str | None = None, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, backend=backend, status=status)


class RateLimited(BackendUnavailable):
    """A configured rate limit (requests or tokens per minute) has no room for this request in time."""


class CircuitOpen(BackendUnavailable):
    """The circuit breaker of this backend (or its engine and model) is open: it is not being called."""


class StateUnavailable(GenrouteError):
    """The shared state store cannot be reached, or answers with an error (out of memory, read-only), and
    ``state.on_error`` is ``closed``: nothing was sent. ``kept``: the write refused (a settle or an outcome record of
    what already ran) is kept in this process and sent to the store once it answers."""

    def __init__(self, message: str, *, kept: bool = False) -> None:
        super().__init__(message)
        self.kept = kept


class OutcomeStoreError(GenrouteError):
    """The outcome store's file could not take a write (a full disk, a quota or the file size limit reached, a lock
    held past SQLite's timeout; a read-only file or directory is a ``ConfigError`` naming ``outcomes.path``): nothing
    of the record was written. ``path`` is the file."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class BackendRejected(BackendError):
    """Final failure: the provider refused the request as sent."""


class NoRelevantContext(BackendError):
    """Retrieval found nothing relevant enough to ground an answer."""


class ToolLoopExceeded(BackendError):
    """The function-calling loop reached its step limit or deadline; ``tool_calls`` lists the calls made."""

    def __init__(self, message: str, *, backend: str | None = None, tool_calls: tuple[ToolCall, ...] = ()) -> None:
        self.tool_calls = tuple(tool_calls)
        super().__init__(message, backend=backend)


class ValidationFailed(BackendError):
    """A validator rejected a backend's answer; ``validator`` is the name the rung gave it (``regex:...``,
    ``judge:B``, a ``validators:`` entry), when a rung's check raised it."""

    validator: str | None = None


class StreamInterrupted(BackendError):
    """A stream failed after its first chunk was delivered; it cannot fall back.

    Raised by an engine for the provider's failure, its ``__cause__`` is that failure as genroute maps it (a
    ``BackendUnavailable`` for a 5xx or a broken connection): what a circuit breaker counts."""


class DeadlineExceeded(GenrouteError):
    """The request's deadline passed before it was answered; ``backend`` is the rung that was running, if any."""

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        self.backend = backend
        super().__init__(message)


class BudgetExceeded(GenrouteError):
    """The budget for this key has no room left for the request (refused before anything is spent)."""


class AllRungsFailed(BackendError):
    """Every rung of the decision failed; ``attempts`` holds each rung's outcome."""

    def __init__(self, message: str, *, attempts: list[RungAttempt]) -> None:
        self.attempts = attempts
        super().__init__(message)


#: What a failed request cost, and its trace, as its error carries them (``GenrouteError``'s class attributes name the
#: defaults).
_COST_FIELDS = ("cost_usd", "usage", "cost_estimated", "cloud_equivalent_cost_usd", "trace_id")


def carrying_cost(error: E, source: BaseException | None) -> E:
    """``error`` with what ``source`` (the error it stands for, e.g. a cancellation by ``close``) said the request
    cost, and its trace, if ``source`` says so."""
    found = {} if source is None else vars(source)
    for name in _COST_FIELDS:
        if name in found:
            setattr(error, name, found[name])
    return error


def _rebuilt(cls: type[GenrouteError], args: tuple[Any, ...]) -> GenrouteError:
    """An error of ``cls`` with ``args`` and no attributes yet (unpickling restores them)."""
    return cls.__new__(cls, *args)


def exit_status(error: GenrouteError) -> int:
    """What a ``genroute`` command returns for ``error``: 2 for the caller's mistake (a usage or config error:
    nothing was sent), 1 for a failure at run time (a backend, a deadline, a budget, the state store)."""
    return 2 if isinstance(error, UsageError) else 1


_LINE_BREAKS = re.compile(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*")


def error_line(error: GenrouteError, command: str) -> str:
    """The one line the ``genroute`` command ``command`` (``"genroute bench"``) prints for ``error``, worded as
    argparse words a bad option: ``genroute bench: error: <field>: <message>`` for the caller's mistake,
    ``genroute bench: error: <ErrorType>: <message>`` for a failure at run time, then what the failed work cost when it
    cost anything (there is no result to read it from); anything shaped like a credential is masked."""
    text = str(error) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"
    text = _LINE_BREAKS.sub(" ", text.strip())  # one line, whatever a message quoted (a provider's, a library's)
    if error.cost_usd:
        text += f" (cost ${error.cost_usd:.6f}{', estimated' if error.cost_estimated else ''})"
    return f"{command}: error: {without_secrets(text)}"


def command_error(error: GenrouteError, command: str) -> int:
    """Print ``error_line`` on stderr; return ``exit_status``: what every ``genroute`` command does with an error."""
    print(error_line(error, command), file=sys.stderr)
    return exit_status(error)
