"""Tactic ``stem_mma`` on CuPy: a few-channel convolution (a network's stem) on tensor cores,
as the implicit-im2col kernel of ``cuda_source_stem_mma`` (row tiles: a block stages its
output rows' input rows in shared memory as float16, or gathers: each warp gathers its float16
A fragments from the image; the filter waits in shared memory, float32 accumulators), the
layer's epilogue fused, float16 output or int8 codes.

The CuPy backend offers the tactic for the group-1 2-D convolutions with a float16 output the
kernel takes (Kp = KH*KW*Cin rounded up to 16 at most ``cuda_source_stem_mma.MAX_K``, or
MAX_K_ROWS on row tiles with the channels padded to even; Cout a
multiple of 8 up to 256), unless ``TFTRT_STEM_MMA=0``; the builder times it against cuDNN,
im2col and stem_direct like any other candidate.
"""

from __future__ import annotations

import functools

import cupy as cp
import numpy as np

from tftrt.engine.backends import cupy_kernels as K
from tftrt.engine.backends.cuda_source_qmma import resident_blocks
from tftrt.engine.backends.cupy_kernels import device_props
from tftrt.engine.backends.cuda_source_stem_mma import (KERNEL, StemMmaSource, filter_matrix,
                                                        layer_params)
from tftrt.engine.backends.cupy_layers import Impl


class StemMma(Impl):
    """A convolution as ``stem_mma``. Raises ValueError for a layer the kernel does not take
    (``layer_params``, ``StemMmaSource``). Writes int8 codes for a layer with an
    ``output_scale`` (an INT8 model's stem before its int8 max pool, builder.py)."""

    int8_store = True  # cupy_backend.make_impl: the implementations an int8 store may use
    float32_x = True  # and those an FP16 conv reading float32 x may (precision.py)
    stem_pool = True  # and those a stem that took its max pool may (pool_fusion)

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self.src = StemMmaSource(**layer_params(net, layer))
        self.kernel = _kernel(self.src.source)
        if self.kernel.max_threads_per_block < self.src.threads:  # compiles it: fails the build
            raise ValueError(f"{KERNEL} compiled for at most {self.kernel.max_threads_per_block} "
                             f"threads a block, its blocks have {self.src.threads}")
        # row tiles: dynamic shared memory, past the 48 KB a launch gets without asking
        self.shared = self.src.smem_bytes if self.src.rows else 0
        if self.shared > self.kernel.max_dynamic_shared_size_bytes:
            self.kernel.max_dynamic_shared_size_bytes = self.shared
        self.blocks = grid(self.kernel, self.src)
        w = layer.inputs[1]
        self.wt = filter_matrix(weights[w], self.src, cp) if w in weights else None

    def run(self, ins, outs, ws):
        wt = self.wt if self.wt is not None else filter_matrix(ins[1], self.src, cp)
        args = [ins[0], wt] + [ins[i] for i in self.src.operands] + [outs[0],
                                                                       np.int64(self.src.n)]
        self.kernel((self.blocks,), (self.src.threads,), tuple(args),
                    shared_mem=self.shared)


def grid(kernel: cp.RawKernel, src: StemMmaSource) -> int:
    """Blocks of a launch of ``kernel`` (``src``'s): its :attr:`blocks`, or for pooled row
    tiles that carry a row from tile to tile (StemPool.carry) one wave of them, so that each
    block takes a run of consecutive tiles."""
    if src.pool is None or not src.pool.carry:
        return src.blocks
    props = device_props()
    per_sm = resident_blocks(kernel.num_regs, src.smem_bytes, src.threads, props)
    return min(src.blocks, per_sm * props["multiProcessorCount"])


@functools.lru_cache(maxsize=64)
def _kernel(source: str) -> cp.RawKernel:
    """One RawKernel per source (the same at every batch size): compiled once a process."""
    return K._raw_kernel(source, KERNEL)
