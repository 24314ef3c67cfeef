"""The GPU backend: every layer kind on CuPy, cuDNN-frontend graphs and cuBLASLt.

* Convolutions: cuDNN graphs (conv_fprop / conv_dgrad + the fused pointwise epilogue: bias,
  scale, residual add, activation), a cuBLASLt GEMM for 1x1 stride-1 convs, a generated kernel
  for 2-D depthwise convs. The builder times the applicable tactics; inside a tactic the
  backend times the library's candidates (cuDNN engines, cuBLASLt algorithms) on the GPU and
  records the winner in ``layer.attrs["_cupy"][tactic]``, which the plan stores, so a loaded
  plan rebuilds the same kernels without timing. Layers with one candidate tactic are tuned
  when the builder asks their workspace size (the hook that runs for every layer).
* MatMul: cuBLASLt with bias / relu / tanh-gelu / residual epilogues (cupy.matmul as the
  tactic for batch broadcasts cuBLASLt's strides cannot express).
* Everything else: kernels generated from the IR (``cupy_kernels``, ``cupy_kernels_nn``) or
  CuPy's array library (``cupy_ops``).

Nothing runs on the host. :func:`impl_table` lists, per layer kind and tactic, the GPU
implementations to try in order; what a fused tactic cannot take is split on the GPU (the main
op on cuDNN / cuBLASLt, the rest of the epilogue as a generated kernel) or taken by the next
implementation, and an engine's layers on such a fallback are logged once, in one line. A
layer that no GPU implementation runs fails the engine build (EngineBuildError naming it),
and the engine op runs its native segment instead.

Precision: FP16 layers store fp16 and accumulate in fp32; FP32 layers may use TF32 tensor
cores unless the build says ``allow_tf32=False``.

Execution (:class:`CupyExecutionContext`): one device arena per context laid out by the
engine's memory plan (plus the largest tactic workspace), its own stream and library handles
(an engine's contexts are per slot of its ``memory.ArenaPool``, which the engines of one
optimization profile share: the contexts of a slot share its arena and stream);
reshapes the plan made views of their input run nothing. The first run is eager, the second
captures the whole engine into CUDA graphs (layers that cannot be captured run eagerly between
graph segments; a failed capture is logged once and that segment stays eager), later runs
replay them.
"""

from __future__ import annotations

import contextlib

import functools
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tftrt.engine.backends import Backend
from tftrt.engine.errors import EngineBuildError, GpuTimeout, WrongDevice
from tftrt.engine.network import Layer, Network
from tftrt.engine.tactics import ANY_KIND, register_tactic

try:
    import cupy as cp
except Exception:  # pragma: no cover - CuPy missing: the backend reports itself unavailable
    cp = None

log = logging.getLogger("tftrt.engine.cupy")

_CAPTURE_MODE = None if cp is None else getattr(cp.cuda.runtime, "streamCaptureModeRelaxed", 2)

# cudaDeviceSynchronize fails (cudaErrorStreamCaptureUnsupported) while any stream of the
# device captures a CUDA graph, in every capture mode, and invalidates that capture: seen with
# four threads calling one loaded model (2 of 40 calls fell back to native). Graph captures
# and the process's device-wide waits (tensor_bridge.wait_for_tensorflow, synchronize) take
# this lock, so one never runs inside the other. A capture happens once per context.
DEVICE_WIDE = threading.RLock()


# --- tactics -------------------------------------------------------------------------------------
def _lazy():
    from tftrt.engine.backends import cupy_dnn, cupy_layers
    return cupy_dnn, cupy_layers


def _io_needs(layer) -> List[Tuple[str, str]]:
    """What an implementation class must say (a True class attribute) to take ``layer``, and
    why one that does not is refused (make_impl): a float layer storing int8 codes
    (attrs["output_scale"]: a stem before its int8 max pool, a pool before INT8 readers)
    needs ``int8_store``; an FP16 conv reading float32 x (attrs["float32_x"]: a stem reading
    the image) needs ``float32_x``; a layer that took its projection shortcut
    (quantization.fuse_projections) needs ``projection``; a stem that took its max pool
    (pool_fusion.fuse_pools) needs ``stem_pool``."""
    needs = []
    if "quant" not in layer.attrs and layer.attrs.get("output_scale") is not None:
        needs.append(("int8_store", "does not store int8 codes"))
    if layer.attrs.get("float32_x"):
        needs.append(("float32_x", "does not read float32 x"))
    if "projection" in layer.attrs:
        needs.append(("projection", "does not run a fused projection shortcut"))
    if "pool" in layer.attrs and layer.kind == "conv":
        needs.append(("stem_pool", "does not pool its output"))
    return needs


def _plain_io(layer) -> bool:
    """False for a conv with :func:`_io_needs`: only stem_mma runs those (make_impl refuses
    the rest), so the other conv tactics are no candidates for them (a profile's tuned rung
    times its template's layers again)."""
    return not _io_needs(layer)


def _cudnn_ok(net, layer) -> bool:
    return _plain_io(layer) and _lazy()[0].cudnn_module() is not None and np.dtype(
        net.tensors[layer.inputs[1]].dtype).kind == "f"


def _lt_ok() -> bool:
    return _lazy()[0].lt_module() is not None


def _conv_1x1(net, layer) -> bool:
    return _plain_io(layer) and _lt_ok() and \
        _lazy()[1].conv_as_gemm_dims(net, layer) is not None and \
        np.dtype(net.tensors[layer.inputs[1]].dtype).kind == "f"


