"""The engine's layer IR: a :class:`Network` of typed, shaped tensors and :class:`Layer` s.

A network holds

* ``tensors``: name -> :class:`TensorInfo` (numpy dtype name, shape). Before the engine is built
  for concrete input shapes a dim may be a string (a symbolic ONNX dim) or None (unknown); after
  ``build_engine`` every shape is a tuple of ints, except tensors downstream of a data-dependent
  op (NonMaxSuppression): there a dim is None (data dependent) or the whole shape is None
  (unknown rank). Such tensors are "dynamic": the numpy backend runs them, the memory plan
  leaves them out.
* ``weights``: name -> numpy array (constants; treated as immutable, never written in place).
  A layer input that names a weight is a constant operand.
* ``layers``: in topological order. ``inputs`` / ``outputs`` are tensor names; "" marks an
  absent optional input.

Layer kinds (the backend interface; every backend implements all of them)
-------------------------------------------------------------------------
Layout: ``conv``, ``conv_transpose``, ``pool``, ``depth_to_space`` and ``space_to_depth`` are
channels-last (NHWC, or N,D,H,W,C): ``x = [N, *spatial, C]``. Every other kind is layout-free
and follows ONNX (opset 17) semantics on the axes given. After ``build_engine`` all axes in
attrs are non-negative and shape-determining operands are folded into attrs as listed.

==================  =====================================================================
kind                inputs -> outputs; attrs
==================  =====================================================================
conv                [x, w, *epilogue operands] -> [y]. x [N,*S,Cin]; w [Cout,*K,Cin/group]
                    ("KRSC", cuDNN's NHWC filter layout). attrs: strides, dilations (len S),
                    pads (len 2S: all begins then all ends), group. y [N,*S',Cout].
conv_transpose      [x, w, *epi] -> [y]. x [N,*S,Cin]; w [Cin,*K,Cout/group]. attrs: strides,
                    dilations, pads, output_padding, group.
                    S' = strides*(S-1) + output_padding + (K-1)*dilations + 1 - pad_b - pad_e.
matmul              [a, b, *epi] -> [y]. attrs: transpose_a, transpose_b (swap the last two
                    axes first), alpha (scales a@b before the epilogue). numpy matmul
                    semantics (batch dims broadcast, 1-D operands promoted as in ONNX MatMul).
pointwise           [x0, x1, ...] -> [y]. attrs: program = list of steps
                    {"op", "args", "dtype", **params}; an arg is "$i" (layer input i), "%k"
                    (result of step k) or a number literal. Inputs broadcast (numpy rules);
                    the result is the last step. Ops: see POINTWISE_OPS.
einsum              [x0, ...] -> [y]. attrs: equation.
pool                [x] -> [y]. x [N,*S,C]. attrs: mode ("max"|"avg"), kernel, strides,
                    dilations, pads (2S), ceil_mode (0|1), count_include_pad (0|1); max
                    only: pad_value (optional: the pads hold it, as a constant pad before
                    the pool wrote them; passes/pad_folding), floor_program (optional:
                    passes/activation_motion).
reduce              [x] -> [y]. attrs: op (sum|mean|max|min|prod|l1|l2|sum_square|log_sum|
                    log_sum_exp), axes (sorted; [] = identity), keepdims (0|1).
arg_reduce          [x] -> [y int64]. attrs: op (max|min), axis, keepdims, select_last_index.
softmax             [x] -> [y]. attrs: axis, log (bool: LogSoftmax).
attention           [q, k, v] -> [y]. attrs: scale, layout ("bhsd": q [B,H,Sq,D], k [B,H,Sk,D],
                    v [B,H,Sk,Dv], y [B,H,Sq,Dv]; "bshd": the same with S and H swapped).
                    y = softmax(scale * q @ k^T over Sk) @ v; fp32 softmax, probabilities
                    rounded to y's dtype before @ v. Made by passes/attention_fusion.
se                  [x, w1, b1, w2, b2] -> [y] (squeeze-and-excitation). x [N,*S,C]; w1 [Cse,C],
                    w2 [C,Cse] (rows are outputs); b1 [Cse] / b2 [C] or "" (absent). attrs:
                    axes (every spatial axis), act1 / act2 (epilogue act dicts or None), and
                    stages pool / hidden / gate, each a list of {"round": dtype} (stored in
                    that dtype) or {"program": steps over $0}. p = pool(mean of x over axes);
                    h = hidden(act1(p @ w1^T + b1)); g = gate(act2(h @ w2^T + b2)) [N,C];
                    y = x * g[n, c] in fp32. Made by passes/se_fusion.
normalization       [x, scale, bias] -> [y] or [y, mean, inv_std]. attrs: axes, epsilon.
                    (x - mean) * rsqrt(var + eps) * scale + bias, statistics over ``axes``;
                    scale / bias broadcast to x (LayerNorm, InstanceNorm). Stats in fp32.
topk                [x] -> [values, indices int64]. attrs: axis, k, largest, sorted.
cumsum              [x] -> [y]. attrs: axis, exclusive, reverse.
transpose           [x] -> [y]. attrs: perm.
reshape             [x] -> [y]. attrs: shape (the output shape; a view of contiguous x).
concat              [x0, ...] -> [y]. attrs: axis.
split               [x] -> [y0, ...]. attrs: axis, sizes.
slice               [x] -> [y]. attrs: slices = [[start, stop|None, step], ...] per axis
                    (python slice semantics, already clamped).
pad                 [x] -> [y]. attrs: pads (2R), mode (constant|reflect|edge), value.
gather              [x, indices] -> [y]. attrs: axis (negative indices wrap).
gather_elements     [x, indices] -> [y]. attrs: axis.
gather_nd           [x, indices] -> [y]. attrs: batch_dims.
scatter_nd          [data, indices, updates] -> [y]. attrs: reduction (none|add|mul|max|min).
expand              [x] -> [y]. attrs: shape (output shape; numpy broadcast).
tile                [x] -> [y]. attrs: repeats.
shape / size        [x] -> [int64]. attrs (shape): start, end. Folded when x is static.
constant_of_shape   [shape] -> [y]. attrs: value, dtype (folded when shape is constant).
range               [start, limit, delta] -> [y] (folded when operands are constant).
onehot              [indices, depth, values] -> [y]. attrs: axis.
depth_to_space      [x] -> [y]. x NHWC. attrs: blocksize, mode (DCR|CRD).
space_to_depth      [x] -> [y]. x NHWC. attrs: blocksize; optional pads ([top, left, bottom,
                    right] zeros around each image first) and channels (zero channels appended
                    up to this many first): passes/stem_space_to_depth.
resize              [x] -> [y]. attrs: sizes (output shape), scales, roi, mode (nearest|linear|
                    cubic), coordinate_transformation_mode, nearest_mode, cubic_coeff_a,
                    exclude_outside, extrapolation_value.
nms                 [boxes, scores, max_out?, iou?, score?] -> [selected int64 [M,3]] (M is
                    data dependent: shape (None, 3)). attrs: center_point_box.
quantize            [x, scale, zero_point?] -> [y int8|uint8]. attrs: axis, dtype.
dequantize          [x, scale, zero_point?] -> [y]. attrs: axis.
==================  =====================================================================

Epilogue (``conv``, ``conv_transpose``, ``matmul`` only): a list applied in order to the main
op's fp32 accumulator before it is stored; maps onto a cuDNN-frontend pointwise chain or a
cuBLASLt epilogue (bias, relu/gelu, beta*C residual):

* ``{"op": "bias", "input": i}``   y += layer.inputs[i] (1-D [C], along the LAST axis)
* ``{"op": "scale", "input": i}``  y *= layer.inputs[i] (1-D [C], along the last axis)
* ``{"op": "add", "input": i}``    y += layer.inputs[i] (residual; broadcastable to y)
* ``{"op": "act", "fn": f, ...}``  activation; f in ACTIVATIONS with its params
  (leaky_relu: alpha; elu: alpha; selu: alpha, gamma; hard_sigmoid: alpha, beta;
  clip: min, max).

Quantized layers (``precision`` "INT8" or "FP8"; ``conv`` and ``matmul`` with a constant 2-D
weight only, made by ``precision.py`` from the network's quantization table, see
``quantization.py``) carry ``attrs["quant"]``:

* ``format``: "int8" or "fp8_e4m3"; input 1 is the weight stored quantized per output channel
  (int8 values, or E4M3 bit patterns in uint8), ``weight_axis`` its output-channel axis;
* ``input_scale``: input 0 is quantized on entry as saturate(round_half_even(x / input_scale))
  unless its dtype is already int8;
* ``output_scale`` (INT8, optional): the epilogue's result is requantized with it and the
  output tensor is int8;
* ``folded`` (optional): input 0 is the input of a fake-quant op that was folded away.

The products accumulate in int32 / fp32; the first epilogue step is a ``scale`` by the
dequantization vector input_scale * weight_scale[c]. A GEMM layer left unquantized in such an
engine says why in ``attrs["quant_fallback"]``: a description for people, not part of what
the layer computes (:data:`DESCRIPTIVE_ATTRS`: kernel choices and their caches key a layer by
:meth:`Layer.kernel_attrs`, without it).

Per-layer ``precision`` ("FP32" or "FP16") says how the layer stores its outputs and weights;
``tactic`` names the implementation the builder chose. Under FP16 (precision.py): conv /
conv_transpose / matmul weights are float16, their float activation operands (residual
included) are float16 (casts are inserted where needed), epilogue bias/scale vectors stay
float32 and are applied to the fp32 accumulator; output tensors of FP16 layers are float16
except network outputs (I/O dtypes never change). Pointwise steps compute in the step dtype,
with float16 computed as float32 and each float16 step's result rounded to float16 (as TF
rounds every float16 op's), and the result is stored in the output tensor's dtype.

Dynamic layers (a non-static input shape, only after a data-dependent op) may keep ONNX-form
shape operands (e.g. ``reshape`` with ``mode`` and a shape input, ``slice`` with starts/ends
inputs); only the numpy backend runs those, every other backend gets canonical attrs.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

Dim = Union[int, str, None]

LAYER_KINDS = (
    "conv", "conv_transpose", "matmul", "pointwise", "einsum", "pool", "reduce", "arg_reduce",
    "softmax", "attention", "se", "normalization", "topk", "cumsum", "transpose", "reshape",
    "concat", "split", "slice", "pad", "gather", "gather_elements", "gather_nd", "scatter_nd",
    "expand", "tile", "shape", "size", "constant_of_shape", "range", "onehot", "depth_to_space",
    "space_to_depth", "resize", "nms", "quantize", "dequantize",
)

# Kinds whose main op can carry an epilogue.
EPILOGUE_KINDS = ("conv", "conv_transpose", "matmul")

# Activation functions usable in an epilogue ("act") and in pointwise programs (same names).
ACTIVATIONS = ("relu", "leaky_relu", "elu", "selu", "sigmoid", "hard_sigmoid", "tanh",
               "softplus", "softsign", "clip", "gelu", "silu")

# Pointwise ops: name -> arity (None: variadic is not used; every op has a fixed arity).
# Params: leaky_relu alpha; elu alpha; selu alpha, gamma; hard_sigmoid alpha, beta;
# cast to (numpy dtype name); mod fmod (0|1). clip takes [x, min, max] args.
POINTWISE_OPS: Dict[str, int] = {
    **{u: 1 for u in (
        "identity", "neg", "abs", "exp", "log", "sqrt", "reciprocal", "floor", "ceil", "round",
        "sign", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
        "atanh", "erf", "relu", "leaky_relu", "elu", "selu", "sigmoid", "hard_sigmoid", "tanh",
        "softplus", "softsign", "gelu", "silu", "not", "isnan", "isinf", "cast")},
    **{b: 2 for b in (
        "add", "sub", "mul", "div", "pow", "max", "min", "mod", "equal", "less", "less_equal",
        "greater", "greater_equal", "and", "or", "xor", "prelu")},
    "where": 3, "clip": 3,
}
COMPARISONS = ("equal", "less", "less_equal", "greater", "greater_equal")
LOGICAL = ("and", "or", "xor", "not", "isnan", "isinf")


@dataclasses.dataclass
class TensorInfo:
    """A tensor of the network: numpy dtype name and shape (see module doc for dims)."""

    name: str
    dtype: Optional[str] = None
    shape: Optional[Tuple[Dim, ...]] = None

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def nbytes(self) -> int:
        """Bytes of a static tensor."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass
