"""INT8 / FP8 layers of the CuPy backend (issue 15): quantized ``conv`` / ``matmul`` layers
(``layer.attrs["quant"]``, made by ``quantization.py``) on int8 / E4M3 tensor cores.

Every layer runs three GPU steps (sources in ``cuda_source_quant``, which says the
arithmetic): quantize the activation on entry (skipped for an int8 input whose channels
need no padding), the main op on a library, the epilogue kernel (dequantization, bias,
residual, activation, then fp16 / fp32 or int8 requantization). Implementations, in the
order ``cupy_backend.impl_table`` tries them:

* :class:`QuantGemmLt` (tactics ``q_lt`` for matmul, ``q_lt_1x1`` for 1x1 convs):
  cuBLASLt, int8 x int8 -> int32 (``CUBLAS_COMPUTE_32I``) or E4M3 x E4M3 -> fp32
  (``CUBLAS_COMPUTE_32F``), "TN" layout (weight [N, K] and activation [M, K], both
  K-contiguous; K and N padded to 4 / 16 with zeros), then the epilogue kernel reading the
  accumulator with its padded row stride. The per-channel weight scales are in the
  epilogue's dequantization vector, so no A/B scale pointer is set (the accumulator is the
  exact integer / fp32 sum the numpy backend rounds once).
* :class:`QuantConvCudnn` (tactic ``q_cudnn``, and 1x1 convs cuBLASLt does not take): a
  cuDNN-frontend graph, NHWC, int8 / E4M3 x and w (channels padded to 4 / 16), conv_fprop
  with INT32 (INT8) / FLOAT (FP8) compute. Variants (:data:`CONV_VARIANTS`): ``fused``
  (the epilogue as cuDNN pointwise nodes, fp16 / fp32 output; for layers whose output is
  not requantized and whose epilogue cuDNN can express; an int8 residual goes through a
  scale node by its scale before the add), ``fused_int8`` (requantized layers: the same
  graph, then a scale node by the inverse output scale and a clip to +-127 -- cuDNN's int8
  store saturates to [-128, 127] -- written as int8 by cuDNN),
  ``fused_requant`` (the same graph with an fp32 output that a kernel requantizes to int8),
  ``acc_float``
  / ``acc_identity`` / ``acc`` (the accumulator as the graph output -- through an identity
  node to fp32 or int32, or with no node after the conv -- then the epilogue kernel).
* :class:`QuantConvCudnnPairs` (tactic ``q_cudnn_pairs``; ``TFTRT_QUANT_CUDNN_PAIRS=0`` takes
  it away): the same graphs for a stride-1 conv of at most 64 channels
  run over pixel pairs (``cuda_source_quant.paired_conv_weight``: x's bytes as
  [N, H, W / 2, 2 C], twice the channels, the same sums).
* :class:`QuantGemmMma` (tactic ``q_mma``, ``cuda_source_qmma``),
  :class:`QuantDepthwiseTiled` (tactic ``q_dw``, ``cuda_source_dw``'s quantized mode) and
  :class:`QuantDepthwiseDirect` (tactic ``q_dw_direct``, the direct depthwise kernel's):
  tftrt's own kernels, the epilogue and the int8 store fused.
* :class:`QuantEmulated` (tactic ``q_emulated`` for what none takes -- grouped convs,
  transpose_a matmuls -- and the fallback of the others): the quantized
  values as float32 through a TF32 cuDNN conv / cuBLASLt GEMM (int8 and E4M3 values and
  their products are exact in TF32 / fp32), then the same epilogue kernel: the layer's
  answers, without int8 / fp8 tensor cores. Its layers say so in the engine's fallback
  line and in ``precision_report`` ("kernel").

Build-time validation (:class:`Validator`): the first GPU run (H200, 2026-11-30) gave wrong
INT8 answers from cuDNN graphs whose output was the int32 accumulator, so no library
implementation is trusted untested. Each candidate (a cuDNN variant's plan, a cuBLASLt
algorithm) runs once, when it is built, on seeded random inputs of the layer's real shapes
and its real weights, into outputs and scratch filled with poison, and its output is
compared with :class:`QuantEmulated`'s at the format's tolerance
(``cuda_source_quant.compare_quantized``). Candidates are validated in the order of
preference -- cuDNN: variant tier (what was right on the H200 first), then speed; cuBLASLt:
speed -- and the first that passes is kept; one that fails is never used, and the reasons
are recorded. When none passes, the implementation refuses the layer and the next one takes
it, finally QuantEmulated (the engine's fallback line says why). The cost is one run per
candidate tried and one emulated run, once per layer signature and process; the verdict
goes into the record (``validated``, ``rejected``) with the tuned choice, and a record whose
verdict is of this validation version and library version is not checked again.

What a layer runs on is recorded in its plan record (``attrs["_cupy"][tactic]["kernel"]``),
which ``quantization.precision_report`` and summary() show. Anything a library cannot do
fails when the layer is built (the next implementation takes it); nothing is decided at run
time and nothing runs on the host.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Dict, List, Optional, Tuple

import numpy as np

import cupy as cp

from tftrt.engine import quantization as Q
from tftrt.engine.backends import cuda_source_qmma as QM
from tftrt.engine.backends import cuda_source_quant as S
from tftrt.engine.backends.cupy_dnn import (LT_WORKSPACE, ConvSpec, CudnnConv, GemmSpec, LtGemm,
                                            _cdt, _cudnn_act, _CudnnPlans, _nc_dims, _set_attr,
                                            cudnn_handle, cudnn_module, gpu_time, lt_handle,
                                            lt_module)
from tftrt.engine.backends.cupy_kernels import _raw_kernel, device_props, launch
from tftrt.engine.backends.cupy_layers import (_SHARED, DepthwiseConv, Impl, _dtype, _shape,
                                               _stream_ptr, get_record, set_record)
from tftrt.engine.errors import GpuTimeout

log = logging.getLogger("tftrt.engine.cupy")

# cuDNN plans built and timed per quantized conv graph, and of those runtime-compiled (see
# QCudnnConv): all five configurations of the int8 fusion engine, plus precompiled ones.
QUANT_CANDIDATES = int(os.environ.get("TFTRT_QUANT_CUDNN_CANDIDATES", "8"))
QUANT_RTC_CANDIDATES = int(os.environ.get("TFTRT_QUANT_CUDNN_RTC_CANDIDATES", "5"))

ALIGN = 256  # scratch sub-buffers start 256-byte aligned (cuBLASLt / cuDNN assume it)


def _align(n: int) -> int:
    return (int(n) + ALIGN - 1) // ALIGN * ALIGN


def _sm_at_least(major: int, minor: int) -> bool:
    """The current device's compute capability is at least ``major.minor``."""
    p = device_props()
    return (int(p["major"]), int(p["minor"])) >= (major, minor)


def fp8_supported() -> bool:
    return _sm_at_least(8, 9)


# --- kernels -------------------------------------------------------------------------------------
class QuantizeKernel(S.QuantizeSource):
    def __call__(self, x, y) -> None:
        launch(_raw_kernel(self.source, "quantize"), self.work, [x, y])


class QuantEpilogueKernel(S.QuantEpilogueSource):
    def __call__(self, acc, operands: Dict[int, cp.ndarray], y) -> None:
        launch(_raw_kernel(self.source, "qepi"), self.work,
               [acc] + [operands[i] for i in self.operands] + [y])


class Scratch:
    """Named sub-buffers of one workspace, each 256-byte aligned."""

    def __init__(self, sizes: List[Tuple[str, int]]):
        self.offsets: Dict[str, Tuple[int, int]] = {}
        off = 0
        for name, nbytes in sizes:
            if nbytes:
                self.offsets[name] = (off, int(nbytes))
                off = _align(off + nbytes)
        self.nbytes = off

    def view(self, ws, name: str, dtype, shape):
        off, n = self.offsets[name]
        return ws[off:off + n].view(dtype).reshape(shape)


