"""Cold builds compile their cuDNN graphs in worker processes (issue 14).

Before an engine build prepares its layers one by one, :func:`prefetch` hands every
convolution that will take a cuDNN graph and whose plan the build cache does not hold yet to
the process's :class:`tftrt.engine.workers.WorkerPool`: each worker builds the layer exactly as
the build would (``ConvCudnn``: tuning the candidate plans on the GPU when no choice is
recorded, else the recorded plan), which puts the choice (namespace ``cupy-choices``) and the
chosen plan, serialized with its compiled code (``cudnn-plans``), in the shared build cache.
The build itself then finds both and deserializes instead of compiling: the runtime compiles
(NVRTC, most of a cold build, during which cuDNN frontend holds the GIL) run on several cores
at once. Workers compile in parallel and time one at a time (a file lock around
``cupy_dnn.gpu_time``), so a timing never shares the GPU with another worker's.

Nothing here changes what is built: a job that fails or whose result the cache does not keep
leaves that layer to the build, which makes it the usual way. Off with ``TFTRT_BUILD_WORKERS=0``
(see :func:`tftrt.engine.workers.worker_count`), with the build cache or its plan cache off,
and with cuDNN's kernel cache on (its dynamic-shape plans are not serialized).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from tftrt.engine import workers
from tftrt.engine.network import Network
from tftrt.env import env_float

log = logging.getLogger("tftrt.engine.cupy")

# Fewer cuDNN graphs than this to build are left to the build (a worker's start costs seconds).
MIN_JOBS = int(env_float("TFTRT_BUILD_WORKERS_MIN_JOBS", 4))
# Seconds one job may take (a worker's start included) before its worker is stopped.
JOB_TIMEOUT = 600.0

_unusable: Optional[str] = None  # why workers could not start in this process (then none)
_stats = {"jobs": 0, "failed": 0, "stored": 0, "seconds": 0.0, "runs": 0,
          "per_run": []}  # [networks, jobs, seconds] per run
_stats_lock = threading.Lock()


def stats() -> Dict[str, Any]:
    """This process's prefetch runs, jobs, failed jobs, jobs whose plan is stored (a recorded
    choice cuDNN cannot rebuild is planned again and not stored) and seconds waited."""
    with _stats_lock:
        return dict(_stats, per_run=[list(r) for r in _stats["per_run"]])


def _plan_stored(spec, rec: dict) -> bool:
    from tftrt.engine.backends import cupy_dnn as D
    store = D.build_store()
    key = D._plan_key("conv", spec, int(rec["fused"]), rec)
    return store is not None and os.path.exists(store.path(D.PLAN_NAMESPACE, key))


def conv_jobs(nets: Sequence[Network], opts: dict) -> List[tuple]:
    """One job per distinct convolution of ``nets`` that will run as a cuDNN graph the build
    cache has no plan of: layers on tactic ``cudnn``, or, before tactics are chosen
    (``layer.tactic`` None), layers ``cudnn`` is a candidate for. A job carries a network of
    that one layer and its tensors."""
    from tftrt.engine.backends import borrowed as BR
    from tftrt.engine.backends import cupy_layers as L
    from tftrt.engine.tactics import candidates
    jobs, seen = [], set()
    for net, layer in ((n, l) for n in nets for l in n.layers):
        if layer.kind not in ("conv", "conv_transpose") or layer.attrs.get(L.QUICK_ATTR) or \
                "quant" in layer.attrs:
            continue
        names = [layer.tactic] if layer.tactic else \
            [c.name for c in candidates("cupy", net, layer)]
        if "cudnn" not in names:
            continue
        io = [t for t in list(layer.inputs) + list(layer.outputs) if t]
        if not all(net.tensors[t].is_static for t in io):
            continue
        one = layer.clone()
        one.tactic = "cudnn"
        sub = Network(net.name)
        sub.tensors = {t: net.tensors[t] for t in io}
        sub.layers = [one]
        spec = L.conv_spec(sub, one, opts)
        key = L.conv_key(sub, one, spec)
        if key in seen or key in L._SHARED:
            continue
        seen.add(key)
        rec, borrowed = BR.conv_choice(L.get_record(one), key, L.stored_choice(key))
        if borrowed:  # an earlier build's substitute for it, with its plan: nothing to do
            found = L.stored_json(BR.SUBSTITUTES, BR.substitute_key(key, rec))
            if found and "engine" in found and "fused" in found and _plan_stored(spec, found):
                continue
            if "engine" not in rec:
                continue  # cuDNN's first plan, untimed: the build makes it (and keeps it)
        if rec is not None and "fused" in rec and "engine" in rec and _plan_stored(spec, rec):
            continue
        jobs.append(("tftrt.engine.backends.cupy_prefetch:conv_job",
                     (sub, bool(opts.get("tf32", True)))))
    return jobs


def _init_job() -> Optional[tuple]:
    import cupy as cp

    from tftrt.engine.backends import cupy_dnn as D
    store = D.build_store()
    if store is None:
        return None
    # beside the cache's entries: workers of every process building with this cache time
    # one at a time
    device = int(cp.cuda.runtime.getDevice())
    lock = os.path.join(store.directory, f".timing-gpu{device}.lock")
    return ("tftrt.engine.backends.cupy_prefetch:init_worker",
            {"device": device, "root": store.root,
             "fingerprint": dict(store.fingerprint), "lock": lock})


def _usable() -> int:
    """Worker processes to use now (0: none; see the module doc)."""
    from tftrt.engine.backends import cupy_dnn as D
    n = workers.worker_count()
    if n < 1 or _unusable or not D.plan_cache_enabled() or D.kernel_cache_enabled():
        return 0
    return n


def start_workers(net: Network) -> None:
    """Starts the worker processes (if not running) for a build of ``net`` about to begin, when
    it has at least MIN_JOBS convolutions: they set up their CUDA context while the build runs
    its passes."""
    n = _usable()
    if n < 1 or sum(l.kind in ("conv", "conv_transpose") for l in net.layers) < MIN_JOBS:
        return
    init = _init_job()
    if init is None or _has_plans():  # a cache with plans: most builds need no worker
        return
    workers.shared_pool(n, init)


def _has_plans() -> bool:
    """Whether the build cache holds serialized cuDNN plans at all (a machine that has
    built before); builds then start workers only when they find work for them."""
    from tftrt.engine.backends import cupy_dnn as D
    store = D.build_store()
    try:
        return store is not None and any(os.scandir(
            os.path.join(store.directory, D.PLAN_NAMESPACE)))
    except OSError:
        return False


def prefetch(nets: Union[Network, Sequence[Network]], opts: dict) -> int:
    """Builds the cuDNN graphs of the convolutions of ``nets`` (one network, or the networks
    of several engines about to be built) in worker processes (see the module doc); returns
    how many jobs ran (0: the build makes them all itself)."""
    global _unusable
    from tftrt import progress
    nets = [nets] if isinstance(nets, Network) else list(nets)
    n = _usable()
    if n < 1 or not nets:
        return 0
    jobs = conv_jobs(nets, opts)
    if len(jobs) < MIN_JOBS:
        return 0
    init = _init_job()
    if init is None:
        return 0
    t0 = time.perf_counter()
    name = nets[0].name + (f" and {len(nets) - 1} more" if len(nets) > 1 else "")
    progress.activity(f"{name}: compiling {len(jobs)} cuDNN graphs on {n} worker processes")
    try:
        pool = workers.shared_pool(n, init)
        results = pool.run(jobs, timeout=JOB_TIMEOUT)
    except Exception as e:  # no worker could start: the build makes everything itself
        log.warning("build workers unavailable (%s: %s); building in this process",
                    type(e).__name__, e)
        return 0
    finally:
        progress.activity("")
    failed = [v for ok, v in results if not ok]
    seconds = time.perf_counter() - t0
    if len(failed) == len(results) and \
            any(str(v).startswith(workers.NOT_STARTED) for v in failed):
        _unusable = f"{failed[0]}"  # e.g. no GPU memory for another CUDA context
        workers.close_shared_pool()
        log.warning("build workers cannot start here (%s); this process builds without "
                    "them (TFTRT_BUILD_WORKERS=0 skips the attempt)", _unusable[:300])
    with _stats_lock:
        _stats["runs"] += 1
        _stats["jobs"] += len(jobs)
        _stats["failed"] += len(failed)
        _stats["stored"] += sum(bool(ok and isinstance(v, dict) and v.get("stored"))
                                for ok, v in results)
        _stats["seconds"] += seconds
        _stats["per_run"].append([len(nets), len(jobs), round(seconds, 2)])
    log.info("%s: %d cuDNN graphs built on %d worker processes in %.1fs%s", name,
             len(jobs), pool.alive, seconds,
             f" ({len(failed)} failed, first: {failed[0]})" if failed else "")
    return len(jobs)


# --- worker side ---------------------------------------------------------------------------------
class _FileLock:
    """An exclusive lock on a file, shared by processes (fcntl)."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def __call__(self):
        return self

    def __enter__(self):
        import fcntl
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False


