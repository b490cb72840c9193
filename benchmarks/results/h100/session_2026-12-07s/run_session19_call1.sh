#!/usr/bin/env bash
# session 19: all tests on the GPU under Triton 3.9 (xdist), the FP8 invariant-mode cost, the decode table
set -u
mkdir -p /tmp/t39 && tar xJf .devrun/t39.tar.xz -C /tmp/t39 && chmod +x /tmp/t39/triton/backends/nvidia/bin/*
export PYTHONPATH=/tmp/t39:$PWD PYTHONUNBUFFERED=1
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100')")
python3 -c 'import torch,triton;print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)'
t0=$(date +%s)
timeout ${T_TESTS:-290} python3 -m pytest -v -n 14 -p no:cacheprovider tests/test_decode.py tests/test_fp8.py \
  tests/test_api.py tests/test_cache.py tests/test_sparse.py tests/test_random_inputs.py tests/test_extend.py \
  tests/test_prefill.py tests/test_layer.py tests/test_serving.py tests/test_tp.py tests/test_transformers.py \
  tests/test_reference.py tests/test_configs.py > $OUT/tests_gpu_${tag}_t39.log 2>&1
echo "tests rc=$? in $(( $(date +%s) - t0 )) s; PASSED lines: $(grep -c PASSED $OUT/tests_gpu_${tag}_t39.log)"
grep -E "FAILED|ERROR| passed| failed" $OUT/tests_gpu_${tag}_t39.log | tail -30
t0=$(date +%s)
timeout ${T_INV:-80} python3 benchmarks/bench_invariant.py --fp8 --out $OUT/invariant_fp8_${tag}_t39.json 2>&1 | tee $OUT/invariant_fp8_${tag}_t39.txt
echo "invariant rc=$? in $(( $(date +%s) - t0 )) s"
t0=$(date +%s)
timeout ${T_BENCH:-170} python3 -m triton_mla bench decode --fp8 --out $OUT/decode_fp8_${tag}_t39.json 2>&1 | grep -v '^{' | tee $OUT/decode_fp8_${tag}_t39.txt
echo "bench rc=$? in $(( $(date +%s) - t0 )) s"
