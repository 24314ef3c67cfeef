"""Converted vs native on the same inputs, per output (Polygraphy-like): ``tftrt compare``.

Three depths:
  * outputs: the signature through tftrt.load (engines) against the same SavedModel through
    tf.saved_model.load (every segment runs its native TensorFlow ops);
  * per engine: each engine alone on the tensors the native graph feeds it, against its
    native segment's outputs on those tensors (errors do not accumulate across engines);
  * per layer: each engine's segment network with every intermediate value marked as an
    output (as Polygraphy's "mark all": fusions that would hide a value are then not made),
    built on the engines' backend and precision, against the numpy backend in FP32.

A tensor passes when every element satisfies ``|got - expected| <= atol + rtol * |expected|``
(NaN matches NaN, an infinity matches the same infinity); the report names the worst
elements. A comparison in which an engine ran its native segment proves nothing about that
engine and fails.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt.inputs import dtype_name

# (rtol, atol) per engine precision, for whole models (tests/tolerances.py's values).
DEFAULT_TOLERANCES = {"FP32": (1e-3, 1e-4), "FP16": (2e-2, 2e-2), "BF16": (5e-2, 5e-2),
                      "INT8": (1e-1, 1e-1), "FP8": (1e-1, 1e-1)}


@dataclasses.dataclass
class TensorReport:
    """How one tensor compares."""

    name: str
    shape: Tuple[int, ...] = ()
    dtype: str = ""
    max_abs: float = 0.0
    # the largest error relative to the tensor's largest |expected| (build()'s measure): per
    # element, an expected 0 gave 1e+307 (hunt, s45)
    max_rel: float = 0.0
    mean_abs: float = 0.0
    mismatched: int = 0
    size: int = 0
    worst: List[dict] = dataclasses.field(default_factory=list)  # index, got, expected, error
    error: Optional[str] = None  # not comparable at all (shape, dtype, did not run)
    exact: bool = False  # compared for equality only (strings): no error sizes

    @property
    def passed(self) -> bool:
        return self.error is None and self.mismatched == 0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["passed"] = self.passed
        return d


def compare_arrays(name: str, got, expected, rtol: float, atol: float,
                   top: int = 3) -> TensorReport:
    """Element-wise comparison of ``got`` against ``expected``."""
    g, e = np.asarray(got), np.asarray(expected)
    rep = TensorReport(name, tuple(e.shape), dtype_name(e.dtype), size=int(e.size))
    if g.shape != e.shape:
        rep.error = f"shape {list(g.shape)} where {list(e.shape)} was expected"
        return rep
    if not (_is_float(g.dtype) or g.dtype.kind in "biu") or \
            not (_is_float(e.dtype) or e.dtype.kind in "biu"):
        bad = g != e  # strings, objects: equal or not
        rep.mismatched = int(np.count_nonzero(bad))
        rep.exact = True
        return rep
    # bfloat16 / float8 as floats (they were compared bit for bit, --rtol ignored), complex
    # as complex (its imaginary part was dropped: helper hunt, 2026-12-03)
    wide = np.complex128 if "c" in (g.dtype.kind, e.dtype.kind) else np.float64
    gf, ef = g.astype(wide), e.astype(wide)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(gf - ef)
        same = (gf == ef) | (np.isnan(gf) & np.isnan(ef))
        diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
        # integers and bools within atol alone: rtol let ids in the thousands (classes,
        # tokens) be off by tens and pass, where build()'s check counts them as differing
        # (helper hunt, 2026-12-03)
        scale = 0.0 if e.dtype.kind in "biu" else rtol
        bad = diff > atol + scale * np.abs(np.nan_to_num(ef, nan=0.0, posinf=0.0, neginf=0.0))
        peak = float(np.abs(np.nan_to_num(ef, nan=0.0, posinf=0.0, neginf=0.0)).max()) \
            if e.size else 0.0
        rel = np.where(same, 0.0, diff / max(peak, np.finfo(np.float64).tiny))
    if e.size:
        rep.max_abs = float(diff.max())
        rep.max_rel = float(np.nan_to_num(rel, nan=np.inf, posinf=np.inf).max())
        rep.mean_abs = float(diff.mean()) if np.isfinite(diff).all() else float("inf")
    rep.mismatched = int(np.count_nonzero(bad))
    if rep.mismatched and top:
        flat = np.argsort(-np.where(bad, diff, -1.0), axis=None, kind="stable")[:top]
        for i in flat:
            idx = tuple(int(k) for k in np.unravel_index(i, e.shape))
            rep.worst.append({"index": list(idx), "got": _num(g[idx]), "expected": _num(e[idx]),
                              "abs_error": float(diff[idx])})
    return rep


def _num(v):
    v = np.asarray(v).item()
    if isinstance(v, complex):
        return [v.real, v.imag]
    return v if isinstance(v, (bool, int)) else float(v)


def _to_numpy(t) -> np.ndarray:
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


@dataclasses.dataclass
class Report:
    """A whole comparison: per input batch, per output; optionally per engine and layer."""

    rtol: float
    atol: float
    outputs: List[Tuple[str, TensorReport]] = dataclasses.field(default_factory=list)
    engines: List[Tuple[str, str, TensorReport]] = dataclasses.field(default_factory=list)
    layers: List[Tuple[str, str, str, TensorReport]] = dataclasses.field(default_factory=list)
    problems: List[str] = dataclasses.field(default_factory=list)  # fail the comparison

    @property
    def passed(self) -> bool:
        return not self.problems and all(r.passed for *_, r in
                                         self.outputs + self.engines + self.layers)

    def to_json(self) -> dict:
        return {"passed": self.passed, "rtol": self.rtol, "atol": self.atol,
                "problems": list(self.problems),
                "outputs": [dict(r.to_json(), inputs=b) for b, r in self.outputs],
                "engines": [dict(r.to_json(), inputs=b, engine=n)
                            for b, n, r in self.engines],
                "layers": [dict(r.to_json(), inputs=b, engine=n, op=op)
                           for b, n, op, r in self.layers]}


def engine_boundaries(saved, inputs: Dict[str, np.ndarray]):
    """{engine name: (input arrays, output arrays)} as the native graph computes them."""
    from tensorflow.python.eager import wrap_function
    import tensorflow as tf
    m = saved.manifest
    nodes = {n.name: n for n in saved.graph_def.node}
    fetch, where = [], {}
    for name, spec in saved.specs.items():
        node = nodes[name]
        ins = [i for i in node.input if not i.startswith("^")]
        outs = [f"{name}:{k}" for k in range(len(spec.output_tensors))]
        where[name] = (len(fetch), len(ins), len(outs))
        fetch += ins + outs
    fn = wrap_function.function_from_graph_def(saved.graph_def, list(m["inputs"]), fetch)
    args = [tf.constant(inputs[n]) for n in m["input_names"]]
    values = [_to_numpy(v) for v in fn(*args)]
    out = {}
    for name, (start, n_in, n_out) in where.items():
        out[name] = (values[start:start + n_in], values[start + n_in:start + n_in + n_out])
    return out


def marked_network(onnx_bytes: bytes):
    """The segment network with every intermediate value that has an inferred type marked
    as an output; returns (model, {value name: producing op type})."""
    import onnx
    model = onnx.load_from_string(onnx_bytes)
    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {vi.name: vi for vi in inferred.graph.value_info
             if vi.type.tensor_type.elem_type}
    have = {o.name for o in model.graph.output}
    # A value an output Identity passes on becomes that output (the importer renames it).
    passed_on = {n.input[0] for n in model.graph.node
                 if n.op_type == "Identity" and n.output[0] in have}
    # Values computed from constants and shapes alone (a mean's element count: Shape ->
    # ReduceProd -> Cast) fold to constants in the engine; marked as outputs they stayed
    # layers, a Reshape / Div reading them got data-dependent shapes, and the layers after
    # them ran FP16 where the engine runs INT8 (helper hunt, s44): not marked.
    static = {i.name for i in model.graph.initializer} | {""}
    for node in model.graph.node:
        if node.op_type in ("Constant", "Shape", "Size") or \
                all(i in static for i in node.input):
            static.update(node.output)
    ops = {}
    for node in model.graph.node:
        if node.op_type in ("Constant", "Identity"):
            continue
        for o in node.output:
            if o and o not in have and o not in passed_on and o in typed and \
                    o not in static:
                model.graph.output.append(typed[o])
                have.add(o)
                ops[o] = node.op_type
    return model, ops


def layer_reports(spec, inputs: Sequence[np.ndarray], backend: str, rtol: float,
                  atol: float, top: int = 3) -> List[Tuple[str, TensorReport]]:
    """(op type, report) per marked value of engine ``spec``'s network: built on
    ``backend`` in the engine's precision, against the numpy backend in FP32."""
    from tftrt.engine import BuilderConfig, build_engine
    model, ops = marked_network(spec.onnx_bytes)
    shapes = {f"TensorRTInputPH_{i}": tuple(a.shape) for i, a in enumerate(inputs)}
    # the marked values stored as the engine stores them (float16 in an FP16 engine): as
    # float32 outputs they hid every float16 overflow (helper hunt, 2026-12-02)
    # keep_fp16={}: every layer the table allows quantized, the arithmetic reported, not
    # the timed precision's choice (it times three engines, and may keep FP16 layers)
    tested = build_engine(model, shapes, BuilderConfig(precision=spec.precision_mode,
                                                       backend=backend, keep_fp16={},
                                                       probe_outputs=tuple(ops)))
    ref = build_engine(model, shapes, BuilderConfig(precision="FP32", backend="numpy",
                                                    tactic_timing=False))
    got = dict(zip(tested.output_names, tested.execute(list(inputs))))
    want = dict(zip(ref.output_names, ref.execute(list(inputs))))
    out = []
    for name in [o.name for o in model.graph.output]:
        if name in got and name in want:
            g = got[name].get() if hasattr(got[name], "get") else got[name]
            out.append((ops.get(name, "output"),
                        compare_arrays(name, g, want[name], rtol, atol, top)))
    return out


