"""Port of TF-TRT's explicit_batch_test.py: the trt_mode graph with max_batch_size=32.

TF-TRT's implicit batch built two engines around the batch squeeze, explicit batch one;
tftrt has explicit batch only: one engine for both (docs/differences.md)."""

from tests.tftrt_suite import base
from tests.tftrt_suite.test_trt_mode import squeeze_batch


def test_explicit_batch(tmp_path_factory):
    case = base.Case(squeeze_batch, [[1, 12, 5]], ["TRTEngineOp_000"], output_shapes=[[12, 5]])
    base.run_v2(case, base.saved(tmp_path_factory, case, "explicit_batch"))
