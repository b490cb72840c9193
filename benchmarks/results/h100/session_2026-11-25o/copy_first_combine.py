"""(1) COPY_FIRST at 128 and 256 rows with this session's ws loop (the shipped entry, then COPY_FIRST on, off;
twice); (2) first look at the combine's blocks at small batch (``combine_forms.py`` then took more forms). Graph
times, each output checked against the reference first. From the repo root:

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25o/copy_first_combine.py

(The run had the second part inline, as ``combine_forms.forms_table`` now does it; the log's lines are its output.)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from combine_forms import checked_graph_us, forms_table  # noqa: E402

from triton_mla import configs  # noqa: E402
from triton_mla.bench import make_decode_case  # noqa: E402

print("COPY_FIRST at 256 / 128 rows (b=128): shipped | COPY_FIRST on | off", flush=True)
for b, s_k, h, s_q in [(128, 8192, 128, 2), (128, 4096, 128, 2), (128, 8192, 64, 4), (128, 8192, 128, 1),
                       (128, 4096, 128, 1), (128, 8192, 64, 2)]:
    case = make_decode_case(b, s_k, h, s_q, False)
    res = []
    for var in ({}, dict(COPY_FIRST=True), dict(COPY_FIRST=False)) * 2:
        with configs.overridden(**var):
            res.append(checked_graph_us(case, s_q, h)[0])
    print(f"b{b} s_k{s_k} h{h} s_q{s_q}: " + " ".join(f"{r:8.1f}" for r in res), flush=True)

print("combine blocks at small batch (graph us): shipped, then fixed (BLOCK_H, BLOCK_DV, PARTS)", flush=True)
forms_table([(8, 8192, 128, 1), (8, 8192, 64, 2), (1, 8192, 128, 1), (8, 8192, 16, 1)],
            [None, (4, 64, 16), (2, 128, 16), (8, 128, 8), (4, 256, 16), (2, 64, 16), (1, 128, 16)],
            label_parts=False)