def compare_saved_model(path: str, batches: Sequence[Dict[str, np.ndarray]], rtol: float,
                        atol: float, signature_key: Optional[str] = None, tags=None,
                        per_engine: bool = False, per_layer: bool = False,
                        top: int = 3) -> Report:
    """Compares the converted SavedModel at ``path`` with its native self on ``batches``.

    Args:
      batches: input dicts keyed by the signature's input names.
      per_engine / per_layer: also compare each engine alone / each layer (see module doc).
    Returns:
      A :class:`Report`.
    Raises:
      saving.NotConvertedError / saving.SavedAssetsError: no usable engines at ``path``.
    """
    import tensorflow as tf
    import tftrt
    from tftrt import saving
    from tftrt.engine_op import resolve_backend
    saved = saving.read_saved_engines(path, tags=tags)  # refuses what tftrt.load would
    key = signature_key or saved.manifest["signature_key"]
    if key != saved.manifest["signature_key"]:
        raise ValueError(f"signature {key!r} has no tftrt engines; the converted one is "
                         f"{saved.manifest['signature_key']!r}")
    converted = tftrt.load(path, tags=tags)
    native = saved.loaded.signatures[key]
    engine_sig = converted.signatures[key]
    report = Report(rtol, atol)
    backend = resolve_backend()
    if backend == "native":
        report.problems.append("the engine backend is 'native' (TFTRT_BACKEND): engines do not "
                               "run, so nothing of them is compared; use --backend numpy or "
                               "cupy")
        return report
    ops = converted.engine_ops
    if not ops:  # converted with no segment (--minimum-segment-size -1, or none found)
        report.problems.append(f"{path} has no engines (no segment was converted), so there "
                               f"is nothing to compare: TensorFlow would be compared with "
                               f"itself")
        return report
    for b, inputs in enumerate(batches):
        label = ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(inputs.items()))
        before = {n: op.stats["native"] for n, op in ops.items()}
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        got, ref = engine_sig(**tensors), native(**tensors)
        fell_back = [n for n, op in ops.items() if op.stats["native"] > before[n]]
        if fell_back:
            report.problems.append(f"inputs {label}: engine(s) {', '.join(fell_back)} ran their "
                                   f"native segment (see the tftrt.engine_op warning), so "
                                   f"they were not compared")
        flat_got, flat_ref = _flatten(got), _flatten(ref)
        for name in flat_ref:
            report.outputs.append((label, compare_arrays(name, _to_numpy(flat_got[name]),
                                                         _to_numpy(flat_ref[name]), rtol,
                                                         atol, top)))
        if per_engine or per_layer:
            bounds = engine_boundaries(saved, inputs)
            for name, (ins, outs) in bounds.items():
                op = ops[name]
                if per_engine:
                    res = op.try_engine([tf.constant(a) for a in ins])
                    for k, want in enumerate(outs):
                        tname = f"{name}:{k}"
                        if res is None:
                            r = TensorReport(tname, error="the engine did not run (it ran its "
                                             "native segment; see the tftrt.engine_op warning)")
                        else:
                            r = compare_arrays(tname, _to_numpy(res[k]), want, rtol, atol, top)
                        report.engines.append((label, name, r))
                if per_layer:
                    try:
                        for op_type, r in layer_reports(op.spec, ins, backend, rtol, atol,
                                                        top):
                            report.layers.append((label, name, op_type, r))
                    except Exception as err:  # report it; the other comparisons stand
                        report.layers.append((label, name, "", TensorReport(
                            "network", error=f"per-layer comparison failed: {type(err).__name__}: "
                                        f"{err}")))
    return report


