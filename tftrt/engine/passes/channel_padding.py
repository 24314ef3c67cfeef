"""Channel padding: a half-precision convolution with few input channels reads them padded to 8.

Tensor-core convolutions in half precision want the input channels (NHWC's last axis) in
multiples of 8. A network's stem reads an image of 3 channels: on the H200 (2026-11-30) cuDNN
ran VGG16's first convolution (3 -> 64, 3x3, 224 px, batch 128) at 16.8 TFLOP/s, 1.32 ms of
the engine's 8.15, against ~650 TFLOP/s for its other convolutions. Zero channels change no
sum, so the input is padded with zeros to the next multiple of 8 (one ``pad`` layer on the
channel axis) and the filter gets zero input channels to match (``[Cout, *K, Cin]`` ->
``[Cout, *K, Cin8]``): the same result, computed by the convolutions' fast kernels.

Only a ``conv`` with one group, a constant filter, a float16 / bfloat16 input and an input
channel count that is not a multiple of 8 (quantized convolutions are left alone). It runs
after ``apply_precision`` (it needs the storage dtypes) with the other precision-dependent
passes, and types what it adds.

Off until a GPU run measures it (``TFTRT_PAD_CONV_CHANNELS=1`` turns it on), as every new GPU
path here started: the padded copy costs a kernel (~0.14 GB of traffic for a 224 px batch of
128), and cuDNN may have a fast small-channel kernel for other stems (ResNet50's 7x7 / 2).
``benchmarks/bench_stems.py`` times the zoo's stems both ways in one process.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from tftrt.engine.network import Layer, Network

ALIGN = 8
HALF = ("float16", "bfloat16")


def enabled() -> bool:
    from tftrt.env import env_bool
    return env_bool("TFTRT_PAD_CONV_CHANNELS", False)


def _candidate(net: Network, layer: Layer) -> bool:
    if layer.kind != "conv" or "quant" in layer.attrs or int(layer.attrs.get("group", 1)) != 1:
        return False
    if len(layer.inputs) < 2 or layer.inputs[1] not in net.weights:
        return False
    x = net.tensors.get(layer.inputs[0])
    if x is None or x.dtype not in HALF or not x.shape or x.shape[-1] is None:
        return False
    w = net.weights[layer.inputs[1]]
    return w.ndim >= 3 and w.shape[-1] == x.shape[-1] and w.shape[-1] % ALIGN != 0


def channel_padding(net: Network, accept: Optional[Callable] = None) -> Network:
    """Pads the input channels of the convolutions the module doc names to a multiple of 8.
    ``accept`` (the backend's veto of fused layers) is not consulted: the layers it adds are
    a plain ``pad`` and the same ``conv``."""
    if not enabled() or not any(_candidate(net, l) for l in net.layers):
        return net
    net = net.copy()
    layers = []
    padded = {}  # (input, pad to) -> the padded tensor: convs reading one input share it
    for layer in net.layers:
        if not _candidate(net, layer):
            layers.append(layer)
            continue
        x = net.tensors[layer.inputs[0]]
        c = int(x.shape[-1])
        c8 = -(-c // ALIGN) * ALIGN
        key = (x.name, c8)
        if key not in padded:
            name = net.unique_name(f"{x.name}_c{c8}")
            net.add_tensor(name, x.dtype, tuple(x.shape[:-1]) + (c8,))
            r = len(x.shape)
            pad = Layer(name, "pad", [x.name], [name],
                        {"mode": "constant", "pads": [0] * (2 * r - 1) + [c8 - c],
                         "value": 0.0}, precision=layer.precision)
            layers.append(pad)
            padded[key] = name
        w = np.asarray(net.weights[layer.inputs[1]])
        w8 = np.zeros(w.shape[:-1] + (c8,), w.dtype)
        w8[..., :c] = w
        layer.inputs[0] = padded[key]
        layer.inputs[1] = net.add_weight(w8, f"{layer.inputs[1]}_c{c8}")
        layers.append(layer)
    net.layers = layers
    net.prune_tensors()
    return net
