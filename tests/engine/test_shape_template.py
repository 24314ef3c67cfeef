"""Other shapes of an optimization profile from the opt engine's optimized network
(engine/shape_template.py), the arenas a profile's engines share (memory.ArenaPool), and the
layer copies the passes make (Network.copy). Engines against onnxruntime, numpy backend."""

import copy
import threading

import numpy as np
import pytest
from onnx import helper

from tests.engine.harness import assert_close, make_model, run_ort
from tests.engine.models import resnet50
from tests.threads import in_threads
from tests.tolerances import TOLERANCES
from tftrt.engine import BuilderConfig, build_engine
from tftrt.engine.memory import ArenaPool
from tftrt.engine.onnx_import import network_from_onnx
from tftrt.engine.shape_template import probe_values, specializer
from tftrt.profiles import Profile, ProfileEngine

N = helper.make_node
X = "TensorRTInputPH_0"
INT_MAX = np.iinfo(np.int64).max


def profile_engine(model, profile, precision="FP32", fingerprint=None):
    """A built ProfileEngine of ``model`` for ``profile`` (or a list of profiles); with
    ``fingerprint``, its templates kept in the build cache under it (as the engine op keys
    them by its ONNX bytes' digest)."""
    net = network_from_onnx(model)
    config = BuilderConfig(precision=precision, backend="numpy")

    def build(key, choices, weight_cache):
        return build_engine(net, {X: key[0]}, BuilderConfig(
            precision=precision, backend="numpy", tactic_choices=choices,
            weight_cache=weight_cache))
    profiles = profile if isinstance(profile, list) else [profile]
    return ProfileEngine(profiles, build, "numpy",
                         specializer(net, config, fingerprint=fingerprint)).build_profiles()


def batch_profile(lo, hi, rest):
    return Profile([(lo, *rest)], [(hi, *rest)], [(hi, *rest)])


def check(pe, model, shape, precision="FP32", seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    engine = pe.engine_for([shape])
    got = [np.asarray(o) for o in engine.execute([x])]
    assert_close(got, run_ort(model, {X: x}), *TOLERANCES[precision], what=f"shape {shape}")
    return engine


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_profile_shapes_run_no_pass_again(passes_runs, precision):
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)), precision)
    # the opt shape (8), the probe (5: other parity), the low end (2) and the size-1 probe
    assert len(passes_runs) == 4
    assert pe.template_errors == {}
    (template, _), = pe._templates.values()
    assert template.ones_ok and probe_values(pe.profiles[0], template.variables) == (5,)
    opt = pe.engine_for([(8, 16, 16, 3)])
    for b in range(1, 8):
        engine = check(pe, model, (b, 16, 16, 3), precision, seed=b)
        assert engine.build_info["from_template"] and engine.build_info["timed_layers"] == 0
        assert engine.weights is opt.weights  # the opt engine's uploaded weights
        assert [l.tactic for l in engine.network.layers] == \
            [l.tactic for l in opt.network.layers]
    assert len(passes_runs) == 4  # no pass ran for the 7 other shapes
    assert pe.stats["shapes"] == 7 and pe.stats["from_template"] == 7
    assert pe.stats["tuned"] == 1


def test_full_builds_match_template_engines_exactly():
    """Same layers, tactics and weights: the same numbers as a full build at that shape."""
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    x = np.random.default_rng(3).standard_normal((3, 16, 16, 3)).astype(np.float32)
    templ = pe.engine_for([x.shape])
    full = pe._build(((3, 16, 16, 3),), {l.name: {"kind": l.kind, "tactic": l.tactic}
                                         for l in templ.network.layers}, None)
    assert [(l.name, l.kind, l.tactic) for l in templ.network.layers] == \
        [(l.name, l.kind, l.tactic) for l in full.network.layers]
    assert {k: v.shape for k, v in templ.network.tensors.items()} == \
        {k: v.shape for k, v in full.network.tensors.items()}
    np.testing.assert_array_equal(templ.execute([x])[0], full.execute([x])[0])
    assert templ.memory.arena_bytes == full.memory.arena_bytes


def shape_values_model():
    """Shapes computed from the input: a flatten through Shape -> Gather -> Concat, an Expand
    of per-sample means to the input's shape, and a slice with a negative start on the batch
    axis (x[-2:])."""
    c = {"idx0": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
         "w": np.random.default_rng(0).standard_normal((24, 5)).astype(np.float32),
         "st": np.array([-2], np.int64), "en": np.array([INT_MAX], np.int64),
         "ax": np.array([0], np.int64)}
    nodes = [N("Shape", [X], ["s"]), N("Gather", ["s", "idx0"], ["b"], axis=0),
             N("Concat", ["b", "minus1"], ["flat_shape"], axis=0),
             N("ReduceMean", [X], ["m"], axes=[1, 2, 3], keepdims=1),
             N("Expand", ["m", "s"], ["m_full"]),
             N("Mul", [X, "m_full"], ["xm"]),
             N("Reshape", ["xm", "flat_shape"], ["flat"]),
             N("MatMul", ["flat", "w"], ["TensorRTOutputPH_0"]),
             N("Slice", ["flat", "st", "en", "ax"], ["TensorRTOutputPH_1"])]
    feeds = {X: np.zeros((4, 2, 3, 4), np.float32)}
    return make_model(nodes, feeds, c, outputs=["TensorRTOutputPH_0", "TensorRTOutputPH_1"],
                      symbolic=[0])


def test_shape_values_are_rederived_per_shape(passes_runs):
    model = shape_values_model()
    pe = profile_engine(model, batch_profile(1, 8, (2, 3, 4)))
    assert pe.template_errors == {}
    (template, _), = pe._templates.values()
    ruled = {template.network.layers[k].kind: sorted(v) for k, v in template.rules.items()}
    assert ruled == {"reshape": ["shape"], "expand": ["shape"], "slice": ["slices"]}
    # x[-2:] at batch 1 is x[0:1] (the start clamps to 0), not batch - 2 = -1: the size-1
    # probe sees it, and batch 1 is built the full way
    assert not template.ones_ok
    runs = len(passes_runs)
    for b in range(2, 8):
        assert check(pe, model, (b, 2, 3, 4), seed=b).build_info.get("from_template")
    assert len(passes_runs) == runs
    assert not check(pe, model, (1, 2, 3, 4)).build_info.get("from_template")
    assert len(passes_runs) == runs + 1
    assert pe.stats["shapes"] == 7 and pe.stats["from_template"] == 6


def batch_times_model():
    """y = x * batch, x [batch, 3]: the batch folded into a constant from Shape."""
    nodes = [N("Shape", [X], ["s"]), N("Gather", ["s", "idx0"], ["b"], axis=0),
             N("Cast", ["b"], ["bf"], to=1), N("Mul", [X, "bf"], ["TensorRTOutputPH_0"])]
    return make_model(nodes, {X: np.zeros((4, 3), np.float32)},
                      {"idx0": np.array(0, np.int64)}, outputs=["TensorRTOutputPH_0"],
                      symbolic=[0])


def test_shapes_folded_into_values_build_each_shape():
    """y = x * batch: the constant folded from Shape differs per shape, so each shape is built
    the full way (with the profile's tactics), and right."""
    model = batch_times_model()
    pe = profile_engine(model, batch_profile(1, 8, (3,)))
    (why,) = pe.template_errors.values()
    assert "'args': ['$0', 8.0]" in why and "'args': ['$0', 5.0]" in why  # the batch, folded
    for b in (1, 3, 6):
        assert not check(pe, model, (b, 3), seed=b).build_info.get("from_template")
    assert pe.stats["from_template"] == 0 and pe.stats["shapes"] == 3


