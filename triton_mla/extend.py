"""Chunked prefill over the paged latent cache: ``mla_extend`` (absorbed mode) and ``decompress_kv`` (MHA mode).

Two ways to run a chunk of new tokens against a sequence's cached prefix:

* absorbed: :func:`mla_extend` attends directly over the 576-dim latent (MQA, one KV head), like decode
  with many query tokens. Its cost grows with h_q * (576 + 512) per (query, key) pair.
* MHA: :func:`decompress_kv` expands the latent of the prefix into per-head K (128 + 64) and V (128), then
  ``triton_mla.prefill.mla_prefill_mha`` runs ordinary attention: h_q * (192 + 128) per pair, plus the
  decompression (h_q * 256 * 512 per key). Long chunks favour it; short chunks over long prefixes favour
  the absorbed form (``python -m triton_mla.bench_extend`` measures the crossover).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import configs
from . import fp8 as _fp8
from ._checks import (
    FLOAT_DTYPES,
    check_bool,
    check_grid_yz,
    check_int,
    check_runnable,
    check_scale,
    check_tensor,
    on_tensor_device,
    value_checks_enabled,
)
from .kernels import extend as _extend

MAX_HEAD_DIM_V = 512
MAX_ROPE_DIM = 128

__all__ = ["mla_extend", "decompress_kv", "DecompressedKV"]


def _check_cache(k_cache, q_dtype, device, fp8, d=None):
    """The latent cache's layout; returns its head dim (d, or 576 for the FP8 layout)."""
    if fp8:
        from .cache import check_fp8_cache

        check_tensor(k_cache, "k_cache", ndim=4, dtype=(torch.uint8, torch.float8_e4m3fn), device=device)
        check_fp8_cache(k_cache)
        return _fp8.NOPE_DIM + _fp8.ROPE_DIM
    if isinstance(k_cache, torch.Tensor) and k_cache.dtype in (torch.uint8, torch.float8_e4m3fn):
        raise TypeError(f"k_cache: a {k_cache.dtype} cache is the FP8 layout: pass is_fp8_kvcache=True")
    check_tensor(k_cache, "k_cache", ndim=4, dtype=q_dtype or FLOAT_DTYPES, device=device, last_contiguous=True)
    if k_cache.shape[2] != 1:
        raise ValueError(f"k_cache: MLA has one KV head (k_cache.shape[2] == 1), got {k_cache.shape[2]}")
    if d is not None and k_cache.shape[3] != d:
        raise ValueError(f"k_cache: head dim {k_cache.shape[3]} differs from q's {d}")
    if k_cache.shape[0] < 1 or k_cache.shape[1] < 1:
        raise ValueError(f"k_cache: needs at least one page of at least one token, got {list(k_cache.shape)}")
    return k_cache.shape[3]


def _check_table(block_table, cache_seqlens, b, device):
    check_tensor(block_table, "block_table", ndim=2, dtype=torch.int32, device=device)
    if b is not None and block_table.shape[0] != b:
        raise ValueError(f"block_table: expected {b} rows (one per sequence), got {block_table.shape[0]}")
    check_tensor(cache_seqlens, "cache_seqlens", shape=(block_table.shape[0],), dtype=torch.int32, device=device)


def _check_cache_values(k_cache, block_table, cache_seqlens):
    """Value checks (TRITON_MLA_CHECK=1): lengths within the table, used page ids within the cache. Syncs."""
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    lens = cache_seqlens.long().cpu()
    if lens.numel() and bool((lens < 0).any()):
        raise ValueError(f"cache_seqlens: negative length {int(lens.min())}")
    cap = block_table.shape[1] * page_size
    if lens.numel() and bool((lens > cap).any()):
        raise ValueError(f"cache_seqlens: length {int(lens.max())} exceeds the block table's "
                         f"{block_table.shape[1]} pages of {page_size} tokens")
    pages_used = (lens + page_size - 1) // page_size
    cols = torch.arange(block_table.shape[1])[None, :]
    used = block_table.cpu()[cols < pages_used[:, None]]
    bad = used[(used < 0) | (used >= num_blocks)]
    if bad.numel():
        raise ValueError(f"block_table: page id {int(bad[0])} out of range [0, {num_blocks})")


