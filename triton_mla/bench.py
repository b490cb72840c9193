"""Decode benchmark on the shapes of the peers' anchor tables, with FlashMLA's FLOP and byte formulas.

    python -m triton_mla.bench decode [--quick] [--fp8] [--out FILE.json] [--plot FILE.png]
    python -m triton_mla.bench fp8-sweep [--rows 16,32,64,128] [--batch 128] [--seqlen 4096]

Each shape: a paged latent cache of 64-token pages in random page order, one KV head, d = 576,
dv = 512, bf16, softmax_scale = 576 ** -0.5, causal when s_q > 1, lengths all s_k or drawn from
N(s_k, s_k / 2) (varlen). The whole call is timed (``flash_mla_with_kvcache``: decode + combine) with
``triton.testing.do_bench`` medians (and, in the column "graph", the same call replayed as a CUDA
graph, which takes Python's launch cost out); the plan (``get_mla_metadata``) is made once per shape, as
engines do per step. The peers' figures recorded on the same kind of device
(``benchmarks/peers/decode_<device>.json``) are printed beside ours.

``--fp8`` also times each shape with the FP8 cache (``is_fp8_kvcache=True``; the same latents quantized
into FlashMLA's 656-byte layout) and adds its columns at the right: time, CUDA-graph time, GB/s (656
bytes a token in FlashMLA's formula) and its time as a fraction of the bf16 call's. ``fp8-sweep`` times
candidate ``decode_fp8`` configs per bucket of s_q * h_q rows and prints the fastest as JSON entries.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

D, DV, PAGE = 576, 512, 64
REPO = Path(__file__).resolve().parents[1]
PEERS_DIR = REPO / "benchmarks" / "peers"


def decode_shapes(quick=False):
    """(b, s_k, h_q, s_q, varlen), in the anchor tables' order."""
    if quick:
        return [(128, 4096, 16, 1, False), (128, 8192, 128, 2, False), (8, 8192, 128, 1, False)]
    shapes = [(128, s_k, h_q, s_q, varlen) for h_q in (16, 32, 64, 128) for s_q in (1, 2)
              for s_k in (4096, 8192) for varlen in (False, True)]
    return shapes + [(1, 8192, 128, 1, False), (8, 8192, 128, 1, False), (32, 4096, 16, 1, False),
                     (64, 32768, 16, 1, False)]


def decode_flops(s_q, h_q, total_len):
    return 2 * s_q * total_len * h_q * (D + DV)


def decode_bytes(b, s_q, h_q, total_len, elem_size=2, cache_bytes_per_token=None):
    """FlashMLA's formula: the cache once, q and out once. cache_bytes_per_token: 656 for the FP8 layout."""
    cache = total_len * (D * elem_size if cache_bytes_per_token is None else cache_bytes_per_token)
    return cache + b * s_q * h_q * (D + DV) * elem_size


def make_decode_case(b, s_k, h_q, s_q, varlen, seed=0, device="cuda", dtype=torch.bfloat16):
    g = torch.Generator(device=device).manual_seed(seed)
    if varlen:
        lens = torch.normal(float(s_k), s_k / 2, (b,), generator=g, device=device)
        lens = lens.clamp(min=s_q, max=2 * s_k).round().to(torch.int32)
    else:
        lens = torch.full((b,), s_k, dtype=torch.int32, device=device)
    max_pages = math.ceil(int(lens.max()) / PAGE)
    num_blocks = b * max_pages
    block_table = torch.randperm(num_blocks, generator=g, device=device).to(torch.int32).view(b, max_pages)
    k_cache = torch.randn(num_blocks, PAGE, 1, D, generator=g, device=device, dtype=dtype)
    q = torch.randn(b, s_q, h_q, D, generator=g, device=device, dtype=dtype)
    return q, k_cache, block_table, lens


def fp8_cache_of(k_cache):
    """The FP8-layout copy of a [num_blocks, PAGE, 1, 576] cache (quantized on the GPU, page by page)."""
    import triton_mla as tm

    num_blocks, page = k_cache.shape[0], k_cache.shape[1]
    fp8 = torch.empty(num_blocks, page, 1, 656, dtype=torch.uint8, device=k_cache.device)
    flat = k_cache.view(-1, D)
    tm.write_kv_cache(fp8, flat[:, :DV], flat[:, DV:], torch.arange(flat.shape[0], device=k_cache.device))
    return fp8


