"""Graph in: load a SavedModel signature, freeze it, clean it with Grappler, infer shapes.

Everything downstream (segmenter, lowering, rewrite) works on a :class:`GraphInfo`: a frozen
GraphDef plus the static dtype and shape of every tensor and the values of constants.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

log = logging.getLogger("tftrt.graph_io")

# Grappler passes TF-TRT ran before segmentation. "layout" is left out on purpose: it would
# turn NHWC convolutions into NCHW + transposes on GPU hosts; engines choose their own layout.
GRAPPLER_OPTIMIZERS = ("pruning", "debug_stripper", "constfold", "arithmetic", "dependency",
                       "common_subgraph_elimination", "constfold")

DEFAULT_TAGS = ("serve",)
DEFAULT_SIGNATURE_KEY = "serving_default"


def tensor_name(node: str, index: int = 0) -> str:
    return f"{node}:{index}"


def split_tensor_name(name: str) -> Tuple[str, int]:
    """'node:1' -> ('node', 1); 'node' -> ('node', 0); '^node' -> ('node', -1)."""
    if name.startswith("^"):
        return name[1:], -1
    node, sep, idx = name.rpartition(":")
    if sep and idx.isdigit():
        return node, int(idx)
    return name, 0


def attr_value(av):
    """Decodes a TF AttrValue into a plain python value."""
    from tensorflow.python.framework import dtypes as tf_dtypes, tensor_util
    which = av.WhichOneof("value")
    if which == "list":
        lst = av.list
        for field in ("s", "i", "f", "b", "type", "shape", "tensor", "func"):
            vals = getattr(lst, field)
            if len(vals):
                if field == "s":
                    return [v.decode() for v in vals]
                if field == "type":
                    return [np.dtype(tf_dtypes.as_dtype(v).as_numpy_dtype) for v in vals]
                if field == "shape":
                    return [_shape_list(v) for v in vals]
                if field == "tensor":
                    return [tensor_util.MakeNdarray(v) for v in vals]
                if field == "func":
                    return [v.name for v in vals]
                return list(vals)
        return []
    if which == "s":
        try:
            return av.s.decode()
        except UnicodeDecodeError:
            return av.s
    if which in ("i", "f", "b"):
        return getattr(av, which)
    if which == "type":
        dt = tf_dtypes.as_dtype(av.type)
        try:
            return np.dtype(dt.as_numpy_dtype)
        except TypeError:
            return None
    if which == "shape":
        return _shape_list(av.shape)
    if which == "tensor":
        return tensor_util.MakeNdarray(av.tensor)
    if which == "func":
        return av.func.name
    return None


def _shape_list(shape_proto) -> Optional[List[Optional[int]]]:
    if shape_proto.unknown_rank:
        return None
    return [d.size if d.size >= 0 else None for d in shape_proto.dim]


# TF1 while loops: their frames' entry and exit ops, and the op whose edges go back.
ENTER_OPS = frozenset({"Enter", "RefEnter"})
EXIT_OPS = frozenset({"Exit", "RefExit"})
BACK_EDGE_OPS = frozenset({"NextIteration", "RefNextIteration"})


class GraphInfo:
    """A frozen GraphDef with static dtypes, shapes and constant values of every tensor.

    Attributes:
      graph_def: the GraphDef (with its function library).
      nodes: node name -> NodeDef.
      inputs / outputs: tensor names of the function's inputs and outputs, in order.
      shapes: tensor name -> tuple (None for unknown dims) or None for unknown rank.
      dtypes: tensor name -> numpy dtype.
    """

    def __init__(self, graph_def, inputs: Sequence[str], outputs: Sequence[str]):
        self.graph_def = graph_def
        self.nodes = {n.name: n for n in graph_def.node}
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.shapes: Dict[str, Optional[Tuple[Optional[int], ...]]] = {}
        self.dtypes: Dict[str, np.dtype] = {}
        self._num_outputs: Dict[str, int] = {}
        self._consts: Dict[str, Optional[np.ndarray]] = {}
        self._is_const: Dict[str, bool] = {}  # has_const_value's answers (no values)
        self._data_inputs: Dict[str, List[str]] = {}
        self._infer()

    # --- structure ---------------------------------------------------------------------------
    def data_inputs(self, node) -> List[str]:
        got = self._data_inputs.get(node.name)
        if got is None:
            got = [_canonical(i) for i in node.input if not i.startswith("^")]
            self._data_inputs[node.name] = got
        return got

    def control_inputs(self, node) -> List[str]:
        return [i[1:] for i in node.input if i.startswith("^")]

    def num_outputs(self, name: str) -> int:
        return self._num_outputs.get(name, 0)

    def consumers(self) -> Dict[str, List[Tuple[str, int]]]:
        """tensor name -> [(consumer node, input position)]; control edges under '^node'."""
        out: Dict[str, List[Tuple[str, int]]] = {}
        for n in self.graph_def.node:
            pos = 0
            for i in n.input:
                if i.startswith("^"):
                    out.setdefault("^" + i[1:], []).append((n.name, -1))
                else:
                    out.setdefault(_canonical(i), []).append((n.name, pos))
                    pos += 1
        return out

    def is_back_edge(self, src: str) -> bool:
        """Whether edges from node ``src`` go back: a TF1 while loop's NextIteration, which
        feeds its frame's Merge (the one cycle a GraphDef may hold)."""
        node = self.nodes.get(src)
        return node is not None and node.op in BACK_EDGE_OPS

    def while_loop_nodes(self) -> Set[str]:
        """The nodes of TF1 while loops (tf.while_loop outside a function, as TF1 wrote
        dynamic_rnn and map_fn): everything reachable from an Enter, through data and
        control edges, up to and including the Exits of its frame. The walk counts the frames
        it is in (an Enter one more, an Exit one fewer): in nested loops, the outer body's
        nodes after the inner loop's Exit are the outer loop's too (they were left out, and
        an engine made of them, inside the outer frame, failed every call with "inputs from
        different frames": helper hunt, 2026-12-07)."""
        succ: Dict[str, List[str]] = {}
        for n in self.graph_def.node:
            for i in n.input:
                succ.setdefault(split_tensor_name(i)[0], []).append(n.name)
        todo = [(n, 1) for n, node in self.nodes.items() if node.op in ENTER_OPS]
        seen = set(todo)
        while todo:
            cur, depth = todo.pop()
            if self.nodes[cur].op in EXIT_OPS:
                depth -= 1
                if depth == 0:
                    continue
            for nxt in succ.get(cur, ()):
                state = (nxt, depth + (self.nodes[nxt].op in ENTER_OPS))
                if state not in seen:
                    seen.add(state)
                    todo.append(state)
        return {name for name, _ in seen}

    def topological_order(self) -> List[str]:
        """Node names, producers before consumers (data and control edges; a while loop's
        back edges left out)."""
        indeg = {n: 0 for n in self.nodes}
        succ: Dict[str, List[str]] = {n: [] for n in self.nodes}
        for n in self.graph_def.node:
            for i in n.input:
                src = split_tensor_name(i)[0]
                if src in self.nodes and not self.is_back_edge(src):
                    succ[src].append(n.name)
                    indeg[n.name] += 1
        ready = [n.name for n in self.graph_def.node if indeg[n.name] == 0]
        order = []
        while ready:
            cur = ready.pop()
            order.append(cur)
            for s in succ[cur]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    ready.append(s)
        if len(order) != len(self.nodes):
            raise ValueError("the graph has a cycle that is not a TF1 while loop's (no "
                             "NextIteration closes it): it is not a valid TensorFlow graph")
        return order

    # --- constants ---------------------------------------------------------------------------
    def const_value(self, tensor: str, cache: bool = True) -> Optional[np.ndarray]:
        """Value of a tensor produced by a Const node (None when it isn't one); ``cache``:
        kept for the next call."""
        if tensor in self._consts:
            return self._consts[tensor]
        name, idx = split_tensor_name(tensor)
        node = self.nodes.get(name)
        value = None
        if node is not None and node.op == "Const" and idx == 0:
            from tensorflow.python.framework import tensor_util
            try:
                value = tensor_util.MakeNdarray(node.attr["value"].tensor)
            except Exception:  # e.g. string or resource constants
                value = None
        if cache:
            self._consts[tensor] = value
        return value

    def has_const_value(self, tensor: str) -> bool:
        """Whether :meth:`const_value` is not None, without keeping a value it reads: after
        lowering, the cache is dropped (:meth:`drop_const_cache`) and the native segments
        only ask which inputs are constants. The answer is kept (a constant read by several
        nodes was decoded once per reader)."""
        known = self._is_const.get(tensor)
        if known is None:
            known = self._is_const[tensor] = self.const_value(tensor, cache=False) is not None
        return known

    def drop_const_cache(self) -> None:
        """Forgets the constant values read so far (they are read again on demand). A converter
        keeps its GraphInfo for summary() and save(); the cache held a second copy of every
        weight (ResNet50: 102 of the 1,076 MB convert() retained, 2026-12-05)."""
        self._consts = {}

    # --- inference -----------------------------------------------------------------------------
    def _infer(self):
        import tensorflow as tf
        g = tf.Graph()
        with g.as_default():
            try:
                tf.graph_util.import_graph_def(self.graph_def, name="")
            except Exception as e:  # a write to a frozen variable: say so
                _check_no_variable_writes(self.graph_def, e)
                raise
        for op in g.get_operations():
            self._num_outputs[op.name] = len(op.outputs)
            for k, t in enumerate(op.outputs):
                name = tensor_name(op.name, k)
                try:
                    self.dtypes[name] = np.dtype(t.dtype.as_numpy_dtype)
                except (TypeError, KeyError):  # resource, variant: no numpy dtype (KeyError)
                    self.dtypes[name] = np.dtype(object)
                if t.shape.rank is None:
                    self.shapes[name] = None
                else:
                    self.shapes[name] = tuple(t.shape.as_list())
        if any(n.op in EXIT_OPS for n in self.graph_def.node):
            self._loop_shapes(g)

    def _loop_shapes(self, g) -> None:
        """Shapes after TF1 while loops. TF's importer gives a loop's Exit (and everything
        computed from it) an unknown rank: it infers shapes once, before the loop's
        NextIteration is known. Grappler's static inference, which TF-TRT's segmenter used,
        iterates the loop: the output of a map_fn or dynamic_rnn loop gets its rank and the
        dims the loop keeps, so the layers after it can join engines (a conv after a loop
        stayed native with "input 0 of Conv2D has unknown rank": helper hunt, 2026-12-07).
        Only tensors the importer left without a rank take them."""
        unknown = {name.split(":")[0] for name, shape in self.shapes.items() if shape is None}
        if not unknown:
            return
        import tensorflow as tf
        from tensorflow.python.grappler import item as gitem
        try:
            with g.as_default():
                ends = [op for op in g.get_operations() if op.type != "Const"]
                train = tf.compat.v1.get_collection_ref(tf.compat.v1.GraphKeys.TRAIN_OP)
                train.extend(ends)
                meta = tf.compat.v1.train.export_meta_graph(graph=g)
                del train[:]
            props = gitem.Item(meta).GetOpProperties()
        except Exception as e:  # (inference is a help here; the importer's shapes stand)
            log.info("grappler's shape inference after the TF1 loops failed: %s", e)
            return
        for node in unknown & set(props):
            for k, p in enumerate(props[node]):
                name = tensor_name(node, k)
                if name in self.shapes and self.shapes[name] is None and \
                        not p.shape.unknown_rank:
                    self.shapes[name] = tuple(int(d.size) if d.size >= 0 else None
                                              for d in p.shape.dim)


