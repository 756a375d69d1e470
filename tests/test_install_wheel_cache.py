"""``scripts/install.sh`` installs the llama-cpp-python wheel ``scripts/llama_wheel.sh`` keeps in a cache folder, and
runs its library from then on: as genroute refuses its own cache (``check_owned``), the script refuses a wheel cache
another user could have put a wheel in. Run as the existing install-script tests run it (tests/test_readme.py): with
PATH holding stubs, a venv whose ``python`` records what it is asked and installs nothing, and a wheel already in the
cache, so nothing is built."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CMAKE_ARGS = "-DGGML_NATIVE=OFF"
#: What a host's first user owns: a volume of theirs mounted into a container where the install runs as root.
HOST_UID = 1000


def cached_wheel(cache: Path) -> Path:
    """The file ``llama_wheel.sh`` looks for under ``cache`` (``GENROUTE_WHEEL_CACHE``) with ``CMAKE_ARGS``: made, not
    built (a few bytes: only its name and permissions matter here)."""
    version = re.search(r"^LLAMA_VERSION=(\S+)$", (ROOT / "scripts" / "llama_wheel.sh").read_text(), re.M)
    assert version
    key = hashlib.sha256(f"{version[1]} {CMAKE_ARGS}".encode()).hexdigest()[:16]
    folder = cache / f"llama-{key}"
    folder.mkdir(parents=True, mode=0o700)
    cache.chmod(0o700)
    wheel = folder / f"llama_cpp_python-{version[1]}-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"PK not a real wheel")
    wheel.chmod(0o644)
    return wheel


def install(tmp_path: Path, cache: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """``bash scripts/install.sh`` with ``cache`` as the wheel cache: its result, and what the venv's python was
    asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id", "stat", "sha256sum", "cut", "ls", "head", "nproc", "mkdir", "rm", "mv"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").write_text("#!/bin/sh\nexit 0\n")  # asked whether it is 3.11 or later: yes
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    asked = tmp_path / "python.args"
    (venv / "bin" / "python").write_text(f"#!/bin/sh\necho \"$*\" >> {asked}\n")
    (venv / "bin" / "activate").write_text(f"PATH={venv / 'bin'}:$PATH\n")
    for stub in (bin_dir / "python3", venv / "bin" / "python"):
        stub.chmod(0o755)
    done = subprocess.run([str(bin_dir / "bash"), str(ROOT / "scripts" / "install.sh")], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path), "GENROUTE_VENV": str(venv),
                               "GENROUTE_WHEEL_CACHE": str(cache), "CMAKE_ARGS": CMAKE_ARGS})
    return done, asked.read_text() if asked.exists() else ""


def test_a_wheel_cache_of_ones_own_is_installed_from(tmp_path: Path) -> None:
    wheel = cached_wheel(tmp_path / "wheels")
    done, asked = install(tmp_path, tmp_path / "wheels")
    assert done.returncode == 0, done.stderr
    assert f"-m pip install --force-reinstall --no-deps {wheel}" in asked.splitlines()
    assert "building" not in done.stderr


def test_a_wheel_cache_another_user_owns_is_refused_saying_how_to_take_it(tmp_path: Path) -> None:
    """Root in a container, the wheel cache a volume the host's uid 1000 owns: the wheel was installed as found."""
    if os.geteuid() != 0:
        pytest.fail("another user's directory is made with chown, which needs root: run the tests as root (CI does)")
    cache = tmp_path / "wheels"
    cached_wheel(cache)
    os.chown(cache, HOST_UID, HOST_UID)
    done, asked = install(tmp_path, cache)
    assert done.returncode != 0
    assert done.stderr.startswith(f"scripts/llama_wheel.sh: the wheel cache {cache} belongs to another user (uid "
                                  f"{HOST_UID}; you are uid 0)"), done.stderr
    assert f"chown -R 0 {cache};" in done.stderr
    assert "set GENROUTE_WHEEL_CACHE to a directory of your own" in done.stderr
    assert "--force-reinstall" not in asked


@pytest.mark.parametrize(("where", "mode", "who"), [("cache", 0o775, "its group"),
                                                    ("cache", 0o1777, "its group and all users"),
                                                    ("folder", 0o757, "all users"),
                                                    ("wheel", 0o666, "its group and all users")])
def test_a_wheel_cache_others_may_write_is_refused(tmp_path: Path, where: str, mode: int, who: str) -> None:
    """A directory on the way to the wheel, or the wheel, that its group or all users may write: one of them could
    have replaced the wheel this script installs and genroute's local engine then runs."""
    cache = tmp_path / "wheels"
    wheel = cached_wheel(cache)
    loose = {"cache": cache, "folder": wheel.parent, "wheel": wheel}[where]
    loose.chmod(mode)
    done, asked = install(tmp_path, cache)
    assert done.returncode != 0
    assert done.stderr.startswith(f"scripts/llama_wheel.sh: the wheel cache {loose} may be written by {who} (mode "
                                  f"{mode:o})"), done.stderr
    assert f"chmod go-w {loose}," in done.stderr
    assert "--force-reinstall" not in asked
