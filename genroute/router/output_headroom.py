"""What a request's own ``max_output_tokens`` above its backend's could add to an attempt's cost.

A budget holds each attempt at an estimate of the backend's cost (``costs``, ``max_cost_per_request`` or a stats
file), made under the backend's own settings. A request that raises the backend's ``max_output_tokens``
(``GenerateRequest.generation``) may be answered at up to that many more output tokens: the hold adds them, at the
model's highest output rate, so that the estimate stays an upper bound where it was one. Gemini counts a thinking
model's thought tokens within ``maxOutputTokens`` (billed at the output rate), so the extra covers them too; a
``thinking_budget`` is no bound (the model may overrun it) and adds nothing. A request that clears the backend's limit
(``None``: the model's own, which genroute does not know) could add nothing to the hold, so under a budget it is
refused before anything is sent or held (``refuse_unbounded_output``).

A request's ``history`` (the conversation's earlier turns) is sent before whatever the backend sends, on each of its
calls: the hold adds its input tokens (estimated, four characters a token) at the model's highest input rate, once
a call (a function-calling backend's ``max_steps`` + 1 calls at most).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genroute.admission import is_budget
from genroute.errors import UsageError

if TYPE_CHECKING:
    from genroute.admission import Admission
    from genroute.backends.base import Backend
    from genroute.runtime.pricing import Pricing
    from genroute.types import RequestGeneration, Turn


def refuse_unbounded_output(generation: RequestGeneration, admission: Admission | None) -> None:
    """``UsageError`` naming ``generation.max_output_tokens`` when ``generation`` clears the backend's output limit
    (``None``) and ``admission`` has a budget: its hold could add nothing for up to the model's whole output, by which
    each such request in flight could overspend the budget. Without a budget, or with a number, nothing is refused."""
    if admission is None or generation.max_output_tokens is not None or \
            "max_output_tokens" not in generation.model_fields_set:
        return
    if any(is_budget(gate) for gate in admission.gates):
        raise UsageError("a budget cannot hold a request with no output limit: give a number",
                         field="generation.max_output_tokens")


def raised_output_usd(backend: Backend | None, pricing: Pricing, generation: RequestGeneration) -> float:
    """USD of the output tokens ``generation`` allows beyond ``backend``'s own ``max_output_tokens``: 0 when it sets
    none, lowers it, or the backend sets none (the model's own limit, which a request cannot exceed, was in force)."""
    wanted = generation.max_output_tokens
    own = None if backend is None else backend.config.generation.max_output_tokens
    if backend is None or wanted is None or own is None or wanted <= own:
        return 0.0
    price = pricing.charged_at(backend.engine, backend.billed_as(pricing)[0])[0]
    if price is None:  # a free (local) model
        return 0.0
    return (wanted - own) * max((price.output, *(tier.output for tier in price.tiers))) / 1e6  # USD per 1M tokens


def history_input_usd(backend: Backend | None, pricing: Pricing, history: list[Turn]) -> float:
    """USD of ``history``'s input tokens, sent again on each of the calls ``backend`` may make: 0 for a free (local)
    model or an unknown backend."""
    from genroute.runtime.billing import estimate_tokens

    if backend is None:
        return 0.0
    price = pricing.charged_at(backend.engine, backend.billed_as(pricing)[0])[0]
    if price is None:
        return 0.0
    calls = getattr(backend.config, "max_steps", 0) + 1  # a tool loop sends the history with every model turn
    tokens = estimate_tokens(sum(len(turn.text) for turn in history)) * calls
    return tokens * max((price.input, *(tier.input for tier in price.tiers))) / 1e6  # USD per 1M tokens
