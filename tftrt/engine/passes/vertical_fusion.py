"""Vertical fusion: conv / conv_transpose / matmul + what follows -> one layer with an epilogue.

For a main layer whose output has a single consumer, repeatedly absorbs that consumer when it
is a pointwise layer whose program is a chain of steps on the main output (all or nothing),
each of the form:

* ``y * s`` / ``y / s`` with ``s`` a constant per-output-channel vector (or scalar): folded into
  the weights (``w[o] *= s[o]``, bias too) while no activation was absorbed yet; for a matmul of
  two activations a uniform ``s`` goes into its ``alpha``; else a ``scale`` epilogue;
* ``y + c`` / ``y - c`` with ``c`` a constant per-channel vector: folded into the ``bias``
  (also after a residual add: addition commutes);
* an activation (relu, clip/relu6, leaky_relu, sigmoid, tanh, elu, selu, hard_sigmoid,
  softplus, softsign, gelu, silu = x*sigmoid(x)): an ``act`` epilogue (one per layer);
* ``y + r`` with ``r`` another tensor of y's shape (not computed from y): a residual ``add``
  epilogue (one per layer). The fused layer runs where the consumer ran.

Keras 3 lowers BatchNormalization after a Conv2D to Mul/Add (or Sub) by constant vectors, so
Conv2D + BatchNorm + ReLU becomes one conv with scaled weights and a [bias, relu] epilogue.
"""

from __future__ import annotations

import copy
import functools
from typing import Optional

import numpy as np

from tftrt.engine.network import EPILOGUE_KINDS, Layer, Network

_ACTS = {"relu", "leaky_relu", "elu", "selu", "sigmoid", "hard_sigmoid", "tanh", "softplus",
         "softsign", "gelu"}
_ACT_PARAMS = ("alpha", "beta", "gamma", "approximate")


def _channels(net: Network, layer: Layer) -> Optional[int]:
    s = net.tensors[layer.outputs[0]].shape
    return None if not s else s[-1]


def _channel_vector(net: Network, name: str, cout: int, out_rank: int) -> Optional[np.ndarray]:
    """The weight ``name`` as a [cout] vector when it broadcasts along the last axis only."""
    if name not in net.weights:
        return None
    w = net.weights[name]
    if w.dtype.kind != "f" or w.ndim > out_rank:
        return None
    if w.size == 1:
        return np.full(cout, w.reshape(()).item(), np.float64)
    if w.shape[-1] == cout and w.size == cout:
        return w.reshape(cout).astype(np.float64)
    return None


# Where a program is compared with GELU: densely on [-8, 8], and out to +-1e30 in steps of
# ~3x, so that a program equal to GELU only on a bounded range (a clamp at 10 after it, the
# "gelu_10" of some transformers) is not taken for it (it was, on [-8, 8] alone, and the
# clamp vanished: helper hunt, 2026-12-01).
_FAR = np.geomspace(8.5, 1e30, 60)
_PROBE = np.concatenate([np.linspace(-8.0, 8.0, 641), _FAR, -_FAR])


@functools.lru_cache(maxsize=None)
def _gelu_on_probe(approximate: str) -> np.ndarray:
    x = _PROBE
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
    from math import erf, sqrt
    return 0.5 * x * (1.0 + np.array([erf(v / sqrt(2.0)) for v in x]))


def _whole_program_activation(consumer: Layer, y: str) -> Optional[dict]:
    """The activation a multi-step program of ``y`` alone computes, checked numerically in
    float64 on probe values: GELU written out with erf (Keras' exact gelu traces to
    ``0.5 * x * (1 - erf(-x / sqrt 2))``) or with tanh. None for anything else."""
    prog = consumer.attrs["program"]
    if len(prog) < 3 or any(i != y for i in consumer.inputs) or \
            any(st["op"] in ("cast",) for st in prog):
        return None
    from tftrt.engine.backends.numpy_ops import run_program
    f64 = [dict(st, dtype="float64") if st.get("dtype") else st for st in prog]
    try:
        with np.errstate(all="ignore"):
            got = np.asarray(run_program(f64, [_PROBE] * len(consumer.inputs)), np.float64)
    except Exception:
        return None
    if got.shape != _PROBE.shape:
        return None
    for approx in ("none", "tanh"):
        if np.allclose(got, _gelu_on_probe(approx), rtol=1e-6, atol=1e-6):  # float32 constants
            return {"op": "act", "fn": "gelu", "approximate": approx}
    return None


