"""A one-line progress display for conversions and engine builds that take a while.

    with progress.task("building engines", poll=progress.engines_built(ops)) as p:
        ...                       # p.set("input 2"); progress.note("tuning layer 7/120")

The line appears on stderr only when the task has run for ``TFTRT_PROGRESS_DELAY`` seconds
(default 2) and stderr is a terminal; it is rewritten in place a few times a second (title,
the task's detail, what ``poll`` returns, elapsed seconds) and erased when the task ends, so
logs and pipes never see it. ``TFTRT_PROGRESS=0`` turns it off, ``=1`` shows it even when
stderr is not a terminal. ``note(text)`` sets the detail of the innermost running task from
anywhere (the engine may call it while it tunes layers); without a task it does nothing.

Imports nothing beyond the standard library, so the engine may use it.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Callable, List, Optional, TextIO

_tasks: List["Task"] = []
_tasks_lock = threading.Lock()


def enabled(stream: TextIO) -> bool:
    """Whether a display goes to ``stream``: TFTRT_PROGRESS (0/1) or, unset, a terminal."""
    from tftrt.env import parse_bool
    forced = parse_bool(os.environ.get("TFTRT_PROGRESS"))
    if forced is not None:
        return forced
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _delay() -> float:
    """TFTRT_PROGRESS_DELAY in seconds; a value that is no finite number keeps the default 2
    ("inf" overflowed the progress thread's wait: helper hunt, 2026-12-03). Past a day it
    means never shown, as a day."""
    try:
        value = float(os.environ.get("TFTRT_PROGRESS_DELAY", "2"))
    except ValueError:
        return 2.0
    if math.isnan(value):
        return 2.0
    return min(max(value, 0.0), 86400.0)


class Task:
    """One running task; shown (by a daemon thread) once it has lasted ``delay`` seconds."""

    def __init__(self, title: str, poll: Optional[Callable[[], str]] = None,
                 stream: Optional[TextIO] = None, delay: Optional[float] = None,
                 interval: float = 0.25):
        self.title = title
        self.poll = poll
        self.stream = stream if stream is not None else sys.stderr
        self.delay = _delay() if delay is None else delay
        self.interval = interval
        self.detail = ""
        self.activity = ""  # transient, e.g. the layer being tuned (set by :func:`activity`)
        self.shown = False  # the line was written at least once
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._width = 0

    # --- what the task says ------------------------------------------------------------------
    def set(self, detail: str) -> None:
        self.detail = detail

    def line(self) -> str:
        parts = [f"tftrt: {self.title}"]
        if self.detail:
            parts.append(self.detail)
        if self.poll is not None:
            try:
                polled = self.poll()
            except Exception:  # a display never breaks the work it shows
                polled = ""
            if polled:
                parts.append(polled)
        if self.activity:
            parts.append(self.activity)
        parts.append(f"{time.perf_counter() - self._t0:.1f} s")
        return " | ".join(parts)

    # --- display -----------------------------------------------------------------------------
    def start(self) -> "Task":
        with _tasks_lock:
            _tasks.append(self)
        if enabled(self.stream):
            self._thread = threading.Thread(target=self._run, name="tftrt-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        while not self._stop.is_set():
            self._draw()
            self._stop.wait(self.interval)

    def _draw(self) -> None:
        text = self.line()
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 120
        text = text[:max(columns - 1, 20)]
        with self._lock:
            if self._stop.is_set() and not self.shown:
                return
            self.stream.write("\r" + text.ljust(self._width))
            self.stream.flush()
            self._width = len(text)
            self.shown = True

    def close(self) -> None:
        """Stops the display and erases its line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with _tasks_lock:
            if self in _tasks:
                _tasks.remove(self)
        with self._lock:
            if self.shown:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()

    def __enter__(self) -> "Task":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def task(title: str, poll: Optional[Callable[[], str]] = None, **kwargs) -> Task:
    """A :class:`Task` to use as a context manager (or ``start()`` / ``close()``)."""
    return Task(title, poll, **kwargs)


def note(detail: str) -> None:
    """Sets the detail of the innermost running task (any thread); no task: nothing."""
    with _tasks_lock:
        current = _tasks[-1] if _tasks else None
    if current is not None:
        current.set(detail)


def activity(text: str) -> None:
    """Sets (``""`` clears) the transient activity of the innermost running task, shown after
    its detail: the engine builder reports the layer it is choosing tactics for."""
    with _tasks_lock:
        current = _tasks[-1] if _tasks else None
    if current is not None:
        current.activity = text


def engines_built(ops) -> Callable[[], str]:
    """A poll for :func:`task`: "engine k of n built" over the engine ops ``ops`` (an op
    counts once its first engine is built or restored)."""
    ops = list(ops)

    def poll() -> str:
        done = sum(1 for op in ops if op.stats.get("builds", 0) or len(op.cache))
        return f"engine {done} of {len(ops)} built"
    return poll
