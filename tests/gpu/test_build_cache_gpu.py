"""The persistent build caches on the GPU (issue 14, item 3): cuDNN's kernel cache and CuPy's
compiled kernels land in the build cache, and a fresh process building the same network
compiles nothing and times nothing, with the same answers.

Skipped without a GPU (tests/conftest.py). On the GPU machine:
``CUDA_VISIBLE_DEVICES=0 python -m pytest tests/gpu/test_build_cache_gpu.py -q``.
"""

import os
import textwrap

import pytest

cp = pytest.importorskip("cupy")

from tests.gpu.build_scripts import run_build_script  # noqa: E402

pytestmark = pytest.mark.gpu


# Two convolutions with fused epilogues of different topologies, FP16, then a GEMM.
SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from onnx import helper
    from tests.engine.harness import make_model
    from tftrt.engine import BuilderConfig, build_engine
    from tftrt.engine.backends import cupy_dnn
    rng = np.random.RandomState(0)
    F = np.float32
    N = helper.make_node
    consts = {"w1": rng.randn(32, 16, 3, 3).astype(F) * .2, "b1": rng.randn(32).astype(F),
              "w2": rng.randn(32, 32, 1, 1).astype(F) * .2, "wd": rng.randn(32, 8).astype(F)}
    nodes = [N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
             N("Conv", ["r1", "w2"], ["c2"]), N("Add", ["c2", "r1"], ["s"]),
             N("Sigmoid", ["s"], ["g"]), N("GlobalAveragePool", ["g"], ["p"]),
             N("Flatten", ["p"], ["f"]), N("MatMul", ["f", "wd"], ["y"])]
    x = rng.randn(8, 16, 20, 20).astype(F)
    model = make_model(nodes, {"x": x}, consts)
    t0 = time.perf_counter()
    from tftrt.engine.backends import get_backend
    from tftrt.engine.tactics import persistent_timing_cache
    cfg = BuilderConfig(precision="FP16", backend="cupy",
                        timing_cache=persistent_timing_cache(get_backend("cupy")))
    eng = build_engine(model, {"x": x.shape}, cfg)
    y = eng.execute([x])[0]
    seconds = time.perf_counter() - t0
    kc = cupy_dnn._kc
    import cupy
    backend = getattr(cupy.cuda.compiler, "_kernel_cache_backend", None)
    cupy_dir = getattr(backend, "_cache_dir", None)
    print(json.dumps({"seconds": seconds, "timed": eng.build_info["timed_layers"],
                      "loaded": kc["loaded"] is not None,
                      "kernel_cache": kc["cache"] is not None, "failed": kc["failed"],
                      "cupy_dir": cupy_dir, "plans": cupy_dnn.plan_cache_stats(),
                      "y": np.asarray(y.get() if hasattr(y, "get") else y).tolist()}))