@pytest.mark.parametrize("stride", [1, 2])
def test_varying_spatial_size(stride):
    """SAME padding of a strided conv depends on the input size (modulo the stride): a profile
    whose H varies is built per shape; unstrided, its padding is the same at every size."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [N("Transpose", [X], ["t"], perm=[0, 3, 1, 2]),
             N("Conv", ["t", "w"], ["c"], strides=[stride, stride], auto_pad="SAME_UPPER"),
             N("Transpose", ["c"], ["TensorRTOutputPH_0"], perm=[0, 2, 3, 1])]
    model = make_model(nodes, {X: np.zeros((1, 8, 8, 3), np.float32)}, {"w": w},
                       outputs=["TensorRTOutputPH_0"], symbolic=[0, 1])
    pe = profile_engine(model, Profile([(1, 5, 8, 3)], [(2, 10, 8, 3)], [(2, 10, 8, 3)]))
    if stride == 2:
        (why,) = pe.template_errors.values()
        assert "(conv): pads is [0, 0, 1, 1] at the opt shape, [1, 0, 1, 1] at the probe" in why
    else:
        assert pe.template_errors == {}
    for h in (5, 6, 7, 9):
        engine = check(pe, model, (1, h, 8, 3), seed=h)
        assert bool(engine.build_info.get("from_template")) == (stride == 1)


def test_size_one_semantics_are_checked():
    """Squeeze without axes drops every size-1 dimension: at batch 1 the network is another
    one, which the size-1 probe sees; batches 2.. still come from the template."""
    nodes = [N("Squeeze", [X], ["sq"]), N("Relu", ["sq"], ["TensorRTOutputPH_0"])]
    model = make_model(nodes, {X: np.zeros((4, 1, 6), np.float32)},
                       outputs=["TensorRTOutputPH_0"], symbolic=[0])
    pe = profile_engine(model, batch_profile(1, 6, (1, 6)))
    (template, _), = pe._templates.values()
    assert not template.ones_ok and template.serves([(1, 1, 6)]) is not None
    assert check(pe, model, (3, 1, 6)).build_info.get("from_template")
    one = check(pe, model, (1, 1, 6))  # (6,), as onnxruntime
    assert not one.build_info.get("from_template") and one.output_shapes == [(6,)]


def test_template_refuses_shapes_outside_what_it_serves():
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(2, 8, (16, 16, 3)))
    (template, _), = pe._templates.values()
    assert "dimension 1 is 17, fixed at 16" in template.serves([(4, 17, 16, 3)])
    assert "rank" in template.serves([(4, 16, 16)])
    with pytest.raises(Exception, match="does not serve shapes"):
        template.network_for({X: (0, 16, 16, 3)})


def test_probe_values():
    p = Profile([(1, 4), (1, 7)], [(16, 4), (16, 9)], [(16, 4), (16, 9)])
    # near the middle (8), of the other parity than the opt value, and neither another
    # dimension's opt value (9) nor a value already taken (7)
    assert probe_values(p, [(0, 0), (1, 0), (1, 1)]) == (7, 11, 8)
    assert probe_values(Profile([(1,)], [(2,)], [(2,)]), [(0, 0)]) == (1,)


# --- arenas ---------------------------------------------------------------------------------

def test_arena_pool_allocates_once_per_slot_for_the_largest_plan():
    pool, made = ArenaPool(), []

    def alloc(n):
        made.append(n)
        return np.empty(n, np.uint8)
    pool.plan(1000)
    slot = pool.acquire()
    a = pool.reserve(slot, 300, alloc)
    assert made == [1000] and a.nbytes == 1000           # planned size, not the request
    assert pool.reserve(slot, 1000, alloc) is a and made == [1000]
    b = pool.reserve(slot, 1500, alloc)                   # a larger plan: a larger buffer
    assert made == [1000, 1500] and b.nbytes == 1500 and pool.planned_bytes == 1500
    other = pool.acquire()                                # slot is held: another one
    assert other is not slot and pool.reserve(other, 10, alloc) is not b
    assert made == [1000, 1500, 1500]
    pool.release(other)
    pool.release(slot)
    assert pool.stats == {"allocations": 3, "bytes": 4000, "slots": 2}
    assert pool.acquire() is slot                         # the one released last


def test_arena_pool_sequential_callers_share_one_slot_whatever_their_thread():
    pool, got = ArenaPool(), []

    def call():
        s = pool.acquire()
        got.append(s)
        pool.release(s)
    for _ in range(3):
        t = threading.Thread(target=call)
        t.start()
        t.join()
    call()
    assert len(set(map(id, got))) == 1 and pool.stats["slots"] == 1
    held = [pool.acquire() for _ in range(3)]             # three calls at once: three slots
    assert len(set(map(id, held))) == 3 and pool.stats["slots"] == 3


def test_arena_pool_says_when_a_background_warm_up_would_cost_another_slot():
    pool = ArenaPool()
    assert pool.has_idle_slot()                           # none made yet: the first is free
    slot = pool.acquire()
    assert not pool.has_idle_slot()                       # a call holds the only slot
    pool.release(slot)
    assert pool.has_idle_slot()


def test_engine_keeps_one_context_for_sequential_calls_from_any_thread():
    """An engine node in a TF graph runs on TF's inter-op threads, each call with a fresh
    Python thread state: per-thread contexts were rebuilt on every call."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       {"x": np.zeros((2, 3), np.float32)})
    engine = build_engine(model, {"x": (2, 3)})
    x = np.array([[-1.0, 2.0, 3.0], [4.0, -5.0, 6.0]], np.float32)
    outs = []
    for _ in range(3):
        t = threading.Thread(target=lambda: outs.append(engine.execute([x])[0]))
        t.start()
        t.join()
    outs.append(engine.execute([x])[0])
    for y in outs:
        np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert len(engine._contexts) == 1 and engine.arena_pool.stats["slots"] == 1
    slot = engine.arena_pool.acquire()                    # a call in flight elsewhere
    np.testing.assert_array_equal(engine.execute([x])[0], np.maximum(x, 0))
    engine.arena_pool.release(slot)
    assert len(engine._contexts) == 2 and engine.arena_pool.stats["slots"] == 2


def test_concurrent_calls_get_slots_of_their_own_and_right_answers(monkeypatch):
    """Eight threads calling one engine at once: each call holds its slot's arena alone (a
    backend context that computes in the arena would mix calls up otherwise), and slots, and
    contexts, number at most the calls in flight."""
    import time
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       {"x": np.zeros((64, 32), np.float32)})
    engine = build_engine(model, {"x": (64, 32)})
    pool = engine.arena_pool

    class Ctx:  # computes in its slot's arena, as cupy_backend's contexts do
        def __init__(self, slot):
            self.slot_buffer = pool.reserve(slot, 64 * 32 * 4, lambda n: np.empty(n, np.uint8))

        def execute(self, xs):
            arena = self.slot_buffer.view(np.float32).reshape(64, 32)
            arena[...] = xs[0]
            time.sleep(0.001)  # another call on this arena now would overwrite it
            return [np.maximum(arena, 0)]
    monkeypatch.setattr(engine.backend_impl, "create_context",
                        lambda e, slot=None: Ctx(slot))

    def body(t):
        rng = np.random.default_rng(t)
        for _ in range(25):
            x = rng.standard_normal((64, 32)).astype(np.float32)
            np.testing.assert_array_equal(engine.execute([x])[0], np.maximum(x, 0))
    in_threads(body, n=8)
    slots = pool.stats["slots"]
    assert 1 < slots <= 8 and len(engine._contexts) == slots, pool.stats


def test_engine_context_is_made_again_when_its_slot_gets_a_larger_arena(monkeypatch):
    """A context lays its tensors out in its slot's arena; once a larger plan replaced that
    arena (another engine of the profile ran in the slot), the context is made again in the
    new one: the slot's engines share one arena and the old one is freed."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       {"x": np.zeros((2, 3), np.float32)})
    small, large = build_engine(model, {"x": (2, 3)}), build_engine(model, {"x": (2, 3)})
    small.need, large.need = 100, 1000
    pool = ArenaPool()
    for e in (small, large):
        e.share_arenas(pool)
    made = []

    class Ctx:  # what a backend context does with its slot (cupy_backend: the arena)
        def __init__(self, engine, slot):
            self.slot_buffer = pool.reserve(slot, engine.need, lambda n: np.empty(n, np.uint8))
            made.append((engine.need, self.slot_buffer.nbytes))

        def execute(self, xs):
            return [np.maximum(x, 0) for x in xs]
    for e in (small, large):
        monkeypatch.setattr(e.backend_impl, "create_context", lambda e, slot=None: Ctx(e, slot))
    x = np.array([[-1.0, 2.0, 3.0], [4.0, -5.0, 6.0]], np.float32)
    for e in (small, large, small, small, large):
        np.testing.assert_array_equal(e.execute([x])[0], np.maximum(x, 0))
    assert made == [(100, 100), (1000, 1000), (100, 1000)]
    (ctx,) = small._contexts.values()
    assert ctx._impl.slot_buffer is next(iter(large._contexts.values()))._impl.slot_buffer
    assert pool.stats["allocations"] == 2 and pool.stats["slots"] == 1


def test_profile_engines_share_one_arena_pool_sized_for_the_largest():
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    engines = [pe.engine_for([(b, 16, 16, 3)]) for b in (8, 2, 5, 1)]
    assert all(e.arena_pool is pe.arena_pool for e in engines)
    need = [e.memory.context_bytes for e in engines]
    assert need[0] == max(need) > need[1]  # batch 8, the opt shape, needs the most
    assert pe.arena_pool.planned_bytes == max(need)
    assert pe.device_memory_bytes == max(e.device_memory_bytes for e in engines)
    assert pe.describe()["arenas"]["planned_bytes"] == max(need)


# --- copies ---------------------------------------------------------------------------------

def test_layer_clone_is_a_deep_copy():
    model, _ = resnet50(batch=2, size=16, width=8)
    net = build_engine(model, {X: (2, 16, 16, 3)}, BuilderConfig(precision="FP16")).network
    for layer in net.layers:
        c = layer.clone()
        assert c == copy.deepcopy(layer)
        assert c.attrs is not layer.attrs and c.epilogue is not layer.epilogue
        for k, v in layer.attrs.items():
            if isinstance(v, (list, dict)):
                assert c.attrs[k] is not v
        for e, f in zip(layer.epilogue, c.epilogue):
            assert e is not f


# --- quick engines: a new shape served at once, its real engine built in the background --------
@pytest.fixture
def quick_backend(monkeypatch):
    """The numpy backend with a ``mark_quick`` hook (the CuPy backend's marks its cuDNN
    convolutions; here each layer gets the attribute, which numpy ignores): the quick path
    runs, with the numpy engine's exact answers."""
    from tftrt.engine.backends.numpy_backend import NumpyBackend
    marked = []

    def mark_quick(self, net):
        marked.append(net.name)
        for layer in net.layers:
            layer.attrs["_quick"] = True
    monkeypatch.setattr(NumpyBackend, "mark_quick", mark_quick, raising=False)
    monkeypatch.setenv("TFTRT_QUICK_SHAPES", "1")
    return marked


