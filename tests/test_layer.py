"""MLAAttention (triton_mla.layers) against a float64 naive-MLA reference and Hugging Face's DeepSeek attention.

CPU runs use the interpreter with tiny dims (hidden 64, heads 1-16, kv_lora_rank 32, rope 16, nope 16,
v 16) in fp32/fp16; GPU runs add bf16 at DeepSeek-V3's dims and the FP8 cache. Every case: fresh random
weights and inputs, a NaN-poisoned cache with pages in shuffled order, block-table entries past the
used pages set far out of range, and the prefix written by the layer's own ``latents``.
"""

import copy
import importlib.util
import math

import pytest
import torch
from conftest import CPU_DTYPES, DEVICE, LAYER_BF16_TOLERANCE, assert_close, gpu

from triton_mla.cache import write_kv_cache
from triton_mla.layers import MLAAttention, apply_rope, rope_frequencies, softmax_scale
from triton_mla.reference import mla_naive_ref, split_kv_b_proj
from triton_mla.serving import MLABackend

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers")
HAS_PREFILL = importlib.util.find_spec("triton_mla.prefill") is not None
HAS_EXTEND = importlib.util.find_spec("triton_mla.extend") is not None
needs_prefill = pytest.mark.skipif(not HAS_PREFILL, reason="triton_mla.prefill not there yet")
needs_extend = pytest.mark.skipif(not HAS_EXTEND, reason="triton_mla.extend not there yet")

YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64, mscale=0.707,
            mscale_all_dim=1.0, beta_fast=32, beta_slow=1)
