# ncu (Nsight Compute) summaries of the dense decode kernels, one launch each, into OUT (repo root, CUDA machine):
#   OUT=dir bash benchmarks/explore/ncu_decode.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
SEC="--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats"
SEC="$SEC --section SchedulerStats --section LaunchStats --section Occupancy"
for c in "64 1 bf16" "16 1 bf16" "16 1 fp8" "128 1 fp8"; do
  set -- $c
  timeout 150 ncu --clock-control none -k regex:"_decode_kernel|_decode_fp8_kernel" --launch-skip 2 --launch-count 1 \
    $SEC python3 benchmarks/explore/one_decode_call.py "$1" "$2" "$3" > "$OUT/ncu_h$1_$3.txt" 2>&1
done
