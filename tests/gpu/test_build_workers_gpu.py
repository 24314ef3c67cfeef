"""Cold builds compile their cuDNN graphs in worker processes (issue 14, item 4;
tftrt/engine/backends/cupy_prefetch.py): the build then loads every plan the workers stored,
gives the answers of a build without workers (and of the numpy backend), and a second process
with that cache starts no worker job at all.

Skipped without a GPU (tests/conftest.py). On the GPU machine:
``CUDA_VISIBLE_DEVICES=0 python -m pytest tests/gpu/test_build_workers_gpu.py -q``.
"""

import json
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
    from tftrt.engine.backends import cupy_dnn, cupy_layers, cupy_prefetch
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
                      "tuned_here": cupy_layers.tuned_here(),
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
    assert on["tuned_here"] == [], on["tuned_here"]  # every tuning ran on a worker
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


# A ResNet-structured network's optimization profile, batch 1..16, built as converter.build()
# builds it (the opt engine tuned, the split ladder 1, 2, 4, 8 from its template, each rung
# run twice), then called at batch 5 (split 4 + 1).
PROFILE_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from tests.engine.models import resnet50
    from tftrt.engine import BuilderConfig, build_engine
    from tftrt.engine.backends import cupy_dnn, cupy_layers, cupy_prefetch
    from tftrt.engine.onnx_import import network_from_onnx
    from tftrt.engine.shape_template import specializer
    from tftrt.profiles import Profile, ProfileEngine
    model, feeds = resnet50(batch=2, size=32, width=16)
    (name, x), = feeds.items()
    rest = tuple(x.shape[1:])
    from tftrt.engine.backends import get_backend
    from tftrt.engine.tactics import persistent_timing_cache
    net = network_from_onnx(model)
    # as the engine op configures its builds: the process's timing cache, so that of the
    # layers of one signature only the first is timed (the others take its tactic)
    timing = persistent_timing_cache(get_backend("cupy"))
    config = BuilderConfig(precision="FP16", backend="cupy", timing_cache=timing)

    def build(key, choices, weight_cache):
        return build_engine(net, {name: key[0]}, BuilderConfig(
            precision="FP16", backend="cupy", tactic_choices=choices,
            weight_cache=weight_cache, timing_cache=timing))
    prof = Profile([(1,) + rest], [(16,) + rest], [(16,) + rest])
    pe = ProfileEngine([prof], build, "cupy", specializer(net, config)).build_profiles()
    x5 = np.random.default_rng(5).standard_normal((5,) + rest).astype(np.float32)
    y = pe.engine_for([x5.shape]).execute([x5])[0]
    ref = build_engine(model, {name: x5.shape}, BuilderConfig(
        precision="FP32", backend="numpy")).execute([x5])[0]
    print(json.dumps({"prefetch": cupy_prefetch.stats(), "plans": cupy_dnn.plan_cache_stats(),
                      "tuned_here": cupy_layers.tuned_here(),
                      "parts": pe.build_seconds, "shapes": [k[0][0] for k in pe.shapes],
                      "y": np.asarray(y.get() if hasattr(y, "get") else y).tolist(),
                      "ref": np.asarray(ref).tolist()}))
""")


def test_a_profile_build_tunes_nothing_outside_the_workers(tmp_path):
    """A cold profile build (ResNet-structured, FP16, batch 1..16, split batches on) tunes
    every convolution on the build workers: the opt engine's before its tactics are timed,
    the ladder's rungs in one prefetch; the calling process only loads plans (cupy_layers
    .tuned_here() is empty). On the H200 (2026-12-02) a cold ResNet50 profile through
    TensorFlow tuned 28 convolutions in the calling process during the ladder's warm-ups
    (18 of its 38 s): of the layers of one signature, only the first (timed at the opt shape)
    had a record to borrow; the others, sharing its graph there, tuned at each rung. The
    answers match the numpy backend."""
    env = dict(TFTRT_BUILD_WORKERS="3", TFTRT_BUILD_WORKERS_MIN_JOBS="2", TFTRT_SPLIT_BATCH="1")
    out = run_build_script(PROFILE_SCRIPT, tmp_path / "cache", timeout=500, **env)
    print(json.dumps({k: out[k] for k in ("prefetch", "plans", "tuned_here", "parts",
                                          "shapes")}))
    assert sorted(out["shapes"])[:4] == [1, 2, 4, 8] and 16 in out["shapes"], out["shapes"]
    assert out["prefetch"]["failed"] == 0, out["prefetch"]
    assert out["tuned_here"] == [], out["tuned_here"]
    _close(out["y"], out["ref"], 2e-2)
    # the same build in a fresh process on that cache: every plan is there (the rungs borrow
    # the opt engine's stored choices as the cold build did), nothing is tuned or compiled;
    # the warm ResNet50 build of 2026-12-02 tuned its 24 rung convolutions on the workers
    again = run_build_script(PROFILE_SCRIPT, tmp_path / "cache", timeout=500, **env)
    print(json.dumps({k: again[k] for k in ("prefetch", "plans", "tuned_here", "parts")}))
    assert again["prefetch"]["jobs"] == 0, again["prefetch"]
    assert again["tuned_here"] == [], again["tuned_here"]
    _close(again["y"], out["y"], 1e-3)
