"""tftrt's inference engine (never imports TensorFlow).

    from tftrt.engine import BuilderConfig, build_engine
    engine = build_engine(onnx_model, {"TensorRTInputPH_0": (2, 8, 8, 3)},
                          BuilderConfig(precision="FP16", backend="numpy"))
    (y,) = engine.execute([x])
    plan = engine.serialize(); engine2 = deserialize_engine(plan)

See network.py for the layer IR and backends/__init__.py for the backend interface.
"""

from tftrt.engine.errors import EngineBuildError, PlanError
from tftrt.engine.network import Layer, Network, TensorInfo
from tftrt.engine.onnx_import import network_from_onnx
from tftrt.engine.runtime import Engine, ExecutionContext
from tftrt.engine.builder import BuilderConfig, build_engine
from tftrt.engine.plan import deserialize_engine, serialize_engine

__all__ = ["BuilderConfig", "build_engine", "Engine", "ExecutionContext", "Network", "Layer",
           "TensorInfo", "network_from_onnx", "serialize_engine", "deserialize_engine",
           "EngineBuildError", "PlanError"]