def test_a_new_shape_gets_a_quick_engine_then_the_real_one(quick_backend, monkeypatch):
    import tftrt.engine.builder as B
    real_build, gate = B.build_engine_from_template, threading.Event()

    def gated(*a, quick=False, **k):  # the real engine waits until the test lets it go
        if not quick:
            assert gate.wait(60)
        return real_build(*a, quick=quick, **k)
    monkeypatch.setattr(B, "build_engine_from_template", gated)
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    quick = check(pe, model, (3, 16, 16, 3), seed=3)
    assert quick.build_info["quick"] and quick_backend and pe.is_quick([(3, 16, 16, 3)])
    assert all(l.attrs.get("_quick") for l in quick.network.layers)
    assert check(pe, model, (3, 16, 16, 3), seed=2) is quick  # still building
    assert not pe.wait_pending(timeout=0.05)
    gate.set()
    assert pe.wait_pending(timeout=60)
    real = check(pe, model, (3, 16, 16, 3), seed=4)
    assert real is not quick and not real.build_info["quick"]
    assert not any(l.attrs.get("_quick") for l in real.network.layers)
    assert not pe.is_quick([(3, 16, 16, 3)])
    x = np.random.default_rng(5).standard_normal((3, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(quick.execute([x])[0]),
                                  np.asarray(real.execute([x])[0]))
    assert pe.stats["quick"] == 1 and pe.stats["swapped"] == 1
    assert pe.stats["shapes"] == 1 and pe.stats["from_template"] == 1
    assert real.weights is quick.weights is pe.engine_for([(8, 16, 16, 3)]).weights


@pytest.mark.parametrize("value", ["0", None])
def test_quick_engines_off(quick_backend, monkeypatch, value):
    """TFTRT_QUICK_SHAPES=0, and unset (the default until a GPU has run them): no quick
    engine, the real one is built for the call."""
    if value is None:
        monkeypatch.delenv("TFTRT_QUICK_SHAPES")
    else:
        monkeypatch.setenv("TFTRT_QUICK_SHAPES", value)
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    engine = check(pe, model, (2, 16, 16, 3))
    assert not engine.build_info["quick"] and "quick" not in pe.stats and not quick_backend


def test_a_failed_background_build_keeps_the_quick_engine(quick_backend, monkeypatch, caplog):
    import tftrt.engine.builder as B
    real_build = B.build_engine_from_template

    def failing(*a, quick=False, **k):
        if not quick:
            raise RuntimeError("out of luck")
        return real_build(*a, quick=quick, **k)
    monkeypatch.setattr(B, "build_engine_from_template", failing)
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))

    def no_full_build(*a, **k):  # where the template fails, the full build is tried next
        raise RuntimeError("out of luck")
    pe._build = no_full_build
    with caplog.at_level("WARNING", logger="tftrt.profiles"):
        quick = check(pe, model, (5, 16, 16, 3))
        assert pe.wait_pending(timeout=60)
    assert "failed to build in the background" in caplog.text and "out of luck" in caplog.text
    assert check(pe, model, (5, 16, 16, 3), seed=1) is quick and pe.is_quick([(5, 16, 16, 3)])
    assert pe.stats.get("swapped", 0) == 0


@pytest.mark.parametrize("stand_in", ["quick", "split"])
def test_stand_ins_under_concurrent_calls(request, monkeypatch, stand_in):
    """Four threads call every batch of the profile at once, again and again, while real
    engines replace the stand-ins (quick engines, or split batches): every answer is right,
    and in the end every batch has its own real engine."""
    if stand_in == "quick":
        request.getfixturevalue("quick_backend")
    else:
        monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
        monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "0")
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))

    def body(t):
        for rep in range(3):
            for b in range(1, 8):
                check(pe, model, (b, 16, 16, 3), seed=10 * t + rep)
    in_threads(body)
    assert pe.wait_pending(timeout=120)
    assert not any(pe.is_quick([(b, 16, 16, 3)]) or pe.is_split([(b, 16, 16, 3)])
                   for b in range(1, 9))
    assert sorted(k[0][0] for k in pe.shapes) == list(range(1, 9))
    if stand_in == "quick":
        assert pe.stats["quick"] == 7 == pe.stats["swapped"] == pe.stats["shapes"]
    else:  # the ladder 1, 2, 4 came with the profile; the other batches split
        assert pe.stats["split"] == pe.stats["swapped"] == 4  # 3, 5, 6, 7


# --- split batches: a new batch size served at once by engines for smaller batches -------------
@pytest.fixture
def split_on(monkeypatch):
    """Split batches on; a split batch's own engine builds as soon as queued (the wait for
    idle has its own test)."""
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "0")


def gate_background(monkeypatch):
    """Background builds (the tftrt-shapes thread) wait until the returned event is set;
    builds on the calling thread go through."""
    import tftrt.engine.builder as B
    real_build, gate = B.build_engine_from_template, threading.Event()

    def gated(*a, **k):
        if threading.current_thread().name == "tftrt-shapes":
            assert gate.wait(60)
        return real_build(*a, **k)
    monkeypatch.setattr(B, "build_engine_from_template", gated)
    return gate


def softmax_over_batch_model():
    """y = softmax(x @ w, axis=0): every sample's answer depends on the others."""
    w = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    nodes = [N("MatMul", [X, "w"], ["h"]), N("Softmax", ["h"], ["TensorRTOutputPH_0"], axis=0)]
    return make_model(nodes, {X: np.zeros((4, 6), np.float32)}, {"w": w},
                      outputs=["TensorRTOutputPH_0"], symbolic=[0])


def test_which_networks_may_split_their_batches():
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    assert pe.split_check(0) is None
    pe = profile_engine(softmax_over_batch_model(), batch_profile(1, 8, (6,)))
    assert "(softmax) works along dimension 0" in pe.split_check(0)
    # x[-2:] on the batch axis, a flatten through Shape: tensors whose dimension 0 is not
    # the batch, or a slice of it
    pe = profile_engine(shape_values_model(), batch_profile(1, 8, (2, 3, 4)))
    assert pe.split_check(0) is not None
    # a profile that varies more than the batch (an unstrided conv: one template for all H)
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [N("Transpose", [X], ["t"], perm=[0, 3, 1, 2]),
             N("Conv", ["t", "w"], ["c"], auto_pad="SAME_UPPER"),
             N("Transpose", ["c"], ["TensorRTOutputPH_0"], perm=[0, 2, 3, 1])]
    conv = make_model(nodes, {X: np.zeros((1, 8, 8, 3), np.float32)}, {"w": w},
                      outputs=["TensorRTOutputPH_0"], symbolic=[0, 1])
    pe = profile_engine(conv, Profile([(1, 5, 8, 3)], [(4, 10, 8, 3)], [(4, 10, 8, 3)]))
    assert pe.template_errors == {}
    assert "not dimension 0 of every input alone" in pe.split_check(0)
    pe = profile_engine(conv, Profile([(1, 10, 8, 3)], [(4, 10, 8, 3)], [(4, 10, 8, 3)]))
    assert pe.split_check(0) is None  # the layout transposes keep dimension 0 in place


