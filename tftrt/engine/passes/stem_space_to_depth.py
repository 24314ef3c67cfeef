"""Stem space-to-depth: a stride-2 convolution over an image of few channels (a network's
stem: ResNet's and DenseNet's 7x7 over RGB) becomes a 2x2 ``space_to_depth`` of its padded
input and a stride-1 convolution over 4x the channels.

Why: a stem reduces over few channels per tap (3), so every kernel that runs it gathers tiny
pieces of the image per tap (147 of them for a 7x7 over RGB) and is bound by those gathers, not
by its arithmetic: ``stem_mma`` ran ResNet50's stem in 283-289 us at batch 128 on an H200
(2026-12-06, s45), 10% of the FP16 engine, against a floor of 94 us; the INT8 engine keeps it
in FP16 (a 3-channel conv is slow on int8 kernels), 11% of its time. Rearranged, the conv
reads 4 x 4 taps of 16 channels (32 contiguous bytes in float16: stem_mma's vector gathers
load a lane's 4 channels of a pixel at once), and its reduction (16 channels a tap) is wide
enough for an INT8 engine to quantize. cuDNN ran the rearranged conv slower than stem_mma the
original (:func:`enabled`), hence off.

The arithmetic (exact: only zero products are added): with P the input zero-padded to
``2 Hs x 2 Ws`` (the conv's own pads at the top / left, zeros after) and
``S[i, j, (p * 2 + q) * C' + c] = P[2i + p, 2j + q, c]`` (channels padded to C' with zeros),
``y[i, j] = sum_{dh, dw, c} P[2i + dh, 2j + dw, c] w[dh, dw, c]
          = sum_{a, b < K'} sum_{p, q, c} S[i + a, j + b, (p, q, c)] w'[a, b, (p, q, c)]``
where ``w'[a, b, (p, q, c)] = w[2a + p, 2b + q, c]`` for ``2a + p < KH`` and ``2b + q < KW``,
else 0, and ``K' = ceil(K / 2)``: the stride-1 conv of S by w' with no pads, ``Hs = Ho + K'H
- 1``. The summation order differs from the original conv's, so float results differ in
rounding only.

Rewritten only when all of these hold (anything else is left alone):

* TFTRT_STEM_S2D is on (:func:`enabled`);
* a 2-D ``conv`` with group 1, dilation 1, stride 2 on both axes, a kernel larger than 1 on
  both, and a constant filter;
* its input has static H, W and at most :data:`MAX_CHANNELS` channels (padded to 4: 16 after
  the rearrangement) and it is not quantized yet (the pass runs before quantization);
* the blocks cover every row and column of the image: ``2 Hs >= H + pad_top`` (and the same
  for W); it fails only for an even kernel that never reads an odd image's last row.
"""

from __future__ import annotations

import numpy as np

from tftrt.engine.network import Layer, Network

# input channels a stem may have: RGB (3) or RGBA / padded (4); padded to 4, so that the
# rearranged input has 16 channels (a tap is 32 bytes in float16, 16 in int8)
MAX_CHANNELS = 4
PADDED_CHANNELS = 4


