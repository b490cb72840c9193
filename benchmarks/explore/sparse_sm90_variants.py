"""Sparse decode / prefill on sm90: the tl.dot kernels (shipped entries) against the Gluon kernel
(``kernels/sparse_sm90.py``, config ``WGMMA``) on every anchor shape of ``bench_sparse``.

    PYTHONPATH=. python benchmarks/explore/sparse_sm90_variants.py [decode|prefill ...] [variant ...] [few-heads]
        [bf16|fp8]

For each shape: a small random case with the same b, s_q, h_q, topk (same split plan, same compiled kernel,
4096 cache tokens) is checked against the float32 oracle, then the anchor shape is timed (do_bench median).
One line per (shape, variant); a variant that fails prints FAILED and the sweep goes on.
"""
import functools
import sys
import time
import traceback

import torch
import triton

from triton_mla import bench_sparse as bs
from triton_mla import configs

# the Gluon kernel's tiles are fixed (64 heads, 64 keys, 2 buffers, one program an SM); the first run of this
# script (2026-11-24, fourth session) also timed 32-key tiles in 3 buffers and two programs an SM: slower

# the keys-on-M pieces with the scores through e4m3 MMAs (QK_E4M3), twenty-second session: the t_q8 variants' base
T_Q8 = dict(WGMMA=True, FP8_WGMMA=True, FP8_KEYS_ON_M=True, FP8_PV_PARTS_16=4, FP8_QK_WAVES_16=2, FP8_PV_PARTS_8=2,
            FP8_QK_WAVES_8=1, FP8_IDS_AHEAD=True, FP8_QK_E4M3=True)
VARIANTS = {
    "tl.dot": dict(WGMMA=False, FP8_WGMMA=False),
    "gluon": dict(WGMMA=True, FP8_WGMMA=True),
    "gluon_raw2": dict(WGMMA=True, FP8_WGMMA=True, FP8_RAW_STAGES=2),  # FP8: two raw tiles in flight
    # FP8 at <= 16 heads: keys on the MMA's M side (kernels/decode_sm90_fp8.py's program), seventh session
    "t": dict(WGMMA=True, FP8_WGMMA=True, FP8_KEYS_ON_M=True),
    "t_p16": dict(WGMMA=True, FP8_WGMMA=True, FP8_KEYS_ON_M=True, FP8_PV_PARTS_16=4, FP8_QK_WAVES_16=2),
    "t_w8": dict(WGMMA=True, FP8_WGMMA=True, FP8_KEYS_ON_M=True, FP8_PV_PARTS_8=2, FP8_QK_WAVES_8=1),
    "t3": dict(WGMMA=True, FP8_WGMMA=True, FP8_KEYS_ON_M=True, FP8_RAW_STAGES=3),
    "t_pw": dict(WGMMA=True, FP8_WGMMA=True, FP8_KEYS_ON_M=True, FP8_PV_PARTS_16=4, FP8_QK_WAVES_16=2,
                 FP8_PV_PARTS_8=2, FP8_QK_WAVES_8=1),
    # the top-k entries of each tile loaded an iteration before its copy is issued
    "t_pw_ids": dict(WGMMA=True, FP8_WGMMA=True, FP8_KEYS_ON_M=True, FP8_PV_PARTS_16=4, FP8_QK_WAVES_16=2,
                     FP8_PV_PARTS_8=2, FP8_QK_WAVES_8=1, FP8_IDS_AHEAD=True),
    "t_q8": T_Q8,
    "t_q8_p8": dict(T_Q8, FP8_PV_PARTS_8=4, FP8_QK_WAVES_8=2),
    # the same with V^T whole at 16 rows (two parts, all four groups' scores at once), twenty-third session
    "t_q8_p2": dict(T_Q8, FP8_PV_PARTS_16=2, FP8_QK_WAVES_16=1),
    # t_q8 with V^T's bytes paired by key and the lazy running max (FP8_PAIR_KEYS, FP8_LAZY_MAX), then also V^T whole
    "t_q8_pl": dict(T_Q8, FP8_PAIR_KEYS=True, FP8_LAZY_MAX=True),
    "t_q8_p2_pl": dict(T_Q8, FP8_PV_PARTS_16=2, FP8_QK_WAVES_16=1, FP8_PAIR_KEYS=True, FP8_LAZY_MAX=True),
    # 16-bit cache at 64+ heads: the warp-specialized kernel (decode_sm90_ws's pipeline), fifteenth session
    "lockstep": dict(WGMMA=True, WS=False),
    "ws": dict(WGMMA=True, WS=True, COPY_FIRST=False),
    "ws_cf": dict(WGMMA=True, WS=True, COPY_FIRST=True),
}