def test_a_new_batch_is_split_then_gets_its_engine(split_on, monkeypatch):
    gate = gate_background(monkeypatch)
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    # build_profiles() built the split ladder: the smallest batch and the powers of two
    assert sorted(k[0][0] for k in pe.shapes) == [1, 2, 4, 8]
    split = check(pe, model, (5, 16, 16, 3), seed=5)
    assert split.build_info["split"] == [4, 1] and pe.is_split([(5, 16, 16, 3)])
    assert sorted(k[0][0] for k in pe.shapes) == [1, 2, 4, 8]  # its own engine is queued
    assert not pe.wait_pending(timeout=0.05)
    assert check(pe, model, (5, 16, 16, 3), seed=6) is split  # still building
    gate.set()
    assert pe.wait_pending(timeout=120)
    # batch 5's own engine, from the template
    assert sorted(k[0][0] for k in pe.shapes) == [1, 2, 4, 5, 8]
    real = check(pe, model, (5, 16, 16, 3), seed=7)
    assert real is not split and real.build_info["from_template"] and \
        not pe.is_split([(5, 16, 16, 3)])
    x = np.random.default_rng(8).standard_normal((5, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(split.execute([x])[0]),
                               np.asarray(real.execute([x])[0]), rtol=1e-5, atol=1e-5)
    # a later new batch splits over what is built now: 7 = 5 + 2
    seven = check(pe, model, (7, 16, 16, 3), seed=9)
    assert seven.build_info["split"] == [5, 2]
    assert pe.wait_pending(timeout=120) and not pe.is_split([(7, 16, 16, 3)])
    assert pe.stats["split"] == 2 == pe.stats["swapped"]
    assert pe.stats["shapes"] == 5 == pe.stats["from_template"]  # batches 1, 2, 4, 5, 7
    assert pe.stats["tuned"] == 1 and pe.stats["timed_layers"] > 0


def test_a_background_build_runs_its_engine_once(split_on, monkeypatch):
    """An engine built on the tftrt-shapes thread runs there once (its preparation), never a
    second time: a second run captures the CUDA graphs, and a capture on a thread of ours
    made a device-wide wait of the caller's fail (cudaErrorStreamCaptureUnsupported, every
    capture mode: GPU run of 2026-12-02). The capture happens in the first call instead."""
    from tftrt.engine import runtime
    runs, real = [], runtime.Engine.execute

    def counted(engine, inputs):
        runs.append((threading.current_thread().name, id(engine)))
        return real(engine, inputs)
    monkeypatch.setattr(runtime.Engine, "execute", counted)
    gate = gate_background(monkeypatch)  # the build once the call is over: no call running
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    ladder = [r for r in runs if r[0] != "tftrt-shapes"]
    assert len(ladder) == 2 * 3  # build_profiles ran rungs 1, 2 and 4 twice each
    check(pe, model, (5, 16, 16, 3), seed=5)                  # split 4 + 1, queues batch 5
    gate.set()
    assert pe.wait_pending(timeout=120)
    background = [r for r in runs if r[0] == "tftrt-shapes"]
    assert len(background) == 1, background
    before = len(runs)
    check(pe, model, (5, 16, 16, 3), seed=6)                  # batch 5's own engine
    assert runs[before:] == [(threading.current_thread().name, background[0][1])]


def test_a_background_thread_slow_to_start_holds_no_lock(split_on, monkeypatch):
    """The tftrt-shapes thread is started outside the profile's lock: while its start()
    waits (forever, when an asynchronous exception killed the new thread before it ran:
    concurrency hunt), other calls and stop_background_builds() go on; a start that raises
    leaves no worker named, so the next queued build starts one."""
    import tftrt.profiles as PR
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    release, started, fail = threading.Event(), threading.Event(), []
    Thread = threading.Thread

    class SlowStart(Thread):
        def start(self):
            if self.name == "tftrt-shapes":
                started.set()
                release.wait(60)
                if fail:
                    raise KeyboardInterrupt
            super().start()
    monkeypatch.setattr(PR.threading, "Thread", SlowStart)
    caller = Thread(target=lambda: check(pe, model, (5, 16, 16, 3), seed=5))
    caller.start()
    assert started.wait(60)
    got = pe._cond.acquire(timeout=5)  # pylint: disable=protected-access
    assert got, "the profile's lock is held while the background thread starts"
    pe._cond.release()  # pylint: disable=protected-access
    assert check(pe, model, (2, 16, 16, 3), seed=6) is not None  # a built shape: no wait
    release.set()
    caller.join(60)
    assert not caller.is_alive() and pe.wait_pending(timeout=120)
    # a start that raises: the worker slot is free again for the next build
    release.clear(), started.clear(), fail.append(True)
    err = []

    def call():
        try:
            check(pe, model, (3, 16, 16, 3), seed=7)
        except KeyboardInterrupt as e:
            err.append(e)
    t = Thread(target=call)
    t.start()
    assert started.wait(60)
    release.set()
    t.join(60)
    assert err and pe._worker is None  # pylint: disable=protected-access
    fail.clear()
    assert check(pe, model, (6, 16, 16, 3), seed=8) is not None
    assert pe.wait_pending(timeout=120)


def test_the_ladder_splits_every_batch_into_one_part_per_bit(split_on, monkeypatch):
    """A profile 1..64: build_profiles() builds batches 1, 2, 4, ..., 32 (and the opt 64) and
    runs each; every batch of the range then splits into its binary digits, none waits."""
    model, _ = resnet50(batch=2, size=8, width=4)
    pe = profile_engine(model, batch_profile(1, 64, (8, 8, 3)))
    assert sorted(k[0][0] for k in pe.shapes) == [1, 2, 4, 8, 16, 32, 64]
    gate, real_make = threading.Event(), pe._make

    def gated(*a):  # no real engine may build meanwhile
        if threading.current_thread().name == "tftrt-shapes":
            assert gate.wait(60)
        return real_make(*a)
    pe._make = gated
    for b in (3, 63, 37, 50):
        engine = pe.engine_for([(b, 8, 8, 3)])
        parts = engine.build_info["split"]
        assert parts == [1 << k for k in reversed(range(7)) if b >> k & 1], (b, parts)
    assert check(pe, model, (63, 8, 8, 3), seed=63) is pe.engine_for([(63, 8, 8, 3)])
    gate.set()
    assert pe.wait_pending(timeout=120)
    # a profile whose smallest batch is not a power of two: 3, then 4, 8 below 12
    pe = profile_engine(model, batch_profile(3, 12, (8, 8, 3)))
    assert sorted(k[0][0] for k in pe.shapes) == [3, 4, 8, 12]
    assert pe.engine_for([(11, 8, 8, 3)]).build_info["split"] == [8, 3]


def test_a_split_batch_gets_its_engine_only_when_calls_pause(monkeypatch):
    """Background builds hold the interpreter lock for long stretches on a GPU: a split
    batch's own engine starts only once the engine had no call for TFTRT_BUILD_IDLE_MS."""
    import time
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    # 1.5 s: with 300 ms, a loaded CI machine (two test processes on 2 cores) stretched a
    # gap between the calls below past it and the build started (2026-12-02)
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "1500")
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    split = check(pe, model, (3, 16, 16, 3), seed=1)
    assert pe.is_split([(3, 16, 16, 3)])
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:  # a call every 50 ms: never idle for 1.5 s
        last = time.monotonic()
        assert pe.engine_for([(3, 16, 16, 3)]) is split
        time.sleep(0.05)
    assert pe.is_split([(3, 16, 16, 3)]) and not pe.wait_pending(timeout=0)
    assert pe.wait_pending(timeout=60)
    assert time.monotonic() - last >= 1.5
    assert not pe.is_split([(3, 16, 16, 3)]) and pe.stats["swapped"] == 1
    assert check(pe, model, (3, 16, 16, 3), seed=2) is not split


@pytest.mark.parametrize("value", ["0", "false"])
def test_split_batches_off(monkeypatch, value):
    """TFTRT_SPLIT_BATCH=0: the call waits for its engine."""
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", value)
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    engine = check(pe, model, (3, 16, 16, 3))
    assert "split" not in engine.build_info and "split" not in pe.stats
    assert pe.shapes == [((8, 16, 16, 3),), ((3, 16, 16, 3),)]


