"""Tactic ``im2col`` (CuPy backend): a half-precision convolution with few, unaligned input
channels as an im2col copy and one cuBLASLt GEMM per chunk of output rows. This module builds
the copy kernel's CUDA source and plans the chunks; it imports neither CuPy nor a CUDA library
(tests build the source for the host). ``cupy_im2col`` runs it.

Why: a network's stem reads an image of 3 channels. On the H200 (2026-12-01, VGG16 FP16,
batch 128) cuDNN ran the 3 -> 64 3x3 convolution in 1.27-1.32 ms, 16.8 TFLOP/s, against
~650 TFLOP/s for every other convolution, whose floor (reading the image, writing the output)
is ~0.3 ms; padding the channels to 8 for cuDNN made it slower (1.27 ms, and the pass was removed).
Every zoo stem ran at 3.5-4.6x its floor. As a GEMM the convolution is
[N*OH*OW, K] x [K, Cout] with K = KH*KW*Cin small (27 for VGG, 147 for ResNet's 7x7): the
copy writes each output row's K inputs (K padded with zeros to a multiple of 8, the tensor
cores' alignment, ``kpad``), and cuBLASLt multiplies it by the filter, bias and activation in
its epilogue. The copy is done a chunk of rows at a time, small enough to stay in L2 for the
GEMM that reads it (:func:`chunk_rows`).

Column order of a row: (kh, kw, c), the filter's [Cout, KH, KW, Cin] flattened, so for one kh
the KW*Cin values of a row are contiguous in the NHWC input. A thread writes 8 columns (one
16-byte store of float16).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tftrt.engine.backends.cuda_source import ctype, grid_stride_source

KERNEL = "im2col"
ALIGN = 8            # columns per thread and the padding of K: 16 bytes of float16
# A chunk of the copy (TFTRT_IM2COL_CHUNK_MB); H200's L2 is 50 MB. On the H200 (2026-12-01)
# stems ran 2-6% faster with 32 MB chunks than with 16, and 16 faster than 8.
CHUNK_BYTES = 32 << 20
MAX_K = 1024         # the tactic takes convolutions with KH*KW*Cin up to this


def applies(net, layer) -> bool:
    """Whether tactic ``im2col`` is a candidate for ``layer``: a group-1 2-D convolution with
    a constant float16 filter, a float16 / float32 input whose channels are not a multiple of
    8, and KH*KW*Cin <= :data:`MAX_K`."""
    from tftrt.env import env_bool
    if not env_bool("TFTRT_IM2COL", True):
        return False
    if layer.kind != "conv" or "quant" in layer.attrs or int(layer.attrs.get("group", 1)) != 1:
        return False
    if len(layer.inputs) < 2 or layer.inputs[1] not in net.weights:
        return False
    x, w = net.tensors[layer.inputs[0]], net.tensors[layer.inputs[1]]
    if len(x.shape) != 4 or len(w.shape) != 4 or any(d is None for d in x.shape[1:]):
        return False
    return np.dtype(w.dtype).name == "float16" and \
        np.dtype(x.dtype).name in ("float16", "float32") and \
        int(x.shape[-1]) % ALIGN != 0 and int(np.prod(w.shape[1:])) <= MAX_K


def kpad(k: int) -> int:
    """K rounded up to :data:`ALIGN`."""
    return -(-int(k) // ALIGN) * ALIGN


def chunk_rows(rows: int, kp: int, itemsize: int = 2, cap: int = CHUNK_BYTES) -> int:
    """Rows of one chunk: the largest divisor of ``rows`` whose copy (``kp`` columns of
    ``itemsize`` bytes) fits in ``cap`` bytes, so that every chunk is the same GEMM; all rows
    when they fit. A divisor of fewer than 1/8 of the rows that fit (``rows`` with no such
    divisor, e.g. a prime) takes the cap's rows instead: the last chunk is then shorter."""
    rows, per = int(rows), max(1, int(kp) * int(itemsize))
    fit = max(1, int(cap) // per)
    if rows <= fit:
        return rows
    lo = -(-rows // fit)
    for n in range(lo, min(rows, 8 * lo) + 1):
        if rows % n == 0:
            return rows // n
    return fit


def chunks(rows: int, per: int) -> list:
    """[(first row, rows)] covering ``rows`` in chunks of ``per`` (the last may be shorter)."""
    return [(r, min(per, rows - r)) for r in range(0, rows, per)]


class Im2colSource:
    """The copy kernel ``im2col(x, col, row0, work)`` for an NHWC input of ``x_shape`` and a
    ``kh x kw`` filter: writes rows [row0, row0 + work / (kpad / 8)) of the column matrix
    ``col`` ([rows, kpad], float16, row ``r`` at ``col + (r - row0) * kpad``); columns past
    KH*KW*Cin and taps outside the input (padding) are 0. Sizes are baked in, the batch is
    not: the row count comes with each launch.

    Args:
      x_shape: (N, H, W, C); only H, W, C are baked in.
      kernel: (KH, KW); strides, dilations: (h, w); pads: (top, left, bottom, right);
      out_hw: (OH, OW); x_dtype: float16 or float32 (converted to float16 on the way).
    """

    def __init__(self, x_shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int], pads: Sequence[int], out_hw: Sequence[int],
                 x_dtype: str):
        _, h, w, c = (int(v) for v in x_shape)
        kh, kw = (int(v) for v in kernel)
        sh, sw = (int(v) for v in strides)
        dh, dw = (int(v) for v in dilations)
        pt, pl = int(pads[0]), int(pads[1])
        oh, ow = (int(v) for v in out_hw)
        x_dtype = np.dtype(x_dtype).name
        if x_dtype not in ("float16", "float32"):
            raise ValueError(f"im2col reads float16 or float32, not {x_dtype}")
        self.k = kh * kw * c
        self.kpad = kpad(self.k)
        self.groups = self.kpad // ALIGN   # threads of a row
        self.x_dtype = x_dtype
        xt = ctype(x_dtype)
        as_half = "xv" if x_dtype == "float16" else "f2h(xv)"
        # 64-bit offsets: a batch of large images passes 2**31 elements
        body = f"""long long r = row0 + t / {self.groups};
    const int g = (int)(t % {self.groups});
    const int ow = (int)(r % {ow}); long long q = r / {ow};
    const int oh = (int)(q % {oh}); const long long n = q / {oh};
    const int ih0 = oh * {sh} - {pt}, iw0 = ow * {sw} - {pl};
    unsigned short v[{ALIGN}];
#pragma unroll
    for (int j = 0; j < {ALIGN}; ++j) {{
      const int k = g * {ALIGN} + j;
      unsigned short h = 0;
      if (k < {self.k}) {{
        const int c = k % {c}, kx = (k / {c}) % {kw}, ky = k / {kw * c};
        const int ih = ih0 + ky * {dh}, iw = iw0 + kx * {dw};
        if (ih >= 0 && ih < {h} && iw >= 0 && iw < {w}) {{
          const {xt} xv = x[((n * {h} + ih) * {w} + iw) * {c} + c];
          h = {as_half};
        }}
      }}
      v[j] = h;
    }}
    uint4 p;
    p.x = v[0] | ((unsigned int)v[1] << 16); p.y = v[2] | ((unsigned int)v[3] << 16);
    p.z = v[4] | ((unsigned int)v[5] << 16); p.w = v[6] | ((unsigned int)v[7] << 16);
    reinterpret_cast<uint4*>(col)[t] = p;"""
        self.source = grid_stride_source(
            KERNEL, f"const {xt}* __restrict__ x, unsigned short* __restrict__ col, "
            f"const long long row0", "long long", 0, body)

    def work(self, rows: int) -> int:
        """Threads of a launch writing ``rows`` rows."""
        return int(rows) * self.groups

