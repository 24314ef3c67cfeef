"""Rewrite: replace each segment by one node, and make callable functions of the result.

Two forms of the converted graph share one layout:
  * engine form: each segment is an ``EagerPyFunc`` node named ``TRTEngineOp_NNN_MMM`` bound to
    a :class:`~tftrt.engine_op.TRTEngineOp` object (what convert() returns and tftrt.load
    restores);
  * native form: each segment is a ``PartitionedCall`` of the function
    ``TRTEngineOp_NNN_MMM_native_segment_<digest>`` carrying ``_tftrt_engine`` attributes
    (what save() writes, so plain TensorFlow can load and run the model).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt.graph_io import XLA_CALL_ATTR, GraphInfo, split_tensor_name, tensor_name
from tftrt.segment import Segment

log = logging.getLogger("tftrt.rewrite")

ENGINE_ATTR = "_tftrt_engine"


def _tf():
    import tensorflow as tf
    return tf


def _dtype_enum(np_dtype) -> int:
    return _tf().as_dtype(np.dtype(np_dtype)).as_datatype_enum


# ------------------------------------------------------------------------------------------------
# Native segment functions


def segment_graph_def(info: GraphInfo, seg: Segment, light: Optional[dict] = None):
    """A GraphDef of the segment alone: TensorRTInputPH_i placeholders -> TensorRTOutputPH_i.

    With ``light`` (a dict), each Const whose ``tensor_content`` is LIGHT_CONST_BYTES or more
    is added as its dtype and shape only, and ``light`` maps its name to ``info``'s NodeDef
    (not a copy): the value is never copied into the GraphDef. Overwriting a copied value
    afterwards frees nothing (upb keeps a message's memory until the whole message goes).
    """
    from tensorflow.core.framework import graph_pb2
    tf = _tf()
    gd = graph_pb2.GraphDef()
    gd.versions.CopyFrom(info.graph_def.versions)
    remap = {}
    for i, t in enumerate(seg.inputs):
        ph = gd.node.add(name=f"TensorRTInputPH_{i}", op="Placeholder")
        ph.attr["dtype"].type = _dtype_enum(info.dtypes[t])
        shape = info.shapes.get(t)
        if shape is not None:
            ph.attr["shape"].shape.CopyFrom(tf.TensorShape(list(shape)).as_proto())
        remap[t] = f"TensorRTInputPH_{i}:0"
    members = set(seg.nodes) | set(seg.consts)
    needed_consts = set()
    for n in seg.nodes:
        for t in info.data_inputs(info.nodes[n]):
            src = split_tensor_name(t)[0]
            if src not in members and info.has_const_value(t):
                needed_consts.add(src)
    for n in list(seg.consts) + sorted(needed_consts):
        src = info.nodes[n]
        if light is not None and src.op == "Const" and \
                len(src.attr["value"].tensor.tensor_content) >= LIGHT_CONST_BYTES:
            light[n] = src
            node = gd.node.add(name=src.name, op=src.op, device=src.device)
            node.input.extend(src.input)
            for field in ("experimental_debug_info", "experimental_type"):
                if src.HasField(field):
                    getattr(node, field).CopyFrom(getattr(src, field))
            for key, value in src.attr.items():
                if key != "value":
                    node.attr[key].CopyFrom(value)
            t = src.attr["value"].tensor
            node.attr["value"].tensor.dtype = t.dtype
            node.attr["value"].tensor.tensor_shape.CopyFrom(t.tensor_shape)
        else:
            node = gd.node.add()
            node.CopyFrom(src)
        # Grappler may give a Const a control input from a node of another segment or of the
        # native graph; a constant's value does not depend on it, so the copy drops it.
        kept = [i for i in node.input if i.startswith("^") and i[1:] in members]
        del node.input[:]
        node.input.extend(kept)
    for n in seg.nodes:
        node = gd.node.add()
        node.CopyFrom(info.nodes[n])
        node.device = ""
        new_inputs = []
        for i in node.input:
            if i.startswith("^"):
                if i[1:] in members:
                    new_inputs.append(i)
                continue
            canon = tensor_name(*split_tensor_name(i))
            new_inputs.append(remap.get(canon, i))
        del node.input[:]
        node.input.extend(new_inputs)
    for j, t in enumerate(seg.outputs):
        out = gd.node.add(name=f"TensorRTOutputPH_{j}", op="Identity")
        out.input.append(t)
        out.attr["T"].type = _dtype_enum(info.dtypes[t])
    return gd


# Constants at least this large cross TensorFlow's importer without their values when a native
# segment's FunctionDef is made (native_segment_function_def).
LIGHT_CONST_BYTES = 1 << 16


def native_segment_function_def(info: GraphInfo, seg: Segment):
    """The FunctionDef ``<engine>_native_segment_<digest>`` computing the segment natively."""
    from tensorflow.python.framework import graph_to_function_def, importer
    # The graph goes through TensorFlow's importer and back out as NodeDefs: large constants
    # make that trip as their dtype and shape only (a TensorProto without content; shape
    # inference reads no large constant's values) and get their values back in the
    # FunctionDef, which is the same byte for byte (VGG16's segment: 0.5 GB twice less).
    # They are copied once, from the frozen graph into the FunctionDef (a GraphDef holding
    # them and a copy taken out of it made two more: helper hunt, memory).
    values = {}
    gd = segment_graph_def(info, seg, light=values)
    # Straight from a graph: wrap_function would also prune it and make ConcreteFunctions,
    # each of which fetches the whole FunctionDef (weights included) back from the runtime.
    graph = _tf().Graph()
    with graph.as_default():
        importer.import_graph_def(gd, name="")
    fdef = graph_to_function_def.graph_to_function_def(
        graph, graph.get_operations(),
        [graph.get_tensor_by_name(f"TensorRTInputPH_{i}:0") for i in range(len(seg.inputs))],
        [graph.get_tensor_by_name(f"TensorRTOutputPH_{j}:0") for j in range(len(seg.outputs))])
    del graph, gd
    xla = False
    for n in fdef.node_def:
        if n.name in values:
            n.attr["value"].CopyFrom(values[n.name].attr["value"])
        if XLA_CALL_ATTR in n.attr:
            xla = True
            del n.attr[XLA_CALL_ATTR]
    if xla:  # see xla_compiled
        fdef.attr[XLA_MUST_COMPILE].b = True
        fdef.attr["_noinline"].b = True
    # TF-TRT's name plus a digest of the body: TensorFlow keeps one function per name per
    # process, and two conversions in one process give different bodies the same engine name.
    fdef.signature.name = ""
    # The digest leaves out the nodes' debug info: it names the traced function TF's
    # per-process counter numbered (__inference___call___45, then ___191), so converting
    # the same model again gave a new name, and each conversion's segments, weights
    # included, stayed in the eager context for good (helper hunt, 2026-12-04: +4 MB per
    # convert of a model with 4 MB of weights).
    # (Cleared in place and put back: a copy to hash held the weights once more.)
    debug = {}
    for n in fdef.node_def:
        if n.HasField("experimental_debug_info"):
            debug[n.name] = type(n.experimental_debug_info)()
            debug[n.name].CopyFrom(n.experimental_debug_info)
            n.ClearField("experimental_debug_info")
    digest = hashlib.sha1(fdef.SerializeToString(deterministic=True)).hexdigest()[:10]
    for n in fdef.node_def:
        if n.name in debug:
            n.experimental_debug_info.CopyFrom(debug[n.name])
    fdef.signature.name = f"{seg.name}_native_segment_{digest}"
    return fdef


def lift_weights(fdef):
    """``fdef`` (a native segment function) with its large constants (LIGHT_CONST_BYTES and
    up: the weights) as its last arguments instead.

    The engine form's fallback branches call this light copy, fed the weights as tensors
    the signature function captures (bind_engine_nodes). A FunctionDef reachable from a
    function TensorFlow runs is copied into what it keeps for every executed trace: with
    the weights as constants, each trace of a user's tf.function that called a converted
    signature kept a copy of the native segments' weights for good (runtime hunt,
    2026-12-04: +4 MB per trace of a 4 MB model; tracing 100 tf.functions, +400 MB), as a
    captured tensor is not.

    Returns:
      (the light FunctionDef, named ``<name>_w``, and the constants' TensorProtos in
      argument order: ``fdef``'s own, not copies, so they change with it), or (``fdef``,
      []) when it has no large constant.
    """
    lifted: Dict[str, str] = {}
    values = []
    for n in fdef.node_def:
        if n.op == "Const" and len(n.attr["value"].tensor.tensor_content) >= LIGHT_CONST_BYTES:
            lifted[n.name] = f"tftrt_weight_{len(values)}"
            values.append(n.attr["value"].tensor)
    if not lifted:
        return fdef, []
    light = type(fdef)()
    light.signature.CopyFrom(fdef.signature)
    light.signature.name = fdef.signature.name + "_w"
    for n, v in zip(lifted.values(), values):
        light.signature.input_arg.add(name=n, type=v.dtype)
    for key in ("attr", "arg_attr", "resource_arg_unique_id", "control_ret"):
        getattr(light, key).MergeFrom(getattr(fdef, key))

    def source(ref: str) -> str:
        # a constant's output ("w:output:0") is its argument now; a control edge from a
        # constant orders nothing and goes
        return lifted.get(ref.split(":")[0], ref)
    for n in fdef.node_def:
        if n.name in lifted:
            continue
        node = light.node_def.add()
        node.CopyFrom(n)
        del node.input[:]
        node.input.extend(source(i) for i in n.input
                          if not (i.startswith("^") and i[1:] in lifted))
    for k, ref in fdef.ret.items():
        light.ret[k] = source(ref)
    return light, values


XLA_MUST_COMPILE = "_XlaMustCompile"


def xla_compiled(fdef) -> bool:
    """Whether native segment function ``fdef`` runs through XLA: its segment holds nodes of
    an inlined XLA-compiled call (graph_io.XLA_CALL_ATTR), whose ops TF's own kernels may lack
    (Keras' grouped Conv3D: "Number of channels in filter (2) must match last dimension of
    input (4)" on the CPU). The function and every call of it are marked ``_XlaMustCompile``,
    as TensorFlow marks a ``jit_compile=True`` function and its calls: plain TensorFlow, the
    native backend and an engine's native fallback then run the segment as the input model ran
    that call, through XLA."""
    return XLA_MUST_COMPILE in fdef.attr and fdef.attr[XLA_MUST_COMPILE].b


def _mark_call(node, fdef) -> None:
    """A call of ``fdef`` as TensorFlow calls a jit_compile function, where it is one."""
    if fdef is not None and xla_compiled(fdef):
        node.op = "StatefulPartitionedCall"
        node.attr[XLA_MUST_COMPILE].b = True


def called_names(nodes):
    """The function names ``nodes`` hold in func-valued attrs (PartitionedCall, If / While
    branches, ...), one per attr."""
    for n in nodes:
        for a in n.attr.values():
            if a.HasField("func"):
                yield a.func.name
            elif a.HasField("list"):
                for f in a.list.func:
                    yield f.name


def called_functions(nodes, library) -> set:
    """Names of the ``library`` functions that ``nodes`` call, directly or through the
    functions they call."""
    by_name = {f.signature.name: f for f in library.function}
    used, todo = set(), list(called_names(nodes))
    while todo:
        name = todo.pop()
        if name in used or name not in by_name:
            continue
        used.add(name)
        todo.extend(called_names(by_name[name].node_def))
    return used


def function_def_caller(fdef, input_specs: Sequence[Tuple[np.dtype, object]],
                        output_dtypes: Sequence[np.dtype]):
    """A ConcreteFunction that calls ``fdef`` (used as an engine op's native fallback)."""
    from tensorflow.core.framework import graph_pb2
    from tensorflow.python.eager import wrap_function
    tf = _tf()
    gd = graph_pb2.GraphDef()
    gd.library.function.add().CopyFrom(fdef)
    for i, (dt, shape) in enumerate(input_specs):
        ph = gd.node.add(name=f"in_{i}", op="Placeholder")
        ph.attr["dtype"].type = _dtype_enum(dt)
        if shape is not None:
            ph.attr["shape"].shape.CopyFrom(tf.TensorShape(list(shape)).as_proto())
    call = gd.node.add(name="call", op="PartitionedCall")
    call.input.extend([f"in_{i}:0" for i in range(len(input_specs))])
    call.attr["Tin"].list.type.extend([_dtype_enum(dt) for dt, _ in input_specs])
    call.attr["Tout"].list.type.extend([_dtype_enum(dt) for dt in output_dtypes])
    call.attr["f"].func.name = fdef.signature.name
    _mark_call(call, fdef)
    return wrap_function.function_from_graph_def(
        gd, [f"in_{i}:0" for i in range(len(input_specs))],
        [f"call:{j}" for j in range(len(output_dtypes))])


# ------------------------------------------------------------------------------------------------
# Replacing segments


# The engine node's output 0 says whether the engine ran by its rank alone: an empty tensor
# of shape (0,) when it ran, (0, 0) when the native segment must run. The select node reads
# it with Rank, whose GPU kernel for a float tensor writes its int32 output to host memory
# without touching the tensor, so the If's predicate (a bool on the host, as the Switch it
# lowers to needs) is made with no device -> host copy. A bool status value lived on the GPU
# with the EagerPyFunc's other outputs and came back for every call's Switch: the bool
# status and its If cost 0.31 ms per engine boundary (H200, 2026-12-01,
# benchmarks/profile_boundary.py). Float32: TF's GPU Rank kernel for bool wants its input
# in host memory.
STATUS_DTYPE = np.dtype(np.float32)
STATUS_RAN = np.zeros((0,), STATUS_DTYPE)
STATUS_NATIVE = np.zeros((0, 0), STATUS_DTYPE)


def engine_node(name: str, token: str, in_dtypes, out_dtypes):
    """An EagerPyFunc NodeDef bound to the registered Python callable ``token``.

    Its outputs are the status (STATUS_DTYPE) then the segment outputs; see
    :func:`with_native_fallback` for the node that reads them.
    """
    from tensorflow.core.framework import node_def_pb2
    node = node_def_pb2.NodeDef(name=name, op="EagerPyFunc")
    node.attr["token"].s = token.encode()
    node.attr["is_async"].b = False
    node.attr["Tin"].list.type.extend([_dtype_enum(d) for d in in_dtypes])
    node.attr["Tout"].list.type.extend([_dtype_enum(d) for d in [STATUS_DTYPE, *out_dtypes]])
    return node


def engine_call_name(engine_name: str) -> str:
    """The EagerPyFunc node that tries an engine. The node named ``engine_name`` itself is
    the select node after it, so ``TRTEngineOp_000_000:j`` is the segment's output j
    whichever ran (as with TF-TRT), and code that counts engines by node name finds each
    once."""
    return "tftrt_engine_call_" + engine_name.replace("TRTEngineOp_", "")


def _take_engine_outputs_fdef(in_dtypes, out_dtypes, weight_types=()):
    """The select node's then-branch: returns the engine's outputs (its first arguments)."""
    from tensorflow.core.framework import function_pb2
    fdef = function_pb2.FunctionDef()
    _branch_signature(fdef, in_dtypes, out_dtypes, weight_types)
    for j, d in enumerate(out_dtypes):
        ident = fdef.node_def.add(name=f"engine_{j}", op="Identity", input=[f"e_{j}"])
        ident.attr["T"].type = _dtype_enum(d)
        fdef.ret[f"r_{j}"] = f"engine_{j}:output:0"
    key = (",".join(np.dtype(d).name for d in out_dtypes) + "|" +
           ",".join(np.dtype(d).name for d in in_dtypes))
    if weight_types:
        key += "|" + ",".join(str(t) for t in weight_types)
    fdef.signature.name = "tftrt_engine_outputs_" + hashlib.sha1(key.encode()).hexdigest()[:10]
    return fdef


def _run_native_fdef(native_name: str, in_dtypes, out_dtypes, native=None,
                     inline: bool = False, weight_types=()):
    """The select node's else-branch: calls the native segment function (``native``, its
    FunctionDef, says whether through XLA) on the segment inputs and then the weights
    (``weight_types``: see lift_weights), its last arguments; ``inline``: inlined where TF
    lowers the If (see with_native_fallback)."""
    from tensorflow.core.framework import function_pb2
    fdef = function_pb2.FunctionDef()
    _branch_signature(fdef, in_dtypes, out_dtypes, weight_types)
    call = fdef.node_def.add(name="native", op="PartitionedCall")
    call.input.extend([f"i_{i}" for i in range(len(in_dtypes))])
    call.input.extend([f"w_{k}" for k in range(len(weight_types))])
    call.attr["Tin"].list.type.extend([_dtype_enum(d) for d in in_dtypes])
    call.attr["Tin"].list.type.extend(weight_types)
    call.attr["Tout"].list.type.extend([_dtype_enum(d) for d in out_dtypes])
    call.attr["f"].func.name = native_name
    _mark_call(call, native)
    for j in range(len(out_dtypes)):
        fdef.ret[f"r_{j}"] = f"native:output:{j}"
    fdef.signature.name = f"{native_name}_fallback" + ("_inline" if inline else "")
    # Not inlined into the caller when TF lowers the If (unless ``inline``: see
    # activation.inline_fallback): an inlined native segment would create its kernels (and
    # its Const tensors, a second copy of every weight, on the GPU) with the graph, although
    # most engines never fall back; as a call it is instantiated at its first run. (And a
    # CPU without oneDNN has no kernel for an NCHW native segment that never runs.)
    fdef.attr["_noinline"].b = not inline
    return fdef


def _branch_signature(fdef, in_dtypes, out_dtypes, weight_types=()) -> None:
    sig = fdef.signature
    for j, d in enumerate(out_dtypes):
        sig.input_arg.add(name=f"e_{j}", type=_dtype_enum(d))
    for i, d in enumerate(in_dtypes):
        sig.input_arg.add(name=f"i_{i}", type=_dtype_enum(d))
    for k, t in enumerate(weight_types):
        sig.input_arg.add(name=f"w_{k}", type=t)
    for j, d in enumerate(out_dtypes):
        sig.output_arg.add(name=f"r_{j}", type=_dtype_enum(d))


def with_native_fallback(graph_def, native_fdefs: Dict[str, object],
                         output_shapes: Optional[Dict[str, list]] = None,
                         inline_fallback: bool = False, weights_as_inputs: bool = False):
    """Gives every engine node of ``graph_def`` its native fallback as a node of the graph.

    An engine node ``E`` (an EagerPyFunc, see :func:`engine_node`) becomes two nodes: the
    EagerPyFunc, renamed :func:`engine_call_name`, which tries the engine, and an ``If``
    named ``E`` on its status: the then-branch passes the engine's outputs through, the
    else-branch calls the native segment function on the segment inputs. So the native
    segment runs as an ordinary function call of the graph, never nested inside the
    engine's Python callback (which held an inter-op thread while TF waited for another: a
    deadlock with one inter-op thread, or with two engines and two callers). TF lowers the
    ``If`` to Switch/Merge, so the branch not taken costs nothing.

    Args:
      graph_def: engine form, each engine an EagerPyFunc node named as a key of
        ``native_fdefs``.
      native_fdefs: {engine node name: native segment FunctionDef}.
      output_shapes: {engine node name: the segment outputs' shapes (lists, None for an
        unknown dimension; None for an unknown rank)}: the ``If``'s ``output_shapes``, so
        that graph code after it sees the static shapes native TF gave (TF-TRT's
        TRTEngineOp set them from its own attribute); without them every output's shape
        was unknown (a Keras Dense on an output failed in a user's tf.function).
      inline_fallback: the else-branch is inlined into the graph where TF lowers the
        ``If`` (activation.inline_fallback: a TF1 Session on a CPU with oneDNN), instead of
        a function call made at its first run.
      weights_as_inputs: the native segments' weights become Placeholders of the graph,
        ``<engine call>/weight_<k>``, on the engine node's device, passed through the
        ``If`` to the segment's :func:`lift_weights` copy (for a graph imported into a TF2
        function, whose caller feeds them captured tensors).
    Returns:
      (a new GraphDef, whose library gains the native segments and the branch functions;
      {weight Placeholder tensor name: its value, a TensorProto}, empty without
      ``weights_as_inputs``).
    """
    from tensorflow.core.framework import graph_pb2, node_def_pb2
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    have = {f.signature.name for f in out.library.function}
    selects = []
    weights = {}
    for node in out.node:
        if node.name not in native_fdefs:
            continue
        tf = _tf()
        in_dtypes = [tf.as_dtype(t).as_numpy_dtype for t in node.attr["Tin"].list.type]
        out_dtypes = [tf.as_dtype(t).as_numpy_dtype for t in node.attr["Tout"].list.type[1:]]
        native, values = lift_weights(native_fdefs[node.name]) if weights_as_inputs else \
            (native_fdefs[node.name], [])
        weight_types = [v.dtype for v in values]
        then_f = _take_engine_outputs_fdef(in_dtypes, out_dtypes, weight_types)
        else_f = _run_native_fdef(native.signature.name, in_dtypes, out_dtypes, native,
                                  inline=inline_fallback, weight_types=weight_types)
        for f in (native, then_f, else_f):
            if f.signature.name not in have:
                out.library.function.add().CopyFrom(f)
                have.add(f.signature.name)
        sel = node_def_pb2.NodeDef(name=node.name, op="If", device=node.device)
        node.name = engine_call_name(node.name)
        selects.extend(_ran_nodes(node.name, node.device))
        sel.input.append(f"{node.name}/ran")
        sel.input.extend(f"{node.name}:{j}" for j in range(1, len(out_dtypes) + 1))
        sel.input.extend(i for i in node.input if not i.startswith("^"))
        for k, v in enumerate(values):
            ph = node_def_pb2.NodeDef(name=f"{node.name}/weight_{k}", op="Placeholder",
                                      device=node.device)
            ph.attr["dtype"].type = v.dtype
            ph.attr["shape"].shape.CopyFrom(v.tensor_shape)
            selects.append(ph)
            sel.input.append(ph.name)
            weights[ph.name + ":0"] = v
        sel.attr["Tcond"].type = _dtype_enum(np.bool_)
        sel.attr["Tin"].list.type.extend([_dtype_enum(d) for d in [*out_dtypes, *in_dtypes]])
        sel.attr["Tin"].list.type.extend(weight_types)
        sel.attr["Tout"].list.type.extend([_dtype_enum(d) for d in out_dtypes])
        sel.attr["then_branch"].func.name = then_f.signature.name
        sel.attr["else_branch"].func.name = else_f.signature.name
        sel.attr["output_shapes"].list.SetInParent()
        shapes = (output_shapes or {}).get(sel.name)
        if shapes is not None and len(shapes) == len(out_dtypes):
            for shape in shapes:
                proto = sel.attr["output_shapes"].list.shape.add()
                if shape is None:
                    proto.unknown_rank = True
                    continue
                for d in shape:
                    proto.dim.add().size = -1 if d is None else int(d)
        sel.attr["_lower_using_switch_merge"].b = True
        selects.append(sel)
    out.node.extend(selects)
    return out, weights


def _ran_nodes(call: str, device: str):
    """``{call}/ran``: whether engine call node ``call`` ran its engine, Rank(status) == 1,
    in host memory (see STATUS_DTYPE)."""
    from tensorflow.core.framework import node_def_pb2
    rank = node_def_pb2.NodeDef(name=f"{call}/status_rank", op="Rank", device=device,
                                input=[f"{call}:0"])
    rank.attr["T"].type = _dtype_enum(STATUS_DTYPE)
    one = node_def_pb2.NodeDef(name=f"{call}/one", op="Const", device=device)
    one.attr["dtype"].type = _dtype_enum(np.int32)
    one.attr["value"].tensor.dtype = _dtype_enum(np.int32)
    one.attr["value"].tensor.tensor_shape.SetInParent()
    one.attr["value"].tensor.int_val.append(len(STATUS_RAN.shape))
    ran = node_def_pb2.NodeDef(name=f"{call}/ran", op="Equal", device=device,
                               input=[rank.name, one.name])
    ran.attr["T"].type = _dtype_enum(np.int32)
    return [rank, one, ran]


def native_call_node(name: str, fdef_name: str, in_dtypes, out_dtypes, fdef=None):
    """A PartitionedCall NodeDef of the native segment function, marked as an engine (a
    StatefulPartitionedCall marked ``_XlaMustCompile`` where ``fdef`` is xla_compiled)."""
    from tensorflow.core.framework import node_def_pb2
    node = node_def_pb2.NodeDef(name=name, op="PartitionedCall")
    node.attr["Tin"].list.type.extend([_dtype_enum(d) for d in in_dtypes])
    node.attr["Tout"].list.type.extend([_dtype_enum(d) for d in out_dtypes])
    node.attr["f"].func.name = fdef_name
    node.attr[ENGINE_ATTR].s = name.encode()
    _mark_call(node, fdef)
    return node


def _control_sources(info: GraphInfo, seg: Segment) -> List[str]:
    """The nodes whose control inputs the engine node takes: the segment's nodes, the Consts
    moved into it, and the Consts outside it that its nodes read (copied into the network).
    ``with tf.control_dependencies([s]): y = tanh(h + 1.0)`` puts ``^s`` on the first ops
    made in the block, the Const 1.0 among them; Grappler keeps it there, and the engine
    must wait for ``s`` as its Consts' readers did, or ``s`` never runs (a py_func hook ran
    natively and not once converted: helper hunt, 2026-12-01). The segmenter's cycle check
    already links a Const's control inputs to its readers, so no cycle follows."""
    out = list(seg.nodes) + list(seg.consts)
    seen = set(out)
    for n in seg.nodes:
        for t in info.data_inputs(info.nodes[n]):
            src = split_tensor_name(t)[0]
            if src not in seen and src in info.nodes and info.nodes[src].op == "Const":
                seen.add(src)
                out.append(src)
    return out


def replace_segments(info: GraphInfo, segments: Sequence[Segment],
                     make_node: Callable[[Segment], object], library=()):
    """Returns (GraphDef, output tensor names) with each segment replaced by make_node(seg).

    ``make_node`` returns a NodeDef whose inputs are filled here (segment inputs, then the
    control inputs the segment's nodes had from outside).
    """
    from tensorflow.core.framework import graph_pb2
    removed = set()
    remap: Dict[str, str] = {}
    ctrl_remap: Dict[str, str] = {}
    new_nodes = []
    for seg in segments:
        members = set(seg.nodes) | set(seg.consts)
        removed |= members
        node = make_node(seg)
        node.input.extend(seg.inputs)
        ctrl = []
        for n in _control_sources(info, seg):
            for c in info.control_inputs(info.nodes[n]):
                if c not in members and f"^{c}" not in ctrl:
                    ctrl.append(f"^{c}")
        node.input.extend(ctrl)
        for j, t in enumerate(seg.outputs):
            remap[t] = tensor_name(seg.name, j)
        for n in members:
            ctrl_remap[n] = seg.name
        new_nodes.append(node)

    gd = graph_pb2.GraphDef()
    gd.versions.CopyFrom(info.graph_def.versions)
    gd.library.CopyFrom(info.graph_def.library)
    for f in library:
        gd.library.function.add().CopyFrom(f)

    def fix(i: str) -> str:
        if i.startswith("^"):
            return "^" + ctrl_remap.get(i[1:], i[1:])
        canon = tensor_name(*split_tensor_name(i))
        return remap.get(canon, i)

    for node in info.graph_def.node:
        if node.name in removed:
            continue
        out = gd.node.add()
        out.CopyFrom(node)
        fixed = []
        for i in node.input:
            f = fix(i)
            if f not in fixed or not f.startswith("^"):
                fixed.append(f)
        del out.input[:]
        out.input.extend(fixed)
    for node in new_nodes:
        # Segment inputs may come from another segment replaced above.
        fixed = [fix(i) for i in node.input]
        del node.input[:]
        node.input.extend(fixed)
        gd.node.add().CopyFrom(node)
    outputs = [remap.get(t, t) for t in info.outputs]
    return gd, outputs


def rename_library_functions(graph_def, suffix: str) -> None:
    """Renames every library function of ``graph_def`` to ``<name>_<suffix>``, in place, with
    every reference to it (call ops, function attributes, gradients).

    A SavedModel's functions keep the names they had in the process that traced them, and the
    eager context holds one function per name: a second model whose functions have the same
    names (the same code traced the same way, other constants) found the first model's
    registered under them, and ran its bodies (wrong numbers, no error). TensorFlow's own
    loader renames what it loads; tftrt.load renames the converted graph's library with a
    digest of the saved model, so the same model loaded twice shares its functions."""
    names = {f.signature.name: f"{f.signature.name}_{suffix}"
             for f in graph_def.library.function}
    if not names:
        return

    def rename_attr(value) -> None:
        if value.HasField("func"):
            value.func.name = names.get(value.func.name, value.func.name)
            for v in value.func.attr.values():
                rename_attr(v)
        elif value.HasField("list"):
            for f in value.list.func:
                f.name = names.get(f.name, f.name)
                for v in f.attr.values():
                    rename_attr(v)

    def rename_node(node) -> None:
        node.op = names.get(node.op, node.op)
        for value in node.attr.values():
            rename_attr(value)

    for node in graph_def.node:
        rename_node(node)
    for f in graph_def.library.function:
        f.signature.name = names[f.signature.name]
        for node in f.node_def:
            rename_node(node)
    for g in graph_def.library.gradient:
        g.function_name = names.get(g.function_name, g.function_name)
        g.gradient_func = names.get(g.gradient_func, g.gradient_func)


def graph_signature_function(graph_def, inputs: Sequence[str], outputs: Sequence[str],
                             arg_names: Sequence[str], input_specs, structured_outputs,
                             structured_input_signature=None, keepalive=None,
                             tensor_map=None):
    """A GraphDef as a function called like the original signature, in one trace.

    The GraphDef is imported straight into the signature's graph (node names kept, so
    ``TRTEngineOp_000_000`` is found under that name) with its inputs mapped to the
    arguments; its functions (the native segments, with every weight) are registered once.

    Args:
      graph_def, inputs, outputs: the graph and its input / output tensor names.
      arg_names: keyword names of the inputs, in ``inputs`` order.
      input_specs: tf.TensorSpec per input (shape and dtype of the original signature).
      structured_outputs: the original signature's structured outputs; the flat outputs are
        packed into the same structure.
      structured_input_signature: the original's, reported by the returned function.
      tensor_map: {tensor name of the graph: a tensor captured in its place} (the Consts
        naming asset files, fed a ``tf.saved_model.Asset``'s path so a saved model reads its
        own copy).
      keepalive: for a graph with engine nodes, what their tokens refer to: the function
        keeps it alive, and the graph's library functions (the select nodes' branches and
        the native segments) are registered with the eager context, where TF looks up the
        branches it lowers an ``If`` into (importing into a function's graph does not).
    Returns:
      A ConcreteFunction taking the original keyword arguments.
    """
    tf = _tf()
    from tensorflow.python.eager import context
    from tensorflow.python.framework import importer
    # (Engine binding on import, tftrt.activate(), needs TF1 engine attributes: never here.)
    if keepalive is not None:
        ctx = context.context()
        for f in graph_def.library.function:
            if not ctx.has_function(f.signature.name):
                ctx.add_function_def(f)
        # Imported without its library: the functions are the eager context's now, where TF
        # finds them at run time; importing them too copied every weight of the native
        # segments into the function's graph again (21 s of tftrt.load for a BERT-sized
        # encoder, 340 MB of segment functions).
        from tensorflow.core.framework import graph_pb2
        stripped = graph_pb2.GraphDef()
        stripped.versions.CopyFrom(graph_def.versions)
        stripped.node.extend(graph_def.node)
        graph_def = stripped

    # Control inputs from an input node (Grappler gives the constants it folds out of an
    # input's shape or AddN one, "^x") are mapped too: input_map maps tensors only, and the
    # imported copy of the input's Placeholder, which nothing feeds, failed every call.
    input_nodes = {split_tensor_name(t)[0]: k for k, t in enumerate(inputs)}
    ctrl_from_inputs = sorted({i[1:] for n in graph_def.node for i in n.input
                               if i.startswith("^") and i[1:] in input_nodes})

    def imported(*flat):
        input_map = dict(zip(inputs, flat))
        input_map.update({"^" + c: flat[input_nodes[c]] for c in ctrl_from_inputs})
        # (an eager tensor is captured by its first use in the trace, not by import_graph_def)
        input_map.update({k: tf.identity(v) for k, v in (tensor_map or {}).items()})
        outs = importer.import_graph_def(graph_def, input_map=input_map,
                                         return_elements=list(outputs), name="")
        return [tf.identity(o) for o in outs]
    fn = _keyword_function(imported, arg_names, input_specs, structured_outputs,
                           structured_input_signature)
    if keepalive is not None:
        fn._tftrt_keepalive = list(keepalive)  # pylint: disable=protected-access
        # ... and with the function's graph, as TF's own py_func keeps its callables: a
        # user's tf.function that called this one keeps that graph, so its engine nodes
        # still find their callbacks after the converter or loaded model is gone.
        graph = fn.graph
        if not hasattr(graph, "_py_funcs_used_in_graph"):
            graph._py_funcs_used_in_graph = []  # pylint: disable=protected-access
        graph._py_funcs_used_in_graph.extend(keepalive)  # pylint: disable=protected-access
    return fn


def signature_keys(structured_input_signature, arg_names) -> Dict[str, str]:
    """keyword -> the original signature's key for that input, where they differ: a TF2
    spec name that is no identifier ("x-a": TF makes the keyword "x_a"), a TF1 signature key
    that is none ("in-put/0", "2ids": the keyword is TF's sanitized name, graph_io's
    _input_arg_names). The saved signature's input keys (TF Serving's) come from them."""
    tf = _tf()
    kw = structured_input_signature[1] if structured_input_signature is not None else None
    if not isinstance(kw, dict):
        return {}
    from tftrt.graph_io import _sanitized
    out = {}
    for key, spec in kw.items():
        if not isinstance(spec, tf.TensorSpec):
            continue
        if key in arg_names:
            if spec.name and spec.name != key:
                out[key] = _original_key(key, spec.name)
        elif _sanitized(key) in arg_names:  # graph_io._input_arg_names' keyword
            out[_sanitized(key)] = key
        elif spec.name in arg_names:  # (the keyword of a model converted before)
            out[spec.name] = key
    return out


def _original_key(keyword: str, spec_name: str) -> str:
    """The signature key an input had, from its keyword and its loaded spec's name. A loaded
    signature's spec names are lower-cased ("Image" comes back as "image") and its keywords
    sanitized ("x-a" as "x_a"); the key keeps the keyword's letters and the name's other
    characters. Lower-casing an "Image" key broke every client that sent "Image" to the
    converted model (helper hunt, 2026-12-03)."""
    if len(keyword) != len(spec_name) or any(
            k != "_" and k.lower() != n.lower() for k, n in zip(keyword, spec_name)):
        return spec_name
    return "".join(n if k == "_" else k for k, n in zip(keyword, spec_name))


def _keyword_function(flat_fn, arg_names, input_specs, structured_outputs,
                      structured_input_signature):
    """A ConcreteFunction called with the original keyword arguments, computing ``flat_fn``
    (positional tensors in, list out) and packing its outputs like the original's."""
    tf = _tf()
    # The specs carry the original's names ("x-a" where the keyword is "x_a"): a saved
    # signature's input keys come from them, which TF Serving's clients use (they became
    # the keywords: helper hunt, 2026-12-02)
    named = signature_keys(structured_input_signature, arg_names)
    specs = [tf.TensorSpec(s.shape, s.dtype, name=named.get(n, n))
             for s, n in zip(input_specs, arg_names)]

    # the original outputs' static shapes: an output after a TF1 while_loop (control flow
    # v1) came back of unknown rank from the imported graph, and the saved signature said so
    # (helper hunt, 2026-12-02)
    shapes = [getattr(o, "shape", None) for o in tf.nest.flatten(structured_outputs)]

    def call(*args, **kwargs):
        flat = list(args) + [kwargs[n] for n in arg_names[len(args):]]
        outs = list(flat_fn(*flat))
        for k, (o, shape) in enumerate(zip(outs, shapes)):
            if shape is not None and hasattr(o, "set_shape"):
                try:
                    o.set_shape(shape)
                except ValueError:  # (never: the same graph's tensor) the output's own shape
                    pass
                if o.shape != shape:
                    # more specific than the original's: freezing pinned it (x[:, :v + 2]
                    # with v a variable: [None, 4] where the original said [None, None]).
                    # Relaxed, so that the signature stays the original's, as TF-TRT's did
                    # (signature hunt, s46)
                    outs[k] = tf.raw_ops.PlaceholderWithDefault(input=o, shape=shape)
        return tf.nest.pack_sequence_as(structured_outputs, outs)

    call.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in arg_names])
    call.__name__ = "tftrt_converted"
    # No automatic control dependencies: the GraphDef is imported as it is. TF would chain
    # its stateful ops (engine nodes, their If selects) in import order and make the outputs
    # wait for all of them, across the Switch / Merge of a lowered tf.cond too: an engine in
    # the branch not taken is dead, and a control edge from it made the other branch's
    # engines and the outputs dead (an empty tensor returned).
    fn = tf.function(call, input_signature=specs, autograph=False,
                     experimental_attributes={"_disable_acd": True}).get_concrete_function()
    if structured_input_signature is not None:
        # Report the original signature's keyword inputs, as TF-TRT did.
        fn.graph.structured_input_signature = structured_input_signature
    return fn


