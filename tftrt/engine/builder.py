"""Builder: ONNX model or Network + concrete input shapes + config -> :class:`Engine`.

Steps: import -> bind input shapes (shape inference) -> optimization passes (passes/__init__)
-> precision -> precision-dependent passes (``LATE_PASSES``) -> upload weights -> tactic
selection (timed on the backend) -> memory plan.

Engines for several shapes of one optimization profile (``tftrt/profiles.py``) are built with
the tactics chosen at the profile's opt shape (``BuilderConfig.tactic_choices``: nothing is
timed) and share their uploaded weights (``BuilderConfig.weight_cache``: a weight with the same
name and values is uploaded once, and its host copy is kept once).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from tftrt.engine.backends import get_backend
from tftrt.engine.errors import EngineBuildError
from tftrt.engine.memory import plan_memory
from tftrt.engine import pool_fusion, quantization
from tftrt.engine.network import Network
from tftrt.engine.onnx_import import network_from_onnx
from tftrt.engine.passes import LATE_PASSES, PASSES, run_passes
from tftrt.engine.precision import absorb_input_casts, apply_precision, normalize_precision
from tftrt.engine.runtime import Engine
from tftrt.engine.shapes import bind_inputs, infer_shapes
from tftrt.engine.tactics import TimingCache, choose_tactics, workspace_bytes

log = logging.getLogger("tftrt.engine")


@dataclasses.dataclass
class BuilderConfig:
    """How to build an engine.

    Attributes:
      precision: "FP32", "FP16", "INT8" or "FP8" (INT8 / FP8 need the network's quantization
        table, see quantization.py, or Q/DQ layers).
      backend: "numpy", "cupy", or "auto" ($TFTRT_BACKEND, else cupy when available).
      max_workspace_size_bytes: limit on tactic scratch (TensorRT's workspace: activation
        memory is not part of it).
      max_device_memory_bytes: limit on all device memory of an execution context
        (activation arena + scratch + outputs); None for no limit.
      allow_tf32: let fp32 GEMM/conv use TF32 tensor cores (GPU backends).
      timing_cache: a TimingCache to reuse tactic choices across builds (optional;
        ``tactics.persistent_timing_cache(backend)`` is the process's, kept on disk).
      optimize: run the optimization passes (False: the network as imported).
      tactic_timing: time candidate tactics (False: take the first applicable one).
      tactic_choices: layer name -> ``tactics.layer_choice`` (tactic and the backend's tuned
        sub-choices) made for this network at another shape (an optimization profile's opt
        shape): reused, and no layer is timed.
      weight_cache: a :class:`WeightCache` shared by the engines of one optimization profile
        set: equal weights are uploaded once.
      keep_fp16: INT8 / FP8: layer name -> the reason it stays FP16 although its table
        allows quantizing it (made by :func:`timed_precision`).
    """

    precision: str = "FP32"
    backend: str = "numpy"
    max_workspace_size_bytes: int = 1 << 40
    max_device_memory_bytes: Optional[int] = None
    allow_tf32: bool = True
    timing_cache: Optional[TimingCache] = None
    optimize: bool = True
    tactic_timing: bool = True
    tactic_choices: Optional[Dict[str, dict]] = None
    weight_cache: Optional["WeightCache"] = None
    # network outputs stored as their producer's precision stores them (float16 in FP16),
    # not float32: the values `tftrt compare --per-layer` marks as outputs to probe them
    probe_outputs: Tuple[str, ...] = ()
    keep_fp16: Optional[Dict[str, str]] = None

    def to_json(self) -> dict:
        return {"precision": self.precision, "backend": self.backend,
                "max_workspace_size_bytes": int(self.max_workspace_size_bytes),
                "allow_tf32": bool(self.allow_tf32), "optimize": bool(self.optimize)}


class WeightCache:
    """Uploaded weights shared by engines built for several shapes of one network.

    The optimization passes run again for every shape, so a weight (a folded batch norm, an
    FP16 copy) comes out of them as a new array each time; :meth:`share` finds the one already
    uploaded under the same name with the same dtype, shape and values and hands it (and its
    host copy) back, so each distinct weight exists once on the device and once on the host.
    A weight whose values depend on the shape (e.g. a folded ``Shape``) is kept per value.
    """

    def __init__(self):
        self._items: Dict[str, List[Tuple[np.ndarray, Any]]] = {}
        self._backend: Optional[str] = None
        self._lock = threading.Lock()
        self.stats = {"shared": 0, "uploaded": 0}

    def share(self, backend, name: str, host: np.ndarray) -> Tuple[np.ndarray, Any]:
        """(host array, backend array) for weight ``name`` with value ``host``: the ones
        already held when equal, else ``host`` uploaded now."""
        host = np.asarray(host)
        with self._lock:
            if self._backend is None:
                self._backend = backend.name
            elif self._backend != backend.name:
                raise EngineBuildError(f"a WeightCache holds {self._backend} weights; it cannot "
                                       f"serve a {backend.name} build")
            for h, d in self._items.get(name, ()):
                if h.dtype == host.dtype and h.shape == host.shape and \
                        (h is host or np.array_equal(h, host)):
                    self.stats["shared"] += 1
                    return h, d
            dev = backend.upload(host)
            self._items.setdefault(name, []).append((host, dev))
            self.stats["uploaded"] += 1
            return host, dev

    def add(self, backend_name: str, host: Dict[str, np.ndarray], device: Dict[str, Any]) -> None:
        """Holds the weights of an engine built or loaded elsewhere (e.g. from a plan)."""
        with self._lock:
            if self._backend is None:
                self._backend = backend_name
            for name, h in host.items():
                if name in device and not any(x is h for x, _ in self._items.get(name, ())):
                    self._items.setdefault(name, []).append((np.asarray(h), device[name]))

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._items.values())


_WARNED_PRECISIONS: set = set()


def _backend_precision(backend, precision: str) -> str:
    """The precision a build runs in on ``backend``: INT8 / FP8 layers need the backend's
    quantized kernels (``Backend.quantized_precisions``); a backend without them runs the engine
    in FP16 (one warning per backend and precision), after ``check_precision`` refused what the
    device cannot do at all (FP8 on a GPU without it)."""
    if precision not in quantization.QUANTIZED_PRECISIONS:
        return precision
    check = getattr(backend, "check_precision", None)
    if check is not None:
        check(precision)
    if precision in getattr(backend, "quantized_precisions", ()):
        return precision
    if (backend.name, precision) not in _WARNED_PRECISIONS:
        _WARNED_PRECISIONS.add((backend.name, precision))
        log.warning("the %s backend has no %s kernels yet: %s engines run their layers in FP16 "
                    "(FP16 answers and speed; issue 15)", backend.name, precision, precision)
    return "FP16"


class _Phases:
    """Seconds of a build's phases, in order (``build_info["phases"]``): where a slow build
    spends its time (a cold INT8 ResNet50 build took 190 s on an H100, s38, and no log
    said where)."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}
        self._t = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._t, 3)
        self._t = now


