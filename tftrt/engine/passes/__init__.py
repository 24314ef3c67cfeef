"""Optimization passes: named pure functions ``Network -> Network``, run in ``PASSES`` order.

Each pass takes a network whose shapes are inferred (``shapes.bind_inputs``) and returns a new
network (the input is never modified) whose shapes are inferred too. A pass that fails is a
bug: it is logged and skipped so that the engine still builds from the unoptimized network.
"""

from __future__ import annotations

import logging
from typing import Callable, List, Sequence

from tftrt.engine.network import Network

log = logging.getLogger("tftrt.engine.passes")

Pass = Callable[[Network], Network]

from tftrt.engine.passes.constant_folding import constant_folding  # noqa: E402
from tftrt.engine.passes.dead_layers import remove_dead_layers  # noqa: E402
from tftrt.engine.passes.shuffle_folding import shuffle_folding  # noqa: E402
from tftrt.engine.passes.pad_folding import pad_folding  # noqa: E402
from tftrt.engine.passes.vertical_fusion import vertical_fusion  # noqa: E402
from tftrt.engine.passes.activation_motion import (  # noqa: E402
    activation_before_max_pool, activation_into_concat_inputs)
from tftrt.engine.passes.elementwise_fusion import elementwise_fusion  # noqa: E402
from tftrt.engine.passes.norm_fusion import layernorm_fusion  # noqa: E402
from tftrt.engine.passes.attention_fusion import attention_fusion  # noqa: E402
from tftrt.engine.passes.se_fusion import se_fusion  # noqa: E402
from tftrt.engine.passes.stem_space_to_depth import stem_space_to_depth  # noqa: E402

PASSES: List[Pass] = [
    constant_folding,
    remove_dead_layers,
    shuffle_folding,
    pad_folding,  # after shuffle folding has made ONNX convs NHWC `conv` layers
    vertical_fusion,
    # once vertical fusion made the convs the producers of pools and concats:
    activation_before_max_pool,
    activation_into_concat_inputs,
    elementwise_fusion,
    layernorm_fusion,  # after elementwise fusion has merged the decomposition's pointwise steps
    vertical_fusion,  # again: fused programs such as x * sigmoid(x) are epilogue activations
    stem_space_to_depth,  # once pads are folded into the stem and its epilogue is fused
    remove_dead_layers,
]

# Passes that depend on the precision (the builder runs them after apply_precision, gives them
# the backend's ``accepts_layer`` and does not re-infer dtypes): attention is fused in FP16 /
# BF16 engines only; squeeze-and-excitation blocks in every precision, with the storage dtypes
# precision chose for their intermediates.
LATE_PASSES: List[Callable] = [attention_fusion, se_fusion]


def run_passes(net: Network, passes: Sequence[Pass] = None, infer: bool = True) -> Network:
    """Runs ``passes`` (default ``PASSES``) in order; a failing pass is skipped with a warning.
    ``infer``: re-infer shapes and dtypes after each pass (False for LATE_PASSES: inference
    would undo the float16 storage apply_precision chose; those passes type what they add)."""
    from tftrt.engine.shapes import infer_shapes
    for p in PASSES if passes is None else passes:
        try:
            out = infer_shapes(p(net)) if infer else p(net)
        except Exception as e:  # never lose an engine to an optimization bug
            if _impossible_shapes(e):
                raise
            log.warning("pass %s failed on %s and was skipped: %s: %s",
                        getattr(p, "__name__", None) or getattr(p, "func", p).__name__, net.name,
                        type(e).__name__, e)
            continue
        net = out
    net.uniquify_layer_names()
    return net


def _impossible_shapes(error: Exception) -> bool:
    """Whether a pass failed because the bound input shapes cannot be computed at all: the
    shapes it folded (a Reshape to a run-time shape) show tensors that do not broadcast, as
    TF's own kernels would say for these inputs. Such a build fails (the shapes run
    natively, where TF raises) instead of making an engine that fails at its first run and
    evicts a good one on the way (helper hunt, 2026-12-03)."""
    from tftrt.engine.errors import EngineBuildError
    return isinstance(error, EngineBuildError) and "do not broadcast together" in str(error)
