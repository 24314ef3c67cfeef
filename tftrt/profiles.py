"""Optimization profiles: one engine serving a range of input shapes, as TF-TRT built them.

A :class:`Profile` gives, per engine input, a min, an opt and a max shape; it contains a set of
input shapes when every dimension lies between min and max. :func:`make_profiles` forms them
from the shapes ``converter.build()`` collected, with TF-TRT's strategies
(tensorflow/compiler/tf2tensorrt/utils/trt_shape_optimization_profiles.cc):

  * ``Range`` (TF-TRT's default): one profile, min = the element-wise minimum of the shapes,
    opt = max = the element-wise maximum;
  * ``Optimal``: one profile per distinct shape, min = opt = max = that shape;
  * ``Range+Optimal``: the Optimal profiles, then the Range profile;
  * ``ImplicitBatchModeCompatible``: one profile per distinct shape, opt = max = the shape,
    min = the shape with batch (dimension 0) 1: an engine built for batch N serves every
    batch up to N, as TF-TRT's implicit batch engines did (and TF1 static engines here).

Shapes are deduplicated in the order seen; a dimension the network declares static is forced
to its declared size (TF-TRT's ``EnforceCompatibility``). A call uses the first profile, in
order, that contains its shapes (TF-TRT's ``GetProfileNumber``).

A :class:`ProfileEngine` is one engine with all the profiles of an engine op: per profile, the
engine built (and tuned) at its opt shape, and engines for the other shapes calls bring. Those
come from the opt engine's optimized network re-derived for the new shapes
(``engine/shape_template.py``: no pass runs again, the opt engine's tactics and uploaded
weights), or, where that network was found to depend on the shapes in ways re-derivation does
not cover, from a full build with the opt shape's tactics (no timing) and shared weights. The
engines of a ProfileEngine share one activation arena per execution thread
(``memory.ArenaPool``). It counts as one engine in the op's cache (``maximum_cached_engines``).

Quick engines (``TFTRT_QUICK_SHAPES=1``; off by default): the first call at a new shape of a
profile must not wait for a full build (on a GPU its convolutions' cuDNN plans compile at run
time: seconds). Where the backend can make one (its ``mark_quick`` hook), that call gets a
provisional engine from the template built in milliseconds (same answers; the CuPy backend's
convolutions take plans that need no runtime compile, untimed), and the real engine is queued
for the background thread (below); it replaces the quick one for the calls after it is done
(a failed background build keeps the quick engine, with one warning).
:meth:`ProfileEngine.wait_pending` waits for those builds. On the H200 (2026-11-30) quick
engines made first calls slower, not faster (ResNet50, profile 1..128: median 4.6 s cold and
1.0 s warm, against 3.7 s and 0.54 s without): the real engine's build ran at the same time,
on the same interpreter lock.

Split batches (on unless ``TFTRT_SPLIT_BATCH=0``): the first call at a new batch size b
builds nothing. It runs as consecutive slices of the inputs
along dimension 0, each through an engine already built for that many samples (largest first:
13 = 8 + 4 + 1), the outputs concatenated (:class:`SplitEngine`): no padding, every sample
computed by a real engine of the profile. Only where the profile's network keeps samples
apart, which is checked, not assumed (``shape_template.batch_split_check``: the batch is
dimension 0 of every tensor, at two batch sizes, and no layer works along it; a softmax over
the batch, a transpose moving it or a layer kind not known to be per sample refuses). The
profile's split ladder, its smallest batch and the powers of two below its largest, is built
with the profile (``build_profiles``: converter.build()), each engine run twice, so that every
batch splits at once into at most one part per bit of its size. Tactics chosen at the opt
shape lose at small batches (ResNet50 on the H200: 1.2-1.4x the time of engines tuned at
batches 1-4), so ``TFTRT_PROFILE_TUNED_RUNGS`` rungs (default 2: the smallest and the one
nearest the middle of log2(batch), 1 and 8 for 1..128) are tuned at their own shape first,
from the template's network (``build_engine_from_template(tune=True)``; the timing cache and
stored choices make that free the second time), and every other engine of the profile takes
the choices of the tuned engine nearest its batch in log2 (the opt engine's where that is
nearer). ``tftrt.load`` builds a
loaded profile's ladder too before it returns (``build_ladders``; ``TFTRT_LOAD_LADDER=0``:
not). Without it, a loaded model builds its
smallest batch for the first such call and queues the rest of the ladder, built at once in
the background; each rung built makes the split batches it shortens again (a loaded model's
batch 8 first runs as 8 x 1, then as its own engine: its rung). The real engine for an
off-ladder b is queued too, but one background thread starts it only once the engine has had
no call for ``TFTRT_BUILD_IDLE_MS`` (default 1000) or b's split batches have served
``TFTRT_SPLIT_CALLS`` calls (default 256): a build holds the interpreter lock for long
stretches (cuDNN frontend's plan building does not release it), and on the H200 (2026-11-30)
calls served by split batches waited 0.5-13 s behind the background builds of the first form
of this (ladder and real engines built as soon as queued; ResNet50, profile 1..128: first
calls median 5.5 s cold, 0.8 s warm). Before the rung rule and the call count, steady load
kept a loaded model's batch 8 as 8 x 1 for good (the H200, ResNet101V2 and DenseNet201:
6.3-6.9x their batch 1). Each engine built in the background runs once there (its first
run: contexts, kernels, plans) and replaces its stand-in; it captures its CUDA graphs in the
first call that uses it, since a capture on the background thread made the device-wide
waits of the caller's threads fail (cudaErrorStreamCaptureUnsupported: the serving trace
on the H200, 2026-12-02). On the H200 (2026-11-30, ResNet50 FP16, profile 1..128) this
form served the first calls at 11 new batch sizes in 2.1 ms median (6.8 ms max; 0.54 s warm
and 3.7 s cold without), at the price of a longer build() (57 s cold, 6.6 s warm, for the
ladder). A failed background build leaves the stand-in serving, with one warning. At
interpreter exit, and when its op evicts the ProfileEngine, the queued builds are dropped.

A ProfileEngine keeps engines for at most ``TFTRT_PROFILE_MAX_SHAPES`` shapes (default 256):
past it the least recently called shape's engine is dropped (never an opt-shape engine or its
ladder) and made again when calls bring that shape back, with one warning the first time.
It keeps as many split-batch stand-ins waiting for their engines: past that the oldest is
dropped with its queued build and split again at its next call.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
import weakref
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

log = logging.getLogger("tftrt.profiles")

ShapeKey = Tuple[Tuple[int, ...], ...]

RANGE = "Range"
OPTIMAL = "Optimal"
RANGE_OPTIMAL = "Range+Optimal"
IMPLICIT_BATCH_MODE_COMPATIBLE = "ImplicitBatchModeCompatible"
STRATEGIES = (RANGE, OPTIMAL, RANGE_OPTIMAL, IMPLICIT_BATCH_MODE_COMPATIBLE)


def check_strategy(name) -> str:
    """TF-TRT's strategy name for ``name`` (any case); ValueError listing the valid ones."""
    if isinstance(name, str):
        for s in STRATEGIES:
            if s.lower() == name.strip().lower():
                return s
    raise ValueError(f"profile strategy {name!r} is not supported; use one of "
                     f"{list(STRATEGIES)} (TF-TRT's names, in any case)")


