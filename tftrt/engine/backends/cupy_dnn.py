"""The CuPy backend's library paths: cuDNN-frontend convolution graphs with fused epilogues,
cuBLASLt GEMMs with epilogues (through nvmath-python's raw bindings), and GPU timing.

Both libraries take raw device pointers and run on the caller's stream, and both capture into
CUDA graphs (CuPy's own cuBLAS path does not: "calling cuBLAS API during stream capture is
currently unsupported"). Each heavy object here is built once per layer signature and shared by
every execution context of every engine in the process; execution is serialized per object
with a lock (cheap: after the first run engines replay CUDA graphs).

Tuning: candidates are timed on the GPU by replaying a CUDA graph of ``reps`` launches (host
launch cost excluded, which is what graph replay gives at run time); the choice is a small JSON
record (cuDNN engine id + knobs, or the cuBLASLt heuristic index) that a plan stores, so that a
loaded plan rebuilds exactly the chosen kernel without timing again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import cupy as cp

from tftrt.engine.errors import GpuTimeout
from tftrt.env import env_bool

log = logging.getLogger("tftrt.engine.cupy")

# Largest scratch one cuDNN plan / cuBLASLt algorithm may use (plans asking more are skipped).
WORKSPACE_LIMIT = 256 << 20
LT_WORKSPACE = 32 << 20
# cuDNN plans built and timed per conv graph variant (runtime-fusion plans compile with NVRTC,
# ~0.3-1 s each, so this bounds the engine build time).
CUDNN_CANDIDATES = int(os.environ.get("TFTRT_CUDNN_CANDIDATES", "4"))
# Of those, at most this many runtime-compiled plans (cuDNN's fusion engines, which NVRTC
# compiles at build time: 0.1-0.6 s each, where a precompiled plan builds in microseconds).
# Measured on an H200 (ResNet50, DenseNet121, MobileNetV3Large, FP16 batch 128,
# TFTRT_CUDNN_TRACE): 111 of 261 tuned graphs offered only runtime-compiled plans, and they
# took 67 of the 77 s of cuDNN plan building; keeping the best of their first two instead of
# four cut that to 43 s and added 0.8% to the summed time of the tuned graphs.
CUDNN_RTC_CANDIDATES = int(os.environ.get("TFTRT_CUDNN_RTC_CANDIDATES", "2"))
# A plan whose build takes longer than this compiled at run time (when cuDNN does not say).
_RTC_BUILD_S = 0.05

_CAPTURE_MODE = getattr(cp.cuda.runtime, "streamCaptureModeThreadLocal", 1)


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off for the block (a CUDA-graph capture): a collection
    inside it may free an unreachable engine whose CUDA graphs CuPy then destroys, and
    cudaGraphExecDestroy is not permitted while a stream captures (seen on an H200: "Exception
    ignored in Graph.__dealloc__: cudaErrorStreamCaptureUnsupported", the graph leaked and, in
    the thread-local mode, the capture invalidated). Objects that become garbage meanwhile are
    collected after the block."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# --- timing --------------------------------------------------------------------------------------
# Seconds a build-time timing run may take before the build gives up on it (a kernel that
# never finishes must fail the build with a message, not hang the caller's process).
TIMING_TIMEOUT = float(os.environ.get("TFTRT_TIMING_TIMEOUT", "120"))


def wait_event(event: cp.cuda.Event, what: str, timeout: Optional[float] = None) -> None:
    """Waits for ``event`` like ``event.synchronize()``, but raises after ``timeout`` seconds
    (default :data:`TIMING_TIMEOUT`) instead of blocking forever."""
    limit = TIMING_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + limit
    pause = 20e-6
    while not event.done:
        if time.monotonic() > deadline:
            raise GpuTimeout(
                f"GPU work did not finish within {limit:.0f} s while timing {what}; the GPU may "
                f"be stuck in a kernel that never ends. Please report it with this message; "
                f"TFTRT_TIMING_TIMEOUT sets the limit")
        time.sleep(pause)
        pause = min(pause * 2, 5e-3)


# What every timing run holds: nothing in a build's own process; in a build worker
# (cupy_prefetch) a lock that the pool's processes share, so that candidates are timed on a GPU
# that no other worker's timing shares (they compile in parallel, they time one at a time).
_timing_guard: Callable[[], Any] = contextlib.nullcontext


def set_timing_guard(factory: Callable[[], Any]) -> None:
    global _timing_guard
    _timing_guard = factory


# Poisoning a GEMM's output with NaN and looking for NaN after a candidate ran, in one small
# module compiled once: CuPy's own ``fill`` and ``isnan(...).any()`` compile an elementwise
# and a reduction kernel per dtype, 5.5 s of NVRTC in a cold ResNet50 build on the H200
# (2026-12-02). Floats by their bits: 2-byte (float16 / bfloat16) and 4-byte elements.
_NAN_SOURCE = r"""
extern "C" __global__ void fill16(unsigned short* x, long long n, unsigned short v) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) x[i] = v;
}
extern "C" __global__ void fill32(unsigned* x, long long n, unsigned v) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) x[i] = v;
}
extern "C" __global__ void nan16(const unsigned short* x, long long n, unsigned short inf,
                                 int* found) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x)
    if ((x[i] & 0x7fffu) > inf) { *found = 1; return; }
}
extern "C" __global__ void nan32(const unsigned* x, long long n, unsigned inf, int* found) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x)
    if ((x[i] & 0x7fffffffu) > inf) { *found = 1; return; }
}
"""
# element bytes -> (kernel suffix, unsigned dtype); dtype name -> (+inf bits, a NaN's bits)
_NAN_BITS = {"float16": (0x7C00, 0x7E00), "bfloat16": (0x7F80, 0x7FC0),
             "float32": (0x7F800000, 0x7FC00000)}


def _nan_module() -> Any:
    m = getattr(_nan_module, "module", None)
    if m is None:
        m = _nan_module.module = cp.RawModule(code=_NAN_SOURCE)
    return m


def _nan_launch(name: str, x, *args) -> None:
    bits = 8 * x.dtype.itemsize
    flat = x.reshape(-1).view(np.uint16 if bits == 16 else np.uint32)
    n = flat.size
    blocks = max(1, min((n + 255) // 256, 4096))
    _nan_module().get_function(f"{name}{bits}")(
        (blocks,), (256,), (flat, np.int64(n)) + args)


def poison_nan(x) -> bool:
    """Fills float array ``x`` (C-contiguous) with NaN on the current stream; False (nothing
    done) for a dtype without NaN bits here."""
    bits = _NAN_BITS.get(x.dtype.name)
    if bits is None or not x.flags.c_contiguous:
        return False
    _nan_launch("fill", x, (np.uint16 if x.dtype.itemsize == 2 else np.uint32)(bits[1]))
    return True


def has_nan(x) -> bool:
    """Whether float array ``x`` holds a NaN (waits for the current stream); any other dtype:
    False."""
    bits = _NAN_BITS.get(x.dtype.name)
    if bits is None:
        return False
    if not x.flags.c_contiguous:
        x = cp.ascontiguousarray(x)
    found = cp.zeros(1, np.int32)
    _nan_launch("nan", x, (np.uint16 if x.dtype.itemsize == 2 else np.uint32)(bits[0]),
                found)
    return bool(int(found.get()[0]))


def gpu_time(fn: Callable[[], None], stream: cp.cuda.Stream, reps: int = 10,
             what: str = "a layer") -> float:
    """Seconds per call of ``fn`` on the GPU: a CUDA graph of ``reps`` calls replayed, so that
    Python launch overhead is excluded; falls back to events around eager calls when ``fn``
    cannot be captured. Raises if the GPU has not finished after :data:`TIMING_TIMEOUT`."""
    with _timing_guard():
        return _gpu_time(fn, stream, reps, what)


def _gpu_time(fn, stream, reps: int, what: str) -> float:
    with stream:
        fn()
        graph = None
        from tftrt.engine.backends.cupy_backend import DEVICE_WIDE
        try:  # DEVICE_WIDE: another thread's device-wide wait would fail inside the capture
            with DEVICE_WIDE, gc_paused():
                stream.begin_capture(mode=_CAPTURE_MODE)
                try:
                    for _ in range(reps):
                        fn()
                finally:
                    graph = stream.end_capture()
        except Exception:
            graph = None
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        if graph is not None:
            graph.launch(stream)
            e0.record(stream)
            for _ in range(3):
                graph.launch(stream)
            e1.record(stream)
            wait_event(e1, what)
            return cp.cuda.get_elapsed_time(e0, e1) * 1e-3 / (3 * reps)
        e0.record(stream)
        for _ in range(reps):
            fn()
        e1.record(stream)
        wait_event(e1, what)
        return cp.cuda.get_elapsed_time(e0, e1) * 1e-3 / reps


# --- cuDNN frontend ------------------------------------------------------------------------------
_cudnn = None
_cudnn_error: Optional[str] = None


def cudnn_module():
    """The ``cudnn`` frontend module, or None (reason in :func:`cudnn_unavailable_reason`)."""
    global _cudnn, _cudnn_error
    if _cudnn is None and _cudnn_error is None:
        try:
            import cudnn  # noqa: F401
            cudnn.backend_version()
            _cudnn = cudnn
        except Exception as e:  # not installed, or libcudnn missing
            _cudnn_error = f"{type(e).__name__}: {e}"
    return _cudnn


def cudnn_unavailable_reason() -> Optional[str]:
    cudnn_module()
    return _cudnn_error


_tls = threading.local()


def cudnn_handle():
    """A cuDNN handle for the calling thread (handles are not shared between threads)."""
    h = getattr(_tls, "cudnn", None)
    if h is None:
        h = _tls.cudnn = cudnn_module().create_handle()
    return h


# --- cuDNN kernel cache ----------------------------------------------------------------------
# Runtime-fusion plans compile their kernel with NVRTC when built (most of a cold build's time).
# cuDNN's kernel cache binds an already compiled kernel to a new plan of the same topology
# (another shape, another layer, the candidates of the next engine): one cache per process,
# given to every graph, which must then be a dynamic-shape graph. It is kept on disk in the
# build cache (namespace KERNEL_NAMESPACE): a rebuild in a fresh process compiles nothing.
# Off by default (TFTRT_CUDNN_KERNEL_CACHE=1 turns it on): on an H200 (cuDNN frontend 1.32,
# FP16, batch 128) it made cold builds 4-7x faster (ResNet50 43 s -> 11 s, MobileNetV3Large
# 57 s -> 8 s) but the engines slower (ResNet50 3.26 -> 5.34 ms, DenseNet121 6.29 -> 8.70 ms):
# cuDNN offers dynamic-shape graphs fewer and slower engines (benchmarks/README.md).
KERNEL_NAMESPACE = "cudnn-kernels"
_kc_lock = threading.Lock()
_kc: Dict[str, Any] = {"cache": None, "failed": False, "store": None, "saved": None,
                       "loaded": None}


def kernel_cache_enabled() -> bool:
    return env_bool("TFTRT_CUDNN_KERNEL_CACHE", False) and not _kc["failed"]


def use_build_cache(store) -> None:
    """The on-disk build cache (a :class:`tftrt.engine.build_cache.BuildCache`, or None) that
    the kernel cache is loaded from (at its creation) and saved to (:func:`save_kernel_cache`)."""
    with _kc_lock:
        _kc["store"] = store


def build_store():
    """The on-disk build cache of the engine being built (set by the backend), or None."""
    return _kc["store"]


def kernel_cache():
    """The process's cuDNN kernel cache (created at the first graph, then loaded from the
    build cache when it holds one), or None when turned off or unsupported."""
    if not kernel_cache_enabled():
        return None
    with _kc_lock:
        if _kc["cache"] is None and not _kc["failed"]:
            c = cudnn_module()
            try:
                kc = c.create_kernel_cache()
            except Exception as e:  # cuDNN before 9.4, or a frontend without it
                log.info("cuDNN kernel cache unavailable (%s): plans compile per graph", e)
                _kc["failed"] = True
                return None
            store = _kc["store"]
            blob = store.get(KERNEL_NAMESPACE, "kernels") if store is not None else None
            if blob:
                try:
                    kc.deserialize(blob.decode())
                    _kc["saved"] = _kc["loaded"] = len(blob)
                except Exception as e:
                    log.warning("ignoring the cuDNN kernel cache in %s (%s); kernels compile "
                                "again and the entry is replaced", store.directory, e)
                    kc = c.create_kernel_cache()
            _kc["cache"] = kc
        return _kc["cache"]


def kernel_cache_failed(e: Exception) -> None:
    """This cuDNN frontend cannot make dynamic-shape graphs with a kernel cache: graphs are
    static from now on in this process (said once)."""
    if not _kc["failed"]:
        log.info("cuDNN dynamic-shape graphs with a kernel cache unavailable (%s: %s); "
                 "building static-shape graphs", type(e).__name__, e)
    _kc["failed"] = True


def save_kernel_cache() -> bool:
    """Writes the kernel cache to the build cache when it holds kernels not yet on disk (called
    at the end of each engine build). True when written."""
    with _kc_lock:
        kc, store = _kc["cache"], _kc["store"]
        if kc is None or store is None:
            return False
        try:
            blob = kc.serialize()
        except Exception as e:  # a cache no graph has finalized yet, or cuDNN before 9.10
            log.debug("cuDNN kernel cache not serialized: %s", e)
            return False
        blob = blob.encode() if isinstance(blob, str) else bytes(blob)
        if _kc["saved"] == len(blob):
            return False
        _kc["saved"] = len(blob)
    return store.put(KERNEL_NAMESPACE, "kernels", blob)


# --- serialized execution plans ----------------------------------------------------------
# A convolution graph built from a recorded choice (a warm rebuild, a profile's engine for
# another shape) builds one plan, and a runtime-fused plan compiles with NVRTC: 0.1-0.6 s per
# graph on the H200, most of a warm build. cuDNN serializes a built plan with its compiled
# code (cudnn-frontend's graph.serialize, supported for the runtime fusion engines); such
# plans go to the build cache (namespace PLAN_NAMESPACE, keyed by the graph and the choice;
# the environment fingerprint has the GPU and cuDNN versions) and a later build of the same
# graph deserializes instead of compiling. On by default (TFTRT_CUDNN_PLAN_CACHE=0 turns it
# off; on the H200 its three-process GPU test passed: stored, loaded, same answers, a corrupt
# entry built again); anything that fails on the way (an older frontend, a plan cuDNN will
# not serialize, a blob it will not read) builds the plan the usual way.
PLAN_NAMESPACE = "cudnn-plans"
# The uids of a cached conv graph's tensors (E + i: epilogue operand i).
_UIDS = {"X": 1, "W": 2, "Y": 3, "E": 100}
_plan_stats = {"stored": 0, "loaded": 0, "failed": 0}


def plan_cache_enabled() -> bool:
    return env_bool("TFTRT_CUDNN_PLAN_CACHE", True) and build_store() is not None


def plan_cache_stats() -> Dict[str, int]:
    """Plans this process stored in / loaded from the build cache, and the failed attempts."""
    return dict(_plan_stats)


def _plan_key(kind: str, spec, n_fused: int, choice: dict) -> str:
    import hashlib
    import json
    plan = {"engine": int(choice["engine"]),
            "knobs": {str(k): int(v) for k, v in dict(choice.get("knobs", {})).items()}}
    desc = json.dumps({"kind": kind, "spec": vars(spec), "fused": n_fused, "plan": plan,
                       "uids": _UIDS}, sort_keys=True, default=str)
    return hashlib.sha256(desc.encode()).hexdigest()


def new_graph(c, io, dynamic: bool):
    """A cuDNN graph of ``io`` data type with float intermediates and compute, on this
    thread's handle; with ``dynamic`` (and the kernel cache on) a dynamic-shape graph with the
    process's kernel cache."""
    kw = dict(io_data_type=io, intermediate_data_type=c.data_type.FLOAT,
              compute_data_type=c.data_type.FLOAT, handle=cudnn_handle())
    kc = kernel_cache() if dynamic else None
    if kc is not None:
        try:
            return c.pygraph(is_dynamic_shape_enabled=True, kernel_cache=kc, **kw)
        except TypeError as e:  # a frontend without these arguments
            kernel_cache_failed(e)
    return c.pygraph(**kw)


