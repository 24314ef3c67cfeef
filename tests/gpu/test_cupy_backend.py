"""The CuPy backend vs the numpy reference backend: every layer kind and tactic, FP32 (TF32 off
and on) and FP16, CUDA-graph replay vs eager, plan save/load without re-tuning, and four
threads with their own execution contexts.

Skipped without a GPU (tests/conftest.py). On the GPU machine run with the GPU visible:
``CUDA_VISIBLE_DEVICES=0 python -m pytest tests/gpu -q``.
"""

import os

os.environ.setdefault("TFTRT_CUDNN_CANDIDATES", "2")  # fewer cuDNN plans to compile per conv

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from onnx import helper  # noqa: E402

from tests.engine.harness import make_model, rand  # noqa: E402
from tests.tolerances import GPU_VS_NUMPY, TOLERANCES  # noqa: E402
from tests.threads import in_threads  # noqa: E402
from tftrt.engine import BuilderConfig, build_engine, deserialize_engine  # noqa: E402

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

N = helper.make_node
I64 = np.int64
# GPU vs numpy at the same precision: accumulation order differs (and TF32 rounds inputs).
TOL = GPU_VS_NUMPY


def _engines(model, feeds, precision="FP32", tf32=False, **kw):
    from tftrt.engine.backends import get_backend
    get_backend("cupy").set_build_options(allow_tf32=tf32)
    shapes = {k: v.shape for k, v in feeds.items()}
    ref = build_engine(model, shapes, BuilderConfig(precision=precision, backend="numpy"))
    gpu = build_engine(model, shapes, BuilderConfig(precision=precision, backend="cupy",
                                                    allow_tf32=tf32, **kw))
    return ref, gpu


def _compare(got, want, tol, what=""):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        g = cp.asnumpy(g) if isinstance(g, cp.ndarray) else np.asarray(g)
        w = np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (what, k, g.shape, w.shape, g.dtype)
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=f"{what} output {k}")
        else:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=tol[0],
                                       atol=tol[1], err_msg=f"{what} output {k}")


def _assert_on_gpu(layers, impls):
    """Each layer ran as its tactic's own implementation, the first of its chain in
    cupy_backend.impl_table (no fallback tactic; the backend has no host path at all)."""
    from tftrt.engine.backends.cupy_backend import impl_table
    bad = [(l.name, l.kind, l.tactic, type(i).__name__, i.fallback)
           for l, i in zip(layers, impls)
           if not isinstance(i, impl_table()[l.kind][l.tactic or "default"][0])]
    assert not bad, f"layers fell back to another implementation: {bad}"


def check(model, feeds, precision="FP32", tf32=False, tactics=True):
    """Whole engine on the GPU vs the numpy engine; then every applicable tactic of every
    layer with tactics, layer by layer against the numpy runner on the same inputs."""
    ref, gpu = _engines(model, feeds, precision, tf32)
    xs = [feeds[n] for n in gpu.input_names]
    tol = TOL["TF32" if tf32 and precision == "FP32" else precision]
    _compare(gpu.execute(xs), ref.execute(xs), tol, "engine")
    _compare(gpu.execute(xs), ref.execute(xs), tol, "engine (graph replay)")
    _assert_on_gpu(gpu.network.layers, gpu._cupy_impls)
    if tactics:
        _check_tactics(gpu, ref, xs, tol)
    return gpu


def _check_tactics(gpu, ref, xs, tol):
    from tftrt.engine.tactics import candidates
    env = {n: x for n, x in zip(ref.network.inputs, xs)}
    env.update(ref.network.weights)
    ref_layers = {l.name: (l, r) for l, r in zip(ref.network.layers, ref.runners())}
    for layer in gpu.network.layers:
        outs = None
        if layer.name in ref_layers and all(i in env or not i for i in layer.inputs):
            rl, rr = ref_layers[layer.name]
            ins = [env.get(i) if i else None for i in rl.inputs]
            if len(rl.inputs) == len(layer.inputs):
                outs = rr(ins)
                cands = candidates("cupy", gpu.network, layer)
                if len(cands) > 1 and all(i in env or not i for i in layer.inputs):
                    keep = layer.tactic
                    for c in cands:
                        layer.tactic = c.name
                        try:
                            run = gpu.backend_impl.prepare_layer(gpu.network, layer,
                                                                 gpu.weights)
                        except Exception:  # a tactic may decline a shape; not the chosen one
                            assert c.name != keep, f"{layer.name}: chosen tactic {keep} fails"
                            continue
                        _assert_on_gpu([layer], [run.impl])
                        got = run([None if not i else cp.asarray(env[i]) for i in layer.inputs])
                        _compare(got, outs, tol, f"{layer.name} tactic {c.name}")
                    layer.tactic = keep
        if outs is None:
            return
        env.update(zip(layer.outputs, outs))


def _reload_without_retuning(engine, monkeypatch, *tuned):
    """``engine``'s plan deserialized with the shared kernels dropped and ``tune`` of each of
    ``tuned`` (cuDNN / cuBLASLt classes) failing: a loaded plan must rebuild its recorded
    choices without timing again."""
    from tftrt.engine.backends import cupy_layers
    data = engine.serialize()
    cupy_layers._SHARED.clear()

    def boom(*a, **k):
        raise AssertionError("a loaded plan must not re-tune")
    for cls in tuned:
        monkeypatch.setattr(cls, "tune", boom)
    loaded = deserialize_engine(data)
    assert loaded.layers_summary() == engine.layers_summary()
    return loaded


# --- cases ---------------------------------------------------------------------------------------
def _conv_model(xs, ws, attrs, epi=(), bias=True):
    """NHWC input, NCHW ONNX conv between transposes (as the converters emit), epilogue ops."""
    nodes = [N("Transpose", ["x"], ["t"], perm=[0, len(xs) - 1] + list(range(1, len(xs) - 1)))]
    consts = {"w": (rand(*ws, seed=1) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)}
    ins = ["t", "w"]
    if bias:
        consts["b"] = rand(ws[0], seed=2)
        ins.append("b")
    nodes.append(N("Conv", ins, ["c"], **attrs))
    nodes.append(N("Transpose", ["c"], ["h"], perm=[0] + list(range(2, len(xs))) + [1]))
    h, feeds = "h", {"x": rand(*xs)}
    for k, e in enumerate(epi):
        o = f"e{k}"
        if e == "relu":
            nodes.append(N("Relu", [h], [o]))
        elif e == "relu6":
            consts["lo"], consts["hi"] = np.array(0, np.float32), np.array(6, np.float32)
            nodes.append(N("Clip", [h, "lo", "hi"], [o]))
        elif e == "add":
            nodes.append(N("Add", [h, "r"], [o]))
            feeds["r"] = None  # shape filled below
        elif e == "sigmoid":
            nodes.append(N("Sigmoid", [h], [o]))
        else:  # an activation written out as Keras / TF lower it (several ONNX nodes)
            nodes += _act_nodes(e, h, o, consts)
        h = o
    nodes.append(N("Identity", [h], ["y"]))
    if "r" in feeds:
        ref = build_engine(make_model(nodes[:3] + [N("Identity", ["h"], ["y"])],
                                      {"x": feeds["x"]}, consts), {"x": xs},
                           BuilderConfig(backend="numpy", tactic_timing=False))
        feeds["r"] = rand(*ref.output_shapes[0], seed=5)
    return make_model(nodes, feeds, consts), feeds


