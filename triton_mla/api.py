"""FlashMLA-compatible entry points: ``get_mla_metadata`` and ``flash_mla_with_kvcache``."""

from __future__ import annotations

import dataclasses

import torch

from . import configs
from . import fp8 as _fp8
from ._checks import (
    FLOAT_DTYPES,
    batch_invariant_default,
    check_bool,
    check_int,
    check_runnable,
    check_scale,
    check_tensor,
    on_tensor_device,
    value_checks_enabled,
)
from .cache import check_fp8_cache
from .kernels import decode as _decode
from .kernels import decode_fp8 as _decode_fp8
from .kernels import decode_invariant as _invariant
from .kernels._common import cdiv

try:  # Gluon (Triton's explicit-layout dialect) ships with Triton >= 3.5; without it the tl.dot kernel serves
    from .kernels import decode_sm90 as _decode_sm90
except ImportError:  # pragma: no cover
    _decode_sm90 = None

MAX_HEAD_DIM_V = 512
MAX_ROPE_DIM = 128
_UNCLAMPED_LEN = 1 << 30


def _num_parts(rows: int, config: dict, device: torch.device) -> int:
    row_blocks = cdiv(rows, config["BLOCK_H"])
    return max(1, config["PARTS_PER_SM"] * configs.num_sms(device) // row_blocks)


@dataclasses.dataclass
class MLASchedMeta:
    """What ``get_mla_metadata()`` returns when called with no batch (newest FlashMLA's calling style).

    FlashMLA fills its scheduler object on the first decode call; our kernels derive their plan from
    ``cache_seqlens`` at every launch, so this is only a token to pass back: it holds nothing. Also exported as
    ``FlashMLASchedMeta`` (FlashMLA's name: engines build one themselves and pass it).
    """


FlashMLASchedMeta = MLASchedMeta


@on_tensor_device("cache_seqlens", 0)
def get_mla_metadata(cache_seqlens=None, num_q_tokens_per_head_k=None, num_heads_k=1, num_heads_q=None,
                     is_fp8_kvcache=False, topk=None, *, num_heads_per_head_k=None):
    """Plan the split of a decode batch over the GPU, FlashMLA's way of calling.

    Called with no ``cache_seqlens`` (newest FlashMLA, and sparse decode), returns
    ``(MLASchedMeta(), None)``, which :func:`flash_mla_with_kvcache` accepts.

    cache_seqlens: (b,) int32, on the GPU. num_q_tokens_per_head_k: s_q * h_q // h_kv.
    num_heads_k: h_kv (1 for MLA). num_heads_q, is_fp8_kvcache, topk: accepted for FlashMLA
    compatibility (the plan does not depend on them). num_heads_per_head_k: the first FlashMLA's keyword
    for num_q_tokens_per_head_k (give one of the two).

    Returns ``(tile_scheduler_metadata, num_splits)``: (num_parts, 8) int32, per part
    [first seq, first token, last seq, end token, first block, end block, parts in use, 0], and
    (b + 1,) int32, the cumulative number of splits per sequence. Computed on the device: no host
    sync. The decode kernels re-derive the same plan from the ``cache_seqlens`` they are called with,
    so passing these back (older FlashMLA) and passing ``num_splits=None`` (newest FlashMLA) both work,
    and a CUDA graph replayed with new lengths stays correct.
    """
    if num_heads_per_head_k is not None:
        if num_q_tokens_per_head_k is not None:
            raise TypeError("num_heads_per_head_k: the older name of num_q_tokens_per_head_k; give only one")
        num_q_tokens_per_head_k = num_heads_per_head_k
    if topk is not None:
        topk = check_int(topk, "topk", low=1)
    if cache_seqlens is None:
        return MLASchedMeta(), None
    check_tensor(cache_seqlens, "cache_seqlens", ndim=1, dtype=torch.int32)
    num_q_tokens_per_head_k = check_int(num_q_tokens_per_head_k, "num_q_tokens_per_head_k", low=1)
    num_heads_k = check_int(num_heads_k, "num_heads_k", low=1)
    if num_heads_k != 1:
        raise ValueError(f"num_heads_k: MLA decode has one KV head, got {num_heads_k}")
    check_runnable(cache_seqlens.device, "cache_seqlens")
    is_fp8_kvcache = check_bool(is_fp8_kvcache, "is_fp8_kvcache")
    config = configs.kernel_config("decode_fp8" if is_fp8_kvcache else "decode", num_q_tokens_per_head_k,
                                   torch.bfloat16, cache_seqlens.device)
    num_parts = _num_parts(num_q_tokens_per_head_k, config, cache_seqlens.device)
    return _decode.plan(cache_seqlens, _UNCLAMPED_LEN, num_parts, config)


def _check_values(k_cache, block_table, cache_seqlens):
    """Value checks (TRITON_MLA_CHECK=1): these read device memory, so they sync."""
    page_size, num_blocks = k_cache.shape[1], k_cache.shape[0]
    lens = cache_seqlens.long().cpu()
    if bool((lens < 0).any()):
        raise ValueError(f"cache_seqlens: negative length {int(lens.min())}")
    cap = block_table.shape[1] * page_size
    if bool((lens > cap).any()):
        raise ValueError(f"cache_seqlens: length {int(lens.max())} exceeds the block table's "
                         f"{block_table.shape[1]} pages of {page_size} tokens")
    pages_used = (lens + page_size - 1) // page_size
    cols = torch.arange(block_table.shape[1])[None, :]
    used = block_table.cpu()[cols < pages_used[:, None]]
    if used.numel() and bool(((used < 0) | (used >= num_blocks)).any()):
        bad = used[(used < 0) | (used >= num_blocks)][0]
        raise ValueError(f"block_table: page id {int(bad)} out of range [0, {num_blocks})")


def check_query_and_cache(q, k_cache, head_dim_v, is_fp8_kvcache):
    """Shape and dtype checks shared by dense and sparse decode: q (b, s_q, h_q, d) and a k_cache of q's dtype
    or, with ``is_fp8_kvcache``, the FP8 layout (then d = 576, head_dim_v = 512). Returns (b, s_q, h_q, d, fp8)."""
    check_tensor(q, "q", ndim=4, dtype=FLOAT_DTYPES, last_contiguous=True)
    b, s_q, h_q, d = q.shape
    if s_q < 1 or h_q < 1:
        raise ValueError(f"q: needs s_q >= 1 and h_q >= 1, got shape {list(q.shape)}")
    device = q.device
    fp8 = bool(is_fp8_kvcache)
    if fp8:
        check_tensor(k_cache, "k_cache", ndim=4, dtype=(torch.uint8, torch.float8_e4m3fn), device=device)
        check_fp8_cache(k_cache)
        if q.dtype == torch.float32:
            raise TypeError("q: the FP8 cache is read with bfloat16/float16 queries, got float32")
        if d != _fp8.NOPE_DIM + _fp8.ROPE_DIM or head_dim_v != _fp8.NOPE_DIM:
            raise ValueError(f"q, head_dim_v: the FP8 layout holds {_fp8.NOPE_DIM} + {_fp8.ROPE_DIM} dims, so q's "
                             f"head dim must be {_fp8.NOPE_DIM + _fp8.ROPE_DIM} and head_dim_v {_fp8.NOPE_DIM}; got "
                             f"{d} and {head_dim_v}")
    else:
        if isinstance(k_cache, torch.Tensor) and k_cache.dtype in (torch.uint8, torch.float8_e4m3fn):
            raise TypeError(f"k_cache: a {k_cache.dtype} cache is the FP8 layout: pass is_fp8_kvcache=True")
        check_tensor(k_cache, "k_cache", ndim=4, dtype=q.dtype, device=device, last_contiguous=True)
    return b, s_q, h_q, d, fp8


@on_tensor_device("q", 0)
def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata=None,
                           num_splits=None, softmax_scale=None, causal=False, is_fp8_kvcache=False,
                           indices=None, attn_sink=None, topk_length=None, batch_invariant=None, *,
                           extra_k_cache=None, extra_indices_in_kvcache=None, extra_topk_length=None,
                           enable_batch_invariant=None):
    """MLA decode over a paged latent cache (MQA with one KV head, V = the first head_dim_v dims of K).

    q: (b, s_q, h_q, d) bfloat16/float16/float32, d = head_dim_v + rope dims (576 for DeepSeek).
    k_cache: (num_blocks, page_size, 1, d), q's dtype. Any page size >= 1.
    block_table: (b, max_pages) int32: page ids of each sequence, in order.
    cache_seqlens: (b,) int32: tokens of each sequence in the cache (0 allowed).
    head_dim_v: dv, 512 for DeepSeek (any value 1..512 with d - dv <= 128).
    tile_scheduler_metadata, num_splits: from :func:`get_mla_metadata`, or None.
    softmax_scale: default d ** -0.5 (scores times the scale are float32: a row with one past float32's range,
    about 3.4e38, e.g. with a scale of 1e37, comes out NaN).
    causal: for s_q > 1, query row i sees keys [0, len - s_q + i].
    is_fp8_kvcache: k_cache is the FP8 layout (num_blocks, page_size, 1, 656) uint8 (``triton_mla.fp8``);
    then d = 576 and head_dim_v = 512, and q is bfloat16/float16.
    indices, attn_sink, topk_length: sparse (DSA) decode, see ``triton_mla.sparse.sparse_decode``;
    block_table and cache_seqlens are then unused (pass None).
    batch_invariant: each sequence's split depends only on its own length, so its output is bitwise the
    same whatever else is in the batch (for RL rollouts, reproducible evals); default: the environment
    variable TRITON_MLA_BATCH_INVARIANT=1. Costs parallelism on small batches. Sparse decode: see
    ``sparse_decode``.
    extra_k_cache, extra_indices_in_kvcache, extra_topk_length: newer FlashMLA's second (extra) cache for
    sparse decode, see ``sparse_decode``.
    enable_batch_invariant: newer FlashMLA's name for ``batch_invariant`` (give one of the two).

    Returns out (b, s_q, h_q, head_dim_v) in q's dtype, softmax_lse (b, h_q, s_q) float32 (natural log;
    +inf for a query with no keys, whose out is 0). Semantics: ``triton_mla.reference.decode_ref``.
    """
    if enable_batch_invariant is not None:
        if batch_invariant is not None:
            raise TypeError("enable_batch_invariant: newer FlashMLA's name for batch_invariant; give only one")
        batch_invariant = enable_batch_invariant
    causal = check_bool(causal, "causal")
    is_fp8_kvcache = check_bool(is_fp8_kvcache, "is_fp8_kvcache")
    if batch_invariant is not None:
        batch_invariant = check_bool(batch_invariant, "batch_invariant")
    if indices is not None:
        from .sparse import sparse_decode

        return sparse_decode(q, k_cache, indices, head_dim_v, softmax_scale=softmax_scale,
                             is_fp8_kvcache=is_fp8_kvcache, attn_sink=attn_sink, topk_length=topk_length,
                             causal=causal, batch_invariant=batch_invariant, extra_k_cache=extra_k_cache,
                             extra_indices_in_kvcache=extra_indices_in_kvcache, extra_topk_length=extra_topk_length)
    if attn_sink is not None or topk_length is not None:
        raise ValueError("attn_sink, topk_length: only sparse decode (indices=...) takes them")
    for name, extra in (("extra_k_cache", extra_k_cache), ("extra_indices_in_kvcache", extra_indices_in_kvcache),
                        ("extra_topk_length", extra_topk_length)):
        if extra is not None:
            raise ValueError(f"{name}: only sparse decode (indices=...) takes an extra cache")
    b, s_q, h_q, d, fp8 = check_query_and_cache(q, k_cache, head_dim_v, is_fp8_kvcache)
    device = q.device
    k_shape = k_cache.shape  # each .shape builds a new torch.Size
    if k_shape[2] != 1:
        raise ValueError(f"k_cache: MLA has one KV head (k_cache.shape[2] == 1), got {k_shape[2]}")
    if not fp8 and k_shape[3] != d:
        raise ValueError(f"k_cache: head dim {k_shape[3]} differs from q's {d}")
    if k_shape[0] < 1 or k_shape[1] < 1:
        raise ValueError(f"k_cache: needs at least one page of at least one token, got {list(k_shape)}")
    check_tensor(block_table, "block_table", ndim=2, dtype=torch.int32, device=device)
    if block_table.shape[0] != b:
        raise ValueError(f"block_table: expected {b} rows (q's batch), got {block_table.shape[0]}")
    check_tensor(cache_seqlens, "cache_seqlens", shape=(b,), dtype=torch.int32, device=device)
    head_dim_v = check_int(head_dim_v, "head_dim_v", low=1, high=min(d, MAX_HEAD_DIM_V))
    if d - head_dim_v > MAX_ROPE_DIM:
        raise ValueError(f"head_dim_v: q's head dim {d} leaves {d - head_dim_v} rope dims; "
                         f"at most {MAX_ROPE_DIM} are supported")
    softmax_scale = check_scale(softmax_scale, "softmax_scale", d ** -0.5)
    check_runnable(device)

    config = configs.kernel_config("decode_fp8" if fp8 else "decode", s_q * h_q, q.dtype, device)
    if not isinstance(tile_scheduler_metadata, (type(None), MLASchedMeta, torch.Tensor)):
        raise TypeError("tile_scheduler_metadata: expected what get_mla_metadata returned (a tensor or "
                        f"MLASchedMeta) or None, got {type(tile_scheduler_metadata).__name__}")
    if isinstance(tile_scheduler_metadata, torch.Tensor):
        check_tensor(tile_scheduler_metadata, "tile_scheduler_metadata", ndim=2, dtype=torch.int32,
                     device=device)
        if tile_scheduler_metadata.shape[1] != _decode.TILE_SCHEDULER_METADATA_SIZE:
            raise ValueError("tile_scheduler_metadata: expected shape [num_parts, 8] from get_mla_metadata, "
                             f"got {list(tile_scheduler_metadata.shape)}")
        num_parts = max(1, tile_scheduler_metadata.shape[0])
    else:
        num_parts = _num_parts(s_q * h_q, config, device)
    if num_splits is not None:
        check_tensor(num_splits, "num_splits", shape=(b + 1,), dtype=torch.int32, device=device)
    if value_checks_enabled(device):
        _check_values(k_cache, block_table, cache_seqlens)

    out = torch.empty(b, s_q, h_q, head_dim_v, dtype=q.dtype, device=device)
    lse = torch.empty(b, h_q, s_q, dtype=torch.float32, device=device)
    if b == 0:
        return out, lse
    if batch_invariant is None:
        batch_invariant = batch_invariant_default()
    if batch_invariant:
        return _invariant.decode_invariant(q, k_cache.view(torch.uint8) if fp8 else k_cache, block_table,
                                           cache_seqlens, head_dim_v, softmax_scale, causal, config, out, lse,
                                           fp8=fp8)
    use_sm90 = _decode_sm90 is not None and _decode_sm90.supports(q, k_cache, head_dim_v, config, fp8=fp8)
    if fp8 and use_sm90:
        return _decode_sm90.decode_sm90(q, k_cache.view(torch.uint8), block_table, cache_seqlens,
                                        softmax_scale, causal, num_parts, config, out, lse, fp8=True)
    if fp8:
        return _decode_fp8.decode_splitkv_fp8(q, k_cache.view(torch.uint8), block_table, cache_seqlens,
                                          softmax_scale, causal, num_parts, config, out, lse)
    if use_sm90:
        return _decode_sm90.decode_sm90(q, k_cache, block_table, cache_seqlens, softmax_scale, causal,
                                        num_parts, config, out, lse)
    return _decode.decode_splitkv(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale,
                                  causal, num_parts, config, out, lse)