TINY = dict(hidden_size=64, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16)
DSV3 = dict(hidden_size=7168, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
FAR = 1 << 30  # block-table entries past a sequence's pages: never read


def make_layer(num_heads=4, q_lora_rank=24, dtype=torch.float32, device=DEVICE, seed=0, dims=TINY, rope=YARN,
               layout="deinterleave", std=None, **kwargs):
    """A layer with random weights (large enough that attention is far from uniform)."""
    torch.manual_seed(seed)
    layer = MLAAttention(num_heads=num_heads, q_lora_rank=q_lora_rank, rope_parameters=rope,
                         max_position_embeddings=256, rope_layout=layout, **dims, **kwargs)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "layernorm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, std or 1.5 / math.sqrt(p.shape[-1]))
    return layer.to(device=device, dtype=dtype)


def reference_step(layer, seqs, quantize_latents=False):
    """Float64 naive MLA for the new tokens of each sequence, packed: (sum q_len, hidden).

    seqs: [(x (n, hidden): the whole sequence, q_len: how many of its last tokens are new)]. The rope
    uses rope.py's frequencies and layouts (tested against transformers below) in float64.
    quantize_latents: round the latents through the FP8 layout (what an FP8 cache holds).
    """
    device = layer.kv_b_proj.weight.device  # float64 on the GPU when there is one: 128-head references are big
    ref = copy.deepcopy(layer).double()
    ref.tp_size = 1
    inv_freq, attn_factor = rope_frequencies(ref.qk_rope_head_dim, ref.rope_parameters, ref.max_position_embeddings)
    h, r, dn, dv = ref.num_heads, ref.kv_lora_rank, ref.qk_nope_head_dim, ref.v_head_dim
    outs = []
    with torch.no_grad():
        for x, q_len in seqs:
            x = x.to(device=device, dtype=torch.float64)
            n = x.shape[0]
            freqs = torch.arange(n, dtype=torch.float64, device=device)[:, None] * inv_freq.double().to(device)
            cos, sin = freqs.cos() * attn_factor, freqs.sin() * attn_factor
            if ref.q_lora_rank is None:
                q = ref.q_proj(x)
            else:
                q = ref.q_b_proj(ref.q_a_layernorm(ref.q_a_proj(x)))
            q = q.view(n, h, -1)
            q_nope = q[..., :dn]
            q_pe = apply_rope(q[..., dn:], cos[:, None], sin[:, None], ref.rotary_emb.layout)
            latent = ref.kv_a_proj_with_mqa(x)
            kv_c = ref.kv_a_layernorm(latent[:, :r])
            k_pe = apply_rope(latent[:, r:], cos, sin, ref.rotary_emb.layout)
            if quantize_latents:
                from triton_mla import fp8

                lat = fp8.dequantize_latent(fp8.quantize_latent(kv_c.float(), k_pe.float()), torch.float64)
                kv_c, k_pe = lat[:, :r], lat[:, r:]
            w_uk, w_uv = split_kv_b_proj(ref.kv_b_proj.weight, h, dn, dv)
            o, _ = mla_naive_ref(q_nope[n - q_len:], q_pe[n - q_len:], kv_c, k_pe, w_uk, w_uv,
                                 softmax_scale=ref.scaling, causal=True)
            outs.append(ref.o_proj(o.reshape(q_len, h * dv)))
    return torch.cat(outs).cpu() if outs else torch.zeros(0, ref.hidden_size, dtype=torch.float64)


class Harness:
    """A poisoned paged cache, shuffled pages, random sequences; fills prefixes and runs steps."""

    def __init__(self, layer, page_size=4, num_blocks=64, fp8=False, max_batch=16, max_tokens=256, max_pages=24,
                 seed=0, device=DEVICE):
        self.layer, self.page_size, self.device = layer, page_size, device
        dtype = layer.kv_a_proj_with_mqa.weight.dtype
        width = layer.kv_lora_rank + layer.qk_rope_head_dim
        if fp8:
            self.k_cache = torch.full((num_blocks, page_size, 1, 656), 0xFF, dtype=torch.uint8, device=device)
        else:
            self.k_cache = torch.full((num_blocks, page_size, 1, width), float("nan"), dtype=dtype, device=device)
        self.backend = MLABackend(max_batch, max_tokens, max_pages, page_size, device=device, num_blocks=num_blocks)
        self.gen = torch.Generator().manual_seed(seed)
        self.free = torch.randperm(num_blocks, generator=self.gen).tolist()
        self.pages, self.xs, self.dtype = {}, {}, dtype

    def grow(self, sid, n):
        """Add n random tokens to sequence sid (pages from the shuffled free list); returns them."""
        x = (torch.randn(n, self.layer.hidden_size, generator=self.gen)).to(self.dtype)
        self.xs[sid] = torch.cat([self.xs.get(sid, x[:0]), x])
        pages = self.pages.setdefault(sid, [])
        while len(pages) * self.page_size < self.xs[sid].shape[0]:
            pages.append(self.free.pop())
        return x

    def slots(self, sid, start, end):
        pos = torch.arange(start, end)
        pages = torch.tensor(self.pages[sid], dtype=torch.int64)
        return pages[pos // self.page_size] * self.page_size + pos % self.page_size

    def relocate(self, sid):
        """Move sequence sid to other pages (copying its tokens), as a defragmenting allocator might."""
        old = self.pages[sid]
        fresh = [self.free.pop() for _ in old]
        self.k_cache[fresh] = self.k_cache[old]
        self.free.extend(old)
        self.pages[sid] = fresh

    def fill_prefix(self, sid, n):
        """Give sequence sid n cached tokens, written with the layer's own latents."""
        if n == 0:
            self.xs.setdefault(sid, torch.zeros(0, self.layer.hidden_size, dtype=self.dtype))
            self.pages.setdefault(sid, [])
            return
        x = self.grow(sid, n).to(self.device)
        kv_c, k_pe = self.layer.latents(x, torch.arange(n, device=self.device))
        write_kv_cache(self.k_cache, kv_c, k_pe, self.slots(sid, 0, n).to(self.device))

    def step(self, sids, q_lens, mode=None, pad_far=True):
        """Run one step: q_lens[i] new tokens for sequence sids[i]. Returns (out, ref_seqs)."""
        ctx = [self.xs[s].shape[0] if s in self.xs else 0 for s in sids]
        new = [self.grow(s, q) for s, q in zip(sids, q_lens, strict=True)]
        tables = [self.pages[s] + ([FAR] * 2 if pad_far else []) for s in sids]
        plan = self.backend.plan(q_lens, ctx, tables, mode=mode)
        x = torch.cat(new).to(self.device) if new else torch.zeros(0, self.layer.hidden_size, dtype=self.dtype,
                                                                    device=self.device)
        out = self.layer(x, plan, self.k_cache)
        return out, [(self.xs[s], q) for s, q in zip(sids, q_lens, strict=True)]


def run_case(layer, ctx_lens, q_lens, dtype, mode=None, page_size=4, fp8=False, tol=None, **kw):
    hz = Harness(layer, page_size=page_size, fp8=fp8, **kw)
    for i, c in enumerate(ctx_lens):
        hz.fill_prefix(i, c)
    out, seqs = hz.step(list(range(len(ctx_lens))), q_lens, mode=mode)
    ref = reference_step(layer, seqs, quantize_latents=fp8 and mode != "prefill")
    assert out.dtype == dtype and out.shape == (sum(q_lens), layer.hidden_size)
    assert_close(out, ref, dtype, tol=tol)
    return hz


# -- rope and softmax scale against transformers -----------------------------------------------------------
@needs_transformers
@pytest.mark.parametrize("params", [
    dict(rope_type="default", rope_theta=10000.0),
    YARN,
    dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, mscale=1.0,
         mscale_all_dim=1.0, beta_fast=32, beta_slow=1),  # DeepSeek-V3's
    dict(rope_type="yarn", rope_theta=50000.0, factor=8.0, original_max_position_embeddings=512),
])
def test_rope_frequencies_match_transformers(params):
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RotaryEmbedding, yarn_apply_mscale

    cfg = DeepseekV3Config(qk_rope_head_dim=64, max_position_embeddings=163840 if params.get("factor") == 40.0
                           else 4096, rope_parameters=dict(params))
    if params["rope_type"] == "default":
        want, factor = DeepseekV3RotaryEmbedding.compute_default_rope_parameters(cfg)
    else:
        want, factor = ROPE_INIT_FUNCTIONS["yarn"](cfg)
    got, got_factor = rope_frequencies(64, dict(params), cfg.max_position_embeddings)
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=0)
    assert got_factor == pytest.approx(factor, rel=1e-12)
    assert softmax_scale(192, dict(params)) == pytest.approx(yarn_apply_mscale(cfg.rope_parameters, 192 ** -0.5))


