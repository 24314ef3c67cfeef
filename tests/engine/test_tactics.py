"""Tactic registry, timed selection and the timing cache."""

import logging

import numpy as np
import pytest
from onnx import helper

from tests.engine.harness import make_model, rand, run_ort
from tftrt.engine import BuilderConfig, build_engine
from tftrt.engine.tactics import TimingCache, candidates


def _pointwise_conv_model():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"]),
             helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])]
    return make_model(nodes, {"x": rand(2, 6, 6, 8)}, {"w": rand(16, 8, 1, 1, seed=1)})


def test_candidates_are_timed_and_recorded():
    model = _pointwise_conv_model()
    engine = build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig())
    layer = engine.network.layers[0]
    names = [t.name for t in candidates("numpy", engine.network, layer)]
    assert names == ["im2col_gemm", "gemm_1x1"]
    timings = engine.build_info["tactic_timings"][layer.name]
    assert set(timings) == set(names) and layer.tactic in names
    assert engine.layers_summary()[0][3] == layer.tactic
    x = rand(2, 6, 6, 8)
    for tactic in names:  # every candidate computes the same thing
        layer.tactic = tactic
        run = engine.backend_impl.prepare_layer(engine.network, layer, engine.weights)
        np.testing.assert_allclose(run([x, engine.weights[layer.inputs[1]]])[0],
                                   run_ort(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_a_build_records_its_phases(monkeypatch):
    """build_info["phases"]: seconds of each phase in order, adding up to the build's."""
    from tftrt.engine import builder
    model = _pointwise_conv_model()
    real = builder.choose_tactics

    def slow_choice(*args, **kwargs):  # a tactic phase that takes 0.2 s
        import time
        time.sleep(0.2)
        return real(*args, **kwargs)
    monkeypatch.setattr(builder, "choose_tactics", slow_choice)
    engine = build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig())
    phases = engine.build_info["phases"]
    assert list(phases) == ["optimize", "upload", "tactics", "finish"], phases
    assert phases["tactics"] >= 0.2 and max(phases, key=phases.get) == "tactics", phases
    assert sum(phases.values()) == pytest.approx(engine.build_info["seconds"], abs=0.01)


def test_timing_cache_skips_retiming(tmp_path):
    model = _pointwise_conv_model()
    cache = TimingCache(str(tmp_path / "cache.json"))
    first = build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig(timing_cache=cache))
    assert len(cache.entries) == 1 and first.build_info["tactic_timings"]
    cache.save()
    reloaded = TimingCache(str(tmp_path / "cache.json"))
    again = build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig(timing_cache=reloaded))
    assert again.build_info["tactic_timings"] == {}
    assert again.layers_summary() == first.layers_summary()
    assert TimingCache.from_bytes(cache.to_bytes()).entries == cache.entries


def test_depthwise_tactic_applies():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])]
    model = make_model(nodes, {"x": rand(1, 4, 6, 6)}, {"w": rand(4, 1, 3, 3, seed=1)})
    engine = build_engine(model, {"x": (1, 4, 6, 6)}, BuilderConfig(tactic_timing=False))
    conv = [l for l in engine.network.layers if l.kind == "conv"][0]
    assert [t.name for t in candidates("numpy", engine.network, conv)] == \
        ["im2col_gemm", "depthwise_direct"]


def _timing_that_fails_for(monkeypatch, tactic, error):
    import tftrt.engine.tactics as tactics
    real = tactics._time_runner

    def fake(backend, runner, inputs, repeats, what="a layer"):
        if repr(tactic) in what:
            raise error
        return real(backend, runner, inputs, repeats, what)
    monkeypatch.setattr(tactics, "_time_runner", fake)


def test_a_failing_candidate_is_skipped(monkeypatch, caplog):
    """...and said: an INFO line naming the layer, the tactic and the error, and the
    engine's build_info["tactic_failures"] (a skipped stem_mma left ResNet50's stem on cuDNN,
    1.7x slower, with a debug line only; s40)."""
    _timing_that_fails_for(monkeypatch, "gemm_1x1", ValueError("no"))
    with caplog.at_level(logging.INFO, logger="tftrt.engine.tactics"):
        engine = build_engine(_pointwise_conv_model(), {"x": (2, 6, 6, 8)}, BuilderConfig())
    layer = engine.network.layers[0]
    assert layer.tactic == "im2col_gemm"
    assert set(engine.build_info["tactic_timings"][layer.name]) == {"im2col_gemm"}
    assert engine.build_info["tactic_failures"] == {layer.name: {"gemm_1x1": "ValueError: no"}}
    assert f"tactic gemm_1x1 failed on {layer.name}: ValueError: no" in caplog.text
    monkeypatch.undo()
    ok = build_engine(_pointwise_conv_model(), {"x": (2, 6, 6, 8)}, BuilderConfig())
    assert ok.build_info["tactic_failures"] == {}


