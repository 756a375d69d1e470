"""The ``function_call`` scorer: BFCL's AST checker semantics (Python), written for genroute's records.

What it follows (BFCL ``eval_checker/ast_eval/ast_checker.py``, the commit the shared data came from):

- every call is checked against the record's declaration (``metadata.tools``): the schema's ``required``
  arguments must be present, even when ``""`` is among their accepted values; an argument the schema or the
  answer key does not know is wrong; an argument left out is fine only when ``""`` is among its accepted values;
- types as BFCL's Python mapping (``string``, ``integer``, ``float``, ``boolean``, ``array``, ``tuple``,
  ``dict``, ``any`` as string; JSON Schema's ``number``/``object`` read as float/dict): an int is accepted for a
  float, a float for an integer is a type error, and so is a wrong type inside a list (one level deep);
  a value of the answer key's own type counts as a "variable" and is compared as is;
- strings compared after BFCL's standardisation (spaces and ``,./-_*^`` removed, lower case, ``'`` as ``"``),
  also inside lists and dicts; an explicit ``""`` is an accepted value like any other;
- dict arguments match one accepted dict, list-of-dict arguments one accepted list, dict by dict in order;
- several calls are matched the way BFCL does: each gold call in turn takes the first unused answer call
  that passes (greedy, not an optimal assignment); the counts must be equal;
- a record with no gold call (irrelevance) is right exactly when no call was made, and an answer that is not
  a call at all (a refusal in prose, ``{}``, other JSON) counts as no call;
- dotted names (``math.factorial``) in one form per model setting: calls made through the tool loop must use
  the underscored form the tools were declared under (``record_tools.tool_name``), calls written in the text
  the declared form.

Records without declarations are checked against the answer key alone (types taken from the accepted values).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from genroute.errors import UsageError

if TYPE_CHECKING:
    from genroute.bench.datasets import BenchRecord
    from genroute.types import GenerateResult

Call = tuple[str, dict[str, Any]]
Gold = dict[str, dict[str, list[Any]]]

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list,
                           "tuple": list, "dict": dict, "any": str, "number": float, "object": dict}
_STD = re.compile(r"[ ,./\-_*^]")


def parse_json(text: str) -> Any:
    """The JSON value in ``text`` (code fences and surrounding prose tolerated); ``ValueError`` if none."""
    text = _FENCE.sub("", text.strip())
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if starts:
        try:
            return json.JSONDecoder().raw_decode(text[min(starts):])[0]
        except json.JSONDecodeError:
            pass
    raise ValueError("no JSON value found")


# -- reading the answer --------------------------------------------------------------------------------

def predicted_calls(result: GenerateResult) -> list[Call] | None:
    """Calls the answer made: the tool loop's calls, else JSON or Python call syntax in the text; None if the
    text is not a call list."""
    if result.tool_calls:
        return [(c.name, dict(c.args)) for c in result.tool_calls]
    text = result.text.strip()
    if not text:
        return []
    try:
        value = parse_json(text)
    except ValueError:
        return _python_calls(text)
    calls = []
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict):
            return None
        if "name" in item:
            args = item.get("arguments", item.get("args", {}))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    return None
            calls.append((str(item["name"]), args if isinstance(args, dict) else {}))
        elif len(item) == 1 and isinstance(next(iter(item.values())), dict):  # {"fn": {args}}
            name, args = next(iter(item.items()))
            calls.append((name, args))
        else:
            return None
    return calls


def _python_calls(text: str) -> list[Call] | None:
    try:
        tree = ast.parse(_FENCE.sub("", text).strip(), mode="eval").body
    except SyntaxError:
        return None
    nodes = tree.elts if isinstance(tree, ast.List | ast.Tuple) else [tree]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        except ValueError:
            return None
        calls.append((ast.unparse(node.func), args))
    return calls


def gold_calls(record: BenchRecord) -> list[Gold]:
    """Accepted calls: BFCL ``possible_answer`` (``[{name: {arg: [accepted...]}}]``), else from ``output``."""
    possible = record.metadata.get("possible_answer")
    if possible is not None:
        return list(possible)
    try:
        calls = parse_json(record.output) if record.output.strip() else []
    except ValueError:
        raise UsageError(f"record {record.id}: output is not a JSON call list", field="scorer") from None
    calls = calls if isinstance(calls, list) else [calls]
    return [{c["name"]: {k: [v] for k, v in (c.get("arguments") or c.get("args") or {}).items()}} for c in calls]


# -- checking one argument -----------------------------------------------------------------------------

def standardize(text: str) -> str:
    """BFCL's string standardisation: no spaces or ``,./-_*^``, lower case, single quotes as double."""
    return _STD.sub("", text).lower().replace("'", '"')


def _answer_type(options: Sequence[Any]) -> type | None:
    return next((type(o) for o in options if o != ""), None)