# --- cuBLASLt int8 / fp8 GEMM ---------------------------------------------------------------------
class QLtGemm:
    """D[M, N] (row-major; int32 for INT8, fp32 for FP8) = X[M, K] @ W[N, K]^T on cuBLASLt's
    int8 (IMMA) / FP8 kernels: in its column-major terms D^T = W^T(op T) @ X^T(op N), the
    "TN" layout both kernel families require; K, N multiples of 4 (INT8) / 16 (FP8)."""

    def __init__(self, m: int, n: int, k: int, fmt: str, choice: Optional[dict] = None,
                 candidates: int = 8):
        lt, cublas, DT = lt_module()
        mult = S.CHANNEL_MULTIPLE[fmt]
        if n % mult or k % mult:
            raise ValueError(f"cuBLASLt {fmt} GEMM needs K and N multiples of {mult} "
                             f"(K={k}, N={n})")
        self.m, self.n, self.k, self.fmt = int(m), int(n), int(k), fmt
        self.lock = threading.Lock()
        self.lt = lt
        ct = cublas.ComputeType
        if fmt == S.INT8:
            compute, scale_t, abt, dt = ct.COMPUTE_32I, DT.CUDA_R_32I, DT.CUDA_R_8I, \
                DT.CUDA_R_32I
            self.alpha, self.beta = np.array(1, np.int32), np.array(0, np.int32)
        else:
            compute, scale_t, abt, dt = ct.COMPUTE_32F, DT.CUDA_R_32F, DT.CUDA_R_8F_E4M3, \
                DT.CUDA_R_32F
            self.alpha, self.beta = np.array(1, np.float32), np.array(0, np.float32)
        self.desc = lt.matmul_desc_create(compute, scale_t)
        A = lt.MatmulDescAttribute
        for attr, v in ((A.TRANSA, cublas.Operation.T), (A.TRANSB, cublas.Operation.N)):
            _set_attr(lt.matmul_desc_set_attribute, lt.get_matmul_desc_attribute_dtype,
                      self.desc, attr, v)
        la = lt.matrix_layout_create(abt, self.k, self.n, self.k)  # W [N, K] row-major
        lb = lt.matrix_layout_create(abt, self.k, self.m, self.k)  # X [M, K] row-major
        ld = lt.matrix_layout_create(dt, self.n, self.m, self.n)   # D [M, N] row-major
        self.layouts = (la, lb, ld)
        pref = lt.matmul_preference_create()
        P = lt.MatmulPreferenceAttribute
        _set_attr(lt.matmul_preference_set_attribute, lt.get_matmul_preference_attribute_dtype,
                  pref, P.MAX_WORKSPACE_BYTES, LT_WORKSPACE)
        R = lt.ReductionScheme  # no in-place split-K (it accumulates into D): see LtGemm
        _set_attr(lt.matmul_preference_set_attribute, lt.get_matmul_preference_attribute_dtype,
                  pref, P.REDUCTION_SCHEME_MASK, int(R.COMPUTE_TYPE) | int(R.OUTPUT_TYPE))
        self.results = lt.MatmulHeuristicResult(candidates)
        count = np.zeros(1, np.int32)
        try:
            lt.matmul_algo_get_heuristic(lt_handle(), self.desc, la, lb, ld, ld, pref,
                                         candidates, self.results.ptr, count.ctypes.data)
        finally:
            lt.matmul_preference_destroy(pref)
        self.count = int(count[0])
        if self.count == 0:
            raise RuntimeError(f"cuBLASLt has no {fmt} algorithm for M={m} N={n} K={k}")
        self.algos = [self.results[i]["algo"] for i in range(self.count)]
        ws_all = np.asarray(self.results["workspace_size"]).reshape(-1)
        self.wss = [int(ws_all[i]) for i in range(self.count)]
        self.index = 0
        if choice is not None and int(choice.get("algo", -1)) in range(self.count):
            self.index = int(choice["algo"])
        self.times: Dict[int, float] = {}

    @property
    def workspace(self) -> int:
        return self.wss[self.index]

    def choice(self) -> dict:
        return {"algo": int(self.index)}

    def run(self, w_ptr: int, x_ptr: int, d_ptr: int, ws_ptr: int, ws_size: int,
            stream_ptr: int, index: Optional[int] = None) -> None:
        i = self.index if index is None else index
        la, lb, ld = self.layouts
        with self.lock:
            self.lt.matmul(lt_handle(), self.desc, self.alpha.ctypes.data, w_ptr, la, x_ptr, lb,
                           self.beta.ctypes.data, d_ptr, ld, d_ptr, ld,
                           self.algos[i].ctypes.data, ws_ptr, ws_size, stream_ptr)

    def tune(self, w, x, d, stream: cp.cuda.Stream) -> float:
        """Times every candidate (a failing one is skipped), keeps the fastest."""
        ws = cp.empty(LT_WORKSPACE + 64, cp.uint8)
        for i in range(self.count):
            if self.wss[i] > LT_WORKSPACE:
                continue
            try:
                self.times[i] = gpu_time(lambda: self.run(
                    w.data.ptr, x.data.ptr, d.data.ptr, ws.data.ptr, ws.nbytes, stream.ptr, i),
                    stream, what=f"cuBLASLt {self.fmt} algorithm {i}")
            except GpuTimeout:
                raise
            except Exception as e:
                log.debug("cuBLASLt %s algo %d failed: %s", self.fmt, i, e)
        if not self.times:
            raise RuntimeError(f"no cuBLASLt {self.fmt} algorithm ran")
        self.index = min(self.times, key=self.times.get)
        return self.times[self.index]


# --- cuDNN int8 / fp8 convolution -----------------------------------------------------------------
# Graph variants (module doc), in the order of preference: what was right on the H200 first.
# "fused" / "fused_requant" (the epilogue as cuDNN pointwise nodes; float output, which
# requant's kernel then requantizes to int8) were right in every case; "acc_float" (the int32
# accumulator through an identity node to a FLOAT output: the legacy INT8_EXT_CONFIG's
# output type; exact while |acc| < 2**24, and rounded once, as the epilogue kernel's
# __int2float_rn would) and "acc_identity" (the cudnn-frontend's own int8 sample,
# test/python/conv/graph/test_conv_bias.py::test_conv_int8: INT32 intermediates, conv ->
# identity -> INT32 output) next; "acc" (the conv's INT32 output as the graph output with no
# node after it) last: it is what gave the H200's wrong INT8 answers.
# "fused_int8" (2026-12-05, issue 15's one-pass form): the fused epilogue, then a scale node by
# the inverse output scale, written as INT8 by cuDNN itself -- no fp32 round trip and no
# requantize kernel (TFTRT_QUANT_FUSED_INT8=0 leaves it out). A fused graph dequantizes an int8
# residual with a scale node before its add. It is the same graph as fused_requant's with
# less after it, so fused_requant is a tier of its own, built only when no fused_int8 plan
# builds or passes: its graphs would double a requantized layer's build for nothing.
CONV_VARIANTS = ("fused", "fused_int8", "fused_requant", "acc_float", "acc_identity", "acc")
VARIANT_TIER = {"fused": 0, "fused_int8": 0, "fused_requant": 1, "acc_float": 2,
                "acc_identity": 2, "acc": 3}
FUSED_OUTPUT = ("fused", "fused_int8")  # variants whose graph writes the layer's output
FUSED_GRAPH = FUSED_OUTPUT + ("fused_requant",)  # variants with the epilogue in the graph
MAX_VALIDATIONS = 16  # candidate plans validated at most per layer signature


