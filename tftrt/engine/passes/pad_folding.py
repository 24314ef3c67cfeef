"""Pad folding: a zero ``pad`` of the spatial axes feeding only convolutions and max pools
becomes their pads.

Keras ``ZeroPadding2D`` before a VALID strided conv (ResNet50's stem, MobileNetV2's stride-2
depthwise convs) reaches the engine as ``pad (NHWC) -> conv`` once shuffle folding has cancelled
the transposes around the ONNX (NCHW) conv. Zero padding the input and then convolving is the
same as convolving with the pad widths added to the conv's own (zero) pads, so the ``pad``
layer, and the padded copy of its input, disappear.

Before a max pool (Keras ResNets' and DenseNets' ``pool1_pad`` -> ``MaxPooling2D``: 0.15 ms of
ResNet50's 3.65 ms at FP16 batch 128 on an H100, reading and writing the largest activation
of the network) the pool's pads cannot simply grow: a max pool's own pads hold nothing (its
floor), and the pad's zeros are values (a window of NaN and pad zeros is 0, not the floor). So
the pool gets the pad widths as its pads and ``pad_value`` 0: both backends' pools then read
the pads as a constant pad writes them, which is exactly the pad-then-pool they replace.

Folded only when all of these hold (anything else is left alone):

* the pad is ``mode="constant"`` with ``value`` +0 (not -0) and static, non-negative
  ``pads``;
* it pads no batch (first) or channel (last) axis: only the spatial axes of an NHWC tensor;
* its output is not a network output and every consumer reads it only as its data input
  (input 0) and is a ``conv`` (not ``conv_transpose``) with explicit pads (no ``auto_pad``),
  or a ``max`` pool with no pads of its own, no ceil mode and no floor program (pad folding
  runs before activation motion gives pools one).
"""

from __future__ import annotations

import math

from tftrt.engine.network import Network


def _spatial_pads(net: Network, layer):
    """The pad layer's (begins, ends) over the spatial axes if it is foldable, else None."""
    a = layer.attrs
    if a.get("mode", "constant") != "constant" or "pads" not in a:
        return None
    if any(i for i in layer.inputs[1:]):  # pads/value still operands: not canonical
        return None
    try:
        value = a.get("value")
        value = 0.0 if value is None else float(value)  # (not `or 0`: -0.0 is falsy)
    except (TypeError, ValueError):
        return None
    # -0.0 too stays a pad layer: a max pool's folded pads hold +0.0, and a window of pad
    # cells only then gives +0.0 where TF gives -0.0 (1 / x: +inf against -inf; helper hunt)
    if value != 0.0 or math.copysign(1.0, value) < 0:
        return None
    pads = [int(p) for p in a["pads"]]
    r = len(pads) // 2
    if r < 3 or len(pads) != 2 * r or any(p < 0 for p in pads):
        return None
    shape = net.tensors[layer.inputs[0]].shape if layer.inputs[0] in net.tensors else None
    if shape is not None and len(shape) != r:
        return None
    begins, ends = pads[:r], pads[r:]
    if begins[0] or ends[0] or begins[-1] or ends[-1]:  # batch or channel padding
        return None
    return begins[1:-1], ends[1:-1]


def _takes_pads(c, out: str, nsp: int) -> bool:
    """Whether consumer ``c`` of the pad's output ``out`` can take its pads (module doc)."""
    a = c.attrs
    if c.inputs[0] != out or out in c.inputs[1:] or len(a.get("pads") or []) != 2 * nsp:
        return False
    if c.kind == "conv":
        return a.get("auto_pad", "NOTSET") == "NOTSET"
    return (c.kind == "pool" and a.get("mode") == "max" and len(c.inputs) == 1
            and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
            and not any(int(p) for p in a["pads"]) and not int(a.get("ceil_mode", 0))
            and not a.get("floor_program") and a.get("pad_value") is None)


def _fold_one(net: Network) -> bool:
    cons = net.consumers()
    for layer in net.layers:
        if layer.kind != "pad" or len(layer.outputs) != 1:
            continue
        out = layer.outputs[0]
        if out in net.outputs or out in net.inputs:
            continue
        users = cons.get(out, [])
        if not users:
            continue
        sp = _spatial_pads(net, layer)
        if sp is None:
            continue
        begins, ends = sp
        nsp = len(begins)
        if not all(_takes_pads(c, out, nsp) for c in users):
            continue
        for c in users:
            cp = [int(p) for p in c.attrs["pads"]]
            c.attrs["pads"] = ([cp[i] + begins[i] for i in range(nsp)]
                               + [cp[nsp + i] + ends[i] for i in range(nsp)])
            if c.kind == "pool":
                c.attrs["pad_value"] = 0.0
                c.attrs["auto_pad"] = "NOTSET"
            c.inputs[0] = layer.inputs[0]
        net.layers.remove(layer)
        return True
    return False


def pad_folding(net: Network) -> Network:
    """Folds zero spatial ``pad`` layers into the pads of the ``conv`` / max ``pool`` layers
    they feed."""
    net = net.copy()
    for _ in range(len(net.layers) + 1):
        if not _fold_one(net):
            break
    net.prune_tensors()
    return net
