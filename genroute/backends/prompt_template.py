"""Prompt-template backend: a sandboxed Jinja2 template with declared, validated variables."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (BaseModel, Field, TypeAdapter, ValidationError, ValidationInfo, create_model,
                      field_validator, model_validator)

from genroute.backends.base import BackendConfig, Prepared, SingleCallBackend, user_content
from genroute.backends.templating import absent, check_template, compile_template, render
from genroute.errors import UsageError
from genroute.public_model import ConfigModel
from genroute.types import GenerateRequest, Turn

if TYPE_CHECKING:
    from genroute.runtime.context import RunContext

#: A declared type's values. A float is finite: NaN or infinity (`--var x=nan`) is no number a prompt can use.
_TYPES: dict[str, Any] = {"str": str, "int": int, "float": Annotated[float, Field(allow_inf_nan=False)],
                          "bool": bool, "list": list, "dict": dict}


class VariableSpec(ConfigModel):
    """A declared template variable: required unless it has a ``default`` or says ``required: false``."""

    model_config = {"frozen": True, "extra": "forbid"}

    type: Literal["str", "int", "float", "bool", "list", "dict"] = "str"
    #: ``None``: required exactly when there is no default.
    required: bool | None = None
    default: Any = None
    description: str | None = None

    @property
    def is_required(self) -> bool:
        """Whether a request must give this variable."""
        return self.default is None if self.required is None else self.required

    @model_validator(mode="after")
    def _default_has_the_type(self) -> VariableSpec:
        if self.default is not None:
            if self.required:
                raise ValueError("a variable with a default is not required (drop `required: true` or the default)")
            try:
                TypeAdapter(_TYPES[self.type]).validate_python(self.default, strict=self.type != "float")
            except ValidationError:
                raise ValueError(f"default {self.default!r} is not of type {self.type}") from None
        return self


_TURNS = TypeAdapter(list[Turn])


class PromptTemplateConfig(BackendConfig):
    """Config of a ``prompt_template`` backend."""

    kind: Literal["prompt_template"] = "prompt_template"
    template: str = Field(default="{{ input }}", description="Jinja2 user prompt; `input` is the request input.")
    variables: dict[str, VariableSpec] = Field(default_factory=dict)
    history: str | None = Field(default=None, description="A `list` variable whose `{role, text}` turns (role "
                                "`user` or `model`) are sent, in order, before the rendered prompt.")

    @model_validator(mode="after")
    def _template_compiles(self) -> PromptTemplateConfig:
        allowed = {*self.variables, "input", "task", "metadata"}
        check_template(self.template, name="template", allowed=allowed)
        check_template(self.system or "", name="system", allowed=allowed)
        return self

    @field_validator("history")
    @classmethod
    def _history_is_a_list_variable(cls, name: str | None, info: ValidationInfo) -> str | None:
        variables: dict[str, VariableSpec] = info.data.get("variables") or {}
        if name is None:
            return name
        spec = variables.get(name)
        if spec is None or spec.type != "list":
            raise ValueError(f"names a variable of type list under `variables` (e.g. variables: "
                             f"{{{name}: {{type: list, default: []}}}}), not {name!r}")
        if spec.default:  # sent when a request gives none: its turns checked now, not at each request
            try:
                _TURNS.validate_python(spec.default)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(p) for p in error["loc"])
                raise ValueError(f"{error['msg']}: the variable's default turn {where} (a turn is {{role: "
                                 "user|model, text}})") from None
        return name


class PromptTemplateBackend(SingleCallBackend):
    """Renders a system instruction and user prompt from templates, then makes one model call."""

    kind = "prompt_template"
    Config = PromptTemplateConfig
    config: PromptTemplateConfig

    @cached_property
    def _templates(self) -> tuple[Any, Any]:
        config = self.config
        return compile_template(config.template), compile_template(config.system) if config.system else None

    @cached_property
    def _variables_model(self) -> type[BaseModel]:
        fields: dict[str, Any] = {}
        for name, spec in self.config.variables.items():
            annotation = _TYPES[spec.type]
            fields[name] = (annotation, ...) if spec.is_required else (annotation | None, spec.default)
        return create_model(f"{self.name}_variables", __config__={"extra": "forbid"}, **fields)

    def render(self, request: GenerateRequest) -> tuple[str, str | None]:
        """The (user prompt, system instruction) for ``request``; ``UsageError`` names a bad variable."""
        scope: dict[str, Any] = {"input": request.input, "task": request.task, "metadata": request.metadata}
        names: dict[str, str] = {}
        if request.variables or self.config.variables:
            try:
                variables = self._variables_model.model_validate(request.variables).model_dump()
            except ValidationError as exc:
                error = exc.errors()[0]
                name = ".".join(str(p) for p in error["loc"])
                message = "unexpected variable" if error["type"] == "extra_forbidden" else error["msg"]
                raise UsageError(f"{message} (backend {self.name!r})", field=f"variables.{name}") from None
            # An optional variable without a value is absent from the prompt, not the word "None".
            scope = {**{name: absent(name) if value is None else value for name, value in variables.items()},
                     **scope}
            names = {name: f"variables.{name}" for name in variables}
        user, system = self._templates
        template_field, system_field = self._fields
        prompt = render(user, scope, backend=self.name, field=template_field, names=names)
        if system is None:
            return prompt, None
        return prompt, render(system, scope, backend=self.name, field=system_field, names=names)

    @cached_property
    def _fields(self) -> tuple[str, str]:
        return f"backends.{self.name}.template", f"backends.{self.name}.system"

    @cached_property
    def _input_only(self) -> bool:
        """Whether the prompt is the request's input as it is: the default ``{{ input }}`` template, no system
        instruction and no declared variables (so a request's own variables are refused by ``render``)."""
        config = self.config
        return config.template == "{{ input }}" and not config.system and not config.variables

    async def prepare(self, request: GenerateRequest, ctx: RunContext) -> Prepared:
        # The default template renders the input as it is: no scope, no template call (most backends, every request).
        prompt, system = (str(request.input), None) if self._input_only and not request.variables else \
            self.render(request)
        history = self.config.history
        if history is None:
            return Prepared(model=self.config.model, contents=prompt, config=self._genai_config(system))
        if request.history:
            # The request's own history (which every backend sends) takes the variable's place, its default's too;
            # both given would be two conversations, in no order the caller chose.
            if history in request.variables:
                raise UsageError(f"a conversation is given twice: in the request's history and in variables."
                                 f"{history} (backend {self.name!r}'s history variable); give one", field="history")
            return Prepared(model=self.config.model, contents=prompt, config=self._genai_config(system))
        # The request's turns, else the variable's declared default (as for every variable the template reads).
        turns = request.variables.get(history, self.config.variables[history].default)
        if not turns:
            return Prepared(model=self.config.model, contents=prompt, config=self._genai_config(system))
        return Prepared(model=self.config.model, contents=[*self._turns(history, turns), user_content(prompt)],
                        config=self._genai_config(system))

    def _turns(self, name: str, turns: Any) -> list[Any]:
        """The ``history`` variable's turns as ``Content``s; ``UsageError`` names a bad one."""
        from google.genai import types

        try:
            checked = _TURNS.validate_python(turns)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise UsageError(f"{error['msg']}: a turn is {{role: user|model, text}} (backend {self.name!r})",
                             field=f"variables.{name}.{where}") from None
        return [types.Content(role=turn.role, parts=[types.Part(text=turn.text)]) for turn in checked]

    @cached_property
    def _configs(self) -> dict[str | None, Any]:
        """The generation configs built so far, by system instruction (``_genai_config``)."""
        return {}

    def _genai_config(self, system: str | None) -> Any:
        # Building a GenerateContentConfig costs tens of µs per request; most backends have one system line.
        # Engines treat the config as read-only (they copy before adding per-call options).
        cache = self._configs
        try:
            return cache[system]
        except KeyError:
            if len(cache) >= 64:
                cache.clear()
            built = self.config.generation.to_genai(system=system)
            # A config that sets nothing goes as None: nothing to read, copy or send for it on each request.
            config = cache[system] = built if built.model_fields_set else None
        return config

