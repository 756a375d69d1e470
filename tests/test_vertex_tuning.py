"""Cloud tuning jobs on the loopback server: data checks, request shapes, polling, config registration."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.oauth2.credentials import Credentials
from rich.console import Console

from genroute.errors import BackendRejected, ConfigError, UsageError
from genroute.router.router import Router
from genroute.testing import GeminiTestServer
from genroute.testing.replies import error_body, field_of
from genroute.testing.tuning_routes import TuningRoutes
from genroute.tuning.config_file import register_tuned_backend
from genroute.tuning.vertex import VertexTuningSettings, prepare_data, tune_vertex, vertex_row

from .conftest import TEST_KEY

LOCATION = "projects/test-proj/locations/us-central1"


def examples(n: int) -> list[dict[str, str]]:
    return [{"input": f"review number {i}: {'great' if i % 2 else 'awful'}",
             "output": "positive" if i % 2 else "negative"} for i in range(n)]


def write_data(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def jobs(gemini_server: GeminiTestServer, monkeypatch: pytest.MonkeyPatch) -> TuningRoutes:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gemini_server.base_url)
    return TuningRoutes(gemini_server)


@pytest.fixture
def config_path(tmp_path: Path, gemini_server: GeminiTestServer) -> Path:
    path = tmp_path / "genroute.yaml"
    path.write_text(yaml.safe_dump({
        "engines": {"vertex": {"kind": "gemini", "base_url": gemini_server.base_url,
                               "vertex": {"project": "test-proj", "location": "us-central1"}}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "vertex", "model": "gemini-2.5-flash"}},
        "policy": {"kind": "static", "backend": "chat"},
    }, sort_keys=False))
    path.chmod(0o640)
    return path


def settings(**overrides: Any) -> VertexTuningSettings:
    base = {"base_model": "gemini-2.5-flash", "name": "sentiment", "staging_uri": "gs://tune-bucket/runs",
            "poll_interval_s": 0.01, "epochs": 3, "validation_fraction": 0.1, "min_examples": 10}
    return VertexTuningSettings(**{**base, **overrides})


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


async def test_happy_path_registers_the_endpoint(gemini_server: GeminiTestServer, jobs: TuningRoutes,
                                                 config_path: Path, tmp_path: Path) -> None:
    data = write_data(tmp_path / "data.jsonl", examples(20))
    console = quiet()
    result = await tune_vertex(data, settings(system="Label the sentiment.", adapter_size="ADAPTER_SIZE_FOUR",
                                              learning_rate_multiplier=0.5), config_path=config_path,
                               credentials=Credentials(token="test"), console=console)

    endpoint = f"{LOCATION}/endpoints/1001"
    assert result.state == "JOB_STATE_SUCCEEDED"
    assert (result.endpoint, result.model) == (endpoint, f"{LOCATION}/models/1001@1")
    assert (result.train_examples, result.validation_examples) == (18, 2)

    # Data went to Cloud Storage in the Vertex supervised-tuning format, with a bearer token.
    uploads = [r for r in gemini_server.requests if r.path.startswith("/upload/")]
    assert [r.query["name"].rsplit("-", 1)[-1] for r in uploads] == ["train.jsonl", "validation.jsonl"]
    assert all(r.headers["authorization"] == "Bearer test" for r in uploads)
    train_uri, validation_uri = jobs.uploads
    rows = [json.loads(line) for line in jobs.uploads[train_uri].decode().splitlines()]
    assert len(rows) == 18 and len(jobs.uploads[validation_uri].decode().splitlines()) == 2
    assert rows[0]["systemInstruction"] == {"role": "system", "parts": [{"text": "Label the sentiment."}]}
    assert [c["role"] for c in rows[0]["contents"]] == ["user", "model"]

    # The job creation request, as google-genai sends it to Vertex AI.
    (create,) = [r for r in gemini_server.requests if r.method == "POST" and r.path.endswith("/tuningJobs")]
    assert create.path == f"/v1beta1/{LOCATION}/tuningJobs"
    body = create.body
    assert field_of(body, "baseModel") == "gemini-2.5-flash"
    assert field_of(body, "tunedModelDisplayName") == "sentiment"
    spec = field_of(body, "supervisedTuningSpec")
    assert field_of(spec, "trainingDatasetUri") == train_uri
    assert field_of(spec, "validationDatasetUri") == validation_uri
    hyper = field_of(spec, "hyperParameters")
    assert (hyper["epochCount"], hyper["learningRateMultiplier"], hyper["adapterSize"]) == (
        3, 0.5, "ADAPTER_SIZE_FOUR")
    polls = [r for r in gemini_server.requests if r.method == "GET"]
    assert len(polls) == 3 and polls[0].path == f"/v1beta1/{LOCATION}/tuningJobs/1001"
    log = console.file.getvalue()  # type: ignore[attr-defined]
    assert "JOB_STATE_PENDING" in log and "JOB_STATE_RUNNING" in log and "JOB_STATE_SUCCEEDED" in log

    # The config now holds a tuned backend; the file was replaced whole, keeping its mode.
    config = yaml.safe_load(config_path.read_text())
    assert config["backends"]["sentiment"] == {
        "kind": "tuned", "engine": "vertex", "model": endpoint, "base_model": "gemini-2.5-flash",
        "system": "Label the sentiment.", "tuning_job": f"{LOCATION}/tuningJobs/1001",
    }
    assert config["backends"]["chat"]["kind"] == "prompt_template"
    assert config_path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in config_path.parent.iterdir()) == ["data.jsonl", "genroute.yaml"]

    # ...and the router built from it answers through the tuned endpoint.
    gemini_server.clear()
    async with Router.from_config(config_path,
                                  engine_options={"vertex": {"credentials": Credentials(token="test")}}) as router:
        answer = await router.agenerate("review: superb", backend="sentiment")
    assert answer.backend == "sentiment"
    assert gemini_server.requests[-1].path == f"/v1beta1/{endpoint}:generateContent"


async def test_failed_job_raises_and_leaves_the_config_alone(gemini_server: GeminiTestServer, jobs: TuningRoutes,
                                                             config_path: Path, tmp_path: Path) -> None:
    jobs.script("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_FAILED", error="quota exceeded")
    before = config_path.read_bytes()
    data = write_data(tmp_path / "data.jsonl", examples(12))
    with pytest.raises(BackendRejected, match="JOB_STATE_FAILED: quota exceeded"):
        await tune_vertex(data, settings(), config_path=config_path, credentials=Credentials(token="test"),
                          console=quiet())
    assert config_path.read_bytes() == before
    assert len([r for r in gemini_server.requests if r.method == "GET"]) == 3


async def test_transient_poll_errors_are_tolerated(gemini_server: GeminiTestServer, jobs: TuningRoutes,
                                                   config_path: Path, tmp_path: Path) -> None:
    gemini_server.reply_json(error_body(503), path=r".*/tuningJobs/\d+", method="GET", status=503, times=2)
    data = write_data(tmp_path / "data.jsonl", examples(12))
    result = await tune_vertex(data, settings(), config_path=config_path, credentials=Credentials(token="test"),
                               console=quiet())
    assert result.state == "JOB_STATE_SUCCEEDED"
    assert len([r for r in gemini_server.requests if r.method == "GET"]) == 5


@pytest.mark.parametrize(
    ("rows", "field", "needle"),
    [
        ([], "data", "holds no examples"),
        ([*examples(5), {"input": "no output here"}, *examples(6)], "data.jsonl:6", "missing field 'output'"),
        ([*examples(3), "{not json"], "data.jsonl:4", "invalid JSON"),
        (examples(4), "data", "at least 10"),
        ([*examples(11), {"input": "x" * 30_000, "output": "y"}], "data.jsonl:12", "limit is"),
    ],
    ids=["empty", "missing-field", "bad-json", "too-few", "oversize"],
)
async def test_bad_data_is_rejected_before_anything_is_sent(
    gemini_server: GeminiTestServer, jobs: TuningRoutes, config_path: Path, tmp_path: Path,
    rows: list[Any], field: str, needle: str,
) -> None:
    data = write_data(tmp_path / "data.jsonl", rows)
    with pytest.raises(UsageError, match=needle) as info:
        await tune_vertex(data, settings(), config_path=config_path, credentials=Credentials(token="test"))
    assert info.value.field == (field if field == "data" else str(tmp_path / field))  # a line: its file and line
    assert gemini_server.requests == []


async def test_config_target_is_checked_before_anything_is_sent(
    gemini_server: GeminiTestServer, jobs: TuningRoutes, config_path: Path, tmp_path: Path
) -> None:
    data = write_data(tmp_path / "data.jsonl", examples(12))
    with pytest.raises(UsageError, match="already exists") as info:
        await tune_vertex(data, settings(name="chat"), config_path=config_path, credentials=Credentials(token="t"))
    assert info.value.field == "name"
    toml = tmp_path / "genroute.toml"
    toml.write_text("[backends]\n")
    with pytest.raises(UsageError, match=r"\.yaml or \.json"):
        await tune_vertex(data, settings(), config_path=toml, credentials=Credentials(token="t"))
    with pytest.raises(UsageError, match="staging_uri") as info:
        await tune_vertex(data, settings(staging_uri=None), config_path=config_path,
                          credentials=Credentials(token="t"))
    with pytest.raises(ConfigError, match="no engine 'nope'"):
        await tune_vertex(data, settings(engine="nope"), config_path=config_path, credentials=Credentials(token="t"))
    assert gemini_server.requests == []


async def test_developer_api_engine_is_refused_before_anything_is_sent(
    gemini_server: GeminiTestServer, jobs: TuningRoutes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # google-genai's Developer API tuning request carries no examples; refusing beats a data-less job.
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    config_path = tmp_path / "genroute.json"
    config_path.write_text(json.dumps({
        "engines": {"gemini": {"kind": "gemini", "base_url": gemini_server.base_url}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.0-flash"}},
    }))
    data = write_data(tmp_path / "data.jsonl", examples(12))
    with pytest.raises(UsageError, match="Vertex AI engine") as info:
        await tune_vertex(data, settings(base_model="gemini-2.0-flash"), config_path=config_path)
    assert info.value.field == "engine"
    assert gemini_server.requests == []


def test_vertex_row_and_prepare(tmp_path: Path) -> None:
    from genroute.tuning.data import Example

    assert vertex_row(Example(input="i", output="o")) == {
        "contents": [{"role": "user", "parts": [{"text": "i"}]}, {"role": "model", "parts": [{"text": "o"}]}]
    }
    data = write_data(tmp_path / "d.jsonl", examples(30))
    first, again = prepare_data(data, settings()), prepare_data(data, settings())
    assert first.train_rows == again.train_rows and len(first.validation) == 3


async def test_an_unpriced_base_model_is_refused_before_anything_is_sent(
    gemini_server: GeminiTestServer, jobs: TuningRoutes, config_path: Path, tmp_path: Path
) -> None:
    before = config_path.read_bytes()
    data = write_data(tmp_path / "data.jsonl", examples(12))
    with pytest.raises(UsageError, match="no price known for model 'no-such-model'") as info:
        await tune_vertex(data, settings(base_model="no-such-model"), config_path=config_path,
                          credentials=Credentials(token="t"), console=quiet())
    assert info.value.field == "base_model" and not isinstance(info.value, ConfigError)
    assert gemini_server.requests == [] and jobs.jobs == {}
    assert config_path.read_bytes() == before
    # Priced in the config's own `pricing`, the same base model is tuned and the config still builds.
    priced = yaml.safe_load(before)
    priced["pricing"] = {"no-such-model": {"input": 0.1, "output": 0.4}}
    config_path.write_text(yaml.safe_dump(priced, sort_keys=False))
    result = await tune_vertex(data, settings(base_model="no-such-model"), config_path=config_path,
                               credentials=Credentials(token="t"), console=quiet())
    async with Router.from_config(config_path, engine_options={"vertex": {"credentials": Credentials(token="t")}}):
        pass  # it builds
    assert yaml.safe_load(config_path.read_text())["backends"]["sentiment"]["model"] == result.endpoint


def test_register_refuses_a_config_that_would_not_build(config_path: Path) -> None:
    before = config_path.read_bytes()
    endpoint = f"{LOCATION}/endpoints/7"
    with pytest.raises(ConfigError, match="no price known") as info:
        register_tuned_backend(config_path, "t", engine="vertex", model=endpoint, base_model="no-such-model")
    assert info.value.field == "backends.t.base_model"
    assert config_path.read_bytes() == before
    assert sorted(p.name for p in config_path.parent.iterdir()) == ["genroute.yaml"]
    # A price for the tuned endpoint itself is enough (it is then billed as itself).
    priced = yaml.safe_load(before)
    priced["pricing"] = {endpoint: {"input": 0.1, "output": 0.4}}
    config_path.write_text(yaml.safe_dump(priced, sort_keys=False))
    register_tuned_backend(config_path, "t", engine="vertex", model=endpoint, base_model="no-such-model")
    with Router.from_config(config_path, engine_options={"vertex": {"credentials": Credentials(token="t")}}):
        pass  # it builds


def test_register_refuses_an_invalid_entry(config_path: Path) -> None:
    before = config_path.read_bytes()
    with pytest.raises(ConfigError):
        register_tuned_backend(config_path, "t", engine="vertex", model="", base_model="gemini-2.5-flash")
    assert config_path.read_bytes() == before


async def test_timeout_then_resume(gemini_server: GeminiTestServer, jobs: TuningRoutes, config_path: Path,
                                   tmp_path: Path) -> None:
    from genroute.errors import BackendUnavailable
    from genroute.tuning.vertex import resume_vertex

    jobs.script("JOB_STATE_RUNNING")  # runs for ever, until re-scripted below
    data = write_data(tmp_path / "data.jsonl", examples(12))
    with pytest.raises(BackendUnavailable, match="keeps running") as info:
        await tune_vertex(data, settings(timeout_s=0.05), config_path=config_path,
                          credentials=Credentials(token="test"), console=quiet())
    (name,) = jobs.jobs
    assert f"--resume {name}" in str(info.value)
    assert "sentiment" not in yaml.safe_load(config_path.read_text())["backends"]
    jobs.set_states(name, "JOB_STATE_SUCCEEDED")
    result = await resume_vertex(name, settings(), config_path=config_path, credentials=Credentials(token="test"),
                                 console=quiet())
    assert result.endpoint == f"{LOCATION}/endpoints/1001"
    # This process never saw the job's data: unknown, not zero.
    assert (result.train_examples, result.validation_examples) == (None, None)
    assert yaml.safe_load(config_path.read_text())["backends"]["sentiment"]["tuning_job"] == name


async def test_resume_refuses_a_base_model_the_job_did_not_tune(gemini_server: GeminiTestServer, jobs: TuningRoutes,
                                                                config_path: Path, tmp_path: Path) -> None:
    """--resume takes --base-model on trust: the wrong one registered the endpoint billed at another model's rates."""
    from genroute.errors import BackendUnavailable
    from genroute.tuning.vertex import resume_vertex

    jobs.script("JOB_STATE_RUNNING")
    data = write_data(tmp_path / "data.jsonl", examples(12))
    with pytest.raises(BackendUnavailable, match="keeps running"):
        await tune_vertex(data, settings(timeout_s=0.05), config_path=config_path,
                          credentials=Credentials(token="test"), console=quiet())
    (name,) = jobs.jobs
    jobs.set_states(name, "JOB_STATE_SUCCEEDED")
    before = config_path.read_text()
    with pytest.raises(UsageError, match="tuned 'gemini-2.5-flash', not 'gemini-2.5-pro'") as info:
        await resume_vertex(name, settings(base_model="gemini-2.5-pro"), config_path=config_path,
                            credentials=Credentials(token="test"), console=quiet())
    assert info.value.field == "base_model"
    assert config_path.read_text() == before
    await resume_vertex(name, settings(), config_path=config_path, credentials=Credentials(token="test"),
                        console=quiet())
    assert yaml.safe_load(config_path.read_text())["backends"]["sentiment"]["base_model"] == "gemini-2.5-flash"