def _err(check, case, *extra_and_result):
    """check(out, *case, *extra) for a call's result (its first element is out)."""
    *extra, result = extra_and_result
    return check(result[0], *case, *extra)


def run_variants(tag, run_small, err_of, run_big, flops, nbytes):
    for name, var in VARIANTS.items():
        try:
            with configs.overridden(**var):
                err = err_of(run_small())
                run_big()
                torch.cuda.synchronize()
                # eager (host cost included: ~130 us a call, which hides small kernels) and CUDA-graph replay
                ms, graph_ms = bs._time(run_big)
            print(f"{tag} {name:<12} err {err:.1e} {ms * 1e3:8.1f} us graph {graph_ms * 1e3:8.1f} us "
                  f"{nbytes / graph_ms / 1e6:6.0f} GB/s {flops / graph_ms / 1e9:6.1f} TFLOPS", flush=True)
        except Exception as e:  # noqa: BLE001 - a variant that fails is reported, not fatal
            print(f"{tag} {name:<12} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            if "-v" in sys.argv:
                traceback.print_exc()


def main():
    print(torch.cuda.get_device_name(0), "triton", triton.__version__, flush=True)
    which = [a for a in sys.argv[1:] if a in ("decode", "prefill")] or ["decode", "prefill"]
    few_heads = "few-heads" in sys.argv  # FP8 decode at <= 16 heads only
    caches = [False] if "bf16" in sys.argv else [True] if few_heads or "fp8" in sys.argv else [False, True]
    names = [a for a in sys.argv[1:] if a in VARIANTS]
    if names:
        for name in [n for n in VARIANTS if n not in names]:
            del VARIANTS[name]
    t0 = time.time()
    if "decode" in which:
        for fp8 in caches:
            for b, s_q, h_q, topk, s_kv in bs.DECODE_SHAPES:
                if few_heads and not (fp8 and h_q <= 16):
                    continue
                small = bs.make_decode_case(b, s_q, h_q, topk, 4096, fp8, seed=1)
                big = bs.make_decode_case(b, s_q, h_q, topk, s_kv, fp8, seed=0)
                run_variants(f"{'fp8 ' if fp8 else 'bf16'} b{b:<3} s_q{s_q} h{h_q:<3} topk{topk}",
                             bs._decode_run(*small, fp8), functools.partial(_err, bs._decode_err, small, fp8),
                             bs._decode_run(*big, fp8), bs.decode_flops(b, s_q, h_q, topk),
                             bs.decode_bytes(b, s_q, h_q, topk, fp8))
                small = big = None
                torch.cuda.empty_cache()
    if "prefill" in which:
        for s_q, h_q, topk, s_kv in bs.PREFILL_SHAPES:
            small = bs.make_prefill_case(256, h_q, topk, 4096, seed=1)
            big = bs.make_prefill_case(s_q, h_q, topk, s_kv, seed=0)
            run_variants(f"prefill s_q{s_q} h{h_q:<3} topk{topk}", bs._prefill_run(*small),
                         functools.partial(_err, bs._prefill_err, small), bs._prefill_run(*big),
                         bs.prefill_flops(s_q, h_q, topk), 0)
            small = big = None
            torch.cuda.empty_cache()
    print(f"total {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