def fp8_rel_err(out, q, fp8_cache, block_table, lens, causal, scale, sub):
    """Relative error of the first ``sub`` sequences against decode_ref on their dequantized pages."""
    from triton_mla.fp8 import dequantize_latent
    from triton_mla.reference import decode_ref

    ids = block_table[:sub].flatten().long()
    pages = dequantize_latent(fp8_cache[ids])
    table = torch.arange(ids.numel(), dtype=torch.int32, device=ids.device).view(sub, -1)
    ref, _ = decode_ref(q[:sub], pages, table, lens[:sub], DV, scale, causal)
    return ((out[:sub].float() - ref).norm() / ref.norm()).item()


def load_peers(device_name: str):
    tag = "h200" if "H200" in device_name else "h100" if "H100" in device_name else None
    path = PEERS_DIR / f"decode_{tag}.json"
    if tag is None or not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(r["cand"], r["b"], r["s_k"], r["h_q"], r["s_q"], r["varlen"]): r for r in rows if "ms" in r}


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:
        return None


def _time(run):
    """(do_bench median ms of the call, and of the call replayed as a CUDA graph)."""
    import triton

    ms = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
    # the same call replayed as a CUDA graph, as serving engines run decode: no Python launch cost
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return ms, triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")


def bench_decode(shapes, check=True, batch_invariant=False, log=print, fp8=False):
    import triton_mla as tm
    from triton_mla.reference import decode_ref

    rows = []
    for b, s_k, h_q, s_q, varlen in shapes:
        q, k_cache, block_table, lens = make_decode_case(b, s_k, h_q, s_q, varlen)
        causal, scale = s_q > 1, D ** -0.5
        md, num_splits = tm.get_mla_metadata(lens, s_q * h_q, 1)
        run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, num_splits,
                                softmax_scale=scale, causal=causal)
        out, _ = run()
        torch.cuda.synchronize()
        row = dict(b=b, s_k=s_k, h_q=h_q, s_q=s_q, varlen=varlen)
        checked = check and (b <= 8 or (s_k == 4096 and not varlen))
        sub = min(b, 16)  # the reference is a per-sequence loop: check the first sequences
        if checked:
            ref, _ = decode_ref(q[:sub], k_cache, block_table[:sub], lens[:sub], DV, scale, causal)
            row["rel_err"] = ((out[:sub].float() - ref).norm() / ref.norm()).item()
        ms, graph_ms = _time(run)
        total = int(lens.sum())
        row.update(us=ms * 1e3, graph_us=graph_ms * 1e3, GBps=decode_bytes(b, s_q, h_q, total) / ms / 1e6,
                   TFLOPS=decode_flops(s_q, h_q, total) / ms / 1e9)
        if fp8:
            fp8_cache = fp8_cache_of(k_cache)
            k_cache = run = out = None
            torch.cuda.empty_cache()
            md, num_splits = tm.get_mla_metadata(lens, s_q * h_q, 1, is_fp8_kvcache=True)
            run = functools.partial(tm.flash_mla_with_kvcache, q, fp8_cache, block_table, lens, DV, md, num_splits,
                                    softmax_scale=scale, causal=causal, is_fp8_kvcache=True)
            out, _ = run()
            torch.cuda.synchronize()
            if checked:
                row["fp8_rel_err"] = fp8_rel_err(out, q, fp8_cache, block_table, lens, causal, scale, sub)
            ms, graph_ms = _time(run)
            row.update(fp8_us=ms * 1e3, fp8_graph_us=graph_ms * 1e3,
                       fp8_GBps=decode_bytes(b, s_q, h_q, total, cache_bytes_per_token=656) / ms / 1e6,
                       fp8_TFLOPS=decode_flops(s_q, h_q, total) / ms / 1e9, fp8_vs_bf16=ms * 1e3 / row["us"])
            fp8_cache = None
        rows.append(row)
        log(json.dumps(row))
        run = out = q = k_cache = None
        torch.cuda.empty_cache()
    return rows


def ceilings():
    """Measured copy bandwidth (read + write, GB/s) and bf16 matmul rate (TFLOPS) of this GPU."""
    import triton

    x = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda")
    ms = triton.testing.do_bench(functools.partial(torch.clone, x), warmup=25, rep=200, return_mode="median")
    bw = 2 * x.numel() * 2 / ms / 1e6
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms_mm = triton.testing.do_bench(functools.partial(torch.matmul, a, a), warmup=25, rep=200, return_mode="median")
    x = a = None
    torch.cuda.empty_cache()
    return bw, 2 * 8192**3 / ms_mm / 1e9


