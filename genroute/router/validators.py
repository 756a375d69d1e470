"""Answer validators a rung can require; a failing validator makes the executor try the next rung.

A validator is a callable ``(request, output) -> reason | None`` (``None``: accepted), or one returning an
awaitable of that. A rung names its validators; every name is resolved once, when the router is built:

- ``nonempty``, ``json``, ``has_context``: built in;
- ``regex:<pattern>``: the answer matches the pattern;
- ``json_schema:<path>``: the answer is JSON valid against the schema in that file (JSON or YAML);
- ``judge:<backend>``: the executor asks ``backend`` whether the answer satisfies the request (PASS/FAIL);
  its cost counts in the rung's cost;
- any name from the config's ``validators`` section (an import path, or ``{kind: json_schema, schema: ...}``
  / ``{kind: judge, backend: ...}``) or the router's ``validators=`` argument.
"""

from __future__ import annotations

import inspect
import json
import re
import string
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from genroute.backends.base import BackendOutput, refuse_rerun
from genroute.bounds import NUL_IN_PATH, PathText
from genroute.config_parse import parse_json, parse_yaml
from genroute.errors import ConfigError
from genroute.knowledge.hygiene import defuse, tag_names
from genroute.types import GenerateRequest

#: A validator returns ``None`` when the answer is acceptable, otherwise the reason it is not.
Validator = Callable[[GenerateRequest, BackendOutput], "str | None | Awaitable[str | None]"]
#: Runs a backend on a request as part of validating a rung (the executor accounts it to that rung).
RunBackend = Callable[[str, GenerateRequest], Awaitable[BackendOutput]]
#: A resolved validator, as the executor calls it.
Check = Callable[[GenerateRequest, BackendOutput, RunBackend], Awaitable["str | None"]]


def nonempty(request: GenerateRequest, output: BackendOutput) -> str | None:
    """The answer has some non-whitespace text."""
    return None if output.text.strip() or output.tool_calls else "empty answer"


def is_json(request: GenerateRequest, output: BackendOutput) -> str | None:
    """The answer parses as JSON."""
    try:
        json.loads(output.text)
    except ValueError as exc:
        return f"answer is not JSON: {exc}"
    return None


def has_context(request: GenerateRequest, output: BackendOutput) -> str | None:
    """Retrieval found relevant context for the answer."""
    return "retrieval found nothing relevant" if output.no_context else None


BUILTIN: dict[str, Validator] = {"nonempty": nonempty, "json": is_json, "has_context": has_context}


class JsonSchema:
    """The answer is JSON that validates against a JSON schema."""

    def __init__(self, schema: Mapping[str, Any] | bool, *, field: str) -> None:
        from jsonschema import exceptions, validators

        from genroute.bounds import SCHEMA, TooLarge, check

        try:
            check(schema, field=field, limits=SCHEMA)
        except TooLarge as exc:
            raise ConfigError(str(exc), field=exc.field) from None
        cls = validators.validator_for(schema)
        try:
            cls.check_schema(schema)  # type: ignore[arg-type]  # the stubs say dict: jsonschema takes any schema
        except exceptions.SchemaError as exc:
            raise ConfigError(f"invalid JSON schema: {exc.message}", field=field) from None
        self._validator = cls(schema)
        self._best_match = exceptions.best_match

    @classmethod
    def from_file(cls, path: str, *, field: str) -> JsonSchema:
        """The schema stored at ``path`` (JSON, or YAML for ``.yaml``/``.yml``)."""
        if "\x00" in path:  # open() raised a bare ValueError
            raise ConfigError(f"JSON schema {path!r}: {NUL_IN_PATH}", field=field)
        try:  # utf-8-sig: a byte-order mark is no part of the schema, as in a config file
            text = Path(path).expanduser().read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"JSON schema {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                              field=field) from None
        except OSError as exc:
            raise ConfigError(f"cannot read JSON schema {path!r}: {exc.strerror or exc}", field=field) from None
        try:
            schema = parse_yaml(text) if path.endswith((".yaml", ".yml")) else parse_json(text)
        except Exception as exc:  # JSON's ValueError or YAML's own error tree (and duplicate keys)
            raise ConfigError(f"JSON schema {path!r} does not parse: {exc}", field=field) from None
        if not isinstance(schema, dict | bool):
            raise ConfigError(f"JSON schema {path!r} must hold an object", field=field)
        return cls(schema, field=field)

    def __call__(self, request: GenerateRequest, output: BackendOutput) -> str | None:
        try:
            value = json.loads(output.text)
        except ValueError as exc:
            return f"answer is not JSON: {exc}"
        error = self._best_match(self._validator.iter_errors(value))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"answer does not match the JSON schema at {where}: {error.message}"


JUDGE_PROMPT = (
    "You check answers. Reply PASS if the answer fully and correctly satisfies the request, otherwise FAIL, "
    "then one short reason.\n\n<request>\n{request}\n</request>\n\n<answer>\n{answer}\n</answer>\n\nVerdict:"
)


@dataclass(frozen=True)
class Judge:
    """Asks the ``backend`` model whether an answer satisfies the request; PASS accepts, anything else rejects."""

    backend: str
    prompt: str = JUDGE_PROMPT

    async def check(self, request: GenerateRequest, output: BackendOutput, run: RunBackend) -> str | None:
        """Run the judge through ``run`` and read its verdict."""
        # Both are untrusted (the answer follows what the request said): neither may close the block it is quoted in
        # and write a verdict of its own after it, nor pose as a turn.
        tags = tag_names(self.prompt)
        prompt = self.prompt.format(request=defuse(request.input, tags=tags), answer=defuse(output.text, tags=tags))
        verdict = (await run(self.backend, GenerateRequest(input=prompt))).text.strip()
        word = re.match(r"[\W_]*(\w+)", verdict)
        if word is not None and word.group(1).upper() == "PASS":
            return None
        if word is not None and word.group(1).upper() == "FAIL":
            return f"judge {self.backend!r} said FAIL: {verdict[:200]}"
        return f"judge {self.backend!r} gave no PASS/FAIL verdict: {verdict[:200]!r}"


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class JsonSchemaSpec(_Spec):
    """Config form of a JSON-schema validator: the schema inline or a path to it."""

    kind: Literal["json_schema"]
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    path: PathText | None = None