class QCudnnConv(_CudnnPlans):
    """One int8 / E4M3 convolution as a cuDNN graph (see the module doc for the variants).
    ``spec`` is a :class:`cupy_dnn.ConvSpec` of the padded shapes (its dtype fields unused).
    :attr:`out_dtype` is what the graph writes: the layer's output (fused), float32
    (fused_requant, acc_float, FP8's accumulators) or int32 (INT8 acc / acc_identity).

    More plans are built than for a float conv (:data:`QUANT_CANDIDATES`,
    :data:`QUANT_RTC_CANDIDATES`): cuDNN's heuristics rank the int8 fusion engine's five
    configurations badly. On an H100 (benchmarks/bench_int8_conv.py, batch 128) their first
    plan for ResNet50's stage-1 3x3 conv took 330 us and their third 91 us; the first two
    (the float convs' bound) missed the best on 5 of 6 convs, by up to 3.6x."""

    rtc_candidates = QUANT_RTC_CANDIDATES

    def __init__(self, spec: ConvSpec, fmt: str, variant: str, y_dtype: str,
                 choice: Optional[dict] = None, candidates: Optional[int] = None,
                 out_scale: Optional[float] = None):
        if variant not in CONV_VARIANTS:
            raise ValueError(f"variant {variant!r}")
        if variant == "fused_int8" and (out_scale is None or y_dtype != "int8"):
            raise ValueError("fused_int8 writes a requantized int8 output only")
        self.spec, self.fmt, self.variant, self.y_dtype = spec, fmt, variant, y_dtype
        acc = "int32" if fmt == S.INT8 else "float32"
        self.out_dtype = {"fused": y_dtype, "fused_int8": "int8", "fused_requant": "float32",
                          "acc_float": "float32"}.get(variant, acc)
        # per-channel constants of the fused graph (device vectors, bound by name in run()):
        # "SC<i>" an int8 residual's scale, "INV" the inverse output scale of fused_int8
        self.consts: Dict[str, cp.ndarray] = {}
        if variant in FUSED_GRAPH:
            cout = spec.y_shape[-1]
            for e in spec.epilogue:
                if e["op"] == "add" and "scale" in e:
                    self.consts[f"SC{e['input']}"] = cp.full(cout, np.float32(e["scale"]),
                                                             cp.float32)
            if variant == "fused_int8":
                self.consts["INV"] = cp.full(cout, S.output_scale_inverse(out_scale),
                                             cp.float32)
        self.verdict: Optional[dict] = None
        self.rejected: List[str] = []
        self._setup(choice, candidates or QUANT_CANDIDATES)

    def _graph(self, c):
        s = self.spec
        io = c.data_type.INT8 if self.fmt == S.INT8 else c.data_type.FP8_E4M3
        acc = c.data_type.INT32 if self.fmt == S.INT8 else c.data_type.FLOAT
        inter = c.data_type.FLOAT
        if self.fmt == S.INT8 and self.variant in ("acc_identity", "acc_float"):
            inter = c.data_type.INT32  # as the frontend's int8 sample builds it
        g = c.pygraph(io_data_type=io, intermediate_data_type=inter,
                      compute_data_type=inter, handle=cudnn_handle())
        xd, xs = _nc_dims(s.x_shape)
        wd, ws = _nc_dims(s.w_shape)
        yd, ys = _nc_dims(s.y_shape)
        X = g.tensor(name="X", dim=xd, stride=xs, data_type=io)
        W = g.tensor(name="W", dim=wd, stride=ws, data_type=io)
        Y = g.conv_fprop(image=X, weight=W, pre_padding=s.pads_b, post_padding=s.pads_e,
                         stride=s.strides, dilation=s.dilations, compute_data_type=acc)
        tensors = {"X": X, "W": W}
        if self.variant in FUSED_GRAPH:
            cout = s.y_shape[-1]
            Y.set_data_type(c.data_type.FLOAT)
            vec = ([1, cout] + [1] * (len(yd) - 2), [cout, 1] + [cout] * (len(yd) - 2))

            def const(name):
                tensors[name] = g.tensor(name=name, dim=vec[0], stride=vec[1],
                                         data_type=c.data_type.FLOAT)
                return tensors[name]
            for e in s.epilogue:
                if e["op"] in ("bias", "scale", "add"):
                    i = e["input"]
                    shp, dt = s.operands[i]
                    if tuple(shp)[-1:] == (cout,) and int(np.prod(shp)) == cout:
                        dims = [1, cout] + [1] * (len(yd) - 2)
                        T = g.tensor(name=f"E{i}", dim=dims,
                                     stride=[cout, 1] + [cout] * (len(yd) - 2),
                                     data_type=_cdt(dt))
                    else:
                        T = g.tensor(name=f"E{i}", dim=yd, stride=ys, data_type=_cdt(dt))
                    tensors[i] = T
                    if e["op"] == "bias":
                        Y = g.bias(input=Y, bias=T, compute_data_type=c.data_type.FLOAT)
                    elif e["op"] == "scale":
                        Y = g.scale(input=Y, scale=T, compute_data_type=c.data_type.FLOAT)
                    elif "scale" in e:  # an int8 residual: float(q) * s, then the add
                        R = g.scale(input=T, scale=const(f"SC{i}"),
                                    compute_data_type=c.data_type.FLOAT)
                        Y = g.add(a=Y, b=R, compute_data_type=c.data_type.FLOAT)
                    else:
                        Y = g.add(a=Y, b=T, compute_data_type=c.data_type.FLOAT)
                else:
                    Y = _cudnn_act(g, Y, e)
                    if Y is None:
                        raise ValueError(f"activation {e['fn']} has no cuDNN node")
            if self.variant == "fused_int8":
                Y = g.scale(input=Y, scale=const("INV"), compute_data_type=c.data_type.FLOAT)
                # cuDNN's int8 store saturates to [-128, 127]; ours is symmetric (q_int8:
                # +-127). Without this clip 0.5% of a no-relu conv's outputs (those below
                # -127.5) were -128 on an H100 (bench_int8_conv.py --check), and validation
                # rejected the variant for every residual-branch projection of ResNet50.
                Y = g.relu(input=Y, lower_clip=-127.0, upper_clip=127.0)
            Y.set_output(True).set_data_type(_cdt(self.out_dtype))
        elif self.variant == "acc":
            Y.set_output(True).set_data_type(acc)
        else:
            Y.set_data_type(acc)
            out = acc if self.variant == "acc_identity" else c.data_type.FLOAT
            Y = g.identity(input=Y, compute_data_type=out)
            Y.set_output(True).set_data_type(out)
        Y.set_dim(yd).set_stride(ys)
        tensors["Y"] = Y
        g.validate()
        g.build_operation_graph()
        return g, tensors

    def select(self, index: int) -> None:
        """Makes plan ``index`` (one of :attr:`built`) the one :meth:`run` executes."""
        self.index = index
        self.workspace = int(self.g.get_workspace_size_plan_at_index(index))

    def run(self, x_ptr: int, w_ptr: int, y_ptr: int, operands: Dict[int, int], ws_ptr: int,
            stream_ptr: int, index: Optional[int] = None) -> None:
        t = self.tensors
        pack = {t["X"]: x_ptr, t["W"]: w_ptr, t["Y"]: y_ptr}
        for i, T in t.items():
            if isinstance(i, int):
                pack[T] = operands[i]
            elif i in self.consts:
                pack[T] = self.consts[i].data.ptr
        self._execute(pack, ws_ptr, stream_ptr, index)

    def choice(self) -> dict:
        rec = dict(super().choice(), variant=self.variant)
        if self.verdict is not None:
            rec["validated"] = self.verdict
        if self.rejected:
            rec["rejected"] = list(self.rejected)
        return rec


# --- build-time validation ------------------------------------------------------------------------
def library_version(which: str) -> Optional[int]:
    """cuDNN's / cuBLASLt's version (a recorded verdict is trusted only under the same one)."""
    try:
        if which == "cudnn":
            return int(cudnn_module().backend_version())
        return int(lt_module()[0].get_version())
    except Exception:
        return None


