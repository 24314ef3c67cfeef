"""LayerNorm fusion: a layer norm decomposed into reductions and pointwise layers -> one
``normalization`` layer (the kind the ONNX LayerNormalization importer produces).

Keras 3 LayerNormalization (and older PyTorch exports) reach the engine as two mean reductions
and pointwise math. After ``elementwise_fusion`` the pattern is, over trailing axes ``A``::

    m = reduce mean(x, A, keepdims)        # consumed by e and o only
    e = pointwise(x, m)                    # (x - m)^2
    v = reduce mean(e, A, keepdims)        # consumed by o only
    o = pointwise(x, m, v, gamma, beta)    # (x - m) / sqrt(v + eps) * gamma + beta

``e`` and ``o`` may each be a small group of pointwise layers (a shared ``d = x - m`` feeding
both, as in ``(x - m) / sqrt(mean(pow(x - m, 2)) + eps)``); every intermediate must be used
inside the pattern only and must not be a network output.

The programs are not matched textually (the order of operands, the algebra and the constants
differ between exporters). The structure is matched, then the math is checked numerically in
float64 with the numpy program evaluator: ``e(x, m) == (x - m)^2``; from ``o`` at probe points
``b = o(m, m, 1)``, ``s1 = o(m + 1, m, 1) - b``, ``s0 = o(m + 1, m, 0) - b`` give
``eps = r^2 / (1 - r^2)`` with ``r = s1 / s0`` and ``gamma = s1 * sqrt(1 + eps)``; then
``o == (x - m) / sqrt(v + eps) * gamma + beta`` must hold on random rows of several scales
(relative error 1e-6). Constants in the pattern must vary only along ``A``. Anything that does
not fit leaves the layers untouched.

``elementwise_fusion`` may have merged what follows the norm into ``o`` (an activation, a
residual add of another tensor, a scale): then ``o``'s program is split after the step that
computes the norm, and the rest stays a pointwise layer reading the ``normalization`` output.
The scale and bias are float32 weights over the normalized dims (ones / zeros when the
original has none); the epsilon is rounded to float32 as an ONNX attribute would be. Only
float32 / float16 inputs of static shape are fused (the kernel computes in float32).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from tftrt.engine.backends.numpy_ops import run_program
from tftrt.engine.network import Layer, Network

_FLOAT_DTYPES = ("float16", "float32", "float64")
_MAX_REGION = 16  # pointwise layers in one side (e or o) of the pattern
_RTOL = 1e-6


def _is_trailing_mean(layer: Layer, rank: int) -> bool:
    a = layer.attrs
    axes = list(a.get("axes") or [])
    return (layer.kind == "reduce" and a.get("op") == "mean" and int(a.get("keepdims", 1)) == 1
            and len(layer.inputs) == 1 and len(layer.outputs) == 1 and bool(axes)
            and axes == list(range(rank - len(axes), rank)))


def _weight_ok(w: np.ndarray, xshape: Tuple[int, ...], axes: Sequence[int]) -> bool:
    """A constant that varies only along the normalized axes (and does not grow x)."""
    r = len(xshape)
    if w.dtype.kind not in "fiu" or w.ndim > r:
        return False
    for i, d in enumerate(w.shape):
        ax = r - w.ndim + i
        if d != 1 and (ax not in axes or d != xshape[ax]):
            return False
    return True


def _region(net: Network, root: Optional[Layer], stop: Set[str],
            producers: Dict[str, Layer]) -> Optional[List[Layer]]:
    """``root`` and the pointwise layers that compute its inputs from ``stop`` tensors and
    weights, or None when another tensor (another layer kind, a network input) is reached."""
    if root is None or root.kind != "pointwise" or len(root.outputs) != 1:
        return None
    found: Dict[int, Layer] = {id(root): root}
    todo = [i for i in root.inputs if i]
    while todo:
        t = todo.pop()
        if t in stop or t in net.weights:
            continue
        layer = producers.get(t)
        if layer is None or layer.kind != "pointwise" or len(layer.outputs) != 1:
            return None
        if id(layer) in found:
            continue
        found[id(layer)] = layer
        if len(found) > _MAX_REGION:
            return None
        todo.extend(i for i in layer.inputs if i)
    return list(found.values())


def _refs(args) -> Tuple[Set[int], Set[int]]:
    """(input indices, step indices) an argument list reads."""
    ins, steps = set(), set()
    for a in args:
        if isinstance(a, str) and a[:1] == "$":
            ins.add(int(a[1:]))
        elif isinstance(a, str) and a[:1] == "%":
            steps.add(int(a[1:]))
    return ins, steps


def _splits(o_layer: Layer, v: str):
    """Ways to read ``o_layer`` as ``tail(norm(...), ...)``: (prefix layer, tail steps or None,
    tail input names), the whole program first. A prefix ends at a step that depends on v;
    the tail reads that step's result, its own steps and inputs (as ``$0`` = the norm)."""
    prog = o_layer.attrs["program"]
    yield o_layer, None, []
    if v not in o_layer.inputs:
        return
    iv = o_layer.inputs.index(v)
    deps: List[Set[int]] = []
    for st in prog:
        ins, steps = _refs(st["args"])
        for j in steps:
            ins |= deps[j]
        deps.append(ins)
    for k in range(len(prog) - 2, -1, -1):
        if iv not in deps[k]:
            continue
        used: Set[int] = set()
        ok = True
        for st in prog[k + 1:]:
            ins, steps = _refs(st["args"])
            used |= ins
            if any(j < k for j in steps):
                ok = False
                break
        if not ok:
            continue
        used_prefix: Set[int] = set()
        for st in prog[:k + 1]:
            used_prefix |= _refs(st["args"])[0]
        pre_ins = sorted(used_prefix)
        pmap = {f"${i}": f"${n}" for n, i in enumerate(pre_ins)}
        prefix = Layer(o_layer.name, "pointwise", [o_layer.inputs[i] for i in pre_ins],
                       ["__ln_prefix__"], {"program": [
                           dict(st, args=[pmap.get(a, a) if isinstance(a, str) else a
                                          for a in st["args"]]) for st in prog[:k + 1]]},
                       precision=o_layer.precision)
        tail_ins = [o_layer.inputs[i] for i in sorted(used)]
        tmap = {f"${i}": f"${n + 1}" for n, i in enumerate(sorted(used))}
        tmap[f"%{k}"] = "$0"
        for j in range(k + 1, len(prog)):
            tmap[f"%{j}"] = f"%{j - k - 1}"
        tail = [dict(st, args=[tmap.get(a, a) if isinstance(a, str) else a
                               for a in st["args"]]) for st in prog[k + 1:]]
        yield prefix, tail, tail_ins


