"""A converted signature as a Python-level pipeline: native stages and engine calls in turn.

Inside a TensorFlow graph an engine is an ``EagerPyFunc`` node plus an ``If`` (rewrite.py);
each such boundary cost 1.2-1.8 ms on an H200 (TF's dispatch into Python, the callback's
DLPack and CUDA-graph launch slowed inside it, the Switch/Merge), against 0.05 ms for the
engine itself. ``tftrt.load`` runs a signature instead as a plan made here from its native-form
GraphDef:

    stage 0 (native) -> engine 0 -> stage 1 (native) -> engine 1 -> ... -> stage n

Engines are numbered in topological order. A native node belongs to stage k when the latest
engine it depends on (through data or control edges) is engine k-1; stage k runs after
engine k-1, so every tensor engine k reads is ready, and every native node runs exactly once.
Identity nodes are aliases (no step); Const nodes are evaluated once at plan time. A stage of
a few plain ops runs op by op as eager operations (~0.02 ms each); a larger one, or one with
function-valued attributes, runs as one ConcreteFunction imported from its own nodes
(~0.07 ms a call). Engines are called straight from Python (``TRTEngineOp.__call__``): GPU
tensors cross through DLPack, and a native fallback is a top-level call.

Not used (``plan_signature`` returns None, the caller keeps the graph function) for graphs
with TF1 control-flow frames (Switch / Merge / Enter / Exit / NextIteration), which must not be
cut, for graphs where an engine, or a node of another stage, waits on a native node through a
control edge (a stage runs for the tensors it hands out, so a side effect only a control edge
keeps would not run), and for any graph the planner cannot cut for another reason (logged at
DEBUG).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

from tftrt.graph_io import split_tensor_name, tensor_name
from tftrt.logs import first_error_line

log = logging.getLogger("tftrt.pipeline")

FRAME_OPS = frozenset({"Switch", "RefSwitch", "Merge", "RefMerge", "Enter", "RefEnter", "Exit",
                       "RefExit", "NextIteration", "RefNextIteration", "LoopCond",
                       "ControlTrigger"})
ALIAS_OPS = frozenset({"Identity", "Snapshot", "StopGradient", "PreventGradient"})
SKIP_OPS = frozenset({"NoOp"})
EAGER_STAGE_MAX_OPS = 12  # larger stages run as one function call


class PlanError(Exception):
    """The graph cannot be run as a pipeline (the caller uses the graph function)."""


def _canon(t: str) -> str:
    return tensor_name(*split_tensor_name(t))


class _Graph:
    """The native-form GraphDef with Identity chains resolved and a topological order."""

    def __init__(self, graph_def, engine_names, input_tensors):
        self.nodes = {n.name: n for n in graph_def.node}
        self.engines = [e for e in engine_names if e in self.nodes]
        self.inputs = [_canon(t) for t in input_tensors]
        self.input_nodes = {split_tensor_name(t)[0] for t in self.inputs}
        for n in graph_def.node:
            if n.op in FRAME_OPS:
                raise PlanError(f"node {n.name!r} is TF1 control flow ({n.op})")
        self.order = self._topological()

    def resolve(self, t: str) -> str:
        """The tensor an Identity chain starting at ``t`` forwards."""
        name, idx = split_tensor_name(t)
        seen = 0
        while name not in self.input_nodes and self.nodes.get(name) is not None and \
                self.nodes[name].op in ALIAS_OPS:
            data = [i for i in self.nodes[name].input if not i.startswith("^")]
            name, idx = split_tensor_name(data[0])
            seen += 1
            if seen > len(self.nodes):
                raise PlanError("Identity cycle")
        return tensor_name(name, idx)

    def _topological(self) -> List[str]:
        pending = {}
        users: Dict[str, List[str]] = {}
        for n in self.nodes.values():
            srcs = {split_tensor_name(i.lstrip("^"))[0] for i in n.input}
            srcs = {s for s in srcs if s in self.nodes}
            pending[n.name] = len(srcs)
            for s in srcs:
                users.setdefault(s, []).append(n.name)
        ready = [name for name, k in pending.items() if k == 0]
        order = []
        while ready:
            name = ready.pop()
            order.append(name)
            for u in users.get(name, ()):
                pending[u] -= 1
                if pending[u] == 0:
                    ready.append(u)
        if len(order) != len(self.nodes):
            raise PlanError("the graph has a cycle")
        return order


class Plan:
    """Steps over numbered slots: slots 0..k-1 are the signature's inputs."""

    def __init__(self):
        self.slots: Dict[str, int] = {}
        self.constants: Dict[int, object] = {}
        self.steps: List[Tuple[str, object, List[int], List[int]]] = []
        self.outputs: List[int] = []

    def slot(self, t: str) -> int:
        if t not in self.slots:
            self.slots[t] = len(self.slots)
        return self.slots[t]

    def run(self, flat_inputs: Sequence[object]) -> list:
        import tensorflow as tf
        env: List[object] = [None] * len(self.slots)
        env[:len(flat_inputs)] = flat_inputs
        for k, v in self.constants.items():
            env[k] = v
        for kind, what, ins, outs in self.steps:
            args = [env[i] for i in ins]
            if kind == "engine":
                results = what(*args)
            else:
                args = [a if isinstance(a, tf.Tensor) else tf.convert_to_tensor(a)
                        for a in args]
                results = what(args)
            for j, v in zip(outs, results):
                env[j] = v
        return [env[i] for i in self.outputs]


