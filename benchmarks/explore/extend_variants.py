"""H100 A/B of the absorbed-extend launch variants (kernels/extend.py): correctness, then timing.

Run from the repo root:  PYTHONPATH=. python benchmarks/explore/extend_variants.py [VARIANTS_JSON]
VARIANTS_JSON (optional) replaces the built-in table: '{"name": {"BLOCK_N": 64, ...}, ...}'.
Per (shape, variant): one line with the relative error of a small fresh random case against
reference.extend_ref (float32, first 2 heads), then us / TFLOPS (bench_extend.extend_flops) of the shape,
do_bench(warmup=20, rep=100, median). A variant that fails prints a FAILED line and the run goes on.
CPU dry run (interpreter, tiny shapes, fp16):
    TRITON_INTERPRET=1 PYTHONPATH=. python benchmarks/explore/extend_variants.py
"""
import json
import os
import sys
import time

import torch
import triton

from triton_mla import bench_extend as be
from triton_mla import configs
from triton_mla.extend import mla_extend
from triton_mla.reference import extend_ref

# overrides of the sm90 "extend" 16-bit catch-all entry (today: BLOCK_M 64, BLOCK_N 32, 8 warps, 3 stages)
VARIANTS = {
    "base": {},
    "s5": dict(num_stages=5),  # K tiles 3-deep (loads issued 2 tiles ahead); 3-4 stages give 2 buffers
    "n64": dict(BLOCK_N=64),  # half the iterations, QK wgmma n32 per warpgroup instead of n16; 230 KB smem
    "lazy": dict(LAZY_RESCALE=8.0),  # skip acc *= alpha unless some row's max grew by > 8 (log2)
    "s5_lazy": dict(num_stages=5, LAZY_RESCALE=8.0),
    "n64_lazy": dict(BLOCK_N=64, LAZY_RESCALE=8.0),
}
FP8_VARIANTS = {  # FP8-cache shapes only: each K tile dequantized whole, 3 dots a tile instead of 9
    "tile": dict(FP8_ONE_TILE=True),
    "tile_s5": dict(FP8_ONE_TILE=True, num_stages=5),
    "tile_s5_lazy": dict(FP8_ONE_TILE=True, num_stages=5, LAZY_RESCALE=8.0),
}
SHAPES = [  # (name, cache lengths, chunk lengths, h_q, fp8)
    ("chunk1024_prefix8192_h128", [9216], [1024], 128, False),
    ("chunk1024_prefix8192_h128", [9216], [1024], 128, True),
    ("chunk1024_prefix8192_h16", [9216], [1024], 16, False),
]
CHECK = ([700, 1, 300, 64], [200, 1, 300, 1], 16)  # rows > 32: the same catch-all entry as the shapes
CPU = not torch.cuda.is_available()
if CPU:  # interpreter dry run: tiny shapes, fp16
    be.DEVICE, be.DTYPE = "cpu", torch.float16
    SHAPES = [("tiny_h16", [80], [9], 16, False), ("tiny_h16", [80], [9], 16, True)]
    SHAPES = SHAPES[int(os.environ.get("DRY_FP8_ONLY", "0")):]
    CHECK = ([70, 1], [9, 1], 16)


def rel_err(variant, fp8):
    lens, q_lens, h_q = CHECK
    q, k_cache, block_table, lens_t, cu = be.make_case(lens, q_lens, h_q, fp8, seed=int(time.time()) % 1000)
    with configs.overridden(**variant):
        out, _ = mla_extend(q, k_cache, block_table, lens_t, cu, max(q_lens), be.SCALE, is_fp8_kvcache=fp8)
    ref, _ = extend_ref(q[:, :2], k_cache, block_table, lens_t, cu, be.DV, be.SCALE, dtype=torch.float32)
    if not bool(torch.isfinite(out).all()):
        return float("nan")
    return ((out[:, :2].float() - ref).norm() / ref.norm()).item()


def timing(variant, lens, q_lens, h_q, fp8):
    q, k_cache, block_table, lens_t, cu = be.make_case(lens, q_lens, h_q, fp8)
    with configs.overridden(**variant):
        run = lambda: mla_extend(q, k_cache, block_table, lens_t, cu, max(q_lens), be.SCALE, is_fp8_kvcache=fp8)
        run()
        if CPU:
            t0 = time.perf_counter()
            run()
            ms = (time.perf_counter() - t0) * 1e3
        else:
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(run, warmup=20, rep=100, return_mode="median")
    return ms * 1e3, be.extend_flops(q_lens, lens, h_q) / ms / 1e9


def main():
    variants = json.loads(sys.argv[1]) if len(sys.argv) > 1 else VARIANTS
    fp8_variants = {} if len(sys.argv) > 1 else FP8_VARIANTS
    dev = "cpu (interpreter)" if CPU else torch.cuda.get_device_name(0)
    entry = configs.kernel_config("extend", 1024 * 128, torch.bfloat16, torch.device("cpu" if CPU else "cuda"))
    print(f"device {dev}, triton {triton.__version__}, torch {torch.__version__}; base entry {entry}", flush=True)
    t_start = time.time()
    for name, lens, q_lens, h_q, fp8 in SHAPES:
        for vname, v in {**variants, **(fp8_variants if fp8 else {})}.items():
            tag = f"{name:<26} {'fp8' if fp8 else 'bf16':<4} {vname:<12}"
            try:
                err = rel_err(v, fp8)
                us, tf = timing(v, lens, q_lens, h_q, fp8)
            except Exception as e:  # an out-of-resources launch or a compile error: record it and go on
                print(f"{tag} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                continue
            flag = "" if err < 2e-2 else "  WRONG"
            print(f"{tag} err {err:.1e}  {us:10.1f} us  {tf:6.1f} TFLOPS{flag}", flush=True)
            if not CPU:
                torch.cuda.empty_cache()
    print(f"total {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
