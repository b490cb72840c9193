"""Small decode cases through the warp-specialized sm90 kernel (``WS``; 64-key tiles, and the 32-key tiles an earlier
form took; 64-key tiles over the FP8 cache), then sparse prefill and decode cases through its sparse twin
(``sparse_sm90._sparse_ws_kernel``: invalid and out-of-range ids, topk_length 0, splits), for compute-sanitizer:

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
for (b, h, s_q, page, lens) in [(3, 128, 2, 16, [300, 1, 129]), (2, 40, 3, 1, [97, 0]), (2, 64, 1, 64, [4097, 63])]:
    nb = sum(-(-l // page) for l in lens) + 4
    cache = torch.empty(nb, page, 1, 656, device="cuda", dtype=torch.uint8)
    slots = torch.arange(nb * page, device="cuda", dtype=torch.int64)
    tm.write_kv_cache(cache, torch.randn(nb * page, 512, device="cuda"), torch.randn(nb * page, 64, device="cuda"),
                      slots)
    q = torch.randn(b, s_q, h, 576, device="cuda", dtype=torch.bfloat16)
    mp = max(1, max(-(-l // page) for l in lens))
    bt = torch.randint(0, nb, (b, mp), device="cuda", dtype=torch.int32)
    lt = torch.tensor(lens, device="cuda", dtype=torch.int32)
    with configs.overridden(WGMMA=True, WS=True, KEYS_ON_M=False, BLOCK_N=64, MIN_BLOCKS_PER_PART=4):
        md, splits = tm.get_mla_metadata(lt, s_q * h, 1, is_fp8_kvcache=True)
        tm.flash_mla_with_kvcache(q, cache, bt, lt, 512, md, splits, causal=s_q > 1, is_fp8_kvcache=True)
for s_q, h, topk, s_kv, splits in [(5, 128, 300, 1000, False), (3, 100, 2048, 4096, True), (2, 64, 64, 70, True)]:
    q = torch.randn(s_q, h, 576, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(s_kv, 1, 576, device="cuda", dtype=torch.bfloat16)
    idx = torch.randint(-1, s_kv + 2, (s_q, 1, topk), device="cuda", dtype=torch.int32)
    lens = torch.randint(0, topk + 1, (s_q,), device="cuda", dtype=torch.int32)
    lens[0] = 0
    extra = dict(PROGRAMS_PER_SM=64, MIN_CHUNKS_PER_SPLIT=1) if splits else {}
    with configs.overridden(WGMMA=True, WS=True, **extra):
        tm.flash_mla_sparse_fwd(q, kv, idx, 576 ** -0.5, topk_length=lens)
        tm.flash_mla_with_kvcache(q.view(1, s_q, h, 576), kv.view(s_kv, 1, 1, 576), None, None, 512, None, None,
                                  softmax_scale=576 ** -0.5, indices=idx.view(1, s_q, topk))
torch.cuda.synchronize()
print("ws memcheck cases done")
