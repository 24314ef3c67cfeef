"""A stem conv that takes the max pool after it into its own kernel (after tactics are chosen,
builder._finish): ResNet's and DenseNet's 7x7 stem and 3x3 / 2 MaxPool.

The conv's output (ResNet50 at batch 128: 103 MB of float16, 51 MB of int8 codes in an INT8
engine) is written by the stem and read back by the pool, which writes a quarter of it.
Where the backend's implementation of the conv's chosen tactic can pool its own output
before storing it (``fuses(net, conv, pool)``: the CuPy backend's ``stem_mma`` on row tiles,
``cuda_source_stem_mma.StemPool``, by default where it stores float16: :func:`fuse_mode`),
the pool leaves the network and the conv writes the pool's output: ``conv.attrs["pool"]``
holds the pool layer (:meth:`Layer.to_json`) and the conv's own output tensor (``"output"``:
name, dtype, shape), which no longer exists in the network. The answers are the same (the
fused kernel scans each window in the pool kernel's order).

:func:`pool_layers` gives the pair back to run them one after the other (the numpy backend's
reference); :func:`unfused` gives the network as it was, which a profile's other shapes and
the tactic choices start from (shape_template, tactics.network_choices; _finish fuses again).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from tftrt.engine.network import Layer, Network, TensorInfo, put_back


def fuse_mode() -> str:
    """``TFTRT_STEM_MMA_POOL``: "auto" (the default), "1" or "0". The builder offers a stem on
    ``stem_mma``'s row tiles the max pool after it (:func:`fuse_pools`) unless "0"; "auto"
    where the stem stores float16 (an FP16 engine's), "1" also where it stores int8 codes
    (an INT8 engine's; the backend's hook reads the mode).

    Measured (H100, s53b-c, ResNet50 at batch 128, engines alone; ``bash
    benchmarks/run_gpu_stem_pool.sh``): FP16 3.350 ms with the fusion against 3.392 without
    (s53a: 3.380 / 3.440), the layer 259.5 us against 177.7 + 97.1; INT8 2.364 against
    2.366 / 2.398 (two calls), the layer 250.6 us against 177 + 54: the int8 pool was
    already cheap, and the fused tile pools in shared memory what it read from L2."""
    from tftrt.env import env_choice  # standard library only
    return env_choice("TFTRT_STEM_MMA_POOL", ("auto", "1", "0"), "auto")


def _fusable(net: Network, pool: Layer, producer, consumers, keep) -> Optional[Layer]:
    """The conv whose output ``pool`` (a 2-D max pool storing its input's dtype) alone reads,
    or None."""
    a = pool.attrs
    if pool.kind != "pool" or a.get("mode") != "max" or len(a.get("kernel", ())) != 2 or \
            a.get("output_scale") is not None or int(a.get("ceil_mode", 0)) or \
            len(pool.inputs) != 1 or len(pool.outputs) != 1:
        return None
    x = pool.inputs[0]
    conv = producer.get(x)
    if conv is None or x in keep or conv.kind != "conv" or len(conv.outputs) != 1 or \
            "pool" in conv.attrs or "projection" in conv.attrs or \
            [u.name for u in consumers.get(x, [])] != [pool.name] or \
            net.tensors[x].dtype != net.tensors[pool.outputs[0]].dtype:
        return None
    return conv


def fuse_pools(net: Network, fuses) -> List[str]:
    """Each max pool that alone reads a conv's output, where ``fuses(net, conv, pool)`` says
    the conv's chosen implementation pools it itself, leaves the network; the conv writes
    the pool's output and holds the pool in ``attrs["pool"]`` (module doc). Returns the
    convs changed."""
    if fuse_mode() == "0":
        return []
    consumers = net.consumers()
    producer = {o: l for l in net.layers for o in l.outputs}
    keep = set(net.outputs) | set(net.inputs)
    changed, gone = [], set()
    at = {l.name: k for k, l in enumerate(net.layers)}
    for pool in net.layers:
        conv = _fusable(net, pool, producer, consumers, keep)
        if conv is None or not fuses(net, conv, pool):
            continue
        t = conv.outputs[0]
        info = net.tensors[t]
        d = pool.to_json()  # without the backend's records of the pool's own tactic
        d["attrs"] = {k: v for k, v in d["attrs"].items() if not k.startswith("_")}
        conv.attrs["pool"] = dict(d, at=at[pool.name], output={
            "name": t, "dtype": info.dtype, "shape": list(info.shape)})
        conv.outputs = [pool.outputs[0]]
        del net.tensors[t]
        gone.add(pool.name)
        changed.append(conv.name)
    net.layers = [l for l in net.layers if l.name not in gone]
    return changed


def pool_layers(net: Network, layer: Layer) -> Optional[Tuple[Network, Layer, Layer]]:
    """The conv and the pool ``layer`` took (:func:`fuse_pools`) as two layers again, and a
    network to run them in (``net``'s tensors and weights, with the conv's own output), or
    None."""
    d = layer.attrs.get("pool")
    if d is None:
        return None
    out = d["output"]
    conv = layer.clone()
    conv.attrs.pop("pool")
    conv.outputs = [out["name"]]
    pool = Layer.from_json(d)
    pool.inputs, pool.outputs = [out["name"]], list(layer.outputs)
    sub = Network(net.name)
    sub.inputs, sub.outputs = list(net.inputs), list(layer.outputs)
    sub.tensors, sub.weights = dict(net.tensors), net.weights
    sub.tensors[out["name"]] = TensorInfo(out["name"], out["dtype"], tuple(out["shape"]))
    sub.layers = [conv, pool]
    return sub, conv, pool


def unfused(net: Network) -> Network:
    """``net`` as it was before :func:`fuse_pools` (itself where nothing was fused): each pool
    a layer of its own again, with its tactic, where it was (after the conv that took it)."""
    if not any("pool" in l.attrs for l in net.layers if l.kind == "conv"):
        return net
    out = net.copy()
    layers, pools = [], []
    for layer in out.layers:
        pair = pool_layers(out, layer) if layer.kind == "conv" else None
        if pair is None:
            layers.append(layer)
            continue
        sub, conv, pool = pair
        name = conv.outputs[0]
        out.tensors[name] = sub.tensors[name]
        layers.append(conv)
        pools.append((layer.attrs["pool"]["at"], pool))
    put_back(layers, pools)
    out.layers = layers
    return out
