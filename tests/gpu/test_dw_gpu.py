"""Tactic ``dw_tiled`` (the shared-memory tiled depthwise kernel, cupy_dw) on the GPU: engines
with the tactic forced against the numpy engine and against the same engine on ``dw_direct``
(same tap order, same FMAs: the same answers), eager and CUDA-graph replay, FP32 and FP16,
vector and scalar (unaligned) builds; with TFTRT_DW_TILED=0 the tactic never applies; the
builder may pick it by timing; and at the zoo's shapes each layer's time on dw_tiled and
dw_direct is printed (run with ``-s`` to see them).

On the GPU machine (the tests set TFTRT_BACKEND=cupy and TFTRT_DW_TILED=1 themselves):
``python -m pytest tests/gpu/test_dw_gpu.py -q -s``.
"""

import os

os.environ.setdefault("TFTRT_CUDNN_CANDIDATES", "2")  # fewer cuDNN plans to compile per conv

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.tolerances import GPU_VS_NUMPY  # noqa: E402
from tftrt.engine import BuilderConfig, build_engine  # noqa: E402

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

from tests.gpu.test_cupy_backend import _conv_model  # noqa: E402

# FP32 engines are built with TF32 off: the transposes around the conv are exact, so the
# numpy engine differs only by the accumulation's rounding (FMA).
TOL = GPU_VS_NUMPY


