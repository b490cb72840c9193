"""Warpgroup 1 copying B's dims [256, 512) before its wait for P_A (COPY_FIRST_WG1) against the shipped entries,
alternated twice; CUDA-graph times, checked against the reference. Needs the ``COPY_FIRST_WG1`` switch this session
tried in ``decode_sm90_ws`` (removed after the run: within +-2%, mixed). From the repo root:

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25o/copy_first_wg1.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from combine_forms import checked_graph_us  # noqa: E402

from triton_mla import configs  # noqa: E402
from triton_mla.bench import make_decode_case  # noqa: E402

print("shape: shipped | COPY_FIRST_WG1 (x2) | both off + WG1", flush=True)
for b, s_k, h, s_q in [(128, 8192, 128, 2), (128, 4096, 128, 2), (128, 8192, 64, 4), (128, 8192, 128, 1),
                       (128, 4096, 128, 1), (128, 8192, 64, 2), (64, 8192, 128, 1)]:
    case = make_decode_case(b, s_k, h, s_q, False)
    res = []
    for var in ({}, dict(COPY_FIRST_WG1=True)) * 2 + (dict(COPY_FIRST=False, COPY_FIRST_WG1=True),):
        with configs.overridden(**var):
            res.append(checked_graph_us(case, s_q, h)[0])
    print(f"b{b} s_k{s_k} h{h} s_q{s_q}: " + " ".join(f"{r:8.1f}" for r in res)
          + f" | wg1/shipped {min(res[1], res[3]) / min(res[0], res[2]):.3f}", flush=True)
