"""A few Gluon sm90 decode calls (bf16 and FP8 caches, odd lengths and page sizes) for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \\
        python3 benchmarks/explore/memcheck_decode_sm90.py [fp8-rows]

fp8-rows: only the FP8 keys-on-M kernel (decode_sm90_fp8) on <= 16-row cases, split-heavy.
"""

import sys

import torch
from decode_sm90_variants import CASES, CASES_FEW_ROWS, make_case

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import fp8_cache_of

if sys.argv[1:] == ["fp8-rows"]:
    with configs.overridden(WGMMA=True, KEYS_ON_M=True, RAW_STAGES=2, MIN_BLOCKS_PER_PART=1, PARTS_PER_SM=8):
        for i, (b, h_q, s_q, page, lens) in enumerate(CASES_FEW_ROWS):
            q, kv, bt, lens_t = make_case(b, h_q, s_q, page, lens, torch.bfloat16, i, i % 2 == 1)
            tm.flash_mla_with_kvcache(q, fp8_cache_of(kv), bt, lens_t, 512, causal=s_q > 1, is_fp8_kvcache=True)
    torch.cuda.synchronize()
    print(f"memcheck_decode_sm90 fp8-rows: {len(CASES_FEW_ROWS)} calls done")
    sys.exit(0)
with configs.overridden(WGMMA=True, BLOCK_N=64, NUM_BUF=2, MIN_BLOCKS_PER_PART=1, PARTS_PER_SM=8):
    for i, (b, h_q, s_q, page, lens) in enumerate(CASES):
        q, kv, bt, lens_t = make_case(b, h_q, s_q, page, lens, torch.bfloat16, i, i % 2 == 1)
        tm.flash_mla_with_kvcache(q, kv, bt, lens_t, 512, causal=s_q > 1)
        tm.flash_mla_with_kvcache(q, fp8_cache_of(kv), bt, lens_t, 512, causal=s_q > 1, is_fp8_kvcache=True)
torch.cuda.synchronize()
print(f"memcheck_decode_sm90: {2 * len(CASES)} calls done")
