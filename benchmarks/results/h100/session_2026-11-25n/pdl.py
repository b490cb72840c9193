"""Graph time with the combine launched as a programmatic dependent (PDL) or not.

    (needs the COMBINE_PDL switch, removed after this session: kept as the record of pdl.log)
"""
import functools

import triton_mla as tm
from triton_mla.bench import DV, D, _time, make_decode_case
from triton_mla.kernels import decode as dk
from triton_mla.reference import decode_ref

print("shape | pdl on graph us | pdl off graph us", flush=True)
for b, s_k, h, s_q in [(1, 8192, 128, 1), (8, 8192, 128, 1), (1, 8192, 16, 1), (8, 8192, 16, 1), (1, 8192, 64, 2),
                       (128, 8192, 16, 1), (128, 8192, 128, 1), (32, 4096, 16, 1)]:
    q, k_cache, block_table, lens = make_decode_case(b, s_k, h, s_q, False)
    res = []
    for pdl in (True, False):
        dk.COMBINE_PDL = pdl
        md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
        run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                                softmax_scale=D ** -0.5, causal=s_q > 1)
        out, _ = run()
        sub = min(b, 2)
        ref, _ = decode_ref(q[:sub], k_cache, block_table[:sub], lens[:sub], DV, D ** -0.5, s_q > 1)
        err = ((out[:sub].float() - ref).norm() / ref.norm()).item()
        assert err < 1e-2, (b, s_k, h, s_q, pdl, err)
        res.append(_time(run)[1] * 1e3)
    print(f"b{b} s_k{s_k} h{h} s_q{s_q} | {res[0]:7.1f} | {res[1]:7.1f}", flush=True)
dk.COMBINE_PDL = True
