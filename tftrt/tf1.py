"""TF-TRT's TF1 API: ``TrtGraphConverter`` for frozen GraphDefs and TF1 SavedModels.

    converter = trt.TrtGraphConverter(input_graph_def=frozen, nodes_denylist=["logits"])
    converted_graph_def = converter.convert()

The returned GraphDef keeps every engine as a call of its native segment carrying the engine
(spec, segment network and, in static mode, the serialized engine built during convert()), so
plain TensorFlow imports and runs it; after ``import tftrt`` (or ``tftrt.activation.activate()``)
``tf.graph_util.import_graph_def`` binds the engines.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Optional, Sequence

from tftrt import activation, conversion, graph_io, progress, rewrite
from tftrt.trt_convert import (DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES, OneAtATime,
                               TrtConversionParams, TrtPrecisionMode, _check_conversion_params,
                               as_flag, is_int)

log = logging.getLogger("tftrt.convert")

STATIC_SHAPE_WARNING = ("Input shapes must be fully defined when in static mode. Please try "
                        "is_dynamic_op=True.")


class TrtGraphConverter:
    """TF1 converter (TF-TRT's signature and defaults).

    Args:
      input_saved_model_dir / input_saved_model_tags / input_saved_model_signature_key: a
        SavedModel to convert (exactly one of this and input_graph_def).
      input_graph_def: a frozen GraphDef to convert.
      nodes_denylist: node names that must stay native (the outputs you will fetch);
        ``nodes_blacklist`` is accepted as the old name.
      max_batch_size: static mode builds engines for this batch, and each serves every batch
        up to it (TF-TRT's implicit batch: one engine, its tactics, no rebuild); a larger
        batch runs natively.
      is_dynamic_op: False (static mode) builds engines in convert() for fully defined shapes.
    """

    def __init__(self, input_saved_model_dir=None, input_saved_model_tags=None,
                 input_saved_model_signature_key=None, input_graph_def=None,
                 nodes_denylist=None, max_batch_size=1,
                 max_workspace_size_bytes=DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES,
                 precision_mode=TrtPrecisionMode.FP32, minimum_segment_size=3,
                 is_dynamic_op=False, maximum_cached_engines=1, use_calibration=True, *,
                 nodes_blacklist=None, session_config=None, use_function_backup=None):
        if input_graph_def is not None and input_saved_model_dir is not None:
            raise ValueError("Can only specify one of input_graph_def and input_saved_model_dir")
        if input_graph_def is None and input_saved_model_dir is None:
            raise ValueError("Must specify one of input_graph_def and input_saved_model_dir")
        if nodes_denylist is not None and nodes_blacklist is not None:
            raise ValueError("Specify nodes_denylist only (nodes_blacklist is its old name)")
        if input_graph_def is not None and not _is_graph_def(input_graph_def):
            raise TypeError(f"input_graph_def must be a GraphDef (tf.compat.v1.GraphDef), not "
                            f"a {type(input_graph_def).__name__}; read a .pb file with "
                            f"tf.compat.v1.GraphDef.FromString(open(path, 'rb').read()), or "
                            f"use graph.as_graph_def() of a tf.Graph")
        self._input_graph_def = input_graph_def
        self._input_saved_model_dir = (graph_io.check_saved_model_dir(input_saved_model_dir)
                                       if input_saved_model_dir is not None else None)
        self._tags = graph_io.saved_model_tags(input_saved_model_tags)
        self._signature_key = input_saved_model_signature_key or graph_io.DEFAULT_SIGNATURE_KEY
        denylist = nodes_denylist if nodes_denylist is not None else nodes_blacklist
        if denylist is None:
            denylist = []
        elif isinstance(denylist, (str, bytes)):  # one node name, not a list of its characters
            denylist = [denylist]
        else:
            try:  # a list, tuple, set, generator or numpy array of names
                denylist = list(denylist)
            except TypeError:
                raise TypeError(f"nodes_denylist must be a list of node names, not "
                                f"{type(denylist).__name__} {denylist!r}") from None
        self._nodes_denylist = [graph_io.split_tensor_name(_node_name(n))[0]
                                for n in denylist]
        for name, value in (("session_config", session_config),
                            ("use_function_backup", use_function_backup)):
            if value is not None:
                log.warning("TrtGraphConverter(%s=...) is deprecated and has no effect (as in "
                            "TF-TRT's last versions)", name)
        self._is_dynamic_op = as_flag(is_dynamic_op, "is_dynamic_op")
        if max_batch_size is None:
            if not self._is_dynamic_op:
                raise ValueError("max_batch_size has to be an integer for is_dynamic_op==False.")
            self._max_batch_size = None  # dynamic engines: no batch limit (TF-TRT)
        else:
            if not is_int(max_batch_size) or max_batch_size < 1:
                raise ValueError(f"max_batch_size should be a positive integer; got "
                                 f"{max_batch_size!r}")
            self._max_batch_size = int(max_batch_size)
        self._params = _check_conversion_params(TrtConversionParams(
            max_workspace_size_bytes=max_workspace_size_bytes, precision_mode=precision_mode,
            minimum_segment_size=minimum_segment_size,
            maximum_cached_engines=maximum_cached_engines, use_calibration=use_calibration,
            allow_build_at_runtime=True))
        self._need_calibration = (self._params.precision_mode in ("INT8", "FP8") and
                                  self._params.use_calibration)
        self._converted_graph_def = None
        self._calibrated = False
        self._exclusive = OneAtATime()  # convert() and calibrate()
        self._result = None
        self._info = None
        self._sig = None

    # --- convert -----------------------------------------------------------------------------
    def convert(self):
        """Converts the graph; returns the converted GraphDef."""
        with self._exclusive("convert"):
            return self._convert()

    def _convert(self):
        if self._converted_graph_def is not None:
            raise RuntimeError("convert() was already called on this converter")
        activation.activate()
        if self._input_graph_def is not None:
            self._info = self._graph_def_info(self._input_graph_def)
        else:
            with _eager_mode():
                self._sig = graph_io.signature_graph(self._input_saved_model_dir, self._tags,
                                                     self._signature_key)
            self._info = self._sig.info
            names = {n.name for n in self._info.graph_def.node}
            missing = [n for n in self._nodes_denylist if n not in names]
            if missing:
                log.warning("nodes_denylist names node(s) %s that are not in the SavedModel "
                            "signature's graph (frozen, after Grappler's clean-ups); they are "
                            "ignored. Its nodes are e.g. %s", missing, sorted(names)[:5])
        result = conversion.convert_graph(self._info, self._params, self._nodes_denylist)
        self._result = result
        if not self._is_dynamic_op and not self._need_calibration:
            self._build_static_engines()  # calibrated ones: in calibrate(), with their ranges
        from tftrt import summary as summary_mod
        summary_mod.log_unconverted(self._info, result.segmentation)
        self._converted_graph_def = self._graph_def_with_engines()
        self._info.drop_const_cache()
        return self._converted_graph_def

    def _graph_def_info(self, graph_def) -> graph_io.GraphInfo:
        import tensorflow as tf
        if not graph_def.node:
            raise ValueError("input_graph_def has no nodes: give the frozen GraphDef of the "
                             "model to convert")
        names = {n.name for n in graph_def.node}
        missing = [n for n in self._nodes_denylist if n not in names]
        if missing:
            raise ValueError(f"nodes_denylist names node(s) {missing} that are not in "
                             f"input_graph_def; give the names of the output nodes you will "
                             f"fetch (e.g. {sorted(names)[:3]})")
        placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
        # A node whose value no node reads is an output, even where a node waits on it (the
        # NoOp of tf.group(o), a control dependency): counting control inputs as reads left a
        # graph ending in tf.group or tf.print with no outputs, and pruning then removed
        # everything but its Placeholders, silently (helper hunt, 2026-12-04).
        read = {graph_io.split_tensor_name(i)[0] for n in graph_def.node for i in n.input
                if not i.startswith("^")}
        waited_on = {i[1:] for n in graph_def.node for i in n.input if i.startswith("^")}
        sinks = [n.name for n in graph_def.node
                 if n.name not in read and n.op not in ("NoOp", "Placeholder", "Const")]
        # the ends of the graph with no outputs (tf.group's NoOp, tf.print): session targets
        ends = [n.name for n in graph_def.node if n.name not in read and
                n.name not in waited_on and n.op != "Placeholder"]
        kept = list(self._nodes_denylist) or sinks
        after = _downstream(graph_def, self._nodes_denylist) if self._nodes_denylist else None
        if after is not None:
            # The graph keeps what its outputs need: a denylisted node that is not an output
            # (e.g. one the user wants left native) must not cut away the outputs after it.
            extra = [n for n in sinks if n in after and n not in kept]
            if extra:
                log.info("the graph's outputs %s come after nodes_denylist's nodes: kept as "
                         "outputs too", extra[:5])
            kept += extra
        _check_frozen(graph_def, kept)
        g = tf.Graph()
        with g.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        outputs = [t.name for name in kept for t in g.get_operation_by_name(name).outputs]
        inputs = [f"{p}:0" for p in placeholders]
        # Without nodes_denylist TF-TRT ran Grappler with no fetch nodes and kept the whole
        # graph: its output-less ends stay as targets. With one, those after its nodes stay.
        targets = _output_less(g, list(self._nodes_denylist) + [
            n for n in ends if (after is None or n in after) and n not in self._nodes_denylist])
        if not outputs and not targets:
            raise ValueError("input_graph_def has no outputs to keep: every node's value is "
                             "read by another node; give the output node names in "
                             "nodes_denylist")
        # Devices cleared, as the SavedModel path clears them: on nodes pinned to a CPU,
        # Grappler's arithmetic pass fused unary chains into _UnaryOpsComposition (a CPU-only
        # op no engine takes), and Mul, left native (helper hunt, 2026-12-02)
        graph_def = _without_devices(graph_def)
        # Function calls (a tf.function called in the TF1 graph: a PartitionedCall) inlined,
        # as the SavedModel path inlines them, so that their ops can join engines (each stayed
        # native whole, "no converter for op type PartitionedCall": helper hunt, 2026-12-07).
        # A call that is a target keeps its name (a NoOp waiting on its body's effects).
        graph_def = graph_io.inline_function_calls(graph_def, outputs + targets)
        cleaned = graph_io.run_grappler_passes(graph_def, g, inputs + outputs + targets)
        return graph_io.GraphInfo(cleaned, inputs, outputs)

    def _build_static_engines(self) -> None:
        for op in self._result.engine_ops.values():
            op.spec.max_batch_size = self._max_batch_size
            shapes = op.spec.input_shapes
            if any(s is None or any(d is None for d in s[1:]) for s in shapes):
                log.warning("%s: %s", op.name, STATIC_SHAPE_WARNING)
                continue
            key = tuple(tuple(self._max_batch_size if (k == 0 and d is None) else d
                              for k, d in enumerate(s)) for s in shapes)
            batch = max((s[0] for s in key if s), default=0)  # what TRTEngineOp checks
            if batch > self._max_batch_size:
                log.warning("%s: its inputs have the static batch size %d, larger than "
                            "max_batch_size=%d, so an engine could never run: none is built "
                            "and the segment runs natively (give max_batch_size=%d to build "
                            "it)", op.name, batch, self._max_batch_size, batch)
                continue
            try:
                op.build_for(key)
            except Exception as e:  # keep converting; the op builds or falls back at run time
                log.warning("%s: static engine build failed (%s); it will run natively or "
                            "build at run time", op.name, e)

    def _graph_def_with_engines(self):
        from tftrt.engine.plan import network_sha256, serialize_engine
        res = self._result
        gd, _ = conversion.native_form_graph_def(self._info, res.segmentation.segments,
                                                 res.engine_ops, res.native_fdefs)
        for node in gd.node:
            op = res.engine_ops.get(node.name)
            if op is None or rewrite.ENGINE_ATTR not in node.attr:
                continue
            node.attr[activation.SPEC_ATTR].s = json.dumps(op.spec.to_json()).encode()
            node.attr[activation.ONNX_ATTR].s = op.spec.onnx_bytes
            blobs = node.attr[activation.PLANS_ATTR].list.s
            for key, engine, profiles in op.plan_items():
                meta = {"input_shapes": [list(s) for s in key],
                        "backend": getattr(engine, "backend", None)}
                if profiles:
                    meta["profiles"] = profiles  # also in the plan's config, which restores them
                blobs.append(json.dumps(meta).encode())
                blobs.append(serialize_engine(engine, op.name,
                                              network_sha256(op.spec.onnx_bytes)))
        return gd

    # --- calibrate / save ------------------------------------------------------------------------
    def calibrate(self, fetch_names: Sequence[str], num_runs: int,
                  feed_dict_fn: Optional[Callable] = None,
                  input_map_fn: Optional[Callable] = None, *,
                  calibration_method: Optional[str] = None):
        """INT8 / FP8 calibration (TF-TRT's entry point): runs the graph ``num_runs`` times on
        ``feed_dict_fn()`` feeds (or ``input_map_fn()`` tensors mapped onto its inputs),
        records the ranges inside every engine's network, and returns the converted GraphDef
        carrying them (static mode: with engines built from them).

        Args:
          fetch_names: what TF-TRT ran; here the engines' inputs are computed instead (each
            name must exist in the graph). Names, or tensors / operations of the graph.
          calibration_method: tftrt's option, as TrtGraphConverterV2.convert()'s.
        """
        with self._exclusive("calibrate"):
            return self._calibrate(fetch_names, num_runs, feed_dict_fn, input_map_fn,
                                   calibration_method)

    def _calibrate(self, fetch_names, num_runs, feed_dict_fn, input_map_fn,
                   calibration_method):
        from tftrt import calibration
        if self._converted_graph_def is None:
            raise RuntimeError("Need to call convert() before calibrate()")
        if (feed_dict_fn is None) == (input_map_fn is None):
            raise ValueError("Should specify one and only one of feed_dict_fn and input_map_fn.")
        if not self._need_calibration:
            raise RuntimeError("calibrate() is only needed for INT8 / FP8 with "
                               "use_calibration=True")
        if self._calibrated:
            # TF-TRT asserted that calibration data had not been collected yet
            raise RuntimeError("calibrate() was already called on this converter: its "
                               "engines hold the ranges of that calibration. To calibrate "
                               "with other data, create a new TrtGraphConverter and call "
                               "convert() then calibrate()")
        for name, fn, returns in (("feed_dict_fn", feed_dict_fn,
                                   "a feed dict of input tensor name -> value, e.g. "
                                   "lambda: {'x:0': batch}"),
                                  ("input_map_fn", input_map_fn,
                                   "a dict of input tensor name -> tensor")):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a callable (calibrate() calls it once per "
                                f"run, num_runs times) that returns {returns}; got a "
                                f"{type(fn).__name__}")
        fetch_names = _fetch_names(fetch_names)
        _check_fetches(self._converted_graph_def, fetch_names)
        with progress.task("calibrating"):
            calibration.calibrate_tf1(self, num_runs, feed_dict_fn, input_map_fn,
                                      calibration_method)
        if not self._is_dynamic_op:
            self._build_static_engines()
        self._converted_graph_def = self._graph_def_with_engines()
        self._calibrated = True
        return self._converted_graph_def

    def save(self, output_saved_model_dir):
        """Saves the converted model as a SavedModel (only when the input was a SavedModel),
        its MetaGraph tagged with ``input_saved_model_tags`` (and "serve")."""
        if self._input_graph_def is not None:
            raise ValueError("Not able to save to a SavedModel since input is a GraphDef")
        if self._converted_graph_def is None:
            raise RuntimeError("Need to call convert() before save()")
        if self._need_calibration and not self._calibrated:
            raise RuntimeError(f"A model that requires {self._params.precision_mode} "
                               f"calibration has to be calibrated before saving it. Call "
                               f"calibrate() after convert().")
        import tensorflow as tf
        from tftrt import saving
        # TF's SavedModel writer tags the MetaGraph "serve" and adds extra_tags: the input
        # model's tags, so that it loads with the tags it was converted with (TF-TRT's TF1
        # save wrote them). Custom gradients off as saving.save's default: an inference model.
        extra = [t for t in dict.fromkeys(self._tags) if t != "serve"]
        tags = ["serve"] + extra
        if "serve" not in self._tags:
            log.warning("the input model's tags %s have no 'serve', which TensorFlow's "
                        "SavedModel writer always adds: the converted model loads with "
                        "tags=%s", self._tags, tags)
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False,
                                             extra_tags=extra or None)
        path = os.fspath(output_saved_model_dir)
        with _eager_mode():
            saving.save(_SaveView(self), path, True, options)
        # A TF1 user's natural loader runs none of the engines: say so once (docs/differences.md)
        log.warning("saved %s: it runs its tftrt engines when loaded with tftrt.load(path%s) "
                    "in eager mode; loaded in a TF1 Session (tf.compat.v1.saved_model.loader."
                    "load), by tf.saved_model.load or by TF Serving it runs natively (correct "
                    "results, no engines). It is a TF2 SavedModel: in a Session, feed and fetch "
                    "the tensor names its signature_def lists (e.g. serving_default_<input>:0), "
                    "not the input graph's own names, which it does not keep", path,
                    f", tags={tags}" if extra else "")


def create_inference_graph(input_graph_def, outputs, max_batch_size=1,
                           max_workspace_size_bytes=DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES,
                           precision_mode=TrtPrecisionMode.FP32, minimum_segment_size=3,
                           is_dynamic_op=False, maximum_cached_engines=1,
                           input_saved_model_dir=None, input_saved_model_tags=None,
                           input_saved_model_signature_key=None, output_saved_model_dir=None,
                           session_config=None):
    """TF-TRT's one-call TF1 conversion: a :class:`TrtGraphConverter` of ``input_graph_def``
    (``outputs``: its output nodes or tensors, kept out of the engines), or of the SavedModel
    at ``input_saved_model_dir`` when ``input_graph_def`` is None; converted, saved to
    ``output_saved_model_dir`` when given (a SavedModel input only), and its GraphDef
    returned. Without calibration, as TF-TRT's: INT8 needs a TrtGraphConverter and its
    calibrate()."""
    if input_graph_def is not None:
        if isinstance(outputs, (str, bytes)):
            outputs = [outputs]  # one name, not a list of its characters
        if outputs is None or not hasattr(outputs, "__iter__") or not list(outputs):
            raise ValueError("create_inference_graph: outputs must list the graph's output "
                             "nodes or tensors (e.g. ['logits']) when input_graph_def is given;"
                             f" got {outputs!r}")
        outputs = list(outputs)
    else:
        outputs = None  # TF-TRT: only used with input_graph_def
    converter = TrtGraphConverter(
        input_saved_model_dir=input_saved_model_dir,
        input_saved_model_tags=input_saved_model_tags,
        input_saved_model_signature_key=input_saved_model_signature_key,
        input_graph_def=input_graph_def, nodes_denylist=outputs,
        session_config=session_config, max_batch_size=max_batch_size,
        max_workspace_size_bytes=max_workspace_size_bytes, precision_mode=precision_mode,
        minimum_segment_size=minimum_segment_size, is_dynamic_op=is_dynamic_op,
        maximum_cached_engines=maximum_cached_engines, use_calibration=False)
    converted = converter.convert()
    if output_saved_model_dir:
        converter.save(output_saved_model_dir)
    return converted


def _eager_mode():
    """Runs the body in eager mode. TF1 programs run with eager execution off
    (tf.compat.v1.disable_eager_execution(), disable_v2_behavior()) or inside a tf.Graph's
    as_default(); loading and freezing a SavedModel (TF's freezing reads the variables'
    values with .numpy()) and tf.saved_model.save need eager mode. TF-TRT froze in a Session;
    TF lets these steps run in eager mode whatever the program's mode."""
    from tensorflow.python.eager import context
    return context.eager_mode()  # (already eager: it changes nothing)


def _fetch_names(fetch_names) -> list:
    """calibrate()'s fetch_names as names: a name or a tensor / operation of the user's graph
    (its name: calibration runs in a graph of its own), or a list of them. TypeError else."""
    import tensorflow as tf
    from tftrt.calibration import graph_element_name
    usage = ("fetch_names must be a list of the names (e.g. ['out:0']) or the tf.Tensor / "
             "tf.Operation objects of the graph's outputs")
    if isinstance(fetch_names, str) or graph_element_name(fetch_names):
        fetch_names = [fetch_names]  # one name, not a list of its characters
    # bytes and eager tensors iterate over their elements, a dict over its keys: none of them
    # is a list of names
    if fetch_names is None or isinstance(fetch_names, (bytes, dict)) or \
            tf.is_tensor(fetch_names) or not hasattr(fetch_names, "__iter__"):
        raise TypeError(f"{usage}; got {fetch_names!r}")
    names = []
    for k, item in enumerate(fetch_names):
        name = item if isinstance(item, str) else graph_element_name(item)
        if name is None:
            if tf.is_tensor(item):
                raise TypeError(f"{usage}; fetch_names[{k}] is an eager tensor (a value, not a "
                                f"tensor of the graph): {item!r}")
            raise TypeError(f"{usage}; fetch_names[{k}] is {item!r} ({type(item).__name__})")
        names.append(name)
    return names


def _check_fetches(graph_def, names: Sequence[str]) -> None:
    """ValueError unless ``names`` is a non-empty list of what ``graph_def`` has: nodes, or
    tensors with an output index the node has (TF-TRT ran ``sess.run(fetch_names)``, which
    raised for both; only the node was checked before, so "out:5" of a one-output node and
    an empty list passed)."""
    import tensorflow as tf
    if not names:
        raise ValueError("fetch_names is empty: name the graph's outputs, e.g. ['out:0'] "
                         "(TF-TRT ran them in each calibration run)")
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    for name in names:
        try:
            graph.as_graph_element(name)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"fetch_names: {name!r} is not in the graph: {e}") from None


def _downstream(graph_def, names: Sequence[str]) -> set:
    """The nodes that depend on any of ``names`` (data or control), ``names`` included."""
    consumers: dict = {}
    for n in graph_def.node:
        for i in n.input:
            consumers.setdefault(graph_io.split_tensor_name(i)[0], []).append(n.name)
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(consumers.get(name, ()))
    return seen


def _output_less(graph, names: Sequence[str]) -> list:
    """The nodes among ``names`` that have no outputs (tf.group's NoOp, a PyFunc returning
    nothing): TF1 code runs them as session targets. A node gives Grappler tensors to keep
    through its outputs only, so these are kept by node name, with what they wait on, as
    TF-TRT's fetch list of node names keeps them."""
    return [n for n in names if not graph.get_operation_by_name(n).outputs]


VARIABLE_OPS = ("VarHandleOp", "VariableV2", "Variable", "TemporaryVariable")


def _check_frozen(graph_def, outputs: Sequence[str]) -> None:
    """ValueError naming the variables the ``outputs`` nodes depend on in a GraphDef that is
    not frozen: their values are not in it (a resource handle has no tensor value to convert),
    and their initializers are pruned away with everything the outputs do not need."""
    from tensorflow.core.framework import types_pb2
    seen = graph_io.needed_nodes(graph_def, outputs)
    found = [(n.name, n.op) for n in graph_def.node if n.name in seen and (
        n.op in VARIABLE_OPS or (n.op == "Placeholder" and
                                 n.attr["dtype"].type == types_pb2.DT_RESOURCE))]
    if found:
        raise ValueError(f"input_graph_def holds variable(s) {[n for n, _ in found][:5]} "
                         f"(ops {sorted({op for _, op in found})}); TrtGraphConverter takes a "
                         f"frozen GraphDef: freeze it first with tf.compat.v1.graph_util."
                         f"convert_variables_to_constants(sess, graph_def, [output node names]) "
                         f"in the session holding the variables' values, or convert the "
                         f"SavedModel (input_saved_model_dir=...)")


def _is_graph_def(value) -> bool:
    from tensorflow.core.framework import graph_pb2
    return isinstance(value, graph_pb2.GraphDef)


def _node_name(item) -> str:
    """A nodes_denylist entry as a name: a str, bytes, or a tf.Tensor / tf.Operation of the
    graph (its name), as TF-TRT took them; anything else is a clear error."""
    if isinstance(item, bytes):
        return item.decode()
    if isinstance(item, str):
        return item
    name = getattr(item, "name", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"nodes_denylist holds {item!r} ({type(item).__name__}); give node names "
                    f"(str), or the graph's tf.Tensor / tf.Operation objects")


def _without_devices(graph_def):
    """A copy of ``graph_def`` with no device on any node (its library's included)."""
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    for node in out.node:
        node.device = ""
    for f in out.library.function:
        for node in f.node_def:
            node.device = ""
    return out


class _SaveView:
    """Presents a TF1 converter the way saving.save reads a V2 converter."""

    def __init__(self, c: TrtGraphConverter):
        self._sig = c._sig
        self._segmentation = c._result.segmentation
        self._engine_ops = c._result.engine_ops
        self._native_fdefs = c._result.native_fdefs
        self._input_saved_model_signature_key = c._signature_key
        self._input_saved_model_dir = c._input_saved_model_dir