# ------------------------------------------------------------------------------------------------
# Whole-signature engines


def keyword_aliases(structured_input_signature, arg_names) -> Dict[str, str]:
    """The original signature's keys that are no keyword of the converted function -> its
    keyword (a TF1 signature's "in-put/0" -> "in_put_0"): the converted function, build()'s
    input_fn dicts and tftrt.load's signatures take them as native TF does."""
    return {key: arg for arg, key in signature_keys(structured_input_signature,
                                                    arg_names).items() if key not in arg_names
            and not key.isidentifier()}


def with_keywords(kwargs: dict, aliases: Dict[str, str]) -> dict:
    """``kwargs`` with the original keys of :func:`keyword_aliases` renamed."""
    return {aliases.get(k, k): v for k, v in kwargs.items()} if aliases else kwargs


def ambiguous_positional(arg_names, args) -> bool:
    """Whether a loaded signature's positional ``args`` could bind otherwise than the caller
    meant: any, unless the signature has one input (then there is one way)."""
    return bool(args) and len(arg_names) > 1


def keyword_only_message(arg_names, n_positional: int) -> str:
    return (f"a signature of a loaded model with several inputs takes keyword arguments "
            f"only, as tf.saved_model.load's signatures do: call it as "
            f"fn({', '.join(f'{n}=...' for n in arg_names)}); got {n_positional} positional "
            f"argument(s)")


