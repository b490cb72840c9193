"""memcheck cases for decode_sm90_ws (run under compute-sanitizer): TMA pages (64, 128, 192; exact and ragged
lengths, the last page the cache's last) and cp.async pages (1, 16)."""
import torch

import triton_mla as tm
from triton_mla import configs

torch.manual_seed(0)
CASES = [(3, 128, 2, 16, [300, 1, 129]), (2, 40, 3, 1, [97, 0]), (2, 64, 2, 64, [4097, 63]),
         (3, 128, 1, 64, [128, 64, 1000]), (2, 128, 1, 128, [256, 129]), (2, 96, 1, 192, [384, 5])]
for b, h, s_q, page, lens in CASES:
    nb = sum(-(-n // page) for n in lens)  # no spare page: the last page is the cache's last
    kv = torch.randn(nb, page, 1, 576, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(b, s_q, h, 576, device="cuda", dtype=torch.bfloat16)
    mp = max(1, max(-(-n // page) for n in lens))
    bt = torch.randperm(nb, device="cuda", dtype=torch.int32)
    bt = torch.cat([bt, bt.new_zeros(b * mp - nb)]).view(b, mp)
    lt = torch.tensor(lens, device="cuda", dtype=torch.int32)
    with configs.overridden(WGMMA=True, WS=True, BLOCK_N=64, MIN_BLOCKS_PER_PART=4):
        out, lse = tm.flash_mla_with_kvcache(q, kv, bt, lt, 512, causal=s_q > 1)
torch.cuda.synchronize()
print("ws memcheck cases done")
