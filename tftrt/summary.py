"""summary() and the "not converted" report, in TF-TRT's format."""

from __future__ import annotations

import collections
import logging
import os
from typing import Callable, Dict, List, Optional

from tftrt.env import parse_bool
from tftrt.segment import BOUNDARY_OPS, SegmentationResult

log = logging.getLogger("tftrt.segment")


def _fmt_shapes(shapes) -> str:
    return "[" + ", ".join("None" if s is None else
                           "[" + ", ".join("?" if d is None else str(d) for d in s) + "]"
                           for s in shapes) + "]"


def table_widths(cols, line_length: int) -> List[int]:
    """Column widths of the summary table: each its share of ``line_length``, at least its
    header and two spaces, the total within ``line_length`` (a row is cut where a value does
    not fit, as TF-TRT's rows are): what the headers' minimums add is taken from the widest
    columns."""
    mins = [len(n) + 2 for n, _ in cols]
    widths = [max(int(f * line_length), m) for (_, f), m in zip(cols, mins)]
    excess = sum(widths) - line_length
    for i in sorted(range(len(cols)), key=lambda i: mins[i] - widths[i]):
        take = min(excess, widths[i] - mins[i])
        if take <= 0:
            break
        widths[i] -= take
        excess -= take
    return widths


def print_summary(info, seg: SegmentationResult, engine_ops: Dict[str, object],
                  line_length: int, detailed: bool, print_fn: Callable[[str], None],
                  build_check: Optional[dict] = None) -> None:
    """TF-TRT's summary table and totals; ``build_check`` (build()'s engines-vs-native check,
    TrtGraphConverterV2._check_build) adds a line after the totals."""
    cols = [("TRTEngineOP Name", 0.16), ("Device", 0.06), ("# Nodes", 0.05),
            ("# Inputs", 0.05), ("# Outputs", 0.05), ("Input DTypes", 0.1),
            ("Output Dtypes", 0.1), ("Input Shapes", 0.17), ("Output Shapes", 0.17),
            ("Precision / Cached", 0.09)]
    widths = table_widths(cols, line_length)

    def row(values):
        line = ""
        for v, w in zip(values, widths):
            v = str(v)
            if len(v) > w - 2:
                v = v[:w - 5] + "..."
            line += v.ljust(w)
        print_fn(line.rstrip())

    print_fn("=" * line_length)
    row([n for n, _ in cols])
    print_fn("=" * line_length)
    from tftrt.engine_op import resolve_backend
    try:
        device = resolve_backend()
    except ValueError:
        device = "?"
    device = {"cupy": "GPU:0", "numpy": "CPU:0", "native": "native"}.get(device, device)
    total_in_engines = 0
    for k, (name, op) in enumerate(engine_ops.items()):
        spec = op.spec
        total_in_engines += spec.num_nodes
        cached = len(op.cache)
        row([name, device, spec.num_nodes, len(spec.input_tensors), len(spec.output_tensors),
             spec.input_dtypes, spec.output_dtypes, _fmt_shapes(spec.input_shapes),
             _fmt_shapes(spec.output_shapes), f"{spec.precision_mode} / {cached}"])
        if detailed:
            print_fn("")
            for op_type, count in sorted(spec.op_histogram.items()):  # by name, as TF-TRT's
                print_fn(f"\t- {op_type}: {count}x")
            for key, eng in op.cache.items():
                for line in engine_lines(key, eng, op.profile_strategy):
                    print_fn(line)
        if spec.precision_mode in ("INT8", "FP8"):
            for line in quantization_lines(op, detailed):
                print_fn(line)
        if k < len(engine_ops) - 1:
            print_fn("-" * line_length)
    print_fn("=" * line_length)
    native_ops = [n for n, node in info.nodes.items() if node.op not in BOUNDARY_OPS]
    in_engine = {n for op in engine_ops.values() for n in op.spec.member_nodes}
    converted = len(in_engine)
    total = len(native_ops)
    print_fn(f"[*] Total number of TensorRT engines: {len(engine_ops)}")
    pct = 100.0 * converted / total if total else 0.0
    print_fn(f"[*] % of OPs Converted: {pct:.2f}% [{converted}/{total}]")
    unconverted = collections.Counter(info.nodes[n].op for n in native_ops
                                      if n not in in_engine)
    consts = unconverted.pop("Const", 0)
    if unconverted:
        # the total counts Consts as TF-TRT's does; a Const is not a reason, but a reader
        # adding up this list against the total was 10 short (transformer hunt, 2026-12-04)
        print_fn("[*] Ops left native: " + ", ".join(f"{op}: {c}x" for op, c in
                                                     unconverted.most_common()) +
                 (f" (and {consts} Const, not listed)" if consts else ""))
        reasons = seg.unconverted_reasons(info)
        for op, c in unconverted.most_common():
            why = "; ".join(f"{r} ({n}x)" for r, n in reasons.get(op, {}).items())
            print_fn(f"\t- {op}: {why}")
    if build_check is not None and engine_ops:
        print_fn(build_check_line(build_check))