class PortableForm:
    """Which function a graph calling a converted signature calls: the engine form
    (``native``), or the native form (``make()``: the segments as calls of their native
    functions, what save() writes) while tf.saved_model.save traces a user's tf.function
    that calls the signature (TF traces again for a save: its cache key then holds the
    save's variable policy). The engine nodes' EagerPyFunc callbacks exist only in this
    process: such a SavedModel failed in any other ("Could not find callback with
    key=tftrt_TRTEngineOp_...")."""

    def __init__(self, native, make: Optional[Callable[[], object]] = None):
        self._native, self._make, self._made = native, make, None
        self._lock = threading.Lock()

    def function(self):
        from tensorflow.python.saved_model import save_context
        if self._make is None or not save_context.in_save_context():
            return self._native
        with self._lock:
            if self._made is None:
                self._made = self._make()
        return self._made


class PortableSignature:
    """A converted graph signature (ConcreteFunction) whose graph calls take the native form
    while a SavedModel is written (:class:`PortableForm`). Everything else is the
    function's."""

    def __init__(self, fn, portable: Optional[Callable[[], object]] = None):
        self._fn = fn
        self._portable = PortableForm(fn, portable)

    def _function(self):
        return self._fn if _tf().executing_eagerly() else self._portable.function()

    def __call__(self, *args, **kwargs):
        return self._function()(*args, **kwargs)

    def __getattr__(self, name):
        # a copy made without __init__ (copy.copy) has no _fn: no recursion looking it up
        if name.startswith("__") or name in ("_fn", "_portable"):
            raise AttributeError(name)
        return getattr(self._fn, name)


