"""tensor_bridge decides the way a TF tensor reaches an engine by where its memory is.

The GPU side runs in tests/gpu/test_engine_boundaries.py (device-to-host copies counted with
TF's profiler); here the decision itself, which needs no GPU."""

import types

import numpy as np
import tensorflow as tf

from tftrt import tensor_bridge

CPU = "/job:localhost/replica:0/task:0/device:CPU:0"
GPU = "/job:localhost/replica:0/task:0/device:GPU:0"


def test_an_eagerpyfunc_input_on_the_gpu_counts_as_gpu():
    """Inside an EagerPyFunc placed on a GPU, TF makes the inputs with GPU memory and no op
    device: ``.device`` says CPU:0, ``.backing_device`` GPU:0. Reading ``.device`` sent them
    through numpy (a device-to-host copy per engine call)."""
    eager_py_func_input = types.SimpleNamespace(device=CPU, backing_device=GPU)
    assert tensor_bridge._on_gpu(eager_py_func_input)
    # an op's output on the GPU: both name it
    assert tensor_bridge._on_gpu(types.SimpleNamespace(device=GPU, backing_device=GPU))
    # something with a device and no backing device (not an EagerTensor)
    assert tensor_bridge._on_gpu(types.SimpleNamespace(device=GPU))
    assert not tensor_bridge._on_gpu(types.SimpleNamespace(device=CPU, backing_device=CPU))


def test_a_cpu_tensor_in_and_out_of_an_eagerpyfunc_stays_on_the_numpy_path():
    seen = []

    def body(t):
        seen.append((t.device, t.backing_device, tensor_bridge._on_gpu(t)))
        return t * 2

    @tf.function
    def f(x):
        with tf.device("/CPU:0"):
            return tf.py_function(body, [x], tf.float32)
    x = tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(f(x).numpy(), x.numpy() * 2)
    (device, backing, on_gpu), = seen
    assert "CPU" in backing.upper() and not on_gpu, seen
    np.testing.assert_array_equal(tensor_bridge.to_backend(x, "numpy"), x.numpy())
