"""Tactic ``stem_direct`` on CuPy: a few-channel convolution (a network's stem) as the direct
kernel of ``cuda_source_stem`` (a block stages the filter and an input tile in shared memory;
each lane computes px x cc outputs in float32), the layer's epilogue fused.

The CuPy backend offers the tactic for the group-1 2-D convolutions the kernel takes (K =
KH*KW*Cin up to ``cuda_source_stem.MAX_K``, Cout a multiple of 4), unless
``TFTRT_STEM_DIRECT=0``; the builder times it against cuDNN and im2col like any other
candidate.
"""

from __future__ import annotations

import cupy as cp

from tftrt.engine.backends import cupy_kernels as K
from tftrt.engine.backends.cuda_source_stem import KERNEL, StemSource, layer_params
from tftrt.engine.backends.cupy_layers import Impl


class StemDirect(Impl):
    """A convolution as ``stem_conv``. Raises ValueError for a layer the kernel does not take
    (``layer_params``, ``StemSource``)."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self.src = StemSource(**layer_params(net, layer))
        self.kernel = K._raw_kernel(self.src.source, KERNEL)
        if self.kernel.max_threads_per_block < self.src.threads:  # compiles it: fails the build
            raise ValueError(f"{KERNEL} compiled for at most {self.kernel.max_threads_per_block} "
                             f"threads a block, its tile needs {self.src.threads}")
        w = layer.inputs[1]
        self.wt = self._prep(weights[w]) if w in weights else None

    @staticmethod
    def _prep(w):
        """[Cout, KH, KW, Cin] -> [KH*KW*Cin, Cout] float32."""
        cout = w.shape[0]
        return cp.ascontiguousarray(w.reshape(cout, -1).T.astype(cp.float32))

    def run(self, ins, outs, ws):
        wt = self.wt if self.wt is not None else self._prep(ins[1])
        args = [ins[0], wt] + [ins[i] for i in self.src.operands] + [outs[0]]
        self.kernel((self.src.blocks,), (self.src.threads,), tuple(args))