def _cdt(dtype):
    c = cudnn_module()
    return {"float16": c.data_type.HALF, "float32": c.data_type.FLOAT,
            "float64": c.data_type.DOUBLE, "bfloat16": c.data_type.BFLOAT16,
            "int8": c.data_type.INT8, "int32": c.data_type.INT32}[np.dtype(dtype).name]


def _nc_dims(shape_nsc):
    """[N, *S, C] (channels last) -> cuDNN dims [N, C, *S] and NHWC strides."""
    n, sp, c = shape_nsc[0], list(shape_nsc[1:-1]), shape_nsc[-1]
    dims = [n, c] + sp
    strides = [0] * len(dims)
    acc = c
    strides[1] = 1
    for k in range(len(sp) - 1, -1, -1):
        strides[2 + k] = acc
        acc *= sp[k]
    strides[0] = acc
    return dims, strides


# Activations cuDNN pointwise nodes implement exactly as the reference does.
def _cudnn_act(g, y, e):
    fn = e["fn"]
    if fn == "relu":
        return g.relu(input=y)
    if fn == "leaky_relu":
        return g.relu(input=y, negative_slope=float(e["alpha"]))
    if fn == "clip" and e.get("min") is not None and e.get("max") is not None:
        return g.relu(input=y, lower_clip=float(e["min"]), upper_clip=float(e["max"]))
    if fn in ("sigmoid", "tanh"):
        return getattr(g, fn)(input=y)
    if fn == "gelu":
        return g.gelu(input=y) if e.get("approximate", "none") == "none" else \
            g.gelu_approx_tanh(input=y)
    if fn == "silu":  # EfficientNet's swish: x * sigmoid(beta * x) with beta 1
        return g.swish(input=y, swish_beta=1.0)
    return None


