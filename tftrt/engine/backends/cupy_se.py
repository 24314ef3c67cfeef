"""The ``se`` layer (squeeze-and-excitation, passes/se_fusion) on CuPy: the three generated
kernels of ``cuda_source_se`` -- pool partial sums, the per-sample gate, the scale -- with the
partial sums and the gate in the layer's scratch.

Opt-in: the CuPy backend accepts ``se`` layers only with ``TFTRT_FUSE_SE=1`` (``fuse_se``)
until these kernels have been checked on a GPU; otherwise the blocks stay unfused.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np

import cupy as cp

from tftrt.engine.backends import cupy_kernels as K
from tftrt.engine.backends.cuda_source_se import THREADS, SeSource
from tftrt.engine.backends.cupy_layers import Impl, _scratch
from tftrt.engine.network import Layer, Network

_FLOATS = ("float16", "float32")


def fuse_se() -> bool:
    """``TFTRT_FUSE_SE`` is 1 / true."""
    return os.environ.get("TFTRT_FUSE_SE", "").strip().lower() in ("1", "true")


def _sources(net: Network, layer: Layer, vec=None, sms: int = 132) -> SeSource:
    xs = tuple(net.tensors[layer.inputs[0]].shape)
    x_dt, y_dt = (net.tensors[t].dtype for t in (layer.inputs[0], layer.outputs[0]))
    if x_dt not in _FLOATS or y_dt not in _FLOATS:
        raise ValueError(f"se kernels take float16 / float32 x and y, not {x_dt} / {y_dt}")
    hw = int(np.prod(xs[1:-1], dtype=np.int64))
    cse = net.tensors[layer.inputs[1]].shape[0]
    return SeSource(xs[0], hw, xs[-1], cse, x_dt, y_dt, layer.attrs, bool(layer.inputs[2]),
                    bool(layer.inputs[4]), vec=vec, sms=sms)


def se_unsupported(net: Network, layer: Layer) -> Optional[str]:
    """Why the kernels cannot run ``layer`` (dtypes, shared memory, a stage op with no CUDA
    lowering), or None. Generates the sources only: no GPU work."""
    try:
        _sources(net, layer)
    except (ValueError, NotImplementedError) as e:
        return str(e)
    return None


@functools.lru_cache(maxsize=None)
def _module(source: str) -> cp.RawModule:
    return cp.RawModule(code=source, options=("-std=c++14",))


def _align(n: int) -> int:
    return (n + 255) // 256 * 256


def _f32(net, weights, name, transpose=False):
    """A constant operand as a contiguous float32 device array (transposed: [Cin, Cout])."""
    w = weights.get(name)
    w = cp.asarray(net.weights[name]) if w is None else w
    w = w.astype(cp.float32)
    return cp.ascontiguousarray(w.T if transpose else w)


class SeLayer(Impl):
    """``se`` as se_pool -> se_fc -> se_scale (16-byte loads where x, y and the scratch are
    aligned, else the scalar build of the same kernels)."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        sms = K._device_sms()
        self.srcs = {True: _sources(net, layer, sms=sms)}
        self.srcs[False] = self.srcs[True] if self.srcs[True].vec == 1 else \
            _sources(net, layer, vec=1, sms=sms)
        self.workspace = max(_align(s.part_bytes) + s.gate_bytes for s in self.srcs.values())
        self.kernels = {v: tuple(_module(s.source).get_function(k) for k in (
            "se_pool", "se_fc", "se_scale")) for v, s in self.srcs.items()}
        ins = layer.inputs
        self.w1t, self.w2t = _f32(net, weights, ins[1], True), _f32(net, weights, ins[3], True)
        zero = cp.zeros(1, cp.float32)  # an absent bias: never read
        self.b1 = _f32(net, weights, ins[2]) if ins[2] else zero
        self.b2 = _f32(net, weights, ins[4]) if ins[4] else zero
        self.fc_blocks = max(1, min(self.srcs[True].n, sms * 8))

    def run(self, ins, outs, ws):
        x, y = ins[0], outs[0]
        ws = _scratch(ws, self.workspace)
        vec = all(a.data.ptr % 16 == 0 for a in (x, y, ws))
        s = self.srcs[vec]
        pool, fc, scale = self.kernels[vec]
        part = ws[:s.part_bytes].view(cp.float32)
        off = _align(s.part_bytes)
        gate = ws[off:off + s.gate_bytes].view(cp.float32)
        K.launch(pool, s.pool_work, [x, part])
        fc((self.fc_blocks,), (THREADS,), (part, self.w1t, self.b1, self.w2t, self.b2, gate))
        K.launch(scale, s.scale_work, [x, gate, y])
