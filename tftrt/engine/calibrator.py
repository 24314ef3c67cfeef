"""Calibration on an engine's own network: the range of every layer input and output.

Fused layers have no TF tensor of their own, so calibration runs the segment network as the
engine will (after the optimization passes), in FP32 on the numpy backend, layer by layer, and
records every float tensor it computes in a :class:`TensorHistogram`. From those histograms a
*method* picks the symmetric range (amax) of each tensor:

* ``"entropy"`` (default; TensorRT's entropy calibrator, after Migacz, "8-bit Inference with
  TensorRT", GTC 2017): over a 2048-bin histogram of |x|, for every candidate cut i from 128 to
  2048 bins, P = the first i bins with everything above folded into bin i-1, Q = P's bins
  merged into 128 quantization levels and expanded back over P's non-empty bins; the cut with
  the smallest KL(P || Q) wins and amax = (i + 0.5) * bin width. Exact zeros stay out of the
  histogram (they quantize exactly), a cut may clip at most :data:`MAX_CLIPPED` of the
  values (values far from zero have KL 0 at a cut that clips them all), and a tensor with
  fewer than 2 non-zero values per bin takes its max instead (a sparse histogram's
  divergence is noise);
* ``"max"``: amax = max |x| (what FP8 uses by default: E4M3 keeps relative precision, so
  clipping buys little);
* ``"percentile"`` (``"percentile:99.99"``): amax = the upper edge of the bin where the
  cumulative share of |x| reaches the percentile (default 99.99).

Then, on the first :data:`ERROR_ROWS` rows of the calibration batches (whole batches, within
:data:`KEEP_BYTES`, where the inputs have no common dynamic batch dimension), each layer the
table would quantize runs quantized on the FP32 inputs recorded for it (its input and weight
quantized, its output not requantized: that error belongs to the consumer's input) and its
output is compared with the FP32 one; the relative L2 error goes into the table
(``layer_errors``) and a layer over ``quantization.MAX_LAYER_ERROR`` stays FP16 in every build.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt.engine import quantization as Q
from tftrt.engine.network import Network

log = logging.getLogger("tftrt.calibration")

NBINS = 2048
LEVELS = 128        # int8: 127 positive levels and zero
START_BIN = 128
DEFAULT_PERCENTILE = 99.99
METHODS = ("entropy", "max", "percentile")
# Engine inputs kept in memory for the per-layer error check (at least one batch).
KEEP_BYTES = 128 << 20
# Batch rows the per-layer error check runs on, taken from the first calibration batches
# where every engine input has a dynamic leading (batch) dimension of one size. The check
# re-runs the FP32 network and every quantizable layer quantized on the host: on a whole
# batch of 128 ResNet50 images it was two thirds of calibration's time (a 16-core GPU host
# took 246 s to calibrate 4 such batches, s38), while a relative L2 error over 32 images'
# activations (millions of values per layer) is as good an estimate.
ERROR_ROWS = 32
HISTOGRAM_SLICE = 1 << 18  # values binned at a time by TensorHistogram.add
DEVICE_HISTOGRAM_SLICE = 1 << 26  # the same on a GPU (bounds its float64 / int64 copies)

ShapeKey = Tuple[Tuple[int, ...], ...]


def array_module(x):
    """numpy, or CuPy for a CuPy array (imported only when one is given)."""
    if isinstance(x, np.ndarray) or not type(x).__module__.startswith("cupy"):
        return np
    import cupy
    return cupy


def host(x) -> np.ndarray:
    """``x`` as a numpy array (a device array copied to the host)."""
    return np.asarray(x) if array_module(x) is np else x.get()


def _shape_key(arrays: Sequence[Any]) -> ShapeKey:
    """The engine key of input ``arrays``: their shapes as tuples of ints."""
    return tuple(tuple(int(d) for d in x.shape) for x in arrays)


def parse_method(method: Optional[str], precision: str = "INT8") -> Tuple[str, float]:
    """(method, percentile) of a method string: "entropy", "max" (also "minmax"), "percentile"
    or "percentile:<p>". None: "entropy" for INT8, "max" for FP8."""
    if method is None:
        return ("max" if precision == "FP8" else "entropy"), DEFAULT_PERCENTILE
    text = str(method).strip().lower()
    name, _, arg = text.partition(":")
    name = {"minmax": "max", "min-max": "max", "min_max": "max"}.get(name, name)
    if name not in METHODS or (arg and name != "percentile"):
        raise ValueError(f"calibration method {method!r} is not supported; use one of entropy, "
                         f"max, percentile or percentile:<p> (e.g. percentile:99.9)")
    pct = DEFAULT_PERCENTILE
    if arg:
        try:
            pct = float(arg)
        except ValueError:
            pct = float("nan")
        if not 0 < pct <= 100:
            raise ValueError(f"calibration method {method!r}: the percentile must be a number "
                             f"in (0, 100]")
    return name, pct


class TensorHistogram:
    """Histogram of the non-zero |x| over (0, top] in ``nbins`` equal bins, accumulated over
    batches; exact zeros are counted apart (``zeros``: they quantize without error, and the
    spike a ReLU output has there would otherwise drive the entropy method to clip hard).

    The first batch with a non-zero value sets ``top`` to its max |x|; a later, larger max
    doubles ``top`` as many times as needed and merges bins pairwise, so counts stay exact
    (only coarser). NaN / Inf values are counted apart (``nonfinite``) and left out.
    """

    def __init__(self, nbins: int = NBINS):
        if nbins & (nbins - 1):
            raise ValueError("nbins must be a power of two")
        self.nbins = nbins
        self.counts = np.zeros(nbins, np.int64)
        self.top = 0.0
        self.amax = 0.0
        self.nonfinite = 0
        self.zeros = 0
        self.values = 0

    def add(self, x) -> None:
        """Adds the values of ``x``: a numpy array, or a device array (CuPy) binned where it
        lies (only the reductions and the bin counts come to the host)."""
        xp = array_module(x)
        a = (x if xp is not np else np.asarray(x)).ravel()
        if a.dtype.kind != "f":
            a = a.astype(xp.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = xp.isfinite(a)
            self.nonfinite += int(a.size - int(finite.sum()))
            a = a[finite]
            lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        self.values += int(a.size)
        zeros = int(a.size) - int(xp.count_nonzero(a))
        self.zeros += zeros
        m = max(-lo, hi)
        if m <= 0:
            return
        self.amax = max(self.amax, m)
        if self.top == 0.0:
            self.top = m
        elif m > self.top:
            k = max(1, math.ceil(math.log2(m / self.top)))
            while self.top * 2.0 ** k < m:  # log2 rounding
                k += 1
            self._grow(k)
        # In slices that stay in cache, |x| in float64 (the bin of a value is exact); the
        # zeros fall into bin 0 and are taken out of it again (they are counted apart).
        scale = self.nbins / self.top
        step = HISTOGRAM_SLICE if xp is np else DEVICE_HISTOGRAM_SLICE
        for i in range(0, int(a.size), step):
            part = xp.abs(a[i:i + step].astype(xp.float64))
            part *= scale
            idx = xp.minimum(part.astype(xp.int64), self.nbins - 1)
            self.counts += host(xp.bincount(idx, minlength=self.nbins))
        self.counts[0] -= zeros

    def _grow(self, k: int) -> None:
        f = 1 << min(k, int(math.log2(self.nbins)))
        merged = self.counts.reshape(-1, f).sum(axis=1)
        self.counts = np.zeros(self.nbins, np.int64)
        self.counts[:merged.size] = merged
        if f < (1 << k):  # more than nbins-fold growth: everything falls into bin 0
            self.counts[:] = 0
            self.counts[0] = merged.sum()
        self.top *= 2.0 ** k

    @property
    def bin_width(self) -> float:
        return self.top / self.nbins


def amax_max(h: TensorHistogram) -> float:
    return h.amax


def amax_percentile(h: TensorHistogram, percentile: float = DEFAULT_PERCENTILE) -> float:
    """Upper edge of the first bin where the cumulative share reaches ``percentile``, capped
    at max |x|."""
    total = h.counts.sum() + h.zeros
    if h.top == 0:
        return h.amax
    cum = h.zeros + np.cumsum(h.counts)
    i = int(np.searchsorted(cum, percentile / 100.0 * total - 1e-9 * total))
    return min((i + 1) * h.bin_width, h.amax)


def entropy_divergences(counts: np.ndarray, levels: int = LEVELS,
                        start: int = START_BIN) -> List[Tuple[int, float]]:
    """(i, KL(P_i || Q_i)) for every candidate cut i in [start, len(counts)] (module doc):
    P_i the first i bins with the rest folded into its last; Q_i P_i's bins merged into
    ``levels`` groups of i // levels bins (the last takes the rest), each group's count
    (of the unfolded bins) spread evenly over its non-empty bins of P_i. Cuts where P_i or
    Q_i is empty are left out; KL is inf where P_i has mass that Q_i lacks.

    All cuts at once from prefix sums (start >= levels): with p's total T, KL = (sum p log
    p) / T - log T - (sum_g m_g log(S_g / F_g)) / T + log(sum of S_g over groups with a
    non-empty bin), S_g, F_g and m_g a group's count, non-empty bins of P and mass of P. A
    loop over the cuts took 47 ms a tensor of 2048 bins, ~6 s of ResNet50's calibration."""
    if start < levels:
        raise ValueError(f"entropy cuts start at {levels} bins at least, not {start}")
    c = np.asarray(counts, np.float64)
    n = len(c)
    if n < start:
        return []
    cuts = np.arange(start, n + 1)
    nz = c > 0
    csum = np.concatenate([[0.0], np.cumsum(c)])
    nzsum = np.concatenate([[0], np.cumsum(nz)])
    with np.errstate(divide="ignore", invalid="ignore"):
        clogc = np.concatenate([[0.0], np.cumsum(np.where(nz, c * np.log(np.where(nz, c, 1)),
                                                          0.0))])
        total = csum[n]
        tail = total - csum[cuts]                  # the bins folded into the last
        p_last = c[cuts - 1] + tail
        last_nz = p_last > 0
        plogp = clogc[cuts - 1] + np.where(last_nz, p_last * np.log(np.where(last_nz, p_last,
                                                                             1)), 0.0)
        per = cuts // levels
        bounds = per[:, None] * np.arange(levels + 1)[None, :]
        bounds[:, levels] = cuts
        S = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]
        F = (nzsum[bounds[:, 1:]] - nzsum[bounds[:, :-1]]).astype(np.float64)
        F[:, -1] += last_nz.astype(np.float64) - nz[cuts - 1]
        mass = S.copy()
        mass[:, -1] += tail
        qs = np.where(F > 0, S, 0.0).sum(axis=1)
        logq = np.log(S / np.maximum(F, 1.0))
        plogq = np.where(mass > 0, mass * logq, 0.0).sum(axis=1)
        kl = plogp / total - np.log(total) - plogq / total + np.log(qs)
    keep = ((nzsum[cuts - 1] + last_nz) > 0) & (qs != 0)
    kl = np.where(np.isnan(kl) | (plogq == -np.inf), np.inf, kl)
    return [(int(i), float(v)) for i, v in zip(cuts[keep], kl[keep])]


