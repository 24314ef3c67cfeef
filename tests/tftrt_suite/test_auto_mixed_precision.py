"""Port of TF-TRT's auto_mixed_precision_test.py: four NHWC convolutions (plain and dilated)
summed, in FP32 and FP16.

TF-TRT's FP16 run also listed the Cast nodes Grappler's auto_mixed_precision pass inserted;
tftrt lowers the FP32 graph to FP16 engines itself and inserts no Casts, so FP16 lists the
same nodes as FP32 (docs/differences.md)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def conv_sum(inp):
    rng = np.random.RandomState(1234)
    out = []
    for k in [(3, 3), (3, 2)]:
        for d in [(1, 1), (2, 3)]:
            w = tf.constant(rng.randn(*k, inp.shape[-1], 5), tf.float32)
            out.append(tf.raw_ops.Conv2D(input=inp, filter=w, strides=[1, 1, 1, 1],
                                         padding="SAME", dilations=[1, *d, 1]))
    return tf.identity(sum(out), name="output_0")


# TF-TRT's list names the nodes it checked, not the weights' Consts the engine also holds.
LISTED = ["Conv2D", "Conv2D_1", "Conv2D_2", "Conv2D_3", "add_1", "add_2", "add_3"]


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_auto_mixed_precision(precision, tmp_path_factory):
    case = base.Case(conv_sum, [[13, 7, 11, 3]], ["TRTEngineOp_000"],
                     output_shapes=[[13, 7, 11, 5]], conversion=dict(precision_mode=precision),
                     rtol=1e-4 if precision == "FP32" else None,
                     atol=1e-4 if precision == "FP32" else None)
    conv = base.run_v2(case, base.saved(tmp_path_factory, case, f"amp_{precision}"))
    (nodes,) = base.engine_node_sets(conv).values()
    assert set(LISTED) <= nodes, sorted(nodes)
