"""Optimization profiles on the GPU (CuPy backend, through TensorFlow).

A small conv model (conv3x3 + bias + relu, depthwise 3x3, conv1x1, mean, dense) converted with
``use_dynamic_shape=True``; build() with batches 1 and 16 forms the Range profile 1..16 (tuned
at 16). Every batch 1..16 then runs on the engine, matches TF, and tunes nothing: no tactic is
timed, no cuDNN plan or cuBLASLt algorithm either (the profile's choices are reused). Saved and
loaded with tftrt.load, every batch runs again with no build and no tuning. The first-call
latency of each new batch is printed (run with -s to see it).

    TFTRT_BACKEND=cupy python -m pytest -q -s tests/gpu/test_dynamic_profiles.py
"""

import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.gpu

if not tf.config.list_physical_devices("GPU"):
    pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

import tftrt  # noqa: E402
from tftrt import profiles as P, trt_convert as trt  # noqa: E402

HWC = (16, 16, 8)


@pytest.fixture(autouse=True)
def cupy_engines(monkeypatch, tmp_path):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    monkeypatch.setenv("TFTRT_CACHE_DIR", str(tmp_path / "build_cache"))  # cold, this test's
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)  # FP32 at FP32 tolerance
    yield
    tf.config.experimental.enable_tensor_float_32_execution(before)


class SmallConvNet(tf.Module):
    def __init__(self):
        rng = np.random.RandomState(0)
        c = lambda *s: tf.constant(rng.randn(*s).astype(np.float32) * 0.2)  # noqa: E731
        self.w1, self.b1 = c(3, 3, 8, 32), c(32)
        self.dw = c(3, 3, 32, 1)
        self.w2, self.b2 = c(1, 1, 32, 16), c(16)
        self.wd, self.bd = c(16, 10), c(10)

    @tf.function(input_signature=[tf.TensorSpec([None, *HWC], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, self.w1, 1, "SAME"), self.b1))
        h = tf.nn.relu(tf.nn.depthwise_conv2d(h, self.dw, [1, 1, 1, 1], "SAME"))
        h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(h, self.w2, 1, "SAME"), self.b2))
        return {"y": tf.matmul(tf.reduce_mean(h, axis=[1, 2]), self.wd) + self.bd}


@pytest.fixture()
def tuning(monkeypatch):
    """Every timing a build makes: tactic candidates (tactics._time_runner) and the CuPy
    backend's own tuning of cuDNN plans and cuBLASLt algorithms (cupy_dnn.gpu_time)."""
    from tftrt.engine import tactics
    from tftrt.engine.backends import cupy_dnn, cupy_layers
    calls = []

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append((name, kwargs.get("what") or (args[-1] if args else "")))
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)
    counted(tactics, "_time_runner")
    counted(cupy_dnn, "gpu_time")
    counted(cupy_layers, "gpu_time")
    return calls


def batch(b):
    return np.random.RandomState(b).standard_normal((b, *HWC)).astype(np.float32)


def run_all(fn, native, label):
    first_call_ms = {}
    for b in range(1, 17):
        x = tf.constant(batch(b))
        t0 = time.perf_counter()
        got = fn(x=x)["y"].numpy()
        first_call_ms[b] = (time.perf_counter() - t0) * 1e3
        np.testing.assert_allclose(got, native(x=x)["y"].numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=f"{label}: batch {b}")
    print(f"\n{label}: first call per batch (ms): " +
          ", ".join(f"{b}: {t:.1f}" for b, t in first_call_ms.items()))
    return first_call_ms


def small_net(tmp_path):
    """(SmallConvNet's saved path, its native signature, a dynamic-shape converter of it,
    the function convert() returned)."""
    src = str(tmp_path / "src")
    model = SmallConvNet()
    tf.saved_model.save(model, src, signatures=model.__call__)
    native = tf.saved_model.load(src).signatures["serving_default"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, use_dynamic_shape=True)
    return src, native, conv, conv.convert()


