#!/usr/bin/env bash
# session 20, call 1: the ws prefetch A/B (bitwise + reference + graph times), then the GPU tests not yet run
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun PYTHONUNBUFFERED=1
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100')")
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout -k 3 ${T_AB:-230} python3 benchmarks/results/h100/session_2026-12-07t/ab_prefetch.py .devrun/decode_sm90_ws_old.py > $OUT/ab_prefetch_${tag}_t39.log 2>&1
echo "ab rc=$?"; cat $OUT/ab_prefetch_${tag}_t39.log | grep -v Warning | grep -v warn_once
if ! grep -q "stress: all ok" $OUT/ab_prefetch_${tag}_t39.log; then
  echo "PREFETCH NOT OK: tests run on the old kernel"; cp .devrun/decode_sm90_ws_old.py triton_mla/kernels/decode_sm90_ws.py
fi
mapfile -t ids < .devrun/${TODO:-todo_a.txt}
timeout -k 3 ${T_TESTS:-300} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/tests_gpu_${tag}_t39_a.log 2>&1
echo "tests rc=$?; PASSED: $(grep -c PASSED $OUT/tests_gpu_${tag}_t39_a.log) of ${#ids[@]}"
grep -E "FAILED|ERROR| passed| failed" $OUT/tests_gpu_${tag}_t39_a.log | tail -20
