"""``rules``: declarative first-match routing on task, metadata, input length, needs and regexes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext
from genroute.policies.static import check_backends
from genroute.public_model import ConfigModel
from genroute.types import Decision, GenerateRequest, Rung

_MISSING = object()


def needs_tools(request: GenerateRequest) -> bool:
    """Whether the request says an external system must act or answer (``metadata.needs_tools``)."""
    return bool(request.metadata.get("needs_tools"))


def needs_knowledge(request: GenerateRequest) -> bool:
    """Whether the request needs knowledge the model lacks (``metadata.needs_knowledge`` or ``fresh``)."""
    return bool(request.metadata.get("needs_knowledge") or request.metadata.get("fresh"))


class When(ConfigModel):
    """Conditions of one rule; all that are set must hold (an empty ``when`` always matches)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str | tuple[str, ...] | None = Field(default=None, description="Task name, or any of several.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Metadata keys that must equal.")
    metadata_in: dict[str, tuple[Any, ...]] = Field(default_factory=dict, description="Key in allowed values.")
    min_chars: int | None = Field(default=None, ge=0)
    max_chars: int | None = Field(default=None, ge=0)
    needs_tools: bool | None = None
    needs_knowledge: bool | None = None
    input_regex: str | None = Field(default=None, description="Python regex searched in the input.")

    # A field validator, so the error names the field to fix.
    @field_validator("max_chars")
    @classmethod
    def _not_below_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min_chars")
        if value is not None and low is not None and value < low:
            raise ValueError(f"max_chars {value} is below min_chars {low}: the rule could never match")
        return value

    @field_validator("input_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        return value


class Rule(ConfigModel):
    """If ``when`` holds, answer with ``backend`` (then ``fallbacks`` in order)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    when: When = When()
    backend: str = Field(min_length=1)
    validators: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = Field(default=(), description="Backends tried next if a rung fails.")


class RulesConfig(PolicyConfig):
    """Config of ``RulesPolicy``: rules tried in order, first match wins, else ``default``."""

    kind: Literal["rules"] = "rules"
    rules: tuple[Rule, ...] = ()
    default: str = Field(min_length=1)


class _Compiled:
    """A rule with its regex compiled and its label for reasons."""

    __slots__ = ("rule", "label", "regex", "tasks")

    def __init__(self, index: int, rule: Rule) -> None:
        self.rule = rule
        self.label = rule.name or f"rules[{index}]"
        self.regex = re.compile(rule.when.input_regex) if rule.when.input_regex else None
        task = rule.when.task
        self.tasks = (task,) if isinstance(task, str) else task

    def mismatch(self, request: GenerateRequest) -> str | None:
        """``None`` if every condition holds, else the name of the first one that fails."""
        when = self.rule.when
        if self.tasks is not None and request.task not in self.tasks:
            return "task"
        for key, value in when.metadata.items():
            if request.metadata.get(key, _MISSING) != value:
                return f"metadata.{key}"
        for key, allowed in when.metadata_in.items():
            if request.metadata.get(key, _MISSING) not in allowed:
                return f"metadata_in.{key}"
        length = len(request.input)
        if when.min_chars is not None and length < when.min_chars:
            return "min_chars"
        if when.max_chars is not None and length > when.max_chars:
            return "max_chars"
        if when.needs_tools is not None and needs_tools(request) != when.needs_tools:
            return "needs_tools"
        if when.needs_knowledge is not None and needs_knowledge(request) != when.needs_knowledge:
            return "needs_knowledge"
        if self.regex is not None and self.regex.search(request.input) is None:
            return "input_regex"
        return None

    def signal(self) -> str:
        """The conditions that matched, for the decision's reason."""
        when = self.rule.when.model_dump(exclude_defaults=True)
        return ", ".join(f"{k}={v!r}" for k, v in when.items()) or "always"


class RulesPolicy(Policy):
    """First rule whose conditions all hold decides; otherwise the default backend."""

    kind = "rules"
    Config = RulesConfig
    config: RulesConfig

    def __init__(self, config: RulesConfig) -> None:
        super().__init__(config)
        self._rules = [_Compiled(i, rule) for i, rule in enumerate(config.rules)]

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        for compiled in self._rules:
            if compiled.mismatch(request) is None:
                rule = compiled.rule
                rungs = (Rung(backend=rule.backend, validators=rule.validators),
                         *(Rung(backend=b) for b in rule.fallbacks))
                reason = f"rules: {compiled.label} matched ({compiled.signal()}) -> {rule.backend}"
                return Decision(policy=self.name, rungs=rungs, reason=reason)
        return Decision.single(self.name, self.config.default,
                               f"rules: no rule matched -> default {self.config.default}")

    def explain(self, request: GenerateRequest) -> list[tuple[str, str | None]]:
        """Each rule's label and the first condition that failed for ``request`` (``None``: matched)."""
        return [(c.label, c.mismatch(request)) for c in self._rules]

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        named = [(self.config.default, f"{self.field}.default")]
        for i, rule in enumerate(self.config.rules):
            named.append((rule.backend, f"{self.field}.rules.{i}.backend"))
            named += [(b, f"{self.field}.rules.{i}.fallbacks.{j}") for j, b in enumerate(rule.fallbacks)]
        check_backends(catalogue, named)
