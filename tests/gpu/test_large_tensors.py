"""Tensors past 2**31 elements on the CuPy backend: the rows of a batch that lie past that
offset give the answers of the same layers run on those rows alone.

EfficientNetB7 at 600 px and batch 128 gave a relative error of 0.69 against TensorFlow
(H200, 2026-12-02, zoo run t) while batches 1 and 8 were within 1.4e-2: its block 2a expands
32 to 192 channels at 300x300, 128 x 300 x 300 x 192 = 2.2e9 elements, the only tensor of
the model past 2**31 (B6 at 528 px, 1.7e9, was right). Each test builds one of those layers
(FP16, tactics timed as a zoo build times them) at batch 128 and at batch 2, and compares
the last two rows and the first two of the batch-128 engine with the batch-2 engine on them.

On the GPU machine: ``python -m pytest tests/gpu/test_large_tensors.py -q -s`` (~20 GB of
GPU memory).
"""

import os

os.environ.setdefault("TFTRT_CUDNN_CANDIDATES", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from onnx import helper  # noqa: E402

from tests.engine.harness import make_model  # noqa: E402
from tftrt.engine import BuilderConfig, build_engine  # noqa: E402

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

N = helper.make_node
HW, CIN, CMID = 300, 32, 192  # EfficientNetB7's block 2a at 600 px


@pytest.fixture(autouse=True)
def _cupy(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")


def _consts(seed=0):
    r = np.random.default_rng(seed)
    return {"w1": (r.standard_normal((CMID, CIN, 1, 1)) / np.sqrt(CIN)).astype(np.float32),
            "b1": r.standard_normal(CMID).astype(np.float32) * 0.1,
            "w2": (r.standard_normal((CMID, 1, 3, 3)) / 3.0).astype(np.float32),
            "b2": r.standard_normal(CMID).astype(np.float32) * 0.1,
            "pads": np.array([0, 0, 0, 0, 0, 1, 1, 0], np.int64)}


def _swish(x, y):
    return [N("Sigmoid", [x], [y + "_s"]), N("Mul", [x, y + "_s"], [y])]


def _expand(x, y):  # 1x1 conv 32 -> 192, bias, swish (NHWC around an NCHW conv)
    return [N("Transpose", [x], [y + "_t"], perm=[0, 3, 1, 2]),
            N("Conv", [y + "_t", "w1", "b1"], [y + "_c"], kernel_shape=[1, 1]),
            N("Transpose", [y + "_c"], [y + "_h"], perm=[0, 2, 3, 1])] + _swish(y + "_h", y)


def _dw(x, y):  # Keras' correct_pad (0, 1) then a valid 3x3 depthwise conv, stride 2, swish
    return [N("Pad", [x, "pads"], [y + "_p"]),
            N("Transpose", [y + "_p"], [y + "_t"], perm=[0, 3, 1, 2]),
            N("Conv", [y + "_t", "w2", "b2"], [y + "_c"], kernel_shape=[3, 3], group=CMID,
              strides=[2, 2]),
            N("Transpose", [y + "_c"], [y + "_h"], perm=[0, 2, 3, 1])] + _swish(y + "_h", y)


CASES = {
    # name: (nodes, input channels, the consts the nodes use)
    "expand": (lambda: _expand("x", "e") + [N("Identity", ["e"], ["y"])], CIN,
               ("w1", "b1")),
    "depthwise": (lambda: _dw("x", "d") + [N("Identity", ["d"], ["y"])], CMID,
                  ("w2", "b2", "pads")),
    "block": (lambda: _expand("x", "e") + _dw("e", "d") + [N("Identity", ["d"], ["y"])], CIN,
              ("w1", "b1", "w2", "b2", "pads")),
}


def _engine(case, n):
    nodes, c, used = CASES[case]
    consts = {k: v for k, v in _consts().items() if k in used}
    shape = (n, HW, HW, c)
    model = make_model(nodes(), {"x": np.empty((1, 1, 1, 1), np.float32)}, consts)
    model.graph.input[0].type.tensor_type.shape.Clear()
    for d in shape:
        model.graph.input[0].type.tensor_type.shape.dim.add().dim_value = d
    return build_engine(model, {"x": shape}, BuilderConfig(precision="FP16", backend="cupy"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_rows_past_two_to_the_31_elements_match_a_small_batch(case):
    big = _engine(case, 128)
    sizes = [int(np.prod(big.network.tensors[t].shape)) for t in big.network.tensors
             if big.network.tensors[t].shape and all(
                 isinstance(d, int) for d in big.network.tensors[t].shape)]
    assert max(sizes) >= 2 ** 31, "the case must hold a tensor past 2**31 elements"
    _, c, _ = CASES[case]
    x = cp.random.default_rng(1).standard_normal((128, HW, HW, c), dtype=cp.float32)
    y = cp.asarray(big.execute([x])[0])
    del big
    small = _engine(case, 2)
    worst = {}
    for rows in ((0, 2), (126, 128)):
        want = cp.asarray(small.execute([cp.ascontiguousarray(x[rows[0]:rows[1]])])[0])
        got = y[rows[0]:rows[1]]
        assert got.shape == want.shape
        err = float(cp.abs(got.astype(cp.float32) - want.astype(cp.float32)).max())
        scale = float(cp.abs(want.astype(cp.float32)).max())
        worst[rows] = err / max(scale, 1e-6)
    print(f"{case}: relative error of rows 0-1 {worst[(0, 2)]:.2e}, rows 126-127 "
          f"{worst[(126, 128)]:.2e}")
    assert worst[(0, 2)] < 2e-2 and worst[(126, 128)] < 2e-2, worst
