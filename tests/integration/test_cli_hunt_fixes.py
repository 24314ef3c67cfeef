"""The ``tftrt`` command on what a bug hunt found: inputs the model cannot run, a .npy or a
text file given as .npz, models without engines (bench's note, compare's refusal), Ctrl-C
during convert, bad arguments that must exit 2, input checks before the conversion, a valid
--shapes suggestion, and bench on a model converted with another signature key."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.integration.test_cli import numpy_backend, run_cli  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Models(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="a"),
                                  tf.TensorSpec([None, 4], tf.float32, name="b")])
    def two(self, a, b):
        return {"s": tf.nn.relu(a * 2.0 + b) * 3.0 - 1.0}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def dd(self, x):
        return {"o": tf.nn.relu(x * 2.0 + 1.0) * 3.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
    def strs(self, s):
        return {"o": tf.strings.length(s)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """SavedModels: ``two`` (inputs a, b; also under the signature key 'two' in ``keyed``),
    ``dd`` ([None, None] input), ``strs`` (string input)."""
    root = tmp_path_factory.mktemp("hunt")
    m = _Models()
    paths = {}
    for name, sigs in [("two", {"serving_default": m.two}), ("keyed", {"two": m.two}),
                       ("dd", {"serving_default": m.dd}),
                       ("strs", {"serving_default": m.strs})]:
        paths[name] = str(root / name)
        tf.saved_model.save(m, paths[name], signatures=sigs)
    return paths


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
    """``two`` converted with engines, without engines (--minimum-segment-size -1), and
    ``keyed`` converted with --signature-key two."""
    root = tmp_path_factory.mktemp("hunt_trt")
    out = {}
    for name, src, extra in [("two", models["two"], []),
                             ("none", models["two"], ["--minimum-segment-size", "-1"]),
                             ("keyed", models["keyed"], ["--signature-key", "two"])]:
        out[name] = str(root / name)
        code, _, err = run_cli("convert", src, out[name], "--batch-sizes", "2", "--no-summary",
                               "--backend", "numpy", *extra)
        assert code == 0, err
    return out


def _one_error_line(err):
    lines = [l for l in err.splitlines() if l.startswith("tftrt ")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


# 1 ----------------------------------------------------------------------------------------
def test_compare_inputs_the_model_cannot_run_is_one_error_line(converted, tmp_path):
    npz = str(tmp_path / "mis.npz")
    np.savez(npz, a=np.zeros((2, 4), np.float32), b=np.zeros((3, 4), np.float32))
    code, _, err = run_cli("compare", converted["two"], "--inputs", npz)
    assert code == 1, err
    line = _one_error_line(err)
    assert "the model cannot run the given inputs" in line and "[2,4] vs. [3,4]" in line, err


# 2 ----------------------------------------------------------------------------------------
def test_npy_given_as_inputs_asks_for_an_npz(converted, models, tmp_path):
    """...naming the option that gave it: --calibration-data's said --inputs (helper hunt,
    s48)."""
    npy = str(tmp_path / "x.npy")
    np.save(npy, np.zeros((2, 4), np.float32))
    code, _, err = run_cli("compare", converted["two"], "--inputs", npy)
    assert code == 2, err
    line = _one_error_line(err)
    assert "is a .npy file" in line and "--inputs needs an .npz" in line and "np.savez" in err
    code, _, err = run_cli("convert", models["two"], str(tmp_path / "o"), "--precision", "INT8",
                           "--calibration-data", npy)
    assert code == 2, err
    assert "--calibration-data needs an .npz" in _one_error_line(err), err
    assert not os.path.exists(tmp_path / "o")


def test_text_file_given_as_inputs_is_not_an_npz(converted, tmp_path):
    txt = tmp_path / "x.npz"
    txt.write_text("a text file\n")
    code, _, err = run_cli("compare", converted["two"], "--inputs", str(txt))
    assert code == 2, err
    assert "is not an .npz file" in _one_error_line(err) and "pickled" not in err, err


# 3 ----------------------------------------------------------------------------------------
def test_bench_of_a_model_never_converted_says_it_runs_natively(models):
    code, out, err = run_cli("bench", models["two"], "--iterations", "1", "--warmup", "0")
    assert code == 0, err
    first = out.splitlines()[0]
    assert "no tftrt engines are used" in first and "runs natively" in first, out
    assert "numpy reference backend" not in first, out


# 4 ----------------------------------------------------------------------------------------
def test_compare_of_a_model_without_engines_fails(converted):
    code, out, err = run_cli("compare", converted["none"])
    assert code == 1, out + err
    assert "has no engines" in out and "nothing to compare" in out, out
    assert "PASSED" not in out, out


# 5 ----------------------------------------------------------------------------------------
def test_ctrl_c_during_convert_is_one_line_exit_130_nothing_left(tmp_path):
    src, dst = str(tmp_path / "big"), str(tmp_path / "big_trt")
    m = tf.Module()
    m.ws = [tf.Variable(tf.random.normal([16, 16], seed=i) * 0.1) for i in range(200)]

    @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])
    def chain(x):  # one long segment: each engine build takes a second or more
        for w in m.ws:
            x = tf.nn.relu(tf.matmul(x, w) + 0.5)
        return {"y": x}
    m.chain = chain
    tf.saved_model.save(m, src, signatures=chain)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1",
               TFTRT_LOG_LEVEL="INFO")
    proc = subprocess.Popen([sys.executable, "-m", "tftrt", "convert", src, dst,
                             "--batch-sizes", "1,2,3,4", "--backend", "numpy"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # the first of the four engines is built, three are to come
        seen.append(line)
        if "built a numpy engine" in line:
            break
    # (it waited 1 s after the conversion's first log line: once the passes were linear
    # (2026-12-04) the four builds and the save took less, and the Ctrl-C came after the save)
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert "tftrt convert: interrupted: nothing was saved" in err, err[-3000:]
    assert "saved " not in out, out
    assert not os.path.exists(dst)
    assert [n for n in os.listdir(tmp_path) if ".tftrt-" in n] == []


# 6 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["convert", "--dir", "{two}", "{out}", "--output_dir", "{out}"],
    ["serve", "{two}", "--gpus", "abc"],
    ["serve", "{two}", "--http-port", "99999"],
    ["serve", "{two}", "--grpc-port", "0"],
], ids=["convert-mixed-forms", "serve-gpus", "serve-http-port", "serve-grpc-port"])
def test_bad_arguments_exit_2(models, tmp_path, argv, monkeypatch):
    from tftrt import serving

    def refuse(*args, **kwargs):
        raise AssertionError("the server started before its arguments were checked")
    monkeypatch.setattr(serving, "serve_forever", refuse)
    fill = {"two": models["two"], "out": str(tmp_path / "out")}
    code, _, err = run_cli(*[a.format(**fill) for a in argv])
    assert code == 2, err
    assert "error:" in err and "Traceback" not in err, err


# 7 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model,extra,expect", [
    ("two", ["--shapes", "a:2x5,b:2x4"], "does not fit input 'a'"),
    ("two", ["--shapes", "a:2x4,b:2x4", "--batch-sizes", "2"], "give one of"),
    ("strs", ["--batch-sizes", "2"], "cannot be generated"),
], ids=["shapes", "shapes-and-batch-sizes", "strings"])
def test_convert_checks_its_inputs_before_converting(models, tmp_path, monkeypatch, model,
                                                     extra, expect):
    from tftrt import trt_convert as trt

    def refuse(*args, **kwargs):
        raise AssertionError("the conversion ran before the inputs were checked")
    monkeypatch.setattr(trt.TrtGraphConverterV2, "convert", refuse)
    code, _, err = run_cli("convert", models[model], str(tmp_path / "out"), *extra)
    assert code == 2, err
    assert expect in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "out")


# 8 ----------------------------------------------------------------------------------------
def test_batch_sizes_on_unknown_dims_suggests_shapes_that_parse(models, tmp_path):
    from tftrt import inputs
    code, _, err = run_cli("convert", models["dd"], str(tmp_path / "out"), "--batch-sizes", "2")
    assert code == 2, err
    suggestion = err.split("--shapes ")[1].split()[0]
    name, _, dims = suggestion.partition(":")
    assert name == "x" and inputs.parse_dims(dims) == (2, 16), err
    code, _, err = run_cli("convert", models["dd"], str(tmp_path / "out"), "--shapes",
                           suggestion, "--no-summary")
    assert code == 0, err


# 9 ----------------------------------------------------------------------------------------
def test_bench_defaults_to_the_converted_signature_key(converted):
    code, out, err = run_cli("bench", converted["keyed"], "--iterations", "1", "--warmup", "0")
    assert code == 0, err
    assert "(signature 'two')" in out, out


def test_serve_defaults_to_the_converted_signature_key(converted, monkeypatch):
    from tftrt import serving
    served = []
    monkeypatch.setattr(serving, "serve_forever",
                        lambda path, config, announce: served.append(config.signature))
    code, _, err = run_cli("serve", converted["keyed"], "--gpus", "none")
    assert code == 0, err
    assert served == ["two"], served


# second hunt (2026-12-04) ------------------------------------------------------------------
def _npz_variants(tmp_path):
    """A truncated .npz, one with a flipped byte (bad CRC), and a zip of a text member."""
    import zipfile
    ok = str(tmp_path / "ok.npz")
    np.savez(ok, a=np.ones((2, 4), np.float32), b=np.ones((2, 4), np.float32))
    raw = open(ok, "rb").read()
    trunc, crc, txt = (str(tmp_path / n) for n in ("trunc.npz", "crc.npz", "txt.npz"))
    open(trunc, "wb").write(raw[:200])
    flipped = bytearray(raw)
    flipped[300] ^= 0xFF
    open(crc, "wb").write(bytes(flipped))
    with zipfile.ZipFile(txt, "w") as z:
        z.writestr("a.txt", b"garbage")
        z.writestr("b.txt", b"garbage")
    return {"truncated": (trunc, "File is not a zip file"), "crc": (crc, "Bad CRC-32"),
            "text member": (txt, "that are not arrays")}


@pytest.mark.parametrize("case", ["truncated", "crc", "text member"])
@pytest.mark.parametrize("command", ["compare", "convert", "calibration"])
def test_a_damaged_npz_is_one_error_line_exit_2(converted, models, tmp_path, case, command):
    """A truncated .npz, a flipped byte or a member that is no .npy ended in a traceback
    (zipfile.BadZipFile, AttributeError on bytes), status 1."""
    path, says = _npz_variants(tmp_path)[case]
    if command == "compare":
        argv = ["compare", converted["two"], "--inputs", path]
    elif command == "convert":
        argv = ["convert", models["two"], str(tmp_path / "o"), "--inputs", path]
    else:
        argv = ["convert", models["two"], str(tmp_path / "o"), "--precision", "INT8",
                "--calibration-data", path]
    code, _, err = run_cli(*argv)
    assert code == 2, err
    assert says in _one_error_line(err)
    assert not os.path.exists(tmp_path / "o")


def test_float_array_for_a_string_input_is_an_argument_error(models, tmp_path):
    npz = str(tmp_path / "s.npz")
    np.savez(npz, s=np.ones(3))
    code, _, err = run_cli("bench", models["strs"], "--inputs", npz, "--iterations", "1")
    assert code == 2, err
    assert "the input is a string (tf.string)" in _one_error_line(err)


def test_bench_of_a_converted_model_without_engines_says_it_runs_natively(converted):
    """A conversion that made no engine: bench's first line said "engines run on the numpy
    reference backend"."""
    code, out, err = run_cli("bench", converted["none"], "--iterations", "2", "--warmup", "0",
                             "--backend", "numpy")
    assert code == 0, err
    first = out.splitlines()[0]
    assert "no tftrt engines are used (the conversion made none): runs natively" in first
    assert "engines run on" not in first