# build()'s check of the engines against native TF on its first input: the largest error
# (max |engines - native| / max |native| over an output) per precision past which it warns.
# FP32 engines differ by TF32 and summation order (~1e-3); half precision by its rounding,
# which a deep network of random weights can amplify to a few percent (ResNet50 with batch
# norms matched to their inputs: 2.4% for tftrt, 3.3% for Keras' own mixed_float16).
BUILD_CHECK_WARN = {"FP32": 1e-2, "FP16": 5e-2, "INT8": 2e-1, "FP8": 2e-1}


def output_errors(got: Dict[str, object], expected: Dict[str, object]) -> Dict[str, float]:
    """Per output of ``expected``: max |got - expected| / max |expected| over the elements
    where ``expected`` is finite (a float output), or the fraction of elements that differ
    (an integer / bool output); 1.0 where the shapes differ, a finite value became NaN or
    infinite, an infinite or NaN one became anything else (a cumsum past float16's range:
    TF's inf read 0.0 in build()'s check; helper hunt, 2026-12-02), or the output is
    missing."""
    out = {}
    for name, e in expected.items():
        e = _to_numpy(e)
        g = _to_numpy(got[name]) if name in got else None
        if g is None or g.shape != e.shape:
            out[name] = 1.0
            continue
        if e.size == 0:
            out[name] = 0.0
        elif _is_float(e.dtype):
            if e.dtype.kind == "c" or g.dtype.kind == "c":
                # both parts as floats (the imaginary one was dropped by a float64 cast)
                e, g = (np.stack([a.real, a.imag], -1) if a.dtype.kind == "c" else
                        np.stack([a, np.zeros_like(a)], -1) for a in (e, g))
            fin = np.isfinite(e)
            e64, g64 = e[fin].astype(np.float64), g[fin].astype(np.float64)
            en, gn = e[~fin], g[~fin]
            if not np.all(np.isfinite(g64)) or \
                    not np.all((gn == en) | (np.isnan(gn) & np.isnan(en))):
                out[name] = 1.0
                continue
            scale = float(np.max(np.abs(e64))) if e64.size else 0.0
            diff = float(np.max(np.abs(g64 - e64))) if e64.size else 0.0
            out[name] = diff / scale if scale else (0.0 if diff == 0 else 1.0)
        else:
            out[name] = float(np.mean(g != e))
    return out