class Layer:
    """One (possibly fused) layer. See the module doc for kinds, attrs and epilogue ops."""

    name: str
    kind: str
    inputs: List[str]
    outputs: List[str]
    attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    epilogue: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    tactic: Optional[str] = None
    precision: Optional[str] = None

    def kernel_attrs(self) -> dict:
        """``to_json()["attrs"]`` without :data:`DESCRIPTIVE_ATTRS`: what keys the layer's
        kernel choices (tactic timing, the backends' tuned plans and shared preparations)."""
        return _jsonable({k: v for k, v in self.attrs.items() if k not in DESCRIPTIVE_ATTRS})

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "attrs": _jsonable(self.attrs),
                "epilogue": _jsonable(self.epilogue), "tactic": self.tactic,
                "precision": self.precision}

    @staticmethod
    def from_json(d: dict) -> "Layer":
        return Layer(d["name"], d["kind"], list(d["inputs"]), list(d["outputs"]),
                     dict(d.get("attrs", {})), list(d.get("epilogue", [])), d.get("tactic"),
                     d.get("precision"))

    def clone(self) -> "Layer":
        """A deep copy (attrs and epilogue included), what ``copy.deepcopy`` gives, without
        its memo bookkeeping: passes copy every layer of a network several times per build."""
        return Layer(self.name, self.kind, list(self.inputs), list(self.outputs),
                     _clone(self.attrs), _clone(self.epilogue), self.tactic, self.precision)

    def epilogue_summary(self) -> str:
        """Compact text of the epilogue, e.g. "bias+add+relu"."""
        return "+".join(e["fn"] if e["op"] == "act" else e["op"] for e in self.epilogue)