class ConvSpec:
    """What a cuDNN convolution graph needs to know (all static)."""

    def __init__(self, x_shape, w_shape, y_shape, strides, dilations, pads, group: int,
                 dtype: str, y_dtype: str, epilogue: Sequence[dict],
                 operands: Dict[int, Tuple[Tuple[int, ...], str]], tf32: bool,
                 transpose: bool = False):
        nsp = len(x_shape) - 2
        self.nsp = nsp
        self.pads_b, self.pads_e = list(pads[:nsp]), list(pads[nsp:])
        self.strides, self.dilations = list(strides), list(dilations)
        self.x_shape, self.w_shape, self.y_shape = tuple(x_shape), tuple(w_shape), tuple(y_shape)
        if nsp == 1:  # cuDNN wants >= 2 spatial dims: add H = 1
            self.x_shape = (x_shape[0], 1) + tuple(x_shape[1:])
            self.w_shape = (w_shape[0], 1) + tuple(w_shape[1:])
            self.y_shape = (y_shape[0], 1) + tuple(y_shape[1:])
            self.pads_b, self.pads_e = [0] + self.pads_b, [0] + self.pads_e
            self.strides, self.dilations = [1] + self.strides, [1] + self.dilations
        self.group, self.dtype, self.y_dtype = group, dtype, y_dtype
        self.epilogue, self.operands, self.tf32 = list(epilogue), dict(operands), tf32
        self.transpose = transpose

    def fusable_prefix(self) -> int:
        """How many leading epilogue ops a cuDNN pointwise chain can express."""
        k, cout = 0, self.y_shape[-1]
        for e in self.epilogue:
            if e["op"] in ("bias", "scale"):
                pass
            elif e["op"] == "add":
                shp = self.operands[e["input"]][0]
                if tuple(shp) not in (self.y_shape, (cout,)):
                    break
            elif e["op"] == "act":
                if _cudnn_act_supported(e) is False:
                    break
            else:
                break
            k += 1
        return k