def _chain_ops(net: Network, consumer: Layer, y: str, cout: int, out_rank: int):
    """The consumer's program as a list of epilogue-able ops on y, or None.

    Every step must read the previous step's result (y for the first) and constants only:
    ("affine", op, [cout] vector, y_first) | ("act", entry) | ("residual", tensor name).
    """
    prog = consumer.attrs["program"]

    def ref(a):
        if isinstance(a, str) and a.startswith("$"):
            return ("t", consumer.inputs[int(a[1:])])
        if isinstance(a, str) and a.startswith("%"):
            return ("s", int(a[1:]))
        return ("lit", a)

    act = _whole_program_activation(consumer, y)
    if act is not None:
        return [("act", act)]
    cur, ops, k = ("t", y), [], 0
    while k < len(prog):
        st = prog[k]
        args = [ref(a) for a in st["args"]]
        op = st["op"]
        if op == "sigmoid" and args == [cur] and k + 1 < len(prog) and \
                prog[k + 1]["op"] == "mul" and \
                sorted(map(str, [ref(a) for a in prog[k + 1]["args"]])) == \
                sorted(map(str, [cur, ("s", k)])):
            ops.append(("act", {"op": "act", "fn": "silu"}))
            cur, k = ("s", k + 1), k + 2
            continue
        if op == "cast" and args == [cur] and _float_cast(net, consumer, y, k):
            pass  # the epilogue computes in float32 and rounds once, to the output's dtype
        elif op in _ACTS and args == [cur]:
            ops.append(("act", {"op": "act", "fn": op,
                                **{p: st[p] for p in _ACT_PARAMS if p in st}}))
        elif op == "clip" and args[0] == cur and all(a[0] == "lit" for a in args[1:]):
            ops.append(("act", {"op": "act", "fn": "clip", "min": args[1][1],
                                "max": args[2][1]}))
        elif op in ("add", "sub", "mul", "div") and len(args) == 2 and cur in args and \
                args[0] != args[1]:
            y_first = args[0] == cur
            kind, val = args[1] if y_first else args[0]
            if kind == "lit":
                if val is None or isinstance(val, bool):
                    return None
                ops.append(("affine", op, np.full(cout, float(val)), y_first))
            elif kind == "t":
                vec = _channel_vector(net, val, cout, out_rank)
                if vec is not None:
                    ops.append(("affine", op, vec, y_first))
                elif op == "add" and val not in net.weights:
                    ops.append(("residual", val))
                else:
                    return None
            else:
                return None
        else:
            return None
        cur, k = ("s", k), k + 1
    return ops if cur == ("s", len(prog) - 1) else None


# float dtypes a cast in an absorbed program may go between (not float64: the epilogue's
# float32 would round a float64 program's steps)
_EPILOGUE_FLOATS = ("float16", "bfloat16", "float32")


def _float_cast(net: Network, consumer: Layer, y: str, k: int) -> bool:
    """Whether step ``k`` of the consumer's program is a cast between float dtypes the
    epilogue takes as it is, computing in float32 and rounding once to the fused layer's
    output dtype: a cast to float32 (float32 holds every float16 / bfloat16 value), or a
    cast down to that output dtype after which only ReLUs / clips to bounds it holds follow
    (rounding commutes with them). A float16 graph's batch norm computes in float32 between
    two casts, as TF's kernel does (converters/nn.FusedBatchNorm): without this, conv +
    batch norm stayed two layers. A narrowing cast followed by more arithmetic, or a cast
    back up, is a rounding (and overflow to inf) TF performs: dropped, a float32 conv -> cast
    float16 -> relu -> cast float32 gave 70000 where TF gives inf (regression hunt, s51).
    Only where the program ends in the main layer's own output dtype: its storage does not
    change (a float32 conv storing float16 is a layer no backend was asked for before)."""
    prog = consumer.attrs["program"]
    out = net.tensors[y].dtype
    src = out if k == 0 else prog[k - 1].get("dtype")
    to = prog[k].get("to")
    if src not in _EPILOGUE_FLOATS or to not in _EPILOGUE_FLOATS or \
            net.tensors[consumer.outputs[0]].dtype != out:
        return False
    if to == "float32" or to == src:
        return True
    if to != out:
        return False
    def holds(v) -> bool:  # a clip bound float16 holds (bfloat16's: not checked, refused)
        return to == "float16" and isinstance(v, (int, float)) and \
            not isinstance(v, bool) and float(np.float16(v)) == float(v)
    return all(st["op"] == "relu" or (st["op"] == "clip" and all(
        holds(a) for a in st["args"][1:])) for st in prog[k + 1:])


