"""Shuffle folding and vertical fusion sweep the network: the number of producer / consumer
maps they make does not grow with the model's depth. Before 2026-12-04 each rewrite started
the pass again from the first layer with new maps (a 48-block Keras transformer spent 11.8 s
of a 17.8 s build in the two passes; scaling hunt); the results are the same networks (the
old and new passes gave equal networks on the ~7,000 the test suite builds)."""

import numpy as np
import pytest
from onnx import helper

from tests.engine.harness import check_model, make_model, rand
from tftrt.engine import network_from_onnx
from tftrt.engine.network import Network
from tftrt.engine.passes import run_passes
from tftrt.engine.passes.shuffle_folding import shuffle_folding
from tftrt.engine.passes.vertical_fusion import vertical_fusion
from tftrt.engine.shapes import bind_inputs, infer_shapes

N = helper.make_node
W = 6


def dense_blocks(blocks: int):
    """``blocks`` Keras Dense layers on a [2, 3, W] sequence, each reshape -> matmul ->
    reshape -> bias -> relu -> residual add, then a TF-style NHWC conv (transposes around an
    NCHW Conv) -> batch norm (mul, add) -> relu per block on the result seen as an image."""
    nodes, consts, x = [], {"s2": np.array([-1, W], np.int64),
                            "s3": np.array([2, 3, W], np.int64),
                            "s4": np.array([2, 3, 1, W], np.int64)}, "x"
    for k in range(blocks):
        p = f"b{k}_"
        nodes += [N("Reshape", [x, "s2"], [p + "x2"]),
                  N("MatMul", [p + "x2", p + "w"], [p + "m"]),
                  N("Reshape", [p + "m", "s3"], [p + "m3"]),
                  N("Add", [p + "m3", p + "b"], [p + "mb"]),
                  N("Relu", [p + "mb"], [p + "a"]), N("Add", [p + "a", x], [p + "y"])]
        consts[p + "w"] = rand(W, W, seed=2 * k + 1) * 0.4
        consts[p + "b"] = rand(W, seed=2 * k + 2)
        x = p + "y"
    nodes.append(N("Reshape", [x, "s4"], ["img"]))
    x = "img"
    for k in range(blocks):
        p = f"c{k}_"
        nodes += [N("Transpose", [x], [p + "nchw"], perm=[0, 3, 1, 2]),
                  N("Conv", [p + "nchw", p + "w"], [p + "c"], pads=[0, 0, 0, 0]),
                  N("Transpose", [p + "c"], [p + "nhwc"], perm=[0, 2, 3, 1]),
                  N("Mul", [p + "nhwc", p + "s"], [p + "bm"]),
                  N("Add", [p + "bm", p + "t"], [p + "bn"]), N("Relu", [p + "bn"], [p + "y"])]
        consts[p + "w"] = rand(W, W, 1, 1, seed=3 * k + 7) * 0.4
        consts[p + "s"] = rand(W, low=0.5, high=1.5, seed=3 * k + 8)
        consts[p + "t"] = rand(W, seed=3 * k + 9)
        x = p + "y"
    nodes.append(N("Identity", [x], ["y"]))
    feeds = {"x": rand(2, 3, W)}
    return make_model(nodes, feeds, consts, outputs=["y"]), feeds


def _maps_made(monkeypatch, fn, net):
    """(result of fn(net), how many producer and consumer maps it made)."""
    calls = []
    for name in ("producers", "consumers"):
        real = getattr(Network, name)
        monkeypatch.setattr(Network, name,
                            lambda self, _r=real: calls.append(1) or _r(self))
    out = fn(net)
    monkeypatch.undo()
    return out, len(calls)


@pytest.mark.parametrize("pass_fn", [shuffle_folding, vertical_fusion])
def test_maps_made_do_not_grow_with_depth(pass_fn, monkeypatch):
    made = {}
    for blocks in (4, 32):
        model, feeds = dense_blocks(blocks)
        net = infer_shapes(bind_inputs(network_from_onnx(model), {"x": feeds["x"].shape}))
        if pass_fn is vertical_fusion:
            net = infer_shapes(shuffle_folding(net))
        _, made[blocks] = _maps_made(monkeypatch, pass_fn, net)
    # one sweep per rule per round and a few rounds, whatever the depth (it was one round
    # per rewrite: hundreds at 32 blocks)
    assert made[32] <= made[4] + 2 and made[32] < 100, made


def test_deep_dense_and_conv_blocks_fuse_whole_and_match():
    model, feeds = dense_blocks(32)
    net = run_passes(bind_inputs(network_from_onnx(model), {"x": feeds["x"].shape}))
    kinds = [l.kind for l in net.layers]
    # every block one layer with its whole epilogue: no transpose or reshape survives but
    # the one between the two halves
    assert kinds.count("matmul") == 32 and kinds.count("conv") == 32, kinds
    assert kinds.count("transpose") == 0 and kinds.count("pointwise") == 0, kinds
    assert {l.epilogue_summary() for l in net.layers if l.kind == "matmul"} == {"bias+relu+add"}
    assert {l.epilogue_summary() for l in net.layers if l.kind == "conv"} == {"bias+relu"}
    check_model(model, feeds)
