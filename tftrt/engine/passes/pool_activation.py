"""Activation before max pooling: ``conv -> max pool -> act`` becomes ``conv[act] -> max pool``.

Grappler's arithmetic optimizer (graph_io runs it for its multiply-into-conv folding) rewrites
``MaxPool(act(x))`` into ``act(MaxPool(x))`` for a monotonic ``act``: in TensorFlow that
activates a quarter of the elements. In an engine it is the other way round: an activation
fused into the producing conv's epilogue costs nothing, after the pool it is a kernel of its
own that reads and writes the pooled tensor (VGG16: five of them). A non-decreasing activation
and max commute exactly, ``act(max S) = max act(S)`` (max pooling pads count as -inf, never
as values), so the activation moves back before the pool, where the next vertical fusion
absorbs it.

Moved only when all of these hold (anything else is left alone):

* the pool is ``mode="max"`` and its output is read by one layer only, not a network output;
* that layer is a one-step pointwise program of the pool's output: relu, sigmoid, tanh,
  softplus, softsign, leaky_relu / elu with a non-negative alpha, or clip by constants;
* the pool's input is the only output use of a conv / conv_transpose / matmul that has no
  activation epilogue yet (so the activation fuses instead of running on 4x the elements).
"""

from __future__ import annotations

from typing import Optional

from tftrt.engine.network import EPILOGUE_KINDS, Layer, Network

_INCREASING = {"relu", "sigmoid", "tanh", "softplus", "softsign"}


def _non_decreasing(layer: Layer, x: str) -> bool:
    """Whether ``layer`` is one non-decreasing activation of tensor ``x`` alone."""
    prog = layer.attrs.get("program") or []
    if layer.kind != "pointwise" or layer.inputs != [x] or len(layer.outputs) != 1 or \
            len(prog) != 1:
        return False
    st = prog[0]
    op, args = st.get("op"), st.get("args") or []
    if not args or args[0] != "$0":
        return False
    if op in _INCREASING:
        return len(args) == 1
    if op in ("leaky_relu", "elu"):
        alpha = st.get("alpha", 0.01 if op == "leaky_relu" else 1.0)
        return len(args) == 1 and isinstance(alpha, (int, float)) and alpha >= 0
    if op == "clip" and len(args) == 3:
        lo, hi = args[1], args[2]
        lits = all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                   for v in (lo, hi))
        return lits and (lo is None or hi is None or lo <= hi)
    return False


def _movable(pool: Layer, producers, consumers, outputs) -> Optional[Layer]:
    """The activation after ``pool`` that may move before it, or None."""
    if pool.kind != "pool" or pool.attrs.get("mode") != "max" or len(pool.inputs) != 1 or \
            len(pool.outputs) != 1:
        return None
    x, p = pool.inputs[0], pool.outputs[0]
    if p in outputs or x in outputs or len(consumers.get(p, [])) != 1:
        return None
    act = consumers[p][0]
    if not _non_decreasing(act, p):
        return None
    main = producers.get(x)
    if main is None or main.kind not in EPILOGUE_KINDS or consumers.get(x) != [pool] or \
            len(main.outputs) != 1 or any(e["op"] == "act" for e in main.epilogue):
        return None
    return act


def activation_before_max_pool(net: Network) -> Network:
    producers, consumers, outputs = net.producers(), net.consumers(), set(net.outputs)
    moves = [(pool, act) for pool in net.layers
             if (act := _movable(pool, producers, consumers, outputs)) is not None]
    if not moves:
        return net
    out = net.copy()
    index = {l.name: k for k, l in enumerate(out.layers)}
    before = {}  # id(pool) -> the activation that now runs just before it
    for pool, act in moves:
        pool, act = out.layers[index[pool.name]], out.layers[index[act.name]]
        x, p = pool.inputs[0], pool.outputs[0]
        t = out.unique_name(x + "_act")
        out.add_tensor(t, out.tensors[x].dtype, out.tensors[x].shape)
        act.inputs, act.outputs, pool.inputs, pool.outputs = [x], [t], [t], act.outputs
        del out.tensors[p]
        before[id(pool)] = act
    moved = {id(a) for a in before.values()}
    layers = []
    for l in out.layers:
        if id(l) in moved:
            continue
        if id(l) in before:
            layers.append(before[id(l)])
        layers.append(l)
    out.layers = layers
    return out
