"""Attention fusion: softmax(alpha * q @ k^T) @ v becomes one ``attention`` layer in FP16
engines (reading q, k, v in their [B, S, H, D] layout when they come through head transposes);
FP32 engines and look-alikes that are not attention stay as they are."""

import numpy as np
import pytest
from onnx import helper

from tests.engine.harness import make_model, rand, run_ort
from tests.tolerances import TOLERANCES
from tftrt.engine import BuilderConfig, build_engine, deserialize_engine
from tftrt.engine.backends import numpy_ops
from tftrt.engine.passes.attention_fusion import attention_fusion

N = helper.make_node
I64 = np.int64


def _engine(model, feeds, precision="FP16", **kw):
    return build_engine(model, {k: v.shape for k, v in feeds.items()},
                        BuilderConfig(precision=precision, backend="numpy", **kw))


def _kinds(engine):
    return [l.kind for l in engine.network.layers]


def _matches_ort(engine, model, feeds, precision):
    got = engine.execute([feeds[n] for n in engine.input_names])
    want = run_ort(model, feeds)
    rtol, atol = TOLERANCES[precision]
    for g, w in zip(got, want):  # FP16: errors relative to the output's scale
        scale = float(np.max(np.abs(w))) if precision == "FP16" else 1.0
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=rtol, atol=atol * scale)


