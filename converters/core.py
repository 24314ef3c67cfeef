"""Graph plumbing: constants and identities."""

from .registry import ANY, converter


@converter("Const", dtype_attr="dtype",
           dtypes=("float32", "float16", "int32", "int64", "bool", "int8", "uint8"))
class Const:
    """A constant becomes an initializer of the segment network."""

    @staticmethod
    def validate(node, ctx):
        if ctx.attr(node, "value") is None:
            return "constant value could not be decoded"
        return None

    @staticmethod
    def convert(node, ctx):
        # Nothing to emit: consumers read constants through ctx.input, which adds each as an
        # initializer on first use (so an unused or re-laid-out constant is never stored).
        pass


@converter("Identity", "Snapshot", "StopGradient", "PreventGradient", inputs=(ANY,),
           dtype_attr="T", dtypes=("float32", "float16", "int32", "int64", "bool", "int8",
                                   "uint8"))
class Identity:
    """Pass-through ops; they do not count toward minimum_segment_size."""

    @staticmethod
    def convert(node, ctx):
        ctx.set_output(node, 0, ctx.input(node, 0))
