"""Serving a converted SavedModel through NVIDIA Triton, with PyTriton (``tftrt serve``).

    from tftrt import serving
    with serving.Server("model_trt", serving.ServeConfig(gpus="all", max_batch=128)) as s:
        s.wait()                     # Triton serves HTTP :8000, gRPC :8001, metrics :8002

One Triton model (named after the directory unless told) serves one signature: its inputs and
outputs are Triton tensors with the signature's names, dtypes and shapes, the first dimension
being Triton's batch dimension. Triton's dynamic batcher merges requests (preferred batch
sizes: the opt batch of each optimization profile of the model's engines, else the maximum;
max queue delay configurable). One model instance per GPU served: each instance's calls run
under ``tf.device('/GPU:i')`` (and CuPy's device i); without a GPU, one CPU instance. Triton
itself checks requests (input names, dtypes, shapes, batch size) and answers health
(``/v2/models/<name>/ready``: the model's readiness; the server's turns 200 before the model
is loaded) and Prometheus metrics (``:8002/metrics``).

PyTriton's Triton runs its Python side in a prebuilt "stub" process that embeds libpython and
converts tensors with a pybind11 compiled against numpy 1.x. Two things follow, both handled
here (docs/serving.md says why):

* the stub links ``libpython3.X.so.1.0`` by name; unless the running interpreter's library
  directory comes first on ``LD_LIBRARY_PATH`` the loader takes the system's (Debian 12:
  3.11.2 under a pyenv 3.11.7 venv), whose C modules do not match the stdlib the stub then
  imports (``'_thread.RLock' object has no attribute '_recursion_count'``);
* with numpy 2 the stub's outputs arrive empty (numpy 2 changed the array-descriptor layout
  the old pybind11 reads). tftrt keeps numpy 2; the stub runs in a small environment of its
  own, numpy<2 plus a path to this environment's packages (:func:`stub_environment`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tftrt.logs import first_error_line

log = logging.getLogger("tftrt.serving")

INSTALL_HINT = ('pip install "tftrt[serving]" && pip install --no-deps nvidia-pytriton==0.7.0 '
                '(see docs/serving.md)')
STUB_PYTHONS = ((3, 8), (3, 9), (3, 10), (3, 11), (3, 12), (3, 13))  # PyTriton 0.7.0's stubs
MIN_GLIBC = (2, 35)  # the wheel is manylinux_2_35
NUMPY_FOR_STUB = "numpy>=1.21,<2"


class ServingError(RuntimeError):
    """Serving cannot start; the message says why and what to do."""


# ------------------------------------------------------------------------------------------
# Where PyTriton can run


def import_pytriton():
    """PyTriton's modules (Triton, TritonConfig, ModelConfig, Tensor, DynamicBatcher, batch)."""
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as e:
        raise ServingError(f"serving needs NVIDIA PyTriton ({e}): {INSTALL_HINT}") from None
    return dict(batch=batch, DynamicBatcher=DynamicBatcher, ModelConfig=ModelConfig,
                Tensor=Tensor, Triton=Triton, TritonConfig=TritonConfig)


def platform_problems() -> List[str]:
    """Why PyTriton's Triton cannot run in this process (empty when it can)."""
    problems = []
    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"):
        problems.append(f"PyTriton runs on Linux x86_64 / aarch64, not {sys.platform} "
                        f"{os.uname().machine}")
        return problems
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    parts = libc.split()
    if len(parts) == 2 and parts[0] == "glibc":
        version = tuple(int(p) for p in parts[1].split(".")[:2] if p.isdigit())
        if version < MIN_GLIBC:
            problems.append(f"{libc}: PyTriton's Triton needs glibc >= "
                            f"{'.'.join(map(str, MIN_GLIBC))} (manylinux_2_35)")
    if sys.version_info[:2] not in STUB_PYTHONS:
        problems.append(f"Python {sys.version_info[0]}.{sys.version_info[1]}: PyTriton 0.7.0 "
                        f"has Triton Python-backend stubs for 3.8-3.13 only")
    return problems