def checked_input(index: int) -> str:
    """Which build input build()'s check compared: the first whose outputs have elements."""
    return ("the first build input" if not index else
            f"build input {index + 1} (the first with elements)")


def build_check_line(check: dict) -> str:
    """summary()'s line for build()'s check of the engines against native TF."""
    which = checked_input(check.get("input", 0))
    if "skipped" in check:
        return (f"[*] Engines vs native TF on {which}: not compared -- "
                f"{check['skipped']} ({check['precision']})")
    if check.get("exact"):  # integer / bool outputs: the share of elements that differ
        line = (f"[*] Engines vs native TF on {which}: {check['worst']:.1%} of the elements "
                f"of output {check['worst_output']!r} differ ({check['precision']})")
    else:
        line = (f"[*] Engines vs native TF on {which}: largest error {check['worst']:.1e} "
                f"of an output's largest value ({check['precision']})")
    if check.get("empty"):  # its segments run natively too: the more telling reason first
        return line + " -- no build input has elements: this checked nothing"
    if not check.get("engine_calls"):
        return line + " -- no engine ran (every segment ran natively): this checked nothing"
    native = check.get("native_ops") or []
    if native:  # those segments' answers are TF's own: the error does not cover them
        shown = ", ".join(native[:3]) + (f" and {len(native) - 3} more" if len(native) > 3
                                         else "")
        line += f" -- {shown} ran natively: not checked"
    if check["worst"] > check["bar"]:
        return line + (f" -- over {check['bar']:.0e}: check whether these answers are "
                       f"acceptable (tftrt compare)")
    return line


def engine_lines(key, engine, strategy=None):
    """summary()'s lines for one cached engine: its input shapes, or, for an engine with
    optimization profiles, each profile's min / opt / max shape per input."""
    from tftrt.profiles import ProfileEngine
    mem = getattr(engine, "device_memory_bytes", None)
    extra = f", {mem / 2**20:.1f} MiB device memory" if mem is not None else ""
    if not isinstance(engine, ProfileEngine):
        return [f"\t* engine for input shapes {list(map(list, key))}{extra}"]
    n = len(engine.profiles)
    how = f" ({strategy})" if strategy else ""
    k = len(engine.shapes)
    lines = [f"\t* engine with {n} optimization profile{'s' if n != 1 else ''}{how}, built "
             f"for {k} input shape{'s' if k != 1 else ''} so far{extra}"]
    try:
        names = engine.input_names
    except RuntimeError:  # nothing built yet
        names = []
    for i, p in enumerate(engine.profiles):
        for j, (lo, opt, hi) in enumerate(zip(p.min, p.opt, p.max)):
            name = names[j] if j < len(names) else f"input {j}"
            lines.append(f"\t  profile {i}, {name}: min {list(lo)}, opt {list(opt)}, "
                         f"max {list(hi)}")
    return lines


