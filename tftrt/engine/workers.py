"""Worker processes for the parts of an engine build that one process cannot run in parallel.

cuDNN frontend's plan building holds the GIL for its whole runtime compile (NVRTC), so threads
do not overlap it: a cold build of ResNet50's profile spent most of its 65 s there, one plan at
a time (issue 14). A :class:`WorkerPool` runs such jobs in separate Python processes, each with
its own GIL (and, for GPU jobs, its own CUDA context): the backend hands it jobs whose results
land in the shared on-disk build cache (``build_cache.py`` is safe with several processes
writing), and the build that follows finds them there. The pool never returns device objects,
only small picklable values, and a job that fails, hangs or kills its worker only loses what
it would have cached: the build in the main process makes it itself.

A job is ``("module:function", argument)``; the worker imports the module, calls the function
with the argument and sends back ``(True, value)`` or ``(False, "Type: message")``. Workers are
``python -m tftrt.engine.workers`` with the parent's ``sys.path`` and environment
(``TFTRT_BUILD_WORKERS=0`` inside, so they never start workers of their own), talk length-
prefixed pickles over their stdin / stdout (the library's own prints go to stderr), run an
``init`` job first (e.g. select the GPU, open the build cache), and exit when their stdin
closes: a parent that dies takes its workers with it.

This module never imports TensorFlow or CuPy (it is part of the engine).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tftrt.env import env_float

log = logging.getLogger("tftrt.engine.workers")

_LEN = struct.Struct("<Q")
_MAX_FRAME = 1 << 30
Job = Tuple[str, Any]
Result = Tuple[bool, Any]


# The default's cap. A cold ResNet50 profile build (H200, 16 cores, through TF, the same
# machine, benchmarks/dynamic_shapes.py --stages cold) took 20.9 s with 8 workers and 19.5 s
# with 15: the ladder's tuning 6.4 -> 4.6 s and its prefetch 2.2 -> 1.6 s (run w2,
# 2026-12-03). Each worker holds a CUDA context (a few hundred MB of GPU memory) while it lives.
MAX_WORKERS = 15


def worker_count() -> int:
    """Worker processes a build may use: ``TFTRT_BUILD_WORKERS`` (0 turns them off), else one
    fewer than the CPU cores this process may run on (its affinity and its cgroup's CPU quota),
    at most MAX_WORKERS, and none below 4 cores (a worker's start, ~2 s with a CUDA context, is
    not won back on two or three). None off POSIX (the workers talk through select()-ed pipes) and in
    a frozen application (its executable is not a Python that can run ``-m``)."""
    if os.name != "posix" or getattr(sys, "frozen", False):
        return 0
    raw = os.environ.get("TFTRT_BUILD_WORKERS", "").strip()
    if raw:
        try:
            return max(0, int(raw))
        except ValueError:
            log.warning("TFTRT_BUILD_WORKERS=%r is not a number of processes; using none", raw)
            return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cores = min(cores, quota)
    return 0 if cores < 4 else min(MAX_WORKERS, cores - 1)


def _cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> Optional[int]:
    """The CPUs a cgroup v2 quota gives this process (a container's limit), or None."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        if quota == "max":
            return None
        return max(1, int(int(quota) // int(period)))
    except (OSError, ValueError):
        return None


def call(path: str, arg: Any) -> Any:
    """Runs job ``path`` ("module:function") on ``arg`` (in a worker, or here in tests)."""
    mod, _, fn = path.partition(":")
    if not mod or not fn:
        raise ValueError(f"a job names 'module:function', not {path!r}")
    return getattr(importlib.import_module(mod), fn)(arg)


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: Optional[float]) -> Optional[bytes]:
    """``n`` bytes from ``fd``; None at end of file; TimeoutError past ``deadline``."""
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: Optional[float] = None) -> Optional[bytes]:
    head = _read_exact(fd, _LEN.size, deadline)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > _MAX_FRAME:
        raise ValueError(f"frame of {size} bytes: not a worker's")
    return _read_exact(fd, size, deadline) if size else b""


# A worker's init job (CUDA context, imports) gets this long at most; its failure, whatever
# the cause, reads "worker did not start: ..." (callers give up on workers then).
INIT_TIMEOUT = env_float("TFTRT_BUILD_WORKERS_INIT_S", 120.0)
NOT_STARTED = "worker did not start"


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:500]}"