def opt_shape_mismatch(profiles, index: int, input_shapes) -> Optional[str]:
    """Why an engine built for ``input_shapes`` is not profile ``index``'s opt-shape engine,
    or None (ProfileEngine.add_opt_engine refuses it; tftrt inspect says so)."""
    if input_shapes != [tuple(s) for s in profiles[index].opt]:
        return (f"engine for shapes {input_shapes} is not profile {index}'s opt shape "
                f"{list(profiles[index].opt)}")
    return None


def _key(shapes) -> ShapeKey:
    return tuple(tuple(int(d) for d in s) for s in shapes)


@dataclasses.dataclass(frozen=True)
class Profile:
    """min / opt / max shape of every engine input (each a tuple of shapes)."""

    min: ShapeKey
    opt: ShapeKey
    max: ShapeKey

    def __post_init__(self):
        for what in ("min", "opt", "max"):
            object.__setattr__(self, what, _key(getattr(self, what)))
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"profile has {len(self.min)}/{len(self.opt)}/{len(self.max)} "
                             f"min/opt/max shapes: one per input each")
        for i, (lo, op, hi) in enumerate(zip(self.min, self.opt, self.max)):
            if not len(lo) == len(op) == len(hi):
                raise ValueError(f"profile input {i}: min {lo}, opt {op}, max {hi} have "
                                 f"different ranks")
            if any(not 0 <= a <= b <= c for a, b, c in zip(lo, op, hi)):
                raise ValueError(f"profile input {i}: min {lo} <= opt {op} <= max {hi} does "
                                 f"not hold (with non-negative sizes)")

    def contains(self, shapes) -> bool:
        """Whether every input's shape lies between this profile's min and max."""
        if len(shapes) != len(self.min):
            return False
        for s, lo, hi in zip(shapes, self.min, self.max):
            if len(s) != len(lo) or any(not a <= int(d) <= b for d, a, b in zip(s, lo, hi)):
                return False
        return True

    @property
    def size(self) -> int:
        """Elements of all inputs at max (what "the smallest engine" compares)."""
        total = 0
        for s in self.max:
            n = 1
            for d in s:
                n *= d
            total += n
        return total

    def to_json(self) -> dict:
        return {"min": [list(s) for s in self.min], "opt": [list(s) for s in self.opt],
                "max": [list(s) for s in self.max]}

    @staticmethod
    def from_json(d) -> "Profile":
        """Raises ValueError (or TypeError / KeyError) for anything but a valid profile."""
        if not isinstance(d, dict):
            raise ValueError(f"a profile is a JSON object, not {type(d).__name__}")
        return Profile(*(_key(d[k]) for k in ("min", "opt", "max")))

    def __str__(self) -> str:
        def one(lo, hi):
            return "(" + ", ".join(str(a) if a == b else f"{a}..{b}"
                                   for a, b in zip(lo, hi)) + ")"
        return "[" + ", ".join(one(lo, hi) for lo, hi in zip(self.min, self.max)) + \
            f"] opt {[list(s) for s in self.opt]}"


def _dedupe(shapes: Iterable[Sequence[Sequence[int]]]) -> List[ShapeKey]:
    seen, out = set(), []
    for s in shapes:
        k = _key(s)
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out


def implicit_batch_profile(shapes) -> Profile:
    """opt = max = ``shapes``, min = the same with batch (dimension 0) 1 for every input of
    rank >= 1: an engine built for batch N serving batches 1..N."""
    k = _key(shapes)
    lo = tuple(((1,) + s[1:]) if s and s[0] >= 1 else s for s in k)
    return Profile(lo, k, k)


def _range_profiles(shapes: List[ShapeKey]) -> List[Profile]:
    """TF-TRT's RangeStrategy; shapes of different ranks (which TF-TRT refused) get one range
    profile per rank signature, in the order first seen."""
    groups: Dict[tuple, List[ShapeKey]] = {}
    for s in shapes:
        groups.setdefault(tuple(len(d) for d in s), []).append(s)
    out = []
    for group in groups.values():
        lo = tuple(tuple(min(dims) for dims in zip(*inp)) for inp in zip(*group))
        hi = tuple(tuple(max(dims) for dims in zip(*inp)) for inp in zip(*group))
        out.append(Profile(lo, hi, hi))
    return out


def _enforce_declared(p: Profile, declared) -> Profile:
    """Dimensions the network declares static are fixed to their declared size."""
    if not declared:
        return p

    def fix(shapes):
        out = []
        for i, s in enumerate(shapes):
            d = declared[i] if i < len(declared) else None
            if d is None or len(d) != len(s):
                out.append(s)
            else:
                out.append(tuple(s[k] if d[k] is None or int(d[k]) < 0 else int(d[k])
                                 for k in range(len(s))))
        return tuple(out)
    return Profile(fix(p.min), fix(p.opt), fix(p.max))


def make_profiles(shapes: Iterable[Sequence[Sequence[int]]], strategy: str,
                  declared: Optional[Sequence[Optional[Sequence[Optional[int]]]]] = None
                  ) -> List[Profile]:
    """The optimization profiles TF-TRT formed from collected input shapes.

    Args:
      shapes: one entry per call: the shapes of the engine's inputs.
      strategy: one of :data:`STRATEGIES` (any case).
      declared: the engine inputs' declared shapes (None or None dims: unknown).
    Returns:
      The profiles, in TF-TRT's order (empty when ``shapes`` is), each once: Range+Optimal
      over one shape made its Range profile the same as its Optimal one, and the engine
      built with both (INT8 hunt, s52).
    """
    strategy = check_strategy(strategy)
    unique = _dedupe(shapes)
    if not unique:
        return []
    if strategy == RANGE:
        profiles = _range_profiles(unique)
    elif strategy == OPTIMAL:
        profiles = [Profile(s, s, s) for s in unique]
    elif strategy == RANGE_OPTIMAL:
        profiles = [Profile(s, s, s) for s in unique] + _range_profiles(unique)
    else:
        profiles = [implicit_batch_profile(s) for s in unique]
    out: List[Profile] = []
    for p in (_enforce_declared(p, declared) for p in profiles):
        if p not in out:
            out.append(p)
    return out


def choose_profile(profiles: Sequence[Profile], shapes) -> Optional[int]:
    """Index of the first profile containing ``shapes`` (TF-TRT's rule), or None."""
    for i, p in enumerate(profiles):
        if p.contains(shapes):
            return i
    return None


# --- an engine with profiles ---------------------------------------------------------------

# build(shapes, tactic choices or None, weight_cache) -> a runtime Engine for exactly `shapes`
BuildFn = Callable[[ShapeKey, Optional[Dict[str, dict]], object], object]
# specialize(opt engine, profile) -> (template with .serves(shapes) -> None or why,
#   build(shapes, quick=False, tune=False, source=None) -> Engine from the template, a quick
#   one with quick=True, its tactics timed at shapes with tune=True, taken from engine
#   ``source`` (a tuned rung) instead of the opt engine's where given; build.prefetch(keys,
#   sources=None, tune=False: a flag or one per key) optional);
#   raises when the profile's other shapes need full builds (the reason is logged once)
SpecializeFn = Callable[[object, "Profile"], Tuple[object, Callable[..., object]]]


