"""Tuning-job routes for the loopback server: Vertex AI tuning jobs and Cloud Storage media uploads.

Plug them into a server with ``TuningRoutes(server)``. Each created job walks through a scripted list of
states, one per ``GET``; the last state repeats. A successful Vertex job reports its tuned model and
endpoint; a failed one reports an error::

    with GeminiTestServer() as srv:
        jobs = TuningRoutes(srv)
        jobs.script("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_FAILED", error="out of quota")
        # ... code under test creates a job and polls it ...
        jobs.created[0]  # the creation request body the SDK sent

Uploads to ``/upload/storage/v1/b/{bucket}/o?uploadType=media&name=...`` (point ``STORAGE_EMULATOR_HOST``
at the server) are kept in ``uploads`` by ``gs://bucket/name``.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from genroute.testing.replies import Response, error_body, field_of

if TYPE_CHECKING:
    from genroute.testing.server import GeminiTestServer, RecordedRequest

SUCCESS = ("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED")
_TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


@dataclass
class _Job:
    name: str
    body: Any
    states: tuple[str, ...]
    error: str | None
    polls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def advance(self) -> str:
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        return state


class TuningRoutes:
    """Adds tuning-job and GCS-upload routes to a ``GeminiTestServer`` and records what they received."""

    def __init__(self, server: GeminiTestServer, *, states: tuple[str, ...] = SUCCESS) -> None:
        self.default_states = states
        self.jobs: dict[str, _Job] = {}
        self.uploads: dict[str, bytes] = {}
        self._scripts: deque[tuple[tuple[str, ...], str | None]] = deque()
        self._lock = threading.Lock()
        self._counter = 0
        loc = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
        server.route("POST", rf"/[^/]+/{loc}/tuningJobs", self._create_vertex)
        server.route("GET", rf"/[^/]+/(?P<name>{loc}/tuningJobs/[^/]+)", self._get_vertex)
        server.route("POST", r"/upload/storage/v1/b/(?P<bucket>[^/]+)/o", self._upload)

    def script(self, *states: str, error: str | None = None) -> None:
        """The states the next created job reports, one per poll (the last one repeats)."""
        if not states:
            raise ValueError("script at least one state")
        with self._lock:
            self._scripts.append((tuple(states), error))

    def set_states(self, name: str, *states: str, error: str | None = None) -> None:
        """Re-script an existing job from its next poll on (e.g. let a long-running job finish)."""
        with self._lock:
            job = self.jobs[name]
            job.states, job.error, job.polls = tuple(states), error, 0

    @property
    def created(self) -> list[Any]:
        """The creation request bodies, oldest first."""
        with self._lock:
            return [job.body for job in self.jobs.values()]

    def _new(self, name_of: Any, body: Any) -> _Job:
        with self._lock:
            self._counter += 1
            states, error = self._scripts.popleft() if self._scripts else (self.default_states, None)
            job = _Job(name=name_of(self._counter), body=body, states=states, error=error)
            self.jobs[job.name] = job
        return job

    # -- Vertex AI ----------------------------------------------------------------------------------

    def _create_vertex(self, server: GeminiTestServer, request: RecordedRequest, m: re.Match[str]) -> Any:
        prefix = f"projects/{m['project']}/locations/{m['location']}"
        job = self._new(lambda n: f"{prefix}/tuningJobs/{1000 + n}", request.body)
        job.extra["prefix"] = prefix
        return self._vertex_view(job, "JOB_STATE_PENDING")

    def _get_vertex(self, server: GeminiTestServer, request: RecordedRequest, m: re.Match[str]) -> Any:
        job = self.jobs.get(m["name"])
        if job is None:
            return Response(status=404, body=error_body(404, f"tuning job {m['name']} not found"))
        return self._vertex_view(job, job.advance())

    def _vertex_view(self, job: _Job, state: str) -> dict[str, Any]:
        body = job.body if isinstance(job.body, dict) else {}
        view: dict[str, Any] = {
            "name": job.name,
            "state": state,
            "baseModel": field_of(body, "baseModel"),
            "tunedModelDisplayName": field_of(body, "tunedModelDisplayName"),
            "createTime": "2026-11-25T12:00:00Z",
        }
        spec = field_of(body, "supervisedTuningSpec")
        if spec is not None:
            view["supervisedTuningSpec"] = spec
        number = job.name.rsplit("/", 1)[-1]
        if state == "JOB_STATE_SUCCEEDED":
            prefix = job.extra["prefix"]
            view["tunedModel"] = {"model": f"{prefix}/models/{number}@1", "endpoint": f"{prefix}/endpoints/{number}"}
            view["endTime"] = "2026-11-25T12:30:00Z"
        elif state in _TERMINAL:
            view["error"] = {"code": 9, "message": job.error or f"tuning job ended in {state}"}
            view["endTime"] = "2026-11-25T12:30:00Z"
        return view

    # -- Cloud Storage (media upload) ----------------------------------------------------------------

    def _upload(self, server: GeminiTestServer, request: RecordedRequest, m: re.Match[str]) -> Any:
        name = request.query.get("name")
        if request.query.get("uploadType") != "media" or not name:
            return Response(status=400, body=error_body(400, "expected uploadType=media and a name"))
        with self._lock:
            self.uploads[f"gs://{m['bucket']}/{name}"] = request.raw_body
        return {"kind": "storage#object", "bucket": m["bucket"], "name": name, "size": str(len(request.raw_body))}