def _type_ok(value: Any, options: Sequence[Any], expected: type | None, item_type: type | None) -> tuple[bool, bool]:
    """``(valid, is_variable)`` as BFCL's type checker decides them."""
    answer_type = _answer_type(options)
    if expected is None:
        if answer_type is None:
            return True, False
        expected = answer_type
    variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if item_type is None:
            return True, variable
        for option in options:
            items_ok = True
            if isinstance(option, list):
                inner = _answer_type(option)
                items_ok = isinstance(value, list) and all(  # an array's value: item_type is set for arrays only
                    type(v) is item_type or (inner is not None and type(v) is inner) for v in value)
            if items_ok:
                return True, variable
        return False, False
    if answer_type is not None and type(value) is answer_type:
        return True, True
    return False, False


def _std_option(option: Any) -> Any:
    return standardize(option) if isinstance(option, str) else option


def _dict_ok(value: Any, options: Sequence[Any]) -> bool:
    if not isinstance(value, dict):
        return False
    for option in options:
        if option == "" or not isinstance(option, dict):
            continue
        if all(k in option and _std_option(v) in [_std_option(o) for o in _as_list(option[k])]
               for k, v in value.items()) and all(k in value or "" in _as_list(o) for k, o in option.items()):
            return True
    return False


def _as_list(options: Any) -> list[Any]:
    return options if isinstance(options, list) else [options]


def _list_of_dicts_ok(value: list[Any], options: Sequence[Any]) -> bool:
    for option in options:
        if not isinstance(option, list | str) or len(value) != len(option):
            continue
        if all(_dict_ok(v, [o]) for v, o in zip(value, option, strict=True)):
            return True
    return False


def _list_ok(value: list[Any], options: Sequence[Any]) -> bool:
    wanted = [_std_option(v) for v in value]
    # BFCL iterates each accepted value, so an accepted "" stands for the empty list.
    return any(isinstance(o, list | str) and wanted == [_std_option(x) for x in o] for o in options)


def _argument_ok(value: Any, options: list[Any], spec: Mapping[str, Any] | None) -> bool:
    kind = (spec or {}).get("type")
    expected = _TYPES.get(kind) if isinstance(kind, str) else None
    item_type = None
    if kind in ("array", "tuple") and isinstance((spec or {}).get("items"), Mapping):
        item_kind = spec["items"].get("type")  # type: ignore[index]
        item_type = _TYPES.get(item_kind) if isinstance(item_kind, str) else None
    if kind == "tuple" and isinstance(value, tuple):
        value = list(value)
    if expected is float and type(value) is int:
        value = float(value)  # Python's int-to-float promotion, as BFCL allows
    valid, variable = _type_ok(value, options, expected, item_type)
    if not valid:
        return False
    kind_of = expected or _answer_type(options)
    if not variable:
        if kind_of is dict:
            return _dict_ok(value, options)
        if kind_of is list and item_type is dict:
            return _list_of_dicts_ok(value, options)
        if kind_of is str:
            return standardize(value) in [standardize(o) for o in options if isinstance(o, str)]
        if kind_of is list:
            return _list_ok(value, options)
    return value in options


# -- checking calls ------------------------------------------------------------------------------------

def _declaration(decls: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((d for d in decls if d.get("name") == name), None)


def call_ok(call: Call, gold: Gold, decl: Mapping[str, Any] | None, *, underscored: bool) -> bool:
    """Whether one call matches one gold call (BFCL's simple-function check)."""
    (gold_name, accepted), = gold.items()
    name, args = call
    if name != (gold_name.replace(".", "_") if underscored else gold_name):
        return False
    params = (decl or {}).get("parameters") or {}
    props = params.get("properties") if decl is not None else None
    if any(p not in args for p in params.get("required") or ()):
        return False
    for param, value in args.items():
        if param not in accepted or (props is not None and param not in props):
            return False
        if not _argument_ok(value, _as_list(accepted[param]), (props or {}).get(param)):
            return False
    return all(p in args or "" in _as_list(options) for p, options in accepted.items())


def calls_match(calls: Sequence[Call], golds: Sequence[Gold], decls: Sequence[Mapping[str, Any]] = (), *,
                underscored: bool = False) -> bool:
    """BFCL's order-free matching: each gold call takes the first unused call that passes; counts must match."""
    if len(calls) != len(golds):
        return False
    used: set[int] = set()
    for gold in golds:
        decl = _declaration(decls, next(iter(gold)))
        match = next((i for i, c in enumerate(calls)
                      if i not in used and call_ok(c, gold, decl, underscored=underscored)), None)
        if match is None:
            return False
        used.add(match)
    return True


def function_call(record: BenchRecord, result: GenerateResult) -> float:
    """1 if the calls made match the gold calls by BFCL's AST rules; irrelevance records: 1 if no call."""
    golds = gold_calls(record)
    calls = predicted_calls(result)
    if not golds:
        return float(not calls)  # None (not a call: prose, other JSON) or [] both mean "no call"
    if calls is None:
        return 0.0
    decls = record.metadata.get("tools")
    decls = [d for d in decls if isinstance(d, Mapping)] if isinstance(decls, list) else []
    return float(calls_match(calls, golds, decls, underscored=bool(result.tool_calls)))
