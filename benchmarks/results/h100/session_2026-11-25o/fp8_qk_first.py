"""Sparse FP8 decode (64-row kernel): S issued before or after the next raw copy, alternated twice (CUDA graph).
Needs the ``FP8_QK_FIRST`` switch this session tried in ``decode_sm90._attend`` (an ``FP8_QK_FIRST`` constexpr there,
``QK_FIRST`` in ``_sparse_sm90_kernel``, the entry's ``FP8_QK_FIRST``), removed after this run: 4-6% slower.

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25o/fp8_qk_first.py
"""
import torch

from triton_mla import bench_sparse as bs
from triton_mla import configs

for b, s_q, h, topk, s_kv in [(128, 2, 128, 2048, 32768), (64, 2, 128, 2048, 32768), (128, 1, 64, 2048, 32768),
                              (2, 2, 128, 2048, 32768)]:
    small = bs.make_decode_case(b, s_q, h, topk, 4096, True, seed=1)
    big = bs.make_decode_case(b, s_q, h, topk, s_kv, True, seed=0)
    res = {False: [], True: []}
    for _ in range(2):
        for qf in (False, True):
            with configs.overridden(FP8_QK_FIRST=qf):
                err = bs._decode_err(bs._decode_run(*small, True)()[0], *small, True)
                assert err < 1e-2, err
                res[qf].append(bs._time(bs._decode_run(*big, True))[1] * 1e3)
    fl = bs.decode_flops(b, s_q, h, topk)
    a, c = min(res[False]), min(res[True])
    print(f"fp8 b{b} s_q{s_q} h{h}: after {a:7.1f} us ({fl / a / 1e6:5.1f} TF) "
          f"first {c:7.1f} us ({fl / c / 1e6:5.1f} TF) {res}", flush=True)
    small = big = None
    torch.cuda.empty_cache()
