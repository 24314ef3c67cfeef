"""Tactics: the implementations a backend offers per layer kind, and how the builder picks one.

A backend registers its tactics with :func:`register_tactic` (name, the layer kind, a predicate
saying whether it applies to a given layer, and optionally the scratch bytes it needs). The
builder (:func:`choose_tactics`) times every applicable candidate on the backend with random
inputs of the layer's real shapes and records the fastest name in ``layer.tactic``; a
:class:`TimingCache` keyed by (backend, device, layer signature) skips re-timing, in the process
and, backed by the on-disk build cache (``engine/build_cache.py``, :func:`persistent_timing_cache`),
across processes. Kinds without registered tactics get "default".

An engine built for another shape of an optimization profile takes the choices made at the
profile's opt shape (``choices``: layer name -> :func:`layer_choice`, the tactic and the
backend's own tuned sub-choices, kept in the layer's private attributes, those whose name
starts with "_", e.g. the CuPy backend's cuDNN plan) and times nothing.

A tactic registered for :data:`ANY_KIND` is never a timed candidate: it stands for every layer
that gets "default" (its kind has no tactic, or none applies) and gives that layer's workspace.
The builder asks the workspace of every layer once tactics are chosen, so a backend that
prepares its layers there (the CuPy backend) fails the build on a layer it cannot run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tftrt.engine.errors import GpuTimeout
from tftrt.engine.network import Layer, Network

log = logging.getLogger("tftrt.engine.tactics")


@dataclasses.dataclass
class Tactic:
    """One implementation of a layer kind on one backend."""

    backend: str
    kind: str
    name: str
    applies: Callable[[Network, Layer], bool]
    workspace: Callable[[Network, Layer], int]
    # Timing picks this tactic only when it beats the fastest other candidate by this fraction
    # (0: any win): for a tactic whose small wins may be timing noise (see choose_tactics).
    margin: float = 0.0


_REGISTRY: Dict[tuple, List[Tactic]] = {}

# The kind of a backend's catch-all tactic "default" (see module doc).
ANY_KIND = "*"


def register_tactic(backend: str, kind: str, name: str,
                    applies: Optional[Callable[[Network, Layer], bool]] = None,
                    workspace: Optional[Callable[[Network, Layer], int]] = None,
                    margin: float = 0.0) -> None:
    """Registers tactic ``name`` for layers of ``kind`` on ``backend`` (idempotent by name);
    ``margin``: see :class:`Tactic`."""
    lst = _REGISTRY.setdefault((backend, kind), [])
    lst[:] = [t for t in lst if t.name != name]
    lst.append(Tactic(backend, kind, name, applies or (lambda n, l: True),
                      workspace or (lambda n, l: 0), float(margin)))


def fastest(times: Dict[str, float], margins: Dict[str, float]) -> str:
    """The tactic timing picks from ``times`` (name -> seconds): the fastest, except that a
    tactic with a margin must beat every other timed candidate by that fraction, else the
    fastest of the others is taken."""
    best = min(times, key=times.get)
    m = margins.get(best, 0.0)
    others = {k: v for k, v in times.items() if k != best}
    if m > 0 and others and times[best] > (1.0 - m) * min(others.values()):
        return fastest(others, margins)
    return best


def candidates(backend: str, net: Network, layer: Layer) -> List[Tactic]:
    """Tactics of ``backend`` that apply to ``layer`` (empty: the kind has only "default")."""
    return [t for t in _REGISTRY.get((backend, layer.kind), []) if t.applies(net, layer)]


def workspace_bytes(backend: str, net: Network, layer: Layer) -> int:
    """Scratch bytes of ``layer.tactic`` (its kind's tactic, else the backend's
    :data:`ANY_KIND` tactic of that name); may raise EngineBuildError (see module doc)."""
    for t in _REGISTRY.get((backend, layer.kind), []) + _REGISTRY.get((backend, ANY_KIND), []):
        if t.name == layer.tactic:
            return int(t.workspace(net, layer))
    return 0


class TimingCache:
    """Chosen tactic per layer signature; serializable as JSON (``to_bytes``/``from_bytes``)
    or kept in a file (``TimingCache(path)`` loads it, ``save()`` writes it).

    With ``store`` (a :class:`tftrt.engine.build_cache.BuildCache`) every choice is also
    written to the on-disk build cache, and a signature missing here is looked up there: a
    layer configuration timed by any process of this environment is not timed again.
    """

    NAMESPACE = "tactics"
    # With a store, the entries held in memory are a window onto the disk's: a process that
    # builds for hours (every new batch size of every model times new layer shapes) kept
    # every choice it ever made. The oldest go first; get() reads them back from the store.
    MAX_ENTRIES_WITH_STORE = 50_000

    def __init__(self, path: Optional[str] = None, store=None):
        self.path = path
        self.store = store
        self.entries: Dict[str, dict] = {}
        self._lock = threading.Lock()
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                self.entries = _checked_entries(json.loads(f.read().decode()))

    @staticmethod
    def key(backend: str, device: str, net: Network, layer: Layer) -> str:
        sig = {"kind": layer.kind, "attrs": layer.kernel_attrs(),
               "epilogue": layer.to_json()["epilogue"], "precision": layer.precision,
               "in": [(net.tensors[i].dtype, net.tensors[i].shape, i in net.weights)
                      if i else None for i in layer.inputs]}
        return f"{backend}|{device}|" + json.dumps(sig, sort_keys=True, default=str)

    def get(self, key: str) -> Optional[str]:
        e = self.entry(key)
        return e["tactic"] if e else None

    def entry(self, key: str) -> Optional[dict]:
        """The stored choice of ``key``: {"tactic", "seconds"}, "timed" (the candidates it
        was chosen among; entries made before s48 have none), and when candidates failed as
        it was timed, "failed" (their names) and "retries" (:data:`FAILED_RETRIES`)."""
        with self._lock:
            e = self.entries.get(key)
        if e is None and self.store is not None:
            e = _checked_entry(self.store.get_json(self.NAMESPACE, key))
            if e is None:
                return None
            with self._lock:
                self.entries[key] = e
                self._trim()
        return e

    def put(self, key: str, tactic: str, seconds: float,
            failed: Optional[Sequence[str]] = None, retries: int = 0,
            timed: Optional[Sequence[str]] = None) -> None:
        entry = {"tactic": tactic, "seconds": seconds}
        if timed is not None:
            entry["timed"] = sorted(set(timed))
        if failed:
            entry.update(failed=sorted(failed), retries=int(retries))
        with self._lock:
            self.entries[key] = entry
        if self.store is not None:
            stored = self.store.put_json(self.NAMESPACE, key, entry)
            if stored:  # (an entry the disk refused stays in memory)
                with self._lock:
                    self._trim()

    def _trim(self) -> None:
        """Forgets the oldest entries past MAX_ENTRIES_WITH_STORE (with a store only)."""
        while self.store is not None and len(self.entries) > self.MAX_ENTRIES_WITH_STORE:
            self.entries.pop(next(iter(self.entries)))

    def to_bytes(self) -> bytes:
        with self._lock:
            return json.dumps(self.entries).encode()

    @staticmethod
    def from_bytes(data: bytes) -> "TimingCache":
        c = TimingCache()
        c.entries = _checked_entries(json.loads(data.decode()))
        return c

    def save(self, path: Optional[str] = None) -> None:
        with open(path or self.path, "wb") as f:
            f.write(self.to_bytes())


def _checked_entry(e) -> Optional[dict]:
    """A timing-cache entry as :meth:`TimingCache.entry` returns it, or None where it is not
    one (a hand-edited or foreign file): a tactic name and a time are required; a list of
    names ("failed", "timed") that is not one is dropped (a string would match names by
    substring), retries that are not a count read 0."""
    if not isinstance(e, dict) or not isinstance(e.get("tactic"), str):
        return None
    seconds = e.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
            not math.isfinite(seconds) or seconds < 0:
        return None
    out = {"tactic": e["tactic"], "seconds": float(seconds)}
    for names in ("failed", "timed"):
        v = e.get(names)
        if isinstance(v, list) and all(isinstance(n, str) for n in v):
            out[names] = list(v)
    retries = e.get("retries", 0)
    if "failed" in out:
        out["retries"] = retries if isinstance(retries, int) and not isinstance(
            retries, bool) and retries >= 0 else 0
    return out


def _checked_entries(entries: dict) -> Dict[str, dict]:
    """The entries of a cache file that are entries (:func:`_checked_entry`), checked once
    as they are read; put() makes only good ones."""
    return {k: e for k, e in ((k, _checked_entry(v)) for k, v in entries.items())
            if e is not None}


_PERSISTENT: Dict[tuple, TimingCache] = {}
_PERSISTENT_LOCK = threading.Lock()


def persistent_timing_cache(backend) -> TimingCache:
    """The process's timing cache for ``backend`` (an object), backed by the on-disk build
    cache when that is on (``TFTRT_BUILD_CACHE``, ``TFTRT_CACHE_DIR``): every engine op of the
    process shares it, so each distinct layer configuration is timed once per environment."""
    from tftrt.engine.build_cache import build_cache_for
    store = build_cache_for(backend)
    token = (backend.name, id(backend), store.directory if store is not None else None)
    with _PERSISTENT_LOCK:
        cache = _PERSISTENT.get(token)
        if cache is None:
            cache = _PERSISTENT[token] = TimingCache(store=store)
        return cache


# How many later builds try again the candidates that failed when a cached choice was timed
# (TimingCache entries' "failed"): a failure that passes (memory another engine held, a
# compile that lost a race) must not keep a slower tactic for good in the on-disk cache; one
# that stays is given up after this many tries, each timing those candidates only.
FAILED_RETRIES = 2


def _time_candidates(backend, net: Network, layer: Layer, weights, inputs, cands,
                     repeats: int) -> Tuple[Dict[str, float], Dict[str, str]]:
    """({tactic: seconds} of the candidates that ran, {tactic: error} of those that failed,
    each logged at INFO); a GpuTimeout stops the build."""
    times: Dict[str, float] = {}
    errors: Dict[str, str] = {}
    for c in cands:
        layer.tactic = c.name
        what = f"tactic {c.name!r} of layer {layer.name!r} ({layer.kind})"
        log.debug("timing %s", what)
        try:
            times[c.name] = _time_runner(backend, backend.prepare_layer(net, layer, weights),
                                         inputs, repeats, what)
        except GpuTimeout:
            raise
        except Exception as e:  # a failing candidate is skipped, never fatal
            log.info("tactic %s failed on %s: %s: %s", c.name, layer.name, type(e).__name__, e)
            errors[c.name] = f"{type(e).__name__}: {e}"[:300]
    return times, errors


def _time_runner(backend, runner, inputs, repeats: int, what: str = "a layer") -> float:
    if hasattr(backend, "time_runner"):  # optional backend hook (e.g. CUDA events)
        return float(backend.time_runner(runner, inputs, what=what))
    runner(inputs)  # warm-up
    backend.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(inputs)
        backend.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def layer_choice(layer: Layer) -> dict:
    """What a built layer chose: its kind, tactic and private attributes (the backend's tuned
    sub-choices, e.g. ``_cupy``), for :func:`choose_tactics`'s ``choices``."""
    choice = {"kind": layer.kind, "tactic": layer.tactic,
              "records": {k: v for k, v in layer.attrs.items() if k.startswith("_")}}
    from tftrt.engine.quantization import timed_fp16_reason
    reason = timed_fp16_reason(layer)
    if reason:  # kept FP16 by builder.timed_precision: the profile's other shapes too
        choice["kept_fp16"] = reason
    return choice


