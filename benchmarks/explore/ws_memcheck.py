"""Small decode cases through the warp-specialized sm90 kernel (``WS``), for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 benchmarks/explore/ws_memcheck.py
"""

import torch

import triton_mla as tm
from triton_mla import configs

torch.manual_seed(0)
for bn, mb in ((32, 8), (64, 4)):
    for (b, h, s_q, page, lens) in [(3, 128, 2, 16, [300, 1, 129]), (2, 40, 3, 1, [97, 0]), (2, 64, 1, 64, [4097, 63])]:
        nb = sum(-(-l // page) for l in lens) + 4
        kv = torch.randn(nb, page, 1, 576, device="cuda", dtype=torch.bfloat16)
        q = torch.randn(b, s_q, h, 576, device="cuda", dtype=torch.bfloat16)
        mp = max(1, max(-(-l // page) for l in lens))
        bt = torch.randint(0, nb, (b, mp), device="cuda", dtype=torch.int32)
        lt = torch.tensor(lens, device="cuda", dtype=torch.int32)
        with configs.overridden(WGMMA=True, WS=True, WS_MIN_TILES_PER_PART=0, BLOCK_N=bn,
                                MIN_BLOCKS_PER_PART=mb):
            out, lse = tm.flash_mla_with_kvcache(q, kv, bt, lt, 512, causal=s_q > 1)
torch.cuda.synchronize()
print("ws memcheck cases done")
