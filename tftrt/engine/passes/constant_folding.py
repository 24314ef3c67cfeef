"""Constant folding: a layer whose inputs are all weights becomes weights.

``shape`` / ``size`` of a tensor whose shape is static fold too, so shape arithmetic that the
TF converters emit (Shape -> Gather -> Concat -> Reshape) collapses into constant attrs once
the engine is built for concrete input shapes. Layers are evaluated with the numpy reference
backend. Layers that produce network outputs are kept (the engine must produce them), and so
are broadcasts (expand, tile) that would make a weight larger.
"""

from __future__ import annotations

from typing import Dict, Optional

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


def _fold(net: Network, layer, backend) -> None:
    """Evaluates a foldable layer; its outputs become weights."""
    if layer.kind in ("shape", "size"):
        # Only the shape is read: a zero-stride view of the right shape costs no memory.
        ins = [np.broadcast_to(np.zeros((), np.uint8), net.tensors[layer.inputs[0]].shape)]
    else:
        ins = [net.weights[i] if i else None for i in layer.inputs]
    outs = backend.prepare_layer(net, layer, net.weights)(ins)
    for name, value in zip(layer.outputs, outs):
        net.set_weight(name, np.array(value, order="C"))  # (ascontiguousarray makes 0-d 1-d)


def _numpy_backend():
    from tftrt.engine.backends import get_backend
    return get_backend("numpy")


def constant_folding(net: Network) -> Network:
    """Replaces constant layers by weights (see module doc)."""
    backend = _numpy_backend()
    net = net.copy()
    kept = []
    for layer in net.layers:
        infer_layer(net, layer)
        if not _foldable(net, layer):
            kept.append(layer)
            continue
        _fold(net, layer, backend)
    net.layers = kept
    net.prune_tensors()
    return net


# Constants up to this many elements are evaluated by shape_values: shape arithmetic, not weights.
SMALL = 4096


def shape_values(net: Network, input_shapes) -> Dict[str, Optional[np.ndarray]]:
    """The values constant folding computes from the input shapes when ``net`` (unbound, as
    the builder gets it) is bound to ``input_shapes``: ``shape`` / ``size`` layers and every
    layer folded from them, by output name; a large one (over ``SMALL`` elements) as a
    :class:`Digest`. Other constants are evaluated only when small (the rest of the shape
    arithmetic); a value folded from a shape and a larger constant is not evaluated and maps
    to None. What shape_template checks at many shapes: the passes
    fold these into weights and attributes, which its probes compare at only a few."""
    backend = _numpy_backend()
    net = net.copy()
    for name in net.inputs:
        net.tensors[name].shape = tuple(int(d) for d in input_shapes[name])
    derived: Dict[str, Optional[np.ndarray]] = {}
    skipped = set()  # large constants left unevaluated
    for layer in net.layers:
        infer_layer(net, layer)
        if any(o in net.outputs for o in layer.outputs):
            continue
        present = [i for i in layer.inputs if i]
        shape_kind = layer.kind in ("shape", "size")
        if not shape_kind and not (present and all(
                i in net.weights or i in skipped or i in derived for i in present)):
            continue  # not a constant
        from_shape = shape_kind or any(i in derived for i in present)
        if not shape_kind and any(i in skipped or derived.get(i, 0) is None for i in present):
            if from_shape:  # a shape value mixed with a large constant: not followed
                derived.update((o, None) for o in layer.outputs)
            else:
                skipped.update(layer.outputs)
            continue
        if not _foldable(net, layer):
            continue
        small = all(net.tensors[o].is_static and
                    int(np.prod(net.tensors[o].shape, dtype=np.int64)) <= SMALL
                    for o in layer.outputs)
        if not (from_shape or small):
            skipped.update(layer.outputs)
            continue
        _fold(net, layer, backend)
        if from_shape:
            derived.update((o, _small_or_digest(net.weights[o])) for o in layer.outputs)
    return derived


def _small_or_digest(value: np.ndarray):
    """A derived value as shape_values reports it: itself when small, else a :class:`Digest`
    (a mask of ones built from a static sequence length is large and the same at every
    batch size)."""
    if value.size <= SMALL:
        return value
    import hashlib
    return Digest(value.shape, value.dtype.name,
                  hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest())


class Digest(tuple):
    """(shape, dtype, sha1 of the bytes) of a large derived value: compared for equality."""

    def __new__(cls, shape, dtype, sha1):
        return super().__new__(cls, (tuple(int(d) for d in shape), dtype, sha1))
