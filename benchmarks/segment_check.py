"""Converters on the GPU without TensorFlow there: ``make`` (here, with TensorFlow) lowers small
TF functions to segment networks and stores each with its inputs and TF's outputs; ``check``
(the GPU machine, CuPy only) builds each on the CuPy backend in FP32 and FP16 and compares.

    python benchmarks/segment_check.py make --out .whl/segments       # CPU, TensorFlow
    python benchmarks/segment_check.py check .whl/segments            # GPU: carry [".whl"]

A case whose GPU engine does not build is reported as such (its segment would run natively
there: slower, not wrong); one whose answers differ is a bug. Exit status 1 on either. The
cases are the converters that have not run on a GPU when they landed (2026-12-02: OneHot,
IsFinite / IsInf, MatrixBandPart, Cumsum, Fill of run-time dims, SpaceToBatchND /
BatchToSpaceND, Conv1DTranspose's output size, a where between float16 constants), and
s48's FP16 precision fixes (2026-12-07; run on a GPU in s49).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# FP16 engines store float16: relative to each output's largest value
TOL = {"FP32": 1e-4, "FP16": 2e-2}


def _rand(shape, dtype=np.float32, seed=0, specials=False):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if specials:
        flat = x.reshape(-1)
        flat[::7] = np.inf
        flat[3::11] = -np.inf
        flat[5::13] = np.nan
    return x


def cases() -> Dict[str, Tuple[Callable, List[np.ndarray]]]:
    import tensorflow as tf
    idx = np.array([[0, 5, -1, 7, 2], [3, 3, 1, 0, 6], [4, -3, 2, 5, 1], [1, 2, 3, 4, 0]],
                   np.int32)
    w1 = _rand((1, 3, 6, 4), seed=3)

    def conv1d_transpose(x):
        batch = tf.expand_dims(tf.shape(x)[0], 0)
        y = tf.nn.conv2d_transpose(tf.expand_dims(x, 1), w1,
                                   tf.concat([batch, tf.constant([1, 32, 6])], 0),
                                   [1, 1, 2, 1], "SAME")
        return tf.squeeze(y, 1)

    watrous = tf.constant(_rand((3, 3, 3, 4), seed=2))
    return {
        "onehot": (lambda i: tf.one_hot(i, 6, 2.0, -1.0), [idx]),
        "onehot_axis0_int": (lambda i: tf.one_hot(i, 7, 5, 0, axis=0, dtype=tf.int32), [idx]),
        "onehot_bool": (lambda i: tf.one_hot(i, 6, True, False, dtype=tf.bool), [idx]),
        "isfinite": (lambda x: tf.math.is_finite(x), [_rand((4, 33), specials=True)]),
        "isinf_f16": (lambda x: tf.math.is_inf(x),
                      [_rand((4, 33), np.float16, specials=True)]),
        "band_part": (lambda x: tf.linalg.band_part(x, 1, 2), [_rand((3, 5, 6))]),
        "band_part_lower": (lambda x: tf.linalg.band_part(x, -1, 0), [_rand((2, 7, 7))]),
        "cumsum": (lambda x: tf.cumsum(x, axis=1), [_rand((3, 37))]),
        "cumsum_excl_rev": (lambda x: tf.cumsum(x, axis=1, exclusive=True, reverse=True),
                            [_rand((3, 37), seed=1)]),
        "cumsum_f16_axis2": (lambda x: tf.cumsum(x, axis=-1), [_rand((2, 3, 129), np.float16)]),
        "fill_batch": (lambda x: tf.fill(tf.stack([tf.shape(x)[0], 16]), 2.5) *
                       tf.reduce_sum(x, 1, keepdims=True), [_rand((3, 4))]),
        "where_f16_consts": (lambda x: tf.where(x > 0, tf.constant(3, tf.float16),
                                                tf.constant(-2, tf.float16)),
                             [_rand((3, 8))]),
        "space_to_batch": (lambda x: tf.space_to_batch_nd(x, [2, 3], [[1, 1], [0, 2]]),
                           [_rand((2, 6, 7, 3))]),
        "batch_to_space": (lambda x: tf.batch_to_space(x, [2, 3], [[1, 0], [0, 2]]),
                           [_rand((12, 3, 2, 3))]),
        "atrous_conv": (lambda x: tf.nn.atrous_conv2d(x, watrous, 2, "SAME"),
                        [_rand((2, 13, 11, 3))]),
        "conv1d_transpose": (conv1d_transpose, [_rand((3, 16, 4))]),
        # s48's FP16 fixes (found on the numpy backend): a reduction's float32 output moved
        # (tiled, concatenated, gathered) stays float32 past 65504; a cumsum's scan steps add
        # in float32; a size-1 weight of higher rank broadcasts its rank
        "sum_normalize_big": (lambda x: x / tf.reduce_sum(x, 1)[:, None],
                              [np.abs(_rand((4, 300), seed=4)) * 1000]),
        "sum_tiled_big": (lambda x: tf.tile(tf.reduce_sum(x, 1, keepdims=True), [1, 3]) / 1e5,
                          [np.abs(_rand((4, 300), seed=5)) * 1000]),
        "cdf_cumsum_big": (lambda w: tf.cumsum(w, axis=1) / tf.reduce_sum(w, 1, keepdims=True),
                           [np.abs(_rand((3, 2000), seed=6)) * 100]),
        "rank_up_weight": (lambda x: tf.reduce_sum(x * tf.constant([[[2.0]]]), axis=0),
                           [_rand((4, 3), seed=7)]),
    }


def make(out: str, only=()) -> int:
    from tests.converters.harness import lower, run_engine
    os.makedirs(out, exist_ok=True)
    for name, (fn, inputs) in cases().items():
        if only and name not in only:
            continue
        low = lower(fn, inputs, dynamic_batch=True)
        with open(os.path.join(out, f"{name}.onnx"), "wb") as f:
            f.write(low.net.model.SerializeToString())
        np.savez(os.path.join(out, f"{name}.npz"),
                 **{f"x{k}": x for k, x in enumerate(inputs)},
                 **{f"y{k}": y for k, y in enumerate(low.tf_outputs)})
        got = run_engine(low.net.model, inputs)  # the numpy engine agrees here first
        worst = max(_error(g, y) for g, y in zip(got, low.tf_outputs))
        print(f"{name:20s} {len(low.onnx_ops):3d} ONNX nodes, numpy engine error {worst:.1e}")
    return 0


def _error(got, want) -> float:
    """compare.output_errors' error of one output (inf / NaN must match exactly, integers and
    bool count the elements that differ), 1.0 for another dtype too."""
    from tftrt.compare import output_errors
    got, want = np.asarray(got), np.asarray(want)
    return 1.0 if got.dtype != want.dtype else output_errors({"o": got}, {"o": want})["o"]


def check(folder: str, backend: str = "cupy") -> int:
    import onnx
    from tftrt.engine import BuilderConfig, build_engine
    if backend == "cupy":
        import cupy as cp
        put, get = cp.asarray, (lambda o: cp.asnumpy(o) if isinstance(o, cp.ndarray)
                                else np.asarray(o))
    else:  # the CPU check of this script itself
        put, get = np.asarray, np.asarray
    bad = 0
    paths = sorted(glob.glob(os.path.join(folder, "*.onnx")))
    if not paths:
        print(f"no segment networks in {folder}: run 'make' first")
        return 1
    for path in paths:
        data = np.load(path[:-5] + ".npz")
        xs = [data[f"x{k}"] for k in range(sum(1 for n in data.files if n.startswith("x")))]
        ys = [data[f"y{k}"] for k in range(sum(1 for n in data.files if n.startswith("y")))]
        model = onnx.load(path)
        name = os.path.basename(path)[:-5]
        for precision in ("FP32", "FP16"):
            shapes = {f"TensorRTInputPH_{k}": x.shape for k, x in enumerate(xs)}
            try:
                engine = build_engine(model, shapes, BuilderConfig(precision=precision,
                                                                   backend=backend))
                got = [get(o) for o in engine.execute([put(x) for x in xs])]
            except Exception as e:  # noqa: BLE001 -- report and go on
                bad += 1
                print(f"{name:20s} {precision}: NO GPU ENGINE ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:300]})")
                continue
            worst = max(_error(g, y) for g, y in zip(got, ys))
            # a float16 output is float16's rounding in any precision (TF's float16 cumsum
            # adds in float16, one element after another)
            ok = worst <= TOL["FP16" if any(y.dtype == np.float16 for y in ys) else precision]
            bad += not ok
            kinds = sorted({layer.kind for layer in engine.network.layers})
            print(f"{name:20s} {precision}: {'ok' if ok else 'WRONG'} error {worst:.1e} "
                  f"layers {kinds}")
    print(f"{len(paths)} networks, {bad} failed")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="lower the cases and store them (needs TensorFlow)")
    m.add_argument("--out", default=".whl/segments")
    m.add_argument("--cases", nargs="*", default=(), help="only these (default: all)")
    c = sub.add_parser("check", help="build and compare each on the CuPy backend (GPU)")
    c.add_argument("folder", nargs="?", default=".whl/segments")
    c.add_argument("--backend", default="cupy", choices=("cupy", "numpy"))
    args = ap.parse_args(argv)
    return make(args.out, args.cases) if args.cmd == "make" else \
        check(args.folder, args.backend)


if __name__ == "__main__":
    sys.exit(main())