def trusted_verdict(rec: Optional[dict], lib: str) -> bool:
    """Whether record ``rec`` carries a passing verdict of this validation and library
    version (then the recorded choice is used without running the check again)."""
    v = rec.get("validated") if isinstance(rec, dict) else None
    ver = library_version(lib)
    return isinstance(v, dict) and v.get("v") == S.VALIDATION_VERSION and ver is not None \
        and v.get("lib") == ver


def _verdict(lib: str, how: str) -> dict:
    return {"v": S.VALIDATION_VERSION, "lib": library_version(lib), "how": how[:200]}


class Validator:
    """Runs a quantized layer's implementation once on seeded random inputs of the layer's real
    shapes (``cuda_source_quant.validation_inputs``; its real weights) and compares the
    output with the emulated path's (:class:`QuantEmulated`, run once per validator) by
    ``cuda_source_quant.compare_quantized``. The output and the scratch are filled with
    poison first, so that an output a library does not write cannot pass."""

    def __init__(self, impl: "_QuantLayer"):
        self.impl = impl
        net, layer = impl.net, impl.layer
        acts = {i: n for i, n in enumerate(layer.inputs)
                if n and n not in net.weights and n not in impl.weights}
        host = S.validation_inputs({i: _shape(net, n) for i, n in acts.items()},
                                   {i: _dtype(net, n) for i, n in acts.items()}, impl.fmt,
                                   impl.inv_x, seed=0)
        # the layer's weights were uploaded on the current stream: done before ours reads them
        cp.cuda.get_current_stream().synchronize()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.ins: List[Optional[cp.ndarray]] = []
        with self.stream:
            for i, n in enumerate(layer.inputs):
                if not n:
                    self.ins.append(None)
                elif i in host:
                    self.ins.append(cp.asarray(host[i]))
                else:
                    w = impl.weights.get(n)
                    self.ins.append(w if w is not None else
                                    cp.asarray(np.asarray(net.weights[n])))
        self.stream.synchronize()
        self.want = None
        self.ref_exact = True

    def _reference(self, stream) -> None:
        impl = self.impl
        ref = _Reference(impl.net, impl.layer, impl.weights, impl.opts)
        cp.cuda.get_current_stream().synchronize()  # its weights' upload
        with stream:
            y = cp.empty(impl.y_shape, impl.y_dtype)
            ws = cp.empty(max(ref.workspace, 1), cp.uint8)
            ins = ref.with_projection(self.ins, ws)
            acc = ref.accumulate(ins, ws)
            if impl.fmt == S.INT8:  # exact only if every sum is an integer below 2**24
                self.ref_exact = bool(cp.all(acc == cp.rint(acc))) and \
                    float(cp.abs(acc).max()) < 2.0 ** 24
            ref.epilogue(acc, ins, y)
        stream.synchronize()
        self.want = y
        if not self.ref_exact:
            log.info("%s: the emulated reference's accumulator is not exact (a TF32 conv that "
                     "rounds); validating at the looser tolerance", impl.layer.name)

    def check(self, run) -> Tuple[bool, str]:
        """(ok, what was measured / why not) of ``run(ins, outs, ws)`` (the implementation as
        it is bound now)."""
        impl, stream = self.impl, self.stream
        if self.want is None:
            self._reference(stream)
        poison = S.INT8_POISON if impl.y_dtype == "int8" else np.nan
        try:
            with stream:  # the poison, the run and the comparison in one stream's order
                y = cp.full(impl.y_shape, poison, impl.y_dtype)
                ws = cp.full(max(int(impl.workspace), 1), S.SCRATCH_POISON_BYTE, cp.uint8)
                run(self.ins, [y], ws)
            stream.synchronize()
        except GpuTimeout:
            raise
        except Exception as e:
            return False, f"raised {type(e).__name__}: {str(e)[:200]}"
        with stream:
            ok, how, _ = S.compare_quantized(y, self.want, impl.fmt, impl.y_dtype,
                                             self.ref_exact, xp=cp)
        stream.synchronize()
        if not self.ref_exact:
            how += " (reference inexact: looser tolerance)"
        return ok, how


# --- layers --------------------------------------------------------------------------------------
class _QuantLayer(Impl):
    """What every quantized layer implementation shares: its format, input quantization,
    epilogue operands and kernel, scratch, and what it records."""

    kernel = "?"

    def _common(self, net, layer) -> None:
        q = layer.attrs.get("quant")
        if q is None:
            raise ValueError("not a quantized layer")
        self.fmt = q["format"]
        self.precision = "INT8" if self.fmt == S.INT8 else "FP8"
        if self.fmt == S.FP8 and not fp8_supported():
            raise ValueError("FP8 needs a GPU of compute capability 8.9 or newer")
        self.x_name, self.w_name = layer.inputs[0], layer.inputs[1]
        self.y_name = layer.outputs[0]
        self.x_shape, self.y_shape = _shape(net, self.x_name), _shape(net, self.y_name)
        self.x_dtype, self.y_dtype = _dtype(net, self.x_name), _dtype(net, self.y_name)
        self.inv_x = float(Q.inv_scale(q["input_scale"]))
        self.out_scale = q.get("output_scale")
        self.modes = S.layer_operand_modes(net, layer, self.y_shape)

    def _validated(self, what: str, verdicts: dict, key, record: dict) -> None:
        """tftrt's own kernel (``what``) for this layer: its ``kernel`` line says how x comes
        in and y goes out; validated once per ``key`` and process (:class:`Validator`, the
        verdict kept in ``verdicts``), else ValueError (the next implementation takes the
        layer); the verdict and ``record`` go into the layer's record."""
        x_how = "int8 x" if self.x_dtype == "int8" else f"{self.x_dtype} x quantized on load"
        self.kernel = f"{what} ({x_how}, epilogue fused, {self.y_dtype} output)"
        if key not in verdicts:
            verdicts[key] = Validator(self).check(self.run)
        ok, how = verdicts[key]
        if not ok:
            raise ValueError(f"the {what} failed the build-time validation: {how}")
        self._record({"validated": {"v": S.VALIDATION_VERSION, "how": how[:200]}, **record})

    def _host(self, name: str) -> np.ndarray:
        h = self.net.weights.get(name)
        return np.asarray(h) if h is not None else cp.asnumpy(self.weights[name])

    def _epilogue(self, rows: int, n: int, ld: int, acc_dtype: str) -> QuantEpilogueKernel:
        return QuantEpilogueKernel(rows, n, ld, acc_dtype, self.layer.epilogue, self.modes,
                                   self.y_dtype, self.out_scale)

    def _operands(self, ins) -> Dict[int, cp.ndarray]:
        return {i: ins[i] for i in self.modes}

    def _record(self, rec: dict) -> None:
        self._rec = dict(rec, kernel=self.kernel)
        set_record(self.layer, self._rec)

    def record(self):
        return self._rec


def _rows(shape) -> int:
    return int(np.prod(shape[:-1], dtype=np.int64))


