"""Optimization profiles (use_dynamic_shape, TF-TRT's strategies), implicit batch, routing,
out-of-range shapes, the eviction warning and saved profiles, through TensorFlow on the numpy
backend, against native TensorFlow; and profile construction against hand-computed ranges."""

import logging

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tests.integration import models
from tests.tolerances import MODEL_TOLERANCES
from tftrt import profiles as P
from tftrt import trt_convert as trt
from tftrt.engine import tactics
from tftrt.engine_op import TRTEngineOp
from tftrt.profiles import Profile

S = (8, 8, 3)  # H, W, C of the conv model


@pytest.fixture(autouse=True)
def build_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("TFTRT_CACHE_DIR", str(tmp_path / "build_cache"))


# --- profile construction (TF-TRT's strategies), routing ---------------------------------------

SEEN = [[(4, 8, 8, 3)], [(1, 8, 8, 3)], [(2, 16, 8, 3)], [(4, 8, 8, 3)]]  # one input


@pytest.mark.parametrize("strategy,expected", [
    ("Range", [Profile([(1, 8, 8, 3)], [(4, 16, 8, 3)], [(4, 16, 8, 3)])]),
    ("Optimal", [Profile([s], [s], [s]) for s in [(4, 8, 8, 3), (1, 8, 8, 3), (2, 16, 8, 3)]]),
    ("Range+Optimal", [Profile([s], [s], [s]) for s in [(4, 8, 8, 3), (1, 8, 8, 3),
                                                        (2, 16, 8, 3)]] +
     [Profile([(1, 8, 8, 3)], [(4, 16, 8, 3)], [(4, 16, 8, 3)])]),
    ("ImplicitBatchModeCompatible", [Profile([(1, 8, 8, 3)], [(4, 8, 8, 3)], [(4, 8, 8, 3)]),
                                     Profile([(1, 8, 8, 3)], [(1, 8, 8, 3)], [(1, 8, 8, 3)]),
                                     Profile([(1, 16, 8, 3)], [(2, 16, 8, 3)],
                                             [(2, 16, 8, 3)])]),
])
def test_profiles_of_each_strategy(strategy, expected):
    assert P.make_profiles(SEEN, strategy) == expected
    assert P.make_profiles(SEEN, strategy.upper()) == expected  # any case, as TF-TRT
    assert P.make_profiles([], strategy) == []
    # one shape: one profile (Range+Optimal's Range profile is its Optimal one)
    s = SEEN[0][0]
    assert P.make_profiles([[s], [s]], strategy) == [
        P.implicit_batch_profile([s]) if strategy.startswith("Implicit") else
        Profile([s], [s], [s])]


def test_profiles_of_two_inputs_and_declared_dims():
    seen = [[(2, 5), (2, 7, 1)], [(6, 3), (6, 9, 1)]]
    (r,) = P.make_profiles(seen, "Range")
    assert r == Profile([(2, 3), (2, 7, 1)], [(6, 5), (6, 9, 1)], [(6, 5), (6, 9, 1)])
    # TF-TRT's EnforceCompatibility: a dimension the network declares stays at its size
    (p,) = P.make_profiles([[(2, 6)]], "ImplicitBatchModeCompatible", declared=[[2, None]])
    assert p == Profile([(2, 6)], [(2, 6)], [(2, 6)])
    (p,) = P.make_profiles([[(2, 6)]], "ImplicitBatchModeCompatible", declared=[[None, 6]])
    assert p == Profile([(1, 6)], [(2, 6)], [(2, 6)])


def test_routing_takes_the_first_profile_that_contains_the_shapes():
    profiles = P.make_profiles(SEEN, "Range+Optimal")
    assert P.choose_profile(profiles, [(1, 8, 8, 3)]) == 1   # its own Optimal profile
    assert P.choose_profile(profiles, [(3, 12, 8, 3)]) == 3  # only the Range profile
    assert P.choose_profile(profiles, [(5, 8, 8, 3)]) is None
    assert P.choose_profile(profiles, [(2, 8, 8, 4)]) is None
    assert P.choose_profile(profiles, [(2, 8, 8)]) is None   # another rank
    implicit = P.make_profiles(SEEN, "ImplicitBatchModeCompatible")
    assert P.choose_profile(implicit, [(1, 8, 8, 3)]) == 0   # first, not the tightest (TF-TRT)


