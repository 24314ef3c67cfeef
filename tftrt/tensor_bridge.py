"""Moving tensors between TensorFlow and engine backends.

GPU tensors cross zero-copy through DLPack in both directions:
  in:  ``cp.from_dlpack(tf.experimental.dlpack.to_dlpack(t))``
  out: ``tf.experimental.dlpack.from_dlpack(arr.__dlpack__())`` (TF 2.21 rejects the versioned
       capsule that CuPy 14's ``toDlpack()`` makes, so we ask for the legacy one).
CPU tensors go through numpy (``t.numpy()`` shares memory where TensorFlow allows).

Stream order. TensorFlow computes on its own (non-blocking) CUDA streams, CuPy engines on
theirs, and DLPack carries no stream: nothing orders the engine's reads after TF's writes of
its inputs, or TF's reads after the engine's writes of its outputs. ``wait_for_tensorflow``
(before an engine runs on GPU inputs) waits until the GPU's queued work, TF's included, is
done, and ``wait_for_engine`` (before outputs go back) until the engine's is. Both are on by
default; ``TFTRT_STREAM_SYNC=0`` turns them off for callers that order streams themselves.
"""

from __future__ import annotations

import numpy as np


def _stream_sync() -> bool:
    from tftrt.env import env_bool
    return env_bool("TFTRT_STREAM_SYNC", True)


def wait_for_tensorflow(inputs, arrays) -> None:
    """Blocks until TensorFlow's queued GPU work (which may still write ``inputs``) is done.

    ``arrays`` are the TF tensors ``inputs`` as CuPy arrays, already taken through DLPack:
    a tensor's DLPack capsule holds its device pointer, which TF gives out only once the
    handle is ready, that is once the producing op has run (its kernels enqueued), so what
    is left is GPU work on TF's streams. ``cudaDeviceSynchronize`` on each device the inputs
    live on waits for it: a few microseconds when the GPU is idle, where a ``SyncDevice`` op
    through TF's eager dispatch cost ~0.2 ms per call. It also waits for other threads'
    queued work on that GPU (as ``SyncDevice`` waited for all of TF's)."""
    if not _stream_sync():
        return
    devices = {a.device.id for t, a in zip(inputs, arrays) if _on_gpu(t)}
    if not devices:
        return
    import cupy as cp
    from tftrt.engine.backends.cupy_backend import DEVICE_WIDE
    with DEVICE_WIDE:  # never inside another thread's CUDA-graph capture
        for dev in sorted(devices):
            with cp.cuda.Device(dev):
                cp.cuda.runtime.deviceSynchronize()


def wait_for_engine() -> None:
    """Blocks until the engine's GPU work (writing its outputs) is done."""
    if _stream_sync():
        import cupy as cp
        cp.cuda.get_current_stream().synchronize()


def _on_gpu(t) -> bool:
    """Whether TF tensor ``t``'s memory is on a GPU: its backing device, not ``t.device``.

    ``t.device`` names the device of the op that made the tensor. Inside an EagerPyFunc
    (every engine node in a TF graph) TensorFlow hands the inputs over as handles with GPU
    memory and no op device (py_func.cc: ``CreateLocalHandleFromTFTensor``, op device null),
    so ``t.device`` says CPU:0 while ``t.backing_device`` says GPU:0. Reading ``t.device``
    sent every such input through numpy: one device-to-host copy of the whole tensor per
    engine call (the H200 runs of 2026-11-30: 2,048 B per engine at batch 8; DLPack out and
    TF's own EagerPyFunc copied nothing)."""
    dev = getattr(t, "backing_device", None) or getattr(t, "device", "") or ""
    return "GPU" in dev.upper()


def to_backend(t, backend: str):
    """A TF eager tensor as an array of ``backend`` (numpy or cupy)."""
    if backend == "numpy":
        return np.asarray(t)
    if backend == "cupy":
        import cupy as cp
        if _on_gpu(t):
            import tensorflow as tf
            return cp.from_dlpack(tf.experimental.dlpack.to_dlpack(t))
        from tftrt.engine.backends import get_backend
        return get_backend("cupy").upload(np.asarray(t))  # on the engines' GPU
    raise ValueError(f"unknown backend {backend!r}")


_TF_HAS_GPU = []


def _tf_has_gpu() -> bool:
    if not _TF_HAS_GPU:
        import tensorflow as tf
        _TF_HAS_GPU.append(bool(tf.config.list_logical_devices("GPU")))
    return _TF_HAS_GPU[0]


def from_backend(arr, backend: str, dtype: np.dtype):
    """A backend array as something TensorFlow accepts as an op output (same device)."""
    if backend == "numpy":
        return np.asarray(arr, dtype=dtype)
    if backend == "cupy":
        import tensorflow as tf
        if _tf_has_gpu():
            if arr.dtype != dtype:
                arr = arr.astype(dtype)
            try:
                capsule = arr.__dlpack__(max_version=None)
            except TypeError:
                capsule = arr.__dlpack__()
            return tf.experimental.dlpack.from_dlpack(capsule)
        return arr.get().astype(dtype, copy=False)
    raise ValueError(f"unknown backend {backend!r}")
