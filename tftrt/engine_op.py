"""TRTEngineOp at run time: an LRU cache of engines keyed by input shapes, with native fallback.

One :class:`TRTEngineOp` object stands behind each ``TRTEngineOp_NNN_MMM`` node of a converted
function (bound through an ``EagerPyFunc`` node). A call:
  1. picks the backend (env ``TFTRT_BACKEND``: auto | cupy | numpy | native),
  2. looks up the engine built for the input shapes (LRU, capacity ``maximum_cached_engines``),
  3. on a miss builds one (unless ``allow_build_at_runtime=False``),
  4. runs it; when the build or the run fails, or nothing may be built, it runs the native
     segment function instead and logs why once (env
     ``TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION=0`` turns that into an error).

With optimization profiles (``use_dynamic_shape=True``, and TF1 static engines, which serve
every batch up to theirs) the cache holds :class:`tftrt.profiles.ProfileEngine` objects: one
engine for a range of shapes, routed to by the profile that contains the call's shapes
(TF-TRT's rule: the first one). A shape no profile contains builds a new one (one profile by
the op's strategy) when runtime builds are allowed, else runs natively with one log line.
``converter.build()`` first collects the shapes of all its inputs (running natively, as
TF-TRT did), then builds one engine holding every profile they form. When calls keep evicting
engines (the shapes in use need more than ``maximum_cached_engines``) one warning says which
setting to change.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt import profiles as P

log = logging.getLogger("tftrt.engine_op")

# Rebuilds of shapes an evicted engine served, before the one warning that the cache is too
# small for the shapes in use.
THRASH_WARN_AFTER = 3
REMEMBERED_SETS = 16  # profile sets an op remembers: each a few profiles of a few shapes

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
    if got == "native":  # once per value: users who never call summary() learn it here
        why = "TFTRT_BACKEND=native selects them" if raw == "native" else \
            f"TFTRT_BACKEND={raw} found no GPU engine backend: {_why_no_gpu()}"
        log.warning("tftrt engines will not run: every segment runs its native TensorFlow ops "
                    "(correct results, no speed-up), because %s. On a CPU-only machine "
                    "TFTRT_BACKEND=numpy runs the reference engines.", why)
    return got


def _engine_device(backend: str):
    """The CuPy backend's pinned-device context for an engine call (a no-op elsewhere)."""
    if backend != "cupy":
        return contextlib.nullcontext()
    from tftrt.engine.backends import get_backend
    return get_backend("cupy").on_device()