def test_bad_profiles_and_strategies_are_refused():
    with pytest.raises(ValueError, match="min .* <= opt .* <= max"):
        Profile([(4, 3)], [(2, 3)], [(8, 3)])
    with pytest.raises(ValueError, match="different ranks"):
        Profile([(4, 3)], [(4, 3, 1)], [(4, 3)])
    with pytest.raises(ValueError, match=r"profile strategy 'Fastest' is not supported; use one "
                       r"of \['Range', 'Optimal', 'Range\+Optimal', 'ImplicitBatchModeCompat"):
        P.make_profiles(SEEN, "Fastest")


# --- through TensorFlow -------------------------------------------------------------------------

def conv_weights():
    rng = np.random.RandomState(0)
    return (rng.randn(3, 3, 3, 8).astype(np.float32) * 0.3, rng.randn(8).astype(np.float32),
            rng.randn(1, 1, 8, 4).astype(np.float32) * 0.3)


def conv_net(x, w1, b1, w2):
    h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, w1, 1, "SAME"), b1))
    return tf.nn.conv2d(h, w2, 1, "SAME")


class ConvNet(tf.Module):
    """conv3x3 + bias + relu, conv1x1 (two numpy tactics: timed), batch, H and W unknown."""

    def __init__(self):
        self.w = [tf.constant(w) for w in conv_weights()]

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": conv_net(x, *self.w)}


@pytest.fixture(scope="module")
def conv_dir(tmp_path_factory):
    return models.save_module(ConvNet(), str(tmp_path_factory.mktemp("dyn") / "conv"))


@pytest.fixture(scope="module")
def native(conv_dir):
    return tf.saved_model.load(conv_dir).signatures["serving_default"]


def image(b, h=8, w=8, seed=None):
    return models.batch((b, h, w, 3), seed=b * 100 + h + w if seed is None else seed)


def check(fn, native, x):
    got = fn(x=tf.constant(x))["y"].numpy()
    rtol, atol = MODEL_TOLERANCES["FP32"]
    np.testing.assert_allclose(got, native(x=tf.constant(x))["y"].numpy(), rtol=rtol, atol=atol)


def convert(conv_dir, **kw):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=conv_dir, **kw)
    fn = conv.convert()
    (op,) = conv.engine_ops.values()
    return conv, fn, op


def profile_engine(op):
    (entry,) = [e for _, e in op.cache.items()]
    assert isinstance(entry, P.ProfileEngine)
    return entry


@pytest.fixture()
def timed(monkeypatch):
    """Names of the tactics timed from now on."""
    calls = []
    real = tactics._time_runner

    def counting(backend, runner, inputs, repeats, what="a layer"):
        calls.append(what)
        return real(backend, runner, inputs, repeats, what)
    monkeypatch.setattr(tactics, "_time_runner", counting)
    return calls  # the build cache is this test's own, empty (build_cache_in_tmp)


def test_range_profile_serves_every_batch_without_tuning(conv_dir, native, timed):
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True)
    conv.build(lambda: iter([(image(1),), (image(8),)]))
    pe = profile_engine(op)
    assert pe.profiles == [Profile([(1, *S)], [(8, *S)], [(8, *S)])]
    assert op.stats["builds"] == 1 and op.stats["tuned_builds"] == 1
    assert len(timed) == 2  # the 1x1 conv's two tactics, at the opt shape only
    del timed[:]
    for b in range(1, 9):
        check(fn, native, image(b))
    assert timed == []
    assert op.stats["native"] == 0 and op.stats["engine"] == 9  # build()'s run and 8 calls
    assert op.stats["builds"] == 1 and op.stats["shape_builds"] == 7 and len(op.cache) == 1
    assert sorted(pe.shapes) == [((b, *S),) for b in range(1, 9)]