def _cudnn_act_supported(e) -> bool:
    """Whether :func:`_cudnn_act` has a cuDNN pointwise node for activation ``e`` (a graph
    cuDNN then cannot build is tried unfused too: ConvCudnn keeps the faster that builds)."""
    fn = e["fn"]
    return fn in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "silu") or \
        (fn == "clip" and e.get("min") is not None and e.get("max") is not None)


# TFTRT_CUDNN_TRACE=FILE appends one JSON line per tuned cuDNN graph: every candidate plan's
# name, build seconds and time, and the one kept (where a cold build's time goes, and whether
# the losing candidates were worth building: benchmarks/run_gpu_build_cache.sh).
_TRACE_LOCK = threading.Lock()


def _trace_candidates(plans) -> None:
    path = os.environ.get("TFTRT_CUDNN_TRACE")
    if not path:
        return
    import json
    rows = []
    for i in sorted(set(getattr(plans, "build_seconds", {})) | set(plans.times)):
        try:
            name = plans.g.get_plan_name_at_index(i) if i in plans.built else ""
        except Exception:
            name = "?"
        rows.append({"index": i, "plan": name, "built": i in plans.built,
                     "build_s": round(plans.build_seconds.get(i, 0.0), 4),
                     "rtc": getattr(plans, "rtc", {}).get(i),
                     "us": round(plans.times[i] * 1e6, 2) if i in plans.times else None})
    spec = getattr(plans, "spec", None)
    what = {"graph": type(plans).__name__, "kept": plans.index, "candidates": rows,
            "fused": getattr(plans, "n_fused", None),
            "shapes": [list(getattr(spec, a, ())) for a in ("x_shape", "w_shape", "y_shape")]}
    with _TRACE_LOCK, open(path, "a") as f:
        f.write(json.dumps(what) + "\n")


def _runtime_compiled(c, g, index: int) -> Optional[bool]:
    """Whether cuDNN says the plan at ``index`` compiles at run time (its behavior notes), or
    None where this cuDNN frontend cannot say before building it."""
    note = getattr(getattr(c, "behavior_note", None), "RUNTIME_COMPILATION", None)
    if note is None:
        return None
    try:
        return note in g.get_behavior_notes_for_plan_at_index(index)
    except Exception:
        return None


