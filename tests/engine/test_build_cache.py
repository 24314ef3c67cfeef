"""The persistent build cache (engine/build_cache.py), the timing cache backed by it, and the
engines of one optimization profile: reused tactics (no timing) and shared weights. No TF."""

import json
import logging
import multiprocessing
import os

import numpy as np
import pytest
from onnx import helper

from tests.engine.harness import make_model, rand, run_ort
from tests.tolerances import TOLERANCES
from tftrt.engine import BuilderConfig, build_engine
from tftrt.engine import build_cache as bc
from tftrt.engine import tactics
from tftrt.engine.backends import get_backend
from tftrt.profiles import Profile, ProfileEngine

FP = {"layout": "v1", "backend": "numpy", "device": "cpu", "tftrt": "test"}


@pytest.fixture()
def cache_env(tmp_path, monkeypatch):
    """The build cache in a fresh directory (the user's ~/.cache is never touched)."""
    monkeypatch.setenv("TFTRT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TFTRT_BUILD_CACHE", raising=False)
    bc._warned.clear()
    return tmp_path / "cache"


# --- location and switches ------------------------------------------------------------------

def test_location_env_and_disable(tmp_path, monkeypatch):
    monkeypatch.delenv("TFTRT_CACHE_DIR", raising=False)
    monkeypatch.delenv("TFTRT_BUILD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bc.cache_dir() == str(tmp_path / "xdg" / "tftrt")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert bc.cache_dir() == str(tmp_path / "home" / ".cache" / "tftrt")
    monkeypatch.setenv("TFTRT_CACHE_DIR", str(tmp_path / "moved"))
    assert bc.cache_dir() == str(tmp_path / "moved")
    backend = get_backend("numpy")
    assert bc.build_cache_for(backend).directory.startswith(str(tmp_path / "moved"))
    for off in ("0", "false", "FALSE"):
        monkeypatch.setenv("TFTRT_BUILD_CACHE", off)
        assert bc.cache_dir() is None and bc.build_cache_for(backend) is None
    monkeypatch.setenv("TFTRT_BUILD_CACHE", "1")
    assert bc.cache_dir() == str(tmp_path / "moved")


def test_fingerprint_names_backend_device_and_versions():
    import numpy
    import tftrt
    fp = bc.environment_fingerprint(get_backend("numpy"))
    assert fp["backend"] == "numpy" and fp["device"] == "cpu"
    assert fp["tftrt"] == tftrt.__version__ and fp["numpy"] == numpy.__version__


def test_the_nvmath_version_comes_from_its_metadata_without_an_import(monkeypatch):
    """A warm rebuild reads the fingerprint before build()'s check starts: nvmath's version
    comes from its distribution's metadata (its import took 0.7 s), the module's own
    __version__ only where no metadata names it, "none" where neither is there."""
    import importlib.metadata
    import sys
    import types
    real = importlib.metadata.version

    def version(dist):
        if dist == "nvmath-python":
            return "9.8.7"
        return real(dist)
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.delitem(sys.modules, "nvmath", raising=False)
    assert bc._cupy_versions()["nvmath"] == "9.8.7"
    assert "nvmath" not in sys.modules

    def missing(dist):
        raise importlib.metadata.PackageNotFoundError(dist)
    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.setitem(sys.modules, "nvmath", types.SimpleNamespace(__version__="1.2.3"))
    assert bc._cupy_versions()["nvmath"] == "1.2.3"
    monkeypatch.setitem(sys.modules, "nvmath", None)  # not installed: import fails
    assert bc._cupy_versions()["nvmath"] == "none"


# --- get / put / corrupt / foreign ------------------------------------------------------------

def test_put_get_and_miss(cache_env):
    cache = bc.BuildCache(str(cache_env), FP)
    assert cache.get("kernels", "conv 3x3") is None
    assert cache.put("kernels", "conv 3x3", b"\x00compiled\xff")
    assert cache.get("kernels", "conv 3x3") == b"\x00compiled\xff"
    assert cache.get("kernels", "conv 5x5") is None
    assert cache.put_json("tactics", "k", {"tactic": "a"}) and \
        cache.get_json("tactics", "k") == {"tactic": "a"}
    assert cache.stats == {"hits": 2, "misses": 2, "rejected": 0, "writes": 2}
    # A second object (another process) on the same directory sees the entries.
    assert bc.BuildCache(str(cache_env), FP).get("kernels", "conv 3x3") == b"\x00compiled\xff"
    with pytest.raises(ValueError, match="namespace"):
        cache.put("Bad Namespace/..", "k", b"")


def _entries(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                  if f.endswith(".entry"))


def test_the_cache_keeps_to_its_size_limit_least_recently_used_first(cache_env, monkeypatch):
    """A server at ever new shapes wrote entries without limit, and directories of earlier
    environments stayed for good (helper hunt, 2026-12-04): past TFTRT_CACHE_MAX_MB the
    least recently used entries go (a hit counts as a use), every environment counted, down
    to 80% of it; stale .tmp files go too."""
    import time
    monkeypatch.setattr(bc, "PRUNE_EVERY", 1)
    # the prune runs on a thread of its own beside the build: here at once, in this one
    monkeypatch.setattr(bc, "_spawn", lambda target: target())
    monkeypatch.setenv("TFTRT_CACHE_MAX_MB", str(40 * 1024 / 2 ** 20))  # 40 KiB
    old_env = bc.BuildCache(str(cache_env), dict(FP, driver="older"))
    assert old_env.put("kernels", "stale", b"s" * 4096)
    stale = _entries(cache_env)
    past = time.time() - 7200
    os.utime(stale[0], (past, past))
    tmp = os.path.join(os.path.dirname(stale[0]), ".x.entry.1.abc.tmp")
    with open(tmp, "wb") as f:
        f.write(b"half")
    os.utime(tmp, (past, past))
    cache = bc.BuildCache(str(cache_env), FP)
    assert cache.put("kernels", "hot", b"h" * 4096)
    for k in range(30):
        assert cache.put("kernels", f"k{k}", b"x" * 4096)
        assert cache.get("kernels", "hot") == b"h" * 4096  # used all along: kept
        time.sleep(0.002)  # distinct file times
        total = sum(os.path.getsize(p) for p in _entries(cache_env))
        assert total <= 40 * 1024, (k, total)
    assert not os.path.exists(stale[0]) and not os.path.exists(tmp)
    assert cache.get("kernels", "k29") is not None and cache.get("kernels", "k0") is None
    # 0: no limit
    monkeypatch.setenv("TFTRT_CACHE_MAX_MB", "0")
    n = len(_entries(cache_env))
    for k in range(20):
        cache.put("kernels", f"more{k}", b"y" * 4096)
    assert len(_entries(cache_env)) == n + 20
    assert cache.prune(limit=8 * 1024) > 0
    assert sum(os.path.getsize(p) for p in _entries(cache_env)) <= 8 * 1024 * 0.8


def test_a_directory_in_an_entrys_place_spoils_that_entry_only(cache_env, caplog):
    """A directory where one entry's file belongs: os.replace failed and the whole cache
    turned read-only for the process, blaming the directory ("set TFTRT_CACHE_DIR to a
    writable directory"), and corrupt entries said to be replaced were not (hunt)."""
    cache = bc.BuildCache(str(cache_env), FP)
    assert cache.put("kernels", "a", b"a1")
    os.makedirs(cache.path("kernels", "b"))
    with caplog.at_level(logging.WARNING, logger="tftrt.engine.build_cache"):
        assert not cache.put("kernels", "b", b"b1")
        assert not cache.put("kernels", "b", b"b2")
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "cannot replace the entry" in msgs[0], msgs
    assert "TFTRT_CACHE_DIR" not in msgs[0]
    assert cache.put("kernels", "a", b"a2") and cache.get("kernels", "a") == b"a2"
    assert cache.put("kernels", "c", b"c1") and cache.get("kernels", "c") == b"c1"
    leftovers = [n for n in os.listdir(os.path.dirname(cache.path("kernels", "a")))
                 if n.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("damage", ["truncate", "flip_payload", "flip_header", "garbage"])
def test_corrupt_entry_is_ignored_with_one_warning(cache_env, caplog, damage):
    cache = bc.BuildCache(str(cache_env), FP)
    cache.put("kernels", "k", b"payload " * 100)
    path = cache.path("kernels", "k")
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[:len(data) - 10]
    elif damage == "flip_payload":
        data[-5] ^= 0xFF
    elif damage == "flip_header":
        data[20] ^= 0xFF
    else:
        data = bytearray(b"not an entry at all")
    open(path, "wb").write(bytes(data))
    with caplog.at_level(logging.WARNING, logger="tftrt.engine.build_cache"):
        assert cache.get("kernels", "k") is None
        assert cache.get("kernels", "k") is None
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and path in msgs[0] and "rebuilt" in msgs[0]
    assert cache.stats["rejected"] == 2
    cache.put("kernels", "k", b"fresh")  # the next write replaces it
    assert cache.get("kernels", "k") == b"fresh"


def test_foreign_entries_are_ignored(cache_env, caplog):
    mine = bc.BuildCache(str(cache_env), FP)
    other_gpu = bc.BuildCache(str(cache_env), dict(FP, device="another GPU"))
    assert mine.directory != other_gpu.directory  # other environments live apart
    other_gpu.put("kernels", "k", b"for another GPU")
    assert mine.get("kernels", "k") is None
    # The file copied into this environment's place (a shared directory, a digest collision)
    os.makedirs(os.path.dirname(mine.path("kernels", "k")))
    with open(other_gpu.path("kernels", "k"), "rb") as f, \
            open(mine.path("kernels", "k"), "wb") as g:
        g.write(f.read())
    mine.put("kernels", "k2", b"entry for k2")
    os.makedirs(os.path.dirname(mine.path("kernels", "k3")), exist_ok=True)
    with open(mine.path("kernels", "k2"), "rb") as f, \
            open(mine.path("kernels", "k3"), "wb") as g:
        g.write(f.read())  # an entry under another key's name
    with caplog.at_level(logging.WARNING, logger="tftrt.engine.build_cache"):
        assert mine.get("kernels", "k") is None
        assert mine.get("kernels", "k3") is None
    text = caplog.text
    assert "another environment" in text and "another key" in text
    assert mine.get("kernels", "k2") == b"entry for k2"


def test_unwritable_directory_warns_once_and_builds_go_on(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    bc._warned.clear()
    cache = bc.BuildCache(str(blocker), FP)
    with caplog.at_level(logging.WARNING, logger="tftrt.engine.build_cache"):
        assert cache.put("kernels", "k", b"x") is False
        assert cache.put("kernels", "k2", b"x") is False
    assert len(caplog.records) == 1 and "TFTRT_CACHE_DIR" in caplog.records[0].getMessage()
    assert cache.get("kernels", "k") is None


# --- several processes at once ------------------------------------------------------------------

KEYS = [f"layer config {k}" for k in range(24)]


def _payload(writer: int, key: str, rnd: int) -> bytes:
    head = json.dumps({"writer": writer, "key": key, "round": rnd}).encode()
    body = bytes((writer * 31 + rnd + k) % 256 for k in range(40_000))
    return head + b"\n" + body


def _check_payload(key: str, data: bytes) -> None:
    head, body = data.split(b"\n", 1)
    meta = json.loads(head)
    assert meta["key"] == key
    assert body == bytes((meta["writer"] * 31 + meta["round"] + k) % 256 for k in range(40_000))


def _writer(root, writer, rounds, queue):
    try:
        cache = bc.BuildCache(root, FP)
        for rnd in range(rounds):
            for key in KEYS:
                assert cache.put("kernels", key, _payload(writer, key, rnd))
                got = cache.get("kernels", key)  # another writer may have replaced it since
                assert got is not None
                _check_payload(key, got)
        queue.put(("ok", writer, cache.stats["rejected"]))
    except BaseException as e:  # report to the parent instead of dying silently
        queue.put(("error", writer, repr(e)))


def test_concurrent_writers_in_several_processes(cache_env):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(cache_env), w, 3, queue)) for w in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(r[0] == "ok" for r in results), results
    assert all(r[2] == 0 for r in results), results  # no reader ever saw a partial entry
    cache = bc.BuildCache(str(cache_env), FP)
    for key in KEYS:
        _check_payload(key, cache.get("kernels", key))
    leftovers = [f for _, _, fs in os.walk(cache_env) for f in fs if f.endswith(".tmp")]
    assert leftovers == []


# --- tactic choices through the cache -------------------------------------------------------

def _pointwise_conv_model(batch=2):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c2"]),
             helper.make_node("Transpose", ["c2"], ["y"], perm=[0, 2, 3, 1])]
    return make_model(nodes, {"x": rand(batch, 6, 6, 8)},
                      {"w": rand(16, 8, 1, 1, seed=1), "w2": rand(8, 16, 1, 1, seed=2)},
                      symbolic=[0])