@pytest.fixture(autouse=True)
def _tiled(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    monkeypatch.setenv("TFTRT_DW_TILED", "1")


def _model(c, k, stride, epi=("relu",), hw=15, n=2):
    attrs = {"pads": [k // 2] * 4, "group": c, "strides": [stride] * 2}
    return _conv_model((n, hw, hw, c), (c, 1, k, k), attrs, epi=epi)


def _convs(engine):
    return [(l, i) for l, i in zip(engine.network.layers, engine.backend_impl.engine_impls(
        engine)) if l.kind == "conv"]


def _engine(model, feeds, precision, tactic=None, timing=True):
    """The CuPy engine, every conv layer on ``tactic`` (tactic_choices; None: the builder
    chooses)."""
    from tftrt.engine.backends import get_backend
    get_backend("cupy").set_build_options(allow_tf32=False)
    shapes = {k: v.shape for k, v in feeds.items()}
    choices = None
    if tactic:
        ref = build_engine(model, shapes, BuilderConfig(precision=precision, backend="numpy",
                                                        tactic_timing=False))
        choices = {l.name: {"kind": "conv", "tactic": tactic, "records": {}}
                   for l in ref.network.layers if l.kind == "conv"}
        assert choices
    return build_engine(model, shapes, BuilderConfig(
        precision=precision, backend="cupy", allow_tf32=False, tactic_choices=choices,
        tactic_timing=timing))


def _close(got, want, precision, what):
    g = cp.asnumpy(got) if isinstance(got, cp.ndarray) else np.asarray(got)
    w = np.asarray(want)
    assert g.shape == w.shape and g.dtype == w.dtype, (what, g.shape, w.shape, g.dtype)
    rtol, atol = TOL[precision]
    np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                               atol=atol * max(1.0, float(np.abs(w).max())), err_msg=what)


def _assert_tiled(engine):
    from tftrt.engine.backends.cupy_dw import DepthwiseTiled
    convs = _convs(engine)
    assert convs
    for layer, impl in convs:
        assert layer.tactic == "dw_tiled" and isinstance(impl, DepthwiseTiled) and \
            impl.fallback is None, (layer.name, layer.tactic, type(impl).__name__,
                                    getattr(impl, "fallback", None))


CASES = [  # (C, K, stride, epilogue)
    (96, 7, 1, ("relu",)),          # ConvNeXt's 7x7 (16-byte loads)
    (32, 5, 2, ("relu",)),          # MBConv's 5x5 stride 2
    (24, 3, 1, ("relu6",)),
    (12, 3, 2, ("silu",)),          # fp16: 8-byte loads
    (7, 3, 1, ("relu",)),           # scalar loads
    (40, 5, 1, ("add", "relu")),    # residual operand of y's shape
]


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("c,k,stride,epi", CASES)
def test_tiled_engine_matches_numpy_and_dw_direct(c, k, stride, epi, precision):
    model, feeds = _model(c, k, stride, epi)
    ref = build_engine(model, {n: v.shape for n, v in feeds.items()},
                       BuilderConfig(precision=precision, backend="numpy"))
    xs = [feeds[n] for n in ref.input_names]
    want = ref.execute(xs)[0]
    tiled = _engine(model, feeds, precision, "dw_tiled")
    _assert_tiled(tiled)
    direct = _engine(model, feeds, precision, "dw_direct")
    assert all(l.tactic == "dw_direct" for l, _ in _convs(direct))
    d = cp.asnumpy(direct.execute(xs)[0])
    for run in range(3):  # eager, capture, replay
        got = cp.asnumpy(tiled.execute(xs)[0])
        _close(got, want, precision, f"C={c} K={k} s={stride} {epi} {precision} run {run}")
        # the direct kernel's taps in the same order with the same FMAs: equal answers (an
        # fp16 output may round a tie differently only if the float32 sums differ)
        same = np.mean(got == d)
        assert same > 0.999, f"run {run}: only {same:.2%} equal to dw_direct"
        np.testing.assert_allclose(got.astype(np.float64), d.astype(np.float64), rtol=1e-3,
                                   atol=1e-6, err_msg=f"run {run} vs dw_direct")


def test_unaligned_input_takes_the_scalar_build():
    """x at a 2-byte offset (fp16): the scalar build of the same tile plan, same answer."""
    from tftrt.engine.backends.cupy_dw import DepthwiseTiled
    model, feeds = _model(32, 7, 1, ("relu",))
    eng = _engine(model, feeds, "FP16", "dw_tiled")
    ((layer, impl),) = _convs(eng)
    x_dt = np.dtype(eng.network.tensors[layer.inputs[0]].dtype)
    y_dt = np.dtype(eng.network.tensors[layer.outputs[0]].dtype)
    xs = eng.network.tensors[layer.inputs[0]].shape
    assert isinstance(impl, DepthwiseTiled) and impl.srcs[True].vec > 1 and \
        impl.srcs[False].vec == 1
    x = cp.random.standard_normal(xs, dtype=cp.float32).astype(x_dt)
    buf = cp.empty(x.size + 1, x_dt)
    xu = buf[1:].reshape(xs)
    xu[...] = x
    assert xu.data.ptr % impl.srcs[True].align != 0
    ins = [None if not n else eng.weights.get(n) for n in layer.inputs]
    outs = []
    for arg in (x, xu):
        ins[0] = arg
        y = cp.full(eng.network.tensors[layer.outputs[0]].shape, np.nan, y_dt)
        impl.run(ins, [y], None)
        outs.append(cp.asnumpy(y))
    assert not np.isnan(outs[0].astype(np.float32)).any()
    np.testing.assert_array_equal(outs[1], outs[0])
    assert True in impl._kernels and False in impl._kernels


def test_switched_off_the_tactic_never_applies(monkeypatch):
    from tftrt.engine.tactics import candidates
    model, feeds = _model(96, 7, 1)
    eng = _engine(model, feeds, "FP16")
    ((layer, _),) = _convs(eng)
    assert "dw_tiled" in [t.name for t in candidates("cupy", eng.network, layer)]
    monkeypatch.setenv("TFTRT_DW_TILED", "0")
    names = [t.name for t in candidates("cupy", eng.network, layer)]
    assert "dw_tiled" not in names and "dw_direct" in names
    eng = _engine(model, feeds, "FP16")
    assert [l.tactic for l, _ in _convs(eng)] != ["dw_tiled"]


def test_builder_timing_may_pick_it():
    """A ConvNeXt-sized layer with every tactic timed (no cache): whatever the builder picks
    matches numpy; the picked tactic is printed."""
    from tftrt.engine.backends import get_backend
    from tftrt.engine.tactics import TimingCache
    model, feeds = _model(96, 7, 1, hw=56, n=8)
    get_backend("cupy").set_build_options(allow_tf32=False)
    shapes = {k: v.shape for k, v in feeds.items()}
    eng = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="cupy",
                                                    timing_cache=TimingCache()))
    ref = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="numpy"))
    xs = [feeds[n] for n in ref.input_names]
    _close(eng.execute(xs)[0], ref.execute(xs)[0], "FP16", "timed build")
    print("\n[dw_tiled] timed build picked", [l.tactic for l, _ in _convs(eng)])


