"""Prompt-template backend: a sandboxed Jinja2 template with declared, validated variables."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from genroute.backends.base import BackendConfig, Prepared, SingleCallBackend, user_content
from genroute.errors import UsageError
from genroute.types import GenerateRequest

_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}
_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class VariableSpec(BaseModel):
    """A declared template variable."""

    model_config = {"frozen": True, "extra": "forbid"}

    type: Literal["str", "int", "float", "bool", "list", "dict"] = "str"
    required: bool = True
    default: Any = None
    description: str | None = None


class PromptTemplateConfig(BackendConfig):
    """Config of a ``prompt_template`` backend."""

    kind: Literal["prompt_template"] = "prompt_template"
    template: str = Field(default="{{ input }}", description="Jinja2 user prompt; `input` is the request input.")
    variables: dict[str, VariableSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _template_compiles(self) -> PromptTemplateConfig:
        for field, source in (("template", self.template), ("system", self.system or "")):
            try:
                names = meta.find_undeclared_variables(_ENV.parse(source))
            except TemplateError as exc:
                raise ValueError(f"{field} does not compile: {exc}") from None
            undeclared = names - set(self.variables) - {"input", "task", "metadata"}
            if undeclared:
                raise ValueError(f"{field} uses undeclared variable(s): {', '.join(sorted(undeclared))}")
        return self


class PromptTemplateBackend(SingleCallBackend):
    """Renders a system instruction and user prompt from templates, then makes one model call."""

    kind = "prompt_template"
    Config = PromptTemplateConfig

    @cached_property
    def _templates(self) -> tuple[Any, Any]:
        config = self.config
        return _ENV.from_string(config.template), _ENV.from_string(config.system) if config.system else None

    @cached_property
    def _variables_model(self) -> type[BaseModel]:
        fields: dict[str, Any] = {}
        for name, spec in self.config.variables.items():
            annotation = _TYPES[spec.type]
            fields[name] = (annotation, ...) if spec.required else (annotation | None, spec.default)
        return create_model(f"{self.name}_variables", __config__={"extra": "forbid"}, **fields)

    def render(self, request: GenerateRequest) -> tuple[str, str | None]:
        """The (user prompt, system instruction) for ``request``; ``UsageError`` names a bad variable."""
        try:
            variables = self._variables_model.model_validate(request.variables).model_dump()
        except ValidationError as exc:
            error = exc.errors()[0]
            name = ".".join(str(p) for p in error["loc"])
            message = "unexpected variable" if error["type"] == "extra_forbidden" else error["msg"]
            raise UsageError(f"{message} (backend {self.name!r})", field=f"variables.{name}") from None
        scope = {**variables, "input": request.input, "task": request.task, "metadata": request.metadata}
        user, system = self._templates
        try:
            return user.render(scope), system.render(scope) if system is not None else None
        except TemplateError as exc:
            raise UsageError(f"template of backend {self.name!r} failed: {exc}", field="variables") from None

    async def prepare(self, request: GenerateRequest, ctx: Any) -> Prepared:
        prompt, system = self.render(request)
        return Prepared(model=self.config.model, contents=[user_content(prompt)],
                        config=self.config.generation.to_genai(system=system))

