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
* a reshape feeding a pointwise layer whose other operands are constants is sunk below it, the
  constants reshaped to match (materialized when they broadcast): Keras' EinsumDense emits
  ``matmul -> reshape [.., heads, dim] -> add bias [heads, dim]``, which becomes
  ``matmul -> add bias [heads * dim] -> reshape``, ready for vertical fusion.
* a matmul whose left operand is a reshape that only merges leading dims (``[.., K] ->
  [M, K]``) and whose right operand has no batch dims reads the unmerged tensor instead (a
  matmul broadcasts over leading dims) and is followed by the reshape of its output: Keras'
  Dense on a sequence (``reshape -> matmul -> reshape``) loses both reshapes, so its bias,
  activation and residual add reach the matmul's epilogue.
* a transpose (possibly followed by a reshape of leading dims) that swaps the last two axes of
  a matmul operand becomes the matmul's transpose_a / transpose_b flag: attention's
  ``k.transpose(0, 2, 3, 1)`` becomes ``k.transpose(0, 2, 1, 3)`` and ``q @ k^T``.
"""

from __future__ import annotations

import numpy as np

from tftrt.engine.network import Layer, Network


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


def _follow_with(net: Network, layer: Layer, inner_shape, kind: str, attrs: dict,
                 suffix: str) -> None:
    """``layer`` writes a new tensor of ``inner_shape`` instead of its output, and a ``kind``
    layer inserted right after it turns that tensor into the output (a sunk shuffle)."""
    out = layer.outputs[0]
    inner = net.add_tensor(net.unique_name(out + "_pre"), net.tensors[out].dtype,
                           tuple(inner_shape))
    layer.outputs = [inner]
    net.layers.insert(net.layers.index(layer) + 1,
                      Layer(out + suffix, kind, [inner], [out], attrs))


def _sink_transpose(net: Network) -> bool:
    prod, cons = net.producers(), net.consumers()
    for layer in net.layers:
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
        layer.inputs = new_inputs
        _follow_with(net, layer, [out_shape[k] for k in inv], "transpose",
                     {"perm": list(perm)}, "_sunk_transpose")
        for t in moved:
            if t in net.layers:
                net.layers.remove(t)
        return True
    return False


_MAX_MATERIALIZED = 1 << 16  # elements: a broadcast constant reshaped for a sunk reshape


def _const_for_sunk_reshape(w: np.ndarray, x_shape, y_shape):
    """``w`` (broadcasting against y_shape) as a constant broadcasting against x_shape, where
    x -> y is a reshape: w broadcast over the shortest suffix of y whose size is that of a
    suffix of x, reshaped to that suffix of x. None when that is too big to materialize."""
    if w.size == 1:
        return w.reshape(())
    if w.ndim > len(y_shape):
        return None
    ws = (1,) * (len(y_shape) - w.ndim) + tuple(w.shape)
    q = 0
    while q < len(ws) and ws[q] == 1:
        q += 1
    for q in range(q, -1, -1):
        tail = int(np.prod(y_shape[q:], dtype=np.int64))
        if tail > _MAX_MATERIALIZED:
            return None
        r, acc = len(x_shape), 1
        while r > 0 and acc < tail:
            r -= 1
            acc *= x_shape[r]
        if acc == tail:
            full = np.broadcast_to(w.reshape(ws[q:]), tuple(y_shape[q:]))
            return np.ascontiguousarray(full).reshape(tuple(x_shape[r:]))
    return None


def _sink_reshape(net: Network) -> bool:
    prod, cons = net.producers(), net.consumers()
    for layer in net.layers:
        if layer.kind != "pointwise":
            continue
        acts = [i for i in layer.inputs if i not in net.weights]
        if len(set(acts)) != 1:
            continue
        r = prod.get(acts[0])
        out = layer.outputs[0]
        if r is None or r.kind != "reshape" or "shape" not in r.attrs or \
                _sole_consumer(cons, net, acts[0]) is not layer:
            continue
        x_shape, y_shape = net.tensors[r.inputs[0]].shape, net.tensors[acts[0]].shape
        if x_shape is None or y_shape is None or net.tensors[out].shape != y_shape:
            continue
        new_inputs = []
        for i in layer.inputs:
            if i not in net.weights:
                new_inputs.append(r.inputs[0])
                continue
            w = net.weights[i]
            v = _const_for_sunk_reshape(w, x_shape, y_shape)
            if v is None:
                break
            new_inputs.append(i if v.shape == w.shape and v.size == w.size and w.ndim == v.ndim
                              else net.add_weight(v.astype(w.dtype), i + "_reshaped"))
        else:
            layer.inputs = new_inputs
            net.layers.remove(r)
            _follow_with(net, layer, x_shape, "reshape", {"shape": list(y_shape)},
                         "_sunk_reshape")
            return True
    return False


def _matmul_through_reshape(net: Network) -> bool:
    prod = net.producers()
    for layer in net.layers:
        if layer.kind != "matmul" or layer.epilogue or layer.attrs.get("transpose_a") or \
                len(layer.outputs) != 1:
            continue
        r = prod.get(layer.inputs[0])
        if r is None or r.kind != "reshape" or "shape" not in r.attrs:
            continue
        x_shape, y_shape = net.tensors[r.inputs[0]].shape, net.tensors[layer.inputs[0]].shape
        b_shape = net.tensors[layer.inputs[1]].shape
        o_shape = net.tensors[layer.outputs[0]].shape
        if None in (x_shape, y_shape, b_shape, o_shape) or len(y_shape) != 2 or \
                len(x_shape) < 2 or len(b_shape) != 2 or x_shape[-1] != y_shape[-1]:
            continue
        layer.inputs = [r.inputs[0]] + layer.inputs[1:]
        _follow_with(net, layer, tuple(x_shape[:-1]) + (o_shape[-1],), "reshape",
                     {"shape": list(o_shape)}, "_sunk_reshape")
        return True
    return False


def _matmul_absorbs_transpose(net: Network) -> bool:
    """matmul(.., [reshape of leading dims](transpose(x, p))) where p moves the innermost axis
    and p' (p with its last two entries swapped) does not: the transpose becomes p' (nothing
    when p' is the identity), which keeps contiguous rows, and the matmul's transpose_a /
    transpose_b flag flips, which the GEMM does for free."""
    prod, cons = net.producers(), net.consumers()
    for layer in net.layers:
        if layer.kind != "matmul":
            continue
        for k in (0, 1):
            name = layer.inputs[k]
            if layer.inputs.count(name) > 1:
                # matmul(t, t): rewiring one side would leave the other reading the removed
                # transpose's output (the engine then failed on every call)
                continue
            r, t = None, prod.get(name)
            if t is not None and t.kind == "reshape" and "shape" in t.attrs and \
                    _sole_consumer(cons, net, name) is layer:
                ins, outs = net.tensors[t.inputs[0]].shape, net.tensors[name].shape
                if ins is None or outs is None or len(ins) < 2 or len(outs) < 2 or \
                        tuple(ins[-2:]) != tuple(outs[-2:]):
                    continue
                r, t = t, prod.get(t.inputs[0])
            if t is None or t.kind != "transpose" or len(t.attrs["perm"]) < 2 or \
                    _sole_consumer(cons, net, t.outputs[0]) is not (r or layer):
                continue
            perm = list(t.attrs["perm"])
            p2 = perm[:-2] + [perm[-1], perm[-2]]
            if perm[-1] == len(perm) - 1 or p2[-1] != len(p2) - 1:
                continue  # only a transpose that moves the innermost axis is worth removing
            src = t.inputs[0]
            x_shape = net.tensors[src].shape
            if x_shape is None:
                continue
            pos = net.layers.index(t)
            new_layers = []
            if p2 != list(range(len(p2))):
                tn = net.add_tensor(net.unique_name(t.outputs[0] + "_t"),
                                    net.tensors[src].dtype, tuple(x_shape[i] for i in p2))
                new_layers.append(Layer(t.name + "_swapped", "transpose", [src], [tn],
                                        {"perm": p2}))
                src = tn
            if r is not None:
                o = list(net.tensors[name].shape)
                o[-2], o[-1] = o[-1], o[-2]
                rn = net.add_tensor(net.unique_name(name + "_t"), net.tensors[name].dtype,
                                    tuple(o))
                new_layers.append(Layer(r.name + "_swapped", "reshape", [src], [rn],
                                        {"shape": o}))
                src = rn
                net.layers.remove(r)
            net.layers.remove(t)
            net.layers[pos:pos] = new_layers
            flag = "transpose_a" if k == 0 else "transpose_b"
            layer.attrs = dict(layer.attrs, **{flag: not layer.attrs.get(flag, False)})
            layer.inputs[k] = src
            return True
    return False


def shuffle_folding(net: Network) -> Network:
    """Composes/cancels transposes and reshapes, sinks them below pointwise layers and lets
    matmuls read through leading-dim reshapes (see module doc)."""
    net = net.copy()
    for _ in range(10 * len(net.layers) + 10):
        if not (_compose_transposes(net) or _compose_reshapes(net) or _sink_transpose(net)
                or _sink_reshape(net) or _matmul_through_reshape(net)
                or _matmul_absorbs_transpose(net)):
            break
    net.prune_tensors()
    from tftrt.engine.passes.dead_layers import remove_dead_layers
    return remove_dead_layers(net)