def optimize_network(net: Network, passes=None) -> Network:
    """Runs the ordered optimization passes (see passes/__init__.py) on a bound network."""
    return run_passes(net, PASSES if passes is None else passes)


def build_engine(model_or_network: Union[onnx.ModelProto, Network],
                 input_shapes: Dict[str, Sequence[int]],
                 config: Optional[BuilderConfig] = None) -> Engine:
    """Builds an engine for concrete input shapes.

    Args:
      model_or_network: a segment ONNX model or an imported :class:`Network`.
      input_shapes: input name -> concrete shape (every network input).
      config: a :class:`BuilderConfig` (defaults: FP32 on numpy).
    Returns:
      The :class:`Engine`.
    Raises:
      EngineBuildError: unsupported op, bad shapes, precision or memory limit (the message
        says which and what to do).
    """
    config = config or BuilderConfig()
    t0 = time.perf_counter()
    phases = _Phases()
    net, backend, precision = optimized_network(model_or_network, input_shapes, config)
    phases.done("optimize")
    if config.weight_cache is not None:
        weights = {}
        for k, v in net.weights.items():
            net.weights[k], weights[k] = config.weight_cache.share(backend, k, v)
    else:
        weights = {k: backend.upload(v) for k, v in net.weights.items()}
    phases.done("upload")
    failures: Dict[str, Dict[str, str]] = {}
    timings = _tactics(net, backend, weights, config, config.tactic_choices, failures)
    phases.done("tactics")
    engine = _finish(net, backend, precision, weights, config.to_json(), config)
    phases.done("finish")
    engine.build_info = {"seconds": time.perf_counter() - t0, "tactic_timings": timings,
                         "timed_layers": len(timings),
                         "reused_tactics": config.tactic_choices is not None,
                         "tactic_failures": failures, "phases": phases.seconds}
    log.info("built engine %s: %d layers, %s, %d arena bytes in %.2fs", net.name,
             len(net.layers), precision, engine.memory.arena_bytes, engine.build_info["seconds"])
    # (not for another shape of a profile, tactic_choices given: it follows its opt engine)
    if precision in quantization.QUANTIZED_PRECISIONS and config.keep_fp16 is None and \
            config.tactic_choices is None and timed_precision_enabled():
        engine = timed_precision(model_or_network, input_shapes, config, engine)
    return engine


