"""Sharing one GPU between TensorFlow and tftrt engines.

TensorFlow reserves nearly all GPU memory when it initialises a GPU, unless memory growth is
on; CuPy allocations for engines would then fail. tftrt turns memory growth on for every GPU
as soon as it sees TensorFlow, before TensorFlow initialises them (``import tftrt`` after
``import tensorflow``, creating a converter, or ``tftrt.load``). When TensorFlow already
initialised its GPUs without growth, an engine that runs out of memory says what to set.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("tftrt.gpu_memory")

ADVICE = ("TensorFlow reserved the GPU memory before tftrt could share it: set "
          "TF_FORCE_GPU_ALLOW_GROWTH=true in the environment, or call "
          "tf.config.experimental.set_memory_growth(gpu, True) for each GPU (or import tftrt) "
          "before TensorFlow runs its first GPU op")

_state = {"configured": False, "too_late": False}


def share_gpu_with_tensorflow() -> None:
    """Turns on TF memory growth for every GPU if TF has not initialised them yet."""
    if _state["configured"]:
        return
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return
    _state["configured"] = True
    if os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH", "").lower() == "true":
        return
    try:
        gpus = tf.config.list_physical_devices("GPU")
    except Exception:  # TF without GPU support
        return
    for gpu in gpus:
        try:
            if not tf.config.experimental.get_memory_growth(gpu):
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            # "Physical devices cannot be modified after being initialized".
            _state["too_late"] = True
    if _state["too_late"]:
        log.warning("TensorFlow initialised its GPUs before tftrt; engines may run out of "
                    "memory. %s", ADVICE)


def explain_out_of_memory(err: BaseException) -> BaseException:
    """A clearer error for an out-of-memory in an engine, when TF may hold the memory."""
    if "OutOfMemory" in type(err).__name__ or "out of memory" in str(err).lower():
        return MemoryError(f"{err}. {ADVICE}, or lower max_workspace_size_bytes / the batch")
    return err
