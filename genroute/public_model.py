"""The base of every pydantic model genroute lets a user build: bad input is a genroute error naming the field.

Building a ``PublicModel`` (``Model(...)``, ``model_validate``, ``model_validate_json``, ``model_validate_strings``)
with bad input raises ``UsageError`` (``ConfigError`` for a ``ConfigModel``, a configuration's section) whose
``field`` is the dotted path of the first invalid field and whose message names the others, worded as a config
file's errors are (``genroute.config_errors.field_error``), with pydantic's ``ValidationError`` as ``__cause__``.
Input values are hidden from that cause's text (``hide_input_in_errors``: a refused setting may be a key) and
secret-shaped text is masked in the message.

Only the build the user called converts: pydantic validates a nested model inside the outer one without calling
the nested model's ``__init__`` (marked as pydantic's own, so pydantic does not call it for a nested model as it
would a custom one) or ``model_validate``, so the error names the path from the model the user built
(``telemetry.capture_max_chars`` of a ``RouterConfig``), and a request's validation costs no more than before.
``model_copy(update=...)`` and ``model_construct`` validate nothing (pydantic's own behaviour), so raise nothing.

genroute's own readers word an error under a name of theirs (a config section's path, a file and line, a
command-line flag): they validate with ``genroute.config_errors.pydantic_validated``, which raises pydantic's ``ValidationError`` as
before.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from genroute.config_errors import field_error
from genroute.errors import ConfigError, UsageError


class PublicModel(BaseModel):
    """A model a user may build: bad input raises ``UsageError`` naming the field (``ConfigModel``: ``ConfigError``)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    #: The error bad input raises.
    _refusal: ClassVar[type[UsageError]] = UsageError

    def __init__(self, /, **data: Any) -> None:
        try:
            self.__pydantic_validator__.validate_python(data, self_instance=self)
        except ValidationError as exc:
            raise field_error(exc, None, self._refusal) from exc

    # pydantic calls a model's own __init__ to build it nested in another: this one is pydantic's, converting nothing.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, **options: Any) -> Self:
        """``obj`` validated as this model; ``UsageError`` (``ConfigError``) naming the first invalid field."""
        try:
            return super().model_validate(obj, **options)
        except ValidationError as exc:
            raise field_error(exc, None, cls._refusal) from exc

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **options: Any) -> Self:
        """The JSON document ``json_data`` validated as this model; ``UsageError`` (``ConfigError``) naming the first
        invalid field."""
        try:
            return super().model_validate_json(json_data, **options)
        except ValidationError as exc:
            raise field_error(exc, None, cls._refusal) from exc

    @classmethod
    def model_validate_strings(cls, obj: Any, **options: Any) -> Self:
        """``obj`` (strings) validated as this model; ``UsageError`` (``ConfigError``) naming the first invalid
        field."""
        try:
            return super().model_validate_strings(obj, **options)
        except ValidationError as exc:
            raise field_error(exc, None, cls._refusal) from exc


class ConfigModel(PublicModel):
    """A configuration section a user may build: bad input raises ``ConfigError`` naming the field."""

    _refusal: ClassVar[type[UsageError]] = ConfigError

