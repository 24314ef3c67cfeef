"""Shuffle folding: transposes and reshapes that compose or cancel.

Rules, applied to a fixpoint:

* transpose(transpose(x, p1), p2) -> transpose(x, p1[p2]); an identity perm disappears. This is
  what folds the TF converters' ``Transpose(0,3,1,2) -> Conv -> Transpose(0,2,3,1)`` into the
  engine's NHWC conv: the import wraps each ONNX (NCHW) conv in the inverse transposes, and the
  pairs cancel, leaving the conv in NHWC with its filter stored KRSC.
* reshape(reshape(x)) -> reshape(x); a reshape (or a transpose) to the same shape and order
  disappears.
* a transpose feeding a pointwise layer whose other operands are constants (or the same
  transpose of other tensors) is sunk below it, the constants permuted to match: in an NCHW
  ONNX model, ``conv -> transpose -> BN(mul, add) -> relu -> transpose -> conv`` becomes
  ``conv -> mul -> add -> relu -> conv`` with NHWC constants, ready for vertical fusion.
"""

from __future__ import annotations

import numpy as np

from tftrt.engine.network import Network


def _sole_consumer(consumers, net, name):
    c = consumers.get(name, [])
    return c[0] if len(c) == 1 and name not in net.outputs else None


def _compose_transposes(net: Network) -> bool:
    prod = net.producers()
    for layer in net.layers:
        if layer.kind != "transpose":
            continue
        src = prod.get(layer.inputs[0])
        if src is not None and src.kind == "transpose":
            p1, p2 = src.attrs["perm"], layer.attrs["perm"]
            layer.inputs = [src.inputs[0]]
            layer.attrs = {"perm": [p1[i] for i in p2]}
            return True
        if layer.attrs["perm"] == list(range(len(layer.attrs["perm"]))):
            _remove_passthrough(net, layer)
            return True
    return False


def _compose_reshapes(net: Network) -> bool:
    prod = net.producers()
    for layer in net.layers:
        if layer.kind != "reshape" or "shape" not in layer.attrs:
            continue
        src = prod.get(layer.inputs[0])
        if src is not None and src.kind == "reshape" and "shape" in src.attrs:
            layer.inputs = [src.inputs[0]]
            return True
        if net.tensors[layer.inputs[0]].shape == tuple(layer.attrs["shape"]):
            _remove_passthrough(net, layer)
            return True
    return False


def _remove_passthrough(net: Network, layer) -> None:
    net.layers.remove(layer)
    net.substitute(layer.outputs[0], layer.inputs[0])


def _sink_transpose(net: Network) -> bool:
    prod, cons = net.producers(), net.consumers()
    for idx, layer in enumerate(net.layers):
        if layer.kind != "pointwise":
            continue
        out_shape = net.tensors[layer.outputs[0]].shape
        if out_shape is None:
            continue
        rank = len(out_shape)
        perm, ok, moved = None, True, []
        for i in layer.inputs:
            if i in net.weights:
                continue
            t = prod.get(i)
            if t is None or t.kind != "transpose" or _sole_consumer(cons, net, i) is not layer \
                    or len(t.attrs["perm"]) != rank:
                ok = False
                break
            if perm is not None and t.attrs["perm"] != perm:
                ok = False
                break
            perm = t.attrs["perm"]
            moved.append(t)
        if not ok or perm is None:
            continue
        inv = list(np.argsort(perm))
        new_inputs = []
        for i in layer.inputs:
            if i in net.weights:
                w = net.weights[i]
                if w.ndim == 0 or w.size == 1:
                    new_inputs.append(i)
                    continue
                w_full = w.reshape((1,) * (rank - w.ndim) + w.shape)
                new_inputs.append(net.add_weight(np.ascontiguousarray(w_full.transpose(inv)),
                                                 i + "_perm"))
            else:
                new_inputs.append(prod[i].inputs[0])
        inner = net.add_tensor(net.unique_name(layer.outputs[0] + "_pre"),
                               net.tensors[layer.outputs[0]].dtype,
                               tuple(out_shape[k] for k in inv))
        out = layer.outputs[0]
        layer.inputs, layer.outputs = new_inputs, [inner]
        from tftrt.engine.network import Layer
        net.layers.insert(idx + 1, Layer(out + "_sunk_transpose", "transpose", [inner], [out],
                                         {"perm": list(perm)}))
        for t in moved:
            if t in net.layers:
                net.layers.remove(t)
        return True
    return False


def shuffle_folding(net: Network) -> Network:
    """Composes/cancels transposes and reshapes and sinks transposes below pointwise layers."""
    net = net.copy()
    for _ in range(10 * len(net.layers) + 10):
        if not (_compose_transposes(net) or _compose_reshapes(net) or _sink_transpose(net)):
            break
    net.prune_tensors()
    from tftrt.engine.passes.dead_layers import remove_dead_layers
    return remove_dead_layers(net)