class _CudnnPlans:
    """Execution-plan handling shared by the cuDNN graphs below: build the recorded plan (an
    engine id + knobs) or the first ``candidates`` heuristic plans, time them, keep one."""

    g: Any

    precompiled_only = False  # only plans that build without a runtime compile (quick engines)

    def _setup(self, choice: Optional[dict], candidates: Optional[int],
               no_tensor_cores: bool = False) -> None:
        """Builds the graph (``self._graph``) and its plans; when the recorded ``choice``
        cannot be rebuilt, builds a fresh graph and plans without it."""
        c = cudnn_module()
        self.lock = threading.Lock()
        self.dynamic = kernel_cache_enabled()
        try:
            self._make(c, choice, candidates, no_tensor_cores)
        except Exception as e:
            if not self.dynamic:
                raise
            # cuDNN cannot build this graph with dynamic shapes (so without the kernel
            # cache): this one is static-shape.
            log.debug("cuDNN graph %s static-shape: %s", type(self).__name__, e)
            self.dynamic = False
            self._make(c, choice, candidates, no_tensor_cores)

    def _make(self, c, choice, candidates, no_tensor_cores) -> None:
        key = self._cache_key(choice)
        if key is not None and self._load_plan(c, key, choice):
            return
        self.g, self.tensors = self._graph(c)
        if not self._plans(c, choice, candidates, no_tensor_cores):
            self.g, self.tensors = self._graph(c)
            self._plans(c, None, candidates, no_tensor_cores)
        elif key is not None:
            self._store_plan(key)

    loaded = False  # the plan came serialized from the build cache
    rtc_candidates: Optional[int] = None  # a subclass's own bound (else CUDNN_RTC_CANDIDATES)

    def _cache_key(self, choice: Optional[dict]) -> Optional[str]:
        """The build-cache key of this graph's plan for recorded ``choice`` (None: the graph
        keeps no serialized plan: no choice, a dynamic-shape graph, the cache off)."""
        return None

    def _uid_tensors(self) -> dict:
        """``self.tensors`` of a deserialized graph: the same keys, with uids for tensors."""
        raise NotImplementedError

    def _load_plan(self, c, key: str, choice: dict) -> bool:
        """The plan the build cache holds for ``key``, deserialized into ``self.g``; False
        (counted as failed when there was an entry) to build it instead. Entries are only
        written from a graph of one plan, the recorded choice, with the fixed uids
        (:meth:`_store_plan`): the key names that plan, and the uids are known."""
        blob = build_store().get(PLAN_NAMESPACE, key)
        if not blob:
            return False
        from tftrt.engine.backends.cupy_backend import DEVICE_WIDE
        stream = cp.cuda.Stream(non_blocking=True)
        try:
            h = cudnn_handle()
            g = c.pygraph(handle=h)
            # deserializing may run a warm-up capture on the handle's stream: a private
            # stream, and no device-wide wait of another thread inside it
            with DEVICE_WIDE, gc_paused():
                c.set_stream(h, stream.ptr)
                g.deserialize(h, blob)
            stream.synchronize()
            workspace = int(g.get_workspace_size_plan_at_index(0))
        except Exception as e:  # a blob this cuDNN will not read: build it, replace the entry
            with _kc_lock:
                _plan_stats["failed"] += 1
            log.info("serialized cuDNN plan not loaded (%s: %s); building it",
                     type(e).__name__, str(e)[:200])
            return False
        self.g, self.tensors = g, self._uid_tensors()
        self.index, self.built, self.times = 0, [0], {}
        self.workspace, self.loaded, self._loaded_choice = workspace, True, dict(choice)
        with _kc_lock:
            _plan_stats["loaded"] += 1
        return True

    def _store_plan(self, key: str) -> bool:
        """Puts the graph's one plan (built from the recorded choice) in the build cache,
        serialized; only from a graph with the fixed uids. A tuned graph, of several plans,
        is not stored: which one cuDNN would serialize is not ours to say (its choice is
        recorded, and the next build of the graph, from that choice, stores it). Whether it
        was stored."""
        if not getattr(self, "fixed_uids", False) or self.built != [self.index]:
            return False
        try:
            blob = self.g.serialize(as_bytes=True)
        except Exception as e:  # a plan cuDNN does not serialize (a precompiled engine)
            log.debug("cuDNN plan not serialized: %s", e)
            return False
        if not build_store().put(PLAN_NAMESPACE, key, bytes(blob)):
            return False
        with _kc_lock:
            _plan_stats["stored"] += 1
        return True

    def _plans(self, c, choice: Optional[dict], candidates: Optional[int],
               no_tensor_cores: bool = False) -> bool:
        """Creates the execution plans of ``self.g``; False when the recorded ``choice``
        could not be rebuilt (``_setup`` then makes a fresh graph and plans without it)."""
        g = self.g
        self.index, self.times = None, {}
        if choice is not None:
            try:
                try:
                    knobs = {c.knob_type(int(k)): int(v) for k, v in choice["knobs"].items()}
                    g.create_execution_plan(int(choice["engine"]), knobs)
                    idx = g.get_execution_plan_count() - 1
                except Exception:
                    # some knob types do not convert back (grouped convs on cuDNN 9, H200:
                    # CUDNN_STATUS_INVALID_VALUE): the heuristics' own plan of that engine
                    # and knobs, found among theirs
                    idx = self._heuristic_index(c, choice)
                g.build_plan_at_index(idx)
                self.index, self.built = idx, [idx]
            except Exception as e:
                log.info("recorded cuDNN plan %s could not be rebuilt (%s); re-planning",
                         choice, e)
                return False
        else:
            g.create_execution_plans([c.heur_mode.A, c.heur_mode.FALLBACK])
            if no_tensor_cores:
                g.deselect_numeric_notes([c.numerical_note.TENSOR_CORE])
            g.deselect_workspace_greater_than(WORKSPACE_LIMIT)
            try:
                g.check_support()
            except Exception:
                pass
            self.built, self.build_seconds, self.rtc = [], {}, {}
            candidates = candidates or CUDNN_CANDIDATES
            compiled = 0  # runtime-compiled plans built so far
            for i in range(g.get_execution_plan_count()):
                if len(self.built) >= candidates:
                    break
                rtc = self.rtc[i] = _runtime_compiled(c, g, i)
                if rtc is not False and self.precompiled_only:
                    continue  # compiles at run time, or cuDNN does not say
                if rtc and compiled >= max(1, self.rtc_candidates or CUDNN_RTC_CANDIDATES):
                    continue
                t0 = time.perf_counter()
                try:
                    g.build_plan_at_index(i)
                    self.built.append(i)
                except Exception:
                    continue
                finally:
                    self.build_seconds[i] = time.perf_counter() - t0
                if rtc or (rtc is None and self.build_seconds[i] > _RTC_BUILD_S):
                    compiled += 1
            if not self.built:
                raise RuntimeError("cuDNN built no execution plan for this graph" + (
                    " without a runtime compile" if self.precompiled_only else ""))
            self.index = self.built[0]
        self.workspace = int(g.get_workspace_size_plan_at_index(self.index))
        return True

    def _heuristic_index(self, c, choice: dict) -> int:
        """The index of the heuristics' plan with ``choice``'s engine and knobs in a fresh
        ``self.g`` (no plan made yet); LookupError when they offer none."""
        g = self.g
        g.create_execution_plans([c.heur_mode.A, c.heur_mode.FALLBACK])
        want = (int(choice["engine"]), {str(k): int(v) for k, v in choice["knobs"].items()})
        for i in range(g.get_execution_plan_count()):
            try:
                eid, knobs = g.get_engine_and_knobs_at_index(i)
            except Exception:
                continue
            if (int(eid), {str(int(k)): int(v) for k, v in knobs.items()}) == want:
                return i
        raise LookupError(f"no heuristic plan has engine {want[0]} with knobs {want[1]}")

    def choice(self) -> dict:
        if self.loaded:
            return dict(self._loaded_choice)
        eid, knobs = self.g.get_engine_and_knobs_at_index(self.index)
        return {"engine": int(eid), "knobs": {str(int(k)): int(v) for k, v in knobs.items()}}

    def plan_name(self) -> str:
        try:
            return self.g.get_plan_name_at_index(self.index)
        except Exception:
            return "?"

    def _execute(self, pack: dict, ws_ptr: int, stream_ptr: int, index: Optional[int]) -> None:
        c = cudnn_module()
        h = cudnn_handle()
        with self.lock:
            c.set_stream(h, stream_ptr)
            self.g.execute_plan_at_index(pack, ws_ptr, self.index if index is None else index,
                                         handle=h)

    def _tune(self, run: Callable[[int, int], None], stream: cp.cuda.Stream) -> float:
        """Times the built plans (``run(ws_ptr, index)``), keeps the fastest; its seconds."""
        size = max(int(self.g.get_workspace_size_plan_at_index(i)) for i in self.built)
        ws = cp.empty(max(size, 1), cp.uint8)
        for i in self.built:
            try:
                self.times[i] = gpu_time(lambda: run(ws.data.ptr, i), stream,
                                         what=f"cuDNN plan {i}")
            except GpuTimeout:
                raise
            except Exception as e:
                log.debug("cuDNN plan %d failed: %s", i, e)
        if self.times:
            self.index = min(self.times, key=self.times.get)
        self.workspace = int(self.g.get_workspace_size_plan_at_index(self.index))
        _trace_candidates(self)
        return self.times.get(self.index, float("inf"))


