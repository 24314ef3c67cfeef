"""Engines for other shapes of an optimization profile without optimizing the network again.

The engine built at a profile's opt shape went through the whole builder: binding, the
optimization passes, precision, the late passes, tactics. For another shape of the same
profile the passes would make the same decisions on the same layers; only tensor shapes and
the few attributes that hold shape values differ. A :class:`ShapeTemplate` is the opt engine's
network plus a rule per such attribute value; :meth:`ShapeTemplate.network_for` re-derives
those values and infers the shapes once (no copy per pass, no pass, no weight folding), so a
new batch size costs a shape inference and a memory plan.

Whether that is right is not assumed, it is checked when the template is made
(:func:`make_template`), against the builder's own result at a probe shape (every varying
dimension moved, to a value of another parity when the range allows):

* the optimized networks at the opt and probe shapes have the same layers (names, kinds,
  inputs, outputs, epilogues, precisions), tensors (dtypes) and weights (values): nothing the
  passes decided or folded depends on the shapes;
* an attribute that differs is a shape vector of a layer whose semantics do not otherwise
  depend on it (``reshape`` / ``expand`` shape, ``resize`` sizes, ``slice`` slices); each
  differing element is affine in one varying input dimension (``a * dim + c``, integers), or,
  once per reshape / expand, the size that makes the element count match (ONNX's -1);
* no layer sees a varying dimension where its result depends on the value in a way no
  attribute shows: a strided spatial axis of ``conv`` / ``conv_transpose`` / ``pool`` (SAME
  padding depends on the size modulo the stride), the axis of a ``split``; and no ``shape`` /
  ``size`` / ``range`` / ``constant_of_shape`` / ``nms`` layer is left;
* the template re-derived at the probe shape gives exactly the probe network's shapes;
* the same two checks (no learning) at the low end of the range (each varying dimension at its
  minimum, at least 2): a value folded from a shape may agree at the opt and probe shapes
  and not below them (``min(batch, 4)`` at 8 and 5; ``batch >= 3``); a difference refuses.
* before the probes, the values constant folding computes from the input shapes (``shape``
  / ``size`` layers and what folds from them, ``constant_folding.shape_values``: the shape
  arithmetic alone, no weight folded) are evaluated at many values of each varying
  dimension (:func:`sample_values`) and must each be affine in it
  (:func:`check_shape_values`): a value that agrees at every shape the probes compare
  (``batch % 3`` over 1..8: 2 at 8, 5 and 2) refuses the template; one that is not affine
  only at size 1 makes size 1 a full build. A value folded from a shape and a large
  constant is not followed and refuses.

Size 1 is special (squeezes, broadcasting): when a varying dimension's range holds 1, a second
probe with those dimensions at 1 is compared the same way; if it differs, shapes with a
varying dimension of 1 (and 0) are built the full way. Anything the checks refuse makes no
template, and every other shape of that profile is built the full way (``builder.py``).
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt.engine.errors import EngineBuildError
from tftrt.engine.network import Layer, Network, TensorInfo, _clone, _jsonable
from tftrt.engine.shapes import infer_layer

log = logging.getLogger("tftrt.engine.shape_template")

Var = Tuple[int, int]  # (input index, axis): a dimension the profile lets vary

# (kind, attr) holding shape values, re-derived per shape; "unknown": how many elements may be
# left to the element count (reshape) or the broadcast input (expand).
SHAPE_ATTRS = {("reshape", "shape"): 1, ("expand", "shape"): 1, ("resize", "sizes"): 0,
               ("slice", "slices"): 0}
# Layers whose output (shape or values) depends on input shapes through no attribute.
SHAPE_DEPENDENT_KINDS = ("shape", "size", "range", "constant_of_shape", "nms")
WINDOW_KINDS = ("conv", "conv_transpose", "pool")


class TemplateError(Exception):
    """Why the opt engine's network cannot serve other shapes by re-derivation."""