def _canonical(name: str) -> str:
    node, idx = split_tensor_name(name)
    return tensor_name(node, idx)


# ------------------------------------------------------------------------------------------------
# Loading


class SignatureGraph:
    """What convert() works on: the frozen, cleaned signature graph and how to call it.

    Attributes:
      info: GraphInfo of the cleaned graph.
      func: the original signature ConcreteFunction (for structured inputs / outputs).
      frozen_func: the frozen signature's input and output tensors (FrozenSignature).
      input_names: signature argument names, in the order of ``info.inputs``.
      saved_model: the loaded SavedModel object (kept alive; saved again with the conversion).
    """

    def __init__(self, info, func, frozen_func, input_names, saved_model=None):
        self.info = info
        self.func = func
        self.frozen_func = frozen_func
        self.input_names = input_names
        self.saved_model = saved_model


KERAS_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")


def check_saved_model_dir(path, arg: str = "input_saved_model_dir") -> str:
    """``path`` as a str, checked to be a SavedModel directory (``arg`` names it in errors)."""
    if path is None:
        raise ValueError(f"{arg} is None: give the directory of a SavedModel "
                         f"(tf.saved_model.save or model.export wrote it)")
    if not isinstance(path, (str, bytes, os.PathLike)):
        what = type(path).__name__
        if hasattr(path, "export") and hasattr(path, "layers"):  # a Keras model
            raise ValueError(f"{arg} is a Keras model object ({what}), not a "
                             f"SavedModel directory: export one first with "
                             f"model.export('model_dir') (Keras 3; tf.saved_model.save(model, "
                             f"'model_dir') also works) and pass 'model_dir'")
        raise ValueError(f"{arg} must be the path of a SavedModel directory, "
                         f"not a {what}; save the model with tf.saved_model.save(obj, "
                         f"'model_dir') and pass 'model_dir'")
    path = os.fsdecode(path)  # bytes too, as TensorFlow takes them
    if path.lower().endswith(KERAS_FILE_SUFFIXES) and \
            not os.path.isdir(path):
        raise ValueError(f"{path!r} is a Keras model file, not a SavedModel directory: "
                         f"export a SavedModel first with keras.models.load_model({path!r})"
                         f".export('model_dir') and convert 'model_dir'")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file, not a SavedModel directory; give the directory "
                         f"that tf.saved_model.save or model.export wrote")
    if not os.path.isdir(path):
        raise ValueError(f"SavedModel directory {path!r} does not exist")
    if not (os.path.isfile(os.path.join(path, "saved_model.pb"))
            or os.path.isfile(os.path.join(path, "saved_model.pbtxt"))):
        raise ValueError(f"{path!r} is not a SavedModel directory: it has no saved_model.pb "
                         f"(save the model with tf.saved_model.save or model.export)")
    pb = os.path.join(path, "saved_model.pb")
    if os.path.isfile(pb) and os.path.getsize(pb) == 0:
        raise ValueError(f"{pb!r} is empty (0 bytes): the SavedModel was not fully written "
                         f"(an interrupted save or copy?); save or copy the model again")
    return path