def quick_shapes() -> bool:
    """``TFTRT_QUICK_SHAPES`` is 1 / true: quick engines for new shapes (module doc)."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_QUICK_SHAPES", False)


def split_batches() -> bool:
    """New batch sizes are served by split batches (module doc) unless ``TFTRT_SPLIT_BATCH``
    is 0 / false."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_SPLIT_BATCH", True)


def split_calls() -> int:
    """``TFTRT_SPLIT_CALLS`` (default 256; 0: never): after this many calls served by split
    batches, a batch's own engine builds without waiting for calls to pause (module doc)."""
    from tftrt.env import env_float
    return int(env_float("TFTRT_SPLIT_CALLS", 256.0))


def max_shapes() -> int:
    """``TFTRT_PROFILE_MAX_SHAPES`` (default 256, at least 16): the most shapes a ProfileEngine
    keeps an engine for; past it the least recently used shape's engine is dropped (never an
    opt-shape engine or its split ladder) and is made again if calls bring it back."""
    from tftrt.env import env_float
    return max(int(env_float("TFTRT_PROFILE_MAX_SHAPES", 256.0)), 16)


_MAX_FAILED = 1024  # failed shapes a ProfileEngine remembers (the oldest are forgotten)


def tuned_rungs() -> int:
    """``TFTRT_PROFILE_TUNED_RUNGS`` (default 2; 0: none): how many rungs of a profile's split
    ladder are tuned at their own shape, the smallest batch first (module doc)."""
    from tftrt.env import env_float
    return max(int(env_float("TFTRT_PROFILE_TUNED_RUNGS", 2.0)), 0)


def load_ladder() -> bool:
    """``TFTRT_LOAD_LADDER`` (default on): tftrt.load builds each loaded profile's split
    ladder (:meth:`ProfileEngine.build_ladders`) before it returns; 0 leaves it to the first
    calls (faster load, slower first calls)."""
    from tftrt.env import env_bool
    return env_bool("TFTRT_LOAD_LADDER", True)


def build_idle_s() -> float:
    """``TFTRT_BUILD_IDLE_MS`` in seconds (default 1000 ms): how long a ProfileEngine must go
    without calls before its background thread starts an engine that a stand-in serves
    meanwhile (module doc)."""
    from tftrt.env import env_float
    return env_float("TFTRT_BUILD_IDLE_MS", 1000.0) / 1e3


class SplitEngine:
    """Serves one batch as consecutive slices of the inputs along dimension 0, each run by an
    engine already built for that many samples, the outputs concatenated (module doc).

    Args:
      shapes: the input shapes it serves.
      parts: (samples, engine) in order; the samples add up to the batch.
      backend: the engines' backend name (how outputs are concatenated).
    """

    def __init__(self, shapes: ShapeKey, parts: List[Tuple[int, object]], backend: str):
        self.input_shapes = [tuple(s) for s in shapes]
        self.parts = list(parts)
        self.backend = backend
        self.build_info = {"split": [n for n, _ in self.parts], "quick": False,
                           "from_template": False, "timed_layers": 0}

    @property
    def input_names(self) -> List[str]:
        return self.parts[0][1].input_names

    @property
    def weights(self):
        return self.parts[0][1].weights

    def execute(self, inputs):
        if isinstance(inputs, dict):
            inputs = [inputs[n] for n in self.input_names]
        outs, start = [], 0
        for n, engine in self.parts:
            outs.append(engine.execute([x[start:start + n] for x in inputs]))
            start += n
        if len(outs) == 1:
            return outs[0]
        if self.backend == "cupy":
            import cupy as xp
        else:
            import numpy as xp
        return [xp.concatenate([o[k] for o in outs], axis=0) for k in range(len(outs[0]))]

    def __repr__(self) -> str:
        return f"<SplitEngine {self.input_shapes} as batches {self.build_info['split']}>"


_LIVE: "weakref.WeakSet" = weakref.WeakSet()  # ProfileEngines that may build in the background
_EXITING = False  # set at interpreter exit: nothing is queued from then on


def _stop_background_builds() -> None:
    """At interpreter exit: queued background builds are dropped (the one running ends),
    so that exiting waits for one build at most. A thread still calling after this (exit
    joins such threads) queues nothing more: a ProfileEngine made then would otherwise
    start a background thread that exit waits for, through its whole queue."""
    global _EXITING
    _EXITING = True
    for pe in list(_LIVE):
        pe.stop_background_builds()


if hasattr(threading, "_register_atexit"):  # runs before non-daemon threads are joined
    threading._register_atexit(_stop_background_builds)


def tactic_choices(engine) -> Dict[str, dict]:
    """layer name -> what the layer chose in a built or loaded engine: tactic and the backend's
    tuned sub-choices (what the other shapes of its profile reuse, see tactics.layer_choice)."""
    from tftrt.engine.tactics import network_choices
    return network_choices(engine.network)


# Above this batch size fewest_parts does not search (its search is O(b x sizes) in Python).
_SEARCH_LIMIT = 1 << 14


def fewest_parts(b: int, sizes) -> Optional[List[int]]:
    """Batch sizes from ``sizes`` (each as often as needed) adding up to ``b`` in the fewest
    parts, largest first; None when none do. (Taking the largest first alone misses sums: 6
    from {5, 4, 2} is 4 + 2.)"""
    avail = sorted({int(n) for n in sizes if 0 < int(n) <= b}, reverse=True)
    if b >= 1:
        # the split ladder's usual sizes (every power of two up to b's top bit): b's binary
        # digits are the fewest parts, at once (the search below is O(b): 2 s at b = 10^6)
        bits = [1 << k for k in range(b.bit_length()) if b >> k & 1]
        if all(n & (n - 1) == 0 for n in avail) and \
                set(1 << k for k in range(b.bit_length())) <= set(avail):
            return sorted(bits, reverse=True)
        if b > _SEARCH_LIMIT:  # largest first; None (no split) when that does not add up
            out, v = [], b
            for n in avail:
                while n <= v:
                    out.append(n)
                    v -= n
            return out if v == 0 else None
    best: List[Optional[int]] = [0] + [None] * b   # parts for each sum
    pick = [0] * (b + 1)
    for v in range(1, b + 1):
        for n in avail:  # largest first: ties keep the larger part
            if n <= v and best[v - n] is not None and (
                    best[v] is None or best[v - n] + 1 < best[v]):
                best[v], pick[v] = best[v - n] + 1, n
    if b < 1 or best[b] is None:
        return None
    out, v = [], b
    while v:
        out.append(pick[v])
        v -= pick[v]
    return sorted(out, reverse=True)


