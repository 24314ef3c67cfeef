"""CuPy implementations of the data-movement and less frequent layer kinds (reductions,
shuffles, indexing, scatter, range, resize, quantization, non-max suppression, ...). Every one
runs on the GPU; nothing here goes back to the host reference.

These use CuPy's array library (its element-wise / reduction kernels, CUB), which runs on the
current stream and captures into CUDA graphs as long as nothing synchronizes with the host.
Temporaries come from CuPy's pool; an execution context captures with a private pool so they
stay valid for the graph's lifetime.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

import cupy as cp

from tftrt.engine.backends.cuda_source_move import SpaceToDepthSource
from tftrt.engine.backends.cupy_kernels import CTYPES, _raw_kernel, launch
from tftrt.engine.backends.cupy_layers import Impl, _dtype, _shape
from tftrt.engine.backends.numpy_ops import descending_order

IMPLS: Dict[str, type] = {}


def impl(*kinds):
    def deco(cls):
        for k in kinds:
            IMPLS[k] = cls
        return cls
    return deco


def _f32(x):
    return x.astype(cp.float32) if x.dtype == cp.float16 else x


def _put(out, value):
    value = cp.asarray(value)
    cp.copyto(out, value.reshape(out.shape) if value.size == out.size else value,
              casting="unsafe")


@impl("reduce")
class Reduce(Impl):
    """A generated kernel when the reduced axes are one contiguous block of a float tensor;
    CuPy's reductions otherwise."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        from tftrt.engine.backends.cupy_kernels_nn import ReduceKernel
        a = layer.attrs
        xs, axes = _shape(net, layer.inputs[0]), sorted(a["axes"])
        self.kernel = None
        fl = np.dtype(_dtype(net, layer.inputs[0])).kind == "f" and \
            np.dtype(_dtype(net, layer.outputs[0])).kind == "f"
        if axes and fl and axes == list(range(axes[0], axes[-1] + 1)):
            o = int(np.prod(xs[:axes[0]], dtype=np.int64))
            r = int(np.prod(xs[axes[0]:axes[-1] + 1], dtype=np.int64))
            i = int(np.prod(xs[axes[-1] + 1:], dtype=np.int64))
            if r > 0:
                self.kernel = ReduceKernel(o, r, i, a["op"], _dtype(net, layer.inputs[0]),
                                           _dtype(net, layer.outputs[0]))

    def run(self, ins, outs, ws):
        if self.kernel is not None:
            self.kernel(ins[0], outs[0])
            return
        a = self.layer.attrs
        x, op, ax, kd = _f32(ins[0]), a["op"], tuple(a["axes"]), bool(a["keepdims"])
        if not ax:
            _put(outs[0], x)
            return
        if op == "sum":
            r = x.sum(axis=ax, keepdims=kd)
        elif op == "mean":
            r = x.mean(axis=ax, keepdims=kd)
        elif op == "max":
            r = x.max(axis=ax, keepdims=kd)
        elif op == "min":
            r = x.min(axis=ax, keepdims=kd)
        elif op == "prod":
            r = x.prod(axis=ax, keepdims=kd)
        elif op == "l1":
            r = cp.abs(x).sum(axis=ax, keepdims=kd)
        elif op == "l2":
            r = cp.sqrt(cp.square(x).sum(axis=ax, keepdims=kd))
        elif op == "sum_square":
            r = cp.square(x).sum(axis=ax, keepdims=kd)
        elif op == "log_sum":
            r = cp.log(x.sum(axis=ax, keepdims=kd))
        elif op == "log_sum_exp":
            m = x.max(axis=ax, keepdims=True)
            m = cp.where(cp.isfinite(m), m, 0)
            r = cp.log(cp.exp(x - m).sum(axis=ax, keepdims=True)) + m
            if not kd:
                r = cp.squeeze(r, axis=ax)
        else:
            raise NotImplementedError(f"reduce op {op}")
        _put(outs[0], r)


@impl("arg_reduce")
class ArgReduce(Impl):
    def run(self, ins, outs, ws):
        a = self.layer.attrs
        x, ax = ins[0], a["axis"]
        f = cp.argmax if a["op"] == "max" else cp.argmin
        if x.dtype.kind == "f":
            # TF's ArgMax / ArgMin (GPU and CPU kernels) never pick NaN; all NaN is index 0.
            x = cp.where(cp.isnan(x), -cp.inf if a["op"] == "max" else cp.inf, x)
        if a["select_last_index"]:
            idx = x.shape[ax] - 1 - f(cp.flip(x, ax), axis=ax)
        else:
            idx = f(x, axis=ax)
        _put(outs[0], idx.astype(cp.int64).reshape(outs[0].shape))