def libpython_dir() -> Optional[str]:
    """The directory of the running interpreter's ``libpython3.X.so.1.0``, or None when the
    interpreter is linked statically (the stub then loads the system's libpython)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR")
    name = f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    if libdir and os.path.exists(os.path.join(libdir, name)):
        return libdir
    return None


def _site_dirs() -> List[str]:
    import site
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user and os.path.isdir(user):
        dirs.append(user)
    return dirs


def _package_dirs() -> List[str]:
    """Where this interpreter imports packages from and Triton's stub must too: PYTHONPATH's
    directories first (``pip install --target`` puts PyTriton and pyzmq there, as the GPU
    host's packs do; the stub does not inherit PYTHONPATH), then the site directories."""
    dirs: List[str] = []
    for d in os.environ.get("PYTHONPATH", "").split(os.pathsep) + _site_dirs():
        d = os.path.abspath(d) if d else ""
        if d and os.path.isdir(d) and d not in dirs:
            dirs.append(d)
    return dirs


STUB_DIRS_VAR = "TFTRT_STUB_PACKAGE_DIRS"  # where the stub imports packages from, at its start
STUB_FORMAT = "v2"  # v1 environments were one per set of package directories


def stub_environment(create: bool = True) -> Optional[pathlib.Path]:
    """The Python environment Triton's Python-backend stub runs in, or None for this one.

    With numpy 1.x here, this environment. With numpy 2: ``TFTRT_TRITON_STUB_ENV`` when set,
    else a venv under the tftrt cache (made once per Python environment, on first use, with
    ``pip install "numpy<2"``; ``create=False`` only looks). Its own site-packages hold
    numpy<2 and a ``.pth`` line that adds, after it, the package directories named by
    ``TFTRT_STUB_PACKAGE_DIRS`` when the stub starts (:func:`_start_triton` sets it to this
    process's PYTHONPATH and site directories, :func:`_package_dirs`; the stub does not
    inherit PYTHONPATH itself), else those of the process that made it. So the stub imports
    PyTriton's proxy and pyzmq from here and numpy 1.x from there.

    Until 2026-12-04 the directories were written into the environment, one environment
    (77 MB) per PYTHONPATH: every test run left two more in ~/.cache (2.3 GB after one day).
    Environments of that kind whose directories are gone are removed when one is made.
    """
    if int(np.__version__.split(".")[0]) < 2:
        return None
    given = os.environ.get("TFTRT_TRITON_STUB_ENV", "").strip()
    if given:
        path = pathlib.Path(given)
        if not (path / "bin" / "python").exists():
            raise ServingError(f"TFTRT_TRITON_STUB_ENV={given!r} is not a Python environment "
                               f"(no bin/python); unset it to let tftrt make one")
        return path
    import hashlib
    # Beside the build cache's default place, not in TFTRT_CACHE_DIR (tests point that at a
    # temporary directory per session): one stub environment per Python environment.
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    tag = hashlib.sha256(f"{STUB_FORMAT}\n{sys.prefix}".encode()).hexdigest()[:12]
    path = base / "tftrt" / "triton-stub" / f"py{sys.version_info[0]}{sys.version_info[1]}-{tag}"
    if (path / "READY").exists():
        return path
    if not create:
        return None
    _make_stub_environment(path)
    _remove_stale_stub_environments(path.parent)
    return path


def stub_pth_line(default_dirs: Sequence[str]) -> str:
    """The ``.pth`` line of a stub environment: the directories of ``TFTRT_STUB_PACKAGE_DIRS``
    (else ``default_dirs``) added to sys.path, after the environment's own site-packages.
    ``import`` lines of a .pth run at start-up, and addsitedir also runs those directories'
    own .pth files (editable installs)."""
    default = os.pathsep.join(default_dirs)
    # one statement in the .pth's own scope: site runs it with exec() in a function, where
    # a comprehension does not see the names the line imported
    return (f"import os, site; list(map(site.addsitedir, filter(None, (os.environ.get("
            f"{STUB_DIRS_VAR!r}) or {default!r}).split(os.pathsep))))\n")


def _install_stub_numpy(site: pathlib.Path) -> None:
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", "--no-warn-script-location",
                          "--target", str(site), NUMPY_FOR_STUB],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise ServingError(f"could not install {NUMPY_FOR_STUB} for Triton's Python stub "
                           f"(pip said: {run.stderr.strip()[-800:]}); make such an "
                           f"environment yourself and point TFTRT_TRITON_STUB_ENV at it "
                           f"(docs/serving.md)")


def _make_stub_environment(path: pathlib.Path) -> None:
    import shutil
    import tempfile
    import venv
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    log.warning("numpy %s here: making the numpy<2 environment Triton's Python stub runs in, "
                "once, at %s (pip install %r)", np.__version__, path, NUMPY_FOR_STUB)
    try:
        venv.EnvBuilder(with_pip=False, symlinks=True).create(tmp)
        site = tmp / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
            "site-packages"
        _install_stub_numpy(site)
        (site / "zz_tftrt_main_env.pth").write_text(stub_pth_line(_package_dirs()))
        (tmp / "READY").write_text(f"{NUMPY_FOR_STUB}\n{STUB_FORMAT}\n")
        try:
            os.rename(tmp, path)
        except OSError:  # another process made it first
            if not (path / "READY").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_stub_environments(parent: pathlib.Path) -> List[pathlib.Path]:
    """Removes the stub environments of the old kind (the package directories written in,
    no ``TFTRT_STUB_PACKAGE_DIRS``) that name a directory which no longer exists: a
    temporary PYTHONPATH, a removed checkout. Those could not start a stub any more. Returns
    what it removed."""
    import re
    import shutil
    removed = []
    for env in parent.iterdir() if parent.is_dir() else ():
        pth = list(env.glob("lib/python*/site-packages/zz_tftrt_main_env.pth"))
        if not (env / "READY").exists() or len(pth) != 1:
            continue
        try:
            text = pth[0].read_text()
        except OSError:
            continue
        if STUB_DIRS_VAR in text:
            continue
        named = re.findall(r"site\.addsitedir\('([^']*)'\)", text)
        if named and not all(os.path.isdir(d) for d in named):
            shutil.rmtree(env, ignore_errors=True)
            removed.append(env)
    return removed


# ------------------------------------------------------------------------------------------
# The model: signature -> Triton tensors


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype        # numpy dtype (object for strings: Triton's BYTES)
    shape: Tuple[int, ...]  # without the batch dimension; -1 where unknown
    # one value per sample (signature shape [None]): Triton needs dims, so it carries [1]
    # (requests send [batch, 1]) and the infer function drops / adds that axis
    scalar: bool = False


def _numpy_dtype(tf_dtype, what: str) -> np.dtype:
    import tensorflow as tf
    if tf_dtype == tf.string:
        return np.dtype(object)
    if tf_dtype == tf.bfloat16 or not (tf_dtype.is_floating or tf_dtype.is_integer or
                                       tf_dtype.is_bool):
        raise ServingError(f"{what} has dtype {tf_dtype.name}, which Triton's Python backend "
                           f"does not carry; serve a signature with float, int, bool or string "
                           f"tensors")
    return np.dtype(tf_dtype.as_numpy_dtype)


def _batched(spec, what: str) -> Tuple[int, ...]:
    if spec.shape.rank is None:
        raise ServingError(f"{what} has an unknown rank; Triton needs each tensor's rank "
                           f"(export the model with a shaped input_signature)")
    dims = spec.shape.as_list()
    if not dims or dims[0] is not None:
        raise ServingError(f"{what} has shape {dims}: Triton's dynamic batching needs a "
                           f"first dimension of any size (None) in every input and output")
    return tuple(-1 if d is None else int(d) for d in dims[1:])