class CudnnConv(_CudnnPlans):
    """One convolution (fprop, or dgrad for conv_transpose) plus ``n_fused`` epilogue ops as a
    cuDNN graph with one chosen execution plan."""

    def __init__(self, spec: ConvSpec, n_fused: int, choice: Optional[dict] = None,
                 candidates: Optional[int] = None, precompiled_only: bool = False):
        """``precompiled_only``: the first heuristic plan that cuDNN does not compile at run
        time (no ``choice``; RuntimeError when there is none): builds in milliseconds."""
        self.spec, self.n_fused = spec, n_fused
        self.precompiled_only = precompiled_only
        self._setup(None if precompiled_only else choice, 1 if precompiled_only else candidates,
                    spec.dtype == "float32" and not spec.tf32)

    def _cache_key(self, choice):
        if choice is None or self.dynamic or self.precompiled_only or \
                not plan_cache_enabled():
            return None
        return _plan_key("conv", self.spec, self.n_fused, choice)

    def _uid_tensors(self) -> dict:
        t = {"X": _UIDS["X"], "W": _UIDS["W"], "Y": _UIDS["Y"]}
        for e in self.spec.epilogue[:self.n_fused]:
            if "input" in e:
                t[e["input"]] = _UIDS["E"] + e["input"]
        return t

    def _graph(self, c):
        s = self.spec
        io = _cdt(s.dtype)
        g = new_graph(c, io, self.dynamic)
        xd, xs = _nc_dims(s.x_shape)
        wd, ws = _nc_dims(s.w_shape)
        yd, ys = _nc_dims(s.y_shape)
        # fixed uids: a plan stored serialized is executed by them (_uid_tensors)
        self.fixed_uids = fixed = plan_cache_enabled()

        def uid(u: int) -> dict:
            return {"uid": u} if fixed else {}
        X = g.tensor(name="X", dim=xd, stride=xs, data_type=io, **uid(_UIDS["X"]))
        W = g.tensor(name="W", dim=wd, stride=ws, data_type=io, **uid(_UIDS["W"]))
        kw = dict(pre_padding=s.pads_b, post_padding=s.pads_e, stride=s.strides,
                  dilation=s.dilations, compute_data_type=c.data_type.FLOAT)
        if s.transpose:
            Y = g.conv_dgrad(loss=X, filter=W, **kw)
            Y.set_dim(yd).set_stride(ys)
        else:
            Y = g.conv_fprop(image=X, weight=W, **kw)
        tensors = {"X": X, "W": W}
        cout = s.y_shape[-1]
        for e in s.epilogue[:self.n_fused]:
            Y.set_data_type(c.data_type.FLOAT)
            if e["op"] in ("bias", "scale", "add"):
                i = e["input"]
                shp, dt = s.operands[i]
                euid = uid(_UIDS["E"] + i)
                if tuple(shp) == (cout,):
                    dims = [1, cout] + [1] * (len(yd) - 2)
                    T = g.tensor(name=f"E{i}", dim=dims, stride=[cout, 1] + [cout] *
                                 (len(yd) - 2), data_type=_cdt(dt), **euid)
                else:
                    T = g.tensor(name=f"E{i}", dim=yd, stride=ys, data_type=_cdt(dt), **euid)
                tensors[i] = T
                if e["op"] == "bias":
                    Y = g.bias(input=Y, bias=T)
                elif e["op"] == "scale":
                    Y = g.scale(input=Y, scale=T)
                else:
                    Y = g.add(a=Y, b=T)
            else:
                Y = _cudnn_act(g, Y, e)
        Y.set_output(True).set_data_type(_cdt(s.y_dtype)).set_dim(yd).set_stride(ys)
        if fixed:
            Y.set_uid(_UIDS["Y"])
        tensors["Y"] = Y
        g.validate()
        g.build_operation_graph()
        return g, tensors

    def _pack(self, x, w, y, operands: Dict[int, Any]):
        t = self.tensors
        pack = {t["X"]: x.data.ptr, t["W"]: w.data.ptr, t["Y"]: y.data.ptr}
        for i, T in t.items():
            if isinstance(i, int):
                pack[T] = operands[i].data.ptr
        return pack

    def run(self, x, w, y, operands: Dict[int, Any], ws_ptr: int, stream_ptr: int,
            index: Optional[int] = None) -> None:
        self._execute(self._pack(x, w, y, operands), ws_ptr, stream_ptr, index)

    def tune(self, x, w, y, operands, stream: cp.cuda.Stream) -> float:
        """Times the built candidate plans, keeps the fastest; returns its seconds."""
        return self._tune(lambda ws, i: self.run(x, w, y, operands, ws, stream.ptr, i), stream)


class SdpaSpec:
    """Scaled dot-product attention y = softmax(scale * q @ k^T) @ v for cuDNN: q [B,H,Sq,D],
    k [B,H,Sk,D], v [B,H,Sk,Dv], y [B,H,Sq,Dv], read and written in ``layout`` ("bhsd", or
    "bshd": the tensors are stored [B,S,H,D] and cuDNN reads them through strides)."""

    def __init__(self, b, h, sq, sk, d, dv, layout: str, dtype: str, scale: float):
        self.b, self.h, self.sq, self.sk, self.d, self.dv = (int(t) for t in (b, h, sq, sk, d,
                                                                              dv))
        self.layout, self.dtype, self.scale = layout, np.dtype(dtype).name, float(scale)

    def key(self) -> tuple:
        return ("sdpa",) + tuple(sorted(self.__dict__.items()))

    def strides(self, s: int, d: int) -> List[int]:
        h = self.h
        if self.layout == "bshd":
            return [s * h * d, d, h * d, 1]
        return [h * s * d, s * d, d, 1]


