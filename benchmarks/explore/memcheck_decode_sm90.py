"""A few Gluon sm90 decode calls (bf16 and FP8 caches, odd lengths and page sizes) for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \\
        python3 benchmarks/explore/memcheck_decode_sm90.py [fp8-rows]

fp8-rows: only the FP8 keys-on-M kernel (decode_sm90_fp8) on <= 16-row cases, split-heavy.
fp8-dual: only its dual program (17-32 rows, two warpgroups on alternate tiles), split-heavy and not.
fp8-e4m3: both, with the scores through e4m3 MMAs (QK_E4M3).
"""

import sys

import torch
from decode_sm90_variants import CASES, CASES_FEW_ROWS, make_case

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import fp8_cache_of

# (b, h_q, s_q, page size, lengths): 17-32 rows, segments of one tile (warpgroup 1 idle) and of many
CASES_DUAL = [(3, 32, 1, 64, [8192, 1, 0]), (4, 16, 2, 16, [300, 17, 2, 1025]), (2, 17, 1, 1, [129, 40]),
              (3, 8, 4, 192, [2048, 3, 999]), (5, 11, 2, 128, [130, 0, 4000, 64, 65])]
SPLIT_HEAVY = dict(MIN_BLOCKS_PER_PART=1, PARTS_PER_SM=8)
# mode -> (cases, the config overrides of each pass over them)
FP8_MODES = {"fp8-rows": (CASES_FEW_ROWS, [dict(KEYS_ON_M=True, RAW_STAGES=2, **SPLIT_HEAVY)]),
             "fp8-dual": (CASES_DUAL, [dict(KEYS_ON_M=True, DUAL_32=True, **SPLIT_HEAVY),
                                       dict(KEYS_ON_M=True, DUAL_32=True)]),
             "fp8-e4m3": (CASES_FEW_ROWS + CASES_DUAL,
                          [dict(KEYS_ON_M=True, DUAL_32=True, QK_E4M3=True, **SPLIT_HEAVY)])}
if sys.argv[1:2] and sys.argv[1] in FP8_MODES:
    cases, passes = FP8_MODES[sys.argv[1]]
    for overrides in passes:
        with configs.overridden(WGMMA=True, **overrides):
            for i, (b, h_q, s_q, page, lens) in enumerate(cases):
                q, kv, bt, lens_t = make_case(b, h_q, s_q, page, lens, torch.bfloat16, i, i % 2 == 1)
                tm.flash_mla_with_kvcache(q, fp8_cache_of(kv), bt, lens_t, 512, causal=s_q > 1, is_fp8_kvcache=True)
    torch.cuda.synchronize()
    print(f"memcheck_decode_sm90 {sys.argv[1]}: {len(passes) * len(cases)} calls done")
    sys.exit(0)
with configs.overridden(WGMMA=True, BLOCK_N=64, NUM_BUF=2, **SPLIT_HEAVY):
    for i, (b, h_q, s_q, page, lens) in enumerate(CASES):
        q, kv, bt, lens_t = make_case(b, h_q, s_q, page, lens, torch.bfloat16, i, i % 2 == 1)
        tm.flash_mla_with_kvcache(q, kv, bt, lens_t, 512, causal=s_q > 1)
        tm.flash_mla_with_kvcache(q, fp8_cache_of(kv), bt, lens_t, 512, causal=s_q > 1, is_fp8_kvcache=True)
torch.cuda.synchronize()
print(f"memcheck_decode_sm90: {2 * len(CASES)} calls done")
