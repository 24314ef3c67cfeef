"""Elementwise chain fusion: consecutive pointwise layers -> one pointwise layer.

A pointwise layer whose output feeds exactly one other pointwise layer (and is not a network
output) is merged into it: the programs are concatenated, the consumer's reference to the
intermediate becomes a reference to the producer's last step, and the inputs are merged
(deduplicated). Size-1 float/int constants become literals in the program, so the GPU backend
generates one kernel with scalars inlined. Example: ``sigmoid(x) -> mul(x, .)`` becomes the
program ``[sigmoid($0), mul($0, %0)]`` (swish) over the single input x.
"""

from __future__ import annotations

from typing import List

from tftrt.engine.network import Layer, Network


def _ref(a, inputs_map, step_offset):
    if isinstance(a, str) and a.startswith("$"):
        return inputs_map[int(a[1:])]
    if isinstance(a, str) and a.startswith("%"):
        return f"%{int(a[1:]) + step_offset}"
    return a


def _merge(net: Network, first: Layer, second: Layer) -> Layer:
    inputs: List[str] = []

    def slot(name):
        if name not in inputs:
            inputs.append(name)
        return f"${inputs.index(name)}"

    prog1 = [dict(st, args=[_ref(a, [slot(i) for i in first.inputs], 0) for a in st["args"]])
             for st in first.attrs["program"]]
    link = f"%{len(prog1) - 1}"
    map2 = [link if i == first.outputs[0] else slot(i) for i in second.inputs]
    prog2 = [dict(st, args=[_ref(a, map2, len(prog1)) for a in st["args"]])
             for st in second.attrs["program"]]
    return Layer(second.name, "pointwise", inputs, list(second.outputs),
                 {"program": prog1 + prog2}, precision=second.precision)


def _inline_scalars(net: Network, layer: Layer) -> None:
    out = net.tensors[layer.outputs[0]].shape
    keep, remap = [], {}
    for k, name in enumerate(layer.inputs):
        w = net.weights.get(name)
        if w is not None and w.size == 1 and w.dtype.kind in "fiu" and out is not None \
                and w.ndim <= len(out):
            remap[k] = w.reshape(()).item()
        else:
            remap[k] = f"${len(keep)}"
            keep.append(name)
    if len(keep) == len(layer.inputs) or not keep:
        return  # nothing to inline (or it would leave a layer with no tensor input)
    for st in layer.attrs["program"]:
        st["args"] = [remap[int(a[1:])] if isinstance(a, str) and a.startswith("$") else a
                      for a in st["args"]]
    layer.inputs = keep


def elementwise_fusion(net: Network) -> Network:
    """Merges chains of pointwise layers (see module doc)."""
    net = net.copy()
    changed = True
    while changed:
        changed = False
        cons = net.consumers()
        for layer in net.layers:
            if layer.kind != "pointwise" or layer.outputs[0] in net.outputs:
                continue
            users = cons.get(layer.outputs[0], [])
            if len(users) != 1 or users[0].kind != "pointwise":
                continue
            merged = _merge(net, layer, users[0])
            net.layers[net.layers.index(users[0])] = merged
            net.layers.remove(layer)
            net.tensors.pop(layer.outputs[0], None)
            changed = True
            break
    for layer in net.layers:
        if layer.kind == "pointwise":
            _inline_scalars(net, layer)
    net.prune_tensors()
    return net