def _check_chunks(cu_seqlens_q, cache_seqlens, total_q, max_seqlen_q):
    """Value checks (TRITON_MLA_CHECK=1) on cu_seqlens_q against q and the cache. Syncs."""
    cu = cu_seqlens_q.long().cpu()
    if int(cu[0]) < 0:
        raise ValueError(f"cu_seqlens_q: first offset {int(cu[0])} is negative")
    q_lens = cu[1:] - cu[:-1]
    if bool((q_lens < 0).any()):
        raise ValueError(f"cu_seqlens_q: offsets must not decrease, got {cu.tolist()[:16]}")
    if int(cu[-1]) > total_q:
        raise ValueError(f"cu_seqlens_q: last offset {int(cu[-1])} exceeds q's {total_q} tokens")
    if q_lens.numel() and int(q_lens.max()) > max_seqlen_q:
        raise ValueError(f"max_seqlen_q: a chunk has {int(q_lens.max())} tokens, more than {max_seqlen_q}")
    over = q_lens > cache_seqlens.long().cpu()
    if bool(over.any()):
        i = int(torch.nonzero(over)[0])
        raise ValueError(f"cu_seqlens_q: sequence {i} has {int(q_lens[i])} new tokens but cache_seqlens is "
                         f"{int(cache_seqlens[i])}: write the chunk to the cache first")


