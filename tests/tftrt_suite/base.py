"""Harness for the port of TF-TRT's own integration tests (tensorflow/python/compiler/tensorrt/test).

TF-TRT's ``TfTrtIntegrationTestBase`` declares a test as ``GraphFn`` + input shapes + the engines
expected to be built. A ``Case`` says the same here; ``run_v2`` reproduces what the base class did
for TF2: save ``GraphFn`` as a SavedModel whose inputs have an unknown batch dimension (TF-TRT's
``BuildParams``), convert it with ``TrtGraphConverterV2`` (minimum_segment_size=2, one cached
engine, 32 MiB workspace, as TF-TRT's ``GetConversionParams``), run the original and the
converted signature on the same seeded inputs and compare every output.

What is asserted, beyond the numerics:
  * the engine names, normalised to ``TRTEngineOp_000_NNN`` (TF-TRT's older tests say
    ``TRTEngineOp_0``, newer ``TRTEngineOp_000``);
  * where TF-TRT listed the nodes of each engine, the node sets: a segment's nodes plus the Const
    nodes it owns (a Const shared with anything else is copied, not moved, and TF-TRT's lists
    leave it out too), by their names inside the signature function. Engine numbering follows our
    segmenter's order, so node sets are compared as a collection, not name by name (see
    docs/differences.md, "TF-TRT's own tests: where results differ");
  * that every engine ran (``op.stats["engine"]``) and none fell back to its native segment.

``run_v2_dynamic`` is TF-TRT's dynamic-shape run (``use_dynamic_shape=True``): build() with
every input of the case, so each engine op builds ONE engine holding the optimization profiles
the strategy forms (TF-TRT's base class used ImplicitBatchModeCompatible), then save, load and
run every input: each op holds that one engine, builds nothing more, never runs natively.

TF-TRT's ``trt_incompatible_op`` was ``erfc`` and ``trt_incompatible_binary_op`` ``igamma``;
tftrt converts Erfc, so ``incompatible`` here is ``lgamma`` (no converter, a TF CPU kernel).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tests.tolerances import TOLERANCES
from tftrt import graph_io, trt_convert as trt

Shapes = List[List[int]]
Expected = Union[Sequence[str], Dict[str, Sequence[str]]]


def incompatible(x, name=None):
    """A unary op no converter accepts: splits segments as TF-TRT's ``erfc`` did."""
    return tf.math.lgamma(x, name=name)


def incompatible_binary(x, y, name=None):
    """A binary op no converter accepts (TF-TRT's ``igamma``)."""
    return tf.math.igamma(x, y, name=name)


def const(shape, dtype=tf.float32, name=None, rng=None):
    """A random constant (TF-TRT's ``_ConstOp``), seeded by the caller's ``rng``."""
    rng = rng or np.random
    return tf.constant(rng.standard_normal(shape), dtype=dtype, name=name)


