"""Converters: one registration per TF op type (validator + lowering to ONNX).

Families: nn.py (convolution, normalization, pooling, activations, matmul), math.py
(elementwise and unary math), array.py (shape and data movement), reduce.py (reductions,
softmax, arg-max), space_batch.py (SpaceToBatchND / BatchToSpaceND: dilated convolutions),
masks.py (OneHot, MatrixBandPart, IsFinite, IsInf), scan.py (Cumsum as a log-step scan),
plus helpers layout.py and broadcast.py. See registry.py for the contract.
"""

from .registry import ANY, TENSOR, WEIGHT, converter, lookup, registered_ops, validate_node

__all__ = ["converter", "lookup", "registered_ops", "validate_node", "TENSOR", "WEIGHT", "ANY"]
