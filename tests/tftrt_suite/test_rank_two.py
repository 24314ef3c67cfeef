"""Port of TF-TRT's rank_two_test.py: a rank-2 and a rank-4 path joined at the end."""

import tensorflow as tf

from tests.tftrt_suite import base


def graph(x1, x2):
    outs = []
    for i, x in enumerate([x1, x2]):
        q = tf.abs(tf.add(x, tf.constant(1.0, name=f"c{i}_1"), name=f"add{i}_1"), name=f"abs{i}_1")
        q = tf.abs(tf.add(q, tf.constant(2.2, name=f"c{i}_2"), name=f"add{i}_2"), name=f"abs{i}_2")
        q = tf.add(q, tf.constant(3.0, name=f"c{i}_3"), name=f"add{i}_3")
        if i == 0:
            axis = tf.constant(-1, tf.int32, name="axis")
            for j in range(2):
                q = tf.expand_dims(q, axis, name=f"expand{i}_{j}")
            q = base.incompatible(q)
        outs.append(tf.math.reciprocal(q, name=f"reciprocal{i}"))
    return tf.squeeze(tf.add(outs[0], outs[1], name="add"), name="output_0")


def test_rank_two(tmp_path_factory):
    # TF-TRT's dynamic-shape expectation: the final add and reciprocal0 join engine 1 (in
    # implicit batch mode TensorRT needed a third engine for them).
    case = base.Case(
        graph, [[12, 5], [12, 5, 2, 2]], output_shapes=[[12, 5, 2, 2]], grappler=False,
        expected={"TRTEngineOp_0": ["add0_1", "add0_2", "add0_3", "c0_1", "c0_2", "c0_3",
                                    "abs0_1", "abs0_2", "expand0_0", "expand0_1", "axis"],
                  "TRTEngineOp_1": ["add1_1", "add1_2", "add1_3", "c1_1", "c1_2", "c1_3",
                                    "abs1_1", "abs1_2", "reciprocal1", "add", "reciprocal0"]})
    base.run_v2(case, base.saved(tmp_path_factory, case, "rank_two"))