@needs_transformers
def test_rope_layouts_match_transformers():
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import apply_rotary_emb
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
        apply_rotary_pos_emb,
        apply_rotary_pos_emb_interleave,
    )

    torch.manual_seed(0)
    T, h, d = 7, 3, 16
    q, k = torch.randn(1, h, T, d), torch.randn(1, 1, T, d)
    inv_freq, _ = rope_frequencies(d, YARN, 256)
    freqs = torch.arange(T)[:, None].float() * inv_freq
    emb = torch.cat([freqs, freqs], -1)[None]
    for layout, fn in (("deinterleave", apply_rotary_pos_emb_interleave), ("half", apply_rotary_pos_emb)):
        wq, wk = fn(q, k, emb.cos(), emb.sin())
        torch.testing.assert_close(apply_rope(q, freqs.cos(), freqs.sin(), layout), wq)
        torch.testing.assert_close(apply_rope(k, freqs.cos(), freqs.sin(), layout), wk)
    wq, wk = apply_rotary_emb(q, k, torch.polar(torch.ones_like(freqs), freqs)[None])
    torch.testing.assert_close(apply_rope(q, freqs.cos(), freqs.sin(), "interleaved"), wq)
    torch.testing.assert_close(apply_rope(k, freqs.cos(), freqs.sin(), "interleaved"), wk)


# -- the three paths on CPU (interpreter) --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("num_heads,q_lora_rank", [(1, 24), (4, None), (12, 24), (16, 8)])
def test_decode(dtype, num_heads, q_lora_rank):
    # lengths after the step: 1 (empty prefix), 4 and 5 (page boundary), 10
    layer = make_layer(num_heads, q_lora_rank, dtype)
    run_case(layer, [0, 3, 4, 9], [1, 1, 1, 1], dtype)


