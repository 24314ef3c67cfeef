"""Builder: ONNX model or Network + concrete input shapes + config -> :class:`Engine`.

Steps: import -> bind input shapes (shape inference) -> optimization passes (passes/__init__)
-> precision -> precision-dependent passes (``LATE_PASSES``) -> upload weights -> tactic
selection (timed on the backend) -> memory plan.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Dict, Optional, Sequence, Union

import onnx

from tftrt.engine.backends import get_backend
from tftrt.engine.errors import EngineBuildError
from tftrt.engine.memory import plan_memory
from tftrt.engine.network import Network
from tftrt.engine.onnx_import import network_from_onnx
from tftrt.engine.passes import LATE_PASSES, PASSES, run_passes
from tftrt.engine.precision import apply_precision, normalize_precision
from tftrt.engine.runtime import Engine
from tftrt.engine.shapes import bind_inputs, infer_shapes
from tftrt.engine.tactics import TimingCache, choose_tactics, workspace_bytes

log = logging.getLogger("tftrt.engine")


@dataclasses.dataclass
class BuilderConfig:
    """How to build an engine.

    Attributes:
      precision: "FP32", "FP16" or "INT8" (INT8 needs Q/DQ ops in the network).
      backend: "numpy", "cupy", or "auto" ($TFTRT_BACKEND, else cupy when available).
      max_workspace_size_bytes: limit on tactic scratch (TensorRT's workspace: activation
        memory is not part of it).
      max_device_memory_bytes: limit on all device memory of an execution context
        (activation arena + scratch + outputs); None for no limit.
      allow_tf32: let fp32 GEMM/conv use TF32 tensor cores (GPU backends).
      timing_cache: a TimingCache to reuse tactic choices across builds (optional).
      optimize: run the optimization passes (False: the network as imported).
      tactic_timing: time candidate tactics (False: take the first applicable one).
    """

    precision: str = "FP32"
    backend: str = "numpy"
    max_workspace_size_bytes: int = 1 << 40
    max_device_memory_bytes: Optional[int] = None
    allow_tf32: bool = True
    timing_cache: Optional[TimingCache] = None
    optimize: bool = True
    tactic_timing: bool = True

    def to_json(self) -> dict:
        return {"precision": self.precision, "backend": self.backend,
                "max_workspace_size_bytes": int(self.max_workspace_size_bytes),
                "allow_tf32": bool(self.allow_tf32), "optimize": bool(self.optimize)}


def optimize_network(net: Network, passes=None) -> Network:
    """Runs the ordered optimization passes (see passes/__init__.py) on a bound network."""
    return run_passes(net, PASSES if passes is None else passes)


def build_engine(model_or_network: Union[onnx.ModelProto, Network],
                 input_shapes: Dict[str, Sequence[int]],
                 config: Optional[BuilderConfig] = None) -> Engine:
    """Builds an engine for concrete input shapes.

    Args:
      model_or_network: a segment ONNX model or an imported :class:`Network`.
      input_shapes: input name -> concrete shape (every network input).
      config: a :class:`BuilderConfig` (defaults: FP32 on numpy).
    Returns:
      The :class:`Engine`.
    Raises:
      EngineBuildError: unsupported op, bad shapes, precision or memory limit (the message
        says which and what to do).
    """
    config = config or BuilderConfig()
    t0 = time.perf_counter()
    precision = normalize_precision(config.precision)
    backend = get_backend(config.backend)
    if hasattr(backend, "set_build_options"):  # optional backend hook (TF32, precision)
        backend.set_build_options(allow_tf32=config.allow_tf32, precision=precision)
    if isinstance(model_or_network, onnx.ModelProto):
        net = network_from_onnx(model_or_network)
    elif isinstance(model_or_network, Network):
        net = model_or_network
    else:
        raise EngineBuildError(f"build_engine takes an onnx.ModelProto or a Network, not "
                               f"{type(model_or_network).__name__}")
    net = bind_inputs(net, input_shapes)
    if config.optimize:
        net = optimize_network(net)
    net = infer_shapes(net)
    net = apply_precision(net, precision)
    if config.optimize:
        accept = getattr(backend, "accepts_layer", None)
        net = run_passes(net, [functools.partial(p, accept=accept) for p in LATE_PASSES],
                         infer=False)
    if backend.name != "numpy":
        dyn = [t for t in net.tensors.values() if not t.is_static]
        if dyn:
            raise EngineBuildError(
                f"tensors {[t.name for t in dyn][:5]} have data-dependent shapes, which the "
                f"{backend.name} backend cannot run; keep such ops (e.g. NonMaxSuppression) out "
                f"of the segment")
    weights = {k: backend.upload(v) for k, v in net.weights.items()}
    if config.tactic_timing:
        timings = choose_tactics(net, backend, weights, config.timing_cache)
    else:
        from tftrt.engine.tactics import candidates
        timings = {}
        for layer in net.layers:
            c = candidates(backend.name, net, layer)
            layer.tactic = c[0].name if c else "default"
    scratch = max([workspace_bytes(backend.name, net, l) for l in net.layers] or [0])
    memory = plan_memory(net, scratch, config.max_workspace_size_bytes,
                         config.max_device_memory_bytes)
    engine = Engine(net, backend, precision, memory, config.to_json(), weights=weights,
                    device=backend.device_name())
    engine.build_info = {"seconds": time.perf_counter() - t0, "tactic_timings": timings}
    log.info("built engine %s: %d layers, %s, %d arena bytes in %.2fs", net.name,
             len(net.layers), precision, memory.arena_bytes, engine.build_info["seconds"])
    return engine
