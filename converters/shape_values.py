"""Static resolution of small integer tensors that describe shapes.

Keras and hand-written TF build shape arguments at run time, e.g. Flatten on a dynamic batch:

    Reshape(x, Pack(StridedSlice(Shape(x), [0], [1], [1], shrink_axis_mask=1), 12))

Grappler cannot fold that (the batch is unknown), yet every element is either a constant or
"dimension k of tensor t". :func:`resolve` walks such subgraphs (Const, Shape, StridedSlice,
Slice, Pack, ConcatV2, Cast, Identity, ExpandDims / Reshape of a scalar to a 1-vector, and
integer scalar arithmetic on constants) and returns the elements, each an ``int`` or a
:class:`DimOf`; a dimension known statically comes back as an ``int``. Converters then
express a :class:`DimOf` of their own input as ONNX Reshape's 0 (copy this dim) or compute it
with Shape + Gather, never as a hard-coded batch size.

Pure: reads the :class:`~tftrt.graph_io.GraphInfo`, emits nothing.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Union

import numpy as np

from tftrt.graph_io import split_tensor_name

from .slicing import SlicePlan, strided_slice_plan


@dataclasses.dataclass(frozen=True)
class DimOf:
    """Run-time size of dimension ``axis`` of TF tensor ``tensor`` (unknown statically)."""
    tensor: str
    axis: int


@dataclasses.dataclass(frozen=True)
class Computed:
    """An integer scalar computed at run time from something other than one dim (e.g. the
    product of several dims, as Keras Dense on 3-D inputs builds)."""
    tensor: str


Element = Union[int, DimOf, Computed]
Resolved = Union[Element, List[Element]]  # a scalar element or a vector

_PASS_THROUGH = ("Identity", "Snapshot", "StopGradient", "Cast")
_ARITH = {"Mul": lambda a, b: a * b, "Add": lambda a, b: a + b, "AddV2": lambda a, b: a + b,
          "Sub": lambda a, b: a - b, "FloorDiv": lambda a, b: a // b}
_MAX_DEPTH = 32


def resolve(info, tensor: str, _depth: int = 0) -> Optional[Resolved]:
    """Elements of an integer scalar or vector tensor, or None when not statically resolvable."""
    if _depth > _MAX_DEPTH:
        return None
    value = info.const_value(tensor)
    if value is not None:
        value = np.asarray(value)
        if value.dtype.kind not in "iu" or value.ndim > 1:
            return None
        return int(value) if value.ndim == 0 else [int(v) for v in value]
    name, idx = split_tensor_name(tensor)
    node = info.nodes.get(name)
    if node is None or idx != 0:
        return None
    ins = info.data_inputs(node)
    try:
        return _resolve_node(info, node, ins, _depth + 1)
    except (ValueError, IndexError, TypeError, KeyError):
        return None


def resolve_scalar(info, tensor: str) -> Optional[Element]:
    """The one element of an integer scalar (or 1-vector) tensor, or None."""
    e = resolve(info, tensor)
    if isinstance(e, list):
        e = e[0] if len(e) == 1 else None
    return e


def _resolve_node(info, node, ins, depth) -> Optional[Resolved]:
    op = node.op
    if op in _PASS_THROUGH:
        return resolve(info, ins[0], depth)
    if op == "Shape":
        shape = info.shapes.get(ins[0])
        if shape is None:
            return None
        return [d if d is not None else DimOf(ins[0], k) for k, d in enumerate(shape)]
    if op == "Pack":
        if _int_attr(node, "axis") != 0:
            return None
        elems = [resolve(info, t, depth) for t in ins]
        elems = [Computed(t) if e is None and info.shapes.get(t) == () else e
                 for e, t in zip(elems, ins)]
        if any(e is None or isinstance(e, list) for e in elems):
            return None
        return elems
    if op in ("ExpandDims", "Reshape"):  # a scalar made a 1-vector (Keras Conv1DTranspose's
        # output size: ConcatV2(ExpandDims(batch, 0), Const))
        shape = info.const_value(ins[1])
        if shape is None or np.asarray(shape).reshape(-1).tolist() not in (
                ([0], [-1]) if op == "ExpandDims" else ([1], [-1])):
            return None
        e = resolve(info, ins[0], depth)
        if e is None and info.shapes.get(ins[0]) == ():
            e = Computed(ins[0])
        return None if e is None or isinstance(e, list) else [e]
    if op == "GatherV2":
        vec, idx, axis = (resolve(info, ins[0], depth), info.const_value(ins[1]),
                          info.const_value(ins[2]))
        if not isinstance(vec, list) or idx is None or axis is None or int(axis) != 0:
            return None
        idx = np.asarray(idx)
        picked = [vec[int(i)] for i in idx.reshape(-1)]
        return picked[0] if idx.ndim == 0 else picked
    if op == "Prod":
        vec, axis = resolve(info, ins[0], depth), info.const_value(ins[1])
        if not isinstance(vec, list) or axis is None or \
                np.asarray(axis).reshape(-1).tolist() not in ([0], [-1]):
            return None
        if all(isinstance(e, int) for e in vec):
            out = int(np.prod(vec)) if vec else 1
        else:
            out = Computed(tensor_name_of(node))
        return [out] if _bool_attr(node, "keep_dims") else out
    if op == "ConcatV2":
        axis = info.const_value(ins[-1])
        if axis is None or int(axis) not in (0, -1):
            return None
        out: List[Element] = []
        for t in ins[:-1]:
            part = resolve(info, t, depth)
            if not isinstance(part, list):
                return None
            out.extend(part)
        return out
    if op in ("StridedSlice", "Slice"):
        vec = resolve(info, ins[0], depth)
        if not isinstance(vec, list):
            return None
        plan = _vector_plan(info, node, ins, len(vec))
        return None if plan is None else plan.apply_to_list(vec)
    if op in _ARITH:
        a, b = resolve(info, ins[0], depth), resolve(info, ins[1], depth)
        if isinstance(a, int) and isinstance(b, int):
            return int(_ARITH[op](a, b))
        # Static vectors, elementwise with numpy broadcasting (Keras UpSampling2D's
        # tf.shape(x)[1:3] * factor when H and W are known).
        va, vb = (v if isinstance(v, list) else [v] for v in (a, b))
        if all(isinstance(e, int) for e in va + vb) and \
                (len(va) == len(vb) or 1 in (len(va), len(vb))):
            n = max(len(va), len(vb))
            va, vb = (v * n if len(v) == 1 else v for v in (va, vb))
            return [int(_ARITH[op](x, y)) for x, y in zip(va, vb)]
        return None
    return None


def _vector_plan(info, node, ins, length: int) -> Optional[SlicePlan]:
    consts = [info.const_value(t) for t in ins[1:]]
    if any(c is None for c in consts):
        return None
    if node.op == "Slice":
        (b,), (size,) = [np.asarray(c).reshape(-1).tolist() for c in consts]
        end = np.iinfo(np.int64).max if size == -1 else b + size
        plan = strided_slice_plan((length,), [b], [end], [1])
    else:
        b, e, s = [np.asarray(c).reshape(-1).tolist() for c in consts]
        plan = strided_slice_plan((length,), b, e, s, *[_int_attr(node, m) for m in (
            "begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")])
    return plan if isinstance(plan, SlicePlan) and not plan.new_axes else None


def tensor_name_of(node) -> str:
    return f"{node.name}:0"


def _bool_attr(node, name: str) -> bool:
    return bool(node.attr[name].b) if name in node.attr else False


def _int_attr(node, name: str) -> int:
    return int(node.attr[name].i) if name in node.attr else 0

