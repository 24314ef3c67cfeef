"""The tftrt command on the GPU (CuPy engines): convert builds CuPy plans, bench times GPU
engines with host/device copies, compare passes per output / engine / layer, inspect lists
fallback tactics. Skipped without a GPU.

    TFTRT_BACKEND=cupy python -m pytest -q tests/gpu/test_cli_gpu.py -s
"""

import io
import json
import os

import pytest

pytestmark = pytest.mark.gpu


def run_cli(*argv):
    from tftrt import cli
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([str(a) for a in argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def cupy_backend(monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "cupy")


@pytest.fixture(scope="module")
def dst(tmp_path_factory):
    from tftrt.quickstart import default_model
    root = tmp_path_factory.mktemp("cli_gpu")
    src = str(root / "cnn")
    default_model().export(src, verbose=False)
    out = str(root / "cnn_fp16")
    os.environ["TFTRT_BACKEND"] = "cupy"
    code, stdout, stderr = run_cli("convert", src, out, "--precision", "FP16", "--batch-sizes",
                                   "1,8", "--max-cached-engines", "2", "--backend", "cupy")
    assert code == 0, stderr
    assert "engines run on the GPU (CuPy backend)" in stdout
    return out


def test_convert_saves_cupy_plans(dst):
    with open(os.path.join(dst, "assets", "tftrt", "manifest.json")) as f:
        plans = json.load(f)["engines"][0]["plans"]
    assert sorted((p["backend"], p["input_shapes"][0][0]) for p in plans) == \
        [("cupy", 1), ("cupy", 8)]


def test_bench_times_gpu_engines_with_copies(dst):
    code, out, err = run_cli("bench", dst, "--batch-sizes", "1,8", "--compare", "native,xla",
                             "--iterations", "30", "--json")
    assert code == 0, err
    report = json.loads(out)
    print(json.dumps([(r["runner"], r["batch"], r["latency_ms"]["p50"], r["h2d_ms"],
                       r["d2h_ms"]) for r in report["results"]]))
    assert report["device"] == "/GPU:0" and report["backend"] == "cupy"
    assert len(report["results"]) == 6 and not any(r["error"] for r in report["results"])
    for r in report["results"]:
        assert r["h2d_ms"] > 0 and r["d2h_ms"] > 0
        if r["runner"] == "tftrt":
            assert r["engine_runs"] == {"engine": 36, "native": 0, "builds": 0}
            assert r["engine_memory_bytes"]["activations"] > 0


def test_compare_passes_on_the_gpu(dst):
    code, out, err = run_cli("compare", dst, "--batch-sizes", "1,8", "--per-engine",
                             "--per-layer")
    print(out)
    assert code == 0, out + err
    assert out.rstrip().endswith("PASSED")


def test_inspect_lists_fallback_tactics_on_the_gpu(dst):
    code, out, err = run_cli("inspect", dst, "--json")
    assert code == 0, err
    (engine,) = json.loads(out)["engines"]
    for p in engine["plans"]:
        assert p["backend"] == "cupy"
        assert isinstance(p["fallback_tactics"], list)  # decided here, on the GPU
        assert all(f["why"] for f in p["fallback_tactics"])
    code, out, _ = run_cli("inspect", dst)
    assert "fallback tactics: " in out and "known where the CuPy backend" not in out