class QuantGemmLt(_QuantLayer):
    """matmul / 1x1 conv on cuBLASLt's int8 / fp8 kernels (module doc). The algorithm kept is
    the fastest that passes the build-time validation (:class:`Validator`); when none does,
    the layer goes to the next implementation, the reasons in its ``fallback``."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self._common(net, layer)
        dims = S.gemm_dims(layer.kind, self.x_shape, _shape(net, self.w_name), layer.attrs)
        if dims is None:
            raise ValueError("not one GEMM over the input's rows (transpose_a, or a conv that "
                             "is not 1x1 / stride 1 / unpadded / group 1)")
        m, k, n = dims
        kp, np_ = S.padded_channels(k, self.fmt), S.padded_channels(n, self.fmt)
        self.m, self.k, self.n, self.kp, self.np = m, k, n, kp, np_
        w = S.gemm_weight(self._host(self.w_name), layer.kind,
                          bool(layer.attrs.get("transpose_b")), kp, np_)
        self.w = cp.asarray(w)
        self.quant = None
        if self.x_dtype != "int8" or kp != k:
            self.quant = QuantizeKernel(m, k, kp, self.x_dtype,
                                        "int8" if self.fmt == S.INT8 else "e4m3", self.inv_x)
        acc = "int32" if self.fmt == S.INT8 else "float32"
        self.epi = self._epilogue(m, n, np_, acc)
        key = json.dumps(["qlt", m, np_, kp, self.fmt])
        rec = get_record(layer)
        recorded = rec is not None and "algo" in rec
        self.gemm = QLtGemm(m, np_, kp, self.fmt, rec if recorded else _SHARED.get(key))
        if not recorded and key not in _SHARED and self.gemm.count > 1:
            stream = cp.cuda.Stream(non_blocking=True)
            with stream:
                x = cp.zeros((m, kp), self.w.dtype)
                d = cp.empty((m, np_), acc)
                self.gemm.tune(self.w, x, d, stream)
            stream.synchronize()
        pads = [] if (kp, np_) == (k, n) else [f"K {k}->{kp}"] * (kp != k) + \
            [f"N {n}->{np_}"] * (np_ != n)
        self.kernel = (f"cuBLASLt {self.precision} GEMM ({'int32' if acc == 'int32' else 'fp32'}"
                       f" accumulator{'; padded ' + ', '.join(pads) if pads else ''}) + "
                       f"epilogue kernel")
        self.verdict, self.rejected = self._validate(key, rec if recorded else None)
        _SHARED[key] = {"algo": int(self.gemm.index)}
        self._record(self._choice())

    def _bind(self, index: int) -> None:
        self.gemm.index = index
        self.scratch = Scratch([("xq", self.m * self.kp if self.quant else 0),
                                ("acc", self.m * self.np * 4), ("lib", self.gemm.workspace)])
        self.workspace = self.scratch.nbytes

    def _validate(self, key: str, rec: Optional[dict]) -> Tuple[dict, List[str]]:
        """The verdict on the algorithm kept, and the rejected ones (module doc); raises
        ValueError when no algorithm passes."""
        g = self.gemm
        if trusted_verdict(rec, "cublaslt"):
            self._bind(g.index)
            return rec["validated"], list(rec.get("rejected", []))
        order = sorted(g.times, key=g.times.get) if g.times else \
            [g.index] + [i for i in range(g.count) if i != g.index]
        order = [i for i in order if g.wss[i] <= LT_WORKSPACE][:MAX_VALIDATIONS]
        vkey = json.dumps([key, self.layer.to_json()["epilogue"], self.y_dtype,
                           sorted(self.modes.items())], default=str)
        validator, rejected = None, []
        for i in order:
            self._bind(i)
            cached = _VERDICTS.get((vkey, i))
            if cached is None:
                validator = validator or Validator(self)
                cached = _VERDICTS[(vkey, i)] = validator.check(self.run)
            ok, how = cached
            if ok:
                return _verdict("cublaslt", how), rejected
            rejected.append(f"algo {i}: {how}"[:300])
            log.info("%s: cuBLASLt %s algorithm %d rejected by validation: %s",
                     self.layer.name, self.precision, i, how)
        raise ValueError(f"cuBLASLt {self.precision} GEMM: no algorithm passed the build-time "
                         f"validation ({'; '.join(rejected)[:600]})")

    def _choice(self) -> dict:
        rec = {"algo": int(self.gemm.index), "validated": self.verdict}
        if self.rejected:
            rec["rejected"] = self.rejected
        return rec

    def run(self, ins, outs, ws):
        if ws is None or ws.nbytes < self.workspace:
            ws = cp.empty(max(self.workspace, 1), cp.uint8)
        x = ins[0]
        if self.quant is not None:
            xq = self.scratch.view(ws, "xq", self.w.dtype, (self.m, self.kp))
            self.quant(x, xq)
            x = xq
        acc = self.scratch.view(ws, "acc", np.int32 if self.fmt == S.INT8 else np.float32,
                                (self.m, self.np))
        lib_off, lib_n = self.scratch.offsets.get("lib", (0, 0))
        self.gemm.run(self.w.data.ptr, x.data.ptr, acc.data.ptr,
                      ws.data.ptr + lib_off if lib_n else 0, lib_n, _stream_ptr())
        self.epi(acc, self._operands(ins), outs[0])


class QuantGemmMma(_QuantLayer):
    """matmul / conv (1x1, or an implicit GEMM) on the tensor-core kernel of
    ``cuda_source_qmma`` (tactic ``q_mma``): x quantized on load (or read as int8),
    ``mma.sync`` m16n8k32 int8 / E4M3, the epilogue and the int8 / float store fused, one
    kernel, no scratch. Validated once per source
    (:class:`Validator`) before it is used; a kernel that fails validation refuses the layer
    (the next implementation takes it, the reason in its ``fallback``). A projection
    shortcut the layer took (quantization.fuse_projections) runs in the same kernel
    (``cuda_source_qmma.Projection``: its codes kept in registers)."""

    projection = True  # cupy_backend.make_impl: runs a projection shortcut the layer took

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self._common(net, layer)
        if not QM.enabled():  # a plan that chose it, loaded where it is off: the next one
            raise ValueError("off (TFTRT_QUANT_MMA=0)")
        # one GEMM over x's rows (gemm_dims), or a conv's implicit GEMM over y's pixels
        self.src = QM.layer_source(net, layer)
        if self.src.conv is not None and not QM.conv_enabled():  # (a loaded plan's choice)
            raise ValueError("off for convs with taps (TFTRT_QUANT_MMA_CONV=0)")
        self.m = m = _rows(self.y_shape)
        w, w2 = QM.packed_weights(layer, self.src, self._host)
        self.w, self.w2 = cp.asarray(w), None if w2 is None else cp.asarray(w2)
        self.kern = _raw_kernel(self.src.source, QM.KERNEL)
        if self.kern.max_threads_per_block < self.src.threads:  # compiles it: fails the build
            raise ValueError(f"{QM.KERNEL} compiled for at most "
                             f"{self.kern.max_threads_per_block} threads a block, its blocks "
                             f"have {self.src.threads}")
        props = device_props()
        per_sm = QM.resident_blocks(self.kern.num_regs, self.kern.shared_size_bytes,
                                    self.src.threads, props)
        self.blocks = self.src.grid(m, max_blocks=props["multiProcessorCount"] * per_sm)
        self.workspace = 0
        self._validated(f"tensor-core {self.precision} GEMM kernel", _MMA_VERDICTS,
                        (self.src.source, m), {"chunk": self.src.nc})

    def run(self, ins, outs, ws):
        args = QM.launch_args(self.layer, self.src, ins, self.w, self.w2, outs[0])
        self.kern((self.blocks,), (self.src.threads,), tuple(args))


class QuantDepthwiseTiled(_QuantLayer):
    """An INT8 / FP8 depthwise conv on the tiled depthwise kernel in its quantized mode
    (tactic ``q_dw``, ``cuda_source_dw.Quant``): x's quantized values staged in shared
    memory (an int8 x as it is, a float one quantized on load), the exact sum over the
    weight's codes in float32, the epilogue and the int8 / float store fused, one kernel.
    Validated once per source (:class:`Validator`); a kernel that fails validation refuses
    the layer (the emulated path takes it, the reason in its ``fallback``)."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        from tftrt.engine.backends import cuda_source_dw as DW
        from tftrt.engine.backends.cupy_dw import TiledKernels
        self._common(net, layer)
        if not DW.quant_enabled():  # a plan that chose it, loaded where it is off
            raise ValueError("off (TFTRT_QUANT_DW=0)")
        self.kernels = TiledKernels(DW.layer_params(net, layer, quantized=True))
        vec = self.kernels.srcs[True]
        self.wt = _dw_filter(self._host(self.w_name), self.fmt)
        self.workspace = 0
        self._validated(f"tiled {self.precision} depthwise kernel", _DW_VERDICTS,
                        (vec.source, self.kernels.srcs[False].source), {"tile": str(vec.tile)})

    def run(self, ins, outs, ws):
        self.kernels.run(ins[0], self.wt, ins, outs[0])


