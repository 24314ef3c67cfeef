"""Two threads racing into one converter (the converters' OneAtATime guard)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Tuple


def second_call_during_first(first: Callable[[Callable[[], None]], Any],
                             second: Callable[[], Any]) -> Tuple[Any, str]:
    """Runs ``first(hold)`` in one thread and ``second()`` in another that starts while the
    first is inside its call: ``first`` must call ``hold()`` from inside (its input function),
    which returns once the second thread has started and a moment more (by then it is inside
    its own call). Returns first's result and "returned" or the second's RuntimeError text."""
    first_in, second_started = threading.Event(), threading.Event()
    got = {}

    def hold():
        first_in.set()
        assert second_started.wait(30)
        time.sleep(0.3)

    def run_first():
        got["first"] = first(hold)

    def run_second():
        assert first_in.wait(30)
        second_started.set()
        try:
            second()
            got["second"] = "returned"
        except RuntimeError as e:
            got["second"] = str(e)

    threads = [threading.Thread(target=run_first), threading.Thread(target=run_second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return got.get("first"), got.get("second", "")
