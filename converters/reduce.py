"""Reductions: Sum/Mean/Max/Min/Prod, All/Any, ArgMax/ArgMin, TopKV2.

TF gives the axes as a (constant) tensor input, possibly negative, possibly a scalar, possibly
empty (empty = reduce nothing, while ONNX reduces everything for empty axes: such nodes lower
to Identity). Opset 17: ReduceSum takes axes as an input, the other Reduce* as an attribute.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from .layout import onnx_type
from .registry import ANY, FLOATS, FLOATS_AND_INT32, TENSOR, WEIGHT, converter
from .shape_values import resolve_scalar

_ONNX_REDUCE = {"Sum": "ReduceSum", "Mean": "ReduceMean", "Max": "ReduceMax",
                "Min": "ReduceMin", "Prod": "ReduceProd", "All": "ReduceMin", "Any": "ReduceMax"}


def _axes(node, ctx, index: int = 1) -> List[int]:
    """The node's constant axes, normalized to non-negative, sorted, without repeats."""
    rank = ctx.input_rank(node, 0)
    if rank == 0:  # reducing a scalar over axis 0 / -1 leaves it as it is
        return []
    raw = np.asarray(ctx.const_value(node, index)).reshape(-1)
    return sorted({int(a) % rank for a in raw})


def _check_axes(node, ctx, index: int = 1) -> Optional[str]:
    rank = ctx.input_rank(node, 0)
    raw = np.asarray(ctx.const_value(node, index)).reshape(-1)
    for a in raw:
        if not -max(rank, 1) <= int(a) < max(rank, 1):
            return f"axis {int(a)} is out of range for an input of rank {rank}"
    if rank and len({int(a) % rank for a in raw}) != len(raw):
        return f"axes {raw.tolist()} name a dimension twice (TF fails on this at run time)"
    return None


def reduce(ctx, op: str, x: str, axes: List[int], keepdims: bool) -> str:
    """Emits ONNX reduction ``op`` over ``axes`` (opset-17 axes convention)."""
    if op == "ReduceSum":
        return ctx.emit(op, [x, ctx.const(np.array(axes, np.int64), "axes")],
                        keepdims=int(keepdims))
    return ctx.emit(op, [x], axes=axes, keepdims=int(keepdims))


@converter("Sum", "Max", "Min", "Prod", dtypes=FLOATS_AND_INT32, inputs=(TENSOR, WEIGHT))
class Reduce:
    """Sum, Max, Min, Prod over constant axes (negative or scalar axes allowed), keep_dims
    honoured; empty axes lower to Identity. float32, float16, int32.

    Rejects: non-constant axes, axes out of range or repeated, other dtypes.
    """

    @staticmethod
    def validate(node, ctx):
        return _check_axes(node, ctx)

    @staticmethod
    def convert(node, ctx):
        axes = _axes(node, ctx)
        x = ctx.input(node, 0)
        if not axes:
            ctx.set_output(node, 0, ctx.emit("Identity", [x]))
            return
        keep = bool(ctx.attr(node, "keep_dims", False))
        ctx.set_output(node, 0, reduce(ctx, _ONNX_REDUCE[node.op], x, axes, keep))


@converter("Mean", dtypes=FLOATS, inputs=(TENSOR, WEIGHT))
class Mean:
    """Mean over constant axes (negative or scalar axes allowed), keep_dims honoured; empty
    axes lower to Identity. float32 and float16.

    Rejects: integer means (TF truncates, ONNX does not promise to), non-constant axes, axes
    out of range or repeated.
    """

    validate = Reduce.validate

    @staticmethod
    def convert(node, ctx):
        Reduce.convert(node, ctx)


@converter("All", "Any", dtype_attr=None, inputs=(TENSOR, WEIGHT))
class AllAny:
    """Logical reductions of bool tensors over constant axes: All as ReduceMin and Any as
    ReduceMax of the input cast to int32, then > 0; keep_dims honoured. (A cast back to bool
    made Any over an axis of length 0 True: the empty max is the int32 minimum, nonzero.)

    Rejects: non-bool inputs, non-constant axes, axes out of range or repeated.
    """

    @staticmethod
    def validate(node, ctx):
        if ctx.input_dtype(node, 0) != np.dtype(np.bool_):
            return f"{node.op} needs a bool input, got {ctx.input_dtype(node, 0)}"
        return _check_axes(node, ctx)

    @staticmethod
    def convert(node, ctx):
        axes = _axes(node, ctx)
        x = ctx.input(node, 0)
        if not axes:
            ctx.set_output(node, 0, ctx.emit("Identity", [x]))
            return
        keep = bool(ctx.attr(node, "keep_dims", False))
        xi = ctx.emit("Cast", [x], to=onnx_type(np.int32))
        r = reduce(ctx, _ONNX_REDUCE[node.op], xi, axes, keep)
        zero = ctx.const(np.asarray(0, np.int32), "zero")
        ctx.set_output(node, 0, ctx.emit("Greater", [r, zero]))


