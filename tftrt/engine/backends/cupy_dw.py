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


class TiledKernels:
    """The ``dw_tiled`` kernels of one layer (``params``: ``layer_params``'): the vector build,
    used when x is aligned to its loads, compiled now (a source NVRTC refuses fails the
    build, not a run), and the scalar build, compiled on first use."""

    def __init__(self, params: dict):
        sms = K._device_sms()
        vec = DwTiledSource(**params, sms=sms)
        self.srcs = {True: vec, False: vec if vec.vec == 1 else
                     DwTiledSource(**params, vec=1, sms=sms)}
        self._kernels = {}
        self._kernel(True)
        self.operands = vec.operands

    def _kernel(self, aligned: bool):
        if aligned not in self._kernels:
            src = self.srcs[aligned]
            kernel = K._raw_kernel(src.source, KERNEL)
            if kernel.max_threads_per_block < src.threads:  # compiles it
                raise ValueError(f"{KERNEL} compiled for at most {kernel.max_threads_per_block} "
                                 f"threads a block, its tile needs {src.threads}")
            self._kernels[aligned] = kernel
        return self._kernels[aligned]

    def run(self, x, wt, ins, y) -> None:
        """``y`` from ``x``, the float32 filter ``wt`` [taps, C] and the layer's inputs
        ``ins`` (the epilogue operands among them)."""
        aligned = x.data.ptr % self.srcs[True].align == 0
        src = self.srcs[aligned]
        args = [x, wt] + [ins[i] for i in self.operands] + [y]
        self._kernel(aligned)((src.blocks,), (src.threads,), tuple(args))


class DepthwiseTiled(Impl):
    """A depthwise conv (multiplier 1, dilation 1, stride 1 or 2, up to 9x9) as ``dw_tiled``
    (:class:`TiledKernels`). Raises ValueError for a layer the kernel does not take
    (``layer_params``, ``DwTiledSource``)."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self.kernels = TiledKernels(layer_params(net, layer))
        w = layer.inputs[1]
        self.wt = DepthwiseConv._prep(weights[w]) if w in weights else None

    @property
    def srcs(self):
        return self.kernels.srcs

    def run(self, ins, outs, ws):
        wt = self.wt if self.wt is not None else DepthwiseConv._prep(ins[1])
        self.kernels.run(ins[0], wt, ins, outs[0])
