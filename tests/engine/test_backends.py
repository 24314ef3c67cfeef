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


def test_threads_asking_for_a_backend_at_once_share_one_instance(monkeypatch):
    """A backend holds process-wide state (its timing cache): threads racing to make it get
    one instance, not one each."""
    import threading
    import time
    from tftrt.engine import backends as B
    monkeypatch.setattr(B, "_INSTANCES", {})
    real = B._load

    def slow(name):  # widens the window between the check and the store
        klass = real(name)
        time.sleep(0.1)
        return klass
    monkeypatch.setattr(B, "_load", slow)
    got = []
    threads = [threading.Thread(target=lambda: got.append(B.get_backend("numpy")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 4 and all(b is got[0] for b in got)