# Cuts whose KL divergences differ by less than this are ties (the smallest cut wins): the
# prefix-sum form above is exact to ~1e-14, not to the last bit of a loop's.
KL_TIE = 1e-12

# The largest share of a tensor's non-zero values an entropy cut may clip. Where a tensor's
# values all lie far from zero (features in [10, 11], a ReLU's live units around 5: helper
# hunt, s48), the cut at the first populated bin has P and Q both one spike, KL 0, and the
# method clipped every value to the smallest (6-8% off at the output, no warning). Cuts that
# clip more are not candidates. Entropy cuts on ordinary activations clip far less: 0.65% of
# a GELU's, 0.17% of a log-normal's, under 0.02% of Gaussian, Laplace, Student-t and ReLU
# ones (400,000 values each).
MAX_CLIPPED = 0.02


def least_cut(counts: np.ndarray, max_clipped: float = MAX_CLIPPED) -> int:
    """The smallest cut (bins kept) that leaves at most ``max_clipped`` of the histogram's
    values above it."""
    c = np.asarray(counts, np.float64)
    above = c.sum() - np.cumsum(c)       # values above a cut of i + 1 bins
    return int(np.argmax(above <= max_clipped * c.sum())) + 1


def amax_entropy(h: TensorHistogram, levels: int = LEVELS, start: int = START_BIN,
                 min_values: int = None, max_clipped: float = MAX_CLIPPED) -> float:
    """The entropy calibrator's amax (module doc): among the cuts that clip at most
    ``max_clipped`` of the values; max |x| for a histogram of fewer than ``min_values``
    non-zero values (default 2 per bin: a sparse histogram's KL divergence follows its
    sampling noise, and picks cuts that clip real values)."""
    min_values = 2 * len(h.counts) if min_values is None else min_values
    if h.top == 0 or h.counts.sum() < max(min_values, 1):
        return h.amax
    divs = entropy_divergences(h.counts, levels, start)
    lowest = least_cut(h.counts, max_clipped)
    finite = [(kl, i) for i, kl in divs if math.isfinite(kl) and i >= lowest]
    if not finite:
        return h.amax
    best = min(kl for kl, _ in finite)
    i = min(i for kl, i in finite if kl <= best + KL_TIE)
    return min((i + 0.5) * h.bin_width, h.amax)


