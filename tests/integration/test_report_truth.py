"""Reports that must say what really happens (helper hunt, 2026-12-04): `tftrt bench`'s
engine builds under profiles, `tftrt convert`'s saved-engine count and its profiles on the
native backend, an engine per --batch-sizes shape, build() evicting its own engines, messages
under allow_build_at_runtime=False, and string dtypes named "string", not "object"."""

import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tftrt import trt_convert as trt
from tests.integration import models as models_mod
from tests.integration.test_cli import numpy_backend, run_cli  # noqa: F401


class _Models(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def conv(self, x):
        return {"y": tf.nn.relu(x * 2.0 + 1.0) * 3.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s"),
                                  tf.TensorSpec([None, 4], tf.float32, name="x")])
    def strs(self, s, x):
        return {"s": tf.strings.upper(s), "y": tf.nn.relu(x * 2.0 + 1.0) - 3.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth")
    m = _Models()
    paths = {}
    for name, sig in (("conv", m.conv), ("strs", m.strs)):
        paths[name] = str(root / name)
        tf.saved_model.save(m, paths[name], signatures={"serving_default": sig})
    return paths


def _plans(path):
    with open(os.path.join(path, "assets", "tftrt", "manifest.json")) as f:
        return sum(len(e["plans"]) for e in json.load(f)["engines"])


def test_bench_counts_a_profiles_shape_builds(models, tmp_path, monkeypatch):
    """A call at a new batch size inside a profile builds that size's engine: bench said
    "engine builds 0" (it counted new profile sets only)."""
    dst = str(tmp_path / "dyn")
    code, out, err = run_cli("convert", models["conv"], dst, "--dynamic-shape",
                             "--batch-sizes", "1,8", "--no-summary")
    assert code == 0, err
    monkeypatch.setenv("TFTRT_SPLIT_BATCH", "0")  # the call waits for its own engine
    code, out, err = run_cli("bench", dst, "--batch-sizes", "5", "--warmup", "1",
                             "--iterations", "2", "--json")
    assert code == 0, err
    (row,) = [r for r in json.loads(out)["results"] if r["runner"] == "tftrt"]
    assert row["engine_runs"]["builds"] == 1 and row["engine_runs"]["native"] == 0, row


def test_convert_counts_the_plans_it_saved(models, tmp_path):
    """Three profiles (Optimal, batches 1, 4, 8) save three plans; convert said 1."""
    dst = str(tmp_path / "opt")
    code, out, err = run_cli("convert", models["conv"], dst, "--dynamic-shape",
                             "--profile-strategy", "Optimal", "--batch-sizes", "1,4,8",
                             "--no-summary")
    assert code == 0, err
    assert _plans(dst) == 3
    assert "1 engine op(s), 3 built engine(s) saved" in out, out


def test_batch_sizes_keep_an_engine_each_by_default(models, tmp_path, caplog):
    """--batch-sizes 1,8 without --max-cached-engines: both engines are saved (TF-TRT's
    default of 1 kept batch 8's alone, and batch 1 then built again or ran natively);
    --max-cached-engines 1 still keeps one, and build() says it evicted the other."""
    dst = str(tmp_path / "two")
    code, out, err = run_cli("convert", models["conv"], dst, "--batch-sizes", "1,8",
                             "--no-build-at-runtime", "--no-summary")
    assert code == 0, err
    assert _plans(dst) == 2 and "2 built engine(s) saved" in out, out
    op, = tftrt.load(dst).engine_ops.values()
    assert op.cache.capacity == 2
    one = str(tmp_path / "one")
    with caplog.at_level(logging.WARNING, logger="tftrt"):
        code, out, err = run_cli("convert", models["conv"], one, "--batch-sizes", "1,8",
                                 "--max-cached-engines", "1", "--no-build-at-runtime",
                                 "--no-summary")
    assert code == 0, err
    assert _plans(one) == 1
    warned = [r.getMessage() for r in caplog.records if "evicted" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "1 engine(s) build() built were evicted before it returned " \
        "(maximum_cached_engines=1)" in warned[0]
    assert "engines kept are for [[8, 4]]" in warned[0]
    assert "run natively (allow_build_at_runtime=False)" in warned[0]
    assert "or use use_dynamic_shape=True" in warned[0]  # a static converter


def test_build_warns_only_for_evictions_of_its_own(models, caplog):
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=models["conv"],
                                   maximum_cached_engines=2)
    conv.convert()
    with caplog.at_level(logging.WARNING, logger="tftrt"):
        conv.build(lambda: iter([np.ones((1, 4), np.float32), np.ones((8, 4), np.float32)]))
    assert not [r for r in caplog.records if "evicted" in r.getMessage()]


@pytest.mark.parametrize("dynamic", [False, True])
def test_build_does_not_blame_itself_for_an_engine_a_call_made(models, caplog, dynamic):
    """An engine a call built before build() is evicted by build()'s (maximum_cached_engines
    1): no engine build() built went, so no warning (it said build() built engines for more
    shapes than were kept, and told a use_dynamic_shape converter to use use_dynamic_shape:
    helper hunt, 2026-12-04; the static case of two given shapes, which does warn, is
    above)."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=models["conv"],
                                   use_dynamic_shape=dynamic, maximum_cached_engines=1)
    fn = conv.convert()
    fn(x=tf.constant(np.ones((3, 4), np.float32)))  # a runtime engine for batch 3
    op, = conv.engine_ops.values()
    assert len(op.cache) == 1
    with caplog.at_level(logging.WARNING, logger="tftrt"):
        conv.build(lambda: iter([np.ones((8, 4), np.float32)]))
    assert not [r for r in caplog.records if "evicted" in r.getMessage()]
    assert op.stats["evictions"] == 1 and op.stats["build_evictions"] == 0, op.stats


def test_native_backend_keeps_the_profiles_of_batch_sizes(models, tmp_path, monkeypatch):
    """On the native backend `convert --dynamic-shape --batch-sizes 1,8` skipped build(), so
    no profile was saved: after loading where engines run, batch 4 got a profile [4, 4] of
    its own instead of 1..8 (the Python API kept it)."""
    dst = str(tmp_path / "native")
    code, out, err = run_cli("convert", models["conv"], dst, "--backend", "native",
                             "--dynamic-shape", "--batch-sizes", "1,8", "--no-summary")
    assert code == 0, err
    assert "profile(s) of the given shapes are saved" in out, out
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    loaded = tftrt.load(dst)
    x = np.random.RandomState(0).standard_normal((4, 4)).astype(np.float32)
    got = loaded.signatures["serving_default"](x=tf.constant(x))["y"].numpy()
    np.testing.assert_allclose(got, np.maximum(x * 2 + 1, 0) * 3, rtol=1e-6, atol=1e-6)
    op, = loaded.engine_ops.values()
    ((_, engine),) = op.cache.items()
    (profile,) = engine.profiles
    assert (profile.min, profile.opt, profile.max) == (((1, 4),), ((8, 4),), ((8, 4),))


def test_refused_plan_without_runtime_builds_says_it_runs_natively(models, tmp_path, caplog,
                                                                    capsys):
    """A saved engine that cannot be used under allow_build_at_runtime=False: load said
    "it will rebuild" and inspect "tftrt.load rebuilds it", where every call runs natively;
    a model saved without engines said engines build at the first call."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=models["conv"],
                                   allow_build_at_runtime=False)
    conv.convert()
    conv.build(lambda: iter([np.ones((2, 4), np.float32)]))
    dst = str(tmp_path / "norebuild")
    conv.save(dst)
    adir = os.path.join(dst, "assets", "tftrt")
    (plan,) = [f for f in os.listdir(adir) if f.endswith(".plan")]
    with open(os.path.join(adir, plan), "r+b") as f:
        f.seek(-3, os.SEEK_END)
        b = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    with caplog.at_level(logging.INFO, logger="tftrt"):
        loaded = tftrt.load(dst)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "it will rebuild" not in said
    code, out, err = run_cli("inspect", dst, "--no-layers")
    assert "rebuilds it" not in out + err and "its shapes run the native segment" in out + err
    x = tf.ones((2, 4))
    loaded.signatures["serving_default"](x=x)
    op, = loaded.engine_ops.values()
    assert op.stats["native"] == 1 and op.stats["engine"] == 0

    bare = str(tmp_path / "bare")
    with caplog.at_level(logging.WARNING, logger="tftrt"):
        conv.save(bare, save_gpu_specific_engines=False)
    assert any("may build none, so every call runs its native segments" in r.getMessage()
               for r in caplog.records)
    code, out, err = run_cli("inspect", bare, "--no-layers")
    assert code == 0, err
    assert "no saved engine, and no build at run time: every call runs the native segment" \
        in out, out