class KeywordOnlySignature(PortableSignature):
    """A loaded graph signature (ConcreteFunction) that refuses positional arguments where it
    has several inputs, as a signature of ``tf.saved_model.load`` does: bound in sorted-name
    order, ``sig(b, a)`` of a signature declared ``(b, a)`` fed a to b silently. A single
    input may still come positionally (one way to bind it; tftrt.load always took it).
    Everything else is the function's."""

    def __init__(self, fn, arg_names, aliases: Optional[Dict[str, str]] = None,
                 portable: Optional[Callable[[], object]] = None):
        """``portable``: see :class:`PortableForm`."""
        super().__init__(fn, portable)
        self._arg_names = list(arg_names)
        self._aliases = keyword_aliases(getattr(fn, "structured_input_signature", None),
                                        self._arg_names) if aliases is None else aliases

    def __call__(self, *args, **kwargs):
        if ambiguous_positional(self._arg_names, args):
            raise TypeError(keyword_only_message(self._arg_names, len(args)))
        return self._function()(*args, **with_keywords(kwargs, self._aliases))


NO_GRADIENT = ("tftrt's engines have no gradient (nor had TF-TRT's TRTEngineOp): "
               "differentiate the original, unconverted model, or stop the gradient at the "
               "converted call's inputs (tf.stop_gradient)")


