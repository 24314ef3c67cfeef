"""Inputs for the ``tftrt`` commands: shapes given on the command line, generated data, .npz.

Shapes follow trtexec: ``--shapes image:8x224x224x3`` (several inputs comma separated,
``a:1x4,b:1x4``; a signature with one input may leave out its name: ``--shapes 8x224x224x3``).
``--batch-sizes 1,8`` fills the first dimension of every input whose other dimensions are
known. Generated data is seeded: floats standard normal, integers in [0, 4), booleans
random; a .npz holds one array per input name (one array under any name for a signature
with one input), the first axis being the batch.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

Shape = Tuple[int, ...]
Specs = Dict[str, Tuple[np.dtype, Optional[List[Optional[int]]]]]  # name -> (dtype, shape)

_DIMS = re.compile(r"^\d+(x\d+)*$")


class InputError(ValueError):
    """The inputs asked for do not fit the signature (the message says what to give)."""


def parse_dims(text: str) -> Shape:
    """'8x224x224x3' -> (8, 224, 224, 3); '' or 'scalar' -> () (a scalar input)."""
    text = text.strip().lower()
    if text in ("", "scalar"):
        return ()
    if not _DIMS.match(text):
        raise InputError(f"shape {text!r} is not dimensions joined by 'x' (e.g. 8x224x224x3)")
    return tuple(int(d) for d in text.split("x"))


def parse_shapes(text: str, names: Sequence[str]) -> Dict[str, Shape]:
    """``--shapes`` text -> {input name: shape} for a signature taking ``names``."""
    out: Dict[str, Shape] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        name, sep, dims = part.rpartition(":")
        if not sep:
            if len(names) != 1:
                raise InputError(f"--shapes {text!r}: the signature takes {len(names)} inputs "
                                 f"({', '.join(names)}); name each one, e.g. "
                                 f"{names[0]}:1x8" if names else "the signature takes no inputs")
            name = names[0]
        name = name.strip()
        if name not in names:
            raise InputError(f"--shapes names input {name!r}; the signature's inputs are "
                             f"{', '.join(names) or 'none'}")
        if name in out:
            raise InputError(f"--shapes gives input {name!r} twice")
        out[name] = parse_dims(dims)
        if 0 in out[name]:
            raise InputError(f"--shapes gives input {name!r} the shape {dims.strip()}, with "
                             f"no element: every dimension must be at least 1")
    missing = [n for n in names if n not in out]
    if missing:
        raise InputError(f"--shapes {text!r} gives no shape for input(s) {', '.join(missing)}")
    return out


def fits(shape: Sequence[int], spec_shape) -> bool:
    if spec_shape is None:
        return True
    return len(shape) == len(spec_shape) and all(s is None or s == d
                                                 for s, d in zip(spec_shape, shape))


def check_shapes(shapes: Dict[str, Shape], specs: Specs) -> Dict[str, Shape]:
    for name, shape in shapes.items():
        spec_shape = specs[name][1]
        if not fits(shape, spec_shape):
            raise InputError(f"shape {'x'.join(map(str, shape)) or 'scalar'} does not fit input "
                             f"{name!r} of shape {_fmt(spec_shape)}")
    return shapes


def batch_shapes(specs: Specs, batch: int) -> Dict[str, Shape]:
    """Each input's signature shape with its first dimension set to ``batch``."""
    out = {}
    for name, (_, shape) in specs.items():
        if shape is None or not shape:
            raise InputError(f"input {name!r} has shape {_fmt(shape)}, which has no batch "
                             f"dimension to set; give its shape with --shapes")
        rest = shape[1:]
        if any(d is None for d in rest):
            raise InputError(f"input {name!r} has shape {_fmt(shape)}: only the batch "
                             f"dimension can come from --batch-sizes; give the others with "
                             f"--shapes {name}:{batch}x" + "x".join(
                                 "16" if d is None else str(d) for d in rest)
                             + (" (16 stands for each unknown dimension: give its real size)"
                                if len(rest) else ""))
        if shape[0] is not None and shape[0] != batch:
            raise InputError(f"input {name!r} has a fixed batch of {shape[0]} (shape "
                             f"{_fmt(shape)}); batch {batch} does not fit")
        out[name] = (batch,) + tuple(rest)
    return out


