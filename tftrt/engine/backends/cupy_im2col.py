"""Tactic ``im2col`` on CuPy: a float16 convolution with few, unaligned input channels (a
network's stem) as a copy into a column matrix and a cuBLASLt GEMM with the layer's epilogue,
a chunk of output rows at a time (``cuda_source_im2col`` says why and builds the copy kernel).

The CuPy backend offers it for group-1 2-D convolutions whose input channels are not a
multiple of 8 and whose KH*KW*Cin is at most ``cuda_source_im2col.MAX_K``
(``cuda_source_im2col.applies``); the builder times it against cuDNN. It is also the GPU path
of a convolution cuDNN has no plan for (seen: 3 -> 16 channels, 32 x 32, FP16).
"""

from __future__ import annotations

import numpy as np

import cupy as cp

from tftrt.engine.backends import cuda_source_im2col as I2C
from tftrt.engine.backends import cupy_kernels as K
from tftrt.engine.backends.cupy_layers import GemmImpl, _dtype, _random, _scratch, _shape
from tftrt.env import env_float

_ALIGN_WS = 256  # the GEMM's scratch starts this aligned after the column chunk


def chunk_cap() -> int:
    """Bytes of one chunk of the column matrix (``TFTRT_IM2COL_CHUNK_MB``, default 32)."""
    return max(1 << 16, int(env_float("TFTRT_IM2COL_CHUNK_MB", I2C.CHUNK_BYTES / 2 ** 20,
                                      minimum=0.0625) * 2 ** 20))


def _chunk_operands(spec):
    """A chunk's GEMM operands to tune on: columns [m, kpad], filter [Cout, kpad], output
    [m, Cout] (not the layer's tensors: a chunk is a part of them, of other shapes)."""
    return (_random((spec.m, spec.k), spec.ab_dtype), _random((spec.n, spec.k), spec.ab_dtype),
            cp.empty((spec.m, spec.n), spec.d_dtype))


class _ChunkGemm(GemmImpl):
    """The GEMM of the shorter last chunk."""

    def _tune_operands(self, net, spec, a_name, b_name, y_name):
        return _chunk_operands(spec)


class ConvIm2col(GemmImpl):
    """The copy kernel and one cuBLASLt GEMM ([rows, kpad] x [kpad, Cout], tensor cores, the
    epilogue cuBLASLt fuses) per chunk of output rows; the rest of the epilogue runs after the
    last chunk. Raises ValueError for a layer it does not take."""

    def __init__(self, net, layer, weights, opts):
        a = layer.attrs
        x, w, y = layer.inputs[0], layer.inputs[1], layer.outputs[0]
        xs, ws_, ys = _shape(net, x), _shape(net, w), _shape(net, y)
        if len(xs) != 4 or len(ws_) != 4 or a["group"] != 1 or ws_[-1] != xs[-1]:
            raise ValueError("not a group-1 2-D conv")
        if _dtype(net, w) != "float16" or _dtype(net, x) not in ("float16", "float32"):
            raise ValueError("im2col takes float16 filters and float16 / float32 inputs")
        self.src = I2C.Im2colSource(xs, ws_[1:3], a["strides"], a.get("dilations", (1, 1)),
                                    a["pads"], ys[1:3], _dtype(net, x))
        if self.src.k > I2C.MAX_K:
            raise ValueError(f"KH*KW*Cin = {self.src.k} > {I2C.MAX_K}")
        self.rows = int(ys[0]) * int(ys[1]) * int(ys[2])
        self.cout = int(ys[3])
        self.per = I2C.chunk_rows(self.rows, self.src.kpad, 2, chunk_cap())
        self.col_bytes = -(-self.per * self.src.kpad * 2 // _ALIGN_WS) * _ALIGN_WS
        kp = self.src.kpad
        super().__init__(net, layer, weights, opts,
                         (min(self.per, self.rows), self.cout, kp, 1, False, True, 0, 0, 0),
                         x, w)
        self.cast = [False, False]
        self.tail = None  # the GEMM of a shorter last chunk
        last = self.rows % self.per
        if last:
            # The shorter last chunk (rare: no divisor of the rows fit) keeps the layer's
            # record, made for the full chunk's GEMM: a record for another GEMM gives
            # cuBLASLt's first algorithm, untimed, so the engines a profile makes for other
            # shapes time nothing here either.
            self.tail = _ChunkGemm(net, layer.clone(), weights, opts,
                                   (last, self.cout, kp, 1, False, True, 0, 0, 0), x, w)
        self.workspace = self.col_bytes + max(self.gemm.workspace,
                                              self.tail.gemm.workspace if self.tail else 0)
        self.wpad = self._prep(weights[w]) if w in weights else None
        self.kernel = K._raw_kernel(self.src.source, I2C.KERNEL)
        if self.kernel.max_threads_per_block < K.THREADS:  # compiles it: fails the build
            raise ValueError(f"{I2C.KERNEL} compiled for at most "
                             f"{self.kernel.max_threads_per_block} threads a block")

    def _prep(self, w):
        """[Cout, KH, KW, Cin] -> [Cout, kpad] float16, zero past KH*KW*Cin."""
        out = cp.zeros((self.cout, self.src.kpad), cp.float16)
        out[:, :self.src.k] = w.reshape(self.cout, -1)
        return out

    def _tune_operands(self, net, spec, a_name, b_name, y_name):
        return _chunk_operands(spec)

    def run(self, ins, outs, ws):
        x, y = ins[0], outs[0]
        wpad = self.wpad if self.wpad is not None else self._prep(ins[1])
        c = ins[self.res_i] if self.res_i is not None else None
        ws = _scratch(ws, self.workspace)
        col, gws = ws.data.ptr, ws.data.ptr + self.col_bytes
        stream = cp.cuda.get_current_stream().ptr
        row_bytes = self.cout * y.itemsize
        for r0, n in I2C.chunks(self.rows, self.per):
            K.launch(self.kernel, self.src.work(n), [x, ws, np.int64(r0)])
            part = self if n == self.per else self.tail
            bias = None  # the chunks' GEMMs may each have taken another bias dtype
            if part.bias_i is not None:
                bias = part.bias_const if part.bias_const is not None else \
                    ins[part.bias_i].astype(part.bias_dtype, copy=False)
            off = r0 * row_bytes
            part.gemm.run(col, wpad.data.ptr, c.data.ptr + off if c is not None else 0,
                          y.data.ptr + off, bias.data.ptr if bias is not None else None, gws,
                          part.gemm.workspace, stream)
        self.post(y, ins)

