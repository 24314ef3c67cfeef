"""Edge values through converted models (numpy backend: the engines run), against native TF
to the bit: found by a hunt on 2026-12-01, each silently wrong before.

* top_k of an int32 row holding INT_MIN: the descending sort negated the key and -INT_MIN
  is INT_MIN, so it came first; top_k with a NaN: TF ranks NaN first, the engine last;
* int64 Pow was computed in float64 (3**39 lost its low digits); int32 Pow overflow wraps;
* log1p(+inf) was NaN (Kahan's ratio is inf / inf there).
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.integration import models
from tftrt import trt_convert as trt

CASES = {
    "top_k int32 with INT_MIN": (
        tf.int32, lambda x: {"v": tf.math.top_k(x * 1, 3).values,
                             "i": tf.math.top_k(x * 1, 3).indices},
        np.array([[5, -2 ** 31, 7, 3, 0, -1], [-2 ** 31, -2 ** 31, 1, 1, 0, 2]], np.int32)),
    "descending sort int32 with INT_MIN": (
        tf.int32, lambda x: {"s": tf.sort(x * 1, direction="DESCENDING")},
        np.array([[5, -2 ** 31, 7, 3, 0, -1]], np.int32)),
    "top_k with NaN": (
        tf.float32, lambda x: {"v": tf.math.top_k(x * 1.0, 2).values,
                               "i": tf.math.top_k(x * 1.0, 2).indices},
        np.array([[1.0, np.nan, 3.0, 2.0, 0.0, -1.0]], np.float32)),
    "int64 pow": (
        tf.int64, lambda x: {"y": tf.pow(x * 1, tf.constant([39, 22, 0, 1, 5, 2], tf.int64))},
        np.array([[3, 7, 5, -4, -3, 9]], np.int64)),
    "int32 pow wraps": (
        tf.int32, lambda x: {"y": tf.pow(x * 1, tf.constant([2, 30, 3, 0, 1, 31], tf.int32))},
        np.array([[2 ** 31 - 1, 7, -1290, 4, 9, 2]], np.int32)),
    "log1p of infinities": (
        tf.float32, lambda x: {"y": tf.math.log1p(x * 1.0)},
        np.array([[np.inf, 1.0, 0.0, -1.0, 1e-8, np.nan]], np.float32)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_edge_values_match_native_tensorflow(name, tmp_path):
    dtype, f, x = CASES[name]

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6], dtype, name="x")])
        def __call__(self, x):
            return f(x)
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    conv.build(lambda: iter([(x,)]))
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))
    got = fn(x=tf.constant(x))
    assert sum(op.stats["engine"] for op in conv.engine_ops.values()) >= 1  # engines ran
    for k in want:
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=f"{name} [{k}]")


@pytest.mark.parametrize("layer", ["group", "layer_axis1", "squared_difference",
                                   "softmax_by_hand", "rms_norm", "l2_normalize", "norm",
                                   "square_transposed_then_mean", "max_of_squares",
                                   "scaled_square", "square_read_by_two_means",
                                   "shared_square_through_pointwise", "l2_pool",
                                   "weighted_square", "half_mse_of_two", "top_k_of_squares",
                                   "sqrt_of_a_cropped_square", "gather_of_squares"])
def test_fp16_variance_of_large_activations(tmp_path, layer):
    """FP16 engines of GroupNormalization, of a LayerNormalization over a non-last axis and of
    a hand-written variance, with activations ~200 from their mean: (x - mean)^2 was stored in
    float16, overflowed past 256, the variance became inf and the output beta (relative error
    1.0, helper hunt 2026-12-01; only the last-axis LayerNorm, which norm_fusion takes, was
    right); a hand-written softmax's exp(x) overflows the same way. The squaring or
    exponentiating layer that feeds a sum or mean stays float32. Squares that import as
    Mul(x, x) (tf.square in an RMS norm, l2_normalize, tf.norm), a square that reaches its
    mean through a transpose, and a max of squares were missed by that rule and came out 0
    or inf (helper hunt, 2026-12-02). So were a square with a constant factor, which Grappler
    writes h * (h * 0.5), a square read by two means on different paths (only the first path
    stayed float32), a square shared by two readers, so that unfused pointwise layers
    (sq + 1, relu(sq - 5)) stand before its reductions, and a square that a pool reads (L2
    pooling) (review hunt, 2026-12-02). And so were squares with a per-feature weight
    (sum(w * x * x)), of a difference of two tensors scaled (0.5 * d * d), ranked by top_k,
    bounded by a separate sqrt layer after a crop, or read through a gather (FP16 hunt,
    2026-12-02)."""
    import keras
    inp = keras.Input((8, 8, 8))
    if layer == "group":
        out = keras.layers.GroupNormalization(groups=2)(inp)
    elif layer == "layer_axis1":
        out = keras.layers.LayerNormalization(axis=1)(inp)
    elif layer == "softmax_by_hand":  # exp(x) / sum(exp(x)), logits up to ~30: exp > 65504
        e = keras.ops.exp(inp * 0.05)
        out = e / keras.ops.sum(e, axis=-1, keepdims=True)
    elif layer == "rms_norm":
        out = inp * keras.ops.rsqrt(keras.ops.mean(keras.ops.square(inp), axis=-1,
                                                   keepdims=True) + 1e-6)
    elif layer == "l2_normalize":
        out = keras.layers.Lambda(lambda t: tf.math.l2_normalize(t, -1))(inp)
    elif layer == "norm":
        out = keras.layers.Lambda(lambda t: t / tf.norm(t, axis=-1, keepdims=True))(inp)
    elif layer == "square_transposed_then_mean":
        sq = keras.layers.Lambda(lambda t: tf.transpose(tf.square(t), [0, 3, 1, 2]))(inp)
        out = inp * keras.ops.rsqrt(keras.ops.mean(sq, axis=(2, 3))[:, None, None, :] + 1.0)
    elif layer == "max_of_squares":
        out = inp / keras.ops.sqrt(keras.ops.max(keras.ops.square(inp), axis=-1,
                                                 keepdims=True))
    elif layer == "scaled_square":  # an energy: mean(0.5 * h * h), Grappler: h * (h * 0.5)
        e = keras.layers.Lambda(lambda t: tf.reduce_mean(t * t * 0.5 + 0.5 * t * t, -1,
                                                         keepdims=True))(inp)
        out = inp * keras.ops.rsqrt(e + 1.0)
    elif layer == "square_read_by_two_means":
        def two(t):
            sq = tf.square(t)
            a = tf.reduce_mean(sq, -1, keepdims=True)
            b = tf.reduce_mean(tf.reshape(tf.transpose(sq, [0, 3, 1, 2]), [-1, 8, 64]), -1)
            return t * tf.math.rsqrt(a + 1.0) + tf.reduce_mean(b, -1)[:, None, None, None]
        out = keras.layers.Lambda(two)(inp)
    elif layer == "shared_square_through_pointwise":
        def shared(t):
            sq = t * t
            a = tf.reduce_mean(sq + 1.0, -1, keepdims=True)
            b = tf.reduce_sum(tf.nn.relu(sq - 5.0), -1, keepdims=True)
            return t * tf.math.rsqrt(a) + tf.sqrt(b)
        out = keras.layers.Lambda(shared)(inp)
    elif layer == "l2_pool":
        out = keras.layers.Lambda(lambda t: tf.sqrt(tf.nn.avg_pool2d(t * t, 2, 2, "VALID")) +
                                  tf.sqrt(tf.nn.max_pool2d(tf.square(t), 2, 2, "VALID")))(inp)
    elif layer == "weighted_square":
        w = np.linspace(0.5, 1.5, 8).astype(np.float32)
        out = keras.layers.Lambda(lambda t: t * tf.math.rsqrt(
            tf.reduce_mean(w * t * t, -1, keepdims=True) + 1.0))(inp)
    elif layer == "half_mse_of_two":
        def half_mse(t):
            d = t - tf.reverse(t, [-1])
            return t * tf.math.rsqrt(tf.reduce_mean(0.5 * d * d, -1, keepdims=True) + 1.0)
        out = keras.layers.Lambda(half_mse)(inp)
    elif layer == "top_k_of_squares":
        out = keras.layers.Lambda(lambda t: t / tf.sqrt(
            tf.math.top_k(t * t, 1).values + 1.0))(inp)
    elif layer == "sqrt_of_a_cropped_square":
        out = keras.layers.Lambda(lambda t: tf.sqrt((t * t + 1.0)[..., 1:]))(inp)
    elif layer == "gather_of_squares":
        out = keras.layers.Lambda(lambda t: t * tf.math.rsqrt(tf.reduce_sum(
            tf.gather(t * t, [3, 1, 2], axis=-1), -1, keepdims=True) + 1.0))(inp)
    else:
        mean = keras.ops.mean(inp, axis=(1, 2), keepdims=True)
        var = keras.ops.mean(keras.ops.square(inp - mean), axis=(1, 2), keepdims=True)
        out = (inp - mean) * keras.ops.rsqrt(var + 1e-3)
    path = str(tmp_path / "m")
    tf.saved_model.save(keras.Model(inp, out), path)
    x = tf.constant((np.random.default_rng(0).standard_normal((2, 8, 8, 8)) * 200)
                    .astype(np.float32))
    ref = tf.saved_model.load(path).signatures["serving_default"](inputs=x)
    key = list(ref)[0]
    fn = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP16").convert()
    got, want = fn(inputs=x)[key].numpy(), ref[key].numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-2


POOL_ACTS = {
    "relu": tf.nn.relu, "relu6": tf.nn.relu6, "sigmoid": tf.sigmoid, "tanh": tf.tanh,
    "elu": tf.nn.elu, "softplus": tf.nn.softplus,
    "leaky_relu 0.2": lambda v: tf.nn.leaky_relu(v, 0.2),
}


def test_fp16_keeps_values_from_wide_integers_in_float32(tmp_path):
    """Timestamps cast from int32 and standardized, a sinusoidal encoding of int positions,
    and a noise schedule gathered by an int timestep: FP16 engines stored the casts and the
    gathered table in float16, so 70000 became inf, sin of it NaN, and 1 - abar[t] cancelled
    to 0 (FP16 hunt, 2026-12-02); TF and Keras' mixed precision keep them float32. RoPE's
    angles as an einsum of positions and frequencies went through an FP16 GEMM (positions
    past 2048 rounded: 31% off; transformer hunt, 2026-12-02)."""
    inv = (1.0 / 10000 ** (np.arange(0, 8, 2) / 8)).astype(np.float32)
    abar = np.cumprod(1.0 - np.linspace(1e-4, 2e-2, 64)).astype(np.float32)

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int32, name="p"),
                                      tf.TensorSpec([None], tf.int32, name="t")])
        def __call__(self, p, t):
            f = (tf.cast(p, tf.float32) - 43200.0) / 24943.0
            a = tf.cast(p, tf.float32)[..., None] * inv
            ab = tf.gather(abar, t)
            rope = tf.einsum("bi,j->bij", tf.cast(p, tf.float32) + 3000.0, inv)
            return {"f": f * 2.0, "s": tf.concat([tf.sin(a), tf.cos(a)], -1),
                    "n": tf.sqrt(1.0 - ab) * 3.0, "r": tf.sin(rope) + tf.cos(rope)}
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP16",
                                   minimum_segment_size=1)
    fn = conv.convert()
    p = np.array([[3000, 4097, 40001, 70000], [100, 30000, 65000, 86000]], np.int32)
    t = np.array([0, 1], np.int32)
    want = tf.saved_model.load(path).signatures["serving_default"](p=tf.constant(p),
                                                                  t=tf.constant(t))
    got = fn(p=tf.constant(p), t=tf.constant(t))
    assert sum(op.stats["engine"] for op in conv.engine_ops.values()) >= 1
    for k in want:
        w, g = want[k].numpy(), got[k].numpy()
        assert np.isfinite(g).all(), k
        np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-3 * np.abs(w).max(), err_msg=k)


@pytest.mark.parametrize("act", ["manual_swish", "gelu_tanh", "gelu_erf", "mish"])
def test_fp16_keeps_bounded_activations_before_a_mean_in_float16(tmp_path, act):
    """The FP32 rule for squares and exponentials judges a program's output: activations
    that square or exponentiate inside and stay near their input's scale (x / (1 + exp(-x)),
    GELU's cube, Mish) stay float16 before a global average pool (a hand-written swish was
    kept float32 with its exp: FP16 hunt, 2026-12-02)."""
    f = {"manual_swish": lambda v: v / (1.0 + tf.exp(-v)),
         "gelu_tanh": lambda v: tf.nn.gelu(v, approximate=True),
         "gelu_erf": lambda v: tf.nn.gelu(v, approximate=False),
         "mish": lambda v: v * tf.tanh(tf.nn.softplus(v))}[act]
    w = np.random.default_rng(1).standard_normal((3, 3, 4, 8)).astype(np.float32)

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.reduce_mean(f(tf.nn.conv2d(x, w, 1, "SAME")), axis=[1, 2])}
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP16",
                                   minimum_segment_size=1)
    fn = conv.convert()
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    conv.build(lambda: iter([(x,)]))
    layers = [l for op in conv.engine_ops.values() for _, e in op.cache.items()
              for l in e.network.layers]
    kept = [(l.kind, l.name) for l in layers if l.precision == "FP32" and l.kind != "reduce"]
    assert not kept, kept
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["y"]
    got = fn(x=tf.constant(x))["y"].numpy()
    assert np.abs(got - want.numpy()).max() <= 2e-2 * np.abs(want.numpy()).max()


@pytest.mark.parametrize("act", list(POOL_ACTS))
def test_an_activation_after_a_max_pool_of_nan_or_inf_windows(act, tmp_path):
    """conv -> max pool -> activation, a pool window holding only NaN or -inf (one pixel is
    enough: the conv spreads it): TF's CPU MaxPool gives float32's lowest there, then the
    activation of it (0 for a ReLU). The engine moves the activation before the pool into
    the conv (passes/activation_motion) and gave -3.4e38 (helper hunt, 2026-12-02): the pool's
    floor now goes through the activation too. SAME padding puts pads in the last window."""
    x = np.array([np.nan, np.nan, 1.0, 2.0, -np.inf, -np.inf, -3.0, np.nan, 5.0],
                 np.float32).reshape(1, 1, 9, 1)
    w = np.ones([1, 1, 1, 2], np.float32)
    w[..., 1] = -1.0
    f = POOL_ACTS[act]

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1, 9, 1], tf.float32, name="x")])
        def __call__(self, x):
            c = tf.nn.conv2d(x, w, 1, "VALID")
            return {"y": f(tf.nn.max_pool2d(c, [1, 2], [1, 2], "SAME"))}
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    conv.build(lambda: iter([(x,)]))
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["y"]
    got = fn(x=tf.constant(x))["y"]
    assert sum(op.stats["engine"] for op in conv.engine_ops.values()) >= 1  # engines ran
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=0, err_msg=act)


def test_a_negative_runtime_gather_index_is_an_error_as_in_tensorflow(tmp_path):
    """tf.gather with a runtime index of -1: TF's CPU kernel raises (its GPU kernel gives
    zeros); the engine counted it from the end and returned the last column (helper hunt,
    2026-12-02). The converted gather sends it out of range: the numpy engine fails, the op
    runs natively and TF raises; indices in range still run on the engine."""
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([3, 4], tf.float32, name="x"),
                                      tf.TensorSpec([3], tf.int32, name="i")])
        def __call__(self, x, i):
            return {"y": tf.gather(x * 2.0, i, axis=1) + 1.0}
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    good = np.array([0, 3, 2], np.int32)
    conv.build(lambda: iter([{"x": x, "i": good}]))
    native = tf.saved_model.load(path).signatures["serving_default"]
    np.testing.assert_array_equal(fn(x=tf.constant(x), i=tf.constant(good))["y"].numpy(),
                                  native(x=tf.constant(x), i=tf.constant(good))["y"].numpy())
    engine_calls = sum(op.stats["engine"] for op in conv.engine_ops.values())
    assert engine_calls >= 1
    for bad in ([0, -1, 2], [0, 4, 2]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="not in"):
            native(x=tf.constant(x), i=tf.constant(bad, tf.int32))
        with pytest.raises(tf.errors.InvalidArgumentError, match="not in"):
            fn(x=tf.constant(x), i=tf.constant(bad, tf.int32))


def test_a_model_whose_zero_input_is_invalid_keeps_its_profile(tmp_path, monkeypatch):
    """tf.gather(T, i - 1) with every real i >= 1: the split ladder's warm-up runs each rung on
    zeros, where the index is -1, out of range for TF's gather. That failed the whole profile
    build (and a loaded model's ladder) once negative indices stopped wrapping (helper hunt,
    2026-12-02); a warm-up that fails now leaves the engine to its first call."""
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    table = tf.constant(np.arange(40, dtype=np.float32).reshape(10, 4))

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int32, name="i")])
        def __call__(self, x, i):
            return {"y": tf.gather(table, i - 1, axis=0) * x}

    def feed(b):
        return {"x": np.ones((b, 4), np.float32), "i": (np.arange(b) % 10 + 1).astype(np.int32)}
    path = models.save_module(M(), str(tmp_path / "m"))
    native = tf.saved_model.load(path).signatures["serving_default"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, use_dynamic_shape=True)
    conv.convert()
    conv.build(lambda: iter([feed(1), feed(8)]))
    (op,) = conv.engine_ops.values()
    assert op.stats.get("native", 0) == 0 and op.stats["tuned_builds"] == 1, op.describe()
    conv.save(str(tmp_path / "out"))
    import tftrt
    loaded = tftrt.load(str(tmp_path / "out"))
    fn = loaded.signatures["serving_default"]
    for b in (3, 5, 8, 2):
        args = {k: tf.constant(v) for k, v in feed(b).items()}
        np.testing.assert_array_equal(fn(**args)["y"].numpy(), native(**args)["y"].numpy())
    ops = list(loaded.engine_ops.values())
    assert ops and sum(op.stats["engine"] for op in ops) >= 4
    assert sum(op.stats["native"] for op in ops) == 0


def test_per_layer_compare_sees_float16_storage(tmp_path):
    """`tftrt compare --per-layer` marks each value of an engine as a network output; those
    were kept float32 in an FP16 engine, so no layer ever showed a float16 overflow (helper
    hunt, 2026-12-02: an FP16 model 100% off passed every layer). The marked values are now
    stored as the engine stores them: a product of two large activations summed by hand,
    which overflows float16 (documented, not kept FP32), fails at its layer."""
    from tftrt import compare

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="x"),
                                      tf.TensorSpec([None, 64], tf.float32, name="z")])
        def __call__(self, x, z):
            return {"y": tf.reduce_sum(x * (z * 1.5 + 1.0), axis=-1, keepdims=True)}
    path = models.save_module(M(), str(tmp_path / "m"))
    x = (np.random.default_rng(0).standard_normal((2, 64)) * 400).astype(np.float32)
    z = x[:, ::-1] + 1.0
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP16",
                                   minimum_segment_size=1)
    conv.convert()
    conv.build(lambda: iter([{"x": x, "z": z}]))
    conv.save(str(tmp_path / "out"))
    report = compare.compare_saved_model(str(tmp_path / "out"), [{"x": x, "z": z}], rtol=2e-2,
                                         atol=2e-2, per_layer=True)
    assert report.layers, "no per-layer comparison ran"
    failing = [r for _, _, _, r in report.layers if not r.passed]
    assert failing, [(op, r.name) for _, _, op, r in report.layers]


@pytest.mark.parametrize("eq,spec_a,spec_b,shape_a,shape_b", [
    ("bsnh,btnh->bnst", [None, None, 2, 4], [None, None, 2, 4], (2, 3, 2, 4), (2, 0, 2, 4)),
    ("bcgf,dfbe->dcge", [None, None, 5, None], [5, None, 3, None], (3, 2, 5, 2), (5, 2, 3, 0)),
    ("bsnh,btnh->bnst", [None, 0, 2, 4], [None, None, 2, 4], (2, 0, 2, 4), (2, 3, 2, 4)),
])
def test_einsums_over_empty_dimensions_run_in_the_engine(tmp_path, eq, spec_a, spec_b,
                                                         shape_a, shape_b):
    """An einsum lowered to MatMul whose reshape sizes are read at run time, with a dimension
    of size 0 (an empty sequence): the reshape keeps the 0 (ONNX allowzero) instead of copying
    the input's dimension, and a static 0 beside an unknown group is no -1 to infer (helper
    hunt, 2026-12-02: the engine failed and the segment ran natively). The same engine then
    computes a call without empty dimensions as TF does."""
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(spec_a, tf.float32, name="x"),
                                      tf.TensorSpec(spec_b, tf.float32, name="y")])
        def __call__(self, x, y):
            return {"o": tf.einsum(eq, x * 1.0, y * 1.0)}
    path = models.save_module(M(), str(tmp_path / "m"))
    native = tf.saved_model.load(path).signatures["serving_default"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    rng = np.random.default_rng(0)
    full_a = tuple(3 if d == 0 and s is None else d for d, s in zip(shape_a, spec_a))
    full_b = tuple(3 if d == 0 and s is None else d for d, s in zip(shape_b, spec_b))
    for sa, sb in ((shape_a, shape_b), (full_a, full_b)):
        x = tf.constant(rng.standard_normal(sa).astype(np.float32))
        y = tf.constant(rng.standard_normal(sb).astype(np.float32))
        want, got = native(x=x, y=y)["o"].numpy(), fn(x=x, y=y)["o"].numpy()
        assert got.shape == want.shape
        scale = float(np.abs(want).max()) if want.size else 1.0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, scale))
    (op,) = conv.engine_ops.values()
    assert op.stats["native"] == 0 and op.stats["engine"] == 2, op.stats


def test_an_einsum_label_of_size_one_against_a_larger_one_is_tfs_error(tmp_path):
    """einsum 'bij,bjk->bik' with y's b static 1 and x's unknown: TF broadcasts within an
    ellipsis only, so x of batch 2 with y of batch 1 is its InvalidArgumentError. The engine
    broadcast it (MatMul, and its Einsum layer's shape inference) and answered (helper hunt,
    2026-12-02); now the converted function raises TF's error too, and matching batches
    run in the engine."""
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32, name="x"),
                                      tf.TensorSpec([1, None, None], tf.float32, name="y")])
        def __call__(self, x, y):
            return {"o": tf.einsum("bij,bjk->bik", x * 1.0, y * 1.0)}
    path = models.save_module(M(), str(tmp_path / "m"))
    native = tf.saved_model.load(path).signatures["serving_default"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    rng = np.random.default_rng(0)
    y = tf.constant(rng.standard_normal((1, 4, 5)).astype(np.float32))
    x1 = tf.constant(rng.standard_normal((1, 3, 4)).astype(np.float32))
    np.testing.assert_allclose(fn(x=x1, y=y)["o"].numpy(), native(x=x1, y=y)["o"].numpy(),
                               rtol=1e-5, atol=1e-5)
    (op,) = conv.engine_ops.values()
    assert op.stats["engine"] == 1 and op.stats["native"] == 0, op.stats
    x2 = tf.constant(rng.standard_normal((2, 3, 4)).astype(np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expected dimension 2"):
        native(x=x2, y=y)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expected dimension 2"):
        fn(x=x2, y=y)


def test_fp16_compares_an_input_with_its_own_moved_copy_as_equal(tmp_path):
    """A float32 input compared with a copy of itself moved by reverse / tile / slice: the
    moves store float16 in an FP16 engine and the input stayed float32, so 0.1 == 0.1 was
    False and a whole bool output flipped (numerics hunt, 2026-12-04). Both operands of an
    FP16 comparison are read in float16: the answers are TF's, bit for bit."""
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            twice = tf.tile(x, [1, 2])[:, ::2]
            back = tf.reverse(tf.reverse(x, [1]), [1])
            return {"eq": tf.equal(back, x), "le": tf.less_equal(twice, x),
                    "gt": tf.greater(x, back), "ne": tf.not_equal(x, twice),
                    "w": tf.where(tf.equal(back, x), x * 2.0, -x)}
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP16",
                                   minimum_segment_size=1)
    fn = conv.convert()
    x = np.array([[0.1, 1.1, 3.3, 100.7], [-0.3, 7.77, 1e-3, 0.0]], np.float32)
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))
    got = fn(x=tf.constant(x))
    assert sum(op.stats["engine"] for op in conv.engine_ops.values()) >= 1
    for k in ("eq", "le", "gt", "ne"):
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=k)
    w = want["w"].numpy()
    np.testing.assert_allclose(got["w"].numpy(), w, rtol=1e-3, atol=1e-3 * np.abs(w).max())