class CudnnSdpa(_CudnnPlans):
    """One cuDNN SDPA (flash-attention) forward graph, inference only (no softmax stats)."""

    def __init__(self, spec: SdpaSpec, choice: Optional[dict] = None,
                 candidates: Optional[int] = None):
        self.spec = spec
        self._setup(choice, candidates)

    def _graph(self, c):
        s = self.spec
        io = _cdt(s.dtype)
        g = new_graph(c, io, self.dynamic)
        Q = g.tensor(name="Q", dim=[s.b, s.h, s.sq, s.d], stride=s.strides(s.sq, s.d),
                     data_type=io)
        K = g.tensor(name="K", dim=[s.b, s.h, s.sk, s.d], stride=s.strides(s.sk, s.d),
                     data_type=io)
        V = g.tensor(name="V", dim=[s.b, s.h, s.sk, s.dv], stride=s.strides(s.sk, s.dv),
                     data_type=io)
        try:
            res = g.sdpa(name="sdpa", q=Q, k=K, v=V, generate_stats=False, attn_scale=s.scale)
        except TypeError:  # frontends before generate_stats
            res = g.sdpa(name="sdpa", q=Q, k=K, v=V, is_inference=True, attn_scale=s.scale)
        O = res[0] if isinstance(res, (list, tuple)) else res
        O.set_output(True).set_dim([s.b, s.h, s.sq, s.dv]).set_stride(
            s.strides(s.sq, s.dv)).set_data_type(io)
        g.validate()
        g.build_operation_graph()
        return g, {"Q": Q, "K": K, "V": V, "O": O}

    def run(self, q_ptr: int, k_ptr: int, v_ptr: int, o_ptr: int, ws_ptr: int,
            stream_ptr: int, index: Optional[int] = None) -> None:
        t = self.tensors
        self._execute({t["Q"]: q_ptr, t["K"]: k_ptr, t["V"]: v_ptr, t["O"]: o_ptr}, ws_ptr,
                      stream_ptr, index)

    def tune(self, q, k, v, o, stream: cp.cuda.Stream) -> float:
        p = (q.data.ptr, k.data.ptr, v.data.ptr, o.data.ptr)
        return self._tune(lambda ws, i: self.run(*p, ws, stream.ptr, i), stream)


# --- cuBLASLt ------------------------------------------------------------------------------------
_lt = None
_lt_error: Optional[str] = None


def lt_module():
    """(cublasLt bindings, cublas bindings, CudaDataType) from nvmath, or None."""
    global _lt, _lt_error
    if _lt is None and _lt_error is None:
        try:
            from nvmath import CudaDataType
            from nvmath.bindings import cublas, cublasLt
            cublasLt.get_version()
            _lt = (cublasLt, cublas, CudaDataType)
        except Exception as e:
            _lt_error = f"{type(e).__name__}: {e}"
    return _lt


def lt_unavailable_reason() -> Optional[str]:
    lt_module()
    return _lt_error


def lt_handle():
    h = getattr(_tls, "lt", None)
    if h is None:
        h = _tls.lt = lt_module()[0].create()
    return h


def _set_attr(set_fn, dtype_fn, obj, attr, value) -> None:
    buf = np.array(value, dtype=dtype_fn(attr))
    set_fn(obj, attr, buf.ctypes.data, buf.itemsize)


def _lt_dtype(dtype):
    DT = lt_module()[2]
    return {"float16": DT.CUDA_R_16F, "float32": DT.CUDA_R_32F, "float64": DT.CUDA_R_64F,
            "bfloat16": DT.CUDA_R_16BF}[np.dtype(dtype).name]


class GemmSpec:
    """Row-major batched Y[b, M, N] = alpha * op(A)[b, M, K] @ op(B)[b, K, N] (+ beta C) with a
    cuBLASLt epilogue. Batch strides are in elements; 0 broadcasts an operand."""

    def __init__(self, m, n, k, batch, ta, tb, a_stride, b_stride, d_stride, ab_dtype, d_dtype,
                 alpha: float, has_c: bool, epilogue: str, bias_dtype: Optional[str],
                 tf32: bool):
        self.m, self.n, self.k, self.batch = int(m), int(n), int(k), int(batch)
        self.ta, self.tb = bool(ta), bool(tb)
        self.a_stride, self.b_stride, self.d_stride = int(a_stride), int(b_stride), int(d_stride)
        self.ab_dtype, self.d_dtype = np.dtype(ab_dtype).name, np.dtype(d_dtype).name
        self.alpha, self.has_c, self.epilogue = float(alpha), bool(has_c), epilogue
        self.bias_dtype = bias_dtype and np.dtype(bias_dtype).name
        self.tf32 = bool(tf32)

    def key(self) -> tuple:
        return tuple(sorted(self.__dict__.items()))


_LT_SHARED: Dict[tuple, "LtGemm"] = {}  # (device, GemmSpec.key(), algorithm) -> LtGemm
_LT_SHARED_LOCK = threading.Lock()


