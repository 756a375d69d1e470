"""Scorers: how well one answer matches one record, as a number in [0, 1].

Built in: ``exact``, ``normalized_exact``, ``token_f1``, ``label_accuracy``, ``json_schema``,
``function_call`` (BFCL ``possible_answer`` semantics), ``regex`` / ``regex:PATTERN``, a custom
``module:function`` (called with ``(record, result)``), and ``judge:BACKEND`` (a configured backend grades the
answer; its cost is counted apart from the benchmarked backend's). ``auto`` picks one from the records.
"""

from __future__ import annotations

import ast
import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genroute.errors import UsageError

if TYPE_CHECKING:
    from genroute.bench.datasets import BenchRecord
    from genroute.types import GenerateResult

ScoreFn = Callable[["BenchRecord", "GenerateResult"], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def normalize(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces; ``_`` counts as a space."""
    text = text.lower().replace("_", " ")
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(record: BenchRecord) -> list[str]:
    answers = [a.get("text") for a in record.metadata.get("answers") or () if isinstance(a, dict)]
    return [a for a in answers if isinstance(a, str)] or [record.output]


def exact(record: BenchRecord, result: GenerateResult) -> float:
    """1 if the stripped answer equals the stripped gold output."""
    return float(result.text.strip() == record.output.strip())


def normalized_exact(record: BenchRecord, result: GenerateResult) -> float:
    """1 if the normalised answer equals any normalised gold answer."""
    answer = normalize(result.text)
    return float(any(answer == normalize(g) for g in _golds(record)))


def f1(prediction: str, gold: str) -> float:
    """Token F1 between two strings after normalisation."""
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(record: BenchRecord, result: GenerateResult) -> float:
    """Best token F1 of the answer against any gold answer."""
    return max(f1(result.text, g) for g in _golds(record))


def label_accuracy(record: BenchRecord, result: GenerateResult) -> float:
    """1 if the answer is the label, or names it and no other label of ``metadata.label_set``."""
    label = record.label if record.label is not None else record.output
    if not normalize(label):
        return 0.0
    if normalize(result.text) == normalize(label):
        return 1.0
    # Mentions keep "_" as a word character, so "card_arrival_date" does not mention "card_arrival".
    answer, gold = _light(result.text), _light(label)
    if not _mentions(answer, gold):
        return 0.0
    others = [_light(str(x)) for x in record.metadata.get("label_set") or () if _light(str(x)) != gold]
    # "positive, not negative" names two labels: ambiguous answers do not count.
    return float(not any(o and _mentions(answer, o) and o not in gold for o in others))


def _light(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _mentions(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


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


def json_schema(record: BenchRecord, result: GenerateResult) -> float:
    """1 if the answer is JSON valid against ``metadata.json_schema`` (or ``schema``); any JSON without one."""
    import jsonschema

    try:
        value = parse_json(result.text)
    except ValueError:
        return 0.0
    schema = record.metadata.get("json_schema") or record.metadata.get("schema")
    if schema is None:
        return 1.0
    return float(jsonschema.Draft202012Validator(schema).is_valid(value))


# -- function calls -------------------------------------------------------------------------------------

def predicted_calls(result: GenerateResult) -> list[tuple[str, dict[str, Any]]] | None:
    """Calls the answer made: the tool loop's calls, else JSON or Python call syntax in the text."""
    if result.tool_calls:
        return [(c.name, dict(c.args)) for c in result.tool_calls]
    text = result.text.strip()
    if not text:
        return []
    try:
        value = parse_json(text)
    except ValueError:
        return _python_calls(text)
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
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


def _python_calls(text: str) -> list[tuple[str, dict[str, Any]]] | None:
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


def gold_calls(record: BenchRecord) -> list[dict[str, dict[str, list[Any]]]]:
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


def _std(value: Any) -> Any:
    # BFCL's checker ignores case, spaces and some punctuation in strings.
    if isinstance(value, str):
        return re.sub(r"[ ,./\-_*^]", "", value).lower().replace("'", '"')
    if isinstance(value, list | tuple):
        return [_std(v) for v in value]
    if isinstance(value, dict):
        return {k: _std(v) for k, v in value.items()}
    return value


def _value_ok(value: Any, accepted: Sequence[Any]) -> bool:
    for option in accepted:
        if isinstance(option, dict) and isinstance(value, dict):
            if _args_ok(value, {k: v if isinstance(v, list) else [v] for k, v in option.items()}):
                return True
        elif isinstance(option, bool) or isinstance(value, bool):
            if option is value:
                return True
        elif isinstance(option, int | float) and isinstance(value, int | float):
            if float(option) == float(value):
                return True
        elif _std(option) == _std(value):
            return True
    return False


def _args_ok(args: dict[str, Any], accepted: dict[str, list[Any]]) -> bool:
    if any(name not in accepted for name in args):
        return False
    for name, options in accepted.items():
        if name not in args:
            if "" not in options:  # "" among the accepted values marks an optional argument
                return False
        elif not _value_ok(args[name], [o for o in options if o != ""] or options):
            return False
    return True


def _name_ok(name: str, gold: str) -> bool:
    # Gemini function names cannot contain dots, so a tool named math.factorial may come back as math_factorial.
    return name == gold or name.replace(".", "_") == gold.replace(".", "_")


def calls_match(calls: Sequence[tuple[str, dict[str, Any]]], golds: Sequence[dict[str, dict[str, list[Any]]]]) -> bool:
    """Whether ``calls`` match ``golds`` one to one, in any order (BFCL parallel semantics)."""
    if len(calls) != len(golds):
        return False

    def assign(i: int, used: frozenset[int]) -> bool:
        if i == len(calls):
            return True
        name, args = calls[i]
        for j, gold in enumerate(golds):
            if j in used:
                continue
            (gname, accepted), = gold.items()
            if _name_ok(name, gname) and _args_ok(args, accepted) and assign(i + 1, used | {j}):
                return True
        return False

    return assign(0, frozenset())


def function_call(record: BenchRecord, result: GenerateResult) -> float:
    """1 if the calls made match the gold calls (names and every argument among its accepted values)."""
    calls = predicted_calls(result)
    return float(calls is not None and calls_match(calls, gold_calls(record)))


def regex_scorer(pattern: str | None) -> ScoreFn:
    """A scorer: 1 if ``pattern`` (default: the record's ``output`` as a pattern) is found in the answer."""
    compiled = re.compile(pattern) if pattern is not None else None

    def regex(record: BenchRecord, result: GenerateResult) -> float:
        rx = compiled or re.compile(record.output)
        return float(rx.search(result.text) is not None)

    return regex


BUILTIN: dict[str, ScoreFn] = {
    "exact": exact,
    "normalized_exact": normalized_exact,
    "token_f1": token_f1,
    "label_accuracy": label_accuracy,
    "json_schema": json_schema,
    "function_call": function_call,
}


# -- resolving a scorer ------------------------------------------------------------------------------------

_JUDGE_PROMPT = """You grade answers. Reply with one word: yes if the answer is correct, no if it is not.

Question: {question}
Reference answer: {reference}
Answer to grade: {answer}
Is the answer correct?"""


@dataclass(frozen=True)
class Scorer:
    """A named scorer: a plain function, or a judge backend asked through the router."""

    name: str
    fn: ScoreFn | None = None
    judge: str | None = None

    async def score(self, record: BenchRecord, result: GenerateResult, router: Any = None) -> tuple[float, float]:
        """``(score, judge cost in USD)`` for one answer; raises whatever the scorer or the judge raised."""
        if self.fn is not None:
            value = self.fn(record, result)
            return float(value), 0.0
        if router is None:
            raise UsageError("a judge scorer needs the router", field="scorer")
        from genroute.types import GenerateRequest

        prompt = _JUDGE_PROMPT.format(question=record.input, reference=record.label or record.output,
                                      answer=result.text)
        # A judge failure propagates: the runner records it as a JudgeError instead of a silent 0.
        verdict = await router.agenerate(GenerateRequest(input=prompt, backend=self.judge, task="judge"))
        return float(normalize(verdict.text).startswith("yes")), verdict.cost_usd


def resolve_scorer(spec: str | None, records: Sequence[BenchRecord] = ()) -> Scorer:
    """The scorer ``spec`` names (``None``/``auto``: chosen from ``records``); ``UsageError`` if unknown."""
    if spec is None or spec == "auto":
        spec = default_scorer(records)
    if spec in BUILTIN:
        return Scorer(spec, BUILTIN[spec])
    if spec == "regex" or spec.startswith("regex:"):
        pattern = spec.partition(":")[2] or None
        try:
            return Scorer(spec, regex_scorer(pattern))
        except re.error as exc:
            raise UsageError(f"bad regex {pattern!r}: {exc}", field="scorer") from None
    if spec.startswith("judge:"):
        backend = spec.partition(":")[2]
        if not backend:
            raise UsageError("judge needs a backend: judge:NAME", field="scorer")
        return Scorer(spec, judge=backend)
    if ":" in spec:
        from genroute.config import import_object

        fn = import_object(spec, field="scorer")
        if not callable(fn):
            raise UsageError(f"{spec!r} is not callable", field="scorer")
        return Scorer(spec, fn)
    known = ", ".join([*BUILTIN, "regex[:PATTERN]", "judge:BACKEND", "module:function", "auto"])
    raise UsageError(f"unknown scorer {spec!r} (known: {known})", field="scorer")


def default_scorer(records: Sequence[BenchRecord]) -> str:
    """The natural scorer for a dataset: labels → label_accuracy, gold calls → function_call, else token_f1."""
    if not records:
        return "normalized_exact"
    first = records[0]
    if first.label is not None:
        return "label_accuracy"
    if "possible_answer" in first.metadata or "tools" in first.metadata:
        return "function_call"
    if "json_schema" in first.metadata or "schema" in first.metadata:
        return "json_schema"
    return "token_f1"