# --- INT8 / FP8 layers that FP16 runs faster (TFTRT_QUANT_TIMED_PRECISION, default 1) --------
# TensorRT's INT8 mode allows INT8 kernels and keeps, per layer, what times fastest; tftrt's
# planned every layer its table allows in INT8. On an H100 (s34) ResNet50's stage-1 1x1
# convs ran slower in INT8 than in FP16 (203 against 163 us), and batch 1 was 0.77x FP16.
# A quantized layer at least this much faster in FP16 is kept FP16, and the mixed engine is
# kept only if it is faster as a whole: moving a layer to FP16 changes what its neighbours
# read and write. Where the backend times whole engines (CuPy: the engine replayed as it
# serves), the engines compare by those times, and the FP16 engine itself is a candidate:
# an INT8 / FP8 build is never slower than FP16 by more than WHOLE_MARGIN on the device that
# built it (at batch 1 the launch gaps, which layer times leave out, decide); elsewhere
# (layer times only) by their summed layer times, the FP16 engine not a candidate. On by
# default since s37 (H100): ResNet50 INT8 at batch 1 ran 0.414 ms against FP16's 0.331, the
# timed build kept FP16; FP8 ran ResNet50 and the encoder at 0.55x FP16 at batch 128.
TIMED_PRECISION_MARGIN = 0.05
# A mixed or FP16 engine replaces the quantized one only when faster by this share of its
# time (the quantized engine, asked for, wins ties within run-to-run noise).
WHOLE_MARGIN = 0.01


def kept_fp16(layers) -> Dict[str, str]:
    """The layers :func:`timed_precision` kept FP16 (their ``quant_fallback`` says so): what
    the other shapes of an optimization profile keep FP16 too, whose engines follow the opt
    engine (the shape template's networks, shape builds from its tactic choices)."""
    return {l.name: r for l in layers if (r := quantization.timed_fp16_reason(l))}


def timed_precision_enabled() -> bool:
    from tftrt.env import env_bool
    return env_bool("TFTRT_QUANT_TIMED_PRECISION", True)


def _seeded_inputs(engine: Engine) -> List[Any]:
    rng = np.random.default_rng(0)
    inputs = []
    for name in engine.network.inputs:
        t = engine.network.tensors[name]
        dt = np.dtype(t.dtype)
        x = rng.standard_normal(t.shape).astype(dt) if dt.kind == "f" else np.zeros(t.shape, dt)
        inputs.append(engine.backend_impl.upload(x))
    return inputs


def _context_method(engine: Engine, name: str):
    impl = getattr(engine.create_execution_context(), "_impl", None)
    fn = getattr(impl, name, None)
    return fn if callable(fn) else None


def layer_times(engine: Engine) -> Optional[Dict[str, float]]:
    """Seconds per layer of ``engine`` on seeded inputs (the backend's ``profile``: each
    layer replayed alone), or None where the backend cannot time layers (numpy)."""
    profile = _context_method(engine, "profile")
    return None if profile is None else dict(profile(_seeded_inputs(engine)))


