"""GPU probe of the CuPy backend's INT8 / FP8 kernels (issue 15), one layer at a time.

No TensorFlow: CuPy, the cuDNN frontend and nvmath only. For each case (a small network of
one or two quantized layers, small and ResNet50-like shapes) and each precision (FP8 on
sm_89+ only) it makes the quantized network as an engine build does
(``builder.optimized_network``), then tries every implementation of the quantized layer
(``cupy_quant.QuantGemmLt``, ``QuantConvCudnn``, ``QuantEmulated``) on its own:

* UNSUPPORTED (why): the implementation refused the layer when it was made (a library said
  it has no kernel, a shape it does not take) -- a build would take the next one;
* FAIL (why): it ran but its output is not the numpy backend's simulation of the same layer
  (``numpy_backend._quantized_gemm``: exact int32 sums, the same rounding) within the
  tolerance, or it raised while running;
* OK: within the tolerance, the one the build-time validation applies
  (``cuda_source_quant.compare_quantized``): INT8 int32 accumulation is exact, so a float
  output may differ only by the epilogue's rounding order (a fused cuDNN epilogue), 2**-16
  of max|ref| plus an output ulp; FP8's accumulation is the library's (Hopper's FP8 tensor
  cores keep fewer mantissa bits), 2**-8; an int8 (requantized) output may differ by one
  step on at most 0.5 % of its elements. The output is filled with poison (NaN / -128)
  before the run, so an output an implementation does not write cannot pass.

Each implementation has already validated itself when it was made (``cupy_quant.Validator``:
its candidates -- cuDNN variants' plans, cuBLASLt algorithms -- against the emulated path);
the line says which candidate it kept ("chose") and which it rejected and why; an
implementation whose every candidate failed is UNSUPPORTED with the reasons.

Each line also gives the median GPU time (CUDA events around replays of a CUDA graph, five
measurements) against the FP16 implementation of the same layer, and what the kernel is
(the record ``precision_report`` shows). One failing case never stops the others; a
watchdog ends the process if the GPU hangs.

    pip install --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=$PWD:/tmp/site python benchmarks/probe_quant_kernels.py [--json out.json]
        [--quick] [--case NAME]

(The probe sets ``TFTRT_CUPY_QUANTIZED=1`` for itself: the kernels are opt-in.)
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import statistics
import sys
import time
import traceback

import numpy as np

F32 = np.float32


# --- cases ---------------------------------------------------------------------------------------
def _conv(net, x, w, b, out, stride=1, pad=1, group=1, act="relu", residual=None):
    wn, bn = net.add_weight(w, "w_" + out), net.add_weight(b, "b_" + out)
    epi = [{"op": "bias", "input": 2}]
    ins = [x, wn, bn]
    if residual is not None:
        ins.append(residual)
        epi.append({"op": "add", "input": 3})
    if act:
        epi.append({"op": "act", "fn": act})
    net.add_layer("conv", ins, [out], {"strides": [stride] * 2, "dilations": [1, 1],
                                       "pads": [pad] * 4, "group": group}, epi)


def case_conv(name, x_shape, cout, k, stride=1, group=1, act="relu", residual=False, seed=0):
    """(name, network, input shapes, table ranges) of one conv (+ bias, residual, act)."""
    from tftrt.engine.network import Network
    rng = np.random.RandomState(seed)
    net = Network(name)
    net.inputs = ["x"]
    net.add_tensor("x", "float32", x_shape)
    cin = x_shape[-1] // group
    w = (rng.randn(cout, k, k, cin) / np.sqrt(k * k * cin)).astype(F32)
    b = (rng.randn(cout) * 0.1).astype(F32)
    pad = k // 2
    ho = (x_shape[1] + 2 * pad - k) // stride + 1
    wo = (x_shape[2] + 2 * pad - k) // stride + 1
    res = None
    if residual:
        res = "r"
        net.inputs.append("r")
        net.add_tensor("r", "float32", (x_shape[0], ho, wo, cout))
    _conv(net, "x", w, b, "y", stride, pad, group, act, res)
    net.outputs = ["y"]
    shapes = {"x": x_shape}
    if residual:
        shapes["r"] = (x_shape[0], ho, wo, cout)
    return name, net, shapes, {"x": 3.0, "y": 4.0, "r": 4.0}


def case_chain(name, x_shape, c1, c2, seed=1):
    """Two 3x3 convs: the first one's output requantized to int8 (INT8)."""
    from tftrt.engine.network import Network
    rng = np.random.RandomState(seed)
    net = Network(name)
    net.inputs = ["x"]
    net.add_tensor("x", "float32", x_shape)
    c0 = x_shape[-1]
    _conv(net, "x", (rng.randn(c1, 3, 3, c0) / np.sqrt(9 * c0)).astype(F32),
          (rng.randn(c1) * 0.1).astype(F32), "h")
    _conv(net, "h", (rng.randn(c2, 3, 3, c1) / np.sqrt(9 * c1)).astype(F32),
          (rng.randn(c2) * 0.1).astype(F32), "y", act=None)
    net.outputs = ["y"]
    return name, net, {"x": x_shape}, {"x": 3.0, "h": 2.0, "y": 4.0}


