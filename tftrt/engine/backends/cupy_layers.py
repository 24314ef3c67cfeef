"""Layer implementations of the CuPy backend: one object per layer that writes its outputs into
buffers it is given (arena views in an execution context, fresh arrays in ``prepare_layer``).

Protocol of an implementation ``impl``:

* ``impl.run(ins, outs, ws)``: ``ins`` are CuPy arrays in ``layer.inputs`` order (None for
  absent optional inputs), ``outs`` C-contiguous arrays of the output shapes/dtypes, ``ws`` a
  uint8 scratch array of at least ``impl.workspace`` bytes (or None). Runs on CuPy's current
  stream.
* ``impl.capturable``: False when the implementation synchronizes with the host or calls
  CuPy's cuBLAS path (then the execution context runs it eagerly between graph segments).
* ``impl.record()``: the tuned sub-choice (JSON) stored in ``layer.attrs["_cupy"][tactic]`` so
  a plan rebuilds the same kernel without timing.
* ``impl.fallback``: None, or why the tactic's own implementation did not take the layer
  (this object is the next GPU path; see cupy_backend.impl_table).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

import cupy as cp

from tftrt.engine.backends import borrowed as BR
from tftrt.engine.backends import cupy_kernels as K
from tftrt.engine.backends import cupy_kernels_nn as KN
from tftrt.engine.backends.cuda_source import dw_operand_modes
from tftrt.engine.backends.cupy_dnn import (ConvSpec, CudnnConv, CudnnSdpa, GemmSpec, LtGemm,
                                            SdpaSpec, gpu_time)
from tftrt.engine.backends.numpy_ops import attention_p_dtype
from tftrt.engine.errors import GpuTimeout
from tftrt.engine.network import Layer, Network

log = logging.getLogger("tftrt.engine.cupy")

CHOICE_ATTR = "_cupy"
# Set on the layers of a quick engine (cupy_backend.CupyBackend.mark_quick): a provisional
# engine for a new shape of an optimization profile, served while the real one builds in the
# background (profiles.ProfileEngine). Its convolutions take the first cuDNN plan that builds
# without a runtime compile, untimed and not recorded; being an attribute, it keeps them apart
# from the real engine's in _SHARED and the build cache (both are keyed by the signature).
QUICK_ATTR = "_quick"

# Heavy objects (cuDNN graphs, tuned choices) shared by layers of the same signature.
_SHARED: Dict[str, Any] = {}
# ``_SHARED[signature + _BORROWED_BY]``: the record a layer of that signature borrowed its
# cuDNN plan with (ConvCudnn): its siblings without a record of their own share that graph.
_BORROWED_BY = "|borrowed-by"


def signature(net: Network, layer: Layer, extra=()) -> str:
    js = layer.to_json()
    attrs = {k: v for k, v in layer.kernel_attrs().items() if k != CHOICE_ATTR}
    sig = {"kind": layer.kind, "attrs": attrs, "epi": js["epilogue"],
           "tactic": layer.tactic, "in": [(net.tensors[i].dtype, net.tensors[i].shape)
                                          if i else None for i in layer.inputs],
           "out": [(net.tensors[o].dtype, net.tensors[o].shape) for o in layer.outputs],
           "extra": list(extra)}
    return json.dumps(sig, sort_keys=True, default=str)


def get_record(layer: Layer) -> Optional[dict]:
    """The tuned choice recorded for ``layer.tactic`` (``attrs["_cupy"][tactic]``)."""
    recs = layer.attrs.get(CHOICE_ATTR)
    return recs.get(layer.tactic or "default") if isinstance(recs, dict) else None


def set_record(layer: Layer, rec: dict) -> None:
    recs = layer.attrs.get(CHOICE_ATTR)
    if not isinstance(recs, dict):
        recs = layer.attrs[CHOICE_ATTR] = {}
    recs[layer.tactic or "default"] = rec


# Tuned sub-choices (a cuDNN plan's engine + knobs, a cuBLASLt algorithm) also go to the
# on-disk build cache, keyed by the layer signature: a fresh process building a layer of the
# same configuration, in this model or another, builds only the chosen plan and times nothing.
CHOICE_NAMESPACE = "cupy-choices"


def stored_json(namespace: str, key: str) -> Optional[dict]:
    """The dict the build cache holds under ``namespace`` / ``key``, or None."""
    from tftrt.engine.backends.cupy_dnn import build_store
    store = build_store()
    rec = store.get_json(namespace, key) if store is not None else None
    return rec if isinstance(rec, dict) else None


def store_json(namespace: str, key: str, rec: dict) -> None:
    from tftrt.engine.backends.cupy_dnn import build_store
    store = build_store()
    if store is not None:
        store.put_json(namespace, key, rec)


def stored_choice(key: str) -> Optional[dict]:
    """The sub-choice the build cache holds for signature ``key``, or None."""
    return stored_json(CHOICE_NAMESPACE, key)


_stored: set = set()


def store_choice(key: str, rec: dict) -> None:
    """Puts a tuned sub-choice in the build cache (once per signature and process)."""
    from tftrt.engine.backends.cupy_dnn import build_store
    store = build_store()
    if store is None or (store.directory, key) in _stored:
        return
    _stored.add((store.directory, key))
    store.put_json(CHOICE_NAMESPACE, key, rec)


# The convolutions this process tuned itself (cuDNN candidates built and timed here, not by a
# build worker and not from a recorded or stored choice): (layer, tactic, x shape). A profile's
# cold build should tune only at its opt shape, and there on the workers (cupy_prefetch);
# benchmarks/dynamic_shapes.py prints these to say which layers escaped.
_tuned_here: List[tuple] = []


def _note_tuned(layer, spec) -> None:
    _tuned_here.append((layer.name, layer.tactic, tuple(spec.x_shape)))
    log.info("%s (%s, x %s): cuDNN plans tuned in this process", layer.name, layer.tactic,
             tuple(spec.x_shape))


def tuned_here() -> List[tuple]:
    """The convolutions this process tuned itself (see :data:`_tuned_here`)."""
    return list(_tuned_here)


def _shape(net, name):
    return tuple(net.tensors[name].shape)


def _dtype(net, name) -> str:
    return np.dtype(net.tensors[name].dtype).name


def _stream_ptr() -> int:
    return cp.cuda.get_current_stream().ptr


def _random(shape, dtype):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return cp.random.standard_normal(shape, dtype=np.float32).astype(dt)
    return cp.zeros(shape, dt)


def _scratch(ws, nbytes: int):
    """``nbytes`` of scratch: the context's workspace when it is large enough, else a fresh
    buffer (layers run alone in prepare_layer / tactic timing get no workspace); None for 0."""
    if not nbytes:
        return None
    return ws if ws is not None and ws.nbytes >= nbytes else cp.empty(nbytes, cp.uint8)


class Impl:
    capturable = True
    workspace = 0
    # Why the layer's tactic's own implementation(s) did not take it (set by
    # cupy_backend.make_impl when this one is a fallback); None for the tactic's own.
    fallback: Optional[str] = None

    def __init__(self, net: Network, layer: Layer, weights: Dict[str, Any], opts: dict):
        self.net, self.layer, self.weights, self.opts = net, layer, weights, opts

    def run(self, ins, outs, ws) -> None:
        raise NotImplementedError

    def record(self) -> Optional[dict]:
        return None


class Epilogue:
    """The epilogue ops a library call could not fuse, as one in-place pointwise kernel over
    [y, operands...]."""

    def __init__(self, net, layer, ops: Sequence[dict]):
        self.ops = list(ops)
        self.kernel = None
        if not self.ops:
            return
        y = layer.outputs[0]
        idx = sorted({e["input"] for e in self.ops if "input" in e})
        self.inputs = idx
        operand_index = {i: k + 1 for k, i in enumerate(idx)}
        cdt = "float64" if _dtype(net, y) == "float64" else "float32"
        prog = K.epilogue_program(self.ops, operand_index, cdt)
        self.kernel = K.PointwiseKernel(
            prog, [_shape(net, y)] + [_shape(net, layer.inputs[i]) for i in idx],
            [_dtype(net, y)] + [_dtype(net, layer.inputs[i]) for i in idx],
            _shape(net, y), _dtype(net, y))

    def __call__(self, y, ins) -> None:
        if self.kernel is not None:
            self.kernel([y] + [ins[i] for i in self.inputs], y)


def _conv_variants(spec) -> list:
    """Fused epilogue ops a cuDNN conv graph is built with: all cuDNN can fuse, then none."""
    return sorted({spec.fusable_prefix(), 0}, reverse=True)


def _epilogue_operands(net, layer) -> Dict[int, tuple]:
    return {e["input"]: (_shape(net, layer.inputs[e["input"]]),
                         _dtype(net, layer.inputs[e["input"]]))
            for e in layer.epilogue if "input" in e}


# --- convolution ---------------------------------------------------------------------------------
def conv_spec(net, layer, opts) -> ConvSpec:
    """The cuDNN graph description of conv / conv_transpose ``layer`` (ConvCudnn's)."""
    a = layer.attrs
    x, w, y = layer.inputs[0], layer.inputs[1], layer.outputs[0]
    # conv_transpose: IR w [Cin, *K, Cout/g] is the dgrad filter of the forward conv
    # (K_fwd = Cin, C_fwd / g = Cout / g), already channels last.
    return ConvSpec(_shape(net, x), _shape(net, w), _shape(net, y), a["strides"],
                    a["dilations"], a["pads"], a["group"], _dtype(net, w), _dtype(net, y),
                    layer.epilogue, _epilogue_operands(net, layer), opts.get("tf32", True),
                    layer.kind == "conv_transpose")


def conv_key(net, layer, spec: ConvSpec) -> str:
    """ConvCudnn's key in _SHARED and the build cache's choices: the layer's signature."""
    return signature(net, layer, ("tf32", spec.tf32))


def record_stored_choices(net: Network, opts: dict) -> int:
    """Gives each cuDNN convolution of ``net`` without a record the choice the build cache
    holds for its signature, tuned at this shape (what its first execution would load);
    returns how many it gave. For an optimization profile's opt engine, before its other
    shapes are made from its network (``CupyBackend.record_choices``): there every layer
    then borrows the opt engine's plan. Without it, only the layers whose tactics the opt
    engine timed had records (the first of each signature in a cold build, none in a warm
    one, whose tactics all come from the timing cache): the others were tuned again at
    every shape of the profile, in the calling process (cold) or on the build workers
    (warm: the ResNet50 profile's 24 rung convolutions, 2.3 s of a 6.7 s warm build on the
    H200, 2026-12-02), and cold and warm builds made different engines."""
    given = 0
    for layer in net.layers:
        if layer.kind not in ("conv", "conv_transpose") or layer.tactic != "cudnn" or \
                get_record(layer) is not None or layer.attrs.get(QUICK_ATTR) or \
                "quant" in layer.attrs:
            continue
        io = [t for t in list(layer.inputs) + list(layer.outputs) if t]
        if not all(net.tensors[t].is_static for t in io):
            continue
        key = conv_key(net, layer, conv_spec(net, layer, opts))
        rec = stored_choice(key)
        if rec and "fused" in rec and "engine" in rec and \
                rec.get(BR.FOR) == BR.shape_id(key):
            set_record(layer, dict(rec))
            given += 1
    return given


class ConvCudnn(Impl):
    """conv (fprop) / conv_transpose (dgrad) through a cuDNN graph; tuning also weighs the fully
    fused graph against conv-only + one epilogue kernel (cuDNN's fused depthwise engines, for
    one, are far slower than its plain ones)."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        a = layer.attrs
        self.dtype = _dtype(net, layer.inputs[1])
        self.cast_x = _dtype(net, layer.inputs[0]) != self.dtype
        spec = conv_spec(net, layer, opts)
        key = conv_key(net, layer, spec)
        quick = bool(a.get(QUICK_ATTR))
        borrowed = False
        shared = _SHARED.get(key)
        if shared is None:
            shared = self._quick(layer, spec) if quick else None
            if shared is None:
                rec, borrowed = BR.conv_choice(get_record(layer), key, stored_choice(key))
                if rec is None and key + _BORROWED_BY in _SHARED:
                    # No record of its own: at the opt shape it shared the graph of a layer of
                    # its signature that was timed (the one that holds the record), and here it
                    # shares what that layer borrowed. It tuned here instead, in the calling
                    # process, its signature's prefetch job being the borrowed plan's: 28
                    # convolutions, 18 of a 38 s cold ResNet50 profile build (H200,
                    # 2026-12-02; the first 3x3 conv of each stage had the record).
                    rec, borrowed = _SHARED[key + _BORROWED_BY], True
                if borrowed:  # layers of one signature borrowing one choice share its graph
                    bkey = key + "|borrowed " + json.dumps(rec, sort_keys=True)
                    shared = _SHARED.get(bkey) or self._borrowed(layer, spec, rec, key)
                    _SHARED[bkey] = shared
                    _SHARED.setdefault(key + _BORROWED_BY, rec)
                else:
                    shared = self._build(net, layer, spec, rec)
            if not borrowed:  # an untimed plan borrowed from another shape is no choice here
                _SHARED[key] = shared
        self.conv, nf = shared
        self.post = Epilogue(net, layer, layer.epilogue[nf:])
        self.workspace = self.conv.workspace
        # the shape the choice was tuned for: this one, or the opt shape it was borrowed from
        tuned_for = rec[BR.FOR] if borrowed else BR.shape_id(key)
        self._rec = dict(self.conv.choice(), fused=nf, **{BR.FOR: tuned_for})
        if not quick:
            set_record(layer, self._rec)
            if not borrowed:  # never in the build cache as if tuned at this shape
                store_choice(key, self._rec)

    @staticmethod
    def _borrowed(layer, spec, rec, key):
        """(graph, fused ops) at a shape ``rec`` was not tuned for (borrowed.conv_choice):
        its plan, or where ``rec`` names none (TFTRT_PROFILE_CONV_PLANS=heuristic) or it
        does not build here, cuDNN's first heuristic plan, remembered in the build cache as
        the record's substitute with its plan (borrowed.attempts: a later build takes it
        first); untimed either way (a new shape of a profile is not tuned)."""
        nf = int(rec["fused"]) if "fused" in rec else next(iter(_conv_variants(spec)))
        skey = BR.substitute_key(key, rec)
        conv = None
        for choice in BR.attempts(rec, stored_json(BR.SUBSTITUTES, skey)):
            if choice is None:
                break
            try:
                if choice == BR.PRECOMPILED:
                    return CudnnConv(spec, nf, precompiled_only=True), nf
                conv = CudnnConv(spec, nf, choice, candidates=1)
            except Exception as e:
                log.info("%s: the cuDNN choice %s does not build at this shape (%s); "
                         "cuDNN's first plan instead", layer.name, choice, e)
                continue
            if BR.same_plan(conv.choice(), choice):
                return conv, nf
            # cuDNN could not rebuild it and re-planned (cupy_dnn._make): its first plan,
            # which becomes the substitute below
            log.info("%s: the cuDNN choice %s does not build at this shape; cuDNN's first "
                     "plan instead", layer.name, choice)
            break
        if conv is None:
            conv = CudnnConv(spec, nf, None, candidates=1)
        try:
            sub = conv.choice()
            pkey = conv._cache_key(sub)
            if pkey is not None and conv._store_plan(pkey):  # else nothing to find later
                store_json(BR.SUBSTITUTES, skey, dict(sub, fused=nf))
        except Exception as e:  # only a later build's time is at stake
            log.debug("%s: substitute plan not remembered: %s", layer.name, e)
        return conv, nf

    @staticmethod
    def _quick(layer, spec):
        """(graph, fused ops) from the first plan that builds without a runtime compile, the
        fully fused graph first; None when neither variant has one (the layer then builds the
        usual way)."""
        for nf in _conv_variants(spec):
            try:
                return CudnnConv(spec, nf, precompiled_only=True), nf
            except Exception as e:
                log.debug("%s: no precompiled cuDNN plan with %d fused ops: %s", layer.name,
                          nf, e)
        return None

    def _build(self, net, layer, spec, rec):
        if rec is not None and "fused" in rec:
            try:
                return CudnnConv(spec, int(rec["fused"]), rec), int(rec["fused"])
            except Exception as e:
                log.info("%s: recorded choice failed (%s); tuning again", layer.name, e)
        _note_tuned(layer, spec)
        built, errors = [], []
        for nf in _conv_variants(spec):
            try:
                built.append((CudnnConv(spec, nf), nf))
            except Exception as e:
                errors.append(f"{nf} fused ops: {type(e).__name__}: {str(e)[:200]}")
        if not built:
            raise RuntimeError(f"cuDNN cannot run {layer.name}: " + "; ".join(errors))
        if len(built) == 1 and len(getattr(built[0][0], "built", [])) <= 1:
            return built[0]
        # time every candidate on random data of the real shapes
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            x = _random(_shape(net, layer.inputs[0]), spec.dtype)
            w = self.weights.get(layer.inputs[1])
            if w is None or w.dtype != np.dtype(spec.dtype):
                w = _random(_shape(net, layer.inputs[1]), spec.dtype)
            y = cp.empty(_shape(net, layer.outputs[0]), spec.y_dtype)
            ops = {i: _random(s, d) for i, (s, d) in spec.operands.items()}
            best, best_t = None, float("inf")
            for conv, nf in built:
                t = conv.tune(x, w, y, ops, stream)
                post = Epilogue(net, layer, layer.epilogue[nf:])
                if post.kernel is not None:
                    ins = [None] * len(layer.inputs)
                    for i, v in ops.items():
                        ins[i] = v
                    t += gpu_time(lambda: post(y, ins), stream)
                log.debug("%s: %d fused ops -> %.1f us (%s)", layer.name, nf, t * 1e6,
                          conv.plan_name())
                if t < best_t:
                    best, best_t = (conv, nf), t
            stream.synchronize()
        return best

    def run(self, ins, outs, ws):
        x, w, y = ins[0], ins[1], outs[0]
        if self.cast_x:
            x = x.astype(self.dtype)
        ops = {i: ins[i] for i in self.conv.tensors if isinstance(i, int)}
        ws = _scratch(ws, self.conv.workspace)
        self.conv.run(x, w, y, ops, ws.data.ptr if ws is not None else 0, _stream_ptr())
        self.post(y, ins)

    def record(self):
        return self._rec


# cuBLASLt's GELU epilogue is the tanh form. It differs from erf-GELU by at most 4.7e-4 (at
# |x| = 2.7, where an fp16 ulp is 2e-3): below a quarter ulp of a half-precision output, so
# layers storing fp16 / bf16 take it for exact GELU too; fp32 outputs keep the exact kernel.
_HALF_OUT = ("float16", "bfloat16")


def _lt_epilogue(net, layer, y_shape, n_dim: int):
    """Splits the epilogue into what cuBLASLt fuses (bias along N, residual C, relu / gelu
    last; see _HALF_OUT) and the rest. Returns (epilogue name, bias input, residual input,
    n fused)."""
    half_out = _dtype(net, layer.outputs[0]) in _HALF_OUT
    bias = res = None
    act = ""
    k = 0
    for e in layer.epilogue:
        if e["op"] == "bias" and bias is None and not act:
            if _shape(net, layer.inputs[e["input"]]) != (n_dim,):
                break
            bias = e["input"]
        elif e["op"] == "add" and res is None and not act and \
                _shape(net, layer.inputs[e["input"]]) == tuple(y_shape) and \
                _dtype(net, layer.inputs[e["input"]]) == _dtype(net, layer.outputs[0]):
            res = e["input"]
        elif e["op"] == "act" and not act and (
                e["fn"] == "relu" or (e["fn"] == "gelu" and (
                    e.get("approximate") == "tanh" or half_out))):
            act = e["fn"]
        else:
            break
        k += 1
    name = "_".join(p for p in ("bias" if bias is not None else "", act) if p)
    return name, bias, res, k


def _gemm_key(spec: GemmSpec) -> str:
    """A cuBLASLt GEMM's key in ``_SHARED`` and the build cache."""
    return "lt|" + json.dumps(spec.key(), default=str)