def _f64_program(program: List[dict]) -> List[dict]:
    out = []
    for st in program:
        st = dict(st)
        if st.get("dtype") in _FLOAT_DTYPES:
            st["dtype"] = "float64"
        if st["op"] == "cast" and str(st.get("to")) in _FLOAT_DTYPES:
            st["to"] = "float64"
        out.append(st)
    return out


class _Evaluator:
    """Runs a group of pointwise layers in float64 on probe values of its leaf tensors."""

    def __init__(self, net: Network, layers: List[Layer], order: Dict[int, int]):
        self.net = net
        self.layers = sorted(layers, key=lambda l: order.get(id(l), 1 << 40))
        self.programs = [_f64_program(l.attrs["program"]) for l in self.layers]

    def __call__(self, target: str, values: Dict[str, np.ndarray]) -> np.ndarray:
        vals = dict(values)
        for layer, prog in zip(self.layers, self.programs):
            ins = []
            for i in layer.inputs:
                if i in vals:
                    ins.append(vals[i])
                else:
                    w = self.net.weights[i]
                    ins.append(w.astype(np.float64) if w.dtype.kind == "f" else w)
            vals[layer.outputs[0]] = np.asarray(run_program(prog, ins))
        return vals[target]


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return bool(np.all(np.isfinite(got))) and \
        bool(np.allclose(got, want, rtol=_RTOL, atol=_RTOL * max(scale, 1e-300)))


