"""A health check's probe of a dependency that hangs does not hold the process's exit: the probe is left to end on a
daemon thread of genroute's own (``genroute-probe``), not on a thread the interpreter (or ``asyncio.run``) joins."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from genroute.knowledge import aload_examples
from genroute.testing import GeminiTestServer

from .chroma_fixtures import ChromaServer, Knowledge, chroma_server  # noqa: F401
from .conftest import gemini_config
from .tcp_proxy import TcpProxy
from .test_icl import EXAMPLES, write_examples

_SCRIPT = textwrap.dedent("""
    import asyncio, json, sys, threading, time

    from genroute import Router

    config, how = json.loads(sys.argv[1]), sys.argv[2]

    def left() -> list[str]:
        # what the interpreter's exit joins: every thread alive that is not a daemon, but this one
        return sorted(t.name for t in threading.enumerate() if t.is_alive() and not t.daemon
                      and t is not threading.main_thread())

    async def check(router: Router) -> object:
        assert (await router.ahealth(timeout_s=30)).ready  # a connection open: the next probe's request goes on it
        print("ready", flush=True)
        sys.stdin.readline()  # Chroma's replies are held from now on
        return await router.ahealth(timeout_s=0.5)

    async def checked() -> tuple[object, float]:
        async with await Router.acreate(config) as router:
            health = await check(router)
        return health, time.time()

    if how == "sync":
        with Router.from_config(config) as router:
            health = router._portal.call(check(router))
        held, closed = left(), time.time()
    else:
        health, closed = asyncio.run(checked())  # its end waits for the loop's default executor's threads
        held = left()
    print(json.dumps({"ready": health.ready, "errors": {d.name: d.error for d in health.dependencies if not d.ok},
                      "held": held, "probes": [t.name for t in threading.enumerate() if t.name == "genroute-probe"],
                      "closed": closed}), flush=True)
""")


def icl_behind_proxy(gemini_server: GeminiTestServer, chroma_server: ChromaServer,  # noqa: F811
                     tmp_path: Path, name: str, *, timeout_s: float) -> tuple[dict[str, Any], TcpProxy]:
    """A router config with an ICL backend whose examples (a collection named after ``name``) sit on a real
    ``chroma run``, read through a proxy that can hold its replies (Chroma accepts, and its answers never come);
    the caller closes the proxy."""
    knowledge = Knowledge("server", {"host": "127.0.0.1", "port": chroma_server.port})
    collection = knowledge.name(name)
    asyncio.run(aload_examples(knowledge.store(), [write_examples(tmp_path / "ex.jsonl", EXAMPLES[:4])],
                               collection=collection))
    proxy = TcpProxy(chroma_server.port)
    config = gemini_config(gemini_server)
    config["knowledge"] = {"host": "127.0.0.1", "port": proxy.port, "timeout_s": timeout_s}
    config["backends"]["icl"] = {"kind": "icl", "engine": "gemini", "model": "gemini-2.5-flash",
                                 "collection": collection}
    return config, proxy


@pytest.mark.parametrize("how", ["sync", "async"])
def test_an_app_exiting_while_chroma_hangs_does_not_wait_for_the_health_probe(gemini_server: GeminiTestServer,
                                                                              chroma_server: ChromaServer,  # noqa: F811
                                                                              tmp_path: Path, how: str) -> None:
    """The probe of an ICL backend's Chroma collection ran on the loop's default executor: one left hanging (a Chroma
    server that accepts and never answers) was joined at interpreter exit, and by ``asyncio.run``'s end, bounded only
    by Chroma's HTTP timeout (knowledge.timeout_s, 30 s): an app that checked its health and exited waited that long.
    The probe now runs on a daemon thread of genroute's own, which nothing joins. The test prints how long the process
    took to end once its router was closed."""
    config, proxy = icl_behind_proxy(gemini_server, chroma_server, tmp_path, "exit", timeout_s=30)
    root = Path(__file__).resolve().parent.parent
    app = subprocess.Popen([sys.executable, "-c", _SCRIPT, json.dumps(config), how], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                           env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert app.stdout is not None and app.stdout.readline() == "ready\n"
        proxy.hold_replies()  # Chroma accepts, and its answers never come
        out, err = app.communicate("go\n", timeout=120)
        exited = time.time()
    finally:
        app.kill()
        proxy.release_replies()
        proxy.close()
    assert app.returncode == 0, err
    said = json.loads(out)
    print(f"{how}: the process ended {exited - said['closed']:.2f} s after its router closed")
    assert not said["ready"] and said["errors"] == {"backends.icl": "no answer in 0.5 s"}
    assert said["probes"] == ["genroute-probe"]  # the hung probe, still running: a daemon
    assert said["held"] == []  # nothing the exit joins
