"""The FP16 rule that keeps growing values (squares, powers, exponentials) in float32 where a
reduction reads them (tftrt/engine/precision.py ``_variance_terms``), on hand-made networks:
what counts as a square, and that the walk stays linear in the network's size."""

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
    """Each layer adds the two before it: the affine bases are memoized per tensor, where
    following every path made 2^8 program walks per layer (2.2 s for 400 layers)."""
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