class _Worker:
    """One worker process; used by one dispatch thread at a time."""

    def __init__(self, init: Optional[Job]):
        env = dict(os.environ)
        env["TFTRT_BUILD_WORKERS"] = "0"
        # the parent's own import path, made absolute (a relative entry would resolve
        # against the worker's directory); the worker starts in the directory this package
        # was imported from and, where Python has -P, without the current directory on its
        # path: it imports the parent's tftrt, never a copy (or a module shadowing the
        # standard library) where the parent happens to run
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in sys.path if p)
        flags = ["-P"] if sys.version_info >= (3, 11) else []
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        quiet = os.environ.get("TFTRT_BUILD_WORKERS_STDERR", "") == ""
        self.proc = subprocess.Popen(
            [sys.executable, *flags, "-m", __name__], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None, env=env,
            cwd=here, bufsize=0, close_fds=True,
            start_new_session=True)  # a Ctrl-C at the terminal reaches the parent only
        self.init, self.ready, self.dead = init, init is None, False
        if init is not None:  # the worker starts on it now (a CUDA context takes seconds)
            try:
                _write_frame(self.proc.stdin.fileno(), pickle.dumps(init))
            except OSError:  # it died at once: its first call says so
                pass

    def call(self, job: Job, timeout: Optional[float]) -> Result:
        """The job's result; a worker that dies, hangs past ``timeout`` or answers garbage is
        killed and the job fails."""
        if not self.ready:  # the init job was sent when the worker started
            limit = INIT_TIMEOUT if timeout is None else min(timeout, INIT_TIMEOUT)
            try:
                ok, what = self._answer(time.monotonic() + limit)
            except TimeoutError:
                ok, what = False, f"no answer within {limit:.0f} s"
            except Exception as e:  # it died, or answered garbage
                ok, what = False, _describe(e)
            if not ok:
                self.kill()
                return False, f"{NOT_STARTED}: {what}"
            self.ready = True
        try:
            frame = pickle.dumps(job)
        except Exception as e:  # nothing was sent: the worker is fine
            return False, f"job not picklable: {_describe(e)}"
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            _write_frame(self.proc.stdin.fileno(), frame)
            return self._answer(deadline)
        except TimeoutError:
            self.kill()
            return False, f"TimeoutError: no answer within {timeout:.0f} s (worker stopped)"
        except Exception as e:  # died, broken pipe, a result that does not unpickle here
            self.kill()
            return False, f"worker lost: {_describe(e)}"

    def _answer(self, deadline: Optional[float]) -> Result:
        frame = _read_frame(self.proc.stdout.fileno(), deadline)
        if frame is None:
            try:
                code = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            raise EOFError(f"the worker exited (code {code})")
        ok, value = pickle.loads(frame)
        return bool(ok), value

    def kill(self) -> None:
        self.dead = True
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:
            pass
        self.close_pipes()

    def close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:
                pass


class WorkerPool:
    """``n`` worker processes running jobs (see the module doc). Thread-safe: one
    :meth:`run` at a time, the others wait."""

    def __init__(self, n: int, init: Optional[Job] = None):
        if n < 1:
            raise ValueError(f"a worker pool needs at least one process, not {n}")
        self.init = init
        self.workers: List[_Worker] = []
        try:
            for _ in range(n):
                self.workers.append(_Worker(init))
        except BaseException:  # out of processes or files: none of them may linger
            for w in self.workers:
                w.kill()
            raise
        self._lock = threading.Lock()
        self.last_used = time.monotonic()

    @property
    def alive(self) -> int:
        return sum(not w.dead for w in self.workers)

    def run(self, jobs: Sequence[Job], timeout: Optional[float] = None) -> List[Result]:
        """Runs ``jobs`` on the workers, each job at most ``timeout`` seconds (a worker's start
        included); returns (ok, value or error text) per job, in order. Jobs left when every
        worker has died fail with that reason."""
        results: List[Optional[Result]] = [None] * len(jobs)
        todo: "queue.Queue[int]" = queue.Queue()
        for i in range(len(jobs)):
            todo.put(i)

        def serve(w: _Worker) -> None:
            while not w.dead:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                results[i] = w.call(jobs[i], timeout)

        with self._lock:
            threads = [threading.Thread(target=serve, args=(w,), daemon=True,
                                        name=f"tftrt-worker-{k}")
                       for k, w in enumerate(self.workers) if not w.dead]
            for t in threads:
                t.start()
            try:
                for t in threads:
                    t.join()
            except BaseException:  # Ctrl-C in the build: no worker may keep half a job
                self.broken = True
                for w in self.workers:
                    w.kill()
                raise
            self.last_used = time.monotonic()
        return [r if r is not None else (False, "no worker process left to run it")
                for r in results]

    broken = False  # a run was interrupted: its workers were stopped

    def refill(self) -> None:
        """Workers that died (a job that crashed or hung) replaced by new ones."""
        with self._lock:
            for k, w in enumerate(self.workers):
                if w.dead:
                    self.workers[k] = _Worker(self.init)

    def close(self, wait: float = 5.0) -> None:
        """Ends every worker: end of file on its stdin (it exits when idle), then, past
        ``wait`` seconds in all (a worker in the middle of a compile), killed."""
        for w in self.workers:
            if not w.dead:
                try:
                    w.proc.stdin.close()
                except Exception:
                    pass
        deadline = time.monotonic() + wait
        for w in self.workers:
            if not w.dead:
                try:
                    w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:
                    pass
                w.kill()

    def forget(self) -> None:
        """In a forked child: the pipes to the parent's workers closed, nothing else (they are
        the parent's; its threads did not come along)."""
        for w in self.workers:
            w.dead = True
            w.close_pipes()


