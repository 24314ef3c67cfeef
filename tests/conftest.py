import os

# The engine runs on its numpy backend in CPU tests so lowering and engine are both exercised.
os.environ.setdefault("TFTRT_BACKEND", "numpy")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Most dynamic-shape tests count the engines built per batch size, which split batches (the
# default for users: profiles.py) replace by a ladder built with the profile. Those tests run
# without them; the split-batch tests turn them on, and
# test_profile_shapes.py::test_new_batch_sizes_are_split_through_tensorflow and
# test_shape_template.py::test_split_batches_are_the_default run with the default itself.
os.environ.setdefault("TFTRT_SPLIT_BATCH", "0")
# The INT8 / FP8 tests build small networks whose first conv reads 1-3 channels, which users'
# engines keep in FP16 (quantization.STEM_CHANNELS); the tests quantize them, so that they
# check those layers' arithmetic (and, on a GPU, the channel-padded kernels).
# test_quantization.py::test_an_image_stem_stays_fp16 runs with the default.
os.environ.setdefault("TFTRT_QUANTIZE_STEM", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def build_cache_in_tmp(tmp_path_factory):
    """Engines built by the tests (and their subprocesses, which inherit the environment) keep
    their tactic choices in a build cache of this session, not in the user's ~/.cache/tftrt
    (unless TFTRT_CACHE_DIR says where)."""
    before = os.environ.get("TFTRT_CACHE_DIR")
    if before is None:
        os.environ["TFTRT_CACHE_DIR"] = str(tmp_path_factory.mktemp("build_cache"))
    yield
    if before is None:
        os.environ.pop("TFTRT_CACHE_DIR", None)


@pytest.fixture()
def passes_runs(monkeypatch):
    """The names of the networks the engine builder ran the optimization passes on, in order
    (tests that a shape of a profile reuses its opt shape's optimized network)."""
    from tftrt.engine import builder
    calls = []
    real = builder.optimize_network

    def counting(net, passes=None):
        calls.append(net.name)
        return real(net, passes)
    monkeypatch.setattr(builder, "optimize_network", counting)
    return calls


def _gpu_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords or "/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
