"""Port of TF-TRT's quantization_test.py: add/sub/mul/matmul with and without
FakeQuantWithMinMaxVars ranges."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def graph(x, quantize):
    def q(t, r):
        return tf.quantization.fake_quant_with_min_max_vars(t, -r, r) if quantize else t

    x = q(x, 10.0)
    x = q(x + 5, 15.0)
    x = q(x - 5, 10.0)
    x = q(x * 0.1, 1.0)
    x = tf.matmul(x, tf.constant(np.ones((8, 1)), tf.float32))
    return tf.identity(q(x, 10.0), name="output_0")


def without_ranges(x):
    return graph(x, quantize=False)


def with_ranges(x):
    return graph(x, quantize=True)


INT8 = dict(precision_mode="INT8", use_calibration=False)


def test_missing_all_ranges(tmp_path_factory):
    """TF-TRT: INT8 static engine; without ranges it falls back to non-quantized layers."""
    case = base.Case(without_ranges, [[8, 8]], ["TRTEngineOp_000"], output_shapes=[[8, 1]],
                     conversion=INT8)
    conv = base.run_v2(case, base.saved(tmp_path_factory, case, "missing_ranges"))
    (op,) = conv.engine_ops.values()
    assert op.spec.precision_mode == "FP16"  # TF-TRT's fallback, with a warning


def test_with_ranges(tmp_path_factory):
    case = base.Case(with_ranges, [[8, 8]], ["TRTEngineOp_000"], output_shapes=[[8, 1]],
                     conversion=INT8, rtol=1e-1, atol=1e-1)
    conv = base.run_v2(case, base.saved(tmp_path_factory, case, "with_ranges"))
    (op,) = conv.engine_ops.values()
    ((_, engine),) = op.cache.items()
    # the MatMul reads the last fake-quant before it (range 1): INT8, as in TF-TRT
    assert [l.precision for l in engine.network.layers if l.kind == "matmul"] == ["INT8"]


def test_non_quantized_precisions_with_ranges(tmp_path_factory):
    """FP32. TF-TRT left the fake-quant ops native outside INT8 (TensorRT quantizes only in
    INT8 mode) and built two engines; tftrt's engines quantize-dequantize in any precision,
    so the whole graph is one engine (docs/differences.md)."""
    case = base.Case(with_ranges, [[8, 8]], ["TRTEngineOp_000"],
                     output_shapes=[[8, 1]], rtol=1e-5, atol=1e-5)
    base.run_v2(case, base.saved(tmp_path_factory, case, "non_quantized"))