def test_split_batches_are_the_default(monkeypatch):
    """Unset: a new batch size is served at once by engines already built (the H200,
    2026-11-30: first calls 2 ms instead of 0.5-3.7 s)."""
    monkeypatch.delenv("TFTRT_SPLIT_BATCH", raising=False)
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    pe.engine_for([(1, 16, 16, 3)])
    engine = check(pe, model, (3, 16, 16, 3))
    assert "split" in engine.build_info and pe.stats["split"] == 1
    assert pe.wait_pending(timeout=30)


def test_a_network_that_mixes_samples_is_never_split(split_on):
    model = softmax_over_batch_model()
    pe = profile_engine(model, batch_profile(1, 8, (6,)))
    pe.engine_for([(1, 6)])  # a smaller engine to split with, were it allowed
    for b in (2, 5, 7):
        engine = check(pe, model, (b, 6), seed=b)
        assert "split" not in engine.build_info
    assert "split" not in pe.stats and pe.wait_pending(timeout=1)


def test_a_failed_background_build_keeps_the_split_batches(split_on, monkeypatch, caplog):
    import tftrt.engine.builder as B
    real_build = B.build_engine_from_template

    def failing(*a, **k):
        if threading.current_thread().name == "tftrt-shapes":
            raise RuntimeError("out of luck")
        return real_build(*a, **k)
    monkeypatch.setattr(B, "build_engine_from_template", failing)
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    real_full = pe._build

    def no_background_full_build(*a, **k):
        if threading.current_thread().name == "tftrt-shapes":
            raise RuntimeError("out of luck")
        return real_full(*a, **k)
    pe._build = no_background_full_build
    with caplog.at_level("WARNING", logger="tftrt.profiles"):
        split = check(pe, model, (3, 16, 16, 3))
        assert pe.wait_pending(timeout=60)
    assert "split batches keep serving them" in caplog.text and "out of luck" in caplog.text
    assert check(pe, model, (3, 16, 16, 3), seed=1) is split and pe.is_split([(3, 16, 16, 3)])
    assert pe.stats.get("swapped", 0) == 0


def test_a_loaded_profile_builds_its_smallest_batch_at_the_first_split(monkeypatch):
    """A ProfileEngine given its opt engine (a loaded plan) has nothing smaller: the first new
    batch builds the smallest one for that call, then splits; the rest of the ladder builds
    in the background at once, the batch's own engine only when calls pause."""
    import time
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    # calls come every 20 ms below; a pause of 300 ms (a loaded CI machine: load 8 on 2
    # cores, 2026-12-02) let batch 3's own engine build mid-loop
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "2000")
    model, _ = resnet50(batch=2, size=16, width=8)
    built = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    opt = built.engine_for([(8, 16, 16, 3)])
    pe = ProfileEngine(built.profiles, built._build, "numpy", built._specialize)
    pe.add_opt_engine(0, opt)
    assert pe.shapes == [((8, 16, 16, 3),)]
    split = check(pe, model, (3, 16, 16, 3))
    assert split.build_info["split"] == [1, 1, 1]
    t_end = time.monotonic() + 60
    while sorted(k[0][0] for k in pe.shapes) != [1, 2, 4, 8]:  # calls keep coming
        assert time.monotonic() < t_end
        assert pe.engine_for([(3, 16, 16, 3)]).build_info["split"] in ([1, 1, 1], [2, 1])
        time.sleep(0.02)
    # the rung 2 built in the background shortened batch 3's split; its own engine waits
    resplit = check(pe, model, (3, 16, 16, 3), seed=3)
    assert resplit.build_info["split"] == [2, 1] and pe.is_split([(3, 16, 16, 3)])
    assert pe.wait_pending(timeout=120) and not pe.is_split([(3, 16, 16, 3)])
    assert check(pe, model, (5, 16, 16, 3), seed=5).build_info["split"] == [4, 1]


def _loaded_profile(model, lo=1, hi=8):
    """A ProfileEngine made as tftrt.load makes one: only its opt engine."""
    built = profile_engine(model, batch_profile(lo, hi, (16, 16, 3)))
    pe = ProfileEngine(built.profiles, built._build, "numpy", built._specialize)
    pe.add_opt_engine(0, built.engine_for([(hi, 16, 16, 3)]))
    return pe


def test_a_loaded_batch_on_the_ladder_gets_its_engine_under_steady_load(monkeypatch):
    """A batch that is a rung of the split ladder (4 in 1..8) is not left split while calls
    keep coming: its own engine is its rung, built at once in the background (on the H200 a
    loaded ResNet101V2's batch 8 ran as 8 x 1 for good, 6.3x its batch 1)."""
    import time
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "600000")  # calls never pause here
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = _loaded_profile(model)
    assert check(pe, model, (4, 16, 16, 3)).build_info["split"] == [1, 1, 1, 1]
    t_end = time.monotonic() + 60
    while pe.is_split([(4, 16, 16, 3)]):
        assert time.monotonic() < t_end, "batch 4 stayed split"
        pe.engine_for([(4, 16, 16, 3)])
        time.sleep(0.01)
    own = check(pe, model, (4, 16, 16, 3), seed=4)
    assert "split" not in own.build_info and pe.stats["swapped"] == 1


def test_a_split_batch_under_steady_load_gets_its_engine_after_split_calls(monkeypatch):
    """Off the ladder (3 in 1..8), a batch whose calls never pause is built once its split
    batches served TFTRT_SPLIT_CALLS calls; with 0 it waits for a pause."""
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "600000")
    monkeypatch.setenv("TFTRT_SPLIT_CALLS", "0")
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    for _ in range(40):
        check(pe, model, (3, 16, 16, 3))
    assert pe.is_split([(3, 16, 16, 3)]) and not pe.wait_pending(timeout=0.3)
    pe.stop_background_builds()

    monkeypatch.setenv("TFTRT_SPLIT_CALLS", "20")
    pe = profile_engine(model, batch_profile(1, 8, (16, 16, 3)))
    for _ in range(19):
        assert pe.engine_for([(3, 16, 16, 3)]).build_info["split"] == [2, 1]
    assert not pe.wait_pending(timeout=0.3), "built before 20 calls"
    pe.engine_for([(3, 16, 16, 3)])
    assert pe.wait_pending(timeout=60) and not pe.is_split([(3, 16, 16, 3)])
    assert "split" not in check(pe, model, (3, 16, 16, 3), seed=3).build_info


def test_a_class_token_broadcast_to_the_batch_serves_every_batch(split_on):
    """ViT's class token, Expand(cls, [batch, 1, 4]) with the batch read off the input, then
    concatenated before the tokens: the expand stays a layer (constant folding keeps
    broadcasts that grow a weight), so the profile has a template and splits batches."""
    nodes = [N("Shape", [X], ["s"]), N("Gather", ["s", "idx0"], ["b"], axis=0),
             N("Concat", ["b", "one_four"], ["to"], axis=0),
             N("Expand", ["cls", "to"], ["cls_b"]),
             N("Concat", ["cls_b", X], ["tok"], axis=1),
             N("MatMul", ["tok", "w"], ["TensorRTOutputPH_0"])]
    rng = np.random.default_rng(0)
    consts = {"idx0": np.array([0], np.int64), "one_four": np.array([1, 4], np.int64),
              "cls": rng.standard_normal((1, 1, 4)).astype(np.float32),
              "w": rng.standard_normal((4, 5)).astype(np.float32)}
    model = make_model(nodes, {X: np.zeros((2, 3, 4), np.float32)}, consts,
                       outputs=["TensorRTOutputPH_0"], symbolic=[0])
    pe = profile_engine(model, batch_profile(1, 8, (3, 4)))
    assert pe.template_errors == {} and pe.split_check(0) is None
    # At batch 1 the expand folds away, so the template cannot show batch 1 computing as the
    # others (ones_ok False): no batch-1 engine is a part of a split, 3 waits for its own
    # engine and then serves 5 = 3 + 2; 6 = 4 + 2.
    assert not pe._template(0)[0].ones_ok
    for b in (3, 6, 5):
        check(pe, model, (b, 3, 4), seed=b)
    assert pe.stats["split"] == 2
    assert all(1 not in [n for n, _ in s.parts] for s in pe._stand_ins.values()
               if hasattr(s, "parts"))
    assert pe.wait_pending(timeout=120)
    for b in (3, 6, 5):
        assert "split" not in check(pe, model, (b, 3, 4), seed=b + 1).build_info