def case_matmul(name, m, k, n, act=None, seed=2):
    from tftrt.engine.network import Network
    rng = np.random.RandomState(seed)
    net = Network(name)
    net.inputs, net.outputs = ["x"], ["y"]
    net.add_tensor("x", "float32", (m, k))
    wn = net.add_weight((rng.randn(k, n) / np.sqrt(k)).astype(F32), "w")
    bn = net.add_weight((rng.randn(n) * 0.1).astype(F32), "b")
    epi = [{"op": "bias", "input": 2}] + ([{"op": "act", "fn": act}] if act else [])
    net.add_layer("matmul", ["x", wn, bn], ["y"], {}, epi)
    return name, net, {"x": (m, k)}, {"x": 3.0, "y": 4.0}


def cases(quick: bool):
    small = [
        case_conv("conv3x3_small", (2, 8, 8, 16), 32, 3),
        case_conv("conv3x3_rgb_c3", (4, 32, 32, 3), 16, 3),
        case_conv("conv1x1_small", (2, 8, 8, 32), 64, 1),
        case_conv("conv1x1_residual", (2, 8, 8, 64), 64, 1, residual=True),
        case_conv("depthwise3x3", (2, 16, 16, 32), 32, 3, group=32),
        case_chain("chain_requant", (2, 8, 8, 16), 32, 32),
        case_matmul("matmul_small", 64, 256, 100),
        case_matmul("matmul_gelu", 256, 256, 1024, act="gelu"),
    ]
    if quick:
        return small
    b = 16  # ResNet50 stages at batch 16: the numpy reference keeps the probe near a minute
    big = [
        case_conv("r50_conv1_7x7s2", (b, 224, 224, 3), 64, 7, stride=2),
        case_conv("r50_1x1_256to64", (b, 56, 56, 256), 64, 1),
        case_conv("r50_3x3_64", (b, 56, 56, 64), 64, 3),
        case_conv("r50_1x1_64to256_res", (b, 56, 56, 64), 256, 1, residual=True),
        case_conv("r50_3x3_128_s2", (b, 56, 56, 128), 128, 3, stride=2),
        case_conv("r50_3x3_512", (b, 7, 7, 512), 512, 3),
        case_matmul("r50_fc_2048x1000", b, 2048, 1000),
        case_matmul("encoder_ffn_4096x768x3072", 4096, 768, 3072, act="gelu"),
    ]
    return small + big


# --- running one implementation -------------------------------------------------------------------
def _inputs(cp, net, layer, rng):
    host = []
    for i, name in enumerate(layer.inputs):
        if name in net.weights or not name:
            host.append(None if not name else np.asarray(net.weights[name]))
            continue
        info = net.tensors[name]
        if info.dtype == "int8":
            v = rng.randint(-127, 128, info.shape).astype(np.int8)
        else:
            v = (rng.randn(*info.shape) * 1.2).astype(info.dtype)
        host.append(v)
    dev = [None if v is None else cp.asarray(v) for v in host]
    return host, dev


def _compare(got, want, fmt: str):
    """The build-time validation's comparison, against the numpy simulation (exact)."""
    from tftrt.engine.backends import cuda_source_quant as S
    ok, how, _ = S.compare_quantized(got, want, fmt, np.dtype(got.dtype).name)
    return ok, how


