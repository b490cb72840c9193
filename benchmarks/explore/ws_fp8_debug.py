"""Where the FP8 cache through the warp-specialized kernel goes wrong, if it does (``WS`` on a decode_fp8 entry;
written in the twenty-eighth session without a GPU): small cases, one sequence each, from one tile to many pairs,
each compared with the float64 oracle on the dequantized cache, the error split by output half (columns [0, 256)
come from warpgroup 0, [256, 512) from warpgroup 1) and by query row, beside the lockstep FP8 kernel's error on the
same case. A wrong S (a half of A or B converted late or not at all) spoils every column; a wrong V half spoils
that half's columns; a schedule bug shows up from the second pair (129+ keys) on.

    PYTHONPATH=.:tests python3 benchmarks/explore/ws_fp8_debug.py [--quick]

(On a machine with no GPU the Triton interpreter runs the tl.dot kernels instead: only a check of this script.)
"""

import sys

import torch
from test_fp8 import make_fp8_case

import triton_mla as tm
from triton_mla import configs
from triton_mla import fp8 as F
from triton_mla.reference import decode_ref

# (the interpreter computes bfloat16 wrongly: float16 queries there)
DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float16


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run(q, k_cache, bt, lens, s_q, h_q, **over):
    with configs.overridden(WGMMA=True, KEYS_ON_M=False, BLOCK_N=64, MIN_BLOCKS_PER_PART=4, **over):
        md, splits = tm.get_mla_metadata(lens, s_q * h_q, 1, is_fp8_kvcache=True)
        out, lse = tm.flash_mla_with_kvcache(q, k_cache, bt, lens, 512, md, splits, causal=s_q > 1,
                                             is_fp8_kvcache=True)
    return out.double().cpu(), lse.double().cpu()


def main(quick=False):
    print(f"{'keys':>6} {'h':>4} {'s_q':>3} {'page':>4} | {'ws all':>8} {'cols<256':>9} {'cols>=256':>9} "
          f"{'lse':>8} {'worst row':>9} | {'late':>8} | {'lockstep':>8}")
    for n, h, s_q, page in [(1, 64, 1, 64), (64, 64, 1, 64), (65, 64, 1, 64), (128, 64, 1, 64), (129, 64, 1, 64),
                            (256, 64, 1, 16), (1000, 64, 1, 1), (1000, 128, 1, 64), (700, 128, 2, 64),
                            (4097, 16, 1, 192)][: 2 if quick else None]:
        q, k_cache, bt, lens = make_fp8_case([n], s_q, h, page, DTYPE, seed=n)
        kv = F.dequantize_latent(k_cache.cpu()).double()
        ref, ref_lse = decode_ref(q.cpu(), kv, bt.cpu(), lens.cpu(), 512, None, s_q > 1, dtype=torch.float64)
        out, lse = run(q, k_cache, bt, lens, s_q, h, WS=True)
        late, _ = run(q, k_cache, bt, lens, s_q, h, WS=True, LATE_B_LO=True)
        lock, _ = run(q, k_cache, bt, lens, s_q, h, WS=False)
        rows = [rel(out[0, s, r], ref[0, s, r]) for s in range(s_q) for r in range(h)]
        worst = max(range(len(rows)), key=rows.__getitem__)
        print(f"{n:>6} {h:>4} {s_q:>3} {page:>4} | {rel(out, ref):8.1e} {rel(out[..., :256], ref[..., :256]):9.1e} "
              f"{rel(out[..., 256:], ref[..., 256:]):9.1e} {rel(lse, ref_lse):8.1e} {worst:>9} | "
              f"{rel(late, ref):8.1e} | {rel(lock, ref):8.1e}", flush=True)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
