"""What a converted SavedModel holds, for ``tftrt inspect``: engines, their TF ops, saved
engines (plans) with their layers after fusion, tactics, precisions and memory, fallback
tactics (on the GPU), and the ops left native with the reasons conversion gave.

Plans get every check tftrt.load makes but the one against this machine's backend and device
(their weights are checksummed, not loaded), so a model built on a GPU can be inspected
anywhere; fallback tactics are decided when a plan's layers get their
GPU implementations, so they are listed on a machine where the CuPy backend works.
"""

from __future__ import annotations

import os
import types
from typing import Callable, Dict, List, Optional

from tftrt import saving


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _plan_description(op, meta, path: str) -> dict:
    """One saved plan of engine op ``op`` (a TRTEngineOp built from the saved spec, never
    run): what its header says, or ``"error"``: why tftrt.load refuses it. The checks are
    tftrt.load's own: the manifest's digest of the file (saving.read_plan), the plan's
    framing, checksums, identity and fields (plan.check_plan, which deserialize_engine
    runs), and the precision / shapes / profiles the engine op accepts (its add_engine).
    Only the backend and device are not checked against this machine: a plan for another
    one is rebuilt there, not refused, and inspect runs anywhere."""
    from tftrt.engine import PlanError
    from tftrt.engine.plan import check_plan, network_sha256
    from tftrt.profiles import profiles_from_config
    meta = meta if isinstance(meta, dict) else {}
    d = {"file": os.path.basename(path), "input_shapes": meta.get("input_shapes"),
         "backend": meta.get("backend")}
    try:
        data = saving.read_plan(path, meta)
        header, network, memory = check_plan(data, op.name, network_sha256(op.spec.onnx_bytes))
        why = _refusal(op, meta, header, network)
    except (OSError, PlanError) as err:
        why = str(err)
    if why is not None:
        d["error"] = why
        return d
    found = profiles_from_config(dict(header.get("config") or {}))  # checked by _refusal
    if found:
        # an opt-shape engine of a ProfileEngine: saved under the engine's cache key (the
        # shapes it was first built for), labelled with its own profiles' opt shapes
        profiles, opt_of = found
        d["input_shapes"] = [list(map(list, profiles[i].opt)) for i in opt_of][0]
        d["opt_of_profiles"] = list(opt_of)
        # the shapes it serves: "for input shapes [[4, ...]]" alone read as a static batch-4
        # engine (ONNX / CLI hunt, s49)
        d["profiles"] = [{what: [list(s) for s in getattr(profiles[i], what)]
                          for what in ("min", "opt", "max")} for i in opt_of]
    layers = [dict({"name": layer.name, "kind": layer.kind, "epilogue": layer.epilogue_summary(),
                    "tactic": layer.tactic or "default",
                    "precision": layer.precision or header.get("precision")},
                   **_projection(layer))
              for layer in network.layers]
    asked = dict(header.get("config") or {}).get("requested_precision")
    if asked:  # builder.timed_precision kept this FP16 engine for an INT8 / FP8 request
        d["requested_precision"] = asked
    d.update(device=header.get("device"), precision=header.get("precision"), layers=layers,
             activation_bytes=memory.total_bytes, weight_bytes=header["weights_bytes"],
             fallback_tactics=_fallback_tactics(op.name, op.spec, header, data))
    return d


def _projection(layer) -> dict:
    """A layer's fused projection shortcut (quantization.fuse_projections) or max pool
    (pool_fusion.fuse_pools), which its kernel runs: {"projection" | "pool": {name, kind,
    precision}}, or nothing. Without it, inspect listed such a layer's epilogue alone and the
    projection nowhere (regression hunt, s51)."""
    out = {}
    for key in ("projection", "pool"):
        d = layer.attrs.get(key)
        if isinstance(d, dict) and (key == "projection" or layer.kind == "conv"):
            out[key] = {k: d.get(k) for k in ("name", "kind", "precision")}
    return out


