"""Port of TF-TRT's lru_cache_test.py: batch sizes 1, 2, 4, 2 through one engine op."""

import numpy as np
import tensorflow as tf

from tests.tftrt_suite import base


def graph(x):
    bias = base.const((1, 10, 10, 1), rng=np.random.RandomState(0))
    return tf.identity(tf.nn.relu(x + bias), name="output")


def test_lru_cache(tmp_path_factory):
    shapes = [[1, 10, 10, 2]], [[2, 10, 10, 2]], [[4, 10, 10, 2]], [[2, 10, 10, 2]]
    case = base.Case(graph, shapes[0], ["TRTEngineOp_000"], output_shapes=shapes[0],
                     extra_inputs=list(shapes[1:]), extra_outputs=list(shapes[1:]),
                     conversion=dict(maximum_cached_engines=2))
    conv = base.run_v2(case, base.saved(tmp_path_factory, case, "lru"))
    (op,) = conv.engine_ops.values()
    # shapes 1, 2, 4 built; 2 evicted 1, 4 evicted... the last call (2) was a hit or a rebuild,
    # but the cache never holds more than maximum_cached_engines.
    assert len(op.cache) == 2
    assert op.stats["builds"] == 3


def test_lru_cache_dynamic_shape(tmp_path_factory):
    """TF-TRT's dynamic-shape run: one engine, a profile per batch size (1, 2, 4), every
    batch served by it, nothing evicted."""
    shapes = [[1, 10, 10, 2]], [[2, 10, 10, 2]], [[4, 10, 10, 2]], [[2, 10, 10, 2]]
    case = base.Case(graph, shapes[0], ["TRTEngineOp_000"], output_shapes=shapes[0],
                     extra_inputs=list(shapes[1:]), extra_outputs=list(shapes[1:]),
                     conversion=dict(maximum_cached_engines=2))
    conv, ops = base.run_v2_dynamic(case, base.saved(tmp_path_factory, case, "lru_dyn"),
                                    str(tmp_path_factory.mktemp("tftrt_suite") / "lru_dyn_out"),
                                    profiles={"TRTEngineOp_000": 3})
    (op,) = conv.engine_ops.values()
    assert op.stats.get("evictions", 0) == 0
