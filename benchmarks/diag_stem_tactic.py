"""Which tactic a ResNet50 engine's stem gets, what each candidate timed, and which candidates
failed when timed (GPU, CuPy backend; no TensorFlow). s40's call g found the stem on cuDNN
(437-441 us) in every build of one H100 call, FP16 included, where stem_mma runs it in ~260 us
elsewhere; the skipped candidate left only a debug line then. Now the builder records such
failures (``build_info["tactic_failures"]``) and logs them at INFO, which this prints::

    source benchmarks/gpu_engine_env.sh 300; export TFTRT_BACKEND=cupy
    python3 benchmarks/diag_stem_tactic.py FP16 INT8     # networks of make_networks.py
"""

import logging
import sys
import time

sys.path.insert(0, "benchmarks")
logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
logging.getLogger("tftrt.engine.tactics").setLevel(logging.INFO)

from make_networks import load_networks  # noqa: E402

from tftrt.engine import BuilderConfig, build_engine, network_from_onnx  # noqa: E402


def main(precisions) -> int:
    model = load_networks(".whl/networks/resnet50_int8.onnx.xz")[0]
    net = network_from_onnx(model)
    shape = {n: (128,) + tuple(net.tensors[n].shape[1:]) for n in net.inputs}
    for precision in precisions:
        t0 = time.time()
        engine = build_engine(model, shape, BuilderConfig(precision=precision, backend="cupy"))
        stem = next(l for l in engine.network.layers if l.kind == "conv")
        info = engine.build_info
        print(f"{precision}: stem {stem.name} on {stem.tactic}; timed "
              f"{info['tactic_timings'].get(stem.name)}; failed "
              f"{info.get('tactic_failures', {}).get(stem.name)}; every failure "
              f"{info.get('tactic_failures')}; built in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["FP16"]))
