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
from typing import List

import numpy as np

log = logging.getLogger("tftrt.activation")

SPEC_ATTR = "_tftrt_spec"
ONNX_ATTR = "_tftrt_segment_onnx"
PLANS_ATTR = "_tftrt_serialized_segment"  # JSON list of {input_shapes, backend} + plan bytes

_ACTIVE = False


def engine_ops_from_graph_def(graph_def):
    """Builds TRTEngineOp objects for every tftrt engine node of ``graph_def``.

    Returns {node name: TRTEngineOp}.
    """
    from tftrt import rewrite
    from tftrt.engine_op import EngineSpec, TRTEngineOp
    fdefs = {f.signature.name: f for f in graph_def.library.function}
    ops = {}
    for node in graph_def.node:
        if rewrite.ENGINE_ATTR not in node.attr or SPEC_ATTR not in node.attr:
            continue
        spec = EngineSpec.from_json(json.loads(node.attr[SPEC_ATTR].s.decode()),
                                    node.attr[ONNX_ATTR].s)
        fdef = fdefs[node.attr["f"].func.name]
        native = rewrite.function_def_caller(
            fdef, [(np.dtype(d), s) for d, s in zip(spec.input_dtypes, spec.input_shapes)],
            [np.dtype(d) for d in spec.output_dtypes])
        op = TRTEngineOp(spec, native)
        if PLANS_ATTR in node.attr:
            _restore_plans(op, node.attr[PLANS_ATTR].list.s)
        ops[node.name] = op
    return ops


def _restore_plans(op, blobs: List[bytes]) -> None:
    if not blobs:
        return
    from tftrt.engine import PlanError, deserialize_engine
    from tftrt.engine_op import resolve_backend
    backend = resolve_backend()
    if backend == "native":
        return
    for k in range(0, len(blobs), 2):
        meta = json.loads(blobs[k].decode())
        if meta.get("backend") != backend:
            continue
        try:
            engine = deserialize_engine(blobs[k + 1], backend=backend)
        except PlanError as e:
            log.warning("%s: serialized engine cannot be used here (%s); it will rebuild",
                        op.name, e)
            continue
        op.add_engine(tuple(tuple(s) for s in meta["input_shapes"]), engine)


def bind_engines(graph_def):
    """Returns (graph_def with engine nodes as EagerPyFunc, objects to keep alive)."""
    from tftrt import conversion, rewrite
    ops = engine_ops_from_graph_def(graph_def)
    if not ops:
        return graph_def, []
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    keep = []
    for i, node in enumerate(out.node):
        op = ops.get(node.name)
        if op is None:
            continue
        token, wrapper = conversion.register_engine_op(op, op.spec.output_dtypes)
        new = rewrite.engine_node(node.name, token, op.spec.input_dtypes, op.spec.output_dtypes)
        new.input.extend(node.input)
        out.node[i].CopyFrom(new)
        keep += [op, wrapper]
    return out, keep


def activate() -> None:
    """Makes ``import_graph_def`` bind tftrt engines (idempotent)."""
    global _ACTIVE
    if _ACTIVE:
        return
    _ACTIVE = True
    from tftrt.gpu_memory import share_gpu_with_tensorflow
    share_gpu_with_tensorflow()
    import tensorflow as tf
    from tensorflow.python.framework import importer, ops as tf_ops

    original = importer.import_graph_def

    @functools.wraps(original)
    def import_graph_def(graph_def, *args, **kwargs):
        from tftrt import rewrite
        if any(rewrite.ENGINE_ATTR in n.attr and SPEC_ATTR in n.attr for n in graph_def.node):
            graph_def, keep = bind_engines(graph_def)
            graph = tf_ops.get_default_graph()
            if not hasattr(graph, "_py_funcs_used_in_graph"):
                graph._py_funcs_used_in_graph = []  # pylint: disable=protected-access
            graph._py_funcs_used_in_graph.extend(keep)  # pylint: disable=protected-access
        return original(graph_def, *args, **kwargs)

    import_graph_def._tftrt_original = original  # pylint: disable=protected-access
    importer.import_graph_def = import_graph_def
    for mod in (tf.graph_util, tf.compat.v1, getattr(tf.compat.v1, "graph_util", None)):
        if mod is not None and getattr(mod, "import_graph_def", None) is original:
            setattr(mod, "import_graph_def", import_graph_def)