def pick_amax(h: TensorHistogram, method: str, percentile: float = DEFAULT_PERCENTILE) -> float:
    if method == "max":
        return amax_max(h)
    if method == "percentile":
        return amax_percentile(h, percentile)
    return amax_entropy(h)


class EngineCalibrator:
    """Calibrates one segment network (module doc).

    Args:
      network: the imported (float) segment network.
      name: for messages (the engine op's name).
      build: ``build(network, shapes) -> Engine`` (default: an FP32 numpy engine, no tactic
        timing); the engine's layers must run through ``engine.runners()``.
    """

    def __init__(self, network: Network, name: str = "", build: Optional[Callable] = None):
        self.network = network
        self.name = name or network.name
        self._build = build or fp32_engine
        self.engines: Dict[ShapeKey, Any] = {}
        self.stats: Dict[str, TensorHistogram] = {}
        self.kept: List[Tuple[ShapeKey, List[np.ndarray]]] = []
        self._kept_bytes = 0
        self._kept_rows = 0
        self._whole_batches = False  # set when fewer rows than a batch's did not build
        self._plan_key: Optional[ShapeKey] = None  # the first batch's shapes: the plan's
        self.batches = 0

    # --- recording -------------------------------------------------------------------------
    def engine_for(self, key: ShapeKey):
        eng = self.engines.get(key)
        if eng is None:
            shapes = {n: s for n, s in zip(self.network.inputs, key)}
            eng = self.engines[key] = self._build(self.network, shapes)
        return eng

    def observe(self, inputs: Sequence[np.ndarray]) -> None:
        """Runs one batch of engine inputs and adds every float tensor to its histogram."""
        inputs = [np.asarray(x) for x in inputs]
        if len(inputs) != len(self.network.inputs):
            raise ValueError(f"{self.name} takes {len(self.network.inputs)} inputs, got "
                             f"{len(inputs)}")
        key = _shape_key(inputs)
        engine = self.engine_for(key)

        def record(name, value):
            if getattr(getattr(value, "dtype", None), "kind", None) == "f":
                self.stats.setdefault(name, TensorHistogram()).add(value)
        run_layers(engine, _on_engine(engine, inputs), record)
        self.batches += 1
        if self._plan_key is None:
            self._plan_key = key
        self._keep(inputs)

    def _keep(self, inputs: List[np.ndarray]) -> None:
        """Keeps rows of a batch for the per-layer error check: up to :data:`ERROR_ROWS`
        rows in all where the batch can be split (:meth:`_batch_rows`), else whole batches
        within :data:`KEEP_BYTES` (at least one)."""
        n = None if self._whole_batches else self._batch_rows(inputs)
        take = 0  # rows counted against ERROR_ROWS
        if n is not None:
            take = min(n, ERROR_ROWS - self._kept_rows)
            if take <= 0:
                return
            if take < n:  # a copy, so the whole batch is not held through its view
                rows = [np.array(x[:take]) for x in inputs]
                try:  # the network must build for that batch (a reshape may not)
                    self.engine_for(_shape_key(rows))
                    inputs = rows
                except Exception as e:  # noqa: BLE001 -- whole batches, as without a batch
                    log.info("%s: the error check keeps whole batches (%d rows do not build: "
                             "%s: %s)", self.name, take, type(e).__name__, str(e)[:200])
                    take, self._whole_batches = 0, True
        size = sum(x.nbytes for x in inputs)
        if not self.kept or self._kept_bytes + size <= KEEP_BYTES:
            self.kept.append((_shape_key(inputs), inputs))
            self._kept_bytes += size
            self._kept_rows += take

    def _batch_rows(self, inputs: List[np.ndarray]) -> Optional[int]:
        """The batch size of ``inputs`` when rows can be taken from them: every network input
        has a dynamic first dimension and every array the same size there; else None."""
        sizes = {x.shape[0] if x.ndim else None for x in inputs}
        if len(sizes) != 1 or None in sizes:
            return None
        for name in self.network.inputs:
            shape = self.network.tensors[name].shape
            if not shape or isinstance(shape[0], int):
                return None
        return int(sizes.pop())

    # --- results ---------------------------------------------------------------------------
    def ranges(self, method: str, percentile: float, wanted=None) -> Dict[str, float]:
        """amax of every recorded tensor with finite, non-zero values (``wanted``: only those
        names)."""
        out = {}
        for name, h in self.stats.items():
            if wanted is not None and name not in wanted:
                continue
            if h.nonfinite or h.amax <= 0:
                continue
            amax = pick_amax(h, method, percentile)
            if amax > 0 and math.isfinite(amax):
                out[name] = float(amax)
        return out

    def nonfinite(self) -> List[str]:
        return sorted(n for n, h in self.stats.items() if h.nonfinite)

    def needed_tensors(self) -> set:
        """Tensors a quantized build could need a range for: the activation input and the
        output of every conv / matmul of the calibration networks."""
        names = set()
        for eng in self.engines.values():
            for l in eng.network.layers:
                if l.kind in Q.GEMM_KINDS:
                    names.add(l.inputs[0])
                    names.update(l.outputs)
        return names

    def table(self, precision: str, method: Optional[str] = None,
              graph_table: Optional[dict] = None) -> dict:
        """The quantization table: ranges (the graph's fake-quant ranges win over calibrated
        ones), per-layer errors on the kept batches, the planned precisions."""
        if not self.batches:
            raise ValueError(f"{self.name}: no calibration batch was observed")
        method, pct = parse_method(method, precision)
        graph_table = graph_table or {}
        fake = dict(graph_table.get("fake_quant", {}))
        wanted = self.needed_tensors() | set(fake)
        tensors = self.ranges(method, pct, wanted)
        tensors.update(graph_table.get("tensors", {}))
        table = Q.new_table(source="calibration+graph" if graph_table.get("tensors") else
                            "calibration", precision=precision, method=method,
                            batches=self.batches, tensors=tensors, fake_quant=fake,
                            nonfinite=self.nonfinite())
        if method == "percentile":
            table["percentile"] = pct
        table["layer_errors"], residual = self.layer_errors(precision, table)
        if residual:
            table["residual_errors"] = residual
        table["plan"] = self.plan(precision, table, self._plan_key)
        return table

    def layer_errors(self, precision: str, table: dict) -> Tuple[Dict[str, float],
                                                                  Dict[str, float]]:
        """(layer errors, residual errors): the relative L2 error of each quantizable layer's
        output on the kept batches, the layer quantized with ``table`` (no error limit)
        against its FP32 output; and for INT8 layers whose epilogue adds a calibrated tensor
        (a residual), the same error with that residual read as int8 of its own range --
        what TFTRT_INT8_RESIDUAL=1 stores (quantization._requantize_outputs keeps a residual
        float when its reader's error that way is over the limit)."""
        from tftrt.engine.backends.numpy_backend import NumpyBackend
        backend = NumpyBackend()
        err: Dict[str, float] = {}
        ref: Dict[str, float] = {}
        rerr: Dict[str, float] = {}
        prepared: Dict[ShapeKey, list] = {}
        for key, inputs in self.kept:
            if key not in prepared:
                net = self.engine_for(key).network.copy()
                names = set(Q.quantize_network(net, precision, table, max_error=math.inf,
                                               stems=True))
                layers = [l for l in net.layers if l.name in names]
                for l in layers:  # the output's requantization is its consumers' input error
                    if l.attrs["quant"].pop("output_scale", None) is not None:
                        net.tensors[l.outputs[0]].dtype = "float32"
                    for e in l.epilogue:  # and so is an int8 residual's: it reads FP32 here
                        if e["op"] == "add":
                            e.pop("scale", None)
                prepared[key] = [(l, backend.prepare_layer(net, l, net.weights), net.weights,
                                  self._residual_variant(backend, net, l, precision, table))
                                 for l in layers]
            env: Dict[str, np.ndarray] = {}

            def keep(name, value):
                env[name] = value
            engine = self.engine_for(key)
            run_layers(engine, _on_engine(engine, inputs), keep, free=False)
            for layer, run, weights, residual in prepared[key]:
                ins = [host(env[i]) if i in env else weights.get(i) for i in layer.inputs]
                y = np.asarray(run(ins)[0], np.float64)
                want = np.asarray(host(env[layer.outputs[0]]), np.float64)
                o = layer.outputs[0]
                err[o] = err.get(o, 0.0) + float(np.sum((y - want) ** 2))
                ref[o] = ref.get(o, 0.0) + float(np.sum(want ** 2))
                if residual is not None:
                    rrun, scales = residual
                    rins = list(ins)
                    for i, sc in scales.items():
                        rins[i] = Q.quantize_int8(np.asarray(rins[i], np.float32),
                                                  Q.inv_scale(sc))
                    ry = np.asarray(rrun(rins)[0], np.float64)
                    rerr[o] = rerr.get(o, 0.0) + float(np.sum((ry - want) ** 2))

        def rel(e):
            return {o: (math.sqrt(e[o] / ref[o]) if ref[o] > 0 else
                        (0.0 if e[o] == 0 else math.inf)) for o in e}
        return rel(err), rel(rerr)

    @staticmethod
    def _residual_variant(backend, net: Network, layer, precision: str, table: dict):
        """(run, {input index: scale}) of ``layer`` reading each calibrated residual it adds
        as int8, or None (not INT8, or no such residual)."""
        if precision != "INT8":
            return None
        tensors = table.get("tensors", {})
        clone = layer.clone()
        scales = {}
        for e in clone.epilogue:
            if e["op"] != "add":
                continue
            name = clone.inputs[e["input"]]
            amax = tensors.get(name)
            if name in net.weights or not amax or amax <= 0:
                continue
            e["scale"] = scales[e["input"]] = Q.int8_scale(amax)
        if not scales:
            return None
        return backend.prepare_layer(net, clone, net.weights), scales

    def plan(self, precision: str, table: dict, key: ShapeKey) -> dict:
        """precision_report of the network built for ``key`` with ``table``."""
        from tftrt.engine.precision import apply_precision
        net = apply_precision(self.engines[key].network, precision, table)
        report = Q.precision_report(net)
        report["input_shapes"] = [list(s) for s in key]
        return report


