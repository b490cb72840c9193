"""Prefill (MHA mode) benchmark on the anchor shapes, beside torch SDPA's backends in the same process.

    python -m triton_mla.bench_prefill [--out FILE.json] [--shapes B,H,S ...] [--no-sdpa] [--no-check]
    python -m triton_mla.bench_prefill --sweep [--out sweep.json] [--quick]
    python -m triton_mla.bench_prefill --apply-sweep sweep.json      (no GPU needed)

Each shape: b sequences of s tokens, h heads, q/k [b * s, h, 192], v [b * s, h, 128], bf16, causal,
softmax_scale = 192 ** -0.5, packed (varlen layout, cu_seqlens = 0, s, 2s, ...) for triton_mla and
[b, h, s, d] for SDPA (cuDNN, flash with v padded to 192, memory-efficient). FLOPs follow the anchors:
``2 * b * h * s * (s + 1) / 2 * (192 + 128)``. Times are ``triton.testing.do_bench`` medians of the whole
call (p20/p80 in the JSON). rel_err: against a float32 reference on the first two heads of the first
sequence (s <= 4096).

``--sweep`` times a grid of the tl.dot kernel's tile configs (BLOCK_M, BLOCK_N, warps, stages, TMA) on each shape,
prints the best per shape and the best overall (geometric mean of TFLOPS), and with ``--out`` writes them;
``--apply-sweep`` then writes that winner into the "prefill" section of the device family's config file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

from .bench import git_commit

DQK, DV = 192, 128
SHAPES = [(1, 128, 4096), (1, 128, 16384), (4, 16, 4096), (1, 16, 16384), (16, 128, 1024)]
QUICK_SHAPES = [(1, 128, 4096), (4, 16, 4096), (16, 128, 1024)]


def prefill_flops(b, h, s, causal=True):
    pairs = s * (s + 1) / 2 if causal else s * s
    return 2 * b * h * pairs * (DQK + DV)


def make_case(b, h, s, seed=0, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b * s, h, DQK, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(b * s, h, DQK, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(b * s, h, DV, device="cuda", dtype=dtype, generator=g)
    cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device="cuda")
    return q, k, v, cu


def reference_slice(q, k, v, s):
    """float32 causal attention of the first sequence's first two heads: [s, 2, DV]."""
    qs, ks, vs = (t[:s, :2].float().transpose(0, 1) for t in (q, k, v))
    scores = qs @ ks.transpose(-1, -2) * DQK ** -0.5
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
    return (torch.softmax(scores, -1) @ vs).transpose(0, 1)


def _time(fn, rep):
    import triton

    p50, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=rep, quantiles=[0.5, 0.2, 0.8])
    return p50, p20, p80


def _ours(q, k, v, cu, s):
    import triton_mla.prefill as P

    return lambda: P.mla_prefill_mha(q, k, v, cu, cu, s, s, softmax_scale=DQK ** -0.5, causal=True)[0]