def _could_record() -> bool:
    from tensorflow.python.eager import record
    return record.could_possibly_record()


# The gradient of every converted call's tie (an IdentityN; see without_gradient), registered
# once: tf.custom_gradient in graph mode registered a new gradient function per call, in TF's
# process-wide registry, and that function's closure kept the calling tf.function's whole graph
# and the loaded model's function alive for good (~31 MB per tftrt.load of an 8 MB model
# that a tf.function called once; reload leak).
NO_GRADIENT_OP = "TftrtNoGradient"
_no_gradient_registered = False


def _refuse_gradient(*args, **kwargs):
    raise LookupError(NO_GRADIENT)


def _no_gradient_graph(op, *dys):
    """:data:`NO_GRADIENT_OP`'s gradient. tf.saved_model.save traces the gradient of every
    op with a gradient override into the SavedModel (``op`` None, ``dys`` the op's inputs):
    raising there failed the save of a user's tf.Module whose tf.function calls a converted
    model ("Error when tracing gradients for SavedModel"). In a save, the gradient is ops
    that fail with the reason when run (a reloaded model differentiated); anywhere else the
    reason is raised at once."""
    from tensorflow.python.saved_model import save_context
    if not save_context.in_save_context():
        raise LookupError(NO_GRADIENT)
    tf = _tf()
    refuse = tf.debugging.Assert(tf.constant(False), [tf.constant(NO_GRADIENT)])
    with tf.control_dependencies([refuse]):
        return [tf.zeros_like(d) for d in dys]


