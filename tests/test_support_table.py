"""The generated supported-op table is current, and covers TF-TRT's published op list."""

from tftrt import support_table
from tftrt.converters.registry import registered_ops

# TF-TRT's published support list, plus what Keras 3 graphs emit that later TF-TRT added.
TF_TRT_OPS = """Abs Acos Acosh Add AddN AddV2 ArgMax ArgMin Asin Asinh Atan AvgPool BatchMatMul
BatchMatMulV2 BiasAdd Ceil ClipByValue ConcatV2 Const Conv2D Conv2DBackpropInput
Conv3D Conv3DBackpropInputV2 Cos Cosh DepthToSpace DepthwiseConv2dNative Div Elu Exp ExpandDims
FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars Floor FloorDiv FusedBatchNorm FusedBatchNormV2
FusedBatchNormV3 FusedConv2DBiasActivation GatherV2 Identity LeakyRelu Log MatMul Max MaxPool
Maximum Mean Min Minimum Mul Neg Pack Pad Pow Prod QuantizeAndDequantizeV2
QuantizeAndDequantizeV3 RealDiv Reciprocal Relu Relu6 Reshape Rsqrt Selu Sigmoid Sin Sinh Slice
Snapshot Softmax Softplus Softsign SpaceToDepth Split Sqrt Square SquaredDifference Squeeze
StopGradient StridedSlice Sub Sum Tan Tanh TopKV2 Transpose Unpack
Erf Cast Fill ZerosLike OnesLike Shape Tile SplitV Select SelectV2 Einsum GreaterEqual Greater
Less LessEqual Equal NotEqual LogicalAnd LogicalOr LogicalNot Round Sign Rank Size
CombinedNonMaxSuppression""".split()


def test_checked_in_table_is_current():
    with open(support_table.DOC) as f:
        on_disk = f.read()
    assert on_disk == support_table.render(), (
        "docs/supported_ops.md is stale: run `python -m tftrt.support_table --write`")


def test_every_tf_trt_op_has_a_converter():
    missing = sorted(set(TF_TRT_OPS) - set(registered_ops()))
    assert not missing, f"no converter for {missing}"


def test_every_registered_op_is_named_by_a_test():
    table = support_table._tests_naming_ops(registered_ops())
    untested = sorted(op for op, tests in table.items() if not tests)
    assert not untested, f"ops without a test that names them: {untested}"
