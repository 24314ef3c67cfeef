"""save() and tftrt.load(): a converted model as a SavedModel plain TensorFlow can still run.

Layout of a saved directory (besides TensorFlow's own files):

    assets/tftrt/manifest.json      format version, signature, engines (spec + files)
    assets/tftrt/converted.pb       the converted GraphDef, segments as native calls
    assets/tftrt/<engine>.onnx      each segment network
    assets/tftrt/<engine>_<k>.plan  built engines (plans: JSON header + raw weights, no code)

The signature itself calls ``<engine>_native_segment`` functions (PartitionedCall nodes marked
``_tftrt_engine``), so ``tf.saved_model.load`` runs everything natively with correct results.
``tftrt.load`` reads the manifest, swaps those calls for engine ops and restores the plans.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from typing import Dict

from tftrt import conversion, rewrite
from tftrt.engine_op import EngineSpec, TRTEngineOp

log = logging.getLogger("tftrt.saving")

FORMAT_VERSION = 1
ASSET_DIR = os.path.join("assets", "tftrt")
MANIFEST = "manifest.json"


def _check_output_dir(path: str) -> None:
    if os.path.isfile(path):
        raise ValueError(f"output_saved_model_dir {path!r} is a file; give a directory path")
    if os.path.isdir(path) and os.listdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"output_saved_model_dir {path!r} exists, is not empty and is not "
                             f"a SavedModel; choose a new directory or empty it first")
        # Overwriting an earlier SavedModel: start clean so stale plans don't linger.
        shutil.rmtree(os.path.join(path, ASSET_DIR), ignore_errors=True)


def save(converter, path: str, save_gpu_specific_engines: bool = True, options=None) -> None:
    import tensorflow as tf
    _check_output_dir(path)
    sig = converter._sig  # pylint: disable=protected-access
    info = sig.info
    seg = converter._segmentation  # pylint: disable=protected-access
    ops: Dict[str, TRTEngineOp] = converter._engine_ops  # pylint: disable=protected-access
    fdefs = converter._native_fdefs  # pylint: disable=protected-access

    gd, outputs = conversion.native_form_graph_def(info, seg.segments, ops, fdefs)
    sig_fn = rewrite.graph_signature_function(
        gd, info.inputs, outputs, sig.input_names, sig.frozen_func.inputs,
        sig.func.structured_outputs, sig.func.structured_input_signature)
    module = tf.Module()
    key = converter._input_saved_model_signature_key  # pylint: disable=protected-access
    if options is None:
        # A converted model is for inference: tracing every op type's gradient function
        # (TF's default) cost seconds for a BERT-sized graph and saves nothing it uses.
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(module, path, signatures={key: sig_fn}, options=options)

    adir = os.path.join(path, ASSET_DIR)
    os.makedirs(adir, exist_ok=True)
    with open(os.path.join(adir, "converted.pb"), "wb") as f:
        f.write(gd.SerializeToString())
    engines = []
    for name, op in ops.items():
        onnx_file = f"{name}.onnx"
        with open(os.path.join(adir, onnx_file), "wb") as f:
            f.write(op.spec.onnx_bytes)
        plans = []
        if save_gpu_specific_engines:
            for k, (shape_key, engine) in enumerate(op.cache.items()):
                plan_file = f"{name}_{k}.plan"
                with open(os.path.join(adir, plan_file), "wb") as f:
                    f.write(engine.serialize())
                plans.append({"input_shapes": [list(s) for s in shape_key], "file": plan_file,
                              "backend": getattr(engine, "backend", None)})
        engines.append({"spec": op.spec.to_json(), "onnx": onnx_file, "plans": plans})
    manifest = {
        "format_version": FORMAT_VERSION,
        "signature_key": key,
        "inputs": list(info.inputs),
        "outputs": list(outputs),
        "input_names": list(sig.input_names),
        "input_specs": [{"dtype": t.dtype.name, "shape": t.shape.as_list()
                         if t.shape.rank is not None else None}
                        for t in sig.frozen_func.inputs],
        "engines": engines,
    }
    with open(os.path.join(adir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    log.info("saved %d engine op(s) (%d plan(s)) to %s", len(engines),
             sum(len(e["plans"]) for e in engines), path)


class LoadedModel:
    """What tftrt.load returns: the loaded SavedModel with engine-backed signatures.

    Attribute access falls through to the object ``tf.saved_model.load`` returned.
    """

    def __init__(self, loaded, signatures, engine_ops: Dict[str, TRTEngineOp]):
        self._loaded = loaded
        self.signatures = signatures
        self.engine_ops = engine_ops

    def __getattr__(self, name):
        return getattr(self._loaded, name)


def load(path, tags=None, options=None):
    import tensorflow as tf
    from tftrt.graph_io import check_saved_model_dir
    from tftrt.activation import activate
    activate()
    path = check_saved_model_dir(path)
    loaded = tf.saved_model.load(path, tags=tags, options=options)
    mpath = os.path.join(path, ASSET_DIR, MANIFEST)
    if not os.path.isfile(mpath):
        log.info("%s has no tftrt engines; returning the plain SavedModel", path)
        return loaded
    with open(mpath) as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path!r} was written by a tftrt with format version "
                         f"{manifest.get('format_version')}; this tftrt reads version "
                         f"{FORMAT_VERSION}. Convert the original model again.")
    from tensorflow.core.framework import graph_pb2
    gd = graph_pb2.GraphDef()
    with open(os.path.join(path, ASSET_DIR, "converted.pb"), "rb") as f:
        gd.ParseFromString(f.read())
    fdefs = {f.signature.name: f for f in gd.library.function}
    calls = {n.name: n.attr["f"].func.name for n in gd.node if rewrite.ENGINE_ATTR in n.attr}
    adir = os.path.join(path, ASSET_DIR)
    ops: Dict[str, TRTEngineOp] = {}
    for e in manifest["engines"]:
        with open(os.path.join(adir, e["onnx"]), "rb") as f:
            spec = EngineSpec.from_json(e["spec"], f.read())
        op = conversion.engine_op_from_spec(spec, fdefs[calls[spec.name]])
        conversion.restore_plans(op, [(p, functools.partial(_read, os.path.join(adir, p["file"])))
                                      for p in e["plans"]])
        ops[spec.name] = op
    gd, keepalive = conversion.bind_engine_nodes(gd, ops)
    flat = rewrite.flat_function(gd, manifest["inputs"], manifest["outputs"])
    key = manifest["signature_key"]
    original = loaded.signatures[key]
    specs = [tf.TensorSpec(s["shape"], tf.as_dtype(s["dtype"])) for s in manifest["input_specs"]]
    fn = rewrite.signature_function(flat, manifest["input_names"], specs,
                                    original.structured_outputs, keepalive,
                                    original.structured_input_signature)
    direct = rewrite.single_engine_mapping(gd, manifest["inputs"], manifest["outputs"],
                                           list(ops))
    if direct is not None and os.environ.get("TFTRT_DIRECT_CALL", "1") != "0":
        # The whole signature is one engine: skip TensorFlow's function call machinery.
        name, in_map, out_map = direct
        fn = rewrite.DirectSignature(ops[name], in_map, out_map, manifest["input_names"],
                                     specs, original.structured_outputs, fn)
    signatures = dict(loaded.signatures)
    signatures[key] = fn
    return LoadedModel(loaded, signatures, ops)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