class ShapeTemplate:
    """The opt engine's network and the rules that re-derive it for other shapes.

    Attributes:
      network: the opt-shape engine's network (shared, never modified).
      variables: the varying dimensions, (input index, axis).
      opt: their values at the opt shape.
      ones_ok: whether a varying dimension of size 1 was checked (see module doc).
    """

    def __init__(self, network: Network, variables: List[Var], opt: Tuple[int, ...],
                 rules: Dict[int, Dict[str, list]], ones_ok: bool,
                 groups: Optional[List[List[Var]]] = None):
        self.network = network
        self.variables = variables
        # the varying dimensions as the rules see them: one value per group, its dimensions
        # equal (tied: inputs sharing a batch); one dimension per group unless tied
        self.groups = groups if groups is not None else [[v] for v in variables]
        self.opt = opt  # per group
        self.rules = rules  # layer index -> attr -> flat list of element rules (see _learn)
        self.ones_ok = ones_ok

    def serves(self, input_shapes: Sequence[Sequence[int]]) -> Optional[str]:
        """None when ``input_shapes`` (in network input order) can be served, else why not."""
        net = self.network
        if len(input_shapes) != len(net.inputs):
            return f"{len(input_shapes)} input shapes for {len(net.inputs)} inputs"
        var = set(self.variables)
        for i, (name, s) in enumerate(zip(net.inputs, input_shapes)):
            ref = net.tensors[name].shape
            if len(s) != len(ref):
                return f"input {name} has rank {len(s)}, the template {len(ref)}"
            for ax, (d, r) in enumerate(zip(s, ref)):
                d = int(d)
                if (i, ax) not in var:
                    if d != r:
                        return f"input {name} dimension {ax} is {d}, fixed at {r}"
                elif d < 1 or (d == 1 and not self.ones_ok):
                    return (f"input {name} dimension {ax} is {d}: sizes below 2 were not "
                            f"checked for this network")
        for g in self.groups:
            if len({int(input_shapes[i][ax]) for i, ax in g}) > 1:
                return (f"dimensions {g} differ; the template was made with them equal "
                        f"(tied: {[int(input_shapes[i][ax]) for i, ax in g]})")
        return None

    def network_for(self, input_shapes: Dict[str, Sequence[int]]) -> Network:
        """The network for ``input_shapes``: the template's layers with their shape values
        re-derived, every tensor's shape inferred, dtypes and weights as in the template.

        Raises:
          EngineBuildError: shapes the template does not serve, or that do not fit the
            network (a reshape whose element count does not match).
        """
        net = self.network
        shapes = [tuple(int(d) for d in input_shapes[n]) for n in net.inputs]
        why = self.serves(shapes)
        if why is not None:
            raise EngineBuildError(f"network {net.name}: the profile's optimized network does "
                                   f"not serve shapes {shapes}: {why}")
        values = tuple(shapes[g[0][0]][g[0][1]] for g in self.groups)
        out = Network(net.name)
        out.inputs, out.outputs = list(net.inputs), list(net.outputs)
        out.weights = dict(net.weights)
        if hasattr(net, "quantization"):
            out.quantization = net.quantization
        out._counter = net._counter
        tensors = out.tensors
        for name, info in net.tensors.items():
            tensors[name] = TensorInfo(name, info.dtype, info.shape if name in net.weights
                                       else None)
        for name, s in zip(net.inputs, shapes):
            tensors[name].shape = s
        layers = []
        for k, layer in enumerate(net.layers):
            attrs = dict(layer.attrs)
            for key, rule in self.rules.get(k, {}).items():
                attrs[key] = _apply(layer, key, rule, values, [tensors[i].shape for i in
                                                               layer.inputs if i])
            new = Layer(layer.name, layer.kind, list(layer.inputs), list(layer.outputs), attrs,
                        list(layer.epilogue), layer.tactic, layer.precision)
            # shape functions canonicalize attrs in place: they run on a scratch copy
            scratch = Layer(layer.name, layer.kind, list(layer.inputs), list(layer.outputs),
                            _clone(attrs), [], None, None)
            infer_layer(out, scratch)
            for o in layer.outputs:
                if o:
                    tensors[o].dtype = net.tensors[o].dtype  # precision's storage dtypes
            if layer.kind == "reshape":
                a, b = tensors[layer.inputs[0]].shape, tensors[layer.outputs[0]].shape
                if int(np.prod(a, dtype=np.int64)) != int(np.prod(b, dtype=np.int64)):
                    raise EngineBuildError(f"reshape {layer.name}: cannot reshape {a} to {b}")
            layers.append(new)
        out.layers = layers
        return out

    def batch_split(self) -> Optional[str]:
        """None when a batch may be run as consecutive slices, each through the engine for
        its own batch size, and the answers concatenated (every sample computed apart from
        the others); else why not. See :func:`batch_split_check`."""
        if not hasattr(self, "_batch_split"):
            self._batch_split = batch_split_check(self)
        return self._batch_split


# --- may a batch be split? -----------------------------------------------------------------------
# Kinds that compute each position of dimension 0 from that position alone, whatever their
# attributes (the tensor check below sees a kind that changes dimension 0).
_PER_SAMPLE_KINDS = ("pointwise", "conv", "conv_transpose", "pool", "se", "attention", "matmul",
                     "depth_to_space", "space_to_depth", "resize", "expand", "tile", "reshape",
                     "onehot")
# Kinds that work along their ``axis`` (on their first input): per sample unless it is 0.
_AXIS_KINDS = ("softmax", "arg_reduce", "topk", "cumsum", "concat", "split", "gather",
               "gather_elements", "quantize", "dequantize")
# Kinds that work along their ``axes``: per sample unless they hold 0.
_AXES_KINDS = ("reduce", "normalization")


