"""Building models from values genroute has already validated, for less than validating them again.

Every request returns a ``GenerateResult`` holding a ``DecisionRecord`` and a ``RungAttempt`` per rung (and, for an
engine that takes no text, sends a user turn: google-genai's ``Content`` of one ``Part``). Their values are
already checked — a validated request, usage the SDK parsed, a backend's output, numbers genroute summed — so
these helpers do what pydantic's own ``model_construct`` does for trusted data, without its per-field Python
loop (which makes it *slower* than validation for these models): set the instance's ``__dict__``,
``__pydantic_fields_set__``, ``__pydantic_extra__`` and ``__pydantic_private__``, the four attributes pydantic
documents on every model. ``builder`` generates that for one model class (its fields as keyword parameters;
``from_values`` takes them as a dict, for a model of more than 15 fields),
``replaced`` copies a model with some fields swapped, and ``one_store_init`` gives a frozen dataclass built on
every request an ``__init__`` that stores its fields at once. Per build: ``python
benchmarks/model_instructions.py``. ``tests/test_construct.py`` checks each result equals the validated
model's, so a pydantic release that changes what a model holds fails there rather than in a request.
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from google.genai import types

M = TypeVar("M", bound=BaseModel)
D = TypeVar("D", bound="DataclassInstance")

_new = object.__new__
_set = object.__setattr__
#: The most entries a dict display builds in one step (CPython's compiler; more are added one by one).
_DISPLAY_MAX = 15


def builder(cls: type[M], /, *, given: Iterable[str] | None = None) -> Callable[..., M]:
    """A function building ``cls`` from a value for each of its fields, by keyword, without validating them.

    ``builder(RungAttempt)(backend=..., outcome=..., ...)`` is ``RungAttempt(backend=..., ...)`` for values
    already of the fields' types (frozen models too). Every field must be given (a missing one is a
    ``TypeError``, as for any function). ``given``: the fields the built models say were set
    (``model_fields_set``) where the caller spells out defaults; by default, all of them.

    The function is generated for ``cls``, as ``dataclasses`` generates an ``__init__``: its fields become
    keyword-only parameters and its body one dict display (and a store for each field past the 15th), so a build
    costs no loop, lookup or check (a third less than a generic ``cls``-and-``**values`` helper,
    ``benchmarks/model_instructions.py``).
    """
    names = tuple(cls.model_fields)
    set_names = names if given is None else tuple(given)
    unknown = set(set_names) - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    for name in names:  # pydantic fields never start with "_", so the generated names below cannot clash
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise TypeError(f"{cls.__name__}.{name} cannot be a parameter: build it with validation")
    # CPython builds a dict display of more than 15 entries one entry at a time (an empty dict, then an insert
    # and a resize as it grows); of at most 15, in one presized step. So the first 15 fields go in the display
    # and any others (``GenerateResult`` has 16) are stored into it after.
    shown, stored = names[:_DISPLAY_MAX], names[_DISPLAY_MAX:]
    fields = ", ".join(f"{name!r}: {name}" for name in shown)
    fields_set = "{" + ", ".join(map(repr, set_names)) + "}" if set_names else "set()"
    source = (
        f"def build(*, {', '.join(names)}):\n"
        f"    _model = _new(_cls)\n"
        f"    _values = {{{fields}}}\n"
        + "".join(f"    _values[{name!r}] = {name}\n" for name in stored) +
        f"    _set(_model, '__dict__', _values)\n"
        f"    _set(_model, '__pydantic_fields_set__', {fields_set})\n"
        f"    _set(_model, '__pydantic_extra__', None)\n"
        f"    _set(_model, '__pydantic_private__', None)\n"
        f"    return _model\n"
    )
    namespace: dict[str, Any] = {"_new": _new, "_set": _set, "_cls": cls}
    exec(compile(source, f"<genroute.construct.builder {cls.__qualname__}>", "exec"), namespace)  # noqa: S102
    build: Callable[..., M] = namespace["build"]
    build.__qualname__ = build.__name__ = f"build_{cls.__name__}"
    return build


def from_values(cls: type[M], /) -> Callable[[dict[str, Any]], M]:
    """A function building ``cls`` from a dict holding a value for each of its fields, in the fields' order, without
    validating them (``builder``'s model, given its ``__dict__`` as it is: the dict becomes the model's own).

    For models of more than 15 fields (``GenerateResult``): CPython compiles a call with more than 15 keyword
    arguments into a dict built entry by entry and a call from it, which costs ``builder``'s keyword call twice
    over; a dict display of at most 15 entries is one presized step, so the caller shows 15 and stores the rest.
    """
    names = tuple(cls.model_fields)

    def build(values: dict[str, Any]) -> M:
        model = _new(cls)
        _set(model, "__dict__", values)
        _set(model, "__pydantic_fields_set__", set(names))
        _set(model, "__pydantic_extra__", None)
        _set(model, "__pydantic_private__", None)
        return model

    build.__qualname__ = build.__name__ = f"build_{cls.__name__}_from_values"
    return build


def one_store_init(cls: type[D]) -> type[D]:
    """Give a frozen dataclass an ``__init__`` that stores its fields with one ``__dict__`` assignment.

    ``@dataclass(frozen=True)`` makes ``__init__`` set each field through ``object.__setattr__``, a call per
    field: about 1 µs for a seven-field ``Prepared``, built on every request. This one takes the same parameters
    (same order, defaults and default factories; ``tests/test_construct.py`` compares signatures and instances)
    and builds the instance's dict in one display. Applied on top of ``@dataclass``; refuses what it does not
    handle (``__post_init__``, init-only, keyword-only or ``init=False`` fields, slots).
    """
    fields = dataclasses.fields(cls)
    if ("__post_init__" in vars(cls) or "__slots__" in vars(cls) or len(fields) != len(cls.__dataclass_fields__)
            or any(not f.init or f.kw_only for f in fields)):
        raise TypeError(f"{cls.__name__}: one_store_init handles plain dataclass fields only")
    if any(f.name in ("_self", "_set", "_MISSING") or f.name.startswith(("_default_", "_factory_")) for f in fields):
        raise TypeError(f"{cls.__name__}: a field name clashes with one_store_init's own names")
    namespace: dict[str, Any] = {"_set": _set, "_MISSING": dataclasses.MISSING}
    params, prologue = [], []
    for f in fields:
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_MISSING")
            prologue.append(f"    if {f.name} is _MISSING:\n        {f.name} = _factory_{f.name}()\n")
        else:
            params.append(f.name)
    values = ", ".join(f"{f.name!r}: {f.name}" for f in fields)
    source = (f"def __init__(_self, {', '.join(params)}):\n" + "".join(prologue)
              + f"    _set(_self, '__dict__', {{{values}}})\n")
    exec(compile(source, f"<genroute.construct.one_store_init {cls.__qualname__}>", "exec"), namespace)  # noqa: S102
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__dataclass_init__ = cls.__init__  # type: ignore[attr-defined]  # what the test compares against
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def replaced(model: M, /, **values: Any) -> M:
    """``model.model_copy(update=values)`` (a shallow copy with ``values`` set; not validated)."""
    copy = _new(type(model))
    _set(copy, "__dict__", {**model.__dict__, **values})
    _set(copy, "__pydantic_fields_set__", model.__pydantic_fields_set__ | values.keys())
    _set(copy, "__pydantic_extra__", model.__pydantic_extra__)
    _set(copy, "__pydantic_private__", model.__pydantic_private__)
    return copy


def user_content(text: str) -> types.Content:
    """A single user turn of ``text`` (google-genai's ``Content`` of one ``Part``)."""
    if type(text) is not str:  # what validation would refuse, it still refuses (with the SDK's own error)
        from google.genai import types

        return types.Content(role="user", parts=[types.Part(text=text)])
    # A copy of one validated turn with the text swapped in: the same model as a validated construction at a
    # fifth of its cost (these SDK models validate ~20 optional fields; model_construct is slower still).
    content, part = _user_turn()
    return replaced(content, parts=[replaced(part, text=text)])


@functools.cache
def _user_turn() -> tuple[types.Content, types.Part]:
    from google.genai import types

    part = types.Part(text="")
    return types.Content(role="user", parts=[part]), part
