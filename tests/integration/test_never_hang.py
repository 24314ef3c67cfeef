"""An engine op never blocks TensorFlow's inter-op threads: the native fallback is a node of
the graph (tftrt.rewrite.with_native_fallback), not a TF call inside the engine callback.

Each case runs in its own process (the threading settings must precede TF's start) with a
timeout as the watchdog: a hang fails the test, it does not hang the suite.
"""

import os
import subprocess
import sys

import pytest

from tests.integration import models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WATCHDOG_S = 240


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    return models.save_module(models.MLP(), str(tmp_path_factory.mktemp("hang") / "mlp"))


PATHS = {"graph": "0", "pipeline": "1"}  # TFTRT_DIRECT_CALL: engine nodes in a TF graph, or
# the Python-level pipeline convert()'s function runs eager calls through (tftrt/pipeline.py)


def run_worker(mode, backend, model_dir, path="graph"):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFTRT_DIRECT_CALL=PATHS[path])
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.integration.hang_worker", mode,
                               backend, model_dir], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=WATCHDOG_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{mode} on the {backend} backend hung (no answer in {WATCHDOG_S} s); "
                    f"stderr tail: {(e.stderr or b'')[-2000:]!r}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("OK")][-1]
    engine_calls, native_calls = map(int, line.split()[1:])
    return engine_calls, native_calls


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_one_inter_op_thread_converts_builds_and_calls(mlp_dir, backend, path):
    engine_calls, native_calls = run_worker("one-thread", backend, mlp_dir, path)
    if backend == "native":
        assert engine_calls == 0 and native_calls > 0
    else:
        assert engine_calls > 0


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_eight_threads_random_batches_small_cache_failing_builds(mlp_dir, backend, path):
    engine_calls, native_calls = run_worker("stress", backend, mlp_dir, path)
    assert engine_calls + native_calls == 8 * 200 * 2  # two engines per call
    if backend == "numpy":
        # batch 3's builds fail (native), every other batch runs an engine
        assert engine_calls > 0 and native_calls > 0
    else:
        assert engine_calls == 0
