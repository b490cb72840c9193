"""Sparse (DSA, DeepSeek-V3.2) MLA attention with FlashMLA's signatures: token-level sparse decode
(``flash_mla_with_kvcache(..., indices=...)`` dispatches to :func:`sparse_decode`) and sparse prefill
(:func:`flash_mla_sparse_fwd`).

Each query token attends to its own ``topk`` cache tokens, given by ``indices``; the kernels are in
``triton_mla.kernels.sparse``, the semantics in ``triton_mla.reference.sparse_decode_ref`` and
``sparse_prefill_ref``. Beyond FlashMLA: any head count (FlashMLA takes 64 or 128), bf16/fp16/fp32
caches as well as FP8 for decode, fp16/fp32 as well as bf16 for prefill, and an index outside the
cache is invalid (skipped) rather than undefined.
"""

from __future__ import annotations

import torch

from . import configs
from ._checks import (
    FLOAT_DTYPES,
    batch_invariant_default,
    check_bool,
    check_int,
    check_runnable,
    check_scale,
    check_tensor,
    on_tensor_device,
)
from .api import check_query_and_cache
from .kernels import sparse as _sparse

__all__ = ["sparse_decode", "flash_mla_sparse_fwd"]

MAX_HEAD_DIM_V = 512
MAX_ROPE_DIM = 128


def _check_dims(d, head_dim_v, name):
    head_dim_v = check_int(head_dim_v, name, low=1, high=min(d, MAX_HEAD_DIM_V))
    if d - head_dim_v > MAX_ROPE_DIM:
        raise ValueError(f"{name}: q's head dim {d} leaves {d - head_dim_v} rope dims; at most {MAX_ROPE_DIM} "
                         "are supported")
    return head_dim_v


def _check_extras(attn_sink, topk_length, h_q, rows, device):
    """The checked attn_sink, made contiguous (the kernels read it densely; h_q floats, a strided view is
    valid input), and topk_length (read with its stride)."""
    if attn_sink is not None:
        check_tensor(attn_sink, "attn_sink", shape=(h_q,), dtype=torch.float32, device=device)
        attn_sink = attn_sink.contiguous()
    if topk_length is not None:
        check_tensor(topk_length, "topk_length", shape=(rows,), dtype=torch.int32, device=device)
    return attn_sink, topk_length