def test_profile_1_to_16_serves_every_batch_with_no_new_tuning(tmp_path, tuning):
    src, native, conv, fn = small_net(tmp_path)
    t0 = time.perf_counter()
    conv.build(lambda: iter([(batch(1),), (batch(16),)]))
    print(f"\nbuild (cold build cache): {time.perf_counter() - t0:.2f} s, "
          f"{len(tuning)} timings")
    ops = conv.engine_ops
    assert ops
    for name, op in ops.items():
        (entry,) = [e for _, e in op.cache.items()]
        assert isinstance(entry, P.ProfileEngine), name
        assert entry.backend == "cupy"
        assert [p.min[0][0] for p in entry.profiles] == [1]
        assert [p.max[0][0] for p in entry.profiles] == [16]
        assert op.stats["builds"] == 1 and op.stats["tuned_builds"] == 1, op.describe()
    del tuning[:]
    run_all(fn, native, "converted")
    assert tuning == [], f"batches inside the profile were tuned: {tuning[:10]}"
    for name, op in ops.items():
        assert op.stats["native"] == 0 and op.stats["builds"] == 1, op.describe()
        assert len(op.cache) == 1

    out = str(tmp_path / "converted")
    conv.save(out)
    loaded = tftrt.load(out)
    run_all(loaded.signatures["serving_default"], native, "tftrt.load")
    assert tuning == [], f"the loaded model tuned: {tuning[:10]}"
    for name, op in loaded.engine_ops.items():
        assert op.stats["builds"] == 0 and op.stats["native"] == 0, op.describe()
        assert op.stats["engine"] == 16, op.describe()


def test_engines_of_a_profile_share_one_arena_and_stream_per_concurrent_call(tmp_path):
    """The engines of a profile (batch 1..16) made from its opt engine's network share
    activation arenas (memory.ArenaPool), sized for the largest (batch 16), and each arena's
    stream: calls of different batch sizes queued back to back without a sync give TF's
    numbers in one arena; a call made while another holds that arena (another thread) gets a
    second one, which the engines share again."""
    import threading

    import cupy as cp
    _, native, conv, _ = small_net(tmp_path)
    conv.build(lambda: iter([(batch(1),), (batch(16),)]))
    (op,) = conv.engine_ops.values()
    (pe,) = [e for _, e in op.cache.items()]
    assert isinstance(pe, P.ProfileEngine) and pe.template_errors == {}, pe.describe()
    sizes = (16, 3, 9, 1, 5)
    before = pe.arena_pool.stats["allocations"]  # build() ran batch 1 and 16, in some thread
    t0 = time.perf_counter()
    engines = {b: pe.engine_for([(b, *HWC)]) for b in sizes}
    print(f"\nengines for {len(sizes) - 1} new batch sizes: "
          f"{(time.perf_counter() - t0) * 1e3:.1f} ms")
    assert all(engines[b].build_info.get("from_template") for b in sizes if b != 16)
    xs = {b: cp.asarray(batch(b)) for b in sizes}
    outs = {b: engines[b].execute([xs[b]])[0] for b in sizes}  # queued, no sync between
    for _ in range(2):  # the second run captures CUDA graphs, the third replays them
        outs = {b: engines[b].execute([xs[b]])[0] for b in sizes}
    for b in sizes:
        np.testing.assert_allclose(cp.asnumpy(outs[b]), native(x=tf.constant(batch(b)))["y"]
                                   .numpy(), rtol=1e-4, atol=1e-4, err_msg=f"batch {b}")
    assert all(len(engines[b]._contexts) == 1 for b in sizes)
    ctxs = [next(iter(engines[b]._contexts.values()))._impl for b in sizes]
    assert len({c.arena.data.ptr for c in ctxs}) == 1, "one arena for sequential calls"
    assert len({id(c.stream) for c in ctxs}) == 1, "one stream for sequential calls"
    assert pe.arena_pool.stats["allocations"] - before <= 1, pe.arena_pool.stats
    assert max(c.arena.nbytes for c in ctxs) <= pe.arena_pool.planned_bytes
    # batch 16's activations need the most; a context's whole need adds its cuDNN plans'
    # workspace, which another batch size's plans may want more of (H200, 2026-11-30)
    assert engines[16].memory.arena_bytes == max(engines[b].memory.arena_bytes for b in sizes)

    held = pe.arena_pool.acquire()  # the slot of the calls above, as if a call were in flight
    other = {}

    def run():
        other[9] = cp.asnumpy(engines[9].execute([xs[9]])[0])
        other[3] = cp.asnumpy(engines[3].execute([xs[3]])[0])
    mid = pe.arena_pool.stats["allocations"]
    t = threading.Thread(target=run)
    t.start()
    t.join()
    pe.arena_pool.release(held)
    for b in (9, 3):
        np.testing.assert_allclose(other[b], cp.asnumpy(outs[b]), rtol=1e-5, atol=1e-5)
    new = {c._impl.arena.data.ptr for b in (9, 3) for s, c in engines[b]._contexts.items()
           if s is not held}
    assert len(new) == 1 and new != {ctxs[0].arena.data.ptr}, "one more arena, shared"
    assert pe.arena_pool.stats["allocations"] == mid + 1, pe.arena_pool.stats