@pytest.mark.parametrize("strategy,n_profiles,tuned,untuned,batch3", [
    ("Range", 1, 1, 2, "served"), ("Optimal", 3, 3, 0, "new engine"),
    ("Range+Optimal", 4, 3, 0, "served"), ("ImplicitBatchModeCompatible", 3, 3, 0, "served")])
def test_strategies_one_engine_with_its_profiles(conv_dir, native, strategy, n_profiles, tuned,
                                                 untuned, batch3):
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True, maximum_cached_engines=2,
                           dynamic_shape_profile_strategy=strategy)
    conv.build(lambda: iter([(image(b),) for b in (4, 1, 2)]))
    pe = profile_engine(op)
    assert pe.profiles == P.make_profiles([[(b, *S)] for b in (4, 1, 2)], strategy)
    assert len(pe.profiles) == n_profiles
    # one engine (maximum_cached_engines counts engines, not profiles), tuned once per
    # distinct opt shape (Range+Optimal's range profile shares batch 4's)
    assert len(op.cache) == 1 and op.stats["builds"] == 1 and op.stats["tuned_builds"] == tuned
    for b in (4, 1, 2):
        check(fn, native, image(b))
    # Range's batches 1 and 2 get engines with batch 4's tactics; every other strategy made
    # a profile whose opt shape is each of them
    assert op.stats["builds"] == 1 and op.stats["shape_builds"] == untuned
    check(fn, native, image(3))
    if batch3 == "served":  # a profile contains batch 3: its tactics, no new engine
        assert op.stats["builds"] == 1 and op.stats["shape_builds"] == untuned + 1
    else:                   # Optimal's profiles are single shapes: a new engine at run time
        assert op.stats["builds"] == 2 and len(op.cache) == 2
    assert op.stats["native"] == 0


def test_implicit_batch_engine_serves_smaller_batches(conv_dir, native):
    """An engine built for batch 4 serves 1 and 2 (it was rebuilt for each and evicted)."""
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True,
                           dynamic_shape_profile_strategy="ImplicitBatchModeCompatible")
    conv.build(lambda: iter([(image(4),)]))
    for b in (1, 2, 4, 1, 3):
        check(fn, native, image(b))
    assert op.stats["builds"] == 1 and op.stats.get("evictions", 0) == 0
    assert op.stats["shape_builds"] == 3 and op.stats["native"] == 0
    check(fn, native, image(5))  # past the profile: a new engine (runtime builds allowed)
    assert op.stats["builds"] == 2


def test_shapes_outside_every_profile(conv_dir, native, caplog):
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True, allow_build_at_runtime=False)
    conv.build(lambda: iter([(image(2),), (image(4),)]))
    with caplog.at_level(logging.WARNING, logger="tftrt.engine_op"):
        for _ in range(3):
            check(fn, native, image(8))        # batch 8 > the profile's 4: native
        check(fn, native, image(3, 12, 8))     # H 12 > 8: native
        check(fn, native, image(3))            # inside: the engine
    assert op.stats["native"] == 4 and op.stats["builds"] == 1
    msgs = [r.getMessage() for r in caplog.records if r.name == "tftrt.engine_op"]
    assert len(msgs) == 2, msgs  # one line per shape, not per call
    assert all("no optimization profile of the engine contains input shapes" in m and
               "allow_build_at_runtime=False" in m for m in msgs)
    # allowed (the default): a shape outside builds an engine for it at run time
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True, maximum_cached_engines=2)
    conv.build(lambda: iter([(image(2),), (image(4),)]))
    check(fn, native, image(8))
    assert op.stats["builds"] == 2 and op.stats["native"] == 0 and len(op.cache) == 2


