"""The build-time validation of the GPU's INT8 / FP8 implementations
(``cuda_source_quant.compare_quantized`` / ``validation_tolerance`` / ``validation_inputs``;
``cupy_quant.Validator`` runs them on the GPU with CuPy arrays), checked without a GPU: the
comparison accepts what a right implementation differs by (a fused epilogue's rounding order,
FP8 accumulation in fewer mantissa bits, one-step requantization flips) and rejects what the
H200's wrong answers and other plausible library faults look like (an int32 output written
as int8 bytes or as float bits, an unwritten output, a channels-first layout, a dropped
padded channel, int8 outputs off by many steps, NaN where a number belongs).
"""

import numpy as np
import pytest

from tftrt.engine import quantization as Q
from tftrt.engine.backends import cuda_source_quant as S

F32 = np.float32


def _conv_acc(xq, wq, pad=1):
    """Exact int64 NHWC conv (stride 1) of int codes: x [N, H, W, C], w [K, R, S, C]."""
    r = wq.shape[1]
    xp = np.pad(xq.astype(np.int64), [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    win = np.lib.stride_tricks.sliding_window_view(xp, (r, r), axis=(1, 2))  # N,H,W,C,R,S
    return np.einsum("nhwcrs,krsc->nhwk", win, wq.astype(np.int64))


def _layer(seed=0, c=8, k=16, hw=6, n=2):
    rng = np.random.RandomState(seed)
    xq = rng.randint(-127, 128, (n, hw, hw, c))
    wq = rng.randint(-127, 128, (k, 3, 3, c))
    dq = rng.uniform(1e-5, 4e-5, k).astype(F32)
    bias = rng.standard_normal(k).astype(F32)
    return xq, wq, dq, bias


def _epilogue(acc_f32, dq, bias, out_dtype, out_scale=None):
    """The numpy backend's float32 steps (scale, bias, relu) and the store."""
    y = np.maximum(acc_f32.astype(F32) * dq + bias, F32(0))
    if out_dtype == "int8":
        return Q.quantize_int8(y, Q.inv_scale(out_scale))
    return y.astype(out_dtype)


def _fused(acc, dq, bias, out_dtype, out_scale=None):
    """A fused epilogue's rounding: scale and bias in float64 (one FMA-like rounding)."""
    y = np.maximum(acc.astype(np.float64) * dq.astype(np.float64) + bias, 0).astype(F32)
    if out_dtype == "int8":
        return Q.quantize_int8(y, Q.inv_scale(out_scale))
    return y.astype(out_dtype)


@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
def test_accepts_exact_and_fused_epilogue_rounding(out_dtype):
    xq, wq, dq, bias = _layer()
    acc = _conv_acc(xq, wq)
    want = _epilogue(acc.astype(F32), dq, bias, out_dtype)
    ok, how, st = S.compare_quantized(want.copy(), want, S.INT8, out_dtype)
    assert ok and st["over"] == 0 and st["exact"] == want.size, how
    fused = _fused(acc, dq, bias, out_dtype)
    ok, how, st = S.compare_quantized(fused, want, S.INT8, out_dtype)
    assert ok, how
    if out_dtype == "float32":  # the rounding order shows, within a few float32 ulps
        assert 0 < st["max_rel"] < 1e-6 and st["exact"] < want.size, st


def _fp8_acc(xv, wv, bits=None, chunk=32):
    """fp32 sums of E4M3 products; with ``bits``, Hopper-like: each chunk of ``chunk``
    products accumulated in a ``bits``-bit mantissa, then promoted to fp32."""
    n, h, w, c = xv.shape
    xp = np.pad(xv, [(0, 0), (1, 1), (1, 1), (0, 0)])
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))
    prods = np.einsum("nhwcrs,krsc->nhwkcrs", win, wv).reshape(n, h, w, wv.shape[0], -1)
    if bits is None:
        return prods.astype(np.float64).sum(-1).astype(F32)

    def rnd(v):
        m, e = np.frexp(v)
        return np.ldexp(np.round(m * 2.0 ** bits) / 2.0 ** bits, e)
    total = np.zeros(prods.shape[:-1], F32)
    for s in range(0, prods.shape[-1], chunk):
        part = np.zeros(prods.shape[:-1])
        for j in range(s, min(s + chunk, prods.shape[-1])):
            part = rnd(part + prods[..., j])
        total = (total + part.astype(F32)).astype(F32)
    return total