def signature_tensors(fn) -> Tuple[List[TensorInfo], List[TensorInfo]]:
    """(inputs, outputs) of a signature ConcreteFunction as Triton tensors."""
    import tensorflow as tf
    specs = fn.structured_input_signature[1]
    if not specs or fn.structured_input_signature[0]:
        raise ServingError("the signature must take keyword tensors (a SavedModel signature)")
    inputs = [_tensor_info(n, s, f"input {n!r}") for n, s in sorted(specs.items())]
    outs = fn.structured_outputs
    if not isinstance(outs, dict) or not all(isinstance(v, tf.TensorSpec) or
                                             hasattr(v, "dtype") for v in outs.values()):
        raise ServingError("the signature must return a flat dict of tensors")
    outputs = [_tensor_info(n, s, f"output {n!r}") for n, s in sorted(outs.items())]
    return inputs, outputs


def _tensor_info(name: str, spec, what: str) -> TensorInfo:
    """A signature tensor as Triton's: a [None] one (a string per request, a class id) as
    [1], which Triton accepts (it refused the model: "must specify 'dims'")."""
    shape = _batched(spec, what)
    dtype = _numpy_dtype(spec.dtype, what)
    return TensorInfo(name, dtype, (1,), scalar=True) if not shape else \
        TensorInfo(name, dtype, shape)


def preferred_batch_sizes(model, max_batch: int) -> Tuple[List[int], bool]:
    """Triton's preferred batch sizes: the batch (first dimension of the first input) of each
    optimization profile's opt shape, up to ``max_batch``, plus ``max_batch``; without
    profiles ``[max_batch]``. Returns (sizes, whether the engines have profiles)."""
    sizes = set()
    has_profiles = False
    for op in getattr(model, "engine_ops", {}).values():
        for p in _profiles(op):
            has_profiles = True
            if p.opt and p.opt[0] and 0 < p.opt[0][0] <= max_batch:
                sizes.add(int(p.opt[0][0]))
    sizes.add(max_batch)
    return sorted(sizes), has_profiles


def _profiles(op):
    """The optimization profiles of engine op ``op``'s cached engines."""
    for _, engine in op.cache.items():
        yield from getattr(engine, "profiles", ())


def profile_batch_limit(model) -> Optional[int]:
    """The largest batch that every engine op's profiles serve (the smallest of the ops'
    largest profile batches), or None without profiles."""
    per_op = []
    for op in getattr(model, "engine_ops", {}).values():
        tops = [int(p.max[0][0]) for p in _profiles(op) if p.max and p.max[0]]
        if tops:
            per_op.append(max(tops))
    return min(per_op) if per_op else None


def resolve_gpus(spec: Union[str, Sequence[int], None]) -> List[int]:
    """``all`` (every GPU TensorFlow sees; none: []), ``none`` / None, ``0,1`` or a list."""
    import tensorflow as tf
    visible = len(tf.config.list_physical_devices("GPU"))
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("none", "")):
        return []
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(visible))
    if isinstance(spec, str):
        parts = [v.strip() for v in spec.split(",")]
        try:
            if "" in parts:  # "0,", ",": a typo, not "none" (helper hunt, 2026-12-04)
                raise ValueError
            ids = [int(v) for v in parts]
        except ValueError:
            raise ServingError(f"--gpus {spec!r}: give all, none or GPU numbers like 0,1") \
                from None
    else:
        ids = [int(v) for v in spec]
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise ServingError(f"GPUs {ids}: each GPU number once, >= 0")
    bad = [i for i in ids if i >= visible]
    if bad:
        raise ServingError(f"GPU(s) {bad} requested, but TensorFlow sees {visible} GPU(s)"
                           f"{' (no GPU: serve with --gpus none)' if not visible else ''}")
    return ids


def make_infer_func(fn, inputs: List[TensorInfo], outputs: List[TensorInfo],
                    gpu: Optional[int]) -> Callable[..., Dict[str, np.ndarray]]:
    """One model instance: a batched callable running ``fn`` on GPU ``gpu`` (None: the CPU)."""
    import tensorflow as tf
    device = "/CPU:0" if gpu is None else f"/GPU:{gpu}"
    cupy_device = None
    if gpu is not None:
        try:
            import cupy
            cupy_device = cupy.cuda.Device(gpu)
        except ImportError:
            pass
    dtypes = {t.name: t.dtype for t in outputs}
    scalar_in = {t.name for t in inputs if t.scalar}
    scalar_out = {t.name for t in outputs if t.scalar}
    upload = _gpu_upload(cupy_device) if cupy_device is not None else None

    def feed(k, v):
        if k in scalar_in:
            v = v.reshape(v.shape[:1])
        if upload is not None and v.dtype.kind == "f":
            return upload(v)
        return tf.constant(v)

    def infer(**arrays: np.ndarray) -> Dict[str, np.ndarray]:
        feeds = {k: feed(k, v) for k, v in arrays.items()}
        try:
            with tf.device(device):
                if cupy_device is not None:
                    with cupy_device:
                        result = fn(**feeds)
                else:
                    result = fn(**feeds)
        except tf.errors.InvalidArgumentError as e:
            # the model refused the request's values (an index out of range): what the
            # client needs is TF's message, not 99 lines of PyTriton's and TF's frames
            raise _bad_request(e) from None
        out = {k: np.asarray(v.numpy(), dtype=dtypes[k]) for k, v in result.items()}
        return {k: v.reshape(-1, 1) if k in scalar_out else v for k, v in out.items()}

    infer.device = device  # type: ignore[attr-defined]
    return infer


def _gpu_upload(cupy_device):
    """A float batch from the host straight to GPU memory, given to TensorFlow by DLPack:
    ``tf.constant`` copied each merged batch once more on the host first (ResNet50: 77 MB per
    batch of 128, a third of the serving process's busy time on the CPU). Any failure turns
    it off for the instance, said once; ``tf.constant`` then feeds as before."""
    import cupy
    from tftrt import tensor_bridge
    broken: List[str] = []

    def upload(v: np.ndarray):
        if not broken:
            try:
                with cupy_device:
                    a = cupy.asarray(v)
                    cupy.cuda.get_current_stream().synchronize()  # before TF's stream reads
                return tensor_bridge.from_backend(a, "cupy", a.dtype)
            except Exception as e:  # noqa: BLE001 -- feeding through the host still works
                broken.append(f"{type(e).__name__}: {e}")
                log.warning("GPU %d: uploading requests directly failed (%s); they go "
                            "through tf.constant", cupy_device.id, broken[0])
        import tensorflow as tf
        return tf.constant(v)

    return upload


