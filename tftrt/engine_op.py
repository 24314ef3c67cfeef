"""TRTEngineOp at run time: an LRU cache of engines keyed by input shapes, with native fallback.

One :class:`TRTEngineOp` object stands behind each ``TRTEngineOp_NNN_MMM`` node of a converted
function (bound through an ``EagerPyFunc`` node). A call:
  1. picks the backend (env ``TFTRT_BACKEND``: auto | cupy | numpy | native),
  2. looks up the engine built for the input shapes (LRU, capacity ``maximum_cached_engines``),
  3. on a miss builds one (unless ``allow_build_at_runtime=False``),
  4. runs it; when the build or the run fails, or nothing may be built, it runs the native
     segment function instead and logs why once (env
     ``TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION=0`` turns that into an error).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger("tftrt.engine_op")

BACKENDS = ("auto", "cupy", "numpy", "native")

ShapeKey = Tuple[Tuple[int, ...], ...]


_RESOLVED: Dict[str, str] = {}


def resolve_backend(name: Optional[str] = None) -> str:
    """The backend engines run on: env TFTRT_BACKEND (default auto) resolved to a real one.

    Resolved once per value (every engine call asks, and probing for a GPU is not free).
    """
    raw = (name or os.environ.get("TFTRT_BACKEND") or "auto").strip().lower()
    got = _RESOLVED.get(raw)
    if got is not None:
        return got
    if raw not in BACKENDS:
        raise ValueError(f"TFTRT_BACKEND={raw!r} is not supported; use one of "
                         f"{', '.join(BACKENDS)}")
    got = raw
    if raw == "auto":
        from tftrt.engine.backends import available_backends
        got = "cupy" if "cupy" in available_backends() else "native"
    _RESOLVED[raw] = got
    return got


def _tf32_enabled() -> bool:
    """TF-TRT followed TensorFlow's TF32 switch for FP32 engines; so do we."""
    import sys
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return True
    return bool(tf.config.experimental.tensor_float_32_execution_enabled())


def native_fallback_allowed() -> bool:
    from tftrt.env import env_bool
    return env_bool("TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION", True)


@dataclasses.dataclass
class EngineSpec:
    """Everything an engine op needs besides its native segment function (JSON-able)."""

    name: str
    onnx_bytes: bytes
    input_tensors: List[str]
    output_tensors: List[str]
    input_dtypes: List[str]
    output_dtypes: List[str]
    input_shapes: List[Optional[List[Optional[int]]]]
    output_shapes: List[Optional[List[Optional[int]]]]
    op_histogram: Dict[str, int]
    num_nodes: int
    precision_mode: str = "FP32"
    maximum_cached_engines: int = 1
    max_workspace_size_bytes: int = 1 << 40
    allow_build_at_runtime: bool = True
    member_nodes: List[str] = dataclasses.field(default_factory=list)  # TF nodes inside
    max_batch_size: Optional[int] = None  # TF1 static mode: larger batches run natively

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("onnx_bytes")
        return d

    @classmethod
    def from_json(cls, d: dict, onnx_bytes: bytes) -> "EngineSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(onnx_bytes=onnx_bytes, **{k: v for k, v in d.items() if k in fields})


class EngineCache:
    """LRU of engines keyed by the tuple of input shapes."""

    def __init__(self, capacity: int):
        self.capacity = max(int(capacity), 1)
        self._items: "collections.OrderedDict[ShapeKey, object]" = collections.OrderedDict()

    def get(self, key: ShapeKey):
        eng = self._items.get(key)
        if eng is not None:
            self._items.move_to_end(key)
        return eng

    def put(self, key: ShapeKey, engine) -> Optional[ShapeKey]:
        """Inserts; returns the evicted key when the cache was full."""
        evicted = None
        if key not in self._items and len(self._items) >= self.capacity:
            evicted, _ = self._items.popitem(last=False)
        self._items[key] = engine
        self._items.move_to_end(key)
        return evicted

    def keys(self) -> List[ShapeKey]:
        return list(self._items)

    def items(self):
        return list(self._items.items())

    def __len__(self):
        return len(self._items)