def test_fp8_accepts_reduced_precision_accumulation_and_rejects_a_dropped_channel():
    rng = np.random.RandomState(3)
    xv = Q.round_e4m3(rng.standard_normal((2, 5, 5, 16)).astype(F32) * 40)
    wv = Q.round_e4m3(rng.standard_normal((8, 3, 3, 16)).astype(F32) * 40)
    dq, bias = np.full(8, 1e-4, F32), rng.standard_normal(8).astype(F32)
    want = _epilogue(_fp8_acc(xv, wv), dq, bias, "float32")
    got = _epilogue(_fp8_acc(xv, wv, bits=13), dq, bias, "float32")
    ok, how, st = S.compare_quantized(got, want, S.FP8, "float32")
    assert ok and st["max_rel"] > 1e-6, how  # really less precise, still accepted
    # the same accumulation precision under INT8's bound: rejected (INT8 sums are exact)
    assert not S.compare_quantized(got, want, S.INT8, "float32")[0]
    wv_bad = wv.copy()
    wv_bad[..., 15] = 0  # one input channel lost (a padding / layout fault)
    bad = _epilogue(_fp8_acc(xv, wv_bad), dq, bias, "float32")
    ok, how, _ = S.compare_quantized(bad, want, S.FP8, "float32")
    assert not ok and "over" in how, how


def _through_epilogue(int32_buffer, dq, bias, out_dtype="float32"):
    return _epilogue(int32_buffer.astype(F32), dq, bias, out_dtype)


def test_rejects_the_h200_failures_of_int32_outputs():
    """What an INT32 graph output cuDNN mishandles looks like after the epilogue kernel: the
    accumulator written as clamped int8 bytes, as float32 bits, or not at all (the scratch
    holds the poison); each is rejected, the unwritten output by name."""
    xq, wq, dq, bias = _layer(1)
    acc = _conv_acc(xq, wq).astype(np.int32)
    want = _through_epilogue(acc, dq, bias)
    as_int8 = np.full(acc.size * 4, S.SCRATCH_POISON_BYTE, np.uint8)
    as_int8[:acc.size] = np.clip(acc, -128, 127).astype(np.int8).view(np.uint8).reshape(-1)
    float_bits = acc.astype(F32).view(np.int32)
    unwritten = np.full(acc.size * 4, S.SCRATCH_POISON_BYTE, np.uint8).view(np.int32)
    for what, buf in (("int8 bytes", as_int8.view(np.int32)), ("float bits", float_bits),
                      ("unwritten", unwritten)):
        got = _through_epilogue(buf.reshape(acc.shape), dq, bias)
        ok, how, st = S.compare_quantized(got, want, S.INT8, "float32")
        assert not ok and st["over"] > acc.size // 10, (what, how)
        # in float16 the same values overflow: rejected as non-finite where numbers belong
        with np.errstate(over="ignore"):
            half = got.astype(np.float16)
        ok, how, _ = S.compare_quantized(half, want.astype(np.float16), S.INT8, "float16")
        assert not ok, (what, how)
    # a graph output the library never wrote keeps the NaN poison
    got = want.copy()
    got.reshape(-1)[::3] = np.nan
    ok, how, _ = S.compare_quantized(got, want, S.INT8, "float32")
    assert not ok and "not written" in how, how


def test_rejects_a_channels_first_layout_and_a_lost_padded_channel():
    xq, wq, dq, bias = _layer(2, c=3, k=8)
    acc = _conv_acc(xq, wq)
    want = _epilogue(acc.astype(F32), dq, bias, "float32")
    nchw = np.ascontiguousarray(acc.transpose(0, 3, 1, 2)).reshape(acc.shape)
    ok, how, _ = S.compare_quantized(_epilogue(nchw.astype(F32), dq, bias, "float32"), want,
                                     S.INT8, "float32")
    assert not ok, how
    w_lost = wq.copy()
    w_lost[..., 2] = 0  # C = 3 padded to 4: the last real channel read as padding
    got = _epilogue(_conv_acc(xq, w_lost).astype(F32), dq, bias, "float32")
    ok, how, _ = S.compare_quantized(got, want, S.INT8, "float32")
    assert not ok, how


