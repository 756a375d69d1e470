"""Time of ``import genroute`` in a fresh interpreter (best of N), and which heavy modules it pulled in.

    python benchmarks/import_time.py [--n 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import checkout  # this checkout's genroute, not an installed one

PROBE = (
    "import sys, time; t = time.perf_counter(); import genroute; from genroute import Router, GenerateRequest; "
    "d = time.perf_counter() - t; heavy = [m for m in ('chromadb', 'llama_cpp', 'google.genai', 'onnxruntime', "
    "'torch', 'numpy') if m in sys.modules]; print(d, ','.join(heavy))"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args()
    times, heavy = [], ""
    # The probe imports this checkout's genroute too: after PYTHONPATH's entries, as ``checkout`` orders them.
    named = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([named, str(checkout.ROOT)] if named else [str(checkout.ROOT)])}
    for _ in range(args.n):
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                             env=env).stdout.split()
        times.append(float(out[0]))
        heavy = out[1] if len(out) > 1 else ""
    times.sort()
    print(f"import genroute + Router, GenerateRequest: best {times[0] * 1000:.1f} ms, "
          f"median {times[len(times) // 2] * 1000:.1f} ms over {args.n} fresh interpreters")
    print(f"heavy modules loaded: {heavy or 'none'}")


if __name__ == "__main__":
    main()
