"""Graph time with the combine launched as a programmatic dependent (PDL) or not.

    (needs the COMBINE_PDL switch of kernels/decode.py, removed after this session: kept as the record of pdl.log)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cross import checked_graph_us  # noqa: E402

from triton_mla.bench import make_decode_case  # noqa: E402
from triton_mla.kernels import decode as dk  # noqa: E402

print("shape | pdl on graph us | pdl off graph us", flush=True)
for b, s_k, h, s_q in [(1, 8192, 128, 1), (8, 8192, 128, 1), (1, 8192, 16, 1), (8, 8192, 16, 1), (1, 8192, 64, 2),
                       (128, 8192, 16, 1), (128, 8192, 128, 1), (32, 4096, 16, 1)]:
    case = make_decode_case(b, s_k, h, s_q, False)
    res = []
    for pdl in (True, False):
        dk.COMBINE_PDL = pdl
        res.append(checked_graph_us(case, s_q, h)[0])
    print(f"b{b} s_k{s_k} h{h} s_q{s_q} | {res[0]:7.1f} | {res[1]:7.1f}", flush=True)
