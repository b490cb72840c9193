"""Per-kernel GPU time of one decode call at small batch (torch.profiler), and the call's graph time.

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25n/prof_small.py "dict(WS=False)" ...
"""
import functools
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import DV, D, _time, make_decode_case

shapes = [(1, 8192, 128, 1), (8, 8192, 128, 1), (1, 8192, 16, 1), (8, 8192, 16, 1), (1, 8192, 64, 2)]
variants = [dict()] + [eval(a) for a in sys.argv[1:]]
for b, s_k, h, s_q in shapes:
    q, k_cache, block_table, lens = make_decode_case(b, s_k, h, s_q, False)
    for var in variants:
        with configs.overridden(**var):
            md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
            run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                                    softmax_scale=D ** -0.5, causal=s_q > 1)
            run()
            torch.cuda.synchronize()
            ms, gms = _time(run)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    run()
                torch.cuda.synchronize()
        ks = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                ks.setdefault(e.name, []).append(e.device_time if hasattr(e, "device_time") else e.cuda_time)
        parts = "  ".join(f"{n[:28]}={sum(v)/len(v):.1f}us" for n, v in ks.items())
        print(f"b{b} h{h} s_q{s_q} {str(var):<40} parts {md.shape[0]} eager {ms*1e3:6.1f} graph {gms*1e3:6.1f} "
              f"| {parts}", flush=True)
