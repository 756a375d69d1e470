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
top=${GENROUTE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/genroute}
root=${GENROUTE_WHEEL_CACHE:-$top/wheels}
wheels="$root/llama-$flags_key"

# The wheel is installed and its library run, so, as genroute refuses its own cache (check_owned in
# genroute/cache.py), a cache directory or wheel another user could have put there is refused: one that belongs to a
# user other than this one or root, or that its group or all users may write. Links are followed.
me=$(id -u)
owned() {
  [ -e "$1" ] || return 0  # made below, owner-only
  local uid mode who
  read -r uid mode < <(stat -L -c '%u %a' "$1" 2>/dev/null || stat -L -f '%u %Lp' "$1")
  if [ "$uid" != "$me" ] && [ "$uid" != 0 ]; then
    echo "scripts/llama_wheel.sh: the wheel cache $1 belongs to another user (uid $uid; you are uid $me), who could" \
      "put a llama-cpp-python wheel there that would be installed and run: if it is yours to take (a volume mounted" \
      "from the host into a container), chown -R $me $1; else set GENROUTE_WHEEL_CACHE to a directory of your own" >&2
    return 1
  fi
  case $(( 8#$mode & 8#022 )) in
    0) return 0 ;;
    16) who="its group" ;;
    2) who="all users" ;;
    *) who="its group and all users" ;;
  esac
  echo "scripts/llama_wheel.sh: the wheel cache $1 may be written by $who (mode $mode), who could put a" \
    "llama-cpp-python wheel there that would be installed and run: chmod go-w $1, or set GENROUTE_WHEEL_CACHE to a" \
    "directory only you can write to" >&2
  return 1
}
for dir in "$top" "$root" "$wheels"; do
  owned "$dir" || exit 1
done
if ! ls "$wheels"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_VERSION (once; CMAKE_ARGS=$CMAKE_ARGS)" >&2
  # Owner-only, whatever the umask: genroute refuses a cache directory its group or others may write to (a umask of
  # 002, common for users with their own group, would make ~/.cache/genroute 0775 here and stop `genroute demo`),
  # and this script a wheel they may write (`owned` below).
  (umask 077 && mkdir -p "$wheels.tmp" &&
    "$PY" -m pip wheel --no-deps --no-cache-dir -w "$wheels.tmp" "llama-cpp-python==$LLAMA_VERSION" >&2)
  rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
fi
wheel=$(ls "$wheels"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
owned "$wheel" || exit 1
echo "$wheel"
