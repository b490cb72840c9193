#!/usr/bin/env bash
# next session's first call (from the repo root, with .devrun/ carried: Triton 3.9 in .devrun/t39.tar.xz, failwriter.py):
# the twenty-third session's tests not yet run on a GPU (the fixed growing-scores test, the dual program with
# PAIR_KEYS + LAZY_MAX), then the FP8 GPU tests the twenty-second session's limit cut (ids renamed: qk_e4m3 False/True
# -> f16/e4m3), then the GPU tests never run on the GPU
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun PYTHONUNBUFFERED=1
D=benchmarks/results/h100/session_2026-12-07w
for list in new_tests_not_run fp8_tests_not_run gpu_tests_not_run; do
  mapfile -t ids < $D/$list.txt
  timeout -k 3 ${T_TESTS:-170} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/$list.log 2>&1
  echo "$list rc=$?: PASSED $(grep -c PASSED $OUT/$list.log) of ${#ids[@]}, FAILED $(grep -c FAILED $OUT/$list.log)"
done