def _depthwise(net, layer) -> bool:
    x, w = net.tensors[layer.inputs[0]].shape, net.tensors[layer.inputs[1]].shape
    return "quant" not in layer.attrs and _plain_io(layer) and len(x) == 4 and \
        layer.attrs["group"] == x[-1] > 1 and w[-1] == 1


def _dw_tiled(net, layer) -> bool:
    """The shared-memory tiled depthwise kernel (cupy_dw), unless TFTRT_DW_TILED=0, for the
    layers it takes (multiplier 1, dilation 1, stride 1 / 2)."""
    from tftrt.engine.backends import cuda_source_dw as DW
    return DW.enabled() and _depthwise(net, layer) and DW.tiled_unsupported(net, layer) is None


def _im2col(net, layer) -> bool:
    """Tactic ``im2col`` (cupy_im2col): unaligned few-channel float16 convs, with cuBLASLt."""
    from tftrt.engine.backends import cuda_source_im2col
    return _plain_io(layer) and cuda_source_im2col.applies(net, layer) and _lt_ok()


def _stem_direct(net, layer) -> bool:
    """Tactic ``stem_direct`` (cupy_stem): the direct kernel for convs of few, unaligned input
    channels (a network's stem), unless TFTRT_STEM_DIRECT=0."""
    from tftrt.engine.backends import cuda_source_stem as ST
    x = net.tensors[layer.inputs[0]].shape
    return _plain_io(layer) and len(x) == 4 and x[-1] is not None and int(x[-1]) % 8 != 0 \
        and ST.unsupported(net, layer) is None


def _stem_mma(net, layer) -> bool:
    """Tactic ``stem_mma`` (cupy_stem_mma): the tensor-core implicit-im2col kernel for the
    same few-channel convs as ``stem_direct``, and for stems rearranged by
    passes/stem_space_to_depth (16 channels: its vector gathers), with a float16 output
    only, unless TFTRT_STEM_MMA=0."""
    from tftrt.engine.backends import cuda_source_stem_mma as SM
    x = net.tensors[layer.inputs[0]].shape
    return len(x) == 4 and x[-1] is not None and \
        (int(x[-1]) % 8 != 0 or "space_to_depth" in layer.attrs) and \
        SM.unsupported(net, layer) is None


def _matmul_lt(net, layer) -> bool:
    return _lt_ok() and _lazy()[1].matmul_dims(net, layer) is not None


def _workspace(net, layer) -> int:
    """Scratch bytes of the layer's chosen tactic. The builder asks this for every layer after
    tactic selection (layers without a tactic of their own through the ``ANY_KIND``
    "default"), so this is where every layer is prepared once at build time: a layer no GPU
    implementation runs fails the build here (EngineBuildError naming it), and a layer that
    was not timed (one candidate) gets its library choice tuned and recorded in its attrs,
    before the plan is written."""
    key = _lazy()[1].signature(net, layer)
    if key not in _WORKSPACE:
        make_impl(net, layer, {}, dict(_OPTIONS))
    return _WORKSPACE.get(key, 0)


_WORKSPACE: Dict[str, int] = {}
_OPTIONS = {"tf32": True}

register_tactic("cupy", "conv", "cudnn", applies=_cudnn_ok, workspace=_workspace)
register_tactic("cupy", "conv", "lt_1x1", applies=_conv_1x1, workspace=_workspace)
register_tactic("cupy", "conv", "dw_direct", applies=_depthwise, workspace=_workspace)
register_tactic("cupy", "conv", "im2col", applies=_im2col, workspace=_workspace)
register_tactic("cupy", "conv", "stem_direct", applies=_stem_direct, workspace=_workspace)
register_tactic("cupy", "conv", "stem_mma", applies=_stem_mma, workspace=_workspace)
# dw_tiled must win by 3%: with it on by default, MobileNetV2 and MobileNetV3Large at batch 128
# were 0.7-0.9% slower on an H200 (build-time wins of a few percent that did not hold in the
# whole engine), while its real wins are larger (ConvNeXtTiny's 7x7 convs, batch 1).
register_tactic("cupy", "conv", "dw_tiled", applies=_dw_tiled, workspace=_workspace,
                margin=0.03)
register_tactic("cupy", "conv_transpose", "cudnn", applies=_cudnn_ok, workspace=_workspace)
register_tactic("cupy", "matmul", "lt", applies=_matmul_lt, workspace=_workspace)
register_tactic("cupy", "matmul", "cupy_matmul", applies=lambda n, l: "quant" not in l.attrs,
                workspace=_workspace)


def _quant(predicate: str):
    """Applies-predicate of an INT8 / FP8 tactic: ``cupy_quant.<predicate>`` (imported only
    for quantized layers). The float tactics above never take a quantized layer."""
    def applies(net, layer) -> bool:
        if "quant" not in layer.attrs:
            return False
        from tftrt.engine.backends import cupy_quant
        return getattr(cupy_quant, predicate)(net, layer)
    return applies


for _kind, _name, _pred in (("conv", "q_cudnn", "cudnn_applies"),
                            ("conv", "q_cudnn_pairs", "cudnn_pairs_applies"),
                            ("conv", "q_lt_1x1", "gemm_applies"),
                            ("conv", "q_mma", "mma_applies"),
                            ("conv", "q_dw", "dw_applies"),
                            ("conv", "q_dw_direct", "dw_direct_applies"),
                            ("matmul", "q_mma", "mma_applies"),
                            ("conv", "q_emulated", "emulated_applies"),
                            ("matmul", "q_lt", "gemm_applies"),
                            ("matmul", "q_emulated", "emulated_applies")):
    register_tactic("cupy", _kind, _name, applies=_quant(_pred), workspace=_workspace)
