"""``ladder``: the adaptation ladder — tools, retrieval, a tuned model, few-shot examples, else a prompt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext
from genroute.policies.rules import needs_knowledge, needs_tools
from genroute.policies.static import check_backends
from genroute.types import Decision, GenerateRequest, Rung

Step = Literal["function_calling", "rag", "tuned", "icl", "prompt_template"]

#: The capability (``Backend.capabilities``) that lets a backend of another kind fill a step.
_CAPABILITY: dict[str, str] = {"function_calling": "tools", "rag": "knowledge", "tuned": "tuned", "icl": "examples"}


class LadderConfig(PolicyConfig):
    """Config of ``LadderPolicy``."""

    kind: Literal["ladder"] = "ladder"
    min_examples: int = Field(default=8, ge=1, description="Labeled examples a task needs before ICL is chosen.")
    backends: dict[Step, str] = Field(default_factory=dict,
                                      description="Pin a step to a backend; unpinned steps are found by kind.")
    cascade: bool = Field(default=False, description="Climb prompt -> ICL -> RAG -> tuned on rejection.")
    climb: tuple[Step, ...] = Field(default=("prompt_template", "icl", "rag", "tuned"),
                                    description="Cascade order, cheapest effort first.")
    validators: tuple[str, ...] = Field(default=("nonempty",),
                                        description="Validators on every cascade rung but the last.")


def _example_count(info: BackendInfo, task: str) -> int:
    """Labeled examples ``info`` holds for ``task`` (0 when it cannot say)."""
    per_task = info.facts.get("example_counts")
    if isinstance(per_task, Mapping):
        return int(per_task.get(task, 0) or 0)
    # A backend that reports only a total (e.g. a plugin): the total is evidence only for the tasks it was
    # made for; for a general backend it says nothing about this task.
    return int(info.facts.get("example_count", 0) or 0) if task in info.tasks else 0


class LadderPolicy(Policy):
    """Choose the technique the request's signals call for, naming the rung and the signal."""

    kind = "ladder"
    Config = LadderConfig
    config: LadderConfig

    def _candidates(self, step: str, catalogue: Mapping[str, BackendInfo], task: str | None) -> list[BackendInfo]:
        pinned = self.config.backends.get(step)  # type: ignore[call-overload]
        if pinned is not None:
            return [catalogue[pinned]] if pinned in catalogue else []
        cap = _CAPABILITY.get(step)
        found = [i for i in catalogue.values() if i.kind == step or (cap is not None and cap in i.capabilities)]
        # A backend made for this task beats a general one; one made for other tasks only is not a candidate
        # for the task-specific steps (a tuned model for task A cannot answer task B).
        made_for = [i for i in found if task is not None and task in i.tasks]
        general = [i for i in found if not i.tasks]
        if step in ("tuned", "icl"):
            return made_for if step == "tuned" else made_for + general
        return made_for + general + [i for i in found if i not in made_for and i not in general]

    def _step(self, step: str, request: GenerateRequest, catalogue: Mapping[str, BackendInfo]
              ) -> tuple[str, str] | None:
        """``(backend, signal)`` if the step applies to the request, else ``None``."""
        task = request.task
        for info in self._candidates(step, catalogue, task):
            if step == "function_calling" and needs_tools(request):
                return info.name, "request needs tools"
            if step == "rag":
                collection = info.facts.get("collection")
                if not collection:
                    continue
                if needs_knowledge(request):
                    return info.name, f"request needs knowledge; collection {collection!r}"
                if task is not None and task in info.tasks:
                    return info.name, f"task {task!r} is grounded on collection {collection!r}"
            if step == "tuned":
                return info.name, f"task {task!r} has a tuned backend"
            if step == "icl":
                if task is None:  # examples teach a task: a request without one gives ICL nothing to go on
                    return None
                count = _example_count(info, task)
                if count >= self.config.min_examples:
                    return info.name, f"task {task!r} has {count} labeled examples >= {self.config.min_examples}"
            if step == "prompt_template":
                return info.name, "no stronger signal" + self._icl_shortfall(task, catalogue)
        return None

    def _icl_shortfall(self, task: str | None, catalogue: Mapping[str, BackendInfo]) -> str:
        """Why ICL was passed over for ``task`` ('' if there is no ICL backend to mention)."""
        candidates = self._candidates("icl", catalogue, task)
        if not candidates:
            return ""
        if task is None:
            return " (request has no task for few-shot examples)"
        count = max(_example_count(i, task) for i in candidates)
        if count >= self.config.min_examples:  # ICL applies (a cascade climbs to it from here)
            return ""
        return f" (task {task!r} has {count} labeled examples < {self.config.min_examples})"

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        catalogue = context.catalogue
        if needs_tools(request):
            found = self._step("function_calling", request, catalogue)
            if found is not None:
                return self._one(found, "function_calling")
        if self.config.cascade:
            return self._cascade(request, catalogue)
        for step in ("rag", "tuned", "icl", "prompt_template"):
            found = self._step(step, request, catalogue)
            if found is not None:
                return self._one(found, step)
        return self._fallback(catalogue)

    def _one(self, found: tuple[str, str], step: str) -> Decision:
        backend, signal = found
        return Decision.single(self.name, backend, f"ladder: {step} ({backend}): {signal}")

    def _cascade(self, request: GenerateRequest, catalogue: Mapping[str, BackendInfo]) -> Decision:
        steps = list(self.config.climb)
        if needs_knowledge(request) and "rag" in steps:
            # Without the missing knowledge the lower rungs cannot answer: start the climb at retrieval.
            steps = steps[steps.index("rag"):]
        chosen = [(step, found) for step in steps
                  if (found := self._step(step, request, catalogue)) is not None]
        if not chosen:
            return self._fallback(catalogue)
        rungs = []
        for i, (step, (backend, _)) in enumerate(chosen):
            last = i == len(chosen) - 1
            validators = () if last else self.config.validators + (("has_context",) if step == "rag" else ())
            rungs.append(Rung(backend=backend, validators=validators))
        path = " -> ".join(f"{step} ({backend}: {signal})" for step, (backend, signal) in chosen)
        return Decision(policy=self.name, rungs=tuple(rungs), reason=f"ladder cascade: {path}")

    def _fallback(self, catalogue: Mapping[str, BackendInfo]) -> Decision:
        # No rung applies (e.g. no prompt_template backend): use any backend rather than fail the request.
        backend = next(iter(catalogue), None)
        if backend is None:
            from genroute.errors import ConfigError

            raise ConfigError("the router has no backends", field=self.field)
        return Decision.single(self.name, backend, f"ladder: no rung applies; first backend {backend}")

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        check_backends(catalogue, [(b, f"{self.field}.backends.{step}") for step, b in self.config.backends.items()])
