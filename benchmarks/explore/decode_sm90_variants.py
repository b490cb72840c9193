"""The Gluon sm90 decode (``kernels/decode_sm90.py``) against the tl.dot kernel, on one Hopper GPU.

Correctness first, on odd cases (lengths 0 and 1, page sizes 1-128, non-contiguous block tables, 8-128
rows, causal s_q > 1, bf16 and fp16) against the float64 reference, then do_bench medians on the
benchmark's shapes. A variant is a dict of config overrides (``triton_mla.configs.overridden``).

    PYTHONPATH=. python3 benchmarks/explore/decode_sm90_variants.py [base,g64x2,...] [number of shapes | few-rows |
        fp8-rows]
"""

import sys

import torch
import triton

import triton_mla as tm
from triton_mla import configs
from triton_mla.bench import decode_flops, fp8_cache_of, fp8_rel_err, make_decode_case
from triton_mla.reference import decode_ref

# the warp-specialized kernel whatever the number of tiles a part (the shipped entries take it from 32 on)
WS = {"WGMMA": True, "WS": True, "WS_MIN_TILES_PER_PART": 0, "BLOCK_N": 64, "NUM_BUF": 2, "MIN_BLOCKS_PER_PART": 4}

VARIANTS = {
    "shipped": {},  # the config files as they are
    "shipped_fp8": {"_fp8": True},
    "base": {"WGMMA": False},
    "g64x2": {"WGMMA": True, "BLOCK_N": 64, "NUM_BUF": 2, "MIN_BLOCKS_PER_PART": 4},
    "g32x3": {"WGMMA": True, "BLOCK_N": 32, "NUM_BUF": 3, "MIN_BLOCKS_PER_PART": 8},
    "g32x4": {"WGMMA": True, "BLOCK_N": 32, "NUM_BUF": 4, "MIN_BLOCKS_PER_PART": 8},
    # one page look-up a tile turned off (pages of 64: PAGE_TILE, on by default; benchmarks/NOTES.md, eighth session)
    "g64x2_pk": {"WGMMA": True, "BLOCK_N": 64, "NUM_BUF": 2, "MIN_BLOCKS_PER_PART": 4, "PAGE_TILE": False},
    "fp8_g64r2_pk": {"_fp8": True, "WGMMA": True, "BLOCK_N": 64, "MIN_BLOCKS_PER_PART": 4, "RAW_STAGES": 2,
                     "PAGE_TILE": False},
    "fp8_t_pk": {"_fp8": True, "WGMMA": True, "KEYS_ON_M": True, "RAW_STAGES": 2, "PARTS_PER_SM": 2,
                 "MIN_BLOCKS_PER_PART": 4, "PAGE_TILE": False},
    # the shipped 64+ row entry
    "g64x2r": {"WGMMA": True, "BLOCK_N": 64, "NUM_BUF": 2, "MIN_BLOCKS_PER_PART": 4, "ROWS_FIRST": True},
    # the lockstep kernel even where the config picks the warp-specialized one (above 128 rows, Triton 3.7+)
    "lock": {"WGMMA": True, "WS": False, "BLOCK_N": 64, "NUM_BUF": 2, "MIN_BLOCKS_PER_PART": 4, "ROWS_FIRST": True},
    "g64x2p1": {"WGMMA": True, "BLOCK_N": 64, "NUM_BUF": 2, "MIN_BLOCKS_PER_PART": 4, "PARTS_PER_SM": 1},
    "ws": WS,
    # the ws kernel's key tiles by cp.async even where TMA applies (pages of 64k laid end to end)
    "ws_cp": {**WS, "TMA": False},
    # warpgroup 0 copies B's first half before it issues S of A (the sm90 128-row entry)
    "ws_rc": {**WS, "ROWS_FIRST": True, "COPY_FIRST": True},
    "ws_p1": {**WS, "PARTS_PER_SM": 1},
    "ws_r": {**WS, "ROWS_FIRST": True},
    "fp8": {"_fp8": True, "WGMMA": False},
    "fp8_g64": {"_fp8": True, "WGMMA": True, "BLOCK_N": 64, "MIN_BLOCKS_PER_PART": 4},
    "fp8_g64r2": {"_fp8": True, "WGMMA": True, "BLOCK_N": 64, "MIN_BLOCKS_PER_PART": 4, "RAW_STAGES": 2},
    # <= 16 rows over the FP8 cache with keys on the MMA's M side (decode_sm90_fp8)
    "fp8_t": {"_fp8": True, "WGMMA": True, "KEYS_ON_M": True, "RAW_STAGES": 2, "PARTS_PER_SM": 2,
              "MIN_BLOCKS_PER_PART": 4},
    "fp8_t3": {"_fp8": True, "WGMMA": True, "KEYS_ON_M": True, "RAW_STAGES": 3, "PARTS_PER_SM": 1,
               "MIN_BLOCKS_PER_PART": 4},
    "fp8_t2p1": {"_fp8": True, "WGMMA": True, "KEYS_ON_M": True, "RAW_STAGES": 2, "PARTS_PER_SM": 1,
                 "MIN_BLOCKS_PER_PART": 4},
    # register operands in more pieces (PV_PARTS, QK_WAVES) for 16 or 8 rows a program
    "fp8_t16q": {"_fp8": True, "WGMMA": True, "KEYS_ON_M": True, "RAW_STAGES": 2, "PARTS_PER_SM": 2,
                 "MIN_BLOCKS_PER_PART": 4, "PV_PARTS_16": 4, "QK_WAVES_16": 2},
    "fp8_t16w": {"_fp8": True, "WGMMA": True, "KEYS_ON_M": True, "RAW_STAGES": 2, "PARTS_PER_SM": 2,
                 "MIN_BLOCKS_PER_PART": 4, "PV_PARTS_16": 2, "QK_WAVES_16": 2},
    "fp8_t8h": {"_fp8": True, "WGMMA": True, "KEYS_ON_M": True, "RAW_STAGES": 2, "PARTS_PER_SM": 2,
                "MIN_BLOCKS_PER_PART": 4, "PV_PARTS_8": 2, "QK_WAVES_8": 1},
}