register_tactic("cupy", "attention", "sdpa", workspace=_workspace)
register_tactic("cupy", ANY_KIND, "default", workspace=_workspace)


@functools.lru_cache(maxsize=None)
def impl_table() -> Dict[str, Dict[str, Tuple[type, ...]]]:
    """Layer kind -> tactic -> the implementations that run it, tried in order.

    The first implementation is the tactic's own; a later one is a slower path on the GPU
    that takes what the first cannot (a "fallback tactic", named in the engine's summary
    line). Kinds without tactics of their own run as "default". Nothing here runs on the
    host: a kind or tactic missing from the table has no GPU implementation, and building an
    engine with such a layer fails (:func:`make_impl`).
    """
    from tftrt.engine.backends import cupy_dw as DW
    from tftrt.engine.backends import cupy_im2col as IC
    from tftrt.engine.backends import cupy_layers as L
    from tftrt.engine.backends import cupy_ops as O
    from tftrt.engine.backends import cupy_quant as QK
    from tftrt.engine.backends import cupy_se as SE
    from tftrt.engine.backends import cupy_stem as ST
    from tftrt.engine.backends import cupy_stem_mma as SM
    table = {
        # a depthwise conv that cuDNN cannot run (some FP16 shapes) takes the direct kernel,
        # a few-channel one (3 -> 16 channels at 32 x 32 in FP16) im2col + cuBLASLt
        "conv": {"cudnn": (L.ConvCudnn, L.DepthwiseConv, IC.ConvIm2col),
                 "im2col": (IC.ConvIm2col, L.ConvCudnn),
                 "stem_direct": (ST.StemDirect, L.ConvCudnn, IC.ConvIm2col),
                 "stem_mma": (SM.StemMma, L.ConvCudnn, IC.ConvIm2col),
                 "lt_1x1": (L.ConvGemm, L.ConvCudnn),
                 "dw_direct": (L.DepthwiseConv, L.ConvCudnn),
                 "dw_tiled": (DW.DepthwiseTiled, L.DepthwiseConv, L.ConvCudnn),
                 # INT8 / FP8 (cupy_quant): int8 / fp8 tensor cores, else emulated in TF32
                 "q_cudnn": (QK.QuantConvCudnn, QK.QuantEmulated),
                 "q_cudnn_pairs": (QK.QuantConvCudnnPairs, QK.QuantConvCudnn,
                                   QK.QuantEmulated),
                 "q_lt_1x1": (QK.QuantGemmLt, QK.QuantConvCudnn, QK.QuantEmulated),
                 "q_mma": (QK.QuantGemmMma, QK.QuantGemmLt, QK.QuantConvCudnn,
                           QK.QuantEmulated),
                 "q_dw": (QK.QuantDepthwiseTiled, QK.QuantEmulated),
                 "q_dw_direct": (QK.QuantDepthwiseDirect, QK.QuantEmulated),
                 "q_emulated": (QK.QuantEmulated,)},
        "conv_transpose": {"cudnn": (L.ConvCudnn,)},
        "matmul": {"lt": (L.MatmulLt, L.MatmulCupy),
                   "cupy_matmul": (L.MatmulCupy,),
                   "q_lt": (QK.QuantGemmLt, QK.QuantEmulated),
                   "q_mma": (QK.QuantGemmMma, QK.QuantGemmLt, QK.QuantEmulated),
                   "q_emulated": (QK.QuantEmulated,)},
        "attention": {"sdpa": (L.AttentionCudnn, L.AttentionCupy)},
        "se": {"default": (SE.SeLayer,)},  # TFTRT_FUSE_SE=0 turns it off (accepts_layer)
        "pointwise": {"default": (L.Pointwise,)},
        "pool": {"default": (L.Pool,)},
        "softmax": {"default": (L.Softmax,)},
        "normalization": {"default": (L.Normalization,)},
    }
    for kind, cls in O.IMPLS.items():  # the data-movement kinds, registered with @impl
        table.setdefault(kind, {"default": (cls,)})
    return table


