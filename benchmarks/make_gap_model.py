"""The small model of benchmarks/README.md's CPU serving comparison (2026-12-04): a
224x224x3 float input pooled over H and W, a 3x10 matmul, relu; converted with one profile
1..128 (numpy engines without a GPU). Writes DIR/src and DIR/gap_trt.

    TFTRT_BACKEND=numpy python benchmarks/make_gap_model.py /tmp/direct
"""

import os
import sys

import numpy as np
import tensorflow as tf

from tftrt import trt_convert as trt


class Gap(tf.Module):
    def __init__(self):
        self.w = tf.Variable(np.random.RandomState(0).randn(3, 10).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="x")])
    def __call__(self, x):
        return {"y": tf.nn.relu(tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.w))}


def main(out: str) -> None:
    m = Gap()
    src = os.path.join(out, "src")
    tf.saved_model.save(m, src, signatures={"serving_default": m.__call__})
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, use_dynamic_shape=True,
                                   dynamic_shape_profile_strategy="Range")
    conv.convert()
    conv.build(lambda: iter([(np.zeros((b, 224, 224, 3), np.float32),) for b in (1, 128)]))
    conv.save(os.path.join(out, "gap_trt"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/direct")
