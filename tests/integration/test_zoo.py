"""The zoo (tftrt.zoo.ZOO) converts almost entirely and matches native TensorFlow (numpy backend).

Each model: weights=None, seeded, logits, random normalisation statistics, at the smallest input
size its architecture allows (the encoder and the ViT also at small widths), converted with
TrtGraphConverterV2's defaults (FP32). Every model carries the ``zoo`` marker; the smallest of
each family runs in the default suite, the rest also carry ``zoo_extra``, which the default
run deselects (setup.cfg's addopts; a command line ``-m`` replaces it):

    python -m pytest -m zoo tests/integration/test_zoo.py     # the whole zoo
"""

import numpy as np
import pytest
import tensorflow as tf

from tftrt import trt_convert as trt, zoo
from tests.integration import models
from tests.tolerances import MODEL_TOLERANCES

# The smallest member of each family: the default suite's share (~6.5 minutes of one test
# process on 2 cores, 2026-12-02).
CI = {
    "Xception", "VGG16", "ResNet50", "ResNet50V2", "InceptionV3", "MobileNet",
    "MobileNetV3Small", "DenseNet121", "NASNetMobile", "EfficientNetB0", "EfficientNetV2B0",
    "ConvNeXtTiny", "Encoder", "ViT", "UNet",
}

# name -> why it does not meet the bar yet (strict: a fix makes the test fail until removed).
XFAIL = {}

MIN_CONVERTED = 0.95
BATCH = 2


def _params():
    out = []
    for name in zoo.ZOO:
        marks = [pytest.mark.slow, pytest.mark.zoo]
        if name not in CI:
            marks.append(pytest.mark.zoo_extra)
        if name in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[name]))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def test_every_family_has_a_ci_member():
    fams = zoo.families()
    assert CI <= set(zoo.ZOO)
    missing = [f for f, names in fams.items() if not CI & set(names)]
    assert not missing, f"families without a model in the default suite: {missing}"