def _choice(impl) -> str:
    """What the implementation's build-time validation kept and rejected (its record)."""
    rec = impl.record() or {}
    kept = []
    if "variant" in rec:
        kept.append(f"variant {rec['variant']} engine {rec.get('engine')}")
    if "algo" in rec:
        kept.append(f"algo {rec['algo']}")
    v = rec.get("validated")
    out = "chose " + (", ".join(kept) or "-")
    if isinstance(v, dict):
        out += f" (validated: {v.get('how', '')})"
    if rec.get("rejected"):
        out += f"; rejected {len(rec['rejected'])}: " + " | ".join(rec["rejected"])
    return out


def _time(cp, fn, stream, reps=5):
    from tftrt.engine.backends.cupy_dnn import gpu_time
    return statistics.median(gpu_time(fn, stream, 10) for _ in range(reps))


def probe_case(case, precision, out):
    import cupy as cp
    from tftrt.engine import BuilderConfig
    from tftrt.engine import quantization as Q
    from tftrt.engine.backends import cupy_quant as QK
    from tftrt.engine.backends.cupy_backend import make_impl
    from tftrt.engine.backends.numpy_backend import NumpyBackend
    from tftrt.engine.builder import optimized_network
    name, net0, shapes, ranges = case
    net0.quantization = Q.new_table(tensors=dict(ranges))
    net, _, _ = optimized_network(net0, shapes, BuilderConfig(precision=precision,
                                                              backend="cupy"))
    net16, _, _ = optimized_network(net0, shapes, BuilderConfig(precision="FP16",
                                                                backend="cupy"))
    weights = {k: cp.asarray(v) for k, v in net.weights.items()}
    w16 = {k: cp.asarray(v) for k, v in net16.weights.items()}
    ref = NumpyBackend()
    rng = np.random.RandomState(0)
    stream = cp.cuda.Stream(non_blocking=True)
    for layer in net.layers:
        if "quant" not in layer.attrs:
            if layer.kind in Q.GEMM_KINDS:
                out.append(_line(name, precision, layer.name, "-", "FP16 (not quantized)",
                                 layer.attrs.get("quant_fallback", "")))
            continue
        host, dev = _inputs(cp, net, layer, rng)
        want = ref.prepare_layer(net, layer, net.weights)(host)[0]
        t16 = None
        l16 = next((l for l in net16.layers if l.name == layer.name), None)
        if l16 is not None:
            try:
                l16.tactic = _fp16_tactic(net16, l16)
                impl16 = make_impl(net16, l16, w16, {"tf32": True})
                ins16 = [w16.get(n) if n in w16 else cp.asarray(
                    (rng.randn(*net16.tensors[n].shape)).astype(net16.tensors[n].dtype))
                    if n else None for n in l16.inputs]
                outs16 = [cp.empty(net16.tensors[o].shape, net16.tensors[o].dtype)
                          for o in l16.outputs]
                ws16 = cp.empty(max(int(impl16.workspace), 1), cp.uint8)
                t16 = _time(cp, lambda: impl16.run(ins16, outs16, ws16), stream)
            except Exception as e:  # the whole message: every graph variant's reason
                out.append(_line(name, precision, layer.name, "FP16", "FAIL (fp16 baseline)",
                                 f"{type(e).__name__}: {str(e)[:1200]}; x "
                                 f"{net16.tensors[l16.inputs[0]].dtype} "
                                 f"{net16.tensors[l16.inputs[0]].shape}, w "
                                 f"{net16.tensors[l16.inputs[1]].dtype}, epilogue "
                                 f"{[op.get('fn', op['op']) for op in l16.epilogue]}"))
        for cls in (QK.QuantGemmLt, QK.QuantConvCudnn, QK.QuantEmulated):
            what = cls.__name__
            t0 = time.perf_counter()
            try:
                impl = cls(net, layer, weights, {"tf32": True})
            except Exception as e:  # validation rejections included: the whole reason
                msg = " ".join(str(e).splitlines())[:1500] if str(e) else type(e).__name__
                out.append(_line(name, precision, layer.name, what, "UNSUPPORTED",
                                 f"{type(e).__name__}: {msg}"))
                continue
            build_s = time.perf_counter() - t0
            try:
                info = net.tensors[layer.outputs[0]]
                from tftrt.engine.backends import cuda_source_quant as S
                poison = S.INT8_POISON if np.dtype(info.dtype) == np.int8 else np.nan
                cp.cuda.get_current_stream().synchronize()
                with stream:  # poison: an output that is not written cannot pass
                    y = cp.full(info.shape, poison, info.dtype)
                    ws = cp.full(max(int(impl.workspace), 1), S.SCRATCH_POISON_BYTE, cp.uint8)
                    impl.run(dev, [y], ws)
                stream.synchronize()
                ok, how = _compare(cp.asnumpy(y), want, layer.attrs["quant"]["format"])
                wdt = getattr(impl, "w", None)
                wdt = np.dtype(wdt.dtype).name if wdt is not None else "?"
                t = _time(cp, lambda: impl.run(dev, [y], ws), stream) if impl.capturable \
                    else float("nan")
                speed = f"{t * 1e6:8.1f} us" + (f" vs FP16 {t16 * 1e6:8.1f} us "
                                                 f"({t16 / t:4.2f}x)" if t16 else "")
                out.append(_line(name, precision, layer.name, what,
                                 "OK" if ok else "FAIL", f"{how}; {speed}; weight {wdt}; "
                                 f"built in {build_s:.2f} s; {impl.kernel}; "
                                 f"{_choice(impl)}"))
            except Exception as e:
                out.append(_line(name, precision, layer.name, what, "FAIL",
                                 f"{type(e).__name__}: {str(e)[:300]}"))
                log_tb = traceback.format_exc().splitlines()[-3:]
                out[-1]["trace"] = log_tb


