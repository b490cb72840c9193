"""Where an FP8 keys-on-M program's time goes (dense decode at 8/16 rows, sparse decode at <= 16 heads), from
stamps the kernels write with ``fp8_timeline.diff`` applied: %clock64 at the program's start, after its split plan,
at each segment's top, after Q, at each tile's top and after its wait (the tile has landed), after the tile loop,
after the store and around the fused merge; %globaltimer at the program's start and end. Prints medians over
programs of each phase in us, the steady tile period and how much of it is the wait for the tile, what a program
spends beyond tiles x period (its fixed cost), and the programs' start and end spread against the graph time.

    git apply benchmarks/explore/fp8_timeline.diff
    PYTHONPATH=. python3 benchmarks/explore/fp8_timeline.py
    git checkout triton_mla/kernels/decode_sm90_fp8.py triton_mla/kernels/sparse_sm90.py

Environment: SHAPES="kind,b,len,h,s_q;..." (kind dense: len = s_k; kind sparse: len = topk over 32768-token
sequences), VARIANTS='{}|{"LAZY_MAX": true}|...' (config overrides, each shape run under each; the plan is made
under them too), DUMP=DIR (the raw stamps saved there as .pt). Each output is checked against the float32 oracle
first (the instrumented build must stay right).
"""
import functools
import json
import os
import statistics

import torch

import triton_mla as tm
from triton_mla import bench, bench_sparse, configs
from triton_mla.kernels import decode_sm90_fp8

SHAPES = [("dense", 128, 8192, 16, 1), ("dense", 128, 4096, 16, 1), ("dense", 128, 1024, 16, 1),
          ("dense", 128, 8192, 8, 1), ("sparse", 128, 2048, 16, 1), ("sparse", 128, 2048, 8, 1)]
if os.environ.get("SHAPES"):
    SHAPES = [(k, *(int(x) for x in rest)) for k, *rest in (s.split(",") for s in os.environ["SHAPES"].split(";"))]
VARIANTS = [json.loads(v) for v in os.environ.get("VARIANTS", "{}").split("|")]
W = 1024  # int64 stamps a program (the diff's row width)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def case(kind, b, n, h, s_q):
    """(run, error of the last output, graph us)."""
    if kind == "dense":
        q, k_cache, bt, lens = bench.make_decode_case(b, n, h, s_q, False)
        k_cache = bench.fp8_cache_of(k_cache)
        md = tm.get_mla_metadata(lens, h * s_q, 1, is_fp8_kvcache=True)
        run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, bt, lens, 512, md[0], md[1],
                                softmax_scale=576 ** -0.5, causal=s_q > 1, is_fp8_kvcache=True)

        def err():
            out, _ = run()
            return bench.fp8_rel_err(out, q, k_cache, bt, lens, s_q > 1, 576 ** -0.5, 4)
    else:
        q, cache, indices = bench_sparse.make_decode_case(b, s_q, h, n, 32768, True)
        run = bench_sparse._decode_run(q, cache, indices, True)

        def err():
            out, _ = run()
            return bench_sparse._decode_err(out, q, cache, indices, True)
    return run, err


def analyse(dbg):
    rows = [d for d in dbg.tolist() if d[2] != 0 and d[5] > 0]
    if not rows:
        return "  no stamps (was fp8_timeline.diff applied, and did the keys-on-M kernel serve the call?)"
    ns_cycle = med([(d[3] - d[2]) / max(d[4] - d[0], 1) for d in rows])
    us = ns_cycle / 1e3
    ph = {k: [] for k in ("plan", "to_top", "q", "prologue", "wait0", "period", "wait", "last", "store", "merge",
                          "exit", "fixed")}
    tiles_all, segs_all, merged = [], [], 0
    for d in rows:
        segs, tiles = d[5], d[6]
        segs_all.append(segs)
        tiles_all.append(tiles)
        ph["plan"].append((d[1] - d[0]) * us)
        top0, q0 = d[8], d[9]
        ph["to_top"].append((top0 - d[1]) * us)
        ph["q"].append((q0 - top0) * us)
        n = min(tiles, 480)
        tops = d[64:64 + n]
        waits = d[544:544 + n]
        if n == 0:
            continue
        ph["prologue"].append((tops[0] - q0) * us)
        ph["wait0"].append((waits[0] - tops[0]) * us)
        steps = [(b - a) * us for a, b in zip(tops[:-1], tops[1:], strict=True)]
        mid = range(2, n - 2) if n > 6 else range(1, n)
        period = med([steps[i] for i in mid if i < len(steps)]) if len(steps) > 1 else float("nan")
        ph["period"].append(period)
        ph["wait"].append(med([(waits[i] - tops[i]) * us for i in mid]))
        # the last segment's stamps (one segment a program at b = 128; a multi-segment program's last)
        k = min(segs - 1, 6)
        base = 8 + 8 * k
        loop_end, stored, m0, m1 = d[base + 2], d[base + 3], d[base + 4], d[base + 5]
        ph["last"].append((loop_end - tops[n - 1]) * us)
        ph["store"].append((stored - loop_end) * us)
        if m1 > m0 > 0:
            merged += 1
            ph["merge"].append((m1 - m0) * us)
        ph["exit"].append((d[4] - max(stored, m1)) * us)
        ph["fixed"].append((d[4] - d[0]) * us - tiles * period)
    starts = [d[2] for d in rows]
    ends = [d[3] for d in rows]
    span = (max(ends) - min(starts)) / 1e3
    total = [(d[3] - d[2]) / 1e3 for d in rows]
    out = "  ".join(f"{k} {med(v):.2f}" for k, v in ph.items())
    return (f"  programs {len(rows)}, segments/program {statistics.mean(segs_all):.2f}, tiles/program "
            f"{statistics.mean(tiles_all):.1f} (min {min(tiles_all)}, max {max(tiles_all)}), merging programs {merged},"
            f" ns/cycle {ns_cycle:.3f}\n  medians (us): {out}\n"
            f"  program time median {med(total):.1f} max {max(total):.1f} us; start spread "
            f"{(max(starts) - min(starts)) / 1e3:.1f} us, end spread {(max(ends) - min(ends)) / 1e3:.1f} us, "
            f"first start -> last end {span:.1f} us")


def main():
    print(torch.cuda.get_device_name(0), flush=True)
    decode_sm90_fp8.DBG = torch.zeros(8192, W, dtype=torch.int64, device="cuda")
    for shape in SHAPES:
        kind, b, n, h, s_q = shape
        for vi, variant in enumerate(VARIANTS):
            with configs.overridden(**variant):
                run, err = case(*shape)
                e = err()
                _, graph_ms = bench._time(run)
                decode_sm90_fp8.DBG.zero_()
                run()
                torch.cuda.synchronize()
            print(f"{kind} b={b} {'s_k' if kind == 'dense' else 'topk'}={n} h={h} s_q={s_q} {variant}: rel err "
                  f"{e:.2e}, graph {graph_ms * 1e3:.1f} us (instrumented)", flush=True)
            stamps = decode_sm90_fp8.DBG.cpu()
            print(analyse(stamps), flush=True)
            if os.environ.get("DUMP"):
                torch.save(stamps[stamps[:, 2] != 0],
                           f"{os.environ['DUMP']}/stamps_{kind}_b{b}_{n}_h{h}_q{s_q}_v{vi}.pt")
            del run, err
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
