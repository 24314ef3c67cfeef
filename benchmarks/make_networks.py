"""Writes the benchmark networks: the segment ONNX networks tftrt's converter makes from seeded
Keras models, with golden outputs computed by native TensorFlow. Runs on the CPU side (needs
TensorFlow); bench_engine.py runs them on the GPU machine, which has no TensorFlow.

    python benchmarks/make_networks.py --out .whl/networks [--models resnet50,mobilenet_v2,encoder]
    (--models also takes any tftrt.zoo.ZOO name: DenseNet121, EfficientNetB0, ...)
    python benchmarks/make_networks.py --out .whl/networks --models resnet50 --int8 4

``--int8 N`` converts with ``precision_mode="INT8", use_calibration=True`` instead, calibrated
on N seeded batches of GOLDEN_BATCH inputs drawn as the golden input is (entropy calibration
on the numpy backend, as convert() does it), and writes ``<name>_int8.*``: the segment
networks carry their quantization tables, so bench_engine.py builds INT8 / FP8 engines from
them (``--models resnet50_int8 --precisions INT8,FP16``; TFTRT_CUPY_QUANTIZED=1).

Per model it writes ``<name>.onnx.xz`` (every segment network, largest first, in one
xz-compressed ONNX list; see ``load_networks``) and ``<name>.golden.npz`` (native TF's output
for the seeded input batch ``golden_input``, and the segmentation summary).

Weights: Keras' seeded initialisers, then every kernel is snapped to five levels
({-2,-1,0,1,2} x its std / sqrt(2), same scale as the initialiser) and the encoder's 12 layers
share one set of weights. The arithmetic is that of the real models; the files compress from
~460 MB of float32 to a size that travels to the GPU machine with the benchmark.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GOLDEN_BATCH = 8


def _low_entropy(model, seed: int, share_prefix: str = None) -> None:
    """Snaps kernels to 5 levels (keeping their scale), randomizes BatchNorm statistics mildly
    (so folding them into convs matters) and, for the encoder, makes every block share block
    0's weights."""
    rng = np.random.default_rng(seed)
    first = {}
    for v in model.weights:
        path = getattr(v, "path", v.name)
        key = path
        if share_prefix:  # encoder: att3/... -> att/... : one set of weights for all blocks
            import re
            key = re.sub(r"([a-z_]+?)(\d+)(/|$)", r"\1\3", path, count=1)
        if key in first:
            v.assign(first[key])
            continue
        val = np.asarray(v.numpy())
        name = path.lower()
        if "moving_variance" in name:
            new = np.round(rng.uniform(0.5, 1.5, val.shape) * 8) / 8
        elif "moving_mean" in name or "beta" in name:
            new = np.round(rng.normal(0, 0.1, val.shape) * 16) / 16
        elif "gamma" in name:
            new = np.round(rng.uniform(0.5, 1.5, val.shape) * 8) / 8
        elif val.ndim >= 2:
            std = float(val.std()) or 0.05
            new = rng.integers(-2, 3, val.shape) * (std / np.sqrt(2))
        else:
            new = val
        new = new.astype(val.dtype)
        v.assign(new)
        first[key] = new


def build(name: str, out: str, input_size: int = None, int8_batches: int = 0) -> dict:
    import tensorflow as tf
    from tftrt import trt_convert as trt
    from tftrt import zoo

    if name in zoo.MODELS:
        fn, shape_fn = zoo.MODELS[name]
        model = fn() if input_size is None else fn(input_size=input_size)
        shape = shape_fn(GOLDEN_BATCH)
    else:  # any zoo model by its name (DenseNet121, EfficientNetB0, ...)
        entry = zoo.ZOO[name]
        model = entry.builder(input_size or entry.size, seed=0)
        shape = entry.input_shape(GOLDEN_BATCH, input_size)
    _low_entropy(model, seed=1, share_prefix="encoder" if name == "encoder" else None)
    x = golden_input(shape)
    golden = np.asarray(model(x, training=False))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        spec = tf.TensorSpec((None,) + tuple(shape[1:]), tf.float32)
        tf.saved_model.save(model, d, signatures=tf.function(
            lambda t: {"output_0": model(t, training=False)}).get_concrete_function(spec))
        if int8_batches:
            conv = trt.TrtGraphConverterV2(input_saved_model_dir=d, precision_mode="INT8",
                                           use_calibration=True, minimum_segment_size=3)
            rng = np.random.default_rng(3)

            def calibration_input_fn():
                for _ in range(int8_batches):
                    yield (rng.standard_normal(tuple(shape)).astype(np.float32),)
            conv.convert(calibration_input_fn=calibration_input_fn)
        else:
            conv = trt.TrtGraphConverterV2(input_saved_model_dir=d, precision_mode="FP32",
                                           minimum_segment_size=3)
            conv.convert()
        ops = conv.engine_ops
        seg = conv.segmentation
    specs = sorted((op.spec for op in ops.values()), key=lambda s: -len(s.onnx_bytes))
    if int8_batches:
        name = f"{name}_int8"
    info = {"model": name, "input_shape": list(shape), "segments": len(specs),
            "segment_nodes": [s.num_nodes for s in specs],
            "segment_inputs": [s.input_shapes for s in specs],
            "segment_outputs": [s.output_shapes for s in specs],
            "convert_seconds": round(time.perf_counter() - t0, 1)}
    try:
        info["coverage"] = seg.summary() if hasattr(seg, "summary") else str(seg)[:300]
    except Exception:
        pass
    buf = io.BytesIO()
    np.savez(buf, *[np.frombuffer(s.onnx_bytes, np.uint8) for s in specs])
    raw = buf.getvalue()
    path = os.path.join(out, f"{name}.onnx.xz")
    with open(path, "wb") as f:
        f.write(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
    np.savez(os.path.join(out, f"{name}.golden.npz"), y=golden,
             info=np.frombuffer(json.dumps(info).encode(), np.uint8))
    info["onnx_mb"] = round(len(raw) / 2 ** 20, 1)
    info["xz_mb"] = round(os.path.getsize(path) / 2 ** 20, 1)
    return info


def golden_input(shape):
    """The seeded input the golden outputs were computed for (numpy's generator is the same
    on every platform, so it is regenerated rather than stored)."""
    return np.random.default_rng(2).standard_normal(tuple(shape)).astype(np.float32)


def load_networks(path: str):
    """The segment ONNX models of ``<name>.onnx.xz``, largest first (onnx.ModelProto list)."""
    import onnx
    with open(path, "rb") as f:
        raw = lzma.decompress(f.read())
    z = np.load(io.BytesIO(raw))
    return [onnx.load_from_string(z[k].tobytes()) for k in sorted(z.files,
                                                                  key=lambda k: int(k[4:]))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".whl/networks")
    ap.add_argument("--models", default="resnet50,mobilenet_v2,encoder")
    ap.add_argument("--int8", type=int, default=0, metavar="N",
                    help="calibrated INT8 conversion on N batches, written as <name>_int8")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name in args.models.split(","):
        info = build(name, args.out, int8_batches=args.int8)
        print(json.dumps(info))


if __name__ == "__main__":
    main()
