"""LayerNorm fusion: decomposed layer norms (Keras 3, PyTorch-style exports) become one
``normalization`` layer; look-alikes that are not layer norms are left alone."""

import numpy as np
import pytest
from onnx import helper

import tftrt.engine.builder as builder
from tests.engine.harness import check_model, make_model, rand, run_engine, run_ort
from tftrt.engine import BuilderConfig, build_engine, network_from_onnx
from tftrt.engine.passes import PASSES, run_passes
from tftrt.engine.passes.elementwise_fusion import elementwise_fusion
from tftrt.engine.passes.norm_fusion import layernorm_fusion
from tftrt.engine.shapes import bind_inputs

N = helper.make_node


def _with_fusion(passes):
    if layernorm_fusion in passes:
        return list(passes)
    k = passes.index(elementwise_fusion) + 1
    return list(passes[:k]) + [layernorm_fusion] + list(passes[k:])


PIPELINE = _with_fusion(PASSES)
WITHOUT = [p for p in PASSES if p is not layernorm_fusion]


@pytest.fixture(autouse=True)
def fused_builds(monkeypatch):
    """build_engine (and so check_model and the converter) runs the pass."""
    monkeypatch.setattr(builder, "PASSES", PIPELINE)


def _optimized(model, feeds, passes=PIPELINE):
    net = bind_inputs(network_from_onnx(model), {k: v.shape for k, v in feeds.items()})
    return run_passes(net, passes)


def _kinds(net):
    return [l.kind for l in net.layers]


def _engine_matches_ort(model, feeds, rtol=1e-5, atol=1e-5):
    engine = build_engine(model, {k: v.shape for k, v in feeds.items()},
                          BuilderConfig(precision="FP32", backend="numpy"))
    got = engine.execute([feeds[n] for n in engine.input_names])
    want = run_ort(model, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=atol)
    return engine


