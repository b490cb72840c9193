"""Decode benchmark on the shapes of the peers' anchor tables, with FlashMLA's FLOP and byte formulas.

    python -m triton_mla.bench decode [--quick] [--out FILE.json] [--plot FILE.png]

Each shape: a paged latent cache of 64-token pages in random page order, one KV head, d = 576,
dv = 512, bf16, softmax_scale = 576 ** -0.5, causal when s_q > 1, lengths all s_k or drawn from
N(s_k, s_k / 2) (varlen). The whole call is timed (``flash_mla_with_kvcache``: decode + combine) with
``triton.testing.do_bench`` medians (and, in the column "graph", the same call replayed as a CUDA
graph, which takes Python's launch cost out); the plan (``get_mla_metadata``) is made once per shape, as
engines do per step. The peers' figures recorded on the same kind of device
(``benchmarks/peers/decode_<device>.json``) are printed beside ours.
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


def decode_bytes(b, s_q, h_q, total_len, elem_size=2):
    return (total_len * D + b * s_q * h_q * (D + DV)) * elem_size


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


def load_peers(device_name: str):
    tag = "h200" if "H200" in device_name else "h100" if "H100" in device_name else None
    path = PEERS_DIR / f"decode_{tag}.json"
    if tag is None or not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(r["cand"], r["b"], r["s_k"], r["h_q"], r["s_q"], r["varlen"]): r for r in rows if "ms" in r}


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:
        return None


def bench_decode(shapes, check=True, batch_invariant=False, log=print):
    import triton

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
        if check and (b <= 8 or (s_k == 4096 and not varlen)):
            sub = min(b, 16)  # the reference is a per-sequence loop: check the first sequences
            ref, _ = decode_ref(q[:sub], k_cache, block_table[:sub], lens[:sub], DV, scale, causal)
            row["rel_err"] = ((out[:sub].float() - ref).norm() / ref.norm()).item()
        ms = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
        # the same call replayed as a CUDA graph, as serving engines run decode: no Python launch cost
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        graph_ms = triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")
        total = int(lens.sum())
        row.update(us=ms * 1e3, graph_us=graph_ms * 1e3, GBps=decode_bytes(b, s_q, h_q, total) / ms / 1e6,
                   TFLOPS=decode_flops(s_q, h_q, total) / ms / 1e9)
        rows.append(row)
        log(json.dumps(row))
        run = graph = q = k_cache = None
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
    head = (f"{'b':>4} {'s_k':>6} {'h_q':>4} {'s_q':>3} {'var':>3} | {'ours us':>8} {'graph':>7} {'GB/s':>6} {'TF':>5} "
            f"{'err':>7} | {'FlashMLA us':>11} {'x':>5} | {'best Triton peer us':>19} {'x':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        key = (r["b"], r["s_k"], r["h_q"], r["s_q"], r["varlen"])
        fm = peers.get(("flashmla", *key))
        tri = [peers[(c, *key)] for c in ("sglang_triton", "vllm_triton") if (c, *key) in peers]
        best = min(tri, key=lambda p: p["ms"]) if tri else None
        fm_s = f"{fm['ms'] * 1e3:11.1f} {fm['ms'] * 1e3 / r['us']:5.2f}" if fm else f"{'-':>11} {'-':>5}"
        tr_s = f"{best['ms'] * 1e3:19.1f} {best['ms'] * 1e3 / r['us']:5.2f}" if best else f"{'-':>19} {'-':>5}"
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        lines.append(f"{r['b']:>4} {r['s_k']:>6} {r['h_q']:>4} {r['s_q']:>3} {int(r['varlen']):>3} | "
                     f"{r['us']:8.1f} {r.get('graph_us', float('nan')):7.1f} {r['GBps']:6.0f} {r['TFLOPS']:5.0f} "
                     f"{err:>7} | {fm_s} | {tr_s}")
    lines.append("x = peer time / our time (above 1: we are faster); graph = the call replayed as a CUDA graph")
    return "\n".join(lines)


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
    ap.add_argument("what", choices=["decode"])
    ap.add_argument("--quick", action="store_true", help="three shapes only")
    ap.add_argument("--out", default=None, help="write rows and device info as JSON")
    ap.add_argument("--plot", default=None, help="draw GB/s and TFLOPS per shape to a PNG (matplotlib)")
    ap.add_argument("--no-check", action="store_true", help="skip the reference comparison")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: the benchmark needs one (python -m triton_mla runs the CPU self-check)")
        return 1
    import triton

    dev = torch.cuda.get_device_properties(0)
    bw, tf = ceilings()
    info = dict(device=dev.name, sms=dev.multi_processor_count, copy_GBps=round(bw), matmul_TFLOPS=round(tf),
                torch=torch.__version__, triton=triton.__version__, commit=_git_commit(),
                time=time.strftime("%Y-%m-%d %H:%M:%S"), command="python -m triton_mla.bench " + " ".join(
                    argv if argv is not None else sys.argv[1:]))
    print(json.dumps(info), flush=True)
    rows = bench_decode(decode_shapes(args.quick), check=not args.no_check,
                        log=lambda s: print(s, flush=True))
    peers = load_peers(dev.name)
    print(format_table(rows, peers))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(info=info, rows=rows), indent=1) + "\n")
    if args.plot:
        plot(rows, peers, info, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
