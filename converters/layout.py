"""Layout helpers shared by the nn / image converters.

TensorFlow defaults to channels-last (NHWC, NDHWC); ONNX Conv, pools, DepthToSpace and
SpaceToDepth are channels-first (NCHW, NCDHW). Converters for channels-last nodes wrap the ONNX
op in ``Transpose`` nodes (``to_channels_first`` / ``to_channels_last``); the engine folds
adjacent transposes away, so the wrapping costs nothing after optimization.

Padding: TF's "SAME" puts the odd extra pad at the end, like ONNX ``auto_pad="SAME_UPPER"``.
With static spatial sizes we compute explicit ``pads`` (what the engine and onnxruntime agree
on exactly); otherwise we fall back to ``auto_pad``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

CHANNELS_LAST = ("NHWC", "NDHWC", "NWC")
CHANNELS_FIRST = ("NCHW", "NCDHW", "NCW")


def onnx_type(dtype) -> int:
    """ONNX TensorProto element type of a numpy dtype (for Cast's ``to``)."""
    from onnx import helper
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


# --- data_format ------------------------------------------------------------------------------

def data_format(node, ctx, default: str = "NHWC") -> str:
    """The node's ``data_format`` attribute (TF default channels-last)."""
    return ctx.attr(node, "data_format", default) or default


def is_channels_last(fmt: str) -> bool:
    return fmt in CHANNELS_LAST


def check_data_format(fmt: str, rank: int) -> Optional[str]:
    """Reason string when ``fmt`` is not a plain channels-first/-last format of ``rank``."""
    if fmt not in CHANNELS_LAST + CHANNELS_FIRST:
        return f"data_format={fmt} is not supported (supported: NHWC, NCHW, NDHWC, NCDHW)"
    if len(fmt) != rank:
        return f"data_format={fmt} does not match the input rank {rank}"
    return None


def channel_axis(fmt: str) -> int:
    return len(fmt) - 1 if is_channels_last(fmt) else 1


def spatial_of(values: Sequence, fmt: str) -> List:
    """Picks the spatial entries of a per-dimension list (strides, ksize, shape) in ``fmt``."""
    values = list(values)
    return values[1:-1] if is_channels_last(fmt) else values[2:]


def non_spatial_of(values: Sequence, fmt: str) -> List:
    """The batch and channel entries of a per-dimension list in ``fmt``."""
    values = list(values)
    return [values[0], values[-1]] if is_channels_last(fmt) else values[:2]


# --- transposes -------------------------------------------------------------------------------

def perm_to_channels_first(rank: int) -> List[int]:
    """NHWC -> NCHW permutation for any rank (N, spatial..., C) -> (N, C, spatial...)."""
    return [0, rank - 1] + list(range(1, rank - 1))


def perm_to_channels_last(rank: int) -> List[int]:
    """NCHW -> NHWC permutation for any rank."""
    return [0] + list(range(2, rank)) + [1]


def to_channels_first(ctx, value: str, rank: int) -> str:
    return ctx.emit("Transpose", [value], perm=perm_to_channels_first(rank))


def to_channels_last(ctx, value: str, rank: int) -> str:
    return ctx.emit("Transpose", [value], perm=perm_to_channels_last(rank))


def channels_first_shape(shape: Sequence[Optional[int]], fmt: str) -> List[Optional[int]]:
    """A static shape given in ``fmt`` reordered to channels-first."""
    shape = list(shape)
    if is_channels_last(fmt):
        return [shape[0], shape[-1]] + shape[1:-1]
    return shape


def kernel_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """TF filter [spatial..., in, out] -> ONNX weight [out, in, spatial...]."""
    r = kernel.ndim
    return np.ascontiguousarray(np.transpose(kernel, [r - 1, r - 2] + list(range(r - 2))))


def kernel_perm_to_oihw(rank: int) -> List[int]:
    return [rank - 1, rank - 2] + list(range(rank - 2))


# --- padding ----------------------------------------------------------------------------------

def same_pads(in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> Tuple[List[int], List[int]]:
    """TF "SAME" padding: (begins, ends) per spatial dim; the odd pixel goes at the end."""
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-n // s)
        eff_k = (k - 1) * d + 1
        total = max((out - 1) * s + eff_k - n, 0)
        begins.append(total // 2)
        ends.append(total - total // 2)
    return begins, ends


def explicit_pads(paddings: Sequence[int], fmt: str) -> Tuple[List[int], List[int]]:
    """TF explicit_paddings (2 per dim, in ``fmt`` order) -> (spatial begins, spatial ends)."""
    pairs = [list(paddings[2 * i:2 * i + 2]) for i in range(len(paddings) // 2)]
    spatial = spatial_of(pairs, fmt)
    return [p[0] for p in spatial], [p[1] for p in spatial]


def check_explicit_paddings(paddings: Sequence[int], fmt: str, rank: int) -> Optional[str]:
    if len(paddings) != 2 * rank:
        return f"explicit_paddings has {len(paddings)} values, expected {2 * rank}"
    pairs = [paddings[2 * i:2 * i + 2] for i in range(rank)]
    if any(v != 0 for p in non_spatial_of(pairs, fmt) for v in p):
        return "explicit_paddings on the batch or channel dimension are not supported"
    if any(v < 0 for v in paddings):
        return "negative explicit_paddings are not supported"
    return None


def pad_attrs(padding: str, spatial_in: Sequence[Optional[int]], kernel: Sequence[int],
              strides: Sequence[int], dilations: Sequence[int],
              explicit: Optional[Sequence[int]] = None, fmt: str = "NHWC") -> Dict[str, object]:
    """ONNX Conv/pool padding attributes for a TF padding mode.

    Args:
      padding: "SAME", "VALID" or "EXPLICIT".
      spatial_in: static spatial input sizes (None where unknown).
      explicit: the node's explicit_paddings (with padding="EXPLICIT").
    Returns:
      {"pads": [...]} or {"auto_pad": "SAME_UPPER"}.
    """
    nd = len(kernel)
    if padding == "VALID":
        return {"pads": [0] * (2 * nd)}
    if padding == "EXPLICIT":
        b, e = explicit_pads(explicit, fmt)
        return {"pads": b + e}
    if all(n is not None for n in spatial_in):
        b, e = same_pads(spatial_in, kernel, strides, dilations)
        return {"pads": b + e}
    return {"auto_pad": "SAME_UPPER"}


def check_padding(padding: str, allowed: Sequence[str] = ("SAME", "VALID", "EXPLICIT")
                  ) -> Optional[str]:
    if padding not in allowed:
        return f"padding={padding} is not supported (supported: {', '.join(allowed)})"
    return None