def _gemm_id(spec: GemmSpec) -> str:
    """The short name of a GEMM that a recorded algorithm index belongs to (``"for"``)."""
    return hashlib.sha1(_gemm_key(spec).encode()).hexdigest()[:16]


class GemmImpl(Impl):
    """matmul (and 1x1 stride-1 conv) as one cuBLASLt call with its epilogue."""

    def __init__(self, net, layer, weights, opts, dims, a_name, b_name):
        super().__init__(net, layer, weights, opts)
        m, n, k, batch, ta, tb, sa, sb, sd = dims
        y = layer.outputs[0]
        ab = _dtype(net, b_name)
        if _dtype(net, a_name) != ab:  # fp32 network input into an fp16 layer
            ab = "float16" if "float16" in (ab, _dtype(net, a_name)) else ab
        self.ab = ab
        self.cast = [_dtype(net, a_name) != ab, _dtype(net, b_name) != ab]
        epi, self.bias_i, self.res_i, nf = _lt_epilogue(net, layer, _shape(net, y), n)
        alpha = float(layer.attrs.get("alpha", 1.0)) if layer.kind == "matmul" else 1.0
        rec = get_record(layer) or {}
        self.gemm = None
        bias_dtypes = [None] if self.bias_i is None else \
            [_dtype(net, layer.inputs[self.bias_i]), _dtype(net, y)]
        last = None
        for bdt in bias_dtypes:
            spec = GemmSpec(m, n, k, batch, ta, tb, sa, sb, sd, ab, _dtype(net, y), alpha,
                            self.res_i is not None, epi, bdt, opts.get("tf32", True))
            try:
                self.gemm = self._build(net, layer, spec, rec, a_name, b_name)
                self.bias_dtype = bdt
                break
            except GpuTimeout:
                raise
            except Exception as e:
                last = e
        if self.gemm is None:
            raise RuntimeError(f"cuBLASLt cannot run {layer.name}: {last}")
        self.bias_const = None
        if self.bias_i is not None:
            bname = layer.inputs[self.bias_i]
            if bname in weights:
                self.bias_const = weights[bname].astype(self.bias_dtype)
        self.post = Epilogue(net, layer, layer.epilogue[nf:])
        self.workspace = self.gemm.workspace
        self.a_name, self.b_name = a_name, b_name
        set_record(layer, dict(self.gemm.choice(), **{"for": _gemm_id(self.gemm.spec)}))

    def _build(self, net, layer, spec, rec, a_name, b_name):
        key = _gemm_key(spec)
        untimed = bool(rec) and rec.get("for", _gemm_id(spec)) != _gemm_id(spec)
        if untimed:
            # A choice recorded for another shape (a profile's opt engine, for this shape of
            # its range; im2col's full chunk, for its shorter last one): its index names
            # another algorithm here, one never checked for this shape. Take cuBLASLt's own
            # first pick, untimed (a new shape is not tuned) and kept out of _SHARED and the
            # build cache, where a later build of this GEMM would take it as tuned.
            rec = {"algo": 0}
        if key in _SHARED:
            return LtGemm.shared(spec, _SHARED[key])
        stored = None if rec else stored_choice(key)
        try:
            g = LtGemm.shared(spec, rec or stored) if rec or stored else LtGemm(spec, None)
        except GpuTimeout:
            raise
        except Exception as e:
            if not stored:
                raise
            # the build cache's choice does not rebuild here (another cuBLASLt's algorithms,
            # a stale entry): tune as if it had none
            log.info("%s: cached cuBLASLt choice %s failed (%s); tuning again", layer.name,
                     stored, e)
            stored = None
            g = LtGemm(spec, None)
        rec = rec or stored  # a choice to keep as it is, or None: tune below
        if not rec and g.count > 1:
            stream = cp.cuda.Stream(non_blocking=True)
            with stream:
                a, b, d = self._tune_operands(net, spec, a_name, b_name, layer.outputs[0])
                c = _random(d.shape, spec.d_dtype) if spec.has_c else None
                bias = _random((spec.n,), spec.bias_dtype) if spec.bias_dtype else None
                g.tune(a, b, c, d, bias, stream)
            stream.synchronize()
        if not untimed:
            _SHARED[key] = g.choice()
            store_choice(key, _SHARED[key])
        return g

    def _tune_operands(self, net, spec, a_name, b_name, y_name):
        """A, B and D to time cuBLASLt's algorithms on (tune rejects an algorithm that leaves
        NaN in D: D is exactly what the GEMM writes): here the tensors ``a_name`` (random),
        ``b_name`` (the constant weight when it has the GEMM's dtype) and ``y_name``."""
        a = _random(_shape(net, a_name), spec.ab_dtype)
        b = self.weights.get(b_name)
        if b is None or b.dtype != np.dtype(spec.ab_dtype):
            b = _random(_shape(net, b_name), spec.ab_dtype)
        return a, b, cp.empty(_shape(net, y_name), spec.d_dtype)

    def run(self, ins, outs, ws):
        a, b, y = ins[0], ins[1], outs[0]
        if self.cast[0]:
            a = a.astype(self.ab)
        if self.cast[1]:
            b = b.astype(self.ab)
        bias = None
        if self.bias_i is not None:
            bias = self.bias_const if self.bias_const is not None else \
                ins[self.bias_i].astype(self.bias_dtype, copy=False)
        c = ins[self.res_i] if self.res_i is not None else None
        wsz = self.gemm.workspace
        ws = _scratch(ws, max(wsz, 1))
        self.gemm.run(a.data.ptr, b.data.ptr, c.data.ptr if c is not None else 0, y.data.ptr,
                      bias.data.ptr if bias is not None else None, ws.data.ptr, wsz,
                      _stream_ptr())
        self.post(y, ins)

    def record(self):
        return self.gemm.choice()