# (b, h_q, s_q, page_size, lengths)
CASES = [
    (4, 128, 1, 64, [8192, 1, 0, 777]),
    (3, 64, 2, 64, [1000, 2, 65]),
    (5, 128, 2, 16, [300, 17, 2, 1024, 5]),
    (2, 96, 1, 64, [4097, 63]),
    (2, 16, 4, 1, [129, 40]),
    (3, 40, 3, 32, [2048, 3, 999]),
    (1, 128, 1, 64, [1]),
    (6, 64, 1, 128, [130, 0, 0, 4000, 64, 65]),
    (2, 8, 1, 64, [500, 3]),
]
# <= 16 rows (the FP8 keys-on-M kernel's range)
CASES_FEW_ROWS = [
    (3, 16, 1, 64, [8192, 1, 0]),
    (4, 8, 2, 16, [300, 17, 2, 1025]),
    (2, 1, 1, 1, [129, 40]),
    (3, 4, 4, 32, [2048, 3, 999]),
    (5, 2, 3, 128, [130, 0, 4000, 64, 65]),
    (2, 16, 1, 1, [77, 1]),
    (3, 12, 1, 64, [5000, 63, 64]),
]

# (b, s_k, h_q, s_q)
SHAPES = [(128, 8192, 64, 1), (128, 8192, 128, 1), (128, 8192, 128, 2), (128, 8192, 32, 2), (128, 4096, 128, 1),
          (1, 8192, 128, 1), (8, 8192, 128, 1)]
# memory-bound shapes (16-32 rows), where the 64-row Gluon tile leaves MMA rows empty
SHAPES_FEW_ROWS = [(128, 4096, 32, 1), (128, 8192, 32, 1), (128, 8192, 16, 2), (128, 8192, 16, 1), (32, 4096, 16, 1)]
# <= 16 rows: the FP8 keys-on-M kernel's shapes
SHAPES_FP8_ROWS = [(128, 8192, 16, 1), (128, 4096, 16, 1), (128, 8192, 8, 1), (128, 8192, 8, 2), (32, 4096, 16, 1),
                   (64, 32768, 16, 1), (8, 8192, 16, 1)]