def _refusal(op, meta: dict, header: dict, network) -> Optional[str]:
    """Why ``op`` does not take the checked plan listed by manifest entry ``meta``, or None:
    what conversion.restore_plans and TRTEngineOp.add_engine refuse after reading it."""
    from tftrt.profiles import opt_shape_mismatch, profiles_from_config
    try:  # the shapes restore_plans reads from the manifest entry
        key = tuple(tuple(int(d) for d in s) for s in meta["input_shapes"])
    except (KeyError, TypeError, ValueError) as err:
        return f"its manifest entry is malformed ({type(err).__name__}: {err})"
    # engine_op reads only these of an engine to judge it (an Engine needs a backend)
    engine = types.SimpleNamespace(config=dict(header.get("config") or {}),
                                   precision=header["precision"],
                                   input_shapes=[network.tensors[n].shape
                                                 for n in network.inputs])
    mismatch = op._saved_engine_mismatch(key, engine)  # pylint: disable=protected-access
    if mismatch:
        return f"it {mismatch}: it belongs to another conversion of this model"
    try:
        found = profiles_from_config(engine.config)
    except (KeyError, TypeError, ValueError) as err:
        return f"it names malformed optimization profiles ({type(err).__name__}: {err})"
    for i in (found[1] if found else ()):
        wrong = opt_shape_mismatch(found[0], i, engine.input_shapes)
        if wrong:  # what ProfileEngine.add_opt_engine refuses
            return f"it does not match its optimization profile ({wrong})"
    return None


def _fallback_tactics(name: str, spec, header: dict, data: bytes) -> Optional[List[dict]]:
    """Layers whose GPU implementation is a fallback tactic (why the first failed); None
    when that cannot be known here (not a CuPy plan, or no working CuPy)."""
    from tftrt.engine.backends import available_backends
    from tftrt.engine.plan import network_sha256
    if header.get("backend") != "cupy" or "cupy" not in available_backends():
        return None
    from tftrt.engine import PlanError, deserialize_engine
    try:
        engine = deserialize_engine(data, backend="cupy", engine_name=name,
                                    network_digest=network_sha256(spec.onnx_bytes))
    except PlanError:  # built for another GPU: its implementations here are not its own
        return None
    impls = engine.backend_impl.engine_impls(engine)
    return [{"layer": l.name, "kind": l.kind, "tactic": l.tactic,
             "implementation": type(i).__name__, "why": i.fallback}
            for l, i in zip(engine.network.layers, impls) if getattr(i, "fallback", None)]


