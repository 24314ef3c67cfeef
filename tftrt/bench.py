"""Latency and throughput of a SavedModel's signature (trtexec-like): ``tftrt bench``.

Runners, in one process on the same inputs:
  * ``tftrt``: the signature through tftrt.load (engines on the selected backend);
  * ``native``: the same SavedModel through tf.saved_model.load (every segment natively);
  * ``xla``: that native signature under ``tf.function(jit_compile=True)``, in the saved
    precision.
Every timed call is one call of the signature with inputs already on the device (the GPU
when TensorFlow has one), synchronized before and after (TensorFlow's devices, and CuPy's
when engines run there), so a latency is the whole call and nothing else. Host-to-device and
device-to-host copies of the inputs and outputs are timed apart, as trtexec does.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from tftrt.logs import first_error_line

RUNNERS = ("tftrt", "native", "xla")
PERCENTILES = (50, 90, 95, 99)


@dataclasses.dataclass
class Result:
    """Timings of one runner at one input shape."""

    runner: str
    batch: Optional[int]
    shapes: Dict[str, List[int]]
    latencies_ms: List[float]
    h2d_ms: Optional[float] = None
    d2h_ms: Optional[float] = None
    engine_memory: Optional[Dict[str, int]] = None   # activations / weights bytes
    engine_runs: Optional[Dict[str, int]] = None     # engine / native calls of engine ops
    error: Optional[str] = None

    def stats(self) -> dict:
        lat = np.asarray(self.latencies_ms, np.float64)
        if not lat.size:
            return {}
        out = {"mean": float(lat.mean()), "min": float(lat.min()), "max": float(lat.max()),
               "std": float(lat.std())}
        out.update({f"p{p}": float(np.percentile(lat, p)) for p in PERCENTILES})
        return out

    def throughput(self) -> Optional[float]:
        """Samples (batch items) per second at the mean latency; without a batch size, the
        inputs' common first dimension (or 1: calls per second)."""
        s = self.stats()
        if not s or not s["mean"]:
            return None
        firsts = {tuple(v[:1]) for v in self.shapes.values()}
        samples = self.batch or (firsts.pop()[0] if len(firsts) == 1 and () not in firsts
                                 else 1)
        return samples * 1e3 / s["mean"]

    def to_json(self) -> dict:
        return {"runner": self.runner, "batch": self.batch, "shapes": self.shapes,
                "iterations": len(self.latencies_ms), "latency_ms": self.stats(),
                "throughput_per_s": self.throughput(), "h2d_ms": self.h2d_ms,
                "d2h_ms": self.d2h_ms, "engine_memory_bytes": self.engine_memory,
                "engine_runs": self.engine_runs, "error": self.error}


def synchronize() -> None:
    """Waits for every device TensorFlow and CuPy (when imported) have work on, never inside
    a CUDA-graph capture of tftrt's (:func:`device_wide`)."""
    import sys
    import tensorflow as tf
    with device_wide():
        tf.test.experimental.sync_devices()
        cp = sys.modules.get("cupy")
        if cp is not None:
            try:
                cp.cuda.Device().synchronize()
            except Exception:  # no usable GPU: nothing of CuPy's to wait for
                pass


def device_synchronize() -> None:
    """``cudaDeviceSynchronize`` on CuPy's current device (every stream: TensorFlow's and the
    engines'), a few microseconds on an idle GPU, under :func:`device_wide`."""
    import cupy as cp
    with device_wide():
        cp.cuda.runtime.deviceSynchronize()


def device_wide():
    """The lock tftrt's CUDA-graph captures hold (``cupy_backend.DEVICE_WIDE``): a
    device-wide wait (``cudaDeviceSynchronize``, ``tf.test.experimental.sync_devices``) made
    while another thread captures fails with cudaErrorStreamCaptureUnsupported, in every
    capture mode, and spoils that capture. A program that waits for the whole device while
    other threads call engines takes this lock around the wait; a null context where the
    CuPy backend cannot load."""
    import contextlib
    try:
        from tftrt.engine.backends.cupy_backend import DEVICE_WIDE
    except Exception:  # noqa: BLE001 -- no CuPy backend: no captures to keep out of
        return contextlib.nullcontext()
    return DEVICE_WIDE


