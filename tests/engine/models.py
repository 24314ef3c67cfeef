"""Whole segment networks as the TF converters emit them (NHWC with transposes around each
conv, Keras BatchNorm as Mul/Add by constant vectors), built without TensorFlow."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
from onnx import helper

from tests.engine.harness import make_model

N = helper.make_node


class _Builder:
    def __init__(self, seed: int = 0):
        self.nodes: List = []
        self.consts: Dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        self.k = 0

    def name(self, hint):
        self.k += 1
        return f"{hint}_{self.k}"

    def const(self, value, hint="c"):
        n = self.name(hint)
        self.consts[n] = np.asarray(value, np.float32)
        return n

    def conv(self, x, cin, cout, k, stride=1, bias=False):
        """Keras Conv2D(padding="same") lowered by the converters: NHWC in and out."""
        w = self.const(self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)),
                       "kernel")
        t, c, y = self.name("to_nchw"), self.name("conv"), self.name("to_nhwc")
        total = max(k - stride, 0)
        pads = [total // 2, total // 2, total - total // 2, total - total // 2]
        ins = [t, w] + ([self.const(self.rng.standard_normal(cout) * 0.1, "bias")] if bias
                        else [])
        self.nodes += [N("Transpose", [x], [t], perm=[0, 3, 1, 2]),
                       N("Conv", ins, [c], strides=[stride, stride], pads=pads),
                       N("Transpose", [c], [y], perm=[0, 2, 3, 1])]
        return y

    def bn(self, x, c):
        """Keras 3 BatchNormalization in inference: x * scale + shift, constant vectors."""
        scale = self.const(self.rng.uniform(0.5, 1.0, c), "bn_scale")
        shift = self.const(self.rng.standard_normal(c) * 0.1, "bn_shift")
        m, y = self.name("bn_mul"), self.name("bn_add")
        self.nodes += [N("Mul", [x, scale], [m]), N("Add", [m, shift], [y])]
        return y

    def op(self, op_type, ins, **attrs):
        y = self.name(op_type.lower())
        self.nodes.append(N(op_type, ins, [y], **attrs))
        return y


def resnet50(batch: int = 2, size: int = 32, classes: int = 10, width: int = 64):
    """Keras ResNet50's structure (bottleneck blocks 3-4-6-3) as one segment network."""
    b = _Builder()
    x = "TensorRTInputPH_0"
    h = b.op("Relu", [b.bn(b.conv(x, 3, width, 7, 2, bias=True), width)])
    t, p = b.name("to_nchw"), b.name("pool")
    b.nodes += [N("Transpose", [h], [t], perm=[0, 3, 1, 2]),
                N("MaxPool", [t], [p], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    h = b.op("Transpose", [p], perm=[0, 2, 3, 1])
    cin = width
    for stage, blocks in enumerate([3, 4, 6, 3]):
        f = width * 2 ** stage
        for i in range(blocks):
            s = 2 if i == 0 and stage > 0 else 1
            if i == 0:
                sc = b.bn(b.conv(h, cin, 4 * f, 1, s, bias=True), 4 * f)
            else:
                sc = h
            y = b.op("Relu", [b.bn(b.conv(h, cin, f, 1, s, bias=True), f)])
            y = b.op("Relu", [b.bn(b.conv(y, f, f, 3, 1, bias=True), f)])
            y = b.bn(b.conv(y, f, 4 * f, 1, 1, bias=True), 4 * f)
            h = b.op("Relu", [b.op("Add", [sc, y])])
            cin = 4 * f
    g = b.op("ReduceMean", [h], keepdims=0, axes=[1, 2])
    w = b.const(b.rng.standard_normal((cin, classes)) * 0.05, "dense")
    logits = b.op("Add", [b.op("MatMul", [g, w]), b.const(np.zeros(classes), "dense_bias")])
    b.nodes.append(N("Softmax", [logits], ["TensorRTOutputPH_0"], axis=-1))
    feeds = {x: np.random.default_rng(1).standard_normal((batch, size, size, 3))
             .astype(np.float32)}
    model = make_model(b.nodes, feeds, b.consts, outputs=["TensorRTOutputPH_0"], symbolic=[0])
    return model, feeds
