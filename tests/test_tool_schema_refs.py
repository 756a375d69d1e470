"""Every ``$ref`` in a tool schema genroute sends (to Gemini, or into the local engine's grammar) resolves."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from google.genai import types
from pydantic import BaseModel, Field

from genroute.engines.local_prompt import function_call_schema
from genroute.errors import ConfigError, UsageError
from genroute.router.router import Router
from genroute.testing import GeminiTestServer
from genroute.testing.replies import field_of
from genroute.tools import tool_from_callable

from .conftest import Otel, gemini_config


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    bark: str


Pet = Annotated[Cat | Dog, Field(discriminator="kind")]


class Address(BaseModel):
    city: str


class Owner(BaseModel):
    address: Address
    pet: Pet


class Node(BaseModel):
    children: list[Node] = []


def adopt(owner: Owner, pets: list[Pet], discriminator: str = "") -> str:
    """Adopt pets (a parameter named discriminator is a plain argument)."""
    return "ok"


def refs(node: Any) -> list[str]:
    """Every ``$ref`` and discriminator ``mapping`` target in ``node``."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.append(node["$ref"])
        mapping = node.get("discriminator", {}).get("mapping") if isinstance(node.get("discriminator"), dict) else None
        if isinstance(mapping, dict):
            found += [v for v in mapping.values() if isinstance(v, str)]
        for value in node.values():
            found += refs(value)
    elif isinstance(node, list):
        for item in node:
            found += refs(item)
    return found


def dangling(schema: dict[str, Any]) -> list[str]:
    """The refs in ``schema`` that do not point at a part of it."""
    bad = []
    for ref in refs(schema):
        node: Any = schema
        for part in ref.removeprefix("#").strip("/").split("/") if ref.startswith("#") else [None]:
            if part is None or not isinstance(node, dict) or part not in node:
                bad.append(ref)
                break
            node = node[part]
    return bad


def test_a_discriminated_union_keeps_no_mapping_into_removed_defs() -> None:
    # pydantic's discriminator.mapping pointed at #/$defs/Cat after the $defs were inlined away.
    schema = tool_from_callable(adopt).declaration().parameters_json_schema
    assert isinstance(schema, dict) and "$defs" not in schema
    assert refs(schema) == [] and dangling(schema) == []
    pet = schema["properties"]["owner"]["properties"]["pet"]
    assert pet["discriminator"] == {"propertyName": "kind"}
    assert [b["properties"]["kind"]["const"] for b in pet["oneOf"]] == ["cat", "dog"]
    assert schema["properties"]["discriminator"]["type"] == "string"


def test_a_recursive_model_is_refused_at_build() -> None:
    def walk(tree: Node) -> int:
        return 0

    with pytest.raises(ConfigError, match="recursive model 'Node'"):
        tool_from_callable(walk)


