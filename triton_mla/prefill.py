"""MLA prefill in MHA mode: ``mla_prefill_mha``, FlashAttention's varlen calling convention."""

from __future__ import annotations

import torch

from . import configs
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
from .kernels import prefill as _prefill

MIN_HEAD_DIM_QK, MAX_HEAD_DIM = 16, 256


def _check_cu_seqlens(cu, name, total, max_seqlen, max_name):
    """Value checks (TRITON_MLA_CHECK=1): they read device memory, so they sync."""
    c = cu.long().cpu()
    if c.numel() and int(c[0]) < 0:
        raise ValueError(f"{name}: first offset {int(c[0])} is negative")
    lens = c[1:] - c[:-1]
    if lens.numel() and bool((lens < 0).any()):
        raise ValueError(f"{name}: offsets must not decrease, got {c.tolist()[:16]}")
    if c.numel() and int(c[-1]) > total:
        raise ValueError(f"{name}: last offset {int(c[-1])} exceeds the {total} packed tokens")
    if lens.numel() and int(lens.max()) > max_seqlen:
        raise ValueError(f"{max_name}: a sequence has {int(lens.max())} tokens, more than {max_name}={max_seqlen}")


@on_tensor_device("q", 0)
def mla_prefill_mha(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                    causal=True, *, out=None, lse=None):
    """Varlen (packed) attention for MLA prefill in MHA mode: d_qk != d_v, K/V possibly longer than Q.

    q: (total_q, h, d_qk) bfloat16/float16/float32; DeepSeek: d_qk = 192 (128 nope + 64 rope).
    k: (total_k, h_kv, d_qk), q's dtype; h_kv divides h (h_kv = h for MLA's decompressed keys).
    v: (total_k, h_kv, d_v), q's dtype; DeepSeek: d_v = 128 (not padded to d_qk).
    Any d_qk in [16, 256] and d_v in [1, 256]; token and head strides are free, the last dim contiguous.
    cu_seqlens_q: (b + 1,) int32, sequence i's queries are q[cu_seqlens_q[i]:cu_seqlens_q[i + 1]].
    cu_seqlens_k: (b + 1,) int32, the same for k and v (a decompressed prefix may make them longer).
    max_seqlen_q: int >= the longest query sequence (sizes the grid, so no host sync);
    max_seqlen_k: int, accepted for FlashAttention compatibility (checked with TRITON_MLA_CHECK=1).
    softmax_scale: default d_qk ** -0.5. causal: bottom-right aligned as FlashAttention: query i of a
    sequence with lq queries and lk keys sees keys j <= i + lk - lq.
    out: optional (total_q, h, d_v) in q's dtype; lse: optional (h, total_q) float32 (both written).

    Returns out (total_q, h, d_v) in q's dtype and lse (h, total_q) float32 (natural log of the sum of
    exp(scaled scores)); a query that sees no key (lk = 0, or lk < lq under causal) gets out = 0 and
    lse = +inf. Tokens outside [cu_seqlens_q[0], cu_seqlens_q[-1]) are not written.
    Semantics: ``triton_mla.reference.varlen_attention_ref``.

    Example (two sequences of 5 and 3 tokens, 16 heads)::

        cu = torch.tensor([0, 5, 8], dtype=torch.int32, device="cuda")
        q = torch.randn(8, 16, 192, dtype=torch.bfloat16, device="cuda"); k = torch.randn_like(q)
        v = torch.randn(8, 16, 128, dtype=torch.bfloat16, device="cuda")
        out, lse = mla_prefill_mha(q, k, v, cu, cu, 5, 5)  # out (8, 16, 128), lse (16, 8)
    """
    check_tensor(q, "q", ndim=3, dtype=FLOAT_DTYPES, last_contiguous=True)
    total_q, h, d_qk = q.shape
    device = q.device
    check_tensor(k, "k", ndim=3, dtype=q.dtype, device=device, last_contiguous=True)
    check_tensor(v, "v", ndim=3, dtype=q.dtype, device=device, last_contiguous=True)
    total_k, h_kv, d_v = v.shape
    if h < 1:
        raise ValueError(f"q: needs at least one head, got shape {list(q.shape)}")
    if not MIN_HEAD_DIM_QK <= d_qk <= MAX_HEAD_DIM:
        raise ValueError(f"q: head dim must be in [{MIN_HEAD_DIM_QK}, {MAX_HEAD_DIM}], got {d_qk}")
    if k.shape[2] != d_qk:
        raise ValueError(f"k: head dim {k.shape[2]} differs from q's {d_qk}")
    if not 1 <= d_v <= MAX_HEAD_DIM:
        raise ValueError(f"v: head dim must be in [1, {MAX_HEAD_DIM}], got {d_v}")
    if k.shape[0] != total_k or k.shape[1] != h_kv:
        raise ValueError(f"v: expected shape [{k.shape[0]}, {k.shape[1]}, *] (k's tokens and heads), "
                         f"got {list(v.shape)}")
    if h_kv < 1 or h % h_kv:
        raise ValueError(f"k: its {h_kv} heads must divide q's {h}")
    check_tensor(cu_seqlens_q, "cu_seqlens_q", ndim=1, dtype=torch.int32, device=device)
    b = cu_seqlens_q.shape[0] - 1
    if b < 0:
        raise ValueError("cu_seqlens_q: expected shape [b + 1], got an empty tensor")
    check_tensor(cu_seqlens_k, "cu_seqlens_k", shape=(b + 1,), dtype=torch.int32, device=device)
    max_seqlen_q = check_int(max_seqlen_q, "max_seqlen_q", low=0)
    max_seqlen_k = check_int(max_seqlen_k, "max_seqlen_k", low=0)
    softmax_scale = check_scale(softmax_scale, "softmax_scale", d_qk ** -0.5)
    causal = check_bool(causal, "causal")
    if out is None:
        out = torch.empty(total_q, h, d_v, dtype=q.dtype, device=device)
    else:
        check_tensor(out, "out", shape=(total_q, h, d_v), dtype=q.dtype, device=device, last_contiguous=True)
    if lse is None:
        lse = torch.empty(h, total_q, dtype=torch.float32, device=device)
    else:
        check_tensor(lse, "lse", shape=(h, total_q), dtype=torch.float32, device=device)
        if total_q > 1 and lse.stride(1) != 1:
            raise ValueError(f"lse: the token dimension must be contiguous, got strides {lse.stride()}")
    check_runnable(device)
    if value_checks_enabled(device):
        _check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", total_q, max_seqlen_q, "max_seqlen_q")
        _check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", total_k, max_seqlen_k, "max_seqlen_k")
    if b == 0 or max_seqlen_q == 0 or total_q == 0:
        return out, lse

    check_grid_yz(h, "q", "heads")  # grid (query blocks, heads, sequences)
    check_grid_yz(b, "cu_seqlens_q", "sequences")
    # both kernels index the offsets densely (cu[seq]): a strided view would read the wrong entries
    cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    entry = configs.kernel_config("prefill", max_seqlen_q, q.dtype, device)
    config = _prefill.fit_config(entry, d_qk, d_v, q.element_size())
    use_tma = bool(config.get("TMA", False)) and _prefill.tma_usable(q, k, v, d_qk, d_v)
    return _prefill.prefill_mha(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, softmax_scale, causal,
                                config, use_tma, out, lse)
