"""The stem kernel with its max pool fused (``StemMmaSource(pool=...)``, backends/
cuda_source_stem_mma), checked without a GPU: built for the host (the emulated MMA of
test_stem_mma_codegen), it stores exactly what the unpooled row-tile kernel's output gives
through the GPU pool kernel's semantics (cuda_source_move.PoolSource: a 3x3 / 2 window scanned
in order from -inf or the floor, NaN passed over, pad cells holding ``pad_value`` or skipped,
int8 codes raised to the code floor) -- float16 and int8 outputs, NaN and infinite pixels,
conv rows no tile divides, a bottom pad row, two chunks of channels, a looping grid and
unaligned outputs."""

import numpy as np
import pytest

from tests.engine.test_cuda_codegen import HOST_SHIMS, _host_compiler
from tests.engine.test_dw_codegen import THREAD_SHIMS, _build, _epilogue_spec, _out_hw, \
    _run_host
from tests.engine.test_stem_mma_codegen import MMA_SHIMS, _driver, _inputs, _rename, _wt
from tftrt.engine.backends import cuda_source as C
from tftrt.engine.backends import cuda_source_stem_mma as SM

# (x shape, (kh, kw), (sh, sw), conv pads, Cout, x dtype, y dtype, epilogue, y offset,
#  conv options, pool: pads (1, 1, bottom, right), pad_value, floor, code_floor)
CASES = [
    ((2, 21, 64, 3), (7, 7), (2, 2), (3, 3, 3, 3), 64, "float32", "float16", "bias+relu", 0,
     dict(max_blocks=2), dict(pads=(1, 1, 1, 1), pad_value=0.0)),  # ResNet: Ho 11 (a bottom
    #                                                      pad row), runs across two images
    ((1, 19, 64, 3), (7, 7), (2, 2), (3, 3, 3, 3), 64, "float16", "int8", "bias+relu", 0,
     dict(out_scale=0.02, nan_code=-128, max_blocks=1),
     dict(pads=(1, 1, 1, 1), pad_value=0.0, code_floor=-127)),   # ResNet INT8, Ho 10
    ((2, 12, 32, 3), (3, 3), (1, 1), (1, 1, 1, 1), 40, "float32", "float16", "bias", 2,
     dict(max_blocks=3), dict(pads=(1, 1, 0, 0))),      # pads skipped, negatives, unaligned
    ((1, 9, 16, 3), (3, 3), (1, 1), (1, 1, 1, 1), 136, "float16", "float16", "bias+add+relu",
     0, {}, dict(pads=(1, 1, 1, 1), floor=0.0)),        # two chunks, residual, a floor
    ((1, 14, 32, 3), (3, 3), (1, 1), (1, 1, 1, 1), 24, "float32", "int8", "bias", 1,
     dict(out_scale=0.01, nan_code=-128),
     dict(pads=(1, 1, 1, 1), pad_value=3.0, code_floor=-127)),  # 8-byte vectors, byte stores
    ((3, 2, 48, 3), (3, 3), (1, 1), (1, 1, 1, 1), 16, "float32", "float16", "bias", 8,
     {}, dict(pads=(1, 1, 1, 1))),                      # one pool row: a tile of one
]


def _pool_out(ho, wo, pads):
    return (ho + pads[0] + pads[2] - 3) // 2 + 1, (wo + pads[1] + pads[3] - 3) // 2 + 1


def _sources(case, carry=True):
    """(pooled, unpooled) kernels of a case; ``carry``: StemPool's."""
    xs, k, s, pads, cout, dt, dt_out, epi, _, opts, pool = case
    ho, wo = _out_hw(xs, k, s, pads)
    hp, wp = _pool_out(ho, wo, pool["pads"])
    epilogue, modes = _epilogue_spec(epi, dt_out)
    args = (xs, k, s, pads, (xs[0], ho, wo, cout), dt, dt_out, epilogue, modes)
    pooled = SM.StemMmaSource(*args, **opts, pool=dict(pool, out_shape=(xs[0], hp, wp, cout),
                                                       carry=carry))
    return pooled, SM.StemMmaSource(*args, **dict(opts, rows=True))


