"""GPU memory sharing between TensorFlow and engines: clear advice instead of a bare OOM."""

from tftrt import gpu_memory


class OutOfMemoryError(Exception):
    """Stands in for cupy.cuda.memory.OutOfMemoryError (same class name)."""


def test_out_of_memory_gets_advice():
    err = gpu_memory.explain_out_of_memory(OutOfMemoryError("Out of memory allocating 8 GiB"))
    assert isinstance(err, MemoryError)
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in str(err) and "8 GiB" in str(err)


def test_other_errors_pass_through():
    e = ValueError("shape mismatch")
    assert gpu_memory.explain_out_of_memory(e) is e


def test_share_gpu_is_safe_without_gpus():
    import tensorflow  # noqa: F401  (the function looks for it in sys.modules)
    gpu_memory._state["configured"] = False
    gpu_memory.share_gpu_with_tensorflow()
    assert gpu_memory._state["configured"]
