"""What splitting sequences costs at b = 128 (uniform lengths): the shipped part count (66 at 128 rows: part
boundaries cut sequences, ~2.9 segments a program, a combine of 65 split sequences) against a count whose boundaries
fall on sequence ends (64: two whole sequences a part, 2 segments, nothing to combine, 128 of 132 SMs busy), each
output checked against the reference; CUDA-graph times.

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25p/aligned_parts.py
"""
import functools

import triton_mla as tm
from triton_mla import api
from triton_mla.bench import DV, D, _time, make_decode_case
from triton_mla.reference import decode_ref

shipped = api._num_parts
SHAPES = [(128, 4096, 128, 1, 64), (128, 8192, 128, 1, 64), (128, 4096, 128, 2, 32), (128, 8192, 128, 2, 32),
          (128, 4096, 64, 2, 64), (128, 8192, 64, 2, 64), (128, 4096, 32, 1, 128), (128, 4096, 16, 1, 256)]
print(f"{'b':>4} {'s_k':>6} {'h':>4} {'s_q':>3} | parts  graph us | parts  graph us | aligned/shipped", flush=True)
for b, s_k, h, s_q, aligned in SHAPES:
    q, k_cache, block_table, lens = make_decode_case(b, s_k, h, s_q, False)
    res = []
    for n in (None, aligned, None, aligned):
        api._num_parts = shipped if n is None else (lambda rows, config, device, n=n: n)
        md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
        run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                                softmax_scale=D ** -0.5, causal=s_q > 1)
        out, _ = run()
        for i in (0, b // 2, b - 1):
            ref, _ = decode_ref(q[i:i + 1], k_cache, block_table[i:i + 1], lens[i:i + 1], DV, D ** -0.5, s_q > 1)
            assert ((out[i:i + 1].float() - ref).norm() / ref.norm()).item() < 1e-2
        res.append((md.shape[0], _time(run)[1] * 1e3))
    a = min(res[0][1], res[2][1])
    c = min(res[1][1], res[3][1])
    print(f"{b:>4} {s_k:>6} {h:>4} {s_q:>3} | {res[0][0]:5d} {a:9.1f} | {res[1][0]:5d} {c:9.1f} | {c / a:6.3f}",
          flush=True)
api._num_parts = shipped