def _bad_request(e) -> Exception:
    """PyTriton's error for a request the model refused, with TF's message in one line.
    PyTriton 0.7.0 answers any exception as an error 500 whose text is
    ``traceback.format_exception(None, err, err.__traceback__)``: the client got 20 lines of
    frames, with the server's paths (serving hunt, s49). This error shows no traceback, so
    the text is its one line."""
    from pytriton.exceptions import PyTritonBadParameterError

    class RefusedRequest(PyTritonBadParameterError):
        # the interpreter keeps the traceback (it sets it in C); Python code reads none
        __traceback__ = property(lambda self: None, lambda self, tb: None)

    RefusedRequest.__qualname__ = "RefusedRequest"  # the client reads its name
    return RefusedRequest(f"the model refused the request: {first_error_line(e)}")


PROBE_BATCHES = (7, 5)  # batch sizes the signature's graph is shaped for (batch_unaligned)


def batch_unaligned(model_dir: str, signature: str, tags=None) -> Optional[List[str]]:
    """The signature's outputs whose first dimension does not follow the batch: a filter
    (``tf.boolean_mask``, ``tf.where``, ``tf.unique``) or a concat along it. Their signature
    shape is [None, ...] like a batched output's, and PyTriton's batch split checks only the
    merged total: where the counts happened to match, a client got another client's values
    (serving hunt, s49). Found by TF's shape inference on the signature's graph with the
    inputs' batch fixed (``PROBE_BATCHES``; no variable is read, and an engine is its native
    segment's call there); None when that cannot be done."""
    import tensorflow as tf
    from tensorflow.python.saved_model import loader_impl
    try:
        saved = loader_impl.parse_saved_model(model_dir)
        want = set(tags) if tags else {"serve"}
        meta = next(m for m in saved.meta_graphs if set(m.meta_info_def.tags) == want)
        if signature not in meta.signature_def:  # [] would make an empty one
            raise KeyError(f"no signature {signature!r}")
        sig = meta.signature_def[signature]
        followed = None
        for batch in PROBE_BATCHES:
            graph = tf.Graph()
            with graph.as_default():
                feeds = {}
                for info in sig.inputs.values():
                    dims = [int(d.size) for d in info.tensor_shape.dim]
                    dims = [batch if i == 0 else (None if d < 0 else d)
                            for i, d in enumerate(dims)]
                    feeds[info.name] = tf.compat.v1.placeholder(
                        tf.dtypes.as_dtype(info.dtype), dims)
                tf.compat.v1.train.import_meta_graph(meta, input_map=feeds,
                                                     clear_devices=True)
                now = {name for name, info in sig.outputs.items()
                       if graph.get_tensor_by_name(info.name).shape.rank and
                       graph.get_tensor_by_name(info.name).shape[0] == batch}
            followed = now if followed is None else followed & now
    except Exception as e:  # noqa: BLE001 -- a graph TF cannot shape: said, not fatal
        log.warning("%s: could not check that every output of signature %r follows the "
                    "batch (%s: %s); requests are merged, so an output whose first dimension "
                    "is not the batch (a filter such as tf.boolean_mask) would mix clients' "
                    "answers: serve such a signature with --max-batch 1", model_dir,
                    signature, type(e).__name__, first_error_line(e))
        return None
    return sorted(set(sig.outputs) - followed)


def batching(pt, infers: Sequence[Callable], outputs: List[TensorInfo],
             what: str = "the model", unaligned: Sequence[str] = ()) -> List[Callable]:
    """Triton's infer function for each of ``infers`` (one per model instance): requests
    merged into one batch (PyTriton's ``batch``), or each request on its own where an
    output's size is known only at run time (``tf.strings.split(...).to_tensor()``: merged
    with other clients' requests a request's answer was padded to theirs, helper hunt
    2026-12-02) or its first dimension does not follow the batch (``unaligned``: see
    :func:`batch_unaligned`). That is said once, for all instances."""
    ragged = [t.name for t in outputs if -1 in t.shape and t.name not in unaligned]
    if not ragged and not unaligned:
        return [pt["batch"](f) for f in infers]
    if ragged:
        log.warning("%s: outputs %s have sizes known only at run time, which merged requests "
                    "would pad to each other's: Triton still queues requests together, but "
                    "each runs on its own", what, ragged)
    if unaligned:
        log.warning("%s: outputs %s have a first dimension that is not the batch (a filter "
                    "such as tf.boolean_mask / tf.where, or a concat along the batch), so "
                    "merged requests could not be split back: Triton still queues requests "
                    "together, but each runs on its own", what, list(unaligned))
    return [_one_by_one(f) for f in infers]


def _one_by_one(infer):
    """Triton's infer function running each queued request on its own (no merged batch)."""
    def run(requests):
        return [infer(**req) for req in requests]
    return run


MAX_BATCH_LIMIT = 2 ** 31 - 1  # Triton's max_batch_size is an int32
# Triton takes a uint64; past 2**64 its model repository failed to load with its reason only
# in its log, and near it a request that filled no preferred batch waited for ever (helper
# hunt, 2026-12-04)
MAX_QUEUE_DELAY_US = 60_000_000


