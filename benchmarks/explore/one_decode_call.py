"""Three decode calls at b=128, s_k=8192 (for ncu): ``one_decode_call.py H_Q S_Q bf16|fp8 [overrides-json]``."""

import json
import sys

import torch

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import fp8_cache_of, make_decode_case

h_q, s_q, fp8 = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "fp8"
overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
q, k_cache, block_table, lens = make_decode_case(128, 8192, h_q, s_q, False)
if fp8:
    k_cache = fp8_cache_of(k_cache)
with configs.overridden(**overrides):
    for _ in range(3):
        tm.flash_mla_with_kvcache(q, k_cache, block_table, lens, 512, causal=s_q > 1, is_fp8_kvcache=fp8)
torch.cuda.synchronize()
