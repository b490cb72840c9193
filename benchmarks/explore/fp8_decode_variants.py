"""FP8 dense decode: launch variants, each checked on a small fresh case, then timed at b=128, s_k=8192, s_q=1.

Run on the GPU from the repo root:  PYTHONPATH=. python benchmarks/explore/fp8_decode_variants.py
One line per (h_q, variant): relative error (small case), us, GB/s (656 B a token), and the ratio to the bf16
kernel's time measured on the H100 (BF16_US below, from the issue). A variant that fails prints FAILED.
"""
import sys
import time

import torch
import triton

import triton_mla as tm
from triton_mla import bench, configs

DEVICE = "cuda"
DTYPE = torch.bfloat16
B, S_K = 128, 8192
BF16_US = {16: 494.0, 32: None, 64: 885.0, 128: 1550.0}  # H100, the bf16 kernel (issue text)

# variant name -> config overrides; "_rows": the query-row counts (s_q * h_q) it is meant for
VARIANTS = {
    "base": dict(),
    "cvt_once": dict(CVT_ONCE=True, _rows=(16, 32)),
    "n64_s3": dict(BLOCK_N=64, num_stages=3, _rows=(16,)),
    "cvt_once_n64_s3": dict(CVT_ONCE=True, BLOCK_N=64, num_stages=3, _rows=(16,)),
    "n32": dict(BLOCK_N=32, _rows=(64, 128)),
    "n32_s3": dict(BLOCK_N=32, num_stages=3, _rows=(64, 128)),
}
HEADS = [16, 32, 64, 128]


def check(var, h_q):
    """Relative error against the reference on the dequantized cache: 8 sequences, lengths 0, 1 and ~1000."""
    q, kc, bt, lens = bench.make_decode_case(8, 1000 if DEVICE == "cuda" else 70, h_q, 1, True, seed=h_q + 1,
                                             device=DEVICE, dtype=DTYPE)
    lens[0] = 0
    lens[1] = 1
    f = bench.fp8_cache_of(kc)
    with configs.overridden(**var):
        out, lse = tm.flash_mla_with_kvcache(q, f, bt, lens, 512, is_fp8_kvcache=True)
    if not torch.isfinite(out.float()).all():
        raise RuntimeError("non-finite output")
    return bench.fp8_rel_err(out, q, f, bt, lens, False, 576 ** -0.5, q.shape[0])


def timed(var, q, f, bt, lens):
    with configs.overridden(**var):
        def run():
            return tm.flash_mla_with_kvcache(q, f, bt, lens, 512, is_fp8_kvcache=True)
        run()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
            return triton.testing.do_bench(run, warmup=20, rep=100, return_mode="median")
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3


def main():
    t_start = time.perf_counter()
    if DEVICE == "cuda":
        print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
              f"b={B} s_k={S_K} s_q=1", flush=True)
    _, kc, bt, lens = bench.make_decode_case(B, S_K, 1, 1, False, device=DEVICE, dtype=DTYPE)
    f = bench.fp8_cache_of(kc)
    del kc
    total = int(lens.sum())
    for h_q in HEADS:
        q = torch.randn(B, 1, h_q, 576, device=DEVICE, dtype=DTYPE)
        for name, v in VARIANTS.items():
            if h_q not in v.get("_rows", (h_q,)):
                continue
            var = {k: x for k, x in v.items() if not k.startswith("_")}
            try:
                err = check(var, h_q)
                ms = timed(var, q, f, bt, lens)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"h{h_q:<3} {name:<16} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            gbs = bench.decode_bytes(B, 1, h_q, total, cache_bytes_per_token=656) / ms / 1e6
            tf = bench.decode_flops(1, h_q, total) / ms / 1e9
            ref = BF16_US.get(h_q)
            ratio = f"{ms * 1e3 / ref:5.2f}x bf16" if ref else ""
            print(f"h{h_q:<3} {name:<16} err {err:.1e}  {ms * 1e3:8.1f} us  {gbs:6.0f} GB/s  {tf:5.0f} TF  {ratio}",
                  flush=True)
    print(f"done in {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--dry":  # CPU: the interpreter, tiny sizes, no timing
        DEVICE, DTYPE = "cpu", torch.float16
        B, S_K = 2, 40
        HEADS = [16, 64]
    main()
