"""Converters of converters/quantize.py: fake quantization, bit-exact against TF."""

import numpy as np
import pytest
import tensorflow as tf

from tests.converters.harness import check_op, check_rejected


def rand(*shape, dtype=np.float32, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


EXACT = dict(rtol=0, atol=0)

FQ_RANGES = [(-6.0, 6.0, 8, False), (-1.0, 2.5, 8, True), (-0.7, 1.3, 4, False),
             (0.5, 3.0, 8, False), (-3.0, -0.5, 7, True), (-2.0, 2.0, 16, False)]


@pytest.mark.parametrize("mn,mx,bits,narrow", FQ_RANGES)
def test_fake_quant_args(mn, mx, bits, narrow):
    check_op(lambda x: tf.quantization.fake_quant_with_min_max_args(
        x, min=mn, max=mx, num_bits=bits, narrow_range=narrow), [rand(2, 3, 50)],
        expect_tf_ops=["FakeQuantWithMinMaxArgs"], **EXACT)


@pytest.mark.parametrize("mn,mx,bits,narrow", FQ_RANGES[:4] + [(0.0, 0.0, 8, False)])
def test_fake_quant_vars(mn, mx, bits, narrow):
    check_op(lambda x: tf.quantization.fake_quant_with_min_max_vars(
        x, min=tf.constant(mn), max=tf.constant(mx), num_bits=bits, narrow_range=narrow),
        [rand(4, 50)], dynamic_batch=True, expect_tf_ops=["FakeQuantWithMinMaxVars"], **EXACT)


@pytest.mark.parametrize("narrow", [False, True])
def test_fake_quant_vars_per_channel(narrow):
    mn = np.array([-6.0, -1.0, 0.0, 0.5], np.float32)
    mx = np.array([6.0, 2.5, 0.0, 3.0], np.float32)
    check_op(lambda x: tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, min=mn, max=mx, num_bits=8, narrow_range=narrow), [rand(2, 20, 4)],
        expect_tf_ops=["FakeQuantWithMinMaxVarsPerChannel"], **EXACT)


def test_fake_quant_rejects_variable_range():
    check_rejected(lambda x, m: tf.quantization.fake_quant_with_min_max_vars(x, -m, m),
                   [rand(2, 3), np.float32(2)], "FakeQuantWithMinMaxVars", "must be a constant")


def test_fake_quant_rejects_inverted_range():
    check_rejected(lambda x: tf.quantization.fake_quant_with_min_max_args(x, min=1.0, max=-1.0),
                   [rand(2, 3)], "FakeQuantWithMinMaxArgs", "smaller than max")


QDQ_CASES = [  # min, max, signed, bits, range_given, round_mode, narrow
    (-2.0, 3.0, True, 8, True, "HALF_TO_EVEN", False),
    (-4.0, 1.0, True, 8, True, "HALF_UP", True),
    (0.0, 3.0, False, 8, True, "HALF_TO_EVEN", False),
    (-1.0, 2.0, True, 4, True, "HALF_TO_EVEN", False),
    (0.0, 0.0, True, 8, False, "HALF_TO_EVEN", False),
    (0.0, 0.0, False, 8, False, "HALF_UP", False),
    (0.0, 0.0, True, 5, False, "HALF_TO_EVEN", True),
    # unsigned, max < 0: the adjusted min (-0) is over the max; TF's min-then-max clamp makes
    # every element -0, where ONNX's Clip gave the max times FLT_MAX (differential fuzz, s48)
    (-3.0, -0.5, False, 8, True, "HALF_TO_EVEN", False),
    (-2.07, -0.932, False, 2, True, "HALF_UP", True),
]


@pytest.mark.parametrize("mn,mx,signed,bits,given,mode,narrow", QDQ_CASES)
def test_quantize_and_dequantize_v2(mn, mx, signed, bits, given, mode, narrow):
    dtype = np.float32
    x = rand(3, 40, dtype=dtype)
    if not signed:
        x = np.abs(x) if given else x
    check_op(lambda x: tf.raw_ops.QuantizeAndDequantizeV2(
        input=x, input_min=tf.constant(mn, dtype), input_max=tf.constant(mx, dtype),
        signed_input=signed, num_bits=bits, range_given=given, round_mode=mode,
        narrow_range=narrow), [x], expect_tf_ops=["QuantizeAndDequantizeV2"], **EXACT)


@pytest.mark.parametrize("signed", [True, False])
def test_quantize_and_dequantize_per_axis(signed):
    unused = np.zeros([3], np.float32)
    x = rand(4, 3, 10)
    x[:, 1] = np.abs(x[:, 1])  # one channel with no negative values
    check_op(lambda x: tf.quantization.quantize_and_dequantize_v2(
        x, unused, unused, signed_input=signed, range_given=False, axis=1), [x],
        expect_tf_ops=["QuantizeAndDequantizeV4"], **EXACT)


def test_quantize_and_dequantize_rejects_per_axis_given_range():
    check_rejected(lambda x: tf.quantization.quantize_and_dequantize_v2(
        x, -np.ones([3], np.float32), np.ones([3], np.float32), range_given=True, axis=1),
        [rand(4, 3, 10)], "QuantizeAndDequantizeV4", "per-axis")


@pytest.mark.parametrize("given,signed", [(True, True), (False, False)])
def test_quantize_and_dequantize_v3(given, signed):
    check_op(lambda x: tf.raw_ops.QuantizeAndDequantizeV3(
        input=x, input_min=-2.5, input_max=2.0, num_bits=6, signed_input=signed,
        range_given=given), [rand(2, 3, 20)], expect_tf_ops=["QuantizeAndDequantizeV3"],
        **EXACT)


def test_quantize_and_dequantize_rejects_double():
    check_rejected(lambda x: tf.quantization.quantize_and_dequantize_v2(x, -1.0, 1.0),
                   [rand(2, 3, dtype=np.float64)], "QuantizeAndDequantizeV4", "float64")


def test_quantize_and_dequantize_rejects_variable_range():
    check_rejected(lambda x, m: tf.raw_ops.QuantizeAndDequantizeV2(
        input=x, input_min=-m, input_max=m, range_given=True), [rand(2, 3), np.float32(2)],
        "QuantizeAndDequantizeV2", "constant input_min")
