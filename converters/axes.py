"""Axis helpers: normalizing TF axes and emitting the int64 operands ONNX wants for them.

Opset 17 takes the axes of Squeeze, Unsqueeze, Split, Slice and Pad (and ReduceSum) as int64
*inputs*, not attributes; every such operand goes through :func:`int64s`.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import numpy as np

# ONNX Slice clamps starts/ends to the dimension, so these mean "from the very start / to the
# very end" whatever the run-time size is (what TF's begin_mask / end_mask mean).
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def axis_error(axis: int, rank: int, what: str = "axis", extra: int = 0) -> Optional[str]:
    """Reason string when ``axis`` is outside [-(rank+extra), rank+extra).

    ``extra`` is 1 for ops that address a new dimension (ExpandDims, Pack).
    """
    n = rank + extra
    if not -n <= axis < n:
        return f"{what} {axis} is out of range for rank {rank}"
    return None


def normalize_axis(axis: int, rank: int) -> int:
    """TF negative axis -> non-negative (``rank`` is the rank the axis indexes into)."""
    axis = int(axis)
    return axis + rank if axis < 0 else axis


def int64s(ctx, values: Iterable[int], name: str = "axes") -> str:
    """An int64 vector initializer (axes, shapes, starts/ends, pads, repeats)."""
    return ctx.const(np.asarray(list(values), dtype=np.int64).reshape(-1), name)


def squeeze(ctx, x: str, axes: Sequence[int]) -> str:
    """ONNX Squeeze of the given (non-negative) axes; no-op for an empty list."""
    if not axes:
        return x
    return ctx.emit("Squeeze", [x, int64s(ctx, sorted(axes), "squeeze_axes")])


def unsqueeze(ctx, x: str, axes: Sequence[int]) -> str:
    """ONNX Unsqueeze at the given axes of the *output*; no-op for an empty list."""
    if not axes:
        return x
    return ctx.emit("Unsqueeze", [x, int64s(ctx, sorted(axes), "unsqueeze_axes")])


def const_ints(ctx, node, i: int) -> List[int]:
    """A constant integer input of ``node`` as a flat python list."""
    return [int(v) for v in np.asarray(ctx.const_value(node, i)).reshape(-1)]
