"""A/B of config variants (and, run once per checkout, of two checkouts) on decode and sparse decode shapes:
CUDA-graph medians, each variant's output checked against the float32 oracle first, the variants timed in
ROUNDS interleaved rounds (variant order rotated each round) so that drift of the GPU's clocks falls on all alike.

    PYTHONPATH=. python3 benchmarks/explore/ab_variants.py TAG
    VARIANTS='{}|{"COPY_BEFORE_Q": true}' SHAPES="fp8,128,8192,16,1;sparse,128,2048,16,1" ROUNDS=3 ...

Shapes: "kind,b,len,h,s_q" with kind bf16 / fp8 (dense decode: len = s_k) or sparse (FP8 sparse decode: len =
topk over 32768-token sequences). One line a (shape, variant): the median over rounds of the graph medians, and
each round's figure. TAG names the checkout in the lines, so two runs' outputs can be put side by side.
"""
import functools
import json
import os
import statistics
import sys

import fp8_timeline
import torch

import triton_mla as tm
from triton_mla import bench, configs
from triton_mla.reference import decode_ref

SHAPES = [("fp8", 128, 8192, 16, 1), ("fp8", 128, 4096, 16, 1), ("fp8", 128, 8192, 8, 1), ("fp8", 32, 4096, 16, 1),
          ("bf16", 128, 4096, 16, 1), ("bf16", 128, 4096, 128, 1), ("bf16", 8, 8192, 128, 1),
          ("sparse", 128, 2048, 16, 1), ("sparse", 128, 2048, 8, 1)]
if os.environ.get("SHAPES"):
    SHAPES = [(k, *(int(x) for x in rest)) for k, *rest in (s.split(",") for s in os.environ["SHAPES"].split(";"))]
VARIANTS = [json.loads(v) for v in os.environ.get("VARIANTS", "{}").split("|")]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SCALE = 576 ** -0.5


def case(kind, b, n, h, s_q):
    """(the call, its error against the oracle): fp8 and sparse as ``fp8_timeline.case``'s dense and sparse."""
    if kind != "bf16":
        return fp8_timeline.case("dense" if kind == "fp8" else kind, b, n, h, s_q)
    q, k_cache, bt, lens = bench.make_decode_case(b, n, h, s_q, False)
    md = tm.get_mla_metadata(lens, h * s_q, 1)
    run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, bt, lens, 512, md[0], md[1], softmax_scale=SCALE,
                            causal=s_q > 1)

    def err():
        out, _ = run()
        ref, _ = decode_ref(q[:4], k_cache, bt[:4], lens[:4], 512, SCALE, s_q > 1)
        return ((out[:4].float() - ref).norm() / ref.norm()).item()
    return run, err


def graph_us(run):
    import triton

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median") * 1e3


def main():
    tag = sys.argv[1] if len(sys.argv) > 1 else "this"
    print(torch.cuda.get_device_name(0), flush=True)
    for shape in SHAPES:
        runs, times = [], [[] for _ in VARIANTS]
        for variant in VARIANTS:
            with configs.overridden(**variant):
                run, err = case(*shape)
                e = err()
                torch.cuda.synchronize()
            runs.append((run, e))
        for r in range(ROUNDS):
            order = list(range(len(VARIANTS)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                with configs.overridden(**VARIANTS[i]):
                    times[i].append(graph_us(runs[i][0]))
        kind, b, n, h, s_q = shape
        for i, variant in enumerate(VARIANTS):
            ts = times[i]
            print(f"{tag:<5} {kind:<6} b={b:<3} {'s_k' if kind != 'sparse' else 'topk'}={n:<5} h={h:<3} s_q={s_q} "
                  f"{json.dumps(variant):<60} err {runs[i][1]:.1e}  graph {statistics.median(ts):7.1f} us  "
                  f"({' '.join(f'{t:.1f}' for t in ts)})", flush=True)
        runs = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
