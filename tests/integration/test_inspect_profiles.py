"""`tftrt inspect` names each saved plan of an engine with optimization profiles by its own
opt shapes (every plan was labelled with the engine's cache key, the first profile's shapes:
helper hunt, 2026-12-03), and the min and max shapes it serves (s49)."""

import numpy as np
import tensorflow as tf

from tftrt import inspect_model, trt_convert as trt


def _described(tmp_path, monkeypatch, strategy: str, batches):
    """inspect's description of an MLP converted with dynamic shapes and ``strategy``,
    built at ``batches``, saved: (the engine's JSON, the text lines)."""
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    rng = np.random.RandomState(0)
    w = tf.constant(rng.randn(16, 16).astype("float32"))
    m = tf.Module()
    m.f = tf.function(lambda x: {"out": tf.matmul(tf.nn.relu(tf.matmul(x, w) + 0.1), w)},
                      input_signature=[tf.TensorSpec([None, 16], tf.float32)])
    tf.saved_model.save(m, str(tmp_path / "src"), signatures=m.f.get_concrete_function())
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=str(tmp_path / "src"),
                                   use_dynamic_shape=True, minimum_segment_size=1,
                                   dynamic_shape_profile_strategy=strategy)
    conv.convert()
    conv.build(lambda: iter([(rng.randn(b, 16).astype("float32"),) for b in batches]))
    conv.save(str(tmp_path / "out"))
    described = inspect_model.describe(str(tmp_path / "out"))
    (engine,) = described["json"]["engines"]
    lines = []
    inspect_model.format_description(described, lines.append, layers=False)
    return engine, lines


def test_each_profile_plan_shows_its_own_opt_shapes(tmp_path, monkeypatch):
    engine, lines = _described(tmp_path, monkeypatch, "Optimal", (1, 4, 8))
    plans = engine["plans"]
    assert sorted(p["input_shapes"] for p in plans) == [[[1, 16]], [[4, 16]], [[8, 16]]]
    assert sorted(p["opt_of_profiles"] for p in plans) == [[0], [1], [2]]
    # and the shapes each serves (Optimal: one shape a profile), said in the text too
    assert sorted((p["profiles"][0]["min"], p["profiles"][0]["max"]) for p in plans) == \
        [([[b, 16]], [[b, 16]]) for b in (1, 4, 8)]
    for b in (1, 4, 8):
        assert any(f"for input shapes [[{b}, 16]]" in ln for ln in lines), lines


def test_a_range_profile_plan_shows_the_shapes_it_serves(tmp_path, monkeypatch):
    """A Range engine for batches 1..4 read "saved engine 0 for input shapes [[4, 16]]", as a
    static batch-4 engine would (ONNX / CLI hunt, s49): the profile's min and max are shown,
    in the text and the JSON."""
    engine, lines = _described(tmp_path, monkeypatch, "Range", (1, 4))
    (plan,) = engine["plans"]
    assert plan["profiles"] == [{"min": [[1, 16]], "opt": [[4, 16]], "max": [[4, 16]]}]
    assert any("for input shapes [[4, 16]] (optimization profile: min [[1, 16]], max "
               "[[4, 16]])" in ln for ln in lines), lines