class JudgeSpec(_Spec):
    """Config form of a judge validator; ``prompt`` has ``{request}`` and ``{answer}`` placeholders."""

    kind: Literal["judge"]
    backend: str = Field(min_length=1)
    prompt: str = JUDGE_PROMPT


_SPEC: TypeAdapter[JsonSchemaSpec | JudgeSpec] = TypeAdapter(
    Annotated[JsonSchemaSpec | JudgeSpec, Field(discriminator="kind")])


def from_config(raw: str | Mapping[str, Any], *, field: str) -> Validator | Judge:
    """The validator a config ``validators`` entry describes: an import path or a ``kind`` mapping."""
    if isinstance(raw, str):
        from genroute.config import import_object

        return import_object(raw, field=field)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected an import path 'module:callable' or a mapping with a `kind`, not "
                          f"{type(raw).__name__}", field=field)
    try:
        spec = _SPEC.validate_python(raw)
    except ValidationError as exc:
        from genroute.config_errors import config_error

        raise config_error(exc, field, tagged=True) from None
    if isinstance(spec, JudgeSpec):
        return _judge(spec.backend, spec.prompt, field=f"{field}.prompt")
    if (spec.schema_ is None) == (spec.path is None):
        raise ConfigError("give exactly one of `schema` and `path`", field=field)
    if spec.path is not None:
        return JsonSchema.from_file(spec.path, field=f"{field}.path")
    return JsonSchema(spec.schema_ or {}, field=f"{field}.schema")


def _judge(backend: str, prompt: str, *, field: str) -> Judge:
    try:
        places = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(prompt)
                  if name is not None]
    except ValueError as exc:
        raise ConfigError(f"prompt may use only {{request}} and {{answer}} placeholders ({exc!r})",
                          field=field) from None
    for name, spec, conversion in places:
        # Bare names only: {answer.__class__...} would reach into Python objects, {answer:>999999999} write a
        # gigabyte of padding per check.
        if name not in ("request", "answer") or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ConfigError(f"prompt may use only {{request}} and {{answer}} placeholders, as they are, not "
                              f"{shown[:80]!r}", field=field)
    return Judge(backend, prompt)


def resolve(name: str, custom: Mapping[str, Validator | Judge], *, backends: Mapping[str, Any],
            field: str) -> Check:
    """The check called ``name``: custom, built-in, ``regex:``, ``json_schema:`` or ``judge:``."""
    validator: Validator | Judge
    if name in custom:
        validator = custom[name]
        if not (isinstance(validator, Judge) or callable(validator)):  # else a TypeError at the first request
            raise ConfigError(f"{type(validator).__name__} is not a validator: give a (request, output) -> "
                              "reason | None callable, or a Judge", field=field)
    elif name in BUILTIN:
        validator = BUILTIN[name]
    elif name.startswith("regex:"):
        try:
            pattern = re.compile(name.removeprefix("regex:"))
        except re.error as exc:
            raise ConfigError(f"invalid regex in {name!r}: {exc}", field=field) from None
        validator = _Regex(pattern)
    elif name.startswith("json_schema:"):
        validator = JsonSchema.from_file(name.removeprefix("json_schema:"), field=field)
    elif name.startswith("judge:"):
        validator = Judge(name.removeprefix("judge:"))
    else:
        known = ", ".join(sorted({*BUILTIN, *custom})) + ", regex:<pattern>, json_schema:<path>, judge:<backend>"
        raise ConfigError(f"unknown validator {name!r} (known: {known})", field=field)
    if isinstance(validator, Judge):
        if validator.backend not in backends:
            raise ConfigError(f"validator {name!r}: unknown judge backend {validator.backend!r} "
                              f"(known: {', '.join(sorted(backends))})", field=field)
        # The judge is asked about the request: with tools that act, it could do again what the answer did.
        refuse_rerun(validator.backend, backends[validator.backend].side_effects(), role="a judge", field=field)
        return validator.check
    return _plain(validator)


@dataclass(frozen=True)
class _Regex:
    pattern: re.Pattern[str]

    def __call__(self, request: GenerateRequest, output: BackendOutput) -> str | None:
        return None if self.pattern.search(output.text) else f"answer does not match {self.pattern.pattern!r}"


def _plain(validator: Validator) -> Check:
    """A ``(request, output)`` validator, sync or async, as a check."""

    async def check(request: GenerateRequest, output: BackendOutput, run: RunBackend) -> str | None:
        reason = validator(request, output)
        return await reason if inspect.isawaitable(reason) else reason

    return check


def named_in(config: Any, field: str) -> Iterator[tuple[str, str]]:
    """Every validator name a policy config lists (any ``validators`` entry, at any depth), with its field."""
    if isinstance(config, BaseModel):
        config = config.model_dump()
    if isinstance(config, Mapping):
        for key, value in config.items():
            path = f"{field}.{key}"
            if key == "validators" and isinstance(value, list | tuple):
                yield from ((name, path) for name in value if isinstance(name, str))
            else:
                yield from named_in(value, path)
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            yield from named_in(value, f"{field}.{index}")