@needs_prefill
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("num_heads", [2, 8])
def test_prefill_mha(dtype, num_heads):
    layer = make_layer(num_heads, 24, dtype, seed=1)
    run_case(layer, [0, 0, 0, 0], [1, 5, 8, 9], dtype, mode="prefill")


@needs_extend
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("num_heads", [3, 16])
def test_extend_mixed_batch(dtype, num_heads):
    # decode rows between extend rows, a chunk continuing a prefix, a fresh prompt, a sequence with no new token
    layer = make_layer(num_heads, None, dtype, seed=2)
    run_case(layer, [5, 0, 7, 3, 9, 4], [1, 6, 3, 1, 0, 5], dtype)


@needs_prefill
@needs_extend
def test_prefill_absorbed_equals_mha():
    layer = make_layer(4, 24, torch.float32, seed=3)
    layer.prefill_mode = "absorbed"
    run_case(layer, [0, 0], [7, 3], torch.float32, mode="prefill")


@needs_extend
def test_auto_prefill_outside_mha_head_dims():
    """qk_nope + qk_rope below the MHA kernel's 16: "auto" runs the prefill absorbed (it raised a ValueError
    naming the kernel's q), "mha" is refused when the layer is built."""
    dims = dict(TINY, qk_nope_head_dim=4, qk_rope_head_dim=4)
    layer = make_layer(3, None, torch.float32, seed=6, dims=dims)
    run_case(layer, [0, 0], [5, 2], torch.float32, mode="prefill")
    with pytest.raises(ValueError, match="prefill_mode"):
        MLAAttention(num_heads=2, prefill_mode="mha", **dims)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_layouts_and_default_rope(layout):
    layer = make_layer(4, 24, torch.float32, seed=4, layout=layout, rope=dict(rope_type="default", rope_theta=1e4))
    run_case(layer, [2, 6], [1, 1], torch.float32)


def test_empty_step():
    layer = make_layer(2, 24, torch.float32)
    hz = Harness(layer)
    out, _ = hz.step([], [])
    assert out.shape == (0, layer.hidden_size)


# -- weights -----------------------------------------------------------------------------------------------
@needs_transformers
@pytest.mark.parametrize("q_lora_rank", [24, None])
def test_state_dict_is_hugging_faces(q_lora_rank):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention

    cfg = DeepseekV3Config(num_attention_heads=4, q_lora_rank=q_lora_rank, rope_parameters=YARN, **TINY)
    hf = DeepseekV3Attention(cfg, 0)
    ours = MLAAttention.from_config(cfg)
    assert set(ours.state_dict()) == set(hf.state_dict())
    ours.load_state_dict(hf.state_dict(), strict=True)


def test_absorbed_weights_follow_the_weights():
    """W_UK / W_UV are views of kv_b_proj.weight: every way of changing the weight shows in them, and a captured
    graph reads the weight's own memory."""
    layer = make_layer(4, 24, torch.float32)
    w = layer.kv_b_proj.weight
    uk, uv = layer.absorbed_weights()
    assert uk.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
    new = make_layer(4, 24, torch.float32, seed=9)
    want_uk, want_uv = split_kv_b_proj(new.kv_b_proj.weight, 4, 16, 16)
    layer.load_state_dict(new.state_dict())
    torch.testing.assert_close(layer.absorbed_weights()[0], want_uk)
    torch.testing.assert_close(layer.absorbed_weights()[1], want_uv.transpose(1, 2))
    with torch.no_grad():
        layer.kv_b_proj.weight.mul_(2)
    torch.testing.assert_close(layer.absorbed_weights()[0], 2 * want_uk)
    layer.kv_b_proj.weight.data.copy_(new.kv_b_proj.weight)  # a weight loader's way: no version bump
    torch.testing.assert_close(layer.absorbed_weights()[1], want_uv.transpose(1, 2))
    layer.to(torch.float16)
    assert layer.absorbed_weights()[0].dtype == torch.float16


