"""The zoo's image stems alone (a 3-channel convolution + ReLU, FP16, CuPy backend), with the
input channels padded to 8 (passes/channel_padding.py) and without, in one process:

    PYTHONPATH=$PWD python benchmarks/bench_stems.py [--batch 128]

Prints a table: median ms (CUDA events, after warm-up) per stem and setting, and the largest
difference between the two outputs relative to their scale.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

# name: (kernel, stride, pads, out channels, image size); the models that use it
STEMS = {
    "vgg 3x3 s1": (3, 1, 1, 64, 224),            # VGG16 / VGG19
    "resnet 7x7 s2": (7, 2, 3, 64, 224),         # ResNet50..152, DenseNet (pad folded in)
    "mobilenet 3x3 s2": (3, 2, 1, 32, 224),      # MobileNet(V2), EfficientNetB0, V3
    "inception 3x3 s2": (3, 2, 0, 32, 299),      # InceptionV3, Xception, InceptionResNetV2
    "convnext 4x4 s4": (4, 4, 0, 96, 224),       # ConvNeXt patchify
}


def stem_model(k, s, p, cout, size):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((cout, 3, k, k)) / np.sqrt(3 * k * k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) * 0.1
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xc", "w", "b"], ["c"], strides=[s, s],
                              pads=[p] * 4, kernel_shape=[k, k]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      [None, size, size, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args(argv)
    import cupy as cp

    from bench_engine import _cupy_timer, time_calls
    from tftrt.engine import BuilderConfig, build_engine
    rows = []
    for name, (k, s, p, cout, size) in STEMS.items():
        model = stem_model(k, s, p, cout, size)
        x = cp.asarray(np.random.default_rng(1).standard_normal(
            (args.batch, size, size, 3)).astype(np.float32))
        got = {}
        for pad in ("0", "1"):
            os.environ["TFTRT_PAD_CONV_CHANNELS"] = pad
            engine = build_engine(model, {"x": (args.batch, size, size, 3)},
                                  BuilderConfig(precision="FP16", backend="cupy"))
            ctx = engine.create_execution_context()
            got[pad] = cp.asnumpy(ctx.execute([x])[0]).astype(np.float64)
            ts = time_calls(functools.partial(ctx.execute, [x]), _cupy_timer(), 100, warmup=10)
            kinds = [kd for _, kd, _, _ in engine.layers_summary()]
            rows.append((name, pad, float(np.median(ts)), "+".join(kinds)))
            del ctx, engine
        scale = float(np.max(np.abs(got["0"]))) or 1.0
        err = float(np.max(np.abs(got["1"] - got["0"]))) / scale
        rows.append((name, "diff", err, ""))
    print(f"\n| stem (batch {args.batch}, FP16) | channels 3 ms | padded to 8 ms | speed-up | "
          f"max diff / scale |")
    print("|---|---|---|---|---|")
    by = {}
    for name, pad, v, _ in rows:
        by.setdefault(name, {})[pad] = v
    for name, d in by.items():
        print(f"| {name} | {d['0']:.3f} | {d['1']:.3f} | {d['0'] / d['1']:.2f}x | "
              f"{d['diff']:.1e} |")
    for name, pad, v, kinds in rows:
        if pad != "diff":
            print(f"# {name} pad={pad}: {kinds}")


if __name__ == "__main__":
    main()
