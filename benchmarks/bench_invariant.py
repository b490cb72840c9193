"""Cost of batch_invariant=True on the decode anchor shapes, and a bitwise check of what it promises.

Usage (repo root, CUDA machine): PYTHONPATH=. python3 benchmarks/bench_invariant.py [--fp8] [--out FILE.json]
(``--fp8``: the same over the FP8 cache quantized from the bf16 one)
"""

import argparse
import functools
import json

import torch
import triton

import triton_mla as tm
from triton_mla.bench import DV, D, decode_shapes, fp8_cache_of, make_decode_case


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--fp8", action="store_true", help="the FP8 cache (quantized from the bf16 one)")
    args = ap.parse_args()
    rows = []
    cache = "FP8 cache" if args.fp8 else "bf16 cache"
    print(f"# {torch.cuda.get_device_name()}, {cache}: decode time, default plan vs batch_invariant=True")
    print(f"{'b':>4} {'s_k':>6} {'h_q':>4} {'s_q':>3} {'varlen':>6} {'default us':>11} {'invariant us':>13} "
          f"{'cost':>6} {'bitwise':>8}")
    for b, s_k, h_q, s_q, varlen in decode_shapes():
        q, k_cache, block_table, lens = make_decode_case(b, s_k, h_q, s_q, varlen)
        if args.fp8:
            k_cache = fp8_cache_of(k_cache)
        causal = s_q > 1
        call = functools.partial(tm.flash_mla_with_kvcache, q, k_cache, block_table, lens, DV,
                                 softmax_scale=D ** -0.5, causal=causal, is_fp8_kvcache=args.fp8)
        out_inv, lse_inv = call(batch_invariant=True)
        # the same sequences alone and in a smaller batch in reverse order must give the same bits
        n = min(b, 3)
        idx = torch.arange(n - 1, -1, -1, device=q.device)
        sub_out, sub_lse = tm.flash_mla_with_kvcache(q[idx], k_cache, block_table[idx], lens[idx], DV,
                                                     softmax_scale=D ** -0.5, causal=causal, batch_invariant=True,
                                                     is_fp8_kvcache=args.fp8)
        bitwise = bool(torch.equal(sub_out, out_inv[idx]) and torch.equal(sub_lse, lse_inv[idx]))
        ref_out, _ = call(batch_invariant=False)
        close = ((out_inv.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
        t_def = triton.testing.do_bench(functools.partial(call, batch_invariant=False), return_mode="median")
        t_inv = triton.testing.do_bench(functools.partial(call, batch_invariant=True), return_mode="median")
        row = dict(b=b, s_k=s_k, h_q=h_q, s_q=s_q, varlen=varlen, default_us=t_def * 1e3, invariant_us=t_inv * 1e3,
                   bitwise=bitwise, rel_diff_vs_default=close)
        rows.append(row)
        print(f"{b:>4} {s_k:>6} {h_q:>4} {s_q:>3} {str(varlen):>6} {t_def * 1e3:>11.1f} {t_inv * 1e3:>13.1f} "
              f"{t_inv / t_def:>5.2f}x {str(bitwise):>8}", flush=True)
        del q, k_cache
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), cache=cache, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
