#!/usr/bin/env bash
# session 21, call 1: FP8 keys-on-M at 32 rows (GPU tests, then A/B against the lockstep kernel), ws determinism
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun PYTHONUNBUFFERED=1
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100')")
S=benchmarks/results/h100/session_2026-12-07u
t0=$(date +%s)
timeout -k 3 ${T_TEST:-170} python3 -m pytest -q -n 16 -p no:cacheprovider -p failwriter --tb=short tests/test_fp8.py -k "${TEST_K:-keys_on_m_32_rows}" > $OUT/tests_kom32_${tag}_t39.log 2>&1
echo "tests rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "FAILED|ERROR|passed|failed|Error" $OUT/tests_kom32_${tag}_t39.log | head -30
t0=$(date +%s)
timeout -k 3 ${T_BENCH:-260} python3 $S/fp8_32rows.py ${BENCH_ARGS:-} 2>&1 | grep -v -i "warn\|nanobind\|leaked" > $OUT/fp8_32rows_${tag}_t39.log
echo "bench rc=$? in $(( $(date +%s) - t0 )) s"; cat $OUT/fp8_32rows_${tag}_t39.log
[ "${T_DET:-120}" -gt 0 ] || exit 0
t0=$(date +%s)
QUICK=1 timeout -k 3 ${T_DET:-120} python3 benchmarks/results/h100/session_2026-12-07t/determinism.py .devrun/decode_sm90_ws_prefetch.py 2>&1 | grep -v -i "warn\|nanobind\|leaked" > $OUT/determinism_${tag}_t39.log
echo "det rc=$? in $(( $(date +%s) - t0 )) s"; cat $OUT/determinism_${tag}_t39.log
