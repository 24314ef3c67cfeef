"""Issue 17's probe: a converted SavedModel served by Triton's Python backend directly, the
engines running in Triton's own model-instance (stub) processes, without PyTriton's proxy.

`tftrt serve` hands every request from Triton's stub to the `tftrt serve` process through
PyTriton (the stub copies the tensors into PyTriton's shared-memory store and sends them over
ZeroMQ; PyTriton's `batch` concatenates the merged requests there). docs/serving.md,
"Throughput", names that hop as what keeps the server at 5% of the engine's rate on the H200.
This script measures the path without it: a Triton model repository whose `model.py` loads the
model with `tftrt.load` inside each instance's stub and runs the merged batch there (the
inputs read from Triton's shared memory as numpy views, concatenated once, uploaded to the
GPU through CuPy and DLPack; the outputs copied back once). Same load generator, same
dynamic-batching settings, so `run_gpu_serving.sh` can put the two side by side
(`SERVER=direct`).

    python benchmarks/triton_direct.py MODEL_DIR --gpus 0 --max-batch 128 --model-name served \
        --instances-per-gpu 4 --address 127.0.0.1 [--http-port 8000 ...] [--shared-memory]

It runs until SIGINT / SIGTERM. A probe, not a product path: no request checks beyond
Triton's, no stub-death watch, no PyTriton token (binds where --address says).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

MODEL_PY = r'''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
        import tensorflow as tf
        for g in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(g, True)
        import tftrt
        from tftrt import tensor_bridge
        self.tf, self.bridge = tf, tensor_bridge
        gpu = args["model_instance_kind"] == "GPU"
        dev = int(args["model_instance_device_id"])
        self.device = f"/GPU:{dev}" if gpu else "/CPU:0"
        self.cupy_device = None
        if gpu:
            import cupy
            self.cp, self.cupy_device = cupy, cupy.cuda.Device(dev)
        self.fn = tftrt.load(params["model_dir"]).signatures[params["signature"]]
        self.inputs = [t["name"] for t in cfg["input"]]
        self.outputs = [t["name"] for t in cfg["output"]]
        self.out_dtypes = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"])
                           for t in cfg["output"]}

    def _feed(self, parts):
        batch = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if self.cupy_device is not None and batch.dtype.kind == "f":
            with self.cupy_device:
                a = self.cp.asarray(batch)
                self.cp.cuda.get_current_stream().synchronize()
            return self.bridge.from_backend(a, "cupy", a.dtype)
        return self.tf.constant(batch)

    def execute(self, requests):
        parts = {n: [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for r in requests]
                 for n in self.inputs}
        sizes = [len(p) for p in parts[self.inputs[0]]]
        feeds = {n: self._feed(p) for n, p in parts.items()}
        with self.tf.device(self.device):
            if self.cupy_device is not None:
                with self.cupy_device:
                    result = self.fn(**feeds)
            else:
                result = self.fn(**feeds)
        outs = {n: np.asarray(result[n].numpy(), self.out_dtypes[n]) for n in self.outputs}
        responses, k = [], 0
        for n in sizes:
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, outs[name][k:k + n]) for name in self.outputs]))
            k += n
        return responses
'''

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64",
                "int32": "TYPE_INT32", "int64": "TYPE_INT64", "int8": "TYPE_INT8",
                "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


def model_config(name, model_dir, signature, inputs, outputs, max_batch, preferred,
                 delay_us, gpus, instances) -> str:
    def tensors(ts):
        return ", ".join(f'{{ name: "{t.name}" data_type: {TRITON_TYPES[t.dtype.name]} '
                         f'dims: {json.dumps(list(t.shape))} }}' for t in ts)
    if gpus:
        group = (f"instance_group [{{ kind: KIND_GPU count: {instances} "
                 f"gpus: {json.dumps(gpus)} }}]")
    else:
        group = f"instance_group [{{ kind: KIND_CPU count: {instances} }}]"
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch}\n'
            f"input [{tensors(inputs)}]\noutput [{tensors(outputs)}]\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} "
            f"preferred_batch_size: {json.dumps(preferred)} }}\n{group}\n"
            f'parameters {{ key: "model_dir" value: {{ string_value: "{model_dir}" }} }}\n'
            f'parameters {{ key: "signature" value: {{ string_value: "{signature}" }} }}\n')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--model-name", default="served")
    p.add_argument("--gpus", default="0", help="comma-separated GPU ids, or none")
    p.add_argument("--instances-per-gpu", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--max-queue-delay-us", type=int, default=100)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--shared-memory", action="store_true", help="(always open here)")
    args = p.parse_args(argv)

    import pytriton
    import tftrt
    from tftrt import serving
    model_dir = os.path.abspath(args.model_dir)
    model = tftrt.load(model_dir)
    inputs, outputs = serving.signature_tensors(model.signatures[args.signature])
    preferred, _ = serving.preferred_batch_sizes(model, args.max_batch)
    del model
    gpus = [] if args.gpus == "none" else [int(g) for g in args.gpus.split(",")]

    work = pathlib.Path(tempfile.mkdtemp(prefix="tftrt-direct-"))
    repo = work / "repo" / args.model_name
    (repo / "1").mkdir(parents=True)
    (repo / "1" / "model.py").write_text(MODEL_PY)
    (repo / "config.pbtxt").write_text(model_config(
        args.model_name, model_dir, args.signature, inputs, outputs, args.max_batch,
        preferred, args.max_queue_delay_us, gpus, args.instances_per_gpu))
    pkg = pathlib.Path(pytriton.__file__).resolve().parent
    triton = work / "tritonserver"
    shutil.copytree(pkg / "tritonserver", triton,
                    ignore=shutil.ignore_patterns("python_backend_stubs"))
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy(pkg / "tritonserver" / "python_backend_stubs" / ver /
                "triton_python_backend_stub", triton / "backends" / "python")
    stub = serving.stub_environment()
    env = dict(os.environ)
    env[serving.STUB_DIRS_VAR] = os.pathsep.join(serving._package_dirs())
    libs = [d for d in (serving.libpython_dir(), serving.pytriton_libs_dir(),
                        str(pkg.parent / "nvidia_pytriton.libs")) if d and os.path.isdir(d)]
    env["LD_LIBRARY_PATH"] = ":".join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    if stub is not None:
        env["PATH"] = f"{stub / 'bin'}:{env['PATH']}"
    cmd = [str(triton / "bin" / "tritonserver"), "--model-repository", str(work / "repo"),
           "--backend-directory", str(triton / "backends"),
           "--http-address", args.address, "--grpc-address", args.address,
           "--metrics-address", args.address, "--http-port", str(args.http_port),
           "--grpc-port", str(args.grpc_port), "--metrics-port", str(args.metrics_port),
           "--exit-timeout-secs", "10"]
    print("starting:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, env=env)
    stop = []

    def on_signal(signum, frame):
        stop.append(signum)
        proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while proc.poll() is None:
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if stop else (proc.returncode or 1)


if __name__ == "__main__":
    sys.exit(main())