def _gpu_max_pool(y, pads, hp, wp, pad_value=None, floor=None, code_floor=None):
    """The GPU pool kernel's 3x3 / 2 max pool of NHWC ``y`` (PoolSource): each window
    scanned in order from -inf (-128 for codes) or ``floor`` with ``acc = v > acc ? v :
    acc``, pad cells (within ``pads``) as ``pad_value`` or skipped, codes raised to
    ``code_floor``; float results in float32 (stored as y's dtype)."""
    n, ho, wo, c = y.shape
    codes = y.dtype == np.int8
    acc_t = np.int64 if codes else np.float32
    init = -128 if codes else (-np.inf if floor is None else floor)
    out = np.full((n, hp, wp, c), init, acc_t)
    for p in range(hp):
        for q in range(wp):
            acc = out[:, p, q]
            for i in range(2 * p - pads[0], 2 * p - pads[0] + 3):
                for j in range(2 * q - pads[1], 2 * q - pads[1] + 3):
                    if 0 <= i < ho and 0 <= j < wo:
                        v = y[:, i, j].astype(acc_t)
                    elif pad_value is not None and i < ho + pads[2] and j < wo + pads[3]:
                        v = np.full_like(acc, pad_value)
                    else:
                        continue
                    acc = np.where(v > acc, v, acc)
            out[:, p, q] = acc
    if code_floor is not None:
        out = np.maximum(out, code_floor)
    return out.astype(y.dtype)


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    from tests.engine.test_qmma_codegen import FAST_SHIMS
    from tests.engine.test_quant_codegen import QUANT_SHIMS
    if _host_compiler() is None:
        pytest.skip("no host C++ compiler")
    srcs = [s for case in CASES for s in _sources(case)] + \
        [_sources(case, carry=False)[0] for case in CASES]
    text = HOST_SHIMS + THREAD_SHIMS + MMA_SHIMS + C.MATH_HELPERS + QUANT_SHIMS + FAST_SHIMS + \
        SM.Q_HELPERS + SM.POOL_HELPERS + "\n".join(
            _rename(s.source.replace(SM.Q_HELPERS, "").replace(SM.POOL_HELPERS, ""), k) +
            _driver(s, k) for k, s in enumerate(srcs))
    return srcs, _build(text, tmp_path_factory.mktemp("stem_pool"), "stem_pool")


def _run(so, k, src, ins, y):
    args = [ins[0], _wt(ins[1], src)] + [{2: ins[2], 3: ins[3], 4: ins[4]}[i]
                                         for i in src.operands] + [y, ins[0].shape[0]]
    _run_host(so, k, args, src.blocks, src.threads)


@pytest.mark.parametrize("carry", [True, False])
@pytest.mark.parametrize("k", range(len(CASES)))
def test_the_pooled_kernel_stores_the_pool_of_the_unpooled_output(host_kernels, k, carry):
    """Case ``k``'s pooled kernel (a tile's first conv row carried from the tile before in
    the block, or computed again) against its unpooled row-tile kernel's output pooled as
    the GPU pool kernel pools: equal everywhere (float16 by value; codes exactly), with NaN
    and +-inf pixels (NaN results passed over, a window of them -inf or its code), every
    output written and nothing before y."""
    srcs, so = host_kernels
    at = 2 * k if carry else 2 * len(CASES) + k
    pooled, plain = srcs[at], srcs[2 * k + 1]
    assert pooled.pool.carry == carry
    case = CASES[k]
    xs, kk, st, pads, cout, dt, dt_out, epi, offset, opts, pool = case
    assert pooled.rows["pr"] >= 1 and pooled.pool is not None and plain.pool is None
    ins = _inputs(case[:10], seed=300 + k)
    ins[0][0, min(2, xs[1] - 1), 3, :] = np.nan        # NaN conv results near the top-left
    ins[0][0, min(5, xs[1] - 1), 9, 1] = np.inf
    ins[0][-1, -2, min(20, xs[2] - 1), 0] = -np.inf
    ho, wo = _out_hw(xs, kk, st, pads)
    conv = np.zeros((xs[0], ho, wo, cout), dt_out)
    _run(so, 2 * k + 1, plain, ins, conv)
    hp, wp = _pool_out(ho, wo, pool["pads"])
    want = _gpu_max_pool(conv, pool["pads"], hp, wp, pool.get("pad_value"), pool.get("floor"),
                         pool.get("code_floor"))
    what = f"pooled case {k}"
    if dt_out == "int8":
        assert (conv == -128).any(), f"{what}: no NaN code to pass over"
    else:
        assert np.isnan(conv).any() and np.isinf(conv).any(), f"{what}: no NaN / inf"
    # two fills: an output left unwritten cannot equal want in both runs
    for fill in ((99, -99) if dt_out == "int8" else (np.nan, 7.0)):
        buf = np.full(want.size + offset, fill, dt_out)
        y = buf[offset:].reshape(want.shape)
        _run(so, at, pooled, ins, y)
        assert np.array_equal(buf[:offset], np.full(offset, fill, dt_out), equal_nan=True), \
            f"{what}: wrote before y"
        bad = np.flatnonzero(y != want)
        assert not len(bad), f"{what}: {len(bad)} of {y.size} differ, e.g. at " \
            f"{np.unravel_index(bad[:3], y.shape)}: {y.ravel()[bad[:3]]} vs " \
            f"{want.ravel()[bad[:3]]}"