def _act_nodes(act, x, y, consts):
    """ONNX nodes computing ``act`` of ``x`` into ``y`` the way TF graphs spell it: swish,
    hard-swish (x * relu6(x + 3) / 6), mish (x * tanh(softplus(x))), GELU with erf or tanh."""
    def f(name, v):  # a scalar constant, shared by name
        consts.setdefault(name, np.array(v, np.float32))
        return name

    def t(k):  # an intermediate tensor of this activation
        return f"{y}_{k}"

    if act == "silu":
        return [N("Sigmoid", [x], [t(0)]), N("Mul", [x, t(0)], [y])]
    if act == "hardswish":
        return [N("Add", [x, f("three", 3.0)], [t(0)]),
                N("Clip", [t(0), f("zero", 0.0), f("six", 6.0)], [t(1)]),
                N("Mul", [x, t(1)], [t(2)]), N("Div", [t(2), "six"], [y])]
    if act == "mish":
        return [N("Softplus", [x], [t(0)]), N("Tanh", [t(0)], [t(1)]), N("Mul", [x, t(1)], [y])]
    if act == "gelu":
        return [N("Mul", [x, f("rsqrt2", 2 ** -0.5)], [t(0)]), N("Erf", [t(0)], [t(1)]),
                N("Add", [t(1), f("one", 1.0)], [t(2)]), N("Mul", [x, t(2)], [t(3)]),
                N("Mul", [t(3), f("half", 0.5)], [y])]
    if act == "gelu_tanh":
        return [N("Mul", [x, x], [t(0)]), N("Mul", [t(0), x], [t(1)]),
                N("Mul", [t(1), f("c044", 0.044715)], [t(2)]), N("Add", [x, t(2)], [t(3)]),
                N("Mul", [t(3), f("s2pi", (2 / np.pi) ** 0.5)], [t(4)]),
                N("Tanh", [t(4)], [t(5)]), N("Add", [t(5), f("one", 1.0)], [t(6)]),
                N("Mul", [x, t(6)], [t(7)]), N("Mul", [t(7), f("half", 0.5)], [y])]
    raise ValueError(act)


CONV = [  # (NHWC x, OIHW w, attrs)
    ((2, 9, 9, 8), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 9, 9, 8), (16, 8, 3, 3), {"strides": [2, 2], "pads": [0, 1, 1, 0]}),
    ((1, 9, 9, 8), (8, 4, 3, 3), {"group": 2, "dilations": [2, 2]}),
    ((2, 8, 8, 16), (16, 1, 3, 3), {"group": 16, "pads": [1, 1, 1, 1]}),            # depthwise
    ((2, 9, 9, 8), (16, 1, 3, 3), {"group": 8, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 6, 6, 16), (32, 16, 1, 1), {}),                                           # 1x1 GEMM
    ((1, 7, 7, 16), (8, 16, 1, 1), {"strides": [2, 2]}),
    ((2, 10, 8), (8, 8, 3), {"pads": [1, 1]}),                                      # 1-D
    ((1, 4, 6, 6, 4), (8, 4, 3, 3, 3), {"pads": [1] * 6, "strides": [1, 2, 2]}),    # 3-D
]


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("xs,ws,attrs", CONV)
def test_conv(xs, ws, attrs, precision):
    check(*_conv_model(xs, ws, attrs, epi=("relu",)), precision=precision)


@pytest.mark.parametrize("epi", [("add", "relu"), ("relu6",), ("sigmoid",), ()])
@pytest.mark.parametrize("ws", [(32, 16, 1, 1), (32, 16, 3, 3), (16, 1, 3, 3)])
def test_conv_epilogues_fp16(ws, epi):
    attrs = {"pads": [1, 1, 1, 1]} if ws[-1] == 3 else {}
    if ws[1] == 1:
        attrs["group"] = 16
    check(*_conv_model((2, 8, 8, 16), ws, attrs, epi=epi), precision="FP16")


@pytest.mark.parametrize("k,stride,c", [(7, 1, 96), (5, 2, 32), (3, 1, 24)])
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_depthwise_large_kernels(k, stride, c, precision):
    """ConvNeXt's 7x7, MBConv's 5x5 stride 2 and a 3x3 depthwise conv, every tactic (the
    generated kernel's channel-vector variant where the channels allow) against numpy."""
    attrs = {"pads": [k // 2] * 4, "group": c, "strides": [stride] * 2}
    gpu = check(*_conv_model((2, 15, 15, c), (c, 1, k, k), attrs, epi=("relu",)),
                precision=precision)
    (conv,) = [l for l in gpu.network.layers if l.kind == "conv"]
    from tftrt.engine.tactics import candidates
    assert "dw_direct" in [t.name for t in candidates("cupy", gpu.network, conv)]


def test_conv_tf32_switch():
    model, feeds = _conv_model((4, 16, 16, 32), (64, 32, 3, 3), {"pads": [1, 1, 1, 1]})
    check(model, feeds, "FP32", tf32=True, tactics=False)
    check(model, feeds, "FP32", tf32=False, tactics=False)


@pytest.mark.parametrize("xs,ws,attrs", [
    ((1, 3, 5, 5), (3, 4, 3, 3), {}),
    ((2, 4, 4, 4), (4, 2, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                  "output_padding": [1, 1]}),
    ((1, 4, 3, 5), (4, 3, 2, 2), {"strides": [2, 2], "group": 2})])
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_conv_transpose(xs, ws, attrs, precision):
    cout = ws[1] * attrs.get("group", 1)
    feeds = {"x": rand(*xs)}
    consts = {"w": rand(*ws, seed=1) / 3, "b": rand(cout, seed=2)}
    model = make_model([N("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], feeds, consts)
    check(model, feeds, precision)


MATMUL = [((3, 4), (4, 5), True), ((2, 3, 4), (4, 5), True), ((2, 3, 4), (2, 4, 5), False),
          ((4,), (4, 5), True), ((3, 4), (4,), False), ((2, 1, 3, 4), (5, 4, 2), False),
          ((64, 128), (128, 256), True), ((1, 128, 96), (96, 64), True)]


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("a,b,const_b", MATMUL)
def test_matmul(a, b, const_b, precision):
    feeds, consts = {"a": rand(*a)}, {}
    (consts if const_b else feeds)["b"] = (rand(*b, seed=1) / np.sqrt(b[-2] if len(b) > 1 else 4)
                                           ).astype(np.float32)
    check(make_model([N("MatMul", ["a", "b"], ["y"])], feeds, consts), feeds, precision)


@pytest.mark.parametrize("attrs", [{}, {"transA": 1}, {"transB": 1, "alpha": 0.5},
                                   {"beta": 2.0}])
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_gemm_bias_act(attrs, precision):
    a = rand(8, 16) if attrs.get("transA") else rand(16, 8)
    b = rand(32, 8, seed=1) if attrs.get("transB") else rand(8, 32, seed=1)
    feeds = {"a": a}
    consts = {"b": b / 3, "c": rand(32, seed=2)}
    model = make_model([N("Gemm", ["a", "b", "c"], ["g"], **attrs), N("Relu", ["g"], ["y"])],
                       feeds, consts)
    check(model, feeds, precision)


def test_dense_residual_gelu_fp16():
    """A transformer FFN piece: MatMul + bias + erf-GELU, MatMul + bias + residual add."""
    x = rand(2, 16, 32)
    c = {"w1": rand(32, 64, seed=1) / 6, "b1": rand(64, seed=2), "w2": rand(64, 32, seed=3) / 8,
         "b2": rand(32, seed=4), "s2": np.array(2 ** -0.5, np.float32),
         "half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32)}
    nodes = [N("MatMul", ["x", "w1"], ["m1"]), N("Add", ["m1", "b1"], ["h"]),
             N("Mul", ["h", "s2"], ["hs"]), N("Erf", ["hs"], ["e"]), N("Add", ["e", "one"], ["e1"]),
             N("Mul", ["h", "e1"], ["he"]), N("Mul", ["he", "half"], ["g"]),
             N("MatMul", ["g", "w2"], ["m2"]), N("Add", ["m2", "b2"], ["o"]),
             N("Add", ["o", "x"], ["y"])]
    for precision in ("FP32", "FP16"):
        check(make_model(nodes, {"x": x}, c), {"x": x}, precision)


def test_gemms_of_one_spec_share_their_cublaslt_object_and_keep_their_own_bias():
    """Two dense layers (16x32 @ 32x32 + bias, ReLU) with different weights and biases, in
    two engines of the same network: each layer's LtGemm (descriptors and the heuristic
    query made once) serves it in both engines, each run setting its own bias pointer; both
    engines, eager and replayed from their CUDA graphs, in turns, match the numpy engine."""
    x = rand(16, 32)
    c = {"w1": rand(32, 32, seed=1) / 6, "b1": rand(32, seed=2),
         "w2": rand(32, 32, seed=3) / 6, "b2": rand(32, seed=4) - 3.0}
    model = make_model([N("Gemm", ["x", "w1", "b1"], ["g1"]), N("Relu", ["g1"], ["h"]),
                        N("Gemm", ["h", "w2", "b2"], ["g2"]), N("Relu", ["g2"], ["y"])],
                       {"x": x}, c)
    ref, one = _engines(model, {"x": x}, "FP16", tactic_timing=False)  # first tactic: lt
    _, two = _engines(model, {"x": x}, "FP16", tactic_timing=False)
    want = ref.execute([x])
    for engine in (one, two, one, two, one):
        _compare(engine.execute([x]), want, TOL["FP16"], "shared LtGemm")
    gemms = [[i.gemm for i in e._cupy_impls if hasattr(i, "gemm")] for e in (one, two)]
    assert len(gemms[0]) == 2 and all(a is b for a, b in zip(*gemms)), gemms


UNARY = ["Abs", "Neg", "Exp", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Tanh", "Erf",
         "Relu", "Sigmoid", "Softplus", "Softsign", "Atan", "Sinh", "Asinh"]


@pytest.mark.parametrize("op", UNARY)
def test_unary(op):
    x = rand(3, 5, 7)
    check(make_model([N(op, ["x"], ["y"])], {"x": x}), {"x": x})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"])
@pytest.mark.parametrize("shapes", [((2, 3, 64), (2, 3, 64)), ((2, 3, 64), (64,)),
                                    ((2, 1, 4), (3, 1)), ((1,), (2, 5))])
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_binary(op, shapes, precision):
    feeds = {"a": rand(*shapes[0], low=0.5, high=2.0), "b": rand(*shapes[1], low=0.5, high=2.0,
                                                                 seed=1)}
    check(make_model([N(op, ["a", "b"], ["y"])], feeds), feeds, precision)


def test_pointwise_misc():
    a, b = rand(4, 6), rand(4, 6, seed=1)
    nodes = [N("Greater", ["a", "b"], ["g"]), N("Where", ["g", "a", "b"], ["w"]),
             N("Cast", ["g"], ["gi"], to=6), N("Cast", ["w"], ["wh"], to=10),
             N("LeakyRelu", ["a"], ["lr"], alpha=0.2), N("Elu", ["b"], ["el"], alpha=0.7),
             N("HardSigmoid", ["a"], ["hs"]), N("Not", ["g"], ["ng"])]
    check(make_model(nodes, {"a": a, "b": b}, outputs=["w", "gi", "wh", "lr", "el", "hs", "ng"]),
          {"a": a, "b": b})
    ia = rand(3, 4, dtype=np.int32, low=-9, high=9)
    ib = np.array([3, -3, 5, 7], np.int32)
    check(make_model([N("Mod", ["a", "b"], ["y"], fmod=0)], {"a": ia, "b": ib}),
          {"a": ia, "b": ib})
    check(make_model([N("Div", ["a", "b"], ["y"])], {"a": ia, "b": ib}), {"a": ia, "b": ib})


POOL = [{"kernel_shape": [2, 2], "strides": [2, 2]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        {"kernel_shape": [2, 2], "dilations": [2, 2]}]


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attrs", POOL)
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("channels", [3, 16])  # 16: the 16-byte vector kernel
def test_pool(op, attrs, precision, channels):
    if op == "MaxPool":
        attrs = {k: v for k, v in attrs.items() if k != "count_include_pad"}
    elif "dilations" in attrs:
        return
    x = rand(2, channels, 9, 8)
    check(make_model([N(op, ["x"], ["y"], **attrs)], {"x": x}), {"x": x}, precision)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op):
    x = rand(2, 8, 7, 7)
    for p in ("FP32", "FP16"):
        check(make_model([N(op, ["x"], ["y"])], {"x": x}), {"x": x}, p)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                "ReduceL2", "ReduceLogSumExp", "ReduceL1", "ReduceSumSquare"])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, 2], 0), ([-1], 0)])