# (N, H, W, C, K, stride) of ConvNeXtTiny, EfficientNetB0 and MobileNetV3Large depthwise convs
ZOO = [(32, 56, 56, 96, 7, 1), (32, 28, 28, 192, 7, 1), (32, 14, 14, 384, 7, 1),
       (32, 7, 7, 768, 7, 1), (1, 7, 7, 768, 7, 1), (32, 112, 112, 32, 3, 1),
       (32, 112, 112, 96, 3, 2), (32, 56, 56, 144, 5, 2), (32, 28, 28, 240, 5, 1),
       (32, 14, 14, 672, 5, 2), (32, 7, 7, 1152, 5, 1), (32, 112, 112, 16, 3, 1)]


@pytest.mark.parametrize("precision", ["FP16", "FP32"])
def test_zoo_shapes_time_and_agree(precision):
    """Each zoo shape's layer on dw_tiled and dw_direct, same inputs: equal answers; GPU time
    of each printed (a dw_tiled slower than dw_direct is reported, not failed: the builder
    times both)."""
    from tftrt.engine.backends import cuda_source_dw as DW
    from tftrt.engine.tactics import candidates
    backend = None
    lines, missed = [], []
    for n, h, w, c, k, s in ZOO:
        model, feeds = _conv_model((n, h, w, c), (c, 1, k, k),
                                   {"pads": [k // 2] * 4, "group": c, "strides": [s, s]},
                                   epi=("relu",))
        eng = _engine(model, feeds, precision, "dw_tiled", timing=False)
        backend = eng.backend_impl
        ((layer, impl),) = _convs(eng)
        if layer.tactic != "dw_tiled":  # the forced tactic did not apply: say why, go on
            net = eng.network
            missed.append(f"{(n, h, w, c, k, s)}: tactic {layer.tactic} "
                          f"({type(impl).__name__}); candidates "
                          f"{[t.name for t in candidates('cupy', net, layer)]}; inputs "
                          f"{[(net.tensors[i].shape, net.tensors[i].dtype) for i in layer.inputs]}"
                          f"; dw_tiled: {DW.tiled_unsupported(net, layer)}")
            continue
        ins = [eng.weights[i] if i in eng.weights else
               backend.random_array(eng.network.tensors[i].shape, eng.network.tensors[i].dtype)
               for i in layer.inputs]
        times, outs = {}, {}
        for tactic in ("dw_tiled", "dw_direct"):
            layer.tactic = tactic
            run = backend.prepare_layer(eng.network, layer, eng.weights)
            outs[tactic] = cp.asnumpy(run(ins)[0])
            times[tactic] = backend.time_runner(run, ins, repeats=20)
        layer.tactic = "dw_tiled"
        same = np.mean(outs["dw_tiled"] == outs["dw_direct"])
        assert same > 0.999, f"{(n, h, w, c, k, s)}: only {same:.2%} equal to dw_direct"
        t = impl.srcs[True].tile
        lines.append(f"{precision} N={n} {h}x{w}x{c} K={k} s={s}: tiled "
                     f"{times['dw_tiled'] * 1e6:8.1f} us, direct {times['dw_direct'] * 1e6:8.1f}"
                     f" us ({times['dw_direct'] / times['dw_tiled']:.2f}x) tile {t}")
    print("\n[dw_tiled] " + "\n[dw_tiled] ".join(lines))
    assert not missed, "dw_tiled did not apply to:\n" + "\n".join(missed)
