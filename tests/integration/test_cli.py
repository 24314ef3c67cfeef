"""The ``tftrt`` command: convert, bench, compare, inspect, run for real on a small Keras CNN
(CPU, numpy backend), their output and exit status, and bad arguments."""

import configparser
import hashlib
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tftrt import cli, saving
from tftrt.quickstart import default_model
from tests.integration import models
from tests.tolerances import MODEL_TOLERANCES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E0 = "TRTEngineOp_000_000"


def run_cli(*argv):
    """(exit status, stdout, stderr) of ``tftrt argv`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([str(a) for a in argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def run_module(*argv, env=None):
    """``python -m tftrt argv`` in a fresh process: (exit status, stdout, stderr)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "tftrt", *map(str, argv)], env=full_env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    """The commands set TFTRT_BACKEND for their process; each test gets it back."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return models.save_keras(default_model(), str(tmp_path_factory.mktemp("cli") / "cnn"))


@pytest.fixture(scope="module")
def dst(src, tmp_path_factory):
    """The CNN converted by ``python -m tftrt convert`` (FP16, engines for batches 1 and 2)."""
    out = str(tmp_path_factory.mktemp("cli") / "cnn_fp16")
    code, stdout, stderr = run_module("convert", src, out, "--precision", "FP16",
                                      "--batch-sizes", "1,2", "--max-cached-engines", "2",
                                      "--backend", "numpy")
    assert code == 0, stderr[-3000:]
    assert "[*] Total number of TensorRT engines: 1" in stdout
    assert f"saved {out}: 1 engine op(s), 2 built engine(s) saved" in stdout
    assert "numpy reference backend" in stdout
    return out


def native(path, x):
    return tf.saved_model.load(path).signatures["serving_default"](image=tf.constant(x))


def manifest(path):
    with open(os.path.join(path, "assets", "tftrt", "manifest.json")) as f:
        return json.load(f)


# --- the command itself ------------------------------------------------------------------------
def test_console_script_entry_point_and_python_m():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    scripts = [line.strip() for line in
               cfg["options.entry_points"]["console_scripts"].strip().splitlines()]
    assert scripts == ["tftrt = tftrt.cli:console_main"]
    code, out, _ = run_module("--version")
    assert code == 0 and out.strip() == f"tftrt {tftrt.__version__}"
    code, out, _ = run_module("--help")
    assert code == 0 and all(c in out for c in ("convert", "bench", "compare", "inspect"))
    code, _, err = run_module()
    assert code == 2 and "required" in err
    code, _, err = run_module("frobnicate")
    assert code == 2 and "invalid choice: 'frobnicate'" in err


# --- convert -----------------------------------------------------------------------------------
def test_convert_saves_built_engines_that_load_without_rebuilding(src, dst):
    m = manifest(dst)
    (engine,) = m["engines"]
    assert engine["spec"]["precision_mode"] == "FP16"
    assert sorted(p["input_shapes"][0][0] for p in engine["plans"]) == [1, 2]
    loaded = tftrt.load(dst)
    rtol, atol = MODEL_TOLERANCES["FP16"]
    for batch in (1, 2):
        x = models.batch((batch, 32, 32, 3))
        got = loaded.signatures["serving_default"](image=tf.constant(x))
        np.testing.assert_allclose(got["output_0"].numpy(), native(src, x)["output_0"].numpy(),
                                   rtol=rtol, atol=atol)
    assert {k: v for k, v in loaded.engine_ops[E0].stats.items()} == {"engine": 2}


def test_convert_takes_saved_model_cli_options(src, tmp_path):
    out = str(tmp_path / "smcli")
    code, stdout, stderr = run_cli("convert", "--dir", src, "--output_dir", out, "--tag_set",
                                   "serve", "tensorrt", "--precision_mode", "FP16",
                                   "--minimum_segment_size", "2",
                                   "--max_workspace_size_bytes", "1000000")
    assert code == 0, stderr
    spec = manifest(out)["engines"][0]["spec"]
    assert (spec["precision_mode"], spec["max_workspace_size_bytes"]) == ("FP16", 1000000)
    assert manifest(out)["engines"][0]["plans"] == []  # no shapes given: built at first use
    assert "Total number of TensorRT engines: 1" in stdout


def test_convert_tf1_model_option(src, tmp_path):
    out = str(tmp_path / "tf1")
    code, stdout, stderr = run_cli("convert", "--dir", src, "--output_dir", out, "tensorrt",
                                   "--convert_tf1_model")
    assert code == 0, stderr
    assert "TF1 converter" in stdout
    x = models.batch((2, 32, 32, 3))
    loaded = tftrt.load(out)
    got = loaded.signatures["serving_default"](image=tf.constant(x))
    np.testing.assert_allclose(got["output_0"].numpy(), native(src, x)["output_0"].numpy(),
                               rtol=1e-3, atol=1e-4)
    assert sum(op.stats["engine"] for op in loaded.engine_ops.values()) >= 1


def test_convert_int8_with_calibration_data_and_shapes(src, tmp_path):
    from tftrt import trt_convert as trt
    data = str(tmp_path / "cal.npz")
    cal = models.batch((4, 32, 32, 3))
    np.savez(data, image=cal)
    out = str(tmp_path / "int8")
    code, stdout, stderr = run_cli("convert", src, out, "--precision", "int8",
                                   "--calibration-data", data, "--calibration-batch-size", "2",
                                   "--calibration-method", "percentile:99.9",
                                   "--shapes", "image:3x32x32x3", "--no-summary")
    assert code == 0, stderr
    assert "Total number" not in stdout
    (engine,) = manifest(out)["engines"]
    assert [p["input_shapes"] for p in engine["plans"]] == [[[3, 32, 32, 3]]]
    # The engines are what the Python API makes of the same options and calibration batches.
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode="INT8")
    conv.convert(calibration_input_fn=lambda: iter([{"image": cal[:2]}, {"image": cal[2:]}]),
                 calibration_method="percentile:99.9")
    assert engine["spec"]["precision_mode"] == conv.engine_ops[E0].spec.precision_mode


def test_convert_without_engines_to_build_on_native_says_so(src, tmp_path):
    out = str(tmp_path / "native")
    code, stdout, _ = run_cli("convert", src, out, "--batch-sizes", "1", "--backend", "native")
    assert code == 0
    assert "engines not built: engines do not run: TFTRT_BACKEND resolved to native" in stdout
    assert manifest(out)["engines"][0]["plans"] == []


@pytest.mark.parametrize("argv, code, message", [
    (["convert", "{src}"], 2, "convert needs the SavedModel to convert and where to save it"),
    (["convert", "{src}", "{out}", "--precision", "FP64"], 2,
     "precision mode 'FP64' is not supported. It should be one of FP32, FP16, INT8"),
    (["convert", "{src}", "{out}", "--minimum-segment-size", "0"], 2,
     "must be positive or -1"),
    (["convert", "{src}", "{out}", "--batch-sizes", "0"], 2, "must be positive integers"),
    (["convert", "{src}", "{out}", "--batch-sizes", "one"], 2, "not a comma-separated list"),
    (["convert", "{src}", "{out}", "--profile-strategy", "Optimal"], 2,
     "--profile-strategy needs --dynamic-shape"),
    (["convert", "{src}", "{out}", "--calibration-data", "x.npz"], 2,
     "--calibration-data is for --precision INT8 or FP8"),
    (["convert", "{src}", "{out}", "--precision", "fp8", "--calibration-method", "max"], 2,
     "--calibration-method needs --calibration-data"),
    (["convert", "{src}", "{out}", "--shapes", "pixels:1x32x32x3"], 2,
     "--shapes names input 'pixels'; the signature's inputs are image"),
    (["convert", "{src}", "{out}", "--shapes", "1x32x32"], 2,
     "shape 1x32x32 does not fit input 'image' of shape [?, 32, 32, 3]"),
    (["convert", "{src}", "{out}", "--batch-sizes", "1", "--shapes", "1x32x32x3"], 2,
     "give one of --batch-sizes, --shapes and --inputs"),
    (["convert", "{src}", "{out}", "--dynamic-shape", "--profile-strategy", "Best"], 2,
     "Best"),
    (["convert", "{missing}", "{out}"], 1, "does not exist"),
    (["convert", "{src}", "{out}", "--dir", "{src}"], 2, "either as SRC DST or as --dir"),
    (["convert", "{src}", "{out}", "--signature-key", "predict"], 1,
     "signature 'predict' not found"),
    (["convert", "{src}", "{out}", "--shapes", "image:0x32x32x3"], 2,
     "with no element: every dimension must be at least 1"),
    (["convert", "{src}", "{out}", "--convert_tf1_model", "--no-build-at-runtime"], 2,
     "leave out --no-build-at-runtime / --no-save-engines"),
    (["convert", "{src}", "{out}", "--convert_tf1_model", "--no-save-engines"], 2,
     "leave out --no-build-at-runtime / --no-save-engines"),
])
def test_convert_bad_arguments(src, tmp_path, argv, code, message):
    fill = {"src": src, "out": str(tmp_path / "out"), "missing": str(tmp_path / "missing")}
    got, _, err = run_cli(*[a.format(**fill) for a in argv])
    assert got == code, err
    assert message in err, err
    assert not os.path.exists(tmp_path / "out")


def test_a_failing_save_is_one_line_not_a_traceback(src, tmp_path, monkeypatch):
    """TF's own write failing (SaveV2 on a full disk: ResourceExhaustedError, an OpError and
    no OSError) ended the command in a traceback (helper hunt, 2026-12-05)."""
    from tftrt import trt_convert as trt

    def full(self, *a, **k):
        raise tf.errors.ResourceExhaustedError(None, None, "x/variables.data: No space left "
                                               "on device\n\t [[{{node SaveV2}}]]")
    monkeypatch.setattr(trt.TrtGraphConverterV2, "save", full)
    code, _, err = run_cli("convert", src, str(tmp_path / "out"), "--batch-sizes", "1",
                           "--no-summary")
    assert code == 1, err
    assert "saving to" in err and "No space left on device" in err and "SaveV2" not in err
    assert "Traceback" not in err


def test_an_int_array_that_does_not_fit_the_input_is_refused(tmp_path):
    from tftrt.inputs import InputError, load_npz
    path = str(tmp_path / "ids.npz")
    np.savez(path, ids=np.array([[1, 2 ** 32 + 3]], np.int64))
    with pytest.raises(InputError, match=r"1 of its values \(e.g. 4294967299\) do not fit"):
        load_npz(path, {"ids": (np.int32, (None, 2))})
    np.savez(path, ids=np.array([[1, 7]], np.int64))  # values that fit are cast
    assert load_npz(path, {"ids": (np.int32, (None, 2))})["ids"].dtype == np.int32


def test_keras_file_or_object_gets_the_export_message(tmp_path, monkeypatch):
    from tftrt import trt_convert as trt
    model = default_model()
    path = str(tmp_path / "cnn.keras")
    model.save(path)
    code, _, err = run_cli("convert", path, tmp_path / "out")
    assert code == 1
    assert "is a Keras model file, not a SavedModel directory" in err
    assert f"keras.models.load_model('{path}').export('model_dir')" in err
    with pytest.raises(ValueError, match=r"Keras model file.*\.export\('model_dir'\)"):
        trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path / "weights.h5"))
    with pytest.raises(ValueError, match=r"is a Keras model object \(Functional\).*"
                                         r"model\.export\('model_dir'\)"):
        trt.TrtGraphConverterV2(input_saved_model_dir=model)
    with pytest.raises(ValueError, match="must be the path of a SavedModel directory, not a "
                                         "dict"):
        trt.TrtGraphConverterV2(input_saved_model_dir={"model": 1})


# --- bench -------------------------------------------------------------------------------------
def test_bench_times_every_runner_and_batch(dst):
    code, out, err = run_cli("bench", dst, "--batch-sizes", "1,2", "--compare", "native,xla",
                             "--iterations", "3", "--warmup", "1")
    assert code == 0, err
    assert "engines run on the numpy reference backend on the CPU" in out
    assert "host/device copies: none (no GPU" in out
    rows = [line.split() for line in out.splitlines()
            if re.match(r"^\s*(tftrt|native|xla)\s+\d", line)]
    assert [(r[0], r[1]) for r in rows] == [(n, b) for b in "12" for n in ("tftrt", "native",
                                                                           "xla")]
    for r in rows:
        mean, p50, p90, p95, p99, lo, hi = map(float, r[2:9])
        assert 0 < lo <= p50 <= p90 <= p95 <= p99 <= hi and lo <= mean <= hi
    # The engines ran from the saved plans: first call + 1 warm-up + 3 timed, no build.
    for b in (1, 2):
        assert f"tftrt batch {b}: memory of the 2 cached engine(s) " in out
        assert re.search(rf"tftrt batch {b}: .* engine calls 5, native segment calls 0, "
                         rf"engine builds 0", out), out


def test_bench_json_and_given_shapes(dst, tmp_path):
    code, out, err = run_cli("bench", dst, "--shapes", "image:2x32x32x3", "--iterations", "4",
                             "--warmup", "0", "--json", "--compare", "native")
    assert code == 0, err
    report = json.loads(out)
    assert report["device"] == "/CPU:0" and report["backend"] == "numpy"
    assert [r["runner"] for r in report["results"]] == ["tftrt", "native"]
    for r in report["results"]:
        assert r["iterations"] == 4 and r["shapes"] == {"image": [2, 32, 32, 3]}
        lat = r["latency_ms"]
        assert lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
        assert r["throughput_per_s"] == pytest.approx(2e3 / lat["mean"])  # 2 per call
        assert r["h2d_ms"] is None and r["error"] is None
    tftrt_row = report["results"][0]
    assert tftrt_row["engine_runs"] == {"engine": 5, "native": 0, "builds": 0}
    assert tftrt_row["engine_memory_bytes"]["weights"] > 0
    assert tftrt_row["engine_memory_bytes"]["engines"] == 2
    assert report["results"][1]["engine_runs"] is None


def test_bench_on_the_native_backend_times_native_segments_and_warns(dst):
    code, out, err = run_cli("bench", dst, "--backend", "native", "--iterations", "2")
    assert code == 0, err
    assert "engines do not run: TFTRT_BACKEND resolved to native" in out
    assert "engine calls 0, native segment calls 8" in out  # first call, 5 warm-up, 2 timed
    assert "call(s) ran the native segment" in err


def test_bench_of_an_unconverted_model_times_it_natively(src):
    code, out, err = run_cli("bench", src, "--iterations", "2", "--compare", "native")
    assert code == 0, err
    assert len([line for line in out.splitlines() if re.match(r"^\s*(tftrt|native)\s+1", line)
                ]) == 2


@pytest.mark.parametrize("argv, code, message", [
    (["--compare", "tensorrt"], 2, "--compare takes native and/or xla, not tensorrt"),
    (["--iterations", "0"], 2, "must be positive"),
    (["--warmup", "-1"], 2, "argument --warmup: '-1' must be >= 0"),
    (["--warmup", "99999999999999999999999"], 2, "is more than 1,000,000 calls"),
    (["--iterations", "1000001"], 2, "argument --iterations: '1000001' is more than"),
    (["--tags", ","], 2, "--tags ',' names no tag; give the SavedModel's tag set"),
    (["--shapes", "image:1x8"], 2, "does not fit input 'image'"),
    (["--inputs", "{tmp}/none.npz"], 2, "cannot read"),
    (["--backend", "tpu"], 2, "invalid choice: 'tpu'"),
    (["--signature-key", "predict"], 1, "signature 'predict' not found"),
])
def test_bench_bad_arguments(dst, tmp_path, argv, code, message):
    got, _, err = run_cli("bench", dst, *[a.format(tmp=tmp_path) for a in argv])
    assert got == code, err
    assert message in err


# --- compare -----------------------------------------------------------------------------------
def test_compare_passes_per_output_engine_and_layer(dst):
    code, out, err = run_cli("compare", dst, "--batch-sizes", "1,2", "--per-engine",
                             "--per-layer")
    assert code == 0, err
    assert "tolerance: |converted - native| <= 0.02 + 0.02 * |native|" in out
    for b in (1, 2):
        assert f"inputs image [{b}, 32, 32, 3]:" in out
        assert re.search(rf"PASS output output_0 float32 \[{b}, 10\]: max abs error ", out)
        assert re.search(rf"PASS engine {E0}:0 float32 \[{b}, 10\]", out)
    layers = re.findall(r"per layer: (\d+) of (\d+) values within tolerance", out)
    assert len(layers) == 2 and all(a == b and int(b) >= 5 for a, b in layers)
    assert out.rstrip().endswith("PASSED")


def test_compare_fails_with_exit_status_1_and_names_the_worst_elements(dst):
    code, out, err = run_cli("compare", dst, "--batch-sizes", "2", "--rtol", "0", "--atol",
                             "0", "--top", "2")
    assert code == 1, err
    (line,) = [ln for ln in out.splitlines() if "output output_0" in ln]
    assert line.lstrip().startswith("FAIL") and "outside tolerance" in line
    worst = re.findall(r"at \[(\d+), (\d+)\]: got (\S+), expected (\S+) \(\|error\| (\S+)\)",
                       out)
    assert len(worst) == 2 and all(float(e) > 0 for *_, e in worst)
    assert float(worst[0][4]) >= float(worst[1][4])
    assert out.rstrip().endswith("FAILED")


def test_compare_top_holds_for_every_tensor_per_layer_too(dst):
    """--top N shows N worst elements per tensor: the per-layer reports showed 3 whatever it
    said (ONNX / CLI hunt, s49)."""
    code, out, err = run_cli("compare", dst, "--batch-sizes", "2", "--rtol", "0", "--atol",
                             "0", "--top", "1", "--per-engine", "--per-layer")
    assert code == 1, err
    shown, current = {}, None
    for line in out.splitlines():
        if re.match(r"^\s*FAIL ", line):
            current = line
            shown[current] = 0
        elif current and re.match(r"^\s+at \[", line):
            shown[current] += 1
    layer_fails = [k for k in shown if re.match(r"^\s*FAIL TRTEngineOp_000_000 ", k)]
    assert len(shown) >= 3 and layer_fails, out
    assert set(shown.values()) == {1}, out


def test_compare_json_on_given_inputs(dst, src, tmp_path):
    data = str(tmp_path / "in.npz")
    x = models.batch((3, 32, 32, 3), seed=7)
    np.savez(data, image=x)
    code, out, err = run_cli("compare", dst, "--inputs", data, "--json", "--per-engine")
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] and report["problems"] == []
    (o,) = report["outputs"]
    assert o["name"] == "output_0" and o["shape"] == [3, 10] and o["passed"]
    # The reported error is the real one on exactly these inputs.
    got = tftrt.load(dst).signatures["serving_default"](image=tf.constant(x))["output_0"]
    want = native(src, x)["output_0"]
    assert o["max_abs"] == pytest.approx(float(np.max(np.abs(got.numpy() - want.numpy()))),
                                         rel=1e-6, abs=1e-12)
    assert [e["engine"] for e in report["engines"]] == [E0]


@pytest.mark.parametrize("how, code, message", [
    ("native", 1, "engines do not run, so nothing of them is compared"),
    ("unconverted", 1, "has no tftrt engines"),
    ("tampered", 1, "tftrt.load would not use the engines"),
    ("bad_tolerance", 2, "must be >= 0"),
    ("bad_npz", 2, "holds arrays ['other', 'pixels']; the signature's inputs are ['image']"),
    ("overflowing_npz", 2, "values (e.g. 1e+300) do not fit the input's float32"),
    ("empty_npz", 2, "with no element: give at least one row"),
])
def test_compare_bad_inputs(dst, src, tmp_path, how, code, message):
    import shutil
    model = dst
    extra = []
    if how == "native":
        extra = ["--backend", "native"]
    elif how == "unconverted":
        model = src
    elif how == "tampered":
        model = shutil.copytree(dst, str(tmp_path / "copy"))
        with open(os.path.join(model, "assets", "tftrt", "converted.pb"), "r+b") as f:
            f.write(b"\xff\xff")
    elif how == "bad_tolerance":
        extra = ["--atol", "-1"]
    elif how == "overflowing_npz":  # float64 1e300 became inf, and compare passed
        x = np.zeros((1, 32, 32, 3))
        x[0, 0, 0, 0] = 1e300
        np.savez(str(tmp_path / "big.npz"), image=x)
        extra = ["--inputs", str(tmp_path / "big.npz")]
    elif how == "empty_npz":
        np.savez(str(tmp_path / "empty.npz"), image=np.zeros((0, 32, 32, 3), np.float32))
        extra = ["--inputs", str(tmp_path / "empty.npz")]
    else:
        np.savez(str(tmp_path / "bad.npz"), pixels=np.zeros((1, 32, 32, 3), np.float32),
                 other=np.zeros(1))
        extra = ["--inputs", str(tmp_path / "bad.npz")]
    got, out, err = run_cli("compare", model, *extra)
    assert got == code, (out, err)
    assert message in out + err


# --- inspect -----------------------------------------------------------------------------------
def test_inspect_describes_engines_layers_and_writes_networks(dst, tmp_path):
    import onnx
    code, out, err = run_cli("inspect", dst, "--onnx", tmp_path / "nets")
    assert code == 0, err
    assert re.search(r"converted: (\d+) of (\d+) ops \([\d.]+%\) in 1 engine\(s\)", out)
    assert "left native: Identity 1x" in out
    assert f"{E0}: FP16" in out and "TF ops: " in out and "Conv2D 3x" in out
    for b in (1, 2):
        assert re.search(rf"saved engine \d for input shapes \[\[{b}, 32, 32, 3\]\]: numpy on "
                         rf"cpu, FP16, \d+ layers after fusion", out)
    assert len(re.findall(r"#\s+layer\s+kind\s+epilogue\s+tactic\s+precision", out)) == 2
    assert re.search(r"\d+\s+\S+\s+conv\s+\S+\s+\S+\s+FP16", out)
    assert "fallback tactics: known where the CuPy backend runs the plan" in out
    path = tmp_path / "nets" / f"{E0}.onnx"
    assert f"wrote {path}" in out
    data = path.read_bytes()
    e = manifest(dst)["engines"][0]
    assert hashlib.sha256(data).hexdigest() == e.get("network_sha256", e["onnx_sha256"])
    onnx.checker.check_model(onnx.load_from_string(data))


def test_inspect_onnx_onto_a_file_is_a_usage_error(dst, tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    code, _, err = run_cli("inspect", dst, "--onnx", str(path))
    assert code == 2 and "is a file; it takes a directory" in err, err


def test_inspect_json(dst):
    code, out, err = run_cli("inspect", dst, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["signature"] == "serving_default"
    assert d["inputs"] == {"image": {"dtype": "float32", "shape": [None, 32, 32, 3]}}
    (e,) = d["engines"]
    assert e["name"] == E0 and e["precision"] == "FP16"
    assert len(e["plans"]) == 2
    for p in e["plans"]:
        assert p["backend"] == "numpy" and p["precision"] == "FP16"
        assert p["layers"] and all(layer["tactic"] for layer in p["layers"])
        assert p["activation_bytes"] > 0 and p["weight_bytes"] > 0
        assert p["fallback_tactics"] is None  # decided only where CuPy runs the plan
    assert d["conversion"]["ops_converted"] == e["tf_nodes"]


def test_inspect_refuses_unconverted_or_tampered_models(src, dst, tmp_path):
    import shutil
    code, _, err = run_cli("inspect", src)
    assert code == 1 and "has no tftrt engines" in err
    model = shutil.copytree(dst, str(tmp_path / "copy"))
    os.remove(os.path.join(model, "assets", "tftrt", f"{E0}.onnx"))
    code, _, err = run_cli("inspect", model)
    assert code == 1 and "are refused" in err and "tftrt.load runs this model natively" in err
    code, _, err = run_cli("inspect")
    assert code == 2 and "required: model" in err


def test_loaded_saving_api_reads_without_building(dst):
    saved = saving.read_saved_engines(dst)
    assert list(saved.specs) == [E0] and len(saved.plan_files[E0]) == 2
    assert saved.native_fdefs[E0].signature.name.startswith(f"{E0}_native_segment")