_EXIT_SCRIPT = """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
import tftrt.engine.builder as B
from tests.engine.models import resnet50
from tests.engine.test_shape_template import batch_profile, profile_engine
real = B.build_engine_from_template
def slow(*a, **k):  # every background build takes 3 s
    time.sleep(3.0)
    return real(*a, **k)
model, _ = resnet50(batch=2, size=16, width=8)
pe = profile_engine(model, batch_profile(1, 64, (16, 16, 3)))  # builds the ladder 1..32
B.build_engine_from_template = slow
for b in range(3, 25, 2):  # 11 batches split, their own engines queued
    pe.engine_for([(b, 16, 16, 3)])
print("QUEUED", len(pe._queue), flush=True)
"""


def test_exit_does_not_wait_for_queued_background_builds(tmp_path):
    """A process that exits with background builds queued waits for the one running, not for
    the queue (seconds each on a GPU): threading's exit hook drops the rest."""
    import os
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "exit.py"
    script.write_text(_EXIT_SCRIPT.format(root=root))
    env = dict(os.environ, TFTRT_SPLIT_BATCH="1", TFTRT_BACKEND="numpy",
               TFTRT_BUILD_IDLE_MS="0")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=root)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    queued = int(proc.stdout.split("QUEUED")[1].split()[0])
    assert queued >= 8, proc.stdout
    # the interpreter and the model take a few seconds, the running build 3 s at most; the
    # whole queue would take over 30 s more
    assert took < 20, took


def folded_batch_model(op):
    """x * f(batch), f folded from Shape: batch % 3 agrees at every shape the probes compare
    in 1..8 (8, 5, 2: 2, 2, 2), min(batch, 6) at 8 and 6 ... and below only at 2."""
    c = {"idx0": np.array([0], np.int64), "k": np.array([3 if op == "Mod" else 6], np.int64)}
    nodes = [N("Shape", [X], ["s"]), N("Gather", ["s", "idx0"], ["b"], axis=0),
             N(op, ["b", "k"], ["f"], **({"fmod": 0} if op == "Mod" else {})),
             N("Cast", ["f"], ["ff"], to=1),
             N("Mul", [X, "ff"], ["TensorRTOutputPH_0"])]
    return make_model(nodes, {X: np.zeros((4, 5), np.float32)}, c,
                      outputs=["TensorRTOutputPH_0"], symbolic=[0])


@pytest.mark.parametrize("op", ["Mod", "Min"])
def test_a_value_folded_from_the_batch_that_the_probes_cannot_tell_refuses_the_template(op):
    """The hole the probes leave (module doc): x * (batch % 3) over 1..8 agrees at 8, 5 and
    2, so batch 3 was served with the factor 2 instead of 0. Now the values folded from
    shapes are evaluated at many batch sizes and must be affine in it: here they are not,
    the template is refused and every batch is a full build with its own factor."""
    model = folded_batch_model(op)
    pe = profile_engine(model, batch_profile(1, 8, (5,)))
    assert "not affine in input 0 dimension 0" in pe.template_errors.get(0, ""), \
        pe.template_errors
    for b in range(1, 9):
        engine = check(pe, model, (b, 5), seed=b)
        assert not engine.build_info.get("from_template")


def test_shape_values_and_the_affine_check():
    """shape_values evaluates the shape arithmetic alone (per output name, at any shapes);
    the samples cover the start of a range densely and the rest by powers of two; a line
    passes the affine check, batch % 3 does not."""
    from tftrt.engine.passes.constant_folding import shape_values
    from tftrt.engine.shape_template import _affine, sample_values
    assert sample_values(1, 8, 8) == [2, 3, 4, 5, 6, 7, 8]
    assert sample_values(1, 1000, 1000)[:3] == [2, 3, 4] and 512 in sample_values(1, 1000, 1000)
    assert _affine([2, 3, 5], [np.array([5]), np.array([7]), np.array([11])])
    assert not _affine([2, 3, 5], [np.array([2]), np.array([0]), np.array([2])])
    model = folded_batch_model("Mod")
    net = network_from_onnx(model)
    vals = {b: shape_values(net, {X: (b, 5)}) for b in (2, 3, 4)}
    assert [int(np.asarray(vals[b]["f"]).reshape(-1)[0]) for b in (2, 3, 4)] == [2, 0, 1]
    assert [int(np.asarray(vals[b]["b"]).reshape(-1)[0]) for b in (2, 3, 4)] == [2, 3, 4]


def test_threads_on_a_loaded_profile_while_rungs_land_and_splits_are_remade(monkeypatch):
    """Four threads call batch sizes 2..8 of a loaded profile while its ladder builds in the
    background, split batches are made again with each rung and batches reach
    TFTRT_SPLIT_CALLS: every answer is the reference's for its own input."""
    import time
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "600000")
    monkeypatch.setenv("TFTRT_SPLIT_CALLS", "6")
    model, _ = resnet50(batch=2, size=16, width=8)
    pe = _loaded_profile(model)
    ref = network_from_onnx(model)
    reference = build_engine(ref, {X: (8, 16, 16, 3)}, BuilderConfig(backend="numpy"))
    xs = np.random.default_rng(0).standard_normal((8, 16, 16, 3)).astype(np.float32)
    want = reference.execute([xs])[0]
    errors, parts_seen = [], set()

    def worker(seed):
        rng = np.random.default_rng(seed)
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end and not errors:
            b = int(rng.integers(2, 9))
            try:
                engine = pe.engine_for([(b, 16, 16, 3)])
                parts_seen.add(tuple(engine.build_info.get("split") or (b,)))
                got = engine.execute([xs[:b]])[0]
                np.testing.assert_allclose(got, want[:b], rtol=1e-4, atol=1e-4)
            except Exception as e:  # reported below with the batch size
                errors.append(f"batch {b}: {type(e).__name__}: {e}")
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert pe.wait_pending(timeout=120)
    assert any(len(p) > 1 for p in parts_seen)  # some calls really ran split
    for b in range(2, 9):
        assert not pe.is_split([(b, 16, 16, 3)]), b  # 256 -> 6 calls: every size got its own
        np.testing.assert_allclose(pe.engine_for([(b, 16, 16, 3)]).execute([xs[:b]])[0],
                                   want[:b], rtol=1e-4, atol=1e-4)


def test_a_large_value_folded_from_a_static_dimension_keeps_the_template():
    """A mask of ones as large as a static sequence length squared (ConstantOfShape of
    Shape(x)[1] twice, 80 x 80 > SMALL elements) is followed by its digest: the same at every
    batch size, so the template stays; one as large as the batch refuses it."""
    from tftrt.engine.passes.constant_folding import Digest, shape_values

    def model(per_batch):
        c = {"idx": np.array([0 if per_batch else 1], np.int64),
             "idx1": np.array([1], np.int64)}
        nodes = [N("Shape", [X], ["s"]), N("Gather", ["s", "idx"], ["a"], axis=0),
                 N("Gather", ["s", "idx1"], ["n"], axis=0),
                 N("Concat", ["a", "n"], ["mask_shape"], axis=0),
                 N("ConstantOfShape", ["mask_shape"], ["mask"],
                   value=helper.make_tensor("v", 1, [1], [0.5])),
                 N("MatMul", [X, "mask"], ["TensorRTOutputPH_0"]) if not per_batch else
                 N("ReduceSum", ["mask"], ["tot"], keepdims=0),
                 ]
        outs = ["TensorRTOutputPH_0"]
        if per_batch:
            nodes.append(N("Mul", [X, "tot"], ["TensorRTOutputPH_0"]))
        return make_model(nodes, {X: np.zeros((4, 80), np.float32)}, c, outputs=outs,
                          symbolic=[0])
    static = model(False)
    vals = shape_values(network_from_onnx(static), {X: (3, 80)})
    assert isinstance(vals["mask"], Digest) and vals["mask"][0] == (80, 80)
    pe = profile_engine(static, batch_profile(1, 8, (80,)))
    assert pe.template_errors == {}, pe.template_errors
    for b in (2, 3, 7):
        assert check(pe, static, (b, 80), seed=b).build_info.get("from_template")
    per_batch = model(True)
    pe = profile_engine(per_batch, batch_profile(1, 80, (80,)))
    assert 0 in pe.template_errors, pe.template_errors
    for b in (3, 59):
        check(pe, per_batch, (b, 80), seed=b)