def conv_as_gemm_dims(net, layer):
    """(m, n, k, ...) of a 1x1 / stride-1 / unpadded / group-1 conv as one GEMM, or None."""
    a = layer.attrs
    w = _shape(net, layer.inputs[1])
    if a["group"] != 1 or any(d != 1 for d in w[1:-1]) or any(s != 1 for s in a["strides"]) \
            or any(a["pads"]):
        return None
    x = _shape(net, layer.inputs[0])
    m = int(np.prod(x[:-1]))
    return (m, w[0], w[-1], 1, False, True, 0, 0, 0)


def matmul_dims(net, layer):
    """GEMM dims of a matmul layer for cuBLASLt, or None when batch broadcasting is not a plain
    stride (then the cupy tactic runs it)."""
    a = layer.attrs
    sa, sb = list(_shape(net, layer.inputs[0])), list(_shape(net, layer.inputs[1]))
    ta, tb = bool(a.get("transpose_a")), bool(a.get("transpose_b"))
    if np.dtype(_dtype(net, layer.inputs[0])).kind != "f" or \
            np.dtype(_dtype(net, layer.inputs[1])).kind != "f":
        return None
    if len(sa) == 1:
        m, k, ba, ta = 1, sa[0], [], False
    else:
        m, k = (sa[-1], sa[-2]) if ta else (sa[-2], sa[-1])
        ba = sa[:-2]
    if len(sb) == 1:
        kb, n, bb, tb = sb[0], 1, [], False
    else:
        kb, n = (sb[-1], sb[-2]) if tb else (sb[-2], sb[-1])
        bb = sb[:-2]
    if kb != k:
        return None
    pa, pb = int(np.prod(ba, dtype=np.int64)), int(np.prod(bb, dtype=np.int64))
    if pb == 1 and not ta:
        return (pa * m, n, k, 1, False, tb, 0, 0, 0)
    r = max(len(ba), len(bb))
    fa, fb = [1] * (r - len(ba)) + list(ba), [1] * (r - len(bb)) + list(bb)
    if fa == fb:
        return (m, n, k, pa, ta, tb, m * k, k * n, m * n)
    if pa == 1:
        return (m, n, k, pb, ta, tb, 0, k * n, m * n)
    if pb == 1:
        return (m, n, k, pa, ta, tb, m * k, 0, m * n)
    return None


