"""Per-record tools: function-calling datasets (BFCL-style) bring each record's own tool declarations.

A record whose ``metadata.tools`` is a list of declarations (``{"name", "description"?, "parameters"?}``,
parameters in JSON Schema or BFCL's dialect of it) is answered by the ``function_calling`` backends with
exactly those tools instead of their configured ones. The tools are schema-only stubs: the model sees each
declaration as written, every call it makes is recorded in the result's ``tool_calls`` (which the
``function_call`` scorer compares with the gold calls), and the stub answers ``{"status": "ok"}`` without
checking the arguments — judging them is the scorer's job. Configure such a backend with ``max_steps: 1``
and ``on_max_steps: answer`` to score the first turn's calls, as BFCL does; its configured ``tools`` are
placeholders (any tool will do, e.g. ``genroute.bench.record_tools:placeholder``). A declaration the model
could not be given (a name it refuses, two names that become one, parameters that are no object, a ``$ref`` that
does not resolve within them) fails its record's row with a ``UsageError`` naming ``metadata.tools[i]``. Local
``$ref``s (``#/$defs/...`` or draft-07's ``#/definitions/...``) are inlined, as for a Python tool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, create_model

from genroute.errors import UsageError
from genroute.tools import TOOL_NAME_RULE, Tool, inline_refs, is_tool_name

if TYPE_CHECKING:
    from genroute.backends.base import Backend
    from genroute.bench.datasets import BenchRecord
    from genroute.router.router import Router

#: BFCL writes Python type names where JSON Schema has its own, and Java's in its Java and JavaScript categories:
#: mapped as its own harness maps them (``bfcl_eval/constants/type_mappings.py``, ``GORILLA_TO_OPENAPI``), so that
#: the model is given a schema it takes (llama.cpp's grammar refused ``HashMap``, failing every such record).
_TYPES = {"dict": "object", "float": "number", "tuple": "array", "int": "integer", "str": "string",
          "bool": "boolean", "list": "array", "byte": "integer", "short": "integer", "long": "integer",
          "Bigint": "integer", "double": "number", "char": "string", "String": "string", "ArrayList": "array",
          "Array": "array", "Queue": "array", "Stack": "array", "HashMap": "object", "Hashtable": "object",
          "Boolean": "boolean", "Any": "any"}


async def placeholder() -> dict[str, str]:
    """A do-nothing tool to put in a function-calling backend's allowlist when records bring their tools."""
    return {"status": "ok"}


def declarations(record: BenchRecord) -> list[dict[str, Any]] | None:
    """The record's tool declarations, or None when its metadata declares none."""
    tools = record.metadata.get("tools")
    if not isinstance(tools, list) or not tools or not all(isinstance(t, dict) for t in tools):
        return None
    seen: dict[str, Mapping[str, Any]] = {}
    for i, decl in enumerate(tools):
        _check(record, i, decl, seen)
    return tools


def _check(record: BenchRecord, i: int, decl: Mapping[str, Any], seen: dict[str, Mapping[str, Any]]) -> None:
    """``UsageError`` naming ``metadata.tools[i]`` if the model could not be given declaration ``decl``; checked
    here, so that the record is named, not the backend whose placeholder tool it replaces."""
    name = decl.get("name")
    if not isinstance(name, str) or not name:
        raise UsageError(f"record {record.id}: tool declaration {i} has no name", field=f"metadata.tools[{i}]")
    if not is_tool_name(tool_name(name)):
        raise UsageError(f"record {record.id}: tool name {name!r} is not one a model accepts: {TOOL_NAME_RULE}",
                         field=f"metadata.tools[{i}].name")
    first = seen.setdefault(tool_name(name), decl)
    if first != decl:  # the model could see and call only one of them
        raise UsageError(f"record {record.id}: tools {first['name']!r} and {name!r} are both declared as "
                         f"{tool_name(name)!r}", field=f"metadata.tools[{i}].name")
    parameters = decl.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise UsageError(f"record {record.id}: the parameters of tool {name!r} are not a JSON schema object",
                         field=f"metadata.tools[{i}].parameters")
    try:
        inline_refs(dict(parameters))  # as ``stub_tool`` will, so that a ref it cannot resolve names the record
    except ValueError as exc:
        raise UsageError(f"record {record.id}: tool {name!r}: {exc}", field=f"metadata.tools[{i}].parameters") \
            from None


