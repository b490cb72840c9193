"""The plan's aligned-parts rule at b = 8 (s_k = 8192: 66 -> 64 parts, 8 a sequence) against no rule, in alternating
processes (the rule's key limit is a constexpr read at compile time: 0 turns it off); CUDA-graph times, each output
checked first.

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25q/align_b8.py
"""
import subprocess
import sys
from pathlib import Path

SHAPES = [(8, 8192, 128, 1), (8, 8192, 64, 2), (8, 8192, 16, 1), (16, 8192, 128, 1), (32, 4096, 128, 1)]


def child(off):
    sys.path.insert(0, str(Path(__file__).parents[1] / "session_2026-11-25n"))
    if off:
        import triton.language as tl
        from triton.experimental.gluon import language as gl

        from triton_mla.kernels import _common, decode_sm90
        _common.ALIGN_MAX_KEYS = tl.constexpr(0)
        decode_sm90.ALIGN_MAX_KEYS = gl.constexpr(0)
    from cross import checked_graph_us

    from triton_mla.bench import make_decode_case
    for b, s_k, h, s_q in SHAPES:
        us = min(checked_graph_us(make_decode_case(b, s_k, h, s_q, False), s_q, h)[0] for _ in range(2))
        print(f"{us:.2f}", flush=True)


def main():
    runs = []
    for off in (1, 0, 1, 0):
        out = subprocess.check_output([sys.executable, __file__, str(off)], text=True)
        runs.append([float(x) for x in out.split()])
    print(f"{'b':>4} {'s_k':>6} {'h':>4} {'s_q':>3} | {'no rule':>16} | {'rule':>16} | rule/no rule")
    for i, (b, s_k, h, s_q) in enumerate(SHAPES):
        off = [runs[0][i], runs[2][i]]
        on = [runs[1][i], runs[3][i]]
        print(f"{b:>4} {s_k:>6} {h:>4} {s_q:>3} | {off[0]:7.1f} {off[1]:7.1f}  | {on[0]:7.1f} {on[1]:7.1f}  | "
              f"{min(on) / min(off):.3f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(int(sys.argv[1]))
    else:
        main()