def _cached_builds(monkeypatch, tmp_path, times, state):
    """build() of the 1x1 conv model through a timing cache in a file: (its tactic, the
    cache's one entry, the candidates timed). Timing is faked: ``times[name]`` seconds, and
    a RuntimeError for gemm_1x1 while ``state["fail"]``."""
    import tftrt.engine.tactics as tactics

    def fake(backend, runner, inputs, repeats, what="a layer"):
        (name,) = [n for n in times if repr(n) in what]
        state["timed"].append(name)
        if name == "gemm_1x1" and state.get("fail"):
            raise RuntimeError("out of memory")
        return times[name]
    monkeypatch.setattr(tactics, "_time_runner", fake)
    model = _pointwise_conv_model()
    path = str(tmp_path / "cache.json")

    def build():
        cache = TimingCache(path)
        state["timed"] = []
        engine = build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig(timing_cache=cache))
        cache.save()
        (entry,) = cache.entries.values()
        return engine.network.layers[0].tactic, entry, list(state["timed"])
    return build, path


def test_a_candidate_that_failed_is_tried_again_by_later_builds(monkeypatch, tmp_path):
    """A cached choice made while a candidate failed records the failure; the next builds
    that hit it time that candidate alone, up to FAILED_RETRIES times: a failure that passed
    (gemm_1x1 here, the faster one) takes over the choice and the cache, one that stays is
    given up (not timed again). Timings are fixed per tactic: gemm_1x1 1 ms, im2col 2 ms."""
    import tftrt.engine.tactics as tactics
    state = {"fail": True, "timed": []}
    build, path = _cached_builds(monkeypatch, tmp_path, {"gemm_1x1": 1e-3, "im2col_gemm": 2e-3},
                                 state)
    tactic, entry, timed = build()
    assert tactic == "im2col_gemm" and timed == ["im2col_gemm", "gemm_1x1"]
    assert entry["failed"] == ["gemm_1x1"] and entry["retries"] == 0
    tactic, entry, timed = build()  # still failing: tried again, alone
    assert tactic == "im2col_gemm" and timed == ["gemm_1x1"] and entry["retries"] == 1
    state["fail"] = False  # the failure passed: the faster tactic takes over
    tactic, entry, timed = build()
    assert tactic == "gemm_1x1" and timed == ["gemm_1x1"]
    assert entry == {"tactic": "gemm_1x1", "seconds": 1e-3,
                     "timed": ["gemm_1x1", "im2col_gemm"]}
    tactic, entry, timed = build()
    assert tactic == "gemm_1x1" and timed == []  # a plain hit now
    # a failure that stays is given up after FAILED_RETRIES tries
    import os
    os.remove(path)
    state["fail"] = True
    for k in range(tactics.FAILED_RETRIES + 2):
        tactic, entry, timed = build()
        assert tactic == "im2col_gemm"
        want = (["im2col_gemm", "gemm_1x1"] if k == 0 else
                ["gemm_1x1"] if k <= tactics.FAILED_RETRIES else [])
        assert timed == want, (k, timed)
    assert entry["retries"] == tactics.FAILED_RETRIES