def device() -> str:
    import tensorflow as tf
    return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"


def to_device(inputs: Dict[str, np.ndarray]):
    import tensorflow as tf
    with tf.device(device()):
        return {k: tf.identity(tf.constant(v)) for k, v in inputs.items()}


def time_calls(fn: Callable, args: dict, warmup: int, iterations: int,
               sync: Callable[[], None] = synchronize) -> List[float]:
    """Milliseconds of each of ``iterations`` calls ``fn(**args)`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn(**args)
    sync()
    times = []
    for _ in range(iterations):
        sync()
        t0 = time.perf_counter()
        fn(**args)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def copy_times(inputs: Dict[str, np.ndarray], outputs, repeats: int = 5):
    """(host->device ms of the inputs, device->host ms of the outputs); (None, None) without
    a GPU, where TensorFlow's tensors stay in host memory."""
    if device() == "/CPU:0":
        return None, None
    h2d, d2h = [], []
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        to_device(inputs)
        synchronize()
        h2d.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        for v in outputs.values():
            v.numpy()
        d2h.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(h2d)), float(np.median(d2h))


def engine_memory(engine_ops) -> Dict[str, int]:
    """Device memory of every engine the ops hold (all shapes cached so far): activations
    (arena, scratch, outputs of one run) and weights in bytes, and the engine count."""
    act = wts = count = 0
    for op in engine_ops.values():
        for _, engine in op.cache.items():
            act += int(getattr(engine, "device_memory_bytes", 0) or 0)
            wts += int(getattr(engine, "weight_bytes", 0) or 0)
            count += 1
    return {"activations": act, "weights": wts, "engines": count}


def make_runners(path: str, names: Sequence[str], signature_key: str, tags=None):
    """{runner name: (callable signature, engine ops or None, note)} for ``names``."""
    import tensorflow as tf
    import tftrt
    from tftrt import saving
    out = {}
    plain = tf.saved_model.load(path, tags=tags)
    if signature_key not in plain.signatures:
        raise ValueError(f"signature {signature_key!r} not found in {path}; available: "
                         f"{sorted(plain.signatures)}")
    native = plain.signatures[signature_key]
    for name in names:
        if name == "tftrt":
            loaded = tftrt.load(path, tags=tags)
            if isinstance(loaded, saving.LoadedModel) and loaded.engine_ops:
                out[name] = (loaded.signatures[signature_key], loaded.engine_ops, loaded, "")
            elif isinstance(loaded, saving.LoadedModel):  # converted, no segment converted
                out[name] = (loaded.signatures[signature_key], None, loaded,
                             "no tftrt engines are used (the conversion made none): runs "
                             "natively")
            else:
                out[name] = (loaded.signatures[signature_key], None, loaded,
                             "no tftrt engines are used (not a converted model, or its "
                             "assets were refused: see the warning): runs natively")
        elif name == "native":
            out[name] = (native, None, plain, "")
        elif name == "xla":
            fn = tf.function(lambda **kw: native(**kw), jit_compile=True, autograph=False)
            out[name] = (fn, None, plain, "")
        else:
            raise ValueError(f"unknown runner {name!r}; use {', '.join(RUNNERS)}")
    return out


