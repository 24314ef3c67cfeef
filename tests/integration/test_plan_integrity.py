"""Saved plans that tftrt.load refuses are refused by `tftrt inspect` too, with the reason and
exit status 1, never a traceback (helper hunt, 2026-12-04: inspect listed a plan with a flipped
weight byte, or the FP16 plan of another conversion, as a good engine, and a malformed header
field gave a traceback); and the manifest holds each plan's sha256, so a plan edited with its
own checksums made valid again is refused (it was used, answers off by 2.06)."""

import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

import tftrt
from tftrt import cli, saving
from tests.integration import models
from tests.integration.test_saved_model_trust import (adir, convert_and_save,
                                                      drop_plan_digests, read, read_manifest,
                                                      reframe)

E0 = "TRTEngineOp_000_000"
BATCHES = (4, 2)  # built in this order: plan _0 is batch 4, plan _1 batch 2
PLAN0 = f"{E0}_0.plan"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """An MLP converted twice (FP32, FP16), each saved with plans for batches 4 and 2."""
    root = tmp_path_factory.mktemp("plans")
    src = models.save_module(models.MLP(seed=0), str(root / "src"))
    return {"src": src, "fp32": convert_and_save(src, str(root / "fp32"), BATCHES),
            "fp16": convert_and_save(src, str(root / "fp16"), BATCHES, "FP16")}


@pytest.fixture
def model(dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("TFTRT_BACKEND", "numpy")
    return shutil.copytree(dirs["fp32"], str(tmp_path / "model"))


def inspect(path):
    """(exit status, stdout + stderr) of ``tftrt inspect path`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["inspect", str(path), "--no-layers"], out=out, err=err)
    return code, out.getvalue() + err.getvalue()


def assert_answers_native(dirs, path):
    """tftrt.load's answers equal native TensorFlow's, for both saved batch sizes; returns
    the loaded model."""
    loaded = tftrt.load(path)
    native = tf.saved_model.load(dirs["src"]).signatures["serving_default"]
    for b in BATCHES:
        x = tf.constant(models.batch((b, 8)))
        got, ref = loaded.signatures["serving_default"](x=x), native(x=x)
        assert sorted(got) == sorted(ref)
        for k in ref:
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-5,
                                       atol=1e-5, err_msg=k)
    return loaded


def flip_weight_byte(path, dirs):
    p = os.path.join(adir(path), PLAN0)
    data = bytearray(read(p))
    data[-20] ^= 0xFF
    with open(p, "wb") as f:
        f.write(bytes(data))


def fp16_plan(path, dirs):
    shutil.copyfile(os.path.join(adir(dirs["fp16"]), PLAN0), os.path.join(adir(path), PLAN0))


def swap_batch_plans(path, dirs):
    a, b = (os.path.join(adir(path), f"{E0}_{k}.plan") for k in (0, 1))
    data_a, data_b = read(a), read(b)
    for p, data in ((a, data_b), (b, data_a)):
        with open(p, "wb") as f:
            f.write(data)


def edit_header(edit):
    def corrupt(path, dirs):
        p = os.path.join(adir(path), PLAN0)
        data = reframe(read(p), edit)
        with open(p, "wb") as f:
            f.write(data)
    return corrupt


def scale_weight_with_valid_checksums(path, dirs):
    """Doubles the plan's first weight and makes its crc32s valid again (repro3)."""
    p = os.path.join(adir(path), PLAN0)
    data = read(p)
    _, _, hlen, _ = struct.unpack_from("<8sIQI", data)
    header = json.loads(data[24:24 + hlen])
    start = 24 + hlen
    start += (-start) % 64
    blob = bytearray(data[start:start + header["weights_bytes"]])
    w = next(iter(header["weights"].values()))
    n = int(np.prod(w["shape"]))
    arr = np.frombuffer(bytes(blob), np.dtype(w["dtype"]), count=n, offset=w["offset"]) * 2
    blob[w["offset"]:w["offset"] + arr.nbytes] = arr.tobytes()
    data = data[:start] + bytes(blob) + data[start + len(blob):]
    data = reframe(data, lambda h: h.update(weights_crc32=zlib.crc32(bytes(blob))))
    with open(p, "wb") as f:
        f.write(data)


DIGEST = "does not match the digest the manifest holds"
# corruption, the reason inspect and tftrt.load give without plan digests in the manifest
CASES = {
    "weight_byte_flipped": (flip_weight_byte, "plan weights are truncated or corrupt"),
    "fp16_plan_in_fp32_model": (fp16_plan, "belongs to another conversion of this model"),
    "batch_plans_swapped": (swap_batch_plans, "belongs to another conversion of this model"),
    "memory_not_an_object": (edit_header(lambda h: h.update(memory="abc")),
                             "plan header has a malformed field"),
    "layers_null": (edit_header(lambda h: h.update(layers=None)),
                    "plan header has a malformed field"),
    "weights_bytes_not_a_number": (edit_header(lambda h: h.update(weights_bytes="12x")),
                                   "plan header has a malformed field"),
}


def assert_inspect_refuses(path, reason, files=(PLAN0,)):
    code, text = inspect(path)
    assert code == 1, text
    assert "Traceback" not in text, text
    assert "refused" in text and reason in text, text
    for f in files:
        assert f in text, text


@pytest.mark.parametrize("with_digests", [True, False], ids=["digests", "old_manifest"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_inspect_refuses_what_load_refuses(dirs, model, monkeypatch, case, with_digests):
    corrupt, reason = CASES[case]
    if not with_digests:
        drop_plan_digests(model, monkeypatch)
    corrupt(model, dirs)
    files = (f"{E0}_0.plan", f"{E0}_1.plan") if case == "batch_plans_swapped" else (PLAN0,)
    assert_inspect_refuses(model, DIGEST if with_digests else reason, files)
    assert_answers_native(dirs, model)


def test_plan_edited_with_valid_checksums_is_refused_by_its_digest(dirs, model, caplog):
    scale_weight_with_valid_checksums(model, dirs)
    assert_inspect_refuses(model, DIGEST)
    with caplog.at_level("WARNING"):
        assert_answers_native(dirs, model)
    assert any(PLAN0 in r.getMessage() and DIGEST in r.getMessage() and "rebuild" in
               r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_manifest_without_plan_digests_still_loads_its_plans(dirs, model, monkeypatch):
    manifest = read_manifest(model)
    plans = [p for e in manifest["engines"] for p in e["plans"]]
    assert plans and all(p["sha256"] == saving.hashlib.sha256(
        read(os.path.join(adir(model), p["file"]))).hexdigest() for p in plans)
    drop_plan_digests(model, monkeypatch)
    code, text = inspect(model)
    assert code == 0 and "refused" not in text, text
    loaded = assert_answers_native(dirs, model)
    assert isinstance(loaded, saving.LoadedModel)
    # the saved plans served every call: nothing was rebuilt
    assert all(op.stats["builds"] == 0 and op.stats["engine"] >= 1
               for op in loaded.engine_ops.values())
