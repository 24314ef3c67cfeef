"""Port of TF-TRT's combined_nms_test.py: CombinedNonMaxSuppression with constant sizes and
thresholds forms an engine on its own (the four Consts count toward the segment size)."""

import tensorflow as tf

from tests.tftrt_suite import base


def graph(boxes, scores):
    out = tf.image.combined_non_max_suppression(
        boxes, scores,
        tf.constant(3, tf.int32, name="max_output_size_per_class"),
        tf.constant(3, tf.int32, name="max_total_size"),
        tf.constant(0.5, tf.float32, name="iou_threshold"),
        tf.constant(0.1, tf.float32, name="score_threshold"), name="combined_nms")
    return [tf.identity(o, name=f"output_{i}") for i, o in enumerate(out)]


def test_combined_nms(tmp_path_factory):
    case = base.Case(
        graph, [[1, 50, 1, 4], [1, 50, 2]],
        {"TRTEngineOp_0": ["combined_nms/CombinedNonMaxSuppression", "max_output_size_per_class",
                           "max_total_size", "iou_threshold", "score_threshold"]},
        output_shapes=[[1, 3, 4], [1, 3], [1, 3], [1]])
    # (Grappler merges the two equal int32 Consts: max_total_size is gone, as TF-TRT allows.)
    base.run_v2(case, base.saved(tmp_path_factory, case, "combined_nms"))