def _batch_axis_use(net: Network, layer: Layer) -> Optional[str]:
    """Why ``layer`` mixes samples (works along dimension 0), or None."""
    kind, a = layer.kind, layer.attrs
    first = layer.inputs[0] if layer.inputs else None
    shape = net.tensors[first].shape if first else None
    rank = len(shape) if shape else 1
    if kind in _PER_SAMPLE_KINDS:
        return None
    if kind in _AXIS_KINDS:
        if first in net.weights:  # a weight indexed or cut per sample (an embedding table)
            return None
        if kind in ("quantize", "dequantize"):
            scale = layer.inputs[1] if len(layer.inputs) > 1 else None
            if scale in net.weights and np.asarray(net.weights[scale]).size == 1:
                return None  # one scale for the tensor: its axis means nothing
        axis = int(a.get("axis", 0))
        return "works along dimension 0" if axis % rank == 0 else None
    if kind in _AXES_KINDS:
        axes = a.get("axes")
        if axes is None or any(int(ax) % rank == 0 for ax in axes):
            return "reduces over dimension 0"
        return None
    if kind == "transpose":
        perm = a.get("perm")
        return None if perm is not None and int(perm[0]) % rank == 0 else \
            "moves dimension 0"
    if kind == "slice":
        sl = a.get("slices")
        ok = sl is not None and int(sl[0][0] or 0) == 0 and int(sl[0][2]) == 1
        return None if ok else "slices dimension 0"
    if kind == "pad":
        pads = a.get("pads")
        ok = pads is not None and int(pads[0]) == 0 and int(pads[rank]) == 0
        return None if ok else "pads dimension 0"
    return f"kind {kind!r} is not known to keep samples apart"


def batch_split_check(template: "ShapeTemplate") -> Optional[str]:
    """Whether a profile's batches may be split (None) or why not.

    Splitting serves batch b as consecutive slices of the inputs along dimension 0, each run
    by the engine of its own (smaller) batch size, the outputs concatenated: right only when
    dimension 0 of every input is one batch dimension and no layer mixes samples. Checked on
    the opt engine's network, not assumed:

    * the profile varies dimension 0 of every input and nothing else, at one value;
    * every tensor of the network (weights aside) has dimension 0 equal to the batch, at the
      opt batch and at another one (the template re-derived there), its other dimensions
      unchanged: no layer moves samples into other dimensions or back (a reshape of the batch
      into features, a transpose, a batch-sized constant);
    * no layer works along dimension 0 (softmax, concat or reductions over it, a transpose
      moving it, a slice or pad of it); a layer kind not listed as per sample refuses.
    """
    net = template.network
    want = [(i, 0) for i in range(len(net.inputs))]
    if sorted(template.variables) != want:
        return (f"the profile varies dimensions {sorted(template.variables)}, not dimension 0 "
                f"of every input alone")
    if len(set(template.opt)) != 1:
        return f"the inputs' batch sizes differ at the opt shape ({list(template.opt)})"
    b0 = template.opt[0]
    b1 = b0 // 2 + 1 if b0 >= 3 else b0 + 1
    try:
        other = template.network_for({n: (b1, *net.tensors[n].shape[1:]) for n in net.inputs})
    except (EngineBuildError, TemplateError, ValueError) as e:
        return f"the network at batch {b1}: {e}"
    for name, info in net.tensors.items():
        if name in net.weights:
            continue
        s0, s1 = info.shape, other.tensors[name].shape
        if not s0 or not s1 or s0[0] != b0 or s1[0] != b1 or tuple(s0[1:]) != tuple(s1[1:]):
            return (f"tensor {name} has shape {s0} at batch {b0} and {s1} at batch {b1}: "
                    f"its dimension 0 is not the batch")
    for layer in net.layers:
        why = _batch_axis_use(net, layer)
        if why:
            return f"layer {layer.name} ({layer.kind}) {why}"
    return None


# --- rules ------------------------------------------------------------------------------------

def _flat(v) -> Tuple[list, object]:
    """Leaves of a nested list (ints / None / floats) and the nesting, to rebuild it."""
    if isinstance(v, (list, tuple)):
        leaves, shape = [], []
        for x in v:
            lv, sh = _flat(x)
            leaves += lv
            shape.append(sh)
        return leaves, shape
    return [v], None


def _unflat(leaves, shape):
    it = iter(leaves)

    def build(sh):
        if sh is None:
            return next(it)
        return [build(s) for s in sh]
    return build(shape)


def _learn(layer: Layer, key: str, a, b, opt: Tuple[int, ...], probe: Tuple[int, ...]) -> list:
    """Per element of attr ``key`` (``a`` at the opt shape, ``b`` at the probe): ("c", v)
    constant, ("x", var, slope, offset) affine in one varying dimension, or ("?",) left to
    the element count. Raises TemplateError when no rule explains the change."""
    la, sa = _flat(a)
    lb, sb = _flat(b)
    if sa != sb or len(la) != len(lb):
        raise TemplateError(f"layer {layer.name} ({layer.kind}): {key} changes form between "
                            f"shapes ({a} vs {b})")
    rules, unknown = [], 0
    for x, y in zip(la, lb):
        if x == y and (x is None) == (y is None):
            rules.append(("c", x))
            continue
        if not (isinstance(x, (int, np.integer)) and isinstance(y, (int, np.integer))):
            raise TemplateError(f"layer {layer.name} ({layer.kind}): {key} element {x!r} vs "
                                f"{y!r} is not an integer that follows the shapes")
        fits = []
        for v, (o, p) in enumerate(zip(opt, probe)):
            if o == p or (x - y) % (o - p):
                continue
            slope = (x - y) // (o - p)
            if slope:
                fits.append(("x", v, slope, int(x) - slope * o))
        if len(fits) == 1:
            rules.append(fits[0])
        else:
            rules.append(("?",))
            unknown += 1
    allowed = SHAPE_ATTRS[(layer.kind, key)]
    if unknown > allowed:
        raise TemplateError(f"layer {layer.name} ({layer.kind}): {key} {a} at the opt shape, "
                            f"{b} at the probe: {unknown} element(s) follow no single input "
                            f"dimension")
    return [rules, sa]