@pytest.mark.parametrize("argv, says", [
    (["--dynamic-shape", "--profile-strategy", "Bogus", "--batch-sizes", "1"],
     "profile strategy 'Bogus' is not supported"),
    (["--precision", "INT8", "--calibration-data", "{npz}", "--calibration-method", "foo"],
     "calibration method 'foo' is not supported"),
    (["--precision", "INT8", "--calibration-data", "{npz}", "--calibration-method",
      "percentile:200"], "the percentile must be a number in (0, 100]"),
    (["--max-workspace-size-bytes", "99999999999999999999"], "must be below 2**63"),
])
def test_bad_option_values_are_argument_errors_before_loading(models, tmp_path, argv, says,
                                                              monkeypatch):
    """These values were refused by the converter or convert() only after loading the model,
    as "conversion failed", status 1."""
    npz = str(tmp_path / "cal.npz")
    np.savez(npz, a=np.ones((2, 4), np.float32), b=np.ones((2, 4), np.float32))
    from tftrt import trt_convert
    monkeypatch.setattr(trt_convert, "TrtGraphConverterV2",
                        lambda **kw: pytest.fail("the model was loaded"))
    code, _, err = run_cli("convert", models["two"], str(tmp_path / "o"),
                           *[a.format(npz=npz) for a in argv])
    assert code == 2, err
    assert says in err and "Traceback" not in err


