#!/usr/bin/env bash
# Twenty-seventh session, device call 2: the GPU tests of the configs as now shipped (COPY_BEFORE_Q on the dense FP8
# 16-row entry; sparse FP8 keys-on-M alone on its SM with four raw tiles and COPY_BEFORE_Q), the plan as at e08081c.
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONPATH=/tmp/t39:$PWD
t0=$(date +%s)
for spec in "test_sparse.py:alone_4 or copy_first" "test_fp8.py:copy_first or (many_sequences and True)" "test_sparse.py:split_and_batch or cuda_graph"; do
  f=${spec%%:*}; k=${spec#*:}; log=$OUT/tests_${f%.py}_$(echo "$k" | tr -c 'a-z0-9' '_' | cut -c1-20).log
  timeout -k 3 $(( ${T_TESTS:-280} - $(date +%s) + t0 )) python3 -m pytest -v -n 8 -p no:cacheprovider --tb=short \
    tests/$f -k "$k" > $log 2>&1
  echo "$f [$k] rc=$? at $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $log) FAILED $(grep -c FAILED $log) SKIPPED $(grep -c SKIPPED $log)"
  grep -E "^FAILED|Error" $log | head -5
done
