"""The converter registry: one registration per TF op type, with its validator and lowering.

A converter is a small class (or any object) with two static methods:

    validate(node, ctx) -> None | str     pure: looks at attrs, dtypes, shapes; returns a reason
                                          string when the node cannot be lowered, else None
    convert(node, ctx) -> None            emits ONNX nodes through ``ctx`` and maps every TF
                                          output of ``node`` to an ONNX value with ctx.set_output

registered with::

    @converter("Relu", "Relu6", dtypes=FLOATS, inputs=(TENSOR,))
    class Relu: ...

The declarative part (``dtypes`` of the node's data inputs and outputs, ``inputs`` roles) is
checked here, before the converter's own ``validate``, so converters don't repeat it. The
segmenter calls :func:`validate_node` alone, so what is segmented is exactly what can be
lowered.

Input roles (per data input, in order; the last role repeats for variadic ops):
    TENSOR  any value: a segment input, the output of another node, or a constant
    WEIGHT  must be a constant known at conversion time (ctx.const_value works on it)
    ANY     like TENSOR; documents that constants are welcome too
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

TENSOR = "tensor"
WEIGHT = "weight"
ANY = "any"

FLOATS = (np.float32, np.float16)
FLOATS_AND_INT32 = (np.float32, np.float16, np.int32)
INT32 = (np.int32,)
INDICES = (np.int32, np.int64)
ALL_NUMERIC = (np.float32, np.float16, np.int32, np.int64, np.int8, np.uint8, np.bool_)


@dataclasses.dataclass(frozen=True)
class Registration:
    op_types: Tuple[str, ...]
    impl: object
    dtypes: Optional[Tuple[type, ...]]
    inputs: Optional[Tuple[str, ...]]
    dtype_attr: Optional[str]
    family: str

    @property
    def name(self) -> str:
        return getattr(self.impl, "__name__", type(self.impl).__name__)

    @property
    def doc(self) -> str:
        return (getattr(self.impl, "__doc__", None) or "").strip()


_REGISTRY: Dict[str, Registration] = {}


def converter(*op_types: str, dtypes: Optional[Iterable[type]] = None,
              inputs: Optional[Sequence[str]] = None, dtype_attr: Optional[str] = "T"):
    """Class decorator registering a converter for the TF op types given.

    Args:
      op_types: TF op type names (``NodeDef.op``) the converter handles.
      dtypes: allowed numpy dtypes of the node's type attribute (``dtype_attr``, default "T");
        None means no declarative dtype check.
      inputs: roles of the data inputs (TENSOR / WEIGHT / ANY); the last repeats.
      dtype_attr: the attr holding the node's element type; None to skip the check.
    """
    if not op_types:
        raise ValueError("converter() needs at least one TF op type")

    def register(impl):
        if not callable(getattr(impl, "convert", None)):
            raise TypeError(f"converter {impl!r} for {op_types} has no convert(node, ctx)")
        module = getattr(impl, "__module__", "") or ""
        reg = Registration(tuple(op_types), impl,
                           tuple(np.dtype(d).type for d in dtypes) if dtypes else None,
                           tuple(inputs) if inputs else None, dtype_attr,
                           module.rsplit(".", 1)[-1])
        for op in op_types:
            if op in _REGISTRY:
                raise ValueError(f"TF op {op!r} already has a converter "
                                 f"({_REGISTRY[op].name}); one registration per op type")
            _REGISTRY[op] = reg
        return impl

    return register


def lookup(op_type: str) -> Optional[Registration]:
    _ensure_loaded()
    return _REGISTRY.get(op_type)


def registered_ops() -> Dict[str, Registration]:
    _ensure_loaded()
    return dict(sorted(_REGISTRY.items()))


def _tf_dtype_name(node, attr: str) -> str:
    """TensorFlow's name of the dtype in ``node.attr[attr]`` ("string", "bfloat16"), as a
    user reads it in a report: numpy's name of a string tensor is "object"."""
    import tensorflow as tf
    if attr not in node.attr:  # (reading a missing one would add it to the NodeDef)
        return "unknown"
    try:
        return tf.dtypes.as_dtype(node.attr[attr].type).name
    except (TypeError, ValueError):
        return "unknown"


def validate_node(node, ctx) -> Optional[str]:
    """Returns None when ``node`` can be lowered, else the reason it cannot.

    Runs the declarative checks (converter exists, dtype, input roles, known ranks of data
    inputs), then the converter's own ``validate``.
    """
    reg = lookup(node.op)
    if reg is None:
        return f"no converter for op type {node.op}"
    if reg.dtypes is not None and reg.dtype_attr and reg.dtype_attr in node.attr:
        dt = ctx.attr_dtype(node, reg.dtype_attr)
        if dt is None or dt.type not in reg.dtypes:
            allowed = ", ".join(np.dtype(d).name for d in reg.dtypes)
            return (f"{node.op} with {reg.dtype_attr}={_tf_dtype_name(node, reg.dtype_attr)} "
                    f"is not supported (supported: {allowed})")
    if reg.inputs:
        for i in range(ctx.num_inputs(node)):
            role = reg.inputs[min(i, len(reg.inputs) - 1)]
            if role == WEIGHT and not ctx.is_const(node, i):
                return (f"input {i} of {node.op} must be a constant (weights); "
                        f"it is computed at run time")
            if role in (TENSOR, ANY) and not ctx.is_const(node, i) \
                    and ctx.input_shape(node, i) is None:
                return f"input {i} of {node.op} has unknown rank"
    validate = getattr(reg.impl, "validate", None)
    if validate is not None:
        try:
            reason = validate(node, ctx)
        except Exception as e:  # a validator bug must not abort the whole conversion
            return f"validator of {node.op} failed: {type(e).__name__}: {e}"
        if reason:
            return str(reason)
    return None


_LOADED = False


def _ensure_loaded():
    """Imports every family module once so their decorators run.

    Loaded is set only once every import is done: set first, a convert() in another thread
    found a half-filled registry and kept MatMul, Conv2D, ... native ("no converter for op
    type"). A thread arriving meanwhile imports too; Python's per-module import locks make it
    wait for the modules being imported, so it returns with the whole registry as well."""
    global _LOADED
    if _LOADED:
        return
    import importlib
    import pkgutil
    import sys
    pkg = sys.modules[__name__.rsplit(".", 1)[0]]
    pkg_name, pkg_path = pkg.__name__, pkg.__path__
    for mod in pkgutil.iter_modules(pkg_path):
        if mod.name in ("registry",) or mod.name.startswith("_"):
            continue
        importlib.import_module(f"{pkg_name}.{mod.name}")
    _LOADED = True


Converter = Callable  # documentation alias
