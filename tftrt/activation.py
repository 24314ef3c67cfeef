"""Engines inside GraphDefs: how a converted TF1 GraphDef runs engines after ``import tftrt``.

A GraphDef converted by ``TrtGraphConverter`` stores each engine as a ``PartitionedCall`` of its
native segment function, with ``_tftrt_*`` attributes carrying the engine spec, the segment
network and (static mode) the serialized engine. Plain TensorFlow imports and runs it natively.
Once tftrt is active, ``import_graph_def`` swaps those calls for engine ops bound in this
process, the way TF-TRT's TRTEngineOp kernel picked up ``serialized_segment``.

``activate()`` is called by ``import tftrt`` when TensorFlow is already imported, and by the
converters; calling it again is harmless.
"""

from __future__ import annotations

import functools
import json
import logging

log = logging.getLogger("tftrt.activation")

SPEC_ATTR = "_tftrt_spec"
ONNX_ATTR = "_tftrt_segment_onnx"
PLANS_ATTR = "_tftrt_serialized_segment"  # JSON list of {input_shapes, backend} + plan bytes

_ACTIVE = False


def engine_ops_from_graph_def(graph_def):
    """Builds TRTEngineOp objects for every tftrt engine node of ``graph_def``.

    Returns {node name: TRTEngineOp}.
    """
    from tftrt import conversion, rewrite
    from tftrt.engine_op import EngineSpec
    fdefs = {f.signature.name: f for f in graph_def.library.function}
    ops = {}
    for node in graph_def.node:
        if rewrite.ENGINE_ATTR not in node.attr or SPEC_ATTR not in node.attr:
            continue
        spec = EngineSpec.from_json(json.loads(node.attr[SPEC_ATTR].s.decode()),
                                    node.attr[ONNX_ATTR].s)
        op = conversion.engine_op_from_spec(spec, fdefs[node.attr["f"].func.name])
        blobs = node.attr[PLANS_ATTR].list.s if PLANS_ATTR in node.attr else []
        # blobs alternate: JSON meta, plan bytes
        conversion.restore_plans(op, [(json.loads(blobs[k].decode()),
                                       lambda data=blobs[k + 1]: data)
                                      for k in range(0, len(blobs), 2)])
        ops[node.name] = op
    return ops


def bind_engines(graph_def):
    """Returns (graph_def with engine nodes as EagerPyFunc, objects to keep alive)."""
    from tftrt import conversion
    ops = engine_ops_from_graph_def(graph_def)
    if not ops:
        return graph_def, []
    # (weights stay constants of the native segments: a TF1 graph has no captures)
    graph_def, keepalive, _ = conversion.bind_engine_nodes(graph_def, ops,
                                                           inline_fallback=inline_fallback())
    return graph_def, keepalive


def inline_fallback() -> bool:
    """Whether a TF1 graph's native fallbacks are inlined into it (rewrite._run_native_fdef):
    where engines run off the GPU (the numpy or native backend) and TensorFlow's oneDNN is
    on. A Session gives the main graph oneDNN's layout rewrite, not a fallback kept as a
    function call: an NCHW conv or pool there failed ("only supports NHWC on the CPU") where
    the original graph ran, on every call with the native backend, the default of a CPU-only
    machine (helper hunt, 2026-12-04). Not on a GPU (an inlined fallback would create its
    kernels and a second copy of its weights with the graph although engines seldom fall
    back), nor without oneDNN (TF's CPU kernels then refuse NCHW as they are created, even
    for a branch never taken, and the original graph fails there anyway). TF2 paths call
    the native segments as functions whose instantiation gets the rewrite."""
    from tftrt.engine_op import resolve_backend
    if resolve_backend() == "cupy":
        return False
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # TensorFlow's private API moved: keep the call
        return False


def activate() -> None:
    """Makes ``import_graph_def`` bind tftrt engines (idempotent).

    The patch sits on ``importer._import_graph_def_internal``, which every public name
    (``tf.import_graph_def``, ``tf.graph_util.import_graph_def``,
    ``tf.compat.v1.import_graph_def``, and any reference to them taken before tftrt was
    imported) calls through the module, so the order of ``import tensorflow`` and
    ``import tftrt`` does not matter. ``import tftrt`` before TensorFlow activates when
    TensorFlow is imported (see tftrt/__init__.py).
    """
    global _ACTIVE
    if _ACTIVE:
        return
    _ACTIVE = True
    from tftrt.gpu_memory import share_gpu_with_tensorflow
    share_gpu_with_tensorflow()
    from tensorflow.core.framework import graph_pb2
    from tensorflow.python.framework import importer, ops as tf_ops

    original = importer._import_graph_def_internal  # pylint: disable=protected-access

    @functools.wraps(original)
    def import_graph_def_internal(graph_def, *args, **kwargs):
        from tftrt import rewrite
        if isinstance(graph_def, graph_pb2.GraphDef) and any(
                rewrite.ENGINE_ATTR in n.attr and SPEC_ATTR in n.attr for n in graph_def.node):
            graph_def, keep = bind_engines(graph_def)
            graph = tf_ops.get_default_graph()
            if not hasattr(graph, "_py_funcs_used_in_graph"):
                graph._py_funcs_used_in_graph = []  # pylint: disable=protected-access
            graph._py_funcs_used_in_graph.extend(keep)  # pylint: disable=protected-access
        return original(graph_def, *args, **kwargs)

    importer._import_graph_def_internal = import_graph_def_internal  # pylint: disable=W0212