def generate(specs: Specs, shapes: Dict[str, Shape], seed: int = 0) -> Dict[str, np.ndarray]:
    """Seeded data of ``shapes`` with the signature's dtypes."""
    rng = np.random.RandomState(seed)
    _check_size(specs, shapes)
    out = {}
    for name, (dtype, _) in specs.items():
        dt, shape = np.dtype(dtype), shapes[name]
        try:
            if dt.kind == "f" or _extended_float(dt):
                out[name] = rng.standard_normal(shape).astype(dt)
            elif dt.kind in "iu":
                out[name] = rng.randint(0, 4, size=shape).astype(dt)
            elif dt.kind == "b":
                out[name] = rng.randint(0, 2, size=shape).astype(dt)
            else:
                raise InputError(f"input {name!r} has dtype {dt}; data for it cannot be "
                                 f"generated: give it in an .npz file (--inputs)")
        except MemoryError:
            raise InputError(f"input {name!r} of shape {_fmt(shape)} does not fit in this "
                             f"machine's memory; give a smaller batch or shape") from None
    return out


def _extended_float(dt: np.dtype) -> bool:
    """bfloat16 and the other ml_dtypes float types (numpy's kind "V"): TF's bfloat16
    inputs. Data for them was "cannot be generated", and an .npz of them refused (bf16 hunt,
    2026-12-07)."""
    return dt.kind == "V" and dt.fields is None and dt.name.startswith(("bfloat16", "float8"))


def _check_size(specs: Specs, shapes: Dict[str, Shape]) -> None:
    """Refuses inputs that would take more than half of the machine's memory to generate
    (each is drawn as float64 first): with a batch of 10^11, numpy raised a MemoryError
    from deep inside (helper hunt, 2026-12-02), and a size just under the memory would
    have run into the OOM killer instead."""
    try:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):
        return
    need = sum(int(np.prod(shapes[name], dtype=object)) * (8 + np.dtype(dt).itemsize)
               for name, (dt, _) in specs.items() if name in shapes)
    if need > limit:
        raise InputError(f"the inputs of shapes "
                         f"{', '.join(f'{n} {_fmt(shapes[n])}' for n in specs if n in shapes)} "
                         f"need {need / 2**30:.1f} GiB of host memory to generate, more than "
                         f"half of this machine's ({limit * 2 / 2**30:.1f} GiB); give a "
                         f"smaller batch or shape")


def _check_cast(path: str, name: str, a: np.ndarray, cast: np.ndarray) -> None:
    """Refuses a narrowing cast that changed values: an int64 2**32 + 3 for an int32 input
    became 3, a float64 1e300 for a float32 one inf, and compare passed on data the user
    never gave (helper hunt, 2026-12-05). Floats may round; they may not overflow."""
    if a.dtype.kind in "iub" and cast.dtype.kind in "iub":
        bad = cast.astype(a.dtype) != a
    elif a.dtype.kind == "f" and cast.dtype.kind == "f":
        with np.errstate(all="ignore"):
            bad = np.isinf(cast) & np.isfinite(a)
    else:
        return
    if bad.any():
        k = int(np.argmax(bad.reshape(-1)))
        raise InputError(f"{path}: array {name!r} is {a.dtype} and {int(bad.sum())} of its "
                         f"values (e.g. {a.reshape(-1)[k].item()!r}) do not fit the input's "
                         f"{cast.dtype}; give values that fit, or an array of {cast.dtype}")