def check_ports(cfg: "ServeConfig") -> None:
    """ServingError when Triton could not bind its address and ports: it exits at once then,
    but PyTriton waits its 120 s start-up timeout before saying so, and then blamed the
    ports for a bad address (helper hunt, 2026-12-02). Each port is bound and released here
    (as Triton binds, with SO_REUSEADDR: a port a stopped server left in TIME_WAIT is free)."""
    import socket
    for flag, port in distinct_ports(cfg).items():
        try:
            infos = socket.getaddrinfo(cfg.address, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, ValueError) as e:
            raise ServingError(f"--address {cfg.address!r} is no address to listen on "
                               f"({e})") from None
        family, kind, proto, _, where = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(where)
            except OSError as e:
                import errno
                hint = ("; another server there? Choose free ports with --http-port / "
                        "--grpc-port / --metrics-port" if e.errno == errno.EADDRINUSE else
                        f"; is {cfg.address} an address of this machine?")
                raise ServingError(f"cannot listen on {cfg.address}:{port} ({flag}): "
                                   f"{e.strerror or e}{hint}") from None


def distinct_ports(cfg: "ServeConfig") -> Dict[str, int]:
    """{flag: port} of the three endpoints; ServingError when two are the same."""
    ports = {"--http-port": cfg.http_port, "--grpc-port": cfg.grpc_port,
             "--metrics-port": cfg.metrics_port}
    if len(set(ports.values())) != len(ports):
        raise ServingError(f"the HTTP, gRPC and metrics ports must differ; got {ports}")
    return ports


# Each instance is a Triton stub process; PyTriton's instances fetch their configuration
# from the first one's socket within a fixed 1 s, which 16 instances starting on 2 cores
# missed now and then (serving hunt, 2026-12-04).
MAX_INSTANCES_PER_GPU = 8
MAX_INSTANCES = 32


def check_instances(n, devices: int = 1) -> int:
    """``--instances-per-gpu``: a whole number 1..8, and at most 32 instances over the
    ``devices`` (GPUs, or 1 for the CPU)."""
    import numbers
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or \
            not 1 <= n <= MAX_INSTANCES_PER_GPU:
        raise ServingError(f"instances per GPU {n!r}: give a whole number from 1 to "
                           f"{MAX_INSTANCES_PER_GPU}")
    if int(n) * max(1, devices) > MAX_INSTANCES:
        raise ServingError(f"{n} instances on each of {devices} GPUs make "
                           f"{int(n) * devices} Triton stub processes; at most "
                           f"{MAX_INSTANCES} start reliably: fewer instances per GPU, or "
                           f"one server per GPU")
    return int(n)


def check_shared_memory(cfg: "ServeConfig") -> None:
    """``--shared-memory`` only on a loopback address: a client that registers a region
    names any shared-memory segment of the server's host, which Triton then reads as input
    and overwrites with outputs; on 0.0.0.0 any network client could (serving hunt,
    2026-12-04). Shared memory serves clients on this host anyway."""
    import ipaddress
    if not cfg.shared_memory:
        return
    try:
        loopback = ipaddress.ip_address(str(cfg.address).strip()).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ServingError(f"--shared-memory lets clients name any shared-memory segment of "
                           f"this host for Triton to read and write: serve it on a loopback "
                           f"address (--address 127.0.0.1), not {cfg.address}, and put a "
                           f"second server without it on the network address if remote "
                           f"clients need one")


def check_queue_delay(us: int) -> None:
    """ServingError for a dynamic-batcher delay Triton would not serve with."""
    if not 0 <= us <= MAX_QUEUE_DELAY_US:
        raise ServingError(f"max queue delay {us} us: --max-queue-delay-us must be in "
                           f"0..{MAX_QUEUE_DELAY_US} (a minute; a request that fills no "
                           f"preferred batch waits that long)")