def _register_no_gradient() -> None:
    global _no_gradient_registered  # pylint: disable=global-statement
    if not _no_gradient_registered:
        from tensorflow.python.framework import ops
        try:
            ops.RegisterGradient(NO_GRADIENT_OP)(_no_gradient_graph)
        except KeyError:  # registered by an earlier import of this module (a reload)
            pass
        _no_gradient_registered = True


def without_gradient(tf, inputs, outputs):
    """``outputs`` tied to the float ``inputs`` by an op whose gradient raises
    :data:`NO_GRADIENT`. Eager calls run the engines from Python, which no tape records, so
    a gradient through a converted call was None, silently; inside a tf.function it was
    TF's KeyError for an engine node's branch function ("tftrt_engine_outputs_... cannot be
    found in the graph"; runtime hunt, 2026-12-04). Outputs a gradient never reaches are
    left alone, as TF leaves an op without a gradient alone.

    The tie is an IdentityN of the outputs (in a graph, of the outputs and the inputs),
    recorded on the active tapes with a backward function that raises (a tape inside or
    outside a tf.function) and, in a graph, carrying the gradient override
    :data:`NO_GRADIENT_OP` (tf.gradients, and a tf.function differentiated from outside,
    which builds its backward graph from the registry). None while a SavedModel is written:
    the call then traces the native form, which TF differentiates."""
    from tensorflow.python.eager import record
    floats = [x for x in inputs if tf.is_tensor(x) and x.dtype.is_floating]
    if not floats or not outputs:
        return outputs
    from tensorflow.python.saved_model import save_context
    if not tf.executing_eagerly() and save_context.in_save_context():
        # a user's SavedModel of a function calling this one holds the native form
        # (PortableForm), which TF differentiates itself; an override there made every
        # tf.saved_model.load of it register a gradient in TF's process-wide registry,
        # keeping that load's functions alive (+11 MB a load of a 1 MB model; leak hunt)
        return outputs
    outputs = list(outputs)
    if tf.executing_eagerly():
        tied = tf.identity_n(outputs)
    else:
        _register_no_gradient()
        with tf.compat.v1.get_default_graph().gradient_override_map(
                {"IdentityN": NO_GRADIENT_OP}):
            tied = tf.identity_n(outputs + floats)[:len(outputs)]
    tied = list(tied)
    record.record_operation("tftrt_engines", tied, floats, _refuse_gradient)
    return tied


