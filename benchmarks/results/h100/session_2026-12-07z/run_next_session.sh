#!/usr/bin/env bash
# The next device call (from the repo root, .devrun/ carried; written in the twenty-sixth session, which had no
# device): (1) where an FP8 keys-on-M program's time goes (benchmarks/explore/fp8_timeline.diff applied to the
# device's copy, then restored), (2) the sparse table (the committed sparse.json is from 2026-11-24), (3) the GPU
# tests never run there (4 workers). Every step's limit can be overridden (T_TL, T_SPARSE, T_TESTS; 0 skips it).
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
python3 -c 'import torch,triton;print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)'
NOISE='nanobind\|leaked\|refleaks\|reference counting\|knobs.py\|warn_once\|^ - '
K=triton_mla/kernels
if [ "${T_TL:-150}" != 0 ]; then
  t0=$(date +%s)
  cp $K/decode_sm90_fp8.py /tmp/dsf.py && cp $K/sparse_sm90.py /tmp/ss.py
  { patch -s -p1 < benchmarks/explore/fp8_timeline.diff || git apply benchmarks/explore/fp8_timeline.diff; } && mkdir -p $OUT/stamps && \
    DUMP=$OUT/stamps timeout -k 3 ${T_TL:-150} python3 benchmarks/explore/fp8_timeline.py > $OUT/fp8_timeline_full.log 2>&1
  echo "timeline rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "$NOISE" $OUT/fp8_timeline_full.log | tee $OUT/fp8_timeline.log
  # chain or copy latency? the same program with a shorter tile loop (pairs + lazy max: ~14% fewer instructions a
  # tile), and alone on its SM with three tiles in flight
  t0=$(date +%s)
  SHAPES="dense,128,8192,16,1" VARIANTS='{}|{"LAZY_MAX": true, "PAIR_KEYS": true}|{"PARTS_PER_SM": 1, "RAW_STAGES": 4}' \
    timeout -k 3 ${T_TL:-150} python3 benchmarks/explore/fp8_timeline.py > $OUT/fp8_timeline_variants_full.log 2>&1
  echo "timeline variants rc=$? in $(( $(date +%s) - t0 )) s"
  grep -v "$NOISE" $OUT/fp8_timeline_variants_full.log | tee $OUT/fp8_timeline_variants.log
  cp /tmp/dsf.py $K/decode_sm90_fp8.py && cp /tmp/ss.py $K/sparse_sm90.py
fi
if [ "${T_SPARSE:-90}" != 0 ]; then
  t0=$(date +%s)
  timeout -k 3 ${T_SPARSE:-90} python3 -m triton_mla.bench_sparse --out $OUT/sparse.json > $OUT/sparse_full.txt 2>&1
  echo "sparse rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "^{\|$NOISE" $OUT/sparse_full.txt | tee $OUT/sparse.txt
fi
if [ "${T_TESTS:-200}" != 0 ]; then
  # this session's new GPU tests (the sparse extra cache) first, then the backlog
  for list in session_2026-12-07z/gpu_tests_new session_2026-12-07x/gpu_tests_not_run_still; do
    t0=$(date +%s)
    mapfile -t ids < benchmarks/results/h100/$list.txt
    timeout -k 3 ${T_TESTS:-200} python3 -m pytest -v -n 4 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/${list#*/}.log 2>&1
    echo "$list rc=$? in $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $OUT/${list#*/}.log) of ${#ids[@]}, FAILED $(grep -c FAILED $OUT/${list#*/}.log)"
    grep -E "^FAILED|Error" $OUT/${list#*/}.log | head -10
  done
fi