_IMMUTABLE = (int, float, str, bool, type(None), np.generic)


def _clone(v):
    """Deep copy of layer attrs: dicts, lists and tuples rebuilt, immutable scalars shared,
    anything else (numpy arrays, objects) through ``copy.deepcopy``."""
    t = type(v)
    if t is dict:
        return {k: _clone(x) for k, x in v.items()}
    if t is list:
        return [_clone(x) for x in v]
    if t is tuple:
        return tuple(_clone(x) for x in v)
    if isinstance(v, _IMMUTABLE):
        return v
    return copy.deepcopy(v)


# Attributes that say something about a layer without changing what it computes: the reason
# an INT8 / FP8 engine left it FP16. Kept in kernel-choice keys, each FP16 layer of an INT8
# build (its reason naming the build's own measured times) was tuned afresh and missed the
# cached choices of the same layer in FP16 builds -- likely why, on an H100 (s37), the INT8
# network rebuilt with every layer FP16 ran its stage-3 3x3 convs on cuDNN plans 60% slower
# than the FP16 engine's (10.3 against 6.5 us; not checked on a GPU since).
DESCRIPTIVE_ATTRS = frozenset({"quant_fallback"})


def _jsonable(v):
    """Attrs as plain JSON values (tuples -> lists, numpy scalars -> python)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


def put_back(layers: List["Layer"], placed: Iterable[Tuple[int, "Layer"]]) -> None:
    """Inserts into ``layers`` (in place) the layers a ``_finish`` rewrite took out, each at
    the index it had in the network then (``(at, layer)`` pairs, as the rewrite recorded
    them: a fused pool, a fused projection, an absorbed input cast), lowest first so that
    every index counts the layers put back before it."""
    for at, layer in sorted(placed, key=lambda e: int(e[0])):
        layers.insert(int(at), layer)


class Network:
    """Tensors, weights and layers in topological order (see module doc)."""

    def __init__(self, name: str = "network"):
        self.name = name
        self.inputs: List[str] = []
        self.outputs: List[str] = []
        self.tensors: Dict[str, TensorInfo] = {}
        self.layers: List[Layer] = []
        self.weights: Dict[str, np.ndarray] = {}
        # The quantization table (quantization.py) an INT8 / FP8 build uses, or None.
        self.quantization: Optional[dict] = None
        # tensor names passes removed or renamed -> the name the value goes by next: the
        # quantization table names the segment's tensors as its ONNX model did (resolve())
        self.aliases: Dict[str, str] = {}
        self._counter = 0

    # --- construction --------------------------------------------------------------------
    def copy(self) -> "Network":
        """A copy whose layers/tensors can be edited; weight arrays are shared (immutable).

        The cyclic garbage collector is paused while it copies: the copy makes only acyclic
        containers, but so many (a 96-block transformer's network before fusion, 11,904
        layers: ~100,000) that the collections they triggered scanned the process's whole
        heap (TensorFlow's and Keras' objects included) again and again: 0.21 s a copy
        against 0.044 s, and every pass of a build copies (scaling hunt, 2026-12-04)."""
        paused = gc.isenabled()
        gc.disable()
        try:
            n = Network(self.name)
            n.inputs, n.outputs = list(self.inputs), list(self.outputs)
            n.tensors = {k: dataclasses.replace(v) for k, v in self.tensors.items()}
            n.layers = [l.clone() for l in self.layers]
            n.weights = dict(self.weights)
            n.quantization = self.quantization
            n.aliases = dict(getattr(self, "aliases", {}))
            n._counter = self._counter
            return n
        finally:
            if paused:
                gc.enable()

    def unique_name(self, hint: str) -> str:
        hint = hint or "t"
        while True:
            self._counter += 1
            name = f"{hint}__{self._counter}"
            if name not in self.tensors and name not in self.weights:
                return name

    def add_tensor(self, name: str, dtype: Optional[str] = None,
                   shape: Optional[Iterable[Dim]] = None) -> str:
        self.tensors[name] = TensorInfo(name, dtype, None if shape is None else tuple(shape))
        return name

    def add_weight(self, value, hint: str = "w") -> str:
        """Adds a constant and returns its (new, unique) name."""
        arr = np.asarray(value)
        name = hint if hint not in self.tensors and hint not in self.weights else \
            self.unique_name(hint)
        self.weights[name] = arr
        self.tensors[name] = TensorInfo(name, arr.dtype.name, tuple(int(d) for d in arr.shape))
        return name

    def set_weight(self, name: str, value) -> None:
        arr = np.asarray(value)
        self.weights[name] = arr
        self.tensors[name] = TensorInfo(name, arr.dtype.name, tuple(int(d) for d in arr.shape))

    def add_layer(self, kind: str, inputs: List[str], outputs: List[str],
                  attrs: Optional[dict] = None, epilogue: Optional[list] = None,
                  name: Optional[str] = None) -> Layer:
        layer = Layer(name or outputs[0], kind, list(inputs), list(outputs), dict(attrs or {}),
                      list(epilogue or []))
        for o in outputs:
            if o not in self.tensors:
                self.add_tensor(o)
        self.layers.append(layer)
        return layer

    # --- queries -------------------------------------------------------------------------
    def is_weight(self, name: str) -> bool:
        return name in self.weights

    def producers(self) -> Dict[str, Layer]:
        return {o: l for l in self.layers for o in l.outputs if o}

    def consumers(self) -> Dict[str, List[Layer]]:
        out: Dict[str, List[Layer]] = {}
        for l in self.layers:
            for i in l.inputs:
                if i:
                    lst = out.setdefault(i, [])
                    if not lst or lst[-1] is not l:
                        lst.append(l)
        return out

    def shape(self, name: str) -> Optional[Tuple[Dim, ...]]:
        return self.tensors[name].shape

    def dtype(self, name: str) -> Optional[str]:
        return self.tensors[name].dtype

    # --- editing -------------------------------------------------------------------------
    def rename(self, old: str, new: str) -> None:
        """Renames tensor ``old`` to ``new`` everywhere (producer, consumers, outputs)."""
        for l in self.layers:
            l.inputs = [new if i == old else i for i in l.inputs]
            l.outputs = [new if o == old else o for o in l.outputs]
        self.outputs = [new if o == old else o for o in self.outputs]
        self.inputs = [new if o == old else o for o in self.inputs]
        info = self.tensors.pop(old)
        self.tensors[new] = dataclasses.replace(info, name=new)
        if old in self.weights:
            self.weights[new] = self.weights.pop(old)
        self.aliases[old] = new

    def resolve(self, name: str) -> str:
        """The name tensor ``name`` goes by in this network: itself, or where a pass removed
        or renamed it (:attr:`aliases`), the name its value has now."""
        aliases, seen = getattr(self, "aliases", {}), set()
        while name not in self.tensors and name in aliases and name not in seen:
            seen.add(name)
            name = aliases[name]
        return name

    def substitute(self, old: str, new: str) -> None:
        """Makes every use of tensor ``old`` read ``new`` instead (``old``'s producer is about
        to be removed). A network output keeps its name: ``new`` is renamed to it when ``new``
        is a plain intermediate tensor, else a copy layer is added."""
        for l in self.layers:
            l.inputs = [new if i == old else i for i in l.inputs]
        self.aliases[old] = new
        if old not in self.outputs:
            return
        plain = (new not in self.inputs and new not in self.outputs and new not in self.weights
                 and any(new in l.outputs for l in self.layers))
        if plain:
            self.layers = [l for l in self.layers if old not in l.outputs]
            self.tensors.pop(old, None)
            self.rename(new, old)
        else:
            producer = [k for k, l in enumerate(self.layers) if old in l.outputs]
            copy_layer = Layer(old, "pointwise", [new], [old], {"program": [
                {"op": "identity", "args": ["$0"], "dtype": self.tensors[new].dtype}]})
            if producer:
                self.layers[producer[0]] = copy_layer
            else:
                self.layers.append(copy_layer)
            self.toposort()

    def uniquify_layer_names(self) -> None:
        """Makes layer names unique (profiles, plans and backends key layers by name)."""
        seen: Dict[str, int] = {}
        for l in self.layers:
            n = seen.get(l.name, 0)
            seen[l.name] = n + 1
            if n:
                while f"{l.name}__{n}" in seen:
                    n += 1
                l.name = f"{l.name}__{n}"
                seen[l.name] = 1

    def toposort(self) -> None:
        """Re-orders layers topologically (stable for an already ordered list)."""
        ready = set(self.inputs) | set(self.weights) | {""}
        pending, ordered = list(self.layers), []
        while pending:
            rest = []
            for l in pending:
                if all(i in ready for i in l.inputs):
                    ordered.append(l)
                    ready.update(l.outputs)
                else:
                    rest.append(l)
            if len(rest) == len(pending):
                missing = sorted({i for l in rest for i in l.inputs if i not in ready})
                raise ValueError(f"network {self.name} has a cycle or undefined tensors "
                                 f"{missing[:5]}")
            pending = rest
        self.layers = ordered

    def prune_tensors(self) -> None:
        """Drops tensor infos and weights that nothing references anymore."""
        used = set(self.inputs) | set(self.outputs)
        for l in self.layers:
            used.update(l.inputs)
            used.update(l.outputs)
        self.tensors = {k: v for k, v in self.tensors.items() if k in used}
        self.weights = {k: v for k, v in self.weights.items() if k in used}

    def summary(self) -> str:
        lines = [f"Network {self.name}: {len(self.layers)} layers, {len(self.weights)} weights"]
        for l in self.layers:
            epi = f" [{l.epilogue_summary()}]" if l.epilogue else ""
            shapes = [self.tensors[o].shape if o in self.tensors else None for o in l.outputs]
            lines.append(f"  {l.name}: {l.kind}{epi} {l.inputs} -> {l.outputs} {shapes}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Network {self.name}: {len(self.layers)} layers>"