def test_background_builds_leave_the_callers_device_waits_alone(tmp_path, monkeypatch, caplog):
    """A program serving one request at a time waits for the whole device between calls
    (``cudaDeviceSynchronize``, as benchmarks/serving_trace.py did) while batch sizes it
    called build their engines on tftrt's background thread. A CUDA-graph capture there made
    such a wait fail (cudaErrorStreamCaptureUnsupported) and spoiled the capture (GPU run of
    2026-12-02): the background thread must never capture. After each call at a new batch the
    main thread waits until the background build of that batch has started, then spins on
    bare device waits until it is done; no capture ran on the background thread, and every
    batch matches native TF on its own engine. (Two earlier forms raced: one asserted the
    batch was still split after the call, one waited for the background warm-up run, which
    is skipped while the call that queued the build still holds the arena.)"""
    import threading
    import cupy as cp
    from tftrt.engine.backends import cupy_backend as CB
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    monkeypatch.setenv("TFTRT_BUILD_IDLE_MS", "0")   # background builds start at once
    building = threading.Event()
    captured_on = []
    real_build, real_capture = P.ProfileEngine._build_real, CB.CupyExecutionContext._capture

    def build_real(self, *args, **kwargs):
        if threading.current_thread().name == "tftrt-shapes":
            building.set()
        return real_build(self, *args, **kwargs)

    def capture(self, *args, **kwargs):
        captured_on.append(threading.current_thread().name)
        return real_capture(self, *args, **kwargs)
    monkeypatch.setattr(P.ProfileEngine, "_build_real", build_real)
    monkeypatch.setattr(CB.CupyExecutionContext, "_capture", capture)
    _, native, conv, fn = small_net(tmp_path)
    conv.build(lambda: iter([(batch(1),), (batch(16),)]))
    (op,) = conv.engine_ops.values()
    ((_, pe),) = list(op.cache.items())
    waits = 0
    with caplog.at_level("WARNING"):
        for b in (3, 5, 7, 11, 13):
            building.clear()
            fn(x=tf.constant(batch(b)))
            assert building.wait(60), f"batch {b}: no engine built in the background"
            deadline = time.monotonic() + 120
            while not pe.wait_pending(timeout=0):
                cp.cuda.runtime.deviceSynchronize()  # raises inside another thread's capture
                waits += 1
                assert time.monotonic() < deadline, "background builds still pending"
    assert not [r.getMessage() for r in caplog.records if "capture failed" in r.getMessage()]
    assert captured_on and "tftrt-shapes" not in captured_on, captured_on
    for b in (3, 5, 7, 11, 13):
        assert not pe.is_split([(b, *HWC)])
        x = tf.constant(batch(b))
        np.testing.assert_allclose(fn(x=x)["y"].numpy(), native(x=x)["y"].numpy(), rtol=1e-4,
                                   atol=1e-4, err_msg=f"batch {b}")
    assert op.stats["native"] == 0, op.describe()
    print(f"\n{waits} device-wide waits while background builds ran")