@dataclasses.dataclass
class Case:
    """One TF-TRT integration test.

    Args:
      graph_fn: builds the graph from the input tensors; returns a tensor or a list of them.
      input_shapes: static shapes of the first run (TF-TRT's ``input_dims[0]``).
      expected: engine names, or engine name -> node names, as TF-TRT's
        ``ExpectedEnginesToBuild`` (dynamic engine, V2).
      output_shapes: expected output shapes of the first run.
      dtype: input dtype.
      input_masks: per input, True where the dimension is known (default: all but the batch).
      extra_inputs / extra_outputs: more runs with other shapes (TF-TRT's ``BuildParamsWithMask``).
      conversion: TrtGraphConverterV2 keyword arguments replacing the defaults.
      rtol / atol: tolerances (default tests/tolerances.py for the precision).
      grappler: False where TF-TRT's test disabled Grappler's other optimizers
        (``DisableNonTrtOptimizers`` / ``OptimizerDisabledRewriterConfig``): constant folding
        and the arithmetic optimizer then do not rename or rewrite the nodes it lists.
      reference_fn: the same computation written with NHWC kernels, for graphs whose NCHW
        Conv2D / MaxPool TensorFlow's CPU kernels lack without oneDNN (inputs are the same).
    """

    graph_fn: Callable
    input_shapes: Shapes
    expected: Expected
    output_shapes: Optional[Shapes] = None
    dtype: tf.DType = tf.float32
    input_masks: Optional[List[List[bool]]] = None
    extra_inputs: List[Shapes] = dataclasses.field(default_factory=list)
    extra_outputs: List[Shapes] = dataclasses.field(default_factory=list)
    conversion: Dict = dataclasses.field(default_factory=dict)
    rtol: Optional[float] = None
    atol: Optional[float] = None
    grappler: bool = True
    reference_fn: Optional[Callable] = None

    def input_specs(self) -> List[tf.TensorSpec]:
        masks = self.input_masks or [[False] + [True] * (len(s) - 1) for s in self.input_shapes]
        return [tf.TensorSpec([d if m else None for d, m in zip(s, mask)], self.dtype,
                              name=f"input_{i}")
                for i, (s, mask) in enumerate(zip(self.input_shapes, masks))]

    def all_input_shapes(self) -> List[Shapes]:
        return [self.input_shapes] + list(self.extra_inputs)

    def all_output_shapes(self) -> Optional[List[Shapes]]:
        if self.output_shapes is None:
            return None
        return [self.output_shapes] + list(self.extra_outputs)


def save_case(case: Case, path: str) -> str:
    """Saves ``case.graph_fn`` as a SavedModel with a serving_default signature."""
    root = tf.Module()
    root.run = tf.function(case.graph_fn, input_signature=case.input_specs())
    tf.saved_model.save(root, path, signatures={"serving_default": root.run})
    return path


def make_inputs(case: Case) -> List[List[np.ndarray]]:
    """Seeded inputs for every run, as TF-TRT's RunTest: uniform [0, 1), x10 for integers."""
    rng = np.random.RandomState(12345)
    runs = []
    for shapes in case.all_input_shapes():
        run = []
        for spec, shape in zip(case.input_specs(), shapes):
            np_dtype = spec.dtype.as_numpy_dtype
            if spec.dtype == tf.bool:
                run.append(rng.random_sample(shape) > 0.5)
                continue
            scale = 10.0 if np.issubdtype(np_dtype, np.integer) else 1.0
            run.append((scale * rng.random_sample(shape)).astype(np_dtype))
        runs.append(run)
    return runs


def conversion_params(case: Case) -> Dict:
    params = dict(max_workspace_size_bytes=1 << 25, precision_mode="FP32",
                  minimum_segment_size=2, maximum_cached_engines=1)
    params.update(case.conversion)
    return params


@contextlib.contextmanager
def grappler_optimizers(enabled: bool):
    """With ``enabled=False`` conversion runs only Grappler's debug_stripper (TF-TRT's tests
    that disable the non-TensorRT optimizers); function inlining still happens."""
    if enabled:
        yield
        return
    saved = graph_io.run_grappler_passes
    graph_io.run_grappler_passes = functools.partial(saved, optimizers=("debug_stripper",))
    try:
        yield
    finally:
        graph_io.run_grappler_passes = saved


def needs_calibration(case: Case) -> bool:
    params = conversion_params(case)
    return str(params["precision_mode"]).upper() in ("INT8", "FP8") and \
        params.get("use_calibration", True)


