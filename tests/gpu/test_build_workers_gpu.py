"""Cold builds compile their cuDNN graphs in worker processes (issue 14, item 4;
tftrt/engine/backends/cupy_prefetch.py): the build then loads every plan the workers stored,
gives the answers of a build without workers (and of the numpy backend), and a second process
with that cache starts no worker job at all.

Skipped without a GPU (tests/conftest.py). On the GPU machine:
``CUDA_VISIBLE_DEVICES=0 python -m pytest tests/gpu/test_build_workers_gpu.py -q``.
"""

import textwrap

import numpy as np
import pytest

cp = pytest.importorskip("cupy")

from tests.gpu.build_scripts import run_build_script  # noqa: E402

pytestmark = pytest.mark.gpu


# Five convolutions of distinct configurations (3x3, 1x1, strided, grouped, with bias / ReLU /
# residual add epilogues), FP16.
SCRIPT = textwrap.dedent("""
    import json, time
    import numpy as np
    from onnx import helper
    from tests.engine.harness import make_model
    from tftrt.engine import BuilderConfig, build_engine
    from tftrt.engine.backends import cupy_dnn, cupy_prefetch
    rng = np.random.RandomState(0)
    F = np.float32
    N = helper.make_node
    consts = {"w1": rng.randn(32, 16, 3, 3).astype(F) * .2, "b1": rng.randn(32).astype(F),
              "w2": rng.randn(32, 32, 1, 1).astype(F) * .2,
              "w3": rng.randn(64, 32, 3, 3).astype(F) * .1, "b3": rng.randn(64).astype(F),
              "w4": rng.randn(64, 16, 3, 3).astype(F) * .2,
              "w5": rng.randn(48, 64, 1, 1).astype(F) * .1}
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "w2"], ["c2"]), N("Add", ["c2", "r1"], ["s"]),
             N("Conv", ["s", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], strides=[2, 2]),
             N("Relu", ["c3"], ["r3"]),
             N("Conv", ["r3", "w4"], ["c4"], pads=[1, 1, 1, 1], group=4),
             N("Conv", ["c4", "w5"], ["y"])]
    x = rng.randn(8, 16, 24, 24).astype(F)
    model = make_model(nodes, {"x": x}, consts)
    t0 = time.perf_counter()
    eng = build_engine(model, {"x": x.shape}, BuilderConfig(precision="FP16", backend="cupy"))
    seconds = time.perf_counter() - t0
    y = eng.execute([x])[0]
    ref = build_engine(model, {"x": x.shape}, BuilderConfig(precision="FP32",
                                                            backend="numpy")).execute([x])[0]
    convs = [l for l in eng.network.layers if l.kind == "conv"]
    print(json.dumps({"seconds": seconds, "prefetch": cupy_prefetch.stats(),
                      "plans": cupy_dnn.plan_cache_stats(), "convs": len(convs),
                      "timed": eng.build_info["timed_layers"],
                      "y": np.asarray(y.get() if hasattr(y, "get") else y).tolist(),
                      "ref": np.asarray(ref).tolist()}))
""")


def _run(cache_dir, workers: int):
    return run_build_script(SCRIPT, cache_dir, timeout=400, TFTRT_BUILD_WORKERS=str(workers),
                            TFTRT_BUILD_WORKERS_MIN_JOBS="2")


def _close(a, b, tol):
    a, b = np.array(a), np.array(b)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)
    assert err < tol, err


def test_workers_build_the_plans_the_build_loads(tmp_path):
    on = _run(tmp_path / "on", 3)
    pf = on["prefetch"]
    assert pf["runs"] >= 1 and pf["jobs"] >= 4 and pf["failed"] == 0, pf
    # every job stored its plan (the grouped conv's choice too: its knobs do not convert back
    # in cuDNN 9, so its plan is found among the heuristics' own), and the build deserialized
    # them instead of compiling
    assert pf["stored"] == pf["jobs"], pf
    assert on["plans"]["loaded"] >= pf["jobs"], on["plans"]
    off = _run(tmp_path / "off", 0)
    assert off["prefetch"]["jobs"] == 0 and off["plans"]["loaded"] == 0
    _close(on["y"], on["ref"], 2e-2)
    _close(off["y"], off["ref"], 2e-2)
    _close(on["y"], off["y"], 2e-2)
    # a second process with the cache the workers filled: nothing left for workers to do
    again = _run(tmp_path / "on", 3)
    assert again["prefetch"]["jobs"] == 0, again["prefetch"]
    assert again["plans"]["loaded"] >= pf["jobs"]
    _close(again["y"], on["y"], 1e-3)
