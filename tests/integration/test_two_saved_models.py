"""Two tftrt-saved models loaded in one process whose library functions have the same names.

Each model is converted and saved in its own process (as users do), from the same code with
other constants inside a tf.while_loop body: TensorFlow names the traced functions alike
(``__inference_while_body_..``) in both. tftrt.load registered the converted graph's library
under those names, the second model found the first's registered and ran its bodies: wrong
numbers without an error. Every answer is checked against native TensorFlow."""

import subprocess
import sys

import numpy as np
import tensorflow as tf

import tftrt

MAKE = r'''
import sys, tensorflow as tf
from tftrt import trt_convert as trt
seed, out = float(sys.argv[1]), sys.argv[2]
class M(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.tanh(tf.nn.relu(x * 2.0 + 0.5) * 0.7)
        _, h = tf.while_loop(lambda i, h: i < 2, lambda i, h: (i + 1, h * 0.5 + seed), [0, h])
        return {"y": tf.tanh(tf.nn.relu(h * 0.3 + 1.0) * 0.5)}
m = M()
tf.saved_model.save(m, out + "_native", signatures=m.__call__)
c = trt.TrtGraphConverterV2(input_saved_model_dir=out + "_native")
c.convert()
c.build(lambda: iter([(tf.ones((2, 8)),)]))
c.save(out + "_trt")
'''


def _make(tmp_path, seed, name):
    out = str(tmp_path / name)
    run = subprocess.run([sys.executable, "-c", MAKE, str(seed), out], capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ,
                                                      "TFTRT_BACKEND": "numpy"})
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_two_models_with_same_named_functions_each_give_their_own_answers(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    a, b = _make(tmp_path, 1.0, "A"), _make(tmp_path, 2.0, "B")
    x = tf.constant(np.random.RandomState(0).rand(3, 8).astype(np.float32))
    loaded = {}
    for d in (a, b, a):  # A again: the same model loaded twice shares its functions
        loaded[d] = tftrt.load(d + "_trt")
        for e in (a, b):
            if e not in loaded:
                continue
            got = loaded[e].signatures["serving_default"](x=x)["y"]
            want = tf.saved_model.load(e + "_native").signatures["serving_default"](x=x)["y"]
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=e)
            graph = tf.function(lambda t, s=loaded[e].signatures["serving_default"]: s(x=t))
            np.testing.assert_allclose(graph(x)["y"].numpy(), want.numpy(), rtol=1e-5,
                                       atol=1e-6, err_msg=e + " in a tf.function")
    ops = [op for m in loaded.values() for op in m.engine_ops.values()]
    assert ops and all(op.stats["engine"] > 0 for op in ops)