@on_tensor_device("q", 0)
def mla_extend(q, k_cache, block_table, cache_seqlens, cu_seqlens_q, max_seqlen_q, softmax_scale=None,
               is_fp8_kvcache=False, *, head_dim_v=None, out=None, lse=None):
    """Absorbed-mode extend (chunked prefill): new tokens attend causally to their sequence's paged latent cache.

    Sequence i's new tokens are the last q_len = cu_seqlens_q[i + 1] - cu_seqlens_q[i] of its
    cache_seqlens[i] tokens, already written to the cache (``write_kv_cache``); token j of the chunk sees
    keys [0, cache_seqlens[i] - q_len + j]. Chunks of any length mix in one call: q_len 0 (nothing to do),
    1 (a decode token) or thousands.

    q: (total_q, h_q, d) bfloat16/float16/float32, absorbed queries (W_UK folded in); d = dv + rope dims
    (576 = 512 + 64 for DeepSeek); any h_q >= 1.
    k_cache: (num_blocks, page_size, 1, d) in q's dtype, or with ``is_fp8_kvcache`` the FP8 layout
    (num_blocks, page_size, 1, 656) uint8 (``triton_mla.fp8``; then d = 576, dv = 512 and q is 16-bit).
    block_table: (b, max_pages) int32, page ids of each sequence in order (any order of pages).
    cache_seqlens: (b,) int32, tokens of each sequence in the cache, the new chunk included.
    cu_seqlens_q: (b + 1,) int32, sequence i's queries are q[cu_seqlens_q[i]:cu_seqlens_q[i + 1]].
    max_seqlen_q: int >= the longest chunk (sizes the grid: no host sync).
    softmax_scale: default d ** -0.5 (pass the naive head dim's scale, 192 ** -0.5, for DeepSeek).
    head_dim_v: dv, default 512 (needed for other latent sizes: dv <= 512, d - dv <= 128).
    out: optional (total_q, h_q, dv) in q's dtype; lse: optional (h_q, total_q) float32 (both written).

    Returns out (total_q, h_q, dv) in q's dtype and lse (h_q, total_q) float32 (natural log); a query
    that sees no key has out = 0 and lse = +inf. Tokens outside every chunk are not written.
    Semantics: ``triton_mla.reference.extend_ref``.

    Example (a decode token and a 100-token chunk side by side, 16 heads)::

        cu = torch.tensor([0, 1, 101], dtype=torch.int32, device="cuda")
        q = torch.randn(101, 16, 576, dtype=torch.bfloat16, device="cuda")
        out, lse = mla_extend(q, cache.k_cache(0), block_table, cache_seqlens, cu, 100)  # (101, 16, 512)
    """
    check_tensor(q, "q", ndim=3, dtype=FLOAT_DTYPES, last_contiguous=True)
    total_q, h_q, d = q.shape
    if h_q < 1:
        raise ValueError(f"q: needs at least one head, got shape {list(q.shape)}")
    device = q.device
    fp8 = check_bool(is_fp8_kvcache, "is_fp8_kvcache")
    if head_dim_v is None:
        if d < MAX_HEAD_DIM_V:
            raise ValueError(f"head_dim_v: q's head dim {d} is not DeepSeek's 576: pass head_dim_v")
        head_dim_v = MAX_HEAD_DIM_V
    head_dim_v = check_int(head_dim_v, "head_dim_v", low=1, high=min(d, MAX_HEAD_DIM_V))
    if d - head_dim_v > MAX_ROPE_DIM:
        raise ValueError(f"head_dim_v: q's head dim {d} leaves {d - head_dim_v} rope dims; "
                         f"at most {MAX_ROPE_DIM} are supported")
    if fp8:
        _check_cache(k_cache, None, device, True)
        if q.dtype == torch.float32:
            raise TypeError("q: the FP8 cache is read with bfloat16/float16 queries, got float32")
        if d != _fp8.NOPE_DIM + _fp8.ROPE_DIM or head_dim_v != _fp8.NOPE_DIM:
            raise ValueError(f"q, head_dim_v: the FP8 layout holds {_fp8.NOPE_DIM} + {_fp8.ROPE_DIM} dims, so q's "
                             f"head dim must be {_fp8.NOPE_DIM + _fp8.ROPE_DIM} and head_dim_v {_fp8.NOPE_DIM}; got "
                             f"{d} and {head_dim_v}")
    else:
        _check_cache(k_cache, q.dtype, device, False, d)
    check_tensor(cu_seqlens_q, "cu_seqlens_q", ndim=1, dtype=torch.int32, device=device)
    b = cu_seqlens_q.shape[0] - 1
    if b < 0:
        raise ValueError("cu_seqlens_q: expected shape [b + 1], got an empty tensor")
    _check_table(block_table, cache_seqlens, b, device)
    max_seqlen_q = check_int(max_seqlen_q, "max_seqlen_q", low=0)
    softmax_scale = check_scale(softmax_scale, "softmax_scale", d ** -0.5)
    if out is None:
        out = torch.empty(total_q, h_q, head_dim_v, dtype=q.dtype, device=device)
    else:
        check_tensor(out, "out", shape=(total_q, h_q, head_dim_v), dtype=q.dtype, device=device,
                     last_contiguous=True)
    if lse is None:
        lse = torch.empty(h_q, total_q, dtype=torch.float32, device=device)
    else:
        check_tensor(lse, "lse", shape=(h_q, total_q), dtype=torch.float32, device=device)
    check_runnable(device)
    if value_checks_enabled(device) and b > 0:
        _check_chunks(cu_seqlens_q, cache_seqlens, total_q, max_seqlen_q)
        _check_cache_values(k_cache, block_table, cache_seqlens)
    if b == 0 or total_q == 0 or max_seqlen_q == 0:
        return out, lse
    check_grid_yz(b, "cu_seqlens_q", "sequences")  # grid (row blocks, sequences)
    config = configs.kernel_config("extend", max_seqlen_q * h_q, q.dtype, device)
    cache = k_cache.view(torch.uint8) if fp8 else k_cache
    return _extend.extend(q, cache, block_table, cache_seqlens, cu_seqlens_q, max_seqlen_q, head_dim_v,
                          softmax_scale, config, out, lse, fp8=fp8)