def init_worker(cfg: dict) -> int:
    """A worker's first job: the parent's GPU, build cache and timing lock; returns its pid."""
    import cupy as cp

    from tftrt.engine.backends import cupy_dnn as D
    from tftrt.engine.backends.cupy_backend import _cupy_kernel_dir
    from tftrt.engine.build_cache import BuildCache
    cp.cuda.Device(int(cfg["device"])).use()
    store = BuildCache(cfg["root"], cfg["fingerprint"])
    D.use_build_cache(store)
    _cupy_kernel_dir(store)
    D.set_timing_guard(_FileLock(cfg["lock"]))
    if D.cudnn_module() is None:
        raise RuntimeError(f"no cuDNN frontend here: {D.cudnn_unavailable_reason()}")
    return os.getpid()


def conv_job(arg) -> dict:
    """Builds the one conv layer of network ``arg[0]`` as the build would (``tf32`` =
    ``arg[1]``) and makes sure its chosen plan is stored; frees what it built."""
    import cupy as cp

    from tftrt.engine.backends import cupy_layers as L
    from tftrt.engine.backends.cupy_dnn import CudnnConv
    net, tf32 = arg
    layer = net.layers[0]
    t0 = time.perf_counter()
    opts = {"tf32": tf32}
    impl = L.ConvCudnn(net, layer, {}, opts)
    rec = impl.record()
    spec = L.conv_spec(net, layer, opts)
    key = L.conv_key(net, layer, spec)
    try:
        if not _plan_stored(spec, rec):  # tuned (several plans) or untimed: built from choice
            CudnnConv(spec, int(rec["fused"]), rec)
        return {"key": key[:80], "seconds": time.perf_counter() - t0,
                "stored": _plan_stored(spec, rec)}
    finally:
        L._SHARED.pop(key, None)
        del impl
        cp.get_default_memory_pool().free_all_blocks()