def plan_signature(graph_def, inputs: Sequence[str], outputs: Sequence[str],
                   engine_ops: Dict[str, object], input_dtypes) -> Optional[Plan]:
    """The pipeline for the native-form ``graph_def`` (engine nodes named as ``engine_ops``'
    keys), or None when it cannot be cut (logged at DEBUG)."""
    try:
        return _plan(graph_def, inputs, outputs, engine_ops, input_dtypes)
    except PlanError as err:
        log.debug("signature runs as one graph function: %s", err)
        return None


def _plan(graph_def, inputs, outputs, engine_ops, input_dtypes) -> Plan:
    import tensorflow as tf
    g = _Graph(graph_def, list(engine_ops), inputs)
    engine_set = set(g.engines)
    # Stage of each node: 0 for inputs; an engine's outputs are of stage index + 1. Sources
    # are taken as written (an Identity or NoOp carries its own control inputs' stage).
    stage: Dict[str, int] = {n: 0 for n in g.input_nodes}
    engine_index: Dict[str, int] = {}
    for name in g.order:
        node = g.nodes[name]
        if name in g.input_nodes:
            continue
        s = 0
        for i in node.input:
            src = split_tensor_name(i.lstrip("^"))[0]
            if src in engine_index:
                s = max(s, engine_index[src] + 1)
            else:
                s = max(s, stage.get(src, 0))
        if name in engine_set:
            if s > len(engine_index):
                raise PlanError(f"engine {name} reads a tensor computed after it")
            engine_index[name] = len(engine_index)
        else:
            stage[name] = s
    _check_control_edges(g, stage, engine_index)
    engines = sorted(engine_index, key=engine_index.get)
    # What each engine reads, resolved through aliases.
    engine_reads = [[g.resolve(i) for i in g.nodes[name].input if not i.startswith("^")]
                    for name in engines]
    out_tensors = [g.resolve(_canon(t)) for t in outputs]
    members: Dict[int, List[str]] = {}
    for name in g.order:
        if name in stage and name not in g.input_nodes and \
                g.nodes[name].op not in ALIAS_OPS | SKIP_OPS:
            members.setdefault(stage[name], []).append(name)
    # Tensors each stage must hand out (an insertion-ordered set per stage): read by an
    # engine, another stage or the outputs.
    fetches: Dict[int, Dict[str, None]] = {k: {} for k in members}

    def need(t: str, reader_stage: Optional[int]):
        src = split_tensor_name(t)[0]
        if src in stage and src not in g.input_nodes and stage[src] != reader_stage and \
                stage[src] in fetches:
            fetches[stage[src]][t] = None
    for ts in engine_reads:
        for t in ts:
            need(t, None)
    for t in out_tensors:
        need(t, None)
    for k, names in members.items():
        for name in names:
            for i in g.nodes[name].input:
                if not i.startswith("^"):
                    need(g.resolve(i), k)

    plan = Plan()
    for t in g.inputs:
        plan.slot(t)
    dtypes = _Dtypes(g, graph_def, dict(zip(g.inputs, input_dtypes)))
    for name in engines:
        op = engine_ops[name]
        for j, dt in enumerate(op.spec.output_dtypes):
            dtypes.known[tensor_name(name, j)] = tf.as_dtype(dt)
    for k in range(len(engines) + 1):
        if k in members:  # _add_stage skips a stage with nothing to hand out or do
            _add_stage(plan, g, graph_def, members[k], list(fetches[k]), dtypes)
        if k < len(engines):
            name = engines[k]
            ins = [plan.slot(t) for t in engine_reads[k]]
            n_out = len(engine_ops[name].spec.output_dtypes)
            plan.steps.append(("engine", engine_ops[name], ins,
                               [plan.slot(tensor_name(name, j)) for j in range(n_out)]))
    for t in out_tensors:
        if t not in plan.slots:
            raise PlanError(f"output {t} is computed by nothing the plan runs")
    plan.outputs = [plan.slots[t] for t in out_tensors]
    return plan


