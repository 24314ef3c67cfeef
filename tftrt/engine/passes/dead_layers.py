"""Dead-layer removal: layers none of whose outputs reach a network output are dropped."""

from __future__ import annotations

from tftrt.engine.network import Network


def remove_dead_layers(net: Network) -> Network:
    """Keeps only the layers that (transitively) feed a network output."""
    net = net.copy()
    live = set(net.outputs)
    kept = []
    for layer in reversed(net.layers):
        if any(o in live for o in layer.outputs):
            kept.append(layer)
            live.update(i for i in layer.inputs if i)
    net.layers = kept[::-1]
    net.prune_tensors()
    return net
