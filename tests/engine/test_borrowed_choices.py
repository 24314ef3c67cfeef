"""The cuDNN choices a profile's engines borrow from its opt-shape engine
(tftrt/engine/backends/borrowed.py): a record tuned for another shape is used untimed and never
taken for this shape's tuned choice; a choice the build cache holds for this very shape wins;
TFTRT_PROFILE_CONV_PLANS picks the opt engine's plan, cuDNN's first heuristic plan, or tuning
at the new shape."""

import logging

import pytest

from tftrt.engine.backends import borrowed as BR

KEY_128 = '{"in": [["float16", [128, 56, 56, 64]]], "kind": "conv"}'
KEY_1 = '{"in": [["float16", [1, 56, 56, 64]]], "kind": "conv"}'
TUNED_128 = {"engine": 7, "knobs": {"1": 2}, "fused": 1, "for": BR.shape_id(KEY_128)}


def test_shape_ids_name_the_signature():
    assert BR.shape_id(KEY_128) == BR.shape_id(KEY_128) != BR.shape_id(KEY_1)
    assert len(BR.shape_id(KEY_1)) == 16


def test_a_record_for_its_own_shape_or_without_one_is_not_borrowed():
    assert BR.conv_choice(TUNED_128, KEY_128, None) == (TUNED_128, False)
    old = {"engine": 7, "knobs": {}, "fused": 1}            # caches written before "for"
    assert BR.conv_choice(old, KEY_1, None) == (old, False)
    stored = dict(TUNED_128, engine=9)
    assert BR.conv_choice(None, KEY_128, stored) == (stored, False)   # the cache's choice
    assert BR.conv_choice(None, KEY_128, None) == (None, False)       # nothing: tune


def test_a_record_for_another_shape_is_borrowed(monkeypatch):
    monkeypatch.delenv("TFTRT_PROFILE_CONV_PLANS", raising=False)
    assert BR.conv_choice(TUNED_128, KEY_1, None) == (TUNED_128, True)
    assert BR.conv_choice(TUNED_128, KEY_1, None, mode="opt") == (TUNED_128, True)


def test_a_choice_tuned_at_this_very_shape_wins_over_the_borrowed_one():
    tuned_1 = {"engine": 3, "knobs": {}, "fused": 0, "for": BR.shape_id(KEY_1)}
    assert BR.conv_choice(TUNED_128, KEY_1, tuned_1) == (tuned_1, False)
    assert BR.conv_choice(TUNED_128, KEY_1, tuned_1, mode="heuristic") == (tuned_1, False)


def test_heuristic_mode_keeps_the_fused_ops_and_drops_the_plan(monkeypatch):
    monkeypatch.setenv("TFTRT_PROFILE_CONV_PLANS", "Heuristic")
    rec, borrowed = BR.conv_choice(TUNED_128, KEY_1, None)
    assert borrowed and rec == {"fused": 1, "for": TUNED_128["for"]}
    assert TUNED_128["engine"] == 7                          # the layer's record untouched


def test_an_unknown_mode_is_warned_about_once_and_read_as_opt(monkeypatch, caplog):
    monkeypatch.setenv("TFTRT_PROFILE_CONV_PLANS", "fastest")
    BR._warned.discard("fastest")
    with caplog.at_level(logging.WARNING, logger="tftrt.engine.cupy"):
        assert BR.profile_conv_plans() == "opt" == BR.profile_conv_plans()
    msgs = [r.getMessage() for r in caplog.records if "TFTRT_PROFILE_CONV_PLANS" in r.getMessage()]
    assert len(msgs) == 1 and "'fastest'" in msgs[0] and "'heuristic'" in msgs[0]
    assert "'precompiled'" in msgs[0] and "'tune'" in msgs[0]