def test_fp16_compares_with_constants_rounded_as_the_activation_is(tmp_path):
    """``relu(x) >= 0.1`` with x = 0.1 in an FP16 engine compared float16 0.09998 with the
    float32 constant 0.1 and answered False, where TF (both float32) and TensorRT (both
    float16) answer True (dtype hunt, 2026-12-04). A float32 constant compared with a float16
    activation is read in float16 too (scalars inlined into the kernel and constant
    tensors alike); one float16 cannot hold stays float32."""
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            r = tf.nn.relu(x) * 1.0
            return {"ge": tf.greater_equal(r, 0.1), "lt": tf.less(r, 1e6),
                    "eq": tf.equal(r, 0.3),
                    "gev": tf.greater_equal(r, tf.constant([0.1, 0.3, 0.05, 0.2999]))}
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP16",
                                   minimum_segment_size=1)
    fn = conv.convert()
    x = np.array([[0.1, 0.3, 0.05, 60000.0], [-1.0, 0.1, 0.2999, 1.0]], np.float32)
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))
    got = fn(x=tf.constant(x))
    assert sum(op.stats["engine"] for op in conv.engine_ops.values()) >= 1
    for k in ("ge", "lt", "eq", "gev"):
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=k)


def test_fp16_masks_of_minus_1e9_run_without_numpy_overflow_warnings(tmp_path):
    """Keras' attention masks add -1e9 (float16: -inf, as on the GPU) before a softmax. The
    numpy backend's cast to float16 said "RuntimeWarning: overflow encountered in cast" on
    almost every FP16 run of such a model (transformer hunt, 2026-12-04); the answers were
    right. The cast runs under the same errstate as the kernels now."""
    import warnings

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"),
                                      tf.TensorSpec([None, 4], tf.float32, name="m")])
        def __call__(self, x, m):
            return {"p": tf.nn.softmax(x * 2.0 + (1.0 - m) * -1e9)}
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP16",
                                   minimum_segment_size=1)
    fn = conv.convert()
    x = np.array([[0.5, -1.0, 2.0, 0.1], [1.0, 1.0, 1.0, 3.0]], np.float32)
    m = np.array([[1, 1, 0, 1], [1, 0, 0, 0]], np.float32)
    want = tf.saved_model.load(path).signatures["serving_default"](
        x=tf.constant(x), m=tf.constant(m))["p"].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = fn(x=tf.constant(x), m=tf.constant(m))["p"].numpy()
    assert sum(op.stats["engine"] for op in conv.engine_ops.values()) >= 1
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-3)