def saved_model_tags(tags) -> List[str]:
    """MetaGraph tags as a list: None -> ["serve"]; one string is one tag (as
    tf.saved_model.load takes it), not a list of its characters."""
    if tags is None:
        return list(DEFAULT_TAGS)
    if isinstance(tags, (str, bytes)):
        tags = [tags]
    tags = [t.decode() if isinstance(t, bytes) else t for t in tags]
    if not all(isinstance(t, str) for t in tags):
        raise ValueError(f"input_saved_model_tags should be a list of strings; got {tags!r}")
    return tags or list(DEFAULT_TAGS)


def load_signature(path, tags: Optional[Iterable[str]] = None,
                   signature_key: Optional[str] = None):
    """Loads a SavedModel and returns (saved_model_object, signature ConcreteFunction)."""
    import tensorflow as tf
    path = check_saved_model_dir(path)
    tags = saved_model_tags(tags)
    signature_key = signature_key or DEFAULT_SIGNATURE_KEY
    try:
        saved = tf.saved_model.load(path, tags=tags)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        # TF names the MetaGraphs' tags when none matches: the directory itself is fine,
        # unless it has none ("available tags '[]'": a saved_model.pb with no MetaGraph)
        hint = "pass input_saved_model_tags matching one of them" if "MetaGraph" in msg and \
            "tags" in msg and "available tags '[]'" not in msg else \
            "is the directory complete and written by TensorFlow?"
        raise ValueError(f"could not load the SavedModel in {path!r} with tags {tags}: "
                         f"{type(e).__name__}: {msg} ({hint})") from e
    sigs = getattr(saved, "signatures", {}) or {}
    if signature_key not in sigs:
        raise ValueError(f"signature {signature_key!r} not found in {path!r}; available "
                         f"signatures: {sorted(sigs) or 'none'}")
    return saved, sigs[signature_key]


class FrozenSignature:
    """A frozen signature's input and output tensors (what callers read of TF's frozen
    ConcreteFunction): the original function's tensors, whose names the frozen GraphDef keeps."""

    def __init__(self, inputs, outputs):
        self.inputs = list(inputs)
        self.outputs = list(outputs)


def _private_freeze_api():
    """(TF's converter-data class, its variables-to-constants function), or None where this
    TF has them no more (see :func:`freeze`)."""
    from tensorflow.python.framework import convert_to_constants as c2c
    data = getattr(c2c, "_FunctionConverterDataInEager", None)
    replace = getattr(c2c, "_replace_variables_by_constants", None)
    return (data, replace) if data is not None and replace is not None else None


# A GraphDef is one protobuf message: TensorFlow's import and serialization refuse one of 2 GiB
# or more ("Invalid GraphDef", after minutes of work on the frozen weights).
GRAPHDEF_LIMIT = 2 ** 31


