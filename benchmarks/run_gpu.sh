#!/usr/bin/env bash
# One device run: GPU tests, memcheck over the decode and cache-write kernels, the decode benchmark.
# (The CUDA-graph test is left out of memcheck: PYTORCH_NO_CUDA_MEMORY_CACHING=1 makes every
# allocation a cudaMalloc, which a stream capture forbids.)
# Usage (repo root, on a CUDA machine): bash benchmarks/run_gpu.sh OUTDIR [pytest -k expr]
set -u
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
tag=$(python3 -c "import torch;n=torch.cuda.get_device_name();print('h200' if 'H200' in n else 'h100' if 'H100' in n else n.replace(' ','_').lower())")
echo "== device: $(python3 -c 'import torch,triton;print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)')"
echo "== tests"
python3 -m pytest -q -x tests/ ${2:+-k "$2"} 2>&1 | tee "$out/tests_$tag.log" | tail -15
echo "== memcheck"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 compute-sanitizer --tool memcheck --print-limit 5 \
  python3 -m pytest -q -x tests/test_cache.py tests/test_decode.py \
  -k "gpu_bf16_deepseek and (16-1 or 128-2 or 1-4) or write_kv or page_sizes or long_context or 2_31" \
  2>&1 | tee "$out/memcheck_$tag.log" | tail -6
echo "== benchmark"
python3 -m triton_mla bench decode --out "$out/decode_$tag.json" 2>&1 | grep -v '^{' | tee "$out/decode_$tag.txt"