@pytest.mark.parametrize("token_path", ["/token", None])
async def test_credentials_that_cannot_be_refreshed_for_the_upload_are_a_genroute_error(
        gemini_server: GeminiTestServer, jobs: TuningRoutes, config_path: Path, tmp_path: Path,
        token_path: str | None) -> None:
    """A refresh token the token server refuses (revoked, expired) or cannot be reached for: google-auth's
    RefreshError / TransportError came out of `genroute tune` as they were, a traceback."""
    from genroute.errors import BackendError

    token_uri = f"{gemini_server.base_url}{token_path}" if token_path else "http://127.0.0.1:9/token"
    stale = Credentials(token=None, refresh_token="loopback-refresh", client_id="c", client_secret="s",
                        token_uri=token_uri)
    data = write_data(tmp_path / "data.jsonl", examples(12))
    before = config_path.read_text()
    with pytest.raises(BackendError):
        await tune_vertex(data, settings(), config_path=config_path, credentials=stale, console=quiet())
    assert jobs.uploads == {} and jobs.jobs == {} and config_path.read_text() == before


def test_cli_task_makes_the_tuned_backend_the_ladders_for_that_task(gemini_server: GeminiTestServer,
                                                                    jobs: TuningRoutes, config_path: Path,
                                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A ladder takes its tuned step only for a tuned backend made for the request's task; `genroute tune` had no
    way to say the task, so a ladder never routed to what it registered."""
    from genroute.cli import main
    from genroute.testing.credentials import write_credentials

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(write_credentials(tmp_path / "adc.json")))
    cfg = yaml.safe_load(config_path.read_text())
    cfg["policy"] = {"kind": "ladder"}
    config_path.write_text(yaml.safe_dump(cfg))
    data = write_data(tmp_path / "data.jsonl", examples(12))
    assert main(["tune", str(data), "--base-model", "gemini-2.5-flash", "--config", str(config_path), "--name",
                 "sentiment", "--staging-uri", "gs://b/p", "--poll-interval", "0.01", "--task", "sentiment"]) == 0, \
        capsys.readouterr().err
    assert yaml.safe_load(config_path.read_text())["backends"]["sentiment"]["tasks"] == ["sentiment"]
    with Router.from_config(config_path, engine_options={"vertex": {"credentials": Credentials(token="t")}}) as router:
        assert router.decide("great film", task="sentiment").rungs[0].backend == "sentiment"
        assert router.decide("hello").rungs[0].backend == "chat"


async def test_an_engine_the_config_lacks_is_refused_before_anything_is_sent(
        gemini_server: GeminiTestServer, jobs: TuningRoutes, config_path: Path, tmp_path: Path) -> None:
    """tune_vertex(engine=...) with an engine the config does not have ran the job, then wrote a backend naming that
    engine: the config no longer built ("backends.sentiment.engine: unknown engine")."""
    from genroute.engines.gemini import GeminiEngine, GeminiEngineConfig

    elsewhere = GeminiEngine("elsewhere", GeminiEngineConfig(
        base_url=gemini_server.base_url, vertex={"project": "test-proj", "location": "us-central1"}),
        credentials=Credentials(token="test"))
    data = write_data(tmp_path / "data.jsonl", examples(12))
    before = config_path.read_text()
    with pytest.raises(ConfigError, match="no engine 'elsewhere'") as info:
        await tune_vertex(data, settings(), config_path=config_path, engine=elsewhere,
                          credentials=Credentials(token="t"), console=quiet())
    assert info.value.field == "engine"
    assert jobs.jobs == {} and jobs.uploads == {} and config_path.read_text() == before
    with pytest.raises(ConfigError) as info:
        register_tuned_backend(config_path, "sentiment", engine="elsewhere", model=f"{LOCATION}/endpoints/1",
                               base_model="gemini-2.5-flash")
    assert info.value.field == "backends.sentiment.engine" and config_path.read_text() == before


def test_cli_dry_run_sends_nothing(gemini_server: GeminiTestServer, config_path: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from genroute.cli import main

    data = write_data(tmp_path / "data.jsonl", examples(20))
    out = tmp_path / "out"
    code = main(["tune", str(data), "--base-model", "gemini-2.5-flash", "--config", str(config_path),
                 "--name", "sentiment", "--dry-run", str(out), "--system", "Label it."])
    assert code == 0
    train = (out / "sentiment-train.jsonl").read_text().splitlines()
    assert len(train) == 18 and len((out / "sentiment-validation.jsonl").read_text().splitlines()) == 2
    assert json.loads(train[0])["systemInstruction"]["parts"] == [{"text": "Label it."}]
    assert gemini_server.requests == []


def test_copies_of_one_input_stay_on_one_side_of_the_split(config_path: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # A dataset that repeats its inputs (a question asked by several users, up to case and spacing) put copies in the
    # validation file whose twins were trained on: the validation loss measured memory.
    from genroute.cli import main

    rows = [{"input": f"{'  ' if copy else ''}Review {i % 10}: {'GOOD' if copy else 'good'} film",
             "output": "positive"} for copy in range(3) for i in range(10)]
    data = write_data(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    code = main(["tune", str(data), "--base-model", "gemini-2.5-flash", "--config", str(config_path),
                 "--name", "sentiment", "--dry-run", str(out)])
    assert code == 0

    def inputs(kind: str) -> list[str]:
        lines = (out / f"sentiment-{kind}.jsonl").read_text().splitlines()
        return [" ".join(json.loads(line)["contents"][0]["parts"][0]["text"].casefold().split()) for line in lines]

    train, validation = inputs("train"), inputs("validation")
    assert validation and not set(train) & set(validation)
    assert len(train) + len(validation) == 30 and len(validation) % 3 == 0  # whole groups of three copies


def test_cli_dry_run_into_a_file_names_the_flag(config_path: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from genroute.cli import main

    data = write_data(tmp_path / "data.jsonl", examples(20))
    (tmp_path / "taken").write_text("a file")
    code = main(["tune", str(data), "--base-model", "gemini-2.5-flash", "--config", str(config_path),
                 "--name", "sentiment", "--dry-run", str(tmp_path / "taken")])
    assert code == 2
    assert "--dry-run: cannot write results to" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--name", "chat"], "already exists"),
        (["--name", "x", "--poll-interval", "0"], "--poll-interval: Input should be greater than 0"),
        (["--name", "x", "--timeout", "0"], "--timeout: Input should be greater than 0"),  # the setting is timeout_s
        (["--name", "x", "--staging-uri", "s3://nope"], "--staging-uri"),
        # Not finite: it would be sent to Vertex as it is.
        (["--name", "x", "--learning-rate-multiplier", "inf"], "--learning-rate-multiplier"),
        (["--name", "x", "--learning-rate-multiplier", "nan"], "--learning-rate-multiplier"),
        # Unpriced: the tuned backend would make the whole config fail to build.
        (["--name", "x", "--staging-uri", "gs://b/p", "--base-model", "no-such-model"], "--base-model: no price"),
    ],
)
def test_cli_errors_exit_2_before_sending(gemini_server: GeminiTestServer, config_path: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], extra: list[str], needle: str) -> None:
    from genroute.cli import main

    data = write_data(tmp_path / "data.jsonl", examples(12))
    code = main(["tune", str(data), "--base-model", "gemini-2.5-flash", "--config", str(config_path), *extra])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert gemini_server.requests == []


def test_cli_local_checks_the_config_before_training(config_path: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from genroute.cli import main

    data = write_data(tmp_path / "data.jsonl", examples(12))
    assert main(["tune", "--local", str(data), "--config", str(config_path), "--name", "chat"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / ".genroute").exists()


def test_register_refuses_a_config_that_already_holds_an_invalid_entry(config_path: Path) -> None:
    # The tuned backend was added to a file whose `chat` backend could never build (temperature "hot"), and the
    # command said it had registered it: the first build after the tuning run failed instead. The file's entries are
    # checked as it is written, the broken one named, and nothing is written.
    raw = yaml.safe_load(config_path.read_text())
    raw["backends"]["chat"]["generation"] = {"temperature": "hot"}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    before = config_path.read_bytes()
    with pytest.raises(ConfigError) as info:
        register_tuned_backend(config_path, "t", engine="vertex", model=f"{LOCATION}/endpoints/7",
                               base_model="gemini-2.5-flash")
    assert info.value.field == "backends.chat.generation.temperature"
    assert config_path.read_bytes() == before


@pytest.mark.parametrize("mode", [["--local"], ["--base-model", "gemini-2.5-flash"]], ids=["local", "vertex"])
def test_cli_refuses_a_config_holding_an_invalid_entry_before_training(
        gemini_server: GeminiTestServer, config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        mode: list[str]) -> None:
    # The file's other entries were checked only when the tuned backend was written: after the minutes of a local
    # training run, or a Vertex AI job paid for and done, whose model was then left unregistered.
    from genroute.cli import main

    raw = yaml.safe_load(config_path.read_text())
    raw["backends"]["chat"]["generation"] = {"temperature": "hot"}
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    data = write_data(tmp_path / "data.jsonl", examples(12))
    assert main(["tune", *mode, str(data), "--config", str(config_path), "--name", "tuned"]) == 2
    assert "backends.chat.generation.temperature" in capsys.readouterr().err
    assert gemini_server.requests == [] and not (tmp_path / ".genroute").exists()
