"""Is the ws decode bitwise deterministic from run to run? (The prefetch A/B, ab_prefetch.py, found its outputs
differing bitwise from the shipped kernel's on many-segment batches, with no larger error.) Each kernel (shipped
ws, the prefetch variant given as a file, the lockstep kernel) runs REPS times on the same inputs, each output's
memory poisoned with NaN first; reported: whether its runs agree bitwise, with each other kernel, the worst row's
relative error against the float32 reference, and rows with NaN.

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-12-07t/determinism.py [PREFETCH_FILE.py]
"""
import os
import sys
from pathlib import Path

import torch

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import DV, D, make_decode_case
from triton_mla.kernels import decode_sm90, decode_sm90_ws
from triton_mla.reference import decode_ref

sys.path.insert(0, str(Path(__file__).parent))
from ab_prefetch import kernel_from, stress_case  # noqa: E402

REPS = 4


def runs(kern, case, s_q, h, ws=True):
    q, k_cache, block_table, lens = case
    decode_sm90._decode_ws_kernel = kern
    md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
    outs = []
    with configs.overridden(**(dict(WS_MIN_TILES_PER_PART=0) if ws else dict(WS=False))):
        for _ in range(REPS):
            # poison: the call's torch.empty takes these blocks back from the caching allocator
            junk = (torch.full((q.shape[0], s_q, h, DV), float("nan"), dtype=q.dtype, device="cuda"),
                    torch.full((q.shape[0], h, s_q), float("nan"), device="cuda"))
            del junk
            out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, lens, DV, md, ns, softmax_scale=D ** -0.5,
                                                 causal=s_q > 1)
            outs.append((out.clone(), lse.clone()))
    torch.cuda.synchronize()
    return outs


def row_err(out, ref):
    o, r = out.float().flatten(0, 2), ref.flatten(0, 2)
    rn = r.norm(dim=-1)
    e = (o - r).norm(dim=-1) / rn.clamp(min=1e-6)
    e = torch.where(rn > 0, e, (o - r).norm(dim=-1))
    return e.max().item(), int((e > 1e-2).sum()), int(torch.isnan(o).any(dim=-1).sum())


def same(a, b):
    return torch.equal(a[0], b[0]) and torch.equal(a[1].nan_to_num(), b[1].nan_to_num())


def main():
    kernels = {"ws": decode_sm90_ws._decode_ws_kernel}
    if len(sys.argv) > 1:
        kernels["prefetch"] = kernel_from(sys.argv[1])
    try:
        cases = [("stress", p, h, s_q, seed) for p in (64, 32) for h, s_q in ((128, 1), (48, 2)) for seed in (0, 1)]
        cases += [("bench", 64, 128, 1, 0), ("bench_varlen", 64, 128, 2, 0)]
        if os.environ.get("QUICK"):  # what a short device call has time for
            cases = [cases[0], cases[6]]
        for kind, page, h, s_q, seed in cases:
            if kind == "stress":
                case = stress_case(page, h, s_q, seed)
            else:
                case = make_decode_case(32, 4096, h, s_q, kind.endswith("varlen"), seed=seed)
            q, k_cache, block_table, lens = case
            ref, _ = decode_ref(q, k_cache, block_table, lens, DV, D ** -0.5, s_q > 1)
            res = {name: runs(k, case, s_q, h) for name, k in kernels.items()}
            res["lock"] = runs(kernels["ws"], case, s_q, h, ws=False)
            parts = []
            for name, outs in res.items():
                det = all(same(outs[0], o) for o in outs[1:])
                err, bad, nan = row_err(outs[0][0], ref)
                worst = max(row_err(o[0], ref)[0] for o in outs)
                parts.append(f"{name}: det={det} maxrow={worst:.1e} bad={bad} nan={nan}")
            cross = " ".join(f"{a}=={b}:{same(res[a][0], res[b][0])}" for a, b in (("ws", "prefetch"), ("ws", "lock"))
                             if a in res and b in res)
            print(f"{kind} page={page} h={h} s_q={s_q} seed={seed} | " + " | ".join(parts) + " | " + cross, flush=True)
    finally:
        decode_sm90._decode_ws_kernel = decode_sm90_ws._decode_ws_kernel


if __name__ == "__main__":
    main()
