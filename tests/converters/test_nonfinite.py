"""NaN and +-inf through reductions, pools and softmax: the engine gives what TF's CPU kernels give.

TF's CPU kernels are the numpy backend's reference (measured on TF 2.21, oneDNN off and on):
MaxPool skips NaN and never goes below the dtype's lowest finite value, ArgMax / ArgMin never
pick NaN, an all -inf Softmax row is NaN, reductions and AvgPool propagate NaN. MaxPool3D is
the one kernel whose answer depends on oneDNN (docs/differences.md); the engine follows the
oneDNN-off kernel, written out in ``eigen_max_pool3d`` and checked against TF where TF runs it.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tests.converters.harness import check_op


def with_nonfinite(shape, kind, seed=0, dtype=np.float32):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    if kind == "all -inf":
        flat[:] = -np.inf
        return x
    # every 5th value, offset so that NaN lands first, in the middle and last of windows / rows
    for k, v in enumerate(kind.split(",")):
        flat[k::5] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[v]
    return x


KINDS = ["nan", "inf", "-inf", "nan,inf", "inf,-inf", "nan,-inf", "all -inf"]

OPS = {
    "MaxPool": (lambda x: tf.nn.max_pool2d(x, 2, 2, "VALID"), (2, 6, 6, 3)),
    "MaxPool SAME": (lambda x: tf.nn.max_pool2d(x, 3, 1, "SAME"), (1, 5, 6, 2)),
    "MaxPool1D": (lambda x: tf.nn.max_pool1d(x, 3, 2, "SAME"), (2, 9, 3)),
    "AvgPool": (lambda x: tf.nn.avg_pool2d(x, 2, 2, "VALID"), (2, 6, 6, 3)),
    "AvgPool SAME": (lambda x: tf.nn.avg_pool2d(x, 3, 1, "SAME"), (1, 5, 6, 2)),
    "AvgPool3D": (lambda x: tf.nn.avg_pool3d(x, 2, 2, "VALID"), (1, 4, 4, 4, 2)),
    "Max": (lambda x: tf.reduce_max(x, 1), (4, 7)),
    "Min": (lambda x: tf.reduce_min(x, 1), (4, 7)),
    "Sum": (lambda x: tf.reduce_sum(x, 1), (4, 7)),
    "Mean": (lambda x: tf.reduce_mean(x, 1), (4, 7)),
    "Prod": (lambda x: tf.reduce_prod(x, 1), (4, 7)),
    "Mean spatial": (lambda x: tf.reduce_mean(x, [1, 2]), (2, 4, 4, 3)),
    "Max spatial": (lambda x: tf.reduce_max(x, [1, 2]), (2, 4, 4, 3)),
    "ArgMax": (lambda x: tf.argmax(x, 1), (4, 7)),
    "ArgMin": (lambda x: tf.argmin(x, 1), (4, 7)),
    "Softmax": (tf.nn.softmax, (4, 7)),
    "LogSoftmax": (tf.nn.log_softmax, (4, 7)),
    "L2Normalize": (lambda x: tf.math.l2_normalize(x, 1), (4, 7)),
    "LayerNorm": (lambda x: (x - tf.reduce_mean(x, -1, keepdims=True)) * tf.math.rsqrt(
        tf.math.reduce_variance(x, -1, keepdims=True) + 1e-3), (4, 7)),
}


def eigen_softmax(x):
    """TF's Softmax CPU kernel without oneDNN (SoftmaxEigenImpl), in TF ops: a NaN or +inf
    anywhere in a row makes the whole row NaN. oneDNN's kernel leaves NaN only in places."""
    e = tf.exp(x - tf.reduce_max(x, -1, keepdims=True))
    return e / tf.reduce_sum(e, -1, keepdims=True)


