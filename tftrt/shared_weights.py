"""Segment-network weights saved once: as the native segment's constants in saved_model.pb.

A converted SavedModel must keep every weight in saved_model.pb (the native segment
functions), so plain TensorFlow still runs it. The segment network (ONNX) of an engine holds
the same weights again as initializers, mostly the very constants of its native segment,
transposed (a Conv2D filter HWIO -> OIHW), reshaped (a depthwise filter) or cast. save()
writes such an initializer without its bytes and records where they come from::

    {"initializer": "conv/filter_oihw", "node": "model/conv/Conv2D/ReadVariableOp",
     "perm": [3, 2, 0, 1]}

(value of Const ``node`` of the native segment function, transposed by ``perm`` (None: not
transposed), cast to the initializer's data type, laid out in its dims). tftrt.load puts the
bytes back from the function saved_model.pb holds and checks the rebuilt network against the
sha256 recorded at save time, which its plans name too. Initializers that are not a
constant's value (folded batch norms, shapes) or are small keep their bytes.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# Smaller initializers keep their bytes: a reference costs about as much in the manifest.
MIN_SHARED_BYTES = 1024
# Constants of rank above this are matched only untransposed (rank! permutations).
_MAX_PERM_RANK = 5
# The metadata entry a stored network carries while its shared weights have no bytes: the
# file is not loadable as it is (onnx.checker, onnxruntime refuse an initializer without
# data), and says so and what gives a complete copy. restore() takes it out again.
NOTE_KEY = "tftrt.weights_in_saved_model"


class SharedWeightsError(ValueError):
    """A segment network cannot be rebuilt from the native segment's constants."""


def function_constants(fdef) -> Dict[str, object]:
    """Const node name -> its TensorProto, for the nodes of FunctionDef ``fdef``."""
    return {n.name: n.attr["value"].tensor for n in fdef.node_def if n.op == "Const"}


def _np_dtype(onnx_type: int) -> Optional[np.dtype]:
    from onnx import helper
    try:
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))
    except (KeyError, TypeError, ValueError):
        return None
    return None if dt.kind in "OSUV" else dt


def _layout(value: np.ndarray, perm, dtype: np.dtype) -> bytes:
    arr = np.transpose(value, perm) if perm is not None else value
    return np.ascontiguousarray(arr).astype(dtype.newbyteorder("<"), copy=False).tobytes()


def _match(raw: bytes, dtype: np.dtype, candidates: Sequence[Tuple[str, np.ndarray]]):
    """(node, perm) of the first candidate whose value laid out gives ``raw``, else None."""
    target = np.frombuffer(raw, dtype.newbyteorder("<"))
    head, tail = target[:16], target[-1]
    for node, value in candidates:
        if value.dtype.kind not in "fiub" or value.size != target.size:
            continue
        first = np.asarray(value.flat[0]).astype(dtype)
        last = np.asarray(value.flat[value.size - 1]).astype(dtype)
        # Any transpose keeps the first and the last element where they are.
        if first.tobytes() != head[:1].tobytes() or last.tobytes() != tail.tobytes():
            continue
        rank = value.ndim
        perms = itertools.permutations(range(rank)) if rank <= _MAX_PERM_RANK else [None]
        for perm in perms:
            perm = None if perm is None or list(perm) == list(range(rank)) else list(perm)
            view = np.transpose(value, perm) if perm is not None else value
            if np.asarray(view.flat[:head.size]).astype(dtype).tobytes() != head.tobytes():
                continue
            if _layout(value, perm, dtype) == raw:
                return node, perm
    return None


def share(onnx_bytes: bytes, fdef) -> Tuple[bytes, List[dict]]:
    """The segment network without the weights that ``fdef``'s constants hold, and the
    references that restore them. Returns (``onnx_bytes``, []) when nothing is shared or the
    network would not rebuild byte for byte."""
    import onnx
    from tensorflow.python.framework import tensor_util
    model = onnx.load_from_string(onnx_bytes)
    consts = function_constants(fdef)
    by_size: Dict[int, List[Tuple[str, np.ndarray]]] = {}
    refs: List[dict] = []
    for init in model.graph.initializer:
        dtype = _np_dtype(init.data_type)
        if (dtype is None or len(init.raw_data) < MIN_SHARED_BYTES or len(init.external_data)
                or init.data_location == onnx.TensorProto.EXTERNAL):
            continue
        size = len(init.raw_data) // dtype.itemsize
        if not by_size:
            for name, proto in consts.items():
                try:
                    value = tensor_util.MakeNdarray(proto)
                except (TypeError, ValueError):
                    continue
                by_size.setdefault(int(value.size), []).append((name, value))
        found = _match(init.raw_data, dtype, by_size.get(size, ()))
        if found is None:
            continue
        refs.append({"initializer": init.name, "node": found[0], "perm": found[1]})
        init.ClearField("raw_data")
    if not refs:
        return onnx_bytes, []
    model.metadata_props.add(
        key=NOTE_KEY,
        value=(f"{len(refs)} initializers have no data in this file: their values are the "
               f"native segment's constants in saved_model.pb. This file is not a complete "
               f"ONNX model; `tftrt inspect MODEL_DIR --onnx OUT_DIR` writes complete ones "
               f"(onnx.checker, onnxruntime), and tftrt.load restores them."))
    stored = model.SerializeToString()
    try:
        rebuilt = restore(stored, refs, fdef)
    except SharedWeightsError:
        rebuilt = None
    if rebuilt != onnx_bytes:
        return onnx_bytes, []
    return stored, refs


def restore(stored: bytes, refs: Sequence[dict], fdef,
            expected_sha256: Optional[str] = None) -> bytes:
    """The segment network ``stored`` with the weights ``refs`` name put back from ``fdef``'s
    constants. Raises SharedWeightsError when one is missing or malformed, or when the result
    is not the network whose sha256 is ``expected_sha256``."""
    import onnx
    from google.protobuf.message import DecodeError
    from tensorflow.python.framework import tensor_util
    try:
        model = onnx.load_from_string(stored)
    except DecodeError as err:
        raise SharedWeightsError(f"it is not an ONNX model ({err})") from None
    props = model.metadata_props
    if len(props) and props[len(props) - 1].key == NOTE_KEY:  # share()'s note (since s49)
        del props[len(props) - 1]
    inits = {i.name: i for i in model.graph.initializer}
    consts = function_constants(fdef)
    for ref in refs:
        if not isinstance(ref, dict):
            raise SharedWeightsError(f"a weight reference is not an object: {ref!r}")
        name, node, perm = ref.get("initializer"), ref.get("node"), ref.get("perm")
        init = inits.get(name)
        if init is None or init.raw_data:
            raise SharedWeightsError(f"it has no weightless initializer {name!r}")
        if node not in consts:
            raise SharedWeightsError(f"the native segment function {fdef.signature.name!r} "
                                     f"has no constant {node!r} (initializer {name!r})")
        dtype = _np_dtype(init.data_type)
        value = tensor_util.MakeNdarray(consts[node])
        if (dtype is None or (perm is not None and sorted(perm) != list(range(value.ndim)))
                or value.size != int(np.prod(init.dims, dtype=np.int64))):
            raise SharedWeightsError(f"initializer {name!r} does not fit constant {node!r} "
                                     f"(shape {list(value.shape)}, perm {perm})")
        init.raw_data = _layout(value, perm, dtype)
    data = model.SerializeToString()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise SharedWeightsError("its weights rebuilt from saved_model.pb do not give the "
                                 "network recorded at save time (sha256 mismatch)")
    return data