def bench(path: str, runners: Sequence[str], batches: Sequence[Dict[str, np.ndarray]],
          batch_sizes: Sequence[Optional[int]], warmup: int, iterations: int,
          signature_key: str, tags=None, log: Callable[[str], None] = lambda s: None,
          notes: Optional[Dict[str, str]] = None,
          interrupted: Callable[[], bool] = lambda: False) -> List[Result]:
    """Times each runner on each input batch (``batch_sizes[i]`` labels ``batches[i]``).

    ``notes``, when given, receives {runner name: note} for runners with something to say
    (the tftrt runner on a model without engines: it runs natively). ``interrupted``: whether
    a Ctrl-C came (the command's record of it): then no runner starts, and a runner's error
    is that interrupt (TF turns a KeyboardInterrupt inside an engine's call into another
    error, or swallows it), raised as KeyboardInterrupt.
    """
    made = make_runners(path, runners, signature_key, tags)
    if notes is not None:
        notes.update({name: r[3] for name, r in made.items() if r[3]})
    results = []
    for inputs, batch in zip(batches, batch_sizes):
        shapes = {k: list(v.shape) for k, v in inputs.items()}
        args = to_device(inputs)
        for name in runners:
            if interrupted():
                raise KeyboardInterrupt("interrupted")
            fn, ops, _, _ = made[name]
            res = Result(name, batch, shapes, [])
            log(f"{name}: batch {batch if batch is not None else shapes}")
            before = {n: dict(op.stats) for n, op in (ops or {}).items()}
            try:
                outputs = fn(**args)
                res.latencies_ms = time_calls(fn, args, warmup, iterations)
                res.h2d_ms, res.d2h_ms = copy_times(inputs, outputs)
            except Exception as err:  # a runner that fails is reported, the others still run
                if interrupted():  # a Ctrl-C that TF turned into another error
                    raise KeyboardInterrupt("interrupted") from err
                res.error = f"{type(err).__name__}: {first_error_line(err)}"
            if ops:
                res.engine_memory = engine_memory(ops)
                def delta(*keys):
                    return sum(op.stats.get(k, 0) - before[n].get(k, 0)
                               for n, op in ops.items() for k in keys)
                # builds: static engines and new profile sets, and the engines a profile builds
                # for its other shapes (full or quick); a profile's opt engines are part of
                # its set's build (helper hunt, 2026-12-04: a profile's shape builds showed 0)
                res.engine_runs = {"engine": delta("engine"), "native": delta("native"),
                                   "builds": delta("builds", "shape_builds", "quick_builds")}
            results.append(res)
    return results


def format_results(results: List[Result], print_fn) -> None:
    """A table (latencies in ms) and, for the tftrt runner, engine memory and calls."""
    cols = ["runner", "batch", "mean ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "min ms",
            "max ms", "samples/s", "H2D ms", "D2H ms"]
    f = (lambda v: "-" if v is None else f"{v:.3f}")  # noqa: E731
    rows, failed = [], []
    for r in results:
        s = r.stats()
        if r.error or not s:
            failed.append(f"{r.runner} batch {_batch(r)}: failed: {r.error}")
            continue
        rows.append([r.runner, _batch(r), f(s["mean"]), f(s["p50"]), f(s["p90"]), f(s["p95"]),
                     f(s["p99"]), f(s["min"]), f(s["max"]), f"{r.throughput():.1f}",
                     f(r.h2d_ms), f(r.d2h_ms)])
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(cols)]
    print_fn("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print_fn("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    for line in failed:
        print_fn(line)
    for r in results:
        if r.engine_memory is not None:
            mem, runs = r.engine_memory, r.engine_runs or {}
            print_fn(f"{r.runner} batch {_batch(r)}: memory of the {mem['engines']} cached "
                     f"engine(s) {mem['activations'] / 2**20:.2f} MiB activations + "
                     f"{mem['weights'] / 2**20:.2f} MiB weights; engine calls "
                     f"{runs.get('engine', 0)}, native segment calls {runs.get('native', 0)}, "
                     f"engine builds {runs.get('builds', 0)}")


def _batch(r: Result) -> str:
    if r.batch is not None:
        return str(r.batch)
    return ";".join("x".join(map(str, s)) for s in r.shapes.values())