def _is_float(dtype) -> bool:
    """A float or complex dtype, bfloat16 / float8 (ml_dtypes, numpy kind "V") included:
    without them their error would be the fraction of elements whose last bit flipped, not
    how far they moved."""
    return dtype.kind in "fc" or (dtype.kind == "V" and
                                  dtype.name.startswith(("bfloat", "float")))


def is_float_output(value) -> bool:
    """Whether :func:`output_errors` measures ``value``'s output as floats (a relative error)
    rather than as the fraction of its elements that differ."""
    return _is_float(_to_numpy(value).dtype)


# Stateful ops that only raise on bad values, or call functions whose bodies
# :func:`nondeterministic_ops` reads itself: calling the signature once more is harmless.
_HARMLESS_STATEFUL = {"Assert", "CheckNumerics", "CheckNumericsV2", "While", "If", "Case",
                      "StatefulPartitionedCall"}


def nondeterministic_ops(graph_def) -> Tuple[List[str], List[str]]:
    """(random op types, other stateful op types) in ``graph_def`` and the library functions
    it calls, sorted. Random ops draw new numbers on each call (a fixed op seed too: a second
    call of the same kernel goes on with its sequence), so engines and native TF cannot give
    the same answers; other stateful ops (a py_function, a print) act on each call, so build()
    does not call the native signature once more for its check."""
    from tensorflow.python.framework import op_def_registry
    from tftrt.graph_io import _called_functions
    library = {f.signature.name: f for f in graph_def.library.function}
    nodes = list(graph_def.node)
    for name in _called_functions(graph_def.node, library):
        nodes.extend(library[name].node_def)
    random, stateful = set(), set()
    for n in nodes:
        op_def = op_def_registry.get(n.op)
        if op_def is None or not op_def.is_stateful or n.op in _HARMLESS_STATEFUL:
            continue
        # tf.random.Generator's ops: StatefulUniform*, StatefulStandardNormalV2,
        # StatefulTruncatedNormal, RngReadAndSkip / RngSkip
        is_random = "Random" in n.op or n.op.startswith(("Stateful", "Rng")) or \
            n.op in ("Multinomial", "TruncatedNormal", "ParameterizedTruncatedNormal")
        (random if is_random else stateful).add(n.op)
    return sorted(random), sorted(stateful)


