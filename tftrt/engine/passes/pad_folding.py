"""Pad folding: a zero ``pad`` of the spatial axes feeding only convolutions becomes conv pads.

Keras ``ZeroPadding2D`` before a VALID strided conv (ResNet50's stem, MobileNetV2's stride-2
depthwise convs) reaches the engine as ``pad (NHWC) -> conv`` once shuffle folding has cancelled
the transposes around the ONNX (NCHW) conv. Zero padding the input and then convolving is the
same as convolving with the pad widths added to the conv's own (zero) pads, so the ``pad``
layer, and the padded copy of its input, disappear.

Folded only when all of these hold (anything else is left alone):

* the pad is ``mode="constant"`` with ``value`` 0 and static, non-negative ``pads``;
* it pads no batch (first) or channel (last) axis: only the spatial axes of an NHWC tensor;
* its output is not a network output and every consumer is a ``conv`` (not ``conv_transpose``)
  that reads it only as its data input (input 0) and has explicit pads (no ``auto_pad``).
"""

from __future__ import annotations

from tftrt.engine.network import Network


def _spatial_pads(net: Network, layer):
    """The pad layer's (begins, ends) over the spatial axes if it is foldable, else None."""
    a = layer.attrs
    if a.get("mode", "constant") != "constant" or "pads" not in a:
        return None
    if any(i for i in layer.inputs[1:]):  # pads/value still operands: not canonical
        return None
    try:
        if float(a.get("value", 0) or 0) != 0.0:
            return None
    except (TypeError, ValueError):
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
        ok = True
        for c in users:
            ca = c.attrs
            if (c.kind != "conv" or c.inputs[0] != out or out in c.inputs[1:]
                    or ca.get("auto_pad", "NOTSET") != "NOTSET"
                    or len(ca.get("pads", [])) != 2 * nsp):
                ok = False
                break
        if not ok:
            continue
        for c in users:
            cp = [int(p) for p in c.attrs["pads"]]
            c.attrs["pads"] = ([cp[i] + begins[i] for i in range(nsp)]
                               + [cp[nsp + i] + ends[i] for i in range(nsp)])
            c.inputs[0] = layer.inputs[0]
        net.layers.remove(layer)
        return True
    return False


def pad_folding(net: Network) -> Network:
    """Folds zero spatial ``pad`` layers into the pads of the ``conv`` layers they feed."""
    net = net.copy()
    for _ in range(len(net.layers) + 1):
        if not _fold_one(net):
            break
    net.prune_tensors()
    return net
