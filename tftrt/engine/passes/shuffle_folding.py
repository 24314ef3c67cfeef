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


class _Stale(Exception):
    """A match would read a tensor whose producer or consumers an earlier rewrite of this
    sweep changed: it waits for the next sweep."""


class _Sweep:
    """One pass of a rule over the network's layers. The producer and consumer maps are made
    once; a rewrite marks the tensors whose producer or consumers it changes, and a later
    match that reads one of them raises _Stale (it waits for the next sweep, with fresh
    maps), so every rewrite of a sweep sees the network as it is. Layers removed or inserted
    and inputs substituted take effect in one rebuild when the sweep ends. Before
    (2026-12-04), each rule stopped at its first rewrite and the pass started again, making
    both maps and scanning every layer per rewrite: a 48-block Keras transformer spent 8.9 s
    of its 17.8 s build in this pass (scaling hunt)."""

    def __init__(self, net: Network):
        self.net = net
        self.prod, self.cons = net.producers(), net.consumers()
        self.dirty: set = set()
        self.removed: set = set()
        self.before: dict = {}
        self.after: dict = {}
        self.substitutions: dict = {}
        self.changed = False
        self.stop = False

    def layers(self):
        for layer in list(self.net.layers):
            if self.stop:
                return
            if id(layer) not in self.removed:
                yield layer

    def producer(self, name: str):
        if name in self.dirty:
            raise _Stale(name)
        return self.prod.get(name)

    def sole_consumer(self, name: str):
        if name in self.dirty:
            raise _Stale(name)
        c = self.cons.get(name, [])
        return c[0] if len(c) == 1 and name not in self.net.outputs else None

    def touch(self, *names) -> None:
        self.dirty.update(names)
        self.changed = True

    def remove(self, layer: Layer) -> None:
        self.removed.add(id(layer))

    def finish(self) -> bool:
        """Applies the sweep's removals, insertions and substitutions; whether it changed
        the network."""
        net = self.net
        if self.removed or self.before or self.after:
            layers = []
            for layer in net.layers:
                layers.extend(self.before.get(id(layer), ()))
                if id(layer) not in self.removed:
                    layers.append(layer)
                layers.extend(self.after.get(id(layer), ()))
            net.layers = layers
        if self.substitutions:
            def resolve(name):
                while name in self.substitutions:
                    name = self.substitutions[name]
                return name
            for layer in net.layers:
                if any(i in self.substitutions for i in layer.inputs):
                    layer.inputs = [resolve(i) for i in layer.inputs]
            net.aliases.update(self.substitutions)
        return self.changed


def _sweep(rule):
    """``rule(net, sweep, layer)`` applied to every layer in one sweep (see _Sweep); the
    sweep's result: whether it changed the network."""
    def run(net: Network) -> bool:
        sweep = _Sweep(net)
        for layer in sweep.layers():
            try:
                rule(net, sweep, layer)
            except _Stale:
                continue
        return sweep.finish()
    run.__name__ = rule.__name__
    return run


@_sweep
def _compose_transposes(net: Network, sweep: _Sweep, layer: Layer) -> None:
    if layer.kind != "transpose":
        return
    src = sweep.producer(layer.inputs[0])
    if src is not None and src.kind == "transpose":
        p1, p2 = src.attrs["perm"], layer.attrs["perm"]
        sweep.touch(layer.inputs[0], src.inputs[0])
        layer.inputs = [src.inputs[0]]
        layer.attrs = {"perm": [p1[i] for i in p2]}
    elif layer.attrs["perm"] == list(range(len(layer.attrs["perm"]))):
        _remove_passthrough(net, sweep, layer)


@_sweep
def _compose_reshapes(net: Network, sweep: _Sweep, layer: Layer) -> None:
    if layer.kind != "reshape" or "shape" not in layer.attrs:
        return
    src = sweep.producer(layer.inputs[0])
    if src is not None and src.kind == "reshape" and "shape" in src.attrs:
        sweep.touch(layer.inputs[0], src.inputs[0])
        layer.inputs = [src.inputs[0]]
    elif net.tensors[layer.inputs[0]].shape == tuple(layer.attrs["shape"]):
        _remove_passthrough(net, sweep, layer)


