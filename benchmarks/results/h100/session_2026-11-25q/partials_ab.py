"""Split sequences' partial rows in float32 (as before) against the output's 16-bit dtype (``decode.PARTIALS_16BIT``):
CUDA-graph times of the whole call, alternated twice in one process, and each output's relative error against the
float64 reference on sequences of the batch (the split ones among them), bf16 cache and FP8 cache.

    git apply benchmarks/results/h100/session_2026-11-25q/partials_16bit.diff
    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25q/partials_ab.py
"""
import functools

import torch

import triton_mla as tm
from triton_mla.bench import DV, D, _time, fp8_cache_of, make_decode_case
from triton_mla.kernels import decode
from triton_mla.reference import decode_ref

SHAPES = [(1, 8192, 128, 1, False), (8, 8192, 128, 1, False), (8, 8192, 64, 2, False), (32, 4096, 16, 1, False),
          (128, 8192, 16, 1, False), (128, 8192, 16, 1, True), (128, 8192, 32, 2, False), (128, 8192, 64, 1, False),
          (128, 8192, 128, 1, False), (128, 8192, 128, 1, True), (128, 4096, 128, 1, True), (128, 8192, 128, 2, False),
          (128, 8192, 64, 2, False), (128, 8192, 16, 1, False, "fp8"), (128, 8192, 128, 1, False, "fp8")]


def rel_err(out, q, k_ref, block_table, lens, causal, idx):
    ref, _ = decode_ref(q[idx], k_ref, block_table[idx], lens[idx], DV, D ** -0.5, causal)
    return ((out[idx].float() - ref).norm() / ref.norm()).item()


def main():
    print(f"{'b':>4} {'s_k':>6} {'h':>4} {'s_q':>3} {'var':>3} {'fp8':>3} | {'fp32 partials us':>17} | "
          f"{'16-bit us':>15} | ratio | err fp32   err 16-bit", flush=True)
    for b, s_k, h, s_q, varlen, *fp8 in SHAPES:
        fp8 = bool(fp8)
        q, k_cache, block_table, lens = make_decode_case(b, s_k, h, s_q, varlen)
        k_ref = k_cache
        if fp8:
            k_cache = fp8_cache_of(k_cache)
            k_ref = tm.dequantize_latent(k_cache)
        md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
        run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                                softmax_scale=D ** -0.5, causal=s_q > 1, is_fp8_kvcache=fp8)
        idx = torch.tensor(sorted({i for i in (0, 1, b // 2, b - 1) if i < b}), device=q.device)
        res, errs = [], []
        for flag in (False, True, False, True):
            decode.PARTIALS_16BIT = flag
            out, _ = run()
            if len(errs) < 2:
                errs.append(rel_err(out, q, k_ref, block_table, lens, s_q > 1, idx))
                assert errs[-1] < 1e-2, errs
            res.append(_time(run)[1] * 1e3)
        decode.PARTIALS_16BIT = True
        old, new = min(res[0], res[2]), min(res[1], res[3])
        print(f"{b:>4} {s_k:>6} {h:>4} {s_q:>3} {int(varlen):>3} {int(fp8):>3} | {res[0]:8.1f} {res[2]:8.1f} | "
              f"{res[1]:7.1f} {res[3]:7.1f} | {new / old:.3f} | {errs[0]:.2e} {errs[1]:.2e}", flush=True)


if __name__ == "__main__":
    main()
