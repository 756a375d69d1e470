"""``error_at`` and ``not_a``: the one wording of "this line of this file is not a WHAT, at this key" that the
outcome store, the bench's results and feedback use."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import AfterValidator, BaseModel, ValidationError

from genroute.config_errors import error_at, not_a, pydantic_validated


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be > 0")
    return value


class _Side(BaseModel):
    score: float
    weight: Annotated[float, AfterValidator(_positive)] | str = 1.0


class _Row(BaseModel):
    outcomes: dict[str, _Side]


def _first_error(raw: object) -> object:
    with pytest.raises(ValidationError) as info:
        pydantic_validated(_Row, raw)
    return info.value.errors()[0]


def test_the_key_at_fault_is_dotted_without_pydantics_validator_names() -> None:
    assert error_at(_first_error({"outcomes": {"b": {"score": "x"}}})) == "outcomes.b.score"
    # A union member's location holds the name of pydantic's validator function: no key of the file.
    assert error_at(_first_error({"outcomes": {"b": {"score": 1, "weight": -1.0}}})) == "outcomes.b.weight"
    # A key that only starts like one (a function-calling backend) is a key: it was left out ("outcomes.score").
    assert error_at(_first_error({"outcomes": {"function-calling": {"score": "x"}}})) == (
        "outcomes.function-calling.score")


def test_a_line_that_is_not_a_row_names_its_place_and_key() -> None:
    assert not_a("r.jsonl:3", "a results row", _first_error({"outcomes": {"b": {"score": "x"}}})) == (
        "r.jsonl:3: not a results row (outcomes.b.score: Input should be a valid number, unable to parse string as "
        "a number)")
    assert not_a("r.jsonl:3", "a results row", _first_error([])) == (
        "r.jsonl:3: not a results row (Input should be a valid dictionary or instance of _Row)")