class DecompressedKV(NamedTuple):
    """What :func:`decompress_kv` returns: the arguments ``mla_prefill_mha`` takes for keys and values."""

    k: torch.Tensor  # (total_k, h, d_nope + d_rope), contiguous
    v: torch.Tensor  # (total_k, h, d_v), a view with token stride h * (d_nope + d_v), last dim contiguous
    cu_seqlens_k: torch.Tensor  # (b + 1,) int32
    max_seqlen_k: int


def _as_lengths(x, name, b, device, default):
    """start/end: None (default), an int for every sequence, or a (b,) int32 tensor -> (b,) int64 tensor."""
    if x is None:
        return default
    if isinstance(x, int) and not isinstance(x, bool):
        return torch.full((b,), x, dtype=torch.int64, device=device)
    check_tensor(x, name, shape=(b,), dtype=(torch.int32, torch.int64), device=device)
    return x.long()


def _kv_b_proj(w_kc, w_vc):
    """(h * (d_nope + d_v), r): the kv_b_proj weight the two halves were cut from (no copy when they are
    ``split_kv_b_proj``'s views of one tensor), else the halves stacked per head."""
    h, d_nope, r = w_kc.shape
    d_v = w_vc.shape[1]
    rows = d_nope + d_v
    if (w_kc.stride() == (rows * r, r, 1) and w_vc.stride() == (rows * r, r, 1)
            and w_vc.data_ptr() == w_kc.data_ptr() + d_nope * r * w_kc.element_size()):
        return w_kc.as_strided((h * rows, r), (r, 1))
    return torch.cat([w_kc, w_vc], dim=1).reshape(h * rows, r)


