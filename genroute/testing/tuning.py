"""Tuning-job routes for the loopback server: Vertex ``tuningJobs`` and Developer API ``tunedModels``.

A created job reports ``JOB_STATE_RUNNING`` (``CREATING``) for ``polls_before_success`` reads, then
``JOB_STATE_SUCCEEDED`` (``ACTIVE``) with a tuned model and endpoint, or ``JOB_STATE_FAILED`` if
``fail_with`` was set when it was created. Jobs are kept in ``server.tuning.jobs`` by name.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from genroute.testing.replies import Response, error_body, field_of

if TYPE_CHECKING:
    from genroute.testing.server import GeminiTestServer, RecordedRequest

_PARENT = r"/[^/]+/(?P<parent>projects/[^/]+/locations/[^/]+)"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class TuningJobs:
    """The server's tuning jobs and how they progress."""

    polls_before_success: int = 1
    fail_with: str | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _polls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return 1000 + self._counter

    def create_vertex(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Any:
        parent, body = match["parent"], request.body or {}
        job_id = self._next_id()
        job: dict[str, Any] = {
            "name": f"{parent}/tuningJobs/{job_id}",
            "state": "JOB_STATE_PENDING",
            "createTime": _now(),
            "baseModel": field_of(body, "baseModel") or "",
            "tunedModelDisplayName": field_of(body, "tunedModelDisplayName") or f"tuned-{job_id}",
        }
        for key in ("supervisedTuningSpec", "description", "labels"):
            if field_of(body, key) is not None:
                job[key] = field_of(body, key)
        job["_fail"] = self.fail_with
        with self._lock:
            self.jobs[job["name"]] = job
        return _public(job)

    def get_vertex(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Any:
        name = f"{match['parent']}/tuningJobs/{match['job']}"
        with self._lock:
            job = self.jobs.get(name)
            if job is None:
                return Response(status=404, body=error_body(404, f"tuning job {name} not found"))
            self._advance(job, vertex=True)
            return _public(job)

    def list_vertex(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Any:
        with self._lock:
            jobs = [_public(j) for j in self.jobs.values() if j["name"].startswith(match["parent"] + "/")]
        return {"tuningJobs": jobs}

    def cancel_vertex(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Any:
        name = f"{match['parent']}/tuningJobs/{match['job']}"
        with self._lock:
            job = self.jobs.get(name)
            if job is None:
                return Response(status=404, body=error_body(404, f"tuning job {name} not found"))
            job["state"] = "JOB_STATE_CANCELLED"
        return {}

    def create_mldev(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Any:
        body = request.body or {}
        name = f"tunedModels/tuned-{self._next_id()}"
        job = {"name": name, "state": "CREATING", "createTime": _now(),
               "baseModel": field_of(body, "baseModel") or "", "_fail": self.fail_with}
        with self._lock:
            self.jobs[name] = job
        return {"name": f"{name}/operations/op-1", "metadata": {"tunedModel": name, "totalSteps": 1}}

    def get_mldev(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Any:
        name = f"tunedModels/{match['model']}"
        with self._lock:
            job = self.jobs.get(name)
            if job is None:
                return Response(status=404, body=error_body(404, f"tuned model {name} not found"))
            self._advance(job, vertex=False)
            return _public(job)

    def _advance(self, job: dict[str, Any], *, vertex: bool) -> None:
        polls = self._polls.get(job["name"], 0)
        self._polls[job["name"]] = polls + 1
        if job["state"] in ("JOB_STATE_CANCELLED", "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "ACTIVE", "FAILED"):
            return
        if polls < self.polls_before_success:
            job["state"] = "JOB_STATE_RUNNING" if vertex else "CREATING"
            job.setdefault("startTime", _now())
            return
        job["endTime"] = _now()
        if job["_fail"]:
            job["state"] = "JOB_STATE_FAILED" if vertex else "FAILED"
            job["error"] = {"code": 3, "message": job["_fail"]}
            return
        job["state"] = "JOB_STATE_SUCCEEDED" if vertex else "ACTIVE"
        if vertex:
            parent, _, job_id = job["name"].partition("/tuningJobs/")
            job["tunedModel"] = {"model": f"{parent}/models/{job_id}@1", "endpoint": f"{parent}/endpoints/{job_id}"}


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def install(server: GeminiTestServer) -> TuningJobs:
    """Add the tuning routes to ``server`` and return the job store."""
    jobs = TuningJobs()
    server.route("POST", _PARENT + r"/tuningJobs", jobs.create_vertex)
    server.route("GET", _PARENT + r"/tuningJobs", jobs.list_vertex)
    server.route("GET", _PARENT + r"/tuningJobs/(?P<job>[^/:]+)", jobs.get_vertex)
    server.route("POST", _PARENT + r"/tuningJobs/(?P<job>[^/:]+):cancel", jobs.cancel_vertex)
    server.route("POST", r"/[^/]+/tunedModels", jobs.create_mldev)
    server.route("GET", r"/[^/]+/tunedModels/(?P<model>[^/:]+)", jobs.get_mldev)
    return jobs