def format_table(rows, peers):
    fp8 = any("fp8_us" in r for r in rows)
    head = (f"{'b':>4} {'s_k':>6} {'h_q':>4} {'s_q':>3} {'var':>3} | {'ours us':>8} {'graph':>7} {'GB/s':>6} {'TF':>5} "
            f"{'err':>7} | {'FlashMLA us':>11} {'x':>5} | {'best Triton peer us':>19} {'x':>5}")
    if fp8:
        head += f" | {'fp8 us':>8} {'graph':>7} {'GB/s':>6} {'TF':>5} {'err':>7} {'/bf16':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        key = (r["b"], r["s_k"], r["h_q"], r["s_q"], r["varlen"])
        fm = peers.get(("flashmla", *key))
        tri = [peers[(c, *key)] for c in ("sglang_triton", "vllm_triton") if (c, *key) in peers]
        best = min(tri, key=lambda p: p["ms"]) if tri else None
        fm_s = f"{fm['ms'] * 1e3:11.1f} {fm['ms'] * 1e3 / r['us']:5.2f}" if fm else f"{'-':>11} {'-':>5}"
        tr_s = f"{best['ms'] * 1e3:19.1f} {best['ms'] * 1e3 / r['us']:5.2f}" if best else f"{'-':>19} {'-':>5}"
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        line = (f"{r['b']:>4} {r['s_k']:>6} {r['h_q']:>4} {r['s_q']:>3} {int(r['varlen']):>3} | "
                f"{r['us']:8.1f} {r.get('graph_us', float('nan')):7.1f} {r['GBps']:6.0f} {r['TFLOPS']:5.0f} "
                f"{err:>7} | {fm_s} | {tr_s}")
        if fp8 and "fp8_us" in r:
            err8 = f"{r['fp8_rel_err']:.1e}" if "fp8_rel_err" in r else "-"
            line += (f" | {r['fp8_us']:8.1f} {r['fp8_graph_us']:7.1f} {r['fp8_GBps']:6.0f} {r['fp8_TFLOPS']:5.0f} "
                     f"{err8:>7} {r['fp8_vs_bf16']:6.2f}")
        lines.append(line)
    lines.append("x = peer time / our time (above 1: we are faster); graph = the call replayed as a CUDA graph")
    if fp8:
        lines.append("fp8: the same call on the FP8 cache (GB/s with 656 bytes a token; err against the reference "
                     "on the dequantized cache); /bf16 = fp8 time / bf16 time")
    return "\n".join(lines)


# fp8-sweep's candidates per bucket of s_q * h_q rows (every combination; PARTS_PER_SM needs no recompile).
# Starting points from the kernels' SASS on sm90 (instructions per token, registers, shared memory):
# 16-row tiles scale the scores and P (SCALE_TILE off), bigger ones the tiles; 64-row tiles need 8 warps.
FP8_SWEEP = {
    16: dict(BLOCK_H=(16,), BLOCK_N=(32, 64), num_warps=(2, 4, 8), PARTS_PER_SM=(1, 2, 3)),
    32: dict(BLOCK_H=(16, 32), BLOCK_N=(32, 64), num_warps=(4, 8), PARTS_PER_SM=(1, 2)),
    64: dict(BLOCK_H=(32, 64), BLOCK_N=(32, 64), num_warps=(4, 8), PARTS_PER_SM=(1, 2)),
    128: dict(BLOCK_H=(32, 64), BLOCK_N=(32, 64), num_warps=(4, 8), PARTS_PER_SM=(1,)),
}


