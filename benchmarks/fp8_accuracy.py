"""Decode error of the FP8 latent cache beside the 16-bit cache, against the float64 reference on the
*unquantized* latents, on random data and on data with outlier channels.

    PYTHONPATH=. python benchmarks/fp8_accuracy.py            # GPU: bf16, b = 32, s_k = 4096, h_q 16 and 128
    PYTHONPATH=. python benchmarks/fp8_accuracy.py --cpu      # interpreter: fp16, small shapes (a minute)

Prints a markdown table: relative Frobenius error ||out - ref|| / ||ref||, max |out - ref|, and the
cosine similarity of out and ref (flattened), per cache and data; the last column is the error against
the reference on the cache as stored (the kernel's own share; the rest is rounding the latents to the
cache's format). "outliers": 4 of the 512 latent channels are 100x larger (as LLM activations have),
which coarsens their groups' FP8 scale and sharpens the attention.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

D, DV = 576, 512


def _paged(tokens, lens, page_size, g):
    """Lay per-sequence tokens [sum(lens), width] out in shuffled pages: (cache, block_table)."""
    pages = [math.ceil(n / page_size) for n in lens]
    perm = torch.randperm(sum(pages), generator=g)
    block_table = torch.zeros(len(lens), max(pages), dtype=torch.int32)
    slots = torch.empty(tokens.shape[0], dtype=torch.int64)
    at = tok = 0
    for i, n in enumerate(lens):
        ids = perm[at:at + pages[i]]
        block_table[i, : pages[i]] = ids.to(torch.int32)
        pos = torch.arange(n)
        slots[tok:tok + n] = ids[pos // page_size] * page_size + pos % page_size
        at, tok = at + pages[i], tok + n
    cache = torch.zeros(sum(pages) * page_size, *tokens.shape[1:], dtype=tokens.dtype)
    cache[slots] = tokens
    return cache.view(sum(pages), page_size, 1, -1), block_table, slots


def make_latents(n, g, outliers):
    kv_c = torch.randn(n, DV, generator=g, dtype=torch.float64)
    if outliers:
        kv_c[:, torch.randperm(DV, generator=g)[:4]] *= 100.0
    return kv_c, torch.randn(n, D - DV, generator=g, dtype=torch.float64)


def errors(out, ref):
    out, ref = out.double().flatten().cpu(), ref.double().flatten().cpu()
    return dict(rel=((out - ref).norm() / ref.norm()).item(), max_abs=(out - ref).abs().max().item(),
                cos=torch.nn.functional.cosine_similarity(out, ref, dim=0).item())


def measure(b, s_k, h_q, outliers, device, dtype, s_q=1, page_size=64, seed=0):
    """Rows {cache, rel, max_abs, cos, own_rel} for the 16-bit cache (``dtype``) and the FP8 cache: errors
    against the float64 reference on the unquantized latents, and (own_rel) the relative error against
    the float64 reference on the cache as stored (dequantized), which is the kernel's own share.
    q is the same ``dtype`` tensor for both."""
    import triton_mla as tm
    from triton_mla.fp8 import dequantize_latent
    from triton_mla.reference import decode_ref

    g = torch.Generator().manual_seed(seed)
    lens = [s_k] * b
    kv_c, k_pe = make_latents(b * s_k, g, outliers)
    exact, block_table, slots = _paged(torch.cat([kv_c, k_pe], dim=1), lens, page_size, g)
    q = torch.randn(b, s_q, h_q, D, generator=g).to(dtype)
    cache_seqlens = torch.tensor(lens, dtype=torch.int32)
    ref, _ = decode_ref(q.double(), exact, block_table, cache_seqlens, DV, causal=s_q > 1, dtype=torch.float64)

    fp8_cache = torch.zeros(*exact.shape[:3], 656, dtype=torch.uint8, device=device)
    tm.write_kv_cache(fp8_cache, kv_c.float().to(device), k_pe.float().to(device), slots.to(device))
    rows = []
    for name, cache, fp8 in ((str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16"),
                              exact.to(dtype).to(device), False), ("fp8", fp8_cache, True)):
        out, _ = tm.flash_mla_with_kvcache(q.to(device), cache, block_table.to(device), cache_seqlens.to(device), DV,
                                           causal=s_q > 1, is_fp8_kvcache=fp8)
        stored = dequantize_latent(cache.cpu()) if fp8 else cache.cpu()
        own, _ = decode_ref(q.double(), stored.double(), block_table, cache_seqlens, DV, causal=s_q > 1,
                            dtype=torch.float64)
        rows.append(dict(cache=name, **errors(out, ref), own_rel=errors(out, own)["rel"]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="benchmarks/fp8_accuracy.py")
    ap.add_argument("--cpu", action="store_true", help="Triton interpreter, fp16, small shapes")
    args = ap.parse_args(argv)
    if args.cpu or not torch.cuda.is_available():
        if os.environ.get("TRITON_INTERPRET") != "1":  # must be set before Triton compiles anything
            os.execve(sys.executable, [sys.executable, *sys.argv, *([] if args.cpu else ["--cpu"])],
                      dict(os.environ, TRITON_INTERPRET="1"))
        device, dtype, shapes = "cpu", torch.float16, [(2, 256, 4), (1, 512, 16)]
        where = "CPU, Triton interpreter"
    else:
        device, dtype, shapes = "cuda", torch.bfloat16, [(32, 4096, 16), (32, 4096, 128)]
        where = torch.cuda.get_device_name()
    print(f"Decode error against the float64 reference on the unquantized latents ({where}; q {dtype}, "
          f"pages of 64, softmax_scale 576 ** -0.5, random N(0, 1) latents and queries)\n")
    print("| b | s_k | h_q | data | cache | rel. Frobenius err | max abs err | cosine | kernel's own rel. err |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b, s_k, h_q in shapes:
        for outliers in (False, True):
            for r in measure(b, s_k, h_q, outliers, device, dtype):
                print(f"| {b} | {s_k} | {h_q} | {'outliers' if outliers else 'random'} | {r['cache']} | "
                      f"{r['rel']:.2e} | {r['max_abs']:.2e} | {r['cos']:.6f} | {r['own_rel']:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
