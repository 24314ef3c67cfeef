"""Plans: an engine as bytes, and back, without rebuilding or re-tuning.

A plan is data, never a pickle::

    b"TFTRTPLN" | u32 format version | u64 header bytes | u32 header crc32 | header (JSON, utf-8)
    | zero padding to 64 bytes | weights (raw little-endian buffers, each 64-byte aligned)

The header holds the format version, precision, backend kind, device name, the layers (kind,
attrs, epilogue, chosen tactic, precision), tensor dtypes/shapes, the memory plan, and for each
weight its dtype, shape, offset and size, plus the crc32 of the weight bytes.

It also names what the engine was built from (``"segment"``: the engine op's name and the
sha256 of its segment network's ONNX bytes), so an engine op loading a plan can refuse one
built from another network: two plan files swapped, or copied from another model, would
otherwise run the wrong weights with no message. The crc32s only catch accidents.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Optional, Tuple

import numpy as np

from tftrt.engine.errors import PlanError
from tftrt.engine.memory import MemoryPlan
from tftrt.engine.network import Layer, Network, TensorInfo
from tftrt.engine.runtime import Engine

MAGIC = b"TFTRTPLN"
# 2 (2026-12-02): a max pool an activation was moved before keeps that activation's program
# ("floor_program", passes/activation_motion); a version-1 plan of such a network has none,
# and its pools gave float32's lowest where TF gives act(lowest) (a window of NaN): rebuilt
# 3 (2026-12-05): a max pool may hold a folded zero pad ("pad_value", passes/pad_folding);
# a reader of version 2 would skip those pad cells (helper hunt: 30 of 576 outputs of a
# Keras ZeroPadding2D -> MaxPooling2D plan wrong, no error), so it must refuse a version-3
# plan and rebuild. A version-2 plan has no such pool and reads as it always did.
# 4 (2026-12-06): an INT8 plan may store int8 codes where a float layer's output was stored
# before: a max pool's ("output_scale", quantization._requantize_pools, s40) and a stem conv's
# for its pool ("output_scale", "output_nan_code"; the pool's "code_floor" and a pad's code
# as its "pad_value": absorb_pool_requantization, s41). A reader before them would write the
# float maximum or the float conv result into the int8 buffer, truncated (no error), so it
# must refuse a version-4 plan and rebuild; versions 2 and 3 have none and read as before.
# 5 (2026-12-07, s53): a stem conv may have taken the max pool after it ("pool",
# pool_fusion.fuse_pools): it writes the pool's output, which a reader before would
# overrun with the conv's (four times the size, no error), so it must refuse a version-5
# plan and rebuild. (Plans of s51-s52 may hold a residual layer that took its projection,
# "projection", under version 4: readers before s51 misread those.) Versions 2-4 read as
# before.
FORMAT_VERSION = 5
READABLE_VERSIONS = (2, 3, 4, 5)
_PREFIX = struct.Struct("<8sIQI")
_ALIGN = 64


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def network_sha256(onnx_bytes: bytes) -> str:
    """The digest a plan records of the segment network it was built from (hex sha256)."""
    return hashlib.sha256(onnx_bytes).hexdigest()


def serialize_engine(engine: Engine, engine_name: Optional[str] = None,
                     network_digest: Optional[str] = None) -> bytes:
    """Serializes ``engine`` (see module doc for the format).

    Args:
      engine_name: the engine op the engine serves (e.g. ``TRTEngineOp_000_001``).
      network_digest: :func:`network_sha256` of the segment network it was built from.
        A plan without both is refused by a loader that names what it expects.
    """
    net = engine.network
    # The weights are copied once, into the plan's bytes (joined from views of the arrays):
    # each weight's bytes, then them padded, then joined, then joined to the header made
    # four copies of every weight (helper hunt, memory). The checksum is taken over the same
    # bytes piece by piece.
    arrays, index, offset, crc = [], {}, 0, 0
    for name, w in net.weights.items():
        shape = list(np.shape(w))  # np.ascontiguousarray makes a 0-d weight 1-d
        arr = np.ascontiguousarray(np.asarray(w))
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        raw = arr.reshape(-1).view(np.uint8)
        index[name] = {"dtype": arr.dtype.name, "shape": shape, "offset": offset,
                       "nbytes": raw.size}
        crc = zlib.crc32(b"\0" * _pad(raw.size), zlib.crc32(raw, crc))
        arrays.append(raw)
        offset += raw.size + _pad(raw.size)
    header = {
        "format_version": FORMAT_VERSION,
        "name": net.name,
        "precision": engine.precision,
        "backend": engine.backend,
        "device": engine.device,
        "segment": {"engine": engine_name, "network_sha256": network_digest},
        "config": engine.config,
        "inputs": net.inputs,
        "outputs": net.outputs,
        "tensors": {k: {"dtype": v.dtype, "shape": None if v.shape is None else list(v.shape)}
                    for k, v in net.tensors.items()},
        "layers": [l.to_json() for l in net.layers],
        "memory": engine.memory.to_json(),
        "weights": index,
        "weights_bytes": offset,
        "weights_crc32": crc,
    }
    hdr = json.dumps(header, separators=(",", ":")).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(hdr), zlib.crc32(hdr))
    head = prefix + hdr
    parts = [head, b"\0" * _pad(len(head))]
    for raw in arrays:
        parts += [raw.data, b"\0" * _pad(raw.size)]
    return b"".join(parts)  # (bytes.join sizes the result first: one copy)


def read_plan_header(data: bytes) -> dict:
    """The JSON header of a plan (validated framing). Raises PlanError."""
    if len(data) < _PREFIX.size:
        raise PlanError(f"plan is {len(data)} bytes, too short to be a tftrt plan; rebuild the "
                        f"engine")
    magic, version, hlen, hcrc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise PlanError(f"data does not start with {MAGIC!r} (got {magic!r}): not a tftrt "
                        f"plan; rebuild the engine from the segment network")
    if version not in READABLE_VERSIONS:
        raise PlanError(f"plan format version {version} cannot be read by this tftrt (format "
                        f"{FORMAT_VERSION}); rebuild the engine from the segment network")
    hdr = bytes(data[_PREFIX.size:_PREFIX.size + hlen])
    if len(hdr) != hlen or zlib.crc32(hdr) != hcrc:
        raise PlanError("plan header is truncated or corrupt (checksum mismatch); rebuild the "
                        "engine")
    try:
        return json.loads(hdr.decode())
    except ValueError as e:
        raise PlanError(f"plan header is not valid JSON ({e}); rebuild the engine") from None


def check_plan_identity(header: dict, engine_name: Optional[str],
                        network_digest: Optional[str]) -> None:
    """Raises PlanError unless the plan ``header`` says it was built for ``engine_name`` from
    the segment network whose digest is ``network_digest`` (None: not checked)."""
    seg = header.get("segment")
    seg = seg if isinstance(seg, dict) else {}
    got_name, got_digest = seg.get("engine"), seg.get("network_sha256")
    if (engine_name is None or got_name == engine_name) and \
            (network_digest is None or got_digest == network_digest):
        return
    if got_name is None and got_digest is None:
        raise PlanError(f"plan does not say which engine and segment network it was built "
                        f"from, so it cannot be checked against engine {engine_name!r}; "
                        f"rebuild the engine")
    raise PlanError(f"plan was built for engine {got_name!r} from segment network sha256 "
                    f"{_short(got_digest)} but is loaded by engine {engine_name!r} whose "
                    f"network has sha256 {_short(network_digest)}: it belongs to another "
                    f"engine or model; rebuild the engine")


def _short(digest) -> str:
    return repr(digest[:16] + "...") if isinstance(digest, str) else repr(digest)


def check_plan(data: bytes, engine_name: Optional[str] = None,
               network_digest: Optional[str] = None) -> Tuple[dict, Network, MemoryPlan]:
    """Every check of a plan that needs no backend, the ones :func:`deserialize_engine` makes
    (so ``tftrt inspect`` refuses what a load refuses, on any machine): framing and header
    checksum, the engine and segment network it names (see :func:`check_plan_identity`),
    the weights' crc32, and every header field read well-formed.

    Returns:
      (header, network with its weights, memory plan).
    Raises:
      PlanError: saying what is wrong (the caller rebuilds the engine).
    """
    data = bytes(data)
    header = read_plan_header(data)
    if not isinstance(header, dict):
        raise PlanError("plan header is not a JSON object; rebuild the engine")
    check_plan_identity(header, engine_name, network_digest)
    try:
        net, memory = _contents(data, header)
    except _MALFORMED as e:
        raise _malformed(e) from None
    return header, net, memory


def deserialize_engine(data: bytes, backend: Optional[str] = None,
                       engine_name: Optional[str] = None,
                       network_digest: Optional[str] = None) -> Engine:
    """Loads a plan as an engine, without rebuilding or re-tuning.

    Args:
      data: bytes from :func:`serialize_engine`.
      backend: backend name to load on (default: the one the plan was built for).
      engine_name, network_digest: when given, the plan must have been serialized with these
        (see :func:`serialize_engine`); a plan from another engine or network is refused.
    Raises:
      PlanError: corrupt data, another format version, a plan for another engine or segment
        network, an unavailable backend, a plan built for another device, or a header that
        lacks fields (the caller rebuilds).
    """
    header, net, memory = check_plan(data, engine_name, network_digest)
    try:
        return _engine(header, net, memory, backend)
    except _MALFORMED as e:
        raise _malformed(e) from None


# What reading a header field that is missing or of the wrong type raises: the checksums hold
# but the header was written by something else (or crafted).
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _malformed(e: Exception) -> PlanError:
    what = f"lacks field {e}" if isinstance(e, KeyError) else \
        f"has a malformed field ({type(e).__name__}: {e})"
    return PlanError(f"plan header {what}; rebuild the engine")


def _engine(header: dict, net: Network, memory: MemoryPlan, backend: Optional[str]) -> Engine:
    from tftrt.engine.backends import get_backend
    from tftrt.engine.errors import EngineBuildError

    try:
        be = get_backend(backend or header["backend"])
    except EngineBuildError as e:
        raise PlanError(f"plan was built for backend {header['backend']!r}: {e}") from None
    device = be.device_name()
    if header["device"] != device:
        raise PlanError(f"plan was built for device {header['device']!r} but this backend "
                        f"runs on {device!r}; rebuild the engine for this device")
    return Engine(net, be, header["precision"], memory, header.get("config"), device=device)


def _contents(data: bytes, header: dict) -> Tuple[Network, MemoryPlan]:
    """The network (weights checked against their crc32) and memory plan a plan holds.
    Raises PlanError, or KeyError / TypeError / ValueError for a malformed field."""
    hlen = _PREFIX.unpack_from(data)[2]
    start = _PREFIX.size + hlen
    start += _pad(start)
    size = _count(header, "weights_bytes")
    # a view: a slice of the bytes copied every weight once more while the engine loaded
    blob = memoryview(data)[start:start + size]
    if len(blob) != size or zlib.crc32(blob) != header["weights_crc32"]:
        raise PlanError("plan weights are truncated or corrupt (checksum mismatch); rebuild "
                        "the engine")
    net = Network(header["name"])
    net.inputs, net.outputs = list(header["inputs"]), list(header["outputs"])
    for k, v in header["tensors"].items():
        net.tensors[k] = TensorInfo(k, v["dtype"], None if v["shape"] is None else
                                    tuple(v["shape"]))
    missing = [n for n in net.inputs + net.outputs if n not in net.tensors]
    if missing:
        raise ValueError(f"inputs / outputs {missing[:3]} are not among its tensors")
    if any(net.tensors[n].shape is None for n in net.inputs):
        raise ValueError("an input has no shape (an engine is built for input shapes)")
    for k, w in header["weights"].items():
        arr = np.frombuffer(blob, np.dtype(w["dtype"]).newbyteorder("<"),
                            count=int(np.prod(w["shape"], dtype=np.int64)), offset=w["offset"])
        net.weights[k] = arr.astype(np.dtype(w["dtype"]), copy=True).reshape(w["shape"])
    net.layers = [Layer.from_json(l) for l in header["layers"]]
    memory = MemoryPlan.from_json(header["memory"])
    # read once there is a backend (deserialize_engine), checked here for every caller
    for field in ("precision", "backend", "device"):
        header[field]  # pylint: disable=pointless-statement -- KeyError: lacks the field
    dict(header.get("config") or {})  # TypeError / ValueError: not a mapping
    for field in ("arena_bytes", "workspace_bytes", "output_bytes"):
        _count(vars(memory), field)
    return net, memory


def _count(d: dict, field: str) -> int:
    """``d[field]``, a byte count (a non-negative int). Raises KeyError / ValueError."""
    n = d[field]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{field!r} is {n!r}, not a byte count")
    return n
