"""Whole networks: Keras ResNet50's structure at 32x32, batch 2, FP32 and FP16."""

import pytest

from tests.engine.harness import assert_close, run_ort
from tests.engine.models import resnet50
from tests.tolerances import MODEL_TOLERANCES
from tftrt.engine import BuilderConfig, build_engine


@pytest.fixture(scope="module")
def model():
    return resnet50(batch=2, size=32)


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_resnet50_matches_onnxruntime(model, precision):
    # its build + first run time (once asserted < 10 s here) is benchmarks/bench_build_time.py
    m, feeds = model
    engine = build_engine(m, {k: v.shape for k, v in feeds.items()},
                          BuilderConfig(precision=precision))
    out = engine.execute(list(feeds.values()))
    assert_close(out, run_ort(m, feeds), *MODEL_TOLERANCES[precision], f"resnet50[{precision}]")
    kinds = [k for _, k, _, _ in engine.layers_summary()]
    # 53 convs with BN/bias/ReLU/residual fused, no transposes left, one of each head layer;
    # under FP16, casts to fp16 in front of the first conv (fp32 network input) and of the
    # dense matmul (the global-average reduce stays fp32).
    casts = 2 if precision == "FP16" else 0
    assert kinds.count("conv") == 53 and "transpose" not in kinds
    assert kinds.count("pointwise") == casts and len(kinds) == 57 + casts
    epilogues = [e for _, k, e, _ in engine.layers_summary() if k == "conv"]
    assert epilogues.count("bias+add+relu") == 16
