"""The ws decode before this session (c2d8867: each segment starts its copies when it starts) against the new one
(a segment's successor found ahead, its Q and first pair copied as the segment ends), beside the lockstep kernel;
CUDA-graph times, each output checked against the reference first. From the repo root (the old kernel comes from
git):

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25p/ab_prefetch.py
"""
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "session_2026-11-25o"))
from ab_ws import ab_table, kernel_at  # noqa: E402

import triton_mla as tm  # noqa: E402
from triton_mla.bench import DV, D, _time  # noqa: E402
from triton_mla.kernels import decode_sm90_ws  # noqa: E402
from triton_mla.reference import decode_ref  # noqa: E402


def checked_graph_us(case, s_q, h):
    """The call's CUDA-graph time (us) after checking sequences at both ends and in the middle of the batch (the
    later segments of a part are the ones whose copies the previous segment issued) against the reference."""
    q, k_cache, block_table, lens = case
    md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
    run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                            softmax_scale=D ** -0.5, causal=s_q > 1)
    out, _ = run()
    b = q.shape[0]
    for i in sorted({0, 1, b // 3, b // 2, b - 2, b - 1} & set(range(b))):
        ref, _ = decode_ref(q[i:i + 1], k_cache, block_table[i:i + 1], lens[i:i + 1], DV, D ** -0.5, s_q > 1)
        err = ((out[i:i + 1].float() - ref).norm() / ref.norm()).item()
        assert err < 1e-2, (q.shape, i, err)
    return _time(run)[1] * 1e3, md

SHAPES = [(128, 4096, 128, 1), (128, 8192, 128, 1), (128, 4096, 128, 2), (128, 8192, 128, 2), (128, 4096, 64, 2),
          (128, 8192, 64, 2), (256, 2048, 128, 1), (64, 8192, 128, 1), (16, 32768, 128, 1), (8, 8192, 128, 1)]

if __name__ == "__main__":
    ab_table(kernel_at("c2d8867"), decode_sm90_ws._decode_ws_kernel, SHAPES, checked_graph_us)