def test_an_evicted_build_profile_is_built_again_whole(conv_dir, native, tmp_path):
    """One call outside build()'s profile (runtime builds on, one cached engine) evicts its
    engine; the next call inside builds the whole profile again (as a loaded model rebuilds
    its saved ones), and the rest of the range is served with no build. Before, each size
    inside built and evicted an engine of its own shape, and save() kept only the last
    (helper hunt, 2026-12-01)."""
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True)
    conv.build(lambda: iter([(image(1),), (image(6),)]))
    check(fn, native, image(8))                 # outside 1..6: its own engine, evicting
    assert op.stats["evictions"] == 1 and op.stats["tuned_builds"] == 2
    for b in (4, 5, 2, 4, 3):
        check(fn, native, image(b))
    assert op.stats["tuned_builds"] == 3 and op.stats["evictions"] == 2
    assert profile_engine(op).profiles == [Profile([(1, *S)], [(6, *S)], [(6, *S)])]
    conv.save(str(tmp_path / "saved"))
    loaded = tftrt.load(str(tmp_path / "saved"))
    (lop,) = loaded.engine_ops.values()
    assert profile_engine(lop).profiles == [Profile([(1, *S)], [(6, *S)], [(6, *S)])]


def test_a_saved_model_remembers_profile_sets_whose_engines_were_evicted(conv_dir, native,
                                                                        tmp_path):
    """save() wrote only the cached engines' profiles: after one call outside build()'s
    profile evicted its engine, the loaded model built and evicted an engine per shape inside
    it where the converter rebuilt the whole set once; and a loaded op remembered only its
    last plan's set (helper hunt, 2026-12-01)."""
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True, maximum_cached_engines=2)
    conv.build(lambda: iter([(image(1),), (image(4),)]))
    check(fn, native, image(6))                 # outside 1..4: a second engine
    check(fn, native, image(8))                 # outside again: evicts build()'s engine
    assert op.stats["evictions"] == 1
    conv.save(str(tmp_path / "saved"))
    loaded = tftrt.load(str(tmp_path / "saved"))
    (lop,) = loaded.engine_ops.values()
    sig = loaded.signatures["serving_default"]
    build_set = [Profile([(1, *S)], [(4, *S)], [(4, *S)]).to_json()]
    assert build_set in lop.remembered_profile_sets()
    for b in (2, 3, 4, 1, 3):                   # inside build()'s profile: one whole rebuild
        check(sig, native, image(b))
    assert lop.stats["tuned_builds"] == 1 and lop.stats["evictions"] == 1
    assert build_set in [[p.to_json() for p in e.profiles] for _, e in lop.cache.items()]
    check(sig, native, image(6))                # the runtime engine's set: remembered too
    assert lop.stats["tuned_builds"] == 2


def test_a_batch_of_0_beside_a_side_input_runs_natively_without_a_build(tmp_path):
    """x: [None, 6], s: [6]. A call with x empty has nothing to compute, but its shapes were
    not all empty, so it built (and cached, evicting build()'s) a tuned engine for batch 0
    (helper hunt, 2026-12-01). An empty optional input beside a full one still runs the
    engine (tests/integration/test_build_check_hostile.py)."""
    class SideInput(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 6], tf.float32, name="x"),
                                      tf.TensorSpec([6], tf.float32, name="s")])
        def __call__(self, x, s):
            return {"y": tf.nn.relu(x * 2.0 + s) - 0.5}

    src = models.save_module(SideInput(), str(tmp_path / "side"))
    native = tf.saved_model.load(src).signatures["serving_default"]
    s = tf.constant(models.batch((6,), seed=3))
    for dynamic in (True, False):
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, use_dynamic_shape=dynamic)
        fn = conv.convert()
        conv.build(lambda: iter([{"x": models.batch((1, 6)), "s": s},
                                 {"x": models.batch((8, 6)), "s": s}]))
        (op,) = conv.engine_ops.values()
        before = dict(op.stats)
        got = fn(x=tf.zeros((0, 6)), s=s)["y"]
        assert got.shape == (0, 6)
        assert op.stats["native"] == before.get("native", 0) + 1
        assert op.stats["builds"] == before["builds"]
        assert op.stats.get("evictions", 0) == before.get("evictions", 0)
        x = models.batch((8, 6))
        np.testing.assert_allclose(fn(x=tf.constant(x), s=s)["y"].numpy(),
                                   native(x=tf.constant(x), s=s)["y"].numpy(), atol=1e-6)
        assert op.stats["builds"] == before["builds"]


