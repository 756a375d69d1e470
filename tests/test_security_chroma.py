"""Errors from a Chroma server never carry its credentials: not in the message, the chain, a span or a log.

A real ``chroma run`` server sits behind the loopback fault proxy (``chroma_fixtures``): the client sends its
real headers through it, and the proxy answers chosen requests with error bodies that echo the auth token and a
URL with credentials, as a server or an auth proxy in front of it may. The Chroma client, its error parsing and
genroute's mapping all run for real; the scrubbing is the Gemini path's (``genroute.engines.errors``).
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from pathlib import Path

import pytest

from genroute import Router
from genroute.errors import BackendUnavailable, ConfigError, GenrouteError
from genroute.knowledge import aingest, build_store
from genroute.testing import GeminiTestServer

from .chroma_fixtures import ChromaFaultProxy, chroma_proxy, chroma_server  # noqa: F401
from .conftest import Otel, gemini_config

TOKEN = "chroma-tok-5ecret-7f3a9c"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-Chroma-Token": "x-chroma-7f3a9c2b"}
URL = "https://admin:hunter2pw@chroma.internal:8000/api/v2"
SECRETS = (TOKEN, "x-chroma-7f3a9c2b", "hunter2pw")
#: Error bodies that echo the credentials: (status, body, the genroute error it must become).
ECHOES = [
    (401, {"error": "AuthError", "message": f"token Bearer {TOKEN} is not valid here"}, ConfigError),
    (500, {"error": "InternalError", "message": f"upstream {URL} refused x-chroma-7f3a9c2b"}, BackendUnavailable),
    (502, f"<html>Bad Gateway. Request headers: Authorization: Bearer {TOKEN}; via {URL}</html>".encode(),
     BackendUnavailable),  # not Chroma's JSON: the client raises a bare Exception with the body
    (400, {"error": "InvalidArgumentError", "message": f"bad include from {TOKEN}"}, GenrouteError),
]


def _leaks(exc: BaseException) -> list[str]:
    """The secrets found anywhere in ``exc``: its text, its traceback with the chain, any chained exception's args
    and attributes."""
    text = "".join(traceback.format_exception(exc))
    seen, stack = set(), [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        text += repr(item.args) + repr({k: v for k, v in vars(item).items() if isinstance(v, str | dict | list)})
        stack += [item.__cause__, item.__context__]
    return [s for s in SECRETS if s in text]


def _docs(root: Path) -> list[Path]:
    root.mkdir()
    path = root / "tides.txt"
    path.write_text("Tide pools hold anemones and small crabs between the rocks at low tide.", encoding="utf-8")
    return [path]


@pytest.mark.chroma_server
async def test_echoed_credentials_are_scrubbed_from_chroma_server_errors(chroma_proxy: ChromaFaultProxy,
                                                                         tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    store = build_store({"host": "127.0.0.1", "port": chroma_proxy.port, "headers": HEADERS}, engines={})
    collection = f"secrets-{os.getpid()}"
    await aingest(store, _docs(tmp_path / "docs"), collection=collection, chunk_tokens=30, overlap=6)
    for status, body, kind in ECHOES:
        chroma_proxy.fail(status, body, path=r"/query$")
        with caplog.at_level(logging.DEBUG), pytest.raises(GenrouteError) as caught:
            await store.query(collection, "tide pools", kind="documents", k=1)
        assert isinstance(caught.value, kind), (status, caught.value)
        assert "127.0.0.1" in str(caught.value) and "***" in str(caught.value)  # still says where and what
        assert _leaks(caught.value) == [], (status, str(caught.value))
        logging.getLogger("test").exception("as an application would log it", exc_info=caught.value)
    assert not [s for s in SECRETS if s in caplog.text]
    assert len(await store.query(collection, "tide pools", kind="documents", k=1)) == 1  # the headers still work
    await store.aclose()


@pytest.mark.chroma_server
async def test_a_rag_rung_failing_on_chroma_leaks_nothing_to_the_result_or_spans(
        chroma_proxy: ChromaFaultProxy, gemini_server: GeminiTestServer, tmp_path: Path, otel: Otel) -> None:
    config = gemini_config(gemini_server)
    config["knowledge"] = {"host": "127.0.0.1", "port": chroma_proxy.port, "headers": HEADERS}
    collection = f"secrets-rag-{os.getpid()}"
    config["backends"]["rag"] = {"kind": "rag", "engine": "gemini", "model": "gemini-2.5-flash",
                                 "collection": collection, "max_distance": None}
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "rag"}, {"backend": "chat"}]}
    router = Router.from_config(config, **otel.providers)
    try:
        await aingest(router.resources.knowledge, _docs(tmp_path / "docs"), collection=collection, chunk_tokens=30,
                      overlap=6)
        chroma_proxy.fail(500, {"error": "InternalError", "message": f"{URL} rejected Bearer {TOKEN}"},
                          path=r"/query$")
        result = await router.agenerate("what lives in tide pools?")
    finally:
        await router.aclose()
    assert result.backend == "chat"  # the RAG rung failed on Chroma and the cascade fell through
    failed = result.decision.rungs_tried[0]
    assert failed.error_type == "BackendUnavailable" and "***" in (failed.error or "")
    recorded = json.dumps([{**dict(s.attributes or {}), "events": [dict(e.attributes or {}) for e in s.events]}
                           for s in otel.exporter.get_finished_spans()], default=str)
    assert not [s for s in SECRETS if s in recorded + result.model_dump_json()]


def test_secrets_of_configured_headers() -> None:
    from genroute.errors import header_secrets

    assert header_secrets({"Authorization": "Bearer abcdef", "X-Tenant": "acme-corp", "X": "a"}) == (
        "Bearer abcdef", "abcdef", "acme-corp")


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer ab\ncd-secret"}, {"X Tenant": "cd-secret"},
                                     {"X-Tenant": "cd\x00secret"}])
def test_a_header_no_http_client_sends_is_refused_when_configured(headers: dict[str, str]) -> None:
    # It was accepted, and every call then failed as "cannot reach chroma server ...: Illegal header value
    # b'Bearer ab\n***'" (a retryable outage, with part of the secret shown); a gemini engine's headers alike.
    config = {"engines": {"g": {"kind": "gemini", "api_key": "k" * 20}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}}}
    for where, built in (("knowledge.headers", {**config, "knowledge": {"host": "127.0.0.1", "headers": headers}}),
                         ("engines.g.headers", {**config, "engines": {"g": {**config["engines"]["g"],
                                                                            "headers": headers}}})):
        with pytest.raises(ConfigError) as err:
            Router.from_config(built).close()
        assert err.value.field == where and "cd-secret" not in str(err.value) and "secret" not in err.value.message
