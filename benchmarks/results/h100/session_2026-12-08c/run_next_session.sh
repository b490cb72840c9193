#!/usr/bin/env bash
# The next device call (written in the twenty-ninth session, which, as the twenty-eighth, had no device time; repo
# root, .devrun/ carried with t39.tar.xz made by `bash benchmarks/explore/pack_triton.sh 3.9.0 .devrun/t39.tar.xz`):
#  (1) the GPU tests of the three kernels written without a GPU: the FP8 cache through the warp-specialized decode
#      (``WS`` on a decode_fp8 entry, twenty-eighth session), the sparse FP8 dual program (``FP8_KEYS_ON_M_DUAL``)
#      and the FP8 cache through the warp-specialized sparse kernel (``FP8_WS``; both twenty-ninth); then the tests
#      of the twenty-seventh session's shipped configs; if the ws tests failed: benchmarks/explore/ws_fp8_debug.py
#      (error by output half and row) and memcheck; if the dual's failed: memcheck over a few of them;
#  (2) for each kernel whose tests passed, an A/B: {} against {"WS": true} (and LATE_B_LO) on FP8 shapes of 64-256
#      rows (bf16 beside them); {} against {"FP8_KEYS_ON_M_DUAL": true} on sparse FP8 shapes of 8 and 16 heads;
#      {} against {"FP8_WS": true} on sparse FP8 shapes of 64 and 128 heads;
#  (3) the sparse table and the decode table with the FP8 cache.
# Limits: T_TESTS, T_AB, T_DUAL, T_SPWS, T_SPARSE, T_BENCH (0 skips a step; the defaults, 220 + 130 + 100 + 80 + 0
# + 0, fit one 600-s call: the tables, T_SPARSE=90 T_BENCH=100, in a second call with the others 0).
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONPATH=/tmp/t39:$PWD
python3 -c 'import torch,triton;print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)'
NOISE='nanobind\|leaked\|refleaks\|reference counting\|knobs.py\|warn_once\|^ - '
WS_OK=0
DUAL_OK=0
SPWS_OK=0
if [ "${T_TESTS:-220}" != 0 ]; then
  t0=$(date +%s)
  for spec in "test_fp8.py:ws_kernel" "test_sparse.py:sparse_fp8_dual or dual_only" \
              "test_sparse.py:sparse_fp8_ws or only_where_asked" "test_sparse.py:alone_4 or copy_first" \
              "test_fp8.py:copy_first or many_sequences" "test_decode.py:many_sequences"; do
    f=${spec%%:*}; k=${spec#*:}; log=$OUT/tests_${f%.py}_$(echo "$k" | tr -c 'a-z0-9' '_' | cut -c1-20).log
    left=$(( ${T_TESTS:-220} - $(date +%s) + t0 )); [ $left -le 5 ] && break
    timeout -k 3 $left python3 -m pytest -v -n 8 -p no:cacheprovider --tb=short tests/$f -k "$k" > $log 2>&1
    rc=$?
    echo "$f [$k] rc=$rc at $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $log) FAILED $(grep -c FAILED $log)"
    grep -E "^FAILED|Error" $log | head -5
    [ "$k" = ws_kernel ] && [ $rc = 0 ] && WS_OK=1
    [ "$k" = "sparse_fp8_dual or dual_only" ] && [ $rc = 0 ] && DUAL_OK=1
    [ "$k" = "sparse_fp8_ws or only_where_asked" ] && [ $rc = 0 ] && SPWS_OK=1
  done
fi
if [ "${T_TESTS:-220}" != 0 ] && [ $DUAL_OK = 0 ]; then
  # the dual program's tests failed (or were cut): what compute-sanitizer sees in a few of them
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 3 120 compute-sanitizer --tool memcheck python3 -m pytest -x -q \
    -p no:cacheprovider tests/test_sparse.py -k "sparse_fp8_dual and (1-1 or 16-2)" > $OUT/dual_memcheck.txt 2>&1
  echo "dual memcheck rc=$?"; grep -E "ERROR SUMMARY|Invalid|passed|failed" $OUT/dual_memcheck.txt | head -8
fi
if [ "${T_TESTS:-220}" != 0 ] && [ $SPWS_OK = 0 ]; then
  # the sparse FP8 ws kernel's tests failed (or were cut): compute-sanitizer over two of them
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 3 100 compute-sanitizer --tool memcheck python3 -m pytest -x -q \
    -p no:cacheprovider tests/test_sparse.py -k "sparse_fp8_ws and (1-1 or 128-2) and False" > $OUT/spws_memcheck.txt 2>&1
  echo "spws memcheck rc=$?"; grep -E "ERROR SUMMARY|Invalid|passed|failed" $OUT/spws_memcheck.txt | head -8
fi
if [ "${T_TESTS:-220}" != 0 ] && [ $WS_OK = 0 ]; then
  # the ws kernel's tests failed (or were cut): where it goes wrong, then what compute-sanitizer sees
  PYTHONPATH=/tmp/t39:$PWD:$PWD/tests timeout -k 3 90 python3 benchmarks/explore/ws_fp8_debug.py 2>&1 \
    | grep -v "$NOISE" | tee $OUT/ws_fp8_debug.txt
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 3 120 compute-sanitizer --tool memcheck \
    python3 benchmarks/explore/ws_memcheck.py > $OUT/ws_memcheck.txt 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|Invalid" $OUT/ws_memcheck.txt | head -5
fi
ab() {  # ab TAG LIMIT ROUNDS SHAPES VARIANTS: benchmarks/explore/ab_variants.py, its output in $OUT/ab_TAG.txt
  local t0=$(date +%s)
  SHAPES="$4" VARIANTS="$5" ROUNDS=$3 timeout -k 3 $2 python3 benchmarks/explore/ab_variants.py $1 > $OUT/ab_$1_full.txt 2>&1
  echo "ab $1 rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "$NOISE" $OUT/ab_$1_full.txt | tee $OUT/ab_$1.txt
}
[ "${T_AB:-130}" != 0 ] && [ $WS_OK = 1 ] && ab ws_fp8 ${T_AB:-130} 3 \
  "fp8,128,8192,64,1;fp8,128,8192,128,1;fp8,128,8192,128,2;fp8,8,8192,128,1;fp8,128,4096,32,2;bf16,128,8192,64,1;bf16,128,8192,128,1;bf16,8,8192,128,1" \
  '{}|{"WS": true}|{"WS": true, "LATE_B_LO": true}'
[ "${T_DUAL:-100}" != 0 ] && [ $DUAL_OK = 1 ] && ab sparse_dual ${T_DUAL:-100} 4 \
  "sparse,128,2048,16,1;sparse,128,2048,8,1;sparse,64,2048,16,1;sparse,32,2048,16,1;sparse,128,1024,16,1" \
  '{}|{"FP8_KEYS_ON_M_DUAL": true}'
[ "${T_SPWS:-80}" != 0 ] && [ $SPWS_OK = 1 ] && ab sparse_fp8_ws ${T_SPWS:-80} 3 \
  "sparse,128,2048,128,2;sparse,64,2048,128,2;sparse,128,2048,64,1" '{}|{"FP8_WS": true}'
if [ "${T_SPARSE:-0}" != 0 ]; then
  t0=$(date +%s)
  timeout -k 3 ${T_SPARSE:-0} python3 -m triton_mla.bench_sparse --out $OUT/sparse.json > $OUT/sparse_full.txt 2>&1
  echo "sparse rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "^{\|$NOISE" $OUT/sparse_full.txt | tee $OUT/sparse.txt
fi
if [ "${T_BENCH:-0}" != 0 ]; then
  t0=$(date +%s)
  timeout -k 3 ${T_BENCH:-0} python3 -m triton_mla bench decode --fp8 --out $OUT/decode_fp8.json \
    > $OUT/decode_fp8_full.txt 2>&1
  echo "decode rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "^{\|$NOISE" $OUT/decode_fp8_full.txt | tee $OUT/decode_fp8.txt
fi