def _check_control_edges(g: _Graph, stage: Dict[str, int], engine_index: Dict[str, int]):
    """Raises PlanError for a control edge from a native node to an engine, into another
    stage, or onto a Const: the plan runs a stage for the tensors it hands out and makes
    Consts values once, so a node that only a control edge keeps (a py_func hook under
    tf.control_dependencies, helper hunts 2026-12-01) would not run. Such a graph runs as one
    graph function, which keeps every edge."""
    for name in g.order:
        for i in g.nodes[name].input:
            src = i[1:]
            if not i.startswith("^") or src in g.input_nodes or src in engine_index or \
                    src not in g.nodes or g.nodes[src].op == "Const":
                continue
            if name in engine_index or stage.get(name) != stage.get(src) or \
                    g.nodes[name].op == "Const":
                raise PlanError(f"{name} waits on the native node {src} through a control "
                                f"edge")


def _add_stage(plan: Plan, g: _Graph, graph_def, names: List[str], fetch: List[str],
               dtypes: "_Dtypes") -> None:
    """Adds stage ``names`` (topological order) to ``plan``: Consts become constant slots,
    the rest one step (eager ops or a ConcreteFunction) reading slots, filling ``fetch``.
    A stage that hands out nothing still runs when it holds a stateful op: a py_func hook or
    a file write whose output nothing reads, kept in TF only by the control edge that
    Identity aliases drop here, was skipped silently (helper hunt, 2026-12-04). Its function
    runs every stateful op it holds (automatic control dependencies)."""
    inside = set(names)
    reads: Dict[str, None] = {}  # what the body reads from outside it, in order
    body = []
    for name in names:
        node = g.nodes[name]
        if node.op == "Const":
            plan.constants[plan.slot(tensor_name(name, 0))] = _constant(node)
            continue
        body.append(name)
        for i in node.input:
            if i.startswith("^"):
                continue
            t = g.resolve(i)
            src = split_tensor_name(t)[0]
            if src not in inside or g.nodes[src].op == "Const":  # Consts: constant slots
                reads[t] = None
    in_body = set(body)
    wanted = [t for t in fetch if split_tensor_name(t)[0] in in_body]
    if not wanted and not any(_stateful(g.nodes[name]) for name in body):
        return
    feeds = list(reads)
    step = _eager_stage(g, body, feeds, wanted) if len(body) <= EAGER_STAGE_MAX_OPS else None
    if step is None:
        try:
            step = _function_stage(g, graph_def, body, feeds, wanted, dtypes)
        except (ValueError, TypeError) as e:
            # its inputs enter as tensors of unknown rank, which some shape functions refuse
            # (SpaceToBatchND of a dilated conv on unknown H/W beside a grouped conv's
            # jit_compile function: "block_shape must have rank 1", and convert() failed;
            # image hunt, 2026-12-04): the signature runs as one graph function instead
            raise PlanError(f"a native stage of {len(body)} ops does not trace as a function "
                            f"of unknown-rank inputs: {first_error_line(e)}") from None
    plan.steps.append(("stage", step, [plan.slot(t) for t in feeds],
                       [plan.slot(t) for t in wanted]))