def _why_no_gpu() -> str:
    """Why the CuPy backend is not available, for the native-backend warning."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA installation
        return (f"CuPy cannot be imported ({type(e).__name__}); install tftrt[cuda] on a "
                f"machine with an NVIDIA GPU")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"CuPy finds no usable CUDA GPU ({type(e).__name__}: {str(e)[:200]})"
    return "CuPy sees no CUDA GPU" if not count else "the CuPy backend failed its start-up check"


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
    use_dynamic_shape: bool = False  # engines hold optimization profiles (TF-TRT's option)
    profile_strategy: str = P.RANGE  # how build() forms them (profiles.STRATEGIES)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("onnx_bytes")
        return d

    @classmethod
    def from_json(cls, d: dict, onnx_bytes: bytes) -> "EngineSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(onnx_bytes=onnx_bytes, **{k: v for k, v in d.items() if k in fields})


class EngineCache:
    """LRU of engines keyed by the tuple of input shapes (a ProfileEngine: the shapes it was
    first built or loaded for)."""

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
        evicted = self.put_evicting(key, engine)
        return None if evicted is None else evicted[0]

    def put_evicting(self, key: ShapeKey, engine) -> Optional[Tuple[ShapeKey, object]]:
        """Inserts; returns the evicted (key, engine) when the cache was full."""
        evicted = None
        if key not in self._items and len(self._items) >= self.capacity:
            evicted = self._items.popitem(last=False)
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
        self._lock = threading.RLock()  # the cache, counters, logs: never held for a build
        # One new cache entry is built at a time per op, under this lock alone, so that calls
        # whose engine exists go on meanwhile; _generation tells a build that the segment
        # network was replaced while it ran (its engine then serves its call only).
        self._build_lock = threading.Lock()
        self._generation = 0
        self._logged: set = set()
        self._failed_keys: Dict[ShapeKey, str] = {}
        # profile sets whose build failed, with why: a shape inside one is refused with that
        # reason (not "no profile contains it"); most recent first, a few kept
        self._failed_sets: List[tuple] = []
        # Profile sets to rebuild whole (most recent first): build()'s, and those a saved
        # model named (remember_profiles). A shape inside one, whose engine was evicted or
        # whose plan was refused, builds that set again, not a profile of its one shape.
        self._remembered: List[list] = []
        self.stats = collections.Counter()
        self.build_seconds: Dict[ShapeKey, float] = {}
        # True during converter.build(): engines are built for its shapes even with
        # allow_build_at_runtime=False, which governs only the calls after it (TF-TRT);
        # builder_thread is the thread build() runs in (see _build_call).
        self.building = False
        self.builder_thread: Optional[int] = None
        self.build_in_graph = False  # build() calls the engines in graph form (_build_call)
        # the keys of the engines build()'s own calls cached (_insert): evicting one counts
        # in stats["build_evictions"], which build()'s warning reports (trt_convert)
        self.build_keys: set = set()
        # True during converter.build() with use_dynamic_shape: calls run natively and
        # build()'s own (_collects) record their shapes; build_profiles() then builds one
        # engine for all of them (TF-TRT). collect_calls: False where build() reads the
        # shapes from its inputs instead (then no call of its own comes).
        self.collecting = False
        self.collect_calls = True
        self.collected: List[ShapeKey] = []
        self._network = None  # the segment network, imported once
        self._evicted: "collections.deque" = collections.deque(maxlen=256)
        # (shapes, profiles or None, why) of the saved engines a load could not use
        # (conversion.restore_plans): with allow_build_at_runtime=False their shapes say so
        self._unusable: "collections.deque" = collections.deque(maxlen=64)
        self._thrash_warned = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def profile_strategy(self) -> Optional[str]:
        """How this op's engines serve shapes: a TF-TRT profile strategy (engines with
        optimization profiles), or None (an engine per exact input shape). TF1 static engines
        serve every batch up to theirs: ImplicitBatchModeCompatible."""
        if self.spec.use_dynamic_shape:
            return P.check_strategy(self.spec.profile_strategy or P.RANGE)
        if self.spec.max_batch_size:
            return P.IMPLICIT_BATCH_MODE_COMPATIBLE
        return None

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
        key = tuple(tuple(int(d) for d in t.shape) for t in inputs)
        if backend == "native":
            # build() on the native backend (a CPU-only machine converting for a GPU one)
            # still collects the shapes: save() keeps the profiles they form, so the machine
            # that loads the model builds them whole instead of one profile per new shape,
            # evicting each other (helper hunt, 2026-12-02)
            if self.collecting:  # the native segment runs, as while collecting below
                self._collects(key)
                return None
            return self._fallback("the native backend is selected (TFTRT_BACKEND resolved to "
                                  "native)", log_it=False)
        limit = self.spec.max_batch_size
        batch = max((s[0] for s in key if s), default=0)  # every input's, not only the first
        if limit and batch > limit:
            return self._fallback(f"batch {batch} is larger than max_batch_size={limit}")
        empty = self._nothing_to_compute(key)
        if self.collecting:
            # TF-TRT's profile generation mode: the native segment runs while build()
            # collects shapes (even with native segment execution disabled)
            self._collects(key)
            return None
        if empty:  # batch 0: TF computes the empty outputs (nothing to compute: even with
            # native execution disabled), and no engine is built for them; an empty side
            # input (an optional mask next to a full image) still runs the engine
            with self._lock:
                self.stats["native"] += 1
            return None
        # on the engines' GPU whatever this thread has current (the split batches'
        # concatenation and dtype casts allocate there too: CupyBackend.pin_device)
        with _engine_device(backend):
            engine, why = self._engine_for(key, backend, force=self._build_call())
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

    def _collects(self, key: ShapeKey) -> None:
        """Records ``key`` for the profiles when the call is build()'s own: another thread
        serving the model during build() put its shapes in the profiles (a batch-32 caller
        made input_fn's 1..4 a profile tuned at 32: review hunt, 2026-12-02), where TF-TRT
        collected in build()'s own function only. In graph form whose call it is cannot be
        told (see _build_call)."""
        if self.collect_calls and self._build_call():
            self.collect(key)

    def _build_call(self) -> bool:
        """Whether this call is converter.build()'s own, which builds engines whatever
        allow_build_at_runtime says: made during build() from build()'s thread (the eager
        pipeline calls engines from the caller's thread), or, where build() runs the model
        in graph form (``build_in_graph``), from one of TensorFlow's (an engine node: whose
        call it is cannot be told there). Another Python thread serving the model meanwhile
        built engines for its shapes with runtime builds off, and evicted build()'s (hunt,
        2026-12-01); so did one serving through a tf.function, whose engine nodes run in
        TensorFlow's threads, while build() ran the eager pipeline (helper hunt, s48)."""
        if not self.building:
            return False
        thread = threading.current_thread()
        return (self.builder_thread in (None, thread.ident) or
                (self.build_in_graph and
                 isinstance(thread, threading._DummyThread)))  # pylint: disable=protected-access

    def _nothing_to_compute(self, key: ShapeKey) -> bool:
        """A batch of 0: every input has no elements, or every batch input (a leading
        dimension unknown in the segment's signature) does while a fixed-shape side input
        has some. An empty optional input beside a full one is not: the engine runs it.
        (A batch of 0 beside a side input built and cached a tuned engine for batch 0,
        evicting the one in use: helper hunt, 2026-12-01.)"""
        if not key:
            return False
        if all(0 in s for s in key):
            return True
        batched = [s for s, spec in zip(key, self.spec.input_shapes)
                   if spec is None or (len(spec) > 0 and spec[0] is None)]
        return bool(batched) and len(batched) < len(key) and all(0 in s for s in batched)

    def add_engine(self, key: ShapeKey, engine) -> None:
        """Puts an already built (e.g. deserialized) engine into the cache.

        An engine whose plan names optimization profiles joins the ProfileEngine cached under
        ``key`` (or starts one); a plan without profiles on an op that uses them (TF1 static
        engines, earlier tftrt) gets the profile its mode gives: batch 1..N for TF1 static and
        ImplicitBatchModeCompatible, exactly its shapes otherwise.
        """
        key = tuple(tuple(int(d) for d in s) for s in key)
        mismatch = self._saved_engine_mismatch(key, engine)
        if mismatch:
            log.warning("%s: a saved engine %s: it belongs to another conversion of this model "
                        "(a plan file copied from another save?); it is not used and will "
                        "rebuild", self.name, mismatch)
            return
        try:
            info = P.profiles_from_config(getattr(engine, "config", None))
        except (KeyError, TypeError, ValueError) as err:
            log.warning("%s: a saved engine names malformed optimization profiles (%s: %s); "
                        "it is not used and will rebuild", self.name, type(err).__name__, err)
            return
        strategy = self.profile_strategy
        if info is None and strategy is not None:
            prof = (P.implicit_batch_profile(key) if strategy == P.IMPLICIT_BATCH_MODE_COMPATIBLE
                    else P.Profile(key, key, key))
            info = ([prof], [0])
        with self._lock:
            if info is None:
                self.cache.put(key, engine)
                return
            profiles, opt_of = info
            pe = self.cache.get(key)
        if not (isinstance(pe, P.ProfileEngine) and pe.profiles == profiles and
                pe.backend == engine.backend):
            pe = P.ProfileEngine(profiles, self._builder(engine.backend), engine.backend,
                                 self._specializer(engine.backend))
        # the ProfileEngine's lock is never taken with the op's held: its builds take the
        # op's lock inside its own (see _stop_background_builds)
        for i in opt_of:
            try:
                pe.add_opt_engine(i, engine)
            except ValueError as err:
                log.warning("%s: a saved engine does not match its optimization profile "
                            "(%s); it is not used and will rebuild", self.name, err)
                return
        with self._lock:
            self.cache.put(key, pe)

    def collect(self, key: ShapeKey) -> None:
        """Records input shapes ``key`` for build_profiles() (converter.build() with
        use_dynamic_shape); an empty batch is no shape to build a profile for."""
        empty = self._nothing_to_compute(key)
        with self._lock:
            if not empty:
                self.collected.append(key)
            self.stats["collected"] += 1

    def build_loaded_ladders(self) -> None:
        """After the saved engines are in the cache (tftrt.load): each ProfileEngine builds its
        split ladder now, as converter.build() did (profiles.load_ladder). Never fails the
        load: a rung that does not build is logged and left to the first calls."""
        if not (P.split_batches() and P.load_ladder()):
            return
        with self._lock:
            entries = [e for _, e in self.cache.items() if isinstance(e, P.ProfileEngine)]
        for pe in entries:
            try:
                pe.build_ladders()
            except Exception as e:  # noqa: BLE001 -- the first calls build what is missing
                log.warning("%s: the split ladder of a loaded optimization profile did not "
                            "build (%s: %s); first calls at new batch sizes build it",
                            self.name, type(e).__name__, e)

    def _saved_engine_mismatch(self, key: ShapeKey, engine) -> Optional[str]:
        """Why a deserialized ``engine`` listed under ``key`` cannot serve this op, or None.

        A plan names its engine and segment network (engine/plan.py), but another save of the
        same model has the same ones: its plan may have been built in another precision (an
        FP16 engine in an FP32 model: answers off by 1e-3) or for other shapes (every call
        of those shapes would fail and run natively, never rebuilding)."""
        from tftrt.engine.errors import EngineBuildError
        from tftrt.engine.precision import normalize_precision
        config = getattr(engine, "config", None)
        config = config if isinstance(config, dict) else {}
        built = config.get("precision", getattr(engine, "precision", None))
        # an FP16 engine that timed precision kept for an INT8 / FP8 request says so
        asked = config.get("requested_precision") if built == "FP16" else None
        try:
            same = normalize_precision(asked or built) == \
                normalize_precision(self.spec.precision_mode)
        except EngineBuildError:
            same = False
        if not same:
            return (f"was built in precision {built!r} but this engine op converts in "
                    f"{self.spec.precision_mode!r}")
        if config.get("profiles") is None and self.profile_strategy is None:
            shapes = [tuple(s) for s in engine.input_shapes]
            if shapes != list(key):
                return (f"was built for input shapes {[list(s) for s in shapes]} but the "
                        f"manifest lists it for {[list(s) for s in key]}")
        return None

    def build_for(self, key: ShapeKey, backend: Optional[str] = None):
        """Builds (or returns the cached) engine for input shapes ``key``."""
        backend = backend or resolve_backend()
        engine, why = self._engine_for(key, backend, force=True)
        if engine is None:
            raise RuntimeError(why)
        return engine

    def build_profiles(self, backend: Optional[str] = None,
                       after_tuning: Optional[Callable[[], None]] = None
                       ) -> Optional["P.ProfileEngine"]:
        """converter.build() with use_dynamic_shape, after collecting: builds one engine
        holding every profile the collected shapes form (TF-TRT's strategy), tuned at each
        profile's opt shape. A failed build is logged; its shapes then run natively.
        ``after_tuning``: see ProfileEngine.build_profiles (called only when it builds).

        Returns the ProfileEngine, or None (nothing collected, native backend, failure).
        """
        with self._lock:
            shapes, self.collected = list(self.collected), []
        backend = backend or resolve_backend()
        if not shapes:
            return None
        strategy = self.profile_strategy or P.RANGE
        profiles = P.make_profiles(shapes, strategy, self.spec.input_shapes)
        if backend == "native":  # no engine here; the profiles go with save() (try_engine)
            with self._lock:
                self._remember(profiles)
            log.info("%s: the native backend builds no engine; the optimization profile(s) "
                     "%s are saved with the model, built where it is loaded with engines",
                     self.name, "; ".join(str(p) for p in profiles))
            return None
        with self._build_lock:  # calls with an engine go on meanwhile
            record = self._built_before(profiles, backend) if after_tuning else None
            if record is not None and record[2]:  # nothing to time: the check starts now
                after_tuning()
                after_tuning = None
            try:
                pe = self._new_profile_engine(profiles, backend, after_tuning)
            except Exception as e:
                from tftrt.gpu_memory import explain_out_of_memory
                e = explain_out_of_memory(e)
                why = (f"engine build failed for the optimization profiles "
                       f"{[str(p) for p in profiles]}: {type(e).__name__}: {e}")
                log.warning("%s: %s; these shapes run the native segment", self.name, why)
                with self._lock:
                    for s in shapes:
                        _bounded_put(self._failed_keys, s, why)
                    self._failed_sets = [(profiles, why)] + self._failed_sets[:15]
                return None
            with self._lock:
                # remembered as a loaded model remembers its saved ones (remember_profiles):
                # after an eviction a shape inside them builds all of them again, not a
                # profile of its one shape (one call outside evicted build()'s engine, and
                # every size inside then built and evicted its own: helper hunt, 2026-12-01)
                self._remember(profiles)
                stop = self._insert(shapes[0], pe)
            _stop_background_builds(stop)
            if record is not None and not record[2]:
                store, key, _ = record  # put_json: False (reported once) when it cannot write
                store.put_json(self.PROFILE_BUILDS_NAMESPACE, key, {"built": True})
        log.info("%s: built one engine with %d optimization profile(s) (%s): %s", self.name,
                 len(profiles), strategy, "; ".join(str(p) for p in profiles))
        return pe

    def plan_items(self) -> List[Tuple[ShapeKey, object, Optional[dict]]]:
        """(cache key, engine, its profiles or None) for every engine to save: each exact
        engine, and each opt-shape engine of a ProfileEngine (all under its key; their plans
        carry the profiles, see :meth:`add_engine`)."""
        out = []
        with self._lock:
            for key, entry in self.cache.items():
                if isinstance(entry, P.ProfileEngine):
                    for _, engine in entry.opt_engines():
                        out.append((key, engine, engine.config.get("profiles")))
                else:
                    out.append((key, entry, None))
        return out

    # --- internals ---------------------------------------------------------------------------
    def _find(self, key: ShapeKey, backend: str):
        """(cache key, entry) serving ``key`` on ``backend``, or None: the engine for exactly
        ``key``, else the ProfileEngine with a profile containing it. Across engines the one
        whose chosen profile is smallest wins (TF-TRT's implicit batch: the smallest engine
        that fits); inside one, the first profile that contains it (TF-TRT's rule)."""
        entry = self.cache.get(key)
        if entry is not None and getattr(entry, "backend", backend) == backend and (
                not isinstance(entry, P.ProfileEngine) or entry.contains(key)):
            return key, entry
        best = None
        for k, e in self.cache.items():
            if not isinstance(e, P.ProfileEngine) or e.backend != backend:
                continue
            i = e.profile_index(key)
            if i is not None:
                size = e.profiles[i].size
                if best is None or size <= best[0]:
                    best = (size, k, e)
        if best is None:
            return None
        self.cache.get(best[1])  # most recently used
        return best[1], best[2]

    def _engine_for(self, key: ShapeKey, backend: str, force: bool = False):
        """(engine, None) for input shapes ``key``, or (None, why the call runs natively).
        A call whose engine is cached never waits for another call's build (seconds to
        minutes on a GPU): builds of new entries run one at a time under the build lock, and
        a ProfileEngine makes its new shapes under its own lock."""
        with self._lock:
            hit = self._find(key, backend)
        if hit is None:
            with self._build_lock:
                with self._lock:
                    hit = self._find(key, backend)  # another call may have built it meanwhile
                    if hit is None:
                        refused = self._build_refused(key, force)
                        if refused:
                            return None, refused
                        generation = self._generation
                if hit is None:
                    return self._build_entry(key, backend, generation)
        entry = hit[1]
        if not isinstance(entry, P.ProfileEngine):
            return entry, None
        try:  # converter.build() wants real engines; calls may get stand-ins first
            engine = entry.engine_for(key, quick=not self._build_call())
        except Exception as e:
            from tftrt.gpu_memory import explain_out_of_memory
            e = explain_out_of_memory(e)
            return None, (f"engine build failed for input shapes {key} (inside an "
                          f"optimization profile): {type(e).__name__}: {e}")
        return engine, None

    def remember_profiles(self, raw) -> None:
        """Keeps the profiles a saved plan's manifest entry names (``restore_plans``, before
        the plan is read): if the plan cannot be used, or its engine is evicted later, a
        shape inside them builds an engine with all of them, as saved, instead of a profile
        of that one shape (whose neighbours would each build and evict again). A malformed
        entry is ignored (the plan's own check says why)."""
        try:
            found = P.profiles_from_config({"profiles": raw})
        except (KeyError, TypeError, ValueError):
            return
        if found:
            with self._lock:
                self._remember(found[0])

    def saved_engine_unusable(self, key: ShapeKey, why: str, raw_profiles=None) -> None:
        """Records that the saved engine for ``key`` (with its profiles' JSON, if any) could
        not be used (``conversion.restore_plans``): under allow_build_at_runtime=False a call
        of its shapes then says so, where it blamed save_gpu_specific_engines=False or an
        eviction (cache hunt, s54)."""
        try:
            found = P.profiles_from_config({"profiles": raw_profiles}) if raw_profiles else []
        except (KeyError, TypeError, ValueError):
            found = []
        with self._lock:
            self._unusable.append((key, found[0] if found else None, why))

    def evicted_shapes(self) -> List[list]:
        """The input shapes of exact engines evicted from the cache (oldest first), as JSON:
        save() keeps them, so that a loaded model under allow_build_at_runtime=False says
        the engine was built and evicted, not "call build() with these shapes"."""
        with self._lock:
            return [[list(s) for s in ev] for ev in self._evicted if not isinstance(ev, list)]

    def remember_evicted_shapes(self, raw) -> None:
        """Takes back :meth:`evicted_shapes`' JSON (a saved model's manifest) where runtime
        builds are off (only their message reads it; with builds on, the saving process's
        evictions would count as this one's in the thrash warning); a malformed item is
        skipped."""
        if not isinstance(raw, list) or self.spec.allow_build_at_runtime:
            return
        for item in raw:
            try:
                key = tuple(tuple(int(d) for d in s) for s in item)
            except (TypeError, ValueError):
                continue
            with self._lock:
                if key not in self._evicted:
                    self._evicted.append(key)

    def remembered_profile_sets(self) -> List[list]:
        """Every remembered profile set as JSON (a list of profiles each), most recent first:
        what save() keeps for sets whose engine is no longer cached, so a loaded model
        rebuilds them whole as this op would (helper hunt, 2026-12-01)."""
        with self._lock:
            return [[p.to_json() for p in profiles] for profiles in self._remembered]

    def remember_profile_sets(self, raw) -> None:
        """Takes back :meth:`remembered_profile_sets`' JSON (a saved model's manifest): the
        sets are remembered after any the plans named. A malformed set is skipped."""
        if not isinstance(raw, list):
            return
        for item in reversed(raw):  # the first (most recent) ends first
            try:
                profiles = [P.Profile.from_json(d) for d in item]
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            if profiles:
                with self._lock:
                    if profiles not in self._remembered:
                        self._remembered.append(profiles)

    def _remember(self, profiles: list) -> None:
        """Puts profile set ``profiles`` first among the remembered ones (under the lock)."""
        self._remembered = [profiles] + [r for r in self._remembered if r != profiles]
        del self._remembered[REMEMBERED_SETS:]

    def _build_refused(self, key: ShapeKey, force: bool) -> Optional[str]:
        """Why no engine may be built for ``key`` now, or None (under the lock): its build,
        or the build of profiles that contain it, failed; or runtime builds are off."""
        failed = self._failed_keys.get(key) or next(
            (why for profiles, why in self._failed_sets
             if any(p.contains(key) for p in profiles)), None)
        if failed:
            return failed
        if not (self.spec.allow_build_at_runtime or force):
            why = next((why for k, profiles, why in reversed(self._unusable)
                        if k == key or (profiles and any(p.contains(key) for p in profiles))),
                       None)
            if why is not None:
                return (f"the saved engine for input shapes {key} cannot be used here ({why}) "
                        f"and allow_build_at_runtime=False (save the converted model again "
                        f"with its engines, on a machine like this one, or allow runtime "
                        f"builds)")
            if self.profile_strategy and any(P.choose_profile(r, key) is not None
                                             for r in self._remembered):
                # build() made them, but no engine for them is here now: saved with
                # save_gpu_specific_engines=False, or evicted from the cache. "Call
                # build() with these shapes" sent users to do what they had done (hunt,
                # 2026-12-04).
                return (f"input shapes {key} are inside the engine's optimization profiles, "
                        f"but no engine for them is built here (saved with "
                        f"save_gpu_specific_engines=False, or evicted from the cache: "
                        f"maximum_cached_engines={self.spec.maximum_cached_engines}) and "
                        f"allow_build_at_runtime=False (save with "
                        f"save_gpu_specific_engines=True, or allow runtime builds)")
            if not self.profile_strategy and key in self._evicted:
                # the same for exact engines: build() made one for these shapes, and the
                # cache evicted it (cache hunt, s49)
                return (f"the engine for input shapes {key} was built, then evicted from the "
                        f"cache (maximum_cached_engines={self.spec.maximum_cached_engines}), "
                        f"and allow_build_at_runtime=False (raise maximum_cached_engines to "
                        f"the number of shapes in use, or allow runtime builds)")
            what = ("no optimization profile of the engine contains input shapes"
                    if self.profile_strategy else "no engine for input shapes")
            return (f"{what} {key} and allow_build_at_runtime=False (call "
                    f"converter.build() with these shapes before save())")
        return None

    def _build_entry(self, key: ShapeKey, backend: str, generation: int):
        """Builds and caches the entry for ``key`` (under the build lock, not the cache
        lock): an exact engine, or a ProfileEngine with profiles from ``key`` alone."""
        saved = None
        try:
            if self.profile_strategy is None:
                engine = entry = self._build(key, backend)
            else:
                with self._lock:
                    remembered = list(self._remembered)
                saved = next((r for r in remembered if P.choose_profile(r, key) is not None),
                             None)
                if saved is not None:
                    profiles = saved
                else:
                    profiles = P.make_profiles([key], self.profile_strategy,
                                               self.spec.input_shapes)
                entry = self._new_profile_engine(profiles, backend)
                engine = entry.engine_for(key, quick=not self._build_call())
        except Exception as e:
            from tftrt.gpu_memory import explain_out_of_memory
            e = explain_out_of_memory(e)
            why = f"engine build failed for input shapes {key}: {type(e).__name__}: {e}"
            with self._lock:
                if self._generation == generation:
                    _bounded_put(self._failed_keys, key, why)
                if saved is not None:
                    # the whole remembered set failed (out of memory at its largest?): other
                    # shapes inside it build a profile of their own instead of retrying it
                    self._remembered = [r for r in self._remembered if r is not saved]
            return None, why
        with self._lock:
            if self._generation == generation:
                stop = self._insert(key, entry)
            else:
                stop = [entry] if isinstance(entry, P.ProfileEngine) else []
        _stop_background_builds(stop)  # outside the op's lock (see _stop_background_builds)
        return engine, None

    def _insert(self, key: ShapeKey, entry) -> list:
        """Caches a newly built engine; tracks evictions (see :meth:`_note_rebuild`). Called
        with the op's lock held; returns the evicted ProfileEngines, whose background builds
        the caller stops after releasing it (:func:`_stop_background_builds`)."""
        self._note_rebuild(key)
        evicted = self.cache.put_evicting(key, entry)
        if self._build_call():
            self.build_keys.add(key)
        if evicted is None:
            return []
        self.stats["evictions"] += 1
        old_key, old = evicted
        if old_key in self.build_keys and old_key != key:
            self.build_keys.discard(old_key)
            self.stats["build_evictions"] += 1
        self._evicted.append(old.profiles if isinstance(old, P.ProfileEngine) else old_key)
        log.info("%s: engine cache full (maximum_cached_engines=%d); evicted the engine for "
                 "%s", self.name, self.cache.capacity, old_key)
        # its queued background builds would make engines no call can reach (a GPU build
        # holds the interpreter lock for seconds); the one running ends
        return [old] if isinstance(old, P.ProfileEngine) else []

    def _note_rebuild(self, key: ShapeKey) -> None:
        """Counts builds for shapes an evicted engine served; warns once when they keep coming:
        the cache is smaller than the set of shapes in use, and every call may pay a build."""
        def served(ev):
            if isinstance(ev, list):
                return P.choose_profile(ev, key) is not None
            return ev == key
        if not any(served(ev) for ev in self._evicted):
            return
        self.stats["rebuilds_after_eviction"] += 1
        if self.stats["rebuilds_after_eviction"] >= THRASH_WARN_AFTER and not self._thrash_warned:
            self._thrash_warned = True
            if self.spec.max_batch_size:  # TF1 static mode: TrtGraphConverter has no build()
                advice = ("raise TrtGraphConverter's maximum_cached_engines, or feed shapes "
                          "that vary only in the batch dimension (an engine serves every batch "
                          "up to max_batch_size)")
            elif self.profile_strategy is None:
                advice = ("raise maximum_cached_engines (an argument of "
                          "TrtGraphConverterV2, TrtConversionParams and TF1's "
                          "TrtGraphConverter), or convert with TrtGraphConverterV2("
                          "use_dynamic_shape=True) and call converter.build() with inputs "
                          "spanning the shapes in use, so one engine serves a range of shapes")
            else:
                advice = ("call converter.build() with inputs spanning the shapes in use, so "
                          "the engine's optimization profiles contain them, or raise "
                          "maximum_cached_engines")
            log.warning("%s: calls keep evicting engines: %d engines were built again for "
                        "input shapes an evicted engine served, because the shapes in use need "
                        "more engines than maximum_cached_engines=%d; every such call waits for "
                        "a build. To fix it, %s.", self.name,
                        self.stats["rebuilds_after_eviction"], self.cache.capacity, advice)

    def _new_profile_engine(self, profiles, backend: str,
                            after_tuning: Optional[Callable[[], None]] = None
                            ) -> "P.ProfileEngine":
        pe = P.ProfileEngine(profiles, self._builder(backend), backend,
                             self._specializer(backend)).build_profiles(after_tuning)
        self.stats["builds"] += 1
        return pe

    # The build cache's record that these profiles of this segment network were built here
    # before: every tactic they time is then in the timing cache, and build()'s check may
    # start its native call (TF's first call, ~1 s) at once, beside the opt engine's host
    # work (imports, passes). Started after the tuning instead, it held the device-wide lock
    # while the ladder loaded its cuDNN plans, which wait for that lock: the ladder's builds
    # took 1.3 s through TF against 0.33-0.40 s engine alone (H200, ResNet50 profile 1..128,
    # 2026-12-02, a warm rebuild of 3.3 s). Were the timing cache cleared since, tactics
    # are timed beside TF's call: the choices may be a little worse, the answers the same.
    PROFILE_BUILDS_NAMESPACE = "profile-builds"

    def _built_before(self, profiles, backend: str) -> Optional[Tuple[object, str, bool]]:
        """(build cache, key, whether the cache holds it) of the record for building
        ``profiles`` with this segment network and builder settings; None without a build
        cache."""
        import hashlib
        import json
        try:
            from tftrt.engine.backends import get_backend
            from tftrt.engine.build_cache import build_cache_for
            store = build_cache_for(get_backend(backend))
            if store is None:
                return None
            body = {"format": 1, "segment": self._segment_digest(),
                    "profiles": [p.to_json() for p in profiles],
                    "precision": self.spec.precision_mode,
                    "workspace": int(self.spec.max_workspace_size_bytes or 0),
                    "tf32": bool(_tf32_enabled()), "split": P.split_batches(),
                    "tuned_rungs": P.tuned_rungs()}
            key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            return store, key, isinstance(store.get_json(self.PROFILE_BUILDS_NAMESPACE, key),
                                          dict)
        except Exception as e:  # noqa: BLE001 -- only an optimisation: the check starts late
            log.debug("%s: no profile-build record (%s: %s)", self.name, type(e).__name__, e)
            return None

    def _builder(self, backend: str):
        """The build function a ProfileEngine calls (see profiles.BuildFn). Counts
        ``stats["tuned_builds"]`` (a profile's opt shape, tactics timed) and
        ``stats["shape_builds"]`` (another shape of a profile: its tactics, no timing)."""
        def build(key, tactic_choices, weight_cache):
            engine = self._build(key, backend, tactic_choices, weight_cache, count=False)
            with self._lock:
                self.stats["tuned_builds" if tactic_choices is None else "shape_builds"] += 1
            return engine
        return build

    def _specializer(self, backend: str):
        """The ProfileEngine's ``specialize`` (see profiles.SpecializeFn): a profile's other
        shapes from its opt engine's optimized network (engine/shape_template.py), checked
        against the builder's network at probe shapes; those engines count as
        ``stats["shape_builds"]`` too."""
        def specialize(opt_engine, profile):
            from tftrt.engine.shape_template import specializer
            template, build = specializer(self._imported_network, self._config(backend),
                                          fingerprint=self._segment_digest())(
                opt_engine, profile)

            def counted(key, quick=False, tune=False, source=None):
                t0 = time.perf_counter()
                engine = build(key, quick=quick, tune=tune, source=source)
                seconds = time.perf_counter() - t0
                with self._lock:
                    if quick:
                        self.stats["quick_builds"] = self.stats.get("quick_builds", 0) + 1
                    else:
                        _bounded_put(self.build_seconds, key, seconds)
                        self.stats["shape_builds"] += 1
                        if tune:
                            self.stats["tuned_rungs"] = self.stats.get("tuned_rungs", 0) + 1
                log.info("%s: a %s%s engine for input shapes %s from its profile's optimized "
                         "network in %.3f s", self.name,
                         "quick " if quick else "tuned " if tune else "", backend, key, seconds)
                return engine
            # the ladder's prefetch (profiles.ProfileEngine._prefetch: every rung's cuDNN
            # graphs on the build workers in one go) goes through: without it each rung
            # waited for the workers on its own (H200, 2026-12-02: 8.5 s of a 44 s cold build)
            if callable(getattr(build, "prefetch", None)):
                counted.prefetch = build.prefetch
            return template, counted
        return specialize

    def _segment_digest(self) -> str:
        """The segment network's digest (its ONNX bytes, a quantization table included): what
        keys its shape templates in the build cache (shape_template.cached_template)."""
        import hashlib
        # asked twice per profile build (its record, its template); sha256 takes ~0.1 s per
        # 100 MB of weights
        raw = self.spec.onnx_bytes
        memo = getattr(self, "_digest_memo", None)
        if memo is None or memo[0] is not raw:
            memo = self._digest_memo = (raw, hashlib.sha256(raw).hexdigest())
        return memo[1]

    def _config(self, backend: str, tactic_choices=None, weight_cache=None):
        from tftrt.engine import BuilderConfig
        from tftrt.engine.backends import get_backend
        from tftrt.engine.tactics import persistent_timing_cache
        return BuilderConfig(precision=self.spec.precision_mode, backend=backend,
                             max_workspace_size_bytes=self.spec.max_workspace_size_bytes,
                             allow_tf32=_tf32_enabled(),
                             timing_cache=persistent_timing_cache(get_backend(backend)),
                             tactic_choices=tactic_choices, weight_cache=weight_cache)

    def shapes_fit(self, key: ShapeKey) -> bool:
        """Whether the segment network's shape inference takes input shapes ``key`` (no
        build, no TF): build() reading shapes without running its inputs asks, and runs an
        input natively where the answer is no, so that TF says what is wrong with it. An
        inference that fails for another reason answers yes (the build then says)."""
        from tftrt.engine import EngineBuildError
        from tftrt.engine.shapes import bind_inputs
        try:
            bind_inputs(self._imported_network(),
                        {f"TensorRTInputPH_{i}": s for i, s in enumerate(key)})
        except EngineBuildError:
            return False
        except Exception:  # noqa: BLE001 -- not this input's fault as far as we know
            return True
        return True

    def _imported_network(self):
        """The segment network, parsed once (every build binds its own copy)."""
        if self._network is None:
            import onnx
            self._network = self.network_from_model(onnx.load_from_string(self.spec.onnx_bytes))
        return self._network

    def network_from_model(self, model):
        """The engine Network of segment ONNX ``model``: the hook a subclass extends (the
        INT8 / FP8 op attaches the model's quantization table)."""
        from tftrt.engine import network_from_onnx
        return network_from_onnx(model)

    def replace_segment_network(self, onnx_bytes: bytes) -> None:
        """Makes ``onnx_bytes`` the segment network: engines built from the old one, its
        parsed network and its failed builds are dropped."""
        with self._lock:
            stop = [old for _, old in self.cache.items() if isinstance(old, P.ProfileEngine)]
            self.spec.onnx_bytes = onnx_bytes
            self._generation += 1  # a build running now keeps its engine out of the cache
            self._network = None
            self.cache = EngineCache(self.spec.maximum_cached_engines)
            self._failed_keys.clear()
            self._failed_sets = []
        _stop_background_builds(stop)

    def _build(self, key: ShapeKey, backend: str, tactic_choices=None, weight_cache=None,
               count: bool = True):
        from tftrt.engine import build_engine
        shapes = {f"TensorRTInputPH_{i}": s for i, s in enumerate(key)}
        config = self._config(backend, tactic_choices, weight_cache)
        t0 = time.perf_counter()
        engine = build_engine(self._imported_network(), shapes, config)
        _bounded_put(self.build_seconds, key, time.perf_counter() - t0)
        if count:
            self.stats["builds"] += 1
        what = "built" if tactic_choices is None else "built (profile's tactics, no timing)"
        log.info("%s: %s a %s engine for input shapes %s in %.2f s", self.name, what, backend,
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
        """The native segment's outputs. An upstream engine hands its outputs over as numpy
        arrays where they do not cross by DLPack (the numpy backend, or CuPy without a TF
        GPU), and the native segment is a ConcreteFunction, which takes tensors only: a
        second engine falling back in an eager call raised TypeError (helper hunt)."""
        import tensorflow as tf
        inputs = [t if tf.is_tensor(t) else tf.convert_to_tensor(np.asarray(t))
                  for t in inputs]
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
            first = why not in self._logged and len(self._logged) < _MAX_LOGGED_REASONS
            if first:
                self._logged.add(why)
            last = first and len(self._logged) == _MAX_LOGGED_REASONS
            self.stats["native"] += 1
        if first and log_it:
            log.warning("%s runs its native segment: %s", self.name, why)
            if last:  # a server seeing ever new shapes outside every engine
                log.warning("%s: %d reasons to run natively logged; further ones are not "
                            "(op.stats['native'] counts every native run)", self.name,
                            _MAX_LOGGED_REASONS)
        return None

    def describe(self) -> dict:
        d = {"name": self.name,
             "cached_engines": [list(map(list, k)) for k in self.cache.keys()],
             "stats": dict(self.stats)}
        profiles = {str(list(map(list, k))): e.describe() for k, e in self.cache.items()
                    if isinstance(e, P.ProfileEngine)}
        if profiles:
            d["profiles"] = profiles
        return d


_MAX_LOGGED_REASONS = 20  # distinct reasons to run natively an op logs, then it says so once
_MAX_REMEMBERED = 1024  # shapes an op remembers a build time or a failed build for


def _bounded_put(d: dict, key, value) -> None:
    """``d[key] = value``, forgetting the oldest keys past _MAX_REMEMBERED (per-shape records
    of a server seeing ever new shapes grew without limit)."""
    d.pop(key, None)
    d[key] = value
    while len(d) > _MAX_REMEMBERED:
        del d[next(iter(d))]


def stop_cached_profile_builds(cache: EngineCache) -> None:
    """The model an op served was dropped: the queued background builds of its cached
    ProfileEngines stop (the one running ends). Their tftrt-shapes thread holds them, and
    their build callbacks the op, so neither went with the model: the thread built engines
    nothing could call once calls had paused for TFTRT_BUILD_IDLE_MS (helper hunt,
    2026-12-04)."""
    _stop_background_builds([e for _, e in cache.items() if isinstance(e, P.ProfileEngine)])


def _stop_background_builds(engines) -> None:
    """Stops the queued background builds of ProfileEngines an op no longer caches. Never
    called with the op's lock held: a ProfileEngine builds under its own lock and its build
    callbacks take the op's lock (counting builds), so stopping one (which takes its lock)
    under the op's lock deadlocked against a build in it (helper hunt, 2026-12-01: a loaded
    model, maximum_cached_engines=1, shapes in and out of the saved profile from 3 threads)."""
    for engine in engines:
        engine.stop_background_builds()


def spec_to_json(specs: Sequence[EngineSpec]) -> str:
    return json.dumps([s.to_json() for s in specs], indent=1)