@converter("ArgMax", "ArgMin", dtypes=FLOATS_AND_INT32, inputs=(TENSOR, WEIGHT))
class ArgMaxMin:
    """Index of the largest / smallest value along a constant axis (first one on ties, as
    TF). ONNX returns int64; a Cast follows when output_type is int32.

    Rejects: non-constant or out-of-range axis, scalar inputs, other dtypes, an
    output_type other than int32 / int64 (TF also takes int16 and uint16).
    """

    @staticmethod
    def validate(node, ctx):
        out = np.dtype(ctx.attr(node, "output_type", np.dtype(np.int64)))
        if out not in (np.int32, np.int64):
            return f"output_type {out.name} is not supported (int32, int64)"
        if ctx.input_rank(node, 0) == 0:
            return f"{node.op} of a scalar is not supported"
        if np.asarray(ctx.const_value(node, 1)).size != 1:
            return "dimension must be a single axis"
        return _check_axes(node, ctx)

    @staticmethod
    def convert(node, ctx):
        axis = _axes(node, ctx)[0]
        y = ctx.emit(node.op, [ctx.input(node, 0)], axis=axis, keepdims=0,
                     select_last_index=0)
        out = ctx.attr(node, "output_type", np.dtype(np.int64))
        if np.dtype(out) != np.int64:
            y = ctx.emit("Cast", [y], to=onnx_type(out))
        ctx.set_output(node, 0, y)


@converter("TopKV2", dtypes=FLOATS_AND_INT32, inputs=(TENSOR, ANY))
class TopK:
    """The k largest entries along the last axis and their indices (k constant, or known at
    conversion: tf.sort / tf.argsort pass k = tf.shape(x)[-1], a static last dimension). Ties
    keep the lower index first, as TF does; the output is always sorted (also valid for
    sorted=False, whose order TF leaves unspecified). Indices are cast to int32 unless
    index_type is int64.

    Rejects: k computed at run time, k larger than a static last dimension, scalar inputs, an
    index_type other than int32 / int64 (TF also takes int16).
    """

    @staticmethod
    def _k(node, ctx) -> Optional[int]:
        # (TopK v1, with k as an attribute, cannot be built by TF 2.x graphs any more.)
        if ctx.is_const(node, 1):
            return int(np.asarray(ctx.const_value(node, 1)).reshape(-1)[0])
        k = resolve_scalar(ctx.info, ctx.input_tensor(node, 1))
        return k if isinstance(k, int) else None

    @staticmethod
    def validate(node, ctx):
        index_type = np.dtype(ctx.attr(node, "index_type", np.dtype(np.int32)))
        if index_type not in (np.int32, np.int64):
            return f"index_type {index_type.name} is not supported (int32, int64)"
        shape = ctx.input_shape(node, 0)
        if not shape:
            return "TopK of a scalar is not supported"
        k = TopK._k(node, ctx)
        if k is None:
            return ("k is computed at run time (not a constant, nor a static dimension of a "
                    "tensor)")
        if k < 0 or (shape[-1] is not None and k > shape[-1]):
            return f"k={k} is out of range for a last dimension of {shape[-1]}"
        return None

    @staticmethod
    def convert(node, ctx):
        k = ctx.const(np.array([TopK._k(node, ctx)], np.int64), "k")
        values, indices = ctx.emit("TopK", [ctx.input(node, 0), k], outputs=2, axis=-1,
                                   largest=1, sorted=1)
        index_type = ctx.attr(node, "index_type", np.dtype(np.int32))
        if np.dtype(index_type) != np.int64:
            indices = ctx.emit("Cast", [indices], to=onnx_type(index_type))
        ctx.set_output(node, 0, values)
        ctx.set_output(node, 1, indices)
