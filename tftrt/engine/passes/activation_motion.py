"""Activations Grappler moved out of the producing layer go back into its epilogue.

Grappler's arithmetic optimizer (graph_io runs it for its multiply-into-conv folding) makes
TensorFlow graphs cheaper for TensorFlow by activating fewer elements, and more expensive for
an engine, where an activation fused into the producing conv / matmul's epilogue costs
nothing and one after the move is a kernel of its own that reads and writes a whole tensor:

* ``activation_before_max_pool``: it rewrites ``MaxPool(act(x))`` into ``act(MaxPool(x))``
  for a monotonic ``act`` (VGG16: five ReLU kernels after its pools). A non-decreasing
  activation and max commute, ``act(max S) = max act(S)``, so the activation moves back
  before the pool, with one correction: a max pool has a floor, the value of a window with
  no number (all NaN or -inf, and its pads): float32's lowest in TF's CPU kernel, -inf in its
  GPU one. After the move that floor must be ``act(floor)`` (``act(lowest)`` is 0 for a
  ReLU: the engine gave -3.4e38 where TF gave 0 for a window of NaN, helper hunt,
  2026-12-02), so the pool keeps the activation's program (:data:`FLOOR_ATTR`) and each
  backend applies it to its own floor.
* ``activation_into_concat_inputs``: it hoists an activation that every input of a concat
  ends with out of them, ``concat(act(a), act(b))`` into ``act(concat(a, b))`` (InceptionV3:
  nine ReLU kernels after its concats). An elementwise function commutes with a concat
  exactly, so each input gets the activation back.

Moved only when all of these hold (anything else is left alone):

* the pool is ``mode="max"`` (the concat: any axis), and its output is read by one layer
  only, not a network output;
* that layer is a one-step pointwise program of that output alone, an activation vertical
  fusion fuses (for the pool also non-decreasing: relu, sigmoid, tanh, softplus, softsign,
  leaky_relu / elu with a non-negative alpha, clip by constants);
* each tensor the activation would move onto is the only output use of a conv /
  conv_transpose / matmul that has no activation epilogue yet (read once), so the next
  vertical fusion absorbs it instead of it running on more elements than before.
"""

from __future__ import annotations

from typing import Optional

from tftrt.engine.network import EPILOGUE_KINDS, Layer, Network

# a max pool's attribute: the program of the activation moved before it, which the backend
# applies to its floor (the value of a window with no number) to get the pool's floor
FLOOR_ATTR = "floor_program"

_INCREASING = {"relu", "sigmoid", "tanh", "softplus", "softsign"}
# what vertical fusion takes as an ``act`` epilogue from a one-step program
_FUSABLE = _INCREASING | {"leaky_relu", "elu", "selu", "hard_sigmoid", "gelu", "clip"}


def _activation_step(layer: Layer, x: str) -> Optional[dict]:
    """The step of ``layer`` when it is one fusable activation of tensor ``x`` alone."""
    prog = layer.attrs.get("program") or []
    if layer.kind != "pointwise" or layer.inputs != [x] or len(layer.outputs) != 1 or \
            len(prog) != 1:
        return None
    st = prog[0]
    args = st.get("args") or []
    if st.get("op") not in _FUSABLE or not args or args[0] != "$0" or \
            (st["op"] != "clip" and len(args) != 1):
        return None
    return st


def _non_decreasing(layer: Layer, x: str) -> bool:
    """Whether ``layer`` is one non-decreasing activation of tensor ``x`` alone."""
    st = _activation_step(layer, x)
    if st is None:
        return False
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
            len(pool.outputs) != 1 or len(pool.attrs.get("kernel") or ()) > 2:
        return None  # (3-D: TF's CPU MaxPool3D keeps a NaN until the next value, no floor)
    x, p = pool.inputs[0], pool.outputs[0]
    if p in outputs or x in outputs or len(consumers.get(p, [])) != 1:
        return None
    act = consumers[p][0]
    if not _non_decreasing(act, p) or not _keeps_pad_value(pool, act):
        return None
    return act if _fuses(x, pool, producers, consumers) else None


def _keeps_pad_value(pool: Layer, act: Layer) -> bool:
    """Whether the activation leaves the pool's ``pad_value`` (a folded zero pad's, see
    passes/pad_folding) as it is: the pads would otherwise have to hold act(pad_value), which
    an int8 pool would have to requantize. ReLU, tanh, clip, leaky ReLU keep a 0; sigmoid and
    softplus do not, and stay after the pool."""
    pv = pool.attrs.get("pad_value")
    if pv is None:
        return True
    import numpy as np

    from tftrt.engine.backends.numpy_ops import pool_floor
    return bool(pool_floor(act.attrs["program"], pv, np.float32) == np.float32(pv))


def _fuses(x: str, reader: Layer, producers, consumers) -> bool:
    """Whether an activation of ``x`` would fuse into its producer: a conv / conv_transpose /
    matmul with no activation epilogue yet, whose only use of ``x`` is ``reader`` reading it
    once."""
    main = producers.get(x)
    return (main is not None and main.kind in EPILOGUE_KINDS and len(main.outputs) == 1 and
            consumers.get(x) == [reader] and reader.inputs.count(x) == 1 and
            not any(e["op"] == "act" for e in main.epilogue))


def _concat_activation(cat: Layer, producers, consumers, outputs) -> Optional[Layer]:
    """The activation after ``cat`` that may move onto its inputs, or None."""
    if cat.kind != "concat" or len(cat.outputs) != 1 or len(cat.inputs) < 2:
        return None
    c = cat.outputs[0]
    if c in outputs or len(consumers.get(c, [])) != 1:
        return None
    act = consumers[c][0]
    if _activation_step(act, c) is None:
        return None
    if any(x in outputs or not _fuses(x, cat, producers, consumers) for x in cat.inputs):
        return None
    return act


def _move_onto_inputs(net: Network, find) -> Network:
    """For each layer ``find(layer, producers, consumers, outputs)`` pairs with the activation
    reading its output: a copy of the activation on each of the layer's inputs, placed just
    before it, and the layer writes what the activation wrote."""
    producers, consumers, outputs = net.producers(), net.consumers(), set(net.outputs)
    moves = [(layer, act) for layer in net.layers
             if (act := find(layer, producers, consumers, outputs)) is not None]
    if not moves:
        return net
    out = net.copy()
    index = {l.name: k for k, l in enumerate(out.layers)}
    before, drop = {}, set()  # id(layer) -> the activations now just before it
    for layer, act in moves:
        layer, act = out.layers[index[layer.name]], out.layers[index[act.name]]
        acts = []
        for x in layer.inputs:
            a = act.clone()
            a.name, a.inputs, a.outputs = out.unique_name(act.name), [x], \
                [out.add_tensor(out.unique_name(x + "_act"), out.tensors[x].dtype,
                                out.tensors[x].shape)]
            acts.append(a)
        del out.tensors[layer.outputs[0]]
        layer.inputs, layer.outputs = [a.outputs[0] for a in acts], list(act.outputs)
        if layer.kind == "pool":  # the window's floor passes through the activation too
            layer.attrs[FLOOR_ATTR] = [dict(st) for st in act.attrs["program"]]
        before[id(layer)] = acts
        drop.add(id(act))
    layers = []
    for l in out.layers:
        if id(l) not in drop:
            layers.extend(before.get(id(l), ()))
            layers.append(l)
    out.layers = layers
    return out


def activation_before_max_pool(net: Network) -> Network:
    return _move_onto_inputs(net, _movable)


def activation_into_concat_inputs(net: Network) -> Network:
    return _move_onto_inputs(net, _concat_activation)