def test_a_remembered_profile_set_that_fails_to_build_is_dropped(conv_dir, native):
    """When rebuilding the remembered set fails (out of memory at its largest shape, say),
    the shape that asked runs natively and later shapes inside build a profile of their own,
    not the failing set again (review, 2026-12-01)."""
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True)
    conv.build(lambda: iter([(image(1),), (image(6),)]))
    check(fn, native, image(8))                 # evicts build()'s engine
    (whole,) = op._remembered
    real = op._new_profile_engine

    def failing(profiles, backend):
        if profiles == whole:
            raise MemoryError("out of memory building the remembered profiles")
        return real(profiles, backend)
    op._new_profile_engine = failing
    check(fn, native, image(4))                 # the set fails: native, set dropped
    assert op.stats["native"] == 1 and op._remembered == []
    check(fn, native, image(3))                 # its own profile now
    assert profile_engine(op).profiles == [Profile([(3, *S)], [(3, *S)], [(3, *S)])]


def test_an_empty_batch_in_build_with_native_execution_disabled(conv_dir, native,
                                                                 monkeypatch):
    """An empty batch is nothing to compute: it runs natively even with native execution
    disabled (it raised), and build() forms no profile from it."""
    monkeypatch.setenv("TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION", "0")
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True)
    conv.build(lambda: iter([(image(0),), (image(2),), (image(5),)]))
    assert profile_engine(op).profiles == [Profile([(2, *S)], [(5, *S)], [(5, *S)])]
    check(fn, native, image(3))
    x = tf.constant(image(0))
    try:
        expected = native(x=x)["y"].numpy()
    except tf.errors.InvalidArgumentError:
        # TF's oneDNN Conv2D (AVX-512 CPUs) answers an empty batch with the input's shape, and
        # the next op fails: the native segment fails as the native model does, with TF's error
        with pytest.raises(tf.errors.InvalidArgumentError):
            fn(x=x)
        return
    got = fn(x=x)["y"].numpy()
    assert got.shape == expected.shape == (0, *S[:2], 4)


def test_without_build_the_first_call_makes_the_profile(conv_dir, native):
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True,
                           dynamic_shape_profile_strategy="ImplicitBatchModeCompatible")
    check(fn, native, image(6))
    check(fn, native, image(2))
    assert op.stats["builds"] == 1 and op.stats["shape_builds"] == 1
    assert profile_engine(op).profiles == [Profile([(1, *S)], [(6, *S)], [(6, *S)])]


def test_eviction_warning_once_naming_the_setting(conv_dir, native, caplog):
    conv, fn, op = convert(conv_dir)  # an engine per shape, maximum_cached_engines=1
    with caplog.at_level(logging.WARNING, logger="tftrt.engine_op"):
        for b in (1, 2) * 4:
            check(fn, native, image(b))
    assert op.stats["builds"] == 8 and op.stats["evictions"] == 7
    msgs = [r.getMessage() for r in caplog.records if "keep evicting" in r.getMessage()]
    assert len(msgs) == 1
    assert "maximum_cached_engines=1" in msgs[0] and "use_dynamic_shape=True" in msgs[0]
    caplog.clear()
    conv, fn, op = convert(conv_dir, maximum_cached_engines=2)  # enough: no warning
    with caplog.at_level(logging.WARNING, logger="tftrt.engine_op"):
        for b in (1, 2) * 4:
            check(fn, native, image(b))
    assert op.stats["builds"] == 2 and "keep evicting" not in caplog.text


