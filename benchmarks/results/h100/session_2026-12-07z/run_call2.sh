#!/usr/bin/env bash
# second call of the twenty-sixth session: the end spread (programs of equal work end ~97 us apart) against more
# parts than program slots (the block scheduler then balances), then the GPU tests still not run
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
NOISE='nanobind\|leaked\|refleaks\|reference counting\|knobs.py\|warn_once\|^ - '
K=triton_mla/kernels
cp $K/decode_sm90_fp8.py /tmp/dsf.py && cp $K/sparse_sm90.py /tmp/ss.py
{ patch -s -p1 < benchmarks/explore/fp8_timeline.diff || git apply benchmarks/explore/fp8_timeline.diff; }
SHAPES="dense,128,8192,16,1;dense,128,4096,16,1" VARIANTS='{}|{"PARTS_PER_SM": 3}|{"PARTS_PER_SM": 4}|{"PARTS_PER_SM": 6}|{"PARTS_PER_SM": 4, "MIN_BLOCKS_PER_PART": 4}' \
  timeout -k 3 ${T_TL:-150} python3 benchmarks/explore/fp8_timeline.py > $OUT/fp8_parts_full.log 2>&1
echo "parts rc=$?"; grep -v "$NOISE" $OUT/fp8_parts_full.log | tee $OUT/fp8_parts.log
cp /tmp/dsf.py $K/decode_sm90_fp8.py && cp /tmp/ss.py $K/sparse_sm90.py
mapfile -t ids < benchmarks/results/h100/session_2026-12-07z/gpu_tests_remaining.txt
t0=$(date +%s)
timeout -k 3 ${T_TESTS:-380} python3 -m pytest -v -n 4 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/gpu_tests_remaining.log 2>&1
echo "tests rc=$? in $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $OUT/gpu_tests_remaining.log) of ${#ids[@]}, FAILED $(grep -c FAILED $OUT/gpu_tests_remaining.log)"
grep -E "^FAILED|Error" $OUT/gpu_tests_remaining.log | head -10
