#!/usr/bin/env bash
# next session's first call (from the repo root, .devrun/ carried): the sparse table (the committed sparse.json is
# from 2026-11-24), then the GPU tests never run there (4 workers). The fused combines' memcheck ran in session 25.
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
python3 -c 'import torch,triton;print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)'
NOISE='nanobind\|leaked\|refleaks\|reference counting\|knobs.py\|warn_once\|^ - '
t0=$(date +%s)
timeout -k 3 ${T_SPARSE:-90} python3 -m triton_mla.bench_sparse --out $OUT/sparse.json > $OUT/sparse_full.txt 2>&1
echo "sparse rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "^{\|$NOISE" $OUT/sparse_full.txt | tee $OUT/sparse.txt
D=benchmarks/results/h100/session_2026-12-07x
for list in gpu_tests_not_run_still; do
  t0=$(date +%s)
  mapfile -t ids < $D/$list.txt
  timeout -k 3 ${T_TESTS:-400} python3 -m pytest -v -n 4 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/$list.log 2>&1
  echo "$list rc=$? in $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $OUT/$list.log) of ${#ids[@]}, FAILED $(grep -c FAILED $OUT/$list.log)"
  grep -E "^FAILED|Error" $OUT/$list.log | head -10
done
