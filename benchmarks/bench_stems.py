"""The zoo's image stems alone (a 3-channel convolution + ReLU, FP16, CuPy backend) on each
way to run them, in one process: cuDNN (tactic ``cudnn``), tactic ``im2col`` (copy +
cuBLASLt per chunk of rows) with chunks of 16 and 32 MB, tactic ``stem_direct`` (the
direct kernel of cuda_source_stem; "-" where it does not take the stem: ResNet's 147 taps)
and tactic ``stem_mma`` (the tensor-core kernel of cuda_source_stem_mma; float16 outputs
only). (Padding the input channels to 8 for cuDNN was timed here too, on 2026-12-01, slower
on every stem, and removed.) The engines read float32 images, their cast in the engine
times (stem_mma reads them itself: no cast layer; ``stem_mma f16x`` keeps the cast).
``--out float32`` (the default before 2026-12-02) writes the float32 output a stem model ends
in: the conv then stores float32 itself; ``--out float16`` ends the model in a
cast to float16, so that the conv stores float16 as the stems do inside the networks (VGG16's
feeds a conv) and as the floor counts.

    PYTHONPATH=$PWD python benchmarks/bench_stems.py [--batch 128] [--stems ...] [--ways ...]
        [--out float16|float32]

Prints a table: per stem and way, the engine call's median ms (CUDA events, after warm-up)
and, in parentheses, the conv layer's own microseconds (replayed alone from a CUDA graph:
the kernel's time without the cast and the call); the floor (reading the image and writing
the output at 4.8 TB/s); the largest difference from cuDNN's output (or the first way's)
relative to its scale.
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
    # the same stems over the image rearranged 2x2 space-to-depth (--s2d): a KxK stride-2 conv
    # is a ceil(K/2)^2 stride-1 conv over 4x the channels (zero taps where 2a + p >= K), the
    # channels padded to 16 (one tap: 32 bytes) or left at 12; the rearranged image is float16
    # (as the engine's space_to_depth layer writes it: stem_mma's vector gathers take it);
    # its own floor counts it, the transform's time is --s2d's separate row
    "resnet s2d 4x4 c16": (4, 1, 0, 64, 115, 16),
    "resnet s2d 4x4 c12": (4, 1, 0, 64, 115, 12),
    "mobilenet s2d 2x2 c16": (2, 1, 0, 32, 113, 16),
}


def stem_model(k, s, p, cout, size, out="float32", cin=3, x_type=TensorProto.FLOAT):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) * 0.1
    nodes = [helper.make_node("Transpose", ["x"], ["xc"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xc", "w", "b"], ["c"], strides=[s, s],
                              pads=[p] * 4, kernel_shape=[k, k]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["y" if out == "float32" else "t"],
                              perm=[0, 2, 3, 1])]
    y_type = TensorProto.FLOAT
    if out == "float16":  # the conv then stores float16 (the cast folds into it)
        y_type = TensorProto.FLOAT16
        nodes.append(helper.make_node("Cast", ["t"], ["y"], to=y_type))
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("x", x_type,
                                                      [None, size, size, cin])],
        [helper.make_tensor_value_info("y", y_type, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


WAYS = {  # name: (tactic, environment)
    "cudnn": ("cudnn", {}),
    "im2col 16MB": ("im2col", {"TFTRT_IM2COL_CHUNK_MB": "16"}),
    "im2col 32MB": ("im2col", {"TFTRT_IM2COL_CHUNK_MB": "32"}),
    "stem_direct": ("stem_direct", {}),
    "stem_mma": ("stem_mma", {"TFTRT_STEM_MMA": "1"}),   # the default since 2026-12-02 (p)
    # row tiles (cuda_source_stem_mma.rows_default, s52) against the gathers they replace
    "stem_mma-rows": ("stem_mma", {"TFTRT_STEM_MMA": "1", "TFTRT_STEM_MMA_ROWS": "1"}),
    "stem_mma-gather": ("stem_mma", {"TFTRT_STEM_MMA": "1", "TFTRT_STEM_MMA_ROWS": "0"}),
    # the stem rewritten by passes/stem_space_to_depth, as an engine builds it: its
    # space_to_depth layer and the stride-1 conv over 16 channels, which the conv's
    # ``space_to_depth`` attribute offers to stem_mma's vector gathers (s46: a bench
    # conv built already rearranged had no attribute, and stem_mma fell back to cuDNN).
    # The conv column then counts both layers.
    "cudnn s2d": ("cudnn", {"TFTRT_STEM_S2D": "1"}),
    "stem_mma s2d": ("stem_mma", {"TFTRT_STEM_MMA": "1", "TFTRT_STEM_S2D": "1"}),
    # the image's float16 cast as a layer before the stem (before s41: stem_mma reads the
    # float32 image itself where it can, precision.absorb_input_casts)
    "stem_mma f16x": ("stem_mma", {"TFTRT_STEM_MMA": "1", "TFTRT_FLOAT32_X": "0"}),
    # its B fragments loaded with ldmatrix (cuda_source_stem_mma.ldmatrix_default)
    "stem_mma ldsm": ("stem_mma", {"TFTRT_STEM_MMA": "1", "TFTRT_STEM_MMA_LDSM": "1"}),
    # m-tiles in one output row gather from their input patch staged in shared memory
    # (cuda_source_stem_mma.stage_default)
    "stem_mma staged": ("stem_mma", {"TFTRT_STEM_MMA": "1", "TFTRT_STEM_MMA_STAGE": "1"}),
}
BANDWIDTH = 4.8e12  # H200 HBM3e, bytes/s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--stems", nargs="+", default=list(STEMS), choices=list(STEMS),
                    metavar="STEM", help=f"of {list(STEMS)}")
    ap.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS),
                    metavar="WAY", help=f"of {list(WAYS)} (the error column compares "
                                        "against cudnn, or the first way)")
    ap.add_argument("--out", default="float16", choices=["float16", "float32"],
                    help="the stem's output dtype (stem_mma writes float16 only)")
    ap.add_argument("--s2d", action="store_true",
                    help="also time the engine's 2x2 space-to-depth kernel on a float32 "
                         "224 x 224 x 3 image into float16 (ResNet's: padded by 3 to 230, 16 "
                         "channels; MobileNet's: padded to 226)")
    args = ap.parse_args(argv)
    ways = {w: WAYS[w] for w in args.ways}
    import cupy as cp
    if args.s2d:
        space_to_depth_times(args.batch)

    from bench_engine import _cupy_timer, time_calls
    from tftrt.engine import BuilderConfig, build_engine
    print(f"\n| stem (batch {args.batch}, FP16, {args.out} out) | floor ms | " +
          " | ".join(f"{w} ms (conv us)" for w in ways) + " | max diff / scale |")
    print("|---|---|" + "---|" * len(ways) + "---|")
    for name in args.stems:
        k, s, p, cout, size, cin = (STEMS[name] + (3,))[:6]
        xdt = np.float16 if cin >= 12 else np.float32  # a rearranged image: float16
        model = stem_model(k, s, p, cout, size, args.out, cin,
                           TensorProto.FLOAT16 if xdt == np.float16 else TensorProto.FLOAT)
        x = cp.asarray(np.random.default_rng(1).standard_normal(
            (args.batch, size, size, cin)).astype(xdt))
        shapes = {"x": (args.batch, size, size, cin)}
        ref = build_engine(model, shapes, BuilderConfig(precision="FP16", backend="numpy",
                                                        tactic_timing=False))
        convs = [l.name for l in ref.network.layers if l.kind == "conv"]
        oh = (size + 2 * p - k) // s + 1
        osize = np.dtype(args.out).itemsize
        floor = (args.batch * size * size * cin * np.dtype(xdt).itemsize +
                 args.batch * oh * oh * cout * osize) / \
            BANDWIDTH
        times, conv_us, outs, kinds = {}, {}, {}, []
        for way, (tactic, env) in ways.items():
            if tactic in ("stem_direct", "stem_mma"):
                os.environ.update(env)  # the tactic's switch, before asking whether it applies
                from tftrt.engine.backends import cuda_source_stem, cuda_source_stem_mma
                unsupported = (cuda_source_stem if tactic == "stem_direct" else
                               cuda_source_stem_mma).unsupported
                why = unsupported(ref.network, next(
                    l for l in ref.network.layers if l.kind == "conv"))
                if why:  # forced anyway, the layer would run its fallback (cuDNN)
                    kinds.append(f"# {name} {way}: not offered: {why}")
                    continue
            os.environ.update(env)
            try:
                engine = build_engine(model, shapes, BuilderConfig(
                    precision="FP16", backend="cupy", tactic_timing=False,
                    tactic_choices={c: {"kind": "conv", "tactic": tactic, "records": {}}
                                    for c in convs}))
                ctx = engine.create_execution_context()
                outs[way] = cp.asnumpy(ctx.execute([x])[0]).astype(np.float64)
                ts = time_calls(functools.partial(ctx.execute, [x]), _cupy_timer(), 100,
                                warmup=10)
                times[way] = float(np.median(ts))
                # the conv alone, replayed from a CUDA graph (the engine call above also pays
                # the input cast and the call's own overhead, ~0.3 ms on the H200)
                prof = dict(ctx._impl.profile([x], repeats=10))
                conv_us[way] = 1e6 * sum(prof.get(c, 0.0) + prof.get(f"{c}_space_to_depth", 0.0)
                                         for c in convs)
                impls = engine.backend_impl.engine_impls(engine)
                for i in impls:  # the stem kernel's registers and local memory (spills)
                    kern = getattr(i, "kernel", None)
                    if tactic == "stem_mma" and hasattr(kern, "num_regs"):
                        kinds.append(f"# {name} {way}: {kern.num_regs} registers, "
                                     f"{kern.local_size_bytes} bytes local")
                kinds.append(f"# {name} {way}: " + " + ".join(
                    f"{kd}/{t}/{type(i).__name__}"
                    for (_, kd, _, t), i in zip(engine.layers_summary(), impls)))
                del ctx, engine
            except Exception as e:  # a way that cannot run this stem: said, and go on
                kinds.append(f"# {name} {way}: failed: {type(e).__name__}: {str(e)[:200]}")
            finally:
                for v in env:
                    os.environ.pop(v, None)
        base = outs.get("cudnn", outs.get(args.ways[0]))
        err = max((float(np.max(np.abs(o - base))) / (float(np.max(np.abs(base))) or 1.0)
                   for o in outs.values()), default=float("nan")) if base is not None else \
            float("nan")
        print(f"| {name} | {floor * 1e3:.3f} | " +
              " | ".join(f"{times[w]:.3f} ({conv_us[w]:.0f})" if w in times else "-"
                         for w in ways) +
              f" | {err:.1e} |")
        for line in kinds:
            print(line)


def space_to_depth_times(batch):
    """Prints the time of the engine's space_to_depth kernel (cuda_source_move.
    SpaceToDepthSource, what passes/stem_space_to_depth's layer runs) writing the 2x2
    space-to-depth of a float32 NHWC image (224 x 224 x 3, zero-padded to ``size``) as
    float16 with 4 x ``channels`` channels, against its floor at 4.8 TB/s, and checks it
    against numpy_ops.space_to_depth. (Until s45e this timed a one-element CuPy kernel of its
    own: 166 us where the engine's layer took 43.)"""
    import cupy as cp

    from tftrt.engine.backends import numpy_ops as ops
    from tftrt.engine.backends.cuda_source_move import SpaceToDepthSource
    from tftrt.engine.backends.cupy_dnn import gpu_time
    from tftrt.engine.backends.cupy_kernels import _raw_kernel, launch
    x = cp.asarray(np.random.default_rng(2).standard_normal(
        (batch, 224, 224, 3)).astype(np.float32))
    stream = cp.cuda.Stream(non_blocking=True)
    print(f"\n| space-to-depth (batch {batch}) | us | floor us |\n|---|---|---|")
    for name, size, before, channels in (("resnet 230 -> 115 x 115 x 16", 230, 3, 4),
                                         ("resnet 230 -> 115 x 115 x 12", 230, 3, 3),
                                         ("mobilenet 226 -> 113 x 113 x 16", 226, 1, 4)):
        after = size - 224 - before
        pads = (before, before, after, after)
        src = SpaceToDepthSource(x.shape, 2, pads, channels, "float32", "float16")
        kern = _raw_kernel(src.source, "space_to_depth")
        y = cp.empty((batch,) + src.out_image, cp.float16)
        fn = lambda: launch(kern, batch * src.per_image, [x, y])  # noqa: E731
        t = gpu_time(fn, stream, reps=20, what="s2d")
        floor = (x.nbytes + y.nbytes) / BANDWIDTH
        ref = ops.space_to_depth(cp.asnumpy(x[:1]), 2, list(pads), channels)
        ok = np.array_equal(cp.asnumpy(y[:1]), ref.astype(np.float16))
        print(f"| {name} | {t * 1e6:.1f} | {floor * 1e6:.1f} |" + ("" if ok else " WRONG |"))


if __name__ == "__main__":
    main()
