"""Broadcasting and rank alignment for elementwise lowering.

ONNX's elementwise ops (Add, Mul, Where, Equal, Max, ...) broadcast like numpy, which is TF's
rule for the BinaryOp family, SelectV2 and the comparisons, so most converters pass operands
through unchanged. What needs help:

* TF's v1 ``Select`` does *not* broadcast numpy-style: a rank-1 condition picks whole rows of a
  higher-rank ``t`` / ``e`` (it is aligned with the *leading* dimension). :func:`align_leading`
  appends trailing unit dimensions so that numpy broadcasting gives TF's meaning.
* Constants we add ourselves (the 1 of log1p, the 0 of DivNoNan) must have the operand's dtype,
  ONNX being strict about mixed types: :func:`scalar_like`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .axes import unsqueeze

Shape = Optional[Tuple[Optional[int], ...]]


def broadcast_shapes(*shapes: Shape) -> Shape:
    """Static numpy broadcast of shapes with unknown (None) dims.

    Returns the broadcast shape (None entries where unknown) or None when a shape has unknown
    rank. Raises ValueError when two known dims differ and neither is 1.
    """
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        dims = [s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise ValueError(f"shapes {list(shapes)} do not broadcast (dims {sorted(known)})")
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def broadcast_error(*shapes: Shape) -> Optional[str]:
    """Reason string when the shapes cannot be shown to broadcast together, else None."""
    if any(s is None for s in shapes):
        return "an operand has unknown rank"
    try:
        broadcast_shapes(*shapes)
    except ValueError as e:
        return str(e)
    return None


def scalar_like(ctx, value, dtype, name: str = "scalar") -> str:
    """A rank-0 initializer of ``dtype`` (the dtype of the operand it will meet)."""
    return ctx.const(np.asarray(value, dtype=np.dtype(dtype)), name)


def align_leading(ctx, x: str, rank: int, target_rank: int) -> str:
    """Appends trailing unit dims so ``x`` (rank ``rank``) lines up with the leading dims of a
    rank-``target_rank`` tensor under numpy broadcasting (TF v1 Select's rank-1 condition)."""
    return unsqueeze(ctx, x, list(range(rank, target_rank)))