def _remove_passthrough(net: Network, sweep: _Sweep, layer: Layer) -> None:
    """Removes ``layer``, whose output equals its input: its consumers read the input. A
    network output keeps its name (Network.substitute), which renames tensors: done alone,
    as a sweep's only change, and the sweep stops."""
    out, src = layer.outputs[0], layer.inputs[0]
    if out in net.outputs:
        if sweep.changed:
            raise _Stale(out)
        net.layers = [l for l in net.layers if l is not layer]
        net.substitute(out, src)
        sweep.changed = sweep.stop = True
        return
    sweep.touch(out, src)
    sweep.remove(layer)
    sweep.substitutions[out] = src


def _follow_with(net: Network, sweep: _Sweep, layer: Layer, inner_shape, kind: str,
                 attrs: dict, suffix: str) -> None:
    """``layer`` writes a new tensor of ``inner_shape`` instead of its output, and a ``kind``
    layer inserted right after it turns that tensor into the output (a sunk shuffle)."""
    out = layer.outputs[0]
    inner = net.add_tensor(net.unique_name(out + "_pre"), net.tensors[out].dtype,
                           tuple(inner_shape))
    layer.outputs = [inner]
    sweep.touch(out, inner)
    sweep.after.setdefault(id(layer), []).append(
        Layer(out + suffix, kind, [inner], [out], attrs))


@_sweep
def _sink_transpose(net: Network, sweep: _Sweep, layer: Layer) -> None:
    if layer.kind != "pointwise":
        return
    out_shape = net.tensors[layer.outputs[0]].shape
    if out_shape is None:
        return
    rank = len(out_shape)
    perm, moved = None, []
    for i in layer.inputs:
        if i in net.weights:
            continue
        t = sweep.producer(i)
        if t is None or t.kind != "transpose" or sweep.sole_consumer(i) is not layer \
                or len(t.attrs["perm"]) != rank:
            return
        if perm is not None and t.attrs["perm"] != perm:
            return
        perm = t.attrs["perm"]
        moved.append(t)
    if perm is None:
        return
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
            new_inputs.append(sweep.prod[i].inputs[0])
    sweep.touch(*layer.inputs, *new_inputs)
    layer.inputs = new_inputs
    _follow_with(net, sweep, layer, [out_shape[k] for k in inv], "transpose",
                 {"perm": list(perm)}, "_sunk_transpose")
    for t in moved:
        sweep.remove(t)


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


@_sweep
def _sink_reshape(net: Network, sweep: _Sweep, layer: Layer) -> None:
    if layer.kind != "pointwise":
        return
    acts = [i for i in layer.inputs if i not in net.weights]
    if len(set(acts)) != 1:
        return
    r = sweep.producer(acts[0])
    out = layer.outputs[0]
    if r is None or r.kind != "reshape" or "shape" not in r.attrs or \
            sweep.sole_consumer(acts[0]) is not layer:
        return
    x_shape, y_shape = net.tensors[r.inputs[0]].shape, net.tensors[acts[0]].shape
    if x_shape is None or y_shape is None or net.tensors[out].shape != y_shape:
        return
    new_inputs = []
    for i in layer.inputs:
        if i not in net.weights:
            new_inputs.append(r.inputs[0])
            continue
        w = net.weights[i]
        v = _const_for_sunk_reshape(w, x_shape, y_shape)
        if v is None:
            return
        new_inputs.append(i if v.shape == w.shape and v.size == w.size and w.ndim == v.ndim
                          else net.add_weight(v.astype(w.dtype), i + "_reshaped"))
    sweep.touch(acts[0], r.inputs[0])
    layer.inputs = new_inputs
    sweep.remove(r)
    _follow_with(net, sweep, layer, x_shape, "reshape", {"shape": list(y_shape)},
                 "_sunk_reshape")


