"""Port of TF-TRT's binary_tensor_weight_broadcast_test.py: tensor + weight of every
broadcastable shape, 16 engines separated by native ops."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base

SHAPES = [(1,), (24, 1, 1), (24, 24, 20), (20,), (1, 24, 1, 1), (1, 24, 24, 1),
          (1, 24, 24, 20), (24, 20)]


def graph(x):
    rng = np.random.RandomState(0)
    for shape in SHAPES:
        x = base.incompatible(tf.abs(x + base.const(shape, rng=rng)))
        x = base.incompatible(tf.abs(base.const(shape, rng=rng) + x))
    return tf.reshape(x, [2, -1], name="output_0")


def test_binary_tensor_weight_broadcast(tmp_path_factory):
    # x + const alone makes an engine of two counted nodes (the Const counts). The Abs keeps
    # lgamma's argument positive: lgamma is our native op (TF-TRT's was erfc).
    # TF-TRT: 16 engines; its TensorRT engines (implicit batch) could not take the final
    # Reshape to [2, -1], which changes the batch dimension. Ours can: a 17th engine
    # (docs/differences.md, "TF-TRT's own tests: where results differ").
    case = base.Case(graph, [[2, 24, 24, 20]], [f"TRTEngineOp_{i}" for i in range(17)],
                     output_shapes=[[2, 11520]])
    base.run_v2(case, base.saved(tmp_path_factory, case, "binary_broadcast"))
