#!/usr/bin/env bash
# session 20, call 2: is the ws decode deterministic run to run (shipped, prefetch variant, lockstep)?; the bf16
# invariant cost; then GPU tests not yet run (GPU-named first)
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun PYTHONUNBUFFERED=1
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100')")
python3 -c 'import torch,triton;print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)'
t0=$(date +%s)
timeout -k 3 ${T_DET:-200} python3 benchmarks/results/h100/session_2026-12-07t/determinism.py .devrun/decode_sm90_ws_prefetch.py 2>&1 | grep -v -i "warn\|nanobind\|leaked" > $OUT/determinism_${tag}_t39.log
echo "det rc=$? in $(( $(date +%s) - t0 )) s"; cat $OUT/determinism_${tag}_t39.log
t0=$(date +%s)
[ "${T_INV:-80}" -gt 0 ] && timeout ${T_INV:-80} python3 benchmarks/bench_invariant.py --out $OUT/invariant_bf16_${tag}_t39.json 2>&1 | grep -v -i "warn" > $OUT/invariant_bf16_${tag}_t39.txt
echo "invariant rc=$? in $(( $(date +%s) - t0 )) s"; cat $OUT/invariant_bf16_${tag}_t39.txt
mapfile -t ids < .devrun/${TODO:-todo_c.txt}
timeout -k 3 ${T_TESTS:-250} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/tests_gpu_${tag}_t39_c.log 2>&1
echo "tests rc=$?; PASSED: $(grep -c PASSED $OUT/tests_gpu_${tag}_t39_c.log) of ${#ids[@]}"
grep -E "FAILED|ERROR| passed| failed" $OUT/tests_gpu_${tag}_t39_c.log | tail -20
