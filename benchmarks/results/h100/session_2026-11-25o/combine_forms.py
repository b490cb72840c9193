"""The combine's blocks at small batch: graph time of the whole decode call for fixed (BLOCK_H, BLOCK_DV, PARTS)
forms of ``kernels.decode.combine_blocks``, alternated twice (the min of the two), each output checked against the
reference first. From the repo root:

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25o/combine_forms.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "session_2026-11-25n"))
from cross import checked_graph_us  # noqa: E402

from triton_mla.bench import make_decode_case  # noqa: E402
from triton_mla.kernels import decode as dk  # noqa: E402

FORMS = [None, (8, 128, 8), (4, 128, 8), (8, 64, 8), (16, 128, 4), (8, 128, 16), (16, 64, 8), (16, 128, 8),
         (8, 256, 8), (4, 128, 4)]  # None: the shipped rule
SHAPES = [(8, 8192, 128, 1), (8, 8192, 64, 2), (8, 8192, 16, 1), (4, 8192, 128, 1), (16, 8192, 128, 1),
          (32, 4096, 16, 1), (1, 8192, 128, 1), (2, 8192, 128, 1)]


def forms_table(shapes, forms, label_parts=True):
    """One line a shape: each form's graph time (us), the min over two alternations."""
    shipped = dk.combine_blocks
    for b, s_k, h, s_q in shapes:
        case = make_decode_case(b, s_k, h, s_q, False)
        times = [[], []]
        md = None
        for rep in range(2):
            for form in forms:
                dk.combine_blocks = shipped if form is None else (lambda *a, f=form: f)
                us, md = checked_graph_us(case, s_q, h)
                times[rep].append(us)
        dk.combine_blocks = shipped
        head = f"b{b} s_k{s_k} h{h} s_q{s_q}"
        if label_parts:
            head += f" (parts {md.shape[0]}, shipped {shipped(b, s_q * h, md.shape[0], 512, 132)})"
        print(f"{head}: " + " ".join(f"{f or ('shipped' if label_parts else None)}:{min(a, c):.1f}"
                                     for f, a, c in zip(forms, *times, strict=True)), flush=True)


if __name__ == "__main__":
    forms_table(SHAPES, FORMS)
