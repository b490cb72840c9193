"""patch_model: Hugging Face DeepSeek-V2/V3 models, patched, against themselves unpatched.

Small random-weight models from transformers' own config classes (no downloads), dense MLPs (the
attention is what is patched). CPU: fp32 in the interpreter, tolerance fp32's 1e-4; GPU: bf16.
"""

import copy

import pytest
import torch
from conftest import DEVICE, LAYER_BF16_TOLERANCE, assert_close, gpu

transformers = pytest.importorskip("transformers")

from transformers import DeepseekV2Config, DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402

from triton_mla.integrations import patch_model  # noqa: E402
from triton_mla.integrations.transformers import HFMLAAttention, cache_argument, unpatch_model  # noqa: E402

# transformers 5.24 renamed the cache argument and output field from past_key_values to cache
CACHE = cache_argument(DeepseekV3ForCausalLM)


def with_cache(cache):
    return {CACHE: cache, "use_cache": True}


YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64, mscale=0.707,
            mscale_all_dim=1.0, beta_fast=32, beta_slow=1)
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, kv_lora_rank=32, qk_rope_head_dim=16,
            v_head_dim=16, qk_nope_head_dim=16, max_position_embeddings=256)

CONFIGS = {
    # q LoRA, 4 heads, YaRN with mscale != mscale_all_dim, interleaved rope written de-interleaved
    "v3-qlora": lambda: DeepseekV3Config(num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24,
                                         num_hidden_layers=2, first_k_dense_replace=2, rope_parameters=dict(YARN),
                                         **TINY),
    # plain q_proj, 2 heads, default rope, rotate_half layout
    "v3-plain": lambda: DeepseekV3Config(num_attention_heads=2, num_key_value_heads=2, q_lora_rank=None,
                                         num_hidden_layers=1, first_k_dense_replace=1, rope_interleave=False,
                                         rope_parameters=dict(rope_type="default", rope_theta=10000.0), **TINY),
    # DeepSeek-V2: complex (interleaved) rope, 8 heads
    "v2": lambda: DeepseekV2Config(num_attention_heads=8, num_key_value_heads=8, q_lora_rank=None,
                                   num_hidden_layers=1, first_k_dense_replace=1, n_routed_experts=4,
                                   rope_parameters=dict(YARN), **TINY),
}


def make_model(name, dtype=torch.float32, device=DEVICE, seed=0, layers=None):
    torch.manual_seed(seed)
    cfg = CONFIGS[name]()
    if layers is not None:
        cfg.num_hidden_layers = cfg.first_k_dense_replace = layers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dtype).eval()
    with torch.no_grad():  # larger attention weights than the default init, so attention matters
        for n, p in model.named_parameters():
            if "self_attn" in n and "layernorm" not in n:
                p.normal_(0, 1.5 / p.shape[-1] ** 0.5)
    return model


def generate(model, ids, steps, **kw):
    return model.generate(ids, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, **kw)


def compare_generate(name, steps, ids, attention_mask=None, dtype=torch.float32, layers=None, **patch_kw):
    model = make_model(name, dtype, layers=layers)
    want = generate(model, ids, steps, attention_mask=attention_mask)
    patched = patch_model(copy.deepcopy(model), max_batch_size=4, max_seq_len=64, page_size=4, **patch_kw)
    got = generate(patched, ids, steps, attention_mask=attention_mask)
    assert torch.equal(got.sequences, want.sequences)
    assert len(got.logits) == steps
    for i, (a, b) in enumerate(zip(got.logits, want.logits, strict=True)):
        assert_close(a, b, dtype, f"logits of step {i}")
    return patched


@pytest.mark.parametrize("name", ["v3-qlora", "v3-plain"])
def test_generate_32_steps_matches_unpatched(name):
    ids = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    patched = compare_generate(name, 32, ids, layers=1)  # one layer keeps the interpreter quick
    # the latent cache holds exactly prompt + generated tokens (the last one is generated, not cached)
    alloc = patched.triton_mla.cache.allocator
    assert alloc.seqlen(patched.triton_mla.seq_ids[0]) == 7 + 31


