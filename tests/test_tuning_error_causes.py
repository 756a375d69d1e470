"""A genroute error raised under the tuning calls (here by a credentials object's refresh) comes out as it is, never
as its own ``__cause__``: every place that maps a foreign error to genroute's passes genroute's own through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.oauth2.credentials import Credentials

from genroute.engines.errors import map_error
from genroute.errors import BackendRejected, GenrouteError
from genroute.testing.tuning_routes import TuningRoutes
from genroute.tuning.vertex import engine_from_config, resume_vertex, start_job, tune_vertex

from .test_vertex_tuning import config_path, jobs, quiet, settings  # noqa: F401 - fixtures


class BrokerCredentials(Credentials):
    """Credentials whose refresh asks a broker that refuses, with a genroute error of its own."""

    def refresh(self, request: Any) -> None:
        raise BackendRejected("the token broker refused this service account", status=403)


def chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and its causes; a cycle fails the test instead of looping for ever."""
    seen: list[BaseException] = []
    while error is not None:
        assert all(error is not e for e in seen), f"a cycle in the cause chain: {[type(e).__name__ for e in seen]}"
        seen.append(error)
        error = error.__cause__
    return seen


async def test_the_upload(jobs: TuningRoutes, config_path: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"input": "review {i}", "output": "positive"}}\n' for i in range(12)))
    engine = engine_from_config(config_path, None, credentials=Credentials(token="test"))
    try:
        with pytest.raises(BackendRejected, match="token broker") as caught:
            await tune_vertex(data, settings(), config_path=config_path, engine=engine,
                              credentials=BrokerCredentials(token=None), console=quiet())
    finally:
        await engine.aclose()
    assert chain(caught.value) == [caught.value] and jobs.uploads == {}


async def test_starting_the_job(jobs: TuningRoutes, config_path: Path) -> None:
    engine = engine_from_config(config_path, None, credentials=BrokerCredentials(token=None))
    try:
        with pytest.raises(BackendRejected, match="token broker") as caught:
            await start_job(engine.client, settings(), training_uri="gs://tune-bucket/runs/t.jsonl")
    finally:
        await engine.aclose()
    assert chain(caught.value) == [caught.value] and jobs.jobs == {}


async def test_polling_the_job(jobs: TuningRoutes, config_path: Path) -> None:
    with pytest.raises(BackendRejected, match="token broker") as caught:
        await resume_vertex("projects/test-proj/locations/us-central1/tuningJobs/1", settings(),
                            config_path=config_path, credentials=BrokerCredentials(token=None), console=quiet())
    assert chain(caught.value) == [caught.value]


def test_a_mapped_error_is_caused_by_what_it_maps_and_genroutes_own_is_left_alone() -> None:
    try:
        raise TimeoutError("slow")
    except TimeoutError as exc:
        mapped = map_error(exc, backend="b")
    assert [type(e) for e in chain(mapped)] == [type(mapped), TimeoutError] and mapped.__suppress_context__
    own = BackendRejected("no")
    assert map_error(own) is own and chain(own) == [own]
    assert isinstance(mapped, GenrouteError)


def test_no_site_raises_a_mapped_error_from_what_it_mapped() -> None:
    # map_error chains its error itself; `raise map_error(exc) from exc` makes a genroute error its own cause.
    import ast

    import genroute

    sites = []
    for path in Path(genroute.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.cause is not None and isinstance(node.exc, ast.Call):
                name = ast.unparse(node.exc.func)
                if name.endswith(("map_error", "._map")):
                    sites.append(f"{path.name}:{node.lineno}")
    assert sites == []