def test_a_uint8_image_model_converts_whole(tmp_path):
    """A Keras model with uint8 image input (Rescaling, the usual serving signature: 4x fewer
    bytes per request than float32) left its first Cast native ("SrcT=uint8 is not
    supported", image hunt 2026-12-04): the engine now takes the uint8 tensor itself."""
    import keras
    import tftrt
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 3), dtype="uint8")
    y = keras.layers.Rescaling(1 / 127.5, offset=-1)(i)
    y = keras.layers.Conv2D(4, 3, activation="relu")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    src = str(tmp_path / "u8")
    keras.Model(i, y).export(src, verbose=False)
    img = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    want = tf.saved_model.load(src).signatures["serving_default"](tf.constant(img))
    (key,) = want
    for precision, tol in (("FP32", 1e-6), ("FP16", 2e-2)):
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode=precision)
        fn = conv.convert()
        conv.build(lambda: iter([(img,)]))
        op, = conv.engine_ops.values()
        assert np.dtype(op.spec.input_dtypes[0]) == np.uint8, op.spec.input_dtypes
        assert "Cast" in op.spec.op_histogram, op.spec.op_histogram
        scale = np.abs(want[key].numpy()).max()
        np.testing.assert_allclose(fn(tf.constant(img))[key].numpy(), want[key].numpy(),
                                   atol=tol * scale, rtol=0)
        dst = str(tmp_path / f"u8_{precision}")
        conv.save(dst)
        got = tftrt.load(dst).signatures["serving_default"](tf.constant(img))[key].numpy()
        np.testing.assert_allclose(got, want[key].numpy(), atol=tol * scale, rtol=0)
        assert op.stats["engine"] >= 1 and op.stats["native"] == 0