def test_the_ladder_is_prefetched_in_one_go(split_on, monkeypatch):
    """build_profiles() hands the networks of every rung of the split ladder to the backend's
    prefetch hook at once (the CuPy backend compiles their cuDNN graphs on worker processes,
    one wait instead of one per engine), each with the opt engine's tactics, bound to the
    rung's batch; each rung's own build then offers its network again (the hook finds it
    done); the engines are the ones built without the hook. start_build sees each build's
    network before its passes. (No rung tuned here: a tuned rung is built before the
    prefetch, see the next test.)"""
    from tftrt.engine.backends.numpy_backend import NumpyBackend
    monkeypatch.setenv("TFTRT_PROFILE_TUNED_RUNGS", "0")
    calls, starts = [], []

    def prefetch(self, nets):
        calls.append(nets)
    monkeypatch.setattr(NumpyBackend, "prefetch", prefetch, raising=False)
    monkeypatch.setattr(NumpyBackend, "start_build", lambda self, net: starts.append(net),
                        raising=False)
    model, _ = resnet50(batch=2, size=8, width=4)
    pe = profile_engine(model, batch_profile(1, 16, (8, 8, 3)))
    assert sorted(k[0][0] for k in pe.shapes) == [1, 2, 4, 8, 16]
    ladder = [c for c in calls if isinstance(c, list)]
    assert len(ladder) == 1, calls
    assert sorted(n.tensors[n.inputs[0]].shape[0] for n in ladder[0]) == [1, 2, 4, 8]
    opt = pe.engine_for([(16, 8, 8, 3)])
    tactics = {l.name: l.tactic for l in opt.network.layers}
    for net in ladder[0]:
        assert {l.name: l.tactic for l in net.layers} == tactics
        assert all(l.tactic for l in net.layers)
    singles = [c for c in calls if not isinstance(c, list)]
    assert len(singles) == 5  # the opt engine's build (before tactics) and each rung's
    assert starts and all(not isinstance(s, list) for s in starts)
    for b in (1, 3, 16):
        check(pe, model, (b, 8, 8, 3), seed=b)


def test_the_smallest_rung_is_tuned_and_lends_its_choices(split_on, monkeypatch):
    """With one tuned rung, build_profiles() tunes the profile's smallest batch at its own
    shape (tactics timed
    there, from the template's network) before the rest of the ladder, which is prefetched
    and built with the choices of the tuned engine nearest in log2(batch): batch 2 takes
    batch 1's, 4 (a tie) and 8 the opt engine's; an off-ladder batch's own engine too (3
    takes batch 1's). Every engine answers as the model."""
    import tftrt.engine.builder as B
    from tftrt.engine.backends.numpy_backend import NumpyBackend
    monkeypatch.setenv("TFTRT_PROFILE_TUNED_RUNGS", "1")
    real, made, prefetched = B.build_engine_from_template, [], []

    def spy(template, shapes, opt, config=None, quick=False, tune=False, choices_from=None):
        engine = real(template, shapes, opt, config, quick=quick, tune=tune,
                      choices_from=choices_from)
        made.append((shapes[X][0], tune, None if choices_from is None else
                     choices_from.input_shapes[0][0]))
        return engine
    monkeypatch.setattr(B, "build_engine_from_template", spy)
    singles = []  # (batch, tactics) of each single network the hook saw, when it saw it

    def prefetch(self, nets):
        if isinstance(nets, list):
            prefetched.append(nets)
        else:
            singles.append((nets.tensors[nets.inputs[0]].shape[0],
                            {l.tactic for l in nets.layers}))
    monkeypatch.setattr(NumpyBackend, "prefetch", prefetch, raising=False)
    model, _ = resnet50(batch=2, size=8, width=4)
    pe = profile_engine(model, batch_profile(1, 16, (8, 8, 3)))
    assert made[0] == (1, True, None), made
    assert sorted(made[1:]) == [(2, False, 1), (4, False, None), (8, False, None)], made
    # the tuned rung's network reaches the hook before its tactics are chosen, as a fresh
    # build's does (with the opt engine's tactics the hook made no cuDNN plan for a conv the
    # opt shape ran as a GEMM, and the rung tuned it in the calling process), and with it
    # rungs 4 and 8, which take the opt engine's choices whatever the tuning finds
    (ladder,) = prefetched
    batch = lambda net: net.tensors[net.inputs[0]].shape[0]  # noqa: E731
    assert [batch(n) for n in ladder] == [1, 4, 8]
    assert {l.tactic for l in ladder[0].layers} == {None}
    one, opt = pe.engine_for([(1, 8, 8, 3)]), pe.engine_for([(16, 8, 8, 3)])
    assert one.build_info["tuned"] and one.build_info["timed_layers"] > 0
    assert pe.stats["tuned_rungs"] == 1
    tactics = lambda net: {l.name: l.tactic for l in net.layers}  # noqa: E731
    for net in ladder[1:]:  # the prefetched networks carry their source's tactics
        assert tactics(net) == tactics(opt.network)
    # rung 2, alone after the tuning, reaches the hook with batch 1's choices
    assert (2, set(tactics(one.network).values())) in singles, singles
    three = pe.engine_for([(3, 8, 8, 3)], quick=False)
    assert made[-1] == (3, False, 1) and not three.build_info["tuned"]
    for b in (1, 2, 3, 5, 16):
        check(pe, model, (b, 8, 8, 3), seed=b)


def test_tuned_rungs_hand_their_networks_to_the_prefetch_in_one_go(split_on, monkeypatch):
    """Two tuned rungs (1 and 4 of 1..16): the prefetch hook gets both networks at once,
    before either is built and with no tactic chosen (their candidates' plans are made on
    the workers together), and in the same go rung 8's with the opt engine's tactics (no
    tuned rung is nearer to it than 16: its plans need not wait for the tuning); the rest
    of the ladder (2, from rung 1's choices) is built after, alone."""
    from tftrt.engine.backends.numpy_backend import NumpyBackend
    monkeypatch.setenv("TFTRT_PROFILE_TUNED_RUNGS", "2")
    seen = []

    def prefetch(self, nets):
        if isinstance(nets, list):
            seen.append(sorted((n.tensors[n.inputs[0]].shape[0],
                                frozenset(l.tactic for l in n.layers)) for n in nets))
    monkeypatch.setattr(NumpyBackend, "prefetch", prefetch, raising=False)
    model, _ = resnet50(batch=2, size=8, width=4)
    pe = profile_engine(model, batch_profile(1, 16, (8, 8, 3)))
    assert len(seen) == 1, seen
    assert seen[0][:2] == [(1, frozenset({None})), (4, frozenset({None}))], seen[0]
    assert [b for b, _ in seen[0][2:]] == [8] and None not in seen[0][2][1], seen[0]
    assert pe.stats["tuned_rungs"] == 2
    for b in (1, 4, 6, 16):
        check(pe, model, (b, 8, 8, 3), seed=b)


@pytest.mark.parametrize("n, picked", [("0", []), ("1", [1]), ("2", [1, 4]),
                                       ("3", [1, 2, 8]), ("9", [1, 2, 4, 8])])
def test_tuned_rungs_spread_evenly_in_log_batch(split_on, monkeypatch, n, picked):
    """TFTRT_PROFILE_TUNED_RUNGS rungs are tuned: the smallest, then those nearest points
    spread evenly in log2(batch) between it and the opt batch (16 here)."""
    monkeypatch.setenv("TFTRT_PROFILE_TUNED_RUNGS", "0")
    model, _ = resnet50(batch=2, size=8, width=4)
    pe = profile_engine(model, batch_profile(1, 16, (8, 8, 3)))
    monkeypatch.setenv("TFTRT_PROFILE_TUNED_RUNGS", n)
    rungs = [((b, 8, 8, 3),) for b in (1, 2, 4, 8)]
    assert [r[0][0] for r in pe._to_tune(0, rungs)] == picked


def test_a_failing_prefetch_hook_never_fails_a_build(split_on, monkeypatch):
    from tftrt.engine.backends.numpy_backend import NumpyBackend

    def broken(self, nets):
        raise RuntimeError("no workers here")
    monkeypatch.setattr(NumpyBackend, "prefetch", broken, raising=False)
    monkeypatch.setattr(NumpyBackend, "start_build", broken, raising=False)
    model, _ = resnet50(batch=2, size=8, width=4)
    pe = profile_engine(model, batch_profile(1, 8, (8, 8, 3)))
    assert sorted(k[0][0] for k in pe.shapes) == [1, 2, 4, 8]
    check(pe, model, (5, 8, 8, 3), seed=5)


# --- templates kept in the build cache (shape_template.cached_template) --------------------------
def cached_profile_engine(model, profile, fingerprint="segment-a"):
    """profile_engine with its templates in the build cache (TFTRT_CACHE_DIR)."""
    return profile_engine(model, profile, fingerprint=fingerprint)


