"""Sparse (DSA) MLA benchmark on the shapes of ``../shared/anchors/bench_sparse.py``, beside FlashMLA's figures.

    python -m triton_mla.bench_sparse [--only decode_fp8,decode_bf16,prefill] [--quick] [--out FILE.json]
                                      [--set KEY=VALUE ...] [--sweep]

Decode: a paged cache of 64-token pages (FP8 layout, or bf16), b sequences of s_kv tokens each in
random page order; each query token's ``indices`` are ``topk`` distinct random tokens of its sequence
(page * 64 + offset), the last 7 set to -1; called through ``flash_mla_with_kvcache(q, k_cache, None,
None, 512, get_mla_metadata()[0], None, is_fp8_kvcache=..., indices=...)`` exactly as the anchors do.
Prefill: ``flash_mla_sparse_fwd(q, kv, indices, 576 ** -0.5)`` on a bf16 kv of s_kv tokens.
Each call is timed with ``triton.testing.do_bench`` medians (and replayed as a CUDA graph, "graph").

    decode flops  = 2 * b * s_q * h_q * topk * (576 + 512)
    decode bytes  = b * s_q * topk * (656 FP8 | 1152 bf16) + b * s_q * h_q * (576 + 512) * 2
    prefill flops = 2 * s_q * h_q * topk * (576 + 512)

``--set`` overrides launch-config fields for every shape (``--set BLOCK_N=32 --set FP8_num_stages=3``);
``--sweep`` times a small grid of configs per shape and prints the fastest (to copy into configs/sm90.json).
FlashMLA's figures come from ``benchmarks/peers/sparse_<device>.json`` (recorded by the anchors' script).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from .bench import git_commit

D, DV, PAGE = 576, 512, 64
REPO = Path(__file__).resolve().parents[1]
PEERS_DIR = REPO / "benchmarks" / "peers"

# (b, s_q, h_q, topk, s_kv): the anchors' sparse decode shapes, then their prefill shapes (s_q, h_q, topk, s_kv)
DECODE_SHAPES = [(128, 2, 128, 2048, 32768), (64, 2, 128, 2048, 32768), (128, 1, 64, 2048, 32768),
                 (128, 1, 16, 2048, 32768), (128, 1, 8, 2048, 32768), (2, 2, 128, 2048, 32768)]
PREFILL_SHAPES = [(4096, 128, 2048, 32768), (4096, 64, 2048, 32768), (4096, 16, 2048, 32768)]
QUICK_DECODE = [DECODE_SHAPES[0], DECODE_SHAPES[3], DECODE_SHAPES[5]]
QUICK_PREFILL = [PREFILL_SHAPES[0]]

# the targets on the H100, as (kind, h_q) -> (metric, bound)
TARGETS = {
    ("sparse_decode_fp8", 128, 128): ("TFLOPS >=", 0.7 * 392),
    ("sparse_decode_fp8", 128, 16): ("us <=", 77.0),
    ("sparse_decode_fp8", 128, 8): ("us <=", 77.0),
    ("sparse_prefill_bf16", None, 128): ("TFLOPS >=", 0.7 * 561),
}


def decode_flops(b, s_q, h_q, topk):
    return 2 * b * s_q * h_q * topk * (D + DV)


def decode_bytes(b, s_q, h_q, topk, fp8):
    return b * s_q * topk * (656 if fp8 else 2 * D) + b * s_q * h_q * (D + DV) * 2


def prefill_flops(s_q, h_q, topk):
    return 2 * s_q * h_q * topk * (D + DV)


def _quantize(cache, chunk=1 << 20):
    """bf16 [nb, 64, 1, 576] -> FP8 layout [nb, 64, 1, 656] uint8, in chunks of tokens (the torch oracle)."""
    from .fp8 import quantize_latent

    flat = cache.view(-1, D)
    out = torch.empty(flat.shape[0], 656, dtype=torch.uint8, device=cache.device)
    for i in range(0, flat.shape[0], chunk):
        part = flat[i:i + chunk]
        out[i:i + chunk] = quantize_latent(part[:, :DV], part[:, DV:])
    return out.view(*cache.shape[:3], 656)


def make_decode_case(b, s_q, h_q, topk, s_kv, fp8, seed=0, device="cuda", dtype=torch.bfloat16):
    g = torch.Generator(device=device).manual_seed(seed)
    pages = s_kv // PAGE
    nb = b * pages
    cache = torch.randn(nb, PAGE, 1, D, device=device, dtype=dtype, generator=g)
    if fp8:
        cache = _quantize(cache)
    block_table = torch.randperm(nb, device=device, generator=g).view(b, pages)
    tok = torch.stack([torch.randperm(s_kv, device=device, generator=g)[:topk] for _ in range(b * s_q)])
    tok = tok.view(b, s_q * topk)
    indices = (block_table.gather(1, tok // PAGE) * PAGE + tok % PAGE).view(b, s_q, topk).to(torch.int32)
    indices[:, :, -7:] = -1  # a few invalid entries, as the anchors
    q = torch.randn(b, s_q, h_q, D, device=device, dtype=dtype, generator=g)
    return q, cache, indices


def make_prefill_case(s_q, h_q, topk, s_kv, seed=0, device="cuda", dtype=torch.bfloat16):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(s_q, h_q, D, device=device, dtype=dtype, generator=g)
    kv = torch.randn(s_kv, 1, D, device=device, dtype=dtype, generator=g)
    indices = torch.stack([torch.randperm(s_kv, device=device, generator=g)[:topk] for _ in range(s_q)])
    return q, kv, indices.view(s_q, 1, topk).to(torch.int32)


def _time(run, graph=True):
    import triton

    ms = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
    graph_ms = float("nan")
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run()
        graph_ms = triton.testing.do_bench(g.replay, warmup=25, rep=200, return_mode="median")
    return ms, graph_ms


def _decode_run(q, cache, indices, fp8):
    import triton_mla as tm

    md = tm.get_mla_metadata()[0]
    return functools.partial(tm.flash_mla_with_kvcache, q, cache, None, None, DV, md, None,
                             softmax_scale=D ** -0.5, causal=False, is_fp8_kvcache=fp8, indices=indices)


def _prefill_run(q, kv, indices):
    from .sparse import flash_mla_sparse_fwd

    return functools.partial(flash_mla_sparse_fwd, q, kv, indices, D ** -0.5)


def _decode_err(out, q, cache, indices, fp8):
    """Relative error of the first sequence against the float32 oracle."""
    from .fp8 import dequantize_latent
    from .reference import sparse_decode_ref

    flat = cache.view(-1, cache.shape[-1])
    ids = indices[:1].long()
    used = ids[ids >= 0].unique()
    # dequantize only the tokens used: remap ids into a small cache
    remap = torch.full((flat.shape[0],), -1, dtype=torch.long, device=ids.device)
    remap[used] = torch.arange(len(used), device=ids.device)
    sub = flat[used]
    sub = dequantize_latent(sub) if fp8 else sub.float()
    local = torch.where(ids >= 0, remap[ids.clamp(min=0)], -1).to(torch.int32)
    ref, _ = sparse_decode_ref(q[:1], sub.view(-1, 1, 1, D), local, DV, D ** -0.5, dtype=torch.float32)
    return ((out[:1].float() - ref).norm() / ref.norm()).item()


def _prefill_err(out, q, kv, indices):
    from .reference import sparse_prefill_ref

    ref, _, _ = sparse_prefill_ref(q[:8], kv, indices[:8], D ** -0.5, DV, dtype=torch.float32)
    return ((out[:8].float() - ref).norm() / ref.norm()).item()


def bench_decode(shapes, fp8, check=True, graph=True, log=print):
    kind = "sparse_decode_fp8" if fp8 else "sparse_decode_bf16"
    rows = []
    for b, s_q, h_q, topk, s_kv in shapes:
        q, cache, indices = make_decode_case(b, s_q, h_q, topk, s_kv, fp8)
        run = _decode_run(q, cache, indices, fp8)
        out = run()[0]
        torch.cuda.synchronize()
        row = dict(kind=kind, b=b, s_q=s_q, h_q=h_q, topk=topk, s_kv=s_kv)
        if check:
            row["rel_err"] = _decode_err(out, q, cache, indices, fp8)
        ms, graph_ms = _time(run, graph)
        row.update(us=ms * 1e3, graph_us=graph_ms * 1e3, TFLOPS=decode_flops(b, s_q, h_q, topk) / ms / 1e9,
                   GBps=decode_bytes(b, s_q, h_q, topk, fp8) / ms / 1e6)
        rows.append(row)
        log(json.dumps(row))
        q = cache = indices = run = out = None
        torch.cuda.empty_cache()
    return rows


def bench_prefill(shapes, check=True, graph=True, log=print):
    rows = []
    for s_q, h_q, topk, s_kv in shapes:
        q, kv, indices = make_prefill_case(s_q, h_q, topk, s_kv)
        run = _prefill_run(q, kv, indices)
        out = run()[0]
        torch.cuda.synchronize()
        row = dict(kind="sparse_prefill_bf16", s_q=s_q, h_q=h_q, topk=topk, s_kv=s_kv)
        if check:
            row["rel_err"] = _prefill_err(out, q, kv, indices)
        ms, graph_ms = _time(run, graph)
        row.update(us=ms * 1e3, graph_us=graph_ms * 1e3, TFLOPS=prefill_flops(s_q, h_q, topk) / ms / 1e9)
        rows.append(row)
        log(json.dumps(row))
        q = kv = indices = run = out = None
        torch.cuda.empty_cache()
    return rows


# -- peers and the table ---------------------------------------------------------------------------------
def load_peers(device_name):
    tag = "h200" if "H200" in device_name else "h100" if "H100" in device_name else None
    path = PEERS_DIR / f"sparse_{tag}.json"
    if tag is None or not path.exists():
        return {}
    return {_key(r): r for r in json.loads(path.read_text())["rows"] if "us" in r}


def _key(r):
    # bf16-cache decode is compared with FlashMLA's FP8 figure (FlashMLA's sparse decode reads FP8 only)
    kind = "sparse_decode_fp8" if r["kind"].startswith("sparse_decode") else r["kind"]
    return kind, r.get("b"), r["s_q"], r["h_q"], r["topk"]


def _target(r):
    t = TARGETS.get((r["kind"], r.get("b"), r["h_q"]))
    if not t:
        return ""
    metric, bound = t
    value = r["TFLOPS"] if metric.startswith("TFLOPS") else r["us"]
    ok = value >= bound if ">=" in metric else value <= bound
    return f"{metric} {bound:.0f}: {'met' if ok else 'MISSED'}"


def format_table(rows, peers):
    head = (f"{'kind':<20} {'b':>4} {'s_q':>5} {'h_q':>4} {'topk':>5} | {'ours us':>8} {'graph':>7} {'TFLOPS':>6} "
            f"{'GB/s':>6} {'err':>7} | {'FlashMLA us':>11} {'x':>5} | target")
    lines = [head, "-" * len(head)]
    for r in rows:
        fm = peers.get(_key(r))
        if fm:
            pad = " (h_q padded to 64)" if fm.get("padded_to_h_q") else ""
            fm_s = f"{fm['us']:11.1f} {fm['us'] / r['us']:5.2f}{pad}"
        else:
            fm_s = f"{'-':>11} {'-':>5}"
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        gbs = f"{r['GBps']:6.0f}" if "GBps" in r else f"{'-':>6}"
        lines.append(f"{r['kind']:<20} {r.get('b') or '-':>4} {r['s_q']:>5} {r['h_q']:>4} {r['topk']:>5} | "
                     f"{r['us']:8.1f} {r['graph_us']:7.1f} {r['TFLOPS']:6.0f} {gbs} {err:>7} | {fm_s} | {_target(r)}")
    lines.append("x = FlashMLA time / our time (above 1: we are faster); FlashMLA's sparse decode reads an FP8 cache, "
                 "so bf16-cache rows are set beside its FP8 figure")
    return "\n".join(lines)


# -- config overrides and the sweep ---------------------------------------------------------------------
def parse_sets(items):
    """["BLOCK_N=32", "FP8_num_stages=3"] -> {"BLOCK_N": 32, "FP8_num_stages": 3}."""
    fields = {}
    for item in items or ():
        key, _, value = item.partition("=")
        fields[key] = json.loads(value)
    return fields


def sweep_candidates(kind, h_q):
    """Small grids around the shipped configs (H100): tile, warps, stages, programs per SM."""
    if kind == "sparse_prefill_bf16":
        heads = [16, 32] if h_q <= 16 else [64]
        for bh, bn, w, s in itertools.product(heads, [32, 64], [4, 8], [1, 2, 3]):
            yield dict(BLOCK_H=bh, BLOCK_N=bn, num_warps=w, num_stages=s)
        return
    # the FP8 kernel reads its own FP8_<field> entries (kernels.sparse.fp8_config)
    prefix = "FP8_" if kind == "sparse_decode_fp8" else ""
    heads = [16] if h_q <= 16 else [32, 64] if h_q <= 64 else [64]
    pps = [1, 2, 4] if h_q <= 16 else [1, 2]
    for bh, bn, w, s, p in itertools.product(heads, [32, 64], [4, 8], [1, 2, 3], pps):
        cand = dict(BLOCK_H=bh, BLOCK_N=bn, num_warps=w, num_stages=s, PROGRAMS_PER_SM=p)
        yield {prefix + k: v for k, v in cand.items()}


def shapes_of(kind, quick=False, picks=None):
    """The anchor shapes of ``kind``: all, the quick subset, or those at the indices ``picks``."""
    prefill = kind == "sparse_prefill_bf16"
    every = PREFILL_SHAPES if prefill else DECODE_SHAPES
    if picks:
        return [every[i] for i in picks if i < len(every)]
    return (QUICK_PREFILL if prefill else QUICK_DECODE) if quick else every


def sweep(kinds, quick, picks=None, log=print):
    from . import configs

    best = []
    for kind in kinds:
        for shape in shapes_of(kind, quick, picks):
            if kind == "sparse_prefill_bf16":
                q, kv, indices = make_prefill_case(*shape)
                run = _prefill_run(q, kv, indices)
                h_q = shape[1]
            else:
                q, kv, indices = make_decode_case(*shape, fp8=kind == "sparse_decode_fp8")
                run = _decode_run(q, kv, indices, kind == "sparse_decode_fp8")
                h_q = shape[2]
            results = []
            for cand in sweep_candidates(kind, h_q):
                try:
                    with configs.overridden(**cand):
                        run()
                        torch.cuda.synchronize()
                        ms, _ = _time(run, graph=False)
                except Exception as e:  # a candidate that does not compile or fit is skipped
                    log(json.dumps(dict(kind=kind, shape=shape, cand=cand, error=f"{type(e).__name__}")))
                    continue
                results.append((ms, cand))
                log(json.dumps(dict(kind=kind, shape=shape, cand=cand, us=round(ms * 1e3, 2))))
            if results:
                ms, cand = min(results, key=lambda x: x[0])
                best.append(dict(kind=kind, shape=shape, us=round(ms * 1e3, 2), config=cand))
                log(f"# best {kind} {shape}: {ms * 1e3:.1f} us with {cand}")
            q = kv = indices = run = None
            torch.cuda.empty_cache()
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m triton_mla.bench_sparse")
    ap.add_argument("--only", default="decode_fp8,decode_bf16,prefill",
                    help="comma list of decode_fp8, decode_bf16, prefill")
    ap.add_argument("--quick", action="store_true", help="three decode shapes and one prefill shape")
    ap.add_argument("--shape", type=int, action="append", default=None, metavar="I",
                    help="only the I-th anchor shape of each kind (decode 0-5, prefill 0-2); repeatable")
    ap.add_argument("--out", default=None, help="write rows and device info as JSON")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a launch-config field for every shape (FP8_BLOCK_N, FP8_num_warps, "
                    "FP8_num_stages for the FP8 kernel)")
    ap.add_argument("--sweep", action="store_true", help="time a grid of configs per shape, print the best")
    ap.add_argument("--no-check", action="store_true", help="skip the reference comparison")
    ap.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph timing")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: the sparse benchmark needs one (tests/test_sparse.py runs on CPU)")
        return 1
    import triton

    from . import configs

    kinds = {"decode_fp8": "sparse_decode_fp8", "decode_bf16": "sparse_decode_bf16", "prefill": "sparse_prefill_bf16"}
    only = [kinds[k] for k in args.only.split(",") if k]
    dev = torch.cuda.get_device_properties(0)
    info = dict(device=dev.name, sms=dev.multi_processor_count, torch=torch.__version__, triton=triton.__version__,
                commit=git_commit(), time=time.strftime("%Y-%m-%d %H:%M:%S"),
                command="python -m triton_mla.bench_sparse " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps(info), flush=True)
    log = lambda s: print(s, flush=True)
    if args.sweep:
        best = sweep(only, args.quick, args.shape, log)
        if args.out:
            Path(args.out).write_text(json.dumps(dict(info=info, best=best), indent=1) + "\n")
        return 0
    fields = parse_sets(args.set)
    rows = []
    with configs.overridden(**fields):
        for kind in only:
            shapes = shapes_of(kind, args.quick, args.shape)
            if kind == "sparse_prefill_bf16":
                rows += bench_prefill(shapes, not args.no_check, not args.no_graph, log)
            else:
                rows += bench_decode(shapes, kind == "sparse_decode_fp8", not args.no_check, not args.no_graph, log)
    print(format_table(rows, load_peers(dev.name)))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(info=info, overrides=fields, rows=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
