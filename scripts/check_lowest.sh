#!/usr/bin/env bash
# The lower bounds in pyproject.toml are claims: an application that pins pydantic or google-genai at the oldest
# version genroute allows gets a genroute that works there. This checks them, reading them from pyproject.toml itself
# (no second list): a venv ($GENROUTE_VENV, default .venv-lowest) gets every dependency of the core install and of
# the extras below at its floor (the highest `>=` or `==` that any of them declares for it), and runs tests that use
# each of those dependencies. Where a core floor is lower than an extra's for the same package (OpenTelemetry's
# API and SDK), a second venv ($GENROUTE_VENV-core) gets the core install alone at its floors, with the test tools,
# and runs the tests that need nothing more. llama-cpp-python comes from the wheel cache that scripts/llama_wheel.sh
# fills (no second compile). What an older version lacks is said beside each floor in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${GENROUTE_VENV:-.venv-lowest}
# tune-local is left out: torch and transformers take minutes to install, and its tests train a model.
EXTRAS=local,dev,otlp,redis,pdf,bench
# The test runner and its plugins, for the core venv (at the dev extra's floors).
TOOLS="pytest pytest-asyncio hypothesis psutil"
start=$(date +%s)

# `floors EXTRAS`: `name==floor` for the core install and EXTRAS (comma-separated; "" for the core alone).
floors() {
  "$PY" - "$1" <<'EOF'
import re
import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
requirements = list(project["dependencies"])
for extra in filter(None, sys.argv[1].split(",")):
    requirements += project["optional-dependencies"][extra]
found: dict[str, tuple[tuple[int, ...], str]] = {}
for requirement in requirements:
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?", requirement.strip())
    if match is None:
        sys.exit(f"check_lowest: cannot read the requirement {requirement!r} in pyproject.toml")
    name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
    lows = [spec.strip()[2:].strip() for spec in match.group(3).split(",") if spec.strip()[:2] in (">=", "==")]
    if len(lows) != 1:
        sys.exit(f"check_lowest: {requirement!r} in pyproject.toml has no lower bound (>= or ==): say the oldest"
                 " version it works with")
    key = tuple(int(part) for part in lows[0].split("."))
    if name not in found or key > found[name][0]:
        found[name] = (key, lows[0])
for name, (_, version) in sorted(found.items()):
    print(f"{name}=={version}")
EOF
}

# `install VENV CONSTRAINTS ARGS...`: a new venv with ARGS installed at exactly the versions CONSTRAINTS names.
install() {
  local venv=$1 constraints=$2
  shift 2
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c "$constraints" "$@"
  "$venv/bin/python" -m pip install --quiet --no-deps -e tests/plugin_pkg
  # Fails if pip installed another version than a floor of a package that is installed (a name it spells otherwise).
  "$venv/bin/python" - "$constraints" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

wrong = []
for line in open(sys.argv[1]).read().split():
    name, floor = line.split("==")
    try:
        if Version(version(name)) != Version(floor):
            wrong.append(f"{name} {version(name)} (floor {floor})")
    except PackageNotFoundError:
        pass
if wrong:
    sys.exit("check_lowest: not at the floor: " + ", ".join(wrong))
EOF
}

run_tests() {
  local venv=$1
  shift
  GENROUTE_NO_SKIPS=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
}

all=$(mktemp) core=$(mktemp)
trap 'rm -f "$all" "$core"' EXIT
floors "$EXTRAS" >"$all"
floors "" >"$core"
echo "lowest: the floors of the core install and of $EXTRAS:"
tr '\n' ' ' <"$all" && echo
llama=$(PYTHON="$PY" bash scripts/llama_wheel.sh)
install "$VENV" "$all" "$llama" -e ".[$EXTRAS]"
echo "lowest: installed in $(( $(date +%s) - start )) s"
# The annotations at the floors (the package ships py.typed: users type-check against them with these versions;
# tests/test_types.py checks them at the newest). Not here: imports of tune-local (not installed) and of packages
# that ship no types at their floor, and an ignore that only newer stubs need. About 20 s on 2 cores.
"$VENV/bin/python" -m mypy --ignore-missing-imports --no-warn-unused-ignores --cache-dir "$VENV/.mypy_cache"
echo "lowest: mypy done in $(( $(date +%s) - start )) s"
# Each dependency at its floor in use: google-genai and aiohttp on the wire, pydantic in config, chromadb embedded
# and as a server, the ONNX embedder (onnxruntime, tokenizers, numpy), tenacity's retries, jinja2 templates,
# jsonschema validators, redis shared state (and its URLs: a password, a unix socket, TLS, the errors of each),
# pypdf ingestion, rich and markdown-it in the bench report, matplotlib charts, the OTLP exporter, and
# llama-cpp-python with the bundled Gemma weights (the local-model tests in the RAG, ICL and function-calling files).
# About 4 minutes on 2 cores.
run_tests "$VENV" \
  tests/test_config.py tests/test_router.py tests/test_gemini_engine.py tests/test_gemini_responses.py \
  tests/test_gemini_sessions.py tests/test_sync_bridge.py tests/test_router_loops.py tests/test_embedders.py \
  tests/test_knowledge.py tests/test_ingest_files.py tests/test_rag.py tests/test_icl.py tests/test_function_calling.py \
  tests/test_tools.py tests/test_reliability_faults.py tests/test_reliability_telemetry.py tests/test_telemetry.py \
  tests/test_state.py tests/test_state_urls.py tests/test_bench.py tests/test_cost_embedding_tokens.py \
  tests/test_cost_audit_modality.py
echo "lowest: tests done in $(( $(date +%s) - start )) s"

# Core floors below an extra's floor for the same package: the core install alone at its own floors.
lower=$(comm -23 <(sort "$core") <(sort "$all") | cut -d= -f1 | tr '\n' ' ')
if [ -n "$lower" ]; then
  echo "lowest: the core install's own floors of $lower"
  grep -E "^($(echo $TOOLS | tr ' ' '|'))==" "$all" >>"$core"
  install "$VENV-core" "$core" -e . $TOOLS
  run_tests "$VENV-core" tests/test_telemetry.py tests/test_telemetry_semconv.py tests/test_router.py
  echo "lowest: core tests done in $(( $(date +%s) - start )) s"
fi