def convert_v2(case: Case, saved_dir: str):
    """Returns (converter, converted function). INT8 with calibration calibrates on the case's
    own inputs, as TF-TRT's base class did."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=saved_dir, **conversion_params(case))
    calibration = None
    if needs_calibration(case):
        runs = make_inputs(case)
        calibration = lambda: iter([list(r) for r in runs])  # noqa: E731
    with grappler_optimizers(case.grappler):
        fn = conv.convert(calibration_input_fn=calibration)
    return conv, fn


def engine_name(name: str) -> str:
    """TRTEngineOp_0 / TRTEngineOp_000 / TRTEngineOp_000_000 -> TRTEngineOp_000_NNN."""
    m = re.fullmatch(r"TRTEngineOp_(\d+)(?:_(\d+))?", name)
    assert m, f"not an engine name: {name}"
    seg = m.group(2) if m.group(2) is not None else m.group(1)
    return f"TRTEngineOp_000_{int(seg):03d}"


def canonical(node_name: str) -> str:
    """The node's name inside the signature function (the inlined call's prefix removed)."""
    return re.sub(r"^(Stateful)?PartitionedCall/", "", node_name)


def engine_node_sets(conv) -> Dict[str, frozenset]:
    """engine name -> the last name components of its nodes and the Const nodes it owns.

    The Identity nodes function inlining adds at a function's boundary (``Func/...``) are not
    in TF-TRT's lists (its V1 graphs had no function call) and are left out."""
    seg = conv.segmentation
    return {s.name: frozenset(canonical(n) for n in s.nodes + s.consts
                              if not n.startswith("Func/")) for s in seg.segments}


def assert_engines(conv, expected: Expected) -> None:
    got = engine_node_sets(conv)
    names = sorted(engine_name(n) for n in expected)
    assert sorted(got) == names, f"engines {sorted(got)}, TF-TRT expects {names}"
    assert sorted(conv.engine_ops) == names
    if isinstance(expected, dict):
        # TF-TRT's V2 check: a listed node is inside an engine or gone from the graph (Grappler
        # pruned it, e.g. an Identity); here it must also be in the engine TF-TRT lists it in.
        # Identity nodes TF-TRT does not list (Grappler pruned them in its graphs) are ignored.
        info = conv.graph_info
        present = {canonical(n) for n in info.nodes}
        listed = {n for v in expected.values() for n in v}
        identities = {canonical(n) for n in info.nodes if info.nodes[n].op == "Identity"}
        want = sorted(sorted(n for n in v if n in present) for v in expected.values())
        have = sorted(sorted(n for n in v if n not in identities or n in listed)
                      for v in got.values())
        assert have == want, f"engine nodes {have}, TF-TRT expects {want}"


def run_signature(fn, case: Case, inputs: List[np.ndarray]) -> List[np.ndarray]:
    feed = {f"input_{i}": tf.constant(x) for i, x in enumerate(inputs)}
    out = fn(**feed)
    assert isinstance(out, dict)
    return [out[k].numpy() for k in sorted(out)]


def tolerances(case: Case, precision: str = "FP32"):
    rtol, atol = TOLERANCES[precision]
    return (case.rtol if case.rtol is not None else rtol,
            case.atol if case.atol is not None else atol)


def check_outputs(case: Case, got, ref, expected_shapes=None, precision="FP32") -> None:
    rtol, atol = tolerances(case, precision)
    assert len(got) == len(ref)
    for k, (g, r) in enumerate(zip(got, ref)):
        if expected_shapes is not None:
            assert list(g.shape) == list(expected_shapes[k]), f"output_{k} shape"
        assert g.dtype == r.dtype, f"output_{k}: dtype {g.dtype}, TF gives {r.dtype}"
        if r.dtype.kind in "fc":
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol, err_msg=f"output_{k}")
        else:
            np.testing.assert_array_equal(g, r, err_msg=f"output_{k}")


def run_v2(case: Case, saved_dir: str, check_engines_ran: bool = True):
    """TF-TRT's RunTest for V2: convert, compare with native TF on every input, check engines.

    Returns the converter (for further assertions).
    """
    native = native_fn(case, saved_dir)
    conv, fn = convert_v2(case, saved_dir)
    assert_engines(conv, case.expected)
    shapes = case.all_output_shapes()
    for k, inputs in enumerate(make_inputs(case)):
        ref = run_signature(native, case, inputs)
        for _ in range(2):  # TF-TRT ran every input twice: the second run hits the cache
            got = run_signature(fn, case, inputs)
            check_outputs(case, got, ref, shapes[k] if shapes else None,
                          case.conversion.get("precision_mode", "FP32"))
    if check_engines_ran:
        for name, op in conv.engine_ops.items():
            assert op.stats["engine"] >= 1, f"{name} never ran its engine: {dict(op.stats)}"
            assert op.stats["native"] == 0, f"{name} fell back: {dict(op.stats)}"
    return conv


