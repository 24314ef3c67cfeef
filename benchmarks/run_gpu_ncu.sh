#!/usr/bin/env bash
# Nsight Compute on the kernels that bound ResNet50 INT8 (issue 15), CuPy only (carry ".whl"):
# the q_mma stage-1 / stage-2 residual 1x1 convs and the stem_mma ResNet stem at batch 128,
# each profiled once with the sections that say what bounds a kernel (speed of light, memory,
# occupancy, scheduler, warp stall reasons, pipes). Firecracker machines only (gVisor's ncu
# cannot read counters); --clock-control none leaves the clocks alone (METHOD.md).
#   [NCU_QMMA="s1_conv3 s2_conv3"] [QMMA_CONFIGS="1,0,0"] bash benchmarks/run_gpu_ncu.sh [seconds]
# Logs in $OUT: ncu_<name>.txt, plus qmma_bench.log (the same kernels timed, no profiler).
# shellcheck source=benchmarks/gpu_engine_env.sh
source "$(dirname "$0")/gpu_engine_env.sh" "${1:-300}"
export TFTRT_BACKEND=cupy
nvidia-smi -L | tee "$out/ncu_gpu.txt"
ncu --version | tail -1 | tee -a "$out/ncu_gpu.txt"
secs=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy
      --section SchedulerStats --section WarpStateStats --section LaunchStats
      --section ComputeWorkloadAnalysis --section InstructionStats
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio")
for name in ${NCU_QMMA:-s1_conv3 s2_conv3}; do
  timeout 150 ncu --clock-control none -k regex:qmma -s 1 -c 1 "${secs[@]}" \
    python3 benchmarks/bench_qmma.py --only "$name" --configs "${QMMA_CONFIGS:-1,0,0}" \
    > "$out/ncu_$name.txt" 2>&1
  grep -E "Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible|stalled_(long|short|mio|lg|math|wait|barrier|not_sel|drain)" \
    "$out/ncu_$name.txt" | head -40
done
timeout 150 ncu --clock-control none -k regex:stem_mma -s 1 -c 1 "${secs[@]}" \
  python3 benchmarks/bench_stems.py --stems "resnet 7x7 s2" --ways stem_mma \
  > "$out/ncu_stem.txt" 2>&1
grep -E "Duration|Memory Throughput|DRAM Throughput|L1/TEX Hit|Achieved Occupancy|Issue Slots Busy|stalled_(long|short|mio|lg|math|wait|barrier|not_sel|tex)" \
  "$out/ncu_stem.txt" | head -30
timeout $(( $(left) - 10 )) python3 benchmarks/bench_qmma.py \
  --configs "${BENCH_CONFIGS:-1,0,0 1,4,0 1,8,128 1,16,0 1,0,0,1,1,0,0}" 2>&1 \
  | tee "$out/qmma_bench.log" | tail -30
