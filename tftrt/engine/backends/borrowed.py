"""The cuDNN choices an optimization profile's engines borrow from its opt-shape engine.

An engine made from a profile's template (``builder.build_engine_from_template``: another
batch size of the profile) keeps the opt engine's layers, and with them each convolution's
recorded cuDNN choice (engine and knobs, tuned at the opt shape). At the new shape that
choice is untimed: it must not go to the build cache under the new shape's key, where a
later build at that shape (a static engine, another model with the same layer) would take it
as tuned and time nothing. Before this rule it did (found reading the code after the H200 run
of 2026-12-02, where a profile's batch-1 and batch-8 engines ran at 1.4x the per-batch
engines). A record therefore names the shape it was tuned for (``"for"``: :func:`shape_id`
of the layer's signature); a record for another shape is borrowed.

What a borrowed layer builds with (:func:`conv_choice`): a choice the build cache holds for
this very shape (tuned by an earlier build at it) first; else, per
``TFTRT_PROFILE_CONV_PLANS``: ``opt`` (the default) the opt engine's choice, ``heuristic``
cuDNN's first heuristic plan at the new shape, untimed, ``tune`` the plans timed at the new
shape as a static build times them (stored as that shape's tuned choice: a later build finds
it). The latter two are experiments for the GPU host: plans tuned at batch 128 may be poor at
batch 1. CuPy-free: the CPU tests check the rules.

A borrowed plan that does not build at the new shape (or a ``heuristic`` record, which names
none) is replaced by cuDNN's first plan there, whose choice has no tuned record to come back
from: every later build at that shape planned (and compiled) it again, and the build workers'
jobs for it stored nothing. The build cache remembers that substitute (namespace
:data:`SUBSTITUTES`, keyed by :func:`substitute_key`: the layer signature and the borrowed
record), never as the shape's tuned choice, and its plan under the substitute's choice: a warm
build deserializes it (:func:`attempts` puts it first).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Optional, Tuple

log = logging.getLogger("tftrt.engine.cupy")

MODES = ("opt", "heuristic", "tune", "precompiled")
PRECOMPILED = "precompiled"  # attempts(): cuDNN's first plan that needs no runtime compile
SUBSTITUTES = "cupy-borrowed"   # build-cache namespace of borrowed plans' substitutes
FOR = "for"   # a record's key: the shape_id it was tuned for
_warned = set()


def shape_id(key: str) -> str:
    """A short id of a layer signature (its shapes included): what a record was tuned for."""
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def profile_conv_plans() -> str:
    """``TFTRT_PROFILE_CONV_PLANS``: ``opt`` (default), ``heuristic``, ``tune`` or
    ``precompiled``; another value is warned about once and read as ``opt``."""
    import os
    v = os.environ.get("TFTRT_PROFILE_CONV_PLANS", "opt").strip().lower() or "opt"
    if v not in MODES:
        if v not in _warned:
            _warned.add(v)
            log.warning("TFTRT_PROFILE_CONV_PLANS=%r is not one of %s; using 'opt'", v,
                        list(MODES))
        return "opt"
    return v


def conv_choice(rec: Optional[dict], key: str, stored: Optional[dict],
                mode: Optional[str] = None) -> Tuple[Optional[dict], bool]:
    """(the choice to build layer signature ``key``'s convolution with, whether it is
    borrowed). ``rec``: the layer's record (None: none); ``stored``: the build cache's choice
    for ``key`` (None: none). Not borrowed: ``rec``, else ``stored``, else None (tune). A
    record tuned for another shape: ``stored`` when there is one (tuned at this shape, no
    longer borrowed), else per ``mode`` (default :func:`profile_conv_plans`) the record
    itself, for ``heuristic`` a record without engine and knobs (``{"fused": n, "for":
    ...}``: cuDNN's first heuristic plan with the same fused ops), for ``precompiled`` such
    a record marked ``"precompiled": 1`` (cuDNN's first plan that needs no runtime compile:
    the profile's other shapes then cost no NVRTC compile in a cold build), for ``tune``
    None, not borrowed (the layer tunes at this shape)."""
    sid = shape_id(key)
    if not rec or rec.get(FOR, sid) == sid:
        return (rec or stored), False
    if stored:
        return stored, False
    mode = mode or profile_conv_plans()
    if mode == "tune":
        return None, False
    if mode in ("heuristic", PRECOMPILED):
        out = {k: v for k, v in rec.items() if k in ("fused", FOR)}
        if mode == PRECOMPILED:
            out[PRECOMPILED] = 1
        return out, True
    return rec, True


def substitute_key(key: str, rec: dict) -> str:
    """The build-cache key of the substitute for borrowed ``rec`` at layer signature ``key``
    (what the record names of a plan, and the shape it was tuned for)."""
    import json
    plan = {k: rec[k] for k in ("engine", "knobs", "fused", FOR, PRECOMPILED) if k in rec}
    return hashlib.sha1((key + "|" + json.dumps(plan, sort_keys=True, default=str))
                        .encode()).hexdigest()


def attempts(rec: dict, substitute: Optional[dict]) -> list:
    """The choices a borrowed layer builds its plan from, in order, each with one candidate:
    the substitute an earlier build found (plan in the cache), the borrowed record when it
    names a plan, :data:`PRECOMPILED` for a ``precompiled`` record (cuDNN's first plan that
    needs no runtime compile), then None (cuDNN's first plan at this shape, which becomes the
    substitute)."""
    out = []
    if isinstance(substitute, dict) and "engine" in substitute:
        out.append(substitute)
    if "engine" in rec:
        out.append(rec)
    if rec.get(PRECOMPILED):
        out.append(PRECOMPILED)
    return out + [None]


def same_plan(a: Optional[dict], b: Optional[dict]) -> bool:
    """Whether two choices name one cuDNN plan (engine and knobs): a graph built from a
    recorded choice that cuDNN could not rebuild re-plans silently (cupy_dnn._make), and its
    choice then differs from the one asked for."""
    def plan(c):
        try:
            return int(c["engine"]), {str(k): int(v) for k, v in dict(c.get("knobs", {})).items()}
        except (KeyError, TypeError, ValueError):
            return None
    pa = plan(a) if isinstance(a, dict) else None
    return pa is not None and pa == (plan(b) if isinstance(b, dict) else None)
