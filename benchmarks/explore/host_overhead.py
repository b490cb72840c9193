"""The host's cost of one eager decode call: tiny shapes (the GPU's share is a few us), so back-to-back calls are
bound by Python and the launches. Prints, per path, host us a call (wall clock of N calls, no sync in between) and
the call as a CUDA graph, then cProfile's top functions of N calls.

    PYTHONPATH=. [HO_CASES=bf16_h16,fp8_h16,...] [HO_PROF=...] [HO_TOP=18] python3 benchmarks/explore/host_overhead.py
        [overrides-json]
"""
import cProfile
import functools
import io
import json
import os
import pstats
import sys
import time

import torch
import triton

import triton_mla as tm
from triton_mla import bench, bench_sparse, configs

N = 300


def cases():
    out = {}
    for name, h_q, fp8 in (("bf16_h16", 16, False), ("fp8_h16", 16, True), ("bf16_h128", 128, False),
                           ("fp8_h128", 128, True)):
        q, kc, bt, lens = bench.make_decode_case(4, 256, h_q, 1, False)
        if fp8:
            kc = bench.fp8_cache_of(kc)
        md = tm.get_mla_metadata(lens, h_q, 1, is_fp8_kvcache=fp8)
        out[name] = functools.partial(tm.flash_mla_with_kvcache, q, kc, bt, lens, 512, md[0], md[1],
                                      is_fp8_kvcache=fp8)
        out[name + "_nomd"] = functools.partial(tm.flash_mla_with_kvcache, q, kc, bt, lens, 512,
                                                is_fp8_kvcache=fp8)
    q, kc, idx = bench_sparse.make_decode_case(4, 1, 16, 256, 1024, True)
    out["sparse_fp8_h16"] = functools.partial(tm.flash_mla_with_kvcache, q, kc, None, None, 512, None, None,
                                              is_fp8_kvcache=True, indices=idx)
    lens = torch.full((4,), 256, dtype=torch.int32, device="cuda")
    out["metadata"] = functools.partial(tm.get_mla_metadata, lens, 16, 1)
    return out


def main():
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    with configs.overridden(**overrides):
        run_all(overrides)


def run_all(overrides):
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, "overrides",
          overrides, flush=True)
    all_cases = cases()
    names = os.environ.get("HO_CASES", ",".join(all_cases)).split(",")
    top = int(os.environ.get("HO_TOP", "18"))
    for name in names:
        run = all_cases[name]
        for _ in range(20):
            run()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(N):
            run()
        host = (time.perf_counter() - t0) / N * 1e6
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / N * 1e6
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run()
        graph = triton.testing.do_bench(g.replay, warmup=10, rep=50, return_mode="median") * 1e3
        print(f"== {name}: host {host:6.1f} us a call (with the queue drained {wall:6.1f}), graph {graph:6.1f} us",
              flush=True)
    for name in os.environ.get("HO_PROF", "bf16_h16,fp8_h16,bf16_h128,sparse_fp8_h16").split(","):
        run = all_cases[name]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(N):
            run()
        prof.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        st.sort_stats("tottime").print_stats(top)
        if name == "fp8_h16":
            st.sort_stats("cumulative").print_stats(top + 10)
        print(f"==== {name}: cProfile of {N} calls, by own time (fp8_h16: then by cumulative time)", flush=True)
        print("\n".join(line for line in s.getvalue().splitlines()[6:] if line.strip()), flush=True)


if __name__ == "__main__":
    main()
