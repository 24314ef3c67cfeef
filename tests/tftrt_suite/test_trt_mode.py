"""Port of TF-TRT's trt_mode_test.py: a squeeze of the batch dimension between unary ops, with
the batch known, unknown, or every dimension unknown.

TF-TRT's implicit batch mode could not squeeze the batch dimension and built two engines;
tftrt has explicit batch only, so ImplicitBatch builds TF-TRT's explicit-batch single engine
(docs/differences.md). The dynamic-shape runs use TF-TRT's optimization profiles."""

import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def squeeze_batch(x1):
    q = (tf.abs(x1) + 1.0) * 3.0
    q = tf.squeeze(q, 0)
    return tf.identity(tf.abs(q) + 5.0, name="output_0")


CASES = {
    "ImplicitBatch": base.Case(squeeze_batch, [[1, 12, 5]], ["TRTEngineOp_000"],
                               output_shapes=[[12, 5]]),
    "ExplicitBatch": base.Case(squeeze_batch, [[1, 12, 5]], ["TRTEngineOp_000"],
                               output_shapes=[[12, 5]], input_masks=[[True, True, True]]),
    "DynamicShapes": base.Case(squeeze_batch, [[1, 12, 5]], ["TRTEngineOp_000"],
                               output_shapes=[[12, 5]], input_masks=[[False, False, False]],
                               extra_inputs=[[[1, 2, 3]], [[1, 4, 6]]],
                               extra_outputs=[[[2, 3]], [[4, 6]]]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    base.run_v2(CASES[name], base.saved(tmp_path_factory, CASES[name], name))


# TF-TRT's ExplicitBatchTest and DynamicShapesTest set the ImplicitBatchModeCompatible
# strategy: one engine; for DynamicShapes "a single engine with three optimization profiles
# can handle the three different input shapes".
@pytest.mark.parametrize("name,profiles", [("ExplicitBatch", 1), ("DynamicShapes", 3)])
def test_dynamic_shape(name, profiles, tmp_path_factory):
    case = CASES[name]
    base.run_v2_dynamic(case, base.saved(tmp_path_factory, case, name),
                        str(tmp_path_factory.mktemp("tftrt_suite") / f"{name}_dynamic"),
                        profiles={"TRTEngineOp_000": profiles})