def json_schema(node: Any) -> Any:
    """A declaration's parameter schema as JSON Schema (BFCL's ``dict``/``float``/``tuple``/``any`` and Java type
    names mapped)."""
    if not isinstance(node, Mapping):
        return node
    out = dict(node)
    kind = out.get("type")
    if isinstance(kind, str):
        if _TYPES.get(kind, kind) == "any":
            del out["type"]
        else:
            out["type"] = _TYPES.get(kind, kind)
    if isinstance(out.get("properties"), Mapping):  # keys are parameter names, not schema keywords
        out["properties"] = {name: json_schema(spec) for name, spec in out["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), Mapping):
            out[key] = json_schema(out[key])
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(out.get(key), list):
            out[key] = [json_schema(s) for s in out[key]]
    return out


def tool_name(name: str) -> str:
    """The declared name as a Gemini function name (no dots); the scorer matches either spelling."""
    return name.replace(".", "_")


def stub_tool(decl: Mapping[str, Any]) -> Tool:
    """A schema-only tool: the model sees ``decl``; a call is acknowledged, its arguments left to the scorer."""
    name = tool_name(decl["name"])
    # Sent self-contained, as a Python tool's is: its local refs (#/definitions/... too) inlined.
    schema = json_schema(inline_refs(dict(decl.get("parameters") or {"type": "object", "properties": {}})))
    # Any arguments pass: an invalid call is still a call the scorer must see and mark wrong.
    args = create_model(f"{name}_args", __config__=ConfigDict(extra="allow"))
    return Tool(name=name, description=str(decl.get("description") or ""), fn=placeholder, schema=schema,
                args_model=args)


@asynccontextmanager
async def answering_router(router: Router, record: BenchRecord, target: str,
                           policy_target: str) -> AsyncIterator[Router]:
    """``router``, or for a record that declares tools, a router like it whose function-calling backends use
    them (only when ``target`` is such a backend or the policy).

    That router is ``router.replacing(...)``: the same policy, validators, telemetry, engines, knowledge store
    and pricing, nothing rebuilt per record. The swapped-in backends close on exit.
    """
    calling = [n for n, b in router.backends.items() if getattr(b, "kind", None) == "function_calling"]
    swap = calling if target == policy_target else [n for n in calling if n == target]
    decls = declarations(record) if swap else None  # a backend that takes no tools answers any record
    if decls is None or not swap:
        yield router
        return
    from genroute.runtime.resources import Resources

    tools = {tool_name(d["name"]): stub_tool(d) for d in decls}
    shared = router.resources
    resources = Resources(shared.engines, tools=dict.fromkeys(tools, placeholder), knowledge=shared.knowledge,
                          pricing=shared.pricing)
    own = {n: _with_tools(router.backends[n], tools, resources) for n in swap}
    try:
        yield router.replacing(own)
    finally:
        for backend in own.values():
            await backend.aclose()


def _with_tools(backend: Backend, tools: Mapping[str, Tool], resources: Any) -> Backend:
    config = backend.config.model_copy(update={"tools": tuple(tools)})
    clone = type(backend)(backend.name, config, resources)
    # The backend describes tools from Python signatures; these come as JSON schemas (names need not be
    # identifiers), so the schema-only tools replace the placeholders it was built with. It reads
    # ``tools`` when it builds its request config, which it has not done yet.
    clone.tools = dict(tools)  # type: ignore[attr-defined]
    return clone