@on_tensor_device("k_cache", 0)
def decompress_kv(k_cache, block_table, cache_seqlens, w_kc, w_vc, start=None, end=None, *, total_k=None,
                  max_seqlen_k=None, is_fp8_kvcache=False):
    """Decompress a range of each sequence's latent cache into per-head K and V for MHA-mode prefill.

    Tokens [start_i, end_i) of each sequence i (clamped to [0, cache_seqlens[i]]) are gathered through
    the block table, packed in sequence order, and projected per head: K = [W_UK c_kv, k_pe] (the rope
    key shared by all heads) and V = W_UV c_kv, in the weights' dtype (one matmul with fp32 accumulation).

    k_cache: (num_blocks, page_size, 1, r + d_rope) bfloat16/float16/float32, or with ``is_fp8_kvcache``
    the FP8 layout (num_blocks, page_size, 1, 656) uint8 (dequantized first).
    block_table: (b, max_pages) int32; cache_seqlens: (b,) int32.
    w_kc: (h, d_nope, r) W_UK and w_vc: (h, d_v, r) W_UV, as ``reference.split_kv_b_proj`` cuts a Hugging
    Face ``kv_b_proj.weight`` of shape (h * (d_nope + d_v), r); DeepSeek: d_nope = d_v = 128, r = 512.
    start, end: None (0 and cache_seqlens), an int (the same for every sequence) or (b,) int32 tensors.
    total_k, max_seqlen_k: the packed length sum(end_i - start_i) and the longest range, if the caller
    knows them; otherwise one host sync computes them (pass both to capture this call in a CUDA graph).

    Returns ``DecompressedKV(k, v, cu_seqlens_k, max_seqlen_k)``: k (total_k, h, d_nope + d_rope),
    v (total_k, h, d_v) (a strided view), cu_seqlens_k (b + 1,) int32, ready for
    ``mla_prefill_mha(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, causal=True)``
    with q (total_q, h, d_nope + d_rope) the un-absorbed queries of the chunk (its causal mask is
    bottom-right aligned, so a chunk at the end of its range sees its whole prefix).
    Semantics: ``triton_mla.reference.decompress_kv_ref``.
    """
    check_tensor(w_kc, "w_kc", ndim=3, dtype=FLOAT_DTYPES, last_contiguous=True)
    device = w_kc.device
    h, d_nope, r = w_kc.shape
    check_tensor(w_vc, "w_vc", ndim=3, dtype=w_kc.dtype, device=device, last_contiguous=True)
    if w_vc.shape[0] != h or w_vc.shape[2] != r:
        raise ValueError(f"w_vc: expected shape [{h}, d_v, {r}] (w_kc's heads and rank), got {list(w_vc.shape)}")
    fp8 = check_bool(is_fp8_kvcache, "is_fp8_kvcache")
    d = _check_cache(k_cache, None, device, fp8)
    if fp8 and r != _fp8.NOPE_DIM:
        raise ValueError(f"w_kc: the FP8 layout holds a latent of {_fp8.NOPE_DIM}, got rank {r}")
    if not r < d:
        raise ValueError(f"w_kc: rank {r} leaves no rope dims in the cache's head dim {d}")
    _check_table(block_table, cache_seqlens, None, device)
    b = block_table.shape[0]
    if total_k is not None:
        total_k = check_int(total_k, "total_k", low=0)
    if max_seqlen_k is not None:
        max_seqlen_k = check_int(max_seqlen_k, "max_seqlen_k", low=0)
    if value_checks_enabled(device):
        _check_cache_values(k_cache, block_table, cache_seqlens)

    lens = cache_seqlens.long().clamp(min=0, max=block_table.shape[1] * k_cache.shape[1])
    lo = _as_lengths(start, "start", b, device, torch.zeros_like(lens))
    hi = _as_lengths(end, "end", b, device, lens)
    hi = torch.minimum(hi, lens)
    lo = lo.clamp(min=0)
    n = (hi - lo).clamp(min=0)
    cu = torch.zeros(b + 1, dtype=torch.int64, device=device)
    torch.cumsum(n, 0, out=cu[1:])
    if total_k is None or max_seqlen_k is None or value_checks_enabled(device):
        sizes = torch.stack([cu[-1], n.max() if b else cu[-1]]).cpu()  # the one host sync
        real_total, real_max = int(sizes[0]), int(sizes[1])
        # what was passed is checked against the ranges (the sizes are on the host by now)
        if (total_k is not None and total_k != real_total) or (max_seqlen_k is not None and max_seqlen_k < real_max):
            raise ValueError(f"total_k, max_seqlen_k: the ranges hold {real_total} tokens, longest {real_max}; "
                             f"got {total_k} and {max_seqlen_k}")
        total_k = real_total if total_k is None else total_k
        max_seqlen_k = real_max if max_seqlen_k is None else max_seqlen_k

    # -- gather: packed position -> (sequence, token) -> slot; indices clamped so nothing reads out of bounds
    pos = torch.arange(total_k, device=device)
    seq = torch.searchsorted(cu[1:], pos, right=True).clamp(max=max(b - 1, 0))
    tok = lo[seq] + pos - cu[seq]
    page_size = k_cache.shape[1]
    col = (tok // page_size).clamp(0, block_table.shape[1] - 1)
    page = block_table[seq, col].long().clamp(0, k_cache.shape[0] - 1)
    rows = k_cache[page, tok % page_size, 0]  # (total_k, d) or (total_k, 656) bytes
    latent = _fp8.dequantize_latent(rows, w_kc.dtype) if fp8 else rows.to(w_kc.dtype)

    # -- project: one matmul gives [k_nope | v] per head; k takes the shared rope key beside its nope part
    d_v = w_vc.shape[1]
    kv = torch.matmul(latent[:, :r], _kv_b_proj(w_kc, w_vc).t()).view(total_k, h, d_nope + d_v)
    k = torch.empty(total_k, h, d_nope + d - r, dtype=w_kc.dtype, device=device)
    k[..., :d_nope] = kv[..., :d_nope]
    k[..., d_nope:] = latent[:, None, r:]
    return DecompressedKV(k, kv[..., d_nope:], cu.to(torch.int32), max_seqlen_k)
