"""One helper for engine op tests: build a small ONNX model, run onnxruntime and the engine
(numpy backend) on the same inputs, compare per output. No TensorFlow here."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from tests.tolerances import TOLERANCES
from tftrt.engine import BuilderConfig, build_engine

_NP2ONNX = {np.dtype(k): v for k, v in {
    np.float32: onnx.TensorProto.FLOAT, np.float16: onnx.TensorProto.FLOAT16,
    np.float64: onnx.TensorProto.DOUBLE, np.int32: onnx.TensorProto.INT32,
    np.int64: onnx.TensorProto.INT64, np.int8: onnx.TensorProto.INT8,
    np.uint8: onnx.TensorProto.UINT8, np.bool_: onnx.TensorProto.BOOL}.items()}


def make_model(nodes: Sequence[onnx.NodeProto], feeds: Dict[str, np.ndarray],
               consts: Optional[Dict[str, np.ndarray]] = None, outputs: Sequence[str] = ("y",),
               symbolic: Sequence[int] = (), opset: int = 17) -> onnx.ModelProto:
    """Graph inputs from ``feeds`` (dims listed in ``symbolic`` become named symbols),
    initializers from ``consts``; output types come from ONNX shape inference."""
    inputs = []
    for name, arr in feeds.items():
        dims = [f"{name}_d{k}" if k in symbolic else d for k, d in enumerate(arr.shape)]
        inputs.append(helper.make_tensor_value_info(name, _NP2ONNX[arr.dtype], dims))
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (consts or {}).items()]
    outs = [helper.make_empty_tensor_value_info(o) for o in outputs]
    graph = helper.make_graph(list(nodes), "test", inputs, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type for v in list(inferred.graph.value_info) +
                 list(inferred.graph.output)}
    except Exception:
        types = {}
    for o in model.graph.output:
        t = types.get(o.name)
        elem = t.tensor_type.elem_type if t is not None else 0
        o.type.tensor_type.elem_type = elem or onnx.TensorProto.FLOAT
    return model


def run_ort(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    opts = ort.SessionOptions()  # basic optimizations only: tests/converters/harness.py
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_engine(model: onnx.ModelProto, feeds: Dict[str, np.ndarray], precision: str = "FP32",
               **config) -> List[np.ndarray]:
    shapes = {k: v.shape for k, v in feeds.items()}
    engine = build_engine(model, shapes, BuilderConfig(precision=precision, backend="numpy",
                                                       **config))
    return [np.asarray(o) for o in engine.execute([feeds[n] for n in engine.input_names])]


def assert_close(got: Sequence[np.ndarray], want: Sequence[np.ndarray], rtol: float,
                 atol: float, what: str = "engine") -> None:
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        w = np.asarray(w)
        assert g.shape == w.shape, f"{what} output {k}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{what} output {k}: dtype {g.dtype} != {w.dtype}"
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=f"{what} output {k}")
        else:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol,
                                       atol=atol, err_msg=f"{what} output {k}")


def check_model(model: onnx.ModelProto, feeds: Dict[str, np.ndarray], precision: str = "FP32",
                rtol: Optional[float] = None, atol: Optional[float] = None) -> List[np.ndarray]:
    """Engine vs onnxruntime on ``model``; returns the engine outputs."""
    want = run_ort(model, feeds)
    got = run_engine(model, feeds, precision)
    p_rtol, p_atol = TOLERANCES[precision]
    assert_close(got, want, rtol if rtol is not None else p_rtol,
                 atol if atol is not None else p_atol, f"engine[{precision}]")
    return got


def check_node(op_type: str, feeds: Dict[str, np.ndarray],
               consts: Optional[Dict[str, np.ndarray]] = None,
               inputs: Optional[Sequence[str]] = None, n_out: int = 1,
               precision: str = "FP32", rtol: Optional[float] = None,
               atol: Optional[float] = None, **attrs) -> List[np.ndarray]:
    """One ONNX node over ``feeds`` (graph inputs) and ``consts`` (initializers)."""
    consts = consts or {}
    if inputs is None:
        inputs = list(feeds) + list(consts)
    outs = ["y"] if n_out == 1 else [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op_type, list(inputs), outs, **attrs)
    return check_model(make_model([node], feeds, consts, outs), feeds, precision, rtol, atol)


def rand(*shape, dtype=np.float32, low=-2.0, high=2.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed + sum(shape) * 7 + len(shape))
    if np.dtype(dtype).kind == "f":
        return rng.uniform(low, high, shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(int(low), int(high) + 1, shape).astype(dtype)