def test_borrowed_cudnn_choices_stay_out_of_the_build_cache(tmp_path, caplog, monkeypatch):
    """The profile's engines at batches it did not tune run cuDNN plans chosen at another
    batch (16, or a tuned rung's), untimed: their records name that batch's signature, and
    the build cache never holds, under a layer signature, a choice tuned for another shape (a
    later build at batch 3, a static engine or another model with that layer, would take it
    as tuned and time nothing; it did before 2026-12-02, tftrt/engine/backends/borrowed.py).
    A record naming its own shape is a choice tuned there, and the cache holds it: the opt
    engine's, the tuned rungs' (TFTRT_PROFILE_TUNED_RUNGS: batches 1 and 4 of 1..16), and an
    untuned engine's that found its shape's tuned choice in the cache. The test's form before
    2026-12-04 took every engine made from the template for a borrower: it failed on batch
    1's engine (H200 runs p and e), which was not the tuned rung (its build_info said
    ``tuned`` False) yet held batch 1's own choice, presumably the one the ladder's tuning had
    stored. The profile must have tuned both rungs; where one was not, the reason is named.
    The rungs are those of the split ladder, so split batches are on here (tests/conftest.py
    turns them off: without them the H200 run of 2026-12-04 built no ladder and tuned none)."""
    from tftrt.engine.backends import borrowed as BR
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    from tftrt.engine.backends import cupy_layers as L
    _, _, conv, fn = small_net(tmp_path)
    with caplog.at_level("INFO", logger="tftrt"):
        conv.build(lambda: iter([(batch(1),), (batch(16),)]))
    for b in (3, 5, 16):
        fn(x=tf.constant(batch(b)))
    (op,) = conv.engine_ops.values()
    ((_, pe),) = list(op.cache.items())
    assert pe.wait_pending(timeout=120)
    infos = {s[0][0]: {k: v for k, v in (getattr(e, "build_info", None) or {}).items()
                       if k != "tactic_timings"} for s, e in pe.engines()}
    print(f"\nprofile stats {pe.stats}; engines {infos}")
    seen = {"own": 0, "borrowed": 0}
    for shapes, engine in pe.engines():
        if not hasattr(engine, "backend_impl"):  # a stand-in (split batches)
            continue
        impls = engine.backend_impl.engine_impls(engine)
        for layer, impl in zip(engine.network.layers, impls):
            if not isinstance(impl, L.ConvCudnn):
                continue
            key = L.conv_key(engine.network, layer, impl.conv.spec)
            sid, rec, stored = BR.shape_id(key), L.get_record(layer), L.stored_choice(key)
            where = (shapes, layer.name, infos[shapes[0][0]])
            assert stored is None or stored[BR.FOR] == sid, (where, stored)
            if rec[BR.FOR] == sid:
                assert stored is not None, where
                seen["own"] += 1
            else:
                assert shapes[0][0] != 16 and not engine.build_info.get("tuned"), where
                seen["borrowed"] += 1
    assert seen["own"] and seen["borrowed"], seen
    not_tuned = [r.getMessage() for r in caplog.records if "not tuned" in r.getMessage()]
    assert pe.stats.get("tuned_rungs") == 2, (pe.stats, not_tuned)


def test_positions_of_a_dynamic_sequence_length_on_the_gpu(tmp_path):
    """tf.range(tf.shape(x)[1]) in the engine (added 2026-12-04 without a GPU at hand): one
    CuPy engine serves lengths 3..7, positions read from the bound shape, equal to TF."""
    from tests.integration import models
    rng = np.random.default_rng(0)
    fn, native, op = models.convert_positions(tmp_path, rng)
    for n in (3, 5, 6, 7):
        x = tf.constant(rng.standard_normal((2, n, 4)).astype(np.float32))
        np.testing.assert_allclose(fn(x=x)["y"].numpy(), native(x=x)["y"].numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert op.stats["native"] == 0 and op.stats["engine"] >= 4
