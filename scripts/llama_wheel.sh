#!/usr/bin/env bash
# Print the path of a llama-cpp-python wheel built with genroute's flags, building it once if it is not cached.
# Used by scripts/install.sh and scripts/check_wheel.sh. Run with the Python that will install the wheel
# (PYTHON, default python3): the wheel is for that interpreter.
#
# llama.cpp build: only the library (no examples, tools, server or tests: ~40 % less compile work), and a portable
# x86-64-v3 CPU target (AVX2/FMA/F16C) instead of -march=native. A native build on a CPU that advertises AMX
# but whose VM does not enable it dies with SIGILL on the first decode (seen on this project's machines), and a
# native wheel cached on one machine can crash on the next. Set CMAKE_ARGS to build something else.
set -euo pipefail
PY=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# pip's own wheel cache ignores CMAKE_ARGS (it would hand back a wheel built with other flags), so the wheel is
# built once into a folder keyed by version and flags, and installed from there.
flags_key=$(printf '%s %s' "$LLAMA_VERSION" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
wheels="${GENROUTE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/genroute/wheels}/llama-$flags_key"
if ! ls "$wheels"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION (once; CMAKE_ARGS=$CMAKE_ARGS)" >&2
  # Owner-only, whatever the umask: genroute refuses a cache directory its group or others may write to (a umask of
  # 002, common for users with their own group, would make ~/.cache/genroute 0775 here and stop `genroute demo`).
  (umask 077 && mkdir -p "$wheels.tmp")
  "$PY" -m pip wheel --no-deps --no-cache-dir -w "$wheels.tmp" "llama-cpp-python==$LLAMA_VERSION" >&2
  rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
fi
ls "$wheels"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1
