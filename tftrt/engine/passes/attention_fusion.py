"""Attention fusion: ``softmax(alpha * q @ k^T) @ v`` -> one ``attention`` layer.

A Keras MultiHeadAttention (and most exported transformers) reaches the engine as two batched
matmuls around a softmax, with the heads moved in and out by transposes and reshapes:

    q [B, Sq, H, D] -> transpose(0, 2, 1, 3) -> reshape [B*H, Sq, D] --.
    k [B, Sk, H, D] -> transpose(0, 2, 1, 3) -> reshape [B*H, Sk, D] --+-> matmul(transpose_b,
                                                                      |   alpha) -> softmax
    v [B, Sk, H, Dv] -> transpose(0, 2, 1, 3) -> reshape [B*H, Sk, Dv] -+-> matmul -> reshape
                                                  [B, H, Sq, Dv] -> transpose(0, 2, 1, 3) -> y

(shuffle_folding and vertical_fusion have already turned Keras' ``k.transpose(0, 2, 3, 1)``
into ``transpose_b`` and its ``q * d**-0.5`` into the matmul's ``alpha``.) Run unfused, the
[B, H, Sq, Sk] scores make two round trips through memory and the four transposes copy q, k, v
and y; fused, one flash-attention kernel (cuDNN's SDPA on the GPU) reads q, k, v where they are
and writes y in place: the layer's ``layout`` "bshd" says the operands are [B, S, H, D] as the
projections wrote them. Where the operands do not come through such transposes the layer reads
them as [B, H, S, D] ("bhsd"; a [N, S, D] operand is viewed as [1, N, S, D]).

What is matched: a softmax over the last axis (not log-softmax) whose input is, up to reshapes
that keep the last two dims, a matmul ``q @ k^T`` (transpose_b, no epilogue) and whose output
feeds, up to such reshapes, only the left operand of a matmul ``p @ v`` (no transposes, alpha 1,
no epilogue); no intermediate is a network output or has another consumer; q, k, v and the
output have the same batch dims and the same dtype.

The pass runs after precision assignment (builder.LATE_PASSES) and only fuses float16 /
bfloat16 attention, as TensorRT's MHA fusion does: FP32 engines keep their TF32 GEMMs. The
builder also asks the backend (``accept(net, layer)``) whether it runs the fused layer well;
the CuPy backend accepts what cuDNN's SDPA supports (head dims a multiple of 8, at most 256).
An additive mask between the matmul and the softmax is not matched yet.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

from tftrt.engine.network import Layer, Network

Accept = Callable[[Network, Layer], bool]
_HALF = ("float16", "bfloat16")
_SWAP_SH = [0, 2, 1, 3]


def _single(consumers: Dict[str, List[Layer]], name: str) -> Optional[Layer]:
    c = consumers.get(name, [])
    return c[0] if len(c) == 1 else None


def _keeps_last_two(net: Network, a: str, b: str) -> bool:
    sa, sb = net.shape(a), net.shape(b)
    return sa is not None and sb is not None and len(sa) >= 2 and len(sb) >= 2 and \
        tuple(sa[-2:]) == tuple(sb[-2:])


def _bshd_source(net: Network, producers: Dict[str, Layer], name: str):
    """The [B, S, H, D] tensor that ``name`` ([B*H, S, D] or [B, H, S, D]) is a head-major
    copy of (through transpose(0, 2, 1, 3) and a reshape merging B and H), or None."""
    l = producers.get(name)
    shape = net.shape(name)
    if l is not None and l.kind == "reshape" and len(shape) == 3:
        t = producers.get(l.inputs[0])
        ts = net.shape(l.inputs[0])
        if t is None or t.kind != "transpose" or len(ts) != 4 or \
                tuple(shape) != (ts[0] * ts[1], ts[2], ts[3]):
            return None
        l = t
    elif l is None or len(shape) != 4:
        return None
    if l.kind != "transpose" or list(l.attrs["perm"]) != _SWAP_SH:
        return None
    return l.inputs[0]


class _Match:
    """One attention region found in the network."""

    def __init__(self, mm1: Layer, softmax: Layer, mm2: Layer):
        self.mm1, self.softmax, self.mm2 = mm1, softmax, mm2
        self.q, self.k = mm1.inputs[0], mm1.inputs[1]
        self.v, self.o = mm2.inputs[1], mm2.outputs[0]


def _match(net: Network, sm: Layer, producers, consumers, keep) -> Optional[_Match]:
    x = sm.inputs[0]
    xs = net.shape(x)
    if sm.attrs.get("log") or not xs or sm.attrs["axis"] != len(xs) - 1:
        return None
    s = x
    while True:  # up through reshapes that keep the [Sq, Sk] tail
        l = producers.get(s)
        if l is None or s in keep or _single(consumers, s) is None:
            return None
        if l.kind != "reshape":
            break
        if not _keeps_last_two(net, l.inputs[0], s):
            return None
        s = l.inputs[0]
    mm1 = l
    a = mm1.attrs
    if mm1.kind != "matmul" or mm1.epilogue or a.get("transpose_a") or \
            not a.get("transpose_b") or len(mm1.inputs) != 2:
        return None
    p = sm.outputs[0]
    while True:  # down through reshapes to the p @ v matmul
        if p in keep:
            return None
        l = _single(consumers, p)
        if l is None:
            return None
        if l.kind != "reshape":
            break
        if not _keeps_last_two(net, p, l.outputs[0]):
            return None
        p = l.outputs[0]
    mm2 = l
    a = mm2.attrs
    if mm2.kind != "matmul" or mm2.epilogue or a.get("transpose_a") or a.get("transpose_b") or \
            float(a.get("alpha", 1.0)) != 1.0 or len(mm2.inputs) != 2 or mm2.inputs[0] != p:
        return None
    m = _Match(mm1, sm, mm2)
    if any(n in net.weights for n in (m.q, m.k, m.v)):
        return None
    shapes = [net.shape(n) for n in (m.q, m.k, m.v, s, p, m.o)]
    if any(sh is None or len(sh) < 2 or len(sh) > 4 for sh in shapes):
        return None
    q, k, v, sc, pp, o = shapes
    batch = tuple(q[:-2])
    if any(tuple(sh[:-2]) != batch for sh in (k, v, sc, pp, o)):
        return None
    if k[-1] != q[-1] or v[-2] != k[-2] or tuple(sc[-2:]) != (q[-2], k[-2]) or \
            tuple(o[-2:]) != (q[-2], v[-1]):
        return None
    dts = {net.dtype(n) for n in (m.q, m.k, m.v, m.o)}
    if len(dts) != 1 or dts.pop() not in _HALF:
        return None
    return m


def _layout(net: Network, producers, m: _Match):
    """("bshd", [Xq, Xk, Xv], (B, H)) when all three operands are head-major copies of
    consistent [B, S, H, D] tensors; else ("bhsd", None, (B, H)) with q's batch dims."""
    srcs = [_bshd_source(net, producers, n) for n in (m.q, m.k, m.v)]
    batch = tuple(net.shape(m.q)[:-2])
    if all(srcs) and all(net.dtype(n) == net.dtype(m.q) for n in srcs):
        xs = [net.shape(n) for n in srcs]
        b, h = xs[0][0], xs[0][2]
        if all(x[0] == b and x[2] == h for x in xs) and \
                (batch == (b * h,) or batch == (b, h)):
            return "bshd", srcs, (b, h)
    if len(batch) == 2:
        return "bhsd", None, batch
    return "bhsd", None, (1, math.prod(batch))