def make_impl(net: Network, layer: Layer, weights: Dict[str, Any], opts: dict,
              strict: bool = False):
    """The implementation object of ``layer.tactic`` (see cupy_layers' protocol), from
    :func:`impl_table`: the tactic's own, else the next GPU path that takes the layer (the
    object's ``fallback`` then says why the earlier ones did not).

    Args:
      strict: raise when the tactic's own implementation fails (tactic timing: a candidate
        that cannot run must not be timed as its fallback).
    Raises:
      EngineBuildError: no GPU implementation runs the layer (its kind or tactic has none, or
        each one failed); the message names the layer, its kind and why.
    """
    tactics = impl_table().get(layer.kind)
    tactic = layer.tactic or "default"
    if tactics is None:
        raise EngineBuildError(
            f"layer {layer.name} of kind {layer.kind!r} has no GPU implementation in the cupy "
            f"backend; the engine cannot be built on the GPU (the op runs its native segment)")
    chain = tactics.get(tactic)
    if chain is None:
        raise EngineBuildError(
            f"layer {layer.name} ({layer.kind}) has no cupy implementation for tactic "
            f"{tactic!r} (its tactics: {sorted(tactics)}); for conv layers this means no "
            f"tactic applied (cuDNN: {_lazy()[0].cudnn_unavailable_reason() or 'available'})")
    from tftrt.engine.backends.cupy_layers import signature
    errors = []
    needs = _io_needs(layer)  # int8 codes stored, float32 x read: only what does that
    for cls in chain:
        why = next((why for flag, why in needs if not getattr(cls, flag, False)), None)
        if why:
            errors.append(f"{cls.__name__}: {why}")
            continue
        try:
            impl = cls(net, layer, weights, opts)
        except GpuTimeout:
            raise
        except Exception as e:
            if strict:
                raise
            errors.append(f"{cls.__name__}: {type(e).__name__}: {str(e)[:300]}")
            continue
        impl.fallback = "; ".join(errors) or None
        _WORKSPACE[signature(net, layer)] = int(impl.workspace)
        return impl
    raise EngineBuildError(f"layer {layer.name} ({layer.kind}, tactic {tactic}) cannot run on "
                           f"the GPU: " + "; ".join(errors))


def log_fallbacks(name: str, layers: List[Layer], impls: List[Any]) -> List[str]:
    """Logs once, as one warning line, the layers of engine ``name`` that run on a fallback
    tactic (still on the GPU); returns the entries ("layer (kind tactic -> Impl: why)")."""
    entries = [f"{l.name} ({l.kind} {l.tactic} -> {type(i).__name__}: {i.fallback[:200]})"
               for l, i in zip(layers, impls) if getattr(i, "fallback", None)]
    if entries:
        log.warning("engine %s: %d layers on a fallback tactic: %s", name, len(entries),
                    "; ".join(entries))
    return entries


def _cupy_kernel_dir(store) -> None:
    """CuPy keeps the NVRTC output of the generated kernels on disk, by default in
    ``~/.cupy/kernel_cache``. Unless the user chose a place (``CUPY_CACHE_DIR``), it goes
    beside the rest of the build cache (``<build cache>/cupy``), so that one directory (and
    one variable, ``TFTRT_CACHE_DIR``) holds every compiled artefact of tftrt's builds.
    CuPy 14 reads its directory once, at import, into a cache backend object: that object is
    replaced (CuPy's own tests do the same); a CuPy without one keeps its default."""
    import os
    if store is None or os.environ.get("CUPY_CACHE_DIR"):
        return
    global _CUPY_KERNEL_DIR
    path = os.path.join(store.root, "cupy")
    if _CUPY_KERNEL_DIR == path:
        return
    try:
        from cupy.cuda import compiler
        from cupy.cuda._compiler_cache import DiskKernelCacheBackend
        if not hasattr(compiler, "_kernel_cache_backend"):
            return
        backend = DiskKernelCacheBackend(path)
        setter = getattr(compiler, "_set_kernel_cache_backend", None)
        if callable(setter):
            setter(backend)
        else:
            compiler._kernel_cache_backend = backend
        _CUPY_KERNEL_DIR = path
    except Exception as e:  # another CuPy: its kernels stay where it keeps them
        log.debug("CuPy's kernel cache stays in its default place: %s", e)


_CUPY_KERNEL_DIR: Optional[str] = None  # where _cupy_kernel_dir last pointed CuPy


