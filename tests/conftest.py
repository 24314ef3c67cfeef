import os

# The engine runs on its numpy backend in CPU tests so lowering and engine are both exercised.
os.environ.setdefault("TFTRT_BACKEND", "numpy")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


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