def test_efficientnet_v2_batch_norms_carry_their_inputs_statistics():
    """The EfficientNetV2 family's batch norms hold the mean and variance of their inputs on
    the seeded calibration batch (random statistics overflowed float16), its dropout and
    momenta are as Keras made them, and Keras' own mixed_float16 model stays finite and
    within the zoo's FP16 bar. Other families keep random statistics."""
    import keras
    size = 64
    model = zoo.build("EfficientNetV2B0", size)
    norms = [l for l in zoo._all_layers(model)
             if isinstance(l, keras.layers.BatchNormalization)]
    assert len(norms) > 50 and {l.momentum for l in norms} == {0.9}  # as Keras made them
    drops = [l for l in zoo._all_layers(model) if isinstance(l, keras.layers.Dropout)]
    assert drops and all(l.rate > 0 for l in drops)
    x = zoo.sample_input("EfficientNetV2B0", zoo.calibration_batch(size), size,
                         seed=zoo.CALIBRATION_SEED)
    assert x.shape[0] == 64  # 2 x 2 positions a side at the last stage: 64 images
    for bn in (norms[0], norms[len(norms) // 2], norms[-1]):
        seen = keras.Model(model.inputs, bn.input)(x, training=False).numpy()
        axes = tuple(range(seen.ndim - 1))
        np.testing.assert_allclose(bn.moving_mean.numpy(), seen.mean(axes), rtol=1e-3,
                                   atol=1e-4 * np.abs(seen).max())
        np.testing.assert_allclose(bn.moving_variance.numpy(), seen.var(axes), rtol=1e-3,
                                   atol=1e-6 * (seen ** 2).max())
    y = model(zoo.sample_input("EfficientNetV2B0", 2, size), training=False).numpy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = zoo.build("EfficientNetV2B0", size)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    half.set_weights(model.get_weights())
    y16 = np.asarray(half(zoo.sample_input("EfficientNetV2B0", 2, size), training=False),
                     np.float32)
    assert np.isfinite(y16).all()
    assert np.abs(y16 - y).max() <= 2e-2 * np.abs(y).max()
    # a family with random statistics: the first batch norm's mean is not its input's
    other = zoo.build("MobileNetV2", 32)
    bn = next(l for l in zoo._all_layers(other)
              if isinstance(l, keras.layers.BatchNormalization))
    seen = keras.Model(other.inputs, bn.input)(zoo.sample_input("MobileNetV2", 4, 32)).numpy()
    assert not np.allclose(bn.moving_mean.numpy(), seen.mean((0, 1, 2)), rtol=1e-2)


def test_the_largest_efficientnets_match_their_batch_norm_statistics():
    """EfficientNetB5-B7's random statistics overflowed float16 (B7's float32 logits 9.6e6 at
    600 px, NaN in Keras' mixed_float16; the zoo's rows had rel err 1.0 for tftrt and XLA
    alike): their batch norms get their inputs' statistics, as EfficientNetV2's; B4 keeps
    random ones."""
    import keras
    size = 64

    def first_norm_matches(name):
        model = zoo.build(name, size)
        bn = next(l for l in zoo._all_layers(model)
                  if isinstance(l, keras.layers.BatchNormalization))
        x = zoo.sample_input(name, zoo.calibration_batch(size), size,
                             seed=zoo.CALIBRATION_SEED)
        seen = keras.Model(model.inputs, bn.input)(x, training=False).numpy()
        return np.allclose(bn.moving_mean.numpy(), seen.mean((0, 1, 2)), rtol=1e-3,
                           atol=1e-4 * np.abs(seen).max())
    assert first_norm_matches("EfficientNetB5")
    assert not first_norm_matches("EfficientNetB4")


# The two samples' outputs differ by at least this share of the largest output: the
# comparison with native then checks what every layer does with the input.
MIN_SENSITIVITY = 0.05


def _native(model, x) -> np.ndarray:
    """Native FP32: the Keras model itself on TensorFlow's kernels (loading the SavedModel
    again for its signature costs as much as the conversion's own load)."""
    return np.asarray(model(tf.constant(x), training=False))


def _sensitivity(r) -> float:
    """How far the two samples' outputs ``r`` are apart, as a share of the largest."""
    r = r.astype(np.float64)
    return float(np.abs(r[0] - r[1]).max() / max(np.abs(r).max(), 1e-30))


NOISE_FACTOR = 20


def _float32_noise(model, x, r) -> float:
    """How far native's output ``r`` moves, as a share of its largest value, when the input
    moves by 1e-7 of itself (float32 rounding's size)."""
    jitter = 1 + 1e-7 * np.random.RandomState(0).standard_normal(x.shape)
    moved = _native(model, (x * jitter).astype(np.float32)).astype(np.float64)
    return float(np.abs(r - moved).max() / max(np.abs(r).max(), 1e-30))


@pytest.mark.parametrize("name", _params())
def test_zoo_model_converts_and_matches(name, tmp_path):
    entry = zoo.ZOO[name]
    size = entry.min_size
    model = zoo.build(name, size, small=True)
    x = zoo.sample_input(name, BATCH, size, small=True)
    r = _native(model, x)
    if _sensitivity(r) < MIN_SENSITIVITY:
        # seeded random batch-norm statistics left MobileNet's, MobileNetV3's and
        # EfficientNetB0's outputs nearly the same for any input (the two samples 1e-7 to
        # 2e-3 of the largest value apart: zoo hunt, s49), so an error in their early layers
        # could not show: their batch norms take their inputs' statistics here
        zoo.match_batchnorm_statistics(model, zoo.sample_input(
            name, zoo.calibration_batch(size), size, small=True, seed=zoo.CALIBRATION_SEED))
        r = _native(model, x)
    assert _sensitivity(r) >= MIN_SENSITIVITY, "the output ignores the input"
    path = models.save_keras(model, str(tmp_path / name))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=path)
    fn = conv.convert()
    frac = zoo.converted_fraction(conv)
    assert frac >= MIN_CONVERTED, (
        f"only {frac:.1%} of non-Const nodes are inside engines; outside: "
        f"{zoo.unconverted_ops(conv)}")

    arg = {next(iter(fn.structured_input_signature[1])): tf.constant(x)}
    got = fn(**arg)
    assert r.std() > 1e-3 * np.abs(r).max(), "degenerate model output: checks nothing"
    assert len(got) == 1
    rtol, atol = MODEL_TOLERANCES["FP32"]
    # with statistics matched, a deep model amplifies float32 rounding: InceptionV3's output
    # moved 1.8e-4 of its largest value for an input moved 1e-7 (the engine's rounding
    # enters at every layer: 2.1e-3 off native, CPU, s49). The bar is the model's own
    # amplification of that, where it is above the tolerance
    atol = max(atol, NOISE_FACTOR * _float32_noise(model, x, r))
    np.testing.assert_allclose(next(iter(got.values())).numpy(), r, rtol=rtol,
                               atol=atol * np.abs(r).max())
    ops = conv.engine_ops.values()
    assert ops
    assert all(op.stats["engine"] > 0 and op.stats["native"] == 0 for op in ops), {
        n: dict(op.stats) for n, op in conv.engine_ops.items()}


@pytest.mark.slow
def _bench_zoo(name: str):
    """benchmarks/zoo.py as a module."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "zoo.py")
    spec = importlib.util.spec_from_file_location(name, path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_zoo_summary_takes_the_latest_gpu_rows(tmp_path, capsys):
    """--summary over several result files: the latest tftrt FP16 / XLA pair per model and
    batch, the geometric mean of the speed-ups, the models below 1x, the models with no pair;
    dry-run and CPU rows do not count."""
    import json
    bench = _bench_zoo("bench_zoo_summary")

    def row(model, runtime, tput, **kw):
        return {"model": model, "runtime": runtime, "precision": "FP16", "device": "H200",
                "batches": {str(b): {"throughput": t} for b, t in tput.items()}, **kw}
    old, new = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    old.write_text("\n".join(json.dumps(r) for r in [
        row("VGG16", "tf_xla", {1: 100, 128: 1000}),
        row("VGG16", "tftrt", {1: 300, 128: 900}),          # superseded below
        row("ResNet50", "tf_xla", {1: 100, 128: 1000}),
        row("ResNet50", "tftrt", {1: 400, 128: 4000}, host_layers=0, native_calls=0,
            rel_err=5e-4, rel_err_ok=True),
        row("ViT", "tf_xla", {1: 1, 128: 1}, dry_run=True),  # not a measurement
        row("ViT", "tftrt", {1: 9, 128: 9}, dry_run=True),
        row("UNet", "tf_xla", {1: 1, 128: 1}, device="CPU"),
        row("UNet", "tftrt", {1: 9, 128: 9}, device="CPU")]) + "\n")
    new.write_text(json.dumps(row("VGG16", "tftrt", {1: 200, 128: 1100}, host_layers=2,
                                  native_calls=3, rel_err=0.25, rel_err_ok=False)) + "\n" +
                   json.dumps(row("ResNet50", "torch_compile", {1: 800, 128: 2000})) + "\n")
    got = bench.summary([str(old), str(new)])
    text = capsys.readouterr().out
    assert got["measured"] == ["VGG16", "ResNet50"]  # zoo order
    assert set(got["missing"]) == set(zoo.ZOO) - {"VGG16", "ResNet50"}
    assert got["batches"][1]["geomean"] == pytest.approx((2.0 * 4.0) ** 0.5)
    assert got["batches"][128]["geomean"] == pytest.approx((1.1 * 4.0) ** 0.5)
    assert got["batches"][128]["below_1x"] == {}
    assert "2 of %d zoo models measured" % len(zoo.ZOO) in text
    # torch.compile: ResNet50 only (VGG16's twin has no row)
    assert got["torch"] == {1: pytest.approx(0.5), 128: pytest.approx(2.0)}
    assert got["torch_below_1x"] == {1: {"ResNet50": pytest.approx(0.5)}, 128: {}}
    assert "VGG16" in got["torch_missing"] and "ResNet50" not in got["torch_missing"]
    assert "ViT" not in got["torch_missing"]  # no torchvision twin
    assert "2.00x torch.compile over 1 models; below 1x: none" in text
    assert "0.50x torch.compile over 1 models; below 1x: ResNet50 0.50x" in text
    # the other bars, from the latest tftrt rows (VGG16's superseding row fails all three)
    assert got["host_layers"] == {"VGG16 FP16": 2}
    assert got["native_calls"] == {"VGG16 FP16": 3}
    assert got["over_error_bar"] == {"VGG16 FP16": 0.25}
    assert "- over the error bar: VGG16 FP16 (0.25)" in text
    # a later row of some batch sizes only replaces those (a --batches 128 re-run)
    part = tmp_path / "c.jsonl"
    part.write_text(json.dumps(row("ResNet50", "tftrt", {128: 500}, rel_err=0.5,
                                   rel_err_ok=False)) + "\n")
    got = bench.summary([str(old), str(new), str(part)])
    capsys.readouterr()
    assert got["batches"][1]["geomean"] == pytest.approx((2.0 * 4.0) ** 0.5)   # kept
    assert got["batches"][128]["below_1x"] == {"ResNet50": pytest.approx(0.5)}  # replaced
    assert got["over_error_bar"] == {"VGG16 FP16": 0.25, "ResNet50 FP16": 0.5}
    # the older VGG16 row alone would have been below 1x at 128
    got = bench.summary([str(old)])
    assert got["batches"][128]["below_1x"] == {"VGG16": pytest.approx(0.9)}
    text = capsys.readouterr().out
    assert "below 1x: VGG16 0.90x" in text
    assert got["over_error_bar"] == {} and "- host layers: none" in text
    # a row over REL_TOL that its run's XLA error let pass is still named
    xla = tmp_path / "d.jsonl"
    xla.write_text(json.dumps(row("ResNet50", "tftrt", {128: 4000}, rel_err=0.03,
                                  rel_err_ok=True)) + "\n")
    got = bench.summary([str(old), str(xla)])
    text = capsys.readouterr().out
    assert got["over_error_bar"] == {} and got["within_xla_error_only"] == {
        "ResNet50 FP16": 0.03}
    assert "- over REL_TOL but within TF XLA's own error: ResNet50 FP16 (0.03)" in text
    # per batch where rows carry per-batch errors: a later --batches 8 row does not hide an
    # earlier batch 128 over the bar; each batch meets XLA's error at that batch
    def erred(runtime, errs, **kw):
        r = row("DenseNet121", runtime, {b: 100 for b in errs}, **kw)
        for b, e in errs.items():
            r["batches"][str(b)]["rel_err"] = e
        return json.dumps(r)
    def with_xla_at_128(xla_err):
        """tftrt's batch 128 at 0.04, superseded by a --batches 8 row at 0.01."""
        per = tmp_path / "e.jsonl"
        per.write_text("\n".join([
            erred("tf_xla", {8: 0.05, 128: xla_err}),
            erred("tftrt", {8: 0.03, 128: 0.04}, rel_err=0.04, rel_err_ok=False),
            erred("tftrt", {8: 0.01}, rel_err=0.01, rel_err_ok=True)]) + "\n")
        got = bench.summary([str(per)])
        capsys.readouterr()
        return got
    got = with_xla_at_128(0.025)
    assert got["over_error_bar"] == {"DenseNet121 FP16": 0.04}
    got = with_xla_at_128(0.045)
    assert got["over_error_bar"] == {}
    assert got["within_xla_error_only"] == {"DenseNet121 FP16": 0.04}


def test_zoo_benchmark_skips_models_that_no_longer_fit(tmp_path, capsys):
    """--time-budget: a model starts only while --model-seconds still fit (a model cut off
    by the GPU call's timeout leaves no row)."""
    import os
    bench = _bench_zoo("bench_zoo_budget")
    out = str(tmp_path / "zoo.jsonl")
    bench.main(["--models", "ViT", "UNet", "--dry-run", "--time-budget", "100",
                "--model-seconds", "150", "--out", out])
    assert "SKIP ViT UNet: 100 s left of --time-budget" in capsys.readouterr().out
    assert not os.path.exists(out)
    # run_gpu_zoo.sh prints the table after the run: no rows is a line, not a traceback
    bench.main(["--table", "--out", out])
    assert f"no rows: {out} was not written" in capsys.readouterr().out


def test_zoo_benchmark_dry_run(tmp_path, capsys):
    """benchmarks/zoo.py's CPU path (numpy backend, small ViT): rows, engine report, table."""
    import json
    bench = _bench_zoo("bench_zoo")
    out = str(tmp_path / "zoo.jsonl")
    bench.REF_ROWS = 1  # the reference in one-row calls, joined (see zoo.py's reference())
    bench.main(["--models", "ViT", "--batches", "1", "2", "--dry-run", "--fp32", "--graph-fn",
                "--build-profile", "ViT", "--whole-batch-reference", "--out", out])
    rows = [json.loads(line) for line in open(out)]
    assert [(r["runtime"], r["precision"]) for r in rows] == [
        ("tf_native", "FP32"), ("tf_xla", "FP16"), ("tftrt", "FP16")]
    row = rows[-1]
    assert "error" not in row, row["error"]
    assert row["converted"] >= MIN_CONVERTED
    assert row["engine_ops"] == 1 and row["engines"] == 2  # one engine per batch size
    assert row["native_calls"] == 0 and row["engine_calls"] > 0
    assert row["rel_err_ok"], row["rel_err"]
    # the joined reference is the whole batch's: the same errors against both
    for st in row["batches"].values():
        assert abs(st["rel_err"] - st["rel_err_whole_batch_reference"]) <= 1e-6, st
    # --build-profile: the FP16 build under cProfile, its stages (no GPU work here)
    prof = row["build_profile"]
    assert 0 < prof["total"] <= row["build_s"] and prof["gpu timing"] == 0.0, prof
    assert set(prof) == {"total", *bench.BUILD_STAGES}
    assert "ViT: build " in capsys.readouterr().out
    # XLA's row carries what Keras' own mixed_float16 model loses on the same inputs; the
    # FP16 bar is REL_TOL or that, whichever is larger, and never more in FP32
    xla = rows[1]
    assert 0 < xla["rel_err"] < 0.1 and set(xla["batches"]) == {"1", "2"}
    assert bench.rel_bar("FP16", xla["rel_err"]) == max(bench.REL_TOL["FP16"], xla["rel_err"])
    assert bench.rel_bar("FP16", 0.05) == 0.05
    assert bench.rel_bar("FP32", 0.05) == bench.REL_TOL["FP32"]
    # an FP32 row where TF32 is on (a GPU, TF's default) may differ by TF32's rounding; the
    # CPU here has no TF32, so this row was held to the strict bar
    assert bench.rel_bar("FP32", 0.05, tf32=True) == bench.REL_TOL["TF32"] > bench.REL_TOL["FP32"]
    assert row["tf32"] is False and not bench.tf32_on("/CPU:0")
    # the reference is computed in FP32 arithmetic: TF32 off for its calls, then back
    import tensorflow as tf
    assert row["reference"] == "FP32, TF32 off"
    assert "rel_err_tf32_reference" not in row["batches"]["1"]  # the CPU has no TF32
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    for on in (False, True):
        with pytest.raises(KeyError), bench.tf32_switch(on):
            assert tf.config.experimental.tensor_float_32_execution_enabled() is on
            raise KeyError  # restored on the way out, as after a native call that fails
        assert tf.config.experimental.tensor_float_32_execution_enabled() is before
    assert 0 < row["convert_s"] < 600
    assert row["host_layers"] == row["layers"] > 0  # the numpy backend runs on the host
    assert set(row["batches"]) == {"1", "2"}
    for st in row["batches"].values():  # the same model inside a user's tf.function
        assert st["graph_fn_median_ms"] > 0 and st["graph_fn_rel_err"] <= bench.REL_TOL["FP16"], st
    capsys.readouterr()
    bench.table(out)
    text = capsys.readouterr().out
    assert "### ViT" in text and "| 2 |" in text and "(XLA FP16: " in text


def test_zoo_benchmark_int8_rows(tmp_path, capsys):
    """--precisions FP16 INT8: the INT8 row is calibrated (--calib-batches), reports its
    conv/GEMM layers per precision, the quantized share of their FLOPs and top-1 agreement
    with native FP32 per batch; the table sets it beside FP16."""
    import json
    bench = _bench_zoo("bench_zoo_int8")
    out = str(tmp_path / "zoo.jsonl")
    bench.main(["--models", "MobileNetV2", "--batches", "1", "2", "--dry-run", "--skip-xla",
                "--precisions", "FP16", "INT8", "--calib-batches", "2", "--out", out])
    rows = [json.loads(line) for line in open(out)]
    assert [(r["runtime"], r["precision"]) for r in rows] == [
        ("tf_native", "FP32"), ("tftrt", "FP16"), ("tftrt", "INT8")]
    fp16, int8 = rows[1], rows[2]
    assert "error" not in int8, int8["error"]
    assert "layer_precisions" not in fp16
    # most of MobileNetV2's 53 convs and GEMM quantize (a few may keep FP16 for their error)
    assert int8["layer_precisions"].get("INT8", 0) >= 40, int8["layer_precisions"]
    assert len(int8["quantized_share"]) == 1 and 0.8 < int8["quantized_share"][0] <= 1.0
    assert int8["rel_err_ok"] and 0 < int8["rel_err"] <= bench.REL_TOL["INT8"], int8["rel_err"]
    for st in int8["batches"].values():
        assert 0.0 <= st["top1_agreement"] <= 1.0
    assert "top1_agreement" not in fp16["batches"]["1"]
    capsys.readouterr()
    bench.table(out)
    text = capsys.readouterr().out
    assert "tftrt INT8 x tftrt FP16" in text and "of their FLOPs quantized" in text
    line = next(l for l in text.splitlines() if l.startswith("| 2 |"))
    ratio = int8["batches"]["2"]["throughput"] / fp16["batches"]["2"]["throughput"]
    assert line.endswith(f"| {ratio:.2f}x |"), line
    # an INT8 row whose engines kept FP16 everywhere (timed_precision, s43's MobileNetV2 on
    # an H100) says so beside its ratio
    with open(out, "a") as f:
        f.write(json.dumps(dict(int8, layer_precisions={"FP16": 53},
                                quantized_share=[0.0])) + "\n")
    bench.table(out)
    text = capsys.readouterr().out
    line = next(l for l in text.splitlines() if l.startswith("| 2 |"))
    assert line.endswith(f"| {ratio:.2f}x (FP16 kept) |"), line


def test_zoo_top1_agreement_counts_rows_whose_argmax_agrees():
    bench = _bench_zoo("bench_zoo_top1")
    ref = {"y": np.array([[0.0, 1.0, 0.5], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1, 2, 3.0]])}
    got = {"y": np.array([[0.0, 0.9, 0.95], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [3, 2, 1.0]])}
    assert bench.top1_agreement(got, ref) == 0.5
    assert bench.top1_agreement(ref, ref) == 1.0