class QuantDepthwiseDirect(_QuantLayer):
    """An INT8 / FP8 depthwise conv on the direct depthwise kernel in its quantized mode
    (tactic ``q_dw_direct``, ``cuda_source.DepthwiseConvSource`` with ``quant``: a thread's
    outputs of one channel, or of 16 with int8 x, from registers; the arithmetic of
    :class:`QuantDepthwiseTiled`). FP16 runs most of MobileNetV2's depthwise convs on the
    direct kernel rather than the tiled one (H100, s43), so both are timed."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        from tftrt.engine.backends import cuda_source_dw as DW
        from tftrt.engine.backends.cupy_kernels import DepthwiseConvKernel
        self._common(net, layer)
        if not DW.quant_enabled():  # a plan that chose it, loaded where it is off
            raise ValueError("off (TFTRT_QUANT_DW=0)")
        self.dw = DepthwiseConvKernel(**DW.direct_params(net, layer))
        self.wt = _dw_filter(self._host(self.w_name), self.fmt)
        self.workspace = 0
        self._validated(f"direct {self.precision} depthwise kernel", _DW_VERDICTS,
                        (self.dw.source, self.dw.vec_source or ""), {})

    def run(self, ins, outs, ws):
        self.dw(ins[0], self.wt, {i: ins[i] for i in self.dw.operands}, outs[0])


def _dw_filter(w: np.ndarray, fmt: str) -> cp.ndarray:
    """A quantized depthwise weight [C, kh, kw, 1] (int8, or E4M3 codes) as the depthwise
    kernels' float32 filter [kh * kw, C] of its codes' values (exact in float16), laid out as
    the float layers' (``DepthwiseConv._prep``)."""
    return DepthwiseConv._prep(cp.asarray(S.weight_values(w, fmt)))


# (source, source) -> (ok, how) of the quantized depthwise kernels (tiled: vector and scalar
# builds; direct: one-channel and vector builds).
_DW_VERDICTS: Dict[Tuple[str, str], Tuple[bool, str]] = {}


# (source, rows) -> (ok, how) of the tensor-core GEMM kernel: each validated once per process.
_MMA_VERDICTS: Dict[Tuple[str, int], Tuple[bool, str]] = {}


# (GEMM signature and epilogue, algorithm) -> (ok, how): each validated once per process.
_VERDICTS: Dict[Tuple[str, int], Tuple[bool, str]] = {}