def fp8_candidates(rows):
    """decode_fp8 entries to time for the bucket holding ``rows``."""
    import itertools

    space = FP8_SWEEP[min((r for r in FP8_SWEEP if r >= rows), default=max(FP8_SWEEP))]
    for values in itertools.product(*space.values()):
        cand = dict(zip(space, values, strict=True))
        if cand["BLOCK_H"] >= 64 and cand["num_warps"] < 8:
            continue
        yield dict(max_rows=None, dtype="16bit", **cand, num_stages=2,
                   MIN_BLOCKS_PER_PART=max(1, 256 // cand["BLOCK_N"]),
                   HW_CVT=torch.cuda.get_device_capability() >= (8, 9), SCALE_TILE=cand["BLOCK_H"] >= 32)


def fp8_sweep(bucket_rows, batch=128, seqlen=4096, log=print):
    """Time every fp8 candidate (configs.overridden) on b x s_k, s_q = 1, h_q = rows; returns the best per bucket."""
    import triton

    import triton_mla as tm
    from triton_mla import configs

    best = {}
    for rows in bucket_rows:
        q, k_cache, block_table, lens = make_decode_case(batch, seqlen, rows, 1, False)
        fp8_cache = fp8_cache_of(k_cache)
        k_cache = None
        for cand in fp8_candidates(rows):
            with configs.overridden(**cand):
                run = functools.partial(tm.flash_mla_with_kvcache, q, fp8_cache, block_table, lens, DV,
                                        is_fp8_kvcache=True)
                try:
                    run()
                    torch.cuda.synchronize()
                    us = triton.testing.do_bench(run, warmup=10, rep=60, return_mode="median") * 1e3
                except Exception as e:  # out of shared memory or registers: not a candidate here
                    log(f"rows {rows} skipped {cand}: {type(e).__name__}")
                    continue
            log(json.dumps(dict(rows=rows, us=round(us, 1), **cand)))
            if us < best.get(rows, (float("inf"), None))[0]:
                best[rows] = (us, cand)
        q = fp8_cache = None
        torch.cuda.empty_cache()
    return best


def plot(rows, peers, info, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"b{r['b']} s{r['s_k']} h{r['h_q']} q{r['s_q']}{' v' if r['varlen'] else ''}" for r in rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(10, len(rows) * 0.45), 9))
    for ax, metric, ceiling, unit in ((axes[0], "GBps", info.get("copy_GBps"), "GB/s"),
                                      (axes[1], "TFLOPS", info.get("matmul_TFLOPS"), "TFLOPS")):
        x = range(len(rows))
        ax.bar([i - 0.3 for i in x], [r[metric] for r in rows], 0.3, label="triton-mla")
        for off, cand in ((0.0, "flashmla"), (0.3, "vllm_triton")):
            vals = [peers.get((cand, r["b"], r["s_k"], r["h_q"], r["s_q"], r["varlen"]), {}).get(metric, 0)
                    for r in rows]
            ax.bar([i + off for i in x], vals, 0.3, label=cand + " (recorded)")
        if ceiling:
            ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"device ceiling {ceiling:.0f}")
        ax.set_ylabel(unit)
        ax.set_xticks(list(x), labels, rotation=75, fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(f"MLA decode, {info['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m triton_mla.bench")
    ap.add_argument("what", choices=["decode", "fp8-sweep"])
    ap.add_argument("--quick", action="store_true", help="three shapes only")
    ap.add_argument("--fp8", action="store_true", help="also time the FP8 cache (columns at the right)")
    ap.add_argument("--out", default=None, help="write rows and device info as JSON")
    ap.add_argument("--plot", default=None, help="draw GB/s and TFLOPS per shape to a PNG (matplotlib)")
    ap.add_argument("--no-check", action="store_true", help="skip the reference comparison")
    ap.add_argument("--rows", default="16,32,64,128", help="fp8-sweep: buckets of s_q * h_q rows")
    ap.add_argument("--batch", type=int, default=128, help="fp8-sweep: batch size")
    ap.add_argument("--seqlen", type=int, default=4096, help="fp8-sweep: cache length")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: the benchmark needs one (python -m triton_mla runs the CPU self-check)")
        return 1
    import triton

    dev = torch.cuda.get_device_properties(0)
    if args.what == "fp8-sweep":
        best = fp8_sweep([int(r) for r in args.rows.split(",")], args.batch, args.seqlen,
                         log=lambda s: print(s, flush=True))
        bounds = sorted(best)
        print(f"fastest decode_fp8 entries on {dev.name} (b={args.batch}, s_k={args.seqlen}), for the config file:")
        print(json.dumps([dict(best[r][1], max_rows=None if i == len(bounds) - 1 else r)
                          for i, r in enumerate(bounds)], indent=1))
        for r in bounds:
            print(f"rows {r}: {best[r][0]:.1f} us")
        return 0
    bw, tf = ceilings()
    info = dict(device=dev.name, sms=dev.multi_processor_count, copy_GBps=round(bw), matmul_TFLOPS=round(tf),
                torch=torch.__version__, triton=triton.__version__, commit=git_commit(),
                time=time.strftime("%Y-%m-%d %H:%M:%S"), command="python -m triton_mla.bench " + " ".join(
                    argv if argv is not None else sys.argv[1:]))
    print(json.dumps(info), flush=True)
    rows = bench_decode(decode_shapes(args.quick), check=not args.no_check,
                        log=lambda s: print(s, flush=True), fp8=args.fp8)
    peers = load_peers(dev.name)
    print(format_table(rows, peers))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(info=info, rows=rows), indent=1) + "\n")
    if args.plot:
        plot(rows, peers, info, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