def test_saved_profiles_round_trip(conv_dir, native, tmp_path, timed):
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True,
                           dynamic_shape_profile_strategy="Range+Optimal")
    conv.build(lambda: iter([(image(b, h, 8),) for b, h in ((1, 8), (4, 8), (2, 16))]))
    before = profile_engine(op)
    conv.save(str(tmp_path / "saved"))
    del timed[:]
    loaded = tftrt.load(str(tmp_path / "saved"))
    (lop,) = loaded.engine_ops.values()
    after = profile_engine(lop)
    assert after.profiles == before.profiles and len(after.profiles) == 4
    sig = loaded.signatures["serving_default"]
    for b, h in ((1, 8), (4, 8), (2, 16), (3, 8), (1, 12), (4, 16), (2, 9)):
        check(sig, native, image(b, h, 8))
    assert timed == []  # every shape in the saved ranges: no tuning
    assert lop.stats["builds"] == 0 and lop.stats["native"] == 0
    # saved: the opt-shape engines of the three Optimal profiles and of the Range profile
    # (4, 16, 8, 3); new: (3, 8), (1, 12), (2, 9)
    assert len(lop.plan_items()) == 4
    assert lop.stats["tuned_builds"] == 0 and lop.stats["shape_builds"] == 3
    # the plain SavedModel still runs natively
    plain = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    check(plain, native, image(3))


def test_unknown_strategy_and_strategy_without_dynamic_shape(conv_dir, caplog):
    with pytest.raises(ValueError, match="profile strategy 'fastest' is not supported; use one "
                       r"of \['Range', 'Optimal', 'Range\+Optimal'"):
        trt.TrtGraphConverterV2(input_saved_model_dir=conv_dir, use_dynamic_shape=True,
                                dynamic_shape_profile_strategy="fastest")
    with caplog.at_level(logging.WARNING, logger="tftrt.convert"):
        conv, _, op = convert(conv_dir, dynamic_shape_profile_strategy="range+optimal")
    assert "has no effect without use_dynamic_shape=True" in caplog.text
    assert op.profile_strategy is None
    conv, _, op = convert(conv_dir, use_dynamic_shape=True,
                          dynamic_shape_profile_strategy="range+optimal")
    assert op.profile_strategy == "Range+Optimal"


# --- TF1 static engines: implicit batch ---------------------------------------------------------

def frozen_conv():
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, *S], name="x")
        tf.identity(conv_net(x, *[tf.constant(w) for w in conv_weights()]), name="out")
    return g.as_graph_def()


def test_tf1_static_engine_serves_every_batch_up_to_max_batch_size(native):
    gd = frozen_conv()
    conv = trt.TrtGraphConverter(input_graph_def=gd, nodes_denylist=["out"], max_batch_size=4)
    converted = conv.convert()
    batches = (1, 2, 4, 3, 5)
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(converted, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            got = [sess.run("out:0", {"x:0": image(b)}) for b in batches]
            (op,) = [o for o in g._py_funcs_used_in_graph if isinstance(o, TRTEngineOp)]
    rtol, atol = MODEL_TOLERANCES["FP32"]
    for b, y in zip(batches, got):
        np.testing.assert_allclose(y, native(x=tf.constant(image(b)))["y"].numpy(),
                                   rtol=rtol, atol=atol)
    # the engine built in convert() (batch 4) serves 1..4; 5 > max_batch_size runs natively
    assert op.stats["builds"] == 0 and op.stats["engine"] == 4 and op.stats["native"] == 1
    assert op.stats["shape_builds"] == 3 and len(op.cache) == 1
    assert profile_engine(op).profiles == [Profile([(1, *S)], [(4, *S)], [(4, *S)])]


def test_a_profile_keeps_engines_for_a_bounded_number_of_shapes(conv_dir, native, monkeypatch,
                                                               caplog):
    """Calls at ever new shapes inside one profile (batch x height): the ProfileEngine kept an
    engine per shape without limit (513 for one op with maximum_cached_engines=1 in the hunt
    of 2026-12-01). Past TFTRT_PROFILE_MAX_SHAPES the least recently used go, never the opt
    engine or its split ladder, with one warning; a dropped shape is made again, answers
    unchanged."""
    monkeypatch.setenv("TFTRT_PROFILE_MAX_SHAPES", "16")
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True, maximum_cached_engines=1)
    conv.build(lambda: iter([(image(1, 4),), (image(8, 12),)]))
    pe = profile_engine(op)
    opt = pe.profiles[0].opt
    with caplog.at_level(logging.WARNING, logger="tftrt.profiles"):
        for h in range(4, 13):
            for b in (1, 3, 5):
                check(fn, native, image(b, h))
                pe.wait_pending(60)
                assert len(pe.shapes) <= 16, pe.shapes
    assert opt in pe.shapes and pe.stats["evicted_shapes"] > 0, pe.stats
    msgs = [r.getMessage() for r in caplog.records if "TFTRT_PROFILE_MAX_SHAPES" in
            r.getMessage()]
    assert len(msgs) == 1, msgs
    check(fn, native, image(3, 4))  # long dropped: made again
    assert op.stats["native"] == 0 and len(op.cache) == 1


