"""COPY_FIRST (warpgroup 0 copies B's first half before it issues S of A) on and off with the one-reciprocal
epilogue, whose register allocation differs from the build on which COPY_FIRST was chosen (on at 128 rows, off at
256); CUDA-graph times, alternated twice, outputs checked.

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25q/copy_first_rcp.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "session_2026-11-25n"))
from cross import checked_graph_us  # noqa: E402

from triton_mla import configs  # noqa: E402
from triton_mla.bench import make_decode_case  # noqa: E402

SHAPES = [(128, 8192, 128, 1), (128, 4096, 128, 1), (128, 8192, 64, 2), (128, 8192, 128, 2), (128, 4096, 128, 2),
          (128, 8192, 64, 4)]

print(f"{'b':>4} {'s_k':>6} {'h':>4} {'s_q':>3} | {'off':>8} {'on':>8} {'off':>8} {'on':>8} | on/off", flush=True)
for b, s_k, h, s_q in SHAPES:
    case = make_decode_case(b, s_k, h, s_q, False)
    res = []
    for on in (False, True, False, True):
        with configs.overridden(COPY_FIRST=on):
            res.append(checked_graph_us(case, s_q, h)[0])
    print(f"{b:>4} {s_k:>6} {h:>4} {s_q:>3} | " + " ".join(f"{r:8.1f}" for r in res) +
          f" | {min(res[1], res[3]) / min(res[0], res[2]):.3f}", flush=True)
