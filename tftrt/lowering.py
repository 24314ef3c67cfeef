"""Lowering: a segment of TF nodes -> one ONNX model (the segment network).

The two contexts here are what converters see:

* :class:`ValidationContext` answers questions about the graph (dtypes, static shapes, constant
  values, attributes). The segmenter hands it to ``validate``; it never emits anything.
* :class:`ConversionContext` adds the emitting side: ``input`` (ONNX value of a TF input),
  ``const`` (an initializer), ``emit`` (an ONNX node) and ``set_output`` (map a TF output to an
  ONNX value).

Segment networks follow TF-TRT's naming: inputs ``TensorRTInputPH_<i>``, outputs
``TensorRTOutputPH_<i>``; unknown dimensions are symbolic (``unk__<i>``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tftrt.graph_io import GraphInfo, attr_value, tensor_name, split_tensor_name

log = logging.getLogger("tftrt.lowering")

OPSET = 17

_NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.bool_): TensorProto.BOOL,
}


def onnx_dtype(dtype) -> int:
    """ONNX TensorProto element type of a numpy dtype."""
    try:
        return _NP_TO_ONNX[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"dtype {np.dtype(dtype).name} has no ONNX equivalent here") from None


class ConversionError(Exception):
    """A converter could not lower a node it had validated.

    ``node`` names the TF node when known, so the converter can keep that node native and
    segment again instead of giving up the whole segment.
    """

    def __init__(self, message: str, node: Optional[str] = None):
        super().__init__(message)
        self.node = node


class ValidationContext:
    """Read-only view of the graph that validators and converters use."""

    def __init__(self, info: GraphInfo):
        self.info = info

    # --- structure -------------------------------------------------------------------------
    def num_inputs(self, node) -> int:
        return len(self.info.data_inputs(node))

    def input_tensor(self, node, i: int) -> str:
        return self.info.data_inputs(node)[i]

    def input_node(self, node, i: int):
        return self.info.nodes[split_tensor_name(self.input_tensor(node, i))[0]]

    def num_outputs(self, node) -> int:
        return self.info.num_outputs(node.name)

    # --- types and shapes ------------------------------------------------------------------
    def input_shape(self, node, i: int) -> Optional[Tuple[Optional[int], ...]]:
        """Static shape of data input i: a tuple (None for an unknown dim), or None when the
        rank is unknown."""
        return self.info.shapes.get(self.input_tensor(node, i))

    def input_dtype(self, node, i: int) -> Optional[np.dtype]:
        return self.info.dtypes.get(self.input_tensor(node, i))

    def output_shape(self, node, i: int = 0) -> Optional[Tuple[Optional[int], ...]]:
        return self.info.shapes.get(tensor_name(node.name, i))

    def output_dtype(self, node, i: int = 0) -> Optional[np.dtype]:
        return self.info.dtypes.get(tensor_name(node.name, i))

    def input_rank(self, node, i: int) -> Optional[int]:
        s = self.input_shape(node, i)
        return None if s is None else len(s)

    # --- constants ---------------------------------------------------------------------------
    def is_const(self, node, i: int) -> bool:
        return self.info.const_value(self.input_tensor(node, i)) is not None

    def const_value(self, node, i: int) -> np.ndarray:
        v = self.info.const_value(self.input_tensor(node, i))
        if v is None:
            raise ConversionError(f"input {i} of {node.name} ({node.op}) is not a constant")
        return v

    # --- attributes --------------------------------------------------------------------------
    def attr(self, node, name: str, default=None):
        """Decoded attribute: int, float, bool, str, list, np.dtype, shape list or ndarray."""
        if name not in node.attr:
            return default
        return attr_value(node.attr[name])

    def attr_dtype(self, node, name: str = "T") -> Optional[np.dtype]:
        v = self.attr(node, name)
        return v if isinstance(v, np.dtype) else None


class ConversionContext(ValidationContext):
    """Emitting context for one segment; produces an ONNX graph."""

    def __init__(self, info: GraphInfo, segment_inputs: Sequence[str], name: str):
        super().__init__(info)
        self.name = name
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: Dict[str, onnx.TensorProto] = {}
        self._values: Dict[str, str] = {}  # TF tensor name -> ONNX value name
        self._const_cache: Dict[str, str] = {}  # TF const tensor name -> initializer name
        self._names: Dict[str, int] = {}
        self.inputs: List[onnx.ValueInfoProto] = []
        for i, t in enumerate(segment_inputs):
            onnx_name = f"TensorRTInputPH_{i}"
            self._values[t] = onnx_name
            self.inputs.append(self._value_info(onnx_name, t))
        self.opset = OPSET

    # --- naming ------------------------------------------------------------------------------
    def unique_name(self, hint: str) -> str:
        hint = hint.replace(":", "_")
        n = self._names.get(hint, 0)
        self._names[hint] = n + 1
        return hint if n == 0 else f"{hint}__{n}"

    # --- reading inputs ------------------------------------------------------------------------
    def input(self, node, i: int) -> str:
        """ONNX value name for data input i of ``node`` (a constant becomes an initializer)."""
        t = self.input_tensor(node, i)
        if t in self._values:
            return self._values[t]
        value = self.info.const_value(t)
        if value is not None:
            if t not in self._const_cache:
                self._const_cache[t] = self.const(value, t)
            return self._const_cache[t]
        raise ConversionError(f"input {t} of {node.name} is neither a segment input, "
                              f"a converted node nor a constant")

    # --- emitting ------------------------------------------------------------------------------
    def const(self, value, name: str = "const") -> str:
        """Adds an initializer holding ``value`` (numpy array or scalar) and returns its name."""
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        n = self.unique_name(name)
        self.initializers[n] = numpy_helper.from_array(arr, n)
        return n

    def emit(self, op_type: str, inputs: Sequence[str], outputs: int = 1,
             name: Optional[str] = None, domain: str = "", **attrs) -> Union[str, List[str]]:
        """Adds an ONNX node; returns its output name (or a list when ``outputs`` > 1).

        Optional inputs are passed as "" (ONNX convention). Attribute values are given as
        python values (ints, floats, lists, strings, onnx.TensorProto).
        """
        base = self.unique_name(name or op_type)
        outs = [base if outputs == 1 else f"{base}:{k}" for k in range(outputs)]
        if outputs == 1:
            outs = [self.unique_name(base + "_out")]
        node = helper.make_node(op_type, list(inputs), outs, name=base, domain=domain,
                                **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return outs[0] if outputs == 1 else outs

    def set_output(self, node, i: int, value: str) -> None:
        """Declares that TF output ``node:i`` is the ONNX value ``value``."""
        self._values[tensor_name(node.name, i)] = value

    def value_of(self, tf_tensor: str) -> Optional[str]:
        return self._values.get(tf_tensor)

    # --- assembling ----------------------------------------------------------------------------
    def _value_info(self, onnx_name: str, tf_tensor: str,
                    producer: Optional[str] = None) -> onnx.ValueInfoProto:
        """``producer``: the segment's node that makes ``tf_tensor`` (its outputs), kept
        native when the tensor's dtype has no ONNX type; a segment input's dtype drops the
        segment."""
        dtype = self.info.dtypes[tf_tensor]
        shape = self.info.shapes.get(tf_tensor)
        dims = None
        if shape is not None:
            dims = [d if d is not None else f"unk__{onnx_name}_{k}" for k, d in enumerate(shape)]
        try:
            elem = onnx_dtype(dtype)
        except TypeError as e:
            raise ConversionError(f"{tf_tensor}: {e}", node=producer) from None
        return helper.make_tensor_value_info(onnx_name, elem, dims)

    def make_model(self, outputs: Sequence[str]) -> onnx.ModelProto:
        out_infos = []
        for i, t in enumerate(outputs):
            onnx_name = f"TensorRTOutputPH_{i}"
            src = self._values.get(t)
            if src is None:
                raise ConversionError(f"segment output {t} was not produced by any converter")
            self.nodes.append(helper.make_node("Identity", [src], [onnx_name],
                                               name=self.unique_name(onnx_name)))
            out_infos.append(self._value_info(onnx_name, t, split_tensor_name(t)[0]))
        # a converter may read a constant it then does not use (FusedBatchNorm's running mean
        # and variance, passed through to outputs nothing reads): no dead initializers
        used = {i for n in self.nodes for i in n.input}
        graph = helper.make_graph(self.nodes, self.name, self.inputs, out_infos)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="tftrt")
        del graph
        model.ir_version = 8
        # The initializers go into the model one at a time, each dropped here once copied:
        # make_graph copies them into the graph and make_model the graph into the model, so
        # every weight was held three times at once (helper hunt, memory). The context makes
        # one model; its initializers are not needed after.
        for n in list(self.initializers):
            t = self.initializers.pop(n)
            if n in used:
                model.graph.initializer.append(t)
        return model


@dataclasses.dataclass
class SegmentNetwork:
    """The ONNX model of one segment and how it maps to the TF graph."""

    name: str
    model: onnx.ModelProto
    input_tensors: List[str]   # TF tensor names feeding TensorRTInputPH_i
    output_tensors: List[str]  # TF tensor names produced as TensorRTOutputPH_i


def lower_segment(info: GraphInfo, name: str, node_names: Sequence[str],
                  input_tensors: Sequence[str], output_tensors: Sequence[str],
                  check: bool = True) -> SegmentNetwork:
    """Lowers the nodes of one segment (in topological order) to an ONNX model.

    Raises:
      ConversionError: when a converter fails on a node it had validated.
    """
    from tftrt.converters.registry import lookup

    ctx = ConversionContext(info, input_tensors, name)
    for n in node_names:
        node = info.nodes[n]
        reg = lookup(node.op)
        if reg is None:
            raise ConversionError(f"no converter for {node.op} ({n})", n)
        try:
            reg.impl.convert(node, ctx)
        except ConversionError as e:
            raise ConversionError(str(e), e.node or n) from e
        except Exception as e:
            raise ConversionError(f"converter {reg.name} failed on {n} ({node.op}): "
                                  f"{type(e).__name__}: {e}", n) from e
    model = ctx.make_model(output_tensors)
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as e:  # a converter let through what ONNX refuses:
            # the segment stays native (conversion drops it with a warning), not convert()
            raise ConversionError(f"segment network {name} is not valid ONNX: {e}") from e
    return SegmentNetwork(name, model, list(input_tensors), list(output_tensors))
