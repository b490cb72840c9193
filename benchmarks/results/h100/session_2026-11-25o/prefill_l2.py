"""Sparse prefill by the size of kv (L2-resident or not): the lockstep kernel against the ws kernel without and with
COPY_FIRST, CUDA-graph times. From the repo root:

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25o/prefill_l2.py
"""
import torch

from triton_mla import bench_sparse as bs
from triton_mla import configs

print(torch.cuda.get_device_name(0), "L2", torch.cuda.get_device_properties(0).L2_cache_size >> 20, "MB", flush=True)
for h in (128, 64):
    for s_kv in (16384, 32768, 49152, 65536, 131072, 262144):
        case = bs.make_prefill_case(4096, h, 2048, s_kv, seed=0)
        res = []
        for var in (dict(WS=False), dict(WS=True, COPY_FIRST=False), dict(WS=True, COPY_FIRST=True)):
            with configs.overridden(WGMMA=True, **var):
                run = bs._prefill_run(*case)
                run()
                res.append(bs._time(run)[1] * 1e3)
        tf = [bs.prefill_flops(4096, h, 2048) / us / 1e6 for us in res]
        print(f"h{h:<4} s_kv {s_kv:>7} ({s_kv * 1152 >> 20:4d} MB) | lock {res[0]:8.1f} ws {res[1]:8.1f} "
              f"ws_cf {res[2]:8.1f} us | TF {tf[0]:5.0f} {tf[1]:5.0f} {tf[2]:5.0f}", flush=True)
        case = None
        torch.cuda.empty_cache()