def test_tune_mode_tunes_at_the_new_shape_unless_the_cache_holds_its_choice(monkeypatch):
    monkeypatch.setenv("TFTRT_PROFILE_CONV_PLANS", "tune")
    assert BR.conv_choice(TUNED_128, KEY_1, None) == (None, False)       # tune here
    tuned_1 = {"engine": 3, "knobs": {}, "fused": 0, "for": BR.shape_id(KEY_1)}
    assert BR.conv_choice(TUNED_128, KEY_1, tuned_1) == (tuned_1, False)
    assert BR.conv_choice(TUNED_128, KEY_128, None) == (TUNED_128, False)  # its own shape


@pytest.mark.parametrize("value", ["", "  ", "OPT"])
def test_blank_or_cased_values_read_as_opt(monkeypatch, value):
    monkeypatch.setenv("TFTRT_PROFILE_CONV_PLANS", value)
    assert BR.profile_conv_plans() == "opt"


def test_a_substitute_is_keyed_by_the_signature_and_the_borrowed_plan():
    """A borrowed plan that does not build at the new shape is replaced by cuDNN's first
    plan there; the build cache remembers that substitute under the signature and the
    borrowed record (never as the shape's tuned choice), so warm builds find its plan."""
    k = BR.substitute_key(KEY_1, TUNED_128)
    assert k == BR.substitute_key(KEY_1, dict(TUNED_128))
    assert k != BR.substitute_key(KEY_128, TUNED_128)                  # another shape
    assert k != BR.substitute_key(KEY_1, dict(TUNED_128, engine=8))    # another plan
    heuristic = {"fused": 1, "for": TUNED_128["for"]}
    assert BR.substitute_key(KEY_1, heuristic) != k
    assert BR.SUBSTITUTES != "cupy-choices"


def test_attempts_take_the_substitute_first_then_the_record_then_cudnns_first_plan():
    sub = {"engine": 3, "knobs": {}, "fused": 1}
    assert BR.attempts(TUNED_128, sub) == [sub, TUNED_128, None]
    assert BR.attempts(TUNED_128, None) == [TUNED_128, None]
    heuristic = {"fused": 1, "for": TUNED_128["for"]}                  # names no plan
    assert BR.attempts(heuristic, None) == [None]
    assert BR.attempts(heuristic, sub) == [sub, None]
    assert BR.attempts(heuristic, {"fused": 1}) == [None]              # a damaged entry


def test_precompiled_mode_asks_for_a_plan_without_a_runtime_compile(monkeypatch):
    monkeypatch.setenv("TFTRT_PROFILE_CONV_PLANS", "precompiled")
    rec, borrowed = BR.conv_choice(TUNED_128, KEY_1, None)
    assert borrowed and rec == {"fused": 1, "for": TUNED_128["for"], BR.PRECOMPILED: 1}
    assert BR.attempts(rec, None) == [BR.PRECOMPILED, None]
    sub = {"engine": 3, "knobs": {}, "fused": 1}
    assert BR.attempts(rec, sub) == [sub, BR.PRECOMPILED, None]
    tuned_1 = {"engine": 3, "knobs": {}, "fused": 0, "for": BR.shape_id(KEY_1)}
    assert BR.conv_choice(TUNED_128, KEY_1, tuned_1) == (tuned_1, False)  # tuned here wins


def test_same_plan_compares_engine_and_knobs_only():
    """A graph built from a recorded choice cuDNN cannot rebuild re-plans silently: its
    choice then names another engine or knobs, which _borrowed takes for a substitute."""
    assert BR.same_plan({"engine": 7, "knobs": {"1": 2}}, dict(TUNED_128))
    assert BR.same_plan({"engine": "7", "knobs": {1: "2"}}, TUNED_128)   # as JSON reads it
    assert not BR.same_plan({"engine": 3, "knobs": {}}, TUNED_128)
    assert not BR.same_plan({"engine": 7, "knobs": {}}, TUNED_128)
    assert not BR.same_plan(None, TUNED_128) and not BR.same_plan({"fused": 1}, {"fused": 1})