def _fp16_tactic(net, layer) -> str:
    """The FP16 tactic a build would most likely pick for the baseline."""
    from tftrt.engine.backends import cuda_source_quant as S
    if layer.kind == "matmul":
        return "lt"
    if layer.attrs.get("group", 1) > 1:
        return "dw_direct"
    dims = S.gemm_dims("conv", net.tensors[layer.inputs[0]].shape,
                       net.tensors[layer.inputs[1]].shape, layer.attrs)
    return "lt_1x1" if dims is not None else "cudnn"


def _line(case, precision, layer, impl, status, detail):
    rec = {"case": case, "precision": precision, "layer": layer, "impl": impl,
           "status": status, "detail": detail}
    print(f"{case:28s} {precision:4s} {layer:6s} {impl:15s} {status:12s} {detail}", flush=True)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true", help="small shapes only")
    ap.add_argument("--case", action="append", help="only these cases (repeatable)")
    ap.add_argument("--watchdog", type=float, default=300.0,
                    help="seconds after which a stuck process dumps its stacks and exits")
    args = ap.parse_args(argv)
    faulthandler.dump_traceback_later(args.watchdog, exit=True)
    os.environ["TFTRT_CUPY_QUANTIZED"] = "1"  # the kernels under test are opt-in
    import cupy as cp
    from tftrt.engine.backends import cupy_dnn
    dev = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    sm = (dev["major"], dev["minor"])
    name = dev["name"].decode() if isinstance(dev["name"], bytes) else dev["name"]
    print(f"device {name} sm_{sm[0]}{sm[1]}; cuDNN frontend: "
          f"{cupy_dnn.cudnn_unavailable_reason() or 'ok'}; cuBLASLt: "
          f"{cupy_dnn.lt_unavailable_reason() or 'ok'}")
    precisions = ["INT8"] + (["FP8"] if sm >= (8, 9) else [])
    results = []
    t0 = time.perf_counter()
    for case in cases(args.quick):
        if args.case and case[0] not in args.case:
            continue
        for p in precisions:
            try:
                probe_case(case, p, results)
            except Exception as e:
                results.append(_line(case[0], p, "-", "-", "FAIL (case)",
                                     f"{type(e).__name__}: {str(e)[:300]}"))
                results[-1]["trace"] = traceback.format_exc().splitlines()[-6:]
    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"done in {time.perf_counter() - t0:.1f} s: {counts}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "sm": list(sm), "results": results}, f, indent=1)
    faulthandler.cancel_dump_traceback_later()
    return 1 if any(r["status"].startswith("FAIL") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