def describe(path: str, tags=None) -> dict:
    """A JSON-able description of the converted SavedModel at ``path`` (key "json") plus the
    objects :func:`write_networks` needs.

    Raises:
      ValueError (saving.NotConvertedError / SavedAssetsError): no usable tftrt assets.
      RefusedPlansError (a SavedAssetsError): saved engines tftrt.load refuses (which, and
        why, in the message); its ``description`` is the whole description.
    """
    from tftrt.engine_op import TRTEngineOp
    from tftrt.inputs import dtype_name, signature_specs
    try:
        saved = saving.read_saved_engines(path, tags=tags)
    except saving.SavedAssetsError as err:
        raise saving.SavedAssetsError(f"the tftrt assets of {path} are refused ({err}); "
                                      f"tftrt.load runs this model natively") from None
    m = saved.manifest
    sig = saved.loaded.signatures[m["signature_key"]]
    outputs = sig.structured_outputs
    outs = outputs.items() if isinstance(outputs, dict) else enumerate(outputs)
    engines = []
    for e in m["engines"]:
        name = e["spec"]["name"]
        spec = saved.specs[name]
        op = TRTEngineOp(spec, native_fn=None)  # judges its plans as tftrt.load's op does
        engines.append({
            "name": name, "precision": spec.precision_mode, "tf_nodes": spec.num_nodes,
            "ops": dict(spec.op_histogram),
            "inputs": [{"name": f"TensorRTInputPH_{i}", "from": t, "dtype": dt, "shape": s}
                       for i, (t, dt, s) in enumerate(zip(spec.input_tensors, spec.input_dtypes,
                                                          spec.input_shapes))],
            "outputs": [{"name": f"TensorRTOutputPH_{i}", "dtype": dt, "shape": s}
                        for i, (dt, s) in enumerate(zip(spec.output_dtypes,
                                                        spec.output_shapes))],
            "maximum_cached_engines": spec.maximum_cached_engines,
            "allow_build_at_runtime": spec.allow_build_at_runtime,
            "weights_shared_with_saved_model": len(e.get("weights", [])),
            "plans": [_plan_description(op, meta, p) for meta, p in saved.plan_files[name]],
        })
    info = {
        "model": saved.path, "signature": m["signature_key"],
        "inputs": {k: {"dtype": dtype_name(dt), "shape": s}
                   for k, (dt, s) in signature_specs(sig).items()},
        "outputs": {str(k): {"dtype": v.dtype.name,
                             "shape": v.shape.as_list() if v.shape.rank is not None else None}
                    for k, v in outs},
        "format_version": m.get("format_version"),
        "conversion": m.get("conversion"),
        "engines": engines,
    }
    described = {"json": info, "saved": saved}
    refused = [f"{p['file']} ({e['name']}, input shapes {p['input_shapes']}): {p['error']}"
               for e in engines for p in e["plans"] if "error" in p]
    if refused:
        raise RefusedPlansError(
            f"{len(refused)} saved engine(s) of {path} are refused, as tftrt.load refuses "
            f"them (it rebuilds those engines, or runs them natively): " + "; ".join(refused),
            described)
    return described


class RefusedPlansError(saving.SavedAssetsError):
    """Saved engines (plans) of a model that tftrt.load refuses; the rest of the model loads.
    ``description``: what :func:`describe` would have returned, refused plans marked."""

    def __init__(self, message: str, description: dict):
        super().__init__(message)
        self.description = description


def write_networks(info: dict, outdir: str) -> List[str]:
    """Writes each engine's whole segment network as ``outdir``/<engine>.onnx."""
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for name, spec in info["saved"].specs.items():
        p = os.path.join(outdir, f"{name}.onnx")
        with open(p, "wb") as f:
            f.write(spec.onnx_bytes)
        paths.append(p)
    return paths


def _shape(s) -> str:
    if s is None:
        return "[<unknown rank>]"
    return "[" + ", ".join("?" if d is None else str(d) for d in s) + "]"