class ConvGemm(GemmImpl):
    def __init__(self, net, layer, weights, opts):
        dims = conv_as_gemm_dims(net, layer)
        if dims is None:
            raise ValueError("not a 1x1 stride-1 conv")
        super().__init__(net, layer, weights, opts, dims, layer.inputs[0], layer.inputs[1])


class MatmulLt(GemmImpl):
    def __init__(self, net, layer, weights, opts):
        dims = matmul_dims(net, layer)
        if dims is None:
            raise ValueError("matmul batch broadcast is not a plain stride")
        super().__init__(net, layer, weights, opts, dims, layer.inputs[0], layer.inputs[1])


class MatmulCupy(Impl):
    """cupy.matmul (cuBLAS): any broadcast, but it cannot be captured into a CUDA graph."""

    capturable = False

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self.post = Epilogue(net, layer, layer.epilogue)
        self.ct = np.float64 if _dtype(net, layer.outputs[0]) == "float64" else np.float32

    def run(self, ins, outs, ws):
        a, b = ins[0].astype(self.ct), ins[1].astype(self.ct)
        if self.layer.attrs.get("transpose_a"):
            a = cp.swapaxes(a, -1, -2)
        if self.layer.attrs.get("transpose_b"):
            b = cp.swapaxes(b, -1, -2)
        r = cp.matmul(a, b)
        alpha = self.layer.attrs.get("alpha", 1.0)
        if alpha != 1.0:
            r *= alpha
        cp.copyto(outs[0], r.reshape(outs[0].shape), casting="unsafe")
        self.post(outs[0], ins)