def fp32_engine(network: Network, shapes, backend: str = "numpy"):
    """The FP32 engine calibration runs (no quantization table, first tactics, no TF32)."""
    from tftrt.engine.builder import BuilderConfig, build_engine
    net = network.copy()
    net.quantization = None
    return build_engine(net, shapes, BuilderConfig(precision="FP32", backend=backend,
                                                   tactic_timing=False, allow_tf32=False))


def _on_engine(engine, inputs: Sequence[np.ndarray]) -> List[Any]:
    """Host ``inputs`` as ``engine`` takes them (uploaded to a GPU backend's device)."""
    if engine.backend == "numpy":
        return list(inputs)
    return [engine.backend_impl.upload(np.ascontiguousarray(x)) for x in inputs]


def run_layers(engine, inputs: Sequence[Any], visit: Callable[[str, Any], None],
               free: bool = True) -> List[Any]:
    """Runs ``engine`` layer by layer through its runners, calling ``visit(name, value)`` for
    each network input and each layer output; returns the outputs. ``free``: drop each tensor
    after its last use (as the runtime does)."""
    net = engine.network
    env: Dict[str, Any] = dict(engine.weights)
    for name, x in zip(net.inputs, inputs):
        env[name] = x
        visit(name, x)
    last: Dict[str, int] = {}
    for k, layer in enumerate(net.layers):
        for i in layer.inputs:
            last[i] = k
    keep = set(net.outputs) | set(net.weights)
    for k, (layer, run) in enumerate(zip(net.layers, engine.runners())):
        outs = run([env[i] if i else None for i in layer.inputs])
        for o, v in zip(layer.outputs, outs):
            env[o] = v
            visit(o, v)
        if free:
            for i in set(layer.inputs):
                if i and last.get(i) == k and i not in keep:
                    env.pop(i, None)
    return [env[o] for o in net.outputs]
