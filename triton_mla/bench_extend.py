"""Extend (chunked prefill) benchmark: absorbed ``mla_extend`` on the target shapes, and where MHA mode wins.

    python -m triton_mla.bench_extend [--out FILE.json] [--quick] [--no-grid] [--no-check]
    python -m triton_mla.bench_extend --sweep [--out sweep.json]
    python -m triton_mla.bench_extend --apply-sweep sweep.json      (no GPU needed)

1. Targets: one sequence, a chunk of 1024 new tokens on a prefix of 8192 (cache_seqlens 9216), h_q 128
   and 16, bf16 and FP8 caches, pages of 64 in random order, softmax_scale 192 ** -0.5; and a mixed
   batch (that chunk beside 63 decode tokens of 8192-token contexts). FLOPs:
   ``2 * sum over queries of visible keys * h_q * (576 + 512)``. Printed beside torch.matmul's bf16 rate
   on the same device (8192^3) and the project's target, 50% of it at h_q = 128.
2. Crossover grid (prefix x chunk, h_q 16 and 128): a layer's whole path each way,
   absorbed = W_UK into q (bmm) + ``mla_extend`` + W_UV on the output (bmm), against
   MHA = ``decompress_kv`` over [0, prefix + chunk) + ``mla_prefill_mha`` (q of 192 dims, causal).
   The grid prints MHA time / absorbed time: above 1, absorbed is faster.

Times are ``triton.testing.do_bench`` medians of the whole call (p20/p80 in the JSON). rel_err: against
``reference.extend_ref`` in float32 on the first two heads.

``--sweep`` times a few tile configs of the "extend" section on the target shapes and prints the best;
``--apply-sweep`` writes that winner into the 16-bit catch-all "extend" entry of the device family's file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from .bench import git_commit

D, DV, ROPE, PAGE = 576, 512, 64, 64
D_NOPE, D_V_MHA = 128, 128
SCALE = (D_NOPE + ROPE) ** -0.5
DEVICE, DTYPE = "cuda", torch.bfloat16  # a CPU smoke run of this script sets "cpu" and float16


def extend_flops(q_lens, lens, h_q, d=D, dv=DV):
    """2 * (visible keys summed over queries) * h_q * (d + dv); query j of a chunk of L sees P + j + 1 keys."""
    pairs = sum(L * (n - L) + L * (L + 1) // 2 for L, n in zip(q_lens, lens, strict=True))
    return 2 * pairs * h_q * (d + dv)


def mha_flops(q_lens, lens, h_q):
    pairs = sum(L * (n - L) + L * (L + 1) // 2 for L, n in zip(q_lens, lens, strict=True))
    return 2 * pairs * h_q * (D_NOPE + ROPE + D_V_MHA)


def make_cache(lens, fp8, seed=0, device=None):
    """Paged latent cache for sequences of ``lens`` tokens, 64-token pages in random order."""
    from triton_mla import fp8 as fp8_layout

    device = device or DEVICE
    g = torch.Generator(device=device).manual_seed(seed)
    pages = [math.ceil(n / PAGE) for n in lens]
    num_blocks, width = sum(pages), max(pages)
    perm = torch.randperm(num_blocks, generator=g, device=device).to(torch.int32)
    block_table = torch.zeros(len(lens), width, dtype=torch.int32, device=device)
    at = 0
    for i, p in enumerate(pages):
        block_table[i, :p] = perm[at:at + p]
        at += p
    latent = torch.randn(num_blocks, PAGE, 1, D, generator=g, device=device, dtype=DTYPE)
    if fp8:
        return fp8_layout.quantize_latent(latent[..., :DV], latent[..., DV:]), block_table
    return latent, block_table


def make_case(lens, q_lens, h_q, fp8, seed=0):
    k_cache, block_table = make_cache(lens, fp8, seed)
    g = torch.Generator(device=DEVICE).manual_seed(seed + 1)
    cu = torch.tensor([0] + list(q_lens), device=DEVICE).cumsum(0).to(torch.int32)
    q = torch.randn(sum(q_lens), h_q, D, generator=g, device=DEVICE, dtype=DTYPE)
    lens_t = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    return q, k_cache, block_table, lens_t, cu


def target_shapes(quick=False):
    """(name, lens, q_lens, h_q, fp8)."""
    one = [9216], [1024]
    mixed = [9216] + [8192] * 63, [1024] + [1] * 63
    rows = [(f"chunk1024_prefix8192_h{h}", *one, h, fp8) for h in (128, 16) for fp8 in (False, True)]
    if not quick:
        rows += [(f"mixed_1x1024+63x1_h{h}", *mixed, h, fp8) for h in (128, 16) for fp8 in (False, True)]
        rows += [(f"b4_chunk1024_prefix8192_h{h}", [9216] * 4, [1024] * 4, h, False) for h in (128, 16)]
    return rows


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _time(fn, rep=100):
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=rep, quantiles=[0.5, 0.2, 0.8])


def _extend_call(q, k_cache, block_table, lens_t, cu, max_q, fp8):
    from triton_mla.extend import mla_extend

    return lambda: mla_extend(q, k_cache, block_table, lens_t, cu, max_q, SCALE, is_fp8_kvcache=fp8)


def _rel_err(q, out, k_cache, block_table, lens_t, cu):
    from triton_mla.reference import extend_ref

    ref, _ = extend_ref(q[:, :2], k_cache, block_table, lens_t, cu, DV, SCALE, dtype=torch.float32)
    return ((out[:, :2].float() - ref).norm() / ref.norm()).item()


def bench_targets(shapes, check=True, log=print):
    rows = []
    for name, lens, q_lens, h_q, fp8 in shapes:
        q, k_cache, block_table, lens_t, cu = make_case(lens, q_lens, h_q, fp8)
        run = _extend_call(q, k_cache, block_table, lens_t, cu, max(q_lens), fp8)
        row = dict(name=name, b=len(lens), h_q=h_q, fp8=fp8, total_q=sum(q_lens), max_len=max(lens))
        try:
            out, _ = run()
            _sync()
            if check:
                row["rel_err"] = _rel_err(q, out, k_cache, block_table, lens_t, cu)
            p50, p20, p80 = _time(run)
            row.update(us=p50 * 1e3, us_p20=p20 * 1e3, us_p80=p80 * 1e3,
                       TFLOPS=extend_flops(q_lens, lens, h_q) / p50 / 1e9)
        except Exception as e:  # an out-of-resources launch: record it and go on
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
        log(json.dumps(row))
        q = k_cache = run = out = None
        torch.cuda.empty_cache()
    return rows


def matmul_tflops():
    a = torch.randn(8192, 8192, dtype=DTYPE, device=DEVICE)
    p50, _, _ = _time(lambda: torch.matmul(a, a), rep=200)
    return 2 * 8192**3 / p50 / 1e9


# -- MHA vs absorbed crossover --------------------------------------------------------------------
def _crossover_point(h, prefix, chunk, w_uk, w_uv, g):
    """Time both paths of one (h_q, prefix, chunk) point; returns its row."""
    from triton_mla.extend import decompress_kv, mla_extend
    from triton_mla.prefill import mla_prefill_mha

    n = prefix + chunk
    k_cache, block_table = make_cache([n], False, seed=prefix + chunk)
    lens_t = torch.tensor([n], dtype=torch.int32, device=DEVICE)
    cu_q = torch.tensor([0, chunk], dtype=torch.int32, device=DEVICE)
    q_nope = torch.randn(chunk, h, D_NOPE, generator=g, device=DEVICE, dtype=DTYPE)
    q_pe = torch.randn(chunk, h, ROPE, generator=g, device=DEVICE, dtype=DTYPE)
    q_mha = torch.cat([q_nope, q_pe], dim=-1)

    def absorb():
        # W_UK folded into q: per head [chunk, 128] x [128, 512]
        return torch.cat([torch.bmm(q_nope.transpose(0, 1), w_uk).transpose(0, 1), q_pe], dim=-1)

    def absorbed():
        o_lat, _ = mla_extend(absorb(), k_cache, block_table, lens_t, cu_q, chunk, SCALE)
        return torch.bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2)).transpose(0, 1)  # W_UV: [chunk, h, 128]

    def decompress():
        return decompress_kv(k_cache, block_table, lens_t, w_uk, w_uv, total_k=n, max_seqlen_k=n)

    def mha():
        k, v, cu_k, max_k = decompress()
        return mla_prefill_mha(q_mha, k, v, cu_q, cu_k, chunk, max_k, SCALE, causal=True)[0]

    row = dict(h_q=h, prefix=prefix, chunk=chunk)
    try:
        a, m = absorbed(), mha()
        _sync()
        row["agree_rel_err"] = ((a.float() - m.float()).norm() / m.float().norm()).item()
        row["absorbed_us"] = _time(absorbed, rep=50)[0] * 1e3
        row["mha_us"] = _time(mha, rep=50)[0] * 1e3
        q_lat, kv = absorb(), decompress()
        row["extend_kernel_us"] = _time(
            lambda: mla_extend(q_lat, k_cache, block_table, lens_t, cu_q, chunk, SCALE), rep=50)[0] * 1e3
        row["decompress_us"] = _time(decompress, rep=50)[0] * 1e3
        row["prefill_kernel_us"] = _time(
            lambda: mla_prefill_mha(q_mha, kv.k, kv.v, cu_q, kv.cu_seqlens_k, chunk, n, SCALE, True), rep=50)[0] * 1e3
        row["mha_over_absorbed"] = row["mha_us"] / row["absorbed_us"]
    except Exception as e:  # out of memory or resources at the largest points: record and go on
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return row


def crossover(prefixes, chunks, heads, log=print):
    rows = []
    for h in heads:
        g = torch.Generator(device=DEVICE).manual_seed(h)
        w = torch.randn(h * (D_NOPE + D_V_MHA), DV, generator=g, device=DEVICE, dtype=DTYPE) / DV ** 0.5
        w_uk, w_uv = w.view(h, D_NOPE + D_V_MHA, DV)[:, :D_NOPE], w.view(h, D_NOPE + D_V_MHA, DV)[:, D_NOPE:]
        for prefix in prefixes:
            for chunk in chunks:
                rows.append(_crossover_point(h, prefix, chunk, w_uk, w_uv, g))
                log(json.dumps(rows[-1]))
                torch.cuda.empty_cache()
    return rows


def format_crossover(rows, prefixes, chunks, heads):
    lines = []
    corner = "prefix \\ chunk"
    for h in heads:
        lines.append(f"h_q = {h}: MHA path time / absorbed path time (above 1: absorbed faster); "
                     "cells: ratio (absorbed us / MHA us)")
        lines.append(f"{corner:>15} | " + " | ".join(f"{c:>20}" for c in chunks))
        for p in prefixes:
            cells = []
            for c in chunks:
                r = next((r for r in rows if (r["h_q"], r["prefix"], r["chunk"]) == (h, p, c)), {})
                cells.append(f"{r['mha_over_absorbed']:5.2f} ({r['absorbed_us']:6.0f}/{r['mha_us']:6.0f})"
                             if "mha_us" in r else f"{'-':>20}")
            lines.append(f"{p:>15} | " + " | ".join(f"{c:>20}" for c in cells))
        lines.append("")
    return "\n".join(lines)


# -- tuning sweep ----------------------------------------------------------------------------------
SWEEP = [dict(BLOCK_M=64, BLOCK_N=n, num_warps=8, num_stages=s, UNCHAIN=u)
         for n, s in ((16, 3), (32, 2), (32, 3), (64, 2)) for u in (True, False)]


def sweep(shapes, log=print):
    from triton_mla import configs

    results = []
    for c in SWEEP:
        with configs.overridden(**c):
            for row in bench_targets(shapes, check=True, log=lambda s: None):
                row["config"] = c
                results.append(row)
                log(json.dumps(row))
    key = lambda c: json.dumps(c, sort_keys=True)
    scores = {}
    for c in SWEEP:
        mine = [r for r in results if key(r["config"]) == key(c) and "TFLOPS" in r and r.get("rel_err", 0) < 2e-2]
        if len(mine) == len(shapes):
            scores[key(c)] = math.exp(sum(math.log(r["TFLOPS"]) for r in mine) / len(mine))
    summary = {}
    for name, *_ in shapes:
        ok = [r for r in results if r["name"] == name and "TFLOPS" in r and r.get("rel_err", 0) < 2e-2]
        if ok:
            best = max(ok, key=lambda r: r["TFLOPS"])
            log(f"best for {name}{' fp8' if best['fp8'] else ''}: {best['config']} {best['TFLOPS']:.0f} TF")
    if scores:
        winner = max(scores, key=scores.get)
        summary = dict(best=json.loads(winner), geomean_TFLOPS=scores[winner])
        log(f"best overall (geomean {scores[winner]:.0f} TF): {winner}")
    return results, summary


def apply_sweep(path):
    """Write a sweep's overall winner into the "extend" 16-bit catch-all entry of its family's config file."""
    from triton_mla import configs

    doc = json.loads(Path(path).read_text())
    best, fam = doc["summary"]["best"], doc["info"]["family"]
    tuned_on = f"{doc['info']['device']} @ {doc['info'].get('commit')} (bench_extend --sweep)"
    cfg_path = configs.update_catch_all(fam, "extend", best, tuned_on)
    print(f"{cfg_path}: extend 16bit catch-all <- {best}")
    return 0



def format_targets(rows, mm):
    head = f"{'shape':<28} {'cache':>5} | {'us':>9} {'TFLOPS':>7} {'% matmul':>8} {'rel err':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "us" not in r:
            lines.append(f"{r['name']:<28} {'fp8' if r['fp8'] else 'bf16':>5} | {r.get('error', '-')[:60]}")
            continue
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        lines.append(f"{r['name']:<28} {'fp8' if r['fp8'] else 'bf16':>5} | {r['us']:9.1f} {r['TFLOPS']:7.0f} "
                     f"{100 * r['TFLOPS'] / mm:7.0f}% {err:>8}")
    lines.append(f"torch.matmul bf16 8192^3: {mm:.0f} TFLOPS; target: absorbed extend at h_q = 128 >= 50% "
                 f"({mm / 2:.0f} TFLOPS)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m triton_mla.bench_extend")
    ap.add_argument("--quick", action="store_true", help="the four target shapes and a small grid")
    ap.add_argument("--out", default=None, help="write rows and device info as JSON")
    ap.add_argument("--no-grid", action="store_true", help="skip the MHA-vs-absorbed crossover grid")
    ap.add_argument("--no-check", action="store_true", help="skip the reference comparison")
    ap.add_argument("--sweep", action="store_true", help="time a few tile configs on the target shapes instead")
    ap.add_argument("--apply-sweep", default=None, metavar="SWEEP.json",
                    help="write a sweep's winner into the family's config file (no GPU needed)")
    args = ap.parse_args(argv)
    if args.apply_sweep:
        return apply_sweep(args.apply_sweep)
    if not torch.cuda.is_available():
        print("no CUDA GPU: the benchmark needs one (tests/test_extend.py runs the kernel in the interpreter)")
        return 1
    import triton

    from triton_mla import configs

    dev = torch.cuda.get_device_properties(0)
    info = dict(device=dev.name, sms=dev.multi_processor_count, family=configs.family_of(0),
                capability=list(torch.cuda.get_device_capability(0)), torch=torch.__version__,
                triton=triton.__version__, commit=git_commit(), time=time.strftime("%Y-%m-%d %H:%M:%S"),
                command="python -m triton_mla.bench_extend " + " ".join(argv if argv is not None else sys.argv[1:]))
    log = lambda line: print(line, flush=True)
    info["matmul_TFLOPS"] = matmul_tflops()
    log(json.dumps(info))
    if args.sweep:
        results, summary = sweep(target_shapes(quick=True), log=log)
        doc = dict(info=info, summary=summary, rows=results)
    else:
        rows = bench_targets(target_shapes(args.quick), check=not args.no_check, log=log)
        doc = dict(info=info, rows=rows)
        grid_rows = []
        if not args.no_grid:
            prefixes = [1024, 8192] if args.quick else [0, 1024, 8192, 32768]
            chunks = [64, 1024] if args.quick else [16, 64, 256, 1024, 4096]
            heads = [128] if args.quick else [16, 128]
            grid_rows = crossover(prefixes, chunks, heads, log=log)
            doc["crossover"] = grid_rows
        print(format_targets(rows, info["matmul_TFLOPS"]))
        if grid_rows:
            print(format_crossover(grid_rows, prefixes, chunks, heads))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