def test_a_shape_inside_unsaved_profiles_is_not_told_to_call_build(models, tmp_path, caplog):
    """Dynamic shapes, build() at batches 2 and 8, saved without engines and no runtime
    builds: a call at batch 2 said "no optimization profile of the engine contains input
    shapes ((2, 4),) ... (call converter.build() with these shapes before save())", which
    the user had done (cache hunt, 2026-12-04). It now says the shapes are inside the
    profiles and no engine for them is here; a shape outside them keeps the build advice."""
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=models["conv"], use_dynamic_shape=True,
                                   allow_build_at_runtime=False)
    conv.convert()
    conv.build(lambda: iter([np.ones((2, 4), np.float32), np.ones((8, 4), np.float32)]))
    dst = str(tmp_path / "bare_profiles")
    conv.save(dst, save_gpu_specific_engines=False)
    loaded = tftrt.load(dst)
    op, = loaded.engine_ops.values()
    for batch, said, not_said in ((2, "are inside the engine's optimization profiles",
                                   "call converter.build()"),
                                  (16, "call converter.build() with these shapes", "inside")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tftrt"):
            loaded.signatures["serving_default"](x=tf.ones((batch, 4)))
        msg = " ".join(r.getMessage() for r in caplog.records)
        assert said in msg and not_said not in msg, msg
    assert op.stats["native"] == 2 and op.stats["engine"] == 0


def test_string_dtypes_are_named_string(models, tmp_path):
    src = models["strs"]
    npz = str(tmp_path / "in.npz")
    np.savez(npz, s=np.array([b"ab", b"c"]), x=np.ones((2, 4), np.float32))
    dst = str(tmp_path / "strs_trt")
    code, out, err = run_cli("convert", src, dst, "--inputs", npz, "--no-summary")
    assert code == 0, err
    code, out, err = run_cli("inspect", dst, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["inputs"]["s"]["dtype"] == "string" and info["outputs"]["s"]["dtype"] == "string"
    code, out, err = run_cli("inspect", dst, "--no-layers")
    assert "s string [?]" in out.splitlines()[0] and "object" not in out.splitlines()[0]
    code, out, err = run_cli("compare", dst, "--inputs", npz)
    assert code == 0, out + err
    assert "PASS output s string [2]: 0 of 2 differ" in out, out


def test_ops_left_native_add_up_to_the_total(tmp_path):
    """The total of "% of OPs Converted" counts Consts (as TF-TRT's); the list of ops left
    native does not list them (a Const is no reason), and a reader adding it up against the
    total came out short (transformer hunt, 2026-12-04). The line says how many it leaves
    out, so the numbers add up."""
    import re

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            a = tf.nn.relu(x * 2.0 + 1.0)
            return {"y": tf.math.igamma(tf.constant(3.0), tf.math.lgamma(a + 1.5)) - a * 0.5}
    src = models_mod.save_module(M(), str(tmp_path / "m"))
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, minimum_segment_size=1)
    conv.convert()
    lines = []
    conv.summary(print_fn=lines.append)
    text = "\n".join(lines)
    converted, total = map(int, re.search(r"% of OPs Converted: [\d.]+% \[(\d+)/(\d+)\]",
                                          text).groups())
    left = re.search(r"\[\*\] Ops left native: (.*)", text).group(1)
    listed = sum(int(c) for c in re.findall(r": (\d+)x", left))
    consts = re.search(r"\(and (\d+) Const, not listed\)", left)
    assert consts, left
    assert listed + int(consts.group(1)) == total - converted, text
