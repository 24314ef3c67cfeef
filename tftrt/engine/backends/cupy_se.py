"""The ``se`` layer (squeeze-and-excitation, passes/se_fusion) on CuPy: the generated kernels
of ``cuda_source_se`` -- pool partial sums, the gate (a block per sample, or for a few samples
FC1 and FC2 spread over blocks: the split path), the scale -- with the partial sums, the gate
and the split path's hidden vector in the layer's scratch.

On by default since an H200 checked them (tests/gpu/test_se_gpu.py) and timed them
(EfficientNetB0 batch 1 0.735 -> 0.401 ms with the tiled depthwise kernel, benchmarks/README.md);
``TFTRT_FUSE_SE=0`` (``fuse_se``) keeps the blocks unfused.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

import cupy as cp

from tftrt.engine.backends import cupy_kernels as K
from tftrt.engine.backends.cuda_source_se import THREADS, SeSource
from tftrt.engine.backends.cupy_layers import Impl, _scratch
from tftrt.engine.network import Layer, Network
from tftrt.env import env_bool

_FLOATS = ("float16", "float32")


def fuse_se() -> bool:
    """``TFTRT_FUSE_SE`` is not 0 / false (TensorFlow's spellings, tftrt.env; default on)."""
    return env_bool("TFTRT_FUSE_SE", True)


def _sources(net: Network, layer: Layer, vec=None, sms: int = 132, split=None) -> SeSource:
    xs = tuple(net.tensors[layer.inputs[0]].shape)
    x_dt, y_dt = (net.tensors[t].dtype for t in (layer.inputs[0], layer.outputs[0]))
    if x_dt not in _FLOATS or y_dt not in _FLOATS:
        raise ValueError(f"se kernels take float16 / float32 x and y, not {x_dt} / {y_dt}")
    hw = int(np.prod(xs[1:-1], dtype=np.int64))
    cse = net.tensors[layer.inputs[1]].shape[0]
    return SeSource(xs[0], hw, xs[-1], cse, x_dt, y_dt, layer.attrs, bool(layer.inputs[2]),
                    bool(layer.inputs[4]), vec=vec, sms=sms, split=split)


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


def _f32(net, weights, name, transpose=False):
    """A constant operand as a contiguous float32 device array (transposed: [Cin, Cout])."""
    w = weights.get(name)
    w = cp.asarray(net.weights[name]) if w is None else w
    w = w.astype(cp.float32)
    return cp.ascontiguousarray(w.T if transpose else w)


class SeLayer(Impl):
    """``se`` as se_pool -> se_fc -> se_scale, or se_pool -> se_fc1 -> se_fc2 -> se_scale for
    a few samples (``split``; cuda_source_se.split_default), with 16-byte loads where x, y and
    the scratch are aligned, else the scalar build of the same kernels.

    Args (beyond Impl's):
      split: force the path (True: split, False: a block per sample); None: from N and the
        device's SM count. Tests force it; the backend leaves it None.
    """

    def __init__(self, net, layer, weights, opts, split=None):
        super().__init__(net, layer, weights, opts)
        sms = K._device_sms()
        self.srcs = {True: _sources(net, layer, sms=sms, split=split)}
        self.split = self.srcs[True].split
        self.srcs[False] = self.srcs[True] if self.srcs[True].vec == 1 else \
            _sources(net, layer, vec=1, sms=sms, split=self.split)
        self.workspace = max(s.workspace for s in self.srcs.values())
        self.kernels = {v: tuple(_module(s.source).get_function(k) for k in s.kernel_names)
                        for v, s in self.srcs.items()}
        ins = layer.inputs
        # se_fc reads the weights as [Cin, Cout], se_fc1 / se_fc2 as [Cout, Cin]
        self.w1, self.w2 = (_f32(net, weights, ins[i], not self.split) for i in (1, 3))
        zero = cp.zeros(1, cp.float32)  # an absent bias: never read
        self.b1 = _f32(net, weights, ins[2]) if ins[2] else zero
        self.b2 = _f32(net, weights, ins[4]) if ins[4] else zero
        s = self.srcs[True]
        self.fc_blocks = tuple(max(1, min(t, sms * 8)) for t in (
            (s.fc1_tasks, s.fc2_tasks) if self.split else (s.n,)))

    def run(self, ins, outs, ws):
        x, y = ins[0], outs[0]
        ws = _scratch(ws, self.workspace)
        vec = all(a.data.ptr % 16 == 0 for a in (x, y, ws))
        s = self.srcs[vec]
        part = ws[:s.part_bytes].view(cp.float32)
        gate = ws[s.gate_offset:s.gate_offset + s.gate_bytes].view(cp.float32)
        pool, *fcs, scale = self.kernels[vec]
        K.launch(pool, s.pool_work, [x, part])
        if self.split:
            hidden = ws[s.hidden_offset:s.hidden_offset + s.hidden_bytes].view(cp.float32)
            fc1, fc2 = fcs
            fc1((self.fc_blocks[0],), (THREADS,), (part, self.w1, self.b1, hidden))
            fc2((self.fc_blocks[1],), (THREADS,), (hidden, self.w2, self.b2, gate))
        else:
            fcs[0]((self.fc_blocks[0],), (THREADS,),
                   (part, self.w1, self.b1, self.w2, self.b2, gate))
        K.launch(scale, s.scale_work, [x, gate, y])
