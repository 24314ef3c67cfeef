"""Port of TF-TRT's conv2d_test.py: NCHW / NHWC, dilated and strided Conv2D, and
conv2d_transpose (Conv2DBackpropInput) with a constant output shape."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def conv_sum(x, nchw, reference=False):
    rng = np.random.RandomState(1234)
    cin = x.shape[1] if nchw else x.shape[-1]
    out = []
    for k in [(3, 3), (3, 2)]:
        for d in [(1, 1), (2, 3)]:
            w = base.const((*k, cin, 5), rng=rng)
            if nchw:
                out.append(base.conv2d_nchw(x, w, dilations=d, reference=reference))
            else:
                out.append(tf.nn.conv2d(x, w, 1, "SAME", dilations=[1, *d, 1]))
    return tf.identity(sum(out), name="output_0")


def strided_nchw(x, reference=False):
    rng = np.random.RandomState(1234)
    y = base.conv2d_nchw(x, base.const((3, 2, 3, 5), rng=rng), strides=(2, 2),
                         reference=reference)
    y = base.conv2d_nchw(y, base.const((3, 3, 5, 5), rng=rng), strides=(2, 2),
                         dilations=(2, 3), reference=reference)
    return tf.identity(y, name="output_0")


def transpose_nchw(x, reference=False):
    rng = np.random.RandomState(1234)
    w = base.const((2, 2, 8, 3), rng=rng)
    if not reference:
        y = tf.nn.conv2d_transpose(x, w, tf.constant([4, 8, 14, 22]), strides=[1, 1, 2, 2],
                                   padding="SAME", data_format="NCHW")
    else:
        y = tf.nn.conv2d_transpose(tf.transpose(x, [0, 2, 3, 1]), w, [4, 14, 22, 8], 2, "SAME")
        y = tf.transpose(y, [0, 3, 1, 2])
    return tf.identity(y, name="output_0")


def case(fn, in_shape, out_shape, **kw):
    return base.Case(functools.partial(fn), [in_shape], ["TRTEngineOp_000"],
                     output_shapes=[out_shape],
                     reference_fn=functools.partial(fn, reference=True), **kw)


CASES = {
    "NCHW": base.Case(functools.partial(conv_sum, nchw=True), [[4, 3, 7, 11]],
                      ["TRTEngineOp_000"], output_shapes=[[4, 5, 7, 11]],
                      reference_fn=functools.partial(conv_sum, nchw=True, reference=True),
                      rtol=1e-4, atol=1e-4),
    "NHWC": base.Case(functools.partial(conv_sum, nchw=False), [[4, 7, 11, 3]],
                      ["TRTEngineOp_000"], output_shapes=[[4, 7, 11, 5]], rtol=1e-4,
                      atol=1e-4),
    "StridedNCHW": case(strided_nchw, [4, 3, 7, 11], [4, 5, 2, 3], rtol=1e-4, atol=1e-4),
    # TF-TRT's test fixed the batch (13) in the output shape Const; the input batch must match.
    "Transpose": base.Case(transpose_nchw, [[4, 3, 7, 11]], ["TRTEngineOp_000"],
                           output_shapes=[[4, 8, 14, 22]],
                           input_masks=[[True, True, True, True]],
                           reference_fn=functools.partial(transpose_nchw, reference=True)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    base.run_v2(CASES[name], base.saved(tmp_path_factory, CASES[name], name))
