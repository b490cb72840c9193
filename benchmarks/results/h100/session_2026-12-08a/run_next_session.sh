#!/usr/bin/env bash
# The next device call (written in the twenty-seventh session; repo root, .devrun/ carried with t39.tar.xz made by
# `bash benchmarks/explore/pack_triton.sh 3.9.0 .devrun/t39.tar.xz`): (1) the GPU tests of the configs shipped in
# that session (COPY_BEFORE_Q; sparse keys-on-M alone on its SM with four raw tiles) and of the many-sequence plans,
# (2) the sparse table (sparse.json is from 2026-11-24), (3) the decode table with the FP8 cache. Limits: T_TESTS,
# T_SPARSE, T_BENCH (0 skips a step).
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONPATH=/tmp/t39:$PWD
python3 -c 'import torch,triton;print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)'
NOISE='nanobind\|leaked\|refleaks\|reference counting\|knobs.py\|warn_once\|^ - '
if [ "${T_TESTS:-240}" != 0 ]; then
  t0=$(date +%s)
  for spec in "test_sparse.py:alone_4 or copy_first" "test_fp8.py:copy_first or many_sequences" \
              "test_decode.py:many_sequences" "test_sparse.py:split_and_batch or cuda_graph or extra_cache"; do
    f=${spec%%:*}; k=${spec#*:}; log=$OUT/tests_${f%.py}_$(echo "$k" | tr -c 'a-z0-9' '_' | cut -c1-20).log
    left=$(( ${T_TESTS:-240} - $(date +%s) + t0 )); [ $left -le 5 ] && break
    timeout -k 3 $left python3 -m pytest -v -n 8 -p no:cacheprovider --tb=short tests/$f -k "$k" > $log 2>&1
    echo "$f [$k] rc=$? at $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $log) FAILED $(grep -c FAILED $log)"
    grep -E "^FAILED|Error" $log | head -5
  done
fi
if [ "${T_SPARSE:-90}" != 0 ]; then
  t0=$(date +%s)
  timeout -k 3 ${T_SPARSE:-90} python3 -m triton_mla.bench_sparse --out $OUT/sparse.json > $OUT/sparse_full.txt 2>&1
  echo "sparse rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "^{\|$NOISE" $OUT/sparse_full.txt | tee $OUT/sparse.txt
fi
if [ "${T_BENCH:-200}" != 0 ]; then
  t0=$(date +%s)
  timeout -k 3 ${T_BENCH:-200} python3 -m triton_mla bench decode --fp8 --out $OUT/decode_fp8.json --plot $OUT/decode.png \
    > $OUT/decode_fp8_full.txt 2>&1
  echo "decode rc=$? in $(( $(date +%s) - t0 )) s"; grep -v "^{\|$NOISE" $OUT/decode_fp8_full.txt | tee $OUT/decode_fp8.txt
fi
