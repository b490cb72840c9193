"""Plain-torch oracles: the specification every kernel is tested against.

Everything here runs in float32 or float64 on any device and favours clarity over speed.

Two equivalent views of MLA attention (DeepSeek-V2/V3):

* naive: the latent ``c_kv`` [S, r] is decompressed per head by ``W_UK`` [h, d_nope, r] into keys
  and by ``W_UV`` [h, d_v, r] into values; the rope key ``k_pe`` [S, d_rope] is shared by all heads.
* absorbed: ``W_UK`` is folded into the query (q_lat = W_UK^T q_nope) and ``W_UV`` into the output,
  so attention runs as MQA over the (r + d_rope)-dim latent, with V = the first r dims of K.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "attention_ref",
    "mla_naive_ref",
    "mla_absorbed_ref",
    "absorb_query",
    "unabsorb_output",
    "split_kv_b_proj",
    "gather_paged_kv",
    "decode_ref",
]


def attention_ref(q, k, v, softmax_scale, causal=False):
    """Single-sequence attention with FlashMLA's edge conventions.

    q: [s_q, h, d]; k: [s_k, h or 1, d]; v: [s_k, h or 1, d_v]. Causal masks are bottom-right
    aligned: query row i sees keys [0, s_k - s_q + i]. A row with no visible key gives out = 0 and
    lse = +inf. Returns out [s_q, h, d_v] and lse [h, s_q] (natural log of the scaled logits).
    """
    s_q, s_k = q.shape[0], k.shape[0]
    scores = torch.einsum("qhd,khd->hqk", q, k.expand(-1, q.shape[1], -1)) * softmax_scale
    if causal:
        qpos = torch.arange(s_q, device=q.device)[:, None] + (s_k - s_q)
        kpos = torch.arange(s_k, device=q.device)[None, :]
        scores = scores.masked_fill(kpos > qpos, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [h, s_q]; -inf where a row sees nothing
    empty = torch.isneginf(lse)
    p = torch.exp(scores - torch.where(empty, 0.0, lse)[..., None])
    out = torch.einsum("hqk,khd->qhd", p, v.expand(-1, q.shape[1], -1))
    return out, torch.where(empty, float("inf"), lse)


def split_kv_b_proj(weight, num_heads, qk_nope_head_dim, v_head_dim):
    """Split a Hugging Face ``kv_b_proj.weight`` [h * (d_nope + d_v), r] into W_UK [h, d_nope, r]
    and W_UV [h, d_v, r]."""
    w = weight.view(num_heads, qk_nope_head_dim + v_head_dim, -1)
    return w[:, :qk_nope_head_dim], w[:, qk_nope_head_dim:]


def mla_naive_ref(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, softmax_scale=None, causal=True):
    """Naive MLA: decompress the latent into per-head K and V, then standard attention.

    q_nope [T, h, d_nope], q_pe [T, h, d_rope], c_kv [S, r], k_pe [S, d_rope],
    w_uk [h, d_nope, r], w_uv [h, d_v, r]. The T queries are the last T of the S positions.
    Returns out [T, h, d_v], lse [h, T].
    """
    h = q_nope.shape[1]
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q_nope.shape[-1] + q_pe.shape[-1])
    k_nope = torch.einsum("hdr,sr->shd", w_uk, c_kv)
    v = torch.einsum("hdr,sr->shd", w_uv, c_kv)
    k = torch.cat([k_nope, k_pe[:, None, :].expand(-1, h, -1)], dim=-1)
    q = torch.cat([q_nope, q_pe], dim=-1)
    return attention_ref(q, k, v, softmax_scale, causal)


def absorb_query(q_nope, q_pe, w_uk):
    """q_lat = W_UK^T q_nope per head, concatenated with q_pe: [T, h, r + d_rope]."""
    return torch.cat([torch.einsum("thd,hdr->thr", q_nope, w_uk), q_pe], dim=-1)


def unabsorb_output(o_lat, w_uv):
    """Project the latent output [T, h, r] through W_UV: [T, h, d_v]."""
    return torch.einsum("thr,hvr->thv", o_lat, w_uv)


def mla_absorbed_ref(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, softmax_scale=None, causal=True):
    """Absorbed MLA: MQA over the latent [S, r + d_rope] with V = the first r dims. Same arguments and
    results as :func:`mla_naive_ref`; the softmax scale stays that of the naive head dim."""
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q_nope.shape[-1] + q_pe.shape[-1])
    q = absorb_query(q_nope, q_pe, w_uk)
    kv = torch.cat([c_kv, k_pe], dim=-1)[:, None, :]
    o_lat, lse = attention_ref(q, kv, kv[..., : c_kv.shape[-1]], softmax_scale, causal)
    return unabsorb_output(o_lat, w_uv), lse


def gather_paged_kv(k_cache, block_table_row, seqlen):
    """The first ``seqlen`` tokens of one sequence from a paged cache: [seqlen, h_kv, d]."""
    page_size = k_cache.shape[1]
    num_pages = (seqlen + page_size - 1) // page_size
    pages = block_table_row[:num_pages].long()
    return k_cache[pages].reshape(-1, *k_cache.shape[2:])[:seqlen]


def decode_ref(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale=None, causal=False,
               dtype=torch.float32):
    """Reference for :func:`triton_mla.flash_mla_with_kvcache` (dense, bf16/fp16/fp32 cache).

    q [b, s_q, h_q, d]; k_cache [num_blocks, page_size, 1, d]; block_table [b, max_pages];
    cache_seqlens [b]. Returns out [b, s_q, h_q, head_dim_v] and lse [b, h_q, s_q] in ``dtype``.
    """
    b, s_q, h_q, d = q.shape
    if softmax_scale is None:
        softmax_scale = d ** -0.5
    outs, lses = [], []
    for i in range(b):
        kv = gather_paged_kv(k_cache, block_table[i], int(cache_seqlens[i])).to(dtype)
        o, lse = attention_ref(q[i].to(dtype), kv, kv[..., :head_dim_v], softmax_scale, causal)
        outs.append(o)
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def varlen_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale=None, causal=True,
                         dtype=torch.float64):
    """Reference for :func:`triton_mla.mla_prefill_mha` (FlashAttention's varlen layout).

    q [total_q, h, d_qk]; k [total_k, h_kv, d_qk]; v [total_k, h_kv, d_v] (h_kv divides h);
    cu_seqlens_q, cu_seqlens_k [b + 1]. Causal masks are bottom-right aligned per sequence.
    Returns out [total_q, h, d_v] and lse [h, total_q] in ``dtype``; tokens outside
    [cu_seqlens_q[0], cu_seqlens_q[-1]) are NaN (the kernel does not write them).
    """
    total_q, h, d_qk = q.shape
    group = h // k.shape[1]
    if softmax_scale is None:
        softmax_scale = d_qk ** -0.5
    out = torch.full((total_q, h, v.shape[2]), float("nan"), dtype=dtype, device=q.device)
    lse = torch.full((h, total_q), float("nan"), dtype=dtype, device=q.device)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        ks = k[ck[i]:ck[i + 1]].to(dtype).repeat_interleave(group, dim=1)
        vs = v[ck[i]:ck[i + 1]].to(dtype).repeat_interleave(group, dim=1)
        o, s = attention_ref(q[cq[i]:cq[i + 1]].to(dtype), ks, vs, softmax_scale, causal)
        out[cq[i]:cq[i + 1]] = o
        lse[:, cq[i]:cq[i + 1]] = s
    return out, lse


def extend_ref(q, k_cache, block_table, cache_seqlens, cu_seqlens_q, head_dim_v=512, softmax_scale=None,
               dtype=torch.float64):
    """Reference for :func:`triton_mla.extend.mla_extend` (absorbed extend over the paged latent cache).

    q [total_q, h_q, d]; k_cache [num_blocks, page_size, 1, d] floats, or the FP8 layout
    [..., 656] uint8 (dequantized with ``triton_mla.fp8.dequantize_latent``); block_table [b, max_pages];
    cache_seqlens [b]; cu_seqlens_q [b + 1]. Sequence i's queries q[cu[i]:cu[i + 1]] are its last tokens:
    query j sees keys [0, cache_seqlens[i] - q_len + j]. Returns out [total_q, h_q, head_dim_v] and
    lse [h_q, total_q] in ``dtype``; tokens outside every sequence are NaN (the kernel does not write them).
    """
    if k_cache.dtype in (torch.uint8, torch.float8_e4m3fn):
        from .fp8 import dequantize_latent

        k_cache = dequantize_latent(k_cache, torch.float32)
    total_q, h_q, d = q.shape
    if softmax_scale is None:
        softmax_scale = d ** -0.5
    out = torch.full((total_q, h_q, head_dim_v), float("nan"), dtype=dtype, device=q.device)
    lse = torch.full((h_q, total_q), float("nan"), dtype=dtype, device=q.device)
    cu = cu_seqlens_q.tolist()
    for i in range(len(cu) - 1):
        kv = gather_paged_kv(k_cache, block_table[i], int(cache_seqlens[i])).to(dtype)
        o, s = attention_ref(q[cu[i]:cu[i + 1]].to(dtype), kv, kv[..., :head_dim_v], softmax_scale, causal=True)
        out[cu[i]:cu[i + 1]] = o
        lse[:, cu[i]:cu[i + 1]] = s
    return out, lse


def decompress_kv_ref(k_cache, block_table, starts, ends, w_uk, w_uv, dtype=torch.float64):
    """Reference for :func:`triton_mla.extend.decompress_kv`: tokens [starts[i], ends[i]) of each sequence,
    packed in order, as per-head K = [W_UK c_kv, k_pe] [T, h, d_nope + d_rope] and V = W_UV c_kv [T, h, d_v]
    (``split_kv_b_proj`` gives w_uk [h, d_nope, r] and w_uv [h, d_v, r]). An FP8 cache is dequantized."""
    if k_cache.dtype in (torch.uint8, torch.float8_e4m3fn):
        from .fp8 import dequantize_latent

        k_cache = dequantize_latent(k_cache, torch.float32)
    r = w_uk.shape[-1]
    latent = torch.cat([gather_paged_kv(k_cache, block_table[i], int(e))[int(s):, 0]
                        for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)) if e > s]
                       + [k_cache.new_zeros(0, k_cache.shape[-1])]).to(dtype)
    c_kv, k_pe = latent[:, :r], latent[:, r:]
    k_nope = torch.einsum("hdr,sr->shd", w_uk.to(dtype), c_kv)
    v = torch.einsum("hdr,sr->shd", w_uv.to(dtype), c_kv)
    k = torch.cat([k_nope, k_pe[:, None, :].expand(-1, w_uk.shape[0], -1)], dim=-1)
    return k, v


__all__ += ["extend_ref", "decompress_kv_ref"]


def _sparse_attention_ref(q, kv, ids, lengths, softmax_scale, head_dim_v, attn_sink, dtype):
    """q [T, h, d], kv [N, d] (flat tokens), ids [T, topk], lengths [T] or None: the shared core of the
    sparse oracles. Returns out [T, h, dv], max_logits [T, h] and lse [T, h] (natural log, unchanged by
    the sink); a query with no valid entry: out 0, lse +inf, max_logits -inf."""
    num_tokens, topk = kv.shape[0], ids.shape[-1]
    ids = ids.long()
    valid = (ids >= 0) & (ids < num_tokens)
    if lengths is not None:
        valid &= torch.arange(topk, device=ids.device)[None, :] < lengths.long().clamp(0, topk)[:, None]
    # a duplicated id is gathered twice and counts twice; invalid slots gather nothing (zeros, never NaN)
    gathered = torch.zeros(*ids.shape, kv.shape[-1], dtype=dtype, device=kv.device)
    gathered[valid] = kv[ids[valid]].to(dtype)
    scores = torch.einsum("thd,tkd->thk", q.to(dtype), gathered) * softmax_scale
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    max_logits = scores.amax(dim=-1) if topk else torch.full_like(lse, float("-inf"))
    empty = torch.isneginf(lse)
    p = torch.exp(scores - torch.where(empty, 0.0, lse)[..., None])
    out = torch.einsum("thk,tkd->thd", p, gathered[..., :head_dim_v])
    if attn_sink is not None:
        w = 1.0 / (1.0 + torch.exp(attn_sink.to(dtype)[None, :] - torch.where(empty, 0.0, lse)))
        out = out * w[..., None]
    out = out.masked_fill(empty[..., None], 0.0)
    return out, max_logits, torch.where(empty, float("inf"), lse)


def sparse_decode_ref(q, k_cache, indices, head_dim_v, softmax_scale=None, attn_sink=None, topk_length=None,
                      dtype=torch.float64, extra_k_cache=None, extra_indices=None, extra_topk_length=None):
    """Reference for :func:`triton_mla.sparse.sparse_decode` (``flash_mla_with_kvcache(..., indices=...)``).

    q [b, s_q, h_q, d]; k_cache [num_blocks, page_size, 1, d] floats (an FP8 cache: pass
    ``triton_mla.fp8.dequantize_latent(k_cache)``); indices [b, s_q, topk]: flat token ids
    page * page_size + offset, anything outside [0, num_blocks * page_size) invalid; topk_length [b]
    (first entries only, clamped to [0, topk]); attn_sink [h_q]: out *= exp(lse) / (exp(lse) + exp(sink)).
    extra_k_cache, extra_indices, extra_topk_length: a second cache and its lists (floats, as k_cache), attended
    to with the first as one softmax: here the two caches laid end to end and each query's two lists (cut at
    their lengths) joined.
    Returns out [b, s_q, h_q, head_dim_v] and lse [b, h_q, s_q] in ``dtype``.
    """
    b, s_q, h_q, d = q.shape
    if softmax_scale is None:
        softmax_scale = d ** -0.5
    kv = k_cache.reshape(-1, k_cache.shape[-1])
    if extra_k_cache is not None:
        def cut(ids, lengths):
            if lengths is None:
                return ids.long()
            keep = torch.arange(ids.shape[-1], device=ids.device) < lengths.long().view(-1, 1, 1)
            return torch.where(keep, ids.long(), -1)

        n, n_extra = kv.shape[0], extra_k_cache.numel() // extra_k_cache.shape[-1]
        main = cut(indices, topk_length)
        main = torch.where((main >= 0) & (main < n), main, -1)  # (an id past n would land in the extra cache)
        extra = cut(extra_indices, extra_topk_length)
        extra = torch.where((extra >= 0) & (extra < n_extra), extra + n, -1)
        indices = torch.cat([main, extra], dim=-1)
        kv = torch.cat([kv, extra_k_cache.reshape(-1, extra_k_cache.shape[-1]).to(kv.dtype)])
        topk_length = None
    lengths = None if topk_length is None else topk_length.repeat_interleave(s_q)
    out, _, lse = _sparse_attention_ref(q.reshape(b * s_q, h_q, d), kv, indices.reshape(b * s_q, -1), lengths,
                                        softmax_scale, head_dim_v, attn_sink, dtype)
    return out.reshape(b, s_q, h_q, head_dim_v), lse.reshape(b, s_q, h_q).transpose(1, 2)


def sparse_prefill_ref(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None, dtype=torch.float64):
    """Reference for :func:`triton_mla.sparse.flash_mla_sparse_fwd` (FlashMLA's tests/ref.py semantics).

    q [s_q, h_q, d]; kv [s_kv, 1, d]; indices [s_q, 1, topk] (invalid: < 0 or >= s_kv); topk_length [s_q].
    Returns out [s_q, h_q, d_v], max_logits [s_q, h_q], lse [s_q, h_q] in ``dtype`` (natural log units of
    q.k * sm_scale; no valid index: out 0, max_logits -inf, lse +inf).
    """
    return _sparse_attention_ref(q, kv[:, 0], indices[:, 0], topk_length, sm_scale, d_v, attn_sink, dtype)


__all__ += ["sparse_decode_ref", "sparse_prefill_ref"]
