"""Tools: typed Python callables described to a model as google-genai ``FunctionDeclaration``s.

A tool's parameter schema comes from its signature (type hints, pydantic models, defaults); the same
pydantic model validates the arguments a model sends before the tool runs, so a schema and its check
can never disagree. A parameter without a type hint takes any value; a default that is not JSON is left out of the
schema, with one warning naming the tool and parameter.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import math
import re
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo
from pydantic.json_schema import PydanticJsonSchemaWarning
from pydantic_core import to_jsonable_python

from genroute.errors import ConfigError, UsageError, without_secrets

F = typing.TypeVar("F", bound=Callable[..., Any])
_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from google.genai import types


class InvalidToolArgs(ValueError):
    """Arguments a model sent do not match the tool's schema."""


@dataclass(frozen=True)
class Tool:
    """A callable with its name, description, JSON schema and argument validator."""

    name: str
    description: str
    fn: Callable[..., Any]
    schema: dict[str, Any]
    args_model: type[BaseModel]
    #: Declared with ``side_effect_free``: running it twice changes nothing (a shadow may run it).
    side_effect_free: bool = False

    @property
    def is_async(self) -> bool:
        """Whether calling ``fn`` returns an awaitable."""
        fn = self.fn
        return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))

    def declaration(self) -> types.FunctionDeclaration:
        """The google-genai declaration the model sees."""
        from google.genai import types

        return types.FunctionDeclaration(
            name=self.name, description=self.description or None, parameters_json_schema=self.schema
        )

    def validate(self, args: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check ``args`` against the schema; return the keyword arguments to call ``fn`` with."""
        try:
            parsed = self.args_model.model_validate(dict(args or {}))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}" for err in exc.errors()
            )
            raise InvalidToolArgs(problems) from None
        # Attribute access (not model_dump) keeps pydantic-model parameters as model instances.
        return {field: getattr(parsed, field) for field in type(parsed).model_fields}

    async def call(self, kwargs: dict[str, Any], *, timeout_s: float | None,
                   executor: Executor | None = None) -> Any:
        """Run the tool with validated ``kwargs`` within ``timeout_s``; sync tools run on ``executor``.

        ``executor`` should be a pool of the caller's own (the loop's default pool when None): a timed-out
        sync tool keeps its thread, since Python cannot stop a thread, only stop waiting for it, so hung
        tools on a shared pool would starve unrelated work queued behind them.
        """
        timer = asyncio.timeout(timeout_s)
        thread: list[bool] = []  # a sync tool's thread appends when it starts the tool, and again when it returns
        try:
            async with timer:
                if self.is_async:
                    return await self.fn(**kwargs)
                loop = asyncio.get_running_loop()
                # The tool sees the caller's context variables (the current span, for instance).
                call = functools.partial(contextvars.copy_context().run, _run_sync, self.fn, kwargs, thread)
                result = await loop.run_in_executor(executor, call)
                if inspect.isawaitable(result):
                    # A sync wrapper around async code (a lambda, a decorator) hands back the awaitable.
                    result = await result
                return result
        except TimeoutError as exc:
            if timer.expired():  # else the tool raised a TimeoutError of its own: that is its error to report
                # A call still queued for a thread is cancelled with the wait; one a thread started runs on.
                raise ToolTimedOut(f"tool {self.name} did not finish within {timeout_s:.3g} s",
                                   still_running=len(thread) == 1) from exc
            raise


def _run_sync(fn: Callable[..., Any], kwargs: dict[str, Any], thread: list[bool]) -> Any:
    """Call a sync tool, appending to ``thread`` when it starts and when it returns; a ``StopIteration`` it raises
    comes out as ``RuntimeError``, as from a coroutine (PEP 479).

    asyncio cannot set ``StopIteration`` on a future: the call waiting for the thread would never wake, and
    the tool would be reported as timed out (``next(...)`` on an empty iterator is an ordinary mistake).
    """
    thread.append(True)
    try:
        return fn(**kwargs)
    except StopIteration as exc:
        raise RuntimeError("tool raised StopIteration") from exc
    finally:
        thread.append(False)


class ToolTimedOut(TimeoutError):
    """A tool call that ``Tool.call``'s own time limit ended (not a ``TimeoutError`` the tool raised);
    ``still_running``: a sync tool whose thread was still running it then (Python cannot stop a thread)."""

    def __init__(self, message: str, *, still_running: bool = False) -> None:
        self.still_running = still_running
        super().__init__(message)


#: What a function declaration's name may be (Gemini's rule): a letter or underscore, then up to 63 more.
_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,63}")
TOOL_NAME_RULE = "a letter or _, then up to 63 letters, digits, _ . : or -"


def is_tool_name(name: Any) -> bool:
    """Whether ``name`` is one a model accepts for a function (Gemini's rule)."""
    return isinstance(name, str) and _TOOL_NAME.fullmatch(name) is not None


def tool_from_callable(fn: Callable[..., Any], *, name: str | None = None, field: str = "tools") -> Tool:
    """Describe ``fn`` as a ``Tool``; ``ConfigError`` naming ``field`` if its signature cannot be described."""
    inner = _inner(fn)
    name = name if name is not None else getattr(inner, "__name__", None) or type(inner).__name__
    if not is_tool_name(name):
        raise ConfigError(f"tool name {name!r} is not one a model accepts: {TOOL_NAME_RULE}", field=field)
    try:
        signature = inspect.signature(fn)
        target = inner if inspect.isroutine(inner) or inspect.isclass(inner) else type(inner).__call__
        hints = typing.get_type_hints(target, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigError(f"cannot read the signature of tool {name!r}: {exc}", field=field) from None
    fields: dict[str, Any] = {}
    bound = _bound_keywords(fn)
    for param in signature.parameters.values():
        if param.name in bound:  # fixed by the caller's functools.partial: not the model's to choose
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigError(f"tool {name!r}: *args/**kwargs cannot be described to a model", field=field)
        if param.kind is param.POSITIONAL_ONLY:
            raise ConfigError(f"tool {name!r}: positional-only parameter {param.name!r}", field=field)
        if param.name.startswith("_") or param.name.startswith("model_"):
            # pydantic keeps neither as a field: the model would be told of no such argument, and refused it.
            raise ConfigError(f"tool {name!r}: parameter {param.name!r} cannot be described to a model (a name "
                              "starting with _ or model_): rename it", field=field)
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    try:
        with warnings.catch_warnings():
            # A parameter named like a BaseModel method (schema, json, copy, validate) works as a field; pydantic's
            # warning would name a model the user never wrote.
            warnings.filterwarnings("ignore", "Field name .* shadows an attribute", UserWarning)
            model = create_model(
                f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields
            )
            # A default that is not JSON (an object, a set of such) is left out of the schema: said below, once,
            # naming the parameter, not by pydantic's warning (its text names neither the tool nor the parameter).
            warnings.filterwarnings("ignore", category=PydanticJsonSchemaWarning)
            schema = model.model_json_schema()
        _unsent_defaults(name, fields, schema)
        schema = _finite_only(inline_refs(schema))
    except Exception as exc:  # pydantic raises several kinds for unsupported annotations
        # pydantic's first paragraph says what failed; the rest is advice on its own models and a documentation link
        reason = str(exc).strip().split("\n\n")[0].replace("\n", " ")
        raise ConfigError(f"tool {name!r}: cannot build a JSON schema: {reason}", field=field) from None
    schema.pop("title", None)
    description = inspect.cleandoc(_own_doc(inner) or "").split("\n\n")[0].strip()
    marked = (getattr(f, SIDE_EFFECT_FREE, False) for f in (fn, inner, getattr(inner, "__call__", None)))
    return Tool(name=name, description=description, fn=fn, schema=schema, args_model=model,
                side_effect_free=any(marked))


def _unsent_defaults(name: str, fields: Mapping[str, tuple[Any, Any]], schema: Mapping[str, Any]) -> None:
    """Warn, once for the tool, of the parameters whose default pydantic left out of ``schema`` (it is not JSON):
    the model is not told of that default, and may leave the parameter out (the tool then gets its default)."""
    sent = schema.get("properties", {})
    unsent = [param for param, (_, default) in fields.items()
              if default is not ... and not isinstance(default, FieldInfo)
              and "default" not in sent.get(param, {"default": None})]
    if unsent:
        _log.warning("tool %r: the default of %s is not JSON, so the model is not told of it (the parameter is "
                     "optional, and the tool gets its default when the model leaves it out); bind such a parameter "
                     "with functools.partial to keep it from the model", name,
                     ", ".join(f"parameter {param!r} ({type(fields[param][1]).__name__})" for param in unsent))


def _bound_keywords(fn: Callable[..., Any]) -> set[str]:
    """The keywords ``functools.partial`` layers around ``fn`` bind (the model is neither told of them nor may set
    them: the tool's argument model forbids what it does not declare)."""
    bound: set[str] = set()
    while isinstance(fn, functools.partial):
        bound.update(fn.keywords)
        fn = fn.func
    return bound


def _inner(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What a ``functools.partial`` calls (its type hints and docstring describe the tool, not functools')."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _own_doc(fn: Callable[..., Any]) -> str | None:
    """``fn``'s docstring; a class's or callable object's own (else its ``__call__``'s), never one inherited from
    a base class (a pydantic model without a docstring would be described as pydantic's ``BaseModel``)."""
    if inspect.isroutine(fn):
        return inspect.getdoc(fn)
    cls = fn if inspect.isclass(fn) else type(fn)
    own = vars(cls).get("__doc__")
    if own is None and not inspect.isclass(fn):
        return inspect.getdoc(cls.__call__)
    return own if isinstance(own, str) else None


#: The attribute ``side_effect_free`` sets on a tool callable.
SIDE_EFFECT_FREE = "__genroute_side_effect_free__"


def side_effect_free(fn: F) -> F:
    """Declare a tool side-effect-free (it only reads): a function-calling backend whose tools all are may be
    shadowed, since running it a second time repeats nothing in the world."""
    if not callable(fn):  # a number or None was an AttributeError
        raise UsageError(f"decorates a tool function, not {type(fn).__name__}", field="tool")
    try:
        setattr(fn, SIDE_EFFECT_FREE, True)
    except (AttributeError, TypeError):  # a builtin (len) or a __slots__ callable takes no attribute
        raise UsageError(f"{getattr(fn, '__name__', type(fn).__name__)!r} cannot be marked: declare the tool with "
                         "a def that calls it, and mark that", field="tool") from None
    return fn


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its local ``$ref``s replaced by what they point at (not every consumer resolves refs): pydantic's
    ``#/$defs/...``, draft-07's ``#/definitions/...`` (hand-written and older tool schemas), any JSON pointer into it.

    The root's ``$defs`` and ``definitions`` go with them. A discriminator's ``mapping`` (pydantic writes one for a
    discriminated union) names ``$defs`` entries too: it is dropped, since each inlined ``oneOf`` branch holds its
    tag as a ``const``. A recursive ref cannot be inlined, nor one into another document or to nothing:
    ``ValueError`` naming it.
    """

    def target(ref: str) -> Any:
        node: Any = schema
        for part in ref[2:].split("/") if ref.startswith("#/") else [None]:
            key = None if part is None else unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(node, list) and key is not None and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, dict) and key in node:
                node = node[key]
            else:
                raise ValueError(f"$ref {ref!r} does not point into this schema: only local refs (#/$defs/..., "
                                 f"#/definitions/...) can be inlined")
        if not isinstance(node, dict):
            raise ValueError(f"$ref {ref!r} points at {type(node).__name__} {node!r}, not at a schema")
        return node

    def resolve(node: Any, seen: tuple[str, ...], root: bool = False) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                if ref in seen or ref == "#":
                    raise ValueError(f"recursive model {ref.rsplit('/', 1)[-1]!r} is not supported in tool "
                                     f"parameters ($ref {ref!r})")
                merged = {**target(ref), **{k: v for k, v in node.items() if k != "$ref"}}
                return resolve(merged, (*seen, ref))
            return {k: resolve(_without_mapping(v) if k == "discriminator" else v, seen)
                    for k, v in node.items() if k != "$defs" and not (root and k == "definitions")}
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        return node

    return resolve(schema, (), root=True)


def _without_mapping(discriminator: Any) -> Any:
    """An OpenAPI discriminator object without its ``mapping`` of ``$ref``s; anything else (a property that
    happens to be named ``discriminator``, whose value is a schema) as it is."""
    mapping = discriminator.get("mapping") if isinstance(discriminator, dict) else None
    if isinstance(mapping, dict) and all(isinstance(ref, str) for ref in mapping.values()):
        return {k: v for k, v in discriminator.items() if k != "mapping"}
    return discriminator


def _finite_only(schema: Any) -> Any:
    """``schema`` without the keys whose value is a float JSON cannot hold (``limit: float = math.inf`` gives a
    ``"default": Infinity``, which a strict parser, such as Gemini's, refuses with the whole request); without its
    default the parameter is still optional, and without an infinite bound it is unbounded, as meant."""
    if isinstance(schema, dict):
        return {key: _finite_only(value) for key, value in schema.items()
                if not (isinstance(value, float) and not math.isfinite(value))}
    if isinstance(schema, list):
        return [_finite_only(item) for item in schema]
    return schema


def jsonable(value: Any) -> Any:
    """``value`` as JSON-compatible data (pydantic models, dataclasses, dates...), a part of it that is none of
    these as its ``str``, or when it cannot be converted at all (a cycle), its ``str`` whole; floats that JSON cannot
    hold (NaN, infinities) as their names (``"NaN"``, ``"Infinity"``), as a strict parser would refuse the whole
    request otherwise, and lone surrogates (text decoded with ``surrogateescape``) as U+FFFD, which no UTF-8
    encoder (a provider's, an OTLP exporter's) takes. Never raises."""
    try:
        # Plain containers cleaned first: pydantic refuses a lone surrogate, and the whole value would be its str.
        return _sendable(to_jsonable_python(_sendable(value), fallback=readable))
    except Exception:  # a tool may return anything (a cycle, nesting deeper than Python recurses): readable is enough
        return readable(value)


def failure_text(exc: BaseException) -> str:
    """What a model is told of a tool's exception: its type and message (even one whose ``str`` raises), with text
    shaped like a credential (an API key, a token, a URL's user and password) masked. The text also goes into the
    result's ``tool_calls``, the error of a failed loop and, with content capture, the spans: an exception of an
    HTTP or database client often quotes the URL it was given, credentials and all."""
    return without_secrets(f"{type(exc).__name__}: {readable(exc)}")


def readable(value: Any) -> str:
    """``str(value)`` as UTF-8-encodable text, or a placeholder naming its type when ``str`` raises (or recurses
    without end)."""
    try:
        return _valid_text(str(value))
    except Exception:  # noqa: BLE001 - a tool's value or exception may be anything
        return f"<{type(value).__name__} that cannot be shown>"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_text(text: str) -> str:
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _sendable(data: Any) -> Any:
    if isinstance(data, str):
        return _valid_text(data)
    if isinstance(data, bytes):  # pydantic writes bytes as UTF-8 text and refuses others, failing the whole value
        return data if data.isascii() or _utf8(data) else readable(data)
    if isinstance(data, float):
        return data if math.isfinite(data) else ("NaN" if data != data else "Infinity" if data > 0 else "-Infinity")
    if isinstance(data, dict):
        return {_valid_text(key) if isinstance(key, str) else key: _sendable(item) for key, item in data.items()}
    if isinstance(data, list | tuple):
        return [_sendable(item) for item in data]
    return data


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