def _mha(b=2, s=16, h=4, d=8, sk=None, k_perm=(0, 2, 3, 1), scale_node="Mul",
         extra_outputs=(), softmax_axis=-1, log_softmax=False, mask=False):
    """Keras MultiHeadAttention as the converter lowers it: x [b, s, e] projected to q, k, v
    (MatMul + bias), split into heads ([b, s, h, d] -> transpose -> [b*h, s, d]), scores
    q.k^T * d**-0.5, softmax, .v, heads merged back, output projection. ``sk``: key/value
    length (a second input ``m`` [b, sk, e] feeds k and v)."""
    e = h * d
    sk = sk or s
    feeds = {"x": rand(b, s, e, seed=0)}
    kv = "x"
    if sk != s:
        feeds["m"] = rand(b, sk, e, seed=5)
        kv = "m"
    lim = (3.0 / e) ** 0.5  # unit-variance projections: outputs of order one
    consts = {f"w{n}": rand(e, e, seed=i + 1, low=-lim, high=lim) for i, n in enumerate("qkvo")}
    consts.update({f"b{n}": rand(e, seed=i + 11) for i, n in enumerate("qkv")})
    consts.update({"s4q": np.array([b, s, h, d], I64), "s4k": np.array([b, sk, h, d], I64),
                   "s3q": np.array([b * h, s, d], I64), "s3v": np.array([b * h, sk, d], I64),
                   "s3k": np.array([b * h, d, sk], I64) if k_perm == (0, 2, 3, 1) else
                   np.array([b * h, sk, d], I64),
                   "so4": np.array([b, h, s, d], I64), "sy": np.array([b, s, e], I64),
                   "c": np.array(d ** -0.5, np.float32)})
    nodes = []
    for n, src, s4 in (("q", "x", "s4q"), ("k", kv, "s4k"), ("v", kv, "s4k")):
        perm = list(k_perm) if n == "k" else [0, 2, 1, 3]
        s3 = {"q": "s3q", "k": "s3k", "v": "s3v"}[n]
        nodes += [N("MatMul", [src, f"w{n}"], [f"{n}p"]), N("Add", [f"{n}p", f"b{n}"], [f"{n}b"]),
                  N("Reshape", [f"{n}b", s4], [f"{n}4"]),
                  N("Transpose", [f"{n}4"], [f"{n}t"], perm=perm),
                  N("Reshape", [f"{n}t", s3], [f"{n}3"])]
    nodes.append(N("MatMul", ["q3", "k3"] if k_perm == (0, 2, 3, 1) else ["q3", "k3t"],
                   ["sc"]))
    if k_perm != (0, 2, 3, 1):
        nodes.insert(-1, N("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]))
    pre = "sc"
    if scale_node == "Mul":
        nodes.append(N("Mul", ["sc", "c"], ["scs"]))
        pre = "scs"
    if mask:
        consts["mask"] = np.where(rand(b * h, s, sk, seed=9) > 0.5, 0, -1e4).astype(np.float32)
        nodes.append(N("Add", [pre, "mask"], ["scm"]))
        pre = "scm"
    nodes += [N("LogSoftmax" if log_softmax else "Softmax", [pre], ["p"], axis=softmax_axis),
              N("MatMul", ["p", "v3"], ["o3"]), N("Reshape", ["o3", "so4"], ["o4"]),
              N("Transpose", ["o4"], ["ot"], perm=[0, 2, 1, 3]),
              N("Reshape", ["ot", "sy"], ["om"]), N("MatMul", ["om", "wo"], ["y"])]
    return make_model(nodes, feeds, consts, outputs=("y",) + tuple(extra_outputs)), feeds


@pytest.mark.parametrize("k_perm", [(0, 2, 3, 1), (0, 2, 1, 3)])
@pytest.mark.parametrize("b,s,sk,h,d", [(2, 16, 16, 4, 8), (1, 5, 7, 2, 16), (3, 8, 8, 1, 32)])
def test_keras_attention_becomes_one_layer_reading_bshd(b, s, sk, h, d, k_perm):
    model, feeds = _mha(b, s, h, d, sk, k_perm)
    engine = _engine(model, feeds)
    kinds = _kinds(engine)
    assert kinds.count("attention") == 1 and "softmax" not in kinds, kinds
    assert "transpose" not in kinds, kinds  # q, k, v read in place, y written in place
    assert kinds.count("matmul") == 4, kinds  # q, k, v, output projections
    (att,) = [l for l in engine.network.layers if l.kind == "attention"]
    assert att.attrs["layout"] == "bshd"
    assert att.attrs["scale"] == pytest.approx(d ** -0.5)
    assert engine.network.shape(att.outputs[0]) == (b, s, h, d)
    assert {engine.network.dtype(n) for n in att.inputs + att.outputs} == {"float16"}
    _matches_ort(engine, model, feeds, "FP16")


def test_fp32_engines_keep_the_unfused_attention():
    model, feeds = _mha()
    engine = _engine(model, feeds, "FP32")
    kinds = _kinds(engine)
    assert "attention" not in kinds and kinds.count("softmax") == 1
    _matches_ort(engine, model, feeds, "FP32")


def test_unoptimized_build_does_not_fuse():
    model, feeds = _mha()
    assert "attention" not in _kinds(_engine(model, feeds, optimize=False))


@pytest.mark.parametrize("case", ["log_softmax", "softmax_axis", "mask", "scores_output",
                                  "probs_output"])
def test_look_alikes_are_not_fused(case):
    kw = {"log_softmax": dict(log_softmax=True), "softmax_axis": dict(softmax_axis=1),
          "mask": dict(mask=True), "scores_output": dict(extra_outputs=("sc",)),
          "probs_output": dict(extra_outputs=("p",))}[case]
    model, feeds = _mha(**kw)
    engine = _engine(model, feeds)
    assert "attention" not in _kinds(engine)
    _matches_ort(engine, model, feeds, "FP16")


def _bhsd_model(b, h, s, sk, d, dv, rank4=True):
    """Attention on [b, h, s, d] tensors computed in the network (no head transposes)."""
    feeds = {"q": rand(b, h, s, d, seed=1), "k": rand(b, h, sk, d, seed=2),
             "v": rand(b, h, sk, dv, seed=3)}
    consts = {"one": np.array(1.0, np.float32), "c": np.array(0.3, np.float32)}
    nodes = [N("Mul", [n, "one"], [n + "h"]) for n in "qkv"]  # fp16 copies inside the engine
    src = {n: n + "h" for n in "qkv"}
    if not rank4:
        for n, sh in (("q", (b * h, s, d)), ("k", (b * h, sk, d)), ("v", (b * h, sk, dv))):
            consts["s" + n] = np.array(sh, I64)
            nodes.append(N("Reshape", [n + "h", "s" + n], [n + "3"]))
            src[n] = n + "3"
    perm = [0, 1, 3, 2] if rank4 else [0, 2, 1]
    nodes += [N("Transpose", [src["k"]], ["kt"], perm=perm),
              N("MatMul", [src["q"], "kt"], ["sc"]), N("Mul", ["sc", "c"], ["scs"]),
              N("Softmax", ["scs"], ["p"], axis=-1), N("MatMul", ["p", src["v"]], ["o"]),
              N("Concat", ["o", "o"], ["y"], axis=-1)]  # y is fp32: keep o inside
    return make_model(nodes, feeds, consts), feeds


@pytest.mark.parametrize("rank4", [True, False])
def test_head_major_attention_reads_bhsd(rank4):
    b, h, s, sk, d, dv = 2, 3, 6, 10, 8, 16
    model, feeds = _bhsd_model(b, h, s, sk, d, dv, rank4)
    engine = _engine(model, feeds)
    (att,) = [l for l in engine.network.layers if l.kind == "attention"]
    assert att.attrs["layout"] == "bhsd" and att.attrs["scale"] == pytest.approx(0.3)
    assert engine.network.shape(att.outputs[0]) == ((b, h, s, dv) if rank4 else
                                                    (1, b * h, s, dv))
    _matches_ort(engine, model, feeds, "FP16")


def test_backend_can_veto_the_fused_layer():
    from tftrt.engine import network_from_onnx
    from tftrt.engine.builder import optimize_network
    from tftrt.engine.precision import apply_precision
    from tftrt.engine.shapes import bind_inputs
    model, feeds = _mha()
    net = apply_precision(optimize_network(bind_inputs(network_from_onnx(model), {
        k: v.shape for k, v in feeds.items()})), "FP16")
    asked = []
    vetoed = attention_fusion(net, accept=lambda n, l: asked.append(l.kind) or False)
    assert asked == ["attention"]
    assert [l.kind for l in vetoed.layers] == [l.kind for l in net.layers]
    assert "attention" in [l.kind for l in attention_fusion(net).layers]


def test_plan_round_trip_keeps_the_attention_layer():
    model, feeds = _mha()
    engine = _engine(model, feeds)
    loaded = deserialize_engine(engine.serialize())
    assert _kinds(loaded) == _kinds(engine) and "attention" in _kinds(loaded)
    xs = [feeds[n] for n in engine.input_names]
    np.testing.assert_array_equal(np.asarray(loaded.execute(xs)[0]),
                                  np.asarray(engine.execute(xs)[0]))


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_reference_attention_op(layout):
    """numpy_ops.attention against the formula written out per batch and head."""
    b, h, s, sk, d, dv = 2, 3, 4, 5, 6, 7
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(sh).astype(np.float32) for sh in (
        (b, h, s, d), (b, h, sk, d), (b, h, sk, dv)))
    want = np.zeros((b, h, s, dv))
    for i in range(b):
        for j in range(h):
            sc = q[i, j].astype(np.float64) @ k[i, j].T * 0.7
            p = np.exp(sc - sc.max(-1, keepdims=True))
            want[i, j] = (p / p.sum(-1, keepdims=True)) @ v[i, j]
    sw = (lambda t: t.transpose(0, 2, 1, 3)) if layout == "bshd" else (lambda t: t)
    got = numpy_ops.attention(sw(q), sw(k), sw(v), 0.7, layout)
    np.testing.assert_allclose(got, sw(want), rtol=1e-5, atol=1e-6)


def test_keras_encoder_block_fuses_and_matches_tensorflow():
    """A Keras MultiHeadAttention encoder block through the converter's lowering: one
    attention layer per block in FP16, outputs within FP16 tolerance of TensorFlow."""
    pytest.importorskip("tensorflow")
    from tests.converters.harness import lower, run_engine
    from tftrt import zoo
    model = zoo.encoder(layers=2, hidden=64, heads=4, seq=16, ffn=128, seed=3)
    x = rand(2, 16, 64, seed=4)
    low = lower(lambda t: model(t, training=False), [x], dynamic_batch=True)
    engine = build_engine(low.net.model, {"TensorRTInputPH_0": x.shape},
                          BuilderConfig(precision="FP16", backend="numpy"))
    kinds = _kinds(engine)
    assert kinds.count("attention") == 2 and "softmax" not in kinds, kinds
    assert "transpose" not in kinds, kinds
    got = run_engine(low.net.model, [x], "FP16")[0]
    want = low.tf_outputs[0]
    rtol, atol = TOLERANCES["FP16"]
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol)


def test_keras_masked_attention_fp16_with_fully_masked_queries_matches_tensorflow():
    """Keras masks scores with where(mask, s, -2.4e38): finite in TF's fp32, -inf once an FP16
    engine stores it. A query whose keys are all masked (padding, with query and key masks)
    must still give TF's answer (uniform attention), not NaN."""
    pytest.importorskip("tensorflow")
    import keras
    from tests.converters.harness import lower, run_engine
    keras.utils.set_random_seed(0)
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)
    x = rand(2, 6, 16, seed=1)
    valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    mask = valid[:, :, None] & valid[:, None, :]  # padded queries see no key at all
    mha(x, x, attention_mask=mask)
    low = lower(lambda q, m: mha(q, q, attention_mask=m), [x, mask], dynamic_batch=True)
    want = low.tf_outputs[0]
    got = run_engine(low.net.model, [x, mask], "FP16")[0]
    assert np.isfinite(got).all()
    rtol, atol = TOLERANCES["FP16"]
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol,
                               atol=atol * float(np.max(np.abs(want))))