@_sweep
def _matmul_through_reshape(net: Network, sweep: _Sweep, layer: Layer) -> None:
    if layer.kind != "matmul" or layer.epilogue or layer.attrs.get("transpose_a") or \
            len(layer.outputs) != 1:
        return
    r = sweep.producer(layer.inputs[0])
    if r is None or r.kind != "reshape" or "shape" not in r.attrs:
        return
    x_shape, y_shape = net.tensors[r.inputs[0]].shape, net.tensors[layer.inputs[0]].shape
    b_shape = net.tensors[layer.inputs[1]].shape
    o_shape = net.tensors[layer.outputs[0]].shape
    if None in (x_shape, y_shape, b_shape, o_shape) or len(y_shape) != 2 or \
            len(x_shape) < 2 or len(b_shape) != 2 or x_shape[-1] != y_shape[-1]:
        return
    sweep.touch(layer.inputs[0], r.inputs[0])
    layer.inputs = [r.inputs[0]] + layer.inputs[1:]
    _follow_with(net, sweep, layer, tuple(x_shape[:-1]) + (o_shape[-1],), "reshape",
                 {"shape": list(o_shape)}, "_sunk_reshape")


@_sweep
def _matmul_absorbs_transpose(net: Network, sweep: _Sweep, layer: Layer) -> None:
    """matmul(.., [reshape of leading dims](transpose(x, p))) where p moves the innermost axis
    and p' (p with its last two entries swapped) does not: the transpose becomes p' (nothing
    when p' is the identity), which keeps contiguous rows, and the matmul's transpose_a /
    transpose_b flag flips, which the GEMM does for free."""
    if layer.kind != "matmul":
        return
    for k in (0, 1):
        name = layer.inputs[k]
        if layer.inputs.count(name) > 1:
            # matmul(t, t): rewiring one side would leave the other reading the removed
            # transpose's output (the engine then failed on every call)
            continue
        r, t = None, sweep.producer(name)
        if t is not None and t.kind == "reshape" and "shape" in t.attrs and \
                sweep.sole_consumer(name) is layer:
            ins, outs = net.tensors[t.inputs[0]].shape, net.tensors[name].shape
            if ins is None or outs is None or len(ins) < 2 or len(outs) < 2 or \
                    tuple(ins[-2:]) != tuple(outs[-2:]):
                continue
            r, t = t, sweep.producer(t.inputs[0])
        if t is None or t.kind != "transpose" or len(t.attrs["perm"]) < 2 or \
                sweep.sole_consumer(t.outputs[0]) is not (r or layer):
            continue
        perm = list(t.attrs["perm"])
        p2 = perm[:-2] + [perm[-1], perm[-2]]
        if perm[-1] == len(perm) - 1 or p2[-1] != len(p2) - 1:
            continue  # only a transpose that moves the innermost axis is worth removing
        src = t.inputs[0]
        x_shape = net.tensors[src].shape
        if x_shape is None:
            continue
        sweep.touch(name, t.outputs[0], src)
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
            sweep.remove(r)
        sweep.remove(t)
        sweep.before.setdefault(id(t), []).extend(new_layers)
        flag = "transpose_a" if k == 0 else "transpose_b"
        layer.attrs = dict(layer.attrs, **{flag: not layer.attrs.get(flag, False)})
        layer.inputs[k] = src
        return


_RULES = (_compose_transposes, _compose_reshapes, _sink_transpose, _sink_reshape,
          _matmul_through_reshape, _matmul_absorbs_transpose)


def shuffle_folding(net: Network) -> Network:
    """Composes/cancels transposes and reshapes, sinks them below pointwise layers and lets
    matmuls read through leading-dim reshapes (see module doc). Each rule sweeps the network
    (see _Sweep); after a sweep that changed it the rules start again from the first, so a
    cancelling pair is removed before anything sinks."""
    net = net.copy()
    for _ in range(10 * len(net.layers) + 10):
        if not any(rule(net) for rule in _RULES):
            break
    net.prune_tensors()
    from tftrt.engine.passes.dead_layers import remove_dead_layers
    return remove_dead_layers(net)
