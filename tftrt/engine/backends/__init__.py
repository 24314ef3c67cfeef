"""Engine backends: where layers run.

The backend interface is the set of layer kinds and epilogue ops documented in
``tftrt/engine/network.py`` plus the small :class:`Backend` class below. A backend:

* ``name`` ("numpy", "cupy") and ``device_name()`` (written into plans: a plan built on one
  device is refused on another; e.g. "cpu" or "NVIDIA H100 80GB HBM3 (sm_90)");
* ``upload(np_array)`` / ``to_numpy(array)`` / ``asarray(user_input)``: move data;
* ``prepare_layer(net, layer, weights)`` -> a runner ``fn(inputs) -> outputs``. ``inputs`` are
  backend arrays in ``layer.inputs`` order (weights resolved from ``weights``, absent optional
  inputs as None); ``outputs`` must have the dtypes/shapes of ``net.tensors[layer.outputs]``.
  It implements ``layer.tactic`` (a name the backend registered in ``tftrt.engine.tactics``),
  ``layer.epilogue`` and ``layer.precision`` ("FP16": fp16 storage, fp32 accumulation). A
  layer the backend cannot run raises EngineBuildError naming it; a backend never hands a
  layer to another device behind the caller's back (the CuPy backend checks every layer at
  build time through its ``tactics.ANY_KIND`` tactic, so the build fails, not the run);
* ``synchronize()`` (timing and profiling), ``random_array(shape, dtype)`` (tactic timing);
* optionally ``create_context(engine)`` returning an object with ``execute(inputs) -> outputs``
  to run the whole engine its own way (one arena of ``engine.memory`` offsets, streams,
  CUDA-graph replay); None means the generic layer-by-layer loop in runtime.py;
* optionally ``set_build_options(allow_tf32=..., precision=...)`` (called by ``build_engine``
  before anything else) and ``time_runner(runner, inputs, what=...) -> seconds`` (tactic
  timing; ``what`` names it in errors; default: best of a few wall-clock runs around
  ``synchronize()``).

What an engine gives a backend context: ``engine.network`` (layers with ``tactic``,
``precision``, canonical attrs, static shapes), ``engine.weights`` (uploaded),
``engine.memory`` (``offsets``/``sizes`` of intermediate tensors in one arena of
``arena_bytes``, plus ``workspace_bytes`` of scratch; network outputs are not in the arena),
``engine.config`` (``allow_tf32``, ...).

A CuPy backend goes in ``cupy_backend.py`` as ``class CupyBackend(Backend)`` with
``is_available()`` returning True only when CuPy imports and a GPU works; it is found here
without further registration (see ``_CANDIDATES``).
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from tftrt.engine.errors import EngineBuildError

Runner = Callable[[List[Any]], List[Any]]

# name -> (module, class). Modules import lazily; a backend that fails to import is unavailable.
_CANDIDATES = {
    "numpy": ("tftrt.engine.backends.numpy_backend", "NumpyBackend"),
    "cupy": ("tftrt.engine.backends.cupy_backend", "CupyBackend"),
}
_INSTANCES: Dict[str, "Backend"] = {}
_INSTANCES_LOCK = threading.RLock()  # one instance per backend, also when threads race


class Backend:
    """Base class of engine backends (see module doc for the contract)."""

    name = "base"

    @classmethod
    def is_available(cls) -> bool:
        return True

    def device_name(self) -> str:
        raise NotImplementedError

    def upload(self, array: np.ndarray):
        raise NotImplementedError

    def to_numpy(self, array) -> np.ndarray:
        raise NotImplementedError

    def asarray(self, x):
        return self.upload(np.asarray(x))

    def prepare_layer(self, net, layer, weights: Dict[str, Any]) -> Runner:
        raise NotImplementedError

    def synchronize(self) -> None:
        pass

    def random_array(self, shape, dtype):
        rng = np.random.default_rng(0)
        dt = np.dtype(dtype)
        if dt.kind == "f":
            a = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            a = rng.integers(0, 2, shape).astype(dt)
        else:
            a = np.zeros(shape, dt)
        return self.upload(a)

    def create_context(self, engine, slot=None) -> Optional[Any]:
        """The backend's own execution context for ``engine`` in arena ``slot`` (of
        ``engine.arena_pool``; None: an arena of its own), or None: layer by layer."""
        return None


def _load(name: str):
    if name not in _CANDIDATES:
        return None
    mod, cls = _CANDIDATES[name]
    try:
        klass = getattr(importlib.import_module(mod), cls)
    except Exception:
        return None
    try:
        return klass if klass.is_available() else None
    except Exception:
        return None


def available_backends() -> List[str]:
    """Names of backends that work here ("numpy" always; "cupy" with a working GPU)."""
    return [n for n in _CANDIDATES if _load(n) is not None]


def default_backend() -> str:
    """$TFTRT_BACKEND if set, else "cupy" when available, else "numpy"."""
    env = os.environ.get("TFTRT_BACKEND")
    if env:
        return env
    return "cupy" if _load("cupy") is not None else "numpy"


def get_backend(name: Optional[str] = None) -> Backend:
    """The backend instance for ``name`` (None or "auto": see :func:`default_backend`).

    Raises:
      EngineBuildError: the backend is unknown or does not work on this machine.
    """
    if name in (None, "auto"):
        name = default_backend()
    with _INSTANCES_LOCK:
        if name not in _INSTANCES:
            klass = _load(name)
            if klass is None:
                raise EngineBuildError(
                    f"engine backend {name!r} is not available here (available: "
                    f"{available_backends()}); use backend='numpy' or install CuPy with a GPU")
            _INSTANCES[name] = klass()
        return _INSTANCES[name]