@impl("topk")
class TopK(Impl):
    def run(self, ins, outs, ws):
        a = self.layer.attrs
        x, ax, k = ins[0], a["axis"], a["k"]
        # integers keep their dtype (float32 tied int32s past 2**24); descending without a
        # negation, which overflowed INT_MIN and put NaN last (numpy_ops.descending_order)
        key = x if x.dtype.kind in "iu" else _f32(x)
        order = descending_order(cp, key, ax) if a["largest"] else cp.argsort(key, axis=ax)
        idx = cp.take(order, cp.arange(k), axis=ax)
        _put(outs[0], cp.take_along_axis(x, idx, axis=ax))
        _put(outs[1], idx.astype(cp.int64))


@impl("cumsum")
class CumSum(Impl):
    def run(self, ins, outs, ws):
        a = self.layer.attrs
        x, ax = ins[0], a["axis"]
        if a["reverse"]:
            x = cp.flip(x, ax)
        y = cp.cumsum(x, axis=ax, dtype=x.dtype)
        if a["exclusive"]:
            y = cp.concatenate([cp.zeros_like(cp.take(y, [0], axis=ax)),
                                cp.take(y, cp.arange(x.shape[ax] - 1), axis=ax)], axis=ax)
        _put(outs[0], cp.flip(y, ax) if a["reverse"] else y)


