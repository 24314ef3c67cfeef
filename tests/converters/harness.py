"""One harness for every converter test: TF -> segment ONNX -> onnxruntime and the engine.

    check_op(lambda x: tf.nn.relu(x), [x])

builds a tf.function over placeholders shaped like the inputs, freezes and cleans it as
convert() does, lowers every node into one segment network, and compares
  * onnxruntime on the segment network against native TensorFlow, and
  * the tftrt engine (numpy backend) on the same network against native TensorFlow.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tftrt import graph_io, lowering
from tftrt.converters import registry
from tests.tolerances import TOLERANCES

BOUNDARY_OPS = {"Placeholder", "NoOp"}


class Lowered:
    def __init__(self, sig, net, tf_outputs):
        self.sig = sig
        self.net = net
        self.tf_outputs = tf_outputs

    @property
    def onnx_ops(self) -> List[str]:
        return [n.op_type for n in self.net.model.graph.node]

    @property
    def tf_ops(self) -> List[str]:
        return [n.op for n in self.sig.info.graph_def.node]


def trace(fn: Callable, inputs: Sequence[np.ndarray], dynamic_batch: bool = False,
          grappler: bool = True, specs: Optional[Sequence] = None):
    """(ConcreteFunction, GraphInfo of its frozen, cleaned graph) of ``fn`` traced at the
    shapes of ``inputs`` (the batch unknown with ``dynamic_batch``), or at TensorSpecs
    ``specs`` (other unknown dims)."""
    if specs is None:
        specs = []
        for k, x in enumerate(inputs):
            shape = list(np.shape(x))
            if dynamic_batch and shape:
                shape[0] = None
            specs.append(tf.TensorSpec(shape, tf.as_dtype(np.asarray(x).dtype), name=f"x{k}"))
    concrete = tf.function(fn).get_concrete_function(*specs)
    frozen, graph_def = graph_io.freeze_and_clean(concrete, run_grappler=grappler)
    info = graph_io.GraphInfo(graph_def, [t.name for t in frozen.inputs],
                              [t.name for t in frozen.outputs])
    return concrete, info


def lower(fn: Callable, inputs: Sequence[np.ndarray], dynamic_batch: bool = False,
          grappler: bool = True, reference: Optional[Callable] = None) -> Lowered:
    """Lowers the whole traced function into one segment network; every node must validate.

    ``reference`` computes TensorFlow's answer instead of running ``fn`` itself: for ops TF has
    no CPU kernel for (NCHW convolutions and pools, dilated depthwise and transposed
    convolutions without oneDNN), it runs the same op through TF's NHWC / undilated kernels.
    """
    concrete, info = trace(fn, inputs, dynamic_batch, grappler)
    ctx = lowering.ValidationContext(info)
    order = [n for n in info.topological_order() if info.nodes[n].op not in BOUNDARY_OPS]
    rejected = {n: registry.validate_node(info.nodes[n], ctx) for n in order}
    rejected = {n: r for n, r in rejected.items() if r}
    assert not rejected, f"nodes rejected by their validators: {rejected}"
    net = lowering.lower_segment(info, "segment", order, info.inputs, info.outputs)
    tf_out = (concrete if reference is None else reference)(*[tf.constant(x) for x in inputs])
    tf_out = [np.asarray(t) for t in tf.nest.flatten(tf_out)]

    class Sig:
        pass
    sig = Sig()
    sig.info = info
    return Lowered(sig, net, tf_out)


def run_onnxruntime(model, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    import onnxruntime as ort
    # onnxruntime's basic graph optimizations only: its extended ones (operator fusions)
    # rejected a valid segment network of a random transformer block as "Invalid model"
    # (fuzz seed 822, onnxruntime 1.32; onnx.checker passes it, and unoptimized onnxruntime
    # matches TF to 2.5e-7). The reference checks our ONNX, not onnxruntime's fusions.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feeds = {f"TensorRTInputPH_{k}": np.asarray(x) for k, x in enumerate(inputs)}
    return sess.run(None, feeds)


def run_engine(model, inputs: Sequence[np.ndarray], precision: str = "FP32") -> List[np.ndarray]:
    from tftrt.engine import BuilderConfig, build_engine
    shapes = {f"TensorRTInputPH_{k}": tuple(np.shape(x)) for k, x in enumerate(inputs)}
    engine = build_engine(model, shapes, BuilderConfig(precision=precision, backend="numpy"))
    return [np.asarray(o) for o in engine.execute([np.asarray(x) for x in inputs])]


def assert_close(actual, expected, rtol, atol, what):
    assert len(actual) == len(expected), f"{what}: {len(actual)} outputs, expected {len(expected)}"
    for k, (a, e) in enumerate(zip(actual, expected)):
        a = np.asarray(a)
        e = np.asarray(e)
        assert a.shape == e.shape, f"{what} output {k}: shape {a.shape} != TF {e.shape}"
        assert a.dtype == e.dtype, f"{what} output {k}: dtype {a.dtype} != TF {e.dtype}"
        if e.dtype.kind in "biu":
            np.testing.assert_array_equal(a, e, err_msg=f"{what} output {k}")
        else:
            np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol,
                                       atol=atol, err_msg=f"{what} output {k}")


def check_op(fn: Callable, inputs: Sequence[np.ndarray], *, precision: str = "FP32",
             rtol: Optional[float] = None, atol: Optional[float] = None,
             dynamic_batch: bool = False, engine: bool = True, grappler: bool = True,
             expect_tf_ops: Sequence[str] = (), reference: Optional[Callable] = None,
             onnxruntime: bool = True) -> Lowered:
    """Lowers ``fn`` and checks onnxruntime and the engine against TensorFlow.

    Outputs must match TF's in shape and dtype, and in value within ``rtol`` / ``atol``: a
    tolerance the test gives is used as given for both runtimes; without one, onnxruntime is held
    to FP32's and the engine to its precision's (tests/tolerances.py).

    Args:
      reference: computes TF's outputs from the inputs in place of ``fn`` (see lower()).
      onnxruntime: False skips onnxruntime, for inputs (NaN, inf) where ONNX's semantics and
        TF's part: MaxPool, ReduceMax and ArgMax propagate or pick NaN in onnxruntime.
      expect_tf_ops: op types that must appear in the cleaned TF graph (guards against a test
        whose op was folded away by Grappler and so tests nothing).
    """
    inputs = [np.asarray(x) for x in inputs]
    low = lower(fn, inputs, dynamic_batch, grappler, reference)
    for op in expect_tf_ops:
        assert op in low.tf_ops, f"{op} not in the traced graph {sorted(set(low.tf_ops))}"
    d_rtol, d_atol = TOLERANCES["FP32"]
    if onnxruntime:
        assert_close(run_onnxruntime(low.net.model, inputs), low.tf_outputs,
                     d_rtol if rtol is None else rtol, d_atol if atol is None else atol,
                     "onnxruntime")
    if engine:
        p_rtol, p_atol = TOLERANCES[precision]
        assert_close(run_engine(low.net.model, inputs, precision), low.tf_outputs,
                     p_rtol if rtol is None else rtol, p_atol if atol is None else atol,
                     f"engine[{precision}]")
    return low


def validation_reason(fn: Callable, specs: Sequence, op_type: str) -> Optional[str]:
    """The validator's reason for the first ``op_type`` node of ``fn`` traced at TensorSpecs
    ``specs`` (unknown dims beyond the batch, which check_rejected does not trace), or None
    when it validates."""
    _, info = trace(fn, (), specs=specs)
    node = next(n for n in info.graph_def.node if n.op == op_type)
    return registry.validate_node(node, lowering.ValidationContext(info))


def check_rejected(fn: Callable, inputs: Sequence[np.ndarray], op_type: str,
                   reason_contains: str, grappler: bool = True) -> str:
    """Asserts the validator of ``op_type`` rejects the traced node, with a reason."""
    _, info = trace(fn, [np.asarray(x) for x in inputs], grappler=grappler)
    ctx = lowering.ValidationContext(info)
    nodes = [n for n in info.graph_def.node if n.op == op_type]
    assert nodes, f"no {op_type} in the traced graph {[n.op for n in info.graph_def.node]}"
    reason = registry.validate_node(nodes[0], ctx)
    assert reason, f"{op_type} was accepted, expected a rejection containing {reason_contains!r}"
    assert reason_contains.lower() in reason.lower(), f"reason {reason!r} lacks {reason_contains!r}"
    return reason
