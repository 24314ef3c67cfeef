"""Erfc's tail and integer FloorDiv near the limits, through TrtGraphConverterV2 (numpy backend:
the engines run), against native TF. Both were silently wrong before:

* "Erfc" was 1 - erf(x) in float32: 1e-3 relative error at x = 3, 0 from x ~ 4 (TF:
  erfc(5) = 1.5e-12), so log(erfc(x)) was -inf; float16 was off by thousands of ulps;
* integer "FloorDiv" was (a - a mod b) / b, and a - mod wrapped near the limits:
  floordiv(2**31 - 1, -3) came out 715827882 (TF: -715827883).

Keras' exact GELU traces to Erfc; the engine still takes the whole program for GELU and fuses
it into the matmul's epilogue.
"""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from tests.integration import models
from tftrt import trt_convert as trt

F32_TINY = float(np.finfo(np.float32).tiny)


def _convert(module, path, inputs):
    """Converts the SavedModel of ``module`` (minimum_segment_size=1, FP32) and builds it for
    ``inputs``; returns the converter, the converted function and the native one."""
    models.save_module(module, path)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1,
                                   precision_mode="FP32")
    fn = conv.convert()
    conv.build(lambda: iter([tuple(inputs)]))
    return conv, fn, tf.saved_model.load(path).signatures["serving_default"]


def _engines_ran(conv, *tf_ops):
    """Every engine op ran its engine (never the native fallback), and ``tf_ops`` are inside a
    segment: a test of an op left native would compare TF with itself. Returns the engines."""
    ops = list(conv.engine_ops.values())
    assert ops and all(op.stats["engine"] > 0 and op.stats.get("native", 0) == 0
                       for op in ops), [dict(op.stats) for op in ops]
    segmented = {conv.graph_info.nodes[n].op for s in conv.segmentation.segments
                 for n in s.nodes}
    for op in tf_ops:
        assert op in segmented, f"{op} not converted: segments hold {sorted(segmented)}"
    return [e for op in ops for _, e in op.cache.items()]


def _unary_module(dtype, f):
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], dtype, name="x")])
        def __call__(self, x):
            return {"y": f(x)}
    return M()


# --- Erfc ----------------------------------------------------------------------------------------

def test_erfc_float32_keeps_relative_precision_into_the_tail(tmp_path):
    x = np.concatenate([np.linspace(-10.0, 30.0, 80001),
                        [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30]]).astype(np.float32)
    conv, fn, native = _convert(_unary_module(tf.float32, tf.math.erfc), str(tmp_path / "m"),
                                [x])
    got = fn(x=tf.constant(x))["y"].numpy()
    want = native(x=tf.constant(x))["y"].numpy()
    engines = _engines_ran(conv, "Erfc")
    # the whole sequence is one elementwise kernel
    assert [l.kind for e in engines for l in e.network.layers] == ["pointwise"]

    assert got.dtype == np.float32
    fin = np.isfinite(x)
    # +-inf and NaN as TF: erfc(inf) = 0, erfc(-inf) = 2, NaN -> NaN
    np.testing.assert_array_equal(got[~fin], want[~fin])
    assert not np.isnan(got[fin]).any()
    exact = np.array([math.erfc(float(v)) for v in x[fin]])
    # < 5e-7 measured; TF flushes results below float32's smallest normal to 0, hence atol
    np.testing.assert_allclose(got[fin], exact, rtol=1e-6, atol=F32_TINY)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-5, atol=F32_TINY)
    grid = got[:80001]
    assert np.all(np.diff(grid) <= 0), "erfc is not non-increasing on the grid"
    assert np.all(grid[x[:80001] > 10.1] == 0)  # underflowed, smoothly: no NaN, no jump
    with np.errstate(divide="ignore"):
        logs = np.log(got[(x > 3.0) & (x < 9.0)].astype(np.float64))
    assert np.all(np.isfinite(logs))


def test_erfc_float16_is_rounded_once(tmp_path):
    """Every float16 value (inf, NaN, subnormals included): within one ulp of TF's, which
    computes half Erfc in float32 and rounds once."""
    x = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    conv, fn, native = _convert(_unary_module(tf.float16, tf.math.erfc), str(tmp_path / "m"),
                                [x])
    got = fn(x=tf.constant(x))["y"].numpy()
    want = native(x=tf.constant(x))["y"].numpy()
    _engines_ran(conv, "Erfc")
    assert got.dtype == np.float16
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all() and not np.isnan(got[~nan]).any()
    # erfc is in [0, 2]: the bit patterns of non-negative halfs are ordered like their values
    ulps = np.abs(got[~nan].view(np.int16).astype(np.int64)
                  - want[~nan].view(np.int16).astype(np.int64))
    assert ulps.max() <= 1, f"{ulps.max()} ulps at x={x[~nan][ulps.argmax()]}"


