"""CUDA C source of the ``se`` layer (squeeze-and-excitation, network.py), strings only.

No CuPy here (tests compile it with nvcc and run it on the host); ``cupy_se.SeLayer``
compiles and launches it. Three kernels (four on the split path), x [N, HW, C] read twice:

* ``se_pool``: one thread per (sample, HW slice, group of V channels): the float32 sum of its
  slice with V-wide vector loads (16 bytes where C allows), written to the partial sums
  ``part`` [N, S, C] (no atomics: the same sums in the same order every run).
* ``se_fc``: one block per sample: the mean (partials summed in slice order, then divided
  by HW, as numpy's mean divides its sum), the ``pool`` stages, FC1 (each output's dot
  product split over KP threads, the parts summed in order), bias, act1, ``hidden`` stages,
  FC2 (a thread per channel), bias, act2, ``gate`` stages -> the float32 gate [N, C].
* split path, for a few samples (``split_default``): se_fc's block per sample would read both
  weight matrices through one SM (MobileNetV3Large's C=960, Cse=240: 1.8 MB), so two kernels
  spread the outputs over blocks instead. ``se_fc1``: a block per (sample, J1 hidden outputs)
  computes the same mean and ``pool`` stages as se_fc (every block the whole vector), FC1 of
  its outputs (each dot product split over KP1 threads reading a row of w1 [Cse, C], the
  parts added in a fixed tree), bias, act1, ``hidden`` stages -> the float32 hidden vector
  [N, Cse] in scratch; ``se_fc2``: a block per (sample, J2 channels): FC2 the same way over
  w2 [C, Cse], bias, act2, ``gate`` stages -> the gate [N, C]. Same stages, same rounding, same
  pooled vector as se_fc; only the FC sums are split differently (deterministic both ways).
* ``se_scale``: y = x * gate[n, c] in float32, V elements per thread, stored in y's dtype.

se_fc takes the weights as float32 [Cin, Cout] (w1t [C, Cse], w2t [Cse, C]): consecutive
threads read consecutive outputs; se_fc1 / se_fc2 take them as [Cout, Cin] (w1 [Cse, C], w2
[C, Cse]): consecutive threads read consecutive inputs of one output. Numerics are
numpy_ops.se's: float16 values computed in float32, stages round where the unfused layers
stored. Where the ``se`` output feeds a 1x1 conv, the gate could instead scale that conv's
input channels (its weights per sample): not done.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np

from tftrt.engine.backends.cuda_source import (PRELUDE, _lit, _vec_type, activation_expr, ctype,
                                               grid_stride_source, load_expr, program_lines,
                                               store_expr)

THREADS = 256
# Enough threads in se_pool to fill a large GPU (H200: 132 SMs x 2048); a thread sums at
# least MIN_ROWS positions when the tensor is large enough.
THREADS_PER_SM = 2048
MIN_ROWS = 16
SMEM_LIMIT = 48 * 1024
# The split path: taken when the batch leaves at least half the SMs without a se_fc block and
# an FC matrix has at least SPLIT_MIN_WEIGHTS entries (below that one block does both FCs in
# about the time of the extra launch). Measured only at batch 1 and 128 (H200).
SPLIT_MIN_WEIGHTS = 16384
# Each thread of a split dot product sums at least MIN_PART products (KP is a power of two).
MIN_PART = 8


def split_default(n: int, c: int, cse: int, sms: int) -> bool:
    """Whether the gate of ``n`` samples goes through se_fc1 / se_fc2 rather than se_fc."""
    return 2 * n <= sms and c * cse >= SPLIT_MIN_WEIGHTS


def _parts(length: int) -> int:
    """Threads per dot product of ``length`` terms: a power of two, at most THREADS."""
    kp = 1
    while kp * 2 <= min(THREADS, length // MIN_PART):
        kp *= 2
    return kp


def _align(n: int) -> int:
    return (n + 255) // 256 * 256


def _stage_lines(stages: list, var: str, tag: str) -> List[str]:
    """C statements applying ``stages`` (numpy_ops.se_stages) to the float ``var``."""
    out = []
    for k, st in enumerate(stages):
        if "round" in st:
            dt = np.dtype(st["round"]).name
            if dt == "float16":
                out.append(f"{var} = h2f(f2h({var}));")
            elif dt != "float32":
                raise NotImplementedError(f"se stage rounds to {dt}: only float16 / float32")
            continue
        def operand(i: int):
            if i != 0:
                raise NotImplementedError(f"se stage program reads ${i}: only $0")
            return var, "float"

        out += program_lines(st["program"], operand, lambda i, k=k: f"{tag}{k}_{i}",
                             strict=True)
        out.append(f"{var} = (float)({tag}{k}_{len(st['program']) - 1});")
    return out


def _act(e, x: str) -> str:
    return x if e is None else activation_expr(e, x, "float")


class SeSource:
    """The kernels of one ``se`` layer (``kernel_names``) for fixed shapes, dtypes and attrs.

    Args:
      n, hw, c, cse: batch, spatial positions (product of the spatial dims), channels, the
        squeezed width.
      x_dtype, y_dtype: storage dtypes of x and y (float16 / float32).
      attrs: the layer's attrs (act1, act2, pool, hidden, gate).
      has_b1, has_b2: whether the FC steps add a bias.
      vec: elements per x load (a divisor of C; 1: scalar loads for unaligned pointers);
        None: the widest of 16 / 8 / 4 / 2 bytes that divides C.
      sms: the GPU's multiprocessor count (sizes the pool split, picks the FC path).
      split: True: se_fc1 / se_fc2 (outputs spread over blocks), False: se_fc (a block per
        sample), None: ``split_default``.
    Raises:
      ValueError: shapes the kernels do not take (shared memory of either FC path, checked
        whichever is taken, so what is supported does not depend on the batch).
    """

    def __init__(self, n: int, hw: int, c: int, cse: int, x_dtype: str, y_dtype: str,
                 attrs: dict, has_b1: bool, has_b2: bool, vec=None, sms: int = 132,
                 split=None):
        self.n, self.hw, self.c, self.cse = int(n), int(hw), int(c), int(cse)
        self.x_dtype, self.y_dtype = np.dtype(x_dtype).name, np.dtype(y_dtype).name
        isz = max(np.dtype(x_dtype).itemsize, np.dtype(y_dtype).itemsize)
        if vec is None:
            vec = next(v for v in (16 // isz, 8 // isz, 4 // isz, 2 // isz, 1)
                       if v >= 1 and c % v == 0)
        if c % vec:
            raise ValueError(f"vector width {vec} does not divide C={c}")
        self.vec = int(vec)
        self.cv = c // self.vec
        items = self.n * self.cv * self.hw
        rows = math.ceil(items / (sms * THREADS_PER_SM))
        self.rows = min(self.hw, max(rows, min(MIN_ROWS, self.hw)))
        self.splits = math.ceil(self.hw / self.rows)
        # FC1: each of the Cse dot products over C split into kp parts (one thread each)
        self.kp = max(1, min(THREADS // max(cse, 1), c // 16 or 1))
        # The split path: KP threads per dot product, J = THREADS / KP outputs per block
        self.kp1, self.kp2 = _parts(c), _parts(cse)
        self.j1, self.j2 = THREADS // self.kp1, THREADS // self.kp2
        self.fc1_tasks = self.n * math.ceil(cse / self.j1)
        self.fc2_tasks = self.n * math.ceil(c / self.j2)
        self.smem = max(4 * (c + self.kp * cse + cse), 4 * (c + THREADS),
                        4 * (cse + THREADS))
        if self.smem > SMEM_LIMIT:
            raise ValueError(f"se of C={c}, Cse={cse} needs {self.smem} bytes of shared "
                             f"memory in its FC kernels, more than {SMEM_LIMIT}")
        self.split = split_default(self.n, c, cse, sms) if split is None else bool(split)
        self.attrs, self.has_b1, self.has_b2 = attrs, bool(has_b1), bool(has_b2)
        self.it = "long long" if self.n * self.hw * c >= 2 ** 31 - 64 else "int"
        self.pool_work = self.n * self.splits * self.cv
        self.scale_work = self.n * self.hw * self.cv
        # Scratch: the pool partial sums, the gate, the hidden vector (split path), each at a
        # 256-byte offset
        self.part_bytes = 4 * self.n * self.splits * c
        self.gate_bytes = 4 * self.n * c
        self.hidden_bytes = 4 * self.n * cse if self.split else 0
        self.gate_offset = _align(self.part_bytes)
        self.hidden_offset = self.gate_offset + _align(self.gate_bytes)
        self.workspace = self.hidden_offset + self.hidden_bytes if self.split else \
            self.gate_offset + self.gate_bytes
        self.pool_source = self._pool()
        if self.split:
            self.fc_sources = (self._fc1(), self._fc2())
            self.kernel_names = ("se_pool", "se_fc1", "se_fc2", "se_scale")
        else:
            self.fc_sources = (self._fc(),)
            self.kernel_names = ("se_pool", "se_fc", "se_scale")
        self.scale_source = self._scale()

    @property
    def source(self) -> str:
        """All the path's kernels (``kernel_names``) in one translation unit."""
        return PRELUDE + "\n".join(s.replace(PRELUDE, "") for s in (
            self.pool_source, *self.fc_sources, self.scale_source))

    def _vload(self, name: str, ptr: str, dtype: str, at: str) -> List[str]:
        """Statements loading ``self.vec`` elements of ``ptr`` at ``at`` into ``name.e``."""
        V, t = self.vec, ctype(dtype)
        vt = _vec_type(V * np.dtype(dtype).itemsize)
        if V == 1 or vt is None:
            return [f"{t} {name}_e[{V}];",
                    f"for (int v = 0; v < {V}; ++v) {name}_e[v] = {ptr}[{at} + v];"]
        vt, chunks = vt
        return [f"union {{ {vt} u[{chunks}]; {t} e[{V}]; }} {name};",
                f"#pragma unroll\nfor (int q = 0; q < {chunks}; ++q) "
                f"{name}.u[q] = reinterpret_cast<const {vt}*>({ptr} + {at})[q];",
                f"{t}* {name}_e = {name}.e;"]

    def _pool(self) -> str:
        it, V, C, S, R = self.it, self.vec, self.c, self.splits, self.rows
        lines = [f"const {it} cv = t % {self.cv}, s = (t / {self.cv}) % {S}, "
                 f"b = t / ({self.cv * S});",
                 f"float acc[{V}];",
                 f"for (int v = 0; v < {V}; ++v) acc[v] = 0.f;",
                 f"const {it} end = s * {R} + {R} < {self.hw} ? s * {R} + {R} : {self.hw};",
                 f"for ({it} r = s * {R}; r < end; ++r) {{"]
        lines += ["  " + ln for ln in self._vload("xv", "x", self.x_dtype,
                                                    f"(b * {self.hw} + r) * {C} + cv * {V}")]
        lines += [f"  #pragma unroll\n  for (int v = 0; v < {V}; ++v) "
                  f"acc[v] += {load_expr(self.x_dtype, 'xv_e[v]')};", "}",
                  f"for (int v = 0; v < {V}; ++v) part[(b * {S} + s) * {C} + cv * {V} + v] "
                  f"= acc[v];"]
        return _grid_stride("se_pool", f"const {ctype(self.x_dtype)}* __restrict__ x, "
                            f"float* __restrict__ part", it, self.pool_work, lines)

    def _mean_lines(self) -> List[str]:
        """The pooled vector of sample ``b`` into the shared ``sp`` (se_fc and se_fc1 alike):
        the partial sums in slice order, divided by HW, the ``pool`` stages."""
        C, S = self.c, self.splits
        return [
            f"for (int c = threadIdx.x; c < {C}; c += blockDim.x) {{",
            "  float s = 0.f;",
            f"  for (int k = 0; k < {S}; ++k) s += part[((long long)b * {S} + k) * {C} + c];",
            f"  float v = s / {_lit(float(self.hw), 'float')};",
            *["  " + ln for ln in _stage_lines(self.attrs["pool"], "v", "p")],
            "  sp[c] = v;", "}", "__syncthreads();"]

    def _split_dot(self, kp: int, j: int, outs: int, length: int, vec: str, w: str,
                   out: str) -> List[str]:
        """se_fc1 / se_fc2's FC step: outputs ``out`` = o0 + t / kp (t < THREADS) of the
        block's ``j``, each the dot product of the shared ``vec`` with row ``out`` of ``w``
        [outs, length] split over kp threads (thread kp reads terms kp, kp + KP, ...:
        consecutive threads, consecutive weights), the parts added in a fixed tree in ``sk``;
        output t's sum ends in sk[t * kp]."""
        return [
            f"for (int t = threadIdx.x; t < {THREADS}; t += blockDim.x) {{",
            f"  const int p = t % {kp}, {out} = o0 + t / {kp};",
            "  float acc = 0.f;",
            f"  if ({out} < {outs})",
            f"    for (int i = p; i < {length}; i += {kp}) "
            f"acc += {vec}[i] * {w}[{out} * {length} + i];",
            "  sk[t] = acc;", "}", "__syncthreads();",
            "#pragma unroll", f"for (int h = {kp // 2}; h > 0; h >>= 1) {{",
            f"  for (int t = threadIdx.x; t < {j} * h; t += blockDim.x) {{",
            f"    const int i = (t / h) * {kp} + t % h;",
            "    sk[i] += sk[i + h];", "  }", "  __syncthreads();", "}"]

    def _fc1(self) -> str:
        a, C, K, KP, J = self.attrs, self.c, self.cse, self.kp1, self.j1
        b1 = " + b1[j]" if self.has_b1 else ""
        blocks = math.ceil(K / J)
        body = [
            f"__shared__ float sp[{C}];", f"__shared__ float sk[{THREADS}];",
            f"for (int task = blockIdx.x; task < {self.fc1_tasks}; task += gridDim.x) {{",
            f"  const int b = task / {blocks}, o0 = (task % {blocks}) * {J};",
            *["  " + ln for ln in self._mean_lines()],
            *["  " + ln for ln in self._split_dot(KP, J, K, C, "sp", "w1", "j")],
            *self._split_store(J, KP, K, "j", _act(a["act1"], f"(acc{b1})"), a["hidden"], "h",
                               "hidden")]
        params = ("const float* __restrict__ part, const float* __restrict__ w1, "
                  "const float* __restrict__ b1, float* __restrict__ hidden")
        return _kernel("se_fc1", params, body)

    @staticmethod
    def _split_store(J: int, KP: int, n_out: int, var: str, act: str, stages: list, tag: str,
                     out: str) -> List[str]:
        """The tail of a split FC task: each of its ``J`` outputs ``var`` (sum in ``sk``,
        bias and activation ``act``, then ``stages``) stored to ``out[b, var]``; then the
        barrier before the next task reuses the shared memory."""
        return [f"  for (int t = threadIdx.x; t < {J}; t += blockDim.x) {{",
                f"    const int {var} = o0 + t;",
                f"    if ({var} >= {n_out}) continue;",
                f"    float acc = sk[t * {KP}];",
                f"    float v = {act};",
                *["    " + ln for ln in _stage_lines(stages, "v", tag)],
                f"    {out}[(long long)b * {n_out} + {var}] = v;", "  }", "  __syncthreads();",
                "}"]

    def _fc2(self) -> str:
        a, C, K, KP, J = self.attrs, self.c, self.cse, self.kp2, self.j2
        b2 = " + b2[c]" if self.has_b2 else ""
        blocks = math.ceil(C / J)
        body = [
            f"__shared__ float sh[{K}];", f"__shared__ float sk[{THREADS}];",
            f"for (int task = blockIdx.x; task < {self.fc2_tasks}; task += gridDim.x) {{",
            f"  const int b = task / {blocks}, o0 = (task % {blocks}) * {J};",
            f"  for (int j = threadIdx.x; j < {K}; j += blockDim.x) "
            f"sh[j] = hidden[(long long)b * {K} + j];",
            "  __syncthreads();",
            *["  " + ln for ln in self._split_dot(KP, J, C, K, "sh", "w2", "c")],
            *self._split_store(J, KP, C, "c", _act(a["act2"], f"(acc{b2})"), a["gate"], "g",
                               "gate")]
        params = ("const float* __restrict__ hidden, const float* __restrict__ w2, "
                  "const float* __restrict__ b2, float* __restrict__ gate")
        return _kernel("se_fc2", params, body)

    def _fc(self) -> str:
        a, C, K, KP = self.attrs, self.c, self.cse, self.kp
        b1 = " + b1[j]" if self.has_b1 else ""
        b2 = " + b2[c]" if self.has_b2 else ""
        body = [
            f"__shared__ float sp[{C}];", f"__shared__ float sk[{KP * K}];",
            f"__shared__ float sh[{K}];",
            f"for (int b = blockIdx.x; b < {self.n}; b += gridDim.x) {{",
            *["  " + ln for ln in self._mean_lines()],
            f"  for (int t = threadIdx.x; t < {KP * K}; t += blockDim.x) {{",
            f"    const int j = t % {K}, kp = t / {K};",
            "    float acc = 0.f;",
            f"    for (int c = kp; c < {C}; c += {KP}) acc += sp[c] * w1t[c * {K} + j];",
            "    sk[t] = acc;", "  }", "  __syncthreads();",
            f"  for (int j = threadIdx.x; j < {K}; j += blockDim.x) {{",
            "    float acc = 0.f;",
            f"    for (int kp = 0; kp < {KP}; ++kp) acc += sk[kp * {K} + j];",
            f"    float v = {_act(a['act1'], f'(acc{b1})')};",
            *["    " + ln for ln in _stage_lines(a["hidden"], "v", "h")],
            "    sh[j] = v;", "  }", "  __syncthreads();",
            f"  for (int c = threadIdx.x; c < {C}; c += blockDim.x) {{",
            "    float acc = 0.f;",
            f"    for (int j = 0; j < {K}; ++j) acc += sh[j] * w2t[j * {C} + c];",
            f"    float v = {_act(a['act2'], f'(acc{b2})')};",
            *["    " + ln for ln in _stage_lines(a["gate"], "v", "g")],
            f"    gate[(long long)b * {C} + c] = v;", "  }", "  __syncthreads();", "}"]
        params = ("const float* __restrict__ part, const float* __restrict__ w1t, "
                  "const float* __restrict__ b1, const float* __restrict__ w2t, "
                  "const float* __restrict__ b2, float* __restrict__ gate")
        return _kernel("se_fc", params, body)

    def _scale(self) -> str:
        it, V, C = self.it, self.vec, self.c
        lines = [f"const {it} cv = t % {self.cv}, b = t / ({self.hw * self.cv});",
                 f"const {it} at = t * {V};"]
        lines += self._vload("xv", "x", self.x_dtype, "at")
        lines += self._vload("gv", "gate", "float32", f"b * {C} + cv * {V}")
        to = ctype(self.y_dtype)
        ov = _vec_type(V * np.dtype(self.y_dtype).itemsize)
        if V > 1 and ov is not None:
            vt, chunks = ov
            lines += [f"union {{ {vt} u[{chunks}]; {to} e[{V}]; }} yo;",
                      f"#pragma unroll\nfor (int v = 0; v < {V}; ++v) yo.e[v] = " +
                      store_expr(self.y_dtype,
                                 f"{load_expr(self.x_dtype, 'xv_e[v]')} * gv_e[v]") + ";",
                      f"#pragma unroll\nfor (int q = 0; q < {chunks}; ++q) "
                      f"reinterpret_cast<{vt}*>(y + at)[q] = yo.u[q];"]
        else:
            lines += [f"for (int v = 0; v < {V}; ++v) y[at + v] = " +
                      store_expr(self.y_dtype,
                                 f"{load_expr(self.x_dtype, 'xv_e[v]')} * gv_e[v]") + ";"]
        return _grid_stride("se_scale", f"const {ctype(self.x_dtype)}* __restrict__ x, "
                            f"const float* __restrict__ gate, {to}* __restrict__ y", it,
                            self.scale_work, lines)


def _kernel(name: str, params: str, body: List[str]) -> str:
    text = "\n  ".join("\n".join(body).split("\n"))
    return PRELUDE + f'\nextern "C" __global__ void {name}({params}) {{\n  {text}\n}}\n'


def _grid_stride(name: str, params: str, it: str, work: int, lines: List[str]) -> str:
    """cuda_source.grid_stride_source with ``lines`` as the body (work count argument last)."""
    return grid_stride_source(name, params, it, work, "\n    ".join("\n".join(lines).split("\n")))
