"""TF-TRT's public conversion API, for current TensorFlow.

Mirrors ``tensorflow.python.compiler.tensorrt.trt_convert``: change the import and keep the code.

    from tftrt import trt_convert as trt
    converter = trt.TrtGraphConverterV2(input_saved_model_dir="model",
                                        precision_mode=trt.TrtPrecisionMode.FP16)
    converter.convert()
    converter.build(input_fn=my_input_fn)
    converter.summary()
    converter.save("model_tftrt")
"""

from __future__ import annotations

import collections
import contextlib
import logging
import numbers
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from tftrt import graph_io, progress
from tftrt.env import env_bool
from tftrt.engine_op import TRTEngineOp, resolve_backend
from tftrt.logs import first_error_line
from tftrt.segment import SegmentationResult

log = logging.getLogger("tftrt.convert")

# TF-TRT's default was 1 GiB with older TensorRT and effectively unlimited (sys.maxsize - 512)
# from TensorRT 8.4; tftrt keeps the 1 GiB bound on tactic scratch (docs/differences.md).
DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES = 1 << 30


class TrtPrecisionMode:
    FP32 = "FP32"
    FP16 = "FP16"
    INT8 = "INT8"
    FP8 = "FP8"  # tftrt's extension: FP8 E4M3 conv / GEMM (Hopper-class GPUs), calibrated as INT8

    @staticmethod
    def supported_precision_modes() -> List[str]:
        precisions = [TrtPrecisionMode.FP32, TrtPrecisionMode.FP16, TrtPrecisionMode.INT8,
                      TrtPrecisionMode.FP8]
        return precisions + [p.lower() for p in precisions]


class TrtProfileStrategy:
    RANGE = "Range"
    OPTIMAL = "Optimal"
    RANGE_OPTIMAL = "Range+Optimal"
    IMPLICIT_BATCH_MODE_COMPATIBLE = "ImplicitBatchModeCompatible"


def get_tensorrt_rewriter_config(conversion_params=None, *args, **kwargs):
    """TF-TRT's online conversion: a RewriterConfig whose Grappler optimizer converted the
    graph of a TF1 Session as it ran. That optimizer lived in TF-TRT's C++ runtime, which
    TensorFlow no longer has and a Python library cannot register: refused, with the offline
    way (docs/differences.md)."""
    raise NotImplementedError(
        "online conversion (get_tensorrt_rewriter_config: a Grappler optimizer converting a "
        "TF1 Session's graph) is not available in tftrt. Convert offline instead: "
        "TrtGraphConverter(input_graph_def=..., nodes_denylist=[outputs]).convert() for a "
        "GraphDef or TrtGraphConverterV2(input_saved_model_dir=...) for a SavedModel, then "
        "run the converted graph")


def supported_profile_strategies() -> List[str]:
    return [TrtProfileStrategy.RANGE, TrtProfileStrategy.OPTIMAL,
            TrtProfileStrategy.RANGE_OPTIMAL, TrtProfileStrategy.IMPLICIT_BATCH_MODE_COMPATIBLE]


def _check_profile_strategy(strategy, use_dynamic_shape: bool) -> str:
    """TF-TRT's strategy name (any case accepted, as TF-TRT did); ValueError otherwise."""
    from tftrt import profiles
    if strategy is None:
        return TrtProfileStrategy.RANGE
    strategy = profiles.check_strategy(strategy)
    if not use_dynamic_shape:
        log.warning("dynamic_shape_profile_strategy=%r has no effect without "
                    "use_dynamic_shape=True: engines are built per input shape", strategy)
    elif strategy == TrtProfileStrategy.IMPLICIT_BATCH_MODE_COMPATIBLE:
        # TF-TRT's _verify_profile_strategy said so (its words)
        log.warning("ImplicitBatchModeCompatible strategy is deprecated, and using it may "
                    "result in errors during engine building. Please consider using a "
                    "different profile strategy.")
    return strategy


TrtConversionParams = collections.namedtuple(
    "TrtConversionParams",
    ["max_workspace_size_bytes", "precision_mode", "minimum_segment_size",
     "maximum_cached_engines", "use_calibration", "allow_build_at_runtime"])
TrtConversionParams.__new__.__defaults__ = (DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES,
                                            TrtPrecisionMode.FP32, 3, 1, True, True)
DEFAULT_TRT_CONVERSION_PARAMS = TrtConversionParams()

