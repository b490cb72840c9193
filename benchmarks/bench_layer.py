"""MLA layer benchmarks: a DeepSeek-V3 attention layer's decode step as a CUDA graph, and HF decode tokens/s.

    PYTHONPATH=. python benchmarks/bench_layer.py layer [--batch 64] [--context 4096] [--heads 128] [--fp8]
    PYTHONPATH=. python benchmarks/bench_layer.py hf [--contexts 1024 4096] [--batch 16] [--layers 2]
    PYTHONPATH=. python benchmarks/bench_layer.py all

``layer``: one ``MLAAttention`` with DeepSeek-V3's dims (hidden 7168, q LoRA 1536, latent 512 + 64,
128 heads of 128 + 64 / 128), bf16, pages of 64, every sequence at ``--context`` cached tokens; the
decode step (projections, rope, cache write, absorbed attention, output projection) captured as a CUDA
graph and replayed. Reports the step time and, from a torch-profiler trace of the replays, every kernel
of the step and the attention part's figures: the cache write, decode and combine kernels run back to back,
so their busy time over the span from the first one's start to the last one's end (target >= 90%) shows
launch gaps; anything else inside that span is listed as stray.

``hf``: a DeepSeek-V3-shaped ``DeepseekV3ForCausalLM`` (128 heads, ``--layers`` dense layers, random
weights, bf16) decoding greedily from a ``--batch`` x context prompt, unpatched (transformers' own
attention and cache) and patched (``triton_mla.integrations.patch_model``, bf16 and FP8 latent caches):
decode tokens/s (model forwards with the cache, as ``generate`` makes them, prefill excluded) and the
cache bytes per token per layer each one holds.

Results go to ``benchmarks/results/<device>/layer.json`` (``--out`` to change) with the device, versions,
commit and command line.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from triton_mla.layers import MLAAttention  # noqa: E402
from triton_mla.serving import DecodeGraphs, MLABackend  # noqa: E402

DSV3 = dict(hidden_size=7168, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
            v_head_dim=128)
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, mscale=1.0,
            mscale_all_dim=1.0, beta_fast=32, beta_slow=1)
ATTENTION_KERNELS = ("_write_kv", "_decode_kernel", "_decode_sm90", "_combine_kernel", "decode_fp8", "_extend",
                     "_prefill")
PAGE = 64


def environment():
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True).strip()
    except Exception:
        commit = "unknown"
    import triton

    return dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                commit=commit, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"), command=" ".join(sys.argv),
                host=platform.node())


def random_layer(heads, dtype=torch.bfloat16):
    layer = MLAAttention(num_heads=heads, rope_parameters=YARN, max_position_embeddings=163840, device="cuda",
                         dtype=dtype, **DSV3)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "layernorm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 1 / math.sqrt(p.shape[-1]))
    return layer


# -- layer: CUDA-graph decode step + profile -----------------------------------------------------------------
def kernel_events(prof):
    """(name, start_us, end_us) of every device kernel, in start order."""
    rows = []
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA and evt.time_range.end > evt.time_range.start:
            rows.append((evt.name, evt.time_range.start, evt.time_range.end))
    return sorted(rows, key=lambda r: r[1])


def is_attention(name):
    return any(k in name for k in ATTENTION_KERNELS)


def bench_layer(args):
    layer = random_layer(args.heads)
    b, ctx = args.batch, args.context
    pages = math.ceil((ctx + 1) / PAGE)
    num_blocks = b * pages
    if args.fp8:
        from triton_mla import fp8, write_kv_cache

        k_cache = torch.zeros(num_blocks, PAGE, 1, fp8.BYTES_PER_TOKEN, dtype=torch.uint8, device="cuda")
        for lo in range(0, num_blocks * PAGE, 1 << 18):
            n = min(1 << 18, num_blocks * PAGE - lo)
            write_kv_cache(k_cache, torch.randn(n, 512, device="cuda"), torch.randn(n, 64, device="cuda"),
                           torch.arange(lo, lo + n, device="cuda"))
    else:
        k_cache = torch.randn(num_blocks, PAGE, 1, 576, dtype=torch.bfloat16, device="cuda")
    backend = MLABackend(b, b, pages, PAGE, device="cuda")
    static = torch.randn(b, DSV3["hidden_size"], dtype=torch.bfloat16, device="cuda")
    graphs = DecodeGraphs(backend, lambda plan, x: layer(x["hidden"], plan, k_cache), {"hidden": static},
                          batch_sizes=[b])
    capture_s = graphs.capture()
    perm = torch.randperm(num_blocks).view(b, pages).tolist()  # pages in random order, as a real cache
    graphs.run([ctx] * b, perm)
    graph, _ = graphs.graphs[b]
    import triton.testing

    step_ms = triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")

    reps = 20
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    kernels = kernel_events(prof)
    if len(kernels) < reps:
        print("the profiler recorded no kernels inside the CUDA graph replays (CUPTI graph tracing off?)")
        return dict(kind="layer", heads=args.heads, batch=b, context=ctx, step_us=step_ms * 1e3, capture_s=capture_s)
    per_step = len(kernels) // reps
    steps = [kernels[i * per_step:(i + 1) * per_step] for i in range(reps)]
    shares, spans, busy_all, strays = [], [], [], {}
    for ks in steps:
        idx = [i for i, k in enumerate(ks) if is_attention(k[0])]
        if not idx:
            continue
        lo, hi = idx[0], idx[-1]
        span = ks[hi][2] - ks[lo][1]
        busy = sum(k[2] - k[1] for k in ks[lo:hi + 1] if is_attention(k[0]))
        for k in ks[lo:hi + 1]:
            if not is_attention(k[0]):
                strays[k[0]] = strays.get(k[0], 0.0) + (k[2] - k[1]) / reps
        shares.append(busy / span)
        spans.append(span)
        busy_all.append(busy)
    totals = {}
    for ks in steps:
        for name, s, e in ks:
            totals[name] = totals.get(name, 0.0) + (e - s) / reps
    gpu_us = sum(totals.values())
    attn_us = sum(v for k, v in totals.items() if is_attention(k))

    print(f"\n== layer: DeepSeek-V3 attention, {args.heads} heads, batch {b}, context {ctx}, "
          f"{'FP8' if args.fp8 else 'bf16'} cache, {torch.cuda.get_device_name()} ==")
    print(f"decode step (CUDA graph replay): {step_ms * 1e3:.1f} us  (capture {capture_s:.2f} s, "
          f"{per_step} kernels per step)")
    print(f"GPU time per step {gpu_us:.1f} us: attention kernels {attn_us:.1f} us ({100 * attn_us / gpu_us:.1f}%), "
          f"the rest (projections, rope, norms, absorption) {gpu_us - attn_us:.1f} us")
    print(f"attention part (cache write -> decode -> combine): busy {statistics.median(busy_all):.1f} us of a "
          f"{statistics.median(spans):.1f} us span = {100 * statistics.median(shares):.1f}% (target >= 90%)")
    print("stray kernels inside the attention part: " + (", ".join(f"{k} {v:.1f} us" for k, v in strays.items())
                                                        or "none"))
    print("kernels of one step (us):")
    for name, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {us:9.1f}  {'*' if is_attention(name) else ' '} {name[:110]}")
    # FlashMLA's accounting for the attention kernels alone
    bytes_ = (b * ctx * (656 if args.fp8 else 1152) + b * args.heads * (576 + 512) * 2)
    attn_kernel_us = sum(v for k, v in totals.items() if "_decode" in k or "_combine" in k)
    return dict(kind="layer", heads=args.heads, batch=b, context=ctx, cache="fp8" if args.fp8 else "bf16",
                step_us=step_ms * 1e3, capture_s=capture_s, gpu_us=gpu_us, attention_us=attn_us,
                attention_part_share=statistics.median(shares), strays=strays,
                attention_gb_s=bytes_ / attn_kernel_us / 1e3 if attn_kernel_us else None, kernels=totals)


# -- HF: patched vs unpatched decode tokens/s ----------------------------------------------------------------
def hf_model(layers, vocab):
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    cfg = DeepseekV3Config(vocab_size=vocab, num_hidden_layers=layers, first_k_dense_replace=layers,
                           max_position_embeddings=163840, rope_parameters=dict(YARN), num_key_value_heads=128)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model.eval()


def cache_bytes(cache, layers):
    """Bytes held by a Hugging Face cache object, per layer."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total / layers