class ProfileEngine:
    """One engine holding optimization profiles (see the module doc).

    Args:
      profiles: the profiles, in routing order.
      build: builds a runtime engine for exact shapes (see :data:`BuildFn`); tactic choices
        None means "time the tactics" (a profile's opt shape).
      backend: the backend name every engine of it runs on.
      specialize: makes a profile's other-shape engines from its opt engine's network (see
        :data:`SpecializeFn`); None: every other shape is a full build.
    """

    def __init__(self, profiles: Sequence[Profile], build: BuildFn, backend: str,
                 specialize: Optional[SpecializeFn] = None):
        from tftrt.engine.builder import WeightCache
        from tftrt.engine.memory import ArenaPool
        self.profiles: List[Profile] = list(profiles)
        self.backend = backend
        self.weight_cache = WeightCache()
        self.arena_pool = ArenaPool()
        self._build = build
        self._specialize = specialize
        self._opt: List[Optional[object]] = [None] * len(self.profiles)
        self._templates: Dict[int, Optional[tuple]] = {}
        # profile -> {shapes: engine} of its rungs tuned at their own shape (_ladder)
        self._tuned: Dict[int, Dict[ShapeKey, object]] = {}
        self.template_errors: Dict[int, str] = {}
        self._engines: Dict[ShapeKey, object] = {}
        self._used: Dict[ShapeKey, int] = {}  # shape -> tick of its engine's last call
        self._ticks = itertools.count()
        self._evict_warned = False
        self._failed: Dict[ShapeKey, str] = {}
        self._pending: set = set()  # shapes whose real engine is queued or building
        self._stand_ins: Dict[ShapeKey, SplitEngine] = {}  # split batches serving a shape
        self._drop_warned = False  # _drop_oldest_stand_ins warned
        self._split_calls: Dict[ShapeKey, int] = {}  # calls each stand-in served
        # (profile, shapes, stand-in, waits for idle): see _drain
        self._queue: List[Tuple[int, ShapeKey, object, bool]] = []
        self._last_call = 0.0  # time.monotonic() of the last engine_for
        self._worker: Optional[threading.Thread] = None
        self._unstarted: Optional[threading.Thread] = None  # made under the lock, not started
        self._stopped = False
        self._split_why: Dict[int, Optional[str]] = {}
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # tuned: engines built with tactic timing (one per distinct opt shape);
        # shapes: engines for other shapes of a profile (no timing), from_template: those
        # made from the opt engine's network (no pass ran; counted with a specializer)
        self.stats = {"tuned": 0, "shapes": 0, "timed_layers": 0}
        if specialize is not None:
            self.stats["from_template"] = 0
        # where build_profiles() / build_ladders() took their time (seconds, summed over
        # profiles): the opt engines, the template checks, the ladder's prefetch (cuDNN plans
        # on worker processes), its builds and its warm-up runs (issue 14: measure it)
        self.build_seconds: Dict[str, float] = {}

    def _timed(self, part: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.build_seconds[part] = self.build_seconds.get(part, 0.0) + \
                time.perf_counter() - t0

    # --- building ----------------------------------------------------------------------------
    def build_profiles(self, after_tuning: Optional[Callable[[], None]] = None
                       ) -> "ProfileEngine":
        """Builds (and tunes) the engine at every profile's opt shape, and checks whether its
        network serves the profile's other shapes (see the module doc). ``after_tuning`` is
        called once no more tactics will be timed (the last profile's tuned rungs are built;
        its other rungs are still to come), or at the end: converter.build() starts its
        check's native call there, beside the rest of the ladder."""
        last = len(self.profiles) - 1
        try:
            for i in range(len(self.profiles)):
                self._timed("opt engine", self._opt_engine, i)
                self._timed("template", self._template, i)
                self._ladder(i, after_tuning if i == last else None)
                if i == last:
                    after_tuning = None
        finally:
            if after_tuning is not None:
                after_tuning()
        return self

    def build_ladders(self) -> None:
        """Builds the split ladder of every profile whose opt engine is here (a loaded
        ProfileEngine: tftrt.load, TFTRT_LOAD_LADDER): what converter.build() built with the
        profile, so that a loaded model's first calls at new batch sizes split at once too.
        Without it they built the smallest batch on the request path and then waited behind
        the rest of the ladder building in the background (H200, 2026-12-02, ResNet50 profile
        1..128: first calls after tftrt.load 85 ms median, 474 ms max, against 2.0 / 6.0 ms
        after converter.build())."""
        for i in range(len(self.profiles)):
            if self.profiles[i].opt in self._engines:
                self._ladder(i)

    def _ladder(self, i: int, after_tuning: Optional[Callable[[], None]] = None) -> None:
        """With split batches on and allowed for profile ``i``: engines for its smallest batch
        and the powers of two below its largest (at the opt shape's other dimensions), each
        run twice (an engine's first runs load kernels and capture its CUDA graph), so that
        every new batch size splits at once into few parts (at most one per bit of the batch
        size) and no call waits for a build (module doc). ``after_tuning`` is called once the
        tuned rungs are built (see build_profiles)."""
        if not (split_batches() and self.split_check(i) is None):
            if after_tuning is not None:
                after_tuning()
            return
        rungs = [r for r in self._rungs(i, self.profiles[i].opt) if r not in self._engines]
        tune = self._to_tune(i, rungs)
        # rungs that will take the opt engine's choices whatever the tuning finds: their
        # plans are made on the workers beside the tuned rungs' candidates (one pool run)
        early = [r for r in rungs if r not in tune and self._nearest(i, r, tune) is None] \
            if tune else []
        self._timed("ladder tuning", self._prefetch, i, tune, True, early)
        for rung in tune:
            engine = self._timed("ladder tuning", self._build_tuned, i, rung)
            if engine is not None:
                self._timed("ladder warm-ups", self._warm, engine)
        if after_tuning is not None:
            after_tuning()
        rungs = [r for r in rungs if r not in self._engines]
        self._timed("ladder prefetch", self._prefetch, i, [r for r in rungs if r not in early])
        for rung in rungs:
            if rung not in self._engines:
                engine = self._timed("ladder builds", self._build_rung, i, rung)
                if engine is not None:
                    self._timed("ladder warm-ups", self._warm, engine)

    def _prefetch(self, i: int, keys: List[ShapeKey], tune: bool = False,
                  untuned: Sequence[ShapeKey] = ()) -> None:
        """The backend work of building engines for ``keys`` of profile ``i`` from its
        template, done at once ahead of the builds (the template build function's optional
        ``prefetch``: the CuPy backend's cuDNN graphs, and with ``tune`` every candidate's,
        tuned on worker processes; then ``untuned``'s, with the opt engine's choices, in the
        same go). Only an optimisation: anything it raises is logged."""
        made = self._template(i) if len(keys) + len(untuned) > 1 else None
        pre = getattr(made[1], "prefetch", None) if made is not None else None
        if not callable(pre):
            return
        keys = [k for k in keys if made[0].serves(k) is None]
        untuned = [k for k in untuned if made[0].serves(k) is None]
        try:
            if tune:
                pre(keys + untuned, None, tune=[True] * len(keys) + [False] * len(untuned))
            else:
                pre(keys, [self._nearest_tuned(i, k) for k in keys])
        except Exception as e:
            log.info("optimization profile %s: no prefetch for its ladder (%s: %s)",
                     self.profiles[i], type(e).__name__, e)

    def _build_rung(self, i: int, rung: ShapeKey):
        """The engine for ``rung`` of profile ``i``'s split ladder, built now; None when the
        build failed (logged)."""
        try:
            return self.engine_for(rung, quick=False)
        except Exception as e:  # a first call will say it again, with its fallback
            log.info("optimization profile %s: no engine for batch %d to split batches "
                     "with (%s: %s)", self.profiles[i], rung[0][0], type(e).__name__, e)
            return None

    def _to_tune(self, i: int, rungs: List[ShapeKey]) -> List[ShapeKey]:
        """The rungs of profile ``i`` tuned at their own shape (``tuned_rungs()`` of them):
        the smallest, then rungs spread evenly in log2(batch) between it and the opt batch.
        Tactics chosen at the opt shape lose most at the smallest batches (the H200,
        ResNet50 FP16, profile 1..128, engines alone: batches 1-16 took 1.16-1.42x their own
        tuned engines' time; the cuDNN plans of the deep 3x3 convolutions, tuned for 128,
        ran 2x longer at batch 1). With batches 1 and 8 tuned every rung was within 1.10x
        (1 and 8 faster than their own engines), for 6-7 s more of a cold build (23.6 s
        against 16.7 s on a fresh machine; benchmarks/bench_rungs.py,
        results/bench_rungs*_h200_2026-12-02r.*)."""
        n = tuned_rungs()
        if n == 0 or not rungs or self._template(i) is None or \
                self.profiles[i].opt[0][0] < 1:
            return []
        top = self.profiles[i].opt[0][0]
        sizes = sorted({r[0][0] for r in rungs})
        lo = sizes[0]
        picked: List[int] = []
        for k in range(min(n, len(sizes))):
            target = math.log2(lo) + (math.log2(top) - math.log2(lo)) * k / n
            left = [b for b in sizes if b not in picked]
            if left:
                picked.append(min(left, key=lambda b: abs(math.log2(b) - target)))
        return [r for r in rungs if r[0][0] in picked]

    def _build_tuned(self, i: int, rung: ShapeKey):
        """The engine for ``rung`` of profile ``i`` from its template, its tactics tuned at
        ``rung`` (its timing cache and stored choices make that free the second time); None
        when that failed (logged: the rung is then built as the others)."""
        with self._lock:
            made = self._template(i)
            if made is None or made[0].serves(rung) is not None or rung in self._engines:
                return None
            try:
                engine = made[1](rung, tune=True)
            except Exception as e:  # noqa: BLE001 -- built from the opt engine's choices instead
                log.info("optimization profile %s: batch %d not tuned (%s: %s)",
                         self.profiles[i], rung[0][0], type(e).__name__, e)
                return None
            self.stats["tuned_rungs"] = self.stats.get("tuned_rungs", 0) + 1
            self._tuned.setdefault(i, {})[rung] = engine
            self._register(rung, engine, from_template=True)
            return engine

    def _nearest_tuned(self, i: int, key: ShapeKey):
        """The tuned rung of profile ``i`` whose batch is nearest ``key``'s in log2 (ties: the
        larger), when it is nearer than the opt batch; else None (the opt engine's choices).
        Only at ``key``'s other dimensions."""
        tuned = self._tuned.get(i) or {}
        rung = self._nearest(i, key, tuned)
        return None if rung is None else tuned[rung]

    def _nearest(self, i: int, key: ShapeKey, rungs: Iterable[ShapeKey]) -> Optional[ShapeKey]:
        """Of ``rungs`` (tuned rungs of profile ``i``), the one :meth:`_nearest_tuned` takes
        for ``key``, or None."""
        if not key or any(len(s) == 0 or s[0] != key[0][0] for s in key):
            return None  # (tuned rungs exist only where every input is batch-major)
        b, top = key[0][0], self.profiles[i].opt[0][0]
        if b < 1 or top < 1:
            return None
        rest = [s[1:] for s in key]
        best, dist = None, abs(math.log2(b) - math.log2(top))
        for rung in sorted(rungs, key=lambda r: -r[0][0]):
            if len(rung) != len(key) or any(s[1:] != r for s, r in zip(rung, rest)):
                continue
            d = abs(math.log2(b) - math.log2(rung[0][0]))
            if d < dist:
                best, dist = rung, d
        return best

    def _rungs(self, i: int, key: ShapeKey) -> List[ShapeKey]:
        """The split ladder of profile ``i`` at ``key``'s other dimensions: its smallest
        batch, then the powers of two up to (not including) its largest batch, those that
        fall in this profile."""
        lo, hi = self._split_range(i)
        sizes, n = [lo], 1
        while n < hi:
            if n > lo:
                sizes.append(n)
            n *= 2
        return [r for r in (self._rung(key, n) for n in sizes)
                if r[0][0] < hi and self.profile_index(r) == i]

    def _warm(self, engine, runs: int = 2) -> None:
        """Runs ``engine`` ``runs`` times on zeros (what its first calls would pay otherwise:
        the first run prepares, the second captures the engine's CUDA graphs)."""
        dtypes = getattr(engine, "input_dtypes", None)
        if dtypes is None:
            return
        if self.backend == "cupy":
            import cupy as xp
        else:
            import numpy as xp
        xs = [xp.zeros(s, dt) for s, dt in zip(engine.input_shapes, dtypes)]
        try:
            for _ in range(runs):
                engine.execute(xs)
        except Exception as e:  # noqa: BLE001 -- zeros are no input the model promised to take
            # (a gather index computed as i - 1 is -1 there: out of range, helper hunt
            # 2026-12-02): the engine stays; its first call prepares it instead
            log.info("engine for shapes %s: its warm-up run on zeros failed (%s: %s); its "
                     "first call prepares it", engine.input_shapes, type(e).__name__,
                     str(e)[:200])

    def _build_smallest(self, i: int, key: ShapeKey) -> bool:
        """Builds profile ``i``'s smallest batch at ``key``'s other dimensions; False when
        that batch is not below ``key``'s, falls in another profile, or failed (logged)."""
        lo = self._split_range(i)[0]
        rung = self._rung(key, lo)
        if lo >= key[0][0] or self.profile_index(rung) != i:
            return False
        return self._build_rung(i, rung) is not None

    def _adopt(self, engine) -> None:
        """The engines of this ProfileEngine share its arenas (see memory.ArenaPool)."""
        engine.share_arenas(self.arena_pool)
        memory = getattr(engine, "memory", None)
        if memory is not None:
            self.arena_pool.plan(memory.context_bytes)

    def _template(self, i: int) -> Optional[tuple]:
        """(template, build) for profile ``i``'s other shapes, or None (full builds)."""
        if self._specialize is None or self._opt[i] is None:
            return None
        with self._lock:
            if i in self._templates:
                return self._templates[i]
            made = None
            try:
                made = self._specialize(self._opt[i], self.profiles[i])
            except Exception as e:
                if self.profiles[i].min != self.profiles[i].max:
                    self.template_errors[i] = f"{type(e).__name__}: {e}"
                    log.info("optimization profile %s: other shapes are built from the network "
                             "(passes run per shape): %s", self.profiles[i],
                             self.template_errors[i])
            self._templates[i] = made
            return made

    def _opt_engine(self, i: int):
        with self._lock:
            if self._opt[i] is not None:
                return self._opt[i]
            opt = self.profiles[i].opt
            engine = self._engines.get(opt)
            if engine is None:
                engine = self._build(opt, None, self.weight_cache)
                self.stats["tuned"] += 1
                self.stats["timed_layers"] += int(engine.build_info.get("timed_layers", 0))
                self._adopt(engine)
                self._engines[opt] = engine
            self._set_opt(i, engine)
            return engine

    def _set_opt(self, i: int, engine) -> None:
        self._opt[i] = engine
        # A plan of this engine carries every profile and says which ones it is the opt-shape
        # engine of: one plan restores the whole profile set (engine_op.add_engine).
        engine.config["profiles"] = {
            "all": [p.to_json() for p in self.profiles],
            "opt_of": [k for k in range(len(self.profiles)) if self._opt[k] is engine]}

    def add_opt_engine(self, index: int, engine) -> None:
        """Takes ``engine`` (loaded from a plan) as profile ``index``'s opt-shape engine."""
        with self._lock:
            wrong = opt_shape_mismatch(self.profiles, index, engine.input_shapes)
            if wrong:
                raise ValueError(wrong)
            self.weight_cache.add(engine.backend, engine.network.weights, engine.weights)
            self._adopt(engine)
            self._engines[self.profiles[index].opt] = engine
            self._set_opt(index, engine)
            self._templates.pop(index, None)
            self._template(index)

    def profile_index(self, shapes) -> Optional[int]:
        return choose_profile(self.profiles, shapes)

    def contains(self, shapes) -> bool:
        return self.profile_index(shapes) is not None

    def engine_for(self, shapes, quick: bool = True):
        """The runtime engine for exactly ``shapes`` (built now without tuning when new; with
        ``quick``, a stand-in while the real one builds, where there can be one: split
        batches, else a quick engine).

        Raises:
          KeyError: no profile contains ``shapes``.
          Exception: the build for these shapes failed (again, with the first reason).
        """
        key = _key(shapes)
        self._last_call = time.monotonic()
        engine = self._engines.get(key)
        if engine is not None:
            self._used[key] = next(self._ticks)
            return engine
        engine = self._stand_ins.get(key)
        if engine is not None:
            self._count_split_call(key)
            return engine
        i = self.profile_index(key)
        if i is None:
            raise KeyError(f"no optimization profile contains input shapes {key}")
        try:
            return self._new_engine_for(i, key, quick)
        finally:
            self._start_worker()

    def _new_engine_for(self, i: int, key: ShapeKey, quick: bool):
        """engine_for's work for shapes with no engine or stand-in yet, under the lock (the
        background thread it may queue is started by engine_for after the lock is let go)."""
        with self._lock:
            engine = self._engines.get(key) or self._stand_ins.get(key)
            if engine is not None:
                return engine
            if key in self._failed:
                raise RuntimeError(self._failed[key])
            opt = self._opt_engine(i)
            made = self._template(i)
            if quick and made is not None and made[0].serves(key) is None:
                engine = self._split(i, key)
                if engine is not None:
                    return engine
                engine = self._quick(i, key, opt, made[1])
                if engine is not None:
                    self._register(key, engine, from_template=False)
                    return engine
            try:
                engine, from_template = self._make(i, key)
            except Exception as e:
                self._failed[key] = f"{type(e).__name__}: {e}"
                while len(self._failed) > _MAX_FAILED:
                    del self._failed[next(iter(self._failed))]
                raise
            self._register(key, engine, from_template)
            return engine

    def _make(self, i: int, key: ShapeKey):
        """(a real engine for ``key`` of profile ``i``, whether it came from the template):
        from the opt engine's network where the template serves the shapes, else a full
        build with the opt engine's tactics. Nothing is registered."""
        opt = self._opt_engine(i)
        made = self._template(i)
        if made is not None and made[0].serves(key) is None:
            try:
                return made[1](key, source=self._nearest_tuned(i, key)), True
            except Exception as e:  # the full build below says what is really wrong
                log.info("optimization profile %s: shapes %s are built from the network: "
                         "%s: %s", self.profiles[i], key, type(e).__name__, e)
        return self._build(key, tactic_choices(opt), self.weight_cache), False

    def _register(self, key: ShapeKey, engine, from_template: bool,
                  new_shape: bool = True) -> None:
        if new_shape:
            self.stats["shapes"] += 1
        if from_template:
            self.stats["from_template"] += 1
        self.stats["timed_layers"] += int(engine.build_info.get("timed_layers", 0))
        self._adopt(engine)
        self._engines[key] = engine
        self._used[key] = next(self._ticks)
        self._trim()

    def _trim(self) -> None:
        """Drops the least recently used shapes' engines past max_shapes(), never an opt-shape
        engine or a rung of its split ladder (a server seeing ever new shapes, e.g. sequence
        lengths times batch sizes, kept an engine per shape without limit: the hunt of
        2026-12-01 counted 513 for one op with maximum_cached_engines=1). Called under the
        lock. A dropped shape's next call makes its engine again (split batches meanwhile)."""
        limit = max_shapes()
        if len(self._engines) <= limit:
            return
        kept = set()
        for i, p in enumerate(self.profiles):
            kept.add(p.opt)
            if self._opt[i] is not None:
                kept.update(self._rungs(i, p.opt))
        lru = sorted((k for k in self._engines if k not in kept),
                     key=lambda k: self._used.get(k, -1))
        for key in lru[:len(self._engines) - limit]:
            del self._engines[key]
            self._used.pop(key, None)
            self.stats["evicted_shapes"] = self.stats.get("evicted_shapes", 0) + 1
        if not self._evict_warned and self.stats.get("evicted_shapes"):
            self._evict_warned = True
            log.warning("optimization profile engine %s keeps engines for at most %d shapes "
                        "(TFTRT_PROFILE_MAX_SHAPES); calls at more distinct shapes make dropped "
                        "ones again (split batches serve them meanwhile). Raise it if memory "
                        "allows, or bucket the shapes the model is called with.",
                        "; ".join(str(p) for p in self.profiles), limit)

    # --- stand-ins while a real engine builds ----------------------------------------------
    def _quick(self, i: int, key: ShapeKey, opt, build):
        """A quick engine for ``key`` (module doc) with its real engine queued, or None
        (quick engines off, the backend makes none, or it failed: build the usual way)."""
        if not (quick_shapes() and
                callable(getattr(getattr(opt, "backend_impl", None), "mark_quick", None))):
            return None
        try:
            engine = build(key, quick=True)
        except Exception as e:
            log.info("optimization profile %s: no quick engine for shapes %s (%s: %s); "
                     "building the real one now", self.profiles[i], key, type(e).__name__, e)
            return None
        self.stats["quick"] = self.stats.get("quick", 0) + 1
        self._enqueue(i, key, engine, idle=False)
        return engine

    def split_check(self, i: int) -> Optional[str]:
        """None when profile ``i``'s batches may be split (module doc), else why not."""
        if i not in self._split_why:
            made = self._template(i)
            check = getattr(made[0], "batch_split", None) if made is not None else None
            self._split_why[i] = (check() if callable(check) else
                                  "the profile's other shapes are not made from a template")
            if self._split_why[i]:
                log.info("optimization profile %s: new batch sizes wait for their engine (no "
                         "split batches): %s", self.profiles[i], self._split_why[i])
        return self._split_why[i]

    def _ones_apart(self, i: int) -> bool:
        """Whether profile ``i``'s batch 1 may compute otherwise than its other batches: its
        template could not show the network at batch 1 to be the same (``ones_ok`` False, e.g.
        a value folded from ``batch == 1``), so batch 1 is built the full way and is no part
        of a split batch (an engine for batch 1 answers for a batch of 1, not for one row of
        a larger batch)."""
        made = self._template(i)
        return made is not None and not getattr(made[0], "ones_ok", True)

    def _split_range(self, i: int) -> Tuple[int, int]:
        """(smallest, largest) batch of profile ``i`` a split batch may be made of."""
        lo, hi = self._batch_range(i)
        return (max(lo, 2) if self._ones_apart(i) else lo), hi

    def _parts(self, key: ShapeKey) -> Optional[List[Tuple[int, object]]]:
        """Engines already built for smaller batches of ``key``'s other dimensions whose
        batches add up to ``key``'s (largest first), or None. Only batches of ``key``'s
        profile, whose template showed the network the same across them (an engine of
        another profile, below its range, may fold its shape arithmetic otherwise:
        ``min(batch, 4)`` is 2 at batch 2, 4 across a profile 5..16); no batch-1 engine where
        the profile's batch 1 stands apart (:meth:`_ones_apart`)."""
        b = key[0][0]
        rest = [s[1:] for s in key]
        i = self.profile_index(key)
        if i is None:
            return None
        least = self._split_range(i)[0]
        sizes: Dict[int, object] = {}
        for k, e in self._engines.items():
            n = k[0][0]
            if (least <= n < b and len(k) == len(key) and all(s[0] == n for s in k) and
                    all(s[1:] == r for s, r in zip(k, rest))):
                sizes[n] = e
        counts = fewest_parts(b, sizes)
        return [(n, sizes[n]) for n in counts] if counts else None

    def _rung(self, key: ShapeKey, n: int) -> ShapeKey:
        return tuple((n, *s[1:]) for s in key)

    def _batch_range(self, i: int) -> Tuple[int, int]:
        """(smallest, largest) batch every input of profile ``i`` allows (smallest >= 1)."""
        p = self.profiles[i]
        return max(max(s[0] for s in p.min), 1), min(s[0] for s in p.max)

    def _split(self, i: int, key: ShapeKey) -> Optional[SplitEngine]:
        """Split batches for ``key`` (module doc) with its real engine queued, or None."""
        if not split_batches() or self.split_check(i) is not None:
            return None
        b = key[0][0]
        if any(s[0] != b for s in key):
            return None
        parts = self._parts(key)
        if parts is None:  # nothing smaller built yet: the profile's smallest batch, now
            parts = self._parts(key) if self._build_smallest(i, key) else None
            if parts is None:
                return None
        engine = SplitEngine(key, parts, self.backend)
        self._drop_oldest_stand_ins()
        self._stand_ins[key] = engine
        self._split_calls[key] = 1
        self.stats["split"] = self.stats.get("split", 0) + 1
        self.stats["shapes"] += 1
        # the rungs of the ladder not built yet (a loaded profile: build_profiles() did not
        # run), so that later batches split into few parts; then this batch's own engine:
        # at once when it is a rung itself, else when calls pause (or after split_calls())
        rungs = self._rungs(i, key)
        for rung in rungs:
            if rung[0][0] != b:
                self._enqueue(i, rung, None, idle=False)
        self._enqueue(i, key, engine, idle=key not in rungs)
        return engine

    def _drop_oldest_stand_ins(self) -> None:
        """Makes room for one more split-batch stand-in: at most max_shapes() of them, the
        oldest dropped with its queued build (a dropped shape's next call splits it again).
        Steady traffic at ever new sizes, each called fewer than split_calls() times, kept a
        stand-in and a queued build per size without limit: 2,000 after 2,000 calls, and a
        background build's _resplit over all of them held the lock a new size's call waits
        for, 3.3 s (helper hunt, 2026-12-04). Called under the lock."""
        limit = max_shapes()
        while len(self._stand_ins) >= limit:
            old = next(iter(self._stand_ins))
            del self._stand_ins[old]
            self._split_calls.pop(old, None)
            with self._cond:
                kept = [q for q in self._queue if not (q[1] == old and q[3])]
                if len(kept) != len(self._queue):
                    self._queue[:] = kept
                    self._pending.discard(old)
            self.stats["dropped_splits"] = self.stats.get("dropped_splits", 0) + 1
            if not self._drop_warned:
                self._drop_warned = True
                log.warning("optimization profile engine %s keeps split batches for at most "
                            "%d new shapes waiting for their engines (TFTRT_PROFILE_MAX_SHAPES); "
                            "the oldest are dropped, and split again at their next call. Calls "
                            "at ever new shapes under steady load never pause for their "
                            "builds: bucket the shapes the model is called with.",
                            "; ".join(str(p) for p in self.profiles), limit)

    def _count_split_call(self, key: ShapeKey) -> None:
        """Counts a call served by ``key``'s split batches; at split_calls() the background
        thread is woken: that batch's own engine no longer waits for calls to pause."""
        n = self._split_calls.get(key, 0) + 1
        self._split_calls[key] = n
        if n == split_calls():
            with self._cond:
                self._cond.notify_all()

    def _may_start(self, item) -> bool:
        """Whether a queued build may start although calls have not paused: it need not
        wait (a rung of the ladder, a quick engine's real one), or its split batches have
        served split_calls() calls (steady load would keep them split for good: on the
        H200, a loaded ResNet101V2's batch 8 ran as 8 batches of 1, 6.3x its own engine)."""
        limit = split_calls()
        return not item[3] or (limit > 0 and self._split_calls.get(item[1], 0) >= limit)

    def _resplit(self, built: ShapeKey) -> None:
        """An engine built in the background: the split batches above it that it shortens
        are made again with it (a loaded profile's first splits had only its smallest
        batch)."""
        for key, old in list(self._stand_ins.items()):
            if key[0][0] > built[0][0]:
                parts = self._parts(key)
                if parts is not None and len(parts) < len(old.parts):
                    self._stand_ins[key] = SplitEngine(key, parts, self.backend)

    # --- the background builds ---------------------------------------------------------------
    def _enqueue(self, i: int, key: ShapeKey, stand_in, idle: bool) -> None:
        """Queues the real engine for ``key`` (one background thread builds them, see
        :meth:`_drain`); ``idle``: only once calls pause."""
        with self._cond:
            if self._stopped or _EXITING or key in self._pending or (
                    key in self._engines and self._engines[key] is not stand_in):
                return
            self._pending.add(key)
            self._queue.append((i, key, stand_in, idle))
            _LIVE.add(self)
            if self._worker is None:  # started by engine_for once it lets the lock go
                self._worker = self._unstarted = threading.Thread(target=self._drain,
                                                                  name="tftrt-shapes")
            else:  # it may be waiting for idle: an entry that need not wait goes first
                self._cond.notify_all()

    def _start_worker(self) -> None:
        """Starts the background thread :meth:`_enqueue` made, outside the lock:
        Thread.start() waits for the new thread to run, which can be forever (an
        asynchronous exception meant for the caller, landing in the new thread before it
        ran, killed it under CPython 3.11: concurrency hunt, 2026-12-05), and every call and
        eviction of this profile waited behind the lock it held. A start that raises frees
        the worker slot: the next queued build starts another."""
        with self._cond:
            start, self._unstarted = self._unstarted, None
        if start is None:
            return
        try:
            start.start()
        except BaseException:
            with self._cond:
                if self._worker is start:
                    self._worker = None
            raise

    def _drain(self) -> None:
        """The background thread: builds the queue in order, except that an entry queued to
        wait for idle (a split batch's own engine) starts only when no call came for
        ``TFTRT_BUILD_IDLE_MS``; the others (the split ladder of a loaded profile, quick
        engines' real ones) go first. A build holds the interpreter lock for long stretches
        (cuDNN plan building does not release it), so that calls running alongside stall:
        on the H200, split batches waited 0.5-13 s behind background builds (2026-11-30).

        The thread never dies with entries queued: had it, ``_worker`` would still name it,
        so nothing queued later would build and :meth:`wait_pending` would wait forever."""
        try:
            while True:
                with self._cond:
                    if not self._queue:
                        self._worker = None  # with the check: _enqueue then starts another
                        self._cond.notify_all()
                        return
                    n = next((n for n, item in enumerate(self._queue)
                              if self._may_start(item)), None)
                    if n is None:
                        wait = build_idle_s() - (time.monotonic() - self._last_call)
                        if wait > 0:  # at most an hour at a time (Condition.wait overflows)
                            self._cond.wait(min(wait, 3600.0))
                            continue
                        n = 0
                    i, key, stand_in, _ = self._queue.pop(n)
                self._build_real(i, key, stand_in)
        finally:  # an unexpected error: the next _enqueue starts a new thread
            with self._cond:
                if self._worker is threading.current_thread():
                    self._worker = None
                    self._cond.notify_all()

    def _build_real(self, i: int, key: ShapeKey, stand_in) -> None:
        """Builds ``key``'s real engine; it replaces the stand-in (a quick engine or split
        batches) or, for a rung of the split ladder, joins the engines."""
        engine = None
        try:
            engine, from_template = self._make(i, key)
            if self.arena_pool.has_idle_slot():  # no call running: no arena more for it
                # its first run here, not in a call; its CUDA-graph capture in the first call
                # that uses it: a capture on this thread made any device-wide wait the
                # caller's threads make meanwhile fail (cudaDeviceSynchronize,
                # tf.test.experimental.sync_devices: cudaErrorStreamCaptureUnsupported in
                # every capture mode), and a program serving one request at a time has
                # such waits between calls (GPU run of 2026-12-02, the serving trace)
                self._warm(engine, runs=1)
        except Exception as e:
            if stand_in is None:
                what = "batches are split without it"
            elif isinstance(stand_in, SplitEngine):
                what = "split batches keep serving them"
            else:
                what = "its quick engine keeps serving them"
            log.warning("optimization profile %s: the engine for shapes %s failed to build in "
                        "the background (%s: %s); %s (same answers, possibly slower)",
                        self.profiles[i], key, type(e).__name__, e, what)
        with self._cond:
            self._pending.discard(key)
            current = self._engines.get(key)
            if engine is not None and (current is None or current is stand_in):
                self._register(key, engine, from_template, new_shape=stand_in is None)
                self._stand_ins.pop(key, None)
                self._split_calls.pop(key, None)
                if stand_in is not None:
                    self.stats["swapped"] = self.stats.get("swapped", 0) + 1
                self._resplit(key)
            self._cond.notify_all()

    def stop_background_builds(self) -> None:
        """Drops the queued background builds (the one running ends); stand-ins keep
        serving. Called at interpreter exit, and by the engine op when it evicts this
        engine from its cache (nothing could call the engines built then)."""
        with self._cond:
            self._stopped = True
            for _, key, _, _ in self._queue:
                self._pending.discard(key)
            self._queue.clear()
            self._cond.notify_all()

    def wait_pending(self, timeout: Optional[float] = None) -> bool:
        """Waits for the real engines building in the background (for quick engines and
        split batches); True when none is left."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def is_split(self, shapes) -> bool:
        """Whether ``shapes`` are served by split batches now (module doc)."""
        return _key(shapes) in self._stand_ins

    def is_quick(self, shapes) -> bool:
        """Whether ``shapes`` are served by a quick engine now (its real one still building,
        or failed)."""
        engine = self._engines.get(_key(shapes))
        return bool(engine is not None and
                    (getattr(engine, "build_info", None) or {}).get("quick"))

    # --- what the op, saving and summary read ---------------------------------------------
    def opt_engines(self) -> List[Tuple[List[int], object]]:
        """(profile indices, engine) per distinct opt-shape engine built or loaded."""
        out: List[Tuple[List[int], object]] = []
        for i, e in enumerate(self._opt):
            if e is None:
                continue
            for idx, known in out:
                if known is e:
                    idx.append(i)
                    break
            else:
                out.append(([i], e))
        return out

    @property
    def shapes(self) -> List[ShapeKey]:
        """Every exact shape an engine was built or loaded for."""
        return list(self._engines)

    def engines(self) -> List[Tuple[ShapeKey, object]]:
        """(shapes, runtime engine) for every exact shape built or loaded so far."""
        with self._lock:
            return list(self._engines.items())

    def _first(self):
        for e in self._opt:
            if e is not None:
                return e
        raise RuntimeError("this ProfileEngine has no engine built yet")

    # Engine-like surface (summary, tests and benchmarks read engines through op.cache).
    @property
    def network(self):
        return self._first().network

    @property
    def backend_impl(self):
        return self._first().backend_impl

    @property
    def precision(self) -> str:
        return self._first().precision

    @property
    def device(self) -> str:
        return self._first().device

    @property
    def weights(self):
        return self._first().weights

    @property
    def build_info(self) -> dict:
        return self._first().build_info

    @property
    def input_names(self) -> List[str]:
        return self._first().input_names

    @property
    def device_memory_bytes(self) -> int:
        """The largest activation memory of its engines (one runs at a time per context)."""
        engines = list(self._engines.values())  # a copy: background builds add engines
        return max((e.device_memory_bytes for e in engines), default=0)

    @property
    def weight_bytes(self) -> int:
        return self._first().weight_bytes

    @property
    def num_layers(self) -> int:
        return self._first().num_layers

    def layers_summary(self):
        return self._first().layers_summary()

    def execute(self, inputs):
        """Runs the engine for the inputs' shapes (see :meth:`engine_for`)."""
        if isinstance(inputs, dict):
            names = self.input_names
            inputs = [inputs[n] for n in names]
        return self.engine_for([tuple(x.shape) for x in inputs]).execute(inputs)

    def describe(self) -> dict:
        d = {"profiles": [p.to_json() for p in self.profiles],
             "shapes": [list(map(list, k)) for k in self.shapes], "stats": dict(self.stats),
             "arenas": dict(self.arena_pool.stats, planned_bytes=self.arena_pool.planned_bytes)}
        if self.template_errors:
            d["full_builds_because"] = {str(self.profiles[i]): why
                                        for i, why in self.template_errors.items()}
        return d

    def __repr__(self) -> str:
        return (f"<ProfileEngine {len(self.profiles)} profile(s) "
                f"{'; '.join(str(p) for p in self.profiles)}: {len(self._engines)} shape(s) "
                f"built, {self.backend}>")


def profiles_from_config(config) -> Optional[Tuple[List[Profile], List[int]]]:
    """(every profile, the indices whose opt-shape engine this is) from a plan's engine config;
    None when it names no profiles.

    Raises ValueError (or TypeError / KeyError) for a malformed entry (the caller ignores the
    plan and the op rebuilds)."""
    raw = (config or {}).get("profiles")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("'profiles' is not a JSON object")
    profiles = [Profile.from_json(d) for d in raw["all"]]
    opt_of = raw["opt_of"]
    if not profiles or not isinstance(opt_of, list) or not opt_of or any(
            not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(profiles)
            for i in opt_of):
        raise ValueError(f"'profiles' names no profile or bad indices ({opt_of!r})")
    return profiles, list(opt_of)
