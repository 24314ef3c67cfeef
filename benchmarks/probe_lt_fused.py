"""Which quantized cuBLASLt GEMMs can carry their own epilogue, and how fast they are (issue 15,
the encoder's GEMMs). GPU only (CuPy + nvmath-python); no TensorFlow.

Today a quantized GEMM (``cupy_quant.QuantGemmLt``) writes its int32 / fp32 accumulator and a
second kernel reads it back for the epilogue: at the encoder's FFN shape (16384 x 768 x 3072)
that is 201 MB each way, and the whole INT8 encoder ran 0.55x FP16 (s37). This probe builds,
for the encoder's three GEMM shapes, the cuBLASLt forms that would need no second kernel and
checks each against a float32 reference from the same codes:

* ``fp16``: the FP16 GEMM with its bias (+ GELU) epilogue, what the FP16 engine runs;
* ``fp8 ...``: E4M3 x E4M3 with the weight scales per output channel (``OUTER_VEC_32F``
  scale mode, cuBLAS 12.9+) or one per tensor (``A_SCALE_POINTER``), fp16 or E4M3 output,
  bias (+ GELU) in the library, with and without ``FAST_ACCUM``;
* ``int8 ...``: int8 x int8 -> int32 accumulator (today's form) and int8 output with a
  per-channel alpha vector (``ALPHA_DEVICE_VECTOR_BETA_ZERO``), with and without bias.

A form cuBLASLt has no algorithm for prints ``no algorithm``; one whose output is wrong prints
``WRONG`` with its error. Times are the fastest heuristic candidate, each a CUDA graph of ten
calls (``cupy_dnn.gpu_time``)::

    source benchmarks/gpu_engine_env.sh 300; python3 benchmarks/probe_lt_fused.py
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import cupy as cp

from tftrt.engine import quantization as Q
from tftrt.engine.backends.cupy_dnn import LT_WORKSPACE, _set_attr, gpu_time, lt_handle, lt_module

SHAPES = {"att (M K N)": (16384, 768, 768), "ffn_in": (16384, 768, 3072),
          "ffn_out": (16384, 3072, 768)}


def gelu_tanh(v):
    return 0.5 * v * (1.0 + cp.tanh(0.7978845608028654 * (v + 0.044715 * v ** 3)))


class Form:
    """One cuBLASLt matmul form: D[M, N] = epi(sa[n] * sb[m] * (X[M, K] @ W[N, K]^T) + bias)."""

    def __init__(self, name, m, k, n, ab, d, scale_mode=None, fast=False, alpha_vec=False,
                 bias=True, gelu=False, d_scale=False):
        self.name, self.m, self.k, self.n = name, m, k, n
        self.ab, self.d, self.scale_mode, self.fast = ab, d, scale_mode, fast
        self.alpha_vec, self.bias, self.gelu, self.d_scale = alpha_vec, bias, gelu, d_scale

    def build(self, dev):
        lt, cublas, DT = lt_module()
        A = lt.MatmulDescAttribute
        dt = {"int8": DT.CUDA_R_8I, "e4m3": DT.CUDA_R_8F_E4M3, "float16": DT.CUDA_R_16F,
              "int32": DT.CUDA_R_32I, "float32": DT.CUDA_R_32F}
        if self.ab == "int8":
            compute = cublas.ComputeType.COMPUTE_32I
            scale_t = DT.CUDA_R_32I if self.d == "int32" else DT.CUDA_R_32F
        else:
            compute, scale_t = cublas.ComputeType.COMPUTE_32F, DT.CUDA_R_32F
        desc = lt.matmul_desc_create(compute, scale_t)
        self.desc, self.lt = desc, lt

        def da(attr, v):
            _set_attr(lt.matmul_desc_set_attribute, lt.get_matmul_desc_attribute_dtype, desc,
                      attr, v)
        da(A.TRANSA, cublas.Operation.T)
        da(A.TRANSB, cublas.Operation.N)
        if self.fast:
            da(A.FAST_ACCUM, 1)
        ep = lt.Epilogue
        if self.bias:
            da(A.EPILOGUE, ep.GELU_BIAS if self.gelu else ep.BIAS)
            bt = "float16" if self.d in ("float16", "e4m3") else "float32"
            da(A.BIAS_DATA_TYPE, dt[bt])
            da(A.BIAS_POINTER, dev["bias_" + bt].data.ptr)
        elif self.gelu:
            da(A.EPILOGUE, ep.GELU)
        if self.ab == "e4m3":
            if self.scale_mode == "outer":
                M = lt.MatmulMatrixScale
                da(A.A_SCALE_MODE, M.OUTER_VEC_32F)
                da(A.B_SCALE_MODE, M.OUTER_VEC_32F)
                da(A.A_SCALE_POINTER, dev["sw"].data.ptr)
                da(A.B_SCALE_POINTER, dev["sx_vec"].data.ptr)
            else:
                da(A.A_SCALE_POINTER, dev["sw_scalar"].data.ptr)
                da(A.B_SCALE_POINTER, dev["sx"].data.ptr)
            if self.d_scale:
                da(A.D_SCALE_POINTER, dev["inv_out"].data.ptr)
        if self.alpha_vec:
            da(A.POINTER_MODE, lt.PointerMode.ALPHA_DEVICE_VECTOR_BETA_ZERO)
        la = lt.matrix_layout_create(dt[self.ab], self.k, self.n, self.k)
        lb = lt.matrix_layout_create(dt[self.ab], self.k, self.m, self.k)
        ld = lt.matrix_layout_create(dt[self.d], self.n, self.m, self.n)
        lc = ld if self.d != "e4m3" else lt.matrix_layout_create(dt["float16"], self.n,
                                                                 self.m, self.n)
        self.layouts = (la, lb, lc, ld)
        pref = lt.matmul_preference_create()
        P = lt.MatmulPreferenceAttribute
        _set_attr(lt.matmul_preference_set_attribute, lt.get_matmul_preference_attribute_dtype,
                  pref, P.MAX_WORKSPACE_BYTES, LT_WORKSPACE)
        self.results = lt.MatmulHeuristicResult(8)
        count = np.zeros(1, np.int32)
        lt.matmul_algo_get_heuristic(lt_handle(), desc, la, lb, lc, ld, pref, 8,
                                     self.results.ptr, count.ctypes.data)
        lt.matmul_preference_destroy(pref)
        self.count = int(count[0])
        self.algos = [self.results[i]["algo"] for i in range(self.count)]
        if self.alpha_vec:
            self.alpha = dev["alpha_vec"]
            self.alpha_ptr = self.alpha.data.ptr
            self.beta = np.zeros(1, np.float32)
        else:
            kind = np.int32 if scale_t == DT.CUDA_R_32I else np.float32
            a = 1.0 if self.ab == "e4m3" else float(dev["alpha_scalar"])
            self.alpha = np.array(1 if kind == np.int32 else a, kind)
            self.alpha_ptr = self.alpha.ctypes.data
            self.beta = np.zeros(1, kind)

    def run(self, w, x, c, d, ws, i, stream):
        la, lb, lc, ld = self.layouts
        self.lt.matmul(lt_handle(), self.desc, self.alpha_ptr, w.data.ptr, la, x.data.ptr, lb,
                       self.beta.ctypes.data, c.data.ptr, lc, d.data.ptr, ld,
                       self.algos[i].ctypes.data, ws.data.ptr, ws.nbytes, stream.ptr)


def reference(form, dev):
    """float32 D of ``form`` from the codes, the way the engine's epilogue computes it."""
    acc = dev["x_val"] @ dev["w_val"].T  # exact-ish: products of codes in fp32
    if form.ab == "e4m3":
        if form.scale_mode == "outer":
            v = acc * dev["sw"][None, :] * dev["sx"]
        else:
            v = acc * dev["sw_scalar"] * dev["sx"]
    elif form.d == "int32":
        return acc
    else:
        v = acc * (dev["alpha_vec"][None, :] if form.alpha_vec else float(dev["alpha_scalar"]))
    if form.bias:
        v = v + dev["bias_float32"][None, :]
    if form.gelu:
        v = gelu_tanh(v)
    return v