class DepthwiseConv(Impl):
    """2-D depthwise conv (group == C_in) as one generated kernel with the epilogue fused."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        a = layer.attrs
        x, w, y = layer.inputs[0], layer.inputs[1], layer.outputs[0]
        xs, ws_, ys = _shape(net, x), _shape(net, w), _shape(net, y)
        if len(xs) != 4 or a["group"] != xs[-1] or ws_[-1] != 1:
            raise ValueError("not a 2-D depthwise conv")
        mult = ws_[0] // xs[-1]
        self.kernel = K.DepthwiseConvKernel(xs, ws_[1:3], a["strides"], a["dilations"],
                                            a["pads"], ys, mult, _dtype(net, x), _dtype(net, y),
                                            layer.epilogue, dw_operand_modes(net, layer))
        self.wt = None
        if w in weights:
            self.wt = self._prep(weights[w])

    @staticmethod
    def _prep(w):  # [K, kh, kw, 1] -> [kh*kw, K] float32
        k = w.shape[0]
        return cp.ascontiguousarray(w.reshape(k, -1).T.astype(cp.float32))

    def run(self, ins, outs, ws):
        wt = self.wt if self.wt is not None else self._prep(ins[1])
        self.kernel(ins[0], wt, {i: ins[i] for i in self.kernel.operands}, outs[0])


# --- pointwise, pooling, normalization -----------------------------------------------------------
class Pointwise(Impl):
    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self.kernel = K.PointwiseKernel(
            layer.attrs["program"], [_shape(net, i) for i in layer.inputs],
            [_dtype(net, i) for i in layer.inputs], _shape(net, layer.outputs[0]),
            _dtype(net, layer.outputs[0]))

    def run(self, ins, outs, ws):
        self.kernel(ins, outs[0])


class Pool(Impl):
    int8_store = True  # a float max pool's int8 codes (quantization._requantize_pools)

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        a = layer.attrs
        floor = None
        if a.get("floor_program") and np.dtype(_dtype(net, layer.inputs[0])).kind == "f":
            # an activation moved before the pool: TF's GPU floor (-inf) through it
            from tftrt.engine.backends.numpy_ops import pool_floor
            floor = float(pool_floor(a["floor_program"], -np.inf, np.float32))
        self.kernel = KN.PoolKernel(_shape(net, layer.inputs[0]), _shape(net, layer.outputs[0]),
                                   a["mode"], a["kernel"], a["strides"], a["dilations"],
                                   a["pads"], a["count_include_pad"],
                                   _dtype(net, layer.inputs[0]), _dtype(net, layer.outputs[0]),
                                   floor, a.get("pad_value"), a.get("output_scale"),
                                   a.get("code_floor"))

    def run(self, ins, outs, ws):
        self.kernel(ins[0], outs[0])


class Softmax(Impl):
    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        xs = _shape(net, layer.inputs[0])
        self.axis = layer.attrs["axis"]
        cols = xs[self.axis]
        rows = int(np.prod(xs, dtype=np.int64)) // max(cols, 1)
        self.kernel = KN.SoftmaxKernel(rows, cols, _dtype(net, layer.inputs[0]),
                                      _dtype(net, layer.outputs[0]),
                                      bool(layer.attrs.get("log")))
        self.last = self.axis == len(xs) - 1

    def run(self, ins, outs, ws):
        if self.last:
            self.kernel(ins[0], outs[0])
            return
        x = cp.ascontiguousarray(cp.moveaxis(ins[0], self.axis, -1))
        y = cp.empty(x.shape, outs[0].dtype)
        self.kernel(x, y)
        cp.copyto(outs[0], cp.moveaxis(y, -1, self.axis))


# --- attention -----------------------------------------------------------------------------------
def sdpa_spec(net, layer) -> SdpaSpec:
    """The cuDNN SDPA problem of an ``attention`` layer."""
    q, k, v = (_shape(net, n) for n in layer.inputs[:3])
    lay = layer.attrs["layout"]
    if lay == "bshd":
        (b, sq, h, d), sk = q, k[1]
    else:
        (b, h, sq, d), sk = q, k[2]
    return SdpaSpec(b, h, sq, sk, d, v[3], lay, _dtype(net, layer.inputs[0]),
                    layer.attrs["scale"])


def sdpa_supported(net, layer) -> bool:
    """What cuDNN's fused attention takes: fp16 / bf16 q, k, v and y of one dtype, head dims
    a multiple of 8 and at most 256."""
    dts = {_dtype(net, n) for n in list(layer.inputs[:3]) + layer.outputs}
    s = sdpa_spec(net, layer)
    return len(dts) == 1 and dts.pop() in ("float16", "bfloat16") and \
        all(x % 8 == 0 and 0 < x <= 256 for x in (s.d, s.dv))


class AttentionCudnn(Impl):
    """``attention`` as one cuDNN SDPA (flash attention) graph reading q, k, v in place."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        if not sdpa_supported(net, layer):
            raise ValueError("cuDNN SDPA needs fp16/bf16 operands and head dims a multiple "
                             "of 8 up to 256")
        spec = sdpa_spec(net, layer)
        key = json.dumps(spec.key())
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = self._build(spec, get_record(layer) or stored_choice(key))
        self.sdpa = shared
        self.workspace = self.sdpa.workspace
        self._rec = self.sdpa.choice()
        set_record(layer, self._rec)
        store_choice(key, self._rec)

    @staticmethod
    def _build(spec: SdpaSpec, rec):
        if rec is not None:
            return CudnnSdpa(spec, rec)
        sdpa = CudnnSdpa(spec)
        if len(sdpa.built) > 1:
            stream = cp.cuda.Stream(non_blocking=True)
            with stream:
                q, k, v, o = (_random(_sdpa_shape(spec, s, d), spec.dtype) for s, d in (
                    (spec.sq, spec.d), (spec.sk, spec.d), (spec.sk, spec.dv),
                    (spec.sq, spec.dv)))
                sdpa.tune(q, k, v, o, stream)
            stream.synchronize()
        return sdpa

    def run(self, ins, outs, ws):
        ws = _scratch(ws, self.workspace)
        self.sdpa.run(ins[0].data.ptr, ins[1].data.ptr, ins[2].data.ptr, outs[0].data.ptr,
                      ws.data.ptr if ws is not None else 0, _stream_ptr())

    def record(self):
        return self._rec


