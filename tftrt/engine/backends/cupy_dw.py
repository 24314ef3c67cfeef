"""Tactic ``dw_tiled`` on CuPy: 2-D depthwise convs as the shared-memory tiled kernel of
``cuda_source_dw`` (a block stages an input tile with its halo, each thread computes several
outputs of one channel from it), the layer's epilogue fused.

The CuPy backend offers the tactic unless ``TFTRT_DW_TILED=0`` (``cuda_source_dw.enabled``);
the builder times it against ``dw_direct`` and cuDNN like any other candidate.
"""

from __future__ import annotations

from tftrt.engine.backends import cupy_kernels as K
from tftrt.engine.backends.cuda_source_dw import KERNEL, DwTiledSource, layer_params
from tftrt.engine.backends.cupy_layers import DepthwiseConv, Impl


class DepthwiseTiled(Impl):
    """A depthwise conv (multiplier 1, dilation 1, stride 1 or 2, up to 9x9) as ``dw_tiled``:
    the vector build when x is aligned to its loads, else the scalar build (compiled on first
    use). Raises ValueError for a layer the kernel does not take (``layer_params``,
    ``DwTiledSource``)."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        p = layer_params(net, layer)
        sms = K._device_sms()
        vec = DwTiledSource(**p, sms=sms)
        self.srcs = {True: vec, False: vec if vec.vec == 1 else
                     DwTiledSource(**p, vec=1, sms=sms)}
        self._kernels = {}
        self._kernel(True)  # compiled now: a source NVRTC refuses fails the build, not a run
        self.operands = vec.operands
        w = layer.inputs[1]
        self.wt = DepthwiseConv._prep(weights[w]) if w in weights else None

    def _kernel(self, aligned: bool):
        if aligned not in self._kernels:
            src = self.srcs[aligned]
            kernel = K._raw_kernel(src.source, KERNEL)
            if kernel.max_threads_per_block < src.threads:  # compiles it
                raise ValueError(f"{KERNEL} compiled for at most {kernel.max_threads_per_block} "
                                 f"threads a block, its tile needs {src.threads}")
            self._kernels[aligned] = kernel
        return self._kernels[aligned]

    def run(self, ins, outs, ws):
        x = ins[0]
        wt = self.wt if self.wt is not None else DepthwiseConv._prep(ins[1])
        aligned = x.data.ptr % self.srcs[True].align == 0
        src = self.srcs[aligned]
        args = [x, wt] + [ins[i] for i in self.operands] + [outs[0]]
        self._kernel(aligned)((src.blocks,), (src.threads,), tuple(args))
