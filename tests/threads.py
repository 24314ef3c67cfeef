"""Running a test body in several threads at once (the concurrency tests)."""

import threading


def in_threads(body, n: int = 4, timeout: float = 300.0) -> None:
    """Runs ``body(t)`` for t = 0..n-1 in ``n`` threads at once; fails with every thread's
    error, and when a thread is still running after ``timeout`` seconds (a hang)."""
    errors = []

    def worker(t):
        try:
            body(t)
        except Exception as e:  # reported below
            errors.append(f"thread {t}: {type(e).__name__}: {e}")
    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    alive = [t for t, th in enumerate(threads) if th.is_alive()]
    assert not alive, f"threads {alive} still running after {timeout} s"
    assert not errors, errors
