"""The cost audit's two sides: what the loopback server billed on the wire, and every place genroute reports cost.

``wire_cost`` prices what the server sent back (each answered request's ``usageMetadata``, at the list prices
below, written out here rather than read from genroute's table) plus genroute's documented estimate for requests
the provider took but whose usage never reached the client. ``Sinks`` reads the same request's cost from the call
spans, the root span, the result (and its rungs), the budget ledger, the ``genroute.cost`` metric and the outcome
record, so that a test can say: the one total, once, everywhere.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

FLASH = "gemini-2.5-flash"

#: USD per token, from the Gemini Developer API pricing page (standard tier, prompts <= 200k tokens): text (and
#: image, video), and audio where the page prices it apart (2.5 Pro has one price for every modality).
PRICES = {
    "gemini-2.5-flash": {"input": 0.30e-6, "output": 2.50e-6, "cached": 0.03e-6, "audio": 1.00e-6,
                         "cached_audio": 0.10e-6},
    "gemini-2.5-flash-lite": {"input": 0.10e-6, "output": 0.40e-6, "cached": 0.01e-6, "audio": 0.30e-6,
                              "cached_audio": 0.03e-6},
    "gemini-2.5-pro": {"input": 1.25e-6, "output": 10.00e-6, "cached": 0.125e-6},
}


def usage_cost(model: str, usage: Mapping[str, Any]) -> float:
    """What Gemini bills for one ``usageMetadata``: uncached prompt at input, cached at the cached rate, answer and
    thoughts at output; the audio part of each (``promptTokensDetails`` and ``cacheTokensDetails``, the prompt's
    counting the cached tokens too) at the audio rates."""
    price = PRICES[model]
    prompt = usage.get("promptTokenCount", 0) + usage.get("toolUsePromptTokenCount", 0)
    cached = usage.get("cachedContentTokenCount", 0)
    output = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
    audio, cached_audio = _audio(usage.get("promptTokensDetails")), _audio(usage.get("cacheTokensDetails"))
    return ((prompt - cached - (audio - cached_audio)) * price["input"] + (cached - cached_audio) * price["cached"]
            + (audio - cached_audio) * price.get("audio", price["input"])
            + cached_audio * price.get("cached_audio", price["cached"]) + output * price["output"])


def _audio(details: Any) -> int:
    return sum(d["tokenCount"] for d in details or () if d["modality"] == "AUDIO")


def answer(text: str, usage: Mapping[str, int], *, model: str = "gemini-2.5-flash",
           parts: list[dict[str, Any]] | None = None, finish: str | None = "STOP") -> dict[str, Any]:
    """A ``generateContent`` body (or one SSE event) with exactly this usage."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts or [{"text": text}]}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
    if usage:
        body["usageMetadata"] = dict(usage)
    return body


def tokens(prompt: int, output: int, **extra: int) -> dict[str, int]:
    """A ``usageMetadata`` with a total, as Gemini sends it."""
    usage = {"promptTokenCount": prompt, "candidatesTokenCount": output, **extra}
    usage["totalTokenCount"] = prompt + output + extra.get("thoughtsTokenCount", 0)
    return usage


def prompt_estimate(server: Any, index: int, model: str = "gemini-2.5-flash") -> float:
    """genroute's documented estimate for a request the provider took but never reported usage for: its input, at
    about four characters a token (the loopback server counts a prompt the same way)."""
    from genroute.testing.replies import prompt_tokens

    return prompt_tokens(server.requests[index].body) * PRICES[model]["input"]


@dataclass
class Sinks:
    """One request's cost as each part of genroute reports it."""

    call_spans: float
    root: float
    result: float | None
    rungs: float | None
    ledger: float
    metric: float
    record: float | None = None

    def assert_all(self, expected: float, *, rel: float = 1e-6) -> None:
        """Every sink says ``expected`` (one total, counted once)."""
        seen = {k: v for k, v in vars(self).items() if v is not None}
        # The ledger counts integer nano-USD (genroute.policies.budget.UNITS_PER_USD): each settle rounds.
        want = {k: pytest.approx(expected, rel=rel, abs=1e-9 if k == "ledger" else 1e-12) for k in seen}
        assert seen == want


