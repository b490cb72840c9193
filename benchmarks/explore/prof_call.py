"""Per-kernel GPU time of one decode call (torch.profiler), beside the call's do_bench and CUDA-graph times.

    PYTHONPATH=. python3 benchmarks/explore/prof_call.py [--shapes "b,s_k,h_q,s_q;..."] [--fp8] ["dict(WS=False)" ...]

Each variant is a dict of config overrides (``configs.overridden``); the empty one (the shipped configs) runs
first. Shows where a call's time goes: the decode kernel against the combine, and what stays when s_k changes.
"""
import argparse
import functools

import torch
from torch.profiler import ProfilerActivity, profile

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import DV, D, _time, fp8_cache_of, make_decode_case

p = argparse.ArgumentParser()
p.add_argument("--shapes", default="128,2048,128,1;128,4096,128,1;128,8192,128,1;128,4096,16,1;128,8192,16,1")
p.add_argument("--fp8", action="store_true")
p.add_argument("variants", nargs="*")
a = p.parse_args()
shapes = [tuple(int(x) for x in s.split(",")) for s in a.shapes.split(";")]
variants = [dict()] + [eval(v) for v in a.variants]
for b, s_k, h, s_q in shapes:
    q, k_cache, block_table, lens = make_decode_case(b, s_k, h, s_q, False)
    if a.fp8:
        k_cache = fp8_cache_of(k_cache)
    for var in variants:
        with configs.overridden(**var):
            md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
            run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                                    softmax_scale=D ** -0.5, causal=s_q > 1, is_fp8_kvcache=a.fp8)
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
        parts = "  ".join(f"{n[:28]}={sum(v) / len(v):.1f}us" for n, v in ks.items())
        print(f"b{b} s_k{s_k} h{h} s_q{s_q} {str(var):<30} parts {md.shape[0]} eager {ms * 1e3:6.1f} "
              f"graph {gms * 1e3:6.1f} | {parts}", flush=True)