@impl("transpose")
class Transpose(Impl):
    """A generated kernel (vectorized when the innermost axis stays innermost)."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        from tftrt.engine.backends.cupy_kernels_nn import TransposeKernel
        self.kernel = None
        if _dtype(net, layer.inputs[0]) in CTYPES and _dtype(net, layer.outputs[0]) in CTYPES:
            self.kernel = TransposeKernel(_shape(net, layer.inputs[0]), layer.attrs["perm"],
                                          _dtype(net, layer.inputs[0]),
                                          _dtype(net, layer.outputs[0]))

    def run(self, ins, outs, ws):
        if self.kernel is None:
            cp.copyto(outs[0], ins[0].transpose(self.layer.attrs["perm"]), casting="unsafe")
        else:
            self.kernel(ins[0], outs[0])


@impl("reshape")
class Reshape(Impl):
    def run(self, ins, outs, ws):
        if outs[0].data.ptr != ins[0].data.ptr:
            cp.copyto(outs[0], ins[0].reshape(outs[0].shape))


@impl("concat")
class Concat(Impl):
    """One generated kernel moving 16-byte vectors when every input has the output's dtype
    (DenseNet's channel concats ran at 830 GB/s as one CuPy copy per input, a third of the
    H200's bandwidth); else, or for unaligned buffers, one copy per input."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        from tftrt.engine.backends.cupy_kernels_nn import ConcatKernel
        dts = {_dtype(net, n) for n in list(layer.inputs) + layer.outputs}
        self.kernel = None
        if len(dts) == 1 and layer.inputs:
            self.kernel = ConcatKernel([_shape(net, n) for n in layer.inputs],
                                       layer.attrs["axis"], dts.pop())

    def run(self, ins, outs, ws):
        if self.kernel is not None and self.kernel.aligned(ins, outs[0]):
            self.kernel(ins, outs[0])
            return
        ax, y, off = self.layer.attrs["axis"], outs[0], 0
        for x in ins:
            sl = (slice(None),) * ax + (slice(off, off + x.shape[ax]),)
            cp.copyto(y[sl], x, casting="unsafe")
            off += x.shape[ax]


@impl("split")
class Split(Impl):
    def run(self, ins, outs, ws):
        ax, off = self.layer.attrs["axis"], 0
        for o, s in zip(outs, self.layer.attrs["sizes"]):
            cp.copyto(o, ins[0][(slice(None),) * ax + (slice(off, off + s),)])
            off += s


@impl("slice")
class Slice(Impl):
    def run(self, ins, outs, ws):
        cp.copyto(outs[0], ins[0][tuple(slice(*s) for s in self.layer.attrs["slices"])])


@impl("pad")
class Pad(Impl):
    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        from tftrt.engine.backends.cupy_kernels_nn import PadKernel
        a = layer.attrs
        self.kernel = PadKernel(_shape(net, layer.inputs[0]), _shape(net, layer.outputs[0]),
                                a["pads"], a["mode"], a.get("value", 0),
                                _dtype(net, layer.inputs[0]), _dtype(net, layer.outputs[0]))

    def run(self, ins, outs, ws):
        self.kernel(ins[0], outs[0])


def _wrap(idx, dim):
    idx = idx.astype(cp.int64)
    return cp.where(idx < 0, idx + dim, idx)


@impl("gather")
class Gather(Impl):
    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        ax = layer.attrs["axis"]
        self.idx = None
        if layer.inputs[1] in weights:
            self.idx = _wrap(weights[layer.inputs[1]], _shape(net, layer.inputs[0])[ax])

    def run(self, ins, outs, ws):
        ax = self.layer.attrs["axis"]
        if self.idx is not None:
            cp.copyto(outs[0], cp.take(ins[0], self.idx, axis=ax).reshape(outs[0].shape))
            return
        # runtime indices out of range give zeros, as TF's GPU kernel (cupy.take wrapped them
        # around: index n read row 0; converters/array.py's GatherV2 sends TF's negative
        # indices here as out of range)
        n = ins[0].shape[ax]
        if n == 0:
            outs[0].fill(0)
            return
        idx = _wrap(ins[1], n)
        bad = (idx < 0) | (idx >= n)
        y = cp.take(ins[0], cp.where(bad, 0, idx), axis=ax)
        mask = bad.reshape((1,) * ax + bad.shape + (1,) * (ins[0].ndim - ax - 1))
        cp.copyto(outs[0], cp.where(mask, 0, y).astype(y.dtype, copy=False).reshape(
            outs[0].shape))


@impl("gather_elements")
class GatherElements(Impl):
    def run(self, ins, outs, ws):
        ax = self.layer.attrs["axis"]
        cp.copyto(outs[0], cp.take_along_axis(ins[0], _wrap(ins[1], ins[0].shape[ax]), axis=ax))


@impl("gather_nd")
class GatherND(Impl):
    def run(self, ins, outs, ws):
        x, idx, b = ins[0], ins[1].astype(cp.int64), self.layer.attrs["batch_dims"]
        m = idx.shape[-1]
        nb = int(np.prod(x.shape[:b], dtype=np.int64))
        xb = x.reshape((nb,) + x.shape[b:])
        ib = idx.reshape((nb, -1, m))
        dims = cp.asarray(np.array(x.shape[b:b + m], np.int64))
        ib = cp.where(ib < 0, ib + dims, ib)
        sel = (cp.arange(nb)[:, None],) + tuple(ib[..., j] for j in range(m))
        cp.copyto(outs[0], xb[sel].reshape(outs[0].shape))


@impl("expand")
class Expand(Impl):
    def run(self, ins, outs, ws):
        cp.copyto(outs[0], cp.broadcast_to(ins[0], outs[0].shape))


@impl("tile")
class Tile(Impl):
    def run(self, ins, outs, ws):
        cp.copyto(outs[0], cp.tile(ins[0], self.layer.attrs["repeats"]))


@impl("shape", "size")
class ShapeOf(Impl):
    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        x = _shape(net, layer.inputs[0])
        if layer.kind == "size":
            v = np.array(int(np.prod(x, dtype=np.int64)), np.int64)
        else:
            from tftrt.engine.shapes import shape_slice
            v = np.array(x[shape_slice(layer, len(x))], np.int64)
        self.value = cp.asarray(v)

    def run(self, ins, outs, ws):
        cp.copyto(outs[0], self.value.reshape(outs[0].shape))


@impl("constant_of_shape")
class ConstantOfShape(Impl):
    def run(self, ins, outs, ws):
        outs[0].fill(np.asarray(self.layer.attrs["value"]).astype(outs[0].dtype))


@impl("depth_to_space")
class DepthToSpace(Impl):
    def run(self, ins, outs, ws):
        b, x = self.layer.attrs["blocksize"], ins[0]
        n, h, w, c = x.shape
        cc = c // (b * b)
        if self.layer.attrs["mode"] == "DCR":
            y = x.reshape(n, h, w, b, b, cc).transpose(0, 1, 3, 2, 4, 5)
        else:
            y = x.reshape(n, h, w, cc, b, b).transpose(0, 1, 4, 2, 5, 3)
        cp.copyto(outs[0], y.reshape(outs[0].shape))


@impl("space_to_depth")
class SpaceToDepth(Impl):
    """One kernel (cuda_source_move.SpaceToDepthSource) for float tensors: the padding, the
    channels appended and the dtype change (a stem's float32 image to float16) in one pass;
    other dtypes reshape and copy."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        a = layer.attrs
        x, y = layer.inputs[0], layer.outputs[0]
        self.src, self.image = None, tuple(_shape(net, x)[1:])
        if {_dtype(net, x), _dtype(net, y)} <= {"float16", "float32"} and \
                all(isinstance(d, int) for d in self.image):
            c = int(_shape(net, x)[-1])
            self.src = SpaceToDepthSource(_shape(net, x), a["blocksize"],
                                          a.get("pads") or (0, 0, 0, 0),
                                          a.get("channels") or c, _dtype(net, x),
                                          _dtype(net, y))
            self.kernel = _raw_kernel(self.src.source, "space_to_depth")

    def run(self, ins, outs, ws):
        x, y = ins[0], outs[0]
        if self.src is not None and tuple(x.shape[1:]) == self.image:  # (the source's sizes)
            work = int(x.shape[0]) * self.src.per_image
            if work:
                launch(self.kernel, work, [x, y])
            return
        a = self.layer.attrs
        if a.get("pads") or a.get("channels"):
            pt, pl, pb, pr = a.get("pads") or (0, 0, 0, 0)
            x = cp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, (a.get("channels") or x.shape[-1])
                                                        - x.shape[-1])))
        b = a["blocksize"]
        n, h, w, c = x.shape
        z = x.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5)
        cp.copyto(y, z.reshape(y.shape), casting="unsafe")


@impl("resize")
class Resize(Impl):
    """Nearest / linear on float tensors whose resized axes are one or two adjacent ones (NHWC
    and NCHW images): one generated kernel (cupy_kernels_nn.ResizeKernel). Otherwise per-axis
    gathers. Both use host-precomputed indices and weights (the numpy reference's math, so
    results match it)."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        from tftrt.engine.backends import numpy_ops as ops
        from tftrt.engine.backends.cupy_kernels_nn import ResizeKernel
        a = layer.attrs
        if "sizes" not in a:
            raise NotImplementedError("Resize with runtime scales")
        x = _shape(net, layer.inputs[0])
        r = len(x)
        self.steps = []
        self.kernel = ResizeKernel.make(x, a, _dtype(net, layer.inputs[0]),
                                        _dtype(net, layer.outputs[0]))
        if self.kernel is not None:
            return
        for ax in range(r):
            in_len, out_len, scale = x[ax], a["sizes"][ax], a["scales"][ax]
            ctm = a["coordinate_transformation_mode"]
            if in_len == out_len and scale == 1.0 and ctm != "tf_crop_and_resize":
                continue
            xo = ops._resize_coords(np.arange(out_len), in_len, out_len, scale, ctm,
                                    a["roi"][ax], a["roi"][r + ax])
            outside = ((xo < 0) | (xo > in_len - 1)) if ctm == "tf_crop_and_resize" else None
            bshape = [1] * r
            bshape[ax] = out_len
            taps = []
            if a["mode"] == "nearest":
                nm = a["nearest_mode"]
                i = {"round_prefer_floor": np.ceil(xo - 0.5), "round_prefer_ceil":
                     np.floor(xo + 0.5), "floor": np.floor(xo)}.get(nm, np.ceil(xo))
                taps.append((np.clip(i, 0, in_len - 1).astype(np.int64), None))
            elif a["mode"] == "linear":
                xc = xo if ctm == "tf_crop_and_resize" else np.clip(xo, 0, in_len - 1)
                i0 = np.floor(xc)
                t = (xc - i0).reshape(bshape).astype(np.float32)
                i0 = np.clip(i0, 0, in_len - 1).astype(np.int64)
                taps += [(i0, 1 - t), (np.clip(i0 + 1, 0, in_len - 1), t)]
            else:
                i0 = np.floor(xo)
                ws_ = ops._cubic_weights(xo - i0, a["cubic_coeff_a"])
                idx = [i0.astype(np.int64) + d for d in (-1, 0, 1, 2)]
                if a["exclude_outside"]:
                    ws_ = [np.where((i < 0) | (i > in_len - 1), 0.0, w) for i, w in zip(idx, ws_)]
                    tot = sum(ws_)
                    ws_ = [w / tot for w in ws_]
                taps += [(np.clip(i, 0, in_len - 1), w.reshape(bshape).astype(np.float32))
                         for i, w in zip(idx, ws_)]
            self.steps.append((ax, [(cp.asarray(i), None if w is None else cp.asarray(w))
                                    for i, w in taps],
                               None if outside is None or not outside.any() else
                               cp.asarray(outside.reshape(bshape)), a["extrapolation_value"]))

    def run(self, ins, outs, ws):
        if self.kernel is not None:
            self.kernel(ins[0], outs[0])
            return
        y = ins[0].astype(cp.float32) if ins[0].dtype.kind == "f" else ins[0]
        for ax, taps, outside, ext in self.steps:
            if taps[0][1] is None:
                y = cp.take(y, taps[0][0], axis=ax)
            else:
                acc = 0
                for i, w in taps:
                    acc = acc + cp.take(y, i, axis=ax) * w
                y = acc
            if outside is not None:
                y = cp.where(outside, np.float32(ext), y)
        cp.copyto(outs[0], y, casting="unsafe")


def _per_axis(v, axis, rank):
    if v.ndim == 1 and v.size > 1:
        shape = [1] * rank
        shape[axis] = v.size
        return v.reshape(shape)
    return v


@impl("quantize")
class Quantize(Impl):
    def run(self, ins, outs, ws):
        a = self.layer.attrs
        x = ins[0]
        info = np.iinfo(np.dtype(a["dtype"]))
        s = _per_axis(ins[1], a["axis"], x.ndim).astype(cp.float32)
        z = 0 if len(ins) < 3 or ins[2] is None else \
            _per_axis(ins[2], a["axis"], x.ndim).astype(cp.float32)
        q = cp.rint(x.astype(cp.float32) / s) + z
        cp.copyto(outs[0], cp.clip(q, info.min, info.max), casting="unsafe")


@impl("dequantize")
class Dequantize(Impl):
    def run(self, ins, outs, ws):
        ax = self.layer.attrs["axis"]
        x = ins[0]
        s = _per_axis(ins[1], ax, x.ndim)
        z = 0 if len(ins) < 3 or ins[2] is None else \
            _per_axis(ins[2], ax, x.ndim).astype(cp.int32)
        cp.copyto(outs[0], (x.astype(cp.int32) - z).astype(cp.float32) * s, casting="unsafe")


@impl("einsum")
class Einsum(Impl):
    capturable = False  # cupy.einsum contracts through cuBLAS

    def run(self, ins, outs, ws):
        r = cp.einsum(self.layer.attrs["equation"], *[_f32(x) for x in ins])
        cp.copyto(outs[0], r.reshape(outs[0].shape), casting="unsafe")


@impl("onehot")
class OneHot(Impl):
    capturable = False  # depth is read on the host

    def run(self, ins, outs, ws):
        depth = int(cp.asnumpy(ins[1]).reshape(-1)[0])
        idx = _wrap(ins[0], depth)
        vals = ins[2]
        y = cp.where(idx[..., None] == cp.arange(depth), vals[1], vals[0])
        cp.copyto(outs[0], cp.moveaxis(y, -1, self.layer.attrs["axis"]), casting="unsafe")


@impl("range")
class Range(Impl):
    """start + arange(n) * delta with n from the output shape; start and delta stay on the
    device (numpy_ops.range_'s math, in the output dtype)."""

    def run(self, ins, outs, ws):
        y = outs[0]
        if y.size:
            start, delta = (x.reshape(()).astype(y.dtype) for x in (ins[0], ins[2]))
            cp.copyto(y, start + cp.arange(y.size).astype(y.dtype) * delta, casting="unsafe")


@impl("scatter_nd")
class ScatterND(Impl):
    """ONNX ScatterND: the output is a copy of data with updates written (or combined) at the
    indexed slices. ``none`` and ``add`` / ``max`` / ``min`` (cupyx' atomic scatters, float16
    through float32) never leave the device; ``mul`` combines duplicate indices in rounds,
    which reads how many there are on the host (that layer runs eagerly)."""

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        self.reduction = layer.attrs.get("reduction", "none")
        if self.reduction not in ("none", "add", "mul", "max", "min"):
            raise NotImplementedError(f"ScatterND reduction {self.reduction!r}")
        self.capturable = self.reduction != "mul"

    def run(self, ins, outs, ws):
        data, idx, upd, y = ins[0], ins[1].astype(cp.int64), ins[2], outs[0]
        k = idx.shape[-1]
        lead = data.shape[:k]
        rows = int(np.prod(lead, dtype=np.int64))
        flat = idx.reshape(-1, k)
        lin = cp.zeros(flat.shape[0], cp.int64)
        for j, d in enumerate(lead):  # row-major linear index over the indexed axes
            col = flat[:, j]
            lin = lin * d + cp.where(col < 0, col + d, col)
        work = y if y.dtype != cp.float16 else cp.empty(y.shape, cp.float32)
        cp.copyto(work, data, casting="unsafe")
        view = work.reshape((rows,) + data.shape[k:])
        u = upd.reshape((-1,) + data.shape[k:]).astype(work.dtype, copy=False)
        if self.reduction == "none":
            view[lin] = u
        elif self.reduction == "mul":
            self._mul(view, lin, u)
        else:
            import cupyx
            getattr(cupyx, f"scatter_{self.reduction}")(view, lin, u)
        if work is not y:
            cp.copyto(y, work, casting="unsafe")

    @staticmethod
    def _mul(view, lin, u):
        """view[lin[i]] *= u[i] for every i, duplicates included: the i-th update of an index
        goes in round i, whose indices are then distinct."""
        if not lin.size:
            return
        order = cp.argsort(lin)
        s = lin[order]
        rank = cp.arange(s.size) - cp.searchsorted(s, s, side="left")
        for r in range(int(rank.max()) + 1):
            sel = order[rank == r]
            view[lin[sel]] *= u[sel]


def nms_select(boxes, scores, max_out: int, iou_thr: float, score_thr, center_point_box: bool,
               threads: int = 256):
    """ONNX NonMaxSuppression on the GPU, numpy_ops.nms's semantics: [M, 3] int64 rows
    (batch, class, box), by batch, class, then descending score.

    Candidates (score > score_thr) are sorted per (batch, class) row with one stable argsort
    on the device; the greedy pass is one block per row (cuda_source_nms); two host reads per
    call: how many boxes survived, to size the result.
    """
    from tftrt.engine.backends.cuda_source_nms import nms_source
    b, c, n = scores.shape
    max_out = int(min(max(max_out, 0), n))
    if max_out == 0 or b * c * n == 0:
        return cp.zeros((0, 3), cp.int64)
    s = scores.astype(cp.float32).reshape(b * c, n)
    cand = s > np.float32(score_thr) if score_thr is not None else cp.ones(s.shape, bool)
    # stable argsort of -score puts ties in index order, as the reference's stable sort does;
    # non-candidates go last
    key = cp.where(cand, -s, cp.float32(np.inf))
    order = cp.argsort(key, axis=-1).astype(cp.int32)
    ncand = cand.sum(axis=-1).astype(cp.int32)
    removed = cp.empty((b * c, n), cp.uint8)
    keep = cp.empty((b * c, max_out), cp.int64)
    count = cp.empty(b * c, cp.int32)
    kernel = _raw_kernel(nms_source(n, c, max_out, bool(center_point_box)), "nms")
    kernel((b * c,), (threads,), (cp.ascontiguousarray(boxes, cp.float32), order, ncand,
                                  np.float32(iou_thr), removed, keep, count))
    rows, slot = cp.nonzero(cp.arange(max_out)[None, :] < count[:, None])
    return cp.stack([rows // c, rows % c, keep[rows, slot]], axis=1).astype(cp.int64)


@impl("nms")
class NonMaxSuppression(Impl):
    """ONNX NonMaxSuppression (:func:`nms_select`). Its output has a data-dependent row count:
    when the context gives no buffer (``outs[0]`` None) the result array is put there, else
    copied into the buffer (which must have its shape). Not capturable: it reads the count
    on the host."""

    capturable = False

    def __init__(self, net, layer, weights, opts):
        super().__init__(net, layer, weights, opts)
        # constant max_out / thresholds are read once here; others on each run
        self.consts = [None if i >= len(layer.inputs) or not layer.inputs[i] else
                       net.weights.get(layer.inputs[i]) for i in range(5)]

    def _scalar(self, ins, i, default):
        v = self.consts[i]
        if v is None:
            if i >= len(ins) or ins[i] is None:
                return default
            v = cp.asnumpy(ins[i])
        return np.asarray(v).reshape(-1)[0].item()

    def run(self, ins, outs, ws):
        sel = nms_select(ins[0], ins[1], int(self._scalar(ins, 2, 0)),
                         float(self._scalar(ins, 3, 0.0)), self._scalar(ins, 4, None),
                         self.layer.attrs.get("center_point_box", 0))
        if outs[0] is None:
            outs[0] = sel
        else:
            cp.copyto(outs[0], sel.reshape(outs[0].shape))