def _stateful(node) -> bool:
    """Whether TF runs ``node`` for its effect whatever reads its outputs: a stateful op
    (tf.function's automatic control dependencies keep each one, through a control edge onto
    the signature's output Identity or none at all). An op TF does not know counts as
    stateful."""
    from tensorflow.python.framework import op_def_registry
    op_def = op_def_registry.get(node.op)
    return op_def is None or op_def.is_stateful


# --- eager stages ----------------------------------------------------------------------------------


def _attr_value(a):
    """An AttrValue as what ``execute`` takes, or raise PlanError."""
    kind = a.WhichOneof("value")
    if kind == "type":
        return a.type
    if kind in ("i", "f", "b", "s"):
        return getattr(a, kind)
    if kind == "shape":
        return None if a.shape.unknown_rank else [d.size for d in a.shape.dim]
    if kind == "list":
        lst = a.list
        for field in ("type", "i", "f", "b", "s"):
            if len(getattr(lst, field)):
                return list(getattr(lst, field))
        if len(lst.shape):
            return [None if s.unknown_rank else [d.size for d in s.dim] for s in lst.shape]
        if len(lst.func) or len(lst.tensor):
            raise PlanError("list attr of functions or tensors")
        return []
    raise PlanError(f"attr of kind {kind}")


def _num_outputs(op_def, attrs) -> int:
    n = 0
    for arg in op_def.output_arg:
        if arg.number_attr:
            if arg.number_attr not in attrs:
                raise PlanError(f"attr {arg.number_attr} missing")
            n += attrs[arg.number_attr].i
        elif arg.type_list_attr:
            if arg.type_list_attr not in attrs:
                raise PlanError(f"attr {arg.type_list_attr} missing")
            n += len(attrs[arg.type_list_attr].list.type)
        else:
            n += 1
    return n


def _constant(node):
    """A Const node's value as an eager tensor, floating ones on the GPU when there is one
    (int32 stays in host memory, where TF keeps shape tensors)."""
    import tensorflow as tf
    value = tf.constant(tf.make_ndarray(node.attr["value"].tensor))
    if value.dtype.is_floating and tf.config.list_logical_devices("GPU"):
        with tf.device("/GPU:0"):
            value = tf.identity(value)
    return value


class _Dtypes:
    """The dtype of each tensor of the graph: given (inputs, engine outputs) or read off the
    producing node's op definition and attributes."""

    def __init__(self, g: _Graph, graph_def, known):
        self.g = g
        self.known = dict(known)
        self.library = {f.signature.name: f for f in graph_def.library.function}

    def of(self, t: str):
        import tensorflow as tf
        from tensorflow.python.framework import op_def_registry
        if t in self.known:
            return self.known[t]
        name, idx = split_tensor_name(t)
        node = self.g.nodes[name]
        op_def = op_def_registry.get(node.op)
        if op_def is None and node.op in self.library:
            op_def = self.library[node.op].signature
        if op_def is None:
            raise PlanError(f"no op definition for {node.op}")
        types = []
        for arg in op_def.output_arg:
            count = node.attr[arg.number_attr].i if arg.number_attr else 1
            if arg.type_list_attr:
                types.extend(node.attr[arg.type_list_attr].list.type)
            elif arg.type_attr:
                if arg.type_attr not in node.attr:
                    raise PlanError(f"attr {arg.type_attr} of {name} missing")
                types.extend([node.attr[arg.type_attr].type] * count)
            else:
                types.extend([arg.type] * count)
        if idx >= len(types):
            raise PlanError(f"{t}: {node.op} has {len(types)} outputs")
        self.known[t] = tf.as_dtype(types[idx])
        return self.known[t]