def engine_seconds(engine: Engine) -> Optional[float]:
    """Seconds per run of the whole ``engine`` on seeded inputs (the backend context's
    ``time_run``: replayed as it serves), or None where the backend cannot time it."""
    time_run = _context_method(engine, "time_run")
    return None if time_run is None else float(time_run(_seeded_inputs(engine)))


def timed_precision(model_or_network, input_shapes, config: BuilderConfig,
                    engine: Engine) -> Engine:
    """``engine`` (INT8 / FP8, every allowed layer quantized), or the engine whose quantized
    layers that FP16 runs faster stay FP16, or the one whose quantized layers all stay FP16,
    whichever is fastest as a whole (module comment above). What was measured and decided
    goes into ``build_info["timed_precision"]`` of the engine returned."""
    t0 = time.perf_counter()
    try:
        chosen, info = _timed_precision(model_or_network, input_shapes, config, engine)
    except Exception as e:  # a measurement only: the engine built stands
        log.warning("%s %s: timing it against FP16 failed (%s: %s); keeping the %s engine",
                    engine.network.name, engine.precision, type(e).__name__, str(e)[:300],
                    engine.precision)
        chosen, info = engine, {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    if info is None:
        return engine
    info["seconds"] = time.perf_counter() - t0  # the FP16 and mixed builds and the timing
    if chosen is not engine:  # the quantized build's own phases, where another engine won
        info["quantized_phases"] = engine.build_info.get("phases")
    chosen.build_info["timed_precision"] = info
    return chosen


def _valid_times(times: Optional[Dict[str, float]]) -> bool:
    """Some times, each a finite positive number of seconds."""
    try:
        return bool(times) and all(math.isfinite(float(t)) and float(t) > 0
                                   for t in times.values())
    except (TypeError, ValueError):
        return False


def _whole(engine: Engine) -> Optional[float]:
    """:func:`engine_seconds`, or None where it is not a valid time."""
    t = engine_seconds(engine)
    return t if _valid_times({"engine": t}) else None


def _timed_precision(model_or_network, input_shapes, config: BuilderConfig, engine: Engine):
    quant = engine.precision
    times_q = layer_times(engine)
    if times_q is None:
        return engine, None
    if not _valid_times(times_q):
        return engine, {"kept": quant, "invalid": "times of the quantized engine"}
    whole_q = _whole(engine)
    # no weight cache: a profile's cache would keep the FP16 copies for its lifetime
    fp16 = build_engine(model_or_network, input_shapes, dataclasses.replace(
        config, precision="FP16", keep_fp16={}, weight_cache=None))
    times_f = layer_times(fp16)
    whole_f = _whole(fp16) if whole_q is not None else None
    if not _valid_times(times_f):
        return engine, {"kept": quant, "invalid": "times of the FP16 engine"}
    # a layer that runs its projection shortcut (quantization.fuse_projections) is timed
    # against the two FP16 layers together, and both stay FP16 or neither: against the
    # residual layer alone, its INT8 time with the projection's work in it lost to FP16
    # (regression hunt, s51)
    # (and a stem that took its max pool, pool_fusion, in either engine: an FP16 stem takes
    # it where the INT8 one does not; the pool then counts with the stem on both sides)
    pairs = {**_fused_pairs(fp16), **_fused_pairs(engine)}
    times_q, times_f = _merged(times_q, pairs), _merged(times_f, pairs)
    projections = {l.name: l.attrs["projection"]["name"] for l in engine.network.layers
                   if "projection" in l.attrs}  # quantized layers too; a pool is not
    quantized = [l.name for l in engine.network.layers if "quant" in l.attrs] + \
        list(projections.values())
    keep = {}
    for layer in engine.network.layers:
        tq, tf = times_q.get(layer.name), times_f.get(layer.name)
        if "quant" in layer.attrs and tq and tf and tf < tq * (1 - TIMED_PRECISION_MARGIN):
            keep[layer.name] = (f"{quantization.TIMED_FP16_REASON} ({tf * 1e6:.1f} us against "
                                f"{tq * 1e6:.1f} us in {quant})")
            if layer.name in projections:
                keep[projections[layer.name]] = keep[layer.name] + f", with {layer.name}"
    info = {"fp16_faster": sorted(keep), "quantized_s": sum(times_q.values()),
            "fp16_s": sum(times_f.values()), "kept": quant}
    whole = whole_q is not None and whole_f is not None
    if whole:
        info.update(by="whole engines", quantized_s=whole_q, fp16_s=whole_f)
    chosen, best = engine, info["quantized_s"]
    # every quantized layer faster in FP16, whole engines timed: the FP16 engine itself is
    # the candidate (the quantized network rebuilt with every layer FP16 is the same layers,
    # one more build, and may choose slower plans: see below)
    if keep and not (whole and len(keep) == len(quantized)):
        mixed = build_engine(model_or_network, input_shapes,
                             dataclasses.replace(config, keep_fp16=keep))
        if whole:
            info["mixed_s"] = _whole(mixed)
            if info["mixed_s"] is None:
                info["invalid"] = "time of the mixed engine"
        else:
            times_m = layer_times(mixed)
            if times_m is not None:  # the pairs either engine fused, summed on both sides
                both = {**pairs, **_fused_pairs(mixed)}
                times_q, times_m = _merged(times_q, both), _merged(times_m, both)
            common = set(times_q) & set(times_m or {})
            if not _valid_times(times_m) or \
                    len(common) < 0.9 * max(len(times_q), len(times_m)):
                info["invalid"] = "times of the mixed engine"
            else:  # the same layers summed on both sides
                info["quantized_s"] = best = sum(times_q[n] for n in common)
                info["mixed_s"] = sum(times_m[n] for n in common)
        if info.get("mixed_s") is not None and info["mixed_s"] < best * (1 - WHOLE_MARGIN):
            chosen, best, info["kept"] = mixed, info["mixed_s"], "mixed"
    if whole and any("quant" in l.attrs for l in chosen.network.layers) and \
            whole_f < best * (1 - WHOLE_MARGIN):
        # the FP16 engine timed, each layer the quantized engine ran in INT8 / FP8 saying
        # why it does not. (Not the quantized network rebuilt with every layer kept FP16:
        # the same layers, but on an H100 at batch 1 (s37) that build chose cuDNN plans
        # 60% slower for the stage-3 3x3 convs, 0.357 against the FP16 engine's 0.331 ms.)
        why = (f"{quantization.TIMED_FP16_REASON} (the FP16 engine as a whole: "
               f"{whole_f * 1e3:.3f} ms against {whole_q * 1e3:.3f} ms in {quant})")
        # (built without the profile's weight cache, it keeps weights of its own: one
        # model's worth more where a profile's other shapes share that cache)
        chosen = fp16
        before = {l.name: l.attrs["quant_fallback"] for l in engine.network.layers
                  if "quant_fallback" in l.attrs}  # (an image stem's, a missing range's)
        for layer in chosen.network.layers:
            if layer.name in quantized:
                layer.attrs["quant_fallback"] = keep.get(layer.name, why)
            elif layer.name in before:
                layer.attrs["quant_fallback"] = before[layer.name]
        info["kept"] = "FP16"
        # the answer to a quantized request: its plan, saved and loaded, serves an op
        # converting in that precision (engine_op._saved_engine_mismatch) instead of being
        # refused as another conversion's and rebuilt (and timed again) at every load
        chosen.config["requested_precision"] = quant
    del fp16
    if chosen is not engine and not any("quant" in l.attrs for l in chosen.network.layers):
        log.warning("%s %s: FP16 measured faster than %s on this device: the engine kept "
                    "runs no %s layer", engine.network.name, quant, quant, quant)
    log.info("%s %s: %d quantized layers faster in FP16; %s: %s %.3f ms, mixed %s, FP16 "
             "%.3f ms; keeping the %s engine", engine.network.name, quant, len(keep),
             info.get("by", "summed layer times"), quant, info["quantized_s"] * 1e3,
             f"{info['mixed_s'] * 1e3:.3f} ms" if info.get("mixed_s") else "-",
             info["fp16_s"] * 1e3, info["kept"])
    return chosen, info


def _fused_pairs(engine: Engine) -> Dict[str, str]:
    """{layer: the projection shortcut or max pool it runs} of ``engine``
    (quantization.fuse_projections, pool_fusion.fuse_pools)."""
    pairs = {l.name: l.attrs["projection"]["name"] for l in engine.network.layers
             if "projection" in l.attrs}
    pairs.update({l.name: l.attrs["pool"]["name"] for l in engine.network.layers
                  if l.kind == "conv" and "pool" in l.attrs})
    return pairs


def _merged(times: Optional[Dict[str, float]], pairs: Dict[str, str]):
    """Layer times with each projection's (or pool's) time added to the layer that runs it in
    the other engine (``pairs``), so both engines' times name the same work."""
    if times is None:
        return None
    out = dict(times)
    for layer, proj in pairs.items():
        if proj in out:
            out[layer] = out.get(layer, 0.0) + out.pop(proj)
    return out


def _tactics(net: Network, backend, weights: Dict[str, Any], config: BuilderConfig,
             choices: Optional[Dict[str, dict]],
             failures: Optional[Dict[str, Dict[str, str]]] = None) -> Dict[str, dict]:
    """Chooses every layer's tactic (timed through ``config.timing_cache``, taken from
    ``choices``, or the first applicable one with tactic_timing off) and has the backend
    prefetch the library plans: every candidate's before they are timed, else the chosen
    tactics' before _finish prepares the layers. Returns the timings; ``failures`` gets the
    candidates that failed when timed (choose_tactics)."""
    tuning = config.tactic_timing and choices is None
    if tuning:  # candidates' library plans made in parallel before they are timed here
        _hook(backend, "prefetch", net)
    if config.tactic_timing or choices is not None:  # choices: nothing timed
        timings = choose_tactics(net, backend, weights, config.timing_cache, choices=choices,
                                 failures=failures)
    else:
        timings = _first_tactics(net, backend)
    if not tuning:
        _hook(backend, "prefetch", net)
    return timings


def _untuned(net: Network) -> None:
    """Makes a template's network (the opt engine's layers) look as a fresh build's before
    its tactics are chosen: no tactic (the prefetch hook then makes the plans of every
    candidate: with the opt engine's tactic set, a conv that ran as a GEMM at the opt shape
    had its cuDNN candidate tuned in the calling process, 22 convs and 8 s of a cold ResNet50
    build on the H200) and no records (they would be taken as choices)."""
    for layer in net.layers:
        layer.tactic = None
        for k in [k for k in layer.attrs if k.startswith("_")]:
            del layer.attrs[k]


def _first_tactics(net: Network, backend) -> Dict[str, dict]:
    """Every layer takes its first applicable tactic, untimed (tactic_timing=False)."""
    from tftrt.engine.tactics import candidates
    for layer in net.layers:
        c = candidates(backend.name, net, layer)
        layer.tactic = c[0].name if c else "default"
    return {}


def _hook(backend, name: str, arg) -> None:
    """Calls the backend's optional hook ``name``: ``start_build(net)`` as a build begins,
    ``prefetch(net or [nets])`` before layers are prepared (work of the preparations to come
    done ahead, in parallel: the CuPy backend compiles cuDNN graphs in worker processes).
    Hooks only make builds faster: whatever one raises is logged and the build goes on."""
    hook = getattr(backend, name, None)
    if not callable(hook):
        return
    try:
        hook(arg)
    except Exception as e:
        log.warning("backend %s: %s failed (%s: %s); the build goes on without it",
                    getattr(backend, "name", "?"), name, type(e).__name__, str(e)[:300])


def prefetch_from_template(template, shapes: Sequence[Dict[str, Sequence[int]]],
                           opt_engine: Engine,
                           sources: Optional[Sequence[Optional[Engine]]] = None,
                           tune: Union[bool, Sequence[bool]] = False) -> None:
    """The backend's ``prefetch`` for the engines :func:`build_engine_from_template` is about
    to build for several ``shapes`` (an optimization profile's split ladder), in one go: their
    networks and tactics made as it makes them (each from ``sources[k]``'s choices where
    given, else the opt engine's; with ``tune`` (one flag, or one per shape), before any
    tactic is chosen, as its tuned builds offer them), the work of all of them at once (one
    wait instead of one per engine)."""
    from tftrt.engine.tactics import network_choices
    backend = opt_engine.backend_impl
    if not callable(getattr(backend, "prefetch", None)):
        return
    tunes = [tune] * len(shapes) if isinstance(tune, bool) else list(tune)
    made: Dict[int, Dict[str, dict]] = {}
    nets = []
    for k, input_shapes in enumerate(shapes):
        source = (sources[k] if sources is not None else None) or opt_engine
        if not tunes[k] and id(source) not in made:
            made[id(source)] = network_choices(source.network)
        try:
            net = template.network_for(input_shapes)
            if tunes[k]:
                _untuned(net)
            else:
                choose_tactics(net, backend, opt_engine.weights, None,
                               choices=made[id(source)])
        except Exception as e:  # that shape's own build will say why; the others go on
            log.debug("no prefetch for shapes %s: %s", input_shapes, e)
            continue
        nets.append(net)
    if nets:
        _hook(backend, "prefetch", nets)


def _finish(net: Network, backend, precision: str, weights: Dict[str, Any], config_json: dict,
            config: BuilderConfig) -> Engine:
    """Memory plan (with the chosen tactics' scratch) and the Engine. First, an FP16 conv
    whose chosen implementation reads float32 x reads it instead of its cast
    (precision.absorb_input_casts), and an int8 max pool's producer stores the codes where
    its chosen implementation can (quantization.absorb_pool_requantization), and a residual
    layer runs its projection shortcut where its implementation can
    (quantization.fuse_projections), and a stem the max pool after it
    (pool_fusion.fuse_pools)."""
    reads_float32 = getattr(backend, "reads_float32", None)
    if callable(reads_float32):
        for name in absorb_input_casts(net, reads_float32):
            log.info("layer %s reads float32 x itself (its float16 cast removed)", name)
    stores_int8 = getattr(backend, "stores_int8", None)
    if precision == "INT8" and callable(stores_int8):
        for name in quantization.absorb_pool_requantization(net, stores_int8):
            log.info("layer %s stores int8 codes for the max pool after it", name)
    fuses = getattr(backend, "fuses_projection", None)
    if precision == "INT8" and callable(fuses):
        for name in quantization.fuse_projections(net, fuses):
            log.info("layer %s runs its projection shortcut in its own kernel", name)
    fuses_pool = getattr(backend, "fuses_pool", None)
    if callable(fuses_pool) and precision != "FP32":  # (calibration's engine sees each layer)
        for name in pool_fusion.fuse_pools(net, fuses_pool):
            log.info("layer %s pools its output in its own kernel", name)
    scratch = max([workspace_bytes(backend.name, net, l) for l in net.layers] or [0])
    memory = plan_memory(net, scratch, config.max_workspace_size_bytes,
                         config.max_device_memory_bytes)
    engine = Engine(net, backend, precision, memory, config_json, weights=weights,
                    device=backend.device_name())
    persist = getattr(backend, "persist_compiled", None)  # optional hook: compiled code to disk
    if callable(persist):
        persist()
    return engine


def build_engine_from_template(template, input_shapes: Dict[str, Sequence[int]],
                               opt_engine: Engine,
                               config: Optional[BuilderConfig] = None,
                               quick: bool = False, tune: bool = False,
                               choices_from: Optional[Engine] = None) -> Engine:
    """An engine for other input shapes of an optimization profile, from the network the
    profile's opt-shape engine was optimized into (``template``, a
    :class:`tftrt.engine.shape_template.ShapeTemplate`): no pass runs again, shapes are
    inferred once, layers keep the opt engine's tactics and backend sub-choices, and the
    engine shares its uploaded weights. Only the memory plan and the backend's preparation
    are per shape.

    ``quick``: a provisional engine that builds in milliseconds where the backend can make
    one (its ``mark_quick`` hook: the CuPy backend's convolutions then take cuDNN plans that
    need no runtime compile, untimed), the same answers, possibly slower; profiles.py serves
    it while the real engine builds in the background.

    ``tune``: the layers' tactics and backend sub-choices are chosen at these shapes (timed,
    through ``config.timing_cache``, as a full build does) instead of taken from the opt
    engine: a profile's tuned rungs (profiles.py). ``choices_from``: another engine of the
    profile (a tuned rung) whose choices the layers take instead of the opt engine's.

    Raises:
      EngineBuildError: the shapes are outside what the template serves (the caller builds
        the full way), or the memory plan exceeds a limit.
    """
    from tftrt.engine.tactics import network_choices
    config = config or BuilderConfig()
    t0 = time.perf_counter()
    backend = opt_engine.backend_impl
    if hasattr(backend, "set_build_options"):
        backend.set_build_options(allow_tf32=config.allow_tf32, precision=opt_engine.precision)
    net = template.network_for(input_shapes)
    timings: Dict[str, dict] = {}
    failures: Dict[str, Dict[str, str]] = {}
    if tune:  # as a full build chooses, from the template's network without the opt's
        _untuned(net)
        timings = _tactics(net, backend, opt_engine.weights, config, None, failures)
    else:
        source = choices_from if choices_from is not None else opt_engine
        choices = network_choices(source.network)
        choose_tactics(net, backend, opt_engine.weights, None, choices=choices)
        mark = getattr(backend, "mark_quick", None) if quick else None
        if callable(mark):
            mark(net)
        else:
            _hook(backend, "prefetch", net)
    cfg = {k: v for k, v in opt_engine.config.items() if k != "profiles"}
    engine = _finish(net, backend, opt_engine.precision, opt_engine.weights, cfg, config)
    if tune:  # every layer's stored choice recorded: the rungs that borrow them get them all
        _hook(backend, "record_choices", engine.network)
    engine.build_info = {"seconds": time.perf_counter() - t0, "tactic_timings": timings,
                         "timed_layers": len(timings), "reused_tactics": not tune,
                         "tactic_failures": failures,
                         "from_template": True, "quick": quick, "tuned": tune}
    log.info("engine %s for %s from its profile's optimized network in %.3fs", net.name,
             {k: tuple(v) for k, v in input_shapes.items()}, engine.build_info["seconds"])
    return engine


def optimized_network(model_or_network: Union[onnx.ModelProto, Network],
                      input_shapes: Dict[str, Sequence[int]],
                      config: Optional[BuilderConfig] = None) -> Tuple[Network, Any, str]:
    """The first half of :func:`build_engine`: the network bound to ``input_shapes``,
    optimized, in its precision (weights on the host, no tactics). Returns (network, backend,
    precision); the engines of a profile compare these at several shapes
    (``shape_template.py``)."""
    config = config or BuilderConfig()
    precision = normalize_precision(config.precision)
    backend = get_backend(config.backend)
    if hasattr(backend, "set_build_options"):  # optional backend hook (TF32, precision)
        backend.set_build_options(allow_tf32=config.allow_tf32, precision=precision)
    if isinstance(model_or_network, onnx.ModelProto):
        net = network_from_onnx(model_or_network)
    elif isinstance(model_or_network, Network):
        net = model_or_network
    else:
        raise EngineBuildError(f"build_engine takes an onnx.ModelProto or a Network, not "
                               f"{type(model_or_network).__name__}")
    try:
        table = quantization.table_of(model_or_network)
    except ValueError as e:
        raise EngineBuildError(f"network {net.name}: {e}") from e
    precision = _backend_precision(backend, precision)
    _hook(backend, "start_build", net)
    net = bind_inputs(net, input_shapes)
    if config.optimize:
        net = optimize_network(net)
    net = infer_shapes(net)
    keep = config.keep_fp16
    if keep is None and config.tactic_choices:  # another shape: as its opt engine did
        keep = {n: c["kept_fp16"] for n, c in config.tactic_choices.items()
                if isinstance(c, dict) and c.get("kept_fp16")} or None
    net = apply_precision(net, precision, table, probes=config.probe_outputs, keep_fp16=keep)
    if config.optimize:
        accept = getattr(backend, "accepts_layer", None)
        net = run_passes(net, [functools.partial(p, accept=accept) for p in LATE_PASSES],
                         infer=False)
    if backend.name != "numpy":
        dyn = [t for t in net.tensors.values() if not t.is_static]
        if dyn:
            raise EngineBuildError(
                f"tensors {[t.name for t in dyn][:5]} have data-dependent shapes, which the "
                f"{backend.name} backend cannot run; keep such ops (e.g. NonMaxSuppression) out "
                f"of the segment")
    return net, backend, precision