def _build_in_fresh_process(root, queue):
    try:
        os.environ["TFTRT_CACHE_DIR"] = root
        backend = get_backend("numpy")
        engine = build_engine(_pointwise_conv_model(), {"x": (2, 6, 6, 8)},
                              BuilderConfig(timing_cache=tactics.persistent_timing_cache(backend)))
        queue.put((engine.build_info["timed_layers"],
                   [t for *_, t in engine.layers_summary()]))
    except BaseException as e:
        queue.put(("error", repr(e)))


def test_tactic_choices_persist_across_processes(cache_env):
    """A second build in a fresh process times nothing: its tactic choices come from disk."""
    ctx = multiprocessing.get_context("spawn")
    runs = []
    for _ in range(2):
        queue = ctx.Queue()
        p = ctx.Process(target=_build_in_fresh_process, args=(str(cache_env), queue))
        p.start()
        runs.append(queue.get(timeout=240))
        p.join(timeout=60)
    (timed_first, tactics_first), (timed_second, tactics_second) = runs
    assert timed_first == 2 and timed_second == 0  # two 1x1 convs: two candidates each
    assert tactics_first == tactics_second
    entries = [f for _, _, fs in os.walk(cache_env) for f in fs if f.endswith(".entry")]
    assert len(entries) == 2


