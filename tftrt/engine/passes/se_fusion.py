"""Squeeze-and-excitation fusion: global mean -> FC -> act -> FC -> act -> x * gate becomes one
``se`` layer.

EfficientNet, EfficientNetV2 and MobileNetV3 reach the engine (after shuffle folding, vertical
and elementwise fusion) with each SE block as

    x [N, H, W, C] -> reduce mean over H, W (keepdims 0 or 1) [-> reshape [N, 1, 1, C]]
      [-> cast to float16: FP16 engines keep reductions in float32]
      -> conv 1x1 C -> Cse (bias?, act: silu / relu)
      -> conv 1x1 Cse -> C (bias?, act: sigmoid; MobileNetV3's hard sigmoid arrives as
         bias + 3 folded into the conv and clip(0, 6), its 1/6 in the multiply below)
      -> pointwise x * g (MobileNetV3: (0.1666 * g) * x)

Unfused that is five or six kernels, two of them cuDNN convolutions on a [N, 1, 1, C] tensor;
fused, the GPU reads x twice (the mean, the scale) and does the rest per sample in one small
kernel (``cuda_source_se.py``).

What is matched, from a ``reduce`` mean over every spatial axis of x [N, *S, C]:
* each fully connected step is a ``conv`` with a constant 1x1 KRSC weight (group 1, no pads)
  on [N, 1.., 1, Cin] or a ``matmul`` [N, Cin] @ constant [Cin, Cout] (transpose_b allowed,
  alpha 1), with an epilogue of an optional constant bias then an optional activation, not
  quantized;
* between the steps only reshapes that keep the [N, C] vector form (in FP16 engines one may
  also store the float32 mean as float16) and pointwise layers of one input (casts, a
  separate activation): their programs and storage dtypes become the ``pool`` / ``hidden``
  / ``gate`` stages, so the fused layer rounds where the unfused ones stored;
* the end is a pointwise layer of exactly x and the gate whose last step multiplies x by a
  value computed from the gate alone (steps before it become a gate stage);
* no intermediate is a network output or has another consumer (x itself may have any).

Weights are stored [Cout, Cin] (``w1`` [Cse, C], ``w2`` [C, Cse]) in the FC layers' dtype.
In FP16 engines precision.py keeps the gate's layers (``se_gate_layers``) in FP32, so the
fused layer's weights and stages are float32 there too; only y is stored in float16.
The pass runs after precision assignment (``LATE_PASSES``), in every precision; the backend's
``accept(net, layer)`` may veto each fused layer (the CuPy backend takes it unless
``TFTRT_FUSE_SE=0``).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from tftrt.engine.network import Layer, Network

Accept = Callable[[Network, Layer], bool]
_FLOATS = ("float16", "float32")


def _is_vec(shape, n: int, c: int) -> bool:
    """[N, C] or [N, 1, ..., 1, C]."""
    return shape is not None and len(shape) >= 2 and shape[0] == n and shape[-1] == c and \
        all(d == 1 for d in shape[1:-1])


def _unary_program(layer: Layer) -> Optional[list]:
    """The program of a one-input pointwise layer whose steps read only $0 and literals."""
    if layer.kind != "pointwise" or len(layer.inputs) != 1:
        return None
    prog = layer.attrs.get("program") or []
    for st in prog:
        for a in st["args"]:
            if isinstance(a, str) and a[:1] == "$" and a != "$0":
                return None
    return prog


class _Walk:
    """Follows a [N, C]-vector tensor through views and unary pointwise layers."""

    def __init__(self, net: Network, consumers, keep):
        self.net, self.consumers, self.keep = net, consumers, keep
        self.chain: List[Layer] = []

    def follow(self, t: str, n: int, c: int, stages: list) -> Tuple[Optional[Layer], str]:
        """Walks from tensor ``t`` (whose value ``stages`` describe so far); returns the next
        layer that is not a view or unary pointwise step (None when ``t`` may not be fused:
        a network output, several consumers) and the tensor it reads."""
        net = self.net
        while True:
            if t in self.keep or not _is_vec(net.shape(t), n, c):
                return None, t
            cs = self.consumers.get(t, [])
            if len(cs) != 1:
                return None, t
            l = cs[0]
            out = l.outputs[0] if len(l.outputs) == 1 else None
            if out is None:
                return None, t
            if l.kind == "reshape" and l.inputs[:1] == [t] and _is_vec(net.shape(out), n, c) \
                    and net.dtype(out) in _FLOATS:
                if net.dtype(out) != net.dtype(t):  # precision.py's storage dtype: a cast
                    stages.append({"round": net.dtype(out)})
                self.chain.append(l)
                t = out
                continue
            prog = _unary_program(l)
            if prog is not None and net.dtype(out) in _FLOATS:
                stages += [{"program": prog}, {"round": net.dtype(out)}]
                self.chain.append(l)
                t = out
                continue
            return l, t


def _fc(net: Network, l: Layer, t: str, n: int, cin: int):
    """(weight [Cout, Cin], bias name or "", act or None, Cout) of a fully connected step
    reading ``t`` [N, .., Cin], or None."""
    if l.kind not in ("conv", "matmul") or "quant" in l.attrs or len(l.inputs) < 2 or \
            l.inputs[0] != t or l.inputs[1] == t or l.inputs[1] not in net.weights:
        return None
    w = np.asarray(net.weights[l.inputs[1]])
    xs = net.shape(t)
    a = l.attrs
    if l.kind == "conv":
        if a.get("group", 1) != 1 or any(a.get("pads", ())) or w.ndim != len(xs) or \
                w.shape[-1] != cin or any(k != 1 for k in w.shape[1:-1]):
            return None
        w2 = w.reshape(w.shape[0], cin)
    else:
        if a.get("transpose_a") or float(a.get("alpha", 1.0)) != 1.0 or w.ndim != 2 or \
                len(xs) != 2:
            return None
        w2 = w if a.get("transpose_b") else w.T
        if w2.shape[1] != cin:
            return None
    cout = int(w2.shape[0])
    epi = list(l.epilogue)
    bias = ""
    if epi and epi[0]["op"] == "bias":
        b = l.inputs[epi[0]["input"]]
        bw = net.weights.get(b)
        if bw is None or np.asarray(bw).shape != (cout,) or b == t:
            return None
        bias = b
        epi = epi[1:]
    act = None
    if epi and epi[0]["op"] == "act":
        act = dict(epi[0])
        epi = epi[1:]
    extra = [i for k, i in enumerate(l.inputs) if k >= 2 and i != bias]
    if epi or extra or not _is_vec(net.shape(l.outputs[0]), n, cout) or \
            net.dtype(l.outputs[0]) not in _FLOATS:
        return None
    return np.ascontiguousarray(w2), bias, act, cout


def _gate_program(mul: Layer, x: str, g: str) -> Optional[list]:
    """The steps of ``mul`` (a pointwise layer of x and g) that make the factor x is
    multiplied by, as a program over $0 = g; None unless x is read once, by the last step,
    a float32 ``mul``."""
    if mul.kind != "pointwise" or len(mul.inputs) != 2 or set(mul.inputs) != {x, g}:
        return None
    ix, ig = f"${mul.inputs.index(x)}", f"${mul.inputs.index(g)}"
    prog = mul.attrs.get("program") or []
    if not prog or prog[-1]["op"] != "mul" or prog[-1].get("dtype") != "float32":
        return None
    last = prog[-1]["args"]
    if sorted([last[0] == ix, last[1] == ix]) != [False, True]:
        return None
    other = last[1] if last[0] == ix else last[0]
    if not isinstance(other, str) or other[:1] not in "$%":
        return None
    remap = lambda a: "$0" if a == ig else a  # noqa: E731
    out = []
    for st in prog[:-1]:
        if ix in st["args"]:
            return None
        out.append(dict(st, args=[remap(a) for a in st["args"]]))
    out.append({"op": "identity", "args": [remap(other)], "dtype": "float32"})
    return out


def _weight(net: Network, name: str, w2: np.ndarray) -> str:
    """``name`` when that weight already is ``w2`` [Cout, Cin], else a new weight."""
    w = np.asarray(net.weights[name])
    if w.shape == w2.shape and w.strides == w2.strides and np.shares_memory(w, w2):
        return name  # a matmul's transpose_b weight
    return net.add_weight(w2, name + "_se")


def _match(net: Network, red: Layer, consumers, keep) -> Optional[Tuple[Layer, List[Layer]]]:
    """The ``se`` layer replacing the block that starts at reduce ``red`` and the layers it
    replaces (the final multiply last), or None."""
    a = red.attrs
    x = red.inputs[0]
    xs = net.shape(x)
    if a.get("op") != "mean" or x in net.weights or xs is None or len(xs) < 3 or \
            list(a.get("axes", ())) != list(range(1, len(xs) - 1)) or \
            net.dtype(x) not in _FLOATS or net.dtype(red.outputs[0]) not in _FLOATS:
        return None
    n, c = xs[0], xs[-1]
    walk = _Walk(net, consumers, keep)
    pool = [{"round": net.dtype(red.outputs[0])}]
    l1, t = walk.follow(red.outputs[0], n, c, pool)
    f1 = l1 and _fc(net, l1, t, n, c)
    if not f1:
        return None
    w1, b1, act1, cse = f1
    hidden = [{"round": net.dtype(l1.outputs[0])}]
    l2, t = walk.follow(l1.outputs[0], n, cse, hidden)
    f2 = l2 and _fc(net, l2, t, n, cse)
    if not f2 or f2[3] != c:
        return None
    w2, b2, act2, _ = f2
    gate = [{"round": net.dtype(l2.outputs[0])}]
    mul, g = walk.follow(l2.outputs[0], n, c, gate)
    if mul is None or tuple(net.shape(g)) != (n,) + (1,) * (len(xs) - 2) + (c,):
        return None
    prog = _gate_program(mul, x, g)
    y = mul.outputs[0]
    if prog is None or tuple(net.shape(y)) != tuple(xs) or net.dtype(y) not in _FLOATS:
        return None
    if any(s.get("round", "float32") not in _FLOATS for s in pool + hidden + gate):
        return None
    gate.append({"program": prog})
    ins = [x, _weight(net, l1.inputs[1], w1), b1, _weight(net, l2.inputs[1], w2), b2]
    attrs = {"axes": list(range(1, len(xs) - 1)), "act1": act1, "act2": act2,
             "pool": pool, "hidden": hidden, "gate": gate}
    se = Layer(mul.name + "_se", "se", ins, [y], attrs, precision=mul.precision)
    return se, [red, l1, l2] + walk.chain + [mul]


def se_gate_layers(net: Network) -> set:
    """Names of the layers that compute the gate of each squeeze-and-excitation block of
    ``net`` (the mean, the FC steps and what lies between them: every layer ``se_fusion``
    would replace but the final multiply). precision.py keeps them in FP32 in FP16 engines:
    a float16 gate is one rounding per (sample, channel) that every position of the channel
    shares, so its error does not average out in the next convolution as per-element
    roundings do, and the gate is a vector, so its float32 costs nothing measurable."""
    net = net.copy()  # _match adds [Cout, Cin] weight copies
    return {l.name for _, gone in _blocks(net) for l in gone[:-1]}


def _blocks(net: Network):
    """(se layer, layers it replaces) of each squeeze-and-excitation block of ``net``, a
    block's layers never in a later one. ``_match`` adds each se layer's weights to ``net``;
    the consumer may take them out again (a vetoed block)."""
    consumers = net.consumers()
    keep = set(net.outputs)
    taken = set()
    for red in list(net.layers):
        if red.kind != "reduce" or id(red) in taken:
            continue
        m = _match(net, red, consumers, keep)
        if m is None:
            continue
        taken.update(id(l) for l in m[1][:-1])
        yield m


def se_fusion(net: Network, accept: Optional[Accept] = None) -> Network:
    """Replaces each matched squeeze-and-excitation block by an ``se`` layer (module doc).
    ``accept(net, layer)`` may veto a fused layer (the backend cannot run it well)."""
    net = net.copy()
    weights_before = set(net.weights)
    replace: Dict[int, Layer] = {}  # id(final multiply) -> the se layer
    drop = set()
    for se, gone in _blocks(net):
        if accept is not None and not accept(net, se):
            for w in (se.inputs[1], se.inputs[3]):  # the [Cout, Cin] copies _match added
                if w not in weights_before:
                    net.weights.pop(w, None)
                    net.tensors.pop(w, None)
            continue
        replace[id(gone[-1])] = se
        drop.update(id(l) for l in gone[:-1])
    if not replace:
        return net
    net.layers = [replace.get(id(l), l) for l in net.layers if id(l) not in drop]
    net.uniquify_layer_names()
    net.prune_tensors()
    return net
