"""Engine boundaries stay on the GPU (issue 13, item 0).

A model with three engines and native TF ops between them (ops kept native through
TF_TRT_OP_DENYLIST, as a user's unsupported op would be): engine nodes are placed on the GPU,
the native ops run on TF's GPU kernels, and a call moves no float tensor from device to host
(counted with TF's profiler, not read off `.device` strings).
"""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.gpu

if not tf.config.list_physical_devices("GPU"):
    pytest.skip("TensorFlow sees no GPU", allow_module_level=True)

from benchmarks.tf_profile import d2h_copies, h2d_copies  # noqa: E402
from tftrt import trt_convert as trt  # noqa: E402
from tftrt.engine_op import resolve_backend  # noqa: E402

SEPARATOR = "Cos"   # a native op with a GPU kernel between engines


class ThreeEngines(tf.Module):
    def __init__(self):
        rng = np.random.RandomState(0)
        self.w = [tf.Variable(rng.standard_normal((64, 64)).astype(np.float32) * 0.1)
                  for _ in range(3)]

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="x")])
    def __call__(self, x):
        h = x
        for k, w in enumerate(self.w):
            h = tf.nn.relu(tf.matmul(h, w) + 0.5) * 1.5
            if k < 2:
                h = tf.cos(h)
        return {"y": h}


@pytest.fixture(scope="module")
def cupy_backend():
    """Engines on CuPy for this module (tests/conftest.py makes numpy the default)."""
    before = os.environ.get("TFTRT_BACKEND")
    os.environ["TFTRT_BACKEND"] = "cupy"
    yield
    if before is None:
        del os.environ["TFTRT_BACKEND"]
    else:
        os.environ["TFTRT_BACKEND"] = before


@pytest.fixture(scope="module")
def converted(tmp_path_factory, cupy_backend):
    assert resolve_backend() == "cupy"
    src = str(tmp_path_factory.mktemp("b") / "three")
    m = ThreeEngines()
    tf.saved_model.save(m, src, signatures=m.__call__)
    os.environ["TF_TRT_OP_DENYLIST"] = SEPARATOR
    try:
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=2,
                                       precision_mode="FP32")
        fn = conv.convert()
    finally:
        del os.environ["TF_TRT_OP_DENYLIST"]
    assert sorted(conv.engine_ops) == ["TRTEngineOp_000_000", "TRTEngineOp_000_001",
                                       "TRTEngineOp_000_002"]
    native = tf.saved_model.load(src).signatures["serving_default"]
    return conv, fn, native


def test_engine_nodes_are_placed_on_the_gpu(converted):
    conv, fn, _ = converted
    nodes = {n.name: n for n in fn.graph.as_graph_def().node}
    for name in conv.engine_ops:
        assert "GPU" in nodes[name].device.upper(), nodes[name]
        call = nodes["tftrt_engine_call_" + name.replace("TRTEngineOp_", "")]
        assert "GPU" in call.device.upper(), call


def _float_copies_in_five_calls(call, want, logdir, what, every_copy=False):
    """Three warm-up calls checked against ``want``, then five profiled calls: the
    device-to-host copies larger than a status flag (a float tensor here is at least
    8 x 64 x 4 bytes), or with ``every_copy`` all of them."""
    for _ in range(3):  # build, then warm
        got = call()["y"]
    assert "GPU" in got.device
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-3, atol=2e-3)
    tf.profiler.experimental.start(logdir)
    for _ in range(5):
        call()
    tf.test.experimental.sync_devices()  # the calls' GPU work inside the trace, no copy
    tf.profiler.experimental.stop()
    copies = d2h_copies(logdir)
    print(f"D2H copies during 5 {what} calls:", copies)
    return [c for c in copies if every_copy or c[2] is None or c[2] > 64]


def _placed_nodes(call):
    """The nodes of the partition graphs TF ran for ``call`` that sit on the CPU or move
    tensors between devices (run metadata of the eager context): where a copy comes from."""
    from tensorflow.python.eager import context
    ctx = context.context()
    ctx.enable_run_metadata()
    try:
        call()
        meta = ctx.export_run_metadata()
    finally:
        ctx.disable_run_metadata()
    graphs = list(meta.partition_graphs) + [g for fg in meta.function_graphs
                                            for g in fg.partition_graphs]
    out = []
    for g in graphs:
        for n in g.node:
            if "CPU" in n.device.upper() or n.op in ("_Send", "_Recv", "_HostSend",
                                                      "_HostRecv"):
                out.append(f"{n.op:22s} {n.name} @ {n.device} <- {list(n.input)[:4]}")
    return out


def _x(seed):
    with tf.device("/GPU:0"):
        return tf.constant(np.random.RandomState(seed).standard_normal((8, 64))
                           .astype(np.float32))


