#!/usr/bin/env bash
# twenty-fourth session's last call: the fused combine (FUSED_COMBINE) on the GPU: tests, then timings against the
# combine kernel in the same run (keys-on-M FP8 at 8/16 rows, tl.dot bf16 at 16 rows), then the host's cost a call
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
F="warn\|leaked\|^ - \|nanobind"
timeout -k 3 ${T_TESTS:-95} python3 -m pytest -v -n 8 -p no:cacheprovider -p failwriter --tb=short \
  tests/test_fp8.py -k "fused" tests/test_decode.py::test_gpu_bf16_fused_combine > $OUT/tests_fused_h100_t39.log 2>&1
echo "tests rc=$?: PASSED $(grep -c PASSED $OUT/tests_fused_h100_t39.log), FAILED $(grep -c FAILED $OUT/tests_fused_h100_t39.log)"
grep "FAILED\|Error" $OUT/tests_fused_h100_t39.log | head -8
VARIANTS="shipped,fused" SHAPES=16:1:8192,16:1:4096,8:1:8192 timeout -k 3 ${T_AB:-70} \
  python3 benchmarks/explore/fp8_qk_variants.py 2>&1 | grep -v -i "$F" > $OUT/fp8_fused_h100_t39.log
cat $OUT/fp8_fused_h100_t39.log
for o in '{}' '{"FUSED_COMBINE": true}'; do
  FC_SHAPES=bf16:16,fp8:16 FC_LENGTHS=4096,8192 timeout -k 3 35 python3 benchmarks/explore/fixed_cost.py "$o" 2>&1 \
    | grep -v -i "$F"; done > $OUT/fixed_cost_fused_h100_t39.log
cat $OUT/fixed_cost_fused_h100_t39.log
for o in '{}' '{"FUSED_COMBINE": true}'; do
  HO_CASES=bf16_h16,fp8_h16,fp8_h16_nomd HO_PROF=fp8_h16 HO_TOP=12 timeout -k 3 12 python3 benchmarks/explore/host_overhead.py "$o" 2>&1 \
    | grep -v -i "$F"; done > $OUT/host_fused_h100_t39.log
grep "^==\|overrides" $OUT/host_fused_h100_t39.log