def _keras_nodes(eps_name="eps"):
    """Keras 3 LayerNormalization as TF -> ONNX writes it (see the module doc)."""
    return [N("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=1),
            N("Sub", ["x", "m"], ["d"]), N("Mul", ["d", "d"], ["sq"]),
            N("ReduceMean", ["sq"], ["v"], axes=[-1], keepdims=1),
            N("Add", ["v", eps_name], ["ve"]), N("Sqrt", ["ve"], ["s"]),
            N("Reciprocal", ["s"], ["rs"]), N("Mul", ["gamma", "rs"], ["gr"]),
            N("Neg", ["m"], ["nm"]), N("Mul", ["nm", "gr"], ["t"]),
            N("Add", ["beta", "t"], ["bt"]), N("Mul", ["x", "gr"], ["xg"]),
            N("Add", ["bt", "xg"], ["y"])]


def _keras_model(shape, eps, param_shape=None):
    c = shape[-1]
    param_shape = param_shape or (c,)
    consts = {"eps": np.array(eps, np.float32),
              "gamma": rand(c, low=0.5, high=1.5, seed=1).reshape(param_shape),
              "beta": rand(c, seed=2).reshape(param_shape)}
    feeds = {"x": rand(*shape, low=-3, high=3)}
    return make_model(_keras_nodes(), feeds, consts), feeds


@pytest.mark.parametrize("eps", [1e-3, 1e-5, 1e-12])
@pytest.mark.parametrize("shape,param_shape", [((2, 5, 16), None), ((2, 5, 16), (1, 1, 16)),
                                               ((3, 8), None)])
def test_keras_layernorm_becomes_one_normalization(eps, shape, param_shape):
    model, feeds = _keras_model(shape, eps, param_shape)
    engine = _engine_matches_ort(model, feeds)
    kinds = _kinds(engine.network)
    assert kinds.count("normalization") == 1 and "reduce" not in kinds, kinds
    assert kinds == ["normalization"]
    layer = engine.network.layers[0]
    assert layer.inputs[0] == "x" and layer.outputs == ["y"]
    assert layer.attrs["axes"] == [len(shape) - 1]
    assert layer.attrs["epsilon"] == pytest.approx(float(np.float32(eps)), rel=1e-6)
    scale, bias = (engine.network.weights[n] for n in layer.inputs[1:])
    assert scale.dtype == bias.dtype == np.float32
    assert scale.shape == bias.shape == (shape[-1],)
    np.testing.assert_allclose(scale, rand(shape[-1], low=0.5, high=1.5, seed=1), rtol=1e-6)
    np.testing.assert_allclose(bias, rand(shape[-1], seed=2), rtol=1e-6, atol=1e-7)
    # the reference: onnxruntime's own LayerNormalization on the same weights
    ln = make_model([N("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=eps)],
                    feeds, {"g": scale, "b": bias})
    np.testing.assert_allclose(engine.execute([feeds["x"]])[0], run_ort(ln, feeds)[0],
                               rtol=1e-5, atol=1e-6)


def test_pass_alone_is_pure_and_keeps_the_layer_order():
    nodes = [N("Relu", ["x0"], ["x"])] + _keras_nodes() + [N("Exp", ["x"], ["z"])]
    feeds = {"x0": rand(2, 5, 16)}
    consts = {"eps": np.array(1e-5, np.float32), "gamma": rand(16, seed=1),
              "beta": rand(16, seed=2)}
    model = make_model(nodes, feeds, consts, outputs=["y", "z"])
    net = elementwise_fusion(bind_inputs(network_from_onnx(model), {"x0": (2, 5, 16)}))
    before = net.summary()
    out = layernorm_fusion(net)
    assert net.summary() == before
    assert _kinds(net) == ["pointwise", "reduce", "pointwise", "reduce", "pointwise",
                           "pointwise"]
    assert _kinds(out) == ["pointwise", "normalization", "pointwise"]
    assert out.layers[1].outputs == ["y"] and out.layers[1].name == net.layers[4].name
    assert out.layers[1].inputs[0] == "x"
    assert "m" not in out.tensors and "gamma" not in out.weights  # pruned
    check_model(model, feeds, rtol=1e-5)


@pytest.mark.parametrize("tail", ["relu", "residual", "scale"])
def test_norm_merged_with_what_follows_is_split_off(tail):
    """elementwise_fusion merges a single pointwise consumer into the norm's program: the
    pass keeps that tail as a pointwise layer after the normalization."""
    nodes = _keras_nodes()
    nodes[-1] = N("Add", ["bt", "xg"], ["ln"])
    consts = {"eps": np.array(1e-5, np.float32), "gamma": rand(16, seed=1),
              "beta": rand(16, seed=2), "w": rand(16, 3, seed=3), "k": rand(5, 1, seed=4)}
    feeds = {"x": rand(2, 5, 16, low=-3, high=3)}
    nodes.append({"relu": N("Relu", ["ln"], ["y"]), "residual": N("Add", ["ln", "x"], ["y"]),
                  "scale": N("Mul", ["k", "ln"], ["y"])}[tail])
    nodes.append(N("MatMul", ["y", "w"], ["out"]))
    model = make_model(nodes, feeds, consts, outputs=["out"])
    net = _optimized(model, feeds)
    assert [(l.kind, len(l.attrs.get("program", ()))) for l in net.layers] == [
        ("normalization", 0), ("pointwise", 1), ("matmul", 0)]
    assert net.layers[1].inputs[0] == net.layers[0].outputs[0]
    check_model(model, feeds, rtol=1e-5)


def _variant(name):
    """Layer norms written differently: (nodes, consts, feeds, axes)."""
    x = rand(2, 5, 16, low=-3, high=3)
    g, b = rand(16, low=0.5, high=1.5, seed=1), rand(16, seed=2)
    eps = {"eps": np.array(1e-5, np.float32)}
    mean = N("ReduceMean", ["x"], ["m"], axes=[-1], keepdims=1)
    var = N("ReduceMean", ["sq"], ["v"], axes=[-1], keepdims=1)
    if name == "pow_rsqrt":  # (x - m) * pow(v + eps, -0.5) * gamma + beta, x - m twice
        nodes = [mean, N("Sub", ["x", "m"], ["d1"]), N("Pow", ["d1", "two"], ["sq"]), var,
                 N("Add", ["eps", "v"], ["ve"]), N("Pow", ["ve", "mhalf"], ["rs"]),
                 N("Sub", ["x", "m"], ["d2"]), N("Mul", ["d2", "rs"], ["n"]),
                 N("Mul", ["n", "gamma"], ["ng"]), N("Add", ["ng", "beta"], ["y"])]
        consts = dict(eps, two=np.array(2, np.float32), mhalf=np.array(-0.5, np.float32),
                      gamma=g, beta=b)
    elif name == "torch_shared_diff":  # d = x - m feeds both the variance and the output
        nodes = [mean, N("Sub", ["x", "m"], ["d"]), N("Pow", ["d", "two"], ["sq"]), var,
                 N("Add", ["v", "eps"], ["ve"]), N("Sqrt", ["ve"], ["s"]),
                 N("Div", ["d", "s"], ["n"]), N("Mul", ["n", "gamma"], ["ng"]),
                 N("Add", ["ng", "beta"], ["y"])]
        consts = dict(eps, two=np.array(2, np.float32), gamma=g, beta=b)
    elif name == "gamma_last_no_beta":  # gamma * ((m - x) * -1 / sqrt(v + eps))
        nodes = [mean, N("Sub", ["m", "x"], ["d1"]), N("Mul", ["d1", "d1"], ["sq"]), var,
                 N("Add", ["v", "eps"], ["ve"]), N("Sqrt", ["ve"], ["s"]),
                 N("Sub", ["m", "x"], ["d2"]), N("Neg", ["d2"], ["nd"]),
                 N("Div", ["nd", "s"], ["n"]), N("Mul", ["gamma", "n"], ["y"])]
        consts = dict(eps, gamma=g)
    elif name == "no_affine":  # center=False, scale=False
        nodes = [mean, N("Sub", ["x", "m"], ["d1"]), N("Mul", ["d1", "d1"], ["sq"]), var,
                 N("Add", ["v", "eps"], ["ve"]), N("Sqrt", ["ve"], ["s"]),
                 N("Sub", ["x", "m"], ["d2"]), N("Div", ["d2", "s"], ["y"])]
        consts = dict(eps)
    elif name == "gamma_with_zeros":  # columns where the probe sees nothing
        nodes = _keras_nodes()
        consts = dict(eps, gamma=np.where(np.arange(16) % 3 == 0, 0, g).astype(np.float32),
                      beta=b)
    elif name == "two_axes":  # normalize over [5, 16], per-element gamma/beta
        nodes = _keras_nodes()
        for n in nodes:
            if n.op_type == "ReduceMean":
                n.attribute[0].CopyFrom(helper.make_attribute("axes", [1, 2]))
        consts = dict(eps, gamma=rand(5, 16, low=0.5, high=1.5, seed=3),
                      beta=rand(5, 16, seed=4))
        return nodes, consts, {"x": x}, [1, 2]
    else:
        raise ValueError(name)
    return nodes, consts, {"x": x}, [2]


@pytest.mark.parametrize("name", ["pow_rsqrt", "torch_shared_diff", "gamma_last_no_beta",
                                  "no_affine", "gamma_with_zeros", "two_axes"])
def test_variants_are_recognised(name):
    nodes, consts, feeds, axes = _variant(name)
    model = make_model(nodes, feeds, consts)
    engine = _engine_matches_ort(model, feeds)
    assert _kinds(engine.network) == ["normalization"], engine.network.summary()
    layer = engine.network.layers[0]
    assert layer.attrs["axes"] == axes
    assert layer.attrs["epsilon"] == pytest.approx(1e-5, rel=1e-6)
    check_model(model, feeds, "FP16")


def test_float16_graph():
    consts = {"eps": np.array(1e-5, np.float16), "gamma": rand(16, seed=1).astype(np.float16),
              "beta": rand(16, seed=2).astype(np.float16)}
    feeds = {"x": rand(2, 5, 16).astype(np.float16)}
    model = make_model(_keras_nodes(), feeds, consts)
    assert _kinds(_optimized(model, feeds)) == ["normalization"]
    check_model(model, feeds, rtol=2e-3, atol=2e-3)


def _negative(name):
    nodes = _keras_nodes()
    consts = {"eps": np.array(1e-5, np.float32), "gamma": rand(16, seed=1),
              "beta": rand(16, seed=2)}
    outputs = ["y"]
    feeds = {"x": rand(2, 5, 16, low=-3, high=3)}

    def replace(out, node):
        k = next(i for i, n in enumerate(nodes) if n.output[0] == out)
        nodes[k] = node

    if name == "mean_is_an_output":
        outputs = ["y", "m"]
    elif name == "variance_used_elsewhere":
        nodes.append(N("Exp", ["v"], ["ev"]))
        outputs = ["y", "ev"]
    elif name == "abs_not_square":
        replace("sq", N("Abs", ["d"], ["sq"]))
    elif name == "no_sqrt":  # (x - m) / (v + eps)
        replace("s", N("Identity", ["ve"], ["s"]))
    elif name == "eps_zero":
        consts["eps"] = np.array(0.0, np.float32)
    elif name == "gamma_along_other_axis":
        consts["gamma"] = rand(5, 1, seed=1)
    elif name == "non_trailing_axis":  # statistics over axis 1 of [2, 5, 16]
        for n in nodes:
            if n.op_type == "ReduceMean":
                n.attribute[0].CopyFrom(helper.make_attribute("axes", [1]))
        consts["gamma"], consts["beta"] = rand(5, 1, seed=1), rand(5, 1, seed=2)
    elif name == "not_a_mean":
        nodes[3] = N("ReduceSum", ["sq", "axes"], ["v"], keepdims=1)
        consts["axes"] = np.array([-1], np.int64)
    else:
        raise ValueError(name)
    return make_model(nodes, feeds, consts, outputs=outputs), feeds


@pytest.mark.parametrize("name", ["mean_is_an_output", "variance_used_elsewhere",
                                  "abs_not_square", "no_sqrt", "eps_zero",
                                  "gamma_along_other_axis", "non_trailing_axis", "not_a_mean"])
def test_look_alikes_are_left_alone(name):
    model, feeds = _negative(name)
    fused = _optimized(model, feeds)
    assert "normalization" not in _kinds(fused)
    assert _kinds(fused).count("reduce") == 2
    assert fused.summary() == _optimized(model, feeds, WITHOUT).summary()
    check_model(model, feeds, rtol=1e-5)


def test_two_layernorms_in_a_row_with_fp16():
    nodes = _keras_nodes()
    ren = {"x": "y", "m": "m2", "d": "d2", "sq": "sq2", "v": "v2", "ve": "ve2", "s": "s2",
           "rs": "rs2", "gr": "gr2", "nm": "nm2", "t": "t2", "bt": "bt2", "xg": "xg2",
           "y": "z", "gamma": "gamma2", "beta": "beta2"}
    for n in _keras_nodes():
        nodes.append(N(n.op_type, [ren.get(i, i) for i in n.input],
                       [ren.get(o, o) for o in n.output], **{a.name: helper.get_attribute_value(a)
                                                             for a in n.attribute}))
    feeds = {"x": rand(4, 32, low=-3, high=3)}
    consts = {"eps": np.array(1e-6, np.float32), "gamma": rand(32, seed=1),
              "beta": rand(32, seed=2), "gamma2": rand(32, seed=3), "beta2": rand(32, seed=4)}
    model = make_model(nodes, feeds, consts, outputs=["y", "z"])
    assert _kinds(_optimized(model, feeds)) == ["normalization", "normalization"]
    check_model(model, feeds, rtol=1e-5)
    got = run_engine(model, feeds, "FP16")
    want = run_ort(model, feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-2, atol=2e-2)


def test_keras_dense_layernorm_dense_through_the_converter(tmp_path):
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    from tests.integration import models
    from tftrt import trt_convert as trt
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 16))
    h = keras.layers.Dense(16)(inp)
    h = keras.layers.LayerNormalization(epsilon=1e-3, gamma_initializer="random_normal",
                                        beta_initializer="random_normal")(h)
    path = models.save_keras(keras.Model(inp, keras.layers.Dense(4)(h)), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path)
    fn = conv.convert()
    x = models.batch((2, 5, 16))
    arg = {next(iter(fn.structured_input_signature[1])): tf.constant(x)}
    ref = tf.saved_model.load(path).signatures["serving_default"](**arg)
    got = fn(**arg)
    for k in ref:
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), rtol=1e-4, atol=1e-5)
    engines = [e for op in conv.engine_ops.values() for _, e in op.cache.items()]
    assert engines and all(op.stats["engine"] == 1 and op.stats["native"] == 0
                           for op in conv.engine_ops.values())
    kinds = [l.kind for e in engines for l in e.network.layers]
    assert kinds.count("normalization") == 1 and "reduce" not in kinds, kinds