class QuantConvCudnn(_QuantLayer):
    """conv on cuDNN's int8 / fp8 convolutions (module doc). Every graph variant that builds
    is timed plan by plan; the plans are then validated (:class:`Validator`) in the order
    (variant tier, time) and the first that passes is kept; when none does, the layer goes
    to the next implementation, the reasons in its ``fallback``."""

    pairs = False  # QuantConvCudnnPairs: the conv over pixel pairs

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        if layer.kind != "conv":
            raise ValueError("not a conv")
        self._common(net, layer)
        if cudnn_module() is None:
            raise ValueError("cuDNN frontend unavailable")
        a = layer.attrs
        if a["group"] != 1:
            raise ValueError(f"a grouped conv (group {a['group']}) has no int8 / fp8 cuDNN "
                             f"kernel here")
        c = self.x_shape[-1]
        cp_ = S.padded_channels(c, self.fmt)
        self.c, self.cp = c, cp_
        w = S.conv_weight(self._host(self.w_name), cp_)
        xs = self.x_shape[:-1] + (cp_,)
        self.xq_shape = xs
        operands = {i: (_shape(net, layer.inputs[i]), _dtype(net, layer.inputs[i]))
                    for i in self.modes}
        ys, pads = self.y_shape, a["pads"]
        self.tiled: Dict[int, cp.ndarray] = {}  # the pair conv's per-channel operands
        if self.pairs:
            why = S.pairs_layer_reason(net, layer)
            if why is not None:
                raise ValueError(f"not over pixel pairs: {why}")
            for i, (mode, _) in self.modes.items():
                if mode == "vec":
                    self.tiled[i] = cp.asarray(np.tile(
                        self._host(layer.inputs[i]).reshape(-1), 2))
            operands = {i: (S.paired_operand(shp, ys), dt) for i, (shp, dt) in operands.items()}
            w = S.paired_conv_weight(w)
            xs, ys, pads = S.paired_shape(xs), S.paired_shape(ys), S.paired_pads(pads)
        self.w = cp.asarray(w)
        spec = ConvSpec(xs, w.shape, ys, a["strides"], a["dilations"], pads, 1,
                        "float16", self.y_dtype, layer.epilogue, operands, False)
        self.quant = None
        if self.x_dtype != "int8" or cp_ != c:
            self.quant = QuantizeKernel(_rows(self.x_shape), c, cp_, self.x_dtype,
                                        "int8" if self.fmt == S.INT8 else "e4m3", self.inv_x)
        self.acc_dtype = "int32" if self.fmt == S.INT8 else "float32"
        key = json.dumps(["qconv", xs, list(w.shape), ys, a["strides"],
                          a["dilations"], pads, self.fmt, self.y_dtype, self.out_scale,
                          layer.to_json()["epilogue"], sorted(operands.items()), self.pairs],
                         default=str)
        rec = get_record(layer)
        if key not in _SHARED:
            _SHARED[key] = self._build(spec, rec)
        self._bind(_SHARED[key])
        self._record(dict(self.conv.choice(), pairs=True) if self.pairs else self.conv.choice())

    def _bind(self, conv: QCudnnConv) -> None:
        """Runs ``conv`` (its selected plan) from now on: scratch, the kernel after it."""
        self.conv = conv
        v = conv.variant
        rows, n = _rows(self.y_shape), self.y_shape[-1]
        self.fused = v in FUSED_OUTPUT
        if self.fused:
            self.epi = None
        elif v == "fused_requant":  # the fused epilogue's fp32 output, requantized to int8
            self.epi = QuantEpilogueKernel(rows, n, n, "float32", [], {}, "int8",
                                           self.out_scale)
        else:
            self.epi = self._epilogue(rows, n, n, conv.out_dtype)
        self.scratch = Scratch([("xq", int(np.prod(self.xq_shape)) if self.quant else 0),
                                ("acc", 0 if self.fused else rows * n * 4),
                                ("lib", conv.workspace)])
        self.workspace = self.scratch.nbytes
        acc_name = "int32" if self.fmt == S.INT8 else "fp32"
        c, cp_ = self.c, self.cp
        after = {"fused": "fused cuDNN epilogue",
                 "fused_int8": "fused cuDNN epilogue, int8 output",
                 "fused_requant": "fused cuDNN epilogue + requantize kernel",
                 "acc_float": "epilogue kernel (accumulator as fp32 output)",
                 "acc_identity": "epilogue kernel (accumulator through an identity node)",
                 "acc": "epilogue kernel"}[v]
        self.kernel = (f"cuDNN {self.precision} conv ({acc_name} accumulator"
                       f"{f'; channels padded {c}->{cp_}' if cp_ != c else ''}"
                       f"{'; over pixel pairs' if self.pairs else ''}) + {after}")

    def _variants(self, spec) -> List[str]:
        from tftrt.env import env_bool
        fusable = spec.fusable_prefix() == len(spec.epilogue)
        out = []
        if fusable and self.out_scale is None and self.y_dtype in ("float16", "float32"):
            out.append("fused")
        if fusable and self.out_scale is not None and self.y_dtype == "int8":
            if env_bool("TFTRT_QUANT_FUSED_INT8", True):
                out.append("fused_int8")
            out.append("fused_requant")
        if self.fmt == S.INT8:
            out.append("acc_float")
        return out + ["acc_identity", "acc"]

    def _build(self, spec, rec) -> QCudnnConv:
        validator = None
        rejected: List[str] = []
        # a record of the other geometry (the pair conv's, or the plain conv's where this
        # class is the pair tactic's fallback) names plans of another graph
        if rec is not None and rec.get("variant") in self._variants(spec) and \
                bool(rec.get("pairs")) == self.pairs:
            try:
                conv = QCudnnConv(spec, self.fmt, rec["variant"], self.y_dtype, rec,
                                  out_scale=self.out_scale)
            except Exception as e:
                conv = None
                log.info("%s: recorded choice failed (%s); tuning again", self.layer.name, e)
            if conv is not None:
                if trusted_verdict(rec, "cudnn"):
                    conv.verdict, conv.rejected = rec["validated"], list(rec.get("rejected",
                                                                                 []))
                    return conv
                validator = Validator(self)
                self._bind(conv)
                ok, how = validator.check(self.run)
                if ok:
                    conv.verdict = _verdict("cudnn", how)
                    return conv
                rejected.append(f"recorded {conv.variant} plan {conv.plan_name()}: {how}"[:300])
        # tier by tier (module doc): the int32-output variants are built only when nothing
        # of a preferred tier passes
        variants = self._variants(spec)
        errors, tried = [], 0
        validator = validator or Validator(self)
        for tier in sorted({VARIANT_TIER[v] for v in variants}):
            built = []
            for v in (v for v in variants if VARIANT_TIER[v] == tier):
                try:
                    built.append(QCudnnConv(spec, self.fmt, v, self.y_dtype,
                                            out_scale=self.out_scale))
                except Exception as e:
                    errors.append(f"{v}: {type(e).__name__}: {str(e)[:200]}")
            for _, _, conv, i in self._timed(spec, built, errors):
                if tried >= MAX_VALIDATIONS:
                    break
                tried += 1
                conv.select(i)
                self._bind(conv)
                ok, how = validator.check(self.run)
                if ok:
                    conv.verdict, conv.rejected = _verdict("cudnn", how), rejected
                    log.debug("%s: cuDNN %s %s plan %s validated: %s", self.layer.name,
                              self.precision, conv.variant, conv.plan_name(), how)
                    return conv
                rejected.append(f"{conv.variant} plan {conv.plan_name()}: {how}"[:300])
                log.info("%s: cuDNN %s %s plan %s rejected by validation: %s",
                         self.layer.name, self.precision, conv.variant, conv.plan_name(), how)
        if errors:
            log.debug("%s: cuDNN %s variants not built: %s", self.layer.name, self.precision,
                      "; ".join(errors))
        if not tried:
            raise RuntimeError(f"cuDNN builds / runs no {self.precision} convolution for "
                               f"{self.layer.name}: " + "; ".join(errors + rejected))
        raise RuntimeError(f"no cuDNN {self.precision} convolution plan of {self.layer.name} "
                           f"passed the build-time validation: " + "; ".join(rejected)[:900])

    def _timed(self, spec, built: List[QCudnnConv], errors: List[str]) -> List[tuple]:
        """(tier, seconds, conv, plan index) of every plan of every built variant, sorted;
        with one plan in all, nothing is timed. A variant that fails to run goes to
        ``errors``."""
        if not built:
            return []
        if len(built) == 1 and len(getattr(built[0], "built", [])) <= 1:
            return [(VARIANT_TIER[built[0].variant], 0.0, built[0], built[0].index)]
        stream = cp.cuda.Stream(non_blocking=True)
        cands = []
        with stream:
            x = cp.zeros(self.xq_shape, self.w.dtype)
            y = cp.empty(self.y_shape, self.y_dtype)
            acc = cp.zeros(self.y_shape, np.float32)  # 4 bytes: int32 or fp32 accumulator
            ops = {i: cp.zeros(s, d) for i, (s, d) in spec.operands.items()}
            ptrs = {i: v.data.ptr for i, v in ops.items()}
            ins = [None] * len(self.layer.inputs)
            for i, v in ops.items():
                ins[i] = v
            for conv in built:
                out = y if conv.variant in FUSED_OUTPUT else acc
                try:
                    conv._tune(lambda wsp, i: conv.run(x.data.ptr, self.w.data.ptr,
                                                       out.data.ptr, ptrs, wsp, stream.ptr, i),
                               stream)
                    extra = 0.0
                    if conv.variant not in FUSED_OUTPUT:
                        self._bind(conv)
                        src = acc.view(np.int32) if conv.out_dtype == "int32" else acc
                        extra = gpu_time(lambda: self.epi(src, self._operands(ins), y), stream) \
                            if conv.variant != "fused_requant" else \
                            gpu_time(lambda: self.epi(acc, {}, y), stream)
                except GpuTimeout:
                    raise
                except Exception as e:
                    errors.append(f"{conv.variant} failed to run: {type(e).__name__}: "
                                  f"{str(e)[:200]}")
                    continue
                for i, t in conv.times.items():
                    cands.append((VARIANT_TIER[conv.variant], t + extra, conv, i))
        stream.synchronize()
        cands.sort(key=lambda c: (c[0], c[1]))
        return cands

    def run(self, ins, outs, ws):
        if ws is None or ws.nbytes < self.workspace:
            ws = cp.empty(max(self.workspace, 1), cp.uint8)
        x = ins[0]
        if self.quant is not None:
            xq = self.scratch.view(ws, "xq", self.w.dtype, self.xq_shape)
            self.quant(x, xq)
            x = xq
        lib_off, lib_n = self.scratch.offsets.get("lib", (0, 0))
        ws_ptr = ws.data.ptr + lib_off if lib_n else 0
        ops = {i: ins[i].data.ptr for i in self.modes}
        if self.fused:
            ops.update((i, v.data.ptr) for i, v in self.tiled.items())
            self.conv.run(x.data.ptr, self.w.data.ptr, outs[0].data.ptr, ops, ws_ptr,
                          _stream_ptr())
            return
        acc = self.scratch.view(ws, "acc", self.conv.out_dtype, self.y_shape)
        self.conv.run(x.data.ptr, self.w.data.ptr, acc.data.ptr, ops, ws_ptr, _stream_ptr())
        if self.conv.variant == "fused_requant":
            self.epi(acc, {}, outs[0])
        else:
            self.epi(acc, self._operands(ins), outs[0])


class QuantConvCudnnPairs(QuantConvCudnn):
    """A narrow stride-1 conv on cuDNN as a conv over pixel pairs (tactic ``q_cudnn_pairs``,
    ``cuda_source_quant.paired_conv_weight``): x's bytes read as [N, H, W / 2, 2 C], the
    pair filter of 2 K outputs, y's bytes written as [N, H, W / 2, 2 K], per-channel operands
    of a fused epilogue tiled to 2 K when built; an epilogue kernel after the conv reads the
    accumulator as the plain conv's. Validated and timed like the plain conv; a recorded
    choice of either geometry is used by that geometry only."""

    pairs = True


