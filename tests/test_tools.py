"""Tool schemas from signatures, argument validation and calling."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from enum import Enum
from typing import Annotated, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from genroute.errors import ConfigError
from genroute.tools import InvalidToolArgs, inline_refs, jsonable, readable, tool_from_callable


class Unit(str, Enum):
    C = "celsius"
    F = "fahrenheit"


class Node(BaseModel):
    child: Node | None = None


class Address(BaseModel):
    street: str
    city: str


def get_weather(city: str, unit: Unit = Unit.C, days: Annotated[int, Field(ge=1, le=7)] = 1) -> dict:
    """Weather forecast for a city.

    Longer explanation that the model does not need.
    """
    return {"city": city, "unit": unit.value, "days": days}


async def ship(to: Address, express: bool = False, on: date | None = None) -> str:
    """Ship a parcel."""
    return f"{to.city}:{express}:{on}"


def test_schema_from_type_hints() -> None:
    tool = tool_from_callable(get_weather)
    assert tool.name == "get_weather"
    assert tool.description == "Weather forecast for a city."
    schema = tool.schema
    assert schema["type"] == "object"
    assert schema["required"] == ["city"]
    assert schema["properties"]["city"]["type"] == "string"
    assert schema["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert schema["properties"]["days"]["maximum"] == 7
    assert schema["additionalProperties"] is False
    assert "$defs" not in schema and "$ref" not in str(schema)


def test_declaration_carries_json_schema() -> None:
    decl = tool_from_callable(get_weather).declaration()
    assert decl.name == "get_weather"
    assert decl.parameters_json_schema["properties"]["city"] == {"title": "City", "type": "string"}


def test_pydantic_model_parameter_is_inlined_and_rebuilt() -> None:
    tool = tool_from_callable(ship)
    to = tool.schema["properties"]["to"]
    assert to["properties"]["city"]["type"] == "string" and to["required"] == ["street", "city"]
    kwargs = tool.validate({"to": {"street": "1 Main", "city": "Oslo"}, "on": "2026-01-02"})
    assert isinstance(kwargs["to"], Address) and kwargs["on"] == date(2026, 1, 2)
    assert asyncio.run(tool.call(kwargs, timeout_s=30)) == "Oslo:False:2026-01-02"  # a hang bound only


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({}, "city: Field required"),
        ({"city": "Paris", "days": 9}, "days"),
        ({"city": "Paris", "unit": "kelvin"}, "unit"),
        ({"city": "Paris", "extra": 1}, "extra"),
        ({"city": ["not", "a", "string"]}, "city"),
    ],
)
def test_invalid_args_are_rejected(args: dict, needle: str) -> None:
    with pytest.raises(InvalidToolArgs, match=needle):
        tool_from_callable(get_weather).validate(args)


def test_validated_args_call_sync_tool_in_thread() -> None:
    tool = tool_from_callable(get_weather)
    assert not tool.is_async
    kwargs = tool.validate({"city": "Paris", "unit": "fahrenheit", "days": "3"})
    assert asyncio.run(tool.call(kwargs, timeout_s=30)) == {"city": "Paris", "unit": "fahrenheit", "days": 3}


def test_sync_and_async_timeouts() -> None:
    def slow_sync() -> str:
        """Slow."""
        time.sleep(0.3)
        return "late"

    async def slow_async() -> str:
        await asyncio.sleep(5)
        return "late"

    for fn in (slow_sync, slow_async):
        tool = tool_from_callable(fn)
        with pytest.raises(TimeoutError):
            asyncio.run(tool.call({}, timeout_s=0.01))


def test_sync_tool_runs_on_the_given_pool_with_the_callers_context() -> None:
    import contextvars
    import threading
    from concurrent.futures import ThreadPoolExecutor

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")

    def where() -> str:
        """Where am I?"""
        return f"{threading.current_thread().name}:{request_id.get()}"

    async def main() -> str:
        request_id.set("r-42")
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="own-pool") as pool:
            return await tool_from_callable(where).call({}, timeout_s=5, executor=pool)

    thread, seen = asyncio.run(main()).split(":")
    assert thread.startswith("own-pool") and seen == "r-42"


def test_sync_callable_returning_an_awaitable_is_awaited() -> None:
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    def later(n: int):  # noqa: ANN202 - a plain function that hands back a coroutine
        """Double, eventually."""
        return double(n)

    tool = tool_from_callable(later)
    assert not tool.is_async
    assert asyncio.run(tool.call(tool.validate({"n": 21}), timeout_s=5)) == 42


def test_callable_object_and_explicit_name() -> None:
    class Lookup:
        async def __call__(self, key: Literal["a", "b"]) -> int:
            return 1

    tool = tool_from_callable(Lookup(), name="lookup")
    assert tool.name == "lookup" and tool.is_async
    assert tool.schema["properties"]["key"]["enum"] == ["a", "b"]


def test_a_partial_is_described_by_the_function_it_calls() -> None:
    from functools import partial

    import genroute

    @genroute.side_effect_free
    def convert(amount: int, to: str, rounding: int = 2) -> str:
        """Convert an amount."""
        return f"{amount} {to}"

    tool = tool_from_callable(partial(convert, rounding=0))
    # Before: functools' own docstring as the description, no types (so "7" reached the tool as a string),
    # a tool named "partial", and the side-effect-free mark unseen.
    assert (tool.name, tool.description, tool.side_effect_free) == ("convert", "Convert an amount.", True)
    assert tool.schema["properties"]["amount"]["type"] == "integer"
    # A keyword the partial binds is the caller's: the model is not told of it, and may not set it.
    assert "rounding" not in tool.schema["properties"]
    assert tool.validate({"amount": "7", "to": "EUR"}) == {"amount": 7, "to": "EUR"}
    with pytest.raises(InvalidToolArgs, match="rounding"):
        tool.validate({"amount": 7, "to": "EUR", "rounding": 5})
    assert tool.fn(**tool.validate({"amount": "7", "to": "EUR"})) == "7 EUR"


def test_descriptions_are_a_tools_own_docstring() -> None:
    import genroute

    class Query(BaseModel):  # no docstring: not pydantic's BaseModel's
        text: str

    class Search:
        @genroute.side_effect_free
        def __call__(self, query: str) -> str:
            """Search the index."""
            return query

    assert tool_from_callable(Query).description == ""
    tool = tool_from_callable(Search(), name="search")
    assert (tool.description, tool.side_effect_free) == ("Search the index.", True)


def test_a_parameter_named_like_a_pydantic_method_is_a_plain_argument() -> None:
    import warnings

    def export(schema: str, copy: bool = False, validate: bool = True) -> str:
        """Export a schema."""
        return schema

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic warned that "export_args" shadows BaseModel attributes
        tool = tool_from_callable(export)
    assert tool.validate({"schema": "public", "copy": True}) == {"schema": "public", "copy": True, "validate": True}


def test_untyped_parameter_accepts_anything() -> None:
    def echo(value):  # noqa: ANN001, ANN202 - deliberately untyped
        return value

    tool = tool_from_callable(echo)
    assert tool.validate({"value": [1, {"x": 2}]}) == {"value": [1, {"x": 2}]}


@pytest.mark.parametrize("bad", ["varargs", "kwargs", "recursive"])
def test_undescribable_signatures_are_config_errors(bad: str) -> None:
    def varargs(*items: int) -> None: ...
    def kwargs(**items: int) -> None: ...
    def recursive(node: Node) -> None: ...

    fn = {"varargs": varargs, "kwargs": kwargs, "recursive": recursive}[bad]
    with pytest.raises(ConfigError) as info:
        tool_from_callable(fn, field="backends.fc.tools")
    assert info.value.field == "backends.fc.tools"


def test_inline_refs_keeps_sibling_keys() -> None:
    schema = {"$defs": {"A": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/A", "description": "d"}}}
    assert inline_refs(schema) == {"properties": {"a": {"type": "string", "description": "d"}}}


def test_jsonable() -> None:
    assert jsonable(Address(street="s", city="c")) == {"street": "s", "city": "c"}
    assert jsonable(date(2026, 1, 1)) == "2026-01-01"
    assert jsonable(object()).startswith("<object object")

    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    # Text decoded with surrogateescape: no UTF-8 encoder (a provider's, an OTLP exporter's) takes it.
    assert jsonable({"caf\udce9": ["caf\udce9", ("x\udce9",)]}) == {"caf\ufffd": ["caf\ufffd", ["x\ufffd"]]}
    assert readable(RuntimeError("caf\udce9")) == "caf\ufffd"
    # One value pydantic cannot convert made the whole result its Python repr.
    assert jsonable({"when": date(2026, 1, 1), "who": [Address(street="s", city="c"), Opaque()]}) == {
        "when": "2026-01-01", "who": [{"street": "s", "city": "c"}, "opaque"]}
    # Bytes that are not UTF-8 (a file's or a response's body) did the same: that part is its str, the rest kept.
    assert jsonable({"status": 200, "body": b"\x89PNG", "name": b"caf\xc3\xa9"}) == {
        "status": 200, "body": "b'\\x89PNG'", "name": "caf\u00e9"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


_TOOLS = (tool_from_callable(get_weather), tool_from_callable(ship))


@settings(max_examples=150, deadline=None)
@given(args=st.dictionaries(st.sampled_from(["city", "unit", "days", "to", "express", "on", "x"]), json_values))
def test_any_model_arguments_are_validated_or_rejected_cleanly(args: dict) -> None:
    # Arguments come from a model (untrusted): validation either passes or raises InvalidToolArgs.
    for tool in _TOOLS:
        try:
            kwargs = tool.validate(args)
        except InvalidToolArgs:
            continue
        assert set(kwargs) == set(tool.schema["properties"])
