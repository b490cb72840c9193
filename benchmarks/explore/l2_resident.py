"""Is dense decode memory-bound or chain-bound? The same call with every sequence's block table pointing at the same
pages (all keys then sit in L2: one sequence's 8192 tokens are 9.4 MB) against the real case (1.2 GB from HBM).

    PYTHONPATH=. [L2_SHAPES=fp8:16:1,bf16:64:1,...] python3 benchmarks/explore/l2_resident.py [overrides-json]

Prints CUDA-graph medians (us) for b = 128, s_k = 8192 at 64 / 128 / 256 rows and the FP8 cache (or the
L2_SHAPES given: cache:h_q:s_q).
"""
import functools
import json
import os
import sys

import torch
import triton

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import decode_flops, fp8_cache_of, make_decode_case


def graph_us(run):
    run()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run()
    return triton.testing.do_bench(g.replay, warmup=25, rep=200, return_mode="median") * 1e3


def main():
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    print(torch.cuda.get_device_name(0), "triton", triton.__version__, "overrides", overrides)
    print(f"{'cache':>5} {'h':>4} {'s_q':>3} | {'HBM us':>8} {'TF':>5} | {'L2 us':>8} {'TF':>5} | L2/HBM")
    shapes = ((False, 64, 1), (False, 128, 1), (False, 128, 2), (True, 128, 1), (True, 16, 1))
    if os.environ.get("L2_SHAPES"):
        cells = (x.split(":") for x in os.environ["L2_SHAPES"].split(","))
        shapes = [(c == "fp8", int(h), int(s)) for c, h, s in cells]
    for fp8, h_q, s_q in shapes:
        q, k_cache, bt, lens = make_decode_case(128, 8192, h_q, s_q, False)
        if fp8:
            k_cache = fp8_cache_of(k_cache)
        same = bt[:1].expand_as(bt).contiguous()  # every sequence reads sequence 0's pages
        cells = []
        for table in (bt, same):
            with configs.overridden(**overrides):
                md = tm.get_mla_metadata(lens, s_q * h_q, 1, is_fp8_kvcache=fp8)
                us = graph_us(functools.partial(tm.flash_mla_with_kvcache, q, k_cache, table, lens, 512, md[0], md[1],
                                                causal=s_q > 1, is_fp8_kvcache=fp8))
            cells.append((us, decode_flops(s_q, h_q, int(lens.sum())) / us / 1e6))
        print(f"{'fp8' if fp8 else 'bf16':>5} {h_q:>4} {s_q:>3} | {cells[0][0]:8.1f} {cells[0][1]:5.0f} | "
              f"{cells[1][0]:8.1f} {cells[1][1]:5.0f} | {cells[1][0] / cells[0][0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