@torch.no_grad()
def decode_rate(model, batch, context, steps, warmup=3):
    from transformers.cache_utils import DynamicCache

    from triton_mla.integrations.transformers import cache_argument

    ids = torch.randint(0, model.config.vocab_size, (batch, context), device="cuda")
    cache = DynamicCache(config=model.config)
    kw = {cache_argument(model): cache, "use_cache": True, "logits_to_keep": 1}
    out = model(ids, **kw)
    tok = out.logits[:, -1:].argmax(-1)
    for _ in range(warmup):
        tok = model(tok, **kw).logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        tok = model(tok, **kw).logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    seq = context + warmup + steps
    per_token = cache_bytes(cache, model.config.num_hidden_layers) / (batch * seq)
    del cache, out
    torch.cuda.empty_cache()
    return batch * steps / dt, dt / steps * 1e3, per_token


def bench_hf(args):
    from triton_mla.integrations.transformers import patch_model, unpatch_model

    model = hf_model(args.layers, args.vocab)
    rows = []
    max_len = max(args.contexts) + args.steps + 8
    print(f"\n== HF DeepseekV3ForCausalLM, 128 heads, {args.layers} layers, bf16, batch {args.batch}, greedy decode, "
          f"{torch.cuda.get_device_name()} ==")
    print(f"{'context':>8} {'variant':<22} {'tok/s':>9} {'ms/step':>8} {'x':>6} {'cache B/token/layer':>20}")
    base = {}
    for ctx in args.contexts:
        rate, ms, per_token = decode_rate(model, args.batch, ctx, args.steps)
        base[ctx] = rate
        rows.append(dict(kind="hf", variant="unpatched", context=ctx, batch=args.batch, tok_s=rate, ms_step=ms,
                         cache_bytes_per_token_layer=per_token))
        print(f"{ctx:>8} {'transformers':<22} {rate:9.1f} {ms:8.2f} {1.0:6.2f} {per_token:20.0f}")
    for cache_dtype in ("bf16", "fp8"):
        patched = patch_model(model, max_batch_size=args.batch, max_seq_len=max_len,
                              cache_dtype=None if cache_dtype == "bf16" else "fp8")
        rt = patched.triton_mla
        for ctx in args.contexts:
            rate, ms, hf_per_token = decode_rate(patched, args.batch, ctx, args.steps)
            ours = rt.cache.bytes_per_token + hf_per_token  # the latent pages + HF's token counter
            rows.append(dict(kind="hf", variant=f"patched-{cache_dtype}", context=ctx, batch=args.batch, tok_s=rate,
                             ms_step=ms, speedup=rate / base[ctx], cache_bytes_per_token_layer=ours))
            print(f"{ctx:>8} {'triton_mla ' + cache_dtype:<22} {rate:9.1f} {ms:8.2f} {rate / base[ctx]:6.2f} "
                  f"{ours:20.0f}")
        unpatch_model(patched)  # to patch again with the other cache dtype
        torch.cuda.empty_cache()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["layer", "hf", "all"])
    parser.add_argument("--batch", type=int, default=None, help="layer: 64; hf: 16")
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=128)
    parser.add_argument("--fp8", action="store_true", help="layer: the FP8 latent cache")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_layer: needs a CUDA GPU")
    os.environ.setdefault("TRITON_MLA_CHECK", "0")
    rows = []
    if args.what in ("layer", "all"):
        layer_args = copy.copy(args)
        layer_args.batch = args.batch or 64
        rows.append(bench_layer(layer_args))
        if args.what == "all":
            layer_args.fp8 = True
            rows.append(bench_layer(layer_args))
    if args.what in ("hf", "all"):
        hf_args = copy.copy(args)
        hf_args.batch = args.batch or 16
        rows.extend(bench_hf(hf_args))
    env = environment()
    short = next((k.lower() for k in ("H100", "H200", "A100", "L40S") if k in env["device"]),
                 "".join(c if c.isalnum() else "_" for c in env["device"]).strip("_").lower())
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / short / "layer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(env, rows=rows), indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
