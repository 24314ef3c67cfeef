"""Runs a multi-engine model under hostile threading, in its own process (see test_never_hang).

    python -m tests.integration.hang_worker MODE BACKEND SAVED_MODEL_DIR

MODE "one-thread": TF with one inter-op thread converts, builds and calls the model.
MODE "stress": TF with two inter-op threads (a 2-core machine); 8 Python threads x 200 calls
with random batch sizes, maximum_cached_engines=2, and the builds for batch 3 made to fail.
Every result is compared with the native model; prints "OK <engine calls> <native calls>".
The caller's timeout is the watchdog: a hang fails the test instead of the suite.
"""

import os
import sys
import threading

import numpy as np


def main(mode: str, backend: str, model_dir: str) -> None:
    os.environ["TFTRT_BACKEND"] = backend
    import tensorflow as tf
    tf.config.threading.set_inter_op_parallelism_threads(1 if mode == "one-thread" else 2)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from tftrt import trt_convert as trt
    from tftrt.engine_op import TRTEngineOp

    native = tf.saved_model.load(model_dir).signatures["serving_default"]
    conv = trt.TrtGraphConverterV2(input_saved_model_dir=model_dir, minimum_segment_size=2,
                                   maximum_cached_engines=2)
    fn = conv.convert()
    assert len(conv.engine_ops) >= 2, conv.engine_ops
    from tftrt.rewrite import DirectSignature
    assert isinstance(fn, DirectSignature) == (os.environ.get("TFTRT_DIRECT_CALL") != "0")
    rng = np.random.RandomState(0)

    def batch(n):
        return rng.standard_normal((n, 8)).astype(np.float32)

    def check(x):
        got = fn(x=tf.constant(x))
        want = native(x=tf.constant(x))
        for k in want:
            np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-5, atol=1e-5)

    if mode == "one-thread":
        conv.build(input_fn=lambda: iter([(batch(2),)]))
        check(batch(2))
        check(batch(5))
    else:
        real_build = TRTEngineOp._build

        def flaky_build(self, key, backend_name):
            if key[0][0] == 3:
                raise RuntimeError("build made to fail for batch 3")
            return real_build(self, key, backend_name)
        TRTEngineOp._build = flaky_build
        inputs = [batch(n) for n in (1, 2, 3, 4, 5, 6)]
        wants = [{k: v.numpy() for k, v in native(x=tf.constant(x)).items()} for x in inputs]
        errors = []

        def worker(seed):
            r = np.random.RandomState(seed)
            try:
                for _ in range(200):
                    k = r.randint(len(inputs))
                    got = fn(x=tf.constant(inputs[k]))
                    for name, want in wants[k].items():
                        np.testing.assert_allclose(got[name].numpy(), want, rtol=1e-5,
                                                   atol=1e-5)
            except Exception as e:  # reported by the main thread
                errors.append(repr(e))
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
    stats = [op.stats for op in conv.engine_ops.values()]
    print("OK", sum(s["engine"] for s in stats), sum(s["native"] for s in stats), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
