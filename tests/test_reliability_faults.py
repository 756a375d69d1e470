"""Faults on the wire: every request ends in a result or a typed error within its deadline; no hang.

Each fault is injected by the loopback Gemini server in front of the real google-genai client, through
all four entry points (``generate``, ``agenerate``, ``stream``, ``astream``). A fault injected once is
retried away; a fault that persists ends in a typed ``GenrouteError``. A stream cut after its first
chunk is never passed off as a complete answer: the ``done`` chunk never arrives. A server that goes
silent mid-answer (connection open, nothing more sent) is cut off at the request's deadline.

Where a fault never stops, the request must also end within its deadline: its elapsed time is held to
``timeout_s + SLACK_S``. That is a correctness bound with fixed, generous slack for a busy 2-core machine
(thread hand-offs, client teardown), not a performance assertion; ``HANG_CAP_S`` only stops a hung test.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from genroute import BackendUnavailable, DeadlineExceeded, GenrouteError, Router, StreamInterrupted
from genroute.testing import Fault, GeminiTestServer

from .conftest import gemini_config

MODES = ("generate", "agenerate", "stream", "astream")
DEADLINE_S = 10.0  # generous: the shared 2-core machine is often loaded
HANG_CAP_S = DEADLINE_S + 30.0  # far beyond any legitimate finish: only a hang can reach it
SLACK_S = 3.0  # past its deadline a request may take this long to unwind and report; never longer
ANSWER = "alpha beta gamma delta"


@pytest.fixture(autouse=True, scope="module")
def _sdk_imported() -> None:
    """Import google-genai before any request is timed.

    The engine imports the SDK on its first request; that import (1-4 s on a loaded 2-core machine) runs
    synchronously on the event loop, where no deadline can interrupt it. It is a once-per-process cost,
    not part of any request these tests judge.
    """
    from google import genai  # noqa: F401


@dataclass
class Outcome:
    """How one request ended: its result (final chunk for streams), its error, and the chunks seen."""

    result: Any = None
    error: BaseException | None = None
    chunks: list[Any] = field(default_factory=list)
    elapsed_s: float = 0.0  # from the call until its result or error reached the caller

    @property
    def done_seen(self) -> bool:
        return any(c.done for c in self.chunks)


async def _async_call(router: Router, mode: str, timeout_s: float) -> Outcome:
    out = Outcome()
    started = time.monotonic()
    try:
        if mode == "agenerate":
            out.result = await router.agenerate("hi", timeout_s=timeout_s)
        else:
            async for chunk in router.astream("hi", timeout_s=timeout_s):
                out.chunks.append(chunk)
            out.result = out.chunks[-1].result if out.chunks and out.chunks[-1].done else None
    except Exception as exc:  # recorded, then judged by the test
        out.error = exc
    out.elapsed_s = time.monotonic() - started
    return out


def _sync_call(router: Router, mode: str, timeout_s: float, out: Outcome) -> None:
    started = time.monotonic()
    try:
        if mode == "generate":
            out.result = router.generate("hi", timeout_s=timeout_s)
        else:
            for chunk in router.stream("hi", timeout_s=timeout_s):
                out.chunks.append(chunk)
            out.result = out.chunks[-1].result if out.chunks and out.chunks[-1].done else None
    except Exception as exc:
        out.error = exc
    out.elapsed_s = time.monotonic() - started


def call(router_config: dict[str, Any], mode: str, timeout_s: float = DEADLINE_S) -> Outcome:
    """Run one request in ``mode`` under a hard cap; fail the test if it hangs."""
    if mode in ("agenerate", "astream"):
        async def main() -> Outcome:
            async with Router.from_config(router_config) as router:
                return await asyncio.wait_for(_async_call(router, mode, timeout_s), HANG_CAP_S)
        try:
            return asyncio.run(main())
        except TimeoutError:
            pytest.fail(f"{mode} hung past {HANG_CAP_S}s")
    out = Outcome()
    router = Router.from_config(router_config)
    worker = threading.Thread(target=_sync_call, args=(router, mode, timeout_s, out), daemon=True)
    worker.start()
    worker.join(HANG_CAP_S)
    if worker.is_alive():
        pytest.fail(f"{mode} hung past {HANG_CAP_S}s")
    router.close()
    return out


def assert_within_deadline(out: Outcome, timeout_s: float, what: str) -> None:
    """The request ended (result or error) no later than its deadline plus the fixed slack."""
    assert out.elapsed_s <= timeout_s + SLACK_S, (
        f"{what}: ended {out.elapsed_s:.1f}s after the call, past its {timeout_s}s deadline + {SLACK_S}s")


def assert_cut_short(out: Outcome, what: str) -> None:
    """A request that failed: no result, no ``done`` chunk, and StreamInterrupted exactly when output was sent.

    Once a chunk has reached the caller nothing may be retried or fallen back to, so the error must say
    the answer was interrupted; before that, it must not claim so.
    """
    assert out.result is None and not out.done_seen, f"{what}: a failed request was returned as complete"
    assert isinstance(out.error, GenrouteError), f"{what}: {out.error!r}"
    if out.chunks:
        assert isinstance(out.error, StreamInterrupted), f"{what}: output was sent, yet {out.error!r}"
    else:
        assert not isinstance(out.error, StreamInterrupted), f"{what}: nothing was sent, yet {out.error!r}"


def _streamed_text(out: Outcome) -> str:
    return "".join(c.text for c in out.chunks if not c.done)


# (id, fault) pairs: injected once, each is retried away and the answer arrives intact.
TRANSIENT = [
    ("429-retry-after", Fault.status(429, retry_after=0.05)),
    ("500", Fault.status(500)),
    ("503", Fault.status(503)),
    ("slow-past-timeout", Fault.delay(30)),
    ("connection-reset", Fault.reset()),
    ("malformed-json", Fault.malformed_json()),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "fault"), TRANSIENT, ids=[n for n, _ in TRANSIENT])
def test_a_transient_fault_is_retried_and_the_answer_arrives_intact(gemini_server, mode, name, fault):
    gemini_server.fault(fault)
    gemini_server.reply_text(ANSWER, usage=(5, 4), chunks=3)
    config = gemini_config(gemini_server)
    if name == "slow-past-timeout":
        config["engines"]["gemini"]["timeout_s"] = 2.0  # per attempt: the slow attempt times out, the retry answers
    out = call(config, mode)
    assert out.error is None, f"{name}/{mode}: {out.error!r}"
    assert_within_deadline(out, DEADLINE_S, f"{name}/{mode}")
    assert out.result.text == ANSWER
    if mode in ("stream", "astream"):
        assert _streamed_text(out) == ANSWER and out.chunks[-1].done
    if name == "slow-past-timeout":  # on a loaded machine the good retry may itself time out once more
        assert len(gemini_server.requests) >= 2
    else:
        assert len(gemini_server.requests) == 2  # the faulted attempt, then the good one


# (id, fault, error types allowed): the fault never stops, so the request must end in a typed error. Retries
# with backoff may or may not reach the 2 s deadline on a loaded machine; a slow answer always does.
_GIVEN_UP = (BackendUnavailable, DeadlineExceeded)
PERSISTENT = [
    ("429-retry-after", Fault.status(429, retry_after=0.05), _GIVEN_UP),
    ("500", Fault.status(500), _GIVEN_UP),
    ("503", Fault.status(503), _GIVEN_UP),
    ("slow-past-deadline", Fault.delay(30), (DeadlineExceeded,)),
    ("connection-reset", Fault.reset(), (BackendUnavailable,)),
    ("malformed-json", Fault.malformed_json(), (BackendUnavailable,)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "fault", "errors"), PERSISTENT, ids=[n for n, *_ in PERSISTENT])
def test_a_persistent_fault_ends_in_a_typed_error_within_the_deadline(gemini_server, mode, name, fault, errors):
    gemini_server.fault(fault, times=50)
    out = call(gemini_config(gemini_server), mode, timeout_s=2.0)
    assert_within_deadline(out, 2.0, f"{name}/{mode}")
    assert not out.chunks  # nothing was streamed: every attempt failed before its first chunk
    assert_cut_short(out, f"{name}/{mode}")
    assert isinstance(out.error, errors), f"{name}/{mode}: {out.error!r}"


#: Each fault with the request deadline that leaves room for a second attempt on a loaded machine: an error status is
#: retried after a 0.05-0.2 s backoff; the slow fault only once its first attempt's 1 s timeout has passed (with a 2 s
#: deadline the first attempt, sent late by a loaded machine, left no time for a second to reach the server).
NEVER_ENDING = [
    ("503", Fault.status(503), 2.0),
    ("429-retry-after", Fault.status(429, retry_after=0.05), 2.0),
    ("slow-past-timeout", Fault.delay(30), 6.0),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "fault", "deadline_s"), NEVER_ENDING, ids=[n for n, *_ in NEVER_ENDING])
def test_retries_that_could_go_on_for_ever_stop_at_the_request_deadline(gemini_server, mode, name, fault, deadline_s):
    gemini_server.fault(fault, times=10_000)
    config = gemini_config(gemini_server)
    # Attempts are no bound here: only the request's deadline can end it.
    config["engines"]["gemini"]["retry"] = {"attempts": 10_000, "initial_backoff_s": 0.05, "max_backoff_s": 0.2,
                                            "jitter_s": 0.0}
    config["engines"]["gemini"]["timeout_s"] = 1.0  # per attempt, so the slow fault is retried too
    out = call(config, mode, timeout_s=deadline_s)
    assert_within_deadline(out, deadline_s, f"{name}/{mode}")
    assert_cut_short(out, f"{name}/{mode}")
    assert isinstance(out.error, DeadlineExceeded), f"{name}/{mode}: {out.error!r}"
    assert isinstance(out.error.__cause__, BackendUnavailable | None), repr(out.error.__cause__)
    assert len(gemini_server.requests) >= 2  # it did retry, and the deadline, not the attempt count, ended it


CUTS = [
    ("cut-connection", Fault.cut_stream(after_chunks=1)),
    ("error-event-mid-stream", Fault.status(500, after_chunks=1)),
    ("malformed-event-mid-stream", None),  # built in the test: a good event, then invalid JSON
]


@pytest.mark.parametrize("mode", ["stream", "astream"])
@pytest.mark.parametrize(("name", "fault"), CUTS, ids=[n for n, _ in CUTS])
def test_a_stream_cut_mid_way_is_never_returned_as_complete(gemini_server, mode, name, fault):
    if fault is None:
        first = {"candidates": [{"content": {"role": "model", "parts": [{"text": "alpha "}]}}]}
        gemini_server.reply_json([first, b'{"candidates": [{"content": {"parts": [{"te'])
    else:
        gemini_server.fault(fault)
        gemini_server.reply_text(ANSWER, usage=(5, 4), chunks=3)
    gemini_server.reply_text("a retry must not happen after output was sent")
    out = call(gemini_config(gemini_server), mode)
    sent = _streamed_text(out)
    assert sent and ANSWER.startswith(sent) and sent != ANSWER  # a prefix, never passed off as the whole
    assert_cut_short(out, f"{name}/{mode}")  # so the error is StreamInterrupted, and no done chunk came
    assert_within_deadline(out, DEADLINE_S, f"{name}/{mode}")
    assert len(gemini_server.requests) == 1


@pytest.mark.parametrize("mode", ["generate", "agenerate"])
def test_a_body_cut_mid_way_is_retried_never_parsed_as_a_short_answer(gemini_server, mode):
    gemini_server.fault(Fault.cut_stream(after_chunks=1))
    gemini_server.reply_text(ANSWER, usage=(5, 4))
    gemini_server.reply_text(ANSWER, usage=(5, 4))
    out = call(gemini_config(gemini_server), mode)
    assert out.error is None and out.result.text == ANSWER
    assert len(gemini_server.requests) == 2


@pytest.mark.parametrize("mode", MODES)
def test_a_closed_port_is_a_typed_error_not_a_hang(gemini_server, mode):
    config = gemini_config(gemini_server)
    gemini_server.stop()  # nothing listens on the port any more: connections are refused
    out = call(config, mode)
    assert isinstance(out.error, BackendUnavailable), repr(out.error)
    assert_within_deadline(out, DEADLINE_S, mode)
    assert_cut_short(out, mode)


def test_a_server_restarted_under_a_router_fails_requests_while_down_and_answers_after(gemini_server):
    # The router's pooled, kept-alive connections to the old server are gone with it: while it is down each entry
    # point fails with BackendUnavailable, and once it is back on its port the same router answers again.
    config = gemini_config(gemini_server)
    port = gemini_server.port
    with Router.from_config(config) as router:

        async def both() -> list[Any]:
            return [await router.agenerate("hi"), [c async for c in router.astream("hi")][-1].result]

        assert router.generate("hi").text and all(r.text for r in asyncio.run(both()))  # connections kept alive
        gemini_server.stop()
        with pytest.raises(BackendUnavailable):
            router.generate("hi", timeout_s=DEADLINE_S)
        with pytest.raises(BackendUnavailable):
            list(router.stream("hi", timeout_s=DEADLINE_S))
        with GeminiTestServer(port=port) as again:
            again.reply_text(ANSWER)
            assert router.generate("hi").text == ANSWER
            assert all(r.text for r in asyncio.run(both()))
            assert len(again.requests) == 3


@pytest.mark.parametrize("mode", MODES)
def test_a_retry_after_beyond_the_deadline_ends_the_request_instead_of_sleeping_past_it(gemini_server, mode):
    gemini_server.fault(Fault.status(429, retry_after=120), times=5)
    gemini_server.reply_text(ANSWER)
    out = call(gemini_config(gemini_server), mode, timeout_s=DEADLINE_S)
    assert_within_deadline(out, DEADLINE_S, mode)  # it did not wait out the 120 s Retry-After
    assert isinstance(out.error, BackendUnavailable) and out.error.status == 429
    assert out.error.retry_after_s == 120  # the caller learns when to come back
    assert len(gemini_server.requests) == 1  # no retry that could only fail again


class _Stall(BaseHTTPRequestHandler):
    """Starts a good answer (headers and the first SSE event, or half a JSON body), then goes silent."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": "alpha "}]}}]}).encode()
        try:
            self.send_response(200)
            if "streamGenerateContent" in self.path:
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                frame = b"data: " + body + b"\r\n\r\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            else:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
        except OSError:
            return
        self.release.wait(60)  # silent, connection open: only the client's own deadline can end this


