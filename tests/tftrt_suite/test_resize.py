"""Port of TF-TRT's resize_test.py: ResizeBilinear to a size computed from the input's shape
(dynamic) or a constant, with align_corners / half_pixel_centers; TF-TRT's "WAR" cases forced
its workaround algorithm (TF_TRT_FORCE_BILINEAR_RESIZE_WAR), which tftrt has no need of: they
run as plain constant-size cases, the non-integral one 31 -> 33."""

import functools

import pytest
import tensorflow as tf

from tests.tftrt_suite import base


def dynamic_size(inp, align_corners, half_pixel_centers):
    size = tf.shape(inp)[1:3] * tf.constant([2], tf.int32)
    y = tf.compat.v1.image.resize_bilinear(inp, size, align_corners=align_corners,
                                           half_pixel_centers=half_pixel_centers,
                                           name="resize")
    return tf.identity(y, name="output_0")


def const_size(inp, align_corners, half_pixel_centers, size=(64, 64)):
    y = tf.compat.v1.image.resize_bilinear(inp, tf.constant(size, tf.int32),
                                           align_corners=align_corners,
                                           half_pixel_centers=half_pixel_centers)
    return tf.identity(y, name="output_0")


def dynamic(**kw):
    return base.Case(functools.partial(dynamic_size, **kw), [[1, 32, 32, 1]],
                     ["TRTEngineOp_000"], output_shapes=[[1, 64, 64, 1]],
                     input_masks=[[False, False, False, True]])


def const(in_hw=32, out_hw=64, **kw):
    return base.Case(functools.partial(const_size, size=(out_hw, out_hw), **kw),
                     [[1, in_hw, in_hw, 1]], ["TRTEngineOp_000"],
                     output_shapes=[[1, out_hw, out_hw, 1]], input_masks=[[True] * 4])


CASES = {
    "SizeDynamic": dynamic(align_corners=False, half_pixel_centers=False),
    "SizeDynamicAligned": dynamic(align_corners=True, half_pixel_centers=False),
    "SizeDynamicHalfPixel": dynamic(align_corners=False, half_pixel_centers=True),
    "SizeConst": const(align_corners=False, half_pixel_centers=False),
    "SizeConstAligned": const(align_corners=True, half_pixel_centers=False),
    "SizeConstNonIntegral": const(31, 33, align_corners=False, half_pixel_centers=False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_case(name, tmp_path_factory):
    base.run_v2(CASES[name], base.saved(tmp_path_factory, CASES[name], name))