def test_native_runs_at_ever_new_shapes_log_a_bounded_number_of_lines(conv_dir, native,
                                                                     caplog):
    """allow_build_at_runtime=False and calls at 30 shapes outside the profile: one warning
    per shape flooded a server's log; after 20 reasons the op says it stops, once."""
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True, allow_build_at_runtime=False)
    conv.build(lambda: iter([(image(2),), (image(4),)]))
    with caplog.at_level(logging.WARNING, logger="tftrt.engine_op"):
        for h in range(9, 39):
            check(fn, native, image(1, h))
    msgs = [r.getMessage() for r in caplog.records if r.name == "tftrt.engine_op"]
    assert len(msgs) == 21, len(msgs)
    assert "further ones are not" in msgs[-1] and op.stats["native"] == 30


class NoisyNet(tf.Module):
    """The conv model and a second output of random draws (a RandomUniform: each call moves
    its state on)."""

    def __init__(self):
        self.w = ConvNet().w

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": conv_net(x, *self.w), "noise": tf.random.uniform([2])}


@pytest.mark.parametrize("model", ["stateless", "random"])
def test_build_reads_profile_shapes_from_its_inputs_when_engines_read_them(
        conv_dir, native, tmp_path, model):
    """build() with use_dynamic_shape: where every engine input is a signature input and the
    model is stateless, the shapes come from the inputs and the model does not run natively
    (TF-TRT's collection ran it: TF's first calls at each shape were about half of a warm
    profile build on the H200, 2026-12-02); the profiles are the same. A model with a
    random op runs each input natively as TF-TRT did."""
    src = conv_dir if model == "stateless" else models.save_module(
        NoisyNet(), str(tmp_path / "noisy"))
    conv, fn, op = convert(src, use_dynamic_shape=True)
    calls, real = [], conv._converted_func

    def counted(**kw):
        calls.append({k: tuple(v.shape) for k, v in kw.items()})
        return real(**kw)
    conv._converted_func = counted
    conv.build(lambda: iter([(image(1),), (image(8),), (image(3),)]))
    assert profile_engine(op).profiles == [Profile([(1, *S)], [(8, *S)], [(8, *S)])]
    assert op.stats["collected"] == 3
    if model == "stateless":
        assert calls == [{"x": (1, *S)}]  # only "the first input again", through the engine
        assert conv._inputs_of_engines(list(conv.engine_ops.values())) is not None
    else:
        assert [c["x"][0] for c in calls] == [1, 8, 3, 1]  # natively, then the first again
        assert conv._inputs_of_engines(list(conv.engine_ops.values())) is None
    for b in (2, 5, 8):
        check(fn, native, image(b))
    assert op.stats["native"] == 0


