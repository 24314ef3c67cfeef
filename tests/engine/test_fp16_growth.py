"""The FP16 rule that keeps growing values (squares, powers, exponentials) in float32 where a
reduction reads them (tftrt/engine/precision.py ``_variance_terms``), on hand-made networks:
what counts as a square, and that the walk stays linear in the network's size."""

import numpy as np

from tftrt.engine import precision as P
from tftrt.engine.network import Network


def _pw(net, inputs, out, program):
    net.add_layer("pointwise", inputs, [out], {"program": program})
    net.tensors[out].dtype, net.tensors[out].shape = "float32", (4,)


def _step(op, *args):
    return {"op": op, "args": list(args), "dtype": "float32"}


def _net(n_inputs=2):
    net = Network("n")
    for i in range(n_inputs):
        net.add_tensor(f"x{i}", "float32", [4])
    net.inputs = [f"x{i}" for i in range(n_inputs)]
    return net


def _reduced(net, t):
    net.add_layer("reduce", [t], ["out"], {"op": "sum", "axes": [0], "keepdims": 0})
    net.outputs = ["out"]
    return P._variance_terms(net)


def test_a_square_of_a_difference_scaled_by_a_weight_is_kept():
    net = _net()
    w = net.add_weight([0.5, 1.0, 1.5, 2.0], "w")
    _pw(net, ["x0", "x1", w], "d2", [_step("sub", "$0", "$1"), _step("mul", "%0", "$2"),
                                     _step("mul", "%1", "%0")])          # (x0 - x1) * w * d
    assert _reduced(net, "d2") == {"d2"}


def test_a_product_of_two_different_tensors_is_not_a_square():
    net = _net()
    _pw(net, ["x0", "x1"], "p", [_step("mul", "$0", "$1")])
    assert _reduced(net, "p") == set()


def test_a_bounded_program_is_not_kept_but_a_separate_bounding_layer_keeps_the_square():
    net = _net(1)
    _pw(net, ["x0"], "g", [_step("mul", "$0", "$0"), _step("tanh", "%0"),
                           _step("mul", "%1", "$0")])                   # x * tanh(x * x)
    assert _reduced(net, "g") == set()
    net = _net(1)
    _pw(net, ["x0"], "sq", [_step("mul", "$0", "$0")])
    _pw(net, ["sq"], "r", [_step("sqrt", "$0")])                       # sqrt(inf) is inf
    net.outputs = ["r"]
    assert P._variance_terms(net) == {"sq"}


def test_the_walk_is_linear_in_a_chain_of_two_input_layers(monkeypatch):
    """Each layer adds the two before it: the affine bases come from one pass in layer
    order, where following every path back made 2^8 program walks per layer (2.2 s for 400
    layers)."""
    net = _net()
    n = 300
    names = ["x0", "x1"]
    for i in range(n):
        names.append(f"t{i}")
        _pw(net, names[-3:-1], names[-1], [_step("add", "$0", "$1"), _step("mul", "%0", 0.5)])
    _pw(net, [names[-1], names[-1]], "sq", [_step("mul", "$0", "$1")])
    calls = []
    real = P._program_values

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(P, "_program_values", counted)
    assert _reduced(net, "sq") == {"sq"}
    assert len(calls) <= 4 * (n + 2), len(calls)


def test_a_long_affine_chain_is_followed_to_its_start_whatever_else_is_walked():
    """m = c10 * x1 with c10 ten separate affine layers of x1 is a square; an unrelated
    square read beside c10 made a depth-limited, memoized walk answer c2 for c10 first and
    m was no longer kept (review, 2026-12-02)."""
    for with_sq in (False, True):
        net = _net()
        if with_sq:
            _pw(net, ["x0"], "sq", [_step("mul", "$0", "$0")])
        prev = "x1"
        for i in range(1, 11):
            _pw(net, [prev], f"c{i}", [_step("mul", "$0", 1.01), _step("add", "%0", 0.1)])
            prev = f"c{i}"
        if with_sq:
            _pw(net, ["sq", "c10"], "r", [_step("add", "$0", "$1")])
            net.add_layer("reduce", ["r"], ["o1"], {"op": "sum", "axes": [0], "keepdims": 0})
        _pw(net, ["c10", "x1"], "m", [_step("mul", "$0", "$1")])
        assert "m" in _reduced(net, "m"), with_sq


def test_two_squares_meeting_keep_both_paths():
    """mean(sq(x)[1:] + sq(0.5 x + 1)[:-1]): the second walk reached the add the first had
    kept and stopped there, leaving its square float16 (review, 2026-12-02)."""
    net = _net(1)
    _pw(net, ["x0"], "sq0", [_step("mul", "$0", "$0")])
    _pw(net, ["x0"], "h", [_step("mul", "$0", 0.5), _step("add", "%0", 1.0)])
    _pw(net, ["h", "h"], "sq1", [_step("mul", "$0", "$1")])
    net.add_layer("slice", ["sq0"], ["a"], {})
    net.add_layer("slice", ["sq1"], ["b"], {})
    _pw(net, ["a", "b"], "s", [_step("add", "$0", "$1")])
    assert _reduced(net, "s") >= {"sq0", "sq1", "a", "b", "s"}