def native_fn(case: Case, saved_dir: str):
    if case.reference_fn is None:
        return tf.saved_model.load(saved_dir).signatures["serving_default"]
    ref_fn = tf.function(case.reference_fn, input_signature=case.input_specs())

    def native(**feed):
        out = ref_fn(*[feed[f"input_{i}"] for i in range(len(feed))])
        out = out if isinstance(out, (list, tuple)) else [out]
        return {f"output_{k}": t for k, t in enumerate(out)}
    return native


def run_v2_dynamic(case: Case, saved_dir: str, out_dir: str,
                   strategy: str = "ImplicitBatchModeCompatible",
                   profiles: Optional[Dict[str, int]] = None):
    """TF-TRT's dynamic-shape run (see the module doc). ``profiles``: engine name -> the
    number of optimization profiles TF-TRT's strategy gives it. Returns (converter, the
    engine ops of the loaded model)."""
    import tftrt
    native = native_fn(case, saved_dir)
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=saved_dir, use_dynamic_shape=True,
                                   dynamic_shape_profile_strategy=strategy,
                                   **conversion_params(case))
    with grappler_optimizers(case.grappler):
        conv.convert()
    assert_engines(conv, case.expected)
    runs = make_inputs(case)
    conv.build(lambda: iter([list(run) for run in runs]))
    for name, op in conv.engine_ops.items():
        assert len(op.cache) == 1 and op.stats["builds"] == 1, f"{name}: {op.describe()}"
        assert op.stats["native"] == 0, f"{name} fell back: {dict(op.stats)}"
    if profiles is not None:
        got = {name: len(next(iter(op.cache.items()))[1].profiles)
               for name, op in conv.engine_ops.items()}
        assert got == {engine_name(k): v for k, v in profiles.items()}
    conv.save(out_dir)
    loaded = tftrt.load(out_dir)
    fn = loaded.signatures["serving_default"]
    shapes = case.all_output_shapes()
    for k, inputs in enumerate(runs):
        ref = run_signature(native, case, inputs)
        for _ in range(2):
            got = run_signature(fn, case, inputs)
            check_outputs(case, got, ref, shapes[k] if shapes else None,
                          case.conversion.get("precision_mode", "FP32"))
    ops = loaded.engine_ops
    for name, op in ops.items():
        assert op.stats["builds"] == 0 and op.stats["native"] == 0, f"{name}: {op.describe()}"
        assert op.stats["engine"] >= 1 and len(op.cache) == 1, f"{name}: {op.describe()}"
    return conv, ops


def saved(tmp_path_factory, case: Case, name: str) -> str:
    return save_case(case, str(tmp_path_factory.mktemp("tftrt_suite") / name))



def conv2d_nchw(x, w, strides=(1, 1), dilations=(1, 1), padding="SAME", reference=False,
                name=None):
    """Conv2D on an NCHW tensor; with ``reference`` through the NHWC kernel between transposes
    (TF's CPU kernels have no NCHW Conv2D without oneDNN)."""
    if not reference:
        return tf.nn.conv2d(x, w, strides=[1, 1, *strides], padding=padding,
                            dilations=[1, 1, *dilations], data_format="NCHW", name=name)
    y = tf.nn.conv2d(tf.transpose(x, [0, 2, 3, 1]), w, strides=[1, *strides, 1],
                     padding=padding, dilations=[1, *dilations, 1])
    return tf.transpose(y, [0, 3, 1, 2])


def max_pool_nchw(x, k, s, padding="VALID", reference=False, name=None):
    if not reference:
        return tf.nn.max_pool2d(x, [1, 1, k, k], [1, 1, s, s], padding, data_format="NCHW",
                                name=name)
    y = tf.nn.max_pool2d(tf.transpose(x, [0, 2, 3, 1]), k, s, padding)
    return tf.transpose(y, [0, 3, 1, 2])
