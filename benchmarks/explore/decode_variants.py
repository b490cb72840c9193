"""A/B launch variants of the dense decode kernels on one GPU: correctness, then time, per shape.

    PYTHONPATH=. python3 benchmarks/explore/decode_variants.py benchmarks/explore/decode_variants.json

A variant is a dict of config overrides (``triton_mla.configs.overridden``); ``_rows`` limits it to those
query-row counts (s_q * h_q) and ``_fp8`` to the bf16 (false) or FP8 (true) cache. Each line: relative error
on a small fresh varlen case (lengths 0 and 1 included), then the median time at b=128, s_k=8192.
"""

import json
import sys

import torch
import triton

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import decode_bytes, decode_flops, fp8_cache_of, fp8_rel_err, make_decode_case
from triton_mla.reference import decode_ref

# (FP8 cache, h_q, s_q)
SHAPES = [(False, 16, 1), (False, 32, 1), (False, 16, 2), (False, 64, 1), (False, 128, 1), (False, 128, 2),
          (True, 16, 1), (True, 64, 1), (True, 128, 1)]


def check(variant, fp8, h_q, s_q):
    q, k_cache, block_table, lens = make_decode_case(8, 1000, h_q, s_q, True, seed=1)
    lens[0], lens[1] = 0, 1
    causal = s_q > 1
    with configs.overridden(**variant):
        if fp8:
            fp8_cache = fp8_cache_of(k_cache)
            out, _ = tm.flash_mla_with_kvcache(q, fp8_cache, block_table, lens, 512, causal=causal,
                                               is_fp8_kvcache=True)
            return fp8_rel_err(out, q, fp8_cache, block_table, lens, causal, 576 ** -0.5, q.shape[0])
        out, _ = tm.flash_mla_with_kvcache(q, k_cache, block_table, lens, 512, causal=causal)
    ref, _ = decode_ref(q.double(), k_cache.double(), block_table, lens, 512, 576 ** -0.5, causal)
    return ((out.double() - ref).norm() / ref.norm()).item()


def time(variant, fp8, b, s_k, h_q, s_q):
    q, k_cache, block_table, lens = make_decode_case(b, s_k, h_q, s_q, False)
    if fp8:
        k_cache = fp8_cache_of(k_cache)
    with configs.overridden(**variant):
        def run():
            return tm.flash_mla_with_kvcache(q, k_cache, block_table, lens, 512, causal=s_q > 1, is_fp8_kvcache=fp8)
        run()
        torch.cuda.synchronize()
        ms = triton.testing.do_bench(run, warmup=20, rep=100, return_mode="median")
    total = int(lens.sum())
    gbs = decode_bytes(b, s_q, h_q, total, cache_bytes_per_token=656 if fp8 else None) / ms / 1e6
    return ms * 1e3, gbs, decode_flops(s_q, h_q, total) / ms / 1e9


def main(path):
    variants = json.load(open(path))
    for fp8, h_q, s_q in SHAPES:
        for name, v in variants.items():
            if h_q * s_q not in v.get("_rows", [h_q * s_q]) or v.get("_fp8", fp8) != fp8:
                continue
            overrides = {k: x for k, x in v.items() if not k.startswith("_")}
            label = f"{'fp8 ' if fp8 else 'bf16'} h{h_q:<3} s{s_q} {name:<14}"
            try:
                err = check(overrides, fp8, h_q, s_q)
                us, gbs, tflops = time(overrides, fp8, 128, 8192, h_q, s_q)
            except Exception as e:  # a variant that does not compile or launch is reported, not fatal
                print(f"{label} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            print(f"{label} err {err:.1e}  {us:8.1f} us  {gbs:6.0f} GB/s  {tflops:5.0f} TF", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