def _verify(x: str, m: str, v: str, e_out: str, o_out: str, e_eval: _Evaluator,
            o_eval: _Evaluator, xshape: Tuple[int, ...], axes: List[int]
            ) -> Optional[Tuple[np.ndarray, np.ndarray, float]]:
    """(gamma, beta, eps) over the normalized dims when the math is a layer norm, else None."""
    r, k = len(xshape), len(axes)
    ndims = tuple(xshape[a] for a in axes)
    probe = (1,) * (r - k) + ndims
    stat = (1,) * r
    rng = np.random.default_rng(1234)

    def o_at(xv, mv, vv):
        y = o_eval(o_out, {x: np.broadcast_to(xv, probe), m: np.full(stat, mv),
                           v: np.full(stat, vv)})
        return np.broadcast_to(np.asarray(y, np.float64), probe).reshape(ndims)

    m0 = 0.375
    b = o_at(m0, m0, 1.0)
    s1 = o_at(m0 + 1.0, m0, 1.0) - b
    s0 = o_at(m0 + 1.0, m0, 0.0) - b
    use = np.isfinite(s1) & np.isfinite(s0) & (s1 != 0) & (s0 != 0)
    if not np.all(np.isfinite(b)) or not np.any(use):
        return None  # eps == 0 (the probe divided by zero) or gamma == 0 everywhere
    j = np.argmax(np.where(use, np.abs(s1), -1.0))
    ratio = float(s1.flat[j] / s0.flat[j])
    r2 = ratio * ratio
    if not 0.0 < r2 < 1.0 or ratio < 0:
        return None
    eps = r2 / (1.0 - r2)
    if not (np.isfinite(eps) and eps > 0):
        return None
    g = s1 * np.sqrt(1.0 + eps)
    if not np.all(np.isfinite(g)):
        return None
    red = tuple(range(r - k, r))
    root = float(np.sqrt(eps))
    for scale, offset in ((1.0, 0.0), (1.0, 0.7), (0.1, -0.2), (10.0, 3.0), (root, 0.5),
                          (3.0 * root, -1.0), (0.3 * root, 0.0)):
        xv = rng.standard_normal(probe) * scale + offset
        mv = np.mean(xv, axis=red, keepdims=True)
        d = xv - mv
        sq = d * d
        ev = e_eval(e_out, {x: xv, m: mv})
        if not _close(np.broadcast_to(np.asarray(ev, np.float64), probe), sq):
            return None
        vv = np.mean(sq, axis=red, keepdims=True)
        got = o_eval(o_out, {x: xv, m: mv, v: vv})
        want = d / np.sqrt(vv + eps) * g.reshape(probe) + b.reshape(probe)
        if not _close(np.broadcast_to(np.asarray(got, np.float64), probe), want):
            return None
    return g, b, eps


def _match(net: Network, m_layer: Layer, producers: Dict[str, Layer],
           consumers: Dict[str, List[Layer]], order: Dict[int, int]):
    """(layers to remove, the o layer, axes, gamma, beta, eps, tail program or None, tail
    inputs) or None."""
    x = m_layer.inputs[0]
    if not x or x in net.weights or x not in net.tensors:
        return None
    info = net.tensors[x]
    if not info.is_static or info.dtype not in ("float32", "float16"):
        return None
    xshape = tuple(info.shape)
    if not _is_trailing_mean(m_layer, len(xshape)):
        return None
    axes = list(m_layer.attrs["axes"])
    m = m_layer.outputs[0]
    stat_shape = tuple(1 if i in axes else d for i, d in enumerate(xshape))
    if net.tensors[m].shape != stat_shape or m in net.outputs:
        return None
    m_users = consumers.get(m, [])
    if not m_users or any(u.kind != "pointwise" for u in m_users):
        return None
    # v: a second mean over the same axes, a few pointwise layers after m.
    cands, seen, frontier = [], set(), list(m_users)
    for _ in range(4):
        nxt = []
        for l in frontier:
            if id(l) in seen:
                continue
            seen.add(id(l))
            for u in consumers.get(l.outputs[0], []):
                if u.kind == "pointwise":
                    nxt.append(u)
                elif u.kind == "reduce" and u.attrs == m_layer.attrs and \
                        all(u is not c for c in cands):
                    cands.append(u)
        frontier = nxt
    for v_layer in cands:
        found = _match_with(net, m_layer, v_layer, x, xshape, axes, stat_shape, producers,
                            consumers, order)
        if found is not None:
            return found
    return None