def _scale_weights(net: Network, layer: Layer, s: np.ndarray) -> bool:
    """Folds a per-output-channel scale into the main op's constant weights, unless a scaled
    weight or bias no longer fits its dtype (a float16 weight times a batch norm's 1e6:
    inf, and NaN outputs where TF's were finite; hunt, 2026-12-07): then the caller applies
    the scale in the float32 epilogue."""
    k = 1
    w_name = layer.inputs[k]
    if w_name not in net.weights:
        return False
    w = net.weights[w_name].astype(np.float64)
    if layer.kind == "conv":  # [Cout, *K, Cin/g]
        w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    elif layer.kind == "conv_transpose":  # [Cin, *K, Cout/g]; out channel o = g * Cout/g + j
        g = layer.attrs["group"]
        cin, coutg = w.shape[0], w.shape[-1]
        sg = s.reshape(g, 1, coutg)
        w = (w.reshape(g, cin // g, -1, coutg) * sg[:, :, None, :]).reshape(w.shape)
    else:  # matmul: scale the columns of b
        if w.ndim < 2:
            return False
        if layer.attrs.get("transpose_b"):
            w = w * s.reshape(-1, 1)
        else:
            w = w * s
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = w.astype(net.weights[w_name].dtype)
        biases = {}
        for e in layer.epilogue:
            if e["op"] == "bias":
                b = layer.inputs[e["input"]]
                biases[e["input"]] = (net.weights[b].astype(np.float64) * s).astype(
                    net.weights[b].dtype)
    if not _fits(scaled, w) or not all(_fits(v, net.weights[layer.inputs[i]].astype(
            np.float64) * s) for i, v in biases.items()):
        return False
    layer.inputs[k] = net.add_weight(scaled, w_name + "_scaled")
    for i, v in biases.items():
        layer.inputs[i] = net.add_weight(v, layer.inputs[i] + "_scaled")
    return True


def _fits(stored: np.ndarray, exact: np.ndarray) -> bool:
    """No value became infinite by being stored (the exact value was finite)."""
    return bool(np.all(np.isfinite(stored) | ~np.isfinite(exact)))


def _scale_alpha(net: Network, layer: Layer, s: np.ndarray) -> bool:
    """Folds a uniform scale of a matmul of two activations (attention's q.k / sqrt(d)) into
    its alpha (and its bias), which the GEMM applies for free."""
    if layer.kind != "matmul" or s.size == 0 or not np.all(s == s[0]):
        return False
    layer.attrs = dict(layer.attrs, alpha=float(layer.attrs.get("alpha", 1.0)) * float(s[0]))
    for e in layer.epilogue:
        if e["op"] == "bias":
            b = layer.inputs[e["input"]]
            layer.inputs[e["input"]] = net.add_weight(
                (net.weights[b].astype(np.float64) * float(s[0])).astype(net.weights[b].dtype),
                b + "_scaled")
    return True


def _add_bias(net: Network, layer: Layer, c: np.ndarray, dtype) -> None:
    if layer.epilogue and layer.epilogue[-1]["op"] == "bias":  # the last op: fold into it
        e = layer.epilogue[-1]
        b = layer.inputs[e["input"]]
        layer.inputs[e["input"]] = net.add_weight(
            (net.weights[b].astype(np.float64) + c).astype(dtype), b + "_folded")
        return
    layer.inputs.append(net.add_weight(c.astype(dtype), layer.name + "_bias"))
    layer.epilogue.append({"op": "bias", "input": len(layer.inputs) - 1})


def _shift_before_residual(net: Network, layer: Layer, c: np.ndarray, dtype) -> bool:
    """A per-channel shift after a residual add, ``(y + r) + c = (y + c) + r``, into the bias
    (MobileNetV3: Grappler adds the projection's batch-norm shift after the shortcut). Only
    over an epilogue of bias and add ops: a scale in it would scale c."""
    if any(e["op"] not in ("bias", "add") for e in layer.epilogue):
        return False
    for e in layer.epilogue:
        if e["op"] == "bias":
            b = layer.inputs[e["input"]]
            layer.inputs[e["input"]] = net.add_weight(
                (net.weights[b].astype(np.float64) + c).astype(dtype), b + "_folded")
            return True
    layer.inputs.append(net.add_weight(c.astype(dtype), layer.name + "_bias"))
    layer.epilogue.insert(0, {"op": "bias", "input": len(layer.inputs) - 1})
    return True


def _try_absorb(net: Network, layer: Layer, consumer: Layer, index: dict) -> bool:
    """Absorbs the whole consumer program into ``layer``'s epilogue (all or nothing)."""
    y = layer.outputs[0]
    cout = _channels(net, layer)
    out_shape = net.tensors[y].shape
    if cout is None or net.tensors[consumer.outputs[0]].shape != out_shape:
        return False  # unknown channels, or the consumer broadcasts y to a bigger shape
    ops = _chain_ops(net, consumer, y, cout, len(out_shape))
    if not ops:
        return False
    trial = copy.deepcopy(layer)
    wdt = np.float64 if net.tensors[y].dtype == "float64" else np.float32
    for entry in ops:
        kinds = [e["op"] for e in trial.epilogue]
        has_act, has_add = "act" in kinds, "add" in kinds
        if entry[0] == "act":
            if has_act:
                return False
            trial.epilogue.append(entry[1])
        elif entry[0] == "residual":
            other = entry[1]
            # r may come after the main layer: the fused layer takes the consumer's place,
            # where r (which the consumer reads) is defined
            # (not y itself: tanh(y) + y read the pre-activation y as its "residual", and the
            # fused layer then read its own, removed, output: fuzz seed 331, a KeyError at
            # every build of such a block, 2026-12-04)
            if other in layer.outputs or has_add or net.tensors[other].shape != out_shape or \
                    not (other in net.inputs or index.get(other, 1 << 30) < index[consumer.name]):
                return False
            trial.inputs.append(other)
            trial.epilogue.append({"op": "add", "input": len(trial.inputs) - 1})
        else:
            _, op, vec, y_first = entry
            shift = op == "add" or (op == "sub" and y_first)
            if has_act or (has_add and not shift):
                return False  # a scale/shift after the activation cannot fold into weights
            if op in ("mul", "div") and (y_first or op == "mul"):
                with np.errstate(divide="ignore"):
                    sc = vec if op == "mul" else 1.0 / vec
                # an inf scale (or a division by 0) in the weights made inf * w terms of
                # both signs, and 0 * inf: NaN where TF gives +-inf (helper hunt, 2026-12-02);
                # as an epilogue scale it multiplies the sum, as TF does
                finite = bool(np.all(np.isfinite(sc)))
                if not (finite and (_scale_weights(net, trial, sc) or
                                    _scale_alpha(net, trial, sc))):
                    trial.inputs.append(net.add_weight(sc.astype(wdt), layer.name + "_scale"))
                    trial.epilogue.append({"op": "scale", "input": len(trial.inputs) - 1})
            elif shift and has_add:
                if not _shift_before_residual(net, trial, vec if op == "add" else -vec, wdt):
                    return False
            elif shift:
                _add_bias(net, trial, vec if op == "add" else -vec, wdt)
            else:
                return False
    layer.inputs, layer.epilogue, layer.attrs = trial.inputs, trial.epilogue, trial.attrs
    return True


def vertical_fusion(net: Network) -> Network:
    """Fuses bias/scale/batchnorm/activation/residual into conv/matmul epilogues.

    In sweeps: the consumer map and the layer order are made once per sweep, and every
    absorption whose tensors no earlier absorption of the sweep touched is made in it (the
    layer takes its consumer's place when the sweep ends); the sweeps repeat until one
    absorbs nothing. Before (2026-12-04) each absorption started the scan again with new
    maps: a 48-block Keras transformer spent 2.9 s of its build here (scaling hunt)."""
    net = net.copy()
    # The inputs of fake-quant ops an INT8 layer may fold (the quantization table's
    # "fake_quant", by their names here): absorbing the op's first step (its clamp) into the
    # layer producing such an input removed the tensor the fold reads, and the rest of the op
    # then ran as a float16 layer between two INT8 ones (helper hunt, 2026-12-07: conv ->
    # fake quant -> conv 2e-3 off TF where the fold is exact)
    table = getattr(net, "quantization", None) or {}
    folds = {net.resolve(v) for v in (table.get("fake_quant") or {}).values()}
    changed = True
    while changed:
        changed = False
        cons = net.consumers()
        index = {}
        for k, l in enumerate(net.layers):
            index[l.name] = k
            for o in l.outputs:
                index[o] = k
        dirty, moved = set(), {}
        for layer in net.layers:
            if layer.kind not in EPILOGUE_KINDS or len(layer.outputs) != 1:
                continue
            y = layer.outputs[0]
            users = cons.get(y, [])
            if len(users) != 1 or y in net.outputs or y in dirty or y in folds:
                continue
            consumer = users[0]
            if consumer.kind != "pointwise" or id(consumer) in moved or \
                    dirty.intersection(consumer.inputs):
                continue
            before = list(layer.inputs)
            if not _try_absorb(net, layer, consumer, index):
                continue
            # The main layer now produces the consumer's output, at the consumer's position:
            # every operand it reads is defined before that (its own inputs before its old
            # position, a residual before the consumer), and y had no other reader.
            out = consumer.outputs[0]
            # (constants are not marked: one scale constant read by every block's consumer
            # made the sweeps one per block)
            dirty.update(i for i in consumer.inputs + layer.inputs
                         if i not in net.weights and i not in before)
            dirty.add(out)
            moved[id(consumer)] = layer
            moved[id(layer)] = None
            layer.outputs = [out]
            net.tensors.pop(y, None)
            changed = True
        if moved:
            net.layers = [moved.get(id(l), l) for l in net.layers if moved.get(id(l), l)]
    net.prune_tensors()
    return net
