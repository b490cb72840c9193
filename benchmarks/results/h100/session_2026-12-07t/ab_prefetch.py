"""The ws decode with the next segment's Q and first tile copied during a segment's last pair (new) against the
kernel before it (old: a copy of kernels/decode_sm90_ws.py at the session's start commit), both forced at every
batch size. First bitwise and reference checks on batches built to have many segments a part (short and empty
sequences, page sizes 64 (TMA) and 32 (cp.async), causal s_q = 2), then CUDA-graph times alternated twice.

    PYTHONPATH=. python3 benchmarks/results/h100/session_2026-12-07t/ab_prefetch.py OLD_FILE.py
"""
import functools
import importlib
import shutil
import sys
from pathlib import Path

import torch

import triton_mla as tm
import triton_mla.kernels as kernels_pkg
from triton_mla import configs
from triton_mla.bench import DV, D, _time, make_decode_case
from triton_mla.kernels import decode_sm90, decode_sm90_ws
from triton_mla.reference import decode_ref


def kernel_from(path):
    dst = Path(kernels_pkg.__file__).parent / "decode_sm90_ws_old.py"
    shutil.copy(path, dst)
    try:
        return importlib.import_module("triton_mla.kernels.decode_sm90_ws_old")._decode_ws_kernel
    finally:
        dst.unlink()


def call(kern, case, s_q, h):
    q, k_cache, block_table, lens = case
    decode_sm90._decode_ws_kernel = kern
    md, ns = tm.get_mla_metadata(lens, h * s_q, 1)
    run = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV, md, ns,
                            softmax_scale=D ** -0.5, causal=s_q > 1)
    return run, md


def rel_err(out, case, s_q, sub):
    q, k_cache, block_table, lens = case
    ref, _ = decode_ref(q[:sub], k_cache, block_table[:sub], lens[:sub], DV, D ** -0.5, s_q > 1)
    return ((out[:sub].float() - ref).norm() / ref.norm()).item()


def stress_case(page, h, s_q, seed, b=96):
    """A batch of b sequences of random lengths 0..700 (some 0 and 1), pages in random order."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    lens = torch.randint(0, 700, (b,), generator=g, device="cuda", dtype=torch.int32)
    lens[torch.randint(0, b, (8,), generator=g, device="cuda")] = 0
    lens[torch.randint(0, b, (8,), generator=g, device="cuda")] = 1
    pages = (int(lens.max()) + page - 1) // page
    nb = b * pages + 3
    bt = torch.randperm(nb, generator=g, device="cuda")[: b * pages].to(torch.int32).view(b, pages)
    kc = torch.randn(nb, page, 1, D, generator=g, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(b, s_q, h, D, generator=g, device="cuda", dtype=torch.bfloat16)
    return q, kc, bt, lens


def stress(old, new):
    """Many short segments: random lengths 0..700 (some 0), so parts cross several sequences."""
    ok = True
    for page in (64, 32):
        for h, s_q in ((128, 1), (48, 2), (128, 2)):
            for seed in range(3):
                b = 96
                case = stress_case(page, h, s_q, seed, b)
                outs = []
                for kern in (old, new):
                    run, md = call(kern, case, s_q, h)
                    out, lse = run()
                    outs.append((out.clone(), lse.clone()))
                torch.cuda.synchronize()
                same = torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
                err = rel_err(outs[1][0], case, s_q, b)
                nan = bool(torch.isnan(outs[1][0]).any())
                good = same and err < 1e-2 and not nan
                ok &= good
                print(f"stress page={page} h={h} s_q={s_q} seed={seed} parts={md.shape[0]}: bitwise={same} "
                      f"err={err:.2e} nan={nan} {'ok' if good else 'FAIL'}", flush=True)
    return ok


SHAPES = [(128, 4096, 128, 2, False), (128, 4096, 128, 2, True), (128, 4096, 64, 2, False), (128, 4096, 64, 2, True),
          (128, 4096, 128, 1, False), (128, 8192, 128, 1, False), (128, 8192, 128, 1, True), (128, 8192, 128, 2, False),
          (128, 8192, 64, 2, False), (8, 8192, 128, 1, False), (1, 8192, 128, 1, False), (64, 8192, 128, 1, False)]


def main():
    old = kernel_from(sys.argv[1])
    new = decode_sm90_ws._decode_ws_kernel
    try:
        with configs.overridden(WS_MIN_TILES_PER_PART=0):
            ok = stress(old, new)
            print(f"stress: {'all ok' if ok else 'FAILURES'}", flush=True)
            print(f"{'b':>4} {'s_k':>6} {'h':>4} {'s_q':>3} {'var':>3} | {'old':>8} {'new':>8} {'old':>8} {'new':>8} | "
                  "new/old  bitwise err", flush=True)
            for b, s_k, h, s_q, varlen in SHAPES:
                case = make_decode_case(b, s_k, h, s_q, varlen)
                res, outs = [], []
                for kern in (old, new, old, new):
                    run, _ = call(kern, case, s_q, h)
                    outs.append(run()[0].clone())
                    res.append(_time(run)[1] * 1e3)
                same = torch.equal(outs[0], outs[1])
                err = rel_err(outs[1], case, s_q, min(b, 4))
                o, n = min(res[0], res[2]), min(res[1], res[3])
                print(f"{b:>4} {s_k:>6} {h:>4} {s_q:>3} {int(varlen):>3} | " + " ".join(f"{r:8.1f}" for r in res) +
                      f" | {n / o:7.3f}  {same} {err:.1e}", flush=True)
    finally:
        decode_sm90._decode_ws_kernel = new


if __name__ == "__main__":
    main()