@on_tensor_device("q", 0)
def sparse_decode(q, k_cache, indices, head_dim_v, softmax_scale=None, is_fp8_kvcache=False, attn_sink=None,
                  topk_length=None, causal=False, batch_invariant=None, *, extra_k_cache=None,
                  extra_indices_in_kvcache=None, extra_topk_length=None):
    """Token-level sparse MLA decode (DSA): each query token attends to its own top-k cache tokens.

    q: (b, s_q, h_q, d) bfloat16/float16/float32, d = head_dim_v + rope dims (576 for DeepSeek). Any h_q.
    k_cache: (num_blocks, page_size, 1, d) in q's dtype, or with ``is_fp8_kvcache`` the FP8 layout
        (num_blocks, page_size, 1, 656) uint8/float8_e4m3fn (``triton_mla.fp8``; then d = 576,
        head_dim_v = 512 and q is bfloat16/float16). Page and token strides are read, not assumed.
    indices: (b, s_q, topk) int32: entry = page * page_size + offset, a flat token id. -1, or any id
        outside [0, num_blocks * page_size), is an invalid entry: skipped, never read. A token listed
        twice counts twice (a plain gather).
    head_dim_v: dv (512 for DeepSeek; 1..512 with at most 128 rope dims for a 16/32-bit cache).
    softmax_scale: default d ** -0.5.
    attn_sink: (h_q,) float32 or None: out is scaled by exp(lse) / (exp(lse) + exp(attn_sink[h]))
        (+inf gives 0, -inf no change); lse itself is not changed.
    topk_length: (b,) int32 or None: only the first topk_length[i] entries of sequence i count
        (clamped to [0, topk]).
    causal: must be False (sparse attention has no causal mask; FlashMLA asserts the same).
    batch_invariant: cut each top-k list into splits that depend on topk alone (not on b or s_q), so a query
        token's output is bitwise the same whatever else is in the batch; default: the environment variable
        TRITON_MLA_BATCH_INVARIANT=1. Costs parallelism on small batches.
    extra_k_cache, extra_indices_in_kvcache, extra_topk_length: newer FlashMLA's second cache: each query token
        also attends to its extra_indices_in_kvcache (b, s_q, extra_topk) entries of extra_k_cache (the same
        format as k_cache, any page size; extra_topk_length (b,) as topk_length), as one softmax over both lists.
        Run as two passes merged by their lse (the sink applied once, after), so it costs both lists' reads.

    Returns out (b, s_q, h_q, head_dim_v) in q's dtype and lse (b, h_q, s_q) float32 (natural log of
    the scaled logits); a query with no valid entry gets out = 0 and lse = +inf. No host sync; the
    launch depends only on shapes, so the call can be captured in a CUDA graph and replayed with new
    indices. Semantics: ``triton_mla.reference.sparse_decode_ref``.

    Example::

        out, lse = tm.flash_mla_with_kvcache(q, k_cache, None, None, 512, tm.get_mla_metadata()[0], None,
                                             is_fp8_kvcache=True, indices=indices)
    """
    is_fp8_kvcache = check_bool(is_fp8_kvcache, "is_fp8_kvcache")
    if batch_invariant is not None:
        batch_invariant = check_bool(batch_invariant, "batch_invariant")
    if check_bool(causal, "causal"):
        raise ValueError("causal: sparse decode has no causal mask (indices choose the keys); pass causal=False")
    if extra_k_cache is not None or extra_indices_in_kvcache is not None or extra_topk_length is not None:
        return _with_extra(q, k_cache, indices, head_dim_v, softmax_scale, is_fp8_kvcache, attn_sink, topk_length,
                           batch_invariant, extra_k_cache, extra_indices_in_kvcache, extra_topk_length)
    b, s_q, h_q, d, fp8 = check_query_and_cache(q, k_cache, head_dim_v, is_fp8_kvcache)
    device = q.device
    if not fp8 and k_cache.shape[3] != d:
        raise ValueError(f"k_cache: head dim {k_cache.shape[3]} differs from q's {d}")
    # for FP8 too: check_query_and_cache compares head_dim_v with 512, which 512.0 passes
    head_dim_v = _check_dims(d, head_dim_v, "head_dim_v")
    if k_cache.shape[2] != 1:
        raise ValueError(f"k_cache: MLA has one KV head (k_cache.shape[2] == 1), got {k_cache.shape[2]}")
    check_tensor(indices, "indices", ndim=3, dtype=torch.int32, device=device)
    if tuple(indices.shape[:2]) != (b, s_q):
        raise ValueError(f"indices: expected shape [{b}, {s_q}, topk] (q's batch and s_q), got {list(indices.shape)}")
    attn_sink, topk_length = _check_extras(attn_sink, topk_length, h_q, b, device)
    softmax_scale = check_scale(softmax_scale, "softmax_scale", d ** -0.5)
    check_runnable(device)

    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=q.dtype, device=device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=device)
    if b == 0:
        return out, lse
    if indices.shape[2] == 0 or k_cache.shape[0] * k_cache.shape[1] == 0:
        # nothing to attend to (known from shapes alone): FlashMLA's convention for lonely queries
        return out.zero_(), lse.fill_(float("inf"))
    config = configs.kernel_config("sparse_decode", h_q, q.dtype, device)
    cache = k_cache.view(torch.uint8) if fp8 else k_cache
    if batch_invariant is None:
        batch_invariant = batch_invariant_default()
    _sparse.sparse_attention(q, cache, indices, topk_length, attn_sink, out, lse, None, softmax_scale, fp8, config,
                             configs.num_sms(device), batch_invariant=bool(batch_invariant))
    return out, lse


# what the extra list's pass names its arguments in an error: the caller passed them as extra_*
_EXTRA_NAMES = (("k_cache:", "extra_k_cache:"), ("indices:", "extra_indices_in_kvcache:"),
                ("topk_length:", "extra_topk_length:"))


def _with_extra(q, k_cache, indices, head_dim_v, softmax_scale, fp8, attn_sink, topk_length, batch_invariant,
                extra_k_cache, extra_indices, extra_topk_length):
    """``sparse_decode`` over two (cache, indices) lists: each list's pass without the sink, then one kernel merges
    the two results by their lse in float32 and applies the sink (``kernels.sparse.merge_lists``). A list with no
    valid entry has lse +inf and output 0 (the kernels' convention): it gets weight 0, and a query with none in
    either list keeps out 0, lse +inf."""
    if extra_k_cache is None and extra_indices is None:
        raise ValueError("extra_topk_length: given without extra_k_cache and extra_indices_in_kvcache")
    if extra_k_cache is None or extra_indices is None:
        raise ValueError("extra_k_cache, extra_indices_in_kvcache: give both (or neither)")
    if attn_sink is not None:  # (checked before either pass runs; the merge reads it densely)
        check_tensor(q, "q", ndim=4)
        attn_sink, _ = _check_extras(attn_sink, None, q.shape[2], 0, q.device)
    out1, lse1 = sparse_decode(q, k_cache, indices, head_dim_v, softmax_scale, fp8, None, topk_length,
                               batch_invariant=batch_invariant)
    try:
        out2, lse2 = sparse_decode(q, extra_k_cache, extra_indices, head_dim_v, softmax_scale, fp8, None,
                                   extra_topk_length, batch_invariant=batch_invariant)
    except (TypeError, ValueError) as e:
        msg = str(e)
        for name, extra in _EXTRA_NAMES:
            if msg.startswith(name):
                raise type(e)(extra + msg[len(name):]) from e
        raise
    # (in place into the first pass's out and lse: one read of each pass's rows, one write)
    return _sparse.merge_lists(out1, lse1, out2, lse2, attn_sink)