def network_choices(net: Network) -> Dict[str, dict]:
    """layer name -> :func:`layer_choice` of every layer of a built network, a fused
    projection shortcut's as a layer of its own (quantization.unfused): what another build
    of the network (a profile's other shapes) takes as ``choices``."""
    from tftrt.engine.quantization import unfused
    return {l.name: layer_choice(l) for l in unfused(net).layers}


def choose_tactics(net: Network, backend, weights: Dict[str, object],
                   cache: Optional[TimingCache] = None, repeats: int = 2,
                   choices: Optional[Dict[str, dict]] = None,
                   failures: Optional[Dict[str, Dict[str, str]]] = None) -> Dict[str, dict]:
    """Sets ``layer.tactic`` for every layer of ``net`` (in place; ``net`` is the builder's
    own copy). Returns {layer name: {tactic: seconds}} for the layers that were timed.

    Args:
      cache: a :class:`TimingCache`: a signature found there is not timed; new choices go in.
      choices: layer name -> :func:`layer_choice` made for this network at another shape (an
        optimization profile's opt shape). When given, nothing is timed: a layer of the same
        name and kind takes its private attributes (the backend's sub-choices) and its tactic
        when that applies here, else a cached choice for its signature, else its first
        candidate.
      failures: filled with {layer name: {tactic: error}} for the candidates that applied
        but failed when timed (skipped: another one runs the layer). Why: a skipped
        ``stem_mma`` left ResNet50's stem on cuDNN, 1.7x slower, with nothing said but a
        debug line (s40, H100).
    """
    from tftrt import progress  # standard library only: the engine stays TensorFlow-free
    timings: Dict[str, dict] = {}
    device = backend.device_name()
    for k, layer in enumerate(net.layers):
        progress.activity(f"{net.name}: tactics for layer {k + 1} of {len(net.layers)} "
                          f"({layer.kind})")
        chosen = choices.get(layer.name) if choices is not None else None
        if chosen is not None and chosen.get("kind") == layer.kind:
            layer.attrs.update(copy.deepcopy(chosen.get("records") or {}))
        else:
            chosen = None
        cands = candidates(backend.name, net, layer)
        if not cands:
            layer.tactic = "default"
            continue
        if len(cands) == 1:
            layer.tactic = cands[0].name
            continue
        names = [c.name for c in cands]
        if chosen is not None and chosen.get("tactic") in names:
            layer.tactic = chosen["tactic"]
            continue
        key = TimingCache.key(backend.name, device, net, layer) if cache is not None else None
        hit = cache.entry(key) if cache is not None else None
        # timed here: not with choices (nothing is timed), nor with dynamic inputs
        can_time = choices is None and \
            all(not i or net.tensors[i].is_static for i in layer.inputs)
        retry, new = [], []
        if hit and hit["tactic"] in names:
            if can_time and int(hit.get("retries", 0)) < FAILED_RETRIES:
                retry = [n for n in hit.get("failed", ()) if n in names]
            if can_time and "timed" in hit:  # candidates offered since (an opt-in tactic)
                new = [n for n in names if n not in hit["timed"] and n not in retry]
            if not retry and not new:
                layer.tactic = hit["tactic"]
                continue
        if not can_time:
            layer.tactic = cands[0].name
            continue
        inputs = [None if not i else weights[i] if i in weights else
                  backend.random_array(net.tensors[i].shape, net.tensors[i].dtype)
                  for i in layer.inputs]
        timed = [c for c in cands if not (retry or new) or c.name in retry + new]
        times, errors = _time_candidates(backend, net, layer, weights, inputs, timed, repeats)
        if failures is not None and errors:
            failures[layer.name] = dict(errors)
        margins = {c.name: c.margin for c in cands}
        if retry or new:  # a cached choice that candidates which failed, or were not
            # offered, when it was timed challenge now: only they are timed
            layer.tactic = fastest({**times, hit["tactic"]: float(hit["seconds"])}, margins)
            log.info("layer %s: %s, which %s when its choice was timed, %s; it runs %s",
                     layer.name, ", ".join(retry + new),
                     "failed" if not new else "were not offered" if not retry else
                     "failed or were not offered", "ran" if times else "failed", layer.tactic)
            timings[layer.name] = times
            best = times.get(layer.tactic, float(hit["seconds"]))
            given_up = [n for n in hit.get("failed", ()) if n not in retry]  # past its tries
            cache.put(key, layer.tactic, best, failed=sorted(set(errors) | set(given_up)),
                      retries=int(hit.get("retries", 0)) + (1 if retry else 0),
                      timed=list(hit.get("timed", ())) + names if "timed" in hit else None)
            continue
        if not times:
            layer.tactic = cands[0].name
            continue
        layer.tactic = fastest(times, margins)
        timings[layer.name] = times
        if cache is not None:
            cache.put(key, layer.tactic, times[layer.tactic], failed=list(errors),
                      timed=names)
    progress.activity("")
    return timings