def test_a_candidate_offered_after_a_choice_was_cached_challenges_it(monkeypatch, tmp_path):
    """A cached choice records the candidates it was chosen among ("timed"); a build that
    offers one more (a tactic switched on later: TFTRT_QUANT_CUDNN_PAIRS=0, then 1) times that
    one alone against the cached time, keeps the faster and records them all; the build
    after is a plain hit. An entry from before "timed" existed stays a plain hit (nothing is
    known of what it was chosen among). Timings fixed per tactic: gemm_1x1 1 ms, im2col_gemm
    2 ms, "slow" (a stand-in candidate offered only at first) 5 ms."""
    import tftrt.engine.tactics as tactics
    state = {"offer": False, "timed": []}
    real = tactics.candidates

    def offered(backend, net, layer):  # gemm_1x1 "switched on" later, "slow" gone then
        cands = [c for c in real(backend, net, layer) if c.name != "gemm_1x1" or state["offer"]]
        return cands if state["offer"] else cands + [_Slow()]
    monkeypatch.setattr(tactics, "candidates", offered)
    build, path = _cached_builds(
        monkeypatch, tmp_path, {"gemm_1x1": 1e-3, "im2col_gemm": 2e-3, "slow": 5e-3}, state)
    tactic, entry, timed = build()
    assert tactic == "im2col_gemm" and sorted(timed) == ["im2col_gemm", "slow"], timed
    assert entry["timed"] == ["im2col_gemm", "slow"]
    state["offer"] = True  # gemm_1x1 offered now: timed alone against the cached 2 ms
    tactic, entry, timed = build()
    assert tactic == "gemm_1x1" and timed == ["gemm_1x1"], timed
    assert entry == {"tactic": "gemm_1x1", "seconds": 1e-3,
                     "timed": ["gemm_1x1", "im2col_gemm", "slow"]}
    tactic, entry, timed = build()
    assert tactic == "gemm_1x1" and timed == []  # a plain hit now
    # an entry from before "timed" was recorded: a plain hit, whatever is offered now
    cache = TimingCache(path)
    (key,) = cache.entries
    cache.entries[key] = {"tactic": "im2col_gemm", "seconds": 2e-3}
    cache.save()
    tactic, entry, timed = build()
    assert tactic == "im2col_gemm" and timed == [] and "timed" not in entry


def test_a_malformed_cache_entry_is_a_miss_or_loses_the_malformed_field(tmp_path):
    """A hand-edited or foreign cache file: an entry without a tactic name or a finite time
    is a miss (timed again and replaced); a "timed" / "failed" that is not a list of names
    is dropped -- a string would have matched tactic names by substring -- and retries that
    are not a count read 0."""
    from tftrt.engine.tactics import _checked_entry
    assert _checked_entry({"tactic": "a", "seconds": 1}) == {"tactic": "a", "seconds": 1.0}
    for bad in (None, [], {"seconds": 1.0}, {"tactic": 3, "seconds": 1.0},
                {"tactic": "a"}, {"tactic": "a", "seconds": "1"}, {"tactic": "a", "seconds": True},
                {"tactic": "a", "seconds": float("nan")}, {"tactic": "a", "seconds": -1.0}):
        assert _checked_entry(bad) is None, bad
    assert _checked_entry({"tactic": "a", "seconds": 1e-3, "timed": "gemm_1x1im2col_gemm",
                           "failed": ["b"], "retries": "2"}) == \
        {"tactic": "a", "seconds": 1e-3, "failed": ["b"], "retries": 0}
    model = _pointwise_conv_model()
    path = str(tmp_path / "cache.json")
    first = TimingCache(path)
    build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig(timing_cache=first))
    (key,) = first.entries
    for bad in ({"tactic": "gemm_1x1", "seconds": "fast"},
                {"tactic": "gemm_1x1", "seconds": 1e-3, "timed": "gemm_1x1 im2col_gemm"}):
        first.entries[key] = bad
        first.save()
        cache = TimingCache(path)
        engine = build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig(timing_cache=cache))
        timed = engine.build_info["tactic_timings"]
        if "timed" in bad:  # the time is good: a plain hit, its bad list ignored
            assert timed == {} and engine.network.layers[0].tactic == "gemm_1x1"
        else:  # timed again, and the entry replaced
            assert set(timed[engine.network.layers[0].name]) == {"gemm_1x1", "im2col_gemm"}
            assert isinstance(cache.entries[key]["seconds"], float)


class _Slow:
    """The stand-in candidate of the test above (the numpy backend's conv kernel runs a
    tactic it does not know its default way)."""
    name, margin = "slow", 0.0


def test_a_gpu_timeout_stops_the_build_with_its_message(monkeypatch):
    """A timing run that never finishes means a stuck GPU: the build fails with the message
    instead of trying the next candidate (which would wait on the same GPU)."""
    from tftrt.engine.errors import EngineBuildError, GpuTimeout
    _timing_that_fails_for(monkeypatch, "im2col_gemm",
                           GpuTimeout("GPU work did not finish within 120 s while timing x"))
    with pytest.raises(EngineBuildError, match="did not finish within 120 s"):
        build_engine(_pointwise_conv_model(), {"x": (2, 6, 6, 8)}, BuilderConfig())