def listen_address(address: str) -> str:
    """The numeric IPv4 address Triton and PyTriton are given for ``--address``: a host name
    is resolved ("localhost" made Triton's HTTP server bind 255.255.255.255, and PyTriton
    waited 120 s for it), an IPv6 address is refused (PyTriton 0.7 builds URLs such as
    http://::1:8000 it then rejects). Raises ServingError for what is no IPv4 address."""
    import ipaddress
    import socket
    text = str(address).strip()
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.version != 4:
            raise ServingError(f"--address {address!r} is IPv6: PyTriton serves IPv4 "
                               f"addresses only (0.0.0.0 for every interface)")
        return str(ip)
    try:
        infos = socket.getaddrinfo(text, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise ServingError(f"--address {address!r} is no IPv4 address or host name to "
                           f"listen on ({e})") from None
    return infos[0][4][0]

# ------------------------------------------------------------------------------------------
# The server


@dataclasses.dataclass
class ServeConfig:
    """What ``tftrt serve`` takes (see docs/serving.md)."""

    signature: str = "serving_default"
    model_name: Optional[str] = None        # default: the directory's name
    gpus: Union[str, Sequence[int], None] = "all"
    max_batch: int = 128
    max_queue_delay_us: int = 100
    preferred_batch_sizes: Optional[Sequence[int]] = None  # default: from the profiles
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    address: str = "0.0.0.0"
    tags: Optional[Sequence[str]] = None
    exit_timeout_s: int = 10
    log_verbose: int = 0
    # Triton model instances per GPU (or on the CPU): each its own Python stub and handler
    # thread, so one batch's copies overlap another's engine call
    instances_per_gpu: int = 1
    # clients on this host may register system shared memory for their tensors (Triton's
    # shared-memory endpoint, else behind PyTriton's per-run token)
    shared_memory: bool = False


class Server:
    """A converted SavedModel served by Triton; a context manager (``start`` / ``stop``)."""

    def __init__(self, model_dir: str, config: Optional[ServeConfig] = None,
                 model=None):
        self.model_dir = os.fspath(model_dir)
        self.config = config or ServeConfig()
        self._model = model
        self._triton = None
        self.model_name = self.config.model_name or _model_name(self.model_dir)
        self.instances: List[str] = []
        self.preferred: List[int] = []
        self._stubs: List[int] = []  # Triton's Python-stub processes, one per instance
        self._counted = False  # in _RUNNING_SERVERS
        self.ended: Optional[str] = None  # why wait() returned by itself

    def start(self) -> "Server":
        """Loads the model, starts Triton, loads the model into it; returns when it serves."""
        cfg = self.config
        if self._triton is not None:  # its own ports: "another server there?" (hunt, s49)
            raise ServingError(f"this Server already serves {self.model_dir} (HTTP "
                               f"{cfg.http_port}); stop() it before starting it again")
        if not 0 < cfg.max_batch <= MAX_BATCH_LIMIT:
            raise ServingError(f"max batch {cfg.max_batch}: give a batch size in "
                               f"1..{MAX_BATCH_LIMIT} (Triton's max_batch_size is an int32)")
        check_queue_delay(cfg.max_queue_delay_us)
        check_model_name(self.model_name)
        check_instances(cfg.instances_per_gpu)
        cfg = self.config = dataclasses.replace(cfg, address=listen_address(cfg.address))
        check_shared_memory(cfg)
        problems = platform_problems()
        if problems:
            raise ServingError("PyTriton cannot run here: " + "; ".join(problems) +
                               " (docs/serving.md)")
        pt = import_pytriton()
        model = self._model
        if model is None:
            import tftrt
            try:
                model = tftrt.load(self.model_dir, tags=list(cfg.tags) if cfg.tags else None)
            except ServingError:
                raise
            except Exception as e:  # a corrupt SavedModel: one line, not TF's stack
                raise ServingError(f"cannot load the SavedModel {self.model_dir}: "
                                   f"{type(e).__name__}: {first_error_line(e)}") from e
        if cfg.signature not in model.signatures:
            raise ServingError(f"signature {cfg.signature!r} not found in {self.model_dir}; "
                               f"available: {sorted(model.signatures)}")
        fn = model.signatures[cfg.signature]
        inputs, outputs = signature_tensors(fn)
        gpus = resolve_gpus(cfg.gpus)
        if cfg.preferred_batch_sizes:
            self.preferred = sorted({int(b) for b in cfg.preferred_batch_sizes
                                     if 0 < int(b) <= cfg.max_batch}) or [cfg.max_batch]
            dropped = sorted({int(b) for b in cfg.preferred_batch_sizes} - set(self.preferred))
            if dropped:
                log.warning("preferred batch sizes %s are outside 1..%d (the max batch): "
                            "Triton gets %s", dropped, cfg.max_batch, self.preferred)
        else:
            self.preferred, has_profiles = preferred_batch_sizes(model, cfg.max_batch)
            if getattr(model, "engine_ops", None) and not has_profiles:
                log.warning("%s: its engines serve exact shapes (no optimization profiles), "
                            "and dynamic batching makes batches of 1..%d: each new batch size "
                            "builds an engine at run time. Convert with --dynamic-shape and "
                            "--batch-sizes 1,%d (docs/serving.md)", self.model_dir,
                            cfg.max_batch, cfg.max_batch)
        limit = profile_batch_limit(model)
        if limit is not None and cfg.max_batch > limit:  # (serving hunt, s49)
            log.warning("%s: max batch %d is above the %d its engines' profiles serve: "
                        "merged batches of %d..%d build engines at run time (and evict "
                        "others). Serve with --max-batch %d, or convert with --dynamic-shape "
                        "--batch-sizes 1,%d", self.model_dir, cfg.max_batch, limit, limit + 1,
                        cfg.max_batch, limit, cfg.max_batch)
        per_device = check_instances(cfg.instances_per_gpu, len(gpus))
        funcs = [make_infer_func(fn, inputs, outputs, g) for g in (gpus or [None])
                 for _ in range(per_device)]
        self.instances = [f.device for f in funcs]
        unaligned = batch_unaligned(self.model_dir, cfg.signature, cfg.tags) or ()
        batched = batching(pt, funcs, outputs, self.model_dir, unaligned)

        stub = stub_environment()
        for attempt in range(1, HANDSHAKE_TRIES + 1):
            if self._serve_once(pt, cfg, stub, batched, inputs, outputs,
                                retry=attempt < HANDSHAKE_TRIES):
                break
        log.info("serving %s (signature %s) as Triton model %r on %s: HTTP %d, gRPC %d, "
                 "metrics %d; max batch %d, preferred %s, queue delay %d us",
                 self.model_dir, cfg.signature, self.model_name, ", ".join(self.instances),
                 cfg.http_port, cfg.grpc_port, cfg.metrics_port, cfg.max_batch,
                 self.preferred, cfg.max_queue_delay_us)
        return self

    def _serve_once(self, pt, cfg, stub, batched, inputs, outputs, retry: bool) -> bool:
        """Starts Triton and loads the model; False when the load lost PyTriton's start-up
        handshake race and ``retry`` allows another try (Triton stopped again)."""
        check_ports(cfg)
        try:
            self._triton = _start_triton(pt, cfg, stub)
        except Exception as e:
            raise ServingError(f"Triton did not start ({type(e).__name__}: {e}); its log "
                               f"above says why (ports {cfg.http_port}, {cfg.grpc_port}, "
                               f"{cfg.metrics_port} were free a moment before)") from e
        try:
            self._triton.bind(
                model_name=self.model_name,
                infer_func=batched if len(batched) > 1 else batched[0],
                inputs=[pt["Tensor"](name=t.name, dtype=_pt_dtype(t.dtype), shape=t.shape)
                        for t in inputs],
                outputs=[pt["Tensor"](name=t.name, dtype=_pt_dtype(t.dtype), shape=t.shape)
                         for t in outputs],
                config=pt["ModelConfig"](
                    max_batch_size=cfg.max_batch,
                    batcher=pt["DynamicBatcher"](
                        max_queue_delay_microseconds=cfg.max_queue_delay_us,
                        preferred_batch_size=self.preferred)),
                strict=True)
            self._triton.run()
            self._stubs = _stub_pids(self._triton)
            _RUNNING_SERVERS[0] += 1
            self._counted = True
        except BaseException as e:
            self.stop()
            if retry and isinstance(e, Exception) and lost_handshake(e):
                log.warning("a model instance missed PyTriton's start-up handshake (its "
                            "instances load in parallel and the first opens the socket the "
                            "others read within 1 s): starting Triton again")
                return False
            if isinstance(e, Exception) and not isinstance(e, ServingError):
                raise ServingError(f"Triton did not load the model ({type(e).__name__}: "
                                   f"{e})") from e
            raise
        return True

    def wait(self, stop: Optional[threading.Event] = None, poll_s: float = 1.0) -> None:
        """Blocks until ``stop`` is set or Triton (or a model instance) is no longer alive.

        (PyTriton's own ``serve()`` starts Triton again when it was stopped meanwhile.)"""
        stop = stop or threading.Event()
        while not stop.wait(poll_s):
            triton = self._triton
            if triton is None or not triton.is_alive():
                self.ended = _triton_end(triton)
                return
            # A stub killed (the OOM killer) left its instance failing every request it
            # got ("Stub process ... is not healthy") while Triton stayed live and ready
            # (serving hunt, 2026-12-04): the server ends, so a restart policy acts.
            dead = [p for p in self._stubs if not _process_alive(p)]
            if dead:
                self.ended = (f"model instance process {dead[0]} (Triton's Python stub) "
                              f"ended; its instance could not answer any more")
                return

    def stop(self) -> None:
        """Stops Triton and its stub processes; frees the ports and PyTriton's shared
        memory."""
        triton, self._triton = self._triton, None
        if self._counted:
            _RUNNING_SERVERS[0] -= 1
            self._counted = False
        if triton is not None:
            try:
                triton.stop()
            finally:
                if self._stubs and not all(_process_alive(p) for p in self._stubs):
                    _remove_proxy_shared_memory()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


HANDSHAKE_TRIES = 3


def lost_handshake(e: BaseException) -> bool:
    """Whether a model load failed because an instance after the first could not read
    PyTriton's handshake socket in time (connection refused between the first instance's
    bind and listen, or no socket within 1 s on a busy machine; CI, 2026-12-05)."""
    text = str(e)
    return ("get_config_from_handshake_server" in text or
            "waiting for config file" in text)


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _model_name(model_dir: str) -> str:
    """The directory's name with what Triton refuses in a model name (anything but ASCII
    letters, digits, dots, underscores and dashes: "modèle" was kept by isalnum, helper hunt
    2026-12-04) made underscores."""
    name = os.path.basename(os.path.normpath(os.path.abspath(model_dir)))
    return "".join(c if c in _NAME_CHARS else "_" for c in name) or "model"


def check_model_name(name: str) -> None:
    """ServingError for a --model-name Triton would refuse after it started."""
    if not name or any(c not in _NAME_CHARS for c in name) or name in (".", ".."):
        raise ServingError(f"model name {name!r}: Triton takes ASCII letters, digits, dots, "
                           f"underscores and dashes only")


def _pt_dtype(dtype: np.dtype):
    return np.bytes_ if dtype == np.dtype(object) else dtype.type


_ENV_LOCK = threading.Lock()


def pytriton_libs_dir() -> Optional[str]:
    """The directory of the libraries PyTriton's wheel bundles for Triton (libcudart and
    others, ``nvidia_pytriton.libs`` beside the ``pytriton`` package), when PyTriton would
    not find it itself: PyTriton looks beside the package only when the package sits in one of
    ``site.getsitepackages()``, and otherwise (installed with ``pip install --target`` or put
    on PYTHONPATH) takes itself for an editable install and looks in its source tree. Triton
    then did not start on the 2-GPU H200 (2026-12-04): "tritonserver: error while loading
    shared libraries: libcudart-09529672.so.12.6.77". None where nothing is missing."""
    try:
        import pytriton
        from pytriton.utils import distribution
        if not distribution.is_editable_install():
            return None
        libs = pathlib.Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
    except Exception:  # noqa: BLE001 -- PyTriton's own lookup stands
        return None
    return str(libs) if libs.is_dir() else None


def _start_triton(pt, cfg: ServeConfig, stub: Optional[pathlib.Path]):
    """Starts Triton (PyTriton starts it on entering its context) with the stub fixes."""
    import pytriton.server.triton_server as ts
    tconf = pt["TritonConfig"](
        http_address=cfg.address, http_port=cfg.http_port,
        grpc_address=cfg.address, grpc_port=cfg.grpc_port,
        metrics_address=cfg.address, metrics_port=cfg.metrics_port,
        exit_timeout_secs=cfg.exit_timeout_s, log_verbose=cfg.log_verbose,
        allow_gpu_metrics=None)
    libdir = libpython_dir()
    if libdir is None:
        log.warning("this Python is linked statically: Triton's stub loads the system's "
                    "libpython%d.%d, which must be the same release as this interpreter",
                    *sys.version_info[:2])
    with _ENV_LOCK:
        # Triton (and its stub) inherit the environment at start; put it back afterwards.
        before = os.environ.get("LD_LIBRARY_PATH")
        before_dirs = os.environ.get(STUB_DIRS_VAR)
        os.environ[STUB_DIRS_VAR] = os.pathsep.join(_package_dirs())
        saved_env_fn = ts.get_triton_python_backend_python_env
        dirs = [d for d in (libdir, pytriton_libs_dir()) if d]
        if dirs:
            os.environ["LD_LIBRARY_PATH"] = ":".join(dirs) + (":" + before if before else "")
        if stub is not None:
            # PyTriton puts <env>/bin first on the stub's PATH; the stub takes its Python
            # (and so its site-packages) from there.
            ts.get_triton_python_backend_python_env = lambda: stub
        import pytriton.triton as pt_triton
        saved_wait = getattr(pt_triton, "wait_for_server_ready", None)
        try:
            triton = pt["Triton"](config=tconf, security_config=_security_config(cfg.shared_memory))
            if saved_wait is not None:
                pt_triton.wait_for_server_ready = _watching(saved_wait, triton)
            triton.__enter__()
        finally:
            if saved_wait is not None:
                pt_triton.wait_for_server_ready = saved_wait
            ts.get_triton_python_backend_python_env = saved_env_fn
            for var, value in (("LD_LIBRARY_PATH", before), (STUB_DIRS_VAR, before_dirs)):
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
    return triton


def _proc_stat(pid) -> List[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...); OSError
    when the process is gone."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        return _proc_stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def _triton_cmd(triton):
    """PyTriton's running tritonserver command (``sh``'s RunningCommand), or None."""
    return getattr(getattr(triton, "_triton_server", None), "_tritonserver_running_cmd", None)


def _stub_pids(triton) -> List[int]:
    """The Python-backend stub processes Triton runs (its children of that name)."""
    parent = getattr(_triton_cmd(triton), "pid", None)
    if not parent:
        return []
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if int(_proc_stat(d)[1]) != parent:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if b"triton_python_backend_stub" in f.read():
                    pids.append(int(d))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(pids)


def _triton_end(triton) -> str:
    """How the tritonserver process ended: a signal is named (its log often says nothing:
    a client's shared-memory segment truncated under it ends it with SIGBUS)."""
    code = getattr(getattr(_triton_cmd(triton), "process", None), "exit_code", None)
    if isinstance(code, int) and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the tritonserver process was killed by {name}"
    if isinstance(code, int):
        return f"the tritonserver process exited with status {code}"
    return "Triton stopped"


def _remove_proxy_shared_memory(pid: Optional[int] = None) -> None:
    """PyTriton's shared-memory segments of this process (``/dev/shm/pytrtion<pid>-*``),
    which stayed behind when a stub had died (serving hunt, 2026-12-04). Only when no other
    Server of this process runs. ``pid``: those of another process, killed (tests)."""
    if pid is None and _RUNNING_SERVERS[0] > 0:
        return
    prefix = f"pytrtion{os.getpid() if pid is None else pid}-"
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for n in names:
        if n.startswith(prefix):
            try:
                os.unlink(os.path.join("/dev/shm", n))
            except OSError:
                pass


_RUNNING_SERVERS = [0]


class TritonExited(RuntimeError):
    """Triton's process ended while PyTriton waited for it to be ready."""


def _watching(wait, triton):
    """PyTriton's wait for Triton's readiness, in slices of 2 s that stop as soon as the
    tritonserver process has ended: PyTriton waited out its 120 s start-up timeout for a
    server that had exited at once (a library it could not load, 2-GPU H200, 2026-12-04)."""
    def wait_watching(client, timeout_s=None, headers=None):
        deadline = time.monotonic() + (120.0 if timeout_s is None else float(timeout_s))
        while True:
            left = deadline - time.monotonic()
            try:
                return wait(client, timeout_s=max(0.1, min(2.0, left)), headers=headers)
            except Exception as e:  # noqa: BLE001 -- PyTriton's timeout error, re-raised
                if "Timeout" not in type(e).__name__:
                    raise
                server = getattr(triton, "_triton_server", None)
                alive = getattr(server, "is_alive", None)
                if callable(alive) and not alive():
                    raise TritonExited("the tritonserver process exited while starting; "
                                       "its log above says why") from None
                if time.monotonic() >= deadline:
                    raise
    return wait_watching


def _security_config(shared_memory: bool = False):
    """PyTriton's token-protected endpoints, less ``statistics``: operators and load
    balancers read per-model counts and queue times from it (Triton's default is open).
    Model loading, tracing, logging and, unless ``shared_memory`` (``tftrt serve
    --shared-memory``), shared memory stay behind PyTriton's random per-run token."""
    from pytriton import triton as pt_triton
    opened = {"statistics"} | ({"shared-memory"} if shared_memory else set())
    return pt_triton.TritonSecurityConfig(
        restricted_endpoints=[e for e in pt_triton.DEFAULT_PROTECTED_ENDPOINTS
                              if e not in opened])


class TerminatedDuringStart(KeyboardInterrupt):
    """SIGTERM before the server served: start() unwinds as for Ctrl-C, then a clean exit."""


def serve_forever(model_dir: str, config: ServeConfig, announce=print) -> None:
    """``tftrt serve``: serves until SIGINT or SIGTERM (Kubernetes' stop), then stops
    Triton cleanly."""
    server = Server(model_dir, config)
    stop = threading.Event()

    def on_early_term(signum, frame):
        raise TerminatedDuringStart()

    # SIGTERM while the model loads or Triton starts unwinds start() as Ctrl-C does (its
    # clean-up stops Triton): with the default action the process died at once, leaving
    # Triton and its stubs on the ports and PyTriton's workspace behind (helper hunt,
    # 2026-12-04). The main thread only: tests start servers from threads.
    main_thread = threading.current_thread() is threading.main_thread()
    early = signal.signal(signal.SIGTERM, on_early_term) if main_thread else None

    def on_signal(signum, frame):
        stop.set()

    try:
        server.start()
        # straight from one handler to the next: no moment with SIGTERM's default action
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    except TerminatedDuringStart:
        server.stop()
        return
    finally:
        if main_thread and signal.getsignal(signal.SIGTERM) is on_early_term:
            signal.signal(signal.SIGTERM, early)
    if early is not None:
        old[signal.SIGTERM] = early
    stopped_by_itself = False
    cfg = server.config  # the address as resolved
    announce(f"serving {model_dir} as Triton model {server.model_name!r} "
             f"(signature {cfg.signature}) on {', '.join(server.instances)}: "
             f"HTTP {cfg.address}:{cfg.http_port}, gRPC {cfg.address}:{cfg.grpc_port}, "
             f"metrics {cfg.address}:{cfg.metrics_port}/metrics; max batch {cfg.max_batch}, "
             f"preferred batch sizes {server.preferred}, max queue delay "
             f"{cfg.max_queue_delay_us} us. Ctrl-C or SIGTERM stops it.")
    try:
        server.wait(stop)
        stopped_by_itself = not stop.is_set()
    finally:
        server.stop()
        for s, h in old.items():
            signal.signal(s, h)
    if stopped_by_itself:
        raise ServingError(f"Triton or a model instance stopped by itself: "
                           f"{server.ended or 'Triton stopped'} (its log above says more "
                           f"where it could)")
