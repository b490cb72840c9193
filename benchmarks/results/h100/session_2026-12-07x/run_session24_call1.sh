#!/usr/bin/env bash
# next session's first call (from the repo root, with .devrun/ carried: Triton 3.9 in .devrun/t39.tar.xz, failwriter.py):
# L2_AHEAD (the twenty-third session's last option, never measured) against the shipped configs, then the tests never
# run on a GPU: that session's (the fixed growing-scores test, PAIR_KEYS + LAZY_MAX, L2_AHEAD), the FP8 GPU tests the
# twenty-second session's limit cut (ids renamed: qk_e4m3 False/True -> f16/e4m3), the older backlog
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100')")
D=benchmarks/results/h100/session_2026-12-07w
t0=$(date +%s)
VARIANTS="shipped,l2 ahead,pairs lazy l2,1x4 stages,1x4 l2" SHAPES=16:1:8192,8:1:8192 timeout -k 3 ${T_AB:-110} python3 benchmarks/explore/fp8_qk_variants.py 2>&1 | grep -v -i "warn\|leaked\|^ - \|nanobind" > $OUT/fp8_l2_ahead_${tag}_t39.log
echo "== dense A/B ($(( $(date +%s) - t0 )) s)"; cat $OUT/fp8_l2_ahead_${tag}_t39.log
timeout -k 3 40 python3 benchmarks/explore/sparse_sm90_variants.py decode few-heads fp8 t_q8_p2_pl t_q8_p2_pl_l2 2>&1 | grep -v -i "warn\|leaked\|^ - \|nanobind" > $OUT/sparse_l2_ahead_${tag}_t39.log
echo "== sparse A/B"; cat $OUT/sparse_l2_ahead_${tag}_t39.log
FC_SHAPES=fp8:16,bf16:16 timeout -k 3 ${T_FC:-60} python3 benchmarks/explore/fixed_cost.py 2>&1 | grep -v -i "warn\|leaked\|^ - \|nanobind" > $OUT/fixed_cost_${tag}_t39.log
echo "== fixed cost"; cat $OUT/fixed_cost_${tag}_t39.log
for list in new_tests_not_run fp8_tests_not_run gpu_tests_not_run; do
  mapfile -t ids < $D/$list.txt
  timeout -k 3 ${T_TESTS:-120} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/$list.log 2>&1
  echo "$list rc=$?: PASSED $(grep -c PASSED $OUT/$list.log) of ${#ids[@]}, FAILED $(grep -c FAILED $OUT/$list.log)"
done