def call_cost(otel: Any, *, names: Iterable[str] = ("generate_content", "embeddings")) -> float:
    """The cost on the model-call spans (``generate_content``, ``embeddings``) outside shadow runs."""
    spans = otel.spans()
    shadow_ids = {s.context.span_id for s in spans if s.name.startswith("genroute.shadow")}
    total = 0.0
    for span in spans:
        if span.name.split(" ")[0] not in names or _under(span, shadow_ids, spans):
            continue
        total += float(span.attributes.get("gen_ai.usage.cost.amount", 0.0))
    return total


def _under(span: Any, ancestors: set[int], spans: list[Any]) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    parent = span.parent
    while parent is not None:
        if parent.span_id in ancestors:
            return True
        above = by_id.get(parent.span_id)
        parent = above.parent if above is not None else None
    return False


def metric_cost(otel: Any) -> float:
    """The ``genroute.cost`` counter's total over every attribute set."""
    metric = otel.metrics().get("genroute.cost")
    return 0.0 if metric is None else sum(p.value for p in metric.data.data_points)


def ledger_spent(router: Any, key: str = "*") -> float:
    """The budget's spend now (asked from a thread of its own, so that sync and async tests alike can call it)."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(asyncio.run(router.admission.budget().usage(key))))
    thread.start()
    thread.join()
    assert out["reserved"] == 0.0, out
    return float(out["spent"])


def sinks(otel: Any, router: Any, outcome: Any, *, record: float | None = None) -> Sinks:
    """Read every sink for the one request ``outcome`` (a ``GenerateResult`` or the error it raised)."""
    (root,) = otel.spans("genroute.generate")
    decision = getattr(outcome, "decision", None)
    rungs = getattr(outcome, "attempts", None) if decision is None else decision.rungs_tried
    return Sinks(
        call_spans=call_cost(otel), root=float(root.attributes["gen_ai.usage.cost.amount"]),
        result=getattr(outcome, "cost_usd", None),
        rungs=None if rungs is None else sum(r.cost_usd for r in rungs),
        ledger=ledger_spent(router), metric=metric_cost(otel), record=record)


def budget_policy(inner: Mapping[str, Any], costs: Mapping[str, float], budget_usd: float = 1.0) -> dict[str, Any]:
    """A global budget around ``inner`` (its ledger is the audit's ledger sink)."""
    return {"kind": "budget", "inner": dict(inner), "per": "global", "budget_usd": budget_usd, "costs": dict(costs)}


def audit_config(server: Any, state: Mapping[str, Any], tmp_path: Any, inner: Mapping[str, Any] | None = None,
                 costs: Mapping[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """A router config on ``server`` under a global budget (``inner``: by default the one ``chat`` backend), with
    the given ``state`` store and an outcome store in ``tmp_path``."""
    from .conftest import gemini_config

    config = gemini_config(server)
    config["policy"] = budget_policy(inner or {"kind": "static", "backend": "chat"}, costs or {"chat": 0.001})
    config["state"] = dict(state)
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db")}
    config.update(extra)
    return config


def answered(router: Any, text: str, *, stream: bool) -> Any:
    """The result of ``text`` through ``router``: generated, or streamed to its last chunk."""
    if stream:
        *_, last = router.stream(text, timeout_s=20)
        return last.result
    return router.generate(text, timeout_s=20)


def served_record_cost(router: Any, result: Any) -> float:
    """The outcome record's figure for the request (feedback writes it): its served side plus what deciding cost."""
    record = router.feedback(result, score=1.0)
    side = record.outcomes[result.backend]
    return float(side.cost_usd) + float(record.metadata.get("routing_cost_usd", 0.0))