def _match_with(net: Network, m_layer: Layer, v_layer: Layer, x: str, xshape, axes,
                stat_shape, producers, consumers, order):
    m = m_layer.outputs[0]
    dtype = net.tensors[x].dtype
    v, e_out = v_layer.outputs[0], v_layer.inputs[0]
    v_users = consumers.get(v, [])
    if len(v_users) != 1 or v_users[0].kind != "pointwise" or v in net.outputs or \
            net.tensors[v].shape != stat_shape or net.tensors[e_out].shape != xshape:
        return None
    o_layer = v_users[0]
    if len(o_layer.outputs) != 1:
        return None
    e_layers = _region(net, producers.get(e_out), {x, m}, producers)
    if not e_layers:
        return None
    e_eval = _Evaluator(net, e_layers, order)
    for prefix, tail, tail_ins in _splits(o_layer, v):
        if tail is None and (net.tensors[o_layer.outputs[0]].shape != xshape or
                             net.tensors[o_layer.outputs[0]].dtype != dtype):
            continue
        o_layers = _region(net, prefix, {x, m, v}, producers)
        if not o_layers:
            continue
        group = {id(l): l for l in e_layers + o_layers}
        group[id(m_layer)], group[id(v_layer)], group[id(o_layer)] = m_layer, v_layer, o_layer
        inner = {o for l in group.values() if l is not o_layer for o in l.outputs}
        if any(t in inner for t in tail_ins):
            continue  # the tail reads the mean, the variance or another dropped tensor
        ok = True
        for l in group.values():
            if l is o_layer:
                continue
            for i in l.inputs:
                if i in net.weights and not _weight_ok(net.weights[i], xshape, axes):
                    ok = False
            for o in l.outputs:
                if o in net.outputs or any(id(u) not in group for u in consumers.get(o, [])):
                    ok = False
        if not ok:
            continue
        if any(i in net.weights and not _weight_ok(
                net.weights[i], xshape, axes) for i in prefix.inputs):
            continue
        o_eval = _Evaluator(net, o_layers, order)
        try:
            with np.errstate(all="ignore"):
                params = _verify(x, m, v, e_out, prefix.outputs[0], e_eval, o_eval, xshape,
                                 axes)
        except Exception:  # an op the probe cannot evaluate: not a layer norm we understand
            params = None
        if params is None:
            continue
        g, b, eps = params
        if not 0.0 < np.float32(eps) < np.inf:
            return None
        real = [l for l in group.values() if l is not prefix or prefix is o_layer]
        return real, o_layer, axes, g, b, float(np.float32(eps)), tail, tail_ins
    return None


def layernorm_fusion(net: Network) -> Network:
    """Replaces decomposed layer norms by ``normalization`` layers (see module doc)."""
    net = net.copy()
    producers = net.producers()
    consumers = net.consumers()
    order = {id(l): k for k, l in enumerate(net.layers)}
    removed: Set[int] = set()
    replace: Dict[int, List[Layer]] = {}
    for layer in list(net.layers):
        if layer.kind != "reduce" or id(layer) in removed:
            continue
        found = _match(net, layer, producers, consumers, order)
        if found is None:
            continue
        group, o_layer, axes, g, b, eps, tail, tail_ins = found
        if any(id(l) in removed for l in group):
            continue
        x = layer.inputs[0]
        scale = net.add_weight(g.astype(np.float32), o_layer.name + "_ln_scale")
        bias = net.add_weight(b.astype(np.float32), o_layer.name + "_ln_bias")
        out = o_layer.outputs[0]
        if tail is not None:  # norm -> a new tensor; the rest of o's program reads it
            out = net.add_tensor(net.unique_name(o_layer.outputs[0] + "_ln"),
                                 net.tensors[x].dtype, net.tensors[x].shape)
        new = [Layer(o_layer.name, "normalization", [x, scale, bias], [out],
                     {"axes": list(axes), "epsilon": eps}, precision=o_layer.precision)]
        if tail is not None:
            new.append(Layer(o_layer.name + "_tail", "pointwise", [out] + tail_ins,
                             list(o_layer.outputs), {"program": tail},
                             precision=o_layer.precision))
        replace[id(o_layer)] = new
        removed.update(id(l) for l in group)
    if not replace:
        return net
    layers: List[Layer] = []
    for l in net.layers:
        if id(l) in replace:
            layers.extend(replace[id(l)])
        elif id(l) not in removed:
            layers.append(l)
    net.layers = layers
    net.prune_tensors()
    return net
