"""Validation of ``Router.feedback`` arguments (a typed ``UsageError`` naming the field)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from genroute.bounds import Number, as_number, is_real
from genroute.config_errors import error_at, pydantic_validated, validator_message
from genroute.errors import UsageError
from genroute.public_model import PublicModel
from genroute.types import GenerateResult


class Feedback(PublicModel):
    """How a served answer turned out."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    result: GenerateResult | str
    score: Number | None = Field(default=None, ge=0.0, le=1.0)
    label: str | None = Field(default=None, min_length=1)
    input: str | None = Field(default=None, min_length=1)

    @field_validator("score", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        """A number as ``Number`` reads it (a numpy float is one, "0.5" is none), refused in words of a score."""
        number = as_number(value)
        if isinstance(number, bool):  # True is not a score of 1.0 by accident
            raise ValueError("score must be a number in [0, 1], not a bool")
        if number is not None and not is_real(number):
            raise ValueError(f"score must be a number in [0, 1], not {number!r:.40}")
        if isinstance(number, float) and not math.isfinite(number):  # before the bounds: NaN is not "above 1"
            raise ValueError("score must be a finite number")
        return number

    @field_validator("result")
    @classmethod
    def _id(cls, value: GenerateResult | str) -> GenerateResult | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("an outcome id must not be blank")
        return value

    @model_validator(mode="after")
    def _something(self) -> Feedback:
        if self.score is None and self.label is None:
            raise ValueError("give a score, a label or both")
        return self

    @classmethod
    def parse(cls, result: Any, **fields: Any) -> Feedback:
        """Validated feedback; ``UsageError`` naming the first bad field."""
        try:
            return pydantic_validated(cls, {"result": result, **fields})
        except ValidationError as exc:
            error = exc.errors()[0]
            raise UsageError(validator_message(error), field=(error_at(error) or "score").split(".")[0]) from None
