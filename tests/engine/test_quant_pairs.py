"""A narrow stride-1 conv run over pixel pairs (``cuda_source_quant.paired_*``, tactic
``q_cudnn_pairs``), checked without a GPU: the pair conv -- the input's bytes read as
[N, H, W / 2, 2 C], the filter of :func:`paired_conv_weight`, the padding of
:func:`paired_pads` -- sums exactly the products of the original conv, output for output,
in integers (INT8's int32 accumulator), for every width, filter and channel count it takes;
and it refuses what it cannot take."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tftrt.engine.backends import cuda_source_quant as S


def _conv(x, w, pads):
    """NHWC x, KRSC w, stride 1: the exact integer sums (int64)."""
    n, h, wd, c = x.shape
    k, r, s, _ = w.shape
    hb, wb, he, we = pads
    xp = np.pad(x.astype(np.int64), [(0, 0), (hb, he), (wb, we), (0, 0)])
    ho, wo = h + hb + he - r + 1, wd + wb + we - s + 1
    y = np.zeros((n, ho, wo, k), np.int64)
    for i in range(r):
        for j in range(s):
            y += np.einsum("nhwc,kc->nhwk", xp[:, i:i + ho, j:j + wo, :],
                           w[:, i, j, :].astype(np.int64))
    return y


def _paired(x, w, pads):
    xp = x.reshape(S.paired_shape(x.shape))  # the same bytes
    yp = _conv(xp, S.paired_conv_weight(w), S.paired_pads(pads))
    n, h, wd, _ = x.shape
    return yp.reshape(n, yp.shape[1], wd, w.shape[0])


@pytest.mark.parametrize("r,s,c,k,h,wd", [
    (3, 3, 64, 64, 6, 8),    # ResNet50's stage-1 3x3 conv, small
    (3, 3, 4, 8, 5, 2),      # one pair column
    (1, 3, 12, 4, 3, 10),
    (3, 5, 8, 16, 4, 6),     # p 2: 3 pair columns, 1 of padding
    (5, 7, 4, 4, 6, 12),     # p 3: 5 pair columns, 2 of padding
    (2, 3, 16, 32, 7, 4),    # an even height of filter, padded unevenly in H
])
def test_the_pair_conv_sums_the_same_products(r, s, c, k, h, wd):
    rng = np.random.RandomState(r * 100 + s * 10 + c)
    x = rng.randint(-127, 128, (2, h, wd, c)).astype(np.int8)
    w = rng.randint(-127, 128, (k, r, s, c)).astype(np.int8)
    p = (s - 1) // 2
    pads = [r // 2, p, (r - 1) // 2, p]
    assert S.pairs_unsupported(x.shape, w.shape, [1, 1], [1, 1], pads, 1) is None
    want = _conv(x, w, pads)
    assert want.shape == (2, h, wd, k)
    np.testing.assert_array_equal(_paired(x, w, pads), want)


def test_the_pair_filter_holds_each_tap_once_per_output_half():
    """Each original tap appears once for each half of an output pair, the rest is zero: for
    S = 3 the pair conv runs 2x the multiply-adds of the two outputs it computes."""
    w = np.arange(1, 1 + 2 * 1 * 3 * 1, dtype=np.int64).reshape(2, 1, 3, 1)
    wp = S.paired_conv_weight(w)
    assert wp.shape == (4, 1, 3, 2)
    assert np.count_nonzero(wp) == 2 * np.count_nonzero(w)
    assert wp.size == 2 * (2 * w.size)  # per pair: 2x two outputs' multiply-adds
    # output half 0 (channel 0) reads the left pair's right column, then its own pair
    np.testing.assert_array_equal(wp[0, 0], [[0, w[0, 0, 0, 0]],
                                             [w[0, 0, 1, 0], w[0, 0, 2, 0]],
                                             [0, 0]])
    # output half 1 (channel K + 0): its own pair, then the right pair's left column
    np.testing.assert_array_equal(wp[2, 0], [[0, 0],
                                             [w[0, 0, 0, 0], w[0, 0, 1, 0]],
                                             [w[0, 0, 2, 0], 0]])


def test_operands_and_shapes_as_pairs():
    y = (2, 56, 56, 64)
    assert S.paired_shape(y) == (2, 56, 28, 128)
    assert S.paired_operand(y, y) == (2, 56, 28, 128)
    assert S.paired_operand((64,), y) == (128,)
    assert S.paired_operand((1, 1, 1, 64), y) == (128,)
    assert S.paired_pads([1, 1, 1, 1]) == [1, 1, 1, 1]
    assert S.paired_pads([0, 3, 2, 3]) == [0, 2, 2, 2]


@pytest.mark.parametrize("x,w,strides,dil,pads,group,why", [
    ((1, 8, 7, 64), (64, 3, 3, 64), [1, 1], [1, 1], [1, 1, 1, 1], 1, "odd width"),
    ((1, 8, 8, 64), (64, 3, 3, 64), [1, 2], [1, 1], [1, 1, 1, 1], 1, "strided"),
    ((1, 8, 8, 64), (64, 3, 3, 64), [1, 1], [2, 1], [1, 1, 1, 1], 1, "dilated"),
    ((1, 8, 8, 64), (64, 1, 1, 64), [1, 1], [1, 1], [0, 0, 0, 0], 1, "1 wide"),
    ((1, 8, 8, 64), (64, 3, 2, 64), [1, 1], [1, 1], [1, 0, 1, 1], 1, "2 wide"),
    ((1, 8, 8, 64), (64, 3, 3, 64), [1, 1], [1, 1], [1, 0, 1, 0], 1, "padding"),
    ((1, 8, 8, 64), (64, 3, 3, 64), [1, 1], [1, 1], [1, 1, 1, 2], 1, "padding"),
    ((1, 8, 8, 128), (64, 3, 3, 128), [1, 1], [1, 1], [1, 1, 1, 1], 1, "128 -> 64"),
    ((1, 8, 8, 64), (128, 3, 3, 64), [1, 1], [1, 1], [1, 1, 1, 1], 1, "64 -> 128"),
    ((1, 8, 8, 64), (64, 3, 3, 32), [1, 1], [1, 1], [1, 1, 1, 1], 2, "grouped"),
    ((1, 8, 64), (64, 3, 64), [1], [1], [1, 1], 1, "2-D"),
])
def test_what_pairs_refuse(x, w, strides, dil, pads, group, why):
    assert why in S.pairs_unsupported(x, w, strides, dil, pads, group)


def test_which_quantized_conv_layers_pairs_take(monkeypatch):
    """The layer-level check (``pairs_layer_reason``): a quantized stride-1 3x3 conv of at most
    64 channels over an even width, its per-channel operands (dequantization scale, bias)
    constants and a residual of the output's shape; not a float conv, a strided one, or one
    whose per-channel operand is computed at run time. The switch decides what a build
    offers (on by default, 0 takes it away), not what a built plan runs."""
    from tests.engine.test_qmma_codegen import _conv_net
    from tftrt.engine.tactics import _REGISTRY
    importlib.import_module("tftrt.engine.backends.cupy_backend")  # registers the tactics
    assert "q_cudnn_pairs" in [t.name for t in _REGISTRY[("cupy", "conv")]]
    monkeypatch.delenv("TFTRT_QUANT_CUDNN_PAIRS", raising=False)
    assert S.pairs_enabled()
    monkeypatch.setenv("TFTRT_QUANT_CUDNN_PAIRS", "0")
    assert not S.pairs_enabled()
    monkeypatch.setenv("TFTRT_QUANT_CUDNN_PAIRS", "1")
    assert S.pairs_enabled()
    for precision in ("INT8", "FP8"):
        for residual in (False, True):
            net = _conv_net((2, 6, 8, 64), 3, 3, 40, (1, 1), (1, 1, 1, 1), precision,
                            residual=residual)
            (layer,) = net.layers
            assert [e["op"] for e in layer.epilogue][:2] == ["scale", "bias"], layer.epilogue
            assert S.pairs_layer_reason(net, layer) is None
    net = _conv_net((2, 6, 8, 64), 3, 3, 40, (2, 2), (1, 1, 1, 1), "INT8")
    assert "strided" in S.pairs_layer_reason(net, net.layers[0])
    net = _conv_net((2, 6, 7, 64), 3, 3, 40, (1, 1), (1, 1, 1, 1), "INT8")
    assert "odd width" in S.pairs_layer_reason(net, net.layers[0])
    net = _conv_net((2, 6, 8, 64), 3, 3, 40, (1, 1), (1, 1, 1, 1), "FP16")
    assert S.pairs_layer_reason(net, net.layers[0]) == "not a quantized conv"
    net = _conv_net((2, 6, 8, 64), 3, 3, 40, (1, 1), (1, 1, 1, 1), "INT8")
    (layer,) = net.layers
    bias = layer.inputs[layer.epilogue[1]["input"]]
    del net.weights[bias]  # as if an earlier layer computed it
    assert "computed at run time" in S.pairs_layer_reason(net, layer)
    net = _conv_net((2, 6, 8, 64), 3, 3, 40, (1, 1), (1, 1, 1, 1), "INT8")
    net.tensors["x"].shape = (None, 6, 8, 64)
    assert S.pairs_layer_reason(net, net.layers[0]) == "a dynamic shape"


_PLUMBING = r'''
import json, sys, unittest.mock as um
import numpy as np

class Arr:  # what the layer reads of a device array: its pointer, its values, its shape
    def __init__(self, a):
        self.a = np.asarray(a)
        self.shape, self.dtype, self.nbytes = self.a.shape, self.a.dtype, self.a.nbytes
        self.data = um.Mock(ptr=id(self))

cp = um.MagicMock()
cp.asarray = Arr
sys.modules["cupy"] = cp
from tests.engine.test_qmma_codegen import _conv_net
from tftrt.engine.backends import cuda_source_quant as S
from tftrt.engine.backends import cupy_quant as QK

class FakeConv:  # the cuDNN graph: the spec it was given, the pointers it ran with
    workspace, index = 0, 0
    def __init__(self, spec, variant):
        self.spec, self.variant, self.runs = spec, variant, []
        self.out_dtype = "int8"
    def run(self, x, w, y, ops, ws, stream, index=None):
        self.runs.append(ops)
    def choice(self):
        return {"variant": self.variant, "engine": 4}

QK.cudnn_module = lambda: object()
QK._stream_ptr = lambda: 0
QK.QuantConvCudnn._build = lambda self, spec, rec: FakeConv(spec, "fused_int8")
out = {}
for cls in (QK.QuantConvCudnn, QK.QuantConvCudnnPairs):
    net = _conv_net((2, 6, 8, 64), 3, 3, 40, (1, 1), (1, 1, 1, 1), "INT8", residual=True)
    (layer,) = net.layers
    layer.tactic = "q_cudnn_pairs"
    impl = cls(net, layer, {}, {})
    s = impl.conv.spec
    vec = sorted(i for i, (m, _) in impl.modes.items() if m == "vec")
    ins = [Arr(np.zeros(net.tensors[n].shape)) if n in net.tensors else None
           for n in layer.inputs]
    impl.fused = True  # run() as a fused variant does
    impl.quant = None
    impl.run(ins, [Arr(np.zeros(impl.y_shape))], Arr(np.zeros(64, np.uint8)))
    ptrs = impl.conv.runs[-1]
    out[cls.__name__] = {
        "x": s.x_shape, "w": s.w_shape, "y": s.y_shape, "pads": s.pads_b + s.pads_e,
        "operands": {str(i): list(v[0]) for i, v in s.operands.items()},
        "w_equal": bool(np.array_equal(impl.w.a, S.paired_conv_weight(
            S.conv_weight(net.weights[layer.inputs[1]], 64))) if cls.pairs else
            np.array_equal(impl.w.a, net.weights[layer.inputs[1]])),
        "tiled": {str(i): bool(np.array_equal(impl.tiled[i].a, np.tile(
            np.asarray(net.weights[layer.inputs[i]]).reshape(-1), 2))) for i in impl.tiled},
        "vec": vec,
        "vec_ptrs_tiled": [ptrs[i] == id(impl.tiled[i]) for i in vec if i in impl.tiled],
        "full_ptr": ptrs[3] == id(ins[3]),
        "pairs_rec": impl.record().get("pairs"), "kernel": impl.record()["kernel"]}
print(json.dumps(out))
'''


def test_the_pair_tactic_gives_cudnn_the_pair_conv():
    """QuantConvCudnnPairs (CuPy mocked, cuDNN's graph faked to capture what it is given):
    the graph's x / w / y are the pair conv's, its padding the pairs', the per-channel
    operands twice as long and tiled from the layer's constants, a residual as pairs; a
    fused run passes the tiled vectors and the residual as it is; the record says pairs.
    The plain q_cudnn layer is unchanged. (A subprocess: the mocked CuPy stays there.)"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-c", _PLUMBING], capture_output=True, text=True,
                         cwd=root, timeout=300, env=dict(os.environ, PYTHONPATH=root))
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    plain, pairs = got["QuantConvCudnn"], got["QuantConvCudnnPairs"]
    assert (plain["x"], plain["w"], plain["y"]) == ([2, 6, 8, 64], [40, 3, 3, 64], [2, 6, 8, 40])
    assert plain["pads"] == [1, 1, 1, 1] and plain["w_equal"] and plain["tiled"] == {}
    assert plain["operands"]["3"] == [2, 6, 8, 40] and not plain["pairs_rec"]
    assert (pairs["x"], pairs["w"], pairs["y"]) == ([2, 6, 4, 128], [80, 3, 3, 128],
                                                    [2, 6, 4, 80])
    assert pairs["pads"] == [1, 1, 1, 1] and pairs["w_equal"]
    assert pairs["vec"] and set(pairs["tiled"]) == {str(i) for i in pairs["vec"]}
    assert all(pairs["tiled"].values()) and all(pairs["vec_ptrs_tiled"])
    assert len(pairs["vec_ptrs_tiled"]) == len(pairs["vec"])
    assert all(pairs["operands"][str(i)] == [80] for i in pairs["vec"])
    assert pairs["operands"]["3"] == [2, 6, 4, 80] and pairs["full_ptr"]
    assert pairs["pairs_rec"] is True and "over pixel pairs" in pairs["kernel"]
