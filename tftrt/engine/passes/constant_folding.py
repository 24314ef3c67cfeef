"""Constant folding: a layer whose inputs are all weights becomes weights.

``shape`` / ``size`` of a tensor whose shape is static fold too, so shape arithmetic that the
TF converters emit (Shape -> Gather -> Concat -> Reshape) collapses into constant attrs once
the engine is built for concrete input shapes. Layers are evaluated with the numpy reference
backend. Layers that produce network outputs are kept (the engine must produce them), and so
are broadcasts (expand, tile) that would make a weight larger.
"""

from __future__ import annotations

import numpy as np

from tftrt.engine.network import Network
from tftrt.engine.shapes import infer_layer

# Do not materialize constants larger than this (e.g. a ConstantOfShape of a huge shape).
MAX_FOLDED_BYTES = 64 << 20


# A broadcast of a weight stays a layer when it makes the weight larger: a class token expanded
# to the batch (ViT: Expand(cls, [batch, 1, hidden]) with the batch folded from Shape) would
# otherwise become a batch-sized weight, different at every batch size, which keeps the
# engine's network from serving the other shapes of its profile (shape_template) and from
# splitting batches, and stores the copies.
BROADCASTS = ("expand", "tile")


def _grows(net: Network, layer) -> bool:
    src, out = net.tensors.get(layer.inputs[0]), net.tensors.get(layer.outputs[0])
    return (src is not None and out is not None and src.is_static and out.is_static and
            int(np.prod(out.shape, dtype=np.int64)) > int(np.prod(src.shape, dtype=np.int64)))


def _foldable(net: Network, layer) -> bool:
    if any(o in net.outputs for o in layer.outputs):
        return False
    if layer.kind in ("shape", "size"):
        info = net.tensors.get(layer.inputs[0])
        return info is not None and info.is_static
    present = [i for i in layer.inputs if i]
    if not present or not all(i in net.weights for i in present):
        return False
    if layer.kind in BROADCASTS and _grows(net, layer):
        return False
    for o in layer.outputs:
        info = net.tensors[o]
        if info.is_static and info.dtype and info.nbytes() > MAX_FOLDED_BYTES:
            return False
    return True


def constant_folding(net: Network) -> Network:
    """Replaces constant layers by weights (see module doc)."""
    from tftrt.engine.backends import get_backend
    backend = get_backend("numpy")
    net = net.copy()
    kept = []
    for layer in net.layers:
        infer_layer(net, layer)
        if not _foldable(net, layer):
            kept.append(layer)
            continue
        if layer.kind in ("shape", "size"):
            # Only the shape is read: a zero-stride view of the right shape costs no memory.
            ins = [np.broadcast_to(np.zeros((), np.uint8), net.tensors[layer.inputs[0]].shape)]
        else:
            ins = [net.weights[i] if i else None for i in layer.inputs]
        outs = backend.prepare_layer(net, layer, net.weights)(ins)
        for name, value in zip(layer.outputs, outs):
            net.set_weight(name, np.array(value, order="C"))  # (ascontiguousarray makes 0-d 1-d)
    net.layers = kept
    net.prune_tensors()
    return net