# --- the process's pools ------------------------------------------------------------------------
# One pool per init job (a build on GPU 1 does not close GPU 0's workers under another thread).
_POOLS: Dict[bytes, WorkerPool] = {}
_POOL_LOCK = threading.Lock()
IDLE_SECONDS = env_float("TFTRT_BUILD_WORKERS_IDLE_S", 60.0)


def shared_pool(n: int, init: Optional[Job]) -> Optional[WorkerPool]:
    """The process's pool of ``n`` workers started with ``init`` (kept between builds, closed
    after :data:`IDLE_SECONDS` without jobs and at exit), or None for ``n`` < 1. Dead workers
    are replaced; a pool whose run was interrupted, or of another size, is replaced."""
    if n < 1:
        return None
    key = pickle.dumps(init)
    with _POOL_LOCK:
        p = _POOLS.get(key)
        if p is not None and (p.broken or len(p.workers) != n):
            p.close()
            p = None
        if p is None:
            p = _POOLS[key] = WorkerPool(n, init)
            _start_reaper()
        elif p.alive < n:
            p.refill()
        p.last_used = time.monotonic()
        return p


def close_shared_pool() -> None:
    """Closes every pool of the process (at exit; tests)."""
    with _POOL_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.close()


_reaper: Optional[threading.Thread] = None


def _start_reaper() -> None:
    """A daemon thread that closes each shared pool once it has been idle long enough."""
    global _reaper
    if _reaper is not None and _reaper.is_alive():
        return

    def reap() -> None:
        while True:
            time.sleep(max(1.0, IDLE_SECONDS / 4))
            idle = []
            with _POOL_LOCK:
                for key, p in list(_POOLS.items()):
                    if not p._lock.locked() and time.monotonic() - p.last_used > IDLE_SECONDS:
                        idle.append(_POOLS.pop(key))
                left = bool(_POOLS)
            for p in idle:
                p.close()
            if not left:
                return

    _reaper = threading.Thread(target=reap, daemon=True, name="tftrt-worker-reaper")
    _reaper.start()


atexit.register(close_shared_pool)


def _after_fork_in_child() -> None:
    """A forked child (a user's multiprocessing) does not share the parent's pool: it closes
    its copies of the pipes, so that the parent's workers still see end of file when the
    parent closes them, and starts its own pool if it ever builds."""
    global _reaper, _POOL_LOCK
    _POOL_LOCK = threading.Lock()  # another thread may have held it at the fork
    pools = list(_POOLS.values())
    _POOLS.clear()
    _reaper = None
    for p in pools:
        p.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --- the worker side -----------------------------------------------------------------------------
def _watch_parent(every: float = 1.0) -> None:
    """Exits the worker when its parent dies, even in the middle of a job (end of file on
    stdin is only read between jobs): a daemon thread that watches the parent pid."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every)
            if os.getppid() != parent:
                os._exit(3)
    threading.Thread(target=watch, daemon=True, name="tftrt-worker-watchdog").start()


def serve(inp: int = 0, out: Optional[int] = None) -> None:
    """A worker's loop: jobs from ``inp`` until end of file, results to ``out`` (default: the
    process's stdout, which is then pointed at stderr so that a library's prints cannot
    corrupt the frames)."""
    if out is None:
        out = os.dup(1)
        os.dup2(2, 1)
    _watch_parent()
    while True:
        frame = _read_frame(inp)
        if frame is None:
            return
        try:
            path, arg = pickle.loads(frame)
            reply: Result = (True, call(path, arg))
        except BaseException as e:  # the job's failure is the answer, the worker goes on
            reply = (False, _describe(e))
        try:
            data = pickle.dumps(reply)
        except Exception as e:
            data = pickle.dumps((False, f"result not picklable: {_describe(e)}"))
        _write_frame(out, data)


if __name__ == "__main__":
    serve()
