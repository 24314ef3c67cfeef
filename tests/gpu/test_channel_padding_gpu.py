"""Channel padding (passes/channel_padding.py, TFTRT_PAD_CONV_CHANNELS=1) on the GPU: the
zoo's stem shapes (3 input channels, 3x3 / 1, 7x7 / 2 with pads, 4x4 / 4) in FP16, eager and
CUDA-graph replay, against the numpy engine and against the same engine unpadded; the padded
engine really holds a pad and an 8-channel filter.

On the GPU machine: ``python -m pytest tests/gpu/test_channel_padding_gpu.py -q``.
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


@pytest.mark.parametrize("k,stride,pad,cout", [(3, 1, 1, 16), (7, 2, 3, 16), (4, 4, 0, 24)])
def test_a_padded_stem_gives_the_numbers_of_the_unpadded_one(monkeypatch, k, stride, pad,
                                                              cout):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")
    model, feeds = _conv_model((2, 32, 32, 3), (cout, 3, k, k),
                               {"pads": [pad] * 4, "strides": [stride] * 2}, epi=("relu",))
    shapes = {"x": feeds["x"].shape}
    ref = build_engine(model, shapes, BuilderConfig(backend="numpy", precision="FP16",
                                                    tactic_timing=False))
    want = np.asarray(ref.execute([feeds["x"]])[0], np.float64)
    outs = {}
    for on in ("0", "1"):
        monkeypatch.setenv("TFTRT_PAD_CONV_CHANNELS", on)
        engine = build_engine(model, shapes, BuilderConfig(backend="cupy", precision="FP16"))
        kinds = [kd for _, kd, _, _ in engine.layers_summary()]
        assert ("pad" in kinds) == (on == "1"), kinds
        ctx = engine.create_execution_context()
        x = cp.asarray(feeds["x"])
        runs = [cp.asnumpy(ctx.execute([x])[0]).astype(np.float64) for _ in range(3)]
        for r in runs[1:]:  # the second run captures the CUDA graph, the third replays it
            np.testing.assert_array_equal(r, runs[0])
        rtol, atol = GPU_VS_NUMPY["FP16"]
        np.testing.assert_allclose(runs[0], want, rtol=rtol,
                                   atol=atol * max(1.0, float(np.abs(want).max())))
        outs[on] = runs[0]
    # zero channels add exact zeros: only the kernels' summation order may differ
    np.testing.assert_allclose(outs["1"], outs["0"], rtol=2e-3,
                               atol=2e-3 * max(1.0, float(np.abs(want).max())))
