"""Where a memory-bound decode call's fixed cost goes: the whole call (CUDA graph) against s_k at b = 128, fitted as
T = F + s_k * r, and one call's kernels as torch.profiler times them (the decode kernel, the combine, the rest).

    PYTHONPATH=. [FC_SHAPES=fp8:16,bf16:16] [FC_LENGTHS=1024,2048,4096,8192] python3 benchmarks/explore/fixed_cost.py
        [overrides-json]

At b = 128 the split plan gives every length the same number of sequences a part, so per-segment costs (Q's copy,
the first tile's latency, the partial's store) land in F with the launch gaps and the combine.
"""
import functools
import json
import os
import sys

import torch
import triton
from l2_resident import graph_us  # (this folder: a script's own folder is on sys.path)

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import fp8_cache_of, make_decode_case


def kernel_us(run):
    """{kernel name: us} of one call (the mean of 20 calls' profiled device times)."""
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            run()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        if e.device_time_total > 0:
            out[e.key[:40]] = e.device_time_total / 20
    return out


def main():
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    shapes = [(c == "fp8", int(h)) for c, h in (x.split(":") for x in os.environ.get("FC_SHAPES", "fp8:16").split(","))]
    lengths = [int(x) for x in os.environ.get("FC_LENGTHS", "1024,2048,4096,8192").split(",")]
    print(torch.cuda.get_device_name(0), "triton", triton.__version__, "overrides", overrides, flush=True)
    for fp8, h_q in shapes:
        pts = []
        for s_k in lengths:
            q, k_cache, bt, lens = make_decode_case(128, s_k, h_q, 1, False)
            if fp8:
                k_cache = fp8_cache_of(k_cache)
            with configs.overridden(**overrides):
                md = tm.get_mla_metadata(lens, h_q, 1, is_fp8_kvcache=fp8)
                run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, bt, lens, 512, md[0], md[1],
                                        is_fp8_kvcache=fp8)
                us = graph_us(run)
                ks = kernel_us(run)
            pts.append((s_k, us))
            kern = ", ".join(f"{k} {v:.1f}" for k, v in sorted(ks.items(), key=lambda kv: -kv[1]))
            print(f"{'fp8' if fp8 else 'bf16'} h={h_q} s_k={s_k}: graph {us:7.1f} us | kernels: {kern}", flush=True)
            del q, k_cache
            torch.cuda.empty_cache()
        n = len(pts)
        mx = sum(p[0] for p in pts) / n
        my = sum(p[1] for p in pts) / n
        r = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
        f = my - r * mx
        print(f"  fit: F = {f:.1f} us, {r * 4096:.1f} us per 4096 tokens a sequence", flush=True)


if __name__ == "__main__":
    main()