def _sdpa_providers(q, k, v, b, h, s):
    """(name, fn) for each SDPA backend on [b, h, s, d] copies of the same data."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q4, k4, v4 = (t.view(b, s, h, t.shape[-1]).transpose(1, 2).contiguous() for t in (q, k, v))
    vpad = F.pad(v4, (0, DQK - DV))

    def make(backend, vv):
        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q4, k4, vv, is_causal=True, scale=DQK ** -0.5)
        return run

    return [("sdpa_cudnn", make(SDPBackend.CUDNN_ATTENTION, v4)),
            ("sdpa_flash_padv", make(SDPBackend.FLASH_ATTENTION, vpad)),
            ("sdpa_efficient", make(SDPBackend.EFFICIENT_ATTENTION, v4))]


def _rel_err(out_first_seq, ref):
    return ((out_first_seq.float() - ref).norm() / ref.norm()).item()


def bench(shapes, sdpa=True, check=True, rep=200, log=print):
    rows = []
    for b, h, s in shapes:
        q, k, v, cu = make_case(b, h, s)
        ref = reference_slice(q, k, v, s) if check and s <= 4096 else None
        flops = prefill_flops(b, h, s)
        providers = [("triton_mla", _ours(q, k, v, cu, s))]
        if sdpa:
            providers += _sdpa_providers(q, k, v, b, h, s)
        for name, fn in providers:
            row = dict(cand=name, b=b, h=h, s=s)
            try:
                out = fn()
                torch.cuda.synchronize()
                if ref is not None:
                    first = out[:s, :2] if name == "triton_mla" else out[0, :2, :, :DV].transpose(0, 1)
                    row["rel_err"] = _rel_err(first, ref)
                p50, p20, p80 = _time(fn, rep)
                row.update(ms=p50, ms_p20=p20, ms_p80=p80, TFLOPS=flops / p50 / 1e9)
            except Exception as e:  # a backend this torch build lacks: record and go on
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            log(json.dumps(row))
        q = k = v = providers = out = None
        torch.cuda.empty_cache()
    return rows


def format_table(rows, shapes):
    names = ["triton_mla", "sdpa_cudnn", "sdpa_flash_padv", "sdpa_efficient"]
    head = f"{'b':>3} {'h':>4} {'s':>6} | " + " | ".join(f"{n:>17}" for n in names) + " | x cuDNN | x FA2"
    lines = [head, "-" * len(head)]
    for b, h, s in shapes:
        got = {r["cand"]: r for r in rows if (r["b"], r["h"], r["s"]) == (b, h, s)}
        cells = [f"{got[n]['ms']:7.3f}ms {got[n]['TFLOPS']:4.0f}TF" if "ms" in got.get(n, {}) else f"{'-':>17}"
                 for n in names]
        ours = got.get("triton_mla", {}).get("ms")
        ratios = [f"{got[n]['ms'] / ours:7.2f}" if ours and "ms" in got.get(n, {}) else f"{'-':>7}"
                  for n in ("sdpa_cudnn", "sdpa_flash_padv")]
        lines.append(f"{b:>3} {h:>4} {s:>6} | " + " | ".join(cells) + f" | {ratios[0]} | {ratios[1]:>5}")
    lines.append("x = peer time / our time (above 1: triton_mla is faster); bf16, causal, d_qk 192, d_v 128")
    return "\n".join(lines)


# -- tuning sweep ----------------------------------------------------------------------------------
def sweep_candidates(smem_limit, capability):
    """Tile configs worth timing on this GPU (a grid pruned by shared memory and warp count)."""
    from triton_mla.kernels.prefill import smem_estimate

    tma_options = (False, True) if capability[0] >= 9 else (False,)
    grid = itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4), tma_options)
    cands = [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st, TMA=t) for m, n, w, st, t in grid]

    def keep(c):
        if c["num_warps"] != (4 if c["BLOCK_M"] == 64 else 8):
            return False  # one warpgroup per 64 query rows
        if c["BLOCK_N"] == 32 and c["BLOCK_M"] == 64:
            return False
        return smem_estimate(dict(c), DQK, DV, 2, q_in_smem=capability[0] >= 9) <= smem_limit

    return [c for c in cands if keep(c)]


def sweep(shapes, rep=50, log=print):
    from triton_mla import configs

    dev = torch.cuda.get_device_properties(0)
    limit = getattr(dev, "shared_memory_per_block_optin", 101376)
    cands = sweep_candidates(limit, torch.cuda.get_device_capability(0))
    log(f"sweep: {len(cands)} configs x {len(shapes)} shapes")
    results = []
    for b, h, s in shapes:
        q, k, v, cu = make_case(b, h, s)
        ref = reference_slice(q, k, v, s) if s <= 4096 else None
        flops = prefill_flops(b, h, s)
        for c in cands:
            row = dict(b=b, h=h, s=s, config=c)
            try:
                # the tl.dot kernel's tiles: the sm90 Gluon kernel (WGMMA entries) has its own fields
                with configs.overridden(WGMMA=False, **c):
                    fn = _ours(q, k, v, cu, s)
                    out = fn()
                    torch.cuda.synchronize()
                    if ref is not None:
                        row["rel_err"] = _rel_err(out[:s, :2], ref)
                    p50, _, _ = _time(fn, rep)
                row.update(ms=p50, TFLOPS=flops / p50 / 1e9)
            except Exception as e:  # out of resources, a compiler refusal: skip the config
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            results.append(row)
            log(json.dumps(row))
        q = k = v = out = None
        torch.cuda.empty_cache()
    # the best per shape, and the best overall by geometric mean (configs that ran on every shape, correctly)
    summary = {}
    lines = []
    for b, h, s in shapes:
        ok = [r for r in results if (r["b"], r["h"], r["s"]) == (b, h, s) and "ms" in r
              and r.get("rel_err", 0) < 2e-2]
        if ok:
            best = min(ok, key=lambda r: r["ms"])
            lines.append(f"best for b={b} h={h} s={s}: {best['config']} {best['ms']:.3f} ms {best['TFLOPS']:.0f} TF")
    key = lambda c: json.dumps(c, sort_keys=True)
    scores = {}
    for c in cands:
        mine = [r for r in results if key(r["config"]) == key(c) and "ms" in r and r.get("rel_err", 0) < 2e-2]
        if len(mine) == len(shapes):
            scores[key(c)] = math.exp(sum(math.log(r["TFLOPS"]) for r in mine) / len(mine))
    if scores:
        winner = max(scores, key=scores.get)
        summary = dict(best=json.loads(winner), geomean_TFLOPS=scores[winner])
        lines.append(f"best overall (geomean {scores[winner]:.0f} TF): {winner}")
    for line in lines:
        log(line)
    return results, summary


def apply_sweep(path):
    """Write a sweep's overall winner into the "prefill" 16-bit catch-all entry of its family's config file."""
    from triton_mla import configs

    doc = json.loads(Path(path).read_text())
    best, fam = doc["summary"]["best"], doc["info"]["family"]
    tuned_on = f"{doc['info']['device']} @ {doc['info'].get('commit')} (bench_prefill --sweep)"
    fields = {k: best[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "TMA")}
    cfg_path = configs.update_catch_all(fam, "prefill", fields, tuned_on)
    print(f"{cfg_path}: prefill 16bit catch-all <- {best}")
    return 0



def _parse_shape(text):
    b, h, s = (int(x) for x in text.split(","))
    return b, h, s


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m triton_mla.bench_prefill")
    ap.add_argument("--shapes", nargs="+", type=_parse_shape, default=None, metavar="B,H,S")
    ap.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES} only")
    ap.add_argument("--out", default=None, help="write rows and device info as JSON")
    ap.add_argument("--no-sdpa", action="store_true", help="time triton_mla only")
    ap.add_argument("--no-check", action="store_true", help="skip the reference comparison")
    ap.add_argument("--sweep", action="store_true", help="time a grid of tile configs instead")
    ap.add_argument("--apply-sweep", default=None, metavar="SWEEP.json",
                    help="write a sweep's winner into the family's config file (no GPU needed)")
    args = ap.parse_args(argv)
    if args.apply_sweep:
        return apply_sweep(args.apply_sweep)
    if not torch.cuda.is_available():
        print("no CUDA GPU: the benchmark needs one (tests/test_prefill.py runs the kernel in the interpreter)")
        return 1
    import triton

    from triton_mla import configs

    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    dev = torch.cuda.get_device_properties(0)
    info = dict(device=dev.name, sms=dev.multi_processor_count, family=configs.family_of(0),
                capability=list(torch.cuda.get_device_capability(0)), torch=torch.__version__,
                triton=triton.__version__, commit=git_commit(), time=time.strftime("%Y-%m-%d %H:%M:%S"),
                command="python -m triton_mla.bench_prefill " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps(info), flush=True)
    log = lambda line: print(line, flush=True)
    if args.sweep:
        results, summary = sweep(shapes, log=log)
        doc = dict(info=info, summary=summary, rows=results)
    else:
        rows = bench(shapes, sdpa=not args.no_sdpa, check=not args.no_check, log=log)
        print(format_table(rows, shapes))
        doc = dict(info=info, rows=rows)
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
