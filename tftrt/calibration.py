"""INT8 / FP8 on the TensorFlow side: quantization ranges for each engine, and engine ops that
carry them.

Where the ranges come from
--------------------------
* ``use_calibration=True``: ``convert(calibration_input_fn=...)`` (TF1: ``calibrate()``) runs
  each calibration batch through the *native* graph up to every engine's inputs, then each
  engine's own network in FP32, layer by layer (``engine/calibrator.py``), and records the range
  of every layer input and output there (fused layers have no TF tensor of their own). The
  method is entropy (TensorRT's default), ``max`` or ``percentile[:p]``: tftrt's option
  ``calibration_method=`` of ``convert()`` / ``calibrate()``, or env
  ``TFTRT_CALIBRATION_METHOD``. Ranges the graph's own fake-quantization ops give win.
* ``use_calibration=False``: the FakeQuantWithMinMax* / QuantizeAndDequantize* ops of the
  segment (quantization-aware-trained models) give their tensors' ranges
  (:func:`graph_table`). A segment with none of them runs in FP16, with a warning (TF-TRT's
  fallback).

The table lives in the segment ONNX model's metadata (``engine/quantization.py``), so it is
saved with the model (the segment network asset, TF1's ``_tftrt_segment_onnx``) and restored
by ``tftrt.load`` and TF1 imports; :class:`QuantizedEngineOp` hands it to every build.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt import progress
from tftrt.engine import quantization as Q
from tftrt.engine_op import TRTEngineOp
from tftrt.logs import first_error_line

log = logging.getLogger("tftrt.calibration")

QUANTIZED = Q.QUANTIZED_PRECISIONS
# TensorRT's calibrators fail without a batch; more is better (it suggests ~500 images).
MIN_CALIBRATION_BATCHES = 1
# Samples (rows of the engines' inputs, over all batches) below which calibration warns: a
# range taken from a few samples clips what the model serves later. A helper's hunt (s44):
# ranges from 1-12 samples put a pooled CNN 10-40% off TF on fresh data while every layer's
# error on the calibration data itself read ~1%; with 120 samples, under 1%.
FEW_CALIBRATION_SAMPLES = 100
# A fake-quantization op folds into the INT8 layer reading it when its grid over the
# symmetric range [-amax, amax] has at least INT8's steps (2 * 127, a little less for float
# rounding): an 8-bit op, whose values the layer's own quantization then reproduces within
# one INT8 step. A coarser op (num_bits < 8) stays, as TF computes it.
MIN_FOLD_LEVELS = 2 * Q.INT8_QMAX - 1


class QuantizedEngineOp(TRTEngineOp):
    """A TRTEngineOp of an INT8 / FP8 engine: every build gets the quantization table stored in
    its segment network (``Network.quantization``)."""

    def __init__(self, spec, native_fn):
        super().__init__(spec, native_fn)
        self._table: Optional[dict] = None
        self._table_read = False
        self._warned_unquantized = False  # (_warn_if_nothing_quantized, once per op)

    def network_from_model(self, model):
        net = super().network_from_model(model)
        net.quantization = Q.table_from_model(model)
        self._table, self._table_read = net.quantization, True
        return net

    @property
    def quantization(self) -> Optional[dict]:
        """The quantization table of the segment network (None: none)."""
        if not self._table_read:
            import onnx
            try:
                self._table = Q.table_from_model(onnx.load_from_string(self.spec.onnx_bytes))
            except ValueError as e:
                log.warning("%s: %s", self.name, e)
                self._table = None
            self._table_read = True
        return self._table

    def _build(self, key, backend: str, tactic_choices=None, weight_cache=None,
               count: bool = True):
        engine = super()._build(key, backend, tactic_choices, weight_cache, count)
        self._warn_if_nothing_quantized(engine)
        return engine

    def _warn_if_nothing_quantized(self, engine) -> None:
        """Once per op: a warning when the engine's conv / GEMM layers all stay FP16 for want
        of ranges or the like (not when FP16 was measured faster). calibrate() says so of a
        calibrated op; a graph-ranges op (use_calibration=False) said nothing above INFO
        where docs/differences.md promised a warning (helper hunt, 2026-12-07)."""
        table = self.quantization or {}
        net = getattr(engine, "network", None)
        if self._warned_unquantized or table.get("source") != "graph" or net is None:
            return
        gemms = [l for l in net.layers if l.kind in Q.GEMM_KINDS]
        if not gemms or any("quant" in l.attrs or Q.timed_fp16_reason(l) for l in gemms):
            return
        self._warned_unquantized = True
        why = sorted({str(l.attrs.get("quant_fallback") or "?") for l in gemms})
        log.warning("%s: none of its %d conv/GEMM layers runs in %s, so it runs in FP16: %s",
                    self.name, len(gemms), self.spec.precision_mode, "; ".join(why)[:400])

    def set_quantization(self, table: Optional[dict]) -> None:
        """Stores ``table`` in the segment network; engines built before are dropped."""
        import onnx
        model = onnx.load_from_string(self.spec.onnx_bytes)
        Q.set_table(model, table)
        self.replace_segment_network(model.SerializeToString())
        self._table, self._table_read = table, True


def engine_op_class(spec) -> type:
    """The engine op class for ``spec``: QuantizedEngineOp for INT8 / FP8 engines."""
    return QuantizedEngineOp if str(spec.precision_mode).upper() in QUANTIZED else TRTEngineOp


_WARNED_DATA_RANGES: set = set()  # graph_table's range_given=False warnings and
# segment_network's FP8-on-fake-quant ones, once each


def forget_warnings() -> None:
    """A new conversion warns again about what an earlier one was warned about."""
    _WARNED_DATA_RANGES.clear()


def graph_table(model) -> Optional[dict]:
    """The ranges the segment's fake-quantization ops give (the nodes converters/quantize.py
    tagged): both the op's output and its input get max(|min|, |max|) (the input only where
    nothing but fake quantization reads it), and the output is
    recorded as foldable into an INT8 layer reading it -- unless the op quantizes more
    coarsely than INT8 (num_bits < 8: :data:`MIN_FOLD_LEVELS`), whose values a folded layer
    would not reproduce; the op then stays in the network and the layer reads its output.
    None when there are none."""
    from tftrt.converters.quantize import RANGE_TAG
    tensors: Dict[str, float] = {}
    fake: Dict[str, str] = {}
    inputs: Dict[str, float] = {}
    steps = _constant_values(model)
    nonnegative = _nonnegative_tensors(model, steps)
    for node in model.graph.node:
        if RANGE_TAG not in node.doc_string:
            continue
        try:
            info = json.loads(node.doc_string)[RANGE_TAG]
            lo, hi = float(info["min"]), float(info["max"])
            amax = max(abs(lo), abs(hi))
            source = str(info["input"])
        except (ValueError, KeyError, TypeError):
            continue
        if not (amax > 0 and math.isfinite(amax)):
            continue
        out = node.output[0]
        if info.get("range_given") is False and (out, lo, hi) not in _WARNED_DATA_RANGES:
            _WARNED_DATA_RANGES.add((out, lo, hi))
            # TF-TRT's reading, kept; but TF itself quantizes with the data's range there, so
            # answers differ from native TF wherever the data leaves [lo, hi] (helper hunt,
            # 2026-12-02: 0.94 of the largest output on data in +-3 with [-1, 1])
            log.warning("%s: QuantizeAndDequantize with range_given=False: INT8 engines take "
                        "its input_min / input_max [%g, %g] as the range, as TF-TRT did, where "
                        "TensorFlow quantizes with the data's own range: answers differ from "
                        "native TF wherever the data leaves it. Export the op with "
                        "range_given=True (or the range you mean), or convert with "
                        "precision_mode='FP16'", info.get("op") or out, lo, hi)
        step = _fake_quant_step(node, info, steps)
        if lo < 0 < hi and step is not None and abs(lo + hi) <= 1.5 * step:
            # A signed 8-bit op without narrow_range reaches one step further on the negative
            # side: TF's QDQ over [-2, 2] gives k * 2/127 for k in -128..127, FakeQuant(-8, 8)
            # k * 16/255 over its nudged [-8.03, 7.97]. The shorter side is 127 steps, so
            # INT8's grid over it is the op's own: every value but the lowest one is held
            # exactly, where amax of the longer side re-rounded every value onto a grid
            # 1/127 coarser (helper hunt, 2026-12-07: 6.9e-3 of the largest output off TF,
            # 3.3e-7 with narrow_range)
            amax = min(-lo, hi)
        tensors[out] = amax
        inputs.setdefault(source, amax)
        levels = None if step is None else 2 * amax / step
        # Folding makes the range symmetric, [-amax, amax]: an unsigned or lopsided range
        # ([0, 1] on signed data) would lose its clamp (the hunt's relative error 1.05). Such
        # an op stays and is computed as TF does; a range symmetric to within a step (TF's
        # nudged [-8.03, 7.97] of FakeQuant(-8, 8)) folds.
        # An unsigned range on what cannot be negative (FakeQuant(0, 6) after a ReLU, QAT's
        # usual pattern) loses nothing.
        lopsided = abs(lo + hi) > (1.5 * step if step is not None else 1e-6 * amax) and not (
            lo >= 0 and source in nonnegative)
        if lopsided:
            log.info("%s: fake quantization over [%g, %g] is not symmetric; it is computed as "
                     "TF does, not folded into the layer reading it", out, lo, hi)
        elif levels is None or levels >= MIN_FOLD_LEVELS:
            fake[out] = source
        else:
            # A signed QDQ op without narrow_range reaches one step past its given range on
            # the negative side (4 bits over [-2, 2]: -8 * 2/7): the output's range has it.
            tensors[out] = amax + step
            log.info("%s: fake quantization to %.0f levels over [-%g, %g] is coarser than "
                     "INT8's %d; it is computed as TF does, not folded into the layer reading "
                     "it", out, levels, amax, amax, MIN_FOLD_LEVELS)
    # A segment output named after an op's output is an Identity of it: the network keeps the
    # output's name, so the op's output goes by that name there, and a layer reading it found
    # no range (helper hunt, 2026-12-07: a fake-quant op that is also a signature output;
    # its conv stayed FP16, and summary() named the placeholder)
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in tensors:
            tensors.setdefault(node.output[0], tensors[node.input[0]])
            if node.input[0] in fake:
                fake.setdefault(node.output[0], fake[node.input[0]])
    # The op's input gets the range only where nothing but fake quantization reads it:
    # another layer reading the raw input was quantized with that range and clipped to it
    # (a conv beside the fake-quant branch: 11% off TF on data in +-2.6 with [-2, 2], no
    # warning; INT8 hunt, 2026-12-04). Such a reader has no range of its own: FP16.
    only_fake = _read_only_by_fake_quant(model, RANGE_TAG)
    for source, amax in inputs.items():
        if source in only_fake:
            tensors.setdefault(source, amax)
        else:
            log.info("%s is read by more than fake quantization: its readers get no range "
                     "from it", source)
    if not tensors:
        return None
    return Q.new_table(source="graph", tensors=tensors, fake_quant=fake)


def _read_only_by_fake_quant(model, tag: str) -> set:
    """The tensors every ONNX reader of which is part of a fake-quant op's lowering (the
    nodes between a tagged node and its ``input``)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    part: set = set()  # ids of the nodes of fake-quant lowerings
    for node in model.graph.node:
        if tag not in node.doc_string:
            continue
        try:
            source = str(json.loads(node.doc_string)[tag]["input"])
        except (ValueError, KeyError, TypeError):
            continue
        todo = [node]
        while todo:
            n = todo.pop()
            if id(n) in part:
                continue
            part.add(id(n))
            todo += [producer[i] for i in n.input if i and i != source and i in producer]
    readers: Dict[str, List[bool]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(id(n) in part)
    outputs = {o.name for o in model.graph.output}
    return {t for t, r in readers.items() if all(r) and t not in outputs}


_NONNEGATIVE_OPS = ("Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus", "Sqrt")


def _nonnegative_tensors(model, constants: Dict[str, np.ndarray]) -> set:
    """Outputs of the ONNX model's ops that cannot be negative: ReLU and the like, and a Clip
    whose lower bound is a constant >= 0 (ReLU6)."""
    out = set()
    for node in model.graph.node:
        ok = node.op_type in _NONNEGATIVE_OPS
        if node.op_type == "Clip" and len(node.input) > 1:
            low = constants.get(node.input[1])
            ok = low is not None and float(np.asarray(low).reshape(())) >= 0
        if ok:
            out.update(node.output)
    return out


def _constant_values(model) -> Dict[str, np.ndarray]:
    """Scalar constants of an ONNX model (initializers and Constant nodes) by name."""
    from onnx import numpy_helper
    out = {}
    for init in model.graph.initializer:
        if not init.dims or int(np.prod(init.dims)) == 1:
            out[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.size == 1:
                out[node.output[0]] = value
    return out


def _fake_quant_step(node, info: dict, constants: Dict[str, np.ndarray]) -> Optional[float]:
    """The quantization step of the tagged fake-quantization op (8 bits over [-2, 2]: 4/255
    or, narrow, 2/127; 4 bits: 4/15 or 2/7), or None when unknown. A tag that names
    ``num_bits`` says it; else the tagged node is the op's last Mul, by its step."""
    bits = info.get("num_bits")
    if isinstance(bits, int) and not isinstance(bits, bool) and bits > 0:
        span = float(info["max"]) - float(info["min"])
        return span / ((1 << bits) - 1) if span > 0 else None
    if node.op_type != "Mul" or len(node.input) != 2:
        return None
    step = constants.get(node.input[1])
    if step is None:
        return None
    step = abs(float(np.asarray(step).reshape(())))
    return step if step > 0 and math.isfinite(step) else None


def segment_network(model, params, name: str) -> Tuple[bytes, str]:
    """(ONNX bytes, engine precision) of a segment at conversion.

    INT8 / FP8 without calibration: the ranges of the graph's quantization ops go into the
    network; a segment with none runs FP16 (warning). With calibration they are kept for the
    calibration to complete.
    """
    mode = str(params.precision_mode).upper()
    if mode not in QUANTIZED:
        return model.SerializeToString(), mode
    table = graph_table(model)
    if table is None and not params.use_calibration:
        log.warning("%s: %s precision without calibration needs quantization ranges, and the "
                    "segment has no FakeQuantWithMinMax* / QuantizeAndDequantize* op with a "
                    "constant per-tensor range (per-channel ones give none): it runs in FP16 "
                    "(calibrate with use_calibration=True and a calibration_input_fn to "
                    "quantize it)", name, mode)
        return model.SerializeToString(), "FP16"
    if table is not None:
        table["precision"] = mode
        Q.set_table(model, table)
        if mode == "FP8" and table.get("fake_quant") and not params.use_calibration and \
                ("FP8", name) not in _WARNED_DATA_RANGES:
            _WARNED_DATA_RANGES.add(("FP8", name))
            # E4M3 keeps 3 mantissa bits: near the top of the range its step is amax / 14,
            # ~9 steps of an 8-bit grid (helper hunt, 2026-12-04: 4-9 steps off TF's
            # fake-quantized values, 4.1% relative L2 on a QAT net where INT8 gave 0.9%)
            log.warning("%s: FP8 engines take the ranges of the model's fake-quantization "
                        "ops, but E4M3 cannot hold their INT8 grid: values differ from "
                        "native TF by up to several of its quantization steps. A "
                        "quantization-aware-trained model reproduces TF's numbers with "
                        "precision_mode='INT8'", name)
    return model.SerializeToString(), mode


def check_device(precision: str) -> None:
    """A clear error when the engines' device cannot run ``precision`` at all (FP8 on a GPU
    without it). ValueError."""
    from tftrt.engine.errors import EngineBuildError
    from tftrt.engine_op import resolve_backend
    if str(precision).upper() not in QUANTIZED:
        return
    try:
        backend = resolve_backend()
    except ValueError:
        return
    if backend in ("native", "numpy"):
        return
    from tftrt.engine.backends import get_backend
    check = getattr(get_backend(backend), "check_precision", None)
    if check is not None:
        try:
            check(str(precision).upper())
        except EngineBuildError as e:
            raise ValueError(str(e)) from None


def method_from_env(method: Optional[str]) -> Optional[str]:
    if method is not None:
        return method
    return os.environ.get("TFTRT_CALIBRATION_METHOD", "").strip() or None


def calibration_builder() -> Optional[Callable]:
    """How calibration builds its FP32 engines: on the CuPy backend's GPU where CuPy is the
    backend (``TFTRT_CALIBRATE_ON_GPU``, default on: the forward passes and histograms on the
    device, the per-layer error check's quantized layers still emulated on the host), else
    None (the calibrator's default, numpy on the host; also with ``TFTRT_CALIBRATE_ON_GPU=0``).
    On by default since the H100 run of 2026-12-06 (s39): ResNet50 on 4 batches of 128
    calibrated in 55.6 s there against 246 s on the host (s38), with the same tables in the
    GPU test. Set to 1 with another backend, a warning says it calibrates on the host."""
    from tftrt.env import env_bool
    if not env_bool("TFTRT_CALIBRATE_ON_GPU", True):
        return None
    asked = bool(os.environ.get("TFTRT_CALIBRATE_ON_GPU", "").strip())
    from tftrt.engine_op import resolve_backend
    try:
        backend = resolve_backend()
    except ValueError:
        return None
    if backend != "cupy":
        if asked:
            log.warning("TFTRT_CALIBRATE_ON_GPU=1 needs the CuPy backend (TFTRT_BACKEND is %s); "
                        "calibrating on the host", backend)
        return None
    from functools import partial
    from tftrt.engine.calibrator import fp32_engine
    return partial(fp32_engine, backend="cupy")


# --- calibration -----------------------------------------------------------------------------

def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device (or host) out-of-memory: CuPy's OutOfMemoryError, cuDNN /
    cuBLAS allocation failures, MemoryError."""
    return isinstance(err, MemoryError) or "OutOfMemory" in type(err).__name__ or \
        "out of memory" in str(err).lower()


def _batch_rows(shapes, inputs) -> int:
    """The samples in one engine's batch: the rows of its inputs whose first dimension is
    the batch (unknown in the engine's input shapes), else of every input with a first
    dimension. A scalar input (a temperature, a step) or a fixed-size one (a [1, C]
    broadcast operand) has no rows of its own: counting it as one row made 800 samples read
    as 4 and warned that they were too few (helper hunt, s54)."""
    ranked = [(s, v) for s, v in zip(shapes, inputs) if np.ndim(v)]
    batch = [v for s, v in ranked if not s or s[0] is None or s[0] < 0]
    return min((np.shape(v)[0] for v in batch or [v for _, v in ranked]), default=1)


class _Calibration:
    """Feeds engine inputs to one EngineCalibrator per quantized engine op, then stores the
    tables."""

    def __init__(self, ops: Sequence[TRTEngineOp], method: Optional[str]):
        from tftrt.engine.calibrator import EngineCalibrator, parse_method
        self.ops = [op for op in ops if isinstance(op, QuantizedEngineOp)]
        self.method = method_from_env(method)
        for op in self.ops:  # a bad method fails before any batch runs
            parse_method(self.method, op.spec.precision_mode.upper())
        build = calibration_builder()
        self.calibrators = {op.name: EngineCalibrator(_float_network(op), op.name, build)
                            for op in self.ops}
        # engine ops calibrating on the GPU (none on the host); _observe may move one back
        self.on_gpu = {op.name for op in self.ops} if build is not None else set()
        self.batches = 0
        self.samples = 0  # rows of the engines' inputs seen (first dimension)

    @property
    def tensors(self) -> List[str]:
        """The TF tensors the engines read, each once."""
        seen = []
        for op in self.ops:
            for t in op.spec.input_tensors:
                if t not in seen:
                    seen.append(t)
        return seen

    def add(self, values: Dict[str, np.ndarray]) -> None:
        """One batch. An engine in a branch of TF1 control flow (Switch / Merge) that the
        batch did not take observes nothing: its inputs are missing from ``values`` (TF1
        calibrate()) or empty (what a pruned function returns for a dead tensor)."""
        rows = 0
        for op in self.ops:
            inputs = [values.get(t) for t in op.spec.input_tensors]
            if all(v is not None and np.asarray(v).size for v in inputs):
                self._observe(op, inputs)
                rows = max(rows, _batch_rows(op.spec.input_shapes, inputs))
        self.samples += rows
        self.batches += 1

    def _observe(self, op, inputs) -> None:
        """One engine's batch. Calibrating on the GPU, a failure at the engine's first batch
        (out of memory, a layer the CuPy backend cannot build in FP32) calibrates that
        engine on the host instead, said once: the host is the reference path, and a batch
        it cannot run either fails there as before. An out-of-memory at a later batch, whose
        histograms already live on the GPU, is an error that says what to change."""
        from tftrt.engine.calibrator import EngineCalibrator
        cal = self.calibrators[op.name]
        try:
            cal.observe(inputs)
        except Exception as e:
            if op.name not in self.on_gpu:
                raise
            if cal.batches:
                if not _out_of_memory(e):
                    raise
                raise MemoryError(
                    f"{op.name}: calibration on the GPU ran out of memory at batch "
                    f"{self.batches} ({type(e).__name__}: {e}); calibrate on the host "
                    f"with TFTRT_CALIBRATE_ON_GPU=0, or with smaller batches") from e
            log.warning("%s: calibration on the GPU failed (%s: %s); calibrating it on the "
                        "host instead (TFTRT_CALIBRATE_ON_GPU=0 does so from the start)",
                        op.name, type(e).__name__, first_error_line(e))
            self.on_gpu.discard(op.name)
            cal = self.calibrators[op.name] = EngineCalibrator(_float_network(op), op.name)
            cal.observe(inputs)

    def finish(self, what: str) -> None:
        if self.batches < MIN_CALIBRATION_BATCHES:
            raise ValueError(f"{what} yielded {self.batches} batch(es); INT8 / FP8 calibration "
                             f"needs at least {MIN_CALIBRATION_BATCHES} (TensorRT suggests "
                             f"about 500 samples in all)")
        if self.ops and 0 < self.samples < FEW_CALIBRATION_SAMPLES:
            log.warning("%s gave %d sample(s) in all (rows of the engines' inputs over %d "
                        "batch(es)); ranges from so few can clip the values the model serves "
                        "later, although each layer's error on them looks small: calibrate "
                        "with a few hundred samples of real inputs (TensorRT suggests about "
                        "500)", what, self.samples, self.batches)
        for op in self.ops:
            precision = op.spec.precision_mode.upper()
            if not self.calibrators[op.name].batches:
                log.warning("%s: no calibration batch reached it (it lies in a branch of the "
                            "graph's control flow that the calibration data never took), so "
                            "it has no ranges and its layers run in FP16: calibrate with data "
                            "that takes that branch too", op.name)
                graph = _graph_ranges(op) or {}
                op.set_quantization(Q.new_table(
                    source="graph" if graph.get("tensors") else "calibration",
                    precision=precision, batches=0, tensors=graph.get("tensors", {}),
                    fake_quant=graph.get("fake_quant", {}), nonfinite=[]))
                continue
            # The graph's own ranges, not op.quantization: after an earlier calibrate() that
            # is the earlier calibration, whose ranges would win over this one's.
            table = self.calibrators[op.name].table(precision, self.method, _graph_ranges(op))
            if table["nonfinite"]:
                log.warning("%s: tensors %s held NaN or Inf during calibration; they get no "
                            "range and the layers reading them run in FP16", op.name,
                            table["nonfinite"][:8])
            op.set_quantization(table)
            plan = table["plan"]
            log.info("%s calibrated (%s, %d batches): %d of %d conv/GEMM layers %s, %.1f%% "
                     "of their FLOPs", op.name, table["method"], self.batches,
                     sum(r["precision"] == precision for r in plan["layers"]),
                     len(plan["layers"]), precision, 100 * plan["quantized_share"])
            if plan["layers"] and not any(r["precision"] == precision
                                          for r in plan["layers"]):
                # (an INT8 conversion where nothing became INT8 said so at INFO only: hunt)
                why = sorted({r.get("reason") or "?" for r in plan["layers"]})
                log.warning("%s: none of its %d conv/GEMM layers runs in %s, so it runs in "
                            "FP16: %s", op.name, len(plan["layers"]), precision,
                            "; ".join(why)[:400])


def _graph_ranges(op: QuantizedEngineOp) -> Optional[dict]:
    """The ranges the segment's fake-quantization ops give (:func:`graph_table`)."""
    import onnx
    return graph_table(onnx.load_from_string(op.spec.onnx_bytes))


def _float_network(op: QuantizedEngineOp):
    """The segment network without its table (calibration builds FP32 engines)."""
    net = op._imported_network().copy()  # pylint: disable=protected-access
    net.quantization = None
    return net


def _check_finite(values: Sequence[np.ndarray], names: Sequence[str], batch: int,
                  what: str) -> None:
    for name, v in zip(names, values):
        if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):
            bad = int(v.size - np.isfinite(v).sum())
            raise ValueError(f"{what}: batch {batch}, input {name!r} has {bad} NaN / Inf "
                             f"value(s) of {v.size}; calibration data must be finite (ranges "
                             f"computed from it would be meaningless)")


def _boundary_fn(info, fetches: Sequence[str]):
    """A function of the graph's inputs returning the tensors ``fetches`` as the native
    (cleaned, frozen) graph computes them."""
    from tensorflow.python.eager import wrap_function
    from tftrt.conversion import with_xla_calls
    computed = [t for t in fetches if t not in info.inputs]
    # the inlined XLA-compiled calls as calls again, through XLA: TF's own kernels lack what
    # Keras puts in them (a grouped Conv3D failed every calibration batch; helper hunt,
    # 2026-12-02), unless a fetched tensor lies inside one
    graph_def, names = with_xla_calls(info)
    if names is None or any(t not in names for t in computed):
        graph_def, names = info.graph_def, {t: t for t in computed}
    fn = wrap_function.function_from_graph_def(
        graph_def, list(info.inputs), [names[t] for t in computed]) if computed else None

    def run(args: Sequence) -> Dict[str, np.ndarray]:
        import tensorflow as tf
        out = {t: np.asarray(a) for t, a in zip(info.inputs, args) if t in fetches}
        if fn is not None:
            # A pruned (wrapped) function takes tensors only: numpy arrays fail to bind.
            values = fn(*[tf.convert_to_tensor(a) for a in args])
            values = values if isinstance(values, (list, tuple)) else [values]
            out.update({t: v.numpy() for t, v in zip(computed, values)})
        return out
    return run


def calibrate_v2(converter, calibration_input_fn: Callable, method: Optional[str] = None):
    """TrtGraphConverterV2.convert()'s calibration (module doc)."""
    cal = _Calibration(converter._engine_ops.values(), method)  # pylint: disable=protected-access
    if not cal.ops:
        log.info("no engine to calibrate")
    info = converter._sig.info  # pylint: disable=protected-access
    run = _boundary_fn(info, cal.tensors)
    what = "calibration_input_fn"
    from tftrt.trt_convert import iter_inputs
    empty, constant = 0, True
    for inp in iter_inputs(calibration_input_fn, what):
        try:
            args = converter._normalize_inputs(inp)  # pylint: disable=protected-access
        except ValueError as e:
            raise ValueError(f"{what}: batch {cal.batches}: "
                             f"{str(e).replace('input_fn', what)}") from None
        names = converter._sig.input_names  # pylint: disable=protected-access
        values = [args[n].numpy() for n in names]
        _check_finite(values, names, cal.batches, what)
        if any(v.size == 0 for v in values):
            empty += 1  # no sample to take a range from: not a batch
            continue
        constant &= _is_constant(values)
        if cal.ops:
            try:
                cal.add(run(values))
            except MemoryError:  # _Calibration._observe's, which says what to change
                raise
            except Exception as e:  # noqa: BLE001 -- data the model cannot run: say which batch
                # inputs each fine alone but not together (batches 8 and 3 that the model
                # adds; a gather index past its table) failed deep in the engine build or
                # numpy (helper hunt, 2026-12-02)
                raise ValueError(
                    f"{what}: batch {cal.batches}: the model cannot run it "
                    f"({type(e).__name__}: {first_error_line(e)}); its inputs must fit together "
                    f"as native TensorFlow needs them (shapes, index ranges)") from e
        else:
            cal.batches += 1
        # the progress line's detail: a generator that never ends shows batches counting
        progress.note(f"batch {cal.batches}, {cal.samples} samples")
    _warn_unusual_data(what, empty, constant and cal.batches > 0)
    cal.finish(what)


def _warn_unusual_data(what: str, empty: int, constant: bool) -> None:
    if empty:
        log.warning("%s yielded %d empty batch(es) (0 samples); they were skipped", what, empty)
    if constant:
        log.warning("%s yielded only constant data (every input one value in every batch); "
                    "the ranges it gives do not describe real inputs: calibrate with "
                    "samples of what the model will serve", what)


def _is_constant(values: Sequence[np.ndarray]) -> bool:
    """Whether every numeric input holds one value in this batch; False where none is
    numeric (a model of integer inputs only was always warned about: helper hunt,
    2026-12-02)."""
    nums = [v for v in values if v.dtype.kind in "biufc" and v.size]
    return bool(nums) and all(bool(np.all(v == v.reshape(-1)[0])) for v in nums)


def graph_element_name(item) -> Optional[str]:
    """The name of a tf.Tensor or tf.Operation of a graph ("out:0", "out"); None for anything
    else, an eager tensor included (it has a value, not a name)."""
    import tensorflow as tf
    if not (tf.is_tensor(item) or isinstance(item, tf.Operation)):
        return None
    try:
        return str(item.name)
    except AttributeError:  # eager: "Tensor.name is undefined when eager execution is enabled"
        return None


def _feed_value(key: str, value, run: int, what: str):
    """A feed_dict_fn value as a Session feeds it: an eager tensor (tf.constant in eager mode)
    as its numpy value. ValueError naming the key for a tensor of a graph, which has no value
    to feed."""
    import tensorflow as tf
    if not tf.is_tensor(value):
        return value
    if hasattr(value, "numpy"):
        return value.numpy()
    name = graph_element_name(value)
    shown = f"the tensor {name!r} of a graph" if name else f"a {type(value).__name__}"
    raise ValueError(f"{what}: run {run}: feed_dict_fn's value for {key!r} is {shown}, which "
                     f"has no value outside a Session; feed_dict_fn must return values: numpy "
                     f"arrays, Python numbers or lists, or eager tensors (build the data in "
                     f"eager mode, or sess.run() it in your own Session first)")


def _feeds(feed_dict_fn: Callable, run: int, num_runs: int, what: str) -> Dict[Any, Any]:
    """One run's feed from ``feed_dict_fn()``, keyed by tensor name: a key that is a tensor of
    the user's graph gives its name (calibration runs in a graph of its own), and an eager
    tensor value gives its numpy value."""
    try:
        feed = feed_dict_fn()
    except StopIteration:  # e.g. next() on data that ran out
        raise ValueError(f"{what}: feed_dict_fn raised StopIteration at run {run} of "
                         f"num_runs={num_runs}: its data ran out; give num_runs={run} or more "
                         f"data") from None
    if not isinstance(feed, dict):
        raise ValueError(f"feed_dict_fn returned {type(feed).__name__}; it must return a dict "
                         f"of input tensor name -> value (one run's feed; calibrate() calls it "
                         f"num_runs times)")
    out = {}
    for key, value in feed.items():
        key = graph_element_name(key) or key
        out[key] = _feed_value(str(key), value, run, what)
    return out


def _run_live(sess, targets: Dict[str, Any], ops: Sequence[TRTEngineOp], feed) -> dict:
    """The values of ``targets`` (tensor name -> graph tensor) in one run. In a graph with TF1
    control flow (Switch / Merge) an engine inside the branch not taken reads dead tensors,
    which no run can fetch: then each engine's inputs are fetched apart, and those of the
    engines the data did not reach are left out."""
    import tensorflow as tf
    try:
        return dict(zip(targets, sess.run(list(targets.values()), feed_dict=feed)))
    except tf.errors.InvalidArgumentError as e:
        if "does not have value" not in str(e):
            raise
        first = e
    got: dict = {}
    for op in ops or [None]:
        names = [t for t in (op.spec.input_tensors if op else targets) if t not in got]
        try:
            got.update(zip(names, sess.run([targets[t] for t in names], feed_dict=feed)))
        except tf.errors.InvalidArgumentError as e:
            if "does not have value" not in str(e):
                raise
    if not got and targets:
        raise first
    return got


def _calibration_graph(info, input_map_fn, fetches: Sequence[str], what: str):
    """The native graph in a graph of its own, with ``input_map_fn()``'s tensors mapped onto
    its inputs: (graph, the tensors of ``fetches``, the placeholders fed: none when mapped)."""
    import tensorflow as tf
    from tftrt import graph_io
    g = tf.Graph()
    with g.as_default():
        input_map = None
        if input_map_fn is not None:
            input_map = input_map_fn()
            if not isinstance(input_map, dict):
                raise ValueError(f"input_map_fn returned {type(input_map).__name__}; it must "
                                 f"return a dict of input tensor name -> tensor")
            # numpy values as constants (TF's importer takes tensors only)
            input_map = {k: v if tf.is_tensor(v) else tf.convert_to_tensor(v)
                         for k, v in input_map.items()}
        try:
            tf.graph_util.import_graph_def(info.graph_def, name="", input_map=input_map)
        except ValueError as e:
            if input_map is None:
                raise
            raise ValueError(f"{what}: input_map_fn's tensors do not fit the graph: "
                             f"{first_error_line(e)} (mapped {sorted(input_map)}; the graph's "
                             f"inputs are {list(info.inputs)})") from None
    mapped = {}
    for name, tensor in (input_map or {}).items():
        node, index = graph_io.split_tensor_name(name)
        mapped[graph_io.tensor_name(node, index)] = tensor
    targets = [mapped.get(t) if t in mapped else g.as_graph_element(t) for t in fetches]
    placeholders = [g.as_graph_element(t) for t in info.inputs] if input_map is None else []
    return g, targets, placeholders


def calibrate_tf1(converter, num_runs: int, feed_dict_fn=None, input_map_fn=None,
                  method: Optional[str] = None) -> None:
    """TF1 TrtGraphConverter.calibrate(): runs the original graph ``num_runs`` times with
    ``feed_dict_fn()`` feeds (or with ``input_map_fn()`` tensors mapped onto its inputs) up to
    every engine's inputs; see the module doc."""
    import tensorflow as tf
    from tftrt.trt_convert import is_int
    if not is_int(num_runs) or num_runs < 1:
        raise ValueError(f"num_runs should be a positive integer; got {num_runs!r}")
    res = converter._result  # pylint: disable=protected-access
    info = converter._info  # pylint: disable=protected-access
    cal = _Calibration(res.engine_ops.values(), method)
    fetches = cal.tensors
    what = "calibrate()"
    g, targets, placeholders = _calibration_graph(info, input_map_fn, fetches, what)
    empty, constant = 0, True
    # closing(), not the Session's own with: that makes g the default graph, and feed_dict_fn
    # runs in the caller's context, where a tf.constant it makes is an eager value (TF-TRT
    # called it there too), not a tensor of g
    with contextlib.closing(tf.compat.v1.Session(graph=g)) as sess:
        for k in range(int(num_runs)):
            feed, fed = None, None
            if feed_dict_fn is not None:
                feed = _feeds(feed_dict_fn, k, num_runs, what)
                fed = [np.asarray(v) for v in feed.values()]
                _check_finite(fed, [str(t) for t in feed], k, what)
            try:
                got = _run_live(sess, dict(zip(fetches, targets)), cal.ops, feed)
            except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
                raise ValueError(f"{what}: run {k} failed: {first_error_line(e)} (fed "
                                 f"{sorted(str(t) for t in (feed or {}))}; the graph's inputs "
                                 f"are {[p.name for p in placeholders] or list(info.inputs)})"
                                 ) from None
            _check_finite([got[t] for t in info.inputs if t in got],
                          [t for t in info.inputs if t in got], k, what)
            # The data fed, else what the engines read (input_map_fn's tensors are not
            # fetched)
            data = fed if fed is not None else [np.asarray(v) for v in got.values()]
            if any(v.size == 0 for v in data):
                empty += 1  # no sample to take a range from: not a batch
                continue
            constant &= _is_constant(data)
            if cal.ops:
                cal.add(got)
            else:
                cal.batches += 1
            progress.note(f"run {k + 1} of {int(num_runs)}")
    _warn_unusual_data(f"{what} (feed_dict_fn / input_map_fn)", empty,
                       constant and cal.batches > 0)
    cal.finish(what)
