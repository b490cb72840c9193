#!/usr/bin/env bash
# twenty-second session, call 2: the shipped QK_E4M3 config against the previous one, the FP8 GPU tests with it, the
# e4m3 tests the first call left unfinished, then GPU tests never run on the GPU
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100')")
t0=$(date +%s)
VARIANTS="shipped,f16 scores" SHAPES=16:1:8192,8:1:8192,16:1:4096,12:1:8192 timeout -k 3 ${T_AB:-90} python3 benchmarks/explore/fp8_qk_variants.py 2>&1 | grep -v -i "warn\|leaked\|^ - \|nanobind" > $OUT/fp8_qk_shipped_${tag}_t39.log
echo "A/B in $(( $(date +%s) - t0 )) s"; cat $OUT/fp8_qk_shipped_${tag}_t39.log
t0=$(date +%s)
mapfile -t f8 < .devrun/todo_fp8.txt
timeout -k 3 ${T_FP8:-200} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${f8[@]}" > $OUT/tests_fp8_shipped_${tag}_t39.log 2>&1
echo "fp8 tests rc=$? in $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $OUT/tests_fp8_shipped_${tag}_t39.log) of ${#f8[@]}, FAILED $(grep -c FAILED $OUT/tests_fp8_shipped_${tag}_t39.log)"; grep -E "FAILED|ERROR| passed| failed" $OUT/tests_fp8_shipped_${tag}_t39.log | tail -8
mapfile -t ids < .devrun/${TODO:-todo_d.txt}
timeout -k 3 ${T_TESTS:-150} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/tests_gpu_${tag}_t39_d.log 2>&1
echo "tests rc=$?; PASSED: $(grep -c PASSED $OUT/tests_gpu_${tag}_t39_d.log) of ${#ids[@]}, FAILED $(grep -c FAILED $OUT/tests_gpu_${tag}_t39_d.log)"
grep -E "FAILED|ERROR| passed| failed" $OUT/tests_gpu_${tag}_t39_d.log | tail -20
