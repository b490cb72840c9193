#!/usr/bin/env bash
# next session's first call (from the repo root, with .devrun/ carried: Triton 3.9 in .devrun/t39.tar.xz, failwriter.py):
# the fused combine under compute-sanitizer, the fused tests this session's limit cut, then the older GPU backlog
# (4 workers, so the extend tests' 4 GB references fit), then the FP8 decode table with the shipped configs.
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
D=benchmarks/results/h100/session_2026-12-07x
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 3 150 compute-sanitizer --tool memcheck python3 -m pytest -q -p no:cacheprovider \
  "tests/test_fp8.py::test_gpu_sm90_keys_on_m_fused_empty_sequences[True-lens4]" \
  "tests/test_decode.py::test_gpu_bf16_fused_combine[True-5-3]" > $OUT/memcheck_fused.log 2>&1
echo "memcheck rc=$?: $(grep -c 'Invalid\|ERROR SUMMARY: [1-9]' $OUT/memcheck_fused.log) error lines"; grep "ERROR SUMMARY" $OUT/memcheck_fused.log
for list in fused_tests_not_run fp8_tests_not_run_still gpu_tests_not_run_still; do
  mapfile -t ids < $D/$list.txt
  timeout -k 3 ${T_TESTS:-130} python3 -m pytest -v -n 4 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/$list.log 2>&1
  echo "$list rc=$?: PASSED $(grep -c PASSED $OUT/$list.log) of ${#ids[@]}, FAILED $(grep -c FAILED $OUT/$list.log)"
done
timeout -k 3 120 python3 -m triton_mla.bench decode --fp8 --out $OUT/decode_fp8.json > $OUT/decode_fp8.txt 2>&1; tail -45 $OUT/decode_fp8.txt