def __getattr__(name):
    # The TF1 converter lives in tftrt.tf1 (it imports this module).
    if name in ("TrtGraphConverter", "create_inference_graph"):
        from tftrt import tf1
        return getattr(tf1, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fp32_advice(backend: str) -> str:
    """What build()'s check advises when FP32 engines differ from TF past the bar."""
    if backend == "cupy":
        return ("FP32 engines use TF32 tensor cores while TensorFlow allows them: "
                "tf.config.experimental.enable_tensor_float_32_execution(False) before "
                "convert() keeps them in full FP32")
    # no tensor cores on the host: TF32 cannot explain it, nor can turning it off help
    return ("FP32 engines on the host should agree with TF to float rounding: please report "
            "this with the model")


def exact_output_advice(name: str) -> str:
    """What build()'s check advises when FP32 engines change an output compared exactly (a
    string, integer or bool): "please report this" was wrong where the output is made from
    floats (a formatted number, a cast, an argmax), which a last-digit rounding changes
    (helper hunt, s54)."""
    return (f"output {name!r} is compared exactly: where it is made from floats (a formatted "
            f"number, a cast to an integer, an argmax), a float's last-digit rounding, which "
            f"FP32 engines may do differently from TF, changes it; compare the floats it is "
            f"made from (`tftrt compare DIR --per-layer`) before reporting it")


def is_int(value) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_flag(value, name: str) -> bool:
    """A True / False argument: bools (numpy's too) and the integers 0 and 1; anything else
    -- the string "False" above all, which Python reads as True -- is refused."""
    if isinstance(value, (bool, np.bool_)) or (is_int(value) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} should be True or False; got {value!r} ({type(value).__name__})")


def _check_conversion_params(params: TrtConversionParams) -> TrtConversionParams:
    if not isinstance(params, tuple) or not hasattr(params, "_replace") or \
            set(getattr(params, "_fields", ())) != set(TrtConversionParams._fields):
        raise TypeError(f"conversion_params must be a TrtConversionParams, not a "
                        f"{type(params).__name__}; build one with trt.TrtConversionParams("
                        f"precision_mode=..., ...) or DEFAULT_TRT_CONVERSION_PARAMS._replace(...)")
    for field in ("minimum_segment_size", "maximum_cached_engines", "max_workspace_size_bytes"):
        value = getattr(params, field)
        if not is_int(value):
            raise ValueError(f"{field} should be an integer; got {value!r} "
                             f"({type(value).__name__})")
    supported = TrtPrecisionMode.supported_precision_modes()
    if params.precision_mode not in supported:
        raise ValueError(f"precision mode '{params.precision_mode}' is not supported. It should "
                         f"be one of {', '.join(supported[:4])}")
    if params.minimum_segment_size <= 0 and params.minimum_segment_size != -1:
        raise ValueError("minimum segment size should be positive or -1 (to disable main graph "
                         f"conversion); got {params.minimum_segment_size}")
    if params.maximum_cached_engines <= 0:
        raise ValueError("maximum_cached_engines should be positive; got "
                         f"{params.maximum_cached_engines}")
    if params.max_workspace_size_bytes <= 0 or params.max_workspace_size_bytes >= 2 ** 63:
        raise ValueError("max_workspace_size_bytes should be positive and below 2**63 (an "
                         f"int64, as in TensorRT); got {params.max_workspace_size_bytes}")
    return params._replace(precision_mode=params.precision_mode.upper(),
                           use_calibration=as_flag(params.use_calibration, "use_calibration"),
                           allow_build_at_runtime=as_flag(params.allow_build_at_runtime,
                                                          "allow_build_at_runtime"),
                           minimum_segment_size=int(params.minimum_segment_size),
                           maximum_cached_engines=int(params.maximum_cached_engines),
                           max_workspace_size_bytes=int(params.max_workspace_size_bytes))


def _check_input_fn(input_fn, what: str) -> None:
    if not callable(input_fn):
        raise TypeError(f"{what} must be a callable returning an iterable of inputs (a "
                        f"generator function); got a {type(input_fn).__name__}: pass e.g. "
                        f"{what}=lambda: iter(batches)")


def _has_elements(outputs) -> bool:
    """Whether any of a signature call's inputs or outputs (a dict, list or tensor) has
    elements."""
    from tftrt.compare import _flatten, _to_numpy
    for v in _flatten(outputs).values():
        n = getattr(getattr(v, "shape", None), "num_elements", lambda: None)()
        if (_to_numpy(v).size if n is None else n) > 0:
            return True
    return False


def iter_inputs(input_fn: Callable, what: str):
    """An iterator over what ``input_fn()`` returns; TypeError naming ``what`` when that is
    not iterable."""
    batches = input_fn()
    try:
        return iter(batches)
    except TypeError:
        raise TypeError(f"{what}() returned a {type(batches).__name__}, which is not iterable; "
                        f"it must return (or be a generator function yielding) the inputs, "
                        f"one batch each") from None


class _NativeReference:
    """``call(args)`` (build()'s check's native TF call) on a thread of its own from
    :meth:`start`; :meth:`result` waits for it (or makes the call itself when it was never
    started) and raises what it raised. The thread holds tftrt's device-wide lock
    (tftrt.bench.device_wide): the engines' CUDA-graph captures wait for TensorFlow's call,
    so that no wait of TensorFlow's for the whole device can spoil one."""

    def __init__(self, call: Callable, args):
        self._call, self._args = call, args
        self._thread: Optional[threading.Thread] = None
        self._out = None
        self._error: Optional[BaseException] = None

    def _run(self) -> None:
        from tftrt.bench import device_wide
        try:
            with device_wide():
                self._out = self._call(self._args)
        except BaseException as e:  # noqa: BLE001 -- raised again by result()
            self._error = e

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tftrt-check", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        """Joins the thread when it was started: build() raising must not leave TF's call
        running past it (a process exiting then aborted in TF's runtime, 3 in 10 runs:
        helper hunt, 2026-12-03)."""
        if self._thread is not None:
            self._thread.join()

    def result(self):
        if self._thread is None:
            return self._call(self._args)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._out


class OneAtATime:
    """A converter's state-changing methods (V2: convert(), build(); TF1: convert(),
    calibrate()) run one at a time: ``with self._exclusive("convert"):``. A call from another
    thread waits for the running one, then meets the state it left (a second convert()
    raises as it does called in turn). Two threads converting one INT8 converter at once
    both got through: each swapped the engine ops the other was calibrating, so one thread's
    function served ranges that save() did not hold, or its engines found none and ran
    natively (hunt, s42). A call from inside the running one (its input function calling
    back) raises instead of waiting for itself."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: Optional[Tuple[int, str]] = None  # (thread, method) running

    @contextlib.contextmanager
    def __call__(self, method: str):
        me = threading.get_ident()
        owner = self._owner
        if owner is not None and owner[0] == me:
            raise RuntimeError(f"{method}() was called while {owner[1]}() is running on this "
                               f"converter in the same thread (from its input function?); "
                               f"call it after {owner[1]}() returns")
        with self._lock:
            self._owner = (me, method)
            try:
                yield
            finally:
                self._owner = None