def test_fp16_keeps_layers_with_weights_past_float16_in_float32(tmp_path, caplog):
    """A per-channel scale of 2e5 folded into a conv's filter (Grappler, or the engine's
    vertical fusion) made filter values float16 cannot hold; stored as float16 they became
    inf and the channel NaN, where TF's tanh is +-1 (fusion hunt, 2026-12-04). Such a layer
    stays FP32, said at INFO."""
    import logging
    rng = np.random.default_rng(0)

    class M(tf.Module):
        def __init__(self):
            self.w = tf.Variable(rng.standard_normal((3, 3, 4, 4)).astype(np.float32))
            self.s = tf.Variable(np.array([2e5, 1.0, 1.0, 1.0], np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 4, 4, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.tanh(tf.nn.conv2d(x, self.w, 1, "SAME") * self.s)}
    path = models.save_module(M(), str(tmp_path / "m"))
    x = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    want = tf.saved_model.load(path).signatures["serving_default"](x=tf.constant(x))["y"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, precision_mode="FP16")
    fn = conv.convert()
    with caplog.at_level(logging.INFO, logger="tftrt.engine"):
        conv.build(lambda: iter([(x,)]))
    got = fn(x=tf.constant(x))["y"].numpy()
    assert sum(op.stats["engine"] for op in conv.engine_ops.values()) >= 1
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want.numpy(), atol=2e-2)
    assert any("past float16's range" in r.getMessage() for r in caplog.records)