@pytest.fixture
def probes(monkeypatch, tmp_path):
    """Counts make_template's probing runs (ST._make_template); a build cache in tmp_path."""
    from tftrt.engine import shape_template as ST
    monkeypatch.setenv("TFTRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TFTRT_BUILD_CACHE", raising=False)
    runs = []
    real = ST._make_template

    def counted(*a, **k):
        runs.append(1)
        return real(*a, **k)
    monkeypatch.setattr(ST, "_make_template", counted)
    return runs


def test_a_second_build_takes_its_template_from_the_build_cache(probes, tmp_path):
    """A profile's template is probed once: a second ProfileEngine of the same segment,
    config and profile (a warm build, tftrt.load) makes it from the cached rules without
    probing and serves the other shapes as the first did; another profile or segment probes
    again."""
    model, _ = resnet50(batch=2, size=8, width=4)
    prof = batch_profile(1, 8, (8, 8, 3))
    first = cached_profile_engine(model, prof)
    assert first.template_errors == {} and len(probes) == 1
    second = cached_profile_engine(model, prof)
    assert second.template_errors == {} and len(probes) == 1  # no probe
    t1, t2 = first._template(0)[0], second._template(0)[0]
    assert (t2.variables, t2.opt, t2.ones_ok, t2.groups) == \
        (t1.variables, t1.opt, t1.ones_ok, t1.groups)
    for b in (1, 3, 5):
        e = check(second, model, (b, 8, 8, 3), seed=b)
        assert e.build_info.get("from_template"), b
    cached_profile_engine(model, batch_profile(1, 4, (8, 8, 3)))
    assert len(probes) == 2  # another profile
    cached_profile_engine(model, prof, fingerprint="segment-b")
    assert len(probes) == 3  # another segment


def test_a_cached_refusal_is_not_probed_again(probes):
    """A template the probes refused (y = x * batch: the batch folded into a constant) is
    refused again from the cache, with the same reason, and every shape still builds the
    full way, right."""
    model = batch_times_model()
    first = cached_profile_engine(model, batch_profile(1, 8, (3,)))
    runs = len(probes)
    second = cached_profile_engine(model, batch_profile(1, 8, (3,)))
    assert len(probes) == runs and second.template_errors == first.template_errors != {}
    for b in (1, 3, 6):
        assert not check(second, model, (b, 3), seed=b).build_info.get("from_template")


@pytest.mark.parametrize("damage", ["garbage", "foreign"])
def test_a_corrupt_or_foreign_template_entry_is_probed_again(probes, tmp_path, caplog, damage):
    """An entry that is not JSON (reported by the build cache) or does not fit the network
    (a rule for a layer it does not have) is ignored: the shapes are probed again and the
    engines are right."""
    from tftrt.engine import shape_template as ST
    from tftrt.engine.build_cache import build_cache_for
    model, _ = resnet50(batch=2, size=8, width=4)
    prof = batch_profile(1, 8, (8, 8, 3))
    first = cached_profile_engine(model, prof)
    files = [p for p in (tmp_path / "cache").rglob("*.entry")
             if ST.TEMPLATE_NAMESPACE in str(p)]
    assert len(files) == 1, files
    if damage == "garbage":
        files[0].write_bytes(b"\x00not an entry")
    else:
        opt = first.engine_for([(8, 8, 8, 3)])
        store = build_cache_for(opt.backend_impl)
        key = ST.template_key(opt.network, prof, "segment-a",
                              BuilderConfig(precision="FP32", backend="numpy"))
        entry = store.get_json(ST.TEMPLATE_NAMESPACE, key)
        assert entry is not None and entry["opt"] == [8]
        entry["rules"]["999"] = {"shape": [[["c", 1]], None]}  # no layer 999 here
        assert store.put_json(ST.TEMPLATE_NAMESPACE, key, entry)
    with caplog.at_level("WARNING"):
        again = cached_profile_engine(model, prof)
    assert len(probes) == 2 and again.template_errors == {}
    if damage == "foreign":
        assert any("shape template entry" in r.getMessage() for r in caplog.records)
    for b in (2, 7):
        assert check(again, model, (b, 8, 8, 3), seed=b).build_info.get("from_template")


def test_cached_rules_rederive_shape_values(probes):
    """Rules that re-derive attributes (a flatten's shape, an Expand's, a slice with a
    negative start on the batch) come back from the cache as they were learned, with the
    size-1 refusal, and the engines they make match onnxruntime."""
    model = shape_values_model()
    prof = batch_profile(1, 8, (2, 3, 4))
    first = cached_profile_engine(model, prof)
    second = cached_profile_engine(model, prof)
    assert len(probes) == 1
    (t1, _), = first._templates.values()
    (t2, _), = second._templates.values()
    from tftrt.engine.network import _jsonable
    assert t1.rules and _jsonable(t2.rules) == _jsonable(t1.rules)
    assert not t2.ones_ok and t2.ones_ok == t1.ones_ok
    for b in range(2, 8):
        assert check(second, model, (b, 2, 3, 4), seed=b).build_info.get("from_template")
    assert not check(second, model, (1, 2, 3, 4)).build_info.get("from_template")


def test_split_parts_come_from_the_batches_profile_only(monkeypatch):
    """y = x * min(batch, 4) with profiles 1..3 and 5..16 in one ProfileEngine: across
    5..16 the factor is 4 (its template holds), at 2 it is 2. Batch 7 splits only into
    engines of its own profile (here: none below it but 5, so 5 + 2 is refused and 7 gets
    its own engine), never into profile 1..3's batch-2 engine, which computes x * 2 (helper
    hunt, 2026-12-02: _parts took any engine of the ProfileEngine)."""
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "0")
    c = {"idx0": np.array([0], np.int64), "four": np.array([4], np.int64)}
    nodes = [N("Shape", [X], ["s"]), N("Gather", ["s", "idx0"], ["b"], axis=0),
             N("Min", ["b", "four"], ["k"]), N("Cast", ["k"], ["kf"], to=1),
             N("Mul", [X, "kf"], ["TensorRTOutputPH_0"])]
    model = make_model(nodes, {X: np.zeros((4, 3), np.float32)}, c,
                       outputs=["TensorRTOutputPH_0"], symbolic=[0])
    pe = profile_engine(model, [batch_profile(1, 3, (3,)), batch_profile(5, 16, (3,))])
    assert 1 not in pe.template_errors, pe.template_errors  # 5..16: min(b, 4) is 4 there
    for b in (2, 1, 3, 5, 7, 12, 6):
        engine = check(pe, model, (b, 3), seed=b)
        parts = engine.build_info.get("split") or []
        if b >= 5:
            assert all(n >= 5 for n in parts), (b, parts)
    assert pe.wait_pending(timeout=60)



def test_split_stand_ins_stay_bounded_under_steady_traffic(monkeypatch, caplog):
    """Calls at ever new batch sizes that never pause, each size fewer than TFTRT_SPLIT_CALLS
    times: every size kept a split-batch stand-in and a queued build without limit (2,000
    after 2,000 calls, and a background build's re-split over them held the lock new sizes
    wait for, 3.3 s: helper hunt, 2026-12-04). At most TFTRT_PROFILE_MAX_SHAPES stand-ins are
    kept, the oldest dropped with its queued build; a dropped size splits again."""
    import logging
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "600000")  # calls never pause here
    monkeypatch.setenv("TFTRT_SPLIT_CALLS", "0")
    monkeypatch.setenv("TFTRT_PROFILE_MAX_SHAPES", "16")
    nodes = [N("Mul", [X, "two"], ["m"]), N("Relu", ["m"], ["TensorRTOutputPH_0"])]
    model = make_model(nodes, {X: np.zeros((4, 3), np.float32)},
                       {"two": np.array(2.0, np.float32)}, outputs=["TensorRTOutputPH_0"],
                       symbolic=[0])
    pe = profile_engine(model, batch_profile(1, 256, (3,)))
    try:
        sizes = [b for b in range(3, 256) if b & (b - 1)][:40]  # no rung of the ladder
        with caplog.at_level(logging.WARNING, logger="tftrt"):
            for b in sizes:
                assert "split" in check(pe, model, (b, 3), seed=b).build_info
        assert len(pe._stand_ins) == 16
        assert sum(1 for q in pe._queue if q[3]) == 16 and len(pe._pending) == 16
        assert pe.stats["dropped_splits"] == len(sizes) - 16
        assert sum("keeps split batches for at most 16" in r.getMessage()
                   for r in caplog.records) == 1
        assert not pe.is_split([(sizes[0], 3)])
        check(pe, model, (sizes[0], 3), seed=1)
        assert pe.is_split([(sizes[0], 3)]) and len(pe._stand_ins) == 16
    finally:
        pe.stop_background_builds()
