#!/usr/bin/env bash
# Check genroute on another Python: scripts/check_python.sh /path/to/python3.X
# Installs the lighter GENROUTE_EXTRAS=local,dev (no tune-local: torch for a Python without a local wheel could be a
# multi-GB CUDA download) with scripts/install.sh into its own venv (GENROUTE_VENV, default .venv-py3.X), then runs
# the demo and the whole test suite as .ci/run does (or the tests and pytest options given after the interpreter).
# Only the tests listed in tests/skips/light_install.txt (they need tune-local) may skip. The cached llama-cpp-python
# wheel is py3-none (ctypes), so it serves every Python. Prints the time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: scripts/check_python.sh /path/to/python [test paths or pytest options: default, every test]}
shift
version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV=${GENROUTE_VENV:-.venv-py$version}
case $VENV in /*) ;; *) VENV=$PWD/$VENV ;; esac
start=$(date +%s)
PYTHON="$PY" GENROUTE_VENV="$VENV" GENROUTE_EXTRAS=local,dev bash scripts/install.sh >/dev/null
echo "python $version: install in $(( $(date +%s) - start )) s"
export GENROUTE_REQUIRE_CHROMA_SERVER=1 GENROUTE_REQUIRE_CHROMIUM=1 GENROUTE_REQUIRE_REDIS=1
export PATH="$VENV/bin:$PATH"
t=$(date +%s)
genroute demo --no-tune --no-trace
echo "python $version: demo in $(( $(date +%s) - t )) s"
t=$(date +%s)
# The mypy test runs too: it checks for this Python, with the numpy pip picked for it, and the tune-local modules
# it follows (torch, peft, transformers, gguf) count as Any when missing ([tool.mypy] in pyproject.toml).
GENROUTE_NO_SKIPS=1 GENROUTE_ALLOWED_SKIPS=tests/skips/light_install.txt python -m pytest -q -p no:cacheprovider "$@"
echo "python $version: tests in $(( $(date +%s) - t )) s; total $(( $(date +%s) - start )) s"