# --- backend -------------------------------------------------------------------------------------
class CupyBackend(Backend):
    """Runs engines on an NVIDIA GPU (see module doc)."""

    name = "cupy"

    @classmethod
    def is_available(cls) -> bool:
        if cp is None:
            return False
        try:
            if cp.cuda.runtime.getDeviceCount() < 1:
                return False
            int((cp.arange(4) * 2).sum())
            return True
        except Exception:
            return False

    def __init__(self):
        self.options = _OPTIONS
        self._lock = threading.Lock()
        # The CUDA device engines are built and loaded on (pin_device), or None: the calling
        # thread's current device.
        self.pinned: Optional[int] = None

    def pin_device(self, ordinal: Optional[int]) -> None:
        """Builds and loads engines on CUDA device ``ordinal`` from now on, whatever device the
        calling thread has current (None: the thread's). The TF side pins the GPU its engine
        nodes are placed on (conversion.engine_device): TensorFlow leaves the thread that set
        up its GPUs on the last one, and on a 2-GPU H200 host (2026-12-04) tftrt.load put the
        weights on GPU 1 while TF handed the engine GPU 0's tensors, so every call ran the
        native segment (WrongDevice)."""
        self.pinned = None if ordinal is None else int(ordinal)

    def on_device(self):
        """The pinned device's context (a no-op when none is pinned)."""
        return cp.cuda.Device(self.pinned) if self.pinned is not None else \
            contextlib.nullcontext()

    # INT8 / FP8 (issue 15): quantized conv / matmul layers can run on int8 / fp8 kernels
    # (cupy_quant: tactics q_cudnn, q_lt_1x1, q_lt; q_emulated where none applies); FP8 needs
    # a GPU that has it, so an FP8 engine on an older one fails by name (check_precision).
    # On by default since s37 (TFTRT_CUPY_QUANTIZED=0: INT8 / FP8 engines build FP16 layers
    # with one warning). Opt-in until then: their first run on an H200 (2026-11-30,
    # benchmarks/probe_quant_kernels.py) gave wrong answers for cuDNN INT8 convolutions with an
    # int32 output, and a calibrated INT8 engine differed from the numpy simulation by 0.8 of
    # its output range. Since s34 every quantized layer's kernel is validated at build time
    # against the emulated arithmetic (cupy_quant.Validator; a plan that fails is not used),
    # and the INT8 / FP8 GPU tests passed on H100 and H200 (s34-s37); a layer or engine
    # slower than FP16 is kept FP16 (builder.timed_precision).
    @property
    def quantized_precisions(self) -> Tuple[str, ...]:
        from tftrt.env import env_bool
        return ("INT8", "FP8") if env_bool("TFTRT_CUPY_QUANTIZED", True) else ()

    def check_precision(self, precision: str) -> None:
        """EngineBuildError for a precision this GPU cannot run: FP8 below sm_89."""
        if precision != "FP8":
            return
        with self.on_device():
            dev = cp.cuda.runtime.getDevice()
        p = cp.cuda.runtime.getDeviceProperties(dev)
        if (p["major"], p["minor"]) < (8, 9):
            raise EngineBuildError(
                f"precision FP8 needs an NVIDIA GPU with FP8 tensor cores (compute capability "
                f"8.9 or newer: Ada, Hopper, Blackwell); {self.device_name()} has none. Use "
                f"precision_mode INT8 or FP16")

    def set_build_options(self, allow_tf32: bool = True, **_) -> None:
        """Options of the engine being built (the builder's config): allow_tf32. Also points
        the compiled-code caches at the on-disk build cache (:meth:`persist_compiled` saves
        them)."""
        self.options["tf32"] = bool(allow_tf32)
        from tftrt.engine.build_cache import build_cache_for
        store = build_cache_for(self)
        _lazy()[0].use_build_cache(store)
        _cupy_kernel_dir(store)

    def persist_compiled(self) -> None:
        """After an engine build and after an engine prepared its layers: kernels cuDNN
        compiled meanwhile go to the build cache (CuPy writes its own NVRTC output to disk as
        it compiles)."""
        try:
            _lazy()[0].save_kernel_cache()
        except Exception as e:  # a cache is never worth failing a build over
            log.warning("could not save the cuDNN kernel cache: %s", e)

    def prefetch(self, nets) -> None:
        """Builder hook before the layers of one network, or of several engines' networks, are
        prepared: their cuDNN graphs compiled in worker processes into the build cache
        (cupy_prefetch; TFTRT_BUILD_WORKERS=0 turns it off)."""
        from tftrt.engine.backends import cupy_prefetch
        cupy_prefetch.prefetch(nets, dict(self.options))

    def record_choices(self, net: Network) -> None:
        """Builder hook before other shapes are made from the network of an engine built here
        (an optimization profile's opt engine): its cuDNN convolutions without a record get
        the choice the build cache holds for them (cupy_layers.record_stored_choices), so
        that every layer of the profile's other shapes borrows the opt engine's plan."""
        from tftrt.engine.backends import cupy_layers as L
        n = L.record_stored_choices(net, dict(self.options))
        log.debug("network %s: %d convolutions given their stored cuDNN choice", net.name, n)

    def start_build(self, net: Network) -> None:
        """Builder hook as a build starts (before its passes): the build workers start now,
        for a network with enough convolutions to use them (cupy_prefetch.start_workers)."""
        from tftrt.engine.backends import cupy_prefetch
        cupy_prefetch.start_workers(net)

    def stores_int8(self, net: Network, layer: Layer) -> bool:
        """Whether the implementation of ``layer``'s chosen tactic can store its float result
        as int8 codes (quantization.absorb_pool_requantization): ``stem_mma``'s can."""
        return layer.kind == "conv" and layer.tactic == "stem_mma" and \
            "quant" not in layer.attrs

    def fuses_pool(self, net: Network, conv: Layer, pool: Layer) -> bool:
        """Whether ``conv``'s chosen implementation should pool its own output with ``pool``
        (pool_fusion.fuse_pools): ``stem_mma`` where it runs the conv on row tiles
        (cuda_source_stem_mma.rows_default: ResNet's and DenseNet's 7x7 stems) and its source
        takes the pool (cuda_source_stem_mma.StemPool: 3x3 / 2, pads 1 at the top and left,
        the conv's width a multiple of 16), and by default (pool_fusion.fuse_mode "auto")
        where it stores float16: fused, an int8 stem and pool measured 20 us slower than the
        two (H100, s53b); generated only, compiled when the engine is prepared."""
        from tftrt.engine import pool_fusion
        from tftrt.engine.backends import cuda_source_stem_mma as SM
        if conv.tactic != "stem_mma" or (pool_fusion.fuse_mode() == "auto" and
                                         conv.attrs.get("output_scale") is not None):
            return False
        try:
            if SM.StemMmaSource(**SM.layer_params(net, conv)).rows is None:
                return False  # the conv runs on the gathers
            src = SM.StemMmaSource(**SM.layer_params(net, conv, pool))
        except (ValueError, KeyError) as e:
            log.debug("layer %s does not take pool %s: %s", conv.name, pool.name, e)
            return False
        return src.pool is not None

    def fuses_projection(self, net: Network, layer: Layer, proj: Layer) -> bool:
        """Whether ``layer``'s chosen implementation should run the projection shortcut
        ``proj`` in its own kernel (quantization.fuse_projections): both on ``q_mma`` and
        ``q_mma``'s source takes the pair (a ``cuda_source_qmma.Projection``; generated only:
        it compiles and is validated when the engine is prepared; should that fail, the
        emulated path runs both, as its fallback line says). Only where the projection too
        was timed fastest on q_mma: ResNet50 INT8 at batch 128 (H100, s51) ran stage 1's pair
        in 161.8 us fused against 104.2 + 85.0 us, but stage 2's in 141.3 us against 67.5
        us on q_mma + 58.6 us for the strided projection on cuDNN (q_mma's own: 94.3 us)."""
        from tftrt.engine.backends import cuda_source_qmma as QM
        if layer.tactic != "q_mma" or proj.tactic != "q_mma":
            return False
        try:
            QM.layer_source(net, layer, proj)
        except (ValueError, KeyError) as e:
            log.debug("layer %s does not take projection %s: %s", layer.name, proj.name, e)
            return False
        return True

    def reads_float32(self, net: Network, layer: Layer) -> bool:
        """Whether the implementation of ``layer``'s chosen tactic reads a float32 x itself,
        rounding it to float16 as a cast would (precision.absorb_input_casts): ``stem_mma``
        (cuda_source_stem_mma: float16 or float32 x)."""
        return layer.kind == "conv" and layer.tactic == "stem_mma" and \
            layer.precision == "FP16" and "quant" not in layer.attrs

    def accepts_layer(self, net: Network, layer: Layer) -> bool:
        """Whether a fused layer a late pass proposes runs well here (passes/__init__.py):
        ``attention`` when cuDNN's SDPA builds for it; ``se`` when its kernels take the layer
        (and ``TFTRT_FUSE_SE`` is not 0)."""
        if layer.kind == "se":
            from tftrt.engine.backends import cupy_se
            why = cupy_se.se_unsupported(net, layer) if cupy_se.fuse_se() else \
                "TFTRT_FUSE_SE=0"
            if why:
                log.debug("se %s stays unfused: %s", layer.name, why)
            return why is None
        if layer.kind != "attention":
            return True
        from tftrt.engine.backends import cupy_layers as L
        if _lazy()[0].cudnn_module() is None or not L.sdpa_supported(net, layer):
            return False
        try:
            L.AttentionCudnn(net, layer, {}, dict(self.options))
            return True
        except Exception as e:
            log.info("attention %s stays unfused: cuDNN SDPA: %s: %s", layer.name,
                     type(e).__name__, str(e)[:300])
            return False

    def device_name(self) -> str:
        with self.on_device():
            dev = cp.cuda.runtime.getDevice()
        p = cp.cuda.runtime.getDeviceProperties(dev)
        name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
        return f"{name} (sm_{p['major']}{p['minor']})"

    def upload(self, array: np.ndarray):
        with self.on_device():
            return cp.asarray(array)

    def to_numpy(self, array) -> np.ndarray:
        return cp.asnumpy(array)

    def asarray(self, x):
        if isinstance(x, cp.ndarray):
            return x
        if not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__"):
            try:
                return cp.from_dlpack(x)
            except Exception:
                pass
        with self.on_device():
            return cp.asarray(np.asarray(x))

    def synchronize(self) -> None:
        with DEVICE_WIDE, self.on_device():
            cp.cuda.Device().synchronize()

    def random_array(self, shape, dtype):
        dt = np.dtype(dtype)
        with self.on_device():
            if dt.kind == "f":
                return cp.random.standard_normal(shape, dtype=np.float32).astype(dt)
            if dt.kind == "b":
                return cp.random.randint(0, 2, shape).astype(dt)
            return cp.zeros(shape, dt)

    def mark_quick(self, net: Network) -> None:
        """Builder hook for a quick engine (builder.build_engine_from_template(quick=True)):
        its convolutions on cuDNN take a plan that needs no runtime compile
        (cupy_layers.QUICK_ATTR), and its tiled depthwise layers the direct kernel, whose
        compiled code does not depend on the shape (the tiled kernel's does)."""
        from tftrt.engine.backends.cupy_layers import QUICK_ATTR
        for layer in net.layers:
            if layer.kind in ("conv", "conv_transpose") and layer.tactic == "cudnn":
                layer.attrs[QUICK_ATTR] = True
            elif layer.kind == "conv" and layer.tactic == "dw_tiled":
                layer.tactic = "dw_direct"

    def prepare_layer(self, net: Network, layer: Layer, weights: Dict[str, Any]):
        with self.on_device():
            impl = make_impl(net, layer, weights, dict(self.options),
                             strict=layer.kind in ("conv", "conv_transpose", "matmul"))
        shapes = [(tuple(net.tensors[o].shape), np.dtype(net.tensors[o].dtype))
                  for o in layer.outputs]

        def run(inputs: List[Any]) -> List[Any]:
            with self.on_device():
                outs = [cp.empty(s, d) for s, d in shapes]
                impl.run(inputs, outs, None)
            return outs
        run.impl = impl
        return run

    def time_runner(self, runner, inputs, repeats: int = 10, what: str = "a layer") -> float:
        """GPU seconds per call of a prepared runner (CUDA-graph replay when it captures):
        what the layer will cost inside a replayed engine, without Python launch overhead.

        Everything runs on one private stream, after the caller's stream has finished (it
        made ``inputs``). The first call's scratch goes back to CuPy's pool when the call
        returns, while its kernels may still run: from the same stream, the timed calls that
        reuse that memory start only after them. (The first call on the caller's stream and
        the timed ones on this stream once shared a workspace concurrently; cuBLASLt's
        split-K GEMMs keep counters there, and two of them at once never finished.)"""
        with self.on_device():
            return self._time_runner(runner, inputs, repeats, what)

    def _time_runner(self, runner, inputs, repeats: int, what: str) -> float:
        from tftrt.engine.backends.cupy_dnn import gpu_time
        impl = getattr(runner, "impl", None)
        cp.cuda.get_current_stream().synchronize()
        stream = cp.cuda.Stream(non_blocking=True)
        if impl is None:
            return gpu_time(lambda: runner(inputs), stream, repeats, what)
        with stream:
            outs = runner(inputs)
            ws = cp.empty(max(int(impl.workspace), 1), cp.uint8)
        t = gpu_time(lambda: impl.run(inputs, outs, ws), stream, repeats, what)
        stream.synchronize()
        return t

    def engine_impls(self, engine) -> List[Any]:
        """One implementation per layer, shared by every context of ``engine``."""
        with self._lock, self.on_device():
            impls = getattr(engine, "_cupy_impls", None)
            if impls is None:
                opts = {"tf32": bool(engine.config.get("allow_tf32", True))}
                impls = [make_impl(engine.network, l, engine.weights, opts)
                         for l in engine.network.layers]
                log_fallbacks(engine.network.name, engine.network.layers, impls)
                engine._cupy_impls = impls
            return impls

    def create_context(self, engine, slot=None):
        return CupyExecutionContext(self, engine, slot)


