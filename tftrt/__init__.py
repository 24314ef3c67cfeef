"""tftrt: TF-TRT's conversion workflow for current TensorFlow, with engines built on CuPy.

    from tftrt import trt_convert as trt
    converter = trt.TrtGraphConverterV2(input_saved_model_dir="model")
    converter.convert(); converter.build(input_fn); converter.save("model_tftrt")
    model = tftrt.load("model_tftrt")
"""

import os as _os

__version__ = "0.1.0"

from tftrt import logs as _logs  # noqa: E402

_logs.configure_from_env()  # TFTRT_LOG_LEVEL: verbosity of the tftrt.* loggers

# In the repository the converters live in the top-level folder converters/ (installed as
# tftrt.converters through setup.cfg's package_dir). When tftrt is imported straight from a
# checkout, let the package find them there too.
if not _os.path.isdir(_os.path.join(__path__[0], "converters")):
    _root = _os.path.dirname(_os.path.abspath(__path__[0]))
    if _os.path.isfile(_os.path.join(_root, "converters", "registry.py")):
        __path__.append(_root)


def activate():
    """Binds tftrt engines in GraphDefs imported from now on (see tftrt.activation)."""
    from tftrt.activation import activate as _activate
    _activate()


class _ActivateWithTensorFlow:
    """A meta-path finder that activates tftrt right after ``import tensorflow`` finishes,
    for programs that import tftrt first: TF1 users import a converted GraphDef after
    ``import tftrt``, whatever the order, and engines must be active then."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        import importlib.util
        import sys
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module

            def exec_then_activate(module):
                exec_module(module)
                activate()
            spec.loader.exec_module = exec_then_activate
        return spec


if "tensorflow" in __import__("sys").modules:
    activate()
else:
    __import__("sys").meta_path.insert(0, _ActivateWithTensorFlow())


def load(export_dir, tags=None, options=None):
    """Loads a SavedModel written by ``TrtGraphConverterV2.save`` with its engines active.

    Plans that were built before saving are restored without rebuilding. A SavedModel that
    tftrt did not convert loads as with ``tf.saved_model.load``.
    """
    from tftrt.saving import load as _load
    return _load(export_dir, tags=tags, options=options)


# trt_convert's public names, also importable from tftrt itself
# (``from tftrt import TrtGraphConverterV2``).
_CONVERT_NAMES = ("TrtGraphConverterV2", "TrtGraphConverter", "TrtConversionParams",
                  "TrtPrecisionMode", "TrtProfileStrategy", "DEFAULT_TRT_CONVERSION_PARAMS",
                  "DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES", "supported_profile_strategies")


def __getattr__(name):
    # Keep `import tftrt` light: trt_convert imports TensorFlow.
    if name == "trt_convert" or name in _CONVERT_NAMES:
        import importlib
        module = importlib.import_module("tftrt.trt_convert")
        return module if name == "trt_convert" else getattr(module, name)
    raise AttributeError(f"module 'tftrt' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "trt_convert", *_CONVERT_NAMES])
