"""Where a ws-kernel program's time goes, segment by segment: the kernel with ``ws_timeline.diff`` applied stamps
%clock64 at each segment's top, at each pair step, after the pairs, after the row-sum meeting and after the store
(and %globaltimer at a program's start and end); this prints, averaged over programs (warpgroup 0), each phase in us,
the steady pair step, what a segment costs beyond its pairs at that step, and the programs' start and end spread.

    git apply benchmarks/results/h100/session_2026-11-25q/ws_timeline.diff
    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25q/ws_timeline.py
    git checkout triton_mla/kernels/decode_sm90_ws.py

Environment: SHAPES="b,s_k,h,s_q;..." (default below), DUMP=DIR (save the raw stamps there), CHECK=0 (no output
check, for ``store_modes.diff``'s TM_STORE_MODE=2, which stores half the columns to time the store).
"""
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "session_2026-11-25n"))
from cross import checked_graph_us  # noqa: E402

from triton_mla.bench import make_decode_case  # noqa: E402
from triton_mla.kernels import decode_sm90_ws  # noqa: E402

SHAPES = [(128, 8192, 128, 1), (128, 4096, 128, 1), (128, 8192, 128, 2), (512, 2048, 128, 1), (128, 8192, 64, 2)]
if os.environ.get("SHAPES"):  # "b,s_k,h,s_q;..."
    SHAPES = [tuple(int(x) for x in s.split(",")) for s in os.environ["SHAPES"].split(";")]


CHECK = os.environ.get("CHECK", "1") == "1"  # 0: an experiment whose output is wrong on purpose


def graph_us(case, s_q, h):
    """``checked_graph_us`` without the check."""
    import functools

    import triton_mla as tm
    from triton_mla.bench import DV, D, _time

    q, k_cache, block_table, lens = case
    md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
    run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                            softmax_scale=D ** -0.5, causal=s_q > 1)
    return _time(run)[1] * 1e3, md


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def analyse(dbg, programs):
    rows = []
    for p in range(programs):
        for w in (0, 1):
            d = dbg[p, w].tolist()
            segs = d[62]
            if segs == 0:
                continue
            ns_cycle = (d[61] - d[63]) / max(d[59] - d[60], 1)
            rows.append((w, d, segs, ns_cycle))
    ns_cycle = med([r[3] for r in rows])
    us = ns_cycle / 1e3
    phases = {k: [] for k in ("start->top", "top->pair0", "step0", "step1", "steady", "last", "rowsum", "store",
                              "gap", "seg_over")}
    starts = [r[1][63] for r in rows if r[0] == 0]
    ends = [r[1][61] for r in rows if r[0] == 0]
    segcount = []
    for w, d, segs, _ in rows:
        if w != 0:
            continue
        segcount.append(segs)
        phases["start->top"].append((d[0] - d[60]) * us)
        before = 0
        for k in range(min(segs, 12)):
            top, pend, rsum, store, cum = d[5 * k: 5 * k + 5]
            n = cum - before
            pr = [d[64 + i] for i in range(before, min(cum, 448))]
            if len(pr) != n or n < 4:
                before = cum
                continue
            steps = [(b - a) * us for a, b in zip(pr[:-1], pr[1:], strict=True)]
            steady = med(steps[2:-1]) if len(steps) > 3 else med(steps)
            phases["top->pair0"].append((pr[0] - top) * us)
            phases["step0"].append(steps[0])
            phases["step1"].append(steps[1])
            phases["steady"].append(steady)
            phases["last"].append((pend - pr[-1]) * us)
            phases["rowsum"].append((rsum - pend) * us)
            phases["store"].append((store - rsum) * us)
            if k + 1 < segs:
                phases["gap"].append((d[5 * (k + 1)] - store) * us)
            phases["seg_over"].append((store - top) * us - n * steady)
            before = cum
    out = " ".join(f"{k} {med(v):6.2f}" for k, v in phases.items())
    spread = (max(starts) - min(starts)) / 1e3, (max(ends) - min(ends)) / 1e3, (max(ends) - min(starts)) / 1e3
    return (f"  segments/program {statistics.mean(segcount):.2f}  ns/cycle {ns_cycle:.3f}\n  {out}\n"
            f"  program start spread {spread[0]:.1f} us, end spread {spread[1]:.1f} us, first start -> last end "
            f"{spread[2]:.1f} us")


def main():
    dbg = torch.zeros(4096, 2, 512, dtype=torch.int64, device="cuda")
    decode_sm90_ws.DBG = dbg
    for b, s_k, h, s_q in SHAPES:
        case = make_decode_case(b, s_k, h, s_q, False)
        timed = checked_graph_us if CHECK else graph_us
        us, md = timed(case, s_q, h)
        dbg.zero_()
        timed(case, s_q, h)  # (the last launch's stamps stay)
        torch.cuda.synchronize()
        programs = md.shape[0] * ((h * s_q + 63) // 64)
        print(f"b={b} s_k={s_k} h={h} s_q={s_q}: graph {us:.1f} us (instrumented), parts {md.shape[0]}", flush=True)
        print(analyse(dbg.cpu(), programs), flush=True)
        if os.environ.get("DUMP"):  # the raw stamps, for a closer look
            torch.save(dict(stamps=dbg[:programs].cpu(), parts=md.shape[0], shape=(b, s_k, h, s_q)),
                       f"{os.environ['DUMP']}/stamps_b{b}_s{s_k}_h{h}_q{s_q}.pt")


if __name__ == "__main__":
    main()