def _sdpa_shape(spec: SdpaSpec, s: int, d: int):
    return (spec.b, s, spec.h, d) if spec.layout == "bshd" else (spec.b, spec.h, s, d)


class AttentionCupy(Impl):
    """``attention`` in fp32 with CuPy's matmul (the reference algorithm; cuBLAS through CuPy
    cannot be captured, so this runs eagerly): for what cuDNN's SDPA does not take."""

    capturable = False

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self.scale = np.float32(layer.attrs["scale"])
        self.bshd = layer.attrs["layout"] == "bshd"
        self.p_dtype = attention_p_dtype(_dtype(net, layer.outputs[0]))

    def run(self, ins, outs, ws):
        q, k, v = (t.astype(cp.float32) for t in ins[:3])
        if self.bshd:
            q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        s = cp.matmul(q, k.swapaxes(-1, -2))
        s *= self.scale
        s -= s.max(axis=-1, keepdims=True)
        cp.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        if self.p_dtype is not None:
            s = s.astype(self.p_dtype).astype(cp.float32)
        y = cp.matmul(s, v)
        cp.copyto(outs[0], y.transpose(0, 2, 1, 3) if self.bshd else y, casting="unsafe")


class Normalization(Impl):
    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        a = layer.attrs
        xs = _shape(net, layer.inputs[0])
        axes = list(a["axes"])
        r = len(xs)
        self.fast = axes == list(range(r - len(axes), r))
        cols = int(np.prod([xs[i] for i in axes], dtype=np.int64))
        sc = layer.inputs[1] if len(layer.inputs) > 1 and layer.inputs[1] else None
        bi = layer.inputs[2] if len(layer.inputs) > 2 and layer.inputs[2] else None
        for t in (sc, bi):
            if t is not None:
                s = tuple(d for d in _shape(net, t))
                while s and s[0] == 1 and len(s) > len(axes):
                    s = s[1:]
                if int(np.prod(s, dtype=np.int64)) != cols or \
                        tuple(s) != tuple(xs[r - len(s):]) or len(s) > len(axes):
                    self.fast = False
        self.sc, self.bi = sc, bi
        self.eps = float(a["epsilon"])
        self.stats = len(layer.outputs) > 1
        self.axes = tuple(axes)
        if self.fast:
            self.kernel = KN.LayerNormKernel(
                int(np.prod(xs, dtype=np.int64)) // max(cols, 1), cols,
                _dtype(net, layer.inputs[0]), _dtype(net, layer.outputs[0]), self.eps,
                sc and _dtype(net, sc), bi and _dtype(net, bi), self.stats)

    def run(self, ins, outs, ws):
        if self.fast:
            sc = ins[1] if self.sc else None
            bi = ins[2] if self.bi else None
            m = outs[1] if self.stats else None
            iv = outs[2] if self.stats and len(outs) > 2 else (
                cp.empty_like(m) if self.stats else None)
            self.kernel(ins[0], sc, bi, outs[0], m, iv)
            return
        x = ins[0].astype(cp.float32)
        mean = x.mean(axis=self.axes, keepdims=True)
        d = x - mean
        inv = 1.0 / cp.sqrt((d * d).mean(axis=self.axes, keepdims=True) + np.float32(self.eps))
        y = d * inv
        if self.sc:
            y = y * ins[1]
        if self.bi:
            y = y + ins[2]
        cp.copyto(outs[0], y, casting="unsafe")
        for o, v in zip(outs[1:], (mean, inv)):
            cp.copyto(o, v, casting="unsafe")