def test_zoo_benchmark_splits_a_model_over_two_calls(tmp_path):
    """A model too large for one GPU call: --peers-only (native and XLA rows), then
    --skip-xla --skip-native-timing (the tftrt row alone), whose FP16 bar is the earlier XLA
    row's error for the same model, size and device."""
    import json
    bench = _bench_zoo("bench_zoo_split")
    out = str(tmp_path / "zoo.jsonl")
    common = ["--models", "ViT", "--batches", "1", "--dry-run", "--fp32", "--out", out]
    bench.main(common + ["--peers-only"])
    rows = [json.loads(line) for line in open(out)]
    assert [(r["runtime"], r["precision"]) for r in rows] == [("tf_native", "FP32"),
                                                             ("tf_xla", "FP16")]
    bench.main(common + ["--skip-xla", "--skip-native-timing"])
    rows = [json.loads(line) for line in open(out)]
    assert [r["runtime"] for r in rows] == ["tf_native", "tf_xla", "tftrt"]
    assert "error" not in rows[2] and rows[2]["rel_err_ok"], rows[2]
    xla = rows[1]
    assert bench.earlier_xla_err(out, "ViT", xla["size"], xla["device"]) == xla["rel_err"] > 0
    # only the same model, size and device count; the latest such row wins
    with open(out, "a") as f:
        for size, device, err in ((xla["size"], xla["device"], 0.7),
                                  (xla["size"] + 1, xla["device"], 0.9),
                                  (xla["size"], "another GPU", 0.8)):
            f.write(json.dumps({**xla, "size": size, "device": device, "rel_err": err}) + "\n")
    assert bench.earlier_xla_err(out, "ViT", xla["size"], xla["device"]) == 0.7
    assert bench.earlier_xla_err(out, "UNet", xla["size"], xla["device"]) == 0.0
    assert bench.earlier_xla_err(str(tmp_path / "none.jsonl"), "ViT", 1, "CPU") == 0.0
