"""Runs a build script in a fresh Python process on the GPU backend with its own build cache
(the build-cache and build-worker GPU tests: what a new process finds on disk)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_build_script(script: str, cache_dir, timeout: float = 300, **env) -> dict:
    """The JSON object ``script`` prints last, run with TFTRT_CACHE_DIR=``cache_dir``, the
    cupy backend, this checkout first on the path, CuPy's kernels beside the build cache, and
    ``env``."""
    e = dict(os.environ, TFTRT_CACHE_DIR=str(cache_dir), TFTRT_BACKEND="cupy",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    e.pop("CUPY_CACHE_DIR", None)
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=e, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])