def test_layer_weights_updated_under_inference_mode():
    """Weights made and changed under inference_mode (a serving engine's weight sync) reach the absorbed path,
    and a step under inference_mode does not leave tensors that later grad-mode steps cannot use."""
    with torch.inference_mode():
        layer = make_layer(4, 24, torch.float32)
        new = make_layer(4, 24, torch.float32, seed=9)
        layer.absorbed_weights()
        layer.kv_b_proj.weight.copy_(new.kv_b_proj.weight)
        want_uk, _ = split_kv_b_proj(new.kv_b_proj.weight, 4, 16, 16)
        torch.testing.assert_close(layer.absorbed_weights()[0], want_uk)
    plain = make_layer(4, 24, torch.float32)
    with torch.inference_mode():
        plain.absorbed_weights()
    uk, _ = plain.absorbed_weights()  # outside inference_mode again
    assert not uk.is_inference()


# -- bad input ---------------------------------------------------------------------------------------------
def test_bad_input():
    layer = make_layer(2, 24, torch.float32)
    hz = Harness(layer)
    hz.fill_prefix(0, 3)
    plan = hz.backend.plan([1], [3], [hz.pages[0]])
    x = torch.randn(1, 64, device=DEVICE)
    with pytest.raises(ValueError, match="hidden_states"):
        layer(torch.randn(1, 65, device=DEVICE), plan, hz.k_cache)
    with pytest.raises(ValueError, match="hidden_states"):
        layer(torch.randn(2, 64, device=DEVICE), plan, hz.k_cache)
    with pytest.raises(TypeError, match="hidden_states"):
        layer(x.half(), plan, hz.k_cache)
    with pytest.raises(TypeError, match="plan"):
        layer(x, {"mode": "decode"}, hz.k_cache)
    with pytest.raises(ValueError, match="k_cache"):
        layer(x, plan, hz.k_cache[..., :40])
    with pytest.raises(TypeError, match="k_cache"):
        layer(x, plan, hz.k_cache.half())
    with pytest.raises(ValueError, match="qk_rope_head_dim"):
        MLAAttention(64, 2, qk_rope_head_dim=15)
    with pytest.raises(ValueError, match="num_heads"):
        MLAAttention(64, 0)
    with pytest.raises(ValueError, match="prefill_mode"):
        MLAAttention(64, 2, prefill_mode="fast")
    # limits of the absorbed kernels, and a bool rank: refused when the layer is built, not at its first step
    with pytest.raises(ValueError, match="kv_lora_rank"):
        MLAAttention(64, 2, kv_lora_rank=513)
    with pytest.raises(ValueError, match="qk_rope_head_dim"):
        MLAAttention(64, 2, qk_rope_head_dim=130)
    with pytest.raises(ValueError, match="q_lora_rank"):
        MLAAttention(64, 2, q_lora_rank=True)
    with pytest.raises(ValueError, match="layout"):
        MLAAttention(64, 2, rope_layout="zigzag")
    with pytest.raises(NotImplementedError, match="rope_type"):
        MLAAttention(64, 2, rope_parameters=dict(rope_type="longrope", rope_theta=1e4))
    with pytest.raises(TypeError, match="rope_parameters"):
        MLAAttention(64, 2, rope_parameters="yarn")
    with pytest.raises(ValueError, match="rope_layout"):
        MLAAttention(64, 2, rope_layout="foo")
    for eps in (-1.0, 0.0, float("nan"), "1e-6"):
        with pytest.raises(ValueError, match="norm_eps"):
            MLAAttention(64, 2, norm_eps=eps)
    for bad in (dict(factor=-4.0), dict(factor=float("inf")), dict(rope_theta=0.0)):
        yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 1e4, **bad}
        with pytest.raises(ValueError, match="rope_parameters: '(factor|rope_theta)'"):
            MLAAttention(64, 2, rope_parameters=yarn)
    # latents() checks its input as forward() does
    with pytest.raises(TypeError, match="hidden_states"):
        layer.latents(x.half(), torch.arange(1, device=DEVICE))