def tf_runs_eigen_softmax():
    return bool(np.isnan(tf.nn.softmax(np.array([np.nan, 0], np.float32)).numpy()).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", sorted(OPS))
def test_nonfinite_like_tf_cpu(op, kind):
    fn, shape = OPS[op]
    reference = None
    if op == "Softmax" and not tf_runs_eigen_softmax():
        reference = eigen_softmax
    check_op(fn, [with_nonfinite(shape, kind)], onnxruntime=False, reference=reference)


def tf_runs_eigen_max_pool_fp16():
    """True where TF's float16 MaxPool is Eigen's (oneDNN off, or a CPU without oneDNN's fp16):
    a window of -inf gives -65504 there, -inf with oneDNN (measured on an AVX-512 CPU)."""
    x = tf.constant(np.full((1, 2, 2, 1), -np.inf, np.float16))
    return bool(np.isfinite(tf.nn.max_pool2d(x, 2, 2, "VALID").numpy()).all())


def eigen_max_pool_fp16(x):
    """TF's float16 MaxPool CPU kernel without oneDNN, in TF ops: skips NaN and never goes
    below float16's lowest finite value."""
    return tf.maximum(tf.nn.max_pool2d(x, 2, 2, "VALID"), np.finfo(np.float16).min)


@pytest.mark.parametrize("kind", ["nan", "all -inf"])
def test_max_pool_fp16_lowest(kind):
    """A float16 MaxPool of NaN / -inf windows gives float16's lowest (-65504), not -inf, as
    TF's Eigen kernel does; oneDNN's (TF on AVX-512 CPUs) gives -inf, and the engine follows
    the oneDNN-off kernel there too (docs/differences.md)."""
    x = with_nonfinite((1, 4, 4, 2), kind, dtype=np.float16)
    reference = None if tf_runs_eigen_max_pool_fp16() else eigen_max_pool_fp16
    check_op(lambda x: tf.nn.max_pool2d(x, 2, 2, "VALID"), [x], expect_tf_ops=["MaxPool"],
             onnxruntime=False, reference=reference)
    if kind == "all -inf":   # the reference itself: every window is float16's lowest
        pool = reference or (lambda x: tf.nn.max_pool2d(x, 2, 2, "VALID"))
        expected = pool(tf.constant(x)).numpy()
        np.testing.assert_array_equal(expected, np.full((1, 2, 2, 2), -65504, np.float16))


def eigen_max_pool3d(x, k, s, padding):
    """TF's MaxPool3D CPU kernel without oneDNN (Eigen's CuboidMaxPooling): each window scanned
    in order from -inf with ``acc = acc if acc > v else v``, SAME padding read as lowest."""
    lowest = np.finfo(x.dtype).min
    out = [(n - kk) // ss + 1 for n, kk, ss in zip(x.shape[1:4], k, s)]
    if padding == "SAME":
        out = [-(-n // ss) for n, ss in zip(x.shape[1:4], s)]
        pads = [max(0, (o - 1) * ss + kk - n) for o, ss, kk, n in zip(out, s, k, x.shape[1:4])]
        x = np.pad(x, [(0, 0)] + [(p // 2, p - p // 2) for p in pads] + [(0, 0)],
                   constant_values=lowest)
    acc = np.full((x.shape[0], *out, x.shape[-1]), -np.inf, x.dtype)
    for kd, kh, kw in itertools.product(*[range(kk) for kk in k]):
        v = x[:, kd:kd + s[0] * out[0]:s[0], kh:kh + s[1] * out[1]:s[1],
              kw:kw + s[2] * out[2]:s[2]]
        acc = np.where(acc > v, acc, v)
    return acc


def tf_runs_eigen_max_pool3d():
    """True where TF's MaxPool3D is Eigen's (oneDNN off): [3, NaN, 1, 2] gives 2 there, 3 with
    oneDNN."""
    x = np.array([3, np.nan, 1, 2], np.float32).reshape(1, 1, 1, 4, 1)
    return float(tf.nn.max_pool3d(x, (1, 1, 4), (1, 1, 4), "VALID").numpy().ravel()[0]) == 2.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k,s,padding", [((2, 2, 2), (2, 2, 2), "VALID"),
                                         ((3, 3, 3), (1, 1, 1), "SAME"),
                                         ((1, 2, 3), (1, 2, 2), "SAME")])
def test_max_pool3d_like_tf_cpu_without_onednn(kind, k, s, padding):
    x = with_nonfinite((2, 4, 5, 6, 2), kind)
    expected = eigen_max_pool3d(x, k, s, padding)
    if tf_runs_eigen_max_pool3d():
        np.testing.assert_array_equal(tf.nn.max_pool3d(x, k, s, padding).numpy(), expected)
    check_op(lambda t: tf.nn.max_pool3d(t, k, s, padding), [x], expect_tf_ops=["MaxPool3D"],
             reference=lambda t: tf.constant(eigen_max_pool3d(t.numpy(), k, s, padding)),
             onnxruntime=False)


def test_cnn_with_an_inf_pixel_stays_finite():
    """One +inf pixel (all channels) through a 1x1 conv of mixed-sign weights is inf - inf = NaN
    at that pixel; TF's MaxPool skips it and the class scores stay finite. The engine's MaxPool
    once propagated the NaN and the whole row came out NaN."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((1, 1, 3, 8)).astype(np.float32)
    w1[..., 0, :] = np.abs(w1[..., 0, :])
    w1[..., 1, :] = -np.abs(w1[..., 1, :])
    w2 = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    wd = rng.standard_normal((8, 4)).astype(np.float32)

    def cnn(x):
        y = tf.nn.relu(tf.nn.conv2d(x, w1, 1, "SAME"))
        y = tf.nn.max_pool2d(y, 2, 2, "VALID")
        y = tf.nn.relu(tf.nn.conv2d(y, w2, 1, "SAME"))
        return tf.nn.softmax(tf.reduce_mean(y, [1, 2]) @ wd)
    x = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    x[0, 3, 4, :] = np.inf
    low = check_op(cnn, [x], expect_tf_ops=["MaxPool"], onnxruntime=False)
    assert np.isfinite(low.tf_outputs[0]).all()


K3 = np.random.default_rng(3).standard_normal((3, 3, 3, 4)).astype(np.float32)
W3 = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
S0 = np.array([1.0, -2.0, 0.0, -4.0], np.float32)
INF = np.array([1.0, np.inf, 0.0, -np.inf], np.float32)
SCALED = {  # (fn, input shape)
    "matmul / s": (lambda x: tf.matmul(x, W3) / S0, (5, 3)),
    "relu(matmul / s)": (lambda x: tf.nn.relu(tf.matmul(x, W3) / S0), (5, 3)),
    "matmul * inf": (lambda x: tf.matmul(x, W3) * INF, (5, 3)),
    "conv + b / s": (lambda x: tf.nn.bias_add(tf.nn.conv2d(x, K3, 1, "SAME"),
                                              [1.0, 2.0, 3.0, 4.0]) / S0, (2, 6, 6, 3)),
}


@pytest.mark.parametrize("case", sorted(SCALED))
def test_a_constant_scale_of_inf_or_a_division_by_zero_is_not_folded_into_weights(case):
    """A per-channel constant scale with inf, or a division with 0, after a conv / matmul:
    folded into the weights it made inf * w terms of both signs (and 0 * inf) sum to NaN
    where TF gives +-inf (or 0 after a ReLU) (helper hunt, 2026-12-02). It runs as the
    layer's epilogue scale instead; finite scales still fold. (A bare conv / s: Grappler's
    constant folding pushes the scale into a Const filter, in TF's own run of the function
    too, which then gives NaN itself: docs/differences.md.)"""
    fn, shape = SCALED[case]
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    check_op(fn, [x])
