"""Plans: bit-identical round trip without rebuilding; bad plans raise PlanError."""

import json
import struct

import numpy as np
import pytest

from tests.engine.models import resnet50
from tests.engine.test_passes import _keras_conv_bn_relu
from tftrt.engine import (BuilderConfig, PlanError, build_engine, deserialize_engine,
                          serialize_engine)
from tftrt.engine import plan as plan_mod


@pytest.fixture(scope="module")
def built():
    model, feeds = resnet50(batch=1, size=32)
    engine = build_engine(model, {k: v.shape for k, v in feeds.items()},
                          BuilderConfig(precision="FP16"))
    return engine, list(feeds.values())


def test_round_trip_is_bit_identical_and_does_not_rebuild(built, monkeypatch):
    engine, x = built
    data = engine.serialize()
    assert data[:8] == b"TFTRTPLN" and data == serialize_engine(engine)

    def boom(*a, **k):
        raise AssertionError("loading a plan must not rebuild or re-tune")
    import tftrt.engine.builder as builder
    import tftrt.engine.tactics as tactics
    for mod, fn in [(builder, "build_engine"), (builder, "run_passes"),
                    (builder, "choose_tactics"), (tactics, "choose_tactics"),
                    (builder, "plan_memory")]:
        monkeypatch.setattr(mod, fn, boom)
    loaded = deserialize_engine(data)
    assert loaded.layers_summary() == engine.layers_summary()
    assert loaded.precision == "FP16" and loaded.device_memory_bytes == \
        engine.device_memory_bytes
    for a, b in zip(loaded.execute(x), engine.execute(x)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert loaded.serialize() == data


@pytest.mark.parametrize("version", [2, 3])
def test_an_older_plan_still_loads(built, version):
    """Version 3 only added pools holding a folded pad (pad_value), version 4 layers storing
    int8 codes for a float layer's output (an INT8 max pool, a stem before it), which older
    plans never have: one written as version 2 or 3 loads and answers the same."""
    engine, x = built
    assert not any("pad_value" in l.attrs or "output_scale" in l.attrs
                   for l in engine.network.layers)  # (neither in it)
    data = bytearray(engine.serialize())
    struct.pack_into("<I", data, 8, version)
    loaded = deserialize_engine(bytes(data))
    for a, b in zip(loaded.execute(x), engine.execute(x)):
        assert np.array_equal(a, b)


def test_plan_is_data_not_pickle(built):
    data = built[0].serialize()
    hlen = struct.unpack_from("<Q", data, 12)[0]
    header = json.loads(data[24:24 + hlen])
    assert header["format_version"] == plan_mod.FORMAT_VERSION
    assert header["device"] == "cpu" and header["backend"] == "numpy"
    assert {l["tactic"] for l in header["layers"]} >= {"gemm_1x1"}
    assert b"\x80\x04" not in data[:24 + hlen]  # no pickle protocol header


@pytest.mark.parametrize("version", [1, 6])
def test_other_version_is_refused(built, version):
    """A newer plan, and a version-1 plan (before a max pool kept the floor of an activation
    moved before it: its NaN windows gave -3.4e38, helper hunt 2026-12-02), rebuild."""
    assert plan_mod.FORMAT_VERSION == 5
    data = bytearray(built[0].serialize())
    struct.pack_into("<I", data, 8, version)
    with pytest.raises(PlanError, match=f"format version {version} .*rebuild"):
        deserialize_engine(bytes(data))


@pytest.mark.parametrize("where", ["magic", "header", "weights", "truncated"])
def test_corrupt_plan_is_refused(built, where):
    data = bytearray(built[0].serialize())
    if where == "magic":
        data[0:8] = b"NOTAPLAN"
    elif where == "header":
        data[30] ^= 0xFF
    elif where == "weights":
        data[-10] ^= 0xFF
    else:
        data = data[:len(data) // 2]
    with pytest.raises(PlanError):
        deserialize_engine(bytes(data))


def test_plan_for_another_device_is_refused(monkeypatch):
    model, _ = _keras_conv_bn_relu()
    engine = build_engine(model, {"x": (2, 8, 8, 3)}, BuilderConfig())
    engine.device = "NVIDIA H100 80GB HBM3 (sm_90)"
    with pytest.raises(PlanError, match="built for device 'NVIDIA H100.*rebuild"):
        deserialize_engine(engine.serialize())
    with pytest.raises(PlanError, match="backend 'cupy'|device"):
        deserialize_engine(engine.serialize(), backend="cupy")



def test_round_trip_keeps_scalar_weights_scalar(built):
    """A 0-d weight stays 0-d through a plan. It was stored as shape [1] (np.ascontiguousarray
    makes 0-d arrays 1-d): a loaded engine whose output came from one (a predicate compared
    with a scalar threshold) answered [1] where TF has a scalar, which a tf.cond refused."""
    engine = built[0]
    engine.network.weights["threshold"] = np.asarray(6.0, np.float32)
    try:
        loaded = deserialize_engine(engine.serialize())
    finally:
        del engine.network.weights["threshold"]
    w = loaded.network.weights["threshold"]
    assert w.shape == () and w.dtype == np.float32 and float(w) == 6.0
