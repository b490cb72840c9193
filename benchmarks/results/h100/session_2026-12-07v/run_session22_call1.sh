#!/usr/bin/env bash
# twenty-second session: QK_E4M3 (scores through e4m3 MMAs) correctness and A/B, memcheck of the dual program (shipped
# last session, never sanitized) and of QK_E4M3, then GPU tests never run on the GPU
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
# Triton 3.6 (the image's own) builds the QK_E4M3 programs?
PYTHONPATH=$PWD timeout 60 python3 -c "
import triton; from triton_mla.configs import check; from triton_mla.kernels import decode_sm90_fp8 as m, sparse_sm90
e = dict(max_rows=16, dtype='16bit', BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=2, PARTS_PER_SM=1, MIN_BLOCKS_PER_PART=4, WGMMA=True, HW_CVT=True, KEYS_ON_M=True, QK_E4M3=True)
for name, fn, types, consts, w, st in list(m.compile_specs(e))[:1] + list(sparse_sm90.compile_specs(fp8=True, config=e))[:1]:
    try: print('triton', triton.__version__, name, check._compile(fn, types, consts, 90, w, st))
    except Exception as ex: print('triton', triton.__version__, name, 'FAILED', type(ex).__name__, str(ex)[-200:])
" 2>&1 | grep triton | tee $OUT/t36_build.txt
export PYTHONPATH=/tmp/t39:$PWD:$PWD/.devrun:$PWD/benchmarks/explore PYTHONUNBUFFERED=1
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100')")
t0=$(date +%s)
mapfile -t e4 < .devrun/todo_e4m3.txt
timeout -k 3 ${T_T1:-100} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${e4[@]}" > $OUT/tests_e4m3_${tag}_t39.log 2>&1
echo "e4m3 tests rc=$? in $(( $(date +%s) - t0 )) s: PASSED $(grep -c PASSED $OUT/tests_e4m3_${tag}_t39.log) of ${#e4[@]}"; grep -E "FAILED|ERROR| passed| failed" $OUT/tests_e4m3_${tag}_t39.log | tail -8
t0=$(date +%s)
timeout -k 3 ${T_AB:-170} python3 benchmarks/explore/fp8_qk_variants.py > $OUT/fp8_qk_variants_${tag}_t39.log 2>&1
echo "dense A/B rc=$? in $(( $(date +%s) - t0 )) s"; cat $OUT/fp8_qk_variants_${tag}_t39.log
t0=$(date +%s)
timeout -k 3 ${T_SP:-70} python3 benchmarks/explore/sparse_sm90_variants.py decode few-heads fp8 t_pw_ids t_q8 t_q8_p8 > $OUT/sparse_qk_variants_${tag}_t39.log 2>&1
echo "sparse A/B rc=$? in $(( $(date +%s) - t0 )) s"; grep -v -i warn $OUT/sparse_qk_variants_${tag}_t39.log
for mode in fp8-dual fp8-e4m3; do
  t0=$(date +%s)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 3 ${T_MEM:-80} compute-sanitizer --tool memcheck python3 benchmarks/explore/memcheck_decode_sm90.py $mode > $OUT/memcheck_${mode}_${tag}_t39.log 2>&1
  echo "memcheck $mode rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "ERROR SUMMARY|calls done|Invalid" $OUT/memcheck_${mode}_${tag}_t39.log | head -5
done
mapfile -t ids < .devrun/${TODO:-todo_c.txt}
timeout -k 3 ${T_TESTS:-30} python3 -m pytest -v -n 16 -p no:cacheprovider -p failwriter --tb=short "${ids[@]}" > $OUT/tests_gpu_${tag}_t39_c.log 2>&1
echo "tests rc=$?; PASSED: $(grep -c PASSED $OUT/tests_gpu_${tag}_t39_c.log) of ${#ids[@]}"
grep -E "FAILED|ERROR| passed| failed" $OUT/tests_gpu_${tag}_t39_c.log | tail -20