def quantization_report(op):
    """(precision report, where it comes from) of an INT8 / FP8 engine op: its first built
    engine, else the plan its calibration made; (None, why) without either."""
    from tftrt.engine import quantization as Q
    from tftrt.profiles import ProfileEngine
    for key, entry in op.cache.items():
        engine = entry
        if isinstance(entry, ProfileEngine):
            engine = next((e for _, e in entry.opt_engines()), None)
        net = getattr(engine, "network", None)
        if net is not None:  # a profile's report is its opt engine's: named by its shapes
            shapes = getattr(engine, "input_shapes", None) or key
            return Q.precision_report(net), f"engine for input shapes {list(map(list, shapes))}"
    table = getattr(op, "quantization", None)
    if table and table.get("plan"):
        shapes = table["plan"].get("input_shapes")
        return table["plan"], f"calibration network for input shapes {shapes}"
    return None, "per-layer precisions are known once an engine is built (build())"


def quantization_lines(op, detailed: bool):
    """summary()'s lines for an INT8 / FP8 engine op: its conv / GEMM layers' precisions and
    the share of their FLOPs that runs quantized; tensors without a range, once."""
    from tftrt.engine import quantization as Q
    mode = op.spec.precision_mode
    report, where = quantization_report(op)
    if report is None:
        return [f"\t[{mode}] {where}"]
    layers = report["layers"]
    count = collections.Counter(r["precision"] for r in layers)
    lines = [f"\t[{mode}] conv/GEMM layers: " +
             (", ".join(f"{n} {p}" for p, n in sorted(count.items())) or "none") +
             f"; {100 * report['quantized_share']:.1f}% of their FLOPs in {mode} ({where})"]
    missing = Q.without_range(report)
    if missing:
        lines.append(f"\t[{mode}] no range, so their readers stay FP16: {', '.join(missing)}")
    if detailed:
        for r in layers:
            why = r.get("reason")
            why = "" if not why or why.startswith("no range for tensor") else f" ({why})"
            kernel = f" [{r['kernel']}]" if r.get("kernel") else ""
            lines.append(f"\t  {r['name']} ({r['kind']}): {r['precision']}{why}{kernel}")
    return lines


def log_unconverted(info, seg: SegmentationResult) -> None:
    """TF-TRT's log line, and the detailed report when TF_TRT_SHOW_DETAILED_REPORT is set."""
    reasons = seg.unconverted_reasons(info)
    reasons.pop("Const", None)
    if not reasons:
        return
    count = sum(sum(v.values()) for v in reasons.values())
    log.warning("There are %d ops of %d different types in the graph that are not converted "
                "to TensorRT: %s", count, len(reasons), ", ".join(sorted(reasons)))
    # TF-TRT's variable: a boolean (0/1/true/false, any case) or the path of a CSV file.
    detail = os.environ.get("TF_TRT_SHOW_DETAILED_REPORT", "").strip()
    flag = parse_bool(detail)
    if not detail or flag is False:
        return
    rows = [(op, n, r) for op, rs in reasons.items() for r, n in rs.items()]
    if not flag:
        # a path: TF-TRT's CSV (segment.cc, ExportNonConversionReportToCSV: "OP Name|Reason|
        # Count", '|'-separated, one row per op and reason), and the report logged too
        try:
            with open(detail, "w") as f:
                f.write("OP Name|Reason|Count\n")
                f.writelines(f"{op}|{r}|{n}\n" for op, n, r in rows)
            log.warning("TF-TRT Non-Conversion Report saved at: `%s`", detail)
        except OSError as e:  # a report must not end the conversion
            log.error("TF_TRT_SHOW_DETAILED_REPORT=%s: the detailed report cannot be written "
                      "there (%s); give a writable file path, or 1 to log it instead", detail,
                      e)
    for op, n, r in rows:
        log.warning("  %s (%dx): %s", op, n, r)