class TRTEngineOp:
    """The Python object behind one TRTEngineOp node."""

    def __init__(self, spec: EngineSpec, native_fn):
        self.spec = spec
        self.native_fn = native_fn
        self.cache = EngineCache(spec.maximum_cached_engines)
        self._lock = threading.Lock()
        self._logged: set = set()
        self._failed_keys: Dict[ShapeKey, str] = {}
        self.stats = collections.Counter()
        self.build_seconds: Dict[ShapeKey, float] = {}
        # True during converter.build(): engines are built for its shapes even with
        # allow_build_at_runtime=False, which governs only the calls after it (TF-TRT).
        self.building = False

    @property
    def name(self) -> str:
        return self.spec.name

    # --- public ------------------------------------------------------------------------------
    def __call__(self, *inputs):
        """The segment's outputs for ``inputs``: the engine's, or the native segment's.

        For callers outside a TensorFlow graph (the direct single-engine signature): the
        native segment runs here as an ordinary top-level function call. Inside a converted
        graph the engine node calls :meth:`try_engine` and the graph itself runs the native
        segment when that returns None (never a TF call nested in the engine callback).
        """
        outs = self.try_engine(inputs)
        return self._native(inputs) if outs is None else outs

    def try_engine(self, inputs) -> Optional[list]:
        """Runs the engine for ``inputs`` (building it when allowed); None means "run the
        native segment instead", decided here for every reason: the native backend, a batch
        over max_batch_size, no engine and no runtime build, a failed build or a failed run.

        Never calls TensorFlow: this runs inside an EagerPyFunc on one of TensorFlow's
        inter-op threads, and a nested TF call there deadlocks when those threads are few.
        Raises when native segment execution is disabled (TF-TRT's environment variable).
        """
        backend = resolve_backend()
        if backend == "native":
            return self._fallback("the native backend is selected (TFTRT_BACKEND resolved to "
                                  "native)", log_it=False)
        key = tuple(tuple(int(d) for d in t.shape) for t in inputs)
        limit = self.spec.max_batch_size
        if limit and key and key[0] and key[0][0] > limit:
            return self._fallback(f"batch {key[0][0]} is larger than max_batch_size={limit}")
        engine, why = self._engine_for(key, backend, force=self.building)
        if engine is None:
            return self._fallback(why)
        try:
            outs = self._execute(engine, inputs, backend)
        except Exception as e:  # a failing engine must not break the user's model
            from tftrt.gpu_memory import explain_out_of_memory
            e = explain_out_of_memory(e)
            return self._fallback(f"engine execution failed for input shapes {key}: "
                                  f"{type(e).__name__}: {e}")
        with self._lock:
            self.stats["engine"] += 1
        return outs

    def add_engine(self, key: ShapeKey, engine) -> None:
        """Puts an already built (e.g. deserialized) engine into the cache."""
        with self._lock:
            self.cache.put(key, engine)

    def build_for(self, key: ShapeKey, backend: Optional[str] = None):
        """Builds (or returns the cached) engine for input shapes ``key``."""
        backend = backend or resolve_backend()
        engine, why = self._engine_for(key, backend, force=True)
        if engine is None:
            raise RuntimeError(why)
        return engine

    # --- internals ---------------------------------------------------------------------------
    def _engine_for(self, key: ShapeKey, backend: str, force: bool = False):
        with self._lock:
            engine = self.cache.get(key)
            if engine is not None and getattr(engine, "backend", backend) == backend:
                return engine, None
            if not (self.spec.allow_build_at_runtime or force):
                return None, (f"no engine for input shapes {key} and allow_build_at_runtime="
                              f"False (call converter.build() with these shapes before save())")
            if key in self._failed_keys:
                return None, self._failed_keys[key]
            try:
                engine = self._build(key, backend)
            except Exception as e:
                from tftrt.gpu_memory import explain_out_of_memory
                e = explain_out_of_memory(e)
                why = f"engine build failed for input shapes {key}: {type(e).__name__}: {e}"
                self._failed_keys[key] = why
                return None, why
            evicted = self.cache.put(key, engine)
            if evicted is not None:
                log.info("%s: engine cache full (maximum_cached_engines=%d); evicted the "
                         "engine for %s", self.name, self.cache.capacity, evicted)
            return engine, None

    def _build(self, key: ShapeKey, backend: str):
        from tftrt.engine import BuilderConfig, build_engine
        import onnx
        model = onnx.load_from_string(self.spec.onnx_bytes)
        shapes = {f"TensorRTInputPH_{i}": s for i, s in enumerate(key)}
        config = BuilderConfig(precision=self.spec.precision_mode, backend=backend,
                               max_workspace_size_bytes=self.spec.max_workspace_size_bytes,
                               allow_tf32=_tf32_enabled())
        t0 = time.perf_counter()
        engine = build_engine(model, shapes, config)
        self.build_seconds[key] = time.perf_counter() - t0
        self.stats["builds"] += 1
        log.info("%s: built a %s engine for input shapes %s in %.2f s", self.name, backend,
                 key, self.build_seconds[key])
        return engine

    def _execute(self, engine, inputs, backend: str):
        from tftrt import tensor_bridge
        arrays = [tensor_bridge.to_backend(t, backend) for t in inputs]
        if backend == "cupy":
            tensor_bridge.wait_for_tensorflow(inputs, arrays)
        outs = engine.execute(arrays)
        if backend == "cupy":
            tensor_bridge.wait_for_engine()
        return [tensor_bridge.from_backend(o, backend, np.dtype(dt))
                for o, dt in zip(outs, self.spec.output_dtypes)]

    def _native(self, inputs):
        outs = self.native_fn(*inputs)
        if isinstance(outs, dict):
            outs = [outs[k] for k in sorted(outs)]
        return list(outs) if isinstance(outs, (list, tuple)) else [outs]

    def _fallback(self, why: str, log_it: bool = True) -> None:
        """Counts (and logs once per reason) a native run; returns None for try_engine."""
        if not native_fallback_allowed():
            raise RuntimeError(f"{self.name}: {why}; native segment execution is disabled by "
                               f"TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION=0")
        with self._lock:
            first = why not in self._logged
            self._logged.add(why)
            self.stats["native"] += 1
        if first and log_it:
            log.warning("%s runs its native segment: %s", self.name, why)
        return None

    def describe(self) -> dict:
        return {"name": self.name,
                "cached_engines": [list(map(list, k)) for k in self.cache.keys()],
                "stats": dict(self.stats)}


def spec_to_json(specs: Sequence[EngineSpec]) -> str:
    return json.dumps([s.to_json() for s in specs], indent=1)
