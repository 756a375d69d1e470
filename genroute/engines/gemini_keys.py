"""Which API key a Gemini engine sends, and the SDK's own claim about it kept from misleading its reader.

google-genai logs "Both GOOGLE_API_KEY and GEMINI_API_KEY are set. Using GOOGLE_API_KEY." whenever a client is
made while both variables are set, even when it is given its key (or Vertex AI credentials) and reads neither. A
genroute engine always gives it one: the key of its ``api_key_env`` (``GEMINI_API_KEY`` by default), else
``GOOGLE_API_KEY``. So that line is dropped for the clients genroute makes, and the engine says itself which key
it sends when the two variables differ.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google import genai

_LOG = logging.getLogger("genroute.engines.gemini")
#: The SDK's logger and the start of its line (google-genai ``_api_client.get_env_api_key``).
_SDK_LOGGER = "google_genai._api_client"
_BOTH_SET = "Both GOOGLE_API_KEY and GEMINI_API_KEY are set"
#: The SDK's own fallback variable, read when the engine's ``api_key_env`` is not set.
FALLBACK_ENV = "GOOGLE_API_KEY"

_making: ContextVar[bool] = ContextVar("genroute_making_client", default=False)


class _GivenKeyLine(logging.Filter):
    """Drops the SDK's "Using GOOGLE_API_KEY" line while genroute makes a client it gave a key of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_making.get() and record.getMessage().startswith(_BOTH_SET))


_FILTER = _GivenKeyLine()


def env_key(engine: str, variable: str) -> str | None:
    """The key an engine reads from the environment: ``variable``, else ``GOOGLE_API_KEY``; said (once per call,
    which the engine makes once) when both are set and differ, since the SDK's own line would name the other."""
    key = os.environ.get(variable) or None
    fallback = os.environ.get(FALLBACK_ENV) or None
    if key and fallback and key != fallback:
        _LOG.warning("engines.%s sends the key in %s (its api_key_env); %s is set too and is not used",
                     engine, variable, FALLBACK_ENV)
    return key or fallback


def make_client(**kwargs: Any) -> genai.Client:
    """``genai.Client(**kwargs)`` for a client given its key or Vertex AI credentials, without the SDK's line
    naming a key it does not use."""
    from google import genai

    logger = logging.getLogger(_SDK_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    token = _making.set(True)
    try:
        return genai.Client(**kwargs)
    finally:
        _making.reset(token)
