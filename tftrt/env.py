"""Environment variables, read the way TensorFlow reads its own.

TensorFlow's ``ReadBoolFromEnvVar`` takes "0"/"1"/"true"/"false" in any case; TF-TRT's
boolean variables (``TF_TRT_ALLOW_ENGINE_NATIVE_SEGMENT_EXECUTION``, ...) went through it, and
so do tftrt's (``TFTRT_STREAM_SYNC``, ``TFTRT_DIRECT_CALL``). Anything else keeps the default
with one warning naming the variable and the spellings it takes.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional, Sequence

log = logging.getLogger("tftrt.env")

_TRUE = ("1", "true")
_FALSE = ("0", "false")
_warned: set = set()


def parse_bool(raw: Optional[str]) -> Optional[bool]:
    """True / False for TensorFlow's spellings, None for an empty or unknown value."""
    value = (raw or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def env_bool(name: str, default: bool) -> bool:
    """The boolean environment variable ``name`` (unset or empty: ``default``)."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    value = parse_bool(raw)
    if value is None:
        if (name, raw) not in _warned:
            _warned.add((name, raw))
            log.warning("%s=%r is not a boolean (use 0, 1, true or false in any case); using "
                        "the default, %s", name, raw, int(default))
        return default
    return value


def env_choice(name: str, choices: Sequence[str], default: str) -> str:
    """The environment variable ``name`` as one of ``choices`` (any case; unset or empty:
    ``default``); another value keeps the default with one warning naming the choices."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return default
    if value in choices:
        return value
    if (name, raw) not in _warned:
        _warned.add((name, raw))
        log.warning("%s=%r: one of %s; using %s", name, value, ", ".join(choices), default)
    return default


def env_float(name: str, default: float, minimum: float = 0.0) -> float:
    """The number in the environment variable ``name`` (unset or empty: ``default``); a value
    that is not a finite number, or below ``minimum``, keeps the default with one warning
    (``TFTRT_SPLIT_CALLS=inf`` killed the background build thread at ``int(inf)``)."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is None or not (value >= minimum and math.isfinite(value)):
        if (name, raw) not in _warned:
            _warned.add((name, raw))
            log.warning("%s=%r is not a finite number >= %g; using the default, %g", name,
                        raw, minimum, default)
        return default
    return value