def test_corrupt_tactic_entry_is_timed_again(cache_env, caplog):
    backend = get_backend("numpy")
    cache = tactics.TimingCache(store=bc.BuildCache(str(cache_env), FP))
    build_engine(_pointwise_conv_model(), {"x": (2, 6, 6, 8)}, BuilderConfig(timing_cache=cache))
    for root, _, files in os.walk(cache_env):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(30)
    fresh = tactics.TimingCache(store=bc.BuildCache(str(cache_env), FP))
    with caplog.at_level(logging.WARNING, logger="tftrt.engine.build_cache"):
        again = build_engine(_pointwise_conv_model(), {"x": (2, 6, 6, 8)},
                             BuilderConfig(timing_cache=fresh))
    assert again.build_info["timed_layers"] == 2
    assert "ignoring" in caplog.text
    assert backend.name == "numpy"


# --- one profile, several shapes --------------------------------------------------------------

def _profile_engine(model, profile, counter=None):
    backend = get_backend("numpy")

    def build(key, choices, weights):
        return build_engine(model, {"x": key[0]},
                            BuilderConfig(tactic_choices=choices, weight_cache=weights))
    return ProfileEngine([profile], build, backend.name)


def test_other_shapes_of_a_profile_reuse_tactics_and_weights(monkeypatch):
    timed = []
    real = tactics._time_runner

    def counting(backend, runner, inputs, repeats, what="a layer"):
        timed.append(what)
        return real(backend, runner, inputs, repeats, what)
    monkeypatch.setattr(tactics, "_time_runner", counting)
    model = _pointwise_conv_model()
    pe = _profile_engine(model, Profile([(1, 6, 6, 8)], [(8, 6, 6, 8)], [(8, 6, 6, 8)]))
    pe.build_profiles()
    assert len(timed) == 4  # two convs, two candidates each, at the opt shape (batch 8)
    opt = pe.engine_for([(8, 6, 6, 8)])
    del timed[:]
    for b in (3, 1, 8, 5):
        x = rand(b, 6, 6, 8, seed=b)
        (got,) = pe.execute([x])
        rtol, atol = TOLERANCES["FP32"]
        np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=rtol, atol=atol)
    assert timed == []  # no tactic was timed for batches 3, 1, 5
    assert pe.stats == {"tuned": 1, "shapes": 3, "timed_layers": 2}
    for b in (3, 1, 5):
        e = pe.engine_for([(b, 6, 6, 8)])
        assert e.build_info["timed_layers"] == 0
        assert [l[3] for l in e.layers_summary()] == [l[3] for l in opt.layers_summary()]
        # the same weight objects, on the device and on the host
        assert all(e.weights[k] is opt.weights[k] for k in opt.weights)
        assert all(e.network.weights[k] is opt.network.weights[k] for k in opt.weights)
    assert pe.weight_cache.stats["uploaded"] == len(opt.weights)
    assert pe.weight_cache.stats["shared"] == 3 * len(opt.weights)
    with pytest.raises(KeyError, match="no optimization profile contains"):
        pe.engine_for([(9, 6, 6, 8)])