class _KerasDenseGelu(tf.Module):
    def __init__(self):
        import keras
        keras.utils.set_random_seed(0)
        self.dense = keras.layers.Dense(16, activation="gelu")  # keras: approximate=False
        self.dense.build((None, 8))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": self.dense(x)}


class _TfGelu(tf.Module):
    def __init__(self):
        rng = np.random.RandomState(0)
        self.w = tf.Variable(rng.standard_normal((8, 16)).astype(np.float32))
        self.b = tf.Variable(rng.standard_normal(16).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": tf.nn.gelu(tf.matmul(x, self.w) + self.b, approximate=False)}


@pytest.mark.parametrize("module", [_KerasDenseGelu, _TfGelu])
def test_exact_gelu_through_erfc_is_the_matmul_epilogue(module, tmp_path):
    """Keras' exact gelu and tf.nn.gelu(approximate=False) trace to Erfc: the engine checks the
    pointwise program numerically against GELU and fuses it into the matmul (no pointwise
    layer left), with the precise Erfc as with 1 - erf."""
    x = models.batch((5, 8)) * 4.0
    conv, fn, native = _convert(module(), str(tmp_path / "m"), [x])
    got = fn(x=tf.constant(x))["y"].numpy()
    want = native(x=tf.constant(x))["y"].numpy()
    engines = _engines_ran(conv, "Erfc", "MatMul")
    layers = [l for e in engines for l in e.network.layers]
    assert [l.kind for l in layers] == ["matmul"], [l.kind for l in layers]
    assert {"op": "act", "fn": "gelu", "approximate": "none"} in layers[0].epilogue
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- FloorDiv / FloorMod -------------------------------------------------------------------------

def _limit_pairs(dtype):
    """Dividends and divisors at and near the limits, both signs, exact multiples too; not
    MIN // -1 (it overflows in TF as well) nor a zero divisor (an error in TF)."""
    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    a = [hi, hi - 1, hi - 2, lo, lo + 1, lo + 2, 7, -7, 6, -6, 1, -1, 0, 12345, -12345]
    b = [-3, 3, -5, 5, 2, -2, 7, -7, 1, -1, hi, lo, hi - 1, lo + 1, 1000003, -1000003]
    pairs = [(p, q) for p, q in itertools.product(a, b) if not (p == lo and q == -1)]
    return (np.array([p for p, _ in pairs], dtype), np.array([q for _, q in pairs], dtype))


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_floor_div_and_mod_near_the_limits(dtype, tmp_path):
    tf_dtype = tf.as_dtype(dtype)

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf_dtype, name="a"),
                                      tf.TensorSpec([None], tf_dtype, name="b")])
        def __call__(self, a, b):
            return {"q": tf.math.floordiv(a, b), "r": tf.math.floormod(a, b)}
    a, b = _limit_pairs(dtype)
    conv, fn, native = _convert(M(), str(tmp_path / "m"), [a, b])
    got = fn(a=tf.constant(a), b=tf.constant(b))
    want = native(a=tf.constant(a), b=tf.constant(b))
    _engines_ran(conv, "FloorDiv", "FloorMod")
    for k in ("q", "r"):
        assert got[k].dtype == want[k].dtype == tf_dtype
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=k)
    # and the floor identities themselves, in Python's unbounded integers
    q, r = got["q"].numpy(), got["r"].numpy()
    assert [int(v) for v in q] == [int(x) // int(y) for x, y in zip(a, b)]
    assert [int(v) for v in r] == [int(x) % int(y) for x, y in zip(a, b)]


def test_integer_floor_div_of_the_reported_values(tmp_path):
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="a"),
                                      tf.TensorSpec([None], tf.int32, name="b")])
        def __call__(self, a, b):
            return {"q": tf.math.floordiv(a, b)}
    a = np.array([2 ** 31 - 1, -2 ** 31, 2 ** 31 - 2, -7], np.int32)
    b = np.array([-3, 3, -5, 2], np.int32)
    conv, fn, _ = _convert(M(), str(tmp_path / "m"), [a, b])
    got = fn(a=tf.constant(a), b=tf.constant(b))["q"].numpy()
    _engines_ran(conv, "FloorDiv")
    np.testing.assert_array_equal(got, [-715827883, -715827883, -429496730, -4])
