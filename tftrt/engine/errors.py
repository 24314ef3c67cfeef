"""Errors raised by the engine. Messages say what was wrong (with the value) and what to do."""


class EngineBuildError(Exception):
    """The network cannot be turned into an engine (unsupported op, shape, precision, memory).

    The caller (TRTEngineOp) falls back to the native TensorFlow segment and logs the message.
    """


class PlanError(Exception):
    """A serialized plan cannot be loaded here (corrupt, other format version, other device).

    The caller rebuilds the engine from the segment network.
    """


class GpuTimeout(EngineBuildError):
    """GPU work launched while building an engine did not finish in time (a kernel that never
    ends). Timing loops re-raise it instead of trying the next candidate on a stuck GPU."""


class WrongDevice(RuntimeError):
    """An engine was called with inputs on another GPU than the one holding its weights and
    buffers. Raised before any work is queued; the engine op runs the native segment."""
