"""Building pydantic models from values genroute has already validated, for less than validating them again.

Every request returns a ``GenerateResult`` holding a ``DecisionRecord`` and a ``RungAttempt`` per rung, and sends
a user turn (google-genai's ``Content`` of one ``Part``). Their values are already checked — a validated request,
usage the SDK parsed, a backend's output, numbers genroute summed — so these helpers do what pydantic's own
``model_construct`` does for trusted data, without its per-field Python loop (which makes it *slower* than
validation for these models): set the instance's ``__dict__``, ``__pydantic_fields_set__``,
``__pydantic_extra__`` and ``__pydantic_private__``, the four attributes pydantic documents on every model.
Per build (``python benchmarks/model_instructions.py``): ``GenerateResult`` 34.5 k instructions validated,
57.2 k by ``model_construct``, 21.9 k here; a user turn 109 k validated, 41 k by ``model_copy``, 24 k here.
``tests/test_construct.py`` checks each result equals the validated model's, so a pydantic release that changes
what a model holds fails there rather than in a request.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

_new = object.__new__
_set = object.__setattr__
_NAMES: dict[type[BaseModel], tuple[str, ...]] = {}
_DEFAULTS: dict[type[BaseModel], dict[str, Any]] = {}


def trusted(cls: type[M], /, *, given_: set[str] | None = None, **values: Any) -> M:
    """``cls(**values)`` without validating ``values`` (already of the fields' types; frozen models too).

    ``given_``: the fields the caller gave (``model_fields_set``), where ``values`` also spells out defaults (e.g.
    of a model whose defaults are mutable, which every build must get anew); by default, those in ``values``.
    """
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(cls.model_fields)
    if tuple(values) != names:  # pydantic keeps (and serializes) fields in declaration order
        defaults = _DEFAULTS.get(cls)
        if defaults is None:
            defaults = _DEFAULTS[cls] = _defaults(cls)
        values_in_order = {name: values[name] if name in values else defaults[name] for name in names}
    else:
        values_in_order = values
    model = _new(cls)
    _set(model, "__dict__", values_in_order)
    _set(model, "__pydantic_fields_set__", set(values) if given_ is None else given_)
    _set(model, "__pydantic_extra__", None)
    _set(model, "__pydantic_private__", None)
    return model


def replaced(model: M, /, **values: Any) -> M:
    """``model.model_copy(update=values)`` (a shallow copy with ``values`` set; not validated)."""
    copy = _new(type(model))
    _set(copy, "__dict__", {**model.__dict__, **values})
    _set(copy, "__pydantic_fields_set__", model.__pydantic_fields_set__ | values.keys())
    _set(copy, "__pydantic_extra__", model.__pydantic_extra__)
    _set(copy, "__pydantic_private__", model.__pydantic_private__)
    return copy


def _defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """``cls``'s default values, shared by every instance ``trusted`` builds: so they must be immutable."""
    defaults = {name: field.get_default(call_default_factory=True)
                for name, field in cls.model_fields.items() if not field.is_required()}
    for name, value in defaults.items():
        if isinstance(value, list | dict | set | bytearray):
            raise TypeError(f"{cls.__name__}.{name} has a mutable default: build it with validation")
    return defaults
