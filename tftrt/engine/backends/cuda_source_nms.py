"""CUDA source of the GPU backend's non-max suppression kernel, built as a string (no CuPy),
like ``cuda_source``; ``cupy_ops.NonMaxSuppression`` compiles and runs it."""

from __future__ import annotations

from tftrt.engine.backends.cuda_source import PRELUDE


def nms_source(n_boxes: int, n_classes: int, max_out: int, center_point_box: bool) -> str:
    """CUDA source of kernel ``nms(boxes, order, ncand, iou_thr, removed, keep, count)``: the
    greedy pass of ONNX NonMaxSuppression, one block per (batch, class) row.

    ``boxes`` float32 [B, n_boxes, 4]; ``order`` int32 [B * n_classes, n_boxes]: each row's
    candidates (score above the threshold) by descending score, ties by index, ``ncand[row]``
    of them first; ``removed`` uint8 scratch of ``order``'s size. The block walks its row in
    order: a candidate not yet removed is kept (until ``max_out`` are) and its threads remove
    the later candidates whose IoU with it exceeds ``iou_thr``; ``keep`` int64
    [rows, max_out] gets the kept box indices, ``count[row]`` how many. Same float32 math and
    order as ``numpy_ops.nms``, so the same boxes survive.
    """
    def box(v: str, i: str) -> str:  # corners and area of box i as {v}y1, ..., {v}area
        if center_point_box:  # [x_center, y_center, width, height]
            c = (f"{v}y1 = b[1] - b[3] / 2.f, {v}x1 = b[0] - b[2] / 2.f, "
                 f"{v}y2 = b[1] + b[3] / 2.f, {v}x2 = b[0] + b[2] / 2.f")
        else:  # [y1, x1, y2, x2], either corner first
            c = (f"{v}y1 = fminf(b[0], b[2]), {v}x1 = fminf(b[1], b[3]), "
                 f"{v}y2 = fmaxf(b[0], b[2]), {v}x2 = fmaxf(b[1], b[3])")
        return (f"const float* b = bx + 4 * (long long)({i});\n      const float {c};\n"
                f"      const float {v}area = ({v}y2 - {v}y1) * ({v}x2 - {v}x1);")

    return PRELUDE + f"""
extern "C" __global__ void nms(const float* __restrict__ boxes, const int* __restrict__ order,
                               const int* __restrict__ ncand, float iou_thr,
                               unsigned char* removed, long long* __restrict__ keep,
                               int* __restrict__ count) {{
  const long long row = blockIdx.x;
  const float* bx = boxes + (row / {n_classes}) * {n_boxes} * 4LL;
  const int* ord = order + row * {n_boxes};
  unsigned char* rm = removed + row * {n_boxes};
  const int n = ncand[row];
  for (int q = threadIdx.x; q < n; q += blockDim.x) rm[q] = 0;
  int kept = 0;
  for (int p = 0; p < n && kept < {max_out}; ++p) {{
    __syncthreads();  // removals of the previous kept box are visible to every thread
    if (rm[p]) continue;
    const int i = ord[p];
    if (threadIdx.x == 0) keep[row * {max_out} + kept] = i;
    ++kept;
    float iy1, ix1, iy2, ix2, iarea;
    {{
      {box("k", "i")}
      iy1 = ky1; ix1 = kx1; iy2 = ky2; ix2 = kx2; iarea = karea;
    }}
    for (int q = p + 1 + threadIdx.x; q < n; q += blockDim.x) {{
      if (rm[q]) continue;
      {box("j", "ord[q]")}
      const float h = fminf(iy2, jy2) - fmaxf(iy1, jy1), w = fminf(ix2, jx2) - fmaxf(ix1, jx1);
      const float inter = (h > 0.f ? h : 0.f) * (w > 0.f ? w : 0.f);
      const float uni = iarea + jarea - inter;
      if (uni > 0.f && inter / uni > iou_thr) rm[q] = 1;
    }}
  }}
  if (threadIdx.x == 0) count[row] = kept;
}}
"""