@pytest.mark.parametrize("mode", MODES)
def test_a_server_that_goes_silent_mid_answer_is_cut_off_at_the_deadline(mode):
    release = threading.Event()
    handler = type("Stall", (_Stall,), {"release": release})  # a fresh "silence" for each test
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = {
            "engines": {"gemini": {"kind": "gemini", "api_key": "k", "timeout_s": 30,
                                   "base_url": f"http://127.0.0.1:{server.server_address[1]}",
                                   "retry": {"attempts": 3, "initial_backoff_s": 0.01, "jitter_s": 0.0}}},
            "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}},
        }
        out = call(config, mode, timeout_s=2.0)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert_within_deadline(out, 2.0, mode)  # the engine's 30 s per-attempt timeout did not stretch it
    assert_cut_short(out, mode)
    if mode in ("stream", "astream"):
        assert _streamed_text(out) == "alpha "  # what arrived before the silence, never passed off as complete
    else:
        assert isinstance(out.error, DeadlineExceeded), repr(out.error)  # half a body is retried until the deadline


@pytest.mark.parametrize("mode", MODES)
def test_retries_that_stop_early_because_no_attempt_fits_before_the_deadline_say_deadline(gemini_server, mode):
    # Every wait (30 s) would cross the 10 s deadline: retries stop a whole backoff before it, so the clock alone
    # cannot tell the router that the deadline ended the request; the retry layer says so. (A wait shorter than
    # the deadline would race with it: a loaded machine may end the first attempt just in time to wait, then wake
    # from that wait after the deadline's own timer has ended the request.)
    gemini_server.fault(Fault.status(503), times=10_000)
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["retry"] = {"attempts": 10_000, "initial_backoff_s": 3 * DEADLINE_S,
                                            "max_backoff_s": 3 * DEADLINE_S, "jitter_s": 0.0}
    out = call(config, mode)
    assert isinstance(out.error, DeadlineExceeded), f"{mode}: {out.error!r}"
    assert isinstance(out.error.__cause__, BackendUnavailable), repr(out.error.__cause__)


def test_retries_bounded_by_the_engines_own_retry_budget_stay_backend_unavailable(gemini_server):
    # The engine's retry deadline (not the request's) ran out: a backend failure the policy may fall through.
    gemini_server.fault(Fault.status(503), times=10_000)
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["retry"] = {"attempts": 10_000, "initial_backoff_s": 0.2, "max_backoff_s": 0.2,
                                            "jitter_s": 0.0, "deadline_s": 0.5}
    out = call(config, "generate", timeout_s=20.0)
    assert isinstance(out.error, BackendUnavailable) and not out.error.out_of_time, repr(out.error)
