"""Backend registry."""

import pytest

from tftrt.engine import EngineBuildError
from tftrt.engine.backends import Backend, available_backends, get_backend
from tftrt.engine.network import LAYER_KINDS


def test_numpy_always_available():
    assert "numpy" in available_backends()
    be = get_backend("numpy")
    assert isinstance(be, Backend) and be.name == "numpy" and be.device_name() == "cpu"
    assert get_backend("numpy") is be


def test_numpy_backend_implements_every_kind():
    from tftrt.engine.backends.numpy_backend import _KERNELS
    assert set(LAYER_KINDS) == set(_KERNELS)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(EngineBuildError, match="'nope' is not available"):
        get_backend("nope")


def test_engine_imports_without_tensorflow():
    import subprocess
    import sys
    code = ("import sys, tftrt.engine, tftrt.engine.builder, tftrt.engine.backends.numpy_backend;"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
