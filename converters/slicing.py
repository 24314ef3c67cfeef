"""Slicing plans: TF's StridedSlice mask language -> ONNX Slice + Squeeze + Unsqueeze.

TF encodes ``x[1:, ..., tf.newaxis, 0]`` as sparse begin/end/strides vectors plus five bit
masks. :func:`strided_slice_plan` expands them to a dense per-dimension spec the way TF's
``BuildDenseSpec`` does (ellipsis first, then new axes, then ordinary indices; a missing
ellipsis is implied at the end) and returns a :class:`SlicePlan`:

* ``Slice`` over the input dims that are actually cut (begin_mask / end_mask become the
  INT64_MIN / INT64_MAX sentinels, which ONNX clamps to the run-time size, so unknown dims need
  no shape arithmetic);
* ``Squeeze`` of the shrink_axis_mask dims (each sliced to one element first);
* ``Unsqueeze`` of the new_axis_mask positions in the final output.

The same plan applies to python lists (:meth:`SlicePlan.apply_to_list`), which the shape
resolver uses on ``tf.shape(x)[1:3]``-style vectors.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple, Union

from .axes import INT64_MAX, INT64_MIN, int64s, squeeze, unsqueeze


@dataclasses.dataclass
class SlicePlan:
    rank: int
    # dense (start, end, step) per input dim, ONNX Slice semantics with sentinels
    dims: List[Tuple[int, int, int]]
    shrink_axes: List[int]  # input dims removed after slicing
    new_axes: List[int]     # positions of inserted unit dims in the output

    @property
    def sliced_axes(self) -> List[int]:
        return [k for k, (b, e, s) in enumerate(self.dims) if (b, e, s) != (0, INT64_MAX, 1)]

    def emit(self, ctx, x: str) -> str:
        """Emits Slice / Squeeze / Unsqueeze on ``x``; returns the result (``x`` when trivial)."""
        axes = self.sliced_axes
        if axes:
            starts = [self.dims[k][0] for k in axes]
            ends = [self.dims[k][1] for k in axes]
            steps = [self.dims[k][2] for k in axes]
            x = ctx.emit("Slice", [x, int64s(ctx, starts, "starts"), int64s(ctx, ends, "ends"),
                                   int64s(ctx, axes, "axes"), int64s(ctx, steps, "steps")])
        x = squeeze(ctx, x, self.shrink_axes)
        return unsqueeze(ctx, x, self.new_axes)

    def apply_to_list(self, values: Sequence) -> Union[list, object]:
        """Applies a rank-1 plan to a python list (a resolved shape vector).

        Returns a list, or a single element when the one dim is shrunk.
        """
        if self.rank != 1 or self.new_axes:
            raise ValueError("only rank-1 plans without new axes apply to lists")
        b, e, s = self.dims[0]
        got = list(values)[slice(b, e, s)]
        if self.shrink_axes:
            if len(got) != 1:
                raise IndexError(f"index {b} is out of range for {len(values)} elements")
            return got[0]
        return got


def strided_slice_plan(shape: Sequence[Optional[int]], begin: Sequence[int],
                       end: Sequence[int], strides: Sequence[int], begin_mask: int = 0,
                       end_mask: int = 0, ellipsis_mask: int = 0, new_axis_mask: int = 0,
                       shrink_axis_mask: int = 0) -> Union[SlicePlan, str]:
    """Dense plan of a StridedSlice on an input of static ``shape`` (None for unknown dims),
    or a reason string."""
    rank = len(shape)
    n = len(begin)
    if not len(end) == len(strides) == n:
        return (f"begin, end and strides have different lengths "
                f"({len(begin)}, {len(end)}, {len(strides)})")
    ellipses = [i for i in range(n) if ellipsis_mask >> i & 1]
    if len(ellipses) > 1:
        return f"ellipsis_mask={ellipsis_mask} has more than one ellipsis"
    if any(strides[i] == 0 for i in range(n)):
        return f"strides {list(strides)} contain 0"
    if ellipses:
        ell = ellipses[0]
        new_after = sum(1 for i in range(ell + 1, n) if new_axis_mask >> i & 1)
    else:
        ell, new_after = n, 0  # TF implies an ellipsis after the last index
    dims: List[Tuple[int, int, int]] = [(0, INT64_MAX, 1)] * rank
    shrink: List[int] = []
    tokens: List[Optional[int]] = []  # output dims in order: input dim index, or None (new)
    full = 0
    for i in range(max(n, ell + 1)):
        bit = 1 << i
        if i == ell:
            consumed_after = (n - i - 1) - new_after
            stop = min(rank - consumed_after, rank)
            while full < stop:
                tokens.append(full)
                full += 1
            continue
        if new_axis_mask & bit:
            tokens.append(None)
            continue
        if full >= rank:
            return (f"slice spec indexes {full + 1} dimensions of a rank-{rank} input "
                    f"(begin={list(begin)}, masks: ellipsis={ellipsis_mask}, "
                    f"new_axis={new_axis_mask}, shrink_axis={shrink_axis_mask})")
        b, e, s = int(begin[i]), int(end[i]), int(strides[i])
        if shrink_axis_mask & bit:
            if s < 0:
                return f"shrink_axis_mask={shrink_axis_mask} with a negative stride at index {i}"
            # TF ignores begin_mask and end_mask on a shrunk index: strided_slice(x, [-1],
            # [0], [1], begin_mask=1, shrink_axis_mask=1) is x[-1], not x[0].
            dims[full] = (b, INT64_MAX if b == -1 else b + 1, 1)
            shrink.append(full)
        else:
            if begin_mask & bit:
                b = 0 if s > 0 else INT64_MAX
            if end_mask & bit:
                e = INT64_MAX if s > 0 else INT64_MIN
            if s < 0 and b < -1 and not begin_mask & bit:
                # TF clamps a start below -dim to "before the first element" (an empty
                # slice); ONNX clamps it to element 0. Only a known dim tells them apart
                # (-1 is safe: it is below -dim only for an empty dim).
                if shape[full] is None:
                    return (f"negative begin {b} with negative stride {s} on unknown dim "
                            f"{full} (begin_mask not set)")
                if b < -shape[full]:
                    b, e = 0, 0
            dims[full] = (b, e, s)
            tokens.append(full)
        full += 1
    while full < rank:  # only when the explicit ellipsis covered nothing and indices ran short
        tokens.append(full)
        full += 1
    new_axes = [pos for pos, t in enumerate(tokens) if t is None]
    return SlicePlan(rank, dims, shrink, new_axes)


def reversed_edge(ctx, x: str, axis: int, count: int, at_start: bool, skip_edge: bool,
                  gather: bool = False) -> str:
    """The ``count`` elements next to one edge of ``axis``, in reverse order (mirror padding).

    ``skip_edge`` leaves the edge element out (REFLECT) instead of repeating it (SYMMETRIC).
    Works on unknown dims: only negative indices and clamping sentinels are used. A Slice
    clamps where the dim is too small for ``count``; with ``gather`` the edge is a Gather of
    the same indices, which the engine checks against the dim it is built for.
    """
    off = 1 if skip_edge else 0
    if at_start:  # x[count-1+off], ..., x[off]
        start, stop = count - 1 + off, off - 1
    else:  # x[-1-off], ..., x[-count-off]
        start, stop = -1 - off, -1 - off - count
    if gather:
        return ctx.emit("Gather", [x, int64s(ctx, list(range(start, stop, -1)), "edge")],
                        axis=axis)
    if stop < 0 and at_start:
        stop = INT64_MIN
    return ctx.emit("Slice", [x, int64s(ctx, [start], "starts"), int64s(ctx, [stop], "ends"),
                              int64s(ctx, [axis], "axes"), int64s(ctx, [-1], "steps")])