def test_deepseek_v2():
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    compare_generate("v2", 6, ids)


def test_left_padded_batch():
    """Rows of different prompt lengths (left padding): pads are neither cached nor attended."""
    ids = torch.randint(0, 128, (3, 6), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    mask = torch.ones(3, 6, dtype=torch.long, device=DEVICE)
    mask[1, :2] = 0
    mask[2, :5] = 0
    patched = compare_generate("v3-qlora", 3, ids, attention_mask=mask)
    lens = [patched.triton_mla.cache.allocator.seqlen(s) for s in patched.triton_mla.seq_ids]
    assert lens == [6 + 2, 4 + 2, 1 + 2]


def test_prefill_logits_and_manual_cache():
    """Forward calls outside generate: full-sequence logits, then a step with the returned cache."""
    model = make_model("v3-qlora")
    patched = patch_model(copy.deepcopy(model), max_batch_size=2, max_seq_len=32, page_size=4)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    with torch.no_grad():
        want = model(ids).logits
        assert_close(patched(ids, use_cache=False).logits, want, torch.float32, "no cache")
        out = patched(ids[:, :8], use_cache=True)  # the model makes its cache: the patch adopts it
        assert_close(out.logits, want[:, :8], torch.float32, "prefill")
        step = patched(ids[:, 8:], **with_cache(getattr(out, CACHE)))
        assert_close(step.logits[:, -1], want[:, -1], torch.float32, "step")
        # a new generation (an empty cache) starts over and frees the pages
        free = patched.triton_mla.cache.allocator.num_free_pages
        patched(ids[:, :3], **with_cache(DynamicCache(config=model.config)))
        assert patched.triton_mla.cache.allocator.num_free_pages > free


def test_parameters_are_shared_and_named_as_before():
    model = make_model("v3-qlora")
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    patch_model(model, max_batch_size=1, max_seq_len=16, page_size=4)
    after = {k: v.data_ptr() for k, v in model.state_dict().items()}
    assert before == after  # same names, same tensors: nothing copied
    assert all(isinstance(layer.self_attn, HFMLAAttention) for layer in model.model.layers)
    assert model.triton_mla.bytes_per_token == 2 * 48 * 4  # 2 layers, 32 + 16 dims, fp32
    ids = torch.randint(0, 128, (1, 5)).to(DEVICE)
    with torch.no_grad():
        patched_logits = model(ids).logits
    unpatch_model(model)
    assert not hasattr(model, "triton_mla")
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before
    with torch.no_grad():
        assert_close(model(ids).logits, patched_logits, torch.float32)


def test_bad_use():
    model = make_model("v3-plain")
    patch_model(model, max_batch_size=2, max_seq_len=16, page_size=4)
    with pytest.raises(ValueError, match="already patched"):
        patch_model(model)
    with pytest.raises(RuntimeError, match="pre-hook"):
        model.model.layers[0].self_attn(torch.zeros(1, 5, 64, device=DEVICE))
    ids = torch.randint(0, 128, (1, 4)).to(DEVICE)
    out = model(ids, use_cache=True)
    getattr(out, CACHE).crop(-2)  # drop the last 2 tokens
    with pytest.raises(NotImplementedError, match="cropping"):
        model(ids[:, :1], **with_cache(getattr(out, CACHE)))
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(ValueError, match="model_type"):
        patch_model(llama)
    split = make_model("v3-plain", layers=2)  # one attention layer elsewhere (a device_map over two devices, here meta)
    split.model.layers[-1].self_attn.to("meta")
    with pytest.raises(ValueError, match="attention layers are on"):
        patch_model(split)
    # a 16/32-bit cache is read in the model's dtype: another one is refused here, not at the first forward
    with pytest.raises(ValueError, match="cache_dtype"):
        patch_model(make_model("v3-plain"), max_batch_size=2, max_seq_len=16, page_size=4,
                    cache_dtype=torch.float16 if next(model.parameters()).dtype != torch.float16 else torch.float32)


def test_out_of_pages_leaves_no_half_grown_sequences():
    """A step that ran out of cache pages part-way grew the first rows' sequences and advanced the patch's count,
    so the next call with that cache raised the misleading 'cropping' error; now the step's pages are all freed
    and that cache is refused with 'start the generation over', while a new generation runs."""
    model = make_model("v3-plain")
    patched = patch_model(copy.deepcopy(model), max_batch_size=2, max_seq_len=16, page_size=4, num_blocks=3)
    alloc = patched.triton_mla.cache.allocator
    ids = torch.randint(0, 128, (2, 13), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="out of cache pages"):
            patched(ids[:, :5], use_cache=True)  # 2 pages a row, 3 in all: the second row runs out
        assert alloc.num_free_pages == 3
        out = patched(ids[:1, :8], use_cache=True)  # a new generation, 2 pages
        assert_close(out.logits, model(ids[:1, :8]).logits, torch.float32, "prefill after the failed step")
        with pytest.raises(RuntimeError, match="out of cache pages"):
            patched(ids[:1, 8:13], **with_cache(getattr(out, CACHE)))  # 13 tokens: 4 pages
        assert alloc.num_free_pages == 3
        with pytest.raises(NotImplementedError, match="start the generation over"):
            patched(ids[:1, 8:9], **with_cache(getattr(out, CACHE)))


@gpu
@pytest.mark.parametrize("name", ["v3-qlora", "v2"])
def test_gpu_bf16_generate(name):
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(5)).cuda()
    model = make_model(name, torch.bfloat16, "cuda")
    want = generate(model, ids, 32)
    patched = patch_model(copy.deepcopy(model), max_batch_size=2, max_seq_len=128)
    got = generate(patched, ids, 32)
    # two bf16 models (the patched one differs only in attention) agree to bf16 model precision
    assert_close(got.logits[0], want.logits[0], torch.bfloat16, "first logits", tol=LAYER_BF16_TOLERANCE)
    # bf16 rounding differs between the paths, so greedy tokens may part ways at a near tie: check each patched
    # step against the unpatched model run on the patched sequence (teacher forcing)
    with torch.no_grad():
        forced = model(got.sequences[:, :-1]).logits
    for i, step in enumerate(got.logits):
        assert_close(step, forced[:, ids.shape[1] - 1 + i], torch.bfloat16, f"logits of step {i}",
                     tol=LAYER_BF16_TOLERANCE)


@gpu
def test_gpu_deepseek_v3_shaped_fp8_cache():
    """DeepSeek-V3's attention dims (128 heads, 512 + 64 latent) with the FP8 cache: runs, agrees closely."""
    torch.manual_seed(0)
    cfg = DeepseekV3Config(vocab_size=1024, hidden_size=1024, intermediate_size=1024, num_hidden_layers=2,
                           first_k_dense_replace=2, num_attention_heads=128, num_key_value_heads=128)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(cfg).to(device="cuda", dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 1024, (2, 100), device="cuda")
    with torch.no_grad():
        want = model(ids).logits
    patched = patch_model(copy.deepcopy(model), max_batch_size=2, max_seq_len=256, cache_dtype="fp8")
    assert patched.triton_mla.cache.bytes_per_token == 656
    with torch.no_grad():
        out = patched(ids[:, :99], use_cache=True)
        step = patched(ids[:, 99:], **with_cache(getattr(out, CACHE))).logits
    rel = ((step[:, -1].float() - want[:, -1].float()).norm() / want[:, -1].float().norm()).item()
    assert rel < 5e-2, rel  # FP8 (e4m3) latents: ~2^-4 relative rounding per value