class TrtGraphConverterV2:
    """Converts a TF2 SavedModel signature so its supported subgraphs run as tftrt engines.

    Args (TF-TRT's, with its defaults):
      input_saved_model_dir: the SavedModel to convert.
      input_saved_model_tags: MetaGraph tags, default ["serve"].
      input_saved_model_signature_key: signature to convert, default "serving_default".
      use_dynamic_shape: True: each engine holds optimization profiles and serves every
        input shape inside them (build() collects the shapes that form them); False
        (default): an engine per input shape.
      dynamic_shape_profile_strategy: how build() forms the profiles, one of
        supported_profile_strategies() (default "Range": one profile from the smallest to
        the largest shape seen); see tftrt/profiles.py.
      max_workspace_size_bytes, precision_mode, minimum_segment_size, maximum_cached_engines,
      use_calibration, allow_build_at_runtime: the TrtConversionParams fields.
      conversion_params: a TrtConversionParams (deprecated in TF-TRT, still honoured).
    """

    def __init__(self, input_saved_model_dir=None, input_saved_model_tags=None,
                 input_saved_model_signature_key=None, use_dynamic_shape=None,
                 dynamic_shape_profile_strategy=None,
                 max_workspace_size_bytes=DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES,
                 precision_mode=TrtPrecisionMode.FP32, minimum_segment_size=3,
                 maximum_cached_engines=1, use_calibration=True, allow_build_at_runtime=True,
                 conversion_params=None):
        import tensorflow as tf
        from tftrt.activation import activate
        activate()  # engines share the GPU with TF; TF1 GraphDefs bind engines
        if not tf.executing_eagerly():
            raise RuntimeError("TrtGraphConverterV2 requires eager execution (TF2 behaviour); "
                               "use TrtGraphConverter for TF1 graphs")
        if conversion_params is not None:  # TF-TRT's deprecated_args said so
            log.warning("conversion_params is deprecated: use individual converter "
                        "parameters instead (precision_mode=..., minimum_segment_size=..., "
                        "...); it is still honoured and takes precedence over them")
        if conversion_params is None:
            conversion_params = TrtConversionParams(
                max_workspace_size_bytes=max_workspace_size_bytes,
                precision_mode=precision_mode, minimum_segment_size=minimum_segment_size,
                maximum_cached_engines=maximum_cached_engines, use_calibration=use_calibration,
                allow_build_at_runtime=allow_build_at_runtime)
        self._conversion_params = _check_conversion_params(conversion_params)
        if input_saved_model_dir is None:
            raise ValueError("input_saved_model_dir is None: give the directory of the "
                             "SavedModel to convert")
        self._input_saved_model_dir = graph_io.check_saved_model_dir(input_saved_model_dir)
        self._input_saved_model_tags = graph_io.saved_model_tags(input_saved_model_tags)
        self._input_saved_model_signature_key = (input_saved_model_signature_key
                                                 or graph_io.DEFAULT_SIGNATURE_KEY)
        self._use_dynamic_shape = use_dynamic_shape is not None and \
            as_flag(use_dynamic_shape, "use_dynamic_shape")  # None: TF-TRT's default, off
        self._profile_strategy = _check_profile_strategy(dynamic_shape_profile_strategy,
                                                         self._use_dynamic_shape)
        self._need_calibration = (self._conversion_params.precision_mode in ("INT8", "FP8")
                                  and self._conversion_params.use_calibration)
        self._converted = False
        self._build_called_once = False
        self._build_seconds: Dict[str, float] = {}  # where build() took its time
        self._nondeterministic = None  # (signature, compare.nondeterministic_ops of it)
        self._calibrated = False
        self._sig = None
        self._segmentation: Optional[SegmentationResult] = None
        self._engine_ops: Dict[str, TRTEngineOp] = {}
        self._native_fdefs = {}
        self._converted_func = None
        self._keepalive: list = []
        self._build_check: Optional[dict] = None  # build()'s engines-vs-native check
        self._exclusive = OneAtATime()  # convert() and build()

    # --- convert -----------------------------------------------------------------------------
    def convert(self, calibration_input_fn: Optional[Callable] = None, *,
                calibration_method: Optional[str] = None):
        """Converts the signature; returns the converted ConcreteFunction, callable at once.

        Args:
          calibration_input_fn: a generator of inputs for INT8 / FP8 calibration (with
            use_calibration=True only), yielding what build()'s input_fn yields.
          calibration_method: tftrt's option: "entropy" (TensorRT's default for INT8),
            "max" (the default for FP8) or "percentile[:p]" (default 99.99); env
            TFTRT_CALIBRATION_METHOD sets it too. See tftrt/calibration.py.
        """
        with self._exclusive("convert"):
            return self._convert(calibration_input_fn, calibration_method)

    def _convert(self, calibration_input_fn: Optional[Callable],
                 calibration_method: Optional[str]):
        if self._converted:
            raise RuntimeError("convert() was already called on this converter")
        mode = self._conversion_params.precision_mode
        if self._need_calibration and calibration_input_fn is None:
            raise ValueError(f"Should specify calibration_input_fn because {mode} calibration "
                             f"is needed")
        if not self._need_calibration and calibration_input_fn is not None:
            # TF-TRT's words (INT8 for every precision that does not calibrate), FP8's own
            raise ValueError(f"Should not specify calibration_input_fn because "
                             f"{'FP8' if mode == 'FP8' else 'INT8'} calibration is not needed")
        if not self._need_calibration and calibration_method is not None:
            raise ValueError(f"calibration_method={calibration_method!r} is for INT8 / FP8 "
                             f"calibration (precision_mode INT8 or FP8 with "
                             f"use_calibration=True); leave it out for {mode}")
        if calibration_input_fn is not None:
            _check_input_fn(calibration_input_fn, "calibration_input_fn")
        from tftrt import calibration
        calibration.check_device(mode)
        with progress.task("converting") as shown:
            shown.set("loading and freezing the signature")
            self._sig = graph_io.signature_graph(self._input_saved_model_dir,
                                                 self._input_saved_model_tags,
                                                 self._input_saved_model_signature_key)
            shown.set("segmenting, lowering, rewriting")
            self._converted_func = self._convert_graph(self._sig)
        if calibration_input_fn is not None:
            # As TF-TRT: the converter counts as converted only once calibration succeeded,
            # so after bad calibration data convert() can be called again with good data.
            with progress.task("calibrating"):
                calibration.calibrate_v2(self, calibration_input_fn, calibration_method)
            self._calibrated = True
        self._converted = True
        self._log_unconverted()
        return self._converted_func

    def _convert_graph(self, sig):
        from tftrt import conversion
        result = conversion.convert_graph(sig.info, self._conversion_params)
        for op in result.engine_ops.values():
            op.spec.use_dynamic_shape = self._use_dynamic_shape
            op.spec.profile_strategy = self._profile_strategy
        self._segmentation = result.segmentation
        self._engine_ops = result.engine_ops
        self._native_fdefs = result.native_fdefs
        self._keepalive = result.keepalive
        func = conversion.make_signature_function(sig, result)
        sig.info.drop_const_cache()
        return func

    # --- build -------------------------------------------------------------------------------
    def build(self, input_fn: Callable):
        """Builds engines for the input shapes ``input_fn`` yields.

        Without use_dynamic_shape, one engine per distinct input shape. With it, as TF-TRT:
        every input first runs natively while each engine op collects its input shapes, then
        each op builds one engine holding the optimization profiles those shapes form (the
        converter's dynamic_shape_profile_strategy), and the first input runs once more
        through the engines. Where every engine input is a signature input and the model is
        stateless, the shapes are read from the inputs instead of running the model natively
        (the same profiles, without TF's first calls at each shape).

        Args:
          input_fn: a generator yielding one input each step: an array, a tuple/list in the
            signature's input order, or a dict keyed by input name.
        """
        with self._exclusive("build"):
            self._build(input_fn)

    def _build(self, input_fn: Callable) -> None:
        if not self._converted:
            raise RuntimeError("Need to call convert() before build()")
        if input_fn is None:
            raise RuntimeError("input_fn is None. Method build() needs input_fn to be "
                               "specified in order to build TensorRT engines")
        _check_input_fn(input_fn, "input_fn")
        if self._build_called_once:
            raise NotImplementedError("build() is already called. It is not supported to call "
                                      "build() more than once.")
        self._build_called_once = True
        try:
            self._build_impl(input_fn)
        except BaseException:
            # build() that raised (bad input, input_fn failing) may be called again: engines
            # built so far stay in the caches.
            self._build_called_once = False
            raise

    def _build_impl(self, input_fn: Callable) -> None:
        ops = list(self._engine_ops.values())
        seen, first, first_at = 0, None, 0
        # (outputs of the checked input through the engines, engine calls): the first input
        # whose outputs have elements, else the first (helper hunt, 2026-12-01: an empty
        # first input made the check compare nothing although later ones had elements)
        first_out = None
        first_empty = True
        reference = None  # the check's native call, started beside the ladder (_reference)

        def engine_calls():
            return sum(op.stats["engine"] for op in ops)

        def natives():  # native runs per engine op (which ran natively in the checked call)
            return {op.name: op.stats["native"] for op in ops}

        def ran_natively(before_native):
            return sorted(n for n, k in natives().items() if k > before_native[n])

        evictions = {op.name: op.stats["build_evictions"] for op in ops}
        # build()'s own calls: from this thread where the converted function is the eager
        # pipeline (rewrite.DirectSignature runs engines in the caller's thread); in graph
        # form (TFTRT_DIRECT_CALL=0, no pipeline plan) from TensorFlow's threads, where whose
        # call it is cannot be told. Taking TF's threads as build()'s always, a tf.function
        # serving the model from another thread built engines with runtime builds off and
        # evicted build()'s (helper hunt, s48).
        from tftrt.rewrite import DirectSignature
        graph_form = not isinstance(self._converted_func, DirectSignature)
        for op in ops:
            op.build_keys = set()
            op.building, op.builder_thread = True, threading.get_ident()
            op.build_in_graph = graph_form
            op.collecting = self._use_dynamic_shape
        shown = progress.task("building engines", poll=progress.engines_built(ops)).start()
        # where build()'s time goes (seconds): running the inputs (natively while dynamic-
        # shape ops collect their shapes, else through the engines they build), the
        # optimization profiles' engines, the first input again, the check against native TF
        times = self._build_seconds = {}
        t0 = time.perf_counter()
        direct = self._inputs_of_engines(ops)
        for op in ops:
            op.collect_calls = direct is None
        names = self._sig.input_names
        checked: Dict[tuple, bool] = {}  # (op, input shapes): shapes_fit's answer
        try:
            for inp in iter_inputs(input_fn, "input_fn"):
                args = self._normalize_inputs(inp)
                shown.set(f"input {seen + 1}")
                if direct is not None:  # the shapes without running the model natively
                    fits = True
                    for op, idx in direct:
                        key = tuple(tuple(int(d) for d in args[names[i]].shape) for i in idx)
                        if (op.name, key) not in checked:
                            checked[(op.name, key)] = op.shapes_fit(key)
                        fits = fits and checked[(op.name, key)]
                    if not fits:
                        # shapes the engine network refuses (two inputs' batches 8 and 5):
                        # the input runs natively, and TF raises for it as TF-TRT's build()
                        # did. Unchecked, its impossible profile failed to build and every
                        # later call ran natively (helper hunt, 2026-12-03).
                        self._converted_func(**args)
                    for op, idx in direct:
                        op.collect(tuple(tuple(int(d) for d in args[names[i]].shape)
                                         for i in idx))
                    if first is None or (first_empty and _has_elements(args)):
                        first, first_at = args, seen  # its outputs: "first input again"
                    first_empty = first_empty and not _has_elements(args)
                    seen += 1
                    continue
                before, before_native = engine_calls(), natives()
                out = self._converted_func(**args)
                if first_empty:  # what _check_build calls empty: no input or no output has
                    full = _has_elements(args) and _has_elements(out)  # elements
                    if first is None or full:
                        first, first_at = args, seen
                        first_out = (out, engine_calls() - before, ran_natively(before_native))
                    first_empty = not full
                seen += 1
            times["inputs"] = time.perf_counter() - t0
            if self._use_dynamic_shape:
                for op in ops:
                    op.collecting = False
                reference = self._reference(first)
                t0 = time.perf_counter()
                for k, op in enumerate(ops):
                    shown.set(f"optimization profiles of {op.name}")
                    op.build_profiles(after_tuning=reference.start if k == len(ops) - 1 and
                                      reference is not None else None)
                times["profiles"] = time.perf_counter() - t0
                if first is not None:
                    t0 = time.perf_counter()
                    before, before_native = engine_calls(), natives()
                    first_out = (self._converted_func(**first), engine_calls() - before,
                                 ran_natively(before_native))
                    times["first input again"] = time.perf_counter() - t0
        finally:
            # the ops' state first: a KeyboardInterrupt while the native reference is waited
            # for skipped it, and every engine op stayed "building" for good -- a tf.function
            # call from any thread built engines with runtime builds off (helper hunt, s48)
            for op in ops:
                op.building, op.builder_thread, op.build_in_graph = False, None, False
                op.collecting, op.collect_calls = False, True
                op.collected = []
            shown.close()
            if reference is not None:
                reference.wait()
        if seen == 0:
            raise ValueError("input_fn yielded no inputs: it must yield at least one batch")
        if env_bool("TFTRT_BUILD_CHECK", True):
            t0 = time.perf_counter()
            self._check_build(first, *first_out, index=first_at, reference=reference)
            times["check"] = time.perf_counter() - t0
        log.info("build() took %s", ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
        self._warn_build_evictions(ops, evictions)

    def _warn_build_evictions(self, ops, before: Dict[str, int]) -> None:
        """Warns when engines build() itself built were evicted before it returned: more
        input shapes than maximum_cached_engines keeps (TF2's default 1, as TF-TRT's), or
        another thread's calls at other shapes meanwhile. Said at INFO only, a `tftrt convert
        --batch-sizes 1,8` saved the batch-8 engine alone and batch 1 ran natively after
        loading (helper hunt, 2026-12-04). Only build()'s own engines count (an engine a call
        made before build(), or another thread's, is not build()'s: a later hunt found it
        blamed), and use_dynamic_shape is advised only to converters without it."""
        for op in ops:
            n = op.stats["build_evictions"] - before.get(op.name, 0)
            if n <= 0:
                continue
            then = ("build again at their first call" if op.spec.allow_build_at_runtime else
                    "run natively (allow_build_at_runtime=False)")
            advice = "Raise maximum_cached_engines" + (
                "" if self._use_dynamic_shape else
                ", or use use_dynamic_shape=True (one engine for a range of shapes)")
            log.warning("%s: %d engine(s) build() built were evicted before it returned "
                        "(maximum_cached_engines=%d); the engines kept are for %s. The "
                        "evicted shapes will %s. %s.", op.name, n, op.cache.capacity,
                        "; ".join(str([list(s) for s in k]) for k in op.cache.keys()), then,
                        advice)

    def _reference(self, args) -> Optional["_NativeReference"]:
        """The check's native call on ``args``, to start once the profile engines' tactics are
        timed (ProfileEngine.build_profiles' after_tuning), so that TensorFlow's first call
        (its function instantiation, cuDNN autotuning: 1.1-1.7 s for ResNet50 on the H200,
        2026-12-02, probe_native_first_call.py) runs beside the rest of the ladder instead of
        after it. None where the check will not call TF: turned off, no input, a signature
        with random or stateful ops (see _check_build), or not known to be free of them."""
        if args is None or not env_bool("TFTRT_BUILD_CHECK", True):
            return None
        try:
            random, stateful = self._nondeterministic_ops()
        except Exception:  # noqa: BLE001 -- the check says why, without an early call
            return None
        if random or stateful:
            return None
        return _NativeReference(self._native_call, args)

    def _nondeterministic_ops(self):
        """compare.nondeterministic_ops of the signature's graph, read once per conversion
        (build() asks twice: for its shapes and for its check)."""
        if self._nondeterministic is None or self._nondeterministic[0] is not self._sig:
            from tftrt import compare
            self._nondeterministic = (self._sig, compare.nondeterministic_ops(
                self._sig.info.graph_def))
        return self._nondeterministic[1]

    def _inputs_of_engines(self, ops):
        """[(op, signature input index of each of its inputs)] when build() may take the
        dynamic-shape engine ops' input shapes from its inputs alone, without running the
        model natively (TF-TRT's profile collection): every engine input is a signature
        input, and the signature has no random or other stateful op (whose state a native
        run would move on). Else None: the inputs run natively while the ops collect. The
        native runs were about half of a warm profile build through TensorFlow (ResNet50,
        H200, 2026-12-02: TF's first calls at each batch size in a fresh process)."""
        if not self._use_dynamic_shape or not ops:
            return None
        pos = {t: i for i, t in enumerate(self._sig.info.inputs)}
        direct = [(op, [pos.get(t) for t in op.spec.input_tensors]) for op in ops]
        if any(i is None for _, idx in direct for i in idx):
            return None
        try:
            random, stateful = self._nondeterministic_ops()
        except Exception:  # noqa: BLE001 -- not known to be stateless: collect natively
            return None
        return None if random or stateful else direct

    def _check_build(self, args, outputs, engine_calls: int, native_ops=(), index: int = 0,
                     reference: Optional["_NativeReference"] = None) -> None:
        """Compares ``outputs`` (the first build input through the engines, ``engine_calls``
        engine runs) with the input model's own signature on that input (run natively by TF)
        and keeps the largest relative error per output for summary(); warns once when it is
        past compare.BUILD_CHECK_WARN for the precision (TFTRT_BUILD_CHECK=0 skips the native
        call).

        The check is advice, never a reason to fail a build that worked without it: whatever
        it raises is logged and kept as ``skipped``. It does not compare a signature with
        random ops (two calls draw different numbers: an error would blame the engines for
        it) and does not call one with other stateful ops (a py_function, a print) once more,
        since that call would act where the user can see it. ``reference``: that native
        call, started earlier on a thread of its own (its result is awaited here)."""
        from tftrt import compare
        precision = self._conversion_params.precision_mode
        # the engines' own precision: INT8 / FP8 without ranges fell back to FP16, and the
        # check then named INT8 and held them to INT8's looser bar
        modes = {op.spec.precision_mode for op in self._engine_ops.values()}
        if len(modes) == 1:
            precision = modes.pop()
        if precision in ("INT8", "FP8") and not self._quantized_layers_built():
            precision = "FP16"  # timed precision kept the FP16 engines: INT8's bar hid errors
        check = {"precision": precision, "engine_calls": engine_calls, "input": index,
                 "native_ops": list(native_ops)}
        try:
            random, stateful = self._nondeterministic_ops()
            if random:
                self._build_check = dict(check, skipped=(
                    f"the signature draws random numbers ({', '.join(random)}): it is "
                    f"nondeterministic, so engines and native TF cannot give the same answers"))
                return
            if stateful:
                self._build_check = dict(check, skipped=(
                    f"the signature has stateful ops ({', '.join(stateful)}): calling it once "
                    f"more natively could act where you see it"))
                return
            ops = list(self._engine_ops.values())
            got = compare._flatten(outputs)
            ref = compare._flatten(reference.result() if reference is not None
                                   else self._native_call(args))
            errors = compare.output_errors(got, ref)
            bar = compare.BUILD_CHECK_WARN.get(precision, compare.BUILD_CHECK_WARN["FP16"])
            worst = max(errors.values(), default=0.0)
            # An empty batch (every input, or every output, without elements) compares
            # nothing: a zero error then proves nothing. One empty side input next to a full
            # one still compares.
            empty = all(int(v.shape.num_elements() or 0) == 0 for v in args.values()) or \
                all(compare._to_numpy(v).size == 0 for v in ref.values())
            name = max(errors, key=errors.get) if errors else None
            # A string / integer / bool output's error is the fraction of its elements that
            # differ (a float's rounding changes most of a float-formatting string's).
            exact = name is not None and not compare.is_float_output(ref[name])
            self._build_check = dict(check, errors=errors, worst=worst, bar=bar, empty=empty,
                                     worst_output=name, exact=exact)
        except Exception as e:  # noqa: BLE001 -- advice only: the build stands
            why = f"the check could not run ({type(e).__name__}: {first_error_line(e)})"
            self._build_check = dict(check, skipped=why)
            log.warning("build()'s check of the engines against native TF on the first build "
                        "input could not run (%s: %s); the build goes on unchecked",
                        type(e).__name__, first_error_line(e))
            return
        if ops and worst > bar:
            how = ("in %.1e of its elements" if exact else "by %.1e of its largest value") % worst
            fix = {"FP32": exact_output_advice(name) if exact else fp32_advice(resolve_backend()),
                   "FP16": "Convert with precision_mode='FP32' if that matters"}.get(
                       precision, "Convert with precision_mode='FP16' or 'FP32' if that "
                                  "matters")
            from tftrt.summary import checked_input
            log.warning(
                "the %s engines change output %r %s on %s (against the model's own signature "
                "run natively by TF; the bar for %s is %.0e). %s; `tftrt compare DIR "
                "--per-layer` on the saved model shows where it starts",
                precision, name, how, checked_input(index), precision, bar, fix)

    def _quantized_layers_built(self) -> bool:
        """Whether an engine built so far runs a quantized (INT8 / FP8) layer; True where
        none can be inspected (the quantized precision's bar stands)."""
        seen = False
        for op in self._engine_ops.values():
            for _, engine in op.cache.items():
                try:
                    layers = engine.network.layers
                except Exception:  # noqa: BLE001 -- a profile with no engine built yet
                    continue
                seen = True
                if any("quant" in layer.attrs for layer in layers):
                    return True
        return not seen

    def _native_call(self, args):
        """The input model's own signature on ``args`` (native TF). The signature function
        convert() loaded may no longer run once convert() is done (seen: its while-loop body
        functions gone from the runtime, "Op type not registered '__inference_while_cond_..'");
        then the input SavedModel is loaded again for this one call."""
        import tensorflow as tf
        try:
            return self._sig.func(**args)
        except tf.errors.InvalidArgumentError:
            raise  # the input's own fault: another load of the model says the same
        except tf.errors.OpError as first:
            log.debug("the loaded signature did not run again (%s); loading %s once more",
                      first_error_line(first), self._input_saved_model_dir)
            model = tf.saved_model.load(self._input_saved_model_dir,
                                        self._input_saved_model_tags)
            return model.signatures[self._input_saved_model_signature_key](**args)

    def _call_with(self, inp):
        args = self._normalize_inputs(inp)
        return self._converted_func(**args)

    def _normalize_inputs(self, inp) -> Dict[str, object]:
        import tensorflow as tf
        from tftrt.rewrite import keyword_aliases, with_keywords
        names = self._sig.input_names
        specs = [t for t in self._sig.frozen_func.inputs]
        if isinstance(inp, dict):  # (a TF1 signature's keys as native TF takes them too)
            inp = with_keywords(inp, keyword_aliases(
                self._sig.func.structured_input_signature, names))
            missing = [n for n in names if n not in inp]
            extra = [k for k in inp if k not in names]
            if missing or extra:
                raise ValueError(f"input_fn yielded a dict with keys {sorted(inp)}; the "
                                 f"signature's inputs are {names}")
            values = [inp[n] for n in names]
        else:
            values = list(inp) if isinstance(inp, (list, tuple)) else [inp]
            if len(values) != len(names):
                hint = (" (a list or tuple gives one item per input: yield a numpy array or "
                        "a tf.Tensor, or a 1-tuple holding it)" if len(names) == 1 else "")
                raise ValueError(f"input_fn yielded {len(values)} input(s); the signature "
                                 f"takes {len(names)}: {names}{hint}")
        out = {}
        for n, v, spec in zip(names, values, specs):
            try:
                t = tf.convert_to_tensor(v)
            except (TypeError, ValueError) as e:
                raise ValueError(f"input {n!r} from input_fn is a {type(v).__name__} that "
                                 f"cannot be made a tensor ({first_error_line(e)}); the "
                                 f"signature expects {spec.dtype.name} {spec.shape}") from None
            if t.dtype != spec.dtype:
                raise ValueError(f"input {n!r} from input_fn has dtype {t.dtype.name}; the "
                                 f"signature expects {spec.dtype.name}")
            if not spec.shape.is_compatible_with(t.shape):
                raise ValueError(f"input {n!r} from input_fn has shape {t.shape}; the "
                                 f"signature expects {spec.shape}")
            out[n] = t
        return out

    # --- save --------------------------------------------------------------------------------
    def save(self, output_saved_model_dir, save_gpu_specific_engines=True, options=None):
        """Saves the converted model as a SavedModel that plain TensorFlow can load.

        Built engines are written as plans next to the segment networks (assets/tftrt/) and
        restored by ``tftrt.load`` without rebuilding; with save_gpu_specific_engines=False
        only the networks are written and engines rebuild at run time.
        """
        if not self._converted:
            raise RuntimeError("Need to call convert() before save()")
        save_gpu_specific_engines = as_flag(save_gpu_specific_engines,
                                            "save_gpu_specific_engines")
        if output_saved_model_dir is None or \
                not isinstance(output_saved_model_dir, (str, bytes, os.PathLike)):
            raise ValueError(f"output_saved_model_dir must be the path of the directory to "
                             f"save to, not {output_saved_model_dir!r}")
        if options is not None:
            import tensorflow as tf
            if not isinstance(options, tf.saved_model.SaveOptions):
                raise TypeError(f"options must be a tf.saved_model.SaveOptions, not a "
                                f"{type(options).__name__}")
        if self._need_calibration and not self._calibrated:
            raise RuntimeError("A model that requires INT8 calibration has to be built before "
                               "saving it. Call build() to build and calibrate the TensorRT "
                               "engines.")
        if not save_gpu_specific_engines and self._engine_ops and \
                not self._conversion_params.allow_build_at_runtime:
            log.warning("save(save_gpu_specific_engines=False) with allow_build_at_runtime="
                        "False: the saved model has no engine and may build none, so every "
                        "call runs its native segments. Save the engines, or allow building "
                        "at run time.")
        from tftrt import saving
        saving.save(self, os.fsdecode(output_saved_model_dir), save_gpu_specific_engines,
                    options)

    # --- summary -----------------------------------------------------------------------------
    def summary(self, line_length=160, detailed=True, print_fn=None):
        """Prints one row per TRTEngineOp, the op histogram of each, then the totals."""
        if not self._converted:
            raise RuntimeError("An instance of TrtGraphConverterV2 needs to be converted before "
                               "calling summary(). Call convert() first")
        if isinstance(line_length, float) and line_length.is_integer():
            line_length = int(line_length)  # 160.0 was refused with "Minimum: 160" (hunt)
        if not is_int(line_length):
            raise ValueError(f"Invalid `line_length` value has been received: {line_length!r}. "
                             f"Minimum: 160. Give a whole number of characters (an int).")
        if line_length < 160:
            raise ValueError(f"Invalid `line_length` value has been received: {line_length!r}. "
                             f"Minimum: 160.")
        if print_fn is not None and not callable(print_fn):
            raise TypeError(f"print_fn must be a callable taking a string (e.g. print), not "
                            f"a {type(print_fn).__name__}")
        from tftrt import summary as summary_mod
        summary_mod.print_summary(self._sig.info, self._segmentation, self._engine_ops,
                                  line_length, detailed, print_fn or print, self._build_check)

    # --- helpers -----------------------------------------------------------------------------
    def _log_unconverted(self):
        from tftrt import summary as summary_mod
        summary_mod.log_unconverted(self._sig.info, self._segmentation)

    @property
    def engine_ops(self) -> Dict[str, TRTEngineOp]:
        return dict(self._engine_ops)

    @property
    def segmentation(self) -> Optional[SegmentationResult]:
        return self._segmentation

    @property
    def graph_info(self):
        return self._sig.info if self._sig else None
