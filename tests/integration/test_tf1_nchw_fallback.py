"""A TF1 NCHW graph whose engine falls back to its native segment, on a CPU.

TF's CPU kernels run NCHW convolutions and pools only through oneDNN's layout rewrite, which a
Session applies to the main graph but not to a fallback kept as a function call: the converted
graph failed ("The Conv2D op currently only supports the NHWC tensor format on the CPU") where
the original ran, on every call with the native backend, the default of a CPU-only machine
(helper hunt, 2026-12-04). With oneDNN on and engines off the GPU the fallback is inlined
(activation.inline_fallback); without oneDNN it stays a call, so that engines still run NCHW
graphs that TF's own CPU kernels cannot. Each case runs in a process of its own: TensorFlow
reads TF_ENABLE_ONEDNN_OPTS once.
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import tensorflow as tf
    import tftrt
    from tftrt import activation, trt_convert as trt
    rng = np.random.RandomState(0)
    w = rng.randn(3, 3, 3, 4).astype(np.float32)

    def graph(fmt):
        g = tf.Graph()
        with g.as_default():
            shape = (None, 3, 8, 8) if fmt == "NCHW" else (None, 8, 8, 3)
            x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
            h = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", data_format=fmt))
            h = tf.nn.max_pool2d(h, 2, 2, "VALID", data_format=fmt)
            tf.identity(tf.reduce_mean(h, axis=[2, 3] if fmt == "NCHW" else [1, 2]) * 2.0,
                        name="out")
        return g.as_graph_def()

    def run(gd, x):
        g = tf.Graph()
        with g.as_default():
            tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as s:
            return s.run("out:0", {"x:0": x})

    x = rng.randn(6, 3, 8, 8).astype(np.float32)
    want = run(graph("NHWC"), x.transpose(0, 2, 3, 1))  # TF's NHWC kernels: the reference
    conv = trt.TrtGraphConverter(input_graph_def=graph("NCHW"), nodes_denylist=["out"],
                                 is_dynamic_op=sys.argv[1] == "dynamic", max_batch_size=4,
                                 minimum_segment_size=2)
    got = run(conv.convert(), x)  # static: batch 6 > max_batch_size 4 falls back
    print("INLINE", activation.inline_fallback())
    print("ERR", float(np.abs(got - want).max() / np.abs(want).max()))
''')


def _run(mode: str, backend: str, onednn: str) -> dict:
    env = dict(os.environ, TFTRT_BACKEND=backend, TF_ENABLE_ONEDNN_OPTS=onednn,
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines()
               if line.startswith(("INLINE", "ERR")))
    return {"inline": out["INLINE"] == "True", "err": float(out["ERR"])}


@pytest.mark.parametrize("mode, backend", [("dynamic", "native"), ("static", "numpy")])
def test_nchw_fallback_runs_where_onednn_runs_the_original(mode, backend):
    """oneDNN on: the native backend's every call, and a static engine's batch over its
    max_batch_size, run the native segment; both give TF's numbers (they failed before)."""
    got = _run(mode, backend, "1")
    assert got["inline"] and got["err"] <= 1e-5, got


def test_nchw_engine_runs_without_onednn_with_its_fallback_kept_a_call():
    """oneDNN off: TF's CPU kernels have no NCHW, and an inlined fallback would fail as the
    graph's kernels are made; the numpy engines run the whole batch (dynamic op) instead."""
    got = _run("dynamic", "numpy", "0")
    assert not got["inline"] and got["err"] <= 1e-5, got


def test_engines_on_the_gpu_keep_the_fallback_a_call(monkeypatch):
    """On the GPU (the CuPy backend) the fallback stays a call made at its first run."""
    from tftrt import activation, engine_op
    monkeypatch.setattr(engine_op, "resolve_backend", lambda name=None: "cupy")
    assert activation.inline_fallback() is False