""")


def _run(cache_dir, **env):
    return run_build_script(SCRIPT, cache_dir, **env)


def _entries(cache_dir, namespace):
    return [os.path.join(d, f) for d, _, fs in os.walk(cache_dir) for f in fs
            if f.endswith(".entry") and os.sep + namespace + os.sep in os.path.join(d, f)]


def test_second_process_reuses_tactics_and_plan_choices(tmp_path):
    import numpy as np
    cold = _run(tmp_path)
    assert cold["timed"] > 0 and not cold["kernel_cache"]
    assert _entries(tmp_path, "tactics") and _entries(tmp_path, "cupy-choices")
    # CuPy's own compiled kernels went beside the build cache, not to ~/.cupy.
    if cold["cupy_dir"] is not None:  # a CuPy with a kernel cache backend (14+)
        assert cold["cupy_dir"] == str(tmp_path / "cupy"), cold
        assert os.listdir(tmp_path / "cupy")
    warm = _run(tmp_path)
    assert warm["timed"] == 0
    np.testing.assert_allclose(np.array(warm["y"]), np.array(cold["y"]), rtol=1e-3, atol=1e-3)


def test_second_process_loads_the_cudnn_kernel_cache(tmp_path):
    import numpy as np
    cold = _run(tmp_path, TFTRT_CUDNN_KERNEL_CACHE="1")
    if not cold["kernel_cache"]:
        pytest.skip("this cuDNN has no kernel cache (9.4+ needed; 9.10+ to serialize)")
    assert not cold["failed"] and not cold["loaded"]
    assert _entries(tmp_path, "cudnn-kernels"), "the kernel cache was not written"
    warm = _run(tmp_path, TFTRT_CUDNN_KERNEL_CACHE="1")
    assert warm["loaded"] and warm["timed"] == 0
    np.testing.assert_allclose(np.array(warm["y"]), np.array(cold["y"]), rtol=1e-3, atol=1e-3)


def test_corrupt_kernel_cache_entry_is_ignored(tmp_path):
    import numpy as np
    cold = _run(tmp_path, TFTRT_CUDNN_KERNEL_CACHE="1")
    if not cold["kernel_cache"]:
        pytest.skip("this cuDNN has no kernel cache")
    for path in _entries(tmp_path, "cudnn-kernels"):
        with open(path, "r+b") as f:  # keep the header, break the payload
            f.seek(-16, os.SEEK_END)
            f.write(b"\xff" * 16)
    again = _run(tmp_path, TFTRT_CUDNN_KERNEL_CACHE="1")
    assert not again["loaded"] and not again["failed"]
    np.testing.assert_allclose(np.array(again["y"]), np.array(cold["y"]), rtol=1e-3, atol=1e-3)


def test_kernel_cache_is_off_by_default(tmp_path):
    import numpy as np
    on = _run(tmp_path / "on", TFTRT_CUDNN_KERNEL_CACHE="1")
    off = _run(tmp_path / "off")
    assert not off["kernel_cache"] and not _entries(tmp_path / "off", "cudnn-kernels")
    np.testing.assert_allclose(np.array(off["y"]), np.array(on["y"]), rtol=2e-2, atol=2e-2)


def test_malformed_cached_gemm_choice_is_tuned_again(tmp_path):
    """A cuBLASLt choice in the build cache that cannot be used (here a malformed one written
    with a valid envelope, as a stale tftrt would) is tuned again, with the same answers."""
    import json as _json
    import struct
    import numpy as np
    from tftrt.engine.build_cache import MAGIC, BuildCache
    cold = _run(tmp_path)
    rewritten = 0
    for path in _entries(tmp_path, "cupy-choices"):
        with open(path, "rb") as f:
            data = f.read()
        assert data.startswith(MAGIC)
        (n,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
        header = _json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + n])
        if header["key"].startswith("lt|"):
            root = str(tmp_path)
            BuildCache(root, header["environment"]).put_json("cupy-choices", header["key"],
                                                             {"algo": "not an index"})
            rewritten += 1
    assert rewritten >= 1, "the network's GEMM left no cuBLASLt choice in the cache"
    again = _run(tmp_path)
    np.testing.assert_allclose(np.array(again["y"]), np.array(cold["y"]), rtol=1e-3, atol=1e-3)


def _rewrite_entries(cache_dir, namespace, payload: bytes) -> int:
    """Replaces the payload of every entry of ``namespace`` with ``payload`` in a valid
    envelope (what a stale or foreign writer would leave); returns how many."""
    import json as _json
    import struct
    from tftrt.engine.build_cache import MAGIC, BuildCache
    n_done = 0
    for path in _entries(cache_dir, namespace):
        with open(path, "rb") as f:
            data = f.read()
        (n,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
        header = _json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + n])
        BuildCache(str(cache_dir), header["environment"]).put(namespace, header["key"], payload)
        n_done += 1
    return n_done


def test_serialized_cudnn_plans_load_in_a_later_process(tmp_path):
    """The plan cache (on by default): a cuDNN graph built from a recorded choice (the second
    build here: the first tunes) goes to the build cache serialized, and the third process
    loads it instead of compiling, with the same answers; TFTRT_CUDNN_PLAN_CACHE=0, nothing
    is stored; an entry cuDNN cannot read is built again. Build seconds printed (-s)."""
    import numpy as np
    off = _run(tmp_path / "off", TFTRT_CUDNN_PLAN_CACHE="0")
    assert off["plans"] == {"stored": 0, "loaded": 0, "failed": 0}
    assert not _entries(tmp_path / "off", "cudnn-plans")
    on = tmp_path / "on"
    cold = _run(on)  # the default
    assert cold["plans"]["stored"] == 0  # tuned graphs of several plans are not stored
    second = _run(on, TFTRT_CUDNN_PLAN_CACHE="1")
    assert second["timed"] == 0 and second["plans"]["stored"] >= 1, second["plans"]
    assert len(_entries(on, "cudnn-plans")) == second["plans"]["stored"]
    third = _run(on, TFTRT_CUDNN_PLAN_CACHE="1")
    print(f"\n[plans] build s: off {off['seconds']:.2f}, cold {cold['seconds']:.2f}, "
          f"second {second['seconds']:.2f} {second['plans']}, third {third['seconds']:.2f} "
          f"{third['plans']}")
    assert third["plans"] == {"stored": 0, "loaded": second["plans"]["stored"], "failed": 0}
    for run in (second, third):
        np.testing.assert_allclose(np.array(run["y"]), np.array(cold["y"]), rtol=1e-3,
                                   atol=1e-3)
    # entries cuDNN cannot read (a valid envelope, garbage inside): built again, right answers
    assert _rewrite_entries(on, "cudnn-plans", b"not a cuDNN plan") >= 1
    again = _run(on, TFTRT_CUDNN_PLAN_CACHE="1")
    assert again["plans"]["loaded"] == 0 and again["plans"]["failed"] >= 1, again["plans"]
    np.testing.assert_allclose(np.array(again["y"]), np.array(cold["y"]), rtol=1e-3, atol=1e-3)
