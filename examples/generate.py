"""Generate with a small random DeepSeek-V3-shaped model whose attention runs on triton_mla's paged latent cache.

    PYTHONPATH=. python examples/generate.py                      # GPU: 128 heads, 512 + 64 latent, bf16
    PYTHONPATH=. python examples/generate.py --cache-dtype fp8    # FlashMLA's 656-byte FP8 latent cache
    PYTHONPATH=. python examples/generate.py --cpu                # tiny dims, fp32, Triton interpreter

Builds ``DeepseekV3ForCausalLM`` from a config (random weights, no download), patches it with
``triton_mla.integrations.patch_model`` and calls the unchanged ``model.generate()`` on a left-padded batch;
prints the tokens/s and what the latent cache holds.
"""

import argparse
import os
import sys
import time

import torch

if "--cpu" in sys.argv or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

from transformers import AutoModelForCausalLM, DeepseekV3Config  # noqa: E402

from triton_mla.integrations import patch_model  # noqa: E402

YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, mscale=1.0,
            mscale_all_dim=1.0, beta_fast=32, beta_slow=1)


def config(cpu: bool, layers: int):
    if cpu:
        return DeepseekV3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                first_k_dense_replace=layers, num_attention_heads=4, num_key_value_heads=4,
                                q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
                                v_head_dim=16, max_position_embeddings=4096, rope_parameters=dict(YARN))
    # DeepSeek-V3's attention (128 heads, q LoRA 1536, latent 512 + 64) with dense MLPs and a small vocabulary
    return DeepseekV3Config(vocab_size=32000, num_hidden_layers=layers, first_k_dense_replace=layers,
                            num_key_value_heads=128, max_position_embeddings=163840, rope_parameters=dict(YARN))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny dims on the CPU (Triton interpreter)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 4 on GPU, 2 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="prompts (default 8 on GPU, 2 on CPU)")
    parser.add_argument("--prompt-len", type=int, default=None, help="longest prompt (default 1024 / 12)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens to generate (default 64 / 8)")
    parser.add_argument("--cache-dtype", choices=["model", "fp8"], default="model")
    parser.add_argument("--page-size", type=int, default=64)
    args = parser.parse_args()
    cpu = args.cpu or not torch.cuda.is_available()
    device, dtype = ("cpu", torch.float32) if cpu else ("cuda", torch.bfloat16)
    layers = args.layers or (2 if cpu else 4)
    batch = args.batch or (2 if cpu else 8)
    prompt_len = args.prompt_len or (12 if cpu else 1024)
    new_tokens = args.new_tokens or (8 if cpu else 64)
    if cpu and args.cache_dtype == "fp8":
        sys.exit("generate: the FP8 cache needs a GPU (and DeepSeek's 512 + 64 latent)")

    torch.manual_seed(0)
    cfg = config(cpu, layers)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    patch_model(model, max_batch_size=batch, max_seq_len=prompt_len + new_tokens, page_size=args.page_size,
                cache_dtype="fp8" if args.cache_dtype == "fp8" else None)
    runtime = model.triton_mla

    ids = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device=device)
    mask = torch.ones_like(ids)
    for i in range(batch):  # prompts of different lengths, left-padded as generate expects
        mask[i, : i * prompt_len // (2 * batch)] = 0
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
              pad_token_id=0)
    model.generate(ids, **dict(kw, max_new_tokens=2, min_new_tokens=2))  # warm-up: compiles the kernels
    if not cpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, **kw)
    if not cpu:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0

    alloc = runtime.cache.allocator
    tokens = sum(alloc.seqlen(s) for s in runtime.seq_ids)
    used = alloc.num_blocks - alloc.num_free_pages
    per_layer = runtime.cache.bytes_per_token
    print(f"{layers} layers, {cfg.num_attention_heads} heads, latent {cfg.kv_lora_rank} + {cfg.qk_rope_head_dim}, "
          f"{dtype}, {device}; batch {batch}, prompts up to {prompt_len} tokens, {new_tokens} new tokens each")
    print(f"generate: {dt:.2f} s, {batch * new_tokens / dt:.1f} tokens/s (prefill included)")
    print(f"latent cache: {per_layer} B per token per layer ({'FP8' if runtime.cache.is_fp8 else str(dtype)}), "
          f"{tokens} tokens cached in {used} pages of {args.page_size}: "
          f"{used * args.page_size * per_layer * layers / 2**20:.1f} MiB in use of "
          f"{runtime.cache.caches.numel() * runtime.cache.caches.element_size() / 2**20:.1f} MiB allocated")
    print("first row:", out[0, -new_tokens:].tolist())


if __name__ == "__main__":
    main()
