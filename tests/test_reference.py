"""The oracles themselves: naive and absorbed MLA agree (associativity), edge conventions hold."""

import pytest
import torch

from triton_mla.reference import (
    attention_ref,
    mla_absorbed_ref,
    mla_naive_ref,
    split_kv_b_proj,
)

CONFIGS = {
    # name: (heads, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim)
    "deepseek_v3": (128, 512, 128, 64, 128),
    "made_up": (5, 48, 24, 8, 20),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("num_q,num_kv", [(1, 37), (6, 6), (4, 19)])
def test_naive_equals_absorbed(name, num_q, num_kv):
    h, r, d_nope, d_rope, d_v = CONFIGS[name]
    g = torch.Generator().manual_seed(h + num_q)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    q_nope, q_pe = rnd(num_q, h, d_nope), rnd(num_q, h, d_rope)
    c_kv, k_pe = rnd(num_kv, r), rnd(num_kv, d_rope)
    kv_b_proj = rnd(h * (d_nope + d_v), r) / r**0.5
    w_uk, w_uv = split_kv_b_proj(kv_b_proj, h, d_nope, d_v)
    out_n, lse_n = mla_naive_ref(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv)
    out_a, lse_a = mla_absorbed_ref(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv)
    assert out_n.shape == (num_q, h, d_v)
    torch.testing.assert_close(out_a, out_n, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse_a, lse_n, rtol=1e-10, atol=1e-10)


def test_no_keys_gives_zero_and_inf():
    q = torch.randn(3, 2, 8, dtype=torch.float64)
    k = torch.randn(2, 1, 8, dtype=torch.float64)
    out, lse = attention_ref(q, k, k, 0.5, causal=True)  # row 0 sees key -1: nothing
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isposinf(lse[:, 0]).all() and torch.isfinite(lse[:, 1:]).all()
    out, lse = attention_ref(q, k[:0], k[:0], 0.5)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isposinf(lse).all()


def test_attention_matches_softmax():
    q = torch.randn(2, 3, 8, dtype=torch.float64)
    k = torch.randn(5, 3, 8, dtype=torch.float64)
    v = torch.randn(5, 3, 4, dtype=torch.float64)
    out, lse = attention_ref(q, k, v, 0.3)
    s = torch.einsum("qhd,khd->hqk", q, k) * 0.3
    torch.testing.assert_close(out, torch.einsum("hqk,khd->qhd", s.softmax(-1), v))
    torch.testing.assert_close(lse, s.logsumexp(-1))