class LtGemm:
    """A cuBLASLt matmul for one :class:`GemmSpec` (descriptors, heuristic candidates, choice).

    In cuBLASLt's column-major terms Y^T[N, M] = op(B)^T @ op(A)^T: the row-major B buffer is
    the left operand and the row-major A buffer the right one, so no data is transposed, and
    the bias runs along N (the rows of the column-major result), as a per-channel bias must.
    """

    def __init__(self, spec: GemmSpec, choice: Optional[dict] = None, candidates: int = 8):
        lt, cublas, DT = lt_module()
        self.spec = s = spec
        self.lock = threading.Lock()
        self.lt = lt
        ct = cublas.ComputeType
        if s.ab_dtype == "float32":
            compute = ct.COMPUTE_32F_FAST_TF32 if s.tf32 else ct.COMPUTE_32F
        elif s.ab_dtype == "float64":
            compute = ct.COMPUTE_64F
        else:
            compute = ct.COMPUTE_32F
        scale_t = DT.CUDA_R_64F if s.ab_dtype == "float64" else DT.CUDA_R_32F
        self.desc = lt.matmul_desc_create(compute, scale_t)
        da = lambda attr, v: _set_attr(lt.matmul_desc_set_attribute,  # noqa: E731
                                       lt.get_matmul_desc_attribute_dtype, self.desc, attr, v)
        A = lt.MatmulDescAttribute
        da(A.TRANSA, cublas.Operation.T if s.tb else cublas.Operation.N)
        da(A.TRANSB, cublas.Operation.T if s.ta else cublas.Operation.N)
        ep = {"": lt.Epilogue.DEFAULT, "bias": lt.Epilogue.BIAS, "relu": lt.Epilogue.RELU,
              "bias_relu": lt.Epilogue.RELU_BIAS, "gelu": lt.Epilogue.GELU,
              "bias_gelu": lt.Epilogue.GELU_BIAS}[s.epilogue]
        da(A.EPILOGUE, ep)
        if s.bias_dtype:
            da(A.BIAS_DATA_TYPE, _lt_dtype(s.bias_dtype))
        self._da = da
        abt, dt = _lt_dtype(s.ab_dtype), _lt_dtype(s.d_dtype)
        # left operand: row-major B; right operand: row-major A (see class doc)
        la = lt.matrix_layout_create(abt, *((s.k, s.n, s.k) if s.tb else (s.n, s.k, s.n)))
        lb = lt.matrix_layout_create(abt, *((s.m, s.k, s.m) if s.ta else (s.k, s.m, s.k)))
        ld = lt.matrix_layout_create(dt, s.n, s.m, s.n)
        self.layouts = (la, lb, ld)
        if s.batch > 1:
            for lay, stride in ((la, s.b_stride), (lb, s.a_stride), (ld, s.d_stride)):
                _set_attr(lt.matrix_layout_set_attribute, lt.get_matrix_layout_attribute_dtype,
                          lay, lt.MatrixLayoutAttribute.BATCH_COUNT, s.batch)
                _set_attr(lt.matrix_layout_set_attribute, lt.get_matrix_layout_attribute_dtype,
                          lay, lt.MatrixLayoutAttribute.STRIDED_BATCH_OFFSET, stride)
        self.alpha = np.array(s.alpha, np.float64 if s.ab_dtype == "float64" else np.float32)
        self.beta = np.array(1.0 if s.has_c else 0.0, self.alpha.dtype)
        pref = lt.matmul_preference_create()
        P = lt.MatmulPreferenceAttribute
        _set_attr(lt.matmul_preference_set_attribute, lt.get_matmul_preference_attribute_dtype,
                  pref, P.MAX_WORKSPACE_BYTES, LT_WORKSPACE)
        # In-place split-K reductions accumulate into D and need it zeroed: never use them.
        R = lt.ReductionScheme
        _set_attr(lt.matmul_preference_set_attribute, lt.get_matmul_preference_attribute_dtype,
                  pref, P.REDUCTION_SCHEME_MASK, int(R.COMPUTE_TYPE) | int(R.OUTPUT_TYPE))
        self.results = lt.MatmulHeuristicResult(candidates)
        count = np.zeros(1, np.int32)
        lt.matmul_algo_get_heuristic(lt_handle(), self.desc, la, lb, ld, ld, pref, candidates,
                                     self.results.ptr, count.ctypes.data)
        lt.matmul_preference_destroy(pref)
        self.count = int(count[0])
        if self.count == 0:
            raise RuntimeError("cuBLASLt found no algorithm for this GEMM")
        # Each candidate's cublasLtMatmulAlgo_t (passed by pointer) and workspace bytes.
        self.algos = [self.results[i]["algo"] for i in range(self.count)]
        ws_all = np.asarray(self.results["workspace_size"]).reshape(-1)
        self.wss = [int(ws_all[i]) for i in range(self.count)]
        self.index = 0
        if choice is not None and "algo" in choice and int(choice["algo"]) < self.count:
            self.index = int(choice["algo"])
        self.times: Dict[int, float] = {}
        self._bias_ptr = None

    @classmethod
    def shared(cls, spec: GemmSpec, choice: dict) -> "LtGemm":
        """The LtGemm for ``spec`` at ``choice``'s algorithm, made once per process and device
        and shared by every layer that runs that GEMM: its descriptors and cuBLASLt's
        heuristic query cost ~0.6 ms, and a warm ResNet50 profile build (8 engines, each
        layer made for its workspace and again for its context) made 944 of them (H200,
        2026-12-02, run s). Sharing is safe: :meth:`run` sets the bias pointer under the
        object's lock, and a captured CUDA graph keeps its capture's launch parameters."""
        idx = int(choice.get("algo", 0))
        key = (cp.cuda.runtime.getDevice(), spec.key(), idx)
        g = _LT_SHARED.get(key)
        if g is None:
            g = cls(spec, choice)
            if g.index != idx:  # not an algorithm of this GEMM here: not shared
                return g
            with _LT_SHARED_LOCK:
                g = _LT_SHARED.setdefault(key, g)
        return g

    @property
    def workspace(self) -> int:
        return self.wss[self.index] + (16 if self.spec.epilogue else 0)

    def choice(self) -> dict:
        return {"algo": int(self.index)}

    def run(self, a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, ws_ptr, ws_size, stream_ptr,
            index: Optional[int] = None) -> None:
        i = self.index if index is None else index
        with self.lock:
            if bias_ptr is not None and bias_ptr != self._bias_ptr:
                self._da(self.lt.MatmulDescAttribute.BIAS_POINTER, bias_ptr)
                self._bias_ptr = bias_ptr
            la, lb, ld = self.layouts
            self.lt.matmul(lt_handle(), self.desc, self.alpha.ctypes.data, b_ptr, la, a_ptr, lb,
                           self.beta.ctypes.data, c_ptr or d_ptr, ld, d_ptr, ld,
                           self.algos[i].ctypes.data, ws_ptr, ws_size, stream_ptr)

    def tune(self, a, b, c, d, bias, stream: cp.cuda.Stream) -> float:
        """Times every heuristic candidate (rejecting any that leaves NaN in a poisoned
        output), keeps the fastest; returns its seconds."""
        ws = cp.empty(LT_WORKSPACE + 64, cp.uint8)
        bp = bias.data.ptr if bias is not None else None
        cp_ = c.data.ptr if c is not None else 0
        for i in range(self.count):
            if self.wss[i] > LT_WORKSPACE:
                continue
            try:
                with stream:
                    poisoned = poison_nan(d)
                    self.run(a.data.ptr, b.data.ptr, cp_, d.data.ptr, bp, ws.data.ptr,
                             ws.nbytes, stream.ptr, i)
                    bad = poisoned and has_nan(d) and \
                        not any(has_nan(t) for t in (a, b) if t is not None)
                if bad:
                    log.debug("cuBLASLt algo %d left NaN in the output; skipped", i)
                    continue
                self.times[i] = gpu_time(lambda: self.run(
                    a.data.ptr, b.data.ptr, cp_, d.data.ptr, bp, ws.data.ptr, ws.nbytes,
                    stream.ptr, i), stream, what=f"cuBLASLt algorithm {i}")
            except GpuTimeout:
                raise
            except Exception as e:
                log.debug("cuBLASLt algo %d failed: %s", i, e)
        if not self.times:
            raise RuntimeError("no cuBLASLt algorithm ran correctly")
        self.index = min(self.times, key=self.times.get)
        log.debug("cuBLASLt %s: algorithm %d of %d (%.1f us, workspace %d bytes)",
                  self.spec.key(), self.index, self.count, self.times[self.index] * 1e6,
                  self.wss[self.index])
        return self.times[self.index]
