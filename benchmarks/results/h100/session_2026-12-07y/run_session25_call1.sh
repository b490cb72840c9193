#!/usr/bin/env bash
# session 25, call B: 17-64 rows as 16-row FP8 programs (A/B against the shipped dual / lockstep kernels), sparse FP8
# with the splits merged in the kernel (A/B), the fused tests left unrun + the new sparse fused tests, the decode
# table (bf16 + FP8, shipped configs)
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
python3 -c 'import torch,triton;print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)'
NOISE='nanobind\|leaked\|refleaks\|reference counting\|knobs.py\|warn_once\|^ - '
t0=$(date +%s)
VARIANTS="${VARS:-shipped,16-row blocks,16-row blocks parts first}" SHAPES=${SHP:-32:1:8192,16:2:8192,32:1:4096,64:1:8192} \
  timeout -k 3 ${T_VAR:-150} python3 benchmarks/explore/fp8_qk_variants.py 2>&1 | grep -v "$NOISE" > $OUT/fp8_row_blocks_h100_t39.log
echo "variants rc=$? in $(( $(date +%s) - t0 )) s"; cat $OUT/fp8_row_blocks_h100_t39.log
t0=$(date +%s)
timeout -k 3 ${T_SP:-60} python3 benchmarks/explore/sparse_sm90_variants.py decode few-heads fp8 t_q8_p2_pl t_q8_p2_pl_fused 2>&1 | grep -v "$NOISE" > $OUT/sparse_fused_h100_t39.log
echo "sparse A/B rc=$? in $(( $(date +%s) - t0 )) s"; cat $OUT/sparse_fused_h100_t39.log
D=benchmarks/results/h100/session_2026-12-07x
t0=$(date +%s)
mapfile -t ids < $D/fused_tests_not_run.txt
timeout -k 3 ${T_TESTS:-110} python3 -m pytest -v -n 4 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" \
  tests/test_sparse.py tests/test_fp8.py::test_gpu_sm90_keys_on_m_row_blocks -k "fused or row_blocks" > $OUT/fused_tests.log 2>&1
echo "fused tests rc=$? in $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $OUT/fused_tests.log), FAILED $(grep -c FAILED $OUT/fused_tests.log)"
grep -E "FAILED|Error" $OUT/fused_tests.log | head -20
t0=$(date +%s)
timeout -k 3 ${T_BENCH:-180} python3 -m triton_mla bench decode --fp8 --out $OUT/decode_fp8.json --plot $OUT/decode.png > $OUT/decode_fp8_full.txt 2>&1
echo "bench rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "^{\|$NOISE" $OUT/decode_fp8_full.txt > $OUT/decode_fp8.txt; cat $OUT/decode_fp8.txt
