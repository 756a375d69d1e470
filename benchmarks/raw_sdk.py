"""The raw google-genai contender of the benchmarks that compare genroute with the SDK, like for like.

genroute's Gemini engine gives the SDK an aiohttp session that skips aiohttp's per-request proxy and netrc reads
where the environment holds neither (``genroute.engines.gemini_sessions``). A raw contender on the SDK's own
session pays those reads (~250 µs of CPU a call, in worker threads) and would make genroute look that much cheaper
than its own code is; ``client`` makes the raw contender on the session the engine would use here (its own kind
where the environment holds nothing, else the SDK's, as the engine does), so what is left between the two is
genroute's. ``throughput.py`` and ``sync_path.py`` also show the SDK's quick start as it is.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

class _SdkSession:
    """Stands for the SDK's own sessions, which the client closes itself."""

    async def close(self) -> None:
        return None


def client(base_url: str, *, loop: asyncio.AbstractEventLoop | None = None, api_key: str = "bench-key",
           **http: Any) -> tuple[Any, Any]:
    """A google-genai client whose async calls go through a session like the engine's, and that session (close it
    on its loop). The session belongs to ``loop`` (made there), else to the loop running now; ``http``: more
    ``HttpOptions`` fields."""
    from google import genai
    from google.genai import types

    from genroute.engines.gemini_sessions import environment_applies, new_session, supported

    if environment_applies() or not supported():  # the engine uses the SDK's own session here: so does raw
        print("(raw contender on the SDK's own session, as the engine's here: a proxy or netrc in the environment, "
              "or no aiohttp)", file=sys.stderr)
        return genai.Client(api_key=api_key, http_options=types.HttpOptions(base_url=base_url, **http)), \
            _SdkSession()
    if loop is not None:
        async def made() -> Any:
            return new_session()

        session = loop.run_until_complete(made())
    else:
        session = new_session()
    options = types.HttpOptions(base_url=base_url, aiohttp_client=session, **http)
    return genai.Client(api_key=api_key, http_options=options), session