def _check_graph_size(graph_def) -> None:
    """Raises a clear ValueError where the frozen ``graph_def``'s constants (its weights) reach
    :data:`GRAPHDEF_LIMIT`, before the conversion's later steps fail on it unclearly (helper
    hunt, 2026-12-07: a 2.2 GB model ran 53 s at 17 GB to fail with "Invalid GraphDef").
    Counts each constant's serialized size, the graph's and its library functions'."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    total = sum(n.attr["value"].tensor.ByteSize() for n in nodes if n.op == "Const")
    if total >= GRAPHDEF_LIMIT:
        raise ValueError(
            f"the signature's weights, frozen into constants, take {total / 2 ** 30:.2f} GiB: "
            f"tftrt (like TF-TRT) converts a signature as one GraphDef, and a GraphDef cannot "
            f"reach protobuf's 2 GiB limit. Convert a part of the model under it (a SavedModel "
            f"whose signature computes that part; the rest can run natively around it), or "
            f"store its weights as float16 (half the bytes) before converting")


def freeze(func, lower_control_flow: bool = True):
    """(frozen GraphDef, FrozenSignature): ``func`` with its variables as constants.

    TF's ``convert_variables_to_constants_v2`` also wraps the frozen GraphDef into a new
    ConcreteFunction, which imports and prunes the whole graph, weights included (25 of its
    27 s for VGG16); here the GraphDef is taken as TF's freezing makes it, pruned to what the
    outputs need by :func:`freeze_and_clean`. Where TF's private freezing API is not what it
    was (another TF version), the public function does it all."""
    from tensorflow.python.eager import context
    from tensorflow.python.framework import convert_to_constants as c2c
    from tensorflow.python.util import object_identity
    _check_no_tables(func)
    api = _private_freeze_api()
    try:
        if api is None:
            raise AttributeError("convert_to_constants has no _FunctionConverterDataInEager "
                                 "or _replace_variables_by_constants")
        data = api[0](func=func, lower_control_flow=lower_control_flow,
                      aggressive_inlining=False)
        graph_def, converted = api[1](converter_data=data)
        captures = func.graph.internal_captures
        converted_inputs = object_identity.ObjectIdentitySet(
            [captures[i] for i in converted])
    except (AttributeError, TypeError, IndexError) as e:
        log.info("TF's freezing API changed (%s: %s); freezing through "
                 "convert_variables_to_constants_v2", type(e).__name__, e)
        frozen = c2c.convert_variables_to_constants_v2(
            func, lower_control_flow=lower_control_flow)
        graph_def = frozen.graph.as_graph_def()
        _check_graph_size(graph_def)
        return graph_def, FrozenSignature(frozen.inputs, frozen.outputs)
    _check_graph_size(graph_def)
    # As TF's freezing does before it registers the frozen functions: library functions it
    # rewrote (variables read inside them) replace the context's functions of those names.
    # They are registered again, rewritten (as TF's registers its frozen ones): the original
    # function objects remove their names when collected, and a name gone already made
    # "Exception ignored in AtomicFunction.__del__ ... Tried to remove non-existent
    # function" at exit (a jit_compile or _noinline inner function, helper hunt 2026-12-01).
    ctx = context.context()
    for f in graph_def.library.function:
        if ctx.has_function(f.signature.name):
            ctx.remove_function(f.signature.name)
            ctx.add_function_def(f)
    inputs = [t for t in func.inputs if t not in converted_inputs]
    _check_no_captured_state(func, inputs)
    # The input placeholders as TF's wrap makes them (without the signature's argument name,
    # which the converted signature takes from the original function).
    names = {t.name.split(":")[0] for t in inputs}
    for n in graph_def.node:
        if n.name in names and "_user_specified_name" in n.attr:
            del n.attr["_user_specified_name"]
    return graph_def, FrozenSignature(inputs, func.outputs)


def _check_no_captured_state(func, inputs) -> None:
    """Raises a clear ValueError when freezing left captured state as inputs (a lookup table's
    resource handle: not a variable, so not made a constant), which the converted signature
    would take as extra inputs nobody can feed."""
    from tensorflow.python.util import object_identity
    captured = object_identity.ObjectIdentitySet(func.graph.internal_captures)
    left = [t for t in inputs if t in captured]
    if left:
        what = ", ".join(sorted({t.dtype.name for t in left}))
        raise ValueError(f"the signature captures {len(left)} stateful object(s) that are not "
                         f"variables ({what} tensors, e.g. a tf.lookup table); tftrt can only "
                         f"freeze variables into constants. Do the lookup outside the "
                         f"converted signature (as pre-processing) and convert the part "
                         f"that computes on its results")


# tf.random.Generator's draws write its state variable: RngReadAndSkip / RngSkip, the
# Stateful{Uniform*, StandardNormalV2, TruncatedNormal, RandomBinomial} ops (helper hunt,
# 2026-12-04: TF's importer error "... passed int64 ... incompatible with expected resource").
_WRITES = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
           "ResourceScatter", "ResourceApply", "ResourceSparseApply", "ResourceStridedSliceAssign",
           "RngReadAndSkip", "RngSkip", "StatefulUniform", "StatefulStandardNormal",
           "StatefulTruncatedNormal", "StatefulRandomBinomial")


# TF1 reference variables' writes (exact names: "Scatter" alone would take ScatterNd, which
# makes a new tensor; "Assign" is a prefix of the resource writes above)
_REF_WRITES = frozenset({
    "Assign", "AssignAdd", "AssignSub", "ScatterUpdate", "ScatterAdd", "ScatterSub",
    "ScatterMul", "ScatterDiv", "ScatterMin", "ScatterMax", "ScatterNdUpdate", "ScatterNdAdd",
    "ScatterNdSub", "CountUpTo", "ResourceCountUpTo"})


def _is_write(node) -> bool:
    return node.op.startswith(_WRITES) or node.op in _REF_WRITES


_PLAIN_WRITES = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp")
# ops that hand their first input on as it is (a resource handle passes through them into a
# cond's branch or a loop's frame)
_FORWARDS = frozenset({"Identity", "RefIdentity", "Switch", "RefSwitch", "Enter", "RefEnter",
                       "Exit", "RefExit", "NextIteration", "RefNextIteration"})
# what a frozen graph's variable is (a constant), or a resource handle not frozen
_VARIABLE_SOURCES = frozenset({"Const", "VarHandleOp", "Placeholder", "VariableV2"})


def _resource_source(by_name, tensor: str) -> str:
    """The node a resource tensor comes from, through the ops that forward it (Identity, a
    cond's Switch, a loop's Enter, IdentityN's k-th output)."""
    name, idx = split_tensor_name(tensor)
    seen = set()
    while name in by_name and name not in seen:
        seen.add(name)
        node = by_name[name]
        data = [i for i in node.input if not i.startswith("^")]
        if node.op in _FORWARDS and data:
            name, idx = split_tensor_name(data[0])
        elif node.op == "IdentityN" and idx < len(data):
            name, idx = split_tensor_name(data[idx])
        else:
            break
    return name


def drop_unread_writes(graph_def, outputs: Sequence[str]):
    """``graph_def`` without its top-level variable writes whose variable no output reads.

    Keras 3 advances a layer's seed variable at inference too: an RNN with dropout or
    recurrent_dropout prepares its masks on every call, while the outputs do not depend on
    them (an augmentation layer's output does, through its random transform). Frozen, such
    a write has a constant where its variable was and cannot be imported; every LSTM / GRU /
    SimpleRNN with dropout was refused (helper hunts, 2026-12-04). A write goes when no
    output's value depends on its variable (data inputs only: TF's automatic control
    dependencies tie every stateful op to the outputs); the variable then keeps its frozen
    value, as any frozen variable does. Writes an output could see, and those inside
    functions, stay (and are refused with the reason). A write's variable is found through
    the ops that forward a handle (:func:`_resource_source`): a write inside a cond reaches
    it through the cond's Switch, and one whose variable the outputs read after it is not
    unread (helper hunt, 2026-12-07: a running maximum updated in a cond was dropped, and the
    converted model answered with the saved value). A write whose variable cannot be traced
    to one stays."""
    by_name = {n.name: n for n in graph_def.node}
    writes = [n for n in graph_def.node if n.op in _PLAIN_WRITES and n.input]
    if not writes:
        return graph_def
    read = needed_nodes(graph_def, outputs, control=False)

    def unread(write) -> bool:
        source = _resource_source(by_name, write.input[0])
        return source in by_name and by_name[source].op in _VARIABLE_SOURCES and \
            source not in read

    drop = {w.name for w in writes if unread(w)}
    if not drop:
        return graph_def
    log.warning("the signature writes %d variable(s) no output reads (e.g. %s; Keras' seed "
                "updates at inference: RNN dropout masks, augmentation layers): the converted "
                "model leaves them out, its answers do not depend on them", len(drop),
                sorted(drop)[0])
    from tensorflow.core.framework import graph_pb2
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for n in graph_def.node:
        if n.name in drop:
            continue
        m = out.node.add()
        m.CopyFrom(n)
        if any(i.startswith("^") and i[1:] in drop for i in n.input):
            del m.input[:]
            m.input.extend(i for i in n.input if not (i.startswith("^") and i[1:] in drop))
    return out


def _check_no_variable_writes(graph_def, error: Exception) -> None:
    """After importing the frozen ``graph_def`` failed with ``error``: raises a clear
    ValueError when the signature writes a variable (a counter, a running statistic, a
    tf.random.Generator's state).
    Freezing makes variables constants, as TF-TRT's does, so such a signature cannot be
    converted; TF's importer fails on the write's resource input ("passed float ...
    incompatible with expected resource")."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    writes = sorted({n.name for n in nodes if _is_write(n)})
    if writes:
        ops = sorted({n.op for n in nodes if _is_write(n)})
        raise ValueError(f"the signature writes variables ({len(writes)} op(s) {ops}, e.g. "
                         f"{writes[:3]}); tftrt, like TF-TRT, freezes variables into "
                         f"constants, so a signature that updates state cannot be converted. "
                         f"Convert a signature without the update (do it outside the "
                         f"converted function). TensorFlow said: {str(error)[:300]}") from error


def _check_no_tables(func) -> None:
    """Raises a clear ValueError when the signature's graph itself creates a lookup table: a
    TF1 SavedModel's (its initializer runs in the model's init op, main_op /
    tables_initializer(), outside the signature), which TF's freezing cannot import (Grappler:
    "Failed to import metagraph") and tftrt cannot make a constant. A TF2 model's tables are
    captured instead (see :func:`_check_no_captured_state`)."""
    tables = [op for op in func.graph.get_operations() if "HashTable" in op.type]
    if tables:
        raise ValueError(f"the signature holds {len(tables)} stateful object(s) that are not "
                         f"variables (lookup table(s) {[op.name for op in tables][:5]}, ops "
                         f"{sorted({op.type for op in tables})}, filled by the SavedModel's "
                         f"init op / table initializers); tftrt can only freeze variables "
                         f"into constants. Do the lookup outside the converted signature (as "
                         f"pre-processing) and convert the part that computes on its results "
                         f"(a SavedModel whose signature takes the looked-up values)")


def freeze_and_clean(func, run_grappler: bool = True) -> Tuple[FrozenSignature, "object"]:
    """Freezes variables of a ConcreteFunction and runs the Grappler clean-up passes.

    Returns (FrozenSignature, cleaned GraphDef).
    """
    import tensorflow as tf
    graph_def, frozen = freeze(func)
    if any(n.op == "NextIteration" for n in graph_def.node):
        # Freezing lowered a tf.while_loop into a TF1 loop frame, a cycle the segmenter cannot
        # order: freeze again keeping loops (and conds) as functional While / If nodes, which
        # stay native, one node each. (Conds alone stay lowered, as before: their branches'
        # ops can join engines.)
        graph_def, frozen = freeze(func, lower_control_flow=False)
    restore_control_inputs(graph_def, func)
    fetches = [t.name for t in frozen.inputs + frozen.outputs]
    graph_def = drop_unread_writes(graph_def, [t.name.split(":")[0] for t in frozen.outputs])
    # What the outputs need (and the inputs), as wrapping the frozen graph into a function
    # pruned it.
    pruned = prune_graph(graph_def, [name.split(":")[0] for name in fetches])
    # Freezing inlined the ordinary function calls; the ones it kept (``_noinline``) are
    # inlined here, so that segmentation sees their nodes (TF-TRT converted inside them).
    graph_def = inline_function_calls(pruned, [t.name for t in frozen.outputs])
    for node in graph_def.node:
        node.device = ""
    if run_grappler:
        try:
            graph_def = run_grappler_passes(graph_def, tf.Graph(), fetches)
        except Exception as e:  # a write inside a loop's body, to a frozen variable: say so
            _check_no_variable_writes(graph_def, e)
            raise
    return frozen, graph_def


def restore_control_inputs(graph_def, func) -> None:
    """Gives the frozen ``graph_def``'s nodes back the control inputs their namesakes in
    ``func``'s graph had. TF's freezing makes a variable's ReadVariableOp an Identity of its
    constant and drops the read's control inputs; in a TF1 graph (no automatic control
    dependencies onto the outputs) what only such an edge kept then went: a variable write
    the output read after (a counter: native 2, 3, 4, converted 1, 1, 1) or a py_func hook
    (helper hunt, 2026-12-07). With the edge back, the hook stays and runs, and the write
    stays and is refused with the reason."""
    by_name = {n.name: n for n in graph_def.node}
    for op in func.graph.get_operations():
        node = by_name.get(op.name)
        if node is None or not op.control_inputs:
            continue
        have = {i[1:] for i in node.input if i.startswith("^")}
        node.input.extend(f"^{c.name}" for c in op.control_inputs
                          if c.name in by_name and c.name not in have and c.name != op.name)


def needed_nodes(graph_def, keep: Sequence[str], control: bool = True) -> set:
    """Names of the nodes ``keep`` names and of those they need (data and, with ``control``,
    control inputs)."""
    by_name = {n.name: n for n in graph_def.node}
    needed, stack = set(), [k for k in keep if k in by_name]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        for i in by_name[name].input:
            if not control and i.startswith("^"):
                continue
            src = split_tensor_name(i)[0]
            if src in by_name and src not in needed:
                stack.append(src)
    return needed


def prune_graph(graph_def, keep: Sequence[str]):
    """A copy of ``graph_def`` with the nodes ``keep`` names and those they need (data and
    control inputs), in the original order; library and versions as they are."""
    from tensorflow.core.framework import graph_pb2
    needed = needed_nodes(graph_def, keep)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for n in graph_def.node:
        if n.name in needed:
            out.node.add().CopyFrom(n)
    return out


CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")
_MAX_INLINE_ROUNDS = 64  # nesting depth; TF functions cannot recurse
# On the nodes of an inlined XLA-compiled call (``_XlaMustCompile``): the call's name. Keras
# wraps ops TF's CPU kernels lack (grouped convolutions, NCDHW Conv3D) in such functions;
# where their nodes do not all go into engines, the function becomes a call again
# (segment.native_xla_calls), which TensorFlow compiles with XLA as before.
XLA_CALL_ATTR = "_tftrt_xla_call"


def inline_function_calls(graph_def, fetches: Sequence[str] = ()):
    """Inlines every PartitionedCall / StatefulPartitionedCall of a library function.

    Nested calls are inlined too; If / While / Case branches stay functions. A call node ``c``
    becomes its body's nodes named ``c/<node>``: argument ``i`` reads the call's ``i``-th input,
    consumers of ``c:k`` read the tensor the body returns for output ``k``, and the call's
    control inputs become control inputs of the body nodes that have no input inside the body.
    Where ``c:k`` is in ``fetches`` or a node waits on ``^c``, a node named ``c`` stays, so the
    graph's outputs and control edges keep their names: an IdentityN of the returned tensors
    where an output is fetched, else a NoOp; it waits on the body's control outputs (the
    stateful ops ``^c`` orders, as TF's own inliner does for tf.functions). The body nodes of a
    call marked ``_XlaMustCompile`` (or nested in one) carry ``XLA_CALL_ATTR``: the name of
    the outermost such call.

    Args:
      graph_def: a GraphDef with its function library.
      fetches: tensor names that must keep their names (the graph's outputs).

    Returns:
      A new GraphDef without call nodes; library functions no longer called are dropped.
    """
    from tensorflow.core.framework import graph_pb2

    library = {f.signature.name: f for f in graph_def.library.function}

    def inlinable(node):
        return node.op in CALL_OPS and node.attr["f"].func.name in library

    if not any(inlinable(n) for n in graph_def.node):
        return graph_def
    fetches = {_canonical(t) for t in fetches}
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    # function_def_to_graph_def looks functions up in the default graph (nested calls,
    # function-named ops): one graph holding the library serves every call.
    with _library_graph(library).as_default():
        for _ in range(_MAX_INLINE_ROUNDS + 1):
            calls = [n for n in out.node if inlinable(n)]
            if not calls:
                break
            for call in calls:
                out = _inline_call(out, call.name, library, fetches)
    if calls:
        raise ValueError(f"function calls nested deeper than {_MAX_INLINE_ROUNDS} levels "
                         f"(a recursive function?); tftrt cannot inline them")
    used = _called_functions(out.node, library)
    kept = [f for f in out.library.function if f.signature.name in used]
    del out.library.function[:]
    out.library.function.extend(kept)
    return out


def _called_functions(nodes, library) -> set:
    """Library functions ``nodes`` call, directly (func attrs, function-named ops) or nested."""
    def funcs(node_list):
        for n in node_list:
            if n.op in library:
                yield n.op
            for a in n.attr.values():
                if a.HasField("func"):
                    yield a.func.name
                elif a.HasField("list"):
                    yield from (f.name for f in a.list.func)

    used, todo = set(), list(funcs(nodes))
    while todo:
        name = todo.pop()
        if name not in used and name in library:
            used.add(name)
            todo.extend(funcs(library[name].node_def))
    return used


def _library_graph(library):
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2
    lib = graph_pb2.GraphDef()
    lib.library.function.extend(library.values())
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(lib, name="")
    return g


def _inline_call(graph_def, call_name: str, library, fetches):
    from tensorflow.core.framework import graph_pb2, node_def_pb2
    from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def

    nodes = {n.name: n for n in graph_def.node}
    call = nodes[call_name]
    fdef = library[call.attr["f"].func.name]
    # A Placeholder per argument; ``flat`` maps 'node:out_arg:i' names to 'node:k'.
    body, flat = function_def_to_graph_def(fdef)
    args = [a.name for a in fdef.signature.input_arg]
    call_data = [i for i in call.input if not i.startswith("^")]
    call_control = [i for i in call.input if i.startswith("^")]
    if len(call_data) != len(args):
        raise ValueError(f"call {call_name!r} passes {len(call_data)} inputs to function "
                         f"{fdef.signature.name!r}, which takes {len(args)}")
    arg_source = dict(zip(args, call_data))
    xla_call = _xla_call(call, fdef)

    taken = set(nodes)
    renamed = {}
    for n in body.node:
        if n.name in arg_source:
            continue
        new = f"{call_name}/{n.name}"
        k = 1
        while new in taken:
            new, k = f"{call_name}/{n.name}_{k}", k + 1
        taken.add(new)
        renamed[n.name] = new

    def outer(tensor: str) -> str:
        """A body tensor name ('n:1', '^n') as the outer graph names it."""
        control = tensor.startswith("^")
        node, idx = split_tensor_name(tensor)
        if node in arg_source:
            src = arg_source[node]
            return "^" + split_tensor_name(src)[0] if control else src
        return "^" + renamed[node] if control else tensor_name(renamed[node], idx)

    inlined = []
    for n in body.node:
        if n.name in arg_source:
            continue
        new = node_def_pb2.NodeDef()
        new.CopyFrom(n)
        new.name = renamed[n.name]
        new.device = ""
        if "_class" in new.attr:  # colocation with body nodes under their old names
            del new.attr["_class"]
        inner = any(split_tensor_name(i)[0] in renamed for i in n.input)
        del new.input[:]
        new.input.extend(outer(i) for i in n.input)
        if not inner:  # the call's control inputs hold for the whole body
            new.input.extend(c for c in call_control if c not in new.input)
        if xla_call:
            new.attr[XLA_CALL_ATTR].s = xla_call
        inlined.append(new)

    returned = [outer(flat[fdef.ret[a.name]]) for a in fdef.signature.output_arg]
    control_rets = ["^" + renamed[fdef.control_ret[a]] for a in fdef.signature.control_output
                    if fdef.control_ret.get(a) in renamed]

    def rewire(i: str) -> str:
        node, idx = split_tensor_name(i)
        if node != call_name or idx < 0:
            return i
        return returned[idx]

    fetched = any(tensor_name(call_name, k) in fetches for k in range(len(returned)))
    keep_caller = fetched or any(i == "^" + call_name for n in graph_def.node for i in n.input)
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for n in graph_def.node:
        if n.name == call_name:
            out.node.extend(inlined)
            if keep_caller:
                out.node.append(_caller_stand_in(call, fdef, returned if fetched else [],
                                                 control_rets + call_control))
            continue
        new = out.node.add()
        new.CopyFrom(n)
        if any(split_tensor_name(i)[0] == call_name and not i.startswith("^") for i in n.input):
            del new.input[:]
            new.input.extend(rewire(i) for i in n.input)
    return out


def _xla_call(call, fdef) -> bytes:
    """The XLA-compiled call whose body nodes ``call``'s body nodes join: the one ``call`` lies
    in (XLA compiles the outermost function whole), else ``call`` itself where it or its
    function is marked ``_XlaMustCompile``; else b""."""
    if XLA_CALL_ATTR in call.attr:
        return call.attr[XLA_CALL_ATTR].s
    must = [a.attr["_XlaMustCompile"].b for a in (call, fdef) if "_XlaMustCompile" in a.attr]
    return call.name.encode() if any(must) else b""


def _caller_stand_in(call, fdef, returned: Sequence[str], control: Sequence[str]):
    """The node that keeps a call's name after inlining: IdentityN of the ``returned`` tensors
    (a NoOp where there are none), after the ``control`` inputs."""
    from tensorflow.core.framework import node_def_pb2
    node = node_def_pb2.NodeDef()
    node.name = call.name
    if returned:
        node.op = "IdentityN"
        node.input.extend(returned)
        node.attr["T"].list.type.extend(a.type for a in fdef.signature.output_arg)
    else:
        node.op = "NoOp"
    node.input.extend(c for c in dict.fromkeys(control))
    return node


# Weights Grappler sees as shapes only (see stub_weights): constants at least this large...
STUB_MIN_BYTES = 1 << 16
# ...whose every consumer (through Identity nodes) takes them as an operand that Grappler's
# passes fold into nothing: matrix products, and convolutions that no constant multiplies
# (constant folding's MulConvPushDown and the arithmetic optimizer's FoldMultiplyIntoConv fold
# a Mul by a constant before or after a convolution into its filter: a batch norm's scale).
STUB_MATMULS = frozenset({"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum"})
STUB_CONVS = frozenset({"Conv2D", "Conv3D", "DepthwiseConv2dNative", "Conv2DBackpropInput",
                        "Conv3DBackpropInputV2"})
# What may read an unscaled convolution's output (through Identity and BiasAdd nodes): ops
# no pass folds a constant through into the filter. Anything else (a batch norm's Mul, an
# Add, a Cast) keeps the filter a constant for Grappler.
_SAFE_AFTER_CONV = frozenset({
    "Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "MaxPool",
    "MaxPool3D", "AvgPool", "AvgPool3D", "ConcatV2", "Pad", "MirrorPad", "Conv2D", "Conv3D",
    "DepthwiseConv2dNative", "Softmax", "Reshape", "Squeeze"})
# Its data input must not be one of these (FoldMultiplyIntoConv looks through them).
_SCALED_INPUT = frozenset({"Mul", "RealDiv", "Div", "Cast", "Transpose"})
STUB_ATTR = "_tftrt_weight_stub"


def stub_weights(graph_def) -> Tuple[object, Dict[str, object]]:
    """(``graph_def`` with its large weights as Placeholders of their dtype and shape, the
    Const NodeDefs they replace by name).

    Grappler copies and scans the whole graph in every pass: with the weights in it, its
    passes took 35 s of VGG16's conversion (0.5 GB of weights; 0.5 s without). A weight is
    stubbed only where no pass would fold it into another constant (its consumers, through
    Identity nodes, are matrix products or unscaled convolutions; see
    :data:`STUB_MIN_BYTES`), so that the cleaned graph is the one Grappler makes with the
    weights in it, up to the names of constants; the rest of the graph keeps its
    constants (control edges from a weight read no value and do not count). Each stub carries
    its own name in an attribute, so that no pass merges two.
    :func:`restore_weights` puts the constants back."""
    from tensorflow.core.framework import graph_pb2
    consumers: Dict[str, List[str]] = {}  # node -> its readers ("^" for a control edge)
    ops: Dict[str, str] = {}
    inputs: Dict[str, List[str]] = {}  # node -> the nodes of its data inputs
    for n in graph_def.node:
        ops[n.name] = n.op
        inputs[n.name] = []
        for i in n.input:
            src, index = split_tensor_name(i)
            consumers.setdefault(src, []).append("^" if index < 0 else n.name)
            if index >= 0:
                inputs[n.name].append(src)

    def unscaled_after(name: str, depth: int = 0) -> bool:
        for u in consumers.get(name, []):
            if u == "^":
                continue
            op = ops.get(u)
            if op in ("Identity", "BiasAdd"):
                if depth > 8 or not unscaled_after(u, depth + 1):
                    return False
            elif op not in _SAFE_AFTER_CONV:
                return False
        return True

    def unscaled_conv(conv: str) -> bool:
        data = inputs[conv][2 if ops[conv].endswith("BackpropInput") or
                            ops[conv].endswith("BackpropInputV2") else 0]
        return ops.get(data) not in _SCALED_INPUT and unscaled_after(conv)

    def only_weight_uses(name: str, depth: int = 0) -> bool:
        users = [u for u in consumers.get(name, []) if u != "^"]  # control edges read nothing
        if not users or depth > 8:
            return False
        for u in users:
            op = ops.get(u)
            if op == "Identity":
                if not only_weight_uses(u, depth + 1):
                    return False
            elif not (op in STUB_MATMULS or (op in STUB_CONVS and unscaled_conv(u))):
                return False
        return True

    stubs: Dict[str, object] = {}
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for n in graph_def.node:
        if (n.op == "Const" and "value" in n.attr and
                n.attr["value"].tensor.ByteSize() >= STUB_MIN_BYTES and
                only_weight_uses(n.name)):
            stubs[n.name] = n
            stub = out.node.add(name=n.name, op="Placeholder", device=n.device)
            stub.attr["dtype"].type = n.attr["dtype"].type
            stub.attr["shape"].shape.CopyFrom(n.attr["value"].tensor.tensor_shape)
            stub.attr[STUB_ATTR].s = n.name.encode()
        else:
            out.node.add().CopyFrom(n)
    return out, stubs


def restore_weights(graph_def, stubs: Dict[str, object]):
    """Puts the constants :func:`stub_weights` took out back into ``graph_def`` (in place)."""
    for n in graph_def.node:
        if n.op == "Placeholder" and STUB_ATTR in n.attr:
            n.CopyFrom(stubs[n.attr[STUB_ATTR].s.decode()])
    return graph_def


def run_grappler_passes(graph_def, graph, fetches: Sequence[str],
                        optimizers: Sequence[str] = GRAPPLER_OPTIMIZERS):
    """Runs Grappler's clean-up optimizers on ``graph_def``, keeping ``fetches`` alive; large
    weights pass through as shapes (:func:`stub_weights`). A graph with a Pow of a constant
    exponent with dimensions runs without the arithmetic optimizer
    (:func:`_pows_that_may_broadcast`)."""
    graph_def, stubs = stub_weights(graph_def)
    pows = _pows_that_may_broadcast(graph_def)
    if pows and "arithmetic" in optimizers:
        log.debug("Grappler without its arithmetic optimizer: %d Pow(s) of a constant "
                  "exponent with dimensions (%s)", len(pows), ", ".join(pows[:3]))
        optimizers = [o for o in optimizers if o != "arithmetic"]
    return restore_weights(_run_grappler(graph_def, graph, fetches, optimizers), stubs)


def _pows_that_may_broadcast(graph_def) -> List[str]:
    """Pow nodes whose exponent is a constant of one or more dimensions. Grappler's
    arithmetic optimizer turns x ** c of a constant c of one repeated value 2, 3, 0.5, -0.5
    or -1 into Square / Sqrt / Rsqrt / Reciprocal of x in place, dropping the shape the
    exponent broadcast x to (a fetch too: it keeps the node's name, not its op): x [2] **
    [[[2.]]] came out [2] instead of [1, 1, 2] (a wrong reduction after it, or the converted
    function failing to build: differential fuzz, s48). A scalar exponent cannot broadcast."""
    consts = {n.name: n for n in graph_def.node if n.op == "Const"}
    out = []
    for n in graph_def.node:
        if n.op != "Pow" or len(n.input) < 2:
            continue
        c = consts.get(n.input[1].split(":")[0].lstrip("^"))
        if c is not None and len(c.attr["value"].tensor.tensor_shape.dim) > 0:
            out.append(n.name)
    return out


def _run_grappler(graph_def, graph, fetches: Sequence[str], optimizers: Sequence[str]):
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer
    from tensorflow.python.training import saver

    meta = saver.export_meta_graph(graph_def=graph_def, graph=graph)
    fetch_collection = meta_graph_pb2.CollectionDef()
    for name in fetches:
        fetch_collection.node_list.value.append(name)
    meta.collection_def["train_op"].CopyFrom(fetch_collection)
    config = config_pb2.ConfigProto()
    rw = config.graph_options.rewrite_options
    rw.min_graph_nodes = -1
    rw.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    rw.remapping = rewriter_config_pb2.RewriterConfig.OFF
    del rw.optimizers[:]
    rw.optimizers.extend(optimizers)
    return tf_optimizer.OptimizeGraph(config, meta, graph_id=b"tf_graph")


def signature_graph(path, tags=None, signature_key=None) -> SignatureGraph:
    """Loads, freezes and cleans one signature of a SavedModel."""
    saved, func = load_signature(path, tags, signature_key)
    return function_graph(func, saved)


def function_graph(func, saved_model=None) -> SignatureGraph:
    frozen, graph_def = freeze_and_clean(func)
    inputs = [t.name for t in frozen.inputs]
    outputs = [t.name for t in frozen.outputs]
    info = GraphInfo(graph_def, inputs, outputs)
    arg_names = _input_arg_names(func, len(inputs))
    return SignatureGraph(info, func, frozen, arg_names, saved_model)


def _sanitized(name: str) -> str:
    """TensorFlow's keyword for a signature key that is no identifier (function_type's
    sanitize_arg_name, TF 2.21: other characters than letters and digits become "_", and a
    name not starting with a letter gets "arg_" before it)."""
    swapped = "".join(c if c.isalnum() else "_" for c in name)
    return swapped if swapped[:1].isalpha() else "arg_" + swapped


def _input_arg_names(func, n: int) -> List[str]:
    """Keyword names of a signature's inputs, in the order of func.inputs."""
    import tensorflow as tf
    try:
        args, kwargs = func.structured_input_signature
        if not args and isinstance(kwargs, dict) and len(kwargs) == n and \
                all(isinstance(s, tf.TensorSpec) for s in kwargs.values()):
            # A signature is called with its keys: TensorFlow sanitizes a TF2 spec name that
            # is not an identifier ("in/put" -> key "in_put") and keeps the spec's name. A TF1
            # signature's key may be no identifier ("in-put/0", "2ids"): the keyword is TF's
            # sanitized name ("in_put_0", "arg_2ids"), the one a ConcreteFunction binds the
            # original key to (the spec's name, "tensor_2ids", made the converted function
            # refuse "2ids"). tf.nest flattens a dict in sorted key order, func.inputs' order.
            names = [k if k.isidentifier() else _sanitized(k) for k in sorted(kwargs)]
            if all(names) and len(set(names)) == n:
                return names
        specs = tf.nest.flatten(func.structured_input_signature)
        names = [s.name for s in specs if isinstance(s, tf.TensorSpec)]
        if len(names) == n and all(names):
            return names
    except Exception:
        pass
    return [t.name.split(":")[0] for t in func.inputs[:n]]