def test_a_saturating_reader_needs_no_float32_square():
    """tanh(sq) of a float16 inf is 1, as of the true value: the square stays float16 when
    nothing else needs it; sqrt(inf) is inf, so a sqrt reader keeps it float32."""
    for op, kept in (("tanh", set()), ("sigmoid", set()), ("sqrt", {"sq"}), ("log", {"sq"})):
        net = _net(1)
        _pw(net, ["x0"], "sq", [_step("mul", "$0", "$0")])
        _pw(net, ["sq"], "r", [_step(op, "$0")])
        net.outputs = ["r"]
        assert P._variance_terms(net) == kept, op


def _typed(net, name, dtype):
    net.add_tensor(name, dtype, [4])
    net.inputs.append(name)
    return name


def test_values_from_wide_run_time_integers_stay_float32():
    """A cast of int32 positions, a gather by a run-time index from a float32 table, and the
    layers computed only from those keep float32 (FP16 hunt, 2026-12-02); a cast of uint8
    pixels (exact in float16) and a weight broadcast alone do not."""
    net = Network("n")
    net.inputs = []
    pos, img, idx = _typed(net, "pos", "int32"), _typed(net, "img", "uint8"), \
        _typed(net, "t", "int64")
    table = net.add_weight(np.linspace(0.9, 0.99, 8).astype(np.float32), "abar")
    cls = net.add_weight(np.ones((1, 4), np.float32), "cls")
    inv = net.add_weight(np.full(4, 0.01, np.float32), "inv")
    _pw(net, [pos], "posf", [_step("cast", "$0")])
    _pw(net, ["posf", inv], "angle", [_step("mul", "$0", "$1")])
    _pw(net, ["angle"], "sin", [_step("sin", "$0")])
    _pw(net, [img], "imgf", [_step("cast", "$0")])
    net.add_layer("gather", [table, idx], ["ab"], {"axis": 0})
    net.tensors["ab"].dtype = "float32"
    net.add_layer("expand", [cls], ["clsb"], {})
    net.tensors["clsb"].dtype = "float32"
    emb = net.add_weight(np.ones((8, 4), np.float32), "embeddings")
    net.add_layer("gather", [emb, idx], ["tok"], {"axis": 0})        # token embeddings: fp16
    net.tensors["tok"].dtype = "float32"
    freq = net.add_weight(np.full((1, 4), 0.01, np.float32), "freq")
    net.add_layer("matmul", ["posf", freq], ["rope"], {})             # RoPE's outer product
    net.tensors["rope"].dtype = "float32"
    net.add_layer("matmul", ["imgf", freq], ["pix"], {})              # of an exact uint8 cast
    net.tensors["pix"].dtype = "float32"
    assert P._float32_sources(net) == {"posf", "angle", "sin", "ab", "rope"}


def test_a_move_of_a_reduction_keeps_its_float32_output():
    """x / expand_dims(reduce_sum(x, 1)): the sum (FP32, a float32 output) of 2,000 values
    of ~50 is ~1e5; the move after it stored it as float16 -- inf -- and every answer was 0
    (a keepdims sum, with no move, was exact; FP16 hunt, s48). A move of a reduction's
    float32 output stays FP32; one of a network input stays FP16."""
    from onnx import helper

    from tests.engine.harness import make_model
    from tftrt.engine import BuilderConfig, build_engine
    N = helper.make_node
    nodes = [N("ReduceSum", ["x", "axes"], ["s"], keepdims=0),
             N("Unsqueeze", ["s", "axes"], ["u"]), N("Div", ["x", "u"], ["y"]),
             N("Transpose", ["x"], ["t"], perm=[1, 0])]
    x = (40 + 20 * np.random.RandomState(0).rand(2, 2000)).astype(np.float32)
    model = make_model(nodes, {"x": x}, {"axes": np.array([1], np.int64)}, outputs=["y", "t"])
    engine = build_engine(model, {"x": x.shape}, BuilderConfig(backend="numpy",
                                                               precision="FP16",
                                                               tactic_timing=False))
    net = engine.network
    reduce = [l for l in net.layers if l.kind == "reduce"]
    readers = [l for l in net.layers if l.kind in P._MOVES and
               set(l.inputs) & {o for r in reduce for o in r.outputs}]
    assert readers and all(l.precision == "FP32" for l in readers), \
        [(l.kind, l.precision) for l in net.layers]
    assert [l.precision for l in net.layers if l.kind == "transpose" and
            l.inputs == ["x"]] == ["FP16"]
    y = np.asarray(engine.execute([x])[0], np.float64)
    want = x / x.sum(axis=1, keepdims=True, dtype=np.float64)
    assert np.abs(y - want).max() <= 1e-2 * np.abs(want).max(), np.abs(y - want).max()
