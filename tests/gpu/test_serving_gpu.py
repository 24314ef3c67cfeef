"""``tftrt serve`` on GPUs (CuPy engines): one Triton model instance per GPU, answers equal
native TensorFlow under concurrent load, the dynamic batcher merges requests, SIGTERM stops
it cleanly. Skipped without a GPU (and without the serving extra).

    TFTRT_BACKEND=cupy python -m pytest -q tests/gpu/test_serving_gpu.py -s

With two or more GPUs this also checks that instances on GPU 1.. answer correctly: the CuPy
backend keeps its layer objects process-wide without a device (issue 17), so engines built on
GPU 0 are what the other instances run until the backend keys them per device.
"""

import concurrent.futures
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

pytest.importorskip("pytriton", reason="the serving extra is not installed")
httpclient = pytest.importorskip("tritonclient.http", reason="the serving extra is not "
                                 "installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the serving extra is not "
                                 "installed")

from tests.integration.test_serving import (  # noqa: E402
    ROOT, _alive, _descendants, _free_ports, _port_free)

MAX_BATCH = 32
FP16_RTOL, FP16_ATOL = 2e-2, 2e-2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import tensorflow as tf
    from tftrt import trt_convert as trt
    from tftrt.quickstart import default_model
    os.environ["TFTRT_BACKEND"] = "cupy"
    root = tmp_path_factory.mktemp("serve_gpu")
    src = str(root / "cnn")
    default_model().export(src, verbose=False)
    native = tf.saved_model.load(src).signatures["serving_default"]
    (name, spec), = native.structured_input_signature[1].items()
    out_name = next(iter(native.structured_outputs))
    shape = [d for d in spec.shape.as_list()[1:]]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=src, precision_mode="FP16",
                                   use_dynamic_shape=True)
    conv.convert()
    rng = np.random.RandomState(0)
    conv.build(lambda: iter([(rng.standard_normal([b] + shape).astype(np.float32),)
                             for b in (1, MAX_BATCH)]))
    dst = str(root / "cnn_trt")
    conv.save(dst)
    gpus = len(tf.config.list_physical_devices("GPU"))
    ports = _free_ports(3)
    log = str(root / "serve.log")
    env = dict(os.environ, TFTRT_BACKEND="cupy",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tftrt", "serve", dst, "--gpus", "all", "--max-batch",
             str(MAX_BATCH), "--max-queue-delay-us", "2000", "--instances-per-gpu", "2",
             "--address", "127.0.0.1",
             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
             "--metrics-port", str(ports[2])], stdout=f, stderr=subprocess.STDOUT, env=env,
            cwd=ROOT)
    url = f"127.0.0.1:{ports[0]}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with httpclient.InferenceServerClient(url) as c:
                if c.is_model_ready("cnn_trt"):
                    break
        except Exception:
            pass
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail(open(log).read()[-4000:])
    info = dict(proc=proc, ports=ports, url=url, grpc=f"127.0.0.1:{ports[1]}", log=log,
                gpus=gpus, name=name, out=out_name, shape=shape,
                reference=lambda x: native(**{name: tf.constant(x)})[out_name].numpy())
    yield info
    if proc.poll() is None:
        proc.kill()
        proc.wait(60)


def _infer(lib, url, s, x):
    inp = lib.InferInput(s["name"], list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with lib.InferenceServerClient(url) as c:
        return c.infer("cnn_trt", [inp]).as_numpy(s["out"])


def test_one_instance_per_gpu(server):
    with httpclient.InferenceServerClient(server["url"]) as c:
        cfg = c.get_model_config("cnn_trt")
    assert sum(int(g["count"]) for g in cfg["instance_group"]) == 2 * server["gpus"]
    assert MAX_BATCH in cfg["dynamic_batching"]["preferred_batch_size"]


def test_concurrent_answers_equal_native(server):
    rng = np.random.RandomState(1)
    xs = [rng.standard_normal([int(rng.choice([1, 3, 8, 17]))] + server["shape"])
          .astype(np.float32) for _ in range(64)]
    expected = [server["reference"](x) for x in xs]

    def job(i):
        lib, url = (httpclient, server["url"]) if i % 2 else (grpcclient, server["grpc"])
        return _infer(lib, url, server, xs[i])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(job, range(len(xs))))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=FP16_RTOL, atol=FP16_ATOL)
    with httpclient.InferenceServerClient(server["url"]) as c:
        s = c.get_inference_statistics("cnn_trt")["model_stats"][0]
    assert int(s["execution_count"]) < int(s["inference_count"])
    # the float batches went to the GPU directly (DLPack), not through tf.constant
    assert "uploading requests directly failed" not in open(server["log"]).read()
    print(f"{server['gpus']} GPU(s): {s['inference_count']} inferences in "
          f"{s['execution_count']} executions")


def test_stops_cleanly(server):
    proc = server["proc"]
    children = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, open(server["log"]).read()[-4000:]
    time.sleep(1)
    assert not [p for p in children if _alive(p)]
    assert all(_port_free(p) for p in server["ports"])
