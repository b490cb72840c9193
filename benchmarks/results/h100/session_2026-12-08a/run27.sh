#!/usr/bin/env bash
# Twenty-seventh session, device call 1 (repo root, .devrun/ carried: t39.tar.xz and base/ = e08081c's triton_mla).
# (1) A/B: the plan read in one pass + a segment's first tile copied before Q (COPY_BEFORE_Q) + sparse keys-on-M
# alone on its SM with 4 raw tiles, against e08081c, alternating checkouts; (2) the GPU tests of what changed.
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
NEW=/tmp/t39:$PWD BASE=/tmp/t39:$PWD/.devrun/base
PYTHONPATH=$NEW python3 -c 'import torch,triton;print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)'
NOISE='nanobind\|leaked\|refleaks\|reference counting\|knobs.py\|warn_once\|^ - \|Warning\|warn('
AB=benchmarks/explore/ab_variants.py
DENSE="fp8,128,8192,16,1;fp8,128,4096,16,1;fp8,128,8192,8,1;fp8,32,4096,16,1;bf16,128,4096,128,1;bf16,8,8192,128,1"
SPARSE="sparse,128,2048,16,1;sparse,128,2048,8,1"
ab() {  # tag pythonpath shapes variants
  t0=$(date +%s)
  PYTHONPATH=$2 SHAPES=$3 VARIANTS=$4 ROUNDS=${ROUNDS:-4} timeout -k 3 ${T_AB:-80} python3 $AB $1 >> $OUT/ab_full.log 2>&1
  echo "ab $1 rc=$? in $(( $(date +%s) - t0 )) s"
}
if [ "${T_AB:-80}" != 0 ]; then
  for r in ${AB_PASSES:-1}; do
    ab new$r $NEW "$DENSE" '{}|{"COPY_BEFORE_Q": true}'
    ab base$r $BASE "$DENSE;$SPARSE" '{}'
    ab new$r $NEW "$SPARSE" '{}|{"COPY_BEFORE_Q": true}|{"FP8_KEYS_ON_M_PROGRAMS_PER_SM": 1, "FP8_RAW_STAGES": 4}|{"FP8_KEYS_ON_M_PROGRAMS_PER_SM": 1, "FP8_RAW_STAGES": 4, "COPY_BEFORE_Q": true}|{"FP8_KEYS_ON_M_PROGRAMS_PER_SM": 1, "FP8_RAW_STAGES": 3, "COPY_BEFORE_Q": true}'
  done
  grep -v "$NOISE" $OUT/ab_full.log | sort -s -k2,6 | tee $OUT/ab.log
fi
if [ "${T_TESTS:-240}" != 0 ]; then
  t0=$(date +%s)
  for spec in "test_fp8.py:keys_on_m or cuda_graph or batch128" "test_decode.py:sm90 or batch128 or graph" "test_sparse.py:keys_on_m or graph"; do
    f=${spec%%:*}; k=${spec#*:}
    PYTHONPATH=$NEW timeout -k 3 $(( ${T_TESTS:-240} - $(date +%s) + t0 )) python3 -m pytest -q -n 4 -p no:cacheprovider \
      --tb=short tests/$f -k "$k" > $OUT/tests_${f%.py}.log 2>&1
    echo "$f rc=$? at $(( $(date +%s) - t0 )) s: $(tail -1 $OUT/tests_${f%.py}.log)"; grep -E "^FAILED" $OUT/tests_${f%.py}.log | head
  done
fi