def test_compare_reports_errors_relative_to_the_largest_expected_value():
    """compare's relative error is the largest error over the tensor's largest |expected|
    (build()'s measure): per element, an expected 0 printed 1.62e+307 for a ReLU output
    (hunt, s45). NaN where both are NaN is no error; a NaN against a number is infinite."""
    from tftrt import compare
    r = compare.compare_arrays("y", np.array([1e-3, 10.0, 0.0]), np.array([0.0, 10.0, 0.0]),
                               rtol=1e-2, atol=1e-2)
    assert r.max_rel == pytest.approx(1e-4) and r.max_abs == pytest.approx(1e-3) and r.passed
    lines = []
    compare.format_report(compare.Report(1e-2, 1e-2, outputs=[("batch 0", r)]), lines.append)
    assert any("max abs error 0.001 (0.0001 of the largest expected)" in l for l in lines), lines
    both = compare.compare_arrays("y", np.array([np.nan, 2.0]), np.array([np.nan, 2.0]), 0, 0)
    assert both.max_rel == 0.0 and both.passed
    one = compare.compare_arrays("y", np.array([np.nan, 2.0]), np.array([1.0, 2.0]), 0.1, 0.1)
    assert one.max_rel == np.inf and not one.passed
    zero = compare.compare_arrays("y", np.zeros(3), np.zeros(3), 0, 0)
    assert zero.max_rel == 0.0 and zero.passed


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, -1.0])
def test_a_pow_whose_constant_exponent_broadcasts_keeps_its_shape(tmp_path, exponent):
    """x [2] ** c [1, 1, 1] is [1, 1, 2], as the signature says. Grappler's arithmetic
    optimizer rewrites such a Pow in place into Square / Sqrt / Reciprocal of x, of shape
    [2] (TensorFlow's own runtime does too, against its signature); after a ReLU the
    converted function then failed to build (differential fuzz, s48). Graphs with such a
    Pow run Grappler without that optimizer: the signature's shape, x ** c's values."""
    c = np.full([1, 1, 1], exponent, np.float32)

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([2], tf.float32, name="x")])
        def __call__(self, x):
            return {"p": tf.pow(x, c), "r": tf.nn.relu(tf.pow(x, c))}
    path = models.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path, minimum_segment_size=1)
    fn = conv.convert()
    x = np.array([1.5, 3.0], np.float32)
    got = fn(x=tf.constant(x))
    want = np.power(x, c)
    assert sum(op.stats["engine"] for op in conv.engine_ops.values()) >= 1
    for k, v in (("p", want), ("r", np.maximum(want, 0))):
        assert got[k].shape == (1, 1, 2), (k, got[k].shape)
        np.testing.assert_allclose(got[k].numpy(), v, rtol=1e-6, err_msg=k)