def test_reduce(op, axes, keepdims):
    x = rand(2, 3, 4, low=0.5, high=1.5)
    check(make_model([N(op, ["x"], ["y"], axes=axes, keepdims=keepdims)], {"x": x}), {"x": x})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis", [((2, 3, 5), -1), ((2, 3, 5), 1), ((4, 2, 1000), -1),
                                        # one warp per row: 4/8/16-byte vectors, 3 chunks, the
                                        # widest row, more rows than warps; then block rows
                                        ((3, 7, 128), -1), ((2, 96), -1), ((2, 2048), -1),
                                        ((40000, 32), -1), ((2, 4096), -1)])
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_softmax(op, shape, axis, precision):
    x = rand(*shape, low=-5, high=5)
    check(make_model([N(op, ["x"], ["y"], axis=axis)], {"x": x}), {"x": x}, precision)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("cols", [128, 4096])  # warp-per-row and block-per-row kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_softmax_masked_rows(op, cols, dtype):
    """Rows of -inf (every key masked) are NaN in float32, as TF's GPU softmax gives them, and
    uniform in fp16 storage (numpy_ops.softmax); partly masked rows are 0 (LogSoftmax: -inf)
    where masked."""
    x = rand(4, cols, low=-5, high=5).astype(dtype)
    x[0] = -np.inf
    x[2, cols // 3:] = -np.inf
    gpu = check(make_model([N(op, ["x"], ["y"], axis=-1)], {"x": x}), {"x": x}, "FP32",
                tactics=False)
    y = cp.asnumpy(gpu.execute([x])[0]).astype(np.float32)
    if dtype == np.float32:
        assert np.isnan(y[0]).all()
    else:
        want = np.float32(1 / cols)
        np.testing.assert_allclose(np.exp(y[0]) if op == "LogSoftmax" else y[0], want,
                                   rtol=1e-2)
    assert np.isfinite(y[1]).all()


@pytest.mark.parametrize("channels", [3, 16])  # 16: the 16-byte vector kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_max_pool_skips_nan_as_tf_gpu(channels, dtype):
    """TF's GPU MaxPool skips NaN: a window holding one gives the max of the others, a window
    of NaN or of -inf gives -inf (tests/gpu/test_nonfinite_tf_gpu.py checks it against TF)."""
    x = rand(1, channels, 4, 4).astype(dtype)
    x[0, :, 0, 1] = np.nan
    x[0, :, 0:2, 2:4] = np.nan
    x[0, :, 2:, 2:] = -np.inf
    model = make_model([N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                       {"x": x})
    _, gpu = _engines(model, {"x": x})
    y = cp.asnumpy(gpu.execute([x])[0])
    windows = np.where(np.isnan(x), -np.inf, x).reshape(1, channels, 2, 2, 2, 2)
    want = windows.max(axis=(3, 5))
    assert y.dtype == dtype
    assert not np.isnan(y).any()
    assert np.isneginf(y[0, :, 0, 1]).all() and np.isneginf(y[0, :, 1, 1]).all()
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("shape,axis", [((2, 5, 768), -1), ((2, 3, 4, 5), 2), ((3, 6), 1),
                                        ((40000, 64), -1), ((3, 4096), -1), ((2, 4, 8, 12), 2)])
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_layernorm(shape, axis, precision):
    norm = shape[axis % len(shape):]
    x = rand(*shape)
    consts = {"s": rand(*norm, seed=1), "b": rand(*norm, seed=2)}
    check(make_model([N("LayerNormalization", ["x", "s", "b"], ["y"], axis=axis, epsilon=1e-5)],
                     {"x": x}, consts), {"x": x}, precision)
    model = make_model([N("LayerNormalization", ["x", "s", "b"], ["y", "m", "v"], axis=axis)],
                       {"x": x}, consts, outputs=["y", "m", "v"])
    check(model, {"x": x}, precision)


def test_instancenorm():
    x = rand(2, 3, 5, 5)
    check(make_model([N("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-4)], {"x": x},
                     {"s": rand(3, seed=1), "b": rand(3, seed=2)}), {"x": x})


def test_index_ops():
    x = rand(3, 4, 5, dtype=np.int64, low=0, high=3).astype(np.float32)
    feeds = {"x": x}
    nodes = [N("ArgMax", ["x"], ["am"], axis=1, select_last_index=1),
             N("ArgMin", ["x"], ["an"], axis=-1, keepdims=0),
             N("TopK", ["x", "k"], ["tv", "ti"], axis=-1),
             N("CumSum", ["x", "ax"], ["cs"], exclusive=1),
             N("Gather", ["x", "gi"], ["ga"], axis=1),
             N("GatherElements", ["x", "ge"], ["gel"], axis=2),
             N("GatherND", ["x", "gn"], ["gnd"]),
             N("ScatterND", ["x", "si", "su"], ["snd"])]
    consts = {"k": np.array([2], I64), "ax": np.array(1, I64), "gi": np.array([[0, -1], [2, 1]],
                                                                              I64),
              "ge": rand(3, 4, 2, dtype=I64, low=0, high=4), "gn": np.array([[0, 1], [2, 3]], I64),
              "si": np.array([[1], [0]], I64), "su": rand(2, 4, 5, seed=3)}
    outs = ["am", "an", "tv", "ti", "cs", "ga", "gel", "gnd", "snd"]
    check(make_model(nodes, feeds, consts, outputs=outs), feeds)


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_gather_nd_as_tftrt_lowers_it(precision):
    """converters/array.py's GatherNd (linear indices, a Gather of the merged params; added
    2026-12-04 without a GPU at hand): the CuPy engine equals the numpy one, and an index row
    outside params reads zeros, as TF's GPU kernel (the numpy engine raises, as TF's CPU
    kernel)."""
    import tensorflow as tf
    from tests.converters.harness import lower
    x = rand(4, 3, 5)
    rows = np.array([[3, 2], [0, 0], [1, 1]], np.int32)
    low = lower(lambda p, i: tf.gather_nd(p, i), [x, rows])
    gpu = check(low.net.model, {"TensorRTInputPH_0": x, "TensorRTInputPH_1": rows}, precision)
    bad = np.array([[3, 2], [0, 3], [-1, 0]], np.int32)
    got = gpu.execute([x, bad])[0]
    got = cp.asnumpy(got) if isinstance(got, cp.ndarray) else np.asarray(got)
    np.testing.assert_allclose(got[0], x[3, 2], rtol=TOL[precision][0], atol=TOL[precision][1])
    assert not got[1:].any()


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_lrn_as_tftrt_lowers_it(precision):
    """converters/nn.py's LRN (added 2026-12-04 without a GPU at hand): the squares pooled
    over the channels with a 1 x (2r+1) average pool of one channel, then pointwise; the
    CuPy engine equals the numpy one, large activations included (the pool stays FP32)."""
    import tensorflow as tf
    from tests.converters.harness import lower
    x = rand(2, 5, 7, 16) * 300.0
    low = lower(lambda t: tf.nn.local_response_normalization(t * 1.0, 2, 1.0, 1.0, 0.75), [x])
    check(low.net.model, {"TensorRTInputPH_0": x}, precision)


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_uint8_image_input(precision):
    """An engine whose input is a uint8 image (Cast to float, then scale; added 2026-12-04
    without a GPU at hand): the CuPy engine equals the numpy one."""
    import tensorflow as tf
    from tests.converters.harness import lower
    img = np.random.default_rng(3).integers(0, 256, (2, 6, 5, 3)).astype(np.uint8)
    low = lower(lambda t: tf.nn.relu(tf.cast(t, tf.float32) / 127.5 - 1.0), [img])
    check(low.net.model, {"TensorRTInputPH_0": img}, precision)


def test_shuffle_ops():
    x = rand(2, 4, 6, 6)
    feeds = {"x": x}
    nodes = [N("Transpose", ["x"], ["tr"], perm=[0, 2, 3, 1]),
             N("Reshape", ["x", "rs"], ["re"]),
             N("Concat", ["x", "x"], ["cc"], axis=1),
             N("Split", ["x", "sp"], ["s0", "s1"], axis=3),
             N("Slice", ["x", "st", "en", "sa", "ss"], ["sl"]),
             N("Pad", ["x", "pc"], ["pa"], mode="constant"),
             N("Pad", ["x", "pr"], ["pb"], mode="reflect"),
             N("Pad", ["x", "pr"], ["pe"], mode="edge"),
             N("Expand", ["ex", "es"], ["exo"]),
             N("Tile", ["x", "tl"], ["ti"]),
             N("DepthToSpace", ["x"], ["d2s"], blocksize=2, mode="CRD"),
             N("SpaceToDepth", ["x"], ["s2d"], blocksize=2),
             N("Einsum", ["x", "x"], ["ein"], equation="bchw,bcwk->bchk")]
    consts = {"rs": np.array([2, -1], I64), "sp": np.array([2, 4], I64),
              "st": np.array([0, 5], I64), "en": np.array([3, 0], I64),
              "sa": np.array([1, 3], I64), "ss": np.array([1, -2], I64),
              "pc": np.array([0, 1, 2, 0, 0, 0, 1, 3], I64),
              "pr": np.array([0, 0, 2, 1, 0, 0, 1, 2], I64), "ex": rand(4, 1, 6, seed=4),
              "es": np.array([2, 4, 3, 6], I64), "tl": np.array([1, 2, 1, 2], I64)}
    outs = ["tr", "re", "cc", "s0", "s1", "sl", "pa", "pb", "pe", "exo", "ti", "d2s", "s2d",
            "ein"]
    check(make_model(nodes, feeds, consts, outputs=outs), feeds)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_pad_channels_last(mode, precision):
    """Spatial padding of NHWC tensors: the 16-byte vector path."""
    x = rand(2, 5, 5, 8)
    pads = np.array([0, 1, 2, 0, 0, 2, 1, 0], I64)
    model = make_model([N("Pad", ["x", "p"], ["y"], mode=mode)], {"x": x}, {"p": pads})
    check(model, {"x": x}, precision)


@pytest.mark.parametrize("op,consts,attrs", [
    ("Pad", {"p": np.array([0, 3, 3, 0, 0, 3, 3, 0], I64)}, {"mode": "constant"}),
    ("Pad", {"p": np.array([0, 1, 1, 0, 0, 1, 1, 0], I64)}, {"mode": "edge"}),
    ("Transpose", {}, {"perm": [0, 3, 1, 2]}),
    ("Slice", {"st": np.array([1], I64), "en": np.array([5], I64), "ax": np.array([2], I64)},
     {}),
    ("MaxPool", {}, {"kernel_shape": [2, 2]}),
    ("Concat", {}, {"axis": 3})])
def test_fp16_layer_on_fp32_network_input(op, consts, attrs):
    """In FP16 engines a layer reading the fp32 network input stores fp16 (the first layer of
    Keras ResNet50 is such a Pad)."""
    x = rand(2, 6, 6, 8)
    ins = ["x"] + list(consts) if op != "Concat" else ["x", "x"]
    if op == "MaxPool":
        nodes = [N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), N(op, ["t"], ["o"], **attrs)]
    else:
        nodes = [N(op, ins, ["o"], **attrs)]
    nodes.append(N("Relu", ["o"], ["y"]))
    check(make_model(nodes, {"x": x}, consts), {"x": x}, "FP16")


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize(mode):
    x = rand(2, 3, 5, 4)
    model = make_model([N("Resize", ["x", "", "", "z"], ["y"], mode=mode)], {"x": x},
                       {"z": np.array([2, 3, 7, 9], I64)})
    check(model, {"x": x})


# The resize modes the TF converters emit (converters/image.py), NHWC as they run and NCHW,
# float32 and float16: the generated kernel (cupy_kernels_nn.ResizeKernel) against numpy.
TF_RESIZE_MODES = [("linear", "asymmetric", None), ("linear", "align_corners", None),
                   ("linear", "half_pixel", None), ("nearest", "asymmetric", "floor"),
                   ("nearest", "align_corners", "round_prefer_ceil"),
                   ("nearest", "half_pixel", "round_prefer_ceil")]


@pytest.mark.parametrize("mode,ctm,nearest", TF_RESIZE_MODES)
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_resize_kernel(mode, ctm, nearest, layout, precision):
    from tftrt.engine.backends.cupy_kernels_nn import ResizeKernel
    x = rand(2, 5, 7, 8) if layout == "NHWC" else rand(2, 8, 5, 7)
    sizes = [2, 9, 4, 8] if layout == "NHWC" else [2, 8, 9, 4]
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if nearest:
        attrs["nearest_mode"] = nearest
    model = make_model([N("Resize", ["x", "", "", "z"], ["r"], **attrs),
                        N("Relu", ["r"], ["y"])], {"x": x}, {"z": np.array(sizes, I64)})
    check(model, {"x": x}, precision)
    _, gpu = _engines(model, {"x": x}, precision)
    impls = [i for l, i in zip(gpu.network.layers, gpu.backend_impl.engine_impls(gpu))
             if l.kind == "resize"]
    assert impls and all(isinstance(i.kernel, ResizeKernel) for i in impls)


def test_quantize_dequantize():
    x = rand(2, 3, 4)
    consts = {"s": np.array([0.02, 0.05, 0.1], np.float32), "z": np.array([3, -2, 0], np.int8)}
    nodes = [N("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             N("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)]
    check(make_model(nodes, {"x": x}, consts, outputs=["q", "y"]), {"x": x})


# --- engine-level behaviour --------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_resnet():
    from tests.engine.models import resnet50
    model, feeds = resnet50(batch=2, size=32, width=16)
    return model, feeds


def test_small_resnet_fp32_fp16(small_resnet):
    model, feeds = small_resnet
    for precision in ("FP32", "FP16"):
        ref, gpu = _engines(model, feeds, precision)
        xs = list(feeds.values())
        _compare(gpu.execute(xs), ref.execute(xs), (5e-3, 5e-3) if precision == "FP32" else
                 TOLERANCES["FP16"], precision)


def test_graph_replay_equals_eager(small_resnet):
    model, feeds = small_resnet
    _, gpu = _engines(model, feeds, "FP16")
    eager = gpu.create_execution_context()
    eager._impl.use_graphs = False
    graph = gpu.create_execution_context()
    for seed in range(3):
        x = rand(*feeds["TensorRTInputPH_0"].shape, seed=seed)
        a = cp.asnumpy(eager.execute([x])[0])
        b = cp.asnumpy(graph.execute([x])[0])
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    assert graph._impl.segments is not None and \
        any(kind == "graph" for kind, _ in graph._impl.segments)


def test_capture_never_frees_graphs_inside_it(small_resnet, monkeypatch):
    """Contexts that captured CUDA graphs, dropped in reference cycles (garbage only Python's
    cyclic collector frees), while new contexts capture with the collector running at every
    allocation: no graph is destroyed inside a capture (CuPy would report
    cudaErrorStreamCaptureUnsupported from Graph.__dealloc__ and leak it), every replay is
    right."""
    import gc
    import sys
    model, feeds = small_resnet
    _, gpu = _engines(model, feeds, "FP16")
    x = rand(*feeds["TensorRTInputPH_0"].shape, seed=0)
    want = cp.asnumpy(gpu.create_execution_context().execute([x])[0])
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    threshold = gc.get_threshold()
    try:
        gc.set_threshold(1, 1, 1)
        for _ in range(4):
            ctx = gpu.create_execution_context()
            for _ in range(2):  # the second call captures
                np.testing.assert_allclose(cp.asnumpy(ctx.execute([x])[0]), want, rtol=1e-3,
                                           atol=1e-4)
            assert any(kind == "graph" for kind, _ in ctx._impl.segments)
            cycle = [ctx]
            cycle.append(cycle)
            del ctx, cycle
    finally:
        gc.set_threshold(*threshold)
    gc.collect()
    assert not seen, [f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}" for u in seen]


def _small_resnet_profile(small_resnet):
    """(a ProfileEngine batch 1..8 of the small ResNet on CuPy, FP16, the
    per-sample input shape, batch -> the numpy engine for that batch)."""
    from tftrt.engine.backends import get_backend
    from tftrt.engine.onnx_import import network_from_onnx
    from tftrt.engine.shape_template import specializer
    from tftrt.profiles import Profile, ProfileEngine
    model, feeds = small_resnet
    name = "TensorRTInputPH_0"
    rest = tuple(feeds[name].shape[1:])
    net = network_from_onnx(model)
    get_backend("cupy").set_build_options(allow_tf32=False)

    def config(choices=None, weights=None, backend="cupy"):
        return BuilderConfig(precision="FP16", backend=backend, tactic_choices=choices,
                             weight_cache=weights)

    def build(key, choices, weights):
        return build_engine(net, {name: key[0]}, config(choices, weights))

    def reference(b):
        return build_engine(net, {name: (b, *rest)}, config(backend="numpy"))
    pe = ProfileEngine([Profile([(1, *rest)], [(8, *rest)], [(8, *rest)])], build, "cupy",
                       specializer(net, config())).build_profiles()
    return pe, rest, reference


def test_quick_engines_for_new_shapes_of_a_profile(small_resnet, monkeypatch):
    """A profile batch 1..8 of a small ResNet on CuPy (FP16): the first call at each new batch
    gets a quick engine whose cuDNN convolutions run plans cuDNN did not compile at run time
    (untimed), with the real engine's answers (FP16 tolerance against numpy); the real
    engines replace them in the background, their convolutions on the opt engine's recorded
    plans. The time of each quick build is printed (run with -s)."""
    import time
    from tftrt.engine.backends.cupy_layers import ConvCudnn
    monkeypatch.setenv("TFTRT_QUICK_SHAPES", "1")
    pe, rest, reference = _small_resnet_profile(small_resnet)
    assert pe.template_errors == {}
    quick_ms = {}
    for b in (3, 5, 1):
        x = rand(b, *rest, seed=b)
        t0 = time.perf_counter()
        eng = pe.engine_for([(b, *rest)])
        quick_ms[b] = (time.perf_counter() - t0) * 1e3
        assert eng.build_info["quick"], b
        convs = [i for i in eng.backend_impl.engine_impls(eng) if isinstance(i, ConvCudnn)]
        assert convs and all(c.conv.precompiled_only and c.conv.rtc.get(c.conv.index) is False
                             for c in convs), b
        ref = reference(b)
        want = ref.execute([x])
        for _ in range(3):  # eager, capture, replay
            _compare(eng.execute([x]), want, TOLERANCES["FP16"], f"quick batch {b}")
    print(f"\nquick engine builds (ms): {quick_ms}")
    assert pe.wait_pending(timeout=300)
    for b in (3, 5, 1):
        eng = pe.engine_for([(b, *rest)])
        assert not eng.build_info["quick"]
        x = rand(b, *rest, seed=b)
        ref = reference(b)
        _compare(eng.execute([x]), ref.execute([x]), TOLERANCES["FP16"], f"real batch {b}")
    assert pe.stats["quick"] == 3 == pe.stats["swapped"], pe.stats


def test_split_batches_for_new_shapes_of_a_profile(small_resnet, monkeypatch):
    """A profile batch 1..8 of a small ResNet on CuPy (FP16), TFTRT_SPLIT_BATCH=1: the first
    call at a new batch runs as slices through engines built for smaller batches (CuPy
    slices in, outputs concatenated on the GPU) with the real engine's answers (FP16
    tolerance against numpy) and no build on the call; the real engines replace them. The
    first calls' times are printed (run with -s)."""
    import time
    from tftrt.profiles import SplitEngine
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "1")
    pe, rest, reference = _small_resnet_profile(small_resnet)
    assert pe.split_check(0) is None, pe.split_check(0)
    # build_profiles() built the split ladder: the smallest batch and the powers of two
    assert sorted(k[0][0] for k in pe.shapes) == [1, 2, 4, 8]
    first_ms = {}
    for b in (3, 5, 7):
        x = rand(b, *rest, seed=b)
        t0 = time.perf_counter()
        eng = pe.engine_for([(b, *rest)])
        assert isinstance(eng, SplitEngine), b
        assert eng.build_info["split"] == [n for n in (4, 2, 1) if b & n], b
        got = eng.execute([x])
        cp.cuda.get_current_stream().synchronize()
        first_ms[b] = (time.perf_counter() - t0) * 1e3
        assert isinstance(got[0], cp.ndarray)
        ref = reference(b)
        _compare(got, ref.execute([x]), TOLERANCES["FP16"], f"split batch {b}")
    print(f"\nfirst calls on split batches (ms): {first_ms}")
    assert pe.wait_pending(timeout=300)
    for b in (3, 5, 7):
        eng = pe.engine_for([(b, *rest)])
        assert not isinstance(eng, SplitEngine) and not pe.is_split([(b, *rest)])
        x = rand(b, *rest, seed=b)
        ref = reference(b)
        _compare(eng.execute([x]), ref.execute([x]), TOLERANCES["FP16"], f"real batch {b}")
    assert pe.stats["split"] == 3 == pe.stats["swapped"], pe.stats


def test_plan_round_trip_without_retuning(small_resnet, monkeypatch):
    from tftrt.engine.backends import cupy_dnn
    model, feeds = small_resnet
    _, gpu = _engines(model, feeds, "FP16")
    x = list(feeds.values())
    want = cp.asnumpy(gpu.execute(x)[0])
    loaded = _reload_without_retuning(gpu, monkeypatch, cupy_dnn.CudnnConv, cupy_dnn.LtGemm)
    np.testing.assert_allclose(cp.asnumpy(loaded.execute(x)[0]), want, rtol=1e-3, atol=1e-4)


def test_four_threads_with_own_contexts(small_resnet):
    model, feeds = small_resnet
    ref, gpu = _engines(model, feeds, "FP16")
    shape = feeds["TensorRTInputPH_0"].shape
    inputs = [[rand(*shape, seed=10 * t + i) for i in range(4)] for t in range(4)]
    want = [[ref.execute([x])[0] for x in row] for row in inputs]

    def body(t):
        ctx = gpu.create_execution_context()
        for _ in range(2):
            for x, w in zip(inputs[t], want[t]):
                _compare(ctx.execute([x]), [w], TOLERANCES["FP16"], f"thread {t}")
    in_threads(body)


def test_engine_reports_device_and_memory(small_resnet):
    model, feeds = small_resnet
    _, gpu = _engines(model, feeds, "FP16")
    assert gpu.backend == "cupy" and "sm_" in gpu.device
    ctx = gpu.create_execution_context()
    ctx.execute(list(feeds.values()))
    assert ctx._impl.device_bytes >= gpu.memory.arena_bytes
    prof = ctx._impl.profile(list(feeds.values()), repeats=3)
    assert len(prof) == gpu.num_layers and all(t >= 0 for _, t in prof)


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("d", [64, 6, 3])
def test_attention_block_transposes_and_reshape_views(precision, d):
    """Keras-style attention: [b, s, h, d] q/k/v, transposes, reshapes to [b*h, s, d], q.k^T
    scaled, softmax, .v, back to [b, s, h*d]. Transposes run the generated kernel (vectorized
    when d allows), reshapes between arena tensors run nothing, and graph replay matches."""
    from tftrt.engine.backends.cupy_kernels_nn import TransposeKernel
    b, s, h = 2, 16, 3
    nodes = [N("Transpose", ["q"], ["qt"], perm=[0, 2, 1, 3]), N("Reshape", ["qt", "s3"], ["q3"]),
             N("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]), N("Reshape", ["kt", "s3k"], ["k3"]),
             N("Transpose", ["v"], ["vt"], perm=[0, 2, 1, 3]), N("Reshape", ["vt", "s3"], ["v3"]),
             N("MatMul", ["q3", "k3"], ["sc"]), N("Mul", ["sc", "c"], ["scs"]),
             N("Softmax", ["scs"], ["p"], axis=-1), N("MatMul", ["p", "v3"], ["o3"]),
             N("Reshape", ["o3", "s4"], ["o4"]), N("Transpose", ["o4"], ["ot"], perm=[0, 2, 1, 3]),
             N("Reshape", ["ot", "sy"], ["y"])]
    feeds = {n: rand(b, s, h, d, seed=i) for i, n in enumerate("qkv")}
    consts = {"s3": np.array([b * h, s, d], I64), "s3k": np.array([b * h, d, s], I64),
              "s4": np.array([b, h, s, d], I64), "sy": np.array([b, s, h * d], I64),
              "c": np.array(d ** -0.5, np.float32)}
    gpu = check(make_model(nodes, feeds, consts), feeds, precision, tactics=False)
    ctx = gpu.create_execution_context()._impl
    kernels = [i.kernel for l, i, _, _ in ctx.steps if l.kind == "transpose"]
    assert len(kernels) == 4 and all(isinstance(k, TransposeKernel) for k in kernels)
    isz = 2 if precision == "FP16" else 4
    want_vec = max([vb for vb in (16, 8, 4) if vb > isz and (d * isz) % vb == 0] or [isz])
    # FP16: the q/k/v transposes also cast the fp32 network inputs (one element at a time)
    assert sorted(k.vec_bytes for k in kernels) == sorted(
        [4, 4, 4, want_vec] if precision == "FP16" else [want_vec] * 4)
    # FP16 with d = 64: the scores, softmax and .v are one cuDNN attention layer (reading the
    # transposed copies, [b*h, s, d] viewed as [1, b*h, s, d]); d = 6, 3: cuDNN's SDPA needs
    # head dims that are multiples of 8, so the backend keeps them unfused.
    att = [l for l in gpu.network.layers if l.kind == "attention"]
    assert len(att) == (1 if precision == "FP16" and d == 64 else 0)
    assert all(l.attrs["layout"] == "bhsd" for l in att)
    reshapes = [l for l in gpu.network.layers if l.kind == "reshape"]
    assert reshapes and len(ctx.steps) == len(gpu.network.layers) - len(
        [l for l in reshapes if l.outputs[0] in gpu.memory.aliases])
    assert gpu.memory.aliases  # the [b*h, s, d] <-> [b, h, s, d] reshapes are views


# --- fused attention (passes/attention_fusion + cuDNN SDPA) -----------------------------------
@pytest.mark.parametrize("b,s,sk,h,d", [(2, 128, 128, 12, 64), (3, 77, 50, 4, 32),
                                        (1, 16, 16, 2, 128), (2, 8, 8, 1, 8)])
def test_keras_attention_runs_as_one_cudnn_layer(b, s, sk, h, d):
    """Keras MultiHeadAttention (projections, head transposes, scores, softmax, .v, merge)
    in FP16: one attention layer reading q, k, v in [b, s, h, d] and writing y in place, no
    transposes left, equal to the numpy engine and to CUDA-graph replay."""
    from tests.engine.test_attention_fusion import _mha
    from tftrt.engine.backends import cupy_layers as L
    model, feeds = _mha(b, s, h, d, sk)
    gpu = check(model, feeds, "FP16", tactics=False)
    kinds = [l.kind for l in gpu.network.layers]
    assert kinds.count("attention") == 1 and "transpose" not in kinds and \
        "softmax" not in kinds, kinds
    (impl,) = [i for l, i in zip(gpu.network.layers, gpu._cupy_impls) if l.kind == "attention"]
    assert isinstance(impl, L.AttentionCudnn) and impl.sdpa.spec.layout == "bshd"


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("b,h,s,sk,d,dv", [(2, 4, 64, 64, 64, 64), (1, 3, 33, 70, 32, 16),
                                           (4, 2, 128, 128, 128, 128)])
def test_sdpa_and_cupy_fallback_match_the_reference(layout, b, h, s, sk, d, dv):
    """Both attention implementations (cuDNN SDPA and the eager CuPy fallback) against
    numpy_ops.attention on the same random fp16 inputs."""
    from tftrt.engine.backends import cupy_layers as L
    from tftrt.engine.backends.numpy_ops import attention
    from tftrt.engine.network import Layer, Network
    shp = (lambda s_, d_: (b, s_, h, d_)) if layout == "bshd" else \
        (lambda s_, d_: (b, h, s_, d_))
    net = Network("att")
    for n, sh in (("q", shp(s, d)), ("k", shp(sk, d)), ("v", shp(sk, dv)), ("y", shp(s, dv))):
        net.add_tensor(n, "float16", sh)
    layer = Layer("att", "attention", ["q", "k", "v"], ["y"],
                  {"scale": d ** -0.5, "layout": layout}, precision="FP16")
    net.layers = [layer]
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(net.shape(n)).astype(np.float16) for n in "qkv"]
    want = attention(*xs, d ** -0.5, layout, np.float16)
    for cls in (L.AttentionCudnn, L.AttentionCupy):
        impl = cls(net, layer, {}, {})
        y = cp.full(net.shape("y"), np.nan, np.float16)
        ws = cp.empty(max(int(impl.workspace), 1), cp.uint8)
        impl.run([cp.asarray(x) for x in xs], [y], ws)
        _compare([y], [want.astype(np.float16)], TOL["FP16"], cls.__name__)


def test_attention_plan_round_trip_and_four_threads(monkeypatch):
    """An FP16 engine with fused attention: its saved plan rebuilds the recorded cuDNN SDPA
    plan without timing again, and four threads with their own contexts get the reference."""
    from tests.engine.test_attention_fusion import _mha
    from tftrt.engine.backends import cupy_dnn
    model, feeds = _mha(2, 64, 4, 64)
    ref, gpu = _engines(model, feeds, "FP16")
    assert "attention" in [l.kind for l in gpu.network.layers]
    xs = [rand(*feeds["x"].shape, seed=s) for s in range(4)]
    want = [np.asarray(ref.execute([x])[0]) for x in xs]
    loaded = _reload_without_retuning(gpu, monkeypatch, cupy_dnn.CudnnSdpa, cupy_dnn.LtGemm)

    def body(t):
        ctx = loaded.create_execution_context()
        for _ in range(3):  # eager, capture, replay
            _compare(ctx.execute([xs[t]]), [want[t]], TOL["FP16"], f"thread {t}")
    in_threads(body)


def _spin(seconds: float, stream=None):
    """Queues one GPU thread busy for about ``seconds``; returns an event recorded after it."""
    kernel = cp.RawKernel(r'''
    extern "C" __global__ void spin(long long cycles) {
        long long t0 = clock64();
        while (clock64() - t0 < cycles) {}
    }''', "spin")
    rate = cp.cuda.Device().attributes["ClockRate"] * 1e3  # cycles per second
    stream = stream or cp.cuda.get_current_stream()
    done = cp.cuda.Event()
    with stream:
        kernel((1,), (1,), (np.int64(seconds * rate),))
        done.record(stream)
    return done


def test_timing_wait_gives_up_on_a_kernel_that_does_not_finish():
    """A build-time timing wait has a limit: a kernel still running past it raises GpuTimeout
    naming what was being timed (the build then fails with that message, never hangs)."""
    from tftrt.engine.backends.cupy_dnn import wait_event
    from tftrt.engine.errors import GpuTimeout
    done = _spin(2.0, cp.cuda.Stream(non_blocking=True))
    with pytest.raises(GpuTimeout, match=r"within 0 s while timing layer X"):
        wait_event(done, "layer X", timeout=0.2)
    wait_event(done, "layer X", timeout=30)  # it does finish: the wait returns
    assert done.done


def test_tactic_timing_starts_after_the_callers_stream():
    """Tactic timing runs on its own stream only once the caller's stream is idle: work
    queued there (the inputs, a first call whose scratch memory the timed calls reuse) must
    not overlap the timed calls. Two cuBLASLt split-K GEMMs sharing one workspace that way
    never finished (the encoder-FP32 hang inside TensorFlow)."""
    from tftrt.engine.backends import get_backend
    done = _spin(0.3)  # on the caller's (current) stream
    seen = []

    def runner(inputs):
        seen.append(done.done)
        return [inputs[0] * 2]
    get_backend("cupy").time_runner(runner, [cp.ones(4, cp.float32)], repeats=2)
    assert seen and seen[0], "timing started while the caller's stream was still busy"


# --- issue 13: every pointwise op on the GPU, no layer on the host ------------------------------
def test_every_pointwise_op_and_activation_kernel_matches_numpy():
    """Every pointwise op of the IR's registry in every dtype the CPU codegen test covers, and
    every epilogue activation, compiled by NVRTC and run in both kernel variants (one element
    per thread, 16-byte vectors) against numpy_ops on the same inputs (NaN and infinities
    included): tests/engine/test_cuda_codegen.py's cases, on the device."""
    from tests.engine.test_cuda_codegen import SHAPE, _kernels, _mismatch
    from tftrt.engine.backends import cupy_kernels as K
    bad = []
    for what, src, xs, want in _kernels():
        k = K.PointwiseKernel(src.program, [x.shape for x in xs], [x.dtype.name for x in xs],
                              SHAPE, src.out_dtype)
        ins = [cp.asarray(x) for x in xs]
        for vec in k.sources:
            out = cp.zeros(SHAPE, want.dtype)
            K.launch(k.kernel(vec), k.work(vec), [ins[i] for i in k.used] + [out])
            err = _mismatch(cp.asnumpy(out), want, what.split("/")[0])
            if err:
                bad.append(f"{what} ({'vector' if vec else 'scalar'} kernel): {err}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("act", ["silu", "hardswish", "mish", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("ws", [(32, 16, 3, 3), (16, 1, 3, 3), (32, 16, 1, 1)])
def test_conv_with_activation_stays_on_the_gpu(ws, act, precision):
    """EfficientNet / MobileNetV3 blocks: conv (cuDNN, depthwise kernel, 1x1 GEMM) followed by
    swish, hard-swish, mish or GELU runs fused into the conv's epilogue or split (main op on
    cuDNN / cuBLASLt, the rest as a generated kernel), each layer on its tactic's own GPU
    implementation, equal to the numpy engine. (On an H200 every EfficientNetB0 conv + swish
    ran on the host: 'silu' had no CUDA lowering.)"""
    attrs = {"pads": [1, 1, 1, 1]} if ws[-1] == 3 else {}
    if ws[1] == 1:
        attrs["group"] = 16
    gpu = check(*_conv_model((2, 8, 8, 16), ws, attrs, epi=(act,)), precision=precision)
    convs = [l for l in gpu.network.layers if l.kind == "conv"]
    assert len(convs) == 1
    if act in ("silu", "gelu", "gelu_tanh"):  # one activation: vertical fusion absorbs it
        assert convs[0].epilogue[-1].get("fn") == act.split("_")[0], convs[0].epilogue


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "silu", "hardswish"])
def test_dense_with_activation_stays_on_the_gpu(act, precision):
    """MatMul + bias + GELU (erf and tanh forms) / swish / hard-swish: cuBLASLt with what its
    epilogue takes, the rest as a generated kernel; never on the host."""
    x = rand(2, 16, 32)
    consts = {"w": rand(32, 64, seed=1) / 6, "b": rand(64, seed=2)}
    nodes = [N("MatMul", ["x", "w"], ["m"]), N("Add", ["m", "b"], ["h"])] + \
        _act_nodes(act, "h", "y", consts)
    gpu = check(make_model(nodes, {"x": x}, consts), {"x": x}, precision)
    mm = [l for l in gpu.network.layers if l.kind == "matmul"]
    assert len(mm) == 1
    if act != "hardswish":
        assert mm[0].epilogue[-1].get("fn") == act.split("_")[0], mm[0].epilogue


def test_fallback_tactics_are_logged_once_per_engine(monkeypatch, caplog):
    """A tactic whose own implementation refuses a layer runs it on the next GPU path; the
    engine logs all such layers once, in one line, however many contexts it makes."""
    import logging
    from tftrt.engine.backends import cupy_backend as B
    from tftrt.engine.backends import cupy_layers as L

    def refuse(self, *a, **k):
        raise ValueError("refused for the test")
    monkeypatch.setattr(L.MatmulLt, "__init__", refuse)
    monkeypatch.setattr(B, "_WORKSPACE", {})
    feeds = {"a": rand(8, 16)}
    consts = {"w1": rand(16, 32, seed=1) / 4, "w2": rand(32, 8, seed=2) / 6}
    model = make_model([N("MatMul", ["a", "w1"], ["h"]), N("Relu", ["h"], ["r"]),
                        N("MatMul", ["r", "w2"], ["y"])], feeds, consts)
    with caplog.at_level(logging.WARNING, logger="tftrt.engine.cupy"):
        ref, gpu = _engines(model, feeds, tactic_timing=False)
        for _ in range(2):
            _compare(gpu.execute([feeds["a"]]), ref.execute([feeds["a"]]), TOL["FP32"], "engine")
        gpu.create_execution_context()
    mm = [(l, i) for l, i in zip(gpu.network.layers, gpu._cupy_impls) if l.kind == "matmul"]
    assert len(mm) == 2 and all(l.tactic == "lt" and isinstance(i, L.MatmulCupy) and
                                "refused for the test" in i.fallback for l, i in mm)
    lines = [r.getMessage() for r in caplog.records if "fallback tactic" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"engine {gpu.network.name}: 2 layers on a fallback tactic: ")
    assert lines[0].count("-> MatmulCupy: MatmulLt: ValueError: refused for the test") == 2


def test_a_layer_with_no_gpu_implementation_fails_the_build(monkeypatch):
    """No host path: a layer kind the table has no GPU implementation for fails the engine
    build with a message naming the layer and its kind (the engine op then runs its native
    segment)."""
    from tftrt.engine.backends import cupy_backend as B
    from tftrt.engine.errors import EngineBuildError
    table = {k: v for k, v in B.impl_table().items() if k != "topk"}
    monkeypatch.setattr(B, "impl_table", lambda: table)
    monkeypatch.setattr(B, "_WORKSPACE", {})
    x = rand(3, 8)
    model = make_model([N("TopK", ["x", "k"], ["v", "i"], axis=-1)], {"x": x},
                       {"k": np.array([2], I64)}, outputs=["v", "i"])
    with pytest.raises(EngineBuildError, match=r"layer \S+ of kind 'topk' has no GPU "
                                               r"implementation"):
        build_engine(model, {"x": x.shape}, BuilderConfig(backend="cupy"))


def _one_layer(kind, ins, outs, attrs, weights=None):
    """A network of one ``kind`` layer; ins / outs: name -> (dtype, shape)."""
    from tftrt.engine.network import Layer, Network
    net = Network(kind)
    for n, (dt, sh) in {**ins, **outs}.items():
        net.add_tensor(n, dt, sh)
    for n, v in (weights or {}).items():
        net.set_weight(n, v)
    layer = Layer(kind, kind, list(ins), list(outs), attrs, tactic="default")
    net.layers = [layer]
    return net, layer


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int32"])
def test_scatter_nd_on_the_gpu(reduction, dtype):
    """ScatterND with every reduction (duplicate and negative indices where ONNX defines
    them) against numpy_ops.scatter_nd; only ``mul`` reads the host (not capturable)."""
    from tftrt.engine.backends import cupy_ops as O
    from tftrt.engine.backends.numpy_ops import scatter_nd
    mk = (lambda *s, seed: rand(*s, dtype=np.int32, low=-5, high=5, seed=seed)) \
        if dtype == "int32" else (lambda *s, seed: rand(*s, seed=seed).astype(dtype))
    data = mk(4, 5, 3, seed=0)
    idx = [[1, 2], [3, 0], [-1, 2], [0, 4]] + ([[1, 2], [3, 0], [1, 2]] if reduction != "none"
                                              else [])
    idx = np.array(idx, I64)
    upd = mk(len(idx), 3, seed=1)
    net, layer = _one_layer("scatter_nd", {"d": (dtype, data.shape), "i": ("int64", idx.shape),
                                           "u": (dtype, upd.shape)},
                            {"y": (dtype, data.shape)}, {"reduction": reduction})
    impl = O.ScatterND(net, layer, {}, {})
    assert impl.capturable == (reduction != "mul")
    y = cp.full(data.shape, 7, dtype)
    impl.run([cp.asarray(data), cp.asarray(idx), cp.asarray(upd)], [y], None)
    f32 = lambda a: a.astype(np.float32) if a.dtype == np.float16 else a  # noqa: E731
    want = scatter_nd(f32(data), idx, f32(upd), reduction).astype(dtype)
    _compare([y], [want], TOL["FP16"] if dtype == "float16" else TOL["FP32"], reduction)


@pytest.mark.parametrize("dtype,start,delta,n", [("float32", 1.5, 0.25, 10), ("int64", -3, 2, 7),
                                                 ("int32", 10, -3, 4), ("float32", 0.0, 1.0, 0)])
def test_range_on_the_gpu(dtype, start, delta, n):
    from tftrt.engine.backends import cupy_ops as O
    from tftrt.engine.backends.numpy_ops import range_
    s, d = np.array(start, dtype), np.array(delta, dtype)
    limit = np.array(start + n * delta, dtype)
    want = range_(s, limit, d)
    assert want.shape == (n,)
    net, layer = _one_layer("range", {"s": (dtype, ()), "l": (dtype, ()), "d": (dtype, ())},
                            {"y": (dtype, (n,))}, {})
    y = cp.empty((n,), dtype)
    O.Range(net, layer, {}, {}).run([cp.asarray(v) for v in (s, limit, d)], [y], None)
    _compare([y], [want], TOL["FP32"], "range")


@pytest.mark.parametrize("center,max_out,iou,score_thr", [
    (0, 5, 0.5, 0.3), (0, 1000, 0.3, None), (1, 7, 0.6, 0.1), (1, 1000, 0.0, 0.5)])
def test_nms_on_the_gpu(center, max_out, iou, score_thr):
    """NonMaxSuppression on the device (sort, greedy kernel, two host reads) keeps exactly
    the boxes numpy_ops.nms keeps, in its order; the layer reads constant thresholds from the
    network's weights and puts its data-dependent result where the context gives no buffer."""
    from tests.engine.test_cuda_codegen import _nms_inputs
    from tftrt.engine.backends import cupy_ops as O
    from tftrt.engine.backends.numpy_ops import nms
    boxes, scores = _nms_inputs(center, seed=3, b=2, n=300, c=4)
    consts = {"m": np.array([max_out], I64), "t": np.array([iou], np.float32)}
    if score_thr is not None:
        consts["s"] = np.array([score_thr], np.float32)
    want = nms(boxes, scores, consts["m"], consts["t"], consts.get("s"), center)
    assert len(want) > 8
    got = O.nms_select(cp.asarray(boxes), cp.asarray(scores), max_out, iou, score_thr, center)
    np.testing.assert_array_equal(cp.asnumpy(got), want)
    ins = {"b": ("float32", boxes.shape), "sc": ("float32", scores.shape),
           "m": ("int64", (1,)), "t": ("float32", (1,))}
    if score_thr is not None:
        ins["s"] = ("float32", (1,))
    net, layer = _one_layer("nms", ins, {"y": ("int64", (None, 3))},
                            {"center_point_box": center}, consts)
    impl = O.NonMaxSuppression(net, layer, {}, {})
    outs = [None]
    impl.run([cp.asarray(boxes), cp.asarray(scores)] + [cp.asarray(consts[n]) for n in ins
                                                         if n in consts], outs, None)
    np.testing.assert_array_equal(cp.asnumpy(outs[0]), want)


@pytest.mark.parametrize("shapes,axis", [
    ([(2, 7, 7, 64), (2, 7, 7, 32)], 3),                 # DenseNet: 16-byte vectors
    ([(2, 7, 7, 24), (2, 7, 7, 8), (2, 7, 7, 40)], -1),  # Inception-like, three inputs
    ([(2, 5, 3), (2, 5, 1)], 2),                         # odd rows: element by element
    ([(3, 4), (1, 4)], 0)])
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_concat_kernel(shapes, axis, precision):
    """Concat of activations (Relu outputs, engine tensors of the engine's precision) through
    the one-pass kernel, against the numpy engine; the unaligned fallback too."""
    from tftrt.engine.backends.cupy_kernels_nn import ConcatKernel
    feeds = {f"x{k}": rand(*s) for k, s in enumerate(shapes)}
    nodes = [N("Relu", [f"x{k}"], [f"r{k}"]) for k in range(len(shapes))]
    nodes.append(N("Concat", [f"r{k}" for k in range(len(shapes))], ["cc"], axis=axis))
    nodes.append(N("Relu", ["cc"], ["y"]))  # the concat inside the engine (FP16: fp16 in/out)
    gpu = check(make_model(nodes, feeds), feeds, precision, tactics=False)
    (layer, impl), = [(l, i) for l, i in zip(gpu.network.layers, gpu._cupy_impls)
                      if l.kind == "concat"]
    assert isinstance(impl.kernel, ConcatKernel)
    # An output buffer off the vector alignment takes the copy-per-input path, same values.
    dt = np.dtype(gpu.network.tensors[layer.outputs[0]].dtype)
    xs = [cp.asarray(feeds[f"x{k}"].astype(dt)) for k in range(len(shapes))]
    want = np.concatenate([cp.asnumpy(a) for a in xs], axis=axis)
    out = cp.zeros(want.size + 1, dt)[1:].reshape(want.shape)
    if impl.kernel.vec_bytes > dt.itemsize:
        assert not impl.kernel.aligned(xs, out)
    impl.run(xs, [out], None)
    np.testing.assert_array_equal(cp.asnumpy(out), want)
