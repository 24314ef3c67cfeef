"""Fuzzed dynamic shapes: small models with None dimensions, some mixing samples across the
batch (reductions, softmax, transposes, reshapes over dimension 0, shape values), converted
with each profile strategy, built at a few shapes, then called inside and outside the
profiles with split batches on and off, after the background builds, and after save() /
tftrt.load(): every answer must equal native TensorFlow. The seeds and cases are the ones
kept from a wider fuzzing run (each catches a bug that was fixed)."""

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tests.tolerances import MODEL_TOLERANCES
from tftrt import profiles as P
from tftrt import trt_convert as trt

D = 6
RTOL, ATOL = MODEL_TOLERANCES["FP32"]


def _n(x):
    return tf.cast(x, tf.float32)


# name -> (input signatures, body); dimension 0 of every input is the batch
MODELS = {
    # per sample: split batches and templates serve them
    "mlp": ([(None, D)], lambda x: tf.nn.relu(x @ tf.constant(
        np.random.RandomState(0).randn(D, D).astype(np.float32))) * 2.0),
    "seq_softmax": ([(None, None, D)], lambda x: tf.nn.softmax(x * 2.0, axis=1) + 1.0),
    # mixing samples: never split
    "sum0": ([(None, D)], lambda x: tf.nn.relu(x) - tf.reduce_sum(x, axis=0, keepdims=True)),
    "softmax0": ([(None, D)], lambda x: tf.nn.softmax(x * 2.0, axis=0) + 0.0),
    "merge_bs_softmax": ([(None, None, D)], lambda x: tf.reshape(
        tf.nn.softmax(tf.reshape(x * 2.0, [-1, D]), axis=0), tf.shape(x))),
    "xxT": ([(None, D)], lambda x: tf.matmul(x, x, transpose_b=True) * 0.5 + 0.1),
    "transpose": ([(None, D)], lambda x: tf.transpose(tf.transpose(x) * 1.5) + 1.0),
    "shape0_div": ([(None, D)], lambda x: x * 3.0 / _n(tf.shape(x)[0])),
    # shape values the passes fold that are equal at the opt and probe batches and differ
    # below them (bug: the template served batches 2 and 3 with batch 5's value)
    "shape0_min4": ([(None, D)], lambda x: x * _n(tf.minimum(tf.shape(x)[0], 4))),
    "shape0_ge3": ([(None, D)], lambda x: x * _n(tf.shape(x)[0] >= 3) + 1.0),
    "pad_min4": ([(None, D)], lambda x: tf.pad(
        x * 2.0, [[0, 0], [0, tf.minimum(tf.shape(x)[0], 4)]]) + 1.0),
    "two_inputs": ([(None, D), (None, D)], lambda a, b: tf.nn.relu(a * 2.0 + b)),
}


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("TFTRT_CACHE_DIR", str(tmp_path / "build_cache"))
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "0")  # background builds happen at once


def save(name, path):
    sigs, body = MODELS[name]
    m = tf.Module()
    m.f = tf.function(lambda *xs: {"out": body(*xs)},
                      input_signature=[tf.TensorSpec(list(s), tf.float32, name=f"x{i}")
                                       for i, s in enumerate(sigs)])
    tf.saved_model.save(m, str(path), signatures=m.f)
    return m.f


def shapes(name, b, s=3):
    return [tuple(b if ax == 0 else (s if d is None else d) for ax, d in enumerate(sig))
            for sig in MODELS[name][0]]


def profile_engines(ops):
    return [e for op in ops for _, e in op.cache.items() if isinstance(e, P.ProfileEngine)]


def check_all(fn, native, name, batches, ops, allow, tag):
    for k, b in enumerate(batches):
        rng = np.random.RandomState(1000 + k)
        xs = [rng.standard_normal(s).astype(np.float32) for s in shapes(name, b)]
        want = native(*xs)["out"].numpy()
        before = sum(op.stats["native"] for op in ops)
        outside = not any(pe.contains([tuple(x.shape) for x in xs])
                          for pe in profile_engines(ops))
        got = fn(**{f"x{i}": tf.constant(x) for i, x in enumerate(xs)})["out"].numpy()
        assert got.dtype == want.dtype and got.shape == want.shape, (tag, b, got.shape)
        np.testing.assert_allclose(got, want, RTOL, ATOL, err_msg=f"{name} {tag} batch {b}")
        if outside and not allow and ops:  # no profile and no runtime build: native
            assert sum(op.stats["native"] for op in ops) > before, (tag, b)


CASES = [  # (model, strategy, batches given to build(), batches called)
    ("mlp", "Range", (2, 8), (3, 5, 7, 8, 13, 1, 6)),
    ("seq_softmax", "Range", (1, 6), (2, 3, 5, 9)),
    ("sum0", "Range", (1, 8), (3, 5, 7, 12)),
    ("softmax0", "ImplicitBatchModeCompatible", (6,), (1, 3, 5, 7)),
    ("merge_bs_softmax", "Range", (2, 8), (3, 5, 7)),
    ("xxT", "Range+Optimal", (1, 4, 8), (3, 6, 8, 9)),
    ("transpose", "Optimal", (2, 5), (2, 3, 5)),
    ("shape0_div", "Range", (1, 8), (2, 3, 5, 7)),
    ("shape0_min4", "Range", (5, 1), (3, 2, 4, 5, 6)),
    ("shape0_min4", "ImplicitBatchModeCompatible", (5,), (3, 2, 4)),
    ("shape0_ge3", "Range", (5, 1), (2, 3, 4)),
    ("pad_min4", "Range", (5, 1), (3, 2, 4)),
    ("two_inputs", "Range", (2, 8), (3, 5, 7, 9)),
]


@pytest.mark.parametrize("split", [True, False], ids=["split", "nosplit"])
@pytest.mark.parametrize("model,strategy,built,called", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_dynamic_shapes_match_native(tmp_path, monkeypatch, model, strategy, built, called,
                                     split):
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1" if split else "0")
    native = save(model, tmp_path / "model")
    allow = (len(model) + len(strategy)) % 2 == 0  # both settings across the cases
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path / "model"),
                                   use_dynamic_shape=True,
                                   dynamic_shape_profile_strategy=strategy,
                                   allow_build_at_runtime=allow, minimum_segment_size=1,
                                   maximum_cached_engines=2)
    fn = conv.convert()
    rng = np.random.RandomState(7)
    conv.build(lambda: iter([tuple(rng.standard_normal(s).astype(np.float32)
                                   for s in shapes(model, b)) for b in built]))
    ops = list(conv.engine_ops.values())
    assert ops, "nothing was converted"
    check_all(fn, native, model, called, ops, allow, "first calls")
    for pe in profile_engines(ops):
        assert pe.wait_pending(60)
    check_all(fn, native, model, called, ops, allow, "after the background builds")
    conv.save(str(tmp_path / "saved"))
    loaded = tftrt.load(str(tmp_path / "saved"))
    lops = list(loaded.engine_ops.values())
    sig = loaded.signatures["serving_default"]
    check_all(sig, native, model, called, lops, allow, "loaded")
    for pe in profile_engines(lops):
        assert pe.wait_pending(60)
    check_all(sig, native, model, called, lops, allow, "loaded, after the background builds")