def _apply(layer: Layer, key: str, rule, values: Tuple[int, ...], in_shapes) -> object:
    rules, nesting = rule
    leaves = []
    for r in rules:
        if r[0] == "c":
            leaves.append(r[1])
        elif r[0] == "x":
            leaves.append(int(r[2] * values[r[1]] + r[3]))
        else:
            leaves.append(None)
    if any(r[0] == "?" for r in rules):
        x = in_shapes[0]
        if layer.kind == "reshape":
            known = int(np.prod([d for d in leaves if d is not None], dtype=np.int64))
            size = int(np.prod(x, dtype=np.int64))
            if not known or size % known:
                raise EngineBuildError(f"reshape {layer.name}: input {x} does not reshape to "
                                       f"{leaves}")
            leaves = [size // known if d is None else d for d in leaves]
        else:  # expand: the broadcast result takes the input's dimension
            off = len(leaves) - len(x)
            leaves = [x[i - off] if d is None and i >= off else d for i, d in enumerate(leaves)]
            if None in leaves:
                raise EngineBuildError(f"expand {layer.name}: no size for {leaves} from {x}")
    return _unflat(leaves, nesting)


# --- making and checking a template --------------------------------------------------------

def _public(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if not k.startswith("_")}


def _same(a, b) -> bool:
    """Equal as a plan stores them (tuples and lists alike, arrays as lists): an engine
    loaded from a plan is compared with networks the builder made."""
    return _jsonable(a) == _jsonable(b)


def _compare(ref: Network, other: Network, what: str, opt, probe,
             learn: bool) -> Dict[int, Dict[str, list]]:
    """Structural comparison (see module doc). Shape vectors may differ; with ``learn`` their
    rules are returned (else :func:`_check_shapes` checks their values)."""
    if ref.inputs != other.inputs or ref.outputs != other.outputs:
        raise TemplateError(f"inputs / outputs differ at the {what} shape")
    if len(ref.layers) != len(other.layers):
        raise TemplateError(f"{len(ref.layers)} layers at the opt shape, {len(other.layers)} "
                            f"at the {what} shape: the passes decided differently")
    rules: Dict[int, Dict[str, list]] = {}
    for k, (a, b) in enumerate(zip(ref.layers, other.layers)):
        if (a.name, a.kind, a.inputs, a.outputs, a.precision) != \
                (b.name, b.kind, b.inputs, b.outputs, b.precision) or \
                not _same(a.epilogue, b.epilogue):
            raise TemplateError(f"layer {k} is {a.name} ({a.kind}) at the opt shape, {b.name} "
                                f"({b.kind}) at the {what} shape: the passes decided "
                                f"differently")
        pa, pb = _public(a.attrs), _public(b.attrs)
        if pa.keys() != pb.keys():
            raise TemplateError(f"layer {a.name} ({a.kind}) has attributes {sorted(pa)} at the "
                                f"opt shape, {sorted(pb)} at the {what} shape")
        for key in pa:
            if _same(pa[key], pb[key]):
                continue
            pa[key], pb[key] = _jsonable(pa[key]), _jsonable(pb[key])
            if (a.kind, key) not in SHAPE_ATTRS:
                raise TemplateError(f"layer {a.name} ({a.kind}): {key} is {pa[key]!r} at the "
                                    f"opt shape, {pb[key]!r} at the {what} shape")
            if learn:
                rules.setdefault(k, {})[key] = _learn(a, key, pa[key], pb[key], opt, probe)
    if ref.tensors.keys() != other.tensors.keys():
        extra = sorted(set(ref.tensors) ^ set(other.tensors))[:5]
        raise TemplateError(f"tensors {extra} exist at one shape only")
    for name, info in ref.tensors.items():
        if info.dtype != other.tensors[name].dtype:
            raise TemplateError(f"tensor {name} is {info.dtype} at the opt shape, "
                                f"{other.tensors[name].dtype} at the {what} shape")
    if ref.weights.keys() != other.weights.keys():
        extra = sorted(set(ref.weights) ^ set(other.weights))[:5]
        raise TemplateError(f"weights {extra} exist at one shape only")
    for name, w in ref.weights.items():
        v = other.weights[name]
        if w is not v and (w.dtype != v.dtype or w.shape != v.shape or
                           not np.array_equal(w, v)):
            raise TemplateError(f"weight {name} has other values at the {what} shape (folded "
                                f"from shapes)")
    return rules


def _check_kinds(net: Network, probe_net: Network) -> None:
    """Layers that see a varying dimension where no attribute shows its effect."""
    varying = {}
    for name, info in net.tensors.items():
        other = probe_net.tensors[name].shape
        if info.shape is None or other is None or len(info.shape) != len(other):
            raise TemplateError(f"tensor {name} has no static shape of one rank")
        varying[name] = {ax for ax, (x, y) in enumerate(zip(info.shape, other)) if x != y}
    for layer in net.layers:
        if layer.kind in SHAPE_DEPENDENT_KINDS:
            raise TemplateError(f"layer {layer.name} ({layer.kind}) depends on input shapes")
        x = layer.inputs[0] if layer.inputs else ""
        moved = varying.get(x, set())
        strides = layer.attrs.get("strides") or ()
        if layer.kind in WINDOW_KINDS and any(strides[ax - 1] != 1 for ax in moved
                                              if 0 < ax <= len(strides)):
            raise TemplateError(f"layer {layer.name} ({layer.kind}): a strided spatial size "
                                f"varies (padding and output size depend on it)")
        if layer.kind == "split" and layer.attrs.get("axis") in moved:
            raise TemplateError(f"layer {layer.name} (split) splits a varying axis")


def _check_shapes(template: ShapeTemplate, probe_net: Network, shapes, what: str) -> None:
    got = template.network_for(dict(zip(probe_net.inputs, shapes)))
    for name, info in probe_net.tensors.items():
        if got.tensors[name].shape != info.shape:
            raise TemplateError(f"tensor {name}: {got.tensors[name].shape} re-derived, "
                                f"{info.shape} built at the {what} shape")
    for a, b in zip(got.layers, probe_net.layers):
        if not _same(_public(a.attrs), _public(b.attrs)):
            raise TemplateError(f"layer {a.name} ({a.kind}): re-derived attributes differ from "
                                f"those built at the {what} shape")


def probe_values(profile, variables: List[Var]) -> Tuple[int, ...]:
    """A value per varying dimension inside its range, other than the opt one: near the
    middle, of the other parity, at least 2 and distinct from the other dimensions' values
    when the range allows."""
    taken = {profile.opt[i][ax] for i, ax in variables}
    out = []
    for i, ax in variables:
        lo, hi, o = profile.min[i][ax], profile.max[i][ax], profile.opt[i][ax]
        mid = (lo + hi) // 2
        tries = [mid + d for s in range(0, 66) for d in ((s,) if s == 0 else (s, -s))]
        ok = [v for v in tries if max(lo, 2) <= v <= hi and v != o]
        pick = (next((v for v in ok if (v - o) % 2 and v not in taken), None) or
                next((v for v in ok if v not in taken), None) or
                next(iter(ok), None) or (lo if lo != o else hi))
        out.append(pick)
        taken.add(pick)
    return tuple(out)


def sample_values(lo: int, hi: int, opt: int) -> List[int]:
    """Where a varying dimension's shape arithmetic is evaluated (:func:`check_shape_values`):
    every value of the first 24 of its range (from 2), the powers of two in it, its two
    largest and the opt value. A folded value that is not affine over the range shows
    there: a period of up to 24 (``batch % 3``; a longer one is a kink), a kink anywhere
    (``min(batch, T)``: a value on each side of it). ~0.45 s for the encoder's segment on
    the CPU here (2026-12-01), ~30 evaluations."""
    start = max(lo, 2)
    vals = set(range(start, min(hi, start + 23) + 1)) | {hi, max(hi - 1, start), opt}
    p = 1
    while p <= hi:
        if p >= start:
            vals.add(p)
        p *= 2
    return sorted(v for v in vals if start <= v <= hi)


def _affine(ds: Sequence[int], vs: List[np.ndarray]) -> bool:
    """Whether every element of the values ``vs`` (one per dimension value in ``ds``, sorted,
    distinct) is affine in the dimension: exactly for integers, to float32 rounding for
    floats; a value that is not finite must be the same everywhere."""
    if len({np.shape(x) for x in vs}) != 1:
        return False
    v = np.stack([np.asarray(x, np.float64).reshape(-1) for x in vs])
    if not np.all(np.isfinite(v)):
        return bool(np.all((v == v[0]) | (np.isnan(v) & np.isnan(v[0]))))
    if len(ds) < 3 or v.shape[1] == 0:
        return True
    d = np.asarray(ds, np.float64)
    line = v[0] + np.outer(d - d[0], (v[1] - v[0]) / (d[1] - d[0]))
    floats = any(np.asarray(x).dtype.kind == "f" for x in vs)
    scale = float(np.max(np.abs(v))) or 1.0
    return bool(np.allclose(v, line, rtol=1e-5 if floats else 0.0,
                            atol=(1e-6 * scale) if floats else 1e-6))


def check_shape_values(values_at: Callable[[List[Tuple[int, ...]]], Dict[str, object]],
                       variables: List[Var], opt: Tuple[int, ...], shapes_at,
                       profile) -> bool:
    """Checks the values the passes fold from input shapes (``constant_folding.shape_values``)
    over many shapes of the profile, one varying dimension at a time: each must be affine in
    it (what a rule can re-derive, or a constant). The probes compare the optimized networks
    at a few shapes only, and a value such as ``batch % 3`` agrees at all of them.

    Returns whether the values at size 1 lie on the same lines (else shapes with a varying
    dimension of 1 are built the full way).

    Raises:
      TemplateError: a value that is not affine, or one folded from a shape and a large
        constant (not followed).
    """
    try:
        base = values_at(shapes_at(opt))
    except Exception as e:  # the full builds will say what is wrong, if anything
        raise TemplateError(f"the shape arithmetic could not be evaluated: "
                            f"{type(e).__name__}: {e}") from e
    untracked = [n for n, v in base.items() if v is None]
    if untracked:
        raise TemplateError(f"{untracked[0]} is folded from input shapes and a large constant")
    if not base:
        return True
    ones_ok = True
    for k, (i, ax) in enumerate(variables):
        lo, hi = profile.min[i][ax], profile.max[i][ax]
        ds = sample_values(lo, hi, opt[k])
        series = {}
        for d in ds:
            at = list(opt)
            at[k] = d
            try:
                series[d] = base if d == opt[k] else values_at(shapes_at(tuple(at)))
            except Exception as e:
                raise TemplateError(f"the shape arithmetic failed at input {i} dimension {ax} "
                                    f"= {d}: {type(e).__name__}: {e}") from e
        for name in base:
            vs = [series[d].get(name) for d in ds]
            if isinstance(base[name], tuple):  # a large value's digest: the same everywhere
                if any(not isinstance(v, tuple) or v != base[name] for v in vs):
                    raise TemplateError(f"{name}, a large value folded from input shapes, "
                                        f"changes with input {i} dimension {ax}")
                continue
            if any(v is None or isinstance(v, tuple) for v in vs) or not _affine(ds, vs):
                shown = ", ".join(f"{d}: {np.asarray(v).reshape(-1)[:4].tolist()}"
                                  for d, v in list(zip(ds, vs))[:4] if v is not None)
                raise TemplateError(f"{name}, a value folded from input shapes, is not affine "
                                    f"in input {i} dimension {ax} over {ds[0]}..{ds[-1]} "
                                    f"({shown}, ...)")
        if lo <= 1 <= hi and ones_ok and len(ds) >= 2:
            at = list(opt)
            at[k] = 1
            try:
                one = values_at(shapes_at(tuple(at)))
                ones_ok = all((isinstance(one.get(n), tuple) and one[n] == base[n])
                              if isinstance(base[n], tuple) else
                              (one.get(n) is not None and not isinstance(one[n], tuple) and
                               _affine([1] + ds, [one[n]] + [series[d][n] for d in ds]))
                              for n in base)
            except Exception:
                ones_ok = False
    return ones_ok


def make_template(network: Network, front: Callable[[Dict[str, Tuple[int, ...]]], Network],
                  profile, shape_values: Optional[Callable] = None) -> ShapeTemplate:
    """Checks that the opt engine's ``network`` can serve the other shapes of ``profile``
    (see the module doc) and returns its :class:`ShapeTemplate`.

    Args:
      network: the network of the engine built (or loaded) at ``profile.opt``.
      front: input name -> shape -> the builder's optimized network at those shapes
        (``builder.optimized_network``).
      profile: a :class:`tftrt.profiles.Profile` (shapes in network input order).
      shape_values: input name -> shape -> the values constant folding computes from the
        shapes (``constant_folding.shape_values`` of the builder's network), checked at many
        shapes (:func:`check_shape_values`); None: not checked.
    Raises:
      TemplateError: the network cannot (why); other shapes are then built the full way.
    """
    names = list(network.inputs)
    opt_shapes = [tuple(s) for s in profile.opt]
    if [network.tensors[n].shape for n in names] != opt_shapes:
        raise TemplateError("the engine was not built at the profile's opt shape")
    variables = [(i, ax) for i, (lo, hi) in enumerate(zip(profile.min, profile.max))
                 for ax in range(len(lo)) if lo[ax] != hi[ax]]
    if not variables:
        raise TemplateError("the profile holds one shape")
    bad = [t.name for t in network.tensors.values() if not t.is_static]
    if bad:
        raise TemplateError(f"tensors {bad[:3]} have data-dependent shapes")
    try:
        return _make_template(network, front, profile, shape_values, variables,
                              [[v] for v in variables])
    except (TemplateError, EngineBuildError) as untied:
        # Dimensions varied apart may have to be equal (inputs sharing a batch: probing them
        # at different sizes does not broadcast). Dimensions of one range (min, opt, max)
        # are tried as one, the template then serving them equal (helper hunt, 2026-12-01).
        by_range: Dict[tuple, List[Var]] = {}
        for i, ax in variables:
            key = (profile.min[i][ax], profile.opt[i][ax], profile.max[i][ax])
            by_range.setdefault(key, []).append((i, ax))
        groups = list(by_range.values())
        if len(groups) == len(variables):
            raise
        try:
            return _make_template(network, front, profile, shape_values, variables, groups)
        except (TemplateError, EngineBuildError) as tied:
            raise TemplateError(f"{untied}; with the dimensions of equal ranges tied: "
                                f"{tied}") from untied


def _make_template(network, front, profile, shape_values, variables: List[Var],
                   groups: List[List[Var]]) -> ShapeTemplate:
    """make_template's checks with the varying dimensions in ``groups`` (each group one
    value: its dimensions set together)."""
    names = list(network.inputs)
    opt_shapes = [tuple(s) for s in profile.opt]
    reps = [g[0] for g in groups]
    opt = tuple(opt_shapes[i][ax] for i, ax in reps)
    probe = probe_values(profile, reps)

    def shapes_at(values):
        s = [list(x) for x in opt_shapes]
        for g, v in zip(groups, values):
            for i, ax in g:
                s[i][ax] = v
        return [tuple(x) for x in s]

    ones_values_ok = True
    if shape_values is not None:  # before the probes: it is cheaper and refuses more
        ones_values_ok = check_shape_values(
            lambda shapes: shape_values(dict(zip(names, shapes))), reps, opt, shapes_at,
            profile)
    probe_shapes = shapes_at(probe)
    probe_net = front(dict(zip(names, probe_shapes)))
    rules = _compare(network, probe_net, "probe", opt, probe, learn=True)
    _check_kinds(network, probe_net)
    template = ShapeTemplate(network, variables, opt, rules, ones_ok=True, groups=groups)
    _check_shapes(template, probe_net, probe_shapes, "probe")
    # A value the passes folded from a shape can be equal at the opt and probe shapes and
    # differ below them (min(batch, 4), batch >= 3: same at 8 and 5, not at 2): the low end
    # of the range (at least 2) is compared too, and a difference refuses the template.
    low = tuple(min(max(profile.min[i][ax], 2), profile.max[i][ax]) for i, ax in reps)
    if low != probe and low != opt:
        low_shapes = shapes_at(low)
        low_net = front(dict(zip(names, low_shapes)))
        _compare(network, low_net, "low", opt, low, learn=False)
        _check_shapes(template, low_net, low_shapes, "low")
    # With several varying dimensions, the probe moved them all at once: a value that is a
    # product of two (a flatten of batch x sequence, B * S) can then fit an affine rule in
    # one of them (17 * B - 30 at (6, 12), (3, 7) and the low (2, 2): helper hunt,
    # 2026-12-02). Each dimension moved alone, the others at the opt shape, tells them apart.
    if len(reps) > 1:
        for g in range(len(reps)):
            alone = tuple(p if k == g else o for k, (o, p) in enumerate(zip(opt, probe)))
            if alone in (opt, probe, low):
                continue
            alone_shapes = shapes_at(alone)
            alone_net = front(dict(zip(names, alone_shapes)))
            _compare(network, alone_net, f"dimension {g} alone", opt, alone, learn=False)
            _check_shapes(template, alone_net, alone_shapes, f"dimension {g} alone")
    ones = tuple(1 if profile.min[i][ax] <= 1 <= profile.max[i][ax] else v
                 for (i, ax), v in zip(reps, probe))
    if not ones_values_ok:
        template.ones_ok = False
        log.debug("%s: varying dimensions of size 1 are built the full way: the shape "
                  "arithmetic is not affine down to 1", network.name)
    elif ones != probe and ones != opt:
        ones_shapes = shapes_at(ones)
        try:
            ones_net = front(dict(zip(names, ones_shapes)))
            _compare(network, ones_net, "size-1", opt, ones, learn=False)
            _check_shapes(template, ones_net, ones_shapes, "size-1")
        except (TemplateError, EngineBuildError) as e:
            template.ones_ok = False
            log.debug("%s: varying dimensions of size 1 are built the full way: %s",
                      network.name, e)
    return template


# --- templates in the build cache ----------------------------------------------------------
# make_template runs the builder's passes at two or three probe shapes and the shape-value
# check: 0.6-1.0 s of a warm ResNet50 profile build on the H200 (2026-12-02), and again in
# every tftrt.load. Its outcome depends only on the segment network (``fingerprint``: its
# ONNX bytes' digest), the builder config, the profile and the opt engine's network, which
# key the entry: the rules (or the TemplateError) are kept, and a template is made from them
# around the opt engine's network without probing. A corrupt or foreign entry is probed again.
TEMPLATE_NAMESPACE = "shape-templates"
_TEMPLATE_FORMAT = 1


def _network_digest(net: Network) -> list:
    """What of ``net`` a template's rules depend on: layers (kind, name, tensors, public
    attrs, epilogue) and tensor dtypes / shapes, weights' values left out."""
    return [[l.kind, l.name, list(l.inputs), list(l.outputs), _jsonable(_public(l.attrs)),
             _jsonable(l.epilogue)] for l in net.layers] + \
        [[n, t.dtype, _jsonable(t.shape)] for n, t in sorted(net.tensors.items())] + \
        [list(net.inputs), list(net.outputs)]


def template_key(network: Network, profile, fingerprint: str, config) -> str:
    import hashlib
    import json
    body = {"format": _TEMPLATE_FORMAT, "source": fingerprint, "profile": profile.to_json(),
            "config": config.to_json() if config is not None else None,
            "network": _network_digest(network)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _template_json(t: ShapeTemplate) -> dict:
    return {"variables": [list(v) for v in t.variables], "opt": list(t.opt),
            "rules": {str(k): _jsonable(v) for k, v in t.rules.items()},
            "ones_ok": bool(t.ones_ok), "groups": [[list(v) for v in g] for g in t.groups]}


def _template_from_json(network: Network, d: dict) -> ShapeTemplate:
    """The template of cached entry ``d`` around ``network``; ValueError for an entry that
    does not fit it."""
    try:
        variables = [(int(i), int(ax)) for i, ax in d["variables"]]
        groups = [[(int(i), int(ax)) for i, ax in g] for g in d["groups"]]
        rules = {int(k): {str(a): [list(r[0]), r[1]] for a, r in v.items()}
                 for k, v in d["rules"].items()}
        opt = tuple(int(v) for v in d["opt"])
        ones_ok = bool(d["ones_ok"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"malformed entry ({type(e).__name__}: {e})") from e
    n_in = len(network.inputs)
    if len(opt) != len(groups) or any(
            not (0 <= i < n_in and 0 <= ax < len(network.tensors[network.inputs[i]].shape))
            for i, ax in variables) or any(not (0 <= k < len(network.layers)) for k in rules):
        raise ValueError("entry does not fit the network")
    return ShapeTemplate(network, variables, opt, rules, ones_ok=ones_ok, groups=groups)


def cached_template(network: Network, front, profile, shape_values, fingerprint: Optional[str],
                    config, store=None) -> ShapeTemplate:
    """:func:`make_template`, its outcome kept in the build cache (``store``, a BuildCache;
    None: none) under :func:`template_key` when ``fingerprint`` names the segment network."""
    if store is None or not fingerprint:
        return make_template(network, front, profile, shape_values)
    key = template_key(network, profile, fingerprint, config)
    hit = store.get_json(TEMPLATE_NAMESPACE, key)
    if isinstance(hit, dict):
        if isinstance(hit.get("error"), str):
            raise TemplateError(hit["error"])
        try:
            return _template_from_json(network, hit)
        except ValueError as e:
            log.warning("tftrt build cache: shape template entry %s not used (%s); probing "
                        "the shapes again", key[:12], e)
    try:
        template = make_template(network, front, profile, shape_values)
    except TemplateError as e:
        store.put_json(TEMPLATE_NAMESPACE, key, {"error": str(e)})
        raise
    store.put_json(TEMPLATE_NAMESPACE, key, _template_json(template))
    return template


def specializer(source, config, fingerprint: Optional[str] = None):
    """A :data:`tftrt.profiles.SpecializeFn` for engines built from ``source`` (a Network, an
    ONNX model, or a callable returning one) with ``config`` (a ``BuilderConfig``): the
    template of the opt engine's network, and a build function for other shapes.
    ``fingerprint`` (the source's digest) keeps templates in the opt engine backend's build
    cache (:func:`cached_template`)."""
    def specialize(opt_engine, profile):
        import dataclasses

        from tftrt.engine.builder import (build_engine_from_template, kept_fp16,
                                          optimized_network)
        from tftrt.engine.onnx_import import network_from_onnx
        from tftrt.engine.passes.constant_folding import shape_values
        names = list(opt_engine.input_names)
        # the layers the opt engine's timed precision kept FP16 stay FP16 at every shape
        front_config = dataclasses.replace(config, keep_fp16=kept_fp16(
            opt_engine.network.layers)) if config is not None else None

        def front(shapes):
            return optimized_network(source() if callable(source) else source, shapes,
                                     front_config)[0]
        unbound = []  # the builder's network before binding, made once

        def values(shapes):
            if not unbound:
                src = source() if callable(source) else source
                unbound.append(src if isinstance(src, Network) else network_from_onnx(src))
            return shape_values(unbound[0], shapes)
        # every layer of the opt engine with its backend choice recorded (the CuPy backend:
        # stored cuDNN choices), which the other shapes' layers then borrow
        from tftrt.engine.builder import _hook
        _hook(opt_engine.backend_impl, "record_choices", opt_engine.network)
        store = None
        if fingerprint:
            from tftrt.engine.build_cache import build_cache_for
            store = build_cache_for(opt_engine.backend_impl)
        from tftrt.engine.quantization import unfused  # as the fronts make it
        template = cached_template(unfused(opt_engine.network), front, profile, values,
                                   fingerprint, config, store)

        def build(key, quick=False, tune=False, source=None):
            return build_engine_from_template(template, dict(zip(names, key)), opt_engine,
                                              config, quick=quick, tune=tune,
                                              choices_from=source)

        def prefetch(keys, sources=None, tune=False):  # several builds' work at once
            from tftrt.engine.builder import prefetch_from_template
            if hasattr(opt_engine.backend_impl, "set_build_options"):
                opt_engine.backend_impl.set_build_options(allow_tf32=config.allow_tf32,
                                                          precision=opt_engine.precision)
            prefetch_from_template(template, [dict(zip(names, k)) for k in keys], opt_engine,
                                   sources, tune=tune)
        build.prefetch = prefetch
        return template, build
    return specialize