def test_three_engines_move_no_float_tensor_to_the_host(converted, tmp_path):
    """Through the graph function (engine nodes in a TF graph, what a tf.function calling
    the model runs); the pipeline has its own test below.

    Until 2026-11-30 each engine's float input crossed to the host once per call (2,048 B
    here, the profiler naming the engine node's EagerPyFunc): tensor_bridge read the input's
    ``.device``, which inside an EagerPyFunc names no op device (CPU:0) while its memory is
    on the GPU, and took the numpy path. profile_boundary.py --copies pinned it: DLPack in
    copied, DLPack out did not. It now reads ``backing_device``.

    Nor does anything else cross: each engine's status was a bool on the GPU that the Switch
    of its select node copied back per call (0.31 ms a boundary with its If, 2026-12-01); it
    is now read through its rank (rewrite.STATUS_DTYPE), so no copy of any size is left."""
    conv, fn, native = converted
    fn = getattr(fn, "native", fn)
    x = _x(1)
    big = _float_copies_in_five_calls(lambda: fn(x=x), native(x=x)["y"].numpy(),
                                      str(tmp_path / "prof"), "graph function",
                                      every_copy=True)
    if big:
        print("placement of the graph function's nodes (CPU ones, and Send/Recv):")
        for line in _placed_nodes(lambda: fn(x=x)):
            print("   ", line)
    assert not big, big
    stats = [dict(op.stats) for op in conv.engine_ops.values()]
    assert all(s["engine"] >= 8 and s.get("native", 0) == 0 for s in stats), stats


def test_loaded_pipeline_moves_no_float_tensor_to_the_host(converted, tmp_path):
    """tftrt.load runs the three engines as a pipeline (tftrt/pipeline.py): engines called
    from Python, the Cos between them as eager GPU ops; still no float tensor crosses."""
    import tftrt
    from tftrt.rewrite import DirectSignature
    conv, _, native = converted
    x = _x(2)
    conv.build(lambda: iter([(x.numpy(),)]))
    conv.save(str(tmp_path / "out"))
    loaded = tftrt.load(str(tmp_path / "out"))
    sig = loaded.signatures["serving_default"]
    assert isinstance(sig, DirectSignature)
    big = _float_copies_in_five_calls(lambda: sig(x=x), native(x=x)["y"].numpy(),
                                      str(tmp_path / "prof"), "pipeline")
    assert not big, big
    stats = [dict(op.stats) for op in loaded.engine_ops.values()]
    assert all(s["engine"] >= 8 and s.get("native", 0) == 0 and s.get("builds", 0) == 0
               for s in stats), stats


class WideWeights(tf.Module):
    """Two engines around a native Cos, each with a 256 KB weight: past
    rewrite.LIGHT_CONST_BYTES, so the fallbacks read them as captured tensors
    (rewrite.lift_weights)."""

    def __init__(self):
        rng = np.random.RandomState(3)
        self.w = [tf.Variable(rng.standard_normal((256, 256)).astype(np.float32) * 0.05)
                  for _ in range(2)]

    @tf.function(input_signature=[tf.TensorSpec([None, 256], tf.float32, name="x")])
    def __call__(self, x):
        h = tf.cos(tf.nn.relu(tf.matmul(x, self.w[0]) + 0.5))
        return {"y": tf.nn.relu(tf.matmul(h, self.w[1]) - 0.1)}


@pytest.mark.parametrize("backend", ["cupy", "native"])
def test_lifted_weights_live_on_the_gpu(tmp_path, backend, monkeypatch):
    """The weights the engine form's fallbacks take as captured tensors sit where the
    fallback runs, so no call copies them to the GPU: not with engines on CuPy (the fallback
    not taken), nor with the native backend (taken on every call). A weight on the host
    crossed to the If's device through its Switch on every call."""
    monkeypatch.setenv("TFTRT_BACKEND", backend)
    src = str(tmp_path / "wide")
    m = WideWeights()
    tf.saved_model.save(m, src, signatures=m.__call__)
    monkeypatch.setenv("TF_TRT_OP_DENYLIST", SEPARATOR)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=2,
                                   precision_mode="FP32")
    fn = conv.convert()
    monkeypatch.delenv("TF_TRT_OP_DENYLIST")
    graph_fn = getattr(fn, "native", fn)
    weights = [t for t in graph_fn.captured_inputs
               if t.dtype == tf.float32 and t.shape.num_elements() == 256 * 256]
    assert len(weights) == 2, [(t.dtype, t.shape) for t in graph_fn.captured_inputs]
    assert all("GPU" in t.device for t in weights), [t.device for t in weights]
    x = tf.identity(tf.constant(np.random.RandomState(4).standard_normal((8, 256))
                                .astype(np.float32)))  # on the GPU
    want = tf.saved_model.load(src).signatures["serving_default"](x=x)["y"].numpy()
    call = tf.function(lambda x: graph_fn(x=x))
    for _ in range(3):
        np.testing.assert_allclose(call(x)["y"].numpy(), want, rtol=2e-3, atol=2e-3)
    logdir = str(tmp_path / "prof")
    tf.profiler.experimental.start(logdir)
    for _ in range(5):
        call(x)
    tf.test.experimental.sync_devices()
    tf.profiler.experimental.stop()
    copies = [c for c in h2d_copies(logdir) if c[2] is None or c[2] >= 256 * 256 * 4]
    print("H2D copies of a weight's size or unknown:", copies)
    assert not copies, copies
    stats = [dict(op.stats) for op in conv.engine_ops.values()]
    if backend == "native":
        assert all(s.get("native", 0) >= 8 for s in stats), stats
    else:
        assert all(s["engine"] >= 8 and s.get("native", 0) == 0 for s in stats), stats
