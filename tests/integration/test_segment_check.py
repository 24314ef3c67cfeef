"""benchmarks/segment_check.py, the GPU check of converters without TensorFlow there: its make
step stores segment networks with TF's outputs, its check step (here on the numpy backend)
builds and compares them, and it reports an engine whose answers differ."""

import importlib.util
import os

import numpy as np


def _tool():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "segment_check.py")
    spec = importlib.util.spec_from_file_location("segment_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_then_check_on_the_numpy_backend(tmp_path, capsys):
    tool = _tool()
    out = str(tmp_path / "segments")
    assert tool.main(["make", "--out", out, "--cases", "onehot", "cumsum_f16_axis2",
                      "where_f16_consts"]) == 0
    assert sorted(os.listdir(out)) == sorted(f"{n}.{e}" for n in (
        "onehot", "cumsum_f16_axis2", "where_f16_consts") for e in ("onnx", "npz"))
    assert tool.main(["check", out, "--backend", "numpy"]) == 0
    text = capsys.readouterr().out
    assert "3 networks, 0 failed" in text and text.count(": ok error") == 6
    # a wrong answer is reported: TF's outputs of one case altered
    data = dict(np.load(os.path.join(out, "onehot.npz")))
    data["y0"] = data["y0"] + 1.0
    np.savez(os.path.join(out, "onehot.npz"), **data)
    assert tool.main(["check", out, "--backend", "numpy"]) == 1
    assert "onehot               FP32: WRONG" in capsys.readouterr().out
