"""Time the MHA-mode prefill kernels side by side on bench_prefill's shapes: the tl.dot kernel and the sm90 Gluon
kernel's forms (``kernels/prefill_sm90.py``), with cuDNN SDPA as the yardstick; each checked first against a
float32 reference (first sequence, two heads).

    PYTHONPATH=. python benchmarks/explore/prefill_sm90_variants.py [variant ...] [--shapes B,H,S ...] [--rep MS]
"""

import argparse
import json

import torch
import triton

from triton_mla import configs
from triton_mla.bench_prefill import SHAPES, _ours, _rel_err, _sdpa_providers, make_case, prefill_flops, reference_slice

# (the tenth session's runs also had forms without the intra-warpgroup overlap: g128, g64s3, g64s4; see NOTES.md)
VARIANTS = {
    "tl.dot": dict(WGMMA=False),
    "g128o": dict(WGMMA=True, WGMMA_BLOCK_N=128, WGMMA_STAGES=2),
    "g64s3o": dict(WGMMA=True, WGMMA_BLOCK_N=64, WGMMA_STAGES=3),
    "g64s4o": dict(WGMMA=True, WGMMA_BLOCK_N=64, WGMMA_STAGES=4),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--shapes", nargs="*", default=None)
    ap.add_argument("--rep", type=int, default=200)
    args = ap.parse_args()
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    print(torch.cuda.get_device_name(), "triton", triton.__version__, flush=True)
    table = {}
    for b, h, s in shapes:
        q, k, v, cu = make_case(b, h, s)
        ref = reference_slice(q, k, v, s) if s <= 4096 else None
        flops = prefill_flops(b, h, s)
        for name in args.variants:
            with configs.overridden(**VARIANTS[name]):
                fn = _ours(q, k, v, cu, s)
                try:
                    out = fn()
                    torch.cuda.synchronize()
                    err = _rel_err(out[:s, :2], ref) if ref is not None else float("nan")
                    ok = not torch.isnan(out).any().item() and (ref is None or err < 1e-2)
                    ms = triton.testing.do_bench(fn, warmup=25, rep=args.rep)
                except Exception as e:  # report and go on to the next variant
                    print(json.dumps(dict(variant=name, b=b, h=h, s=s, error=f"{type(e).__name__}: {e}"[:300])))
                    table[(b, h, s, name)] = None
                    continue
            table[(b, h, s, name)] = flops / ms / 1e9
            print(json.dumps(dict(variant=name, b=b, h=h, s=s, ms=ms, TFLOPS=flops / ms / 1e9, rel_err=err,
                                  ok=bool(ok))), flush=True)
        cudnn = dict(_sdpa_providers(q, k, v, b, h, s))["sdpa_cudnn"]
        ms = triton.testing.do_bench(cudnn, warmup=25, rep=args.rep)
        table[(b, h, s, "cudnn")] = flops / ms / 1e9
        q = k = v = out = None
        torch.cuda.empty_cache()
    names = args.variants + ["cudnn"]
    print("  b    h      s | " + " ".join(f"{n:>8}" for n in names) + "   (TFLOPS, bf16, causal)")
    for b, h, s in shapes:
        cells = [table.get((b, h, s, n)) for n in names]
        print(f"{b:3d} {h:4d} {s:6d} | " + " ".join(f"{c:8.0f}" if c else f"{'-':>8}" for c in cells))


if __name__ == "__main__":
    main()