def enabled() -> bool:
    """``TFTRT_STEM_S2D`` (default off): rewrite image stems as space-to-depth + stride-1
    conv (module doc). Off because it measured slower: on an H200 (2026-12-06, s45, batch
    128) the space_to_depth layer ran at its floor (43 us), but cuDNN ran ResNet's
    rearranged 4x4 conv over 16 channels in 403 us against stem_mma's 281-291 on the
    original stem (ResNet50 FP16 3.177 against 2.967 ms), MobileNet's 2x2 in 113 against
    66. It pays only once a kernel runs the rearranged conv near its floor (87 us).
    stem_mma's vector gathers (cuda_source_stem_mma, s45) were that attempt: on an H100
    (s46) the engine ran the rearranged conv on them in 405 us, plus 50 for the
    rearrangement, against 285 for stem_mma on the original stem (ResNet50 FP16 3.656
    against 3.497 ms)."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_STEM_S2D", False)


def rearranged_filter(w: np.ndarray, channels: int = PADDED_CHANNELS) -> np.ndarray:
    """The KRSC filter ``w`` [Cout, KH, KW, C] of a stride-2 conv as the filter [Cout,
    ceil(KH / 2), ceil(KW / 2), 4 * channels] of the stride-1 conv over its 2x2
    space-to-depth (module doc), zeros where a tap falls past the kernel or a channel past C."""
    cout, kh, kw, c = w.shape
    k2h, k2w = -(-kh // 2), -(-kw // 2)
    full = np.zeros((cout, 2 * k2h, 2 * k2w, channels), w.dtype)
    full[:, :kh, :kw, :c] = w
    # [o, a, p, b, q, c] -> [o, a, b, p, q, c]: the (p, q, c) order of space_to_depth
    out = full.reshape(cout, k2h, 2, k2w, 2, channels).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(out.reshape(cout, k2h, k2w, 4 * channels))


def _geometry(net: Network, layer):
    """(pads of the space-to-depth, the new conv's kernel) for a stem conv the pass rewrites,
    else None (module doc)."""
    a = layer.attrs
    if layer.kind != "conv" or "quant" in a or len(layer.inputs) < 2:
        return None
    x, w = net.tensors.get(layer.inputs[0]), net.weights.get(layer.inputs[1])
    y = net.tensors.get(layer.outputs[0])
    if x is None or w is None or y is None or x.shape is None or y.shape is None or \
            w.ndim != 4 or len(x.shape) != 4 or len(y.shape) != 4:
        return None
    _, h, wd, c = x.shape
    if not all(isinstance(d, int) for d in (h, wd, c)) or not 0 < c <= MAX_CHANNELS:
        return None
    if int(a.get("group", 1)) != 1 or a.get("auto_pad", "NOTSET") != "NOTSET" or \
            [int(s) for s in a.get("strides", (1, 1))] != [2, 2] or \
            any(int(d) != 1 for d in a.get("dilations", (1, 1))):
        return None
    cout, kh, kw, wc = w.shape
    if wc != c or kh < 2 or kw < 2 or np.dtype(w.dtype).kind != "f":
        return None
    pt, pl, pb, pr = (int(p) for p in a.get("pads", (0, 0, 0, 0)))
    ho, wo = (h + pt + pb - kh) // 2 + 1, (wd + pl + pr - kw) // 2 + 1
    if ho <= 0 or wo <= 0:
        return None
    k2h, k2w = -(-kh // 2), -(-kw // 2)
    hs, ws = ho + k2h - 1, wo + k2w - 1
    bottom, right = 2 * hs - h - pt, 2 * ws - wd - pl
    if bottom < 0 or right < 0:  # the conv never reads the image's last rows / columns
        return None
    return [pt, pl, bottom, right], (k2h, k2w)


def stem_space_to_depth(net: Network) -> Network:
    """Rewrites stride-2 stem convs over few channels as a space-to-depth and a stride-1
    conv (module doc); the network unchanged when TFTRT_STEM_S2D is off."""
    if not enabled():
        return net
    net = net.copy()
    for layer in list(net.layers):
        geo = _geometry(net, layer)
        if geo is None:
            continue
        pads, (k2h, k2w) = geo
        x = layer.inputs[0]
        s2d = net.unique_name(f"{x}_s2d")
        net.add_tensor(s2d, net.tensors[x].dtype)
        net.layers.insert(net.layers.index(layer), Layer(
            f"{layer.name}_space_to_depth", "space_to_depth", [x], [s2d],
            {"blocksize": 2, "pads": pads, "channels": PADDED_CHANNELS}))
        w = net.weights[layer.inputs[1]]
        layer.inputs[0] = s2d
        layer.inputs[1] = net.add_weight(rearranged_filter(w), f"{layer.inputs[1]}_s2d")
        a = layer.attrs
        a["strides"], a["pads"], a["dilations"] = [1, 1], [0, 0, 0, 0], [1, 1]
        if "kernel_shape" in a:
            a["kernel_shape"] = [k2h, k2w]
        a["space_to_depth"] = {"stride": 2, "kernel": [int(d) for d in w.shape[1:3]]}
    net.prune_tensors()
    return net