class _EagerStage:
    """A few plain ops run one by one as eager operations."""

    def __init__(self, ops, n_feeds: int, out_refs):
        self.ops = ops            # (op type, attrs tuple, input refs, number of outputs)
        self.n_feeds = n_feeds    # refs < n_feeds are feeds; then each op's outputs in turn
        self.out_refs = out_refs

    def __call__(self, args):
        from tensorflow.python.eager import context, execute
        ctx = context.context()
        vals = list(args)
        for op_type, attrs, refs, n_out in self.ops:
            outs = execute.execute(op_type, n_out, [vals[r] for r in refs], attrs, ctx)
            vals.extend(outs)
        return [vals[r] for r in self.out_refs]


def _eager_stage(g: _Graph, body: List[str], feeds: List[str], wanted: List[str]):
    from tensorflow.python.framework import op_def_registry
    ref = {t: k for k, t in enumerate(feeds)}
    ops = []
    try:
        for name in body:
            node = g.nodes[name]
            if _stateful(node):
                return None  # a function call op or a stateful one: keep TF's semantics
            op_def = op_def_registry.get(node.op)
            attrs = []
            for k in sorted(node.attr):
                if k.startswith("_"):
                    continue
                attrs.extend([k, _attr_value(node.attr[k])])
            refs = [ref[g.resolve(i)] for i in node.input if not i.startswith("^")]
            n_out = _num_outputs(op_def, node.attr)
            base = len(feeds) + sum(o[3] for o in ops)
            for j in range(n_out):
                ref[tensor_name(name, j)] = base + j
            ops.append((node.op, tuple(attrs), refs, n_out))
        return _EagerStage(ops, len(feeds), [ref[t] for t in wanted])
    except (PlanError, KeyError):
        return None


# --- function stages -------------------------------------------------------------------------------


class _FunctionStage:
    """Stage nodes imported into one ConcreteFunction of the feeds."""

    def __init__(self, fn):
        self.fn = fn
        self._flat = getattr(fn, "_call_flat", None)

    def __call__(self, args):
        if self._flat is not None:
            out = self._flat(list(args), self.fn.captured_inputs)
        else:
            out = self.fn(*args)
        return out if isinstance(out, (list, tuple)) else [out]


def _function_stage(g: _Graph, graph_def, body: List[str], feeds: List[str],
                    wanted: List[str], dtypes: "_Dtypes") -> _FunctionStage:
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2
    from tensorflow.python.framework import importer
    from tftrt.rewrite import called_functions
    gd = graph_pb2.GraphDef()
    gd.versions.CopyFrom(graph_def.versions)
    feed_names = {}
    specs = []
    for k, t in enumerate(feeds):
        dt = dtypes.of(t)
        ph = gd.node.add(name=f"tftrt_feed_{k}", op="Placeholder")
        ph.attr["dtype"].type = tf.as_dtype(dt).as_datatype_enum
        feed_names[t] = f"tftrt_feed_{k}:0"
        specs.append(tf.TensorSpec(None, tf.as_dtype(dt)))
    inside = set(body)
    for name in body:
        node = gd.node.add()
        node.CopyFrom(g.nodes[name])
        if "_class" in node.attr:
            del node.attr["_class"]  # colocation with nodes of other stages
        new_inputs = []
        for i in node.input:
            if i.startswith("^"):
                if i[1:] in inside:
                    new_inputs.append(i)
                continue
            t = g.resolve(i)
            new_inputs.append(feed_names.get(t, t))
        del node.input[:]
        node.input.extend(new_inputs)
    used = called_functions(gd.node, graph_def.library)
    gd.library.function.extend(f for f in graph_def.library.function
                               if f.signature.name in used)

    def stage(*flat):
        outs = importer.import_graph_def(
            gd, input_map={f"tftrt_feed_{k}:0": v for k, v in enumerate(flat)},
            return_elements=[feed_names.get(t, t) for t in wanted], name="")
        return [tf.identity(o) for o in outs]
    fn = tf.function(stage, input_signature=specs, autograph=False).get_concrete_function()
    return _FunctionStage(fn)