class QuantEmulated(_QuantLayer):
    """The quantized layer's arithmetic without int8 / fp8 tensor cores (module doc): the
    quantized values in float32 through a TF32 cuDNN conv or cuBLASLt GEMM, then the epilogue
    kernel. The fallback of the real kernels, and the tactic of quantized layers they cannot
    take (grouped convs, transpose_a matmuls; depthwise ones where q_dw cannot)."""

    projection = True  # cupy_backend.make_impl: runs a projection shortcut the layer took

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self._common(net, layer)
        a = layer.attrs
        wv = S.weight_values(self._host(self.w_name), self.fmt).astype(np.float32)
        mode = "int8_values" if self.fmt == S.INT8 else "e4m3_values"
        c = self.x_shape[-1]
        self.quant = QuantizeKernel(_rows(self.x_shape), c, c, self.x_dtype, mode, self.inv_x,
                                    "float32")
        rows, n = _rows(self.y_shape), self.y_shape[-1]
        self.epi = self._epilogue(rows, n, n, "float32")
        self.gemm = self.conv = self.matmul = None
        dims = S.gemm_dims(layer.kind, self.x_shape, wv.shape, a)
        if layer.kind == "conv" and dims is None:
            self.w = cp.asarray(wv)
            spec = ConvSpec(self.x_shape, wv.shape, self.y_shape, a["strides"], a["dilations"],
                            a["pads"], a["group"], "float32", "float32", [], {}, True)
            key = json.dumps(["qemu_conv", self.x_shape, list(wv.shape), self.y_shape,
                              a["strides"], a["dilations"], a["pads"], a["group"]])
            if key not in _SHARED:
                _SHARED[key] = CudnnConv(spec, 0)
            self.conv = _SHARED[key]
            lib = self.conv.workspace
            what = "cuDNN TF32 conv"
        elif dims is not None:
            m, k, n_ = dims
            self.w = cp.asarray(S.gemm_weight(wv, layer.kind, bool(a.get("transpose_b")), k,
                                              n_))
            spec = GemmSpec(m, n_, k, 1, False, True, 0, 0, 0, "float32", "float32", 1.0,
                            False, "", None, True)
            key = "qemu_lt|" + json.dumps(spec.key(), default=str)
            self.gemm = LtGemm(spec, _SHARED.get(key))
            _SHARED[key] = self.gemm.choice()
            lib = self.gemm.workspace
            what = "cuBLASLt TF32 GEMM"
        else:  # transpose_a matmul: CuPy's matmul (cuBLAS; not capturable)
            self.capturable = False
            self.w = cp.asarray(wv.T if a.get("transpose_b") else wv)
            lib = 0
            self.matmul = True
            what = "CuPy fp32 matmul"
        # a projection shortcut the layer took (quantization.fuse_projections): run first,
        # emulated, its codes in scratch in the residual's place
        fused = Q.projection_layer(net, layer)
        self.proj, extra = None, []
        if fused is not None:
            sub, p = fused
            self.proj = _Reference(sub, p, weights, opts)
            d = layer.attrs["projection"]
            self.at, self.res = [int(k) for k in d["inputs_at"]], int(d["residual"])
            self.codes_shape = _shape(sub, p.outputs[0])
            extra = [("codes", int(np.prod(self.codes_shape))), ("proj", self.proj.workspace)]
            what += f", after its projection shortcut {p.name} the same way"
        self.scratch = Scratch([("xv", int(np.prod(self.x_shape)) * 4),
                                ("acc", rows * n * 4), ("lib", lib)] + extra)
        self.workspace = self.scratch.nbytes
        self.kernel = (f"emulated: {self.precision} values in fp32 through {what} + epilogue "
                       f"kernel (no {self.precision} tensor cores)")
        self._record(self.conv.choice() if self.conv is not None else
                     self.gemm.choice() if self.gemm is not None else {})

    def accumulate(self, ins, ws):
        """Steps 1-2: the accumulator (float32, the layer's output shape, in ``ws``)."""
        xv = self.scratch.view(ws, "xv", np.float32, self.x_shape)
        self.quant(ins[0], xv)
        acc = self.scratch.view(ws, "acc", np.float32, self.y_shape)
        lib_off, lib_n = self.scratch.offsets.get("lib", (0, 0))
        ws_ptr = ws.data.ptr + lib_off if lib_n else 0
        if self.conv is not None:
            self.conv.run(xv, self.w, acc, {}, ws_ptr, _stream_ptr())
        elif self.gemm is not None:
            self.gemm.run(xv.data.ptr, self.w.data.ptr, 0, acc.data.ptr, None, ws_ptr, lib_n,
                          _stream_ptr())
        else:
            x = cp.swapaxes(xv, -1, -2)
            cp.copyto(acc, cp.matmul(x, self.w).reshape(acc.shape))
        return acc

    def epilogue(self, acc, ins, y) -> None:
        self.epi(acc, self._operands(ins), y)

    def with_projection(self, ins, ws) -> list:
        """``ins``, with the codes of the projection shortcut the layer took (run first, into
        ``ws``) in its residual's place; ``ins`` itself for a layer without one."""
        if self.proj is None:
            return ins
        codes = self.scratch.view(ws, "codes", np.int8, self.codes_shape)
        off, n = self.scratch.offsets["proj"]
        self.proj.run([ins[k] for k in self.at], [codes], ws[off:off + n])
        ins = list(ins)
        ins[self.res] = codes
        return ins

    def run(self, ins, outs, ws):
        if ws is None or ws.nbytes < self.workspace:
            ws = cp.empty(max(self.workspace, 1), cp.uint8)
        ins = self.with_projection(ins, ws)
        self.epilogue(self.accumulate(ins, ws), ins, outs[0])


class _Reference(QuantEmulated):
    """The emulated path as the validation reference: records nothing on the layer."""

    def _record(self, rec: dict) -> None:
        self._rec = dict(rec, kernel=self.kernel)


# --- tactic predicates (cupy_backend registers them) ----------------------------------------------
def is_quantized(layer) -> bool:
    return "quant" in layer.attrs


def gemm_applies(net, layer) -> bool:
    return is_quantized(layer) and lt_module() is not None and S.gemm_dims(
        layer.kind, _shape(net, layer.inputs[0]), _shape(net, layer.inputs[1]),
        layer.attrs) is not None


def _cudnn_takes(layer) -> bool:
    return is_quantized(layer) and layer.kind == "conv" and cudnn_module() is not None and \
        layer.attrs["group"] == 1


def cudnn_applies(net, layer) -> bool:
    return _cudnn_takes(layer)


def cudnn_pairs_applies(net, layer) -> bool:
    """Quantized convs cuDNN may run faster over pixel pairs (``TFTRT_QUANT_CUDNN_PAIRS``;
    ``cuda_source_quant.pairs_layer_reason``)."""
    return _cudnn_takes(layer) and S.pairs_enabled() and \
        S.pairs_layer_reason(net, layer) is None


def mma_applies(net, layer) -> bool:
    """Quantized layers the tensor-core GEMM kernel takes (cuda_source_qmma.unsupported) on
    a GPU that has its MMA: int8 m16n8k32 from sm_80, E4M3 from sm_89 (elsewhere the kernel
    would not compile, and trying costs the build a compile per layer)."""
    if not is_quantized(layer) or QM.unsupported(net, layer) is not None:
        return False
    return fp8_supported() if layer.attrs["quant"]["format"] == S.FP8 else _sm_at_least(8, 0)


def dw_applies(net, layer) -> bool:
    """Quantized depthwise convs the tiled depthwise kernel takes (cuda_source_dw.
    quant_unsupported); FP8 on a GPU with E4M3 conversions (sm_89+)."""
    from tftrt.engine.backends import cuda_source_dw as DW
    if not is_quantized(layer) or layer.kind != "conv" or \
            DW.quant_unsupported(net, layer) is not None:
        return False
    return fp8_supported() if layer.attrs["quant"]["format"] == S.FP8 else True


# the direct depthwise kernel's quantized mode takes the same layers (a name of its own: the
# tactic table looks predicates up by name, and the GPU tests leave a layer to one of them)
dw_direct_applies = dw_applies


def emulated_applies(net, layer) -> bool:
    """Quantized layers no real int8 / fp8 tactic takes."""
    return is_quantized(layer) and not gemm_applies(net, layer) and \
        not cudnn_applies(net, layer)