# -- against Hugging Face's attention module ---------------------------------------------------------------
def _hf_attention(kind, q_lora_rank, num_heads):
    from transformers import DeepseekV2Config, DeepseekV3Config
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Attention, DeepseekV2RotaryEmbedding
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    if kind == "v2":
        cfg = DeepseekV2Config(num_attention_heads=num_heads, num_key_value_heads=num_heads, q_lora_rank=q_lora_rank,
                               rope_parameters=dict(YARN), max_position_embeddings=256, **TINY)
        attn_cls, rot_cls = DeepseekV2Attention, DeepseekV2RotaryEmbedding
    else:
        cfg = DeepseekV3Config(num_attention_heads=num_heads, num_key_value_heads=num_heads, q_lora_rank=q_lora_rank,
                               rope_parameters=dict(YARN), max_position_embeddings=256, rope_interleave=kind == "v3",
                               **TINY)
        attn_cls, rot_cls = DeepseekV3Attention, DeepseekV3RotaryEmbedding
    cfg._attn_implementation = "eager"
    torch.manual_seed(5)
    hf = attn_cls(cfg, 0).float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "layernorm" in name else torch.randn_like(p) * 1.5 / p.shape[-1] ** 0.5)
    return cfg, hf, rot_cls(cfg)


@needs_transformers
@pytest.mark.parametrize("kind,q_lora_rank,num_heads", [("v3", 24, 4), ("v3-half", None, 3), ("v2", 24, 8)])
def test_matches_hugging_face_attention(kind, q_lora_rank, num_heads):
    """Prefill of 9 tokens then one decode step, against the Hugging Face module fed the whole sequence."""
    cfg, hf, rot = _hf_attention(kind, q_lora_rank, num_heads)
    layer = MLAAttention.from_config(cfg).to(DEVICE)
    layer.load_state_dict(hf.state_dict())
    n = 10
    x = torch.randn(1, n, cfg.hidden_size)
    pos = torch.arange(n)[None]
    mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        want, _ = hf(hidden_states=x, position_embeddings=rot(x, pos), attention_mask=mask)
    backend = MLABackend(4, 64, 8, page_size=4, device=DEVICE)
    k_cache = torch.full((8, 4, 1, 48), float("nan"), device=DEVICE)
    pages = [5, 2, 7]
    with torch.no_grad():
        if HAS_PREFILL:
            plan = backend.plan([n - 1], [0], [pages])
            first = layer(x[0, : n - 1].to(DEVICE), plan, k_cache)
            assert_close(first, want[0, : n - 1], torch.float32, "prefill")
        else:
            kv_c, k_pe = layer.latents(x[0, : n - 1].to(DEVICE), pos[0, : n - 1].to(DEVICE))
            slots = torch.tensor([pages[p // 4] * 4 + p % 4 for p in range(n - 1)], device=DEVICE)
            write_kv_cache(k_cache, kv_c, k_pe, slots)
        plan = backend.plan([1], [n - 1], [pages])
        last = layer(x[0, n - 1:].to(DEVICE), plan, k_cache)
    assert_close(last, want[0, n - 1:], torch.float32, "decode")


# -- GPU: bf16 at DeepSeek-V3's dims, the FP8 cache --------------------------------------------------------
@gpu
@pytest.mark.parametrize("num_heads", [16, 128])
@pytest.mark.parametrize("path", ["decode", "prefill", "extend"])
def test_gpu_bf16_deepseek_dims(num_heads, path):
    layer = make_layer(num_heads, 1536, torch.bfloat16, dims=DSV3)
    if path == "decode":
        ctx, q = [0, 63, 64, 1000, 2047, 65], [1] * 6
    elif path == "prefill":
        ctx, q = [0, 0, 0], [1, 300, 777]
    else:
        ctx, q = [100, 0, 64, 1500], [1, 129, 7, 64]
    run_case(layer, ctx, q, torch.bfloat16, page_size=64, max_pages=48, num_blocks=256, max_tokens=2048,
             mode=None if path != "prefill" else "prefill", tol=LAYER_BF16_TOLERANCE)


@gpu
@pytest.mark.parametrize("path", ["decode", "extend"])
def test_gpu_fp8_cache(path):
    layer = make_layer(16, 1536, torch.bfloat16, dims=DSV3)
    ctx, q = ([0, 64, 700], [1, 1, 1]) if path == "decode" else ([0, 64, 700], [5, 1, 70])
    run_case(layer, ctx, q, torch.bfloat16, page_size=64, max_pages=16, num_blocks=64, max_tokens=512, fp8=True,
             tol=LAYER_BF16_TOLERANCE)


@gpu
def test_gpu_matches_cpu_fp32():
    layer = make_layer(8, 24, torch.float32, device="cuda")
    run_case(layer, [0, 5, 17], [1, 1, 1], torch.float32, device="cuda")


def test_bad_input_page_size_and_fp8_layout():
    """A plan made for another page size addressed other tokens than attention read (rel err 0.15, no error even
    with TRITON_MLA_CHECK=1); an FP8 cache with a float32 layer or non-DeepSeek latent dims failed inside the step
    (naming the kernel's ``q`` or ``kv_c, k_pe``), after the cache had been written. All raise before any write."""
    layer = make_layer(2, 24, torch.float32)
    k_cache = torch.zeros(16, 4, 1, 48, device=DEVICE)
    plan = MLABackend(4, 16, 16, page_size=8, device=DEVICE).plan([1], [5], [[1, 2]])
    assert plan.page_size == 8
    with pytest.raises(ValueError, match="k_cache: pages of 4 tokens.*page_size 8"):
        layer(torch.randn(1, 64, device=DEVICE), plan, k_cache)
    assert k_cache.abs().sum() == 0
    k_fp8 = torch.zeros(8, 4, 1, 656, dtype=torch.uint8, device=DEVICE)
    plan = MLABackend(4, 16, 8, page_size=4, device=DEVICE).plan([1], [0], [[0]])
    with pytest.raises(ValueError, match="k_cache: the FP8 layout holds kv_lora_rank 512"):
        layer(torch.randn(1, 64, device=DEVICE), plan, k_fp8)
    dims = dict(hidden_size=64, kv_lora_rank=512, qk_nope_head_dim=16, qk_rope_head_dim=64, v_head_dim=16)
    fp32 = make_layer(2, 24, torch.float32, dims=dims)
    with pytest.raises(TypeError, match="k_cache: the FP8 layout is read with bfloat16/float16"):
        fp32(torch.randn(1, 64, device=DEVICE), plan, k_fp8)
    assert k_fp8.sum() == 0


def test_yarn_without_factor_derives_it_everywhere():
    """YaRN with no 'factor': the rope derived it from max_position_embeddings / original_max_position_embeddings,
    but the softmax scale read params['factor'] (KeyError when the layer was built); with neither, a bare TypeError."""
    params = {k: v for k, v in YARN.items() if k != "factor"}
    layer = MLAAttention(num_heads=2, rope_parameters=params, max_position_embeddings=256, **TINY)
    want = MLAAttention(num_heads=2, rope_parameters=dict(params, factor=4.0), max_position_embeddings=256, **TINY)
    assert layer.scaling == want.scaling != layer.qk_head_dim ** -0.5
    assert layer.rotary_emb.attention_factor == want.rotary_emb.attention_factor
    torch.testing.assert_close(layer.rotary_emb.inv_freq, want.rotary_emb.inv_freq, rtol=0, atol=0)
    with pytest.raises(ValueError, match="rope_parameters"):
        softmax_scale(32, params)
    with pytest.raises(ValueError, match="rope_parameters"):
        rope_frequencies(16, params)


def test_latents_checks_positions():
    """A (T, 1) positions tensor broadcast into (T, 1, d) rope keys, float positions were taken as is."""
    layer = make_layer(2, 24, torch.float32)
    x = torch.randn(3, 64, device=DEVICE)
    kv_c, k_pe = layer.latents(x, torch.arange(3, device=DEVICE))
    assert kv_c.shape == (3, 32) and k_pe.shape == (3, 16)
    for pos in (torch.zeros(3, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.zeros(3)):
        with pytest.raises(ValueError, match="positions"):
            layer.latents(x, pos.to(DEVICE))
    with pytest.raises(TypeError, match="positions"):
        layer.latents(x, [0, 1, 2])
    with pytest.raises(ValueError, match="hidden_states"):
        layer.latents(torch.randn(3, 65, device=DEVICE), torch.arange(3, device=DEVICE))