class DirectSignature:
    """A signature called as a Python-level pipeline (tftrt/pipeline.py): engines straight
    from Python, the native ops between them as eager ops or small functions, without the
    engine nodes' EagerPyFunc dispatch.

    Behaves like the signature ConcreteFunction for calls (keyword or positional tensors in,
    the original structured outputs back); ``native`` is the graph function of the same
    signature (engine nodes and their native fallbacks), used inside a ``tf.function``.
    """

    def __init__(self, plan, arg_names, input_specs, structured_outputs, native,
                 keyword_only: bool = False, aliases: Optional[Dict[str, str]] = None,
                 portable: Optional[Callable[[], object]] = None):
        """``keyword_only``: positional arguments raise TypeError where there are several
        inputs, as a signature of ``tf.saved_model.load`` does (tftrt.load's signatures);
        convert()'s function takes them in ``arg_names`` order, as TF-TRT's did.
        ``portable``: makes the native-form function, see :class:`PortableForm`.
        ``aliases``: see :func:`keyword_aliases` (default: from ``native``'s signature)."""
        self._keyword_only = keyword_only
        self._plan = plan
        self._portable = PortableForm(native, portable)
        self._arg_names = list(arg_names)
        self._specs = list(input_specs)
        # (dtype, rank, dims with None for unknown) per input: checked without TensorShape
        self._checks = [(s.dtype, None if s.shape.rank is None else
                         [d if d is None else int(d) for d in s.shape.as_list()])
                        for s in self._specs]
        self.structured_outputs = structured_outputs
        # A flat dict of outputs (the usual signature) is rebuilt directly: tf.nest orders a
        # dict's values by sorted key.
        self._out_keys = (sorted(structured_outputs) if isinstance(structured_outputs, dict) and
                          all(not isinstance(v, (dict, list, tuple))
                              for v in structured_outputs.values()) else None)
        self.native = native
        self.structured_input_signature = native.structured_input_signature
        self._aliases = keyword_aliases(self.structured_input_signature, self._arg_names) \
            if aliases is None else aliases

    @property
    def graph(self):
        """The graph function's graph (engine nodes under TF-TRT's names)."""
        return self.native.graph

    def __getattr__(self, name):
        # Everything else a ConcreteFunction offers (inputs, outputs, function_def, ...) is
        # the graph function's.
        if name.startswith("__") or name in ("native", "_plan"):
            raise AttributeError(name)
        return getattr(self.native, name)

    def _tensor(self, tf, v, k):
        # What the signature ConcreteFunction of tf.saved_model.load accepts (TF 2.21): numpy
        # arrays of any numeric or bool dtype are cast to the signature's dtype (float64 to
        # float32, 1.5 to int32 1), python lists and scalars are converted to it (TypeError
        # when they cannot be), a tensor of another dtype is an InvalidArgumentError, and a
        # shape the signature does not allow is a TypeError.
        dtype, dims = self._checks[k]
        spec = self._specs[k]
        name = self._arg_names[k]
        if isinstance(v, tf.Variable):  # as the loaded signature takes it: its value
            v = v.value()
        if isinstance(v, tf.__internal__.CompositeTensor):
            # a RaggedTensor / SparseTensor passed tf.is_tensor and the shape check, failed in
            # the engine and then in the native segment's binding ("too many positional
            # arguments"; runtime hunt, 2026-12-04); the signature takes dense tensors
            raise TypeError(f"input {name!r} is a {type(v).__name__}; the signature expects a "
                            f"dense {spec.dtype.name} tensor of shape {spec.shape} (convert "
                            f"it, e.g. with .to_tensor() or tf.sparse.to_dense)")
        if tf.is_tensor(v):
            t = v
            if t.dtype != dtype:
                raise tf.errors.InvalidArgumentError(
                    None, None, f"input {name!r} is a {t.dtype.name} tensor; the signature "
                    f"expects {spec.dtype.name} {spec.shape} (cast it, or pass a numpy array)")
        else:
            if isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind in "biuf":
                v = np.asarray(v).astype(dtype.as_numpy_dtype, copy=False)
            try:
                t = tf.convert_to_tensor(v, dtype=dtype)
            except (TypeError, ValueError) as e:
                raise TypeError(f"input {name!r} cannot be converted to the signature's "
                                f"{spec.dtype.name} {spec.shape}: {e}") from None
        ok = dims is None
        if not ok:
            shape = t.shape.as_list() if t.shape.rank is not None else None
            ok = shape is not None and len(shape) == len(dims) and all(
                d is None or d == s for d, s in zip(dims, shape))
        if not ok:
            raise TypeError(f"input {name!r} has dtype {t.dtype.name} and shape {t.shape}; "
                            f"the signature expects {spec.dtype.name} {spec.shape}")
        return t

    def _symbolic(self, tf, v, k):
        """Input ``k`` inside a tf.function, held to the signature's shape as its
        ConcreteFunction would hold it: a tf.function that relaxes its shapes
        (reduce_retracing) passes a tensor of unknown rank, which the graph function takes,
        and a wrong rank then reached the native segments (where oneDNN's Conv2D kernel
        aborts the process on a CHECK instead of raising). ensure_shape raises at trace time
        for a shape that cannot fit and InvalidArgumentError at run time for one that does
        not."""
        spec = self._specs[k]
        if spec.shape.rank is None:
            return v
        t = v if tf.is_tensor(v) else tf.convert_to_tensor(v, dtype=spec.dtype)
        try:
            return tf.ensure_shape(t, spec.shape)
        except ValueError as e:
            raise TypeError(f"input {self._arg_names[k]!r} has dtype {t.dtype.name} and shape "
                            f"{t.shape}; the signature expects {spec.dtype.name} "
                            f"{spec.shape}") from e

    def __call__(self, *args, **kwargs):
        tf = _tf()
        kwargs = with_keywords(kwargs, self._aliases)
        if self._keyword_only and ambiguous_positional(self._arg_names, args):
            raise TypeError(keyword_only_message(self._arg_names, len(args)))
        if len(args) + len(kwargs) != len(self._arg_names):
            raise TypeError(f"expected inputs {self._arg_names}; got {len(args)} positional "
                            f"and {sorted(kwargs)}")
        try:
            flat = list(args) + [kwargs[n] for n in self._arg_names[len(args):]]
        except KeyError:
            raise TypeError(f"expected inputs {self._arg_names}; got {len(args)} positional "
                            f"and {sorted(kwargs)}") from None
        if not tf.executing_eagerly():  # inside a tf.function: the graph function
            ins = [self._symbolic(tf, v, k) for k, v in enumerate(flat)]
            out = self._portable.function()(*ins[:len(args)],
                                         **dict(zip(self._arg_names[len(args):],
                                                    ins[len(args):])))
            flat_out = without_gradient(tf, ins, tf.nest.flatten(out, expand_composites=True))
            return tf.nest.pack_sequence_as(out, flat_out, expand_composites=True)
        tensors = [self._tensor(tf, v, k) for k, v in enumerate(flat)]
        flat_out = [o if isinstance(o, tf.Tensor) else tf.convert_to_tensor(o)
                    for o in self._plan.run(tensors)]
        if _could_record():
            flat_out = without_gradient(tf, tensors, flat_out)
        if self._out_keys is not None:
            return dict(zip(self._out_keys, flat_out))
        return tf.nest.pack_sequence_as(self.structured_outputs, flat_out)
