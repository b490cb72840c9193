"""python -m triton_mla [check-configs [FAMILY...] | bench ARGS... | tune ARGS...]

With no command: a self-check of decode against the float64 reference, then a short benchmark.
On a machine without a CUDA GPU the kernels run in the Triton interpreter on small fp16 shapes (the
process re-starts itself with TRITON_INTERPRET=1, which must be set before Triton compiles anything).
"""

from __future__ import annotations

import os
import sys
import time


def _ensure_interpreter_without_gpu():
    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        env = dict(os.environ, TRITON_INTERPRET="1")
        os.execve(sys.executable, [sys.executable, "-m", "triton_mla", *sys.argv[1:]], env)


def self_check() -> bool:
    import torch

    import triton_mla as tm
    from triton_mla.reference import decode_ref

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    if gpu:
        dtype, dv, dr, page = torch.bfloat16, 512, 64, 64
        cases = [(lens, s_q, h_q) for h_q in (1, 8, 16, 32, 64, 128) for s_q in (1, 2)
                 for lens in ([0, 1, 63, 64, 65, 2049],)]
        print(f"self-check on {torch.cuda.get_device_name()}: bf16, latent 512 + 64, pages of 64")
    else:
        dtype, dv, dr, page = torch.float16, 64, 16, 16
        cases = [([0, 1, 17, 40], 1, 1), ([33, 64], 1, 16), ([5, 70], 2, 3), ([130], 1, 128)]
        print("no CUDA GPU found: running the kernels in the Triton interpreter (TRITON_INTERPRET=1) "
              "on small fp16 shapes (latent 64 + 16, pages of 16). Timings are not meaningful here.")
    ok = True
    g = torch.Generator().manual_seed(0)
    print(f"{'lengths':<26} {'s_q':>3} {'h_q':>4} {'out rel err':>12} {'lse rel err':>12}  result")
    for lens, s_q, h_q in cases:
        d = dv + dr
        pages = [-(-n // page) for n in lens]
        num_blocks = sum(pages) + 1
        k_cache = torch.randn(num_blocks, page, 1, d, generator=g).to(dtype).to(device)
        perm = torch.randperm(num_blocks, generator=g)
        block_table = torch.zeros(len(lens), max(pages + [1]), dtype=torch.int32)
        at = 0
        for i, p in enumerate(pages):
            block_table[i, :p] = perm[at:at + p].to(torch.int32)
            at += p
        block_table = block_table.to(device)
        lens_t = torch.tensor(lens, dtype=torch.int32, device=device)
        q = torch.randn(len(lens), s_q, h_q, d, generator=g).to(dtype).to(device)
        md, num_splits = tm.get_mla_metadata(lens_t, s_q * h_q, 1)
        out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, lens_t, dv, md, num_splits, causal=True)
        ref, ref_lse = decode_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), lens_t.cpu(), dv, causal=True,
                                  dtype=torch.float64)
        err = ((out.double().cpu() - ref).norm() / ref.norm()).item()
        fin = torch.isfinite(ref_lse)
        lse_c = lse.double().cpu()
        lse_err = ((lse_c[fin] - ref_lse[fin]).norm() / ref_lse[fin].norm().clamp_min(1e-30)).item()
        good = (err < 1e-2 and lse_err < 1e-2 and torch.equal(torch.isinf(lse_c), ~fin)
                and not torch.isnan(out).any().item())
        ok &= good
        print(f"{str(lens):<26} {s_q:>3} {h_q:>4} {err:12.2e} {lse_err:12.2e}  {'ok' if good else 'FAIL'}")
    print("self-check passed" if ok else "self-check FAILED")
    return ok


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "check-configs":
        from triton_mla.configs.check import main as check_main

        return check_main(argv[1:])
    if argv and argv[0] == "tune":
        from triton_mla.tune import main as tune_main

        return tune_main(argv[1:])
    if argv and argv[0] == "bench":
        from triton_mla.bench import main as bench_main

        return bench_main(argv[1:])
    if argv:
        print(__doc__)
        return 2
    _ensure_interpreter_without_gpu()
    t0 = time.time()
    ok = self_check()
    import torch

    if torch.cuda.is_available():
        from triton_mla.bench import main as bench_main

        print("\nbenchmark (a few shapes; full table: python -m triton_mla bench decode):")
        bench_main(["decode", "--quick"])
    else:
        print("\nbenchmark skipped: it needs a CUDA GPU (python -m triton_mla bench decode on one)")
    print(f"done in {time.time() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
