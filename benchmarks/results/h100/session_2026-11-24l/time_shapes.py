"""Time decode_sm90_variants.py variants on shapes, no correctness check (run from the repo root):

    python3 benchmarks/results/h100/session_2026-11-24l/time_shapes.py NAMES N_FIRST_SHAPES|"b,s_k,h,s_q;..."
"""

import sys

sys.path.insert(0, "benchmarks/explore")
import decode_sm90_variants as v  # noqa: E402

names = sys.argv[1].split(",")
spec = sys.argv[2]
shapes = [tuple(int(x) for x in t.split(",")) for t in spec.split(";")] if "," in spec else v.SHAPES[: int(spec)]
print(f"{'b':>4} {'s_k':>5} {'h':>4} {'s_q':>3} | " + " | ".join(f"{n:>14}" for n in names), flush=True)
for b, s_k, h_q, s_q in shapes:
    cells = [v.time_us(v.VARIANTS[n], b, s_k, h_q, s_q) for n in names]
    row = " | ".join(f"{us:7.1f} {tf:4.0f}TF" for us, tf in cells)
    print(f"{b:>4} {s_k:>5} {h_q:>4} {s_q:>3} | {row}", flush=True)