def test_an_any_kind_tactic_prepares_every_default_layer(monkeypatch):
    """A backend's ANY_KIND "default" tactic is never timed; the builder asks its workspace
    for each layer without a tactic of its own, so a backend that cannot run such a layer
    fails the build there, naming it (how the CuPy backend refuses what it has no GPU path
    for)."""
    from tftrt.engine import tactics
    from tftrt.engine.errors import EngineBuildError
    monkeypatch.setattr(tactics, "_REGISTRY", dict(tactics._REGISTRY))
    seen = []

    def workspace(net, layer):
        seen.append(layer.name)
        if layer.kind == "pointwise":
            raise EngineBuildError(f"layer {layer.name} (pointwise) cannot run here")
        return 4096
    tactics.register_tactic("numpy", tactics.ANY_KIND, "default", workspace=workspace)
    model = _pointwise_conv_model()
    engine = build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig())
    layer = engine.network.layers[0]
    assert "default" not in [t.name for t in candidates("numpy", engine.network, layer)]
    assert seen == [] and engine.memory.workspace_bytes == 0  # the conv has tactics of its own
    shuffle = make_model([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])],
                         {"x": rand(2, 3)})
    assert build_engine(shuffle, {"x": (2, 3)}, BuilderConfig()).memory.workspace_bytes == 4096
    relu = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": rand(2, 3)})
    with pytest.raises(EngineBuildError, match=r"layer \S+ \(pointwise\) cannot run here"):
        build_engine(relu, {"x": (2, 3)}, BuilderConfig())
    assert len(seen) == 2


def test_a_tactic_with_a_margin_must_win_by_it():
    from tftrt.engine.tactics import fastest
    margins = {"tiled": 0.03}
    assert fastest({"direct": 1.00, "tiled": 0.98, "cudnn": 1.20}, margins) == "direct"
    assert fastest({"direct": 1.00, "tiled": 0.96, "cudnn": 1.20}, margins) == "tiled"
    assert fastest({"direct": 1.00, "tiled": 0.98}, {}) == "tiled"
    assert fastest({"tiled": 0.5}, margins) == "tiled"  # nothing else ran
    # the fallback is the fastest of the others, whichever order they come in
    assert fastest({"cudnn": 0.99, "tiled": 0.985, "direct": 1.0}, margins) == "cudnn"


def test_timing_honours_a_registered_margin(monkeypatch):
    import tftrt.engine.tactics as tactics
    times = {"im2col_gemm": 1.0e-3, "gemm_1x1": 0.99e-3}
    monkeypatch.setattr(tactics, "_time_runner",
                        lambda backend, runner, inputs, repeats, what="": next(
                            t for n, t in times.items() if repr(n) in what))
    reg = tactics._REGISTRY[("numpy", "conv")]
    gemm = next(t for t in reg if t.name == "gemm_1x1")
    model = _pointwise_conv_model()
    assert build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig()).network.layers[0] \
        .tactic == "gemm_1x1"
    monkeypatch.setattr(gemm, "margin", 0.03)
    assert build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig()).network.layers[0] \
        .tactic == "im2col_gemm"


def test_forced_choices_apply_without_timing():
    """BuilderConfig.tactic_choices is honoured with tactic_timing=False too (nothing is timed
    either way); a choice that does not apply to the layer falls back to its first candidate."""
    model = _pointwise_conv_model()
    plain = build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig(tactic_timing=False))
    layer = plain.network.layers[0]
    assert layer.tactic == "im2col_gemm"
    for forced, want in (("gemm_1x1", "gemm_1x1"), ("depthwise_direct", "im2col_gemm")):
        eng = build_engine(model, {"x": (2, 6, 6, 8)}, BuilderConfig(
            tactic_timing=False, tactic_choices={layer.name: {"kind": "conv",
                                                              "tactic": forced}}))
        assert eng.network.layers[0].tactic == want and not eng.build_info["tactic_timings"]
        x = rand(2, 6, 6, 8)
        np.testing.assert_allclose(eng.execute([x])[0], run_ort(model, {"x": x})[0],
                                   rtol=1e-4, atol=1e-5)