def _kept_for(plan: dict) -> str:
    """What a plan's precision leaves unsaid: " (kept for the INT8 request: ...)" where
    timed precision kept this FP16 plan for a quantized request; empty otherwise."""
    asked = plan.get("requested_precision")
    return (f" (kept for the {asked} request: FP16 measured faster on the device that built "
            f"it)" if asked and asked != plan.get("precision") else "")


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_description(info: dict, print_fn: Callable[[str], None], layers: bool = True) -> None:
    d = info["json"]
    ins = ", ".join(f"{k} {v['dtype']} {_shape(v['shape'])}" for k, v in d["inputs"].items())
    outs = ", ".join(f"{k} {v['dtype']} {_shape(v['shape'])}" for k, v in d["outputs"].items())
    print_fn(f"model {d['model']}, signature {d['signature']!r}: {ins} -> {outs}")
    conv = d.get("conversion")
    engines = d["engines"]
    if conv:
        total, done = conv["ops_total"], conv["ops_converted"]
        pct = 100.0 * done / total if total else 0.0
        print_fn(f"converted: {done} of {total} ops ({pct:.2f}%) in {len(engines)} engine(s)")
        left = conv.get("left_native") or {}
        if left:
            consts = conv.get("consts_native") or 0  # (a model saved before s54: unknown)
            print_fn("left native: " + ", ".join(f"{op} {n}x" for op, n in left.items()) +
                     (f" (and {consts} Const, not listed)" if consts else ""))
            for op in left:
                for why, n in (conv.get("reasons", {}).get(op) or {}).items():
                    print_fn(f"  - {op} ({n}x): {why}")
    else:
        print_fn(f"{len(engines)} engine(s) (the ops left native were not recorded by the tftrt "
                 f"that saved this model)")
    for e in engines:
        print_fn("")
        print_fn(f"{e['name']}: {e['precision']}, {e['tf_nodes']} TF nodes, up to "
                 f"{e['maximum_cached_engines']} cached engine(s), build at run time: "
                 f"{'yes' if e['allow_build_at_runtime'] else 'no'}")
        for i in e["inputs"]:
            print_fn(f"  input  {i['name']} {i['dtype']} {_shape(i['shape'])} <- {i['from']}")
        for o in e["outputs"]:
            print_fn(f"  output {o['name']} {o['dtype']} {_shape(o['shape'])}")
        print_fn("  TF ops: " + ", ".join(f"{op} {n}x" for op, n in e["ops"].items()))
        if e["weights_shared_with_saved_model"]:
            print_fn(f"  segment network: {e['weights_shared_with_saved_model']} weight(s) "
                     f"stored once, in saved_model.pb's native segment")
        if not e["plans"]:
            print_fn("  no saved engine: engines build when the model first runs each shape"
                     if e["allow_build_at_runtime"] else "  no saved engine, and no build at "
                     "run time: every call runs the native segment")
        for k, p in enumerate(e["plans"]):
            shapes = p.get("input_shapes")
            if "error" in p:
                then = ("tftrt.load rebuilds it" if e["allow_build_at_runtime"] else
                        "its shapes run the native segment")
                print_fn(f"  saved engine {k} ({p['file']}) for input shapes {shapes}: refused "
                         f"({then}): {p['error']}")
                continue
            served = "".join(f" (optimization profile: min {q['min']}, max {q['max']})"
                             for q in p.get("profiles", ()))
            print_fn(f"  saved engine {k} for input shapes {shapes}{served}: {p['backend']} on "
                     f"{p['device']}, {p['precision']}{_kept_for(p)}, {len(p['layers'])} "
                     f"layers after fusion, {_mib(p['activation_bytes'])} activation memory, "
                     f"{_mib(p['weight_bytes'])} weights")
            if layers:
                _layer_table(p["layers"], print_fn)
            fb = p.get("fallback_tactics")
            if fb is None:
                print_fn("    fallback tactics: known where the CuPy backend runs the plan "
                         "(a GPU machine)")
            elif not fb:
                print_fn("    fallback tactics: none")
            else:
                print_fn(f"    fallback tactics: {len(fb)} layer(s)")
                for f in fb:
                    print_fn(f"      {f['layer']} ({f['kind']} {f['tactic']} -> "
                             f"{f['implementation']}): {f['why']}")


def _layer_table(rows: List[Dict[str, str]], print_fn) -> None:
    cols = ["#", "layer", "kind", "epilogue", "tactic", "precision"]
    table = [[str(i), r["name"], r["kind"], (r["epilogue"] or "-") + (
              f" (+ projection {r['projection']['name']})" if r.get("projection") else "") +
              (f" (+ max pool {r['pool']['name']})" if r.get("pool") else ""),
              str(r["tactic"]), str(r["precision"] or "-")] for i, r in enumerate(rows)]
    widths = [min(max([len(c)] + [len(t[i]) for t in table]), 60) for i, c in enumerate(cols)]

    def fmt(vals):
        return "    " + "  ".join((v if len(v) <= w else v[:w - 3] + "...").ljust(w)
                                  for v, w in zip(vals, widths)).rstrip()
    print_fn(fmt(cols))
    for t in table:
        print_fn(fmt(t))
