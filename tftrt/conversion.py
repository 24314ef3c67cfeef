"""The conversion pipeline shared by the V2 and TF1 converters and by tftrt.load.

GraphInfo -> segments -> segment networks (ONNX) -> engine ops + native segment functions ->
converted graph (engine form) -> flat ConcreteFunction.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from tftrt import calibration, rewrite
from tftrt.env import env_bool
from tftrt.engine_op import (EngineSpec, TRTEngineOp, resolve_backend,
                             stop_cached_profile_builds)
from tftrt.graph_io import GraphInfo, split_tensor_name
from tftrt.lowering import ConversionError, lower_segment
from tftrt.segment import (Segment, SegmentationResult, native_xla_calls, segment_graph,
                           xla_calls)

log = logging.getLogger("tftrt.convert")


@dataclasses.dataclass
class ConversionResult:
    segmentation: SegmentationResult
    engine_ops: Dict[str, TRTEngineOp]
    native_fdefs: Dict[str, object]
    keepalive: list
    graph_def: object               # engine form (engine nodes with their native fallbacks)
    outputs: List[str]
    native_graph_def: object = None  # native form (what save() writes; the pipeline's plan)
    weights: dict = dataclasses.field(default_factory=dict)  # bind_engine_nodes' weights


class NativeSegmentCaller:
    """Calls the native segment function ``fdef`` (an engine op's fallback).

    The ConcreteFunction is made on the first call: making it imports the whole segment,
    weights included (about 10 s for a BERT-base-sized encoder, whose frozen segment is
    340 MB), which every convert() and tftrt.load() paid for every engine although most
    engines never fall back."""

    def __init__(self, fdef, input_specs, output_dtypes):
        self.fdef, self.input_specs, self.output_dtypes = fdef, input_specs, output_dtypes
        self._fn = None
        self._lock = threading.Lock()

    @property
    def function(self):
        if self._fn is None:
            with self._lock:
                if self._fn is None:
                    self._fn = rewrite.function_def_caller(self.fdef, self.input_specs,
                                                           self.output_dtypes)
        return self._fn

    def __call__(self, *inputs):
        """The segment's outputs (a list) for ``inputs``. Through the function's flat
        signature where every input is a tensor of its placeholder's dtype: a positional call
        of this pruned function first tried its structured signature, whose TypeError
        formatted every input tensor (numpy's array2string) before TF retried the flat one:
        0.3-5.7 ms per fallback call, a CPU-only machine's 20-engine model 44x native TF
        (scaling hunt, 2026-12-04). Anything else takes the checked call, and its errors."""
        fn = self.function
        flat = getattr(fn, "_call_flat", None)
        if callable(flat) and len(inputs) == len(self.input_specs) and all(
                getattr(x, "dtype", None) is not None and hasattr(x, "_id") and
                x.dtype.as_numpy_dtype == dt for x, (dt, _) in zip(inputs, self.input_specs)):
            out = flat(list(inputs), fn.captured_inputs)
            return list(out) if isinstance(out, (list, tuple)) else [out]
        return fn(*inputs)


def engine_op_from_spec(spec: EngineSpec, fdef) -> TRTEngineOp:
    """An engine op whose native fallback calls the native segment function ``fdef`` (INT8 /
    FP8: a calibration.QuantizedEngineOp, which builds with its network's ranges)."""
    from tftrt.calibration import engine_op_class
    native = NativeSegmentCaller(
        fdef, [(np.dtype(d), s) for d, s in zip(spec.input_dtypes, spec.input_shapes)],
        [np.dtype(d) for d in spec.output_dtypes])
    return engine_op_class(spec)(spec, native)


def restore_plans(op: TRTEngineOp, plans: Iterable[Tuple[dict, Callable[[], bytes]]]) -> None:
    """Puts saved engines into ``op``'s cache without rebuilding.

    Args:
      plans: (meta, read) pairs: meta holds "input_shapes" and "backend"; read() returns the
        plan bytes (called only for plans this process can use).
    A plan for another backend is skipped with a log line. One that cannot be used (PlanError:
    corrupt, other GPU or version, fields missing, or built for another engine or segment
    network than ``op``'s), a malformed meta or an unreadable file is skipped with a warning;
    the op then builds at run time, with the profiles the meta names
    (``TRTEngineOp.remember_profiles``) for shapes inside them.
    """
    from tftrt.engine import PlanError, deserialize_engine
    from tftrt.engine.plan import network_sha256
    try:
        backend = resolve_backend()
    except ValueError:
        return  # a bad TFTRT_BACKEND is reported clearly by the first call
    if backend == "native":
        return
    digest = None
    for meta, read in plans:
        try:
            key = tuple(tuple(int(d) for d in s) for s in meta["input_shapes"])
            built_for = meta.get("backend")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            log.warning("%s: a saved engine's description is malformed (%s: %s); %s",
                        op.name, type(err).__name__, err, _instead(op))
            continue
        profiles = meta.get("profiles") if isinstance(meta, dict) else None
        if profiles is not None:
            op.remember_profiles(profiles)
        if built_for and built_for != backend:
            log.info("%s: a saved engine is for backend %s, running on %s; %s",
                     op.name, built_for, backend, _instead(op))
            op.saved_engine_unusable(key, f"built for backend {built_for}, running on "
                                          f"{backend}", profiles)
            continue
        if digest is None:
            digest = network_sha256(op.spec.onnx_bytes)
        try:
            engine = deserialize_engine(read(), backend=backend, engine_name=op.name,
                                        network_digest=digest)
        except PlanError as err:
            log.warning("%s: a saved engine cannot be used here (%s); %s", op.name, err,
                        _instead(op))
            op.saved_engine_unusable(key, str(err), profiles)
            continue
        except OSError as err:
            log.warning("%s: a saved engine cannot be read (%s); %s", op.name, err,
                        _instead(op))
            op.saved_engine_unusable(key, f"unreadable: {err}", profiles)
            continue
        op.add_engine(key, engine)
    op.build_loaded_ladders()


def _instead(op: TRTEngineOp) -> str:
    """What happens to the shapes of a saved engine that is not used: it said "it will
    rebuild" under allow_build_at_runtime=False too, where they run natively (helper hunt,
    2026-12-04)."""
    if op.spec.allow_build_at_runtime:
        return "it will rebuild"
    return ("its input shapes run the native segment (allow_build_at_runtime=False: no "
            "engine is built at run time)")


def register_engine_ops(ops: Dict[str, TRTEngineOp]):
    """Registers every op as an EagerPyFunc callable: ({name: token}, objects to keep alive)."""
    tokens, keepalive = {}, []
    for name, op in ops.items():
        token, wrapper = register_engine_op(op)
        tokens[name] = token
        keepalive += [op, wrapper]
    return tokens, keepalive


def engine_call_node(name: str, op: TRTEngineOp, token: str):
    return rewrite.engine_node(name, token, op.spec.input_dtypes, op.spec.output_dtypes)


def bind_engine_nodes(graph_def, ops: Dict[str, TRTEngineOp], inline_fallback: bool = False,
                      weights_as_inputs: bool = False):
    """A copy of ``graph_def`` (native form) whose native-segment calls named in ``ops`` are
    engine nodes, each followed by its native fallback (:func:`rewrite.with_native_fallback`,
    which takes ``inline_fallback`` and ``weights_as_inputs``).

    Returns (graph_def, objects to keep alive while the graph is used, {weight Placeholder
    tensor name: an eager tensor holding its value, on the engine node's device}: what a TF2
    function importing the graph captures in their place; empty without
    ``weights_as_inputs``).
    """
    tokens, keepalive = register_engine_ops(ops)
    fdefs = {f.signature.name: f for f in graph_def.library.function}
    natives = {}
    device = engine_device()
    out = type(graph_def)()
    out.versions.CopyFrom(graph_def.versions)
    for node in graph_def.node:
        if node.name in ops and rewrite.ENGINE_ATTR in node.attr:
            new = engine_call_node(node.name, ops[node.name], tokens[node.name])
            spec = ops[node.name].spec
            if all(d in EAGER_PYFUNC_GPU_DTYPES for d in spec.input_dtypes + spec.output_dtypes):
                new.device = device
            new.input.extend(node.input)
            out.node.add().CopyFrom(new)
            natives[node.name] = fdefs[node.attr["f"].func.name]
        else:
            out.node.add().CopyFrom(node)
    # Only the library functions the graph still calls (the native segments are called by
    # the fallback branches that with_native_fallback adds).
    used = rewrite.called_functions(out.node, graph_def.library)
    out.library.gradient.extend(graph_def.library.gradient)
    for f in graph_def.library.function:
        if f.signature.name in used:
            out.library.function.add().CopyFrom(f)
    shapes = {name: ops[name].spec.output_shapes for name in natives}
    out, weights = rewrite.with_native_fallback(out, natives, shapes, inline_fallback,
                                                weights_as_inputs)
    return out, keepalive, _weight_tensors(out, weights)


def _weight_tensors(graph_def, weights) -> dict:
    """{Placeholder tensor name: eager tensor of its TensorProto} for
    :func:`bind_engine_nodes`. Each is put on its Placeholder's device (the engine node's)
    or, where that has none, where TensorFlow places an op (a GPU if it has one), as it
    places the fallback's If: a weight held anywhere else crossed to the If's device on
    every call, fallback or not."""
    if not weights:
        return {}
    import contextlib
    tf = rewrite._tf()  # pylint: disable=protected-access
    devices = {n.name: n.device for n in graph_def.node if n.op == "Placeholder"}
    tensors = {}
    with tf.init_scope():
        for name, proto in weights.items():
            device = devices.get(split_tensor_name(name)[0])
            with tf.device(device) if device else contextlib.nullcontext():
                tensors[name] = tf.identity(tf.constant(_proto_array(proto)))
    return tensors


def _proto_array(proto) -> np.ndarray:
    """``proto``'s value as a read-only array over its ``tensor_content`` bytes (one copy,
    which tf.constant copies once more); tf.make_ndarray copies those bytes again (every
    weight twice over while the signature function was made: helper hunt, memory). A
    TensorProto without ``tensor_content`` goes through tf.make_ndarray."""
    tf = rewrite._tf()  # pylint: disable=protected-access
    if not proto.tensor_content or proto.dtype in (tf.string.as_datatype_enum,
                                                   tf.resource.as_datatype_enum,
                                                   tf.variant.as_datatype_enum):
        return tf.make_ndarray(proto)
    shape = [d.size for d in proto.tensor_shape.dim]
    return np.frombuffer(proto.tensor_content,
                         dtype=tf.as_dtype(proto.dtype).as_numpy_dtype).reshape(shape)


# The dtypes TF's GPU kernel of EagerPyFunc takes (tensorflow/python/lib/core/py_func.cc): no
# int32 (TF keeps int32 in host memory on GPUs) and no strings. An engine with an int32 input
# or output stays where TF's placer puts it (the CPU), its int32 tensors being on the host.
EAGER_PYFUNC_GPU_DTYPES = frozenset({
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128", "bool", "int8",
    "uint8", "int16", "uint16", "uint32", "int64", "uint64"})


def engine_device() -> str:
    """Where engine nodes are placed: the GPU when engines run on CuPy and TensorFlow has a
    GPU, so TF hands them its GPU tensors (zero-copy through DLPack) and runs the native ops
    between engines on its GPU kernels; else no device (TF's placer decides). Unplaced,
    TF put the EagerPyFunc on the CPU and every float tensor crossed GPU -> host -> GPU.
    Env TFTRT_ENGINE_DEVICE overrides: a TF device name, or "none" (the placer decides)."""
    import os
    forced = os.environ.get("TFTRT_ENGINE_DEVICE", "auto").strip()
    if forced.lower() == "none":
        return ""
    if forced and forced.lower() != "auto":
        import tensorflow as tf
        try:
            tf.DeviceSpec.from_string(forced)
        except ValueError as e:
            raise ValueError(f"TFTRT_ENGINE_DEVICE={forced!r} is not a TensorFlow device name "
                             f"({e}); give one like '/device:GPU:0' or '/GPU:1', 'none' (TF's "
                             f"placer decides) or 'auto' (the default)") from None
        _pin_cupy_device(forced)
        return forced
    try:
        backend = resolve_backend()
    except ValueError:
        return ""
    if backend != "cupy":
        return ""
    from tftrt.tensor_bridge import _tf_has_gpu
    device = "/device:GPU:0" if _tf_has_gpu() else ""
    _pin_cupy_device(device)
    return device


def _pin_cupy_device(device: str) -> None:
    """Pins the CuPy backend to the CUDA device of TF's GPU ``device`` (where the engine nodes
    are placed, so where TF hands them their tensors): engines are then built and loaded
    there whatever device the calling thread has current (CupyBackend.pin_device). TF's
    logical GPU k is the k-th of its visible physical GPUs; their names carry the CUDA
    ordinal. Nothing for a device that is not a GPU, or when CuPy is not the backend."""
    if not device:
        return
    try:
        import tensorflow as tf
        spec = tf.DeviceSpec.from_string(device)
        if (spec.device_type or "").upper() != "GPU" or resolve_backend() != "cupy":
            return
        k = int(spec.device_index or 0)
        visible = tf.config.get_visible_devices("GPU")
        ordinal = int(visible[k].name.rsplit(":", 1)[-1]) if k < len(visible) else k
        from tftrt.engine.backends import get_backend
        get_backend("cupy").pin_device(ordinal)
    except Exception as e:  # noqa: BLE001 -- engines then follow the thread's device
        log.debug("the CuPy backend is not pinned to %s: %s: %s", device, type(e).__name__, e)


_KEPT_THREADS: set = set()


def keep_thread_state() -> None:
    """Keeps the calling thread's Python thread state alive after the current call.

    TensorFlow runs an EagerPyFunc on one of its own threads and takes the interpreter with
    ``PyGILState_Ensure``, which makes a thread state for the call and deletes it at the
    matching ``PyGILState_Release``: everything thread-local (CuPy's current device, stream
    and library handles, the backend's cuDNN handle, TF's eager thread data) was made again
    on every engine call. One more ``PyGILState_Ensure``, never released, per such thread
    keeps its state for the life of the process: one per TF thread that ever ran an engine.
    Threads Python started keep theirs anyway and are left alone."""
    ident = threading.get_ident()
    if ident in _KEPT_THREADS:
        return
    _KEPT_THREADS.add(ident)
    if isinstance(threading.current_thread(), threading._DummyThread):  # pylint: disable=protected-access
        import ctypes
        ctypes.pythonapi.PyGILState_Ensure()


class EngineCallback:
    """What an engine node's EagerPyFunc calls: [status, *outputs].

    Status rewrite.STATUS_RAN: the engine ran and the outputs are its own.
    rewrite.STATUS_NATIVE: the native segment must run (the select node after the engine
    node runs it); the outputs are empty placeholders of the right dtypes. Both are empty
    tensors told apart by their rank (rewrite.STATUS_DTYPE says why).
    """

    def __init__(self, op: TRTEngineOp):
        self.op = op
        self._ran = rewrite.STATUS_RAN
        self._ran_on: Dict[str, object] = {}  # {device: STATUS_RAN as a tensor there}
        self._fallback = [rewrite.STATUS_NATIVE] + [np.zeros((0,), np.dtype(d))
                                                    for d in op.spec.output_dtypes]

    def __call__(self, *inputs):
        keep_thread_state()
        outs = self.op.try_engine(inputs)
        if outs is None:
            return self._fallback
        return [self._status_ran(inputs)] + list(outs)

    def _status_ran(self, inputs):
        """STATUS_RAN as a tensor on the engine node's device (its float inputs' device),
        made once: returned as numpy, TF's EagerFunc made a tensor of it and copied it to
        that device on every call. Without a float input: numpy, as before."""
        device = next((t.backing_device for t in inputs
                       if getattr(getattr(t, "dtype", None), "is_floating", False)), None)
        if device is None:
            return self._ran
        status = self._ran_on.get(device)
        if status is None:
            import tensorflow as tf
            with tf.device(device):
                status = tf.identity(self._ran)
            self._ran_on[device] = status
        return status


def register_engine_op(op: TRTEngineOp) -> tuple:
    """Registers ``op`` as an EagerPyFunc callable; returns (token, wrapper to keep alive).

    The token is tftrt's own (``tftrt_<op name>_<random>``), never TensorFlow's
    ``pyfunc_<N>``: a model's own ``tf.py_function`` nodes keep ``pyfunc_<N>`` tokens in
    their saved graph, and one of ours under the same token would answer their calls.
    """
    import uuid
    import tensorflow as tf
    from tensorflow.python.ops import script_ops
    dtypes = [rewrite.STATUS_DTYPE] + [np.dtype(d) for d in op.spec.output_dtypes]
    wrapper = script_ops.EagerFunc(EngineCallback(op), [tf.as_dtype(d) for d in dtypes], False)
    token = f"tftrt_{op.name}_{uuid.uuid4().hex}"
    registry = script_ops._py_funcs  # pylint: disable=protected-access
    registry._funcs[token] = wrapper  # pylint: disable=protected-access
    # the wrapper lives as long as the graph that calls the engine: with it goes the work
    # queued for the op's profile engines
    weakref.finalize(wrapper, stop_cached_profile_builds, op.cache)
    return token, wrapper


def segment_and_lower(info: GraphInfo, params, nodes_denylist: Sequence[str] = ()):
    """Segments ``info`` and lowers every segment.

    A node whose lowering fails although it validated (e.g. a Reshape whose target shape
    needs a tensor the segment does not compute) is kept native and the graph is segmented
    again, so one node never costs a whole engine. So is an inlined XLA-compiled function
    whose nodes do not all go into engines, kept native whole (segment.py says why).
    Returns (segmentation, {name: network}).
    """
    deny = list(nodes_denylist)
    failures: Dict[str, str] = {}
    xla_native: set = set()
    # every round but the last denies a node more or keeps an XLA call more native, so the
    # rounds are bounded by those counts; a fixed bound of 20 rounds made
    # convert() fail on a graph with 20 such nodes (scale hunt, 2026-12-07)
    rounds = len(info.nodes) + len(xla_calls(info)) + 1
    for _ in range(rounds):
        seg = segment_graph(info, params.minimum_segment_size, nodes_denylist=deny,
                            xla_native=xla_native)
        nets, retry = {}, False
        for s in list(seg.segments):
            try:
                nets[s.name] = lower_segment(info, s.name, s.nodes, s.inputs, s.outputs)
            except ConversionError as e:
                if e.node is not None and e.node not in deny:
                    # the other segments still lower this round: each one's failing node is
                    # denied at once (one node a round before)
                    log.info("%s (%s) stays native: %s", e.node, info.nodes[e.node].op, e)
                    failures[e.node] = f"lowering failed: {e}"
                    deny.append(e.node)
                    retry = True
                    continue
                log.warning("%s stays native: %s", s.name, e)
                for n in s.nodes:
                    seg.dropped[n] = f"lowering failed: {e}"
                seg.segments.remove(s)
        if retry:
            continue
        in_engine = {n for s in seg.segments for n in s.nodes}
        split = {c: nodes for c, nodes in xla_calls(info).items()
                 if c not in xla_native and not in_engine.issuperset(nodes)}
        if split:
            log.info("XLA-compiled function call(s) %s stay native whole", sorted(split))
            xla_native.update(split)
            for nodes in split.values():
                for n in nodes:
                    if n in seg.dropped:  # left out for its segment's size, say: the reason
                        failures.setdefault(n, seg.dropped[n])
            continue
        seg.rejected.update(failures)
        return seg, nets
    raise RuntimeError(f"segmentation did not settle after {rounds} rounds (lowering "
                       f"failures, XLA-compiled calls kept native)")


def _shared_consts(info: GraphInfo, segments: Sequence[Segment]) -> Dict[str, List[str]]:
    """{segment: the Consts outside it that its nodes read and that only engines read}: a
    Const read by several segments stays outside each (segment._assign_consts moves a Const
    read by one) and is copied into each network; no native node reads it, so the reports
    count it converted, under each engine that holds a copy. It was counted in none and as
    not converted, while no list of native ops named it (helper hunt, 2026-12-03)."""
    from tftrt.graph_io import split_tensor_name
    members = {n for s in segments for n in list(s.nodes) + list(s.consts)}
    readers: Dict[str, set] = {}
    for tensor, uses in info.consumers().items():
        src = tensor[1:] if tensor.startswith("^") else split_tensor_name(tensor)[0]
        readers.setdefault(src, set()).update(n for n, _ in uses)
    kept = {split_tensor_name(t)[0] for t in info.outputs}
    out = {}
    for s in segments:
        found: List[str] = []
        for n in s.nodes:
            for t in info.data_inputs(info.nodes[n]):
                src = split_tensor_name(t)[0]
                node = info.nodes.get(src)
                if (node is None or node.op != "Const" or src in members or src in found
                        or src in kept or not readers.get(src, set()) <= members):
                    continue
                found.append(src)
        out[s.name] = found
    return out


def _with_consts(histogram: Dict[str, int], extra: int) -> Dict[str, int]:
    if not extra:
        return histogram
    h = dict(histogram)
    h["Const"] = h.get("Const", 0) + extra
    return dict(sorted(h.items(), key=lambda kv: (-kv[1], kv[0])))


def convert_graph(info: GraphInfo, params, nodes_denylist: Sequence[str] = ()) -> ConversionResult:
    """Segments, lowers and rewrites ``info``; returns the engine-form flat function."""
    # graph_table's range_given=False warnings: once per conversion, not once per process (a
    # model converted after another with the same op name and range was never warned)
    calibration.forget_warnings()
    seg, nets = segment_and_lower(info, params, nodes_denylist)
    # The converters read the weights as numpy arrays; the networks hold them now, and what
    # follows reads constants one at a time (the cache held a copy of every weight through
    # the rest of convert(): helper hunt, memory).
    info.drop_const_cache()
    kept: List[Segment] = []
    engine_ops: Dict[str, TRTEngineOp] = {}
    fdefs = {}
    shared = _shared_consts(info, seg.segments)
    for s in seg.segments:
        # each network goes once it is serialized (its ModelProto and bytes were both held)
        net = nets.pop(s.name)
        # INT8 / FP8: the graph's quantization ranges go into the network (or it runs FP16)
        onnx_bytes, precision = calibration.segment_network(net.model, params, s.name)
        del net
        fdef = rewrite.native_segment_function_def(info, s)
        in_dtypes = [info.dtypes[t] for t in s.inputs]
        out_dtypes = [info.dtypes[t] for t in s.outputs]
        spec = EngineSpec(
            name=s.name, onnx_bytes=onnx_bytes,
            input_tensors=list(s.inputs), output_tensors=list(s.outputs),
            input_dtypes=[d.name for d in in_dtypes], output_dtypes=[d.name for d in out_dtypes],
            input_shapes=[_shape_json(info.shapes.get(t)) for t in s.inputs],
            output_shapes=[_shape_json(info.shapes.get(t)) for t in s.outputs],
            op_histogram=_with_consts(s.op_histogram(info), len(shared[s.name])),
            num_nodes=len(s.nodes) + len(s.consts) + len(shared[s.name]),
            precision_mode=precision,
            maximum_cached_engines=params.maximum_cached_engines,
            max_workspace_size_bytes=params.max_workspace_size_bytes,
            allow_build_at_runtime=params.allow_build_at_runtime,
            member_nodes=list(s.nodes) + list(s.consts) + shared[s.name])
        engine_ops[s.name] = engine_op_from_spec(spec, fdef)
        fdefs[s.name] = fdef
        kept.append(s)
    seg.segments = kept
    native_gd, outputs = native_form_graph_def(info, kept, engine_ops, fdefs)
    _share_library_functions(native_gd, fdefs, engine_ops)
    gd, keepalive, weights = bind_engine_nodes(
        native_gd, {s.name: engine_ops[s.name] for s in kept}, weights_as_inputs=True)
    return ConversionResult(seg, engine_ops, fdefs, keepalive, gd, outputs, native_gd, weights)


def _share_library_functions(graph_def, fdefs: Dict[str, object],
                              engine_ops: Dict[str, TRTEngineOp]) -> None:
    """Points ``fdefs`` and the engine ops' native fallbacks at the native segment functions
    of ``graph_def``'s library (the native form, which the conversion keeps) instead of their
    own copies: the native form and the converter held every native segment's weights twice
    (helper hunt, memory). Neither is changed after conversion."""
    library = {f.signature.name: f for f in graph_def.library.function}
    for name, fdef in list(fdefs.items()):
        same = library.get(fdef.signature.name)
        if same is None:
            continue
        fdefs[name] = same
        native = getattr(engine_ops.get(name), "native_fn", None)
        if isinstance(native, NativeSegmentCaller) and native.fdef is fdef:
            native.fdef = same


def native_form_graph_def(info: GraphInfo, segments: Sequence[Segment],
                          engine_ops: Dict[str, TRTEngineOp], fdefs: Dict[str, object]):
    """The converted graph with native segment calls (what save() writes). The inlined
    XLA-compiled functions that no engine took are calls again (:func:`xla_call_node`)."""
    xla = {s.name: s for s in native_xla_calls(info, segments)}
    xla_fdefs = {name: xla_function_def(info, s) for name, s in xla.items()}

    def make(s: Segment):
        if s.name in xla:
            return xla_call_node(info, s, xla_fdefs[s.name])
        spec = engine_ops[s.name].spec
        return rewrite.native_call_node(s.name, fdefs[s.name].signature.name,
                                        spec.input_dtypes, spec.output_dtypes, fdefs[s.name])
    return rewrite.replace_segments(
        info, list(segments) + list(xla.values()), make,
        library=[fdefs[s.name] for s in segments] + list(xla_fdefs.values()))


def with_xla_calls(info: GraphInfo):
    """(GraphDef, {tensor: its name there}) of ``info``'s graph with every inlined XLA-compiled
    call a call again (:func:`xla_call_node`), for running the whole graph natively: TF's own
    kernels may lack what such a call holds (a grouped Conv3D). A tensor of a call's nodes
    that leaves the call maps to the call's output; one that does not is not in the map."""
    xla = native_xla_calls(info, [])
    if not xla:
        return info.graph_def, None
    fdefs = {s.name: xla_function_def(info, s) for s in xla}
    gd, _ = rewrite.replace_segments(
        info, xla, lambda s: xla_call_node(info, s, fdefs[s.name]),
        library=list(fdefs.values()))
    inside = {n for s in xla for n in list(s.nodes) + list(s.consts)}
    names = {t: t for t in info.dtypes if t.split(":")[0] not in inside}
    for s in xla:
        names.update({t: f"{s.name}:{j}" for j, t in enumerate(s.outputs)})
    return gd, names


def xla_function_def(info: GraphInfo, s: Segment):
    """The FunctionDef ``tftrt_xla_call_<digest>`` of an inlined XLA-compiled call's nodes,
    marked as TensorFlow marks a ``jit_compile=True`` function's (``_XlaMustCompile``,
    ``_noinline``), so TensorFlow compiles it with XLA again."""
    import hashlib
    # marked by native_segment_function_def: the call's own nodes carry XLA_CALL_ATTR
    fdef = rewrite.native_segment_function_def(info, s)
    fdef.signature.name = ""
    digest = hashlib.sha1(fdef.SerializeToString(deterministic=True)).hexdigest()[:10]
    fdef.signature.name = f"tftrt_xla_call_{digest}"
    return fdef


def xla_call_node(info: GraphInfo, s: Segment, fdef):
    """The StatefulPartitionedCall of ``fdef`` (:func:`xla_function_def`) that stands for the
    XLA call ``s``, with ``_XlaMustCompile`` as TensorFlow makes the call of a
    ``jit_compile=True`` function (its inputs are filled by rewrite.replace_segments)."""
    node = rewrite.native_call_node(s.name, fdef.signature.name,
                                    [info.dtypes[t] for t in s.inputs],
                                    [info.dtypes[t] for t in s.outputs], fdef)
    del node.attr[rewrite.ENGINE_ATTR]  # native code, no engine
    return node


def make_signature_function(sig, result: ConversionResult):
    """The engine-form graph as a function called (and saved) like the original signature.

    Its own graph holds the engine nodes under TF-TRT's names (``TRTEngineOp_000_000``), so
    code that walks ``fn.graph.as_graph_def().node`` finds them as it did with TF-TRT."""
    info = sig.info
    fn = rewrite.graph_signature_function(
        result.graph_def, info.inputs, result.outputs, sig.input_names, sig.frozen_func.inputs,
        sig.func.structured_outputs, sig.func.structured_input_signature, result.keepalive,
        tensor_map=result.weights)
    if result.native_graph_def is None or not result.engine_ops:
        return fn

    def portable():  # the native form, for a user's SavedModel of a function calling this
        return rewrite.graph_signature_function(
            result.native_graph_def, info.inputs, result.outputs, sig.input_names,
            sig.frozen_func.inputs, sig.func.structured_outputs,
            sig.func.structured_input_signature)
    if not env_bool("TFTRT_DIRECT_CALL", True):
        return rewrite.PortableSignature(fn, portable)
    # Eager calls run as a pipeline (pipeline.py), as tftrt.load's signatures do: an engine
    # node costs ~1.2 ms of EagerPyFunc dispatch; fn still serves graph-mode calls and .graph.
    from tftrt import pipeline
    tf = rewrite._tf()  # pylint: disable=protected-access
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in sig.frozen_func.inputs]
    plan = pipeline.plan_signature(result.native_graph_def, info.inputs, result.outputs,
                                   result.engine_ops, [s.dtype for s in specs])
    if plan is None:
        return rewrite.PortableSignature(fn, portable)
    return rewrite.DirectSignature(plan, sig.input_names, specs, sig.func.structured_outputs,
                                   fn, portable=portable)


def _shape_json(shape):
    return None if shape is None else [None if d is None else int(d) for d in shape]
