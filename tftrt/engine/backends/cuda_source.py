"""CUDA C source of the CuPy backend's pointwise kernels and epilogues, built as strings only.

This module imports neither CuPy nor a CUDA library, so what the GPU backend will compile can
be generated, checked and compiled (nvcc, or a host C++ compiler with the small shims the
tests define) on a machine without a GPU. ``cupy_kernels`` compiles these sources with NVRTC.

* :func:`op_expr` lowers one pointwise op of the IR (``network.POINTWISE_OPS``) to a C
  expression; activations of conv / matmul epilogues (``network.ACTIVATIONS``) are the
  same ops (:func:`activation_step`, :func:`activation_expr`).
* :func:`epilogue_program` turns an epilogue list into a pointwise program.
* :class:`PointwiseSource` is the kernel of a whole pointwise program for fixed shapes and
  dtypes: numpy broadcasting baked into the indexing, and a 16-byte vector variant when the
  operands allow it.

Numerics follow ``numpy_ops`` (the reference backend): float16 is stored as ``unsigned short``
and computed in float32; a step's value is kept in its compute type, rounded to half precision
first when the step's dtype is float16 (TF rounds every float16 op's result; a cast to float16
rounds too, as ``astype`` does); NaN propagates through relu / clip / min / max /
hard_sigmoid / elu as it does in numpy; integer steps that call a float function compute it
in double and truncate, as numpy's float64 result cast back does. Number literals take the
type of what they meet: the step's compute type, or, in a comparison, the other operand's
type; a fraction met by an integer stays a double (numpy promotes it too).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tftrt.engine.network import COMPARISONS, LOGICAL

# numpy dtype name -> (C storage type, C compute type)
CTYPES = {
    "float16": ("unsigned short", "float"), "float32": ("float", "float"),
    "float64": ("double", "double"), "bool": ("bool", "bool"),
    "int8": ("signed char", "int"), "uint8": ("unsigned char", "int"),
    "int16": ("short", "int"), "uint16": ("unsigned short", "int"),
    "int32": ("int", "int"), "uint32": ("unsigned int", "unsigned int"),
    "int64": ("long long", "long long"), "uint64": ("unsigned long long", "unsigned long long"),
}

# float16 <-> float32 through PTX (no CUDA headers needed). Device only: host builds of these
# sources (tests) swap this block for host conversions.
HALF_HELPERS = r"""
__device__ __forceinline__ float h2f(unsigned short h) {
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ unsigned short f2h(float f) {
  unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }"""

# Math helpers the expressions use: NaN-propagating max / min (numpy's maximum / minimum),
# Python's sign-of-divisor modulo, a softplus that does not overflow.
MATH_HELPERS = r"""
__device__ __forceinline__ float fmaxnan(float a, float b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ float fminnan(float a, float b) { return (a != a || a < b) ? a : b; }
__device__ __forceinline__ double fmaxnan(double a, double b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ double fminnan(double a, double b) { return (a != a || a < b) ? a : b; }
template <typename T> __device__ __forceinline__ T fmaxnan(T a, T b) { return a > b ? a : b; }
template <typename T> __device__ __forceinline__ T fminnan(T a, T b) { return a < b ? a : b; }
// integer pow, exact and wrapping on overflow as TF's (double lost int64 digits past 2**53);
// e < 0 as numpy's float64 power truncated on x86: |a| >= 2 gives
// 0, 0 gives inf, which converts to INT64_MIN (CUDA's conversion saturates: INT64_MAX, -1
// as int32, where the numpy backend has INT64_MIN and 0: H200, 2026-12-02)
__device__ __forceinline__ long long ipow(long long a, long long e) {
  if (e < 0) return a == 1 ? 1 : a == -1 ? ((e & 1) ? -1 : 1) :
      a == 0 ? (long long)0x8000000000000000ull : 0;
  unsigned long long r = 1ull, b = (unsigned long long)a;
  while (e) { if (e & 1) r *= b; b *= b; e >>= 1; }
  return (long long)r; }
// an integer step's float power in float64, as numpy's: CUDA's pow is not correctly rounded
// (9 ** 0.5 came out below 3, truncated to 2; 94906267 ** 2 one ulp above numpy's), so the
// square and the square root, correctly rounded here as in numpy, go that way
__device__ __forceinline__ double fpow(double a, double b) {
  return b == 2.0 ? a * a : (b == 0.5 && a >= 0.0) ? sqrt(a) : pow(a, b); }
template <typename T> __device__ __forceinline__ T pymod(T a, T b) {
  T r = a % b; if (r != 0 && ((r < 0) != (b < 0))) r += b; return r; }
__device__ __forceinline__ float pymod(float a, float b) {
  float r = fmodf(a, b); if (r != 0.f && ((r < 0.f) != (b < 0.f))) r += b; return r; }
__device__ __forceinline__ double pymod(double a, double b) {
  double r = fmod(a, b); if (r != 0. && ((r < 0.) != (b < 0.))) r += b; return r; }
// two's-complement add / sub / mul / neg of int and long long, wrapping as TF's and numpy's:
// signed overflow is undefined in C++, and nvcc folded `x * x < 0` to false (helper hunt)
__device__ __forceinline__ int wadd(int a, int b) { return (int)((unsigned)a + (unsigned)b); }
__device__ __forceinline__ int wsub(int a, int b) { return (int)((unsigned)a - (unsigned)b); }
__device__ __forceinline__ int wmul(int a, int b) { return (int)((unsigned)a * (unsigned)b); }
__device__ __forceinline__ int wneg(int a) { return (int)(0u - (unsigned)a); }
__device__ __forceinline__ long long wadd(long long a, long long b) {
  return (long long)((unsigned long long)a + (unsigned long long)b); }
__device__ __forceinline__ long long wsub(long long a, long long b) {
  return (long long)((unsigned long long)a - (unsigned long long)b); }
__device__ __forceinline__ long long wmul(long long a, long long b) {
  return (long long)((unsigned long long)a * (unsigned long long)b); }
__device__ __forceinline__ long long wneg(long long a) {
  return (long long)(0ull - (unsigned long long)a); }
__device__ __forceinline__ float softplusf(float x) {
  return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }
"""

PRELUDE = HALF_HELPERS + MATH_HELPERS

_FLOAT_CTS = ("float", "double")


def ctype(dtype) -> str:
    return CTYPES[np.dtype(dtype).name][0]


def comptype(dtype) -> str:
    return CTYPES[np.dtype(dtype).name][1]


def load_expr(dtype, ptr_expr: str) -> str:
    """C expression reading one element as its compute type."""
    return f"h2f({ptr_expr})" if np.dtype(dtype) == np.float16 else f"({ptr_expr})"


def store_expr(dtype, value: str) -> str:
    """C expression converting a compute value to the storage type."""
    if np.dtype(dtype) == np.float16:
        return f"f2h((float)({value}))"
    return f"({ctype(dtype)})({value})"


def _lit(v, ct: str) -> str:
    """A number literal of C type ``ct``; a fraction (or inf / NaN) met by an integer or bool
    type stays a double, so that ``x * 0.5`` on ints is computed as numpy computes it."""
    if v is None:
        return "0"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    f = float(v)
    if ct not in _FLOAT_CTS and (not math.isfinite(f) or f != int(f)):
        ct = "double"
    if ct in _FLOAT_CTS:
        if math.isnan(f):
            return "(0.0/0.0)" if ct == "double" else "(0.f/0.f)"
        if math.isinf(f):
            return ("-" if f < 0 else "") + ("(1.0/0.0)" if ct == "double" else "(1.f/0.f)")
        return repr(f) + ("" if ct == "double" else "f")
    return str(int(v)) + ("LL" if "long" in ct else "")


def _fn(ct: str, name: str, *args: str) -> str:
    """A C math function call in the compute type: ``expf`` for float, ``exp`` for double;
    integer / bool operands are computed in double (numpy's float64 result of an int op)."""
    if ct == "float":
        return f"{name}f({', '.join(args)})"
    if ct == "double":
        return f"{name}({', '.join(args)})"
    return f"{name}({', '.join(f'(double)({a})' for a in args)})"


def op_expr(op: str, args: List[Optional[str]], ct: str, p: dict,
            arg_types: Optional[Sequence[Optional[str]]] = None) -> str:
    """C expression of one pointwise op (see network.POINTWISE_OPS).

    Args:
      op: the op name.
      args: C expressions of the operands (None for an absent clip bound).
      ct: the step's C compute type (the result is converted to it by the caller).
      p: the step's params (alpha, beta, gamma, approximate, to, fmod).
      arg_types: C types of ``args`` where known (None for an integer literal, "double"
        for a float one met by an integer step); decides NaN tests on integer operands, and
        for integer steps the wrapping helpers or numpy's float64 power.
    Raises:
      NotImplementedError: ``op`` has no lowering.
    """
    x = args[0] if args else None
    xt = (arg_types[0] if arg_types else None) or ct
    fl = ct in _FLOAT_CTS
    # a float operand of an integer step (program_lines types float literals "double")
    floats = [t in _FLOAT_CTS for t in (arg_types or ())]
    wrap = ct in ("int", "long long") and not any(floats)  # signed: wrapping helpers
    F = lambda n, *a: _fn(ct, n, *(a or (x,)))  # noqa: E731
    L = lambda v: _lit(v, ct)  # noqa: E731
    unary = {
        "identity": lambda: x, "neg": lambda: f"wneg(({ct})({x}))" if wrap else f"(-{x})",
        "reciprocal": lambda: f"({L(1)}/{x})" if fl else f"({_lit(1.0, 'double')}/{x})",
        "abs": lambda: F("fabs") if fl else
        f"({x} < 0 ? wneg(({ct})({x})) : {x})" if wrap else f"({x} < 0 ? -{x} : {x})",
        "exp": lambda: F("exp"), "log": lambda: F("log"), "sqrt": lambda: F("sqrt"),
        "floor": lambda: F("floor") if fl else x, "ceil": lambda: F("ceil") if fl else x,
        "round": lambda: F("rint") if fl else x,  # half to even, as numpy / ONNX
        "sign": lambda: f"(({x} > 0) - ({x} < 0))" if not fl else
        f"({x} > 0 ? {L(1)} : ({x} < 0 ? {L(-1)} : {x}))",
        **{n: (lambda n=n: F(n)) for n in (
            "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
            "atanh", "erf", "tanh")},
        "relu": lambda: f"({x} < 0 ? {L(0)} : {x})",
        "sigmoid": lambda: f"({L(1)} / ({L(1)} + {F('exp', f'-{x}')}))",
        # x * sigmoid(x), written as numpy_ops does (x / (1 + e^-x) differs in the last ulp)
        "silu": lambda: f"({x} * ({L(1)} / ({L(1)} + {F('exp', f'-{x}')})))",
        "softsign": lambda: f"({x} / ({L(1)} + {F('fabs')}))",
        "not": lambda: f"(!{x})",
        "isnan": lambda: f"isnan({x})" if xt in _FLOAT_CTS else "false",
        "isinf": lambda: f"isinf({x})" if xt in _FLOAT_CTS else "false",
    }
    if op in unary:
        return unary[op]()
    if op == "leaky_relu":
        return f"({x} >= 0 ? {x} : {x} * {L(p['alpha'])})"
    if op in ("elu", "selu"):
        e = f"({x} > 0 ? {x} : {L(p['alpha'])} * {F('expm1', f'fminnan({x}, {L(0)})')})"
        return e if op == "elu" else f"({L(p['gamma'])} * {e})"
    if op == "hard_sigmoid":  # numpy's clip: NaN stays NaN
        lin = f"({ct})({L(p['alpha'])} * {x} + {L(p['beta'])})"
        return f"fminnan(fmaxnan({lin}, ({ct}){L(0)}), ({ct}){L(1)})"
    if op == "softplus":
        if ct == "float":
            return f"softplusf({x})"
        xd = x if ct == "double" else f"(double)({x})"
        return f"(fmax({xd}, 0.0) + log1p(exp(-fabs({xd}))))"
    if op == "gelu":
        if p.get("approximate", "none") == "tanh":
            inner = f"{L(0.7978845608028654)} * ({x} + {L(0.044715)} * {x} * {x} * {x})"
            return f"({L(0.5)} * {x} * ({L(1)} + {F('tanh', inner)}))"
        return f"({L(0.5)} * {x} * ({L(1)} + {F('erf', f'{x} * {L(0.7071067811865476)}')}))"
    if op == "cast":
        to = np.dtype(p["to"])
        if to == np.bool_:
            return f"({x} != 0)"
        if to == np.float16:  # rounded to half precision, kept as float (numpy's astype)
            return f"h2f(f2h((float)({x})))"
        if comptype(to) != ctype(to):  # int8 / uint8 / int16 / uint16
            if xt in _FLOAT_CTS and to.itemsize == 1:
                # saturated as TF's CPU kernel and the numpy backend do (NaN to the
                # minimum: fmax takes the bound); a C cast of an out-of-range float is
                # undefined
                info = np.iinfo(to)
                lo, hi = f"({xt}){info.min}", f"({xt}){info.max}"
                return (f"(({comptype(to)})({ctype(to)})"
                        f"(fmin(fmax(({xt})({x}), {lo}), {hi})))")
            return f"(({comptype(to)})({ctype(to)})({x}))"  # integers wrap as astype does
        return f"(({comptype(to)})({x}))"
    if op == "clip":
        lo, hi = args[1], args[2]
        y = x
        if lo is not None:
            y = f"fmaxnan(({ct})({y}), ({ct})({lo}))"
        if hi is not None:
            y = f"fminnan(({ct})({y}), ({ct})({hi}))"
        return y
    a, b = args[0], args[1] if len(args) > 1 else None
    binary = {
        "add": f"({a} + {b})", "sub": f"({a} - {b})", "mul": f"({a} * {b})",
        "div": f"({a} / {b})",
        "max": f"fmaxnan(({ct})({a}), ({ct})({b}))", "min": f"fminnan(({ct})({a}), ({ct})({b}))",
        "equal": f"({a} == {b})", "less": f"({a} < {b})", "less_equal": f"({a} <= {b})",
        "greater": f"({a} > {b})", "greater_equal": f"({a} >= {b})",
        "and": f"((bool)({a}) && (bool)({b}))", "or": f"((bool)({a}) || (bool)({b}))",
        "xor": f"((bool)({a}) != (bool)({b}))",
        "prelu": (f"({a} < 0 ? wmul(({ct})({a}), ({ct})({b})) : {a})" if wrap else
                  f"({a} < 0 ? {a} * {b} : {a})"),
    }
    if wrap and op in ("add", "sub", "mul"):
        return f"w{op}(({ct})({a}), ({ct})({b}))"
    if op in binary:
        return binary[op]
    if op == "pow":
        if fl:
            return f"{_fn(ct, 'pow', f'({ct})({a})', f'({ct})({b})')}"
        if any(floats):  # an integer step with a float operand (ONNX): numpy's float64 power
            return f"(({ct})fpow((double)({a}), (double)({b})))"
        return f"(({ct})ipow((long long)({a}), (long long)({b})))"
    if op == "mod":
        if p.get("fmod"):
            return _fn(ct, "fmod", a, b) if fl else f"({a} % {b})"
        return f"pymod(({ct})({a}), ({ct})({b}))"
    if op == "where":
        return f"({args[0]} ? {args[1]} : {args[2]})"
    raise NotImplementedError(f"pointwise op {op!r} has no CUDA lowering")


def activation_step(e: dict) -> dict:
    """An epilogue {"op": "act", "fn": f, ...} as a pointwise step on %prev."""
    fn = e["fn"]
    if fn == "clip":
        return {"op": "clip", "args": [None, e.get("min"), e.get("max")]}
    step = {k: v for k, v in e.items() if k not in ("op", "fn")}
    step.update(op=fn, args=[None])
    return step


def activation_expr(e: dict, x: str, ct: str = "float") -> str:
    """C expression of epilogue activation ``e`` applied to ``x`` (compute type ``ct``)."""
    st = activation_step(e)
    args = [x] + [None if a is None else _lit(a, ct) for a in st["args"][1:]]
    return op_expr(st["op"], args, ct, st, [ct])


def epilogue_program(epilogue: Sequence[dict], operand_index: Dict[int, int],
                     dtype: str = "float32") -> List[dict]:
    """Epilogue ops as a pointwise program over [y, operands...].

    Args:
      epilogue: the layer's epilogue list.
      operand_index: layer input index -> program input index ($k) for bias/scale/add operands.
      dtype: compute dtype of the chain (float32 for float16 storage).
    """
    prog: List[dict] = [{"op": "identity", "args": ["$0"], "dtype": dtype}]
    for e in epilogue:
        prev = f"%{len(prog) - 1}"
        if e["op"] in ("bias", "add"):
            prog.append({"op": "add", "args": [prev, f"${operand_index[e['input']]}"],
                         "dtype": dtype})
        elif e["op"] == "scale":
            prog.append({"op": "mul", "args": [prev, f"${operand_index[e['input']]}"],
                         "dtype": dtype})
        elif e["op"] == "act":
            st = activation_step(e)
            st["args"][0] = prev
            st["dtype"] = dtype
            prog.append(st)
        else:
            raise NotImplementedError(f"epilogue op {e['op']!r}")
    return prog


# Kernels launched with ``cupy_kernels.launch`` take their work count as the last parameter,
# ``const long long work``, instead of baking it into the source: the work count is the one
# thing most kernels' sources take from the batch size, so the engines of a profile's batch
# sizes share their compiled kernels (CuPy caches modules by source).
WORK_PARAM = "const long long work"


def grid_stride_source(name: str, params: str, it: str, work: int, body: str,
                       helpers: str = "") -> str:
    """CUDA source of kernel ``name(params, work)`` running ``body`` for every index ``t`` in
    [0, work) in a grid-stride loop (``it``: the index type, wide enough for ``work``; the
    count itself is the last argument, :data:`WORK_PARAM`); ``helpers``: device functions
    placed before the kernel."""
    return PRELUDE + helpers + f"""
extern "C" __global__ void {name}({params}, {WORK_PARAM}) {{
  for ({it} t = ({it})blockIdx.x * blockDim.x + threadIdx.x; t < work;
       t += ({it})gridDim.x * blockDim.x) {{
    {body}
  }}
}}
"""


# --- pointwise programs --------------------------------------------------------------------------
def bcast_mode(in_shape: Tuple[int, ...], out_shape: Tuple[int, ...]):
    """How input elements map to output elements: full, scalar, last (per last-axis vector),
    or general (strides aligned to the output, 0 on broadcast axes)."""
    size = int(np.prod(in_shape, dtype=np.int64))
    if tuple(in_shape) == tuple(out_shape):
        return ("full",)
    if size == 1:
        return ("scalar",)
    r = len(out_shape)
    shp = (1,) * (r - len(in_shape)) + tuple(in_shape)
    if out_shape and all(d == 1 for d in shp[:-1]) and shp[-1] == out_shape[-1]:
        return ("last", out_shape[-1])
    strides, acc = [0] * r, 1
    for k in range(r - 1, -1, -1):
        strides[k] = acc if shp[k] != 1 else 0
        acc *= shp[k]
    return ("general", tuple(strides))


def _literal_type(op: str, k: int, ct: str, typed: Sequence[Optional[str]]) -> str:
    """C type a literal argument ``k`` of a step takes: the step's compute type, except in
    comparisons / logical ops (bool steps), where it meets the other operand's type."""
    if op in COMPARISONS or op in LOGICAL:
        return next((t for t in typed if t is not None), "double")
    if op == "where" and k == 0:
        return "bool"
    return ct


def program_lines(program: Sequence[dict], operand: Callable[[int], Tuple[str, str]],
                  name: Callable[[int], str], strict: bool = False) -> List[str]:
    """C declarations computing a pointwise ``program`` (PointwiseSource's statements): step
    k is stored in the variable ``name(k)`` of its compute type. ``operand(i)`` gives the
    (C expression, compute type) of program input ``$i``; ``%k`` reads step k; numbers are
    literals of the type the step takes. ``strict``: any other string argument is an error
    (else it is left out, as for a step's unused slot)."""
    lines: List[str] = []
    types: List[str] = []
    for k, st in enumerate(program):
        ct = comptype(st.get("dtype") or "float32")
        args: List[Optional[str]] = []
        typed: List[Optional[str]] = []
        for a in st["args"]:
            if isinstance(a, str) and a[:1] == "$":
                expr, t = operand(int(a[1:]))
                args.append(expr)
                typed.append(t)
            elif isinstance(a, str) and a[:1] == "%":
                args.append(name(int(a[1:])))
                typed.append(types[int(a[1:])])
            elif isinstance(a, str) and strict:
                raise NotImplementedError(f"pointwise program reads {a!r}")
            else:
                args.append(None)
                typed.append(None)
        for j, a in enumerate(st["args"]):
            if a is not None and not isinstance(a, str):
                args[j] = _lit(a, _literal_type(st["op"], j, ct, typed))
                if isinstance(a, (float, np.floating)) and ct not in _FLOAT_CTS:
                    # a float met by an int step (spelled 2 for 2.0): op_expr's float path
                    typed[j] = "double"
        expr = f"({ct})({op_expr(st['op'], args, ct, st, typed)})"
        dt = st.get("dtype")
        if dt == "float16":  # TF rounds each float16 op's result (numpy_ops too)
            expr = f"h2f(f2h({expr}))"
        elif dt and np.dtype(dt).kind in "iu" and comptype(dt) != ctype(dt):
            # int8 / uint8 / int16 / uint16 computed in int wrap at every step, as numpy's
            # and TF's do: only the final store narrowed them (uint8 x - 128 stayed negative)
            expr = f"({ct})({ctype(dt)})({expr})"
        lines.append(f"{ct} {name(k)} = {expr};")
        types.append(ct)
    return lines


class PointwiseSource:
    """CUDA source of a pointwise program for fixed input / output shapes and dtypes.

    Kernels ``pw`` (one element per thread, grid-stride) and ``pw_vec`` (``vec`` elements per
    thread with 16-byte loads of full-size operands; only when :attr:`vectorizable`). Both
    take the used inputs (:attr:`used`, in order), the output pointer, then their work count
    (:meth:`work`: elements, or vectors for ``pw_vec``; :data:`WORK_PARAM`). The sources are
    generated when the object is made, so an op without a lowering fails then.
    """

    def __init__(self, program: List[dict], in_shapes: Sequence[Tuple[int, ...]],
                 in_dtypes: Sequence[str], out_shape: Tuple[int, ...], out_dtype: str):
        self.out_shape = tuple(int(d) for d in out_shape)
        self.out_dtype = np.dtype(out_dtype).name
        self.in_dtypes = [np.dtype(d).name for d in in_dtypes]
        self.modes = [bcast_mode(tuple(s), self.out_shape) for s in in_shapes]
        self.n = int(np.prod(self.out_shape, dtype=np.int64))
        self.program = program
        used = set()
        for st in program:
            for a in st["args"]:
                if isinstance(a, str) and a[:1] == "$":
                    used.add(int(a[1:]))
        self.used = sorted(used)
        sizes = [np.dtype(self.in_dtypes[i]).itemsize for i in self.used
                 if self.modes[i][0] == "full"] + [np.dtype(self.out_dtype).itemsize]
        self.vec = max(1, 16 // min(sizes))
        self.vectorizable = self.n % self.vec == 0 and self.n >= self.vec and all(
            self.modes[i][0] in ("full", "scalar", "last") for i in self.used)
        # Per-channel operands ("last", e.g. a batch norm's scale and shift) whose channel count
        # the vector width divides are loaded as vectors too, at the first element's channel:
        # one load and one modulo per thread instead of one per element.
        self.vec_last = {i for i in self.used if self.modes[i][0] == "last" and
                         self.modes[i][1] % self.vec == 0 and
                         _vec_type(self.vec * np.dtype(self.in_dtypes[i]).itemsize)}
        self.sources = {False: self.source(False)}
        if self.vectorizable:
            self.sources[True] = self.source(True)

    @staticmethod
    def kernel_name(vec: bool) -> str:
        return "pw_vec" if vec else "pw"

    def work(self, vec: bool) -> int:
        """The work count kernel :meth:`kernel_name` takes (its grid-stride loop's bound)."""
        return self.n // self.vec if vec else self.n

    def _body(self, idx: str, loads: Dict[int, str]) -> str:
        lines = ["    " + line for line in program_lines(
            self.program, lambda i: (loads[i], comptype(self.in_dtypes[i])), lambda k: f"v{k}")]
        last = len(self.program) - 1
        lines.append(f"    out[{idx}] = {store_expr(self.out_dtype, f'v{last}')};")
        return "\n".join(lines)

    def _index(self, i: int, idx: str) -> str:
        m = self.modes[i]
        if m[0] == "full":
            return idx
        if m[0] == "scalar":
            return "0"
        if m[0] == "last":
            return f"({idx} % {m[1]})"
        terms = []
        dims = self.out_shape
        for k in range(len(dims)):
            inner = int(np.prod(dims[k + 1:], dtype=np.int64))
            if m[1][k]:
                terms.append(f"(({idx} / {inner}) % {dims[k]}) * {m[1][k]}")
        return "(" + (" + ".join(terms) or "0") + ")"

    def source(self, vec: bool) -> str:
        """CUDA source of kernel :meth:`kernel_name` (``vec``: the vector variant)."""
        it = "long long" if self.n >= 2 ** 31 - 64 else "int"
        params = [f"const {ctype(self.in_dtypes[i])}* __restrict__ in{i}" for i in self.used]
        params.append(f"{ctype(self.out_dtype)}* out")
        params.append(WORK_PARAM)
        name = self.kernel_name(vec)
        src = [PRELUDE, f'extern "C" __global__ void {name}({", ".join(params)}) {{']
        if not vec:
            src.append(f"  for ({it} i = ({it})blockIdx.x * blockDim.x + threadIdx.x; "
                       f"i < work; i += ({it})gridDim.x * blockDim.x) {{")
            loads = {}
            for i in self.used:
                ptr = "in%d[%s]" % (i, self._index(i, "i"))
                src.append(f"    {comptype(self.in_dtypes[i])} x{i} = "
                           f"{load_expr(self.in_dtypes[i], ptr)};")
                loads[i] = f"x{i}"
            src.append(self._body("i", loads))
            src.append("  }\n}")
            return "\n".join(src)
        V = self.vec
        src.append(f"  for ({it} j = ({it})blockIdx.x * blockDim.x + threadIdx.x; j < work; "
                   f"j += ({it})gridDim.x * blockDim.x) {{")
        src.append(f"    const {it} base = j * {V};")
        for i in self.used:
            if self.modes[i][0] != "full" and i not in self.vec_last:
                continue
            t, isz = ctype(self.in_dtypes[i]), np.dtype(self.in_dtypes[i]).itemsize
            vt, chunks = _vec_type(V * isz)
            at = "base" if self.modes[i][0] == "full" else f"(base % {self.modes[i][1]})"
            src.append(f"    union {{ {vt} u[{chunks}]; {t} e[{V}]; }} b{i};")
            src.append(f"    #pragma unroll\n    for (int c = 0; c < {chunks}; ++c) "
                       f"b{i}.u[c] = reinterpret_cast<const {vt}*>(in{i} + {at})[c];")
        to, osz = ctype(self.out_dtype), np.dtype(self.out_dtype).itemsize
        ochunks = V * osz // 16
        src.append(f"    union {{ uint4 u[{ochunks}]; {to} e[{V}]; }} bo;")
        src.append(f"    #pragma unroll\n    for (int v = 0; v < {V}; ++v) {{")
        loads = {}
        for i in self.used:
            m = self.modes[i]
            if m[0] == "full" or i in self.vec_last:
                e = f"b{i}.e[v]"
            elif m[0] == "scalar":
                e = f"in{i}[0]"
            else:
                e = f"in{i}[(base + v) % {m[1]}]"
            src.append(f"      {comptype(self.in_dtypes[i])} x{i} = "
                       f"{load_expr(self.in_dtypes[i], e)};")
            loads[i] = f"x{i}"
        body = self._body("__IDX__", loads).replace("out[__IDX__]", "bo.e[v]")
        src.append(body.replace("\n    ", "\n      "))
        src.append("    }")
        src.append(f"    #pragma unroll\n    for (int c = 0; c < {ochunks}; ++c) "
                   f"reinterpret_cast<uint4*>(out + base)[c] = bo.u[c];")
        src.append("  }\n}")
        return "\n".join(src)


def _vec_type(nbytes: int):
    """(C type, count) moving ``nbytes`` in 16 / 8 / 4-byte words, or None."""
    for size, t in ((16, "uint4"), (8, "uint2"), (4, "unsigned int")):
        if nbytes % size == 0:
            return t, nbytes // size
    return None


# --- depthwise convolution (NHWC, group == C_in) -------------------------------------------------
def dw_operand_modes(net, layer) -> Dict[int, Tuple[str, str]]:
    """The depthwise kernels' epilogue operands of conv ``layer`` of ``net``: layer input
    index -> ("vec" (per output channel) | "full" (the output's shape), dtype name). Raises
    ValueError for any other broadcast."""
    ys = tuple(net.tensors[layer.outputs[0]].shape)
    modes = {}
    for e in layer.epilogue:
        if "input" in e:
            t = net.tensors[layer.inputs[e["input"]]]
            s = tuple(t.shape)
            mode = "vec" if s == (ys[-1],) else "full" if s == ys else None
            if mode is None:
                raise ValueError(f"epilogue operand of shape {s} for y {ys}: only per channel "
                                 f"or full")
            modes[e["input"]] = (mode, np.dtype(t.dtype).name)
    return modes


def conv_kernel_params(in_dtype: str, out_dtype: str,
                       operand_modes: Dict[int, Tuple[str, str]]) -> Tuple[List[int], List]:
    """The parameters of a direct conv kernel with a fused epilogue (``dw_tiled``,
    ``stem_conv``): (operand layer-input indices in parameter order, [(C type, name)] of x,
    the float32 filter ``wt``, the operands ``e<i>``, y)."""
    operands = sorted(operand_modes)
    params = ([(f"const {ctype(in_dtype)}*", "x"), ("const float*", "wt")] +
              [(f"const {ctype(operand_modes[i][1])}*", f"e{i}") for i in operands] +
              [(f"{ctype(out_dtype)}*", "y")])
    return operands, params


def _dw_epilogue(epilogue, operand_modes, acc: str, lane: str) -> List[str]:
    """C statements applying ``epilogue`` to the float ``acc`` of output channel ``k`` at
    ``oidx`` (``lane``: the offset of a vector lane, "" or " + v"); operand ``i`` is ``e<i>``,
    per channel ("vec") or of the output's shape ("full")."""
    out = []
    for e in epilogue:
        if e["op"] in ("bias", "scale", "add"):
            i = e["input"]
            mode, dt = operand_modes[i]
            src = load_expr(dt, f"e{i}[k{lane}]" if mode == "vec" else f"e{i}[oidx{lane}]")
            out.append(f"{acc} = {acc} {'*' if e['op'] == 'scale' else '+'} {src};")
        else:
            out.append(f"{acc} = {activation_expr(e, acc)};")
    return out


class DepthwiseConvSource:
    """CUDA source of kernel ``dwconv(x, wt, *operands, y)``: 2-D depthwise convolution, NHWC,
    output channel k reads input channel k // mult, with the layer's epilogue fused. ``wt`` is
    the filter as float32 [kh * kw, K]; :attr:`operands` lists the epilogue operands' layer
    input indices in parameter order, then the work count (:data:`WORK_PARAM`: :attr:`work`
    threads in a grid-stride loop, :attr:`vec_work` for ``dwconv_vec``). Each thread
    computes TW consecutive output columns of one channel, keeping the input row segment in
    registers. ``quant`` (a ``cuda_source_dw.Quant``): an INT8 / FP8 layer (tactic
    ``q_dw_direct``): x's quantized values (an int8 x as it is), ``wt`` the weight's codes /
    E4M3 values, the quantized epilogue and int8 store (``cuda_source_dw.quant_epilogue``)."""

    TW = 4

    def __init__(self, x_shape, k_hw, strides, dilations, pads, out_shape, mult: int,
                 in_dtype: str, out_dtype: str, epilogue: Sequence[dict],
                 operand_modes: Dict[int, Tuple[str, str]], quant=None):
        from tftrt.engine.backends import cuda_source_dw as DW  # (it imports this module)
        self.quant = quant
        in_dtype, out_dtype = np.dtype(in_dtype).name, np.dtype(out_dtype).name
        if quant is not None:
            DW.check_quant(quant, in_dtype, out_dtype, "direct")
        n, h, w, c = x_shape
        _, ho, wo, kout = out_shape
        kh, kw = k_hw
        sh, sw = strides
        dh, dw = dilations
        ph, pw = pads[0], pads[1]
        geometry = (n, h, w, c, ho, wo, kout, kh, kw, sh, sw, dh, dw, ph, pw)
        tw = self.TW
        wtiles = (wo + tw - 1) // tw
        self.work = n * ho * wtiles * kout
        span = (tw - 1) * sw + (kw - 1) * dw + 1
        ict, oct_ = ctype(in_dtype), ctype(out_dtype)
        it = "long long" if n * h * w * c >= 2 ** 31 - 64 or n * ho * wo * kout >= 2 ** 31 - 64 \
            else "int"
        # epilogue operands: layer input index -> ("vec"|"full", dtype)
        ops = sorted(operand_modes)
        params = [f"const {ict}* __restrict__ x", "const float* __restrict__ wt"]
        params += [f"const {ctype(operand_modes[i][1])}* __restrict__ e{i}" for i in ops]
        params.append(f"{oct_}* __restrict__ y")
        params.append(WORK_PARAM)
        epi_src, store = self._epilogue(epilogue, operand_modes, out_dtype, "acc", "")
        epi_src = "\n        ".join(epi_src)
        staged = DW.staged_expr(quant, in_dtype, load_expr(in_dtype, f"xrow[({it})iw * {c}]"))
        self.source = PRELUDE + DW.quant_helpers(quant) + f"""
extern "C" __global__ void dwconv({", ".join(params)}) {{
  for ({it} t = ({it})blockIdx.x * blockDim.x + threadIdx.x; t < work;
       t += ({it})gridDim.x * blockDim.x) {{
    const int k = t % {kout};
    {it} r = t / {kout};
    const int wt_i = r % {wtiles}; r /= {wtiles};
    const int oh = r % {ho};
    const int nb = r / {ho};
    const int c = k / {mult};
    const int ow0 = wt_i * {tw};
    float acc_v[{tw}];
    #pragma unroll
    for (int j = 0; j < {tw}; ++j) acc_v[j] = 0.f;
    #pragma unroll
    for (int a = 0; a < {kh}; ++a) {{
      const int ih = oh * {sh} - {ph} + a * {dh};
      if (ih < 0 || ih >= {h}) continue;
      const {ict}* xrow = x + ((({it})nb * {h} + ih) * {w}) * {c} + c;
      float seg[{span}];
      const int iw0 = ow0 * {sw} - {pw};
      #pragma unroll
      for (int s = 0; s < {span}; ++s) {{
        const int iw = iw0 + s;
        seg[s] = (iw >= 0 && iw < {w}) ? {staged} : 0.f;
      }}
      #pragma unroll
      for (int b = 0; b < {kw}; ++b) {{
        const float wv = wt[(a * {kw} + b) * {kout} + k];
        #pragma unroll
        for (int j = 0; j < {tw}; ++j) acc_v[j] += seg[j * {sw} + b * {dw}] * wv;
      }}
    }}
    #pragma unroll
    for (int j = 0; j < {tw}; ++j) {{
      const int ow = ow0 + j;
      if (ow < {wo}) {{
        const {it} oidx = ((({it})nb * {ho} + oh) * {wo} + ow) * {kout} + k;
        float acc = acc_v[j];
        {epi_src}
        y[oidx] = {store};
      }}
    }}
  }}
}}
"""
        self.operands = ops
        self.vec, self.vec_source, self.vec_work = 1, None, 0
        V = 16 // np.dtype(in_dtype).itemsize
        if mult == 1 and V > 1 and c % V == 0:
            self.vec = V
            self.vec_source = self._vector_source(geometry, in_dtype, out_dtype, epilogue,
                                                  operand_modes, params, it)

    def _epilogue(self, epilogue, operand_modes, out_dtype, acc, lane):
        """(statements applying the epilogue to ``acc``, the C expression stored)."""
        from tftrt.engine.backends import cuda_source_dw as DW
        if self.quant is None:
            return _dw_epilogue(epilogue, operand_modes, acc, lane), store_expr(out_dtype, acc)
        return DW.quant_epilogue(self.quant, out_dtype, epilogue, operand_modes, acc, lane)

    def _vector_source(self, geometry, in_dtype, out_dtype, epilogue, operand_modes, params,
                       it) -> str:
        """Kernel ``dwconv_vec``: each thread computes V consecutive channels (one 16-byte
        load of the input per tap column, float4 loads of the filter) of TW output columns;
        for inputs whose channels V divides (mult 1). Buffers must be 16-byte aligned.
        ``geometry``: the sizes __init__ unpacked, same names."""
        from tftrt.engine.backends import cuda_source_dw as DW
        n, h, w, c, ho, wo, kout, kh, kw, sh, sw, dh, dw, ph, pw = geometry
        V = self.vec
        tw = self.TW
        span = (tw - 1) * sw + (kw - 1) * dw + 1
        if span * V > 96 or (V > 8 and span * V >= 96):  # registers: the input segment is
            tw = 2                                          # span x V floats (V 16: int8 x)
            span = (tw - 1) * sw + (kw - 1) * dw + 1
        wtiles = (wo + tw - 1) // tw
        cv = kout // V
        self.vec_work = n * ho * wtiles * cv
        ict = ctype(in_dtype)
        ich = V * np.dtype(in_dtype).itemsize // 16
        oct_, osz = ctype(out_dtype), np.dtype(out_dtype).itemsize
        och = V * osz // 16 if (V * osz) % 16 == 0 else 0
        epi_src, stored = self._epilogue(epilogue, operand_modes, out_dtype, "a_", " + v")
        epi_src = "\n          ".join(epi_src)
        taps = []
        for bb in range(kw):
            taps.append(f"""      {{
        float4 wv[{V // 4}];
        #pragma unroll
        for (int q = 0; q < {V // 4}; ++q)
          wv[q] = reinterpret_cast<const float4*>(wt + (a * {kw} + {bb}) * {kout} + k)[q];
        const float* wf = reinterpret_cast<const float*>(wv);
        #pragma unroll
        for (int j = 0; j < {tw}; ++j) {{
          #pragma unroll
          for (int v = 0; v < {V}; ++v) acc[j][v] += seg[j * {sw} + {bb * dw}][v] * wf[v];
        }}
      }}""")
        taps_src = "\n".join(taps)
        if och:
            store = (f"union {{ uint4 u[{och}]; {oct_} e[{V}]; }} o;\n"
                     f"        #pragma unroll\n"
                     f"        for (int v = 0; v < {V}; ++v) {{\n"
                     f"          float a_ = acc[j][v];\n          {epi_src}\n"
                     f"          o.e[v] = {stored};\n        }}\n"
                     f"        #pragma unroll\n        for (int q = 0; q < {och}; ++q) "
                     f"reinterpret_cast<uint4*>(y + oidx)[q] = o.u[q];")
        else:
            store = (f"#pragma unroll\n        for (int v = 0; v < {V}; ++v) {{\n"
                     f"          float a_ = acc[j][v];\n          {epi_src}\n"
                     f"          y[oidx + v] = {stored};\n        }}")
        vparams = ", ".join(params)
        staged = DW.staged_expr(self.quant, in_dtype, load_expr(in_dtype, "b.e[v]"))
        return PRELUDE + DW.quant_helpers(self.quant) + f"""
extern "C" __global__ void dwconv_vec({vparams}) {{
  for ({it} t = ({it})blockIdx.x * blockDim.x + threadIdx.x; t < work;
       t += ({it})gridDim.x * blockDim.x) {{
    const int k = (int)(t % {cv}) * {V};
    {it} r = t / {cv};
    const int wt_i = r % {wtiles}; r /= {wtiles};
    const int oh = r % {ho};
    const int nb = r / {ho};
    const int ow0 = wt_i * {tw};
    float acc[{tw}][{V}];
    #pragma unroll
    for (int j = 0; j < {tw}; ++j) {{
      #pragma unroll
      for (int v = 0; v < {V}; ++v) acc[j][v] = 0.f;
    }}
    #pragma unroll
    for (int a = 0; a < {kh}; ++a) {{
      const int ih = oh * {sh} - {ph} + a * {dh};
      if (ih < 0 || ih >= {h}) continue;
      const {ict}* xrow = x + ((({it})nb * {h} + ih) * {w}) * {c} + k;
      float seg[{span}][{V}];
      const int iw0 = ow0 * {sw} - {pw};
      #pragma unroll
      for (int s = 0; s < {span}; ++s) {{
        const int iw = iw0 + s;
        if (iw >= 0 && iw < {w}) {{
          union {{ uint4 u[{ich}]; {ict} e[{V}]; }} b;
          #pragma unroll
          for (int q = 0; q < {ich}; ++q)
            b.u[q] = reinterpret_cast<const uint4*>(xrow + ({it})iw * {c})[q];
          #pragma unroll
          for (int v = 0; v < {V}; ++v) seg[s][v] = {staged};
        }} else {{
          #pragma unroll
          for (int v = 0; v < {V}; ++v) seg[s][v] = 0.f;
        }}
      }}
{taps_src}
    }}
    #pragma unroll
    for (int j = 0; j < {tw}; ++j) {{
      const int ow = ow0 + j;
      if (ow < {wo}) {{
        const {it} oidx = ((({it})nb * {ho} + oh) * {wo} + ow) * {kout} + k;
        {store}
      }}
    }}
  }}
}}
"""