def test_the_cases_cover_what_the_pool_takes():
    """Several tiles an image and a last tile past the pool rows, one and two pool rows a
    tile, one and two m-tiles a warp, two chunks, a looping grid, float16 and int8 stores of
    16, 8 and fewer bytes (guards edits of CASES)."""
    srcs = [_sources(case)[0] for case in CASES]
    rows = [s.rows for s in srcs]
    assert {r["nm"] for r in rows} == {1, 2}
    assert any(r["pr"] == 1 for r in rows) and any(r["pr"] > 1 for r in rows)
    assert any(s.pool.out_shape[1] % r["pr"] for s, r in zip(srcs, rows))
    assert any(r["blocks_per_image"] > 1 for r in rows)
    assert any(len(SM.chunks(s.dims["cout"])) == 2 for s in srcs)
    assert any(s.blocks < s.tiles for s in srcs)
    # runs of several tiles a block (carried rows), across an image's end
    assert any(-(-s.tiles // s.blocks) > 1 and s.n > 1 for s in srcs)
    assert {s.out_dtype for s in srcs} == {"float16", "int8"}
    assert any(s.out_dtype == "int8" and s.dims["cout"] % 16 for s in srcs)
    assert {c[8] for c in CASES} >= {0, 1, 2}


def test_the_resnet_stems_pool_fits_two_blocks_an_sm():
    """ResNet50's stem (224 x 224 x 3, 7x7 / 2 -> 64) with its 3x3 / 2 pool: float16 two pool
    rows a tile (five conv rows, one shared with the tile before), int8 three; shared memory
    within ROW_SMEM_LIMIT (two blocks an SM on Hopper)."""
    for dt, opts, pr in (("float16", {}, 2),
                         ("int8", dict(out_scale=0.02, nan_code=-128), 3)):
        src = SM.StemMmaSource((128, 224, 224, 3), (7, 7), (2, 2), (3, 3, 3, 3),
                               (128, 112, 112, 64), "float32", dt, [], {}, **opts,
                               pool=dict(out_shape=(128, 56, 56, 64), pads=(1, 1, 1, 1),
                                         pad_value=0.0))
        assert src.rows["pr"] == pr and src.rows["r"] == 2 * pr + 1
        assert src.smem_bytes <= SM.ROW_SMEM_LIMIT and "fold2" in src.source


def test_what_the_pool_refuses():
    ok = dict(x_shape=(1, 16, 32, 3), k_hw=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
              out_shape=(1, 16, 32, 16), in_dtype="float32", out_dtype="float16",
              epilogue=[], operand_modes={})
    pool = dict(out_shape=(1, 8, 16, 16), pads=(1, 1, 1, 1))
    SM.StemMmaSource(**ok, pool=pool)
    i8 = dict(out_dtype="int8", out_scale=0.1)
    for change, pchange, match in [
            ({}, dict(pads=(0, 0, 1, 1)), "pads \\(1, 1, <=2, <=1\\)"),
            ({}, dict(pads=(1, 1, 1, 2)), "pads \\(1, 1, <=2, <=1\\)"),
            ({}, dict(pads=(1, 1)), "pools 2-D"),
            (dict(x_shape=(1, 1, 32, 3), out_shape=(1, 1, 32, 16)),
             dict(out_shape=(1, 0, 16, 16), pads=(1, 1, 0, 1)), "pads \\(1, 1"),
            (i8, dict(pad_value=-129.0), "pad code is an integer in \\[-128, 127\\]"),
            (i8, dict(pad_value=300.0), "pad code"),
            (i8, dict(pad_value=0.5), "pad code"),
            (i8, dict(code_floor=200), "code floor is an integer in"),
            (i8, dict(code_floor=-129), "code floor"),
            ({}, dict(out_shape=(1, 8, 15, 16)), "half its width"),
            (dict(x_shape=(1, 16, 24, 3), out_shape=(1, 16, 24, 16)),
             dict(out_shape=(1, 8, 12, 16)), "multiple of 16"),
            ({}, dict(pad_value=float("nan")), "NaN pad"),
            ({}, dict(code_floor=-127), "code floor belongs"),
            (i8, dict(floor=0.0), "no float floor"),
            (dict(rows=False), {}, "row tiles only")]:
        with pytest.raises(ValueError, match=match):
            SM.StemMmaSource(**dict(ok, **change), pool=dict(pool, **pchange))
