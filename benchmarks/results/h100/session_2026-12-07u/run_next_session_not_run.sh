#!/usr/bin/env bash
# next session, first call: memcheck of the dual FP8 program (new in the twenty-first session), the bf16 invariant
# cost, then the GPU tests never run on the GPU (GPU-named first)
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100')")
t0=$(date +%s)
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 3 ${T_MEM:-150} compute-sanitizer --tool memcheck python3 benchmarks/explore/memcheck_decode_sm90.py fp8-dual > $OUT/memcheck_fp8_dual_${tag}_t39.log 2>&1
echo "memcheck rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "ERROR SUMMARY|calls done|Invalid" $OUT/memcheck_fp8_dual_${tag}_t39.log | head -5
t0=$(date +%s)
[ "${T_INV:-80}" -gt 0 ] && timeout ${T_INV:-80} python3 benchmarks/bench_invariant.py --out $OUT/invariant_bf16_${tag}_t39.json 2>&1 | grep -v -i "warn" > $OUT/invariant_bf16_${tag}_t39.txt
echo "invariant rc=$? in $(( $(date +%s) - t0 )) s"; cat $OUT/invariant_bf16_${tag}_t39.txt
mapfile -t ids < .devrun/${TODO:-todo_c.txt}
timeout -k 3 ${T_TESTS:-300} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/tests_gpu_${tag}_t39_c.log 2>&1
echo "tests rc=$?; PASSED: $(grep -c PASSED $OUT/tests_gpu_${tag}_t39_c.log) of ${#ids[@]}"
grep -E "FAILED|ERROR| passed| failed" $OUT/tests_gpu_${tag}_t39_c.log | tail -20
