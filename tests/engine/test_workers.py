"""The build's worker processes (tftrt/engine/workers.py): jobs run in other processes and come
back in order; a job's error, a worker that dies and a worker that hangs each fail only their
job; the pool closes its processes. CPU only (the jobs are standard-library functions)."""

import os
import time

import pytest

from tftrt.engine import workers


@pytest.fixture
def pool():
    p = workers.WorkerPool(2)
    yield p
    p.close()


def test_jobs_run_in_other_processes_in_order(pool):
    res = pool.run([("math:sqrt", float(i * i)) for i in range(12)], timeout=60)
    assert res == [(True, float(i)) for i in range(12)]
    got = pool.run([("os:getpgid", 0)] * 6, timeout=60)
    worker_pids = {w.proc.pid for w in pool.workers}
    assert all(ok for ok, _ in got) and {v for _, v in got} <= worker_pids
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids


def test_a_failing_job_fails_alone(pool):
    res = pool.run([("math:sqrt", -1.0), ("math:sqrt", 4.0), ("nosuchmodule_x:f", 1),
                    ("math:nosuchfunction", 1), ("math", 1)], timeout=60)
    assert res[0] == (False, "ValueError: math domain error")
    assert res[1] == (True, 2.0)
    assert not res[2][0] and "ModuleNotFoundError" in res[2][1]
    assert not res[3][0] and "AttributeError" in res[3][1]
    assert not res[4][0] and "module:function" in res[4][1]
    assert pool.alive == 2  # an error is an answer: both workers still serve
    assert pool.run([("math:sqrt", 9.0)], timeout=60) == [(True, 3.0)]


def test_a_worker_that_dies_loses_only_its_job(pool):
    res = pool.run([("os:_exit", 3)] + [("math:sqrt", 16.0)] * 6, timeout=60)
    assert not res[0][0] and "worker lost" in res[0][1] and "code 3" in res[0][1]
    assert res[1:] == [(True, 4.0)] * 6
    assert pool.alive == 1
    # with every worker gone, what is left fails with that reason (nothing hangs)
    res = pool.run([("os:_exit", 1), ("math:sqrt", 1.0)], timeout=60)
    assert pool.alive == 0
    assert not res[0][0]
    assert res[1] == (False, "no worker process left to run it")


def test_a_hung_worker_is_stopped_at_the_timeout(pool):
    t0 = time.monotonic()
    res = pool.run([("time:sleep", 60), ("math:sqrt", 1.0)], timeout=3)
    assert time.monotonic() - t0 < 30
    assert not res[0][0] and "TimeoutError" in res[0][1]
    assert res[1] == (True, 1.0)
    assert pool.alive == 1


def test_init_job_runs_first_and_a_failed_init_fails_the_jobs():
    p = workers.WorkerPool(1, init=("os:getpgid", 0))
    try:
        assert p.run([("math:sqrt", 4.0)], timeout=60) == [(True, 2.0)]
    finally:
        p.close()
    p = workers.WorkerPool(1, init=("math:sqrt", -1.0))
    try:
        res = p.run([("math:sqrt", 4.0)], timeout=60)
        assert not res[0][0] and "did not start" in res[0][1] and "math domain" in res[0][1]
        assert p.alive == 0
    finally:
        p.close()


def test_an_unpicklable_result_is_an_error_not_a_dead_worker(pool):
    res = pool.run([("threading:Semaphore", 1), ("math:sqrt", 1.0)], timeout=60)
    assert not res[0][0] and "not picklable" in res[0][1]
    assert res[1] == (True, 1.0) and pool.alive == 2


def test_close_ends_the_processes():
    p = workers.WorkerPool(2)
    procs = [w.proc for w in p.workers]
    assert p.run([("math:sqrt", 1.0)] * 2, timeout=60) == [(True, 1.0)] * 2
    p.close()
    for proc in procs:
        assert proc.poll() is not None


def test_shared_pools_are_kept_per_init_and_refilled():
    """One pool per init (a build for GPU 1 does not close GPU 0's under another thread);
    a pool is kept between builds and its dead workers are replaced."""
    try:
        a = workers.shared_pool(2, None)
        assert workers.shared_pool(2, None) is a
        b = workers.shared_pool(1, ("os:getpgid", 0))  # another init: its own pool
        assert b is not a and a.alive == 2 and b.alive == 1
        a.run([("os:_exit", 1)], timeout=60)
        assert a.alive == 1
        assert workers.shared_pool(2, None) is a and a.alive == 2  # refilled
        assert a.run([("math:sqrt", 1.0)] * 2, timeout=60) == [(True, 1.0)] * 2
        assert workers.shared_pool(0, None) is None
    finally:
        workers.close_shared_pool()


def test_an_init_that_hangs_or_dies_reads_did_not_start(monkeypatch):
    """However a worker's init fails (an error, no answer, the process gone), its jobs fail
    with NOT_STARTED, which makes callers give up on workers (cupy_prefetch)."""
    monkeypatch.setattr(workers, "INIT_TIMEOUT", 2.0)
    for init in (("time:sleep", 30), ("os:_exit", 4), ("math:sqrt", -1.0)):
        p = workers.WorkerPool(1, init=init)
        try:
            t0 = time.monotonic()
            (ok, what), = p.run([("math:sqrt", 4.0)], timeout=60)
            assert not ok and what.startswith(workers.NOT_STARTED), (init, what)
            assert time.monotonic() - t0 < 20 and p.alive == 0
        finally:
            p.close()


def test_a_job_that_does_not_pickle_fails_alone(pool):
    res = pool.run([("math:sqrt", lambda: 1), ("math:sqrt", 4.0)], timeout=60)
    assert not res[0][0] and "not picklable" in res[0][1]
    assert res[1] == (True, 2.0) and pool.alive == 2


