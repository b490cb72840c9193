"""Sparse FP8 decode: A/B the FP8 kernel's loop variants (config overrides) on the anchor shapes.

    PYTHONPATH=. python benchmarks/explore/sparse_decode_variants.py            # H100, ~2 min
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/explore/sparse_decode_variants.py   # CPU dry run, tiny shapes

For each shape: a fresh small random case (same b, s_q, h_q, topk, so the same split plan and compiled kernel,
but 4096 tokens per sequence) is checked against the float32 oracle (rel err of the first sequence), then the
anchor shape is timed with do_bench (median). One line per (shape, variant); a variant that errors prints FAILED.
"""
import sys
import time
import traceback

import torch
import triton

from triton_mla import bench_sparse as bs
from triton_mla import configs

GPU = torch.cuda.is_available()
DEV = "cuda" if GPU else "cpu"
DTYPE = torch.bfloat16 if GPU else torch.float16  # the interpreter computes bf16 wrongly

BASE = {}
DUAL = dict(FP8_DUAL_LOAD=True)                                               # tiles cp.async, 1 chunk ahead
DUAL_PF1_S3 = dict(FP8_DUAL_LOAD=True, FP8_PREFETCH_IDS=1, FP8_num_stages=3)  # tiles 2 chunks ahead, idx sync
DUAL_PF2_S2 = dict(FP8_DUAL_LOAD=True, FP8_PREFETCH_IDS=2, FP8_num_stages=2)  # tiles 1 ahead, idx hidden
PF1_S3 = dict(FP8_PREFETCH_IDS=1, FP8_num_stages=3)                           # h=128 (wgmma): 2-deep buffers
PF2_S2 = dict(FP8_PREFETCH_IDS=2, FP8_num_stages=2)
SMALL_H = {"base": BASE, "dual": DUAL, "dual_pf1_s3": DUAL_PF1_S3, "dual_pf2_s2": DUAL_PF2_S2, "pf1_s3": PF1_S3}
LARGE_H = {"base": BASE, "pf1_s3": PF1_S3, "pf2_s2": PF2_S2}

# (b, s_q, h_q, topk, s_kv), FP8 cache; the anchors' targets: h 16 and 8 <= 77 us, h 128 >= 275 TFLOPS
SHAPES = [((128, 1, 16, 2048, 32768), SMALL_H), ((128, 1, 8, 2048, 32768), SMALL_H),
          ((128, 2, 128, 2048, 32768), LARGE_H)]
CHECK_S_KV = 4096
if not GPU:  # dry run: tiny shapes through the interpreter
    SHAPES = [((2, 1, 16, 64, 256), SMALL_H), ((1, 2, 128, 64, 128), LARGE_H)]
    CHECK_S_KV = 128


def timed(fn):
    if GPU:
        return triton.testing.do_bench(fn, warmup=20, rep=100, return_mode="median")
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def main():
    if GPU:
        print(torch.cuda.get_device_name(0), "triton", triton.__version__, flush=True)
    t0 = time.time()
    for (b, s_q, h_q, topk, s_kv), variants in SHAPES:
        small = bs.make_decode_case(b, s_q, h_q, topk, CHECK_S_KV, True, seed=1, device=DEV, dtype=DTYPE)
        big = bs.make_decode_case(b, s_q, h_q, topk, s_kv, True, seed=0, device=DEV, dtype=DTYPE)
        run_small = bs._decode_run(*small, True)
        run_big = bs._decode_run(*big, True)
        tag = f"fp8 b{b} s_q{s_q} h{h_q:<3} topk{topk}"
        for name, var in variants.items():
            try:
                with configs.overridden(**var):
                    out = run_small()[0]
                    err = bs._decode_err(out, *small, True)
                    run_big()
                    if GPU:
                        torch.cuda.synchronize()
                    ms = timed(run_big)
                gbs = bs.decode_bytes(b, s_q, h_q, topk, True) / ms / 1e6
                tf = bs.decode_flops(b, s_q, h_q, topk) / ms / 1e9
                print(f"{tag} {name:<12} err {err:.1e} {ms * 1e3:8.1f} us {gbs:6.0f} GB/s {tf:6.1f} TFLOPS", flush=True)
            except Exception as e:  # noqa: BLE001 - a variant that fails to compile or run is reported, not fatal
                print(f"{tag} {name:<12} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                if "-v" in sys.argv:
                    traceback.print_exc()
        small = big = run_small = run_big = None
        if GPU:
            torch.cuda.empty_cache()
    print(f"total {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