def make_case(b, h_q, s_q, page, lens, dtype, seed, non_contiguous):
    g = torch.Generator(device="cuda").manual_seed(seed)
    lens_t = torch.tensor(lens, dtype=torch.int32, device="cuda")
    max_pages = max(1, -(-max(lens) // page))
    num_blocks = b * max_pages + 3
    bt = torch.randperm(num_blocks, generator=g, device="cuda")[: b * max_pages].to(torch.int32).view(b, max_pages)
    if non_contiguous:  # every other column of a wider table
        wide = torch.zeros(b, 2 * max_pages, dtype=torch.int32, device="cuda")
        wide[:, ::2] = bt
        bt = wide[:, ::2]
    kv = torch.randn(num_blocks, page, 1, 576, generator=g, device="cuda", dtype=dtype)
    q = torch.randn(b, s_q, h_q, 576, generator=g, device="cuda", dtype=dtype)
    return q, kv, bt, lens_t


def check_fp8(variant):
    """Largest relative error of FP8-cache decode against the reference on the dequantized cache (KEYS_ON_M
    variants: on the <= 16-row cases only, as their other fields may not fit the 64-row kernel)."""
    worst = 0.0
    cases = CASES_FEW_ROWS if variant.get("KEYS_ON_M") else CASES + CASES_FEW_ROWS
    for i, (b, h_q, s_q, page, lens) in enumerate(cases):
        q, kv, bt, lens_t = make_case(b, h_q, s_q, page, lens, torch.bfloat16, i, i % 2 == 1)
        kv8 = fp8_cache_of(kv)
        with configs.overridden(**variant):
            out, _ = tm.flash_mla_with_kvcache(q, kv8, bt, lens_t, 512, causal=s_q > 1, is_fp8_kvcache=True)
        err = fp8_rel_err(out, q, kv8, bt, lens_t, s_q > 1, 576 ** -0.5, b)
        if torch.isnan(out).any() or not (err < 1e-2):
            print(f"  FAIL fp8 case {i}: err {err:.2e}")
            return float("nan")
        worst = max(worst, err)
    return worst


def check(variant):
    """Largest relative error over CASES x (bf16, fp16); prints each failing case."""
    variant = dict(variant)
    if variant.pop("_fp8", False):
        return check_fp8(variant)
    worst = 0.0
    for i, (b, h_q, s_q, page, lens) in enumerate(CASES):
        for dtype in (torch.bfloat16, torch.float16):
            q, kv, bt, lens_t = make_case(b, h_q, s_q, page, lens, dtype, i, i % 2 == 1)
            with configs.overridden(**variant):
                out, lse = tm.flash_mla_with_kvcache(q, kv, bt, lens_t, 512, causal=s_q > 1)
            ref, ref_lse = decode_ref(q.double(), kv.double(), bt, lens_t, 512, 576 ** -0.5, s_q > 1,
                                      dtype=torch.float64)
            err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            if torch.isnan(out).any():
                err = float("nan")
            finite = torch.isfinite(ref_lse)
            lse_err = (lse.double()[finite] - ref_lse[finite]).abs().max().item() if finite.any() else 0.0
            inf_ok = bool((lse[~finite] == float("inf")).all())
            if not (err < 1e-2) or lse_err > 1e-2 or not inf_ok:
                print(f"  FAIL case {i} {dtype}: err {err:.2e} lse err {lse_err:.2e} empty rows inf: {inf_ok}")
            worst = max(worst, err) if err == err else float("nan")
    return worst


def time_us(variant, b, s_k, h_q, s_q):
    variant = dict(variant)
    fp8 = variant.pop("_fp8", False)
    q, kv, bt, lens = make_decode_case(b, s_k, h_q, s_q, False)
    if fp8:
        kv = fp8_cache_of(kv)
    with configs.overridden(**variant):
        md = tm.get_mla_metadata(lens, s_q * h_q, 1, is_fp8_kvcache=fp8)

        def run():
            return tm.flash_mla_with_kvcache(q, kv, bt, lens, 512, md[0], md[1], causal=s_q > 1, is_fp8_kvcache=fp8)

        run()
        torch.cuda.synchronize()
        ms = triton.testing.do_bench(run, warmup=20, rep=100, return_mode="median")
    return ms * 1e3, decode_flops(s_q, h_q, int(lens.sum())) / ms / 1e9


def main(names, shapes=SHAPES):
    print("correctness (relative error against float64; causal when s_q > 1)")
    for name in names:
        print(f"  {name:8s} max err {check(VARIANTS[name]):.2e} over {2 * len(CASES)} runs", flush=True)
    print("timing: do_bench median, us and TFLOPS")
    print(f"{'b':>4} {'s_k':>5} {'h':>4} {'s_q':>3} | " + " | ".join(f"{n:>14}" for n in names))
    for b, s_k, h_q, s_q in shapes:
        cells = [time_us(VARIANTS[n], b, s_k, h_q, s_q) for n in names]
        print(f"{b:>4} {s_k:>5} {h_q:>4} {s_q:>3} | " + " | ".join(f"{us:7.1f} {tf:4.0f}TF" for us, tf in cells),
              flush=True)


if __name__ == "__main__":
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(VARIANTS)
    if len(sys.argv) > 2:
        named = {"few-rows": SHAPES_FEW_ROWS, "fp8-rows": SHAPES_FP8_ROWS}
        shapes = named[sys.argv[2]] if sys.argv[2] in named else SHAPES[: int(sys.argv[2])]
    else:
        shapes = SHAPES
    main(names, shapes)
