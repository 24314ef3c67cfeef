"""Reading TensorFlow profiler traces (the xplane files that ``tf.profiler.experimental`` writes):
the device-to-host (or host-to-device) copies of a traced stretch, with the TF op that asked for
each. Shared by the
engine-boundary GPU tests and benchmarks/profile_boundary.py."""

from __future__ import annotations

import glob
import os
import re


def d2h_copies(logdir):
    """(plane, event, bytes or None, TF op) of every device-to-host memcpy in the profile
    written to ``logdir``."""
    return _copies(logdir, r"d2h|dtoh|devicetohost")


def h2d_copies(logdir):
    """The same for every host-to-device memcpy."""
    return _copies(logdir, r"h2d|htod|hosttodevice")


def _copies(logdir, pattern):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    found = []
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            names = {k: m.name for k, m in plane.event_metadata.items()}
            stat_names = {k: m.name for k, m in plane.stat_metadata.items()}
            for line in plane.lines:
                for ev in line.events:
                    name = names.get(ev.metadata_id, "")
                    if not re.search(pattern, name.replace(" ", "").lower()):
                        continue
                    size, op = None, ""
                    for st in ev.stats:
                        sname = stat_names.get(st.metadata_id, "")
                        text = st.str_value or (plane.stat_metadata[st.ref_value].name
                                                if st.ref_value else "")
                        m = re.search(r"size:(\d+)", text)
                        if m:
                            size = int(m.group(1))
                        elif sname in ("bytes", "size", "num_bytes") and st.uint64_value:
                            size = int(st.uint64_value)
                        if sname in ("tf_op", "long_name", "kernel_details", "tf_op_name"):
                            op = f"{op} {sname}={text[:120]}".strip()
                    # which TF op asked for the copy (the profiler's tf_op stat), so that a
                    # failure names the node to fix
                    found.append((plane.name, name, size, op))
    return found