def test_a_weight_that_depends_on_the_shape_is_kept_per_value():
    """Shape(x) folds to a constant per shape: equal names, different values, not shared."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Cast", ["s"], ["f"], to=1),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ReduceSum", ["r"], ["m"], keepdims=0),
             helper.make_node("Mul", ["f", "m"], ["y"])]
    model = make_model(nodes, {"x": rand(4, 3)}, symbolic=[0])
    pe = _profile_engine(model, Profile([(1, 3)], [(4, 3)], [(4, 3)])).build_profiles()
    for b in (2, 4, 1):
        x = rand(b, 3, seed=b)
        (got,) = pe.execute([x])
        np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=1e-5)


def test_a_profiles_backend_records_reach_its_other_shapes():
    """A backend keeps its tuned sub-choices (the CuPy backend's cuDNN plan, cuBLASLt
    algorithm) in a layer's private attributes; the other shapes of a profile get them with
    the tactic, so the backend rebuilds that choice instead of tuning again."""
    model = _pointwise_conv_model()
    pe = _profile_engine(model, Profile([(1, 6, 6, 8)], [(4, 6, 6, 8)], [(4, 6, 6, 8)]))
    opt = pe.build_profiles().engine_for([(4, 6, 6, 8)])
    convs = [l for l in opt.network.layers if l.kind == "conv"]
    for k, layer in enumerate(convs):
        layer.attrs["_probe"] = {"gemm_1x1": {"algo": k}}  # as a backend records it
        layer.tactic = "im2col_gemm" if k == 0 else "gemm_1x1"
    other = pe.engine_for([(2, 6, 6, 8)])
    got = {l.name: (l.tactic, l.attrs.get("_probe")) for l in other.network.layers
           if l.kind == "conv"}
    assert got == {l.name: (l.tactic, l.attrs["_probe"]) for l in convs}
    x = rand(2, 6, 6, 8, seed=7)
    np.testing.assert_allclose(pe.execute([x])[0], run_ort(model, {"x": x})[0], rtol=1e-4,
                               atol=1e-5)


def test_timing_cache_with_a_store_holds_a_window_in_memory(cache_env, monkeypatch):
    """With the on-disk store behind it, the process's timing cache kept every choice it
    ever made in memory (a serving process building each new batch size for hours); now the
    oldest are forgotten past a bound and read back from the store when asked."""
    monkeypatch.setattr(tactics.TimingCache, "MAX_ENTRIES_WITH_STORE", 3)
    cache = tactics.TimingCache(store=bc.BuildCache(str(cache_env), FP))
    for k in range(10):
        cache.put(f"layer {k}", f"tactic {k}", 0.001 * k)
    assert len(cache.entries) == 3 and "layer 9" in cache.entries
    assert cache.get("layer 0") == "tactic 0"  # from the store
    assert len(cache.entries) == 3 and "layer 0" in cache.entries
    plain = tactics.TimingCache()  # no store: nothing is forgotten (its file keeps all)
    for k in range(10):
        plain.put(f"layer {k}", f"tactic {k}", 0.0)
    assert len(plain.entries) == 10