def error(form, d, ref, dev):
    if form.d == "int32":
        return float(cp.abs(d.astype(cp.float32) - ref).max()) / float(cp.abs(ref).max())
    if form.d == "int8":
        want = cp.clip(cp.rint(ref), -128, 127)
        return float(cp.abs(d.astype(cp.float32) - want).max())  # in codes
    if form.d == "e4m3":
        got = dev["e4m3_table"][d.view(cp.uint8).astype(cp.int32)] / dev["inv_out"][0]
    else:
        got = d.astype(cp.float32)
    return float(cp.abs(got - ref).max()) / float(cp.abs(ref).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    args = ap.parse_args(argv)
    lt, _, _ = lt_module()
    print(f"# cuBLASLt {lt.get_version()}, {cp.cuda.runtime.getDeviceProperties(0)['name']}")
    rng = np.random.default_rng(0)
    stream = cp.cuda.Stream(non_blocking=True)
    ws = cp.empty(LT_WORKSPACE, cp.uint8)
    table = cp.asarray(Q._e4m3_table().astype(np.float32))
    print("| shape | form | algorithms | us | TF/s | error | vs fp16 |")
    print("|---|---|---|---|---|---|---|")
    for sname in args.shapes:
        m, k, n = SHAPES[sname]
        gelu = sname == "ffn_in"
        xi = rng.integers(-127, 128, (m, k)).astype(np.int8)
        wi = rng.integers(-127, 128, (n, k)).astype(np.int8)
        xf = rng.standard_normal((m, k)).astype(np.float32)
        wf = (rng.standard_normal((n, k)) * np.exp(rng.uniform(-2, 0, (n, 1)))).astype(np.float32)
        sw = (np.abs(wf).max(1) / 448.0).astype(np.float32)
        sx = np.float32(np.abs(xf).max() / 448.0)
        wc8 = np.stack([Q.e4m3_encode(wf[i] / sw[i]) for i in range(n)]).astype(np.uint8)
        wc8_scalar = Q.e4m3_encode(wf / sw.max()).astype(np.uint8)
        xc8 = Q.e4m3_encode(xf / sx).astype(np.uint8)
        bias = (rng.standard_normal(n) * 0.5).astype(np.float32)
        alpha_vec = (1.0 / (np.sqrt(k) * 127.0 * 8) * np.exp(rng.uniform(-1, 1, n))
                     ).astype(np.float32)
        dev = {"bias_float32": cp.asarray(bias), "bias_float16": cp.asarray(bias, cp.float16),
               "sw": cp.asarray(sw), "sw_scalar": cp.asarray(np.float32(sw.max()).reshape(1)),
               "sx": cp.asarray(np.full(1, sx, np.float32)),
               "sx_vec": cp.asarray(np.full(m, sx, np.float32)),
               "alpha_vec": cp.asarray(alpha_vec), "alpha_scalar": alpha_vec.mean(),
               "inv_out": cp.asarray(np.full(1, 0.25, np.float32)), "e4m3_table": table}
        x16 = cp.asarray(xf, cp.float16)
        w16 = cp.asarray(wf, cp.float16)
        forms = [
            Form("fp16", m, k, n, "float16", "float16", gelu=gelu),
            Form("fp8 per-channel (outer vec) -> fp16", m, k, n, "e4m3", "float16", "outer",
                 gelu=gelu),
            Form("fp8 per-channel, fast accum -> fp16", m, k, n, "e4m3", "float16", "outer",
                 fast=True, gelu=gelu),
            Form("fp8 per-tensor -> fp16", m, k, n, "e4m3", "float16", gelu=gelu),
            Form("fp8 per-tensor, fast accum -> fp16", m, k, n, "e4m3", "float16", fast=True,
                 gelu=gelu),
            Form("fp8 per-tensor -> e4m3", m, k, n, "e4m3", "e4m3", gelu=gelu, d_scale=True),
            Form("fp8 per-channel -> e4m3", m, k, n, "e4m3", "e4m3", "outer", gelu=gelu,
                 d_scale=True),
            Form("int8 -> int32 (today)", m, k, n, "int8", "int32", bias=False),
            Form("int8 alpha vec -> int8", m, k, n, "int8", "int8", alpha_vec=True, bias=False),
            Form("int8 alpha vec + bias -> int8", m, k, n, "int8", "int8", alpha_vec=True),
            Form("int8 alpha vec + bias (+gelu) -> int8", m, k, n, "int8", "int8",
                 alpha_vec=True, gelu=gelu),
            Form("int8 alpha vec -> fp16", m, k, n, "int8", "float16", alpha_vec=True),
            Form("int8 scalar alpha + bias + gelu -> int8", m, k, n, "int8", "int8",
                 gelu=True),
            Form("int8 scalar alpha + gelu (no bias) -> int8", m, k, n, "int8", "int8",
                 bias=False, gelu=True),
            Form("int8 scalar alpha + bias -> int8", m, k, n, "int8", "int8"),
            Form("int8 scalar alpha + bias -> fp16", m, k, n, "int8", "float16"),
            Form("int8 scalar alpha -> fp32", m, k, n, "int8", "float32", bias=False),
        ]
        t16 = None
        for f in forms:
            try:
                f.build(dev)
            except Exception as e:
                print(f"| {sname} | {f.name} | build failed: {type(e).__name__}: "
                      f"{str(e)[:80]} | | | | |")
                continue
            if f.count == 0:
                print(f"| {sname} | {f.name} | no algorithm | | | | |")
                continue
            if f.ab == "float16":
                w, x = w16, x16
                dev["x_val"], dev["w_val"] = x16.astype(cp.float32), w16.astype(cp.float32)
            elif f.ab == "e4m3":
                wc = wc8 if f.scale_mode == "outer" else wc8_scalar
                w, x = cp.asarray(wc), cp.asarray(xc8)
                dev["x_val"], dev["w_val"] = table[x.astype(cp.int32)], table[w.astype(cp.int32)]
            else:
                w, x = cp.asarray(wi), cp.asarray(xi)
                dev["x_val"], dev["w_val"] = x.astype(cp.float32), w.astype(cp.float32)
            dtype = {"e4m3": cp.uint8}.get(f.d, f.d)
            d = cp.zeros((m, n), dtype)
            c = cp.zeros((m, n), cp.float16) if f.d == "e4m3" else d
            best, how = None, ""
            for i in range(f.count):
                try:
                    with stream:
                        d.fill(0)
                        f.run(w, x, c, d, ws, i, stream)
                    stream.synchronize()
                    t = gpu_time(lambda: f.run(w, x, c, d, ws, i, stream), stream)
                except Exception as e:
                    how = f"{type(e).__name__}: {str(e)[:60]}"
                    continue
                if best is None or t < best[0]:
                    best = (t, i)
            if best is None:
                print(f"| {sname} | {f.name} | {f.count}, none ran ({how}) | | | | |")
                continue
            with stream:
                d.fill(0)
                f.run(w, x, c, d, ws, best[1], stream)
            stream.synchronize()
            err = error(f, d, reference(f, dev), dev)
            ok = (err <= 1.0) if f.d == "int8" else (err < (4e-2 if f.d == "e4m3" else 2e-3))
            us = best[0] * 1e6
            if f.name == "fp16":
                t16 = us
            tf = 2.0 * m * k * n / best[0] / 1e12
            rel = f"{t16 / us:.2f}x" if t16 else ""
            print(f"| {sname} | {f.name} | {f.count} | {us:.1f} | {tf:.0f} | "
                  f"{err:.1e}{'' if ok else ' WRONG'} | {rel} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
