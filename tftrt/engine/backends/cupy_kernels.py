"""CUDA kernels generated from the IR for the CuPy backend: pointwise programs (with broadcast
and 16-byte vector access), conv/matmul epilogues and depthwise convolution (NHWC); pooling,
padding, softmax, layer normalization and reductions are in ``cupy_kernels_nn``. The pointwise
and epilogue sources come from ``cuda_source`` (strings only, testable without a GPU).

Every kernel is CUDA C compiled by NVRTC through ``cupy.RawKernel`` with the layer's shapes baked
in as constants, so one layer gets one specialised kernel; CuPy caches compiled kernels on disk.
The grid-stride kernels take their work count as an argument instead (``launch`` passes it),
so the engines of a profile's batch sizes mostly share their kernels.
float16 is stored as ``unsigned short`` and converted with PTX ``cvt`` (no CUDA headers needed);
all float16 arithmetic runs in float32, as the numpy reference does.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import cupy as cp

# The sources are generated in cuda_source (no CuPy there); its names are re-exported here
# for the kernels of cupy_kernels_nn.
from tftrt.engine.backends.cuda_source import (  # noqa: F401
    CTYPES, PRELUDE, DepthwiseConvSource, PointwiseSource, _lit, activation_expr,
    activation_step, comptype, ctype, epilogue_program, grid_stride_source, load_expr, op_expr,
    store_expr)

THREADS = 256


class PointwiseKernel(PointwiseSource):
    """A pointwise program compiled for fixed input/output shapes and dtypes (source:
    :class:`cuda_source.PointwiseSource`).

    ``__call__(inputs, out)``: inputs are CuPy arrays (or None for unused inputs), ``out`` a
    C-contiguous array of the output shape (may alias a ``full`` input: element-wise in place).
    """

    def __init__(self, program: List[dict], in_shapes: Sequence[Tuple[int, ...]],
                 in_dtypes: Sequence[str], out_shape: Tuple[int, ...], out_dtype: str):
        super().__init__(program, in_shapes, in_dtypes, out_shape, out_dtype)
        self._kernels: Dict[bool, cp.RawKernel] = {}

    def kernel(self, vec: bool) -> cp.RawKernel:
        if vec not in self._kernels:
            self._kernels[vec] = _raw_kernel(self.sources[vec], self.kernel_name(vec))
        return self._kernels[vec]

    def __call__(self, inputs: Sequence[Optional[cp.ndarray]], out: cp.ndarray) -> None:
        args = [inputs[i] for i in self.used]
        vec = self.vectorizable and all(
            a.data.ptr % 16 == 0 for i, a in zip(self.used, args)
            if a.size == self.n or i in self.vec_last) and out.data.ptr % 16 == 0
        work = self.work(vec)
        if work == 0:
            return
        launch(self.kernel(vec), work, args + [out])


@functools.lru_cache(maxsize=None)
def _raw_kernel(source: str, name: str) -> cp.RawKernel:
    return cp.RawKernel(source, name, options=("-std=c++14",))


def _device_sms() -> int:
    return device_props()["multiProcessorCount"]


def device_props() -> dict:
    """The current device's properties (CUDA's cudaDeviceProp as CuPy gives it), read once."""
    return _props(cp.cuda.runtime.getDevice())


@functools.lru_cache(maxsize=None)
def _props(dev: int) -> dict:
    return cp.cuda.runtime.getDeviceProperties(dev)


def launch(kernel: cp.RawKernel, work: int, args: Sequence, threads: int = THREADS,
           grid_stride: bool = True) -> None:
    """Launches ``kernel`` over ``work`` items on the current stream (grid-stride loop). The
    kernel takes ``work`` as its last parameter, after ``args`` (``cuda_source.WORK_PARAM``:
    every kernel launched here is a grid-stride kernel whose source does not bake it in)."""
    blocks = (work + threads - 1) // threads
    if grid_stride:
        blocks = max(1, min(blocks, _device_sms() * 16))
    kernel((blocks,), (threads,), tuple(args) + (np.int64(work),))


# --- depthwise convolution (NHWC, group == C_in) -------------------------------------------------
class DepthwiseConvKernel(DepthwiseConvSource):
    """:class:`cuda_source.DepthwiseConvSource` compiled; called with CuPy arrays."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kernel = None
        self._vec_kernel = None

    def __call__(self, x, wt, operands: Dict[int, cp.ndarray], y) -> None:
        args = [x, wt] + [operands[i] for i in self.operands] + [y]
        if self.vec_source is not None and all(a.data.ptr % 16 == 0 for a in args):
            if self._vec_kernel is None:
                self._vec_kernel = _raw_kernel(self.vec_source, "dwconv_vec")
            launch(self._vec_kernel, self.vec_work, args)
            return
        if self._kernel is None:
            self._kernel = _raw_kernel(self.source, "dwconv")
        launch(self._kernel, self.work, args)