def test_workers_import_the_parents_package_not_one_in_the_cwd(tmp_path, monkeypatch):
    """A copy of tftrt (or a module named like the standard library's) in the directory the
    parent runs in is not what the workers import (either would fail the worker's start)."""
    shadow = tmp_path / "tftrt"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the shadow copy')\n")
    (tmp_path / "queue.py").write_text("raise ImportError('a shadowing queue')\n")
    monkeypatch.chdir(tmp_path)
    p = workers.WorkerPool(1)
    try:
        assert p.run([("math:sqrt", 9.0)], timeout=60) == [(True, 3.0)]
    finally:
        p.close()


def test_a_worker_exits_when_its_parent_dies_mid_job(tmp_path):
    """A worker busy in a job when its parent is killed does not live on (orphaned, holding a
    CUDA context): it watches its parent."""
    import subprocess
    import sys
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, threading\n"
        "from tftrt.engine import workers\n"
        "p = workers.WorkerPool(1)\n"
        "print(p.workers[0].proc.pid, flush=True)\n"
        "p.run([('time:sleep', 60)], timeout=90)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(2)
    parent.kill()
    parent.wait(10)
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().split()[2] == "Z":
                break
        time.sleep(0.2)
    else:
        os.kill(child, 9)
        raise AssertionError("the worker outlived its parent")


def test_bad_numbers_in_the_environment_fall_back(monkeypatch):
    from tftrt.env import env_float  # what workers.py and cupy_prefetch.py read them with
    monkeypatch.setenv("TFTRT_BUILD_WORKERS_IDLE_S", "soon")
    assert env_float("TFTRT_BUILD_WORKERS_IDLE_S", 60.0) == 60.0
    monkeypatch.setenv("TFTRT_BUILD_WORKERS_IDLE_S", "2.5")
    assert env_float("TFTRT_BUILD_WORKERS_IDLE_S", 60.0) == 2.5


def test_cgroup_quota_caps_the_default(tmp_path, monkeypatch):
    f = tmp_path / "cpu.max"
    f.write_text("200000 100000\n")
    assert workers._cgroup_cpus(str(f)) == 2
    f.write_text("max 100000\n")
    assert workers._cgroup_cpus(str(f)) is None
    assert workers._cgroup_cpus(str(tmp_path / "none")) is None
    monkeypatch.delenv("TFTRT_BUILD_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)), raising=False)
    monkeypatch.setattr(workers, "_cgroup_cpus", lambda: 2)
    assert workers.worker_count() == 0


@pytest.mark.parametrize("raw,want", [("0", 0), ("3", 3), ("x", 0), ("-2", 0)])
def test_worker_count_from_the_environment(monkeypatch, raw, want):
    monkeypatch.setenv("TFTRT_BUILD_WORKERS", raw)
    assert workers.worker_count() == want


def test_worker_count_default_follows_the_cores(monkeypatch):
    monkeypatch.delenv("TFTRT_BUILD_WORKERS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(2)), raising=False)
    assert workers.worker_count() == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert workers.worker_count() == 15
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)), raising=False)
    assert workers.worker_count() == workers.MAX_WORKERS == 15
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(5)), raising=False)
    assert workers.worker_count() == 4


def test_close_does_not_wait_long_for_busy_workers():
    """A worker in the middle of a long job (a compile) at close: killed after the grace
    period, all workers together, not one grace period each."""
    import threading
    p = workers.WorkerPool(3)
    t = threading.Thread(target=p.run, args=([("time:sleep", 60)] * 3,), kwargs={"timeout": 90},
                         daemon=True)
    t.start()
    time.sleep(3)  # the three are sleeping
    t0 = time.monotonic()
    p.close(wait=2)
    assert time.monotonic() - t0 < 8
    assert all(w.proc.poll() is not None for w in p.workers)
    t.join(30)
    assert not t.is_alive()


def test_an_interrupted_run_stops_its_workers_and_the_next_build_gets_new_ones():
    """Ctrl-C while the build waits for its workers: the interrupt goes through, the workers
    of that run are stopped (none keeps half a job for the next run), and the shared pool is
    replaced."""
    import _thread
    import signal
    import threading
    # interrupt_main does nothing where SIGINT is not handled by Python: pytest-xdist's
    # workers ignore it (the test then ran its 30 s jobs out: CI, 2026-12-02)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        p = workers.shared_pool(2, None)
        assert p.run([("math:sqrt", 4.0)] * 2, timeout=60) == [(True, 2.0)] * 2  # started
        threading.Timer(2.0, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            p.run([("time:sleep", 30)] * 2, timeout=60)
        assert p.broken and p.alive == 0
        q = workers.shared_pool(2, None)
        assert q is not p
        assert q.run([("math:sqrt", 25.0)], timeout=60) == [(True, 5.0)]
    finally:
        signal.signal(signal.SIGINT, before)
        workers.close_shared_pool()


def test_a_forked_child_does_not_hold_the_parents_workers():
    """After os.fork (a user's multiprocessing), the child drops the parent's pool and closes
    its copies of the pipes: the parent's workers still exit when the parent closes them,
    even while the child lives on."""
    try:
        p = workers.shared_pool(1, None)
        assert p.run([("math:sqrt", 4.0)], timeout=60) == [(True, 2.0)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then outlive the parent's close
            ok = not workers._POOLS and p.workers[0].dead
            os.write(w, b"1" if ok else b"0")
            time.sleep(8)
            os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"1"
        proc = p.workers[0].proc
        t0 = time.monotonic()
        workers.close_shared_pool()
        assert proc.poll() is not None and time.monotonic() - t0 < 4  # end of file, no kill
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    finally:
        workers.close_shared_pool()