async def test_the_schema_sent_to_gemini_has_no_dangling_ref(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.reply_text("Adopted.")
    config = gemini_config(gemini_server, kind="function_calling", tools=["adopt"])
    async with Router.from_config(config, tools={"adopt": adopt}, **otel.providers) as router:
        await router.agenerate("Adopt a cat.")
    (body,) = [r.body for r in gemini_server.requests if r.action == "generateContent"]
    (tool,) = field_of(body, "tools")
    (declared,) = field_of(tool, "functionDeclarations")
    schema = field_of(declared, "parametersJsonSchema")
    assert schema["properties"]["pets"]["items"]["oneOf"] and dangling(schema) == []


def test_the_local_grammar_schema_has_no_dangling_ref() -> None:
    # A caller's pydantic schema with $defs, nested under "args", had its refs point at the call schema's root.
    decl = types.FunctionDeclaration(name="adopt", parameters_json_schema=Owner.model_json_schema())
    other = types.FunctionDeclaration(name="noop", parameters_json_schema={"type": "object", "properties": {}})
    schema = function_call_schema([decl, other])
    assert dangling(schema) == [] and refs(schema) == []
    args = schema["oneOf"][0]["properties"]["args"]
    assert args["properties"]["address"]["properties"]["city"]["type"] == "string"


def test_a_recursive_schema_in_the_local_grammar_is_a_usage_error() -> None:
    decl = types.FunctionDeclaration(name="walk", parameters_json_schema=Node.model_json_schema())
    with pytest.raises(UsageError) as caught:
        function_call_schema([decl])
    assert caught.value.field == "tools.walk.parameters_json_schema"


#: A hand-written tool schema, draft-07 style (refs under ``definitions``), in BFCL's dialect ("dict"); one of its
#: parameters is named ``definitions`` too, and is a parameter, not a keyword.
DRAFT7 = {"type": "dict", "required": ["origin"], "properties": {
    "origin": {"$ref": "#/definitions/Place"}, "stops": {"type": "array", "items": {"$ref": "#/definitions/Place"}},
    "definitions": {"type": "string", "description": "glossary terms"}},
    "definitions": {"Place": {"type": "dict", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PLACE = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _record(parameters: dict[str, Any]) -> Any:
    from genroute.bench.datasets import BenchRecord

    return BenchRecord(id="r1", input="Plan a trip.", metadata={"tools": [{"name": "plan", "parameters": parameters}]})


async def test_a_hand_written_schema_with_draft7_refs_is_sent_inlined(gemini_server: GeminiTestServer) -> None:
    # Sent as written, its "#/definitions/Place" refs were left for Gemini, whose schema subset has $defs only.
    from genroute.bench.record_tools import answering_router, placeholder

    gemini_server.reply_text("Planned.")
    config = gemini_config(gemini_server, kind="function_calling", tools=["placeholder"], max_steps=1,
                           on_max_steps="answer")
    async with Router.from_config(config, tools={"placeholder": placeholder}) as router, \
            answering_router(router, _record(DRAFT7), "chat", "chat") as answering:
        await answering.agenerate("Plan a trip.")
    (body,) = [r.body for r in gemini_server.requests if r.action == "generateContent"]
    (declared,) = field_of(field_of(body, "tools")[0], "functionDeclarations")
    schema = field_of(declared, "parametersJsonSchema")
    assert refs(schema) == [] and "definitions" not in schema
    assert schema["properties"]["origin"] == PLACE and schema["properties"]["stops"]["items"] == PLACE
    assert schema["properties"]["definitions"] == {"type": "string", "description": "glossary terms"}


def test_the_local_grammar_gets_draft7_refs_inlined() -> None:
    draft7 = {**DRAFT7, "type": "object"}
    draft7["definitions"] = {"Place": {**PLACE, "properties": {"city": {"$ref": "#/definitions/City"}}},
                             "City": {"type": "string"}}
    schema = function_call_schema([types.FunctionDeclaration(name="plan", parameters_json_schema=draft7)])
    assert dangling(schema) == [] and refs(schema) == []
    args = schema["properties"]["args"]
    assert args["properties"]["stops"]["items"] == PLACE and "definitions" not in args


@pytest.mark.parametrize("ref", ["#/definitions/Nowhere", "https://example.org/place.json", "#/required/0"])
def test_a_ref_that_does_not_resolve_is_refused_naming_the_tool_and_the_ref(ref: str) -> None:
    from genroute.bench.record_tools import declarations

    broken = {"type": "object", "properties": {"origin": {"$ref": ref}}, "required": ["origin"]}
    with pytest.raises(UsageError) as caught:  # before: sent with a ref that dangles, into the grammar too
        function_call_schema([types.FunctionDeclaration(name="plan", parameters_json_schema=broken)])
    assert caught.value.field == "tools.plan.parameters_json_schema" and repr(ref) in str(caught.value)
    with pytest.raises(UsageError) as caught:
        declarations(_record(broken))
    assert caught.value.field == "metadata.tools[0].parameters" and "'plan'" in str(caught.value)
    assert repr(ref) in str(caught.value)


def test_a_recursive_draft7_ref_is_refused() -> None:
    tree = {"type": "object", "properties": {"root": {"$ref": "#/definitions/Node"}},
            "definitions": {"Node": {"type": "object", "properties": {"kids": {"type": "array",
                                                                               "items": {"$ref": "#/definitions/Node"}}}}}}
    with pytest.raises(UsageError, match="recursive model 'Node'"):
        function_call_schema([types.FunctionDeclaration(name="walk", parameters_json_schema=tree)])


class _Session:
    """An object no JSON can hold."""


def lookup(query: str, session: object = _Session(), limit=5, hint=None) -> str:  # noqa: ANN001 - untyped on purpose
    """Look something up."""
    return query


async def test_a_default_that_is_not_json_is_left_out_with_one_genroute_warning(
        gemini_server: GeminiTestServer, caplog: pytest.LogCaptureFixture) -> None:
    """What Gemini receives: the parameter, optional, without the default; said once, naming the tool and parameter,
    not by pydantic's warning. An untyped parameter is sent with no type (any value), its JSON default kept."""
    import logging
    import warnings

    gemini_server.reply_text("Found.")
    config = gemini_config(gemini_server, kind="function_calling", tools=["lookup"])
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="genroute"):
        warnings.simplefilter("always")
        async with Router.from_config(config, tools={"lookup": lookup}) as router:
            await router.agenerate("Look up cats.")
    assert [str(w.message) for w in caught if "JSON" in str(w.message)] == []  # no pydantic warning
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith("genroute")]
    assert warning.startswith("tool 'lookup': the default of parameter 'session' (_Session) is not JSON")
    (body,) = [r.body for r in gemini_server.requests if r.action == "generateContent"]
    (declared,) = field_of(field_of(body, "tools")[0], "functionDeclarations")
    schema = field_of(declared, "parametersJsonSchema")
    assert schema["required"] == ["query"]
    assert schema["properties"]["session"] == {"title": "Session"}  # any value, no default
    assert schema["properties"]["limit"] == {"default": 5, "title": "Limit"}  # untyped: any value
    assert schema["properties"]["hint"] == {"default": None, "title": "Hint"}