def _direct_output(net, consumers, keep, m: _Match, bh) -> Optional[Layer]:
    """The transpose(0, 2, 1, 3) that turns ``m.o`` back into [B, Sq, H, Dv] (through a
    reshape [B*H, Sq, Dv] -> [B, H, Sq, Dv] when o is 3-D), or None."""
    o = m.o
    if o in keep:
        return None
    l = _single(consumers, o)
    if l is not None and l.kind == "reshape" and len(net.shape(o)) == 3:
        r = l.outputs[0]
        if tuple(net.shape(r)) != tuple(bh) + tuple(net.shape(o)[-2:]) or r in keep:
            return None
        l = _single(consumers, r)
    if l is None or l.kind != "transpose" or list(l.attrs["perm"]) != _SWAP_SH:
        return None
    return l


def attention_fusion(net: Network, accept: Optional[Accept] = None) -> Network:
    """Replaces each matched attention region by an ``attention`` layer (see module doc).
    ``accept(net, layer)`` may veto a fused layer (the backend cannot run it well)."""
    net = net.copy()
    producers, consumers = net.producers(), net.consumers()
    keep = set(net.outputs)
    replace: Dict[int, List[Layer]] = {}   # id(mm2) -> the layers that take its place
    drop = set()                           # id() of direct-output transposes
    for sm in list(net.layers):
        if sm.kind != "softmax":
            continue
        m = _match(net, sm, producers, consumers, keep)
        if m is None:
            continue
        layout, srcs, (b, h) = _layout(net, producers, m)
        dt = net.dtype(m.q)
        prec = m.mm2.precision
        sq, dv = net.shape(m.q)[-2], net.shape(m.v)[-1]
        new: List[Layer] = []
        if layout == "bshd":
            ins = list(srcs)
        else:
            ins = []
            for n in (m.q, m.k, m.v):
                shape = (b, h) + tuple(net.shape(n)[-2:])
                if tuple(net.shape(n)) == shape:
                    ins.append(n)
                    continue
                t = net.add_tensor(net.unique_name(n + "_4d"), dt, shape)
                new.append(Layer(t, "reshape", [n], [t], {"shape": list(shape)},
                                 precision=prec))
                ins.append(t)
        y_shape = (b, sq, h, dv) if layout == "bshd" else (b, h, sq, dv)
        direct = _direct_output(net, consumers, keep, m, (b, h)) if layout == "bshd" else None
        if direct is not None:
            y = direct.outputs[0]
        elif layout == "bhsd" and tuple(net.shape(m.o)) == y_shape:
            y = m.o
        else:
            y = net.add_tensor(net.unique_name(m.o + "_attention"), dt, y_shape)
        name = net.unique_name(m.softmax.name + "_attention")
        att = Layer(name, "attention", ins, [y],
                    {"scale": float(m.mm1.attrs.get("alpha", 1.0)), "layout": layout},
                    precision=prec)
        if accept is not None and not accept(net, att):
            continue
        new.append(att)
        if y != m.o and direct is None:  # glue back to the matmul's output
            src = y
            if layout == "bshd":
                bh = (b, h, sq, dv)
                t = m.o if tuple(net.shape(m.o)) == bh else \
                    net.add_tensor(net.unique_name(m.o + "_bhsd"), dt, bh)
                new.append(Layer(t, "transpose", [y], [t], {"perm": list(_SWAP_SH)},
                                 precision=prec))
                src = t
            if src != m.o:
                new.append(Layer(m.o + "_from_attention", "reshape", [src], [m.o],
                                 {"shape": list(net.shape(m.o))}, precision=prec))
        replace[id(m.mm2)] = new
        if direct is not None:
            drop.add(id(direct))
    if not replace:
        return net
    layers = []
    for l in net.layers:
        if id(l) in drop:
            continue
        layers.extend(replace.get(id(l), [l]))
    net.layers = layers
    from tftrt.engine.passes.dead_layers import remove_dead_layers
    return remove_dead_layers(net)