# --- execution context ---------------------------------------------------------------------------
class CupyExecutionContext:
    """Arena, stream, CUDA graphs for one engine in one arena slot (see module doc).

    Attributes:
      use_graphs: capture and replay CUDA graphs after the first run (default True).
      profile_result: [(layer name, seconds)] from :meth:`profile`.
    """

    _warned = set()

    def __init__(self, backend: CupyBackend, engine, slot=None):
        self.engine = engine
        self.net = engine.network
        self.impls = backend.engine_impls(engine)
        # The GPU holding the engine's weights (where it was built or loaded); this context's
        # arena, stream and CUDA graphs are made there too.
        weights = [w for w in engine.weights.values() if isinstance(w, cp.ndarray)]
        self.device_id = weights[0].device.id if weights else cp.cuda.runtime.getDevice()
        with cp.cuda.Device(self.device_id):
            self._allocate(engine, slot)

    def _allocate(self, engine, slot) -> None:
        net = self.net
        # The contexts of one arena slot (memory.ArenaPool: the engines of an optimization
        # profile, one caller at a time) share its arena and, so that they never overlap on
        # it, its stream; ``slot_state`` also holds the event after the last caller's reads.
        pool = getattr(engine, "arena_pool", None) if slot is not None else None
        self.slot_state = slot.state if slot is not None else {}
        if "cupy_stream" not in self.slot_state:
            self.slot_state["cupy_stream"] = cp.cuda.Stream(non_blocking=True)
        self.stream = self.slot_state["cupy_stream"]
        self.use_graphs = True
        self.runs = 0
        self.segments: Optional[List[Tuple[str, Any]]] = None
        self.profile_result: List[Tuple[str, float]] = []
        mem = engine.memory
        ws_bytes = max([int(i.workspace) for i in self.impls] + [int(mem.workspace_bytes), 0])
        arena_bytes = int(mem.arena_bytes)
        ws_off = (arena_bytes + 255) // 256 * 256
        need = max(ws_off + ws_bytes, 1)
        # slot_buffer: the slot's arena this context's views and CUDA graphs point into
        # (runtime.ExecutionContext.outgrown makes the context again once the slot has a
        # larger one)
        self.slot_buffer = (pool.reserve(slot, need, lambda n: cp.empty(n, cp.uint8))
                            if pool is not None else None)
        self.arena = (self.slot_buffer[:need] if pool is not None else
                      cp.empty(need, cp.uint8))
        self.ws = self.arena[ws_off:ws_off + ws_bytes] if ws_bytes else None
        self.device_bytes = int(self.arena.nbytes)

        def alloc(name):
            info = net.tensors[name]
            return cp.empty(tuple(info.shape), np.dtype(info.dtype))

        bufs: Dict[str, Any] = dict(engine.weights)
        self.in_bufs = []
        for name in net.inputs:
            bufs[name] = alloc(name)
            self.in_bufs.append(bufs[name])
        for name, off in mem.offsets.items():
            info = net.tensors[name]
            nbytes = info.nbytes()
            view = self.arena[off:off + nbytes].view(np.dtype(info.dtype))
            bufs[name] = view.reshape(tuple(info.shape))
        self.steps = []
        views = getattr(mem, "aliases", {})
        for layer, impl in zip(net.layers, self.impls):
            if layer.kind == "reshape" and layer.outputs[0] in views:
                continue  # its output views its input's arena bytes: nothing to run
            for o in layer.outputs:
                if o and o not in bufs:
                    bufs[o] = alloc(o)
            ins = [bufs[i] if i else None for i in layer.inputs]
            outs = [bufs[o] for o in layer.outputs]
            self.steps.append((layer, impl, ins, outs))
        self.out_bufs = [bufs[o] for o in net.outputs]
        self._pools = []

    # --- running ---------------------------------------------------------------------------
    def _run_steps(self, steps) -> None:
        for layer, impl, ins, outs in steps:
            try:
                impl.run(ins, outs, self.ws)
            except Exception as err:
                raise RuntimeError(f"layer {layer.name} ({layer.kind}, tactic {layer.tactic}) "
                                   f"failed: {type(err).__name__}: {err}") from err

    def _capture(self) -> None:
        """Splits the layers into capturable runs, captures each into a CUDA graph."""
        groups: List[Tuple[str, list]] = []
        for st in self.steps:
            kind = "graph" if st[1].capturable else "eager"
            if groups and groups[-1][0] == kind == "graph":
                groups[-1][1].append(st)
            else:
                groups.append((kind, [st]))
        segments = []
        for kind, steps in groups:
            if kind == "graph":
                pool = cp.cuda.MemoryPool()
                graph = None
                try:
                    with DEVICE_WIDE, _lazy()[0].gc_paused(), \
                            cp.cuda.using_allocator(pool.malloc):
                        self.stream.begin_capture(mode=_CAPTURE_MODE)
                        try:
                            self._run_steps(steps)
                        finally:
                            graph = self.stream.end_capture()
                    graph.upload(self.stream)
                    self._pools.append(pool)
                    segments.append(("graph", graph))
                    continue
                except Exception as e:
                    key = (self.net.name, steps[0][0].name)
                    if key not in self._warned:
                        self._warned.add(key)
                        log.warning("CUDA graph capture failed for %d layers from %s of %s "
                                    "(%s: %s); they run eagerly", len(steps), steps[0][0].name,
                                    self.net.name, type(e).__name__, e)
            segments.append(("eager", steps))
        self.segments = segments

    def _run(self) -> None:
        if self.segments is None and self.use_graphs and self.runs >= 1:
            self._capture()
        if self.segments is None or not self.use_graphs:
            self._run_steps(self.steps)
        else:
            for kind, item in self.segments:
                if kind == "graph":
                    item.launch(self.stream)
                else:
                    self._run_steps(item)
        self.runs += 1

    def execute(self, inputs: List[Any]) -> List[Any]:
        """Runs the engine on ``inputs`` (device arrays in input order, right shapes/dtypes).

        Work is ordered after the caller's current stream and the caller's stream waits for
        it, so no host synchronization happens. Returns fresh arrays (copies of the context's
        output buffers, made on the caller's stream). The slot's previous caller may have
        been another thread on another stream: the work also waits for that caller's copies
        (the slot's ``released`` event), which read buffers this run writes."""
        for i, x in enumerate(inputs):
            if isinstance(x, cp.ndarray) and x.device.id != self.device_id:
                raise WrongDevice(
                    f"input {i} of engine {self.net.name} is on GPU {x.device.id}, but the "
                    f"engine's weights and buffers are on GPU {self.device_id}: tftrt does "
                    f"not place engines per GPU yet; serve one GPU per process "
                    f"(CUDA_VISIBLE_DEVICES or `tftrt serve --gpus N`)")
        with cp.cuda.Device(self.device_id):  # whatever device the calling thread had
            return self._execute(inputs)

    def _execute(self, inputs: List[Any]) -> List[Any]:
        caller = cp.cuda.get_current_stream()
        state = self.slot_state
        released = state.get("released")
        if released is not None:
            self.stream.wait_event(released)
        self.stream.wait_event(caller.record())
        with self.stream:
            for buf, x in zip(self.in_bufs, inputs):
                if not isinstance(x, cp.ndarray):
                    x = cp.asarray(x)
                if x.data.ptr != buf.data.ptr:
                    cp.copyto(buf, x, casting="unsafe")
            self._run()
            done = self.stream.record()
        caller.wait_event(done)
        with caller:
            outs = [b.copy() for b in self.out_bufs]
            state["released"] = caller.record()
        return outs

    def time_run(self, inputs: List[Any], repeats: int = 10, rounds: int = 5) -> float:
        """GPU seconds per run of the whole engine as it serves (its CUDA graphs replayed, its
        eager layers launched from the host, the gaps between them included): the median of
        ``rounds`` rounds of ``repeats`` runs, timed by events on the context's stream, after
        two runs (the second one captures the graphs)."""
        from tftrt.engine.backends import cupy_dnn as D
        self.execute(inputs)
        self.execute(inputs)
        what = f"the engine {self.net.name}"
        rates = []
        with cp.cuda.Device(self.device_id), D._timing_guard(), self.stream:
            for _ in range(rounds):
                e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                e0.record(self.stream)
                for _ in range(repeats):
                    self._run()
                e1.record(self.stream)
                D.wait_event(e1, what)
                rates.append(cp.cuda.get_elapsed_time(e0, e1) * 1e-3 / repeats)
        return float(np.median(rates))

    def profile(self, inputs: List[Any], repeats: int = 20) -> List[Tuple[str, float]]:
        """GPU seconds per layer: each layer replayed alone from a CUDA graph (host launch
        cost excluded, as in a replayed engine); non-capturable layers timed eagerly."""
        from tftrt.engine.backends.cupy_dnn import gpu_time
        self.execute(inputs)
        self.stream.synchronize()
        res = []
        for layer, impl, ins, outs in self.steps:
            if impl.capturable:
                pool = cp.cuda.MemoryPool()
                with cp.cuda.using_allocator(pool.malloc):
                    t = gpu_time(lambda: impl.run(ins, outs, self.ws), self.stream, repeats)
            else:
                t0 = time.perf_counter()
                with self.stream:
                    impl.run(ins, outs, self.ws)
                self.stream.synchronize()
                t = time.perf_counter() - t0
            res.append((layer.name, t))
        self.profile_result = res
        return res
