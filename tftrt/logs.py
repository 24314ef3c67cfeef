"""tftrt's loggers and the one environment variable that sets their verbosity.

Everything tftrt reports goes through Python's ``logging``, under the logger ``tftrt`` and
its children, one per stage (so verbosity can be set per stage):

    tftrt.graph_io        loading, freezing and cleaning the signature
    tftrt.segment         segmentation; TF-TRT's "ops not converted" report
    tftrt.lowering        TF ops -> segment networks (ONNX)
    tftrt.convert         convert() / build() / calibration
    tftrt.rewrite         the converted graph
    tftrt.engine_op       engines at run time: backend, builds, cache, native fallbacks
    tftrt.profiles        optimization profiles (dynamic shapes)
    tftrt.saving          save() and tftrt.load()
    tftrt.activation      engines bound in imported TF1 GraphDefs
    tftrt.engine...       the engine: builder, passes, tactics, build cache, CuPy backend
    tftrt.env, tftrt.gpu_memory

``TFTRT_LOG_LEVEL`` = DEBUG | INFO | WARNING | ERROR | CRITICAL (any case) or a number
(Python's levels: 10 = DEBUG ... 50) sets the level of the ``tftrt`` logger when tftrt is
imported; when neither that logger nor the root logger has a handler, one is added that
writes to stderr (``tftrt INFO tftrt.engine_op: ...``). Unset, Python's defaults hold:
warnings and errors reach stderr, nothing else. TensorFlow's own variables
(``TF_CPP_MIN_LOG_LEVEL``, ``TF_CPP_VMODULE``) govern TensorFlow's C++ logs only, never
tftrt's. An application that configures ``logging`` itself keeps full control:
``logging.getLogger("tftrt.engine_op").setLevel(logging.INFO)``.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

ENV = "TFTRT_LOG_LEVEL"
ROOT = "tftrt"
_NAMES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_handler: Optional[logging.Handler] = None


def parse_level(raw: str) -> Optional[int]:
    """The logging level ``raw`` names ("info", "20", "WARN"), or None."""
    value = (raw or "").strip().upper()
    if value == "WARN":
        value = "WARNING"
    if value in _NAMES:
        return getattr(logging, value)
    try:
        level = int(value)
    except ValueError:
        return None
    return level if 0 <= level <= 50 else None


def configure_from_env() -> Optional[int]:
    """Applies ``TFTRT_LOG_LEVEL`` to the ``tftrt`` logger; returns the level set (None when
    the variable is unset or invalid, which gets one warning naming the accepted values)."""
    global _handler
    raw = os.environ.get(ENV, "")
    if not raw.strip():
        return None
    logger = logging.getLogger(ROOT)
    level = parse_level(raw)
    if level is None:
        logger.warning("%s=%r is not a log level; use one of %s (any case) or a number "
                       "0-50", ENV, raw, ", ".join(_NAMES))
        return None
    logger.setLevel(level)
    if _handler is None and not logger.handlers and not logging.getLogger().handlers:
        _handler = _UntilRootHandles()
        _handler.setFormatter(logging.Formatter("tftrt %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(_handler)
    return level


class _UntilRootHandles(logging.StreamHandler):
    """tftrt's own stderr handler while the root logger has none: a root handler added later
    (absl's first log line inside TensorFlow's checkpoint saver calls logging.basicConfig())
    prints tftrt's records by propagation, and each line came out twice."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def first_error_line(err: BaseException) -> str:
    """The line of an error message that says what failed, for one-line reports: TensorFlow's
    "Graph execution error:", "Detected at node", "Node:" and stack lines are skipped."""
    lines = [l.strip() for l in str(err).splitlines() if l.strip()]
    useful = [l for l in lines if not l.startswith(("Graph execution error", "Detected at",
                                                    "<stack traces", "File ", "[[", "Node:"))]
    return (useful or lines or [""])[0]