def test_int8_outputs_allow_rare_one_step_flips_only():
    xq, wq, dq, bias = _layer(4, c=16, k=32, hw=8)
    acc = _conv_acc(xq, wq)
    scale = 0.05
    want = _epilogue(acc.astype(F32), dq, bias, "int8", scale)
    ok, how, st = S.compare_quantized(want.copy(), want, S.INT8, "int8")
    assert ok and st["one_step"] == 0, how
    ok, how, _ = S.compare_quantized(_fused(acc, dq, bias, "int8", scale), want, S.INT8, "int8")
    assert ok, how
    flips = want.copy().astype(np.int32)
    idx = np.flatnonzero(np.abs(flips) < 127)
    flips.reshape(-1)[idx[:3]] += 1
    ok, how, st = S.compare_quantized(flips.astype(np.int8), want, S.INT8, "int8")
    assert ok and st["one_step"] == 3, how
    many = want.copy().astype(np.int32)
    many.reshape(-1)[idx[:want.size // 20]] += 1  # 5 % of the elements one step off
    ok, how, _ = S.compare_quantized(many.astype(np.int8), want, S.INT8, "int8")
    assert not ok and "one step off" in how, how
    far = want.copy()
    far.reshape(-1)[idx[0]] = np.int8(far.reshape(-1)[idx[0]] // 2 + 3)
    far.reshape(-1)[idx[1]] = S.INT8_POISON
    ok, how, st = S.compare_quantized(far, want, S.INT8, "int8")
    assert not ok and st["further"] >= 1 and "poison" in how, how


def test_nan_and_inf_must_sit_where_the_reference_has_them():
    want = np.array([[1.0, np.nan, -np.inf, 2.0]], F32)
    assert S.compare_quantized(want.copy(), want, S.INT8, "float32")[0]
    for got in ([[1.0, 0.0, -np.inf, 2.0]], [[1.0, np.nan, np.inf, 2.0]],
                [[1.0, np.nan, -np.inf, np.inf]]):
        ok, how, _ = S.compare_quantized(np.array(got, F32), want, S.INT8, "float32")
        assert not ok and "non-finite" in how, (got, how)
    ok, how, _ = S.compare_quantized(np.zeros((2, 2), F32), np.zeros((2, 3), F32), S.INT8,
                                     "float32")
    assert not ok and "shape" in how


def test_inexact_reference_loosens_the_bound():
    t = S.validation_tolerance(S.INT8, "float16")
    loose = S.validation_tolerance(S.INT8, "float16", ref_exact=False)
    assert t["rel"] == 2.0 ** -16 and loose["rel"] == 2.0 ** -7 and t["ulp"] == 2.0 ** -10
    want = np.linspace(-4, 4, 64).astype(F32)
    got = want + F32(1e-3)  # 1.25e-4 of max|want|
    assert not S.compare_quantized(got, want, S.INT8, "float32")[0]
    assert S.compare_quantized(got, want, S.INT8, "float32", ref_exact=False)[0]
    assert S.validation_tolerance(S.INT8, "int8", False)["step_share"] > \
        S.validation_tolerance(S.INT8, "int8")["step_share"]


def test_tolerance_refuses_unknown_formats_and_dtypes():
    with pytest.raises(ValueError, match="quantized format 'int4'"):
        S.validation_tolerance("int4", "float16")
    with pytest.raises(ValueError, match="float16, float32 or int8, not float64"):
        S.validation_tolerance(S.INT8, "float64")


def test_validation_inputs_cover_the_quantized_range():
    """Seeded; INT8 codes span [-127, 127] with saturation; FP8 values reach E4M3's
    subnormals and its +-448 saturation; int8 inputs are codes; residuals normal."""
    inv = float(Q.inv_scale(0.02))
    shapes = {0: (4, 16, 16, 8), 3: (4, 16, 16, 8)}
    a = S.validation_inputs(shapes, {0: "float16", 3: "float16"}, S.INT8, inv, seed=5)
    b = S.validation_inputs(shapes, {0: "float16", 3: "float16"}, S.INT8, inv, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    q = Q.quantize_int8(a[0].astype(F32), inv)
    assert q.min() == -127 and q.max() == 127
    assert len(np.unique(q)) == 255
    assert np.mean(np.abs(a[0].astype(F32) * inv) > 127.5) > 0.01  # some saturate
    assert abs(float(a[3].std()) - 1.0) < 0.05
    f = S.validation_inputs({0: (4, 16, 16, 8)}, {0: "float32"}, S.FP8, inv, seed=1)[0]
    v = np.abs(Q.round_e4m3(f * F32(inv)))
    assert v.max() == Q.FP8_E4M3_MAX and v[v > 0].min() < 2.0 ** -6
    codes = S.validation_inputs({0: (3, 5)}, {0: "int8"}, S.INT8, inv)[0]
    assert codes.dtype == np.int8 and codes.min() >= -127
