"""The ws decode before this session (c2d8867: each segment starts its copies when it starts) against the new one
(a segment's successor found ahead, its Q and first pair copied as the segment ends), beside the lockstep kernel;
CUDA-graph times, each output checked against the reference first. From the repo root (the old kernel comes from
git):

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-11-25p/ab_prefetch.py
"""
import functools
import importlib
import subprocess
from pathlib import Path

import triton_mla as tm
import triton_mla.kernels as kernels_pkg
from triton_mla import configs
from triton_mla.bench import DV, D, _time, make_decode_case
from triton_mla.kernels import decode_sm90, decode_sm90_ws
from triton_mla.reference import decode_ref


def kernel_at(rev):
    """``_decode_ws_kernel`` of kernels/decode_sm90_ws.py at git revision ``rev``, imported beside the package's
    modules (its relative imports resolve there; the file is removed again after the import). (As in
    session_2026-11-25o/ab_ws.py, whose import would run its table.)"""
    name = f"decode_sm90_ws_{rev}"
    path = Path(kernels_pkg.__file__).parent / f"{name}.py"
    path.write_text(subprocess.check_output(["git", "show", f"{rev}:triton_mla/kernels/decode_sm90_ws.py"], text=True))
    try:
        return importlib.import_module(f"triton_mla.kernels.{name}")._decode_ws_kernel
    finally:
        path.unlink()


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

NEW = decode_sm90_ws._decode_ws_kernel
OLD = kernel_at("c2d8867")
SHAPES = [(128, 4096, 128, 1), (128, 8192, 128, 1), (128, 4096, 128, 2), (128, 8192, 128, 2), (128, 4096, 64, 2),
          (128, 8192, 64, 2), (256, 2048, 128, 1), (64, 8192, 128, 1), (16, 32768, 128, 1), (8, 8192, 128, 1)]
print(f"{'b':>4} {'s_k':>6} {'h':>4} {'s_q':>3} | {'old':>8} {'new':>8} {'old':>8} {'new':>8} {'lock':>8} | new/old "
      "new/lock", flush=True)
for b, s_k, h, s_q in SHAPES:
    case = make_decode_case(b, s_k, h, s_q, False)
    res = []
    for kern in (OLD, NEW, OLD, NEW, None):
        decode_sm90._decode_ws_kernel = kern or NEW
        with configs.overridden(**(dict(WS=False) if kern is None else dict(WS_MIN_TILES_PER_PART=0))):
            res.append(checked_graph_us(case, s_q, h)[0])
    old, new = min(res[0], res[2]), min(res[1], res[3])
    print(f"{b:>4} {s_k:>6} {h:>4} {s_q:>3} | " + " ".join(f"{r:8.1f}" for r in res) +
          f" | {new / old:7.3f} {new / res[4]:7.3f}", flush=True)
decode_sm90._decode_ws_kernel = NEW
