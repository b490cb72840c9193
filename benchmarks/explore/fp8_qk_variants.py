"""FP8 dense decode at <= 32 query rows on sm90, keys-on-M kernels (``kernels/decode_sm90_fp8.py``): the scores
from the e4m3 tile through e4m3 MMAs against Q's two e4m3 parts (config ``QK_E4M3``) against the shipped
float16 MMAs on converted keys, and the bf16 kernel, on the same cache.

    PYTHONPATH=. [VARIANTS=name,name] [SHAPES=h:s_q:s_k,...] python benchmarks/explore/fp8_qk_variants.py

Each variant is first checked on a small fresh case (every row count its shape makes, causal when s_q > 1,
lengths 0 and 1; relative error against the float64 reference on the dequantized cache, NaN fails), then timed
at b = 128 (do_bench median of the call, and replayed as a CUDA graph).
"""
import functools
import os
import time

import torch
import triton

import triton_mla as tm
from triton_mla import bench, configs

B = 128
SHAPES = [(16, 1, 8192), (16, 1, 4096), (8, 1, 8192), (32, 1, 8192), (16, 2, 8192)]  # (h_q, s_q, s_k)
VARIANTS = {
    "shipped": dict(),
    # what shipped before the twenty-second session: float16 MMAs on converted keys
    "f16 scores": dict(QK_E4M3=False, PV_PARTS_8=4, QK_WAVES_8=2),
    "e4m3": dict(QK_E4M3=True),
    "e4m3 pv4w2": dict(QK_E4M3=True, PV_PARTS_16=4, QK_WAVES_16=2),
    "e4m3 pv2w2": dict(QK_E4M3=True, PV_PARTS_16=2, QK_WAVES_16=2, PV_PARTS_8=2, QK_WAVES_8=1),
    # twenty-third session: V^T's bytes paired by key before the conversion, then also the lazy running max
    "pairs": dict(PAIR_KEYS=True),
    "pairs lazy": dict(PAIR_KEYS=True, LAZY_MAX=True),
    # one program an SM with four raw tiles (188 KB at 16 rows): more tiles in flight a program, half the programs
    "1x4 stages": dict(PARTS_PER_SM=1, RAW_STAGES=4),
    # twenty-fourth session: the combine fused into the decode kernel (the last part of a split sequence merges)
    "fused": dict(FUSED_COMBINE=True),
    "pairs lazy fused": dict(PAIR_KEYS=True, LAZY_MAX=True, FUSED_COMBINE=True),
}
if os.environ.get("VARIANTS"):  # a comma-separated subset of the names above
    VARIANTS = {k: VARIANTS[k] for k in os.environ["VARIANTS"].split(",")}
if os.environ.get("SHAPES"):
    SHAPES = [tuple(int(x) for x in s.split(":")) for s in os.environ["SHAPES"].split(",")]


def check(var, h_q, s_q):
    q, kc, bt, lens = bench.make_decode_case(8, 1000, h_q, s_q, True, seed=h_q + s_q)
    lens[0] = 0
    lens[1] = 1
    f = bench.fp8_cache_of(kc)
    with configs.overridden(**var):
        out, _ = tm.flash_mla_with_kvcache(q, f, bt, lens, 512, causal=s_q > 1, is_fp8_kvcache=True)
    if not torch.isfinite(out.float()).all():
        raise RuntimeError("non-finite output")
    return bench.fp8_rel_err(out, q, f, bt, lens, s_q > 1, 576 ** -0.5, 8)


def main():
    t0 = time.perf_counter()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
          f"commit {bench.git_commit()}  b={B}", flush=True)
    for h_q, s_q, s_k in SHAPES:
        q, kc, bt, lens = bench.make_decode_case(B, s_k, h_q, s_q, False)
        total = int(lens.sum())
        bf_ms, bf_graph = bench._time(functools.partial(tm.flash_mla_with_kvcache, q, kc, bt, lens, 512,
                                                        causal=s_q > 1))
        f = bench.fp8_cache_of(kc)
        del kc
        print(f"h={h_q} s_q={s_q} s_k={s_k}: bf16 {bf_ms * 1e3:7.1f} us, graph {bf_graph * 1e3:7.1f} us", flush=True)
        for name, var in VARIANTS.items():
            try:
                err = check(var, h_q, s_q)
                with configs.overridden(**var):
                    ms, graph = bench._time(functools.partial(tm.flash_mla_with_kvcache, q, f, bt, lens, 512,
                                                              causal=s_q > 1, is_fp8_kvcache=True))
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"  {name:<12} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            gbs = bench.decode_bytes(B, s_q, h_q, total, cache_bytes_per_token=656) / graph / 1e6
            print(f"  {name:<12} err {err:.1e}  {ms * 1e3:7.1f} us  graph {graph * 1e3:7.1f} us  {gbs:5.0f} GB/s  "
                  f"{graph / bf_graph:5.2f}x bf16", flush=True)
        del f
        torch.cuda.empty_cache()
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