def test_calibration_batches_of_inputs_with_different_counts_are_refused(models, tmp_path):
    """--calibration-batch-size split by the smallest count: b's last samples were dropped
    silently and the conversion succeeded."""
    npz = str(tmp_path / "cal.npz")
    np.savez(npz, a=np.ones((3, 4), np.float32), b=np.ones((5, 4), np.float32))
    code, _, err = run_cli("convert", models["two"], str(tmp_path / "o"), "--precision",
                           "INT8", "--calibration-data", npz, "--calibration-batch-size", "2")
    assert code == 2, err
    assert "different numbers of samples" in _one_error_line(err)


def test_saved_model_cli_convert_keeps_tensorrt_as_a_value(models, tmp_path, monkeypatch):
    """saved_model_cli's form drops the method word 'tensorrt'; it also dropped --dir
    tensorrt (a directory of that name): "expected one argument"."""
    import shutil
    monkeypatch.chdir(tmp_path)
    shutil.copytree(models["two"], "tensorrt")
    code, _, err = run_cli("convert", "--dir", "tensorrt", "--output_dir", "out", "tensorrt",
                           "--backend", "NUMPY", "--no-summary")
    assert code == 0, err
    assert os.path.isfile(os.path.join("out", "saved_model.pb"))


def test_a_second_ctrl_c_while_the_interrupt_line_is_printed(monkeypatch):
    """Ctrl-C during a command prints one line; a second SIGINT while it was printed (the
    shell and `timeout` each send one) ended in a KeyboardInterrupt traceback. SIGINT is
    ignored while the line is written, and the handler is put back afterwards."""
    import io
    from tftrt import cli

    def interrupted(args, out, err):
        raise KeyboardInterrupt

    class SignallingStream(io.StringIO):
        def write(self, text):
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, mid-line
            return super().write(text)

    monkeypatch.setitem(cli.COMMANDS, "inspect", interrupted)
    err = SignallingStream()
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["inspect", "/nonexistent"], out=io.StringIO(), err=err) == \
        cli.EXIT_INTERRUPTED
    assert "tftrt inspect: interrupted" in err.getvalue()
    assert signal.getsignal(signal.SIGINT) is before
