"""Load generator for ``tftrt serve`` (issue 17): many concurrent batch-1 clients through
tritonclient, measured at the client (not in-process).

Each client is a thread with its own tritonclient connection sending batch-1 requests one
after the other (closed loop); clients are spread over --processes processes so the load
generator's GIL is not the bottleneck. The input is read from the model's metadata (names,
dtypes, shapes; -1 dimensions need --shape). Reported: throughput (requests/s, samples/s),
latency p50 / p90 / p99 / mean / max (ms) over the timed requests, and Triton's own counts
over the run (inference count / execution count = the mean batch the dynamic batcher formed;
queue and compute time per execution).

    # on the GPU host, one server per configuration (the model converted with --dynamic-shape):
    tftrt convert resnet50 resnet50_trt --precision FP16 --dynamic-shape --batch-sizes 1,128
    tftrt serve resnet50_trt --gpus 0 --max-batch 128 &           # then --gpus 0,1
    python benchmarks/serve_load.py --model resnet50_trt --concurrency 256 --processes 8 \\
        --requests 40000 --protocol grpc --json load_1gpu.json

    # a small run on this machine (CPU, numpy engines):
    python benchmarks/serve_load.py --model mlp_trt --concurrency 8 --requests 200
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from typing import Dict, List

import numpy as np

TRITON_TO_NUMPY = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64,
                   "INT32": np.int32, "INT64": np.int64, "INT8": np.int8, "UINT8": np.uint8,
                   "INT16": np.int16, "BOOL": np.bool_}


def _client_lib(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as lib
    else:
        import tritonclient.http as lib
    return lib


def _url(args, server: int = 0) -> str:
    """Server ``server``'s address (--servers: each listens --port-stride ports above the
    one before)."""
    off = server * args.port_stride
    port = args.grpc_port if args.protocol == "grpc" else args.http_port
    return f"{args.host}:{port + off}"


def _http_url(args, server: int = 0) -> str:
    return f"{args.host}:{args.http_port + server * args.port_stride}"


def _inputs_spec(args) -> List[dict]:
    import tritonclient.http as http
    for k in range(args.servers):  # every server must answer, not only the first
        try:
            with http.InferenceServerClient(_http_url(args, k)) as c:
                meta = c.get_model_metadata(args.model)
        except Exception as e:  # noqa: BLE001 -- said in one line, no traceback
            raise SystemExit(f"server {k} ({_http_url(args, k)}) did not give model "
                             f"{args.model!r}'s metadata: {str(e)[:300]}") from None
    given = {}
    for s in args.shape or []:
        try:
            name, dims = s.split(":")
            given[name] = [int(d) for d in dims.split("x")]
        except ValueError:
            raise SystemExit(f"--shape {s!r}: give NAME:DxD (e.g. x:224x224x3)") from None
    specs = []
    for inp in meta["inputs"]:
        dims = [int(d) for d in inp["shape"]][1:]  # first: the batch dimension
        dims = given.get(inp["name"], dims)
        if any(d < 0 for d in dims):
            raise SystemExit(f"input {inp['name']} has shape {inp['shape']}: give its "
                             f"dimensions without the batch, --shape {inp['name']}:DxD")
        if inp["datatype"] not in TRITON_TO_NUMPY:
            raise SystemExit(f"input {inp['name']}: datatype {inp['datatype']} not generated")
        specs.append({"name": inp["name"], "datatype": inp["datatype"], "dims": dims})
    return specs


def _worker(args, specs, threads: int, requests: int, warmup: int, start_at: float, out,
            first: int = 0):
    """One process: ``threads`` closed-loop clients, ``requests`` timed requests in all;
    client j (``first`` + j over all processes) talks to server j mod --servers."""
    import threading
    lib = _client_lib(args.protocol)
    rng = np.random.RandomState(args.seed)
    data = []
    for s in specs:
        shape = [1] + s["dims"]
        arr = rng.standard_normal(shape).astype(TRITON_TO_NUMPY[s["datatype"]])
        data.append((s, arr))
    lat: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    left = [requests]
    try:
        regions = _shared_inputs(args, data) if args.shared_memory == "system" else None
    except Exception as e:  # said, not a parent waiting forever for this process
        out.put({"latencies": [], "errors": [f"shared memory: {e}"[:300]], "end": time.time()})
        return

    def one(client):
        ins = []
        for k, (s, arr) in enumerate(data):
            i = lib.InferInput(s["name"], list(arr.shape), s["datatype"])
            if regions:
                i.set_shared_memory(regions[k][0], arr.nbytes)
            else:
                i.set_data_from_numpy(arr)
            ins.append(i)
        return client.infer(args.model, ins)

    def client_loop(index):
        client = lib.InferenceServerClient(_url(args, index % args.servers))
        try:
            try:
                for _ in range(warmup):
                    one(client)
            except Exception as e:  # counted and reported: this client takes no part
                with lock:
                    errors.append(f"warm-up: {str(e)[:200]}")
                return
            while time.time() < start_at:
                time.sleep(0.001)
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                t0 = time.perf_counter()
                try:
                    one(client)
                except Exception as e:  # counted and reported, the run goes on
                    with lock:
                        errors.append(str(e)[:200])
                    continue
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
        finally:
            client.close()

    ts = [threading.Thread(target=client_loop, args=(first + j,)) for j in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put({"latencies": lat, "errors": errors, "end": time.time()})
    if regions:
        _unshare(args, regions)


def _shared_inputs(args, data) -> list:
    """--shared-memory system: each input in a system shared-memory region of this process,
    registered with every server ([(region name, handle)]); requests then name the region
    instead of carrying the bytes (perf_analyzer's --shared-memory=system). The inputs never
    change, so one region per input serves all of the process's clients."""
    import os
    import tritonclient.http as http
    import tritonclient.utils.shared_memory as shm
    regions, registered = [], []
    try:
        for k, (s, arr) in enumerate(data):
            name = f"serve_load_{os.getpid()}_{k}"
            handle = shm.create_shared_memory_region(name, "/" + name, arr.nbytes)
            shm.set_shared_memory_region(handle, [np.ascontiguousarray(arr)])
            regions.append((name, handle))
            for j in range(args.servers):
                with http.InferenceServerClient(_http_url(args, j)) as c:
                    c.register_system_shared_memory(name, "/" + name, arr.nbytes)
                registered.append((name, j))
    except Exception:
        # what one server took stays registered there otherwise (a second server without
        # --shared-memory: serving hunt, 2026-12-04)
        for name, j in registered:
            try:
                with http.InferenceServerClient(_http_url(args, j)) as c:
                    c.unregister_system_shared_memory(name)
            except Exception:  # noqa: BLE001
                pass
        for _, handle in regions:
            shm.destroy_shared_memory_region(handle)
        raise
    return regions


def _unshare(args, regions) -> None:
    import tritonclient.http as http
    import tritonclient.utils.shared_memory as shm
    for name, handle in regions:
        for j in range(args.servers):
            # Triton lets go of a region a moment after the last response ("currently in
            # use"): a few tries, then it is left to the server's end
            for _ in range(50):
                try:
                    with http.InferenceServerClient(_http_url(args, j)) as c:
                        c.unregister_system_shared_memory(name)
                    break
                except Exception:  # noqa: BLE001
                    time.sleep(0.1)
        shm.destroy_shared_memory_region(handle)


def _stats(args) -> Dict[str, float]:
    """Triton's counts, summed over the servers."""
    import tritonclient.http as http
    total = {"inferences": 0, "executions": 0, "queue_ns": 0, "compute_ns": 0}
    for k in range(args.servers):
        with http.InferenceServerClient(_http_url(args, k)) as c:
            s = c.get_inference_statistics(args.model)["model_stats"][0]
        inf = s["inference_stats"]
        total["inferences"] += int(s["inference_count"])
        total["executions"] += int(s["execution_count"])
        total["queue_ns"] += int(inf["queue"]["ns"])
        total["compute_ns"] += int(inf["compute_infer"]["ns"])
    return total


def run(args) -> dict:
    specs = _inputs_spec(args)
    procs = max(1, min(args.processes, args.concurrency))
    threads = [args.concurrency // procs + (i < args.concurrency % procs) for i in range(procs)]
    reqs = [args.requests // procs + (i < args.requests % procs) for i in range(procs)]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    before = _stats(args)
    # Every client warms up first; the timed part starts for all at start_at.
    start_at = time.time() + args.start_delay_s
    firsts = [sum(threads[:i]) for i in range(procs)]
    ps = [ctx.Process(target=_worker, args=(args, specs, threads[i], reqs[i],
                                            args.warmup, start_at, q, firsts[i]))
          for i in range(procs)]
    for p in ps:
        p.start()
    parts = []
    import queue
    while len(parts) < len(ps):
        try:
            parts.append(q.get(timeout=1.0))
        except queue.Empty:
            if all(p.exitcode is not None for p in ps):  # one died before it reported
                try:
                    while len(parts) < len(ps):
                        parts.append(q.get(timeout=1.0))
                except queue.Empty:
                    codes = [p.exitcode for p in ps]
                    parts += [{"latencies": [], "end": time.time(), "errors": [
                        f"a load process ended without reporting (exit codes {codes})"]}
                        for _ in range(len(ps) - len(parts))]
    for p in ps:
        p.join()
    after = _stats(args)
    wall = max(p["end"] for p in parts) - start_at
    lat = np.array(sorted(x for p in parts for x in p["latencies"])) * 1e3
    errors = [e for p in parts for e in p["errors"]]
    if wall <= 0 or not len(lat):
        if any("triton-access-token" in e for e in errors):
            raise SystemExit("the server refused the shared memory: start it with "
                             "--shared-memory --address 127.0.0.1, or load it without "
                             f"--shared-memory system; errors: {errors[:2]}")
        why = f"errors: {errors[:3]}" if errors else \
            f"start delay {args.start_delay_s}s too short for the warm-up?"
        raise SystemExit(f"no timed request finished ({why})")
    d = {k: after[k] - before[k] for k in after}
    execs = max(d["executions"], 1)
    return {
        "model": args.model, "protocol": args.protocol, "servers": args.servers,
        "shared_memory": args.shared_memory,
        "concurrency": args.concurrency,
        "processes": procs, "requests": int(len(lat)), "errors": len(errors),
        "error_examples": errors[:3], "wall_s": round(wall, 3),
        "throughput_rps": round(len(lat) / wall, 1),
        "latency_ms": {k: round(float(v), 3) for k, v in (
            ("p50", np.percentile(lat, 50)), ("p90", np.percentile(lat, 90)),
            ("p99", np.percentile(lat, 99)), ("mean", lat.mean()), ("max", lat.max()))},
        "server": {"inferences": d["inferences"], "executions": d["executions"],
                   "mean_batch": round(d["inferences"] / execs, 2),
                   "queue_ms_per_request": round(d["queue_ns"] / 1e6 / max(d["inferences"], 1),
                                                 3),
                   "compute_ms_per_execution": round(d["compute_ns"] / 1e6 / execs, 3)},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Triton model name (tftrt serve: the "
                                                  "directory's name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--shared-memory", choices=("none", "system"), default="none",
                   help="system: inputs travel in system shared memory registered with the "
                        "servers, not in the requests (same host only)")
    p.add_argument("--servers", type=int, default=1,
                   help="servers to spread the clients over (one per GPU, each its own "
                        "process), what a load balancer in front of them does")
    p.add_argument("--port-stride", type=int, default=10,
                   help="server k listens on the ports + k * this")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent batch-1 clients")
    p.add_argument("--processes", type=int, default=4, help="load-generator processes")
    p.add_argument("--requests", type=int, default=5000, help="timed requests in all")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests per client")
    p.add_argument("--start-delay-s", type=float, default=10.0,
                   help="time given to start the clients and warm up before timing")
    p.add_argument("--shape", action="append", help="NAME:DxD for inputs with -1 dims "
                                                    "(without the batch dimension)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.concurrency <= 0 or args.requests <= 0 or args.servers <= 0:
        p.error("--concurrency, --requests and --servers must be positive")
    result = run(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