def test_a_dropped_model_stops_its_queued_background_builds(conv_dir, monkeypatch):
    """A profile's split batches queue their own engines for when calls pause; the
    tftrt-shapes thread holding them held the profile engine and its op too, so a model
    dropped meanwhile still built engines nothing could call, for as long as
    TFTRT_BUILD_IDLE_MS (helper hunt, 2026-12-04). Dropping the model stops them."""
    import gc
    import threading
    import time
    import weakref
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "600000")
    monkeypatch.setenv("TFTRT_SPLIT_CALLS", "0")

    def shape_threads():
        return [t for t in threading.enumerate() if t.name == "tftrt-shapes"]
    before = len(shape_threads())
    conv, fn, op = convert(conv_dir, use_dynamic_shape=True)
    conv.build(lambda: iter([(image(1),), (image(8),)]))
    for b in (3, 5, 7):
        fn(x=tf.constant(image(b)))
    pe = weakref.ref(profile_engine(op))
    assert len(pe()._queue) >= 3 and len(shape_threads()) == before + 1
    del conv, fn, op
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (pe() is not None or
                                           len(shape_threads()) > before):
        gc.collect()
        time.sleep(0.1)
    assert pe() is None and len(shape_threads()) == before


def test_positions_of_a_dynamic_sequence_length_stay_in_the_engine(tmp_path):
    """tf.range(tf.shape(x)[1]) (positions of a sequence of dynamic length: learned and
    sinusoidal position encodings) stayed native ("input 1 of Range must be a constant"),
    cutting the model into engines around it (transformer hunt, 2026-12-04). The Range is in
    the engine, its limit read from the input's shape; one engine serves lengths 3..7."""
    rng = np.random.default_rng(0)
    fn, native, op = models.convert_positions(tmp_path, rng)
    assert "Range" in op.spec.op_histogram, op.spec.op_histogram
    for n in (3, 5, 7):
        x = tf.constant(rng.standard_normal((2, n, 4)).astype(np.float32))
        np.testing.assert_allclose(fn(x=x)["y"].numpy(), native(x=x)["y"].numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert op.stats["native"] == 0 and op.stats["engine"] >= 3


def test_gather_nd_of_a_dynamic_sequence_length_stays_in_the_engine(tmp_path):
    """Rows (b, position) into [batch, length, 4] with the length known only at run time
    (BERT's [CLS] / masked positions): GatherNd needed every dim after the first known and
    stayed native. The strides come from params' Shape now; one engine serves lengths
    3..7, and a position past the length still raises as TF does."""
    rng = np.random.default_rng(0)

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, 4], tf.float32, name="x"),
                                      tf.TensorSpec([None, 2], tf.int32, name="rows")])
        def __call__(self, x, rows):
            return {"y": tf.nn.relu(tf.gather_nd(x * 2.0, rows) + 1.0)}
    src = models.save_module(M(), str(tmp_path / "m"))
    native = tf.saved_model.load(src).signatures["serving_default"]

    def feeds(n):
        x = rng.standard_normal((3, n, 4)).astype(np.float32)
        rows = np.stack([np.arange(3), rng.integers(0, n, 3)], axis=1).astype(np.int32)
        return x, rows
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, use_dynamic_shape=True,
                                   minimum_segment_size=1)
    fn = conv.convert()
    conv.build(lambda: iter([feeds(n)[::-1] for n in (3, 7)]))  # (rows, x): sorted names
    op, = conv.engine_ops.values()
    assert "GatherNd" in op.spec.op_histogram, op.spec.op_histogram
    for n in (3, 5, 7):
        x, rows = feeds(n)
        np.testing.assert_allclose(fn(x=x, rows=rows)["y"].numpy(),
                                   native(x=x, rows=rows)["y"].numpy(), rtol=1e-6)
    assert op.stats["native"] == 0 and op.stats["engine"] >= 3
    x, rows = feeds(5)
    rows[1, 1] = 5  # past the length: TF raises, the engine must not read row 2's first
    with pytest.raises(tf.errors.InvalidArgumentError):
        fn(x=x, rows=rows)
