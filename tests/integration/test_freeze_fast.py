"""graph_io freezes without TF's ConcreteFunction wrap and lets Grappler see large weights as
shapes only (graph_io.freeze, stub_weights): the cleaned graph is the one TF's freezing and
Grappler make with the weights in it, up to the names of constants (VGG16: 73 s -> 4 s)."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.framework import convert_to_constants

from tftrt import graph_io, trt_convert as trt


def keras_model(seed=0):
    """Big enough weights (>= 64 KB) in every place the stub rule looks at: a convolution
    read by BiasAdd + ReLU (stubbed), one whose output a batch norm scales (kept: Grappler
    folds the scale into its filter), a dense kernel (stubbed), a small one (kept)."""
    import keras
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inp = keras.Input((16, 16, 8), name="x")
    x = L.Conv2D(96, 5, padding="same", activation="relu", name="plain")(inp)  # 76.8 KB
    x = L.Conv2D(64, 3, padding="same", use_bias=False, name="scaled")(x)      # 221 KB
    x = L.BatchNormalization(name="bn")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(300, activation="relu", name="fc")(x)                          # 76.8 KB
    out = L.Dense(10, name="logits")(x)                                        # 12 KB
    model = keras.Model(inp, out)
    from tftrt.zoo import randomize_batchnorm
    return randomize_batchnorm(model, seed)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("freeze") / "m")
    keras_model().export(d, verbose=False)
    return d


def tf_way(func):
    """What graph_io did before: TF's freezing, its ConcreteFunction, Grappler with the
    weights in the graph."""
    frozen = convert_to_constants.convert_variables_to_constants_v2(func)
    gd = graph_io.inline_function_calls(frozen.graph.as_graph_def(),
                                        [t.name for t in frozen.outputs])
    for n in gd.node:
        n.device = ""
    fetches = [t.name for t in frozen.inputs + frozen.outputs]
    return frozen, graph_io._run_grappler(gd, frozen.graph, fetches,
                                          graph_io.GRAPPLER_OPTIMIZERS)


def same_up_to_constant_names(a, b):
    """Node for node: same ops, attributes and inputs, where an input may name another
    constant of the same value."""
    na, nb = {n.name: n for n in a.node}, {n.name: n for n in b.node}
    consts = [n for n in a.node if n.op == "Const"]
    assert len(a.node) == len(b.node)
    assert sorted(n.op for n in a.node) == sorted(n.op for n in b.node)

    def value(n):
        return n.attr["value"].tensor.SerializeToString(deterministic=True)
    for name, n in na.items():
        if n.op == "Const":
            continue
        m = nb[name]
        assert m.op == n.op and dict(m.attr) == dict(n.attr) and len(m.input) == len(n.input)
        for x, y in zip(n.input, m.input):
            if x != y:
                assert value(na[x.split(":")[0]]) == value(nb[y.split(":")[0]]), (name, x, y)
    return len(consts)


def test_the_cleaned_graph_is_tfs_up_to_constant_names(saved_dir):
    saved, func = graph_io.load_signature(saved_dir)  # saved keeps the variables alive
    frozen_tf, old = tf_way(func)
    frozen, new = graph_io.freeze_and_clean(func)
    assert [t.name for t in frozen.inputs] == [t.name for t in frozen_tf.inputs]
    assert [t.name for t in frozen.outputs] == [t.name for t in frozen_tf.outputs]
    assert [t.shape.as_list() for t in frozen.inputs] == \
        [t.shape.as_list() for t in frozen_tf.inputs]
    assert same_up_to_constant_names(old, new) > 0
    # the batch norm's scale went into the "scaled" filter in both (Grappler's MulConvPushDown)
    assert not any(n.op == "Mul" for n in new.node)


def test_which_weights_grappler_sees_as_shapes(saved_dir):
    saved, func = graph_io.load_signature(saved_dir)  # saved keeps the variables alive
    gd, frozen = graph_io.freeze(func)
    gd = graph_io.inline_function_calls(
        graph_io.prune_graph(gd, [t.name.split(":")[0] for t in frozen.inputs + frozen.outputs]),
        [t.name for t in frozen.outputs])
    stubbed, stubs = graph_io.stub_weights(gd)
    shapes = sorted(tuple(d.size for d in n.attr["value"].tensor.tensor_shape.dim)
                    for n in stubs.values())
    # the plain conv's filter and the fc kernel; not the scaled conv's, not the small logits
    assert shapes == [(5, 5, 8, 96), (64, 300)]
    for n in stubbed.node:
        if n.name in stubs:
            assert n.op == "Placeholder" and graph_io.STUB_ATTR in n.attr
            assert n.attr["shape"].shape == stubs[n.name].attr["value"].tensor.tensor_shape
    back = graph_pb2.GraphDef()
    back.CopyFrom(stubbed)
    graph_io.restore_weights(back, stubs)
    assert back.SerializeToString(deterministic=True) == gd.SerializeToString(deterministic=True)


def test_control_edges_and_other_readers_of_a_weight():
    """A weight a Mul reads (Grappler may fold it) stays; control edges read no value."""
    big = np.arange(20000, dtype=np.float32).reshape(100, 200)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 100], name="x")
        w1 = tf.constant(big, name="w1")
        w2 = tf.constant(big.T.copy(), name="w2")
        h = tf.matmul(x, w1, name="mm")
        with tf.control_dependencies([w2]):
            y = tf.identity(tf.matmul(h, w2), name="y")
        w3 = tf.constant(big, name="w3")
        tf.multiply(w3, 2.0, name="scaled_weight")
    stubbed, stubs = graph_io.stub_weights(g.as_graph_def())
    assert sorted(stubs) == ["w1", "w2"]
    del y


def test_tfs_public_freezing_when_its_private_api_changed(saved_dir, monkeypatch):
    saved, func = graph_io.load_signature(saved_dir)  # saved keeps the variables alive
    _, fast = graph_io.freeze_and_clean(func)

    monkeypatch.setattr(graph_io, "_private_freeze_api", lambda: None)
    frozen, slow = graph_io.freeze_and_clean(func)
    assert [t.name for t in frozen.outputs] == [t.name for t in func.outputs]
    same_up_to_constant_names(slow, fast)


def test_conversion_answers_as_before(saved_dir, monkeypatch):
    """The converted model with weights stubbed for Grappler answers exactly as with the
    weights in Grappler's graph (numpy backend, FP32)."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    x = tf.constant(np.random.default_rng(0).standard_normal((3, 16, 16, 8)).astype(np.float32))
    native = tf.saved_model.load(saved_dir).signatures["serving_default"]
    ref = list(native(x=x).values())[0].numpy()
    outs = {}
    for stub in (True, False):
        monkeypatch.setattr(graph_io, "STUB_MIN_BYTES", 1 << 16 if stub else 1 << 62)
        conv = trt.TrtGraphConverterV2(input_saved_model_dir=saved_dir, precision_mode="FP32",
                                       minimum_segment_size=2)
        fn = conv.convert()
        outs[stub] = list(fn(x=x).values())[0].numpy()
        assert len(conv.engine_ops) == 1
    np.testing.assert_array_equal(outs[True], outs[False])
    np.testing.assert_allclose(outs[True], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_native_segment_function_is_the_same_byte_for_byte(saved_dir, monkeypatch):
    """Large constants cross TF's importer as dtype and shape only when the native segment's
    FunctionDef is made, and get their values back: the same FunctionDef, name included."""
    from tftrt import rewrite
    from tftrt.segment import segment_graph
    saved, func = graph_io.load_signature(saved_dir)  # saved keeps the variables alive
    sig = graph_io.function_graph(func, saved)
    seg = segment_graph(sig.info, 2)
    assert seg.segments
    for s in seg.segments:
        light = rewrite.native_segment_function_def(sig.info, s)
        monkeypatch.setattr(rewrite, "LIGHT_CONST_BYTES", 1 << 62)  # every value crosses
        heavy = rewrite.native_segment_function_def(sig.info, s)
        monkeypatch.undo()
        assert light.SerializeToString(deterministic=True) == \
            heavy.SerializeToString(deterministic=True)
        big = [n for n in light.node_def if n.op == "Const" and
               n.attr["value"].tensor.ByteSize() >= rewrite.LIGHT_CONST_BYTES]
        assert big and all(n.attr["value"].tensor.tensor_content for n in big)
