"""The one Jinja2 sandbox every backend renders prompts with, and its compile/render error handling."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, Undefined, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from genroute.errors import UsageError

#: Sandboxed (no attribute escapes, no mutation of inputs), strict (an undefined name is an error).
ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateCheckFailed(ValueError):
    """A template does not compile or uses names not allowed; ``field`` is the config field holding it.

    Raised inside a config's model validator (which sees every field, and so cannot name one by its
    location): ``genroute.config.config_error`` appends ``field`` to the config's path.
    """

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


#: The longest template accepted, in characters (prompts are far shorter; compile time grows with length).
MAX_TEMPLATE_CHARS = 200_000


def check_template(source: str, *, name: str, allowed: Iterable[str] | None = None) -> None:
    """Raise ``TemplateCheckFailed`` naming field ``name`` if ``source`` is too long, does not compile or uses
    names not allowed."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateCheckFailed(f"{name} is too large: {len(source):,} characters (at most "
                                  f"{MAX_TEMPLATE_CHARS:,})", field=name)
    try:
        names = meta.find_undeclared_variables(ENV.parse(source))
    except TemplateError as exc:
        raise TemplateCheckFailed(f"{name} does not compile: {exc}", field=name) from None
    except RecursionError:  # blocks nested thousands deep overflow Jinja's recursive parser
        raise TemplateCheckFailed(f"{name} does not compile: its blocks are nested too deep", field=name) from None
    if allowed is not None:
        undeclared = names - set(allowed)
        if undeclared:
            raise TemplateCheckFailed(f"{name} uses undeclared variable(s): {', '.join(sorted(undeclared))}",
                                      field=name)


def absent(name: str) -> Undefined:
    """The value of a declared optional variable that has no value: it renders empty, is false, and fails
    ``is defined`` (unlike a Python None, which would render as the text "None")."""
    return Undefined(name=name)


class _Literal:
    """A template without Jinja syntax: renders to its own text (no Jinja work in the hot path)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def render(self, scope: Mapping[str, Any]) -> str:
        return self.text


class _InputOnly:
    """The default ``{{ input }}`` template: the request input as it is."""

    def render(self, scope: Mapping[str, Any]) -> str:
        return str(scope["input"])


def compile_template(source: str) -> Template | _Literal | _InputOnly:
    """A template object from checked ``source`` (plain text and bare ``{{ input }}`` skip Jinja)."""
    if source == "{{ input }}":
        return _InputOnly()
    if "{" not in source:  # Jinja syntax always starts with {{, {% or {#
        return _Literal(source)
    return ENV.from_string(source)


def render(template: Template | _Literal | _InputOnly, scope: Mapping[str, Any], *, backend: str, field: str,
           names: Mapping[str, str] | None = None) -> str:
    """Render ``template``; any failure is a ``UsageError`` naming the variable that caused it, else ``field``.

    Jinja's own errors (a sandbox violation included) and whatever a value raises while it is written out (a
    ``__str__`` that raises, ``RecursionError`` from data nested thousands deep) alike. ``names`` maps scope
    names to the request fields they come from (``tone`` -> ``variables.tone``); others are named as they are.
    """
    try:
        return template.render(scope)
    except TemplateError as exc:
        raise UsageError(f"template of backend {backend!r} failed: {exc}", field=field) from None
    except Exception as exc:
        culprit = _culprit(scope, names or {})
        what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RecursionError) else "it is nested too deep"
        if culprit is None:
            raise UsageError(f"template of backend {backend!r} failed: {what}", field=field) from None
        raise UsageError(f"template of backend {backend!r} cannot write out {culprit}: {what}",
                         field=culprit) from None


def _culprit(scope: Mapping[str, Any], names: Mapping[str, str]) -> str | None:
    """The field of the first scope value that cannot be written out as text, if any."""
    for name, value in scope.items():
        try:
            str(value)
        except Exception:
            return names.get(name, name)
    return None
