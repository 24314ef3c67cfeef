"""Graph-form boundary probe (run h): the time inside EngineCallback against the whole graph
call of bench_boundary.py's three-engine model, and a bare chain of three EagerPyFunc + two Cos
as the host's own baseline. Run from a tree's root (today's, or an older commit's unpacked
beside it, to compare them on one host: benchmarks/README.md, run h):

    PYTHONPATH=$PWD python benchmarks/probe_graph_boundary.py
"""
import sys, time, os
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import numpy as np
import tensorflow as tf
from bench_boundary import three_engines, median_ms
from tftrt import conversion
acc = {"cb": [], "try": []}
orig = conversion.EngineCallback.__call__
def timed(self, *inputs):
    t0 = time.perf_counter()
    r = orig(self, *inputs)
    acc["cb"].append(time.perf_counter() - t0)
    return r
conversion.EngineCallback.__call__ = timed
conv, fn, x, d = three_engines(1)
graph_fn = getattr(fn, "native", fn)
for rep in range(2):
    acc["cb"].clear()
    g = median_ms(lambda: graph_fn(x=x), 300)
    cb = np.median(acc["cb"]) * 1e3
    print(f"graph call {g:.3f} ms; callback median {cb:.3f} ms x3 = {3*cb:.3f}; "
          f"calls {len(acc['cb'])}")
# bare EagerPyFunc chain: 3 py_functions (identity via tf ops on GPU) with 2 Cos between
def ident(t):
    return tf.identity(t)
@tf.function
def chain(t):
    for i in range(3):
        t = tf.py_function(ident, [t], tf.float32)
        if i < 2:
            t = tf.cos(t)
    return t
with tf.device("/GPU:0"):
    h = tf.identity(x)
print(f"bare 3 EagerPyFunc + 2 Cos: {median_ms(lambda: chain(h), 300):.3f} ms")
@tf.function
def cos2(t):
    return tf.cos(tf.cos(t))
print(f"2 Cos alone: {median_ms(lambda: cos2(h), 300):.3f} ms")
print("status ops:", [(k, dict(v.stats)) for k, v in sorted(conv.engine_ops.items())][:1])