def _flatten(outputs) -> Dict[str, object]:
    if isinstance(outputs, dict):
        return dict(outputs)
    if isinstance(outputs, (list, tuple)):
        return {f"output_{i}": v for i, v in enumerate(outputs)}
    return {"output_0": outputs}


def format_report(report: Report, print_fn, verbose_layers: bool = False) -> None:
    """Human-readable report: one line per tensor, the worst elements of failing ones."""
    def line(prefix: str, r: TensorReport) -> None:
        if r.error:
            print_fn(f"  FAIL {prefix}{r.name}: {r.error}")
            return
        status = "PASS" if r.passed else "FAIL"
        if r.exact:  # strings: equal or not, no error size
            print_fn(f"  {status} {prefix}{r.name} {r.dtype} {list(r.shape)}: {r.mismatched} "
                     f"of {r.size} differ")
            return
        print_fn(f"  {status} {prefix}{r.name} {r.dtype} {list(r.shape)}: max abs error "
                 f"{r.max_abs:.3g} ({r.max_rel:.3g} of the largest expected), mean abs error "
                 f"{r.mean_abs:.3g}, {r.mismatched} of {r.size} outside tolerance")
        for w in r.worst:
            print_fn(f"      at {w['index']}: got {w['got']:.6g}, expected {w['expected']:.6g} "
                     f"(|error| {w['abs_error']:.3g})" if not isinstance(w["got"], bool) else
                     f"      at {w['index']}: got {w['got']}, expected {w['expected']}")

    print_fn(f"tolerance: |converted - native| <= {report.atol:g} + {report.rtol:g} * |native|")
    batches: Dict[str, list] = {}
    for b, r in report.outputs:
        batches.setdefault(b, []).append(r)
    for b, rs in batches.items():
        print_fn(f"inputs {b}:")
        for r in rs:
            line("output ", r)
        for b2, name, r in report.engines:
            if b2 == b:
                line("engine ", r)
        layers = [(n, op, r) for b2, n, op, r in report.layers if b2 == b]
        if layers:
            bad = [x for x in layers if not x[2].passed]
            print_fn(f"  per layer: {len(layers) - len(bad)} of {len(layers)} values within "
                     f"tolerance (engine precision and backend vs numpy FP32; values are "
                     f"marked as outputs, so fusions that hide them are not made)")
            for n, op, r in (layers if verbose_layers else bad[:10]):
                line(f"{n} {op} " if op else f"{n} ", r)
            if not verbose_layers and len(bad) > 10:
                print_fn(f"  ... {len(bad) - 10} more (--json lists all)")
    for p in report.problems:
        print_fn(f"FAIL: {p}")
    print_fn("PASSED" if report.passed else "FAILED")