def load_npz(path: str, specs: Specs, flag: str = "--inputs") -> Dict[str, np.ndarray]:
    """The arrays of .npz ``path`` for the signature's inputs, checked and cast; ``flag`` is
    the command-line option that named the file (said in the errors)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as err:
        raise InputError(f"cannot read {path!r}: {err.strerror or err}") from None
    if magic == b"\x93NUMPY":
        raise InputError(f"{path!r} is a .npy file (one array, np.save); {flag} needs an .npz "
                         f"file with one array per input name, written by np.savez(path, "
                         f"name=array, ...)")
    if not magic.startswith(b"PK"):  # an .npz is a zip archive
        raise InputError(f"{path!r} is not an .npz file (a zip archive of arrays written by "
                         f"np.savez(path, name=array, ...))")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        # a truncated or damaged archive (BadZipFile: "Bad CRC-32 ..."; helper hunt)
        raise InputError(f"cannot read {path!r} as an .npz file of arrays: {err}") from None
    odd = sorted(k for k, a in arrays.items() if not isinstance(a, np.ndarray))
    if odd:  # np.load gives a member that is no .npy file as its raw bytes
        raise InputError(f"{path!r} holds member(s) {odd} that are not arrays (.npy); write "
                         f"it with np.savez(path, name=array, ...)")
    names = list(specs)
    if len(names) == 1 and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    extra = [k for k in arrays if k not in specs]
    if missing or extra:
        raise InputError(f"{path} holds arrays {sorted(arrays)}; the signature's inputs are "
                         f"{names} (one array per input name)")
    out = {}
    for name in names:
        dtype, shape = specs[name]
        a = arrays[name]
        if not fits(a.shape, shape):
            raise InputError(f"{path}: array {name!r} has shape {list(a.shape)}, which does not "
                             f"fit the input's shape {_fmt(shape)}")
        if np.dtype(dtype) == object and a.dtype.kind not in "SUO":
            raise InputError(f"{path}: array {name!r} is {a.dtype}; the input is a string "
                             f"(tf.string): give an array of str or bytes")
        if 0 in a.shape:
            raise InputError(f"{path}: array {name!r} has shape {list(a.shape)}, with no "
                             f"element: give at least one row")
        if a.dtype.kind == "V" and a.dtype.fields is None and _extended_float(np.dtype(dtype)) \
                and a.dtype.itemsize == np.dtype(dtype).itemsize:
            a = a.view(dtype)  # np.savez writes a bfloat16 array as raw 2-byte voids
        if a.dtype != np.dtype(dtype):
            if not np.can_cast(a.dtype, np.dtype(dtype), casting="same_kind"):
                raise InputError(f"{path}: array {name!r} is {a.dtype}; the input is "
                                 f"{np.dtype(dtype)}")
            cast = a.astype(dtype)
            _check_cast(path, name, a, cast)
            a = cast
        out[name] = a
    return out


def split_batches(arrays: Dict[str, np.ndarray],
                  batch: Optional[int]) -> List[Dict[str, np.ndarray]]:
    """Splits arrays along their first axis into batches of ``batch`` (None: one batch)."""
    if batch is None:
        return [arrays]
    scalars = sorted(k for k, a in arrays.items() if not np.ndim(a))
    if scalars:
        raise InputError(f"input(s) {scalars} are scalars: there is no first axis to split "
                         f"into batches of {batch}")
    counts = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(counts.values())) > 1:  # min() dropped the longer arrays' last samples
        raise InputError(f"the arrays to split into batches of {batch} hold different numbers "
                         f"of samples (first axis: {counts}); give every input the same count")
    n = next(iter(counts.values())) if arrays else 0
    return [{k: a[i:i + batch] for k, a in arrays.items()} for i in range(0, n, batch)]


def signature_specs(signature) -> Specs:
    """name -> (dtype, shape list or None) of a signature ConcreteFunction's keyword inputs."""
    spec = signature.structured_input_signature[1]
    return {name: (np.dtype(s.dtype.as_numpy_dtype),
                   None if s.shape.rank is None else s.shape.as_list())
            for name, s in sorted(spec.items())}


def _fmt(shape) -> str:
    if shape is None:
        return "<unknown rank>"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def dtype_name(dtype) -> str:
    """A numpy dtype as TensorFlow names it in reports: strings (numpy objects / bytes) are
    "string", not "object" (helper hunt, 2026-12-04)."""
    dtype = np.dtype(dtype)
    return "string" if dtype.kind in "OSU" else str(dtype)


def fmt_shape(shape) -> str:
    return _fmt(shape)