@on_tensor_device("q", 0)
def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None):
    """Sparse MLA prefill (FlashMLA's ``flash_mla_sparse_fwd``): each query token attends to its top-k kv tokens.

    q: (s_q, h_q, d_qk) bfloat16/float16/float32 (d_qk = 576 for DeepSeek). Any h_q.
    kv: (s_kv, 1, d_qk), q's dtype (one KV head; the latent, V = its first d_v dims).
    indices: (s_q, 1, topk) int32: rows of kv; -1, or any id outside [0, s_kv), is invalid (skipped).
    sm_scale: float, the scale of q.k before the softmax.
    d_v: 512 for DeepSeek (any 1..512 leaving at most 128 rope dims).
    attn_sink: (h_q,) float32 or None: out is scaled by exp(lse) / (exp(lse) + exp(attn_sink[h]));
        lse and max_logits are not changed.
    topk_length: (s_q,) int32 or None: query i attends only to indices[i, 0, :topk_length[i]] (clamped).

    Returns (out, max_logits, lse): out (s_q, h_q, d_v) in q's dtype; max_logits and lse (s_q, h_q)
    float32 in natural-log units of the scaled logits (max_logits = max over valid keys of
    q.k * sm_scale, lse = logsumexp of the same). A query with no valid index: out = 0, lse = +inf,
    max_logits = -inf. Semantics: ``triton_mla.reference.sparse_prefill_ref`` (FlashMLA's tests/ref.py).
    FlashMLA's first sparse release (and its README's PyTorch equivalent) gave both in base-2 units; divide
    by ln 2 (``/ math.log(2)``) where code expects those.

    Example::

        out, max_logits, lse = flash_mla_sparse_fwd(q, kv, indices, 576 ** -0.5)
    """
    check_tensor(q, "q", ndim=3, dtype=FLOAT_DTYPES, last_contiguous=True)
    s_q, h_q, d = q.shape
    if h_q < 1:
        raise ValueError(f"q: needs h_q >= 1, got shape {list(q.shape)}")
    device = q.device
    check_tensor(kv, "kv", ndim=3, dtype=q.dtype, device=device, last_contiguous=True)
    if kv.shape[1] != 1:
        raise ValueError(f"kv: MLA has one KV head (kv.shape[1] == 1), got {kv.shape[1]}")
    if kv.shape[2] != d:
        raise ValueError(f"kv: head dim {kv.shape[2]} differs from q's {d}")
    check_tensor(indices, "indices", ndim=3, dtype=torch.int32, device=device)
    if indices.shape[0] != s_q or indices.shape[1] != 1:
        raise ValueError(f"indices: expected shape [{s_q}, 1, topk] (q's s_q, one KV head), got "
                         f"{list(indices.shape)}")
    sm_scale = check_scale(sm_scale, "sm_scale")
    d_v = _check_dims(d, d_v, "d_v")
    attn_sink, topk_length = _check_extras(attn_sink, topk_length, h_q, s_q, device)
    check_runnable(device)

    out = torch.empty(s_q, h_q, d_v, dtype=q.dtype, device=device)
    max_logits = torch.empty(s_q, h_q, dtype=torch.float32, device=device)
    lse = torch.empty(s_q, h_q, dtype=torch.float32, device=device)
    if s_q == 0:
        return out, max_logits, lse
    if indices.shape[2] == 0 or kv.shape[0] == 0:
        return out.zero_(), max_logits.fill_(float("-inf")), lse.fill_(float("inf"))
    config = configs.kernel_config("sparse_prefill", h_q, q.dtype, device)
    # the decode kernel's view: s_q sequences of one query token, kv as pages of one token
    _sparse.sparse_attention(q.unsqueeze(1), kv.unsqueeze(1), indices, topk_length, attn_sink, out.unsqueeze(1),
                             lse.unsqueeze(2), max_logits.unsqueeze(2), sm_scale, False, config,
                             configs.num_sms(device))
    return out, max_logits, lse
