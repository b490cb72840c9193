"""Batch-invariant decode: a sequence's split depends only on its own length.

The default plan deals the key blocks of the whole batch to the SMs in equal ranges, so where a
sequence is cut (and so the order in which its partial results are summed) depends on the other
sequences. Here sequence ``seq`` is cut into chunks of CHUNK_BLOCKS key blocks, always the same for
the same length, chunk c is program ``seq * max_chunks + c``, and the combine merges the chunks in
order: the output is bitwise the same whatever else is in the batch. It costs parallelism on small
batches and partial-result memory (b * max_chunks * rows * dv floats).
"""

import torch
import triton
import triton.language as tl

from ._common import FP_FUSION, LN2, LOG2E, cdiv, next_pow2, output_ptrs, query_rows
from ._fp8 import GROUP
from .decode import _attend_range, launch_tensors
from .decode_fp8 import _attend_range_fp8, _load_q_fp8, _store_rows_fp8, read_variants


@triton.jit
def _invariant_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    s_q, h_q, num_blocks, page_size, max_len, max_chunks, qk_scale,
    DV: tl.constexpr, DR: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_DR: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_BLOCKS: tl.constexpr,
    CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FP8: tl.constexpr = False, HW_CVT: tl.constexpr = False, SCALE_TILE: tl.constexpr = False,
    CVT_ONCE: tl.constexpr = False,
):
    """One chunk of one sequence. ``FP8``: k_ptr is the FP8 layout (uint8, strides in bytes; DV = BLOCK_DV = 512)
    read as ``decode_fp8`` reads it (``HW_CVT``, ``SCALE_TILE``, ``CVT_ONCE`` as there)."""
    pid = tl.program_id(0)
    row_block = tl.program_id(1)
    seq = pid // max_chunks
    chunk = pid % max_chunks
    length = tl.load(seqlens_ptr + seq * stride_seqlens)
    length = tl.minimum(tl.maximum(length, 0), max_len)
    chunks = (length + CHUNK_BLOCKS * BLOCK_N - 1) // (CHUNK_BLOCKS * BLOCK_N)
    rows, row_ok, row_s, row_h = query_rows(row_block, s_q, h_q, BLOCK_H)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_dr = tl.arange(0, BLOCK_DR)
    dv_ok = offs_dv < DV
    if chunk < chunks:
        q_base = q_ptr + seq.to(tl.int64) * stride_qb + row_s.to(tl.int64) * stride_qs + row_h.to(tl.int64) * stride_qh
        if CAUSAL:
            row_limit = length - s_q + row_s + 1
        else:
            row_limit = tl.zeros([BLOCK_H], dtype=tl.int32) + length
        tok_lo = chunk * CHUNK_BLOCKS * BLOCK_N
        tok_hi = tl.minimum(tok_lo + CHUNK_BLOCKS * BLOCK_N, length)
        part_rows = pid.to(tl.int64) * (s_q * h_q) + rows
        if FP8:
            q0, q1, q2, q3, q_pe, row_scale = _load_q_fp8(q_base, row_ok, qk_scale, BLOCK_H)
            acc0, acc1, acc2, acc3, unit, m_i, l_i = _attend_range_fp8(
                q0, q1, q2, q3, q_pe, row_scale, k_ptr, block_table_ptr, seq, tok_lo, tok_hi, row_limit, stride_kb,
                stride_kt, stride_btb, stride_btp, num_blocks, page_size, qk_scale, BLOCK_H, BLOCK_N, HW_CVT,
                SCALE_TILE, CVT_ONCE)
            offs_g = tl.arange(0, GROUP)
            o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_g, stride_ob, stride_os,
                                           stride_oh, stride_lb, stride_lh, stride_ls)
            _store_rows_fp8(acc0, acc1, acc2, acc3, unit, m_i, l_i, chunks == 1, o_ptrs, lse_ptrs,
                            o_part_ptr + part_rows[:, None] * BLOCK_DV + offs_g[None, :], lse_part_ptr + part_rows,
                            row_ok)
        else:
            q_nope = tl.load(q_base[:, None] + offs_dv[None, :], mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
            q_pe = q_nope  # unused when DR == 0
            if DR > 0:
                q_pe = tl.load(q_base[:, None] + DV + offs_dr[None, :],
                               mask=row_ok[:, None] & (offs_dr[None, :] < DR), other=0.0)
            acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
            m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
            acc, m_i, l_i = _attend_range(
                acc, m_i, l_i, q_nope, q_pe, k_ptr, block_table_ptr, seq, tok_lo, tok_hi, row_limit,
                stride_kb, stride_kt, stride_btb, stride_btp, num_blocks, page_size, qk_scale,
                DV, DR, BLOCK_DV, BLOCK_DR, BLOCK_N, DOT_PRECISION)
            empty = l_i == 0.0
            o = acc / tl.where(empty, 1.0, l_i)[:, None]
            lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
            if chunks == 1:
                o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_dv, stride_ob, stride_os,
                                               stride_oh, stride_lb, stride_lh, stride_ls)
                tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
                tl.store(lse_ptrs, tl.where(empty, float("inf"), lse2 * LN2), mask=row_ok)
            else:
                tl.store(o_part_ptr + part_rows[:, None] * BLOCK_DV + offs_dv[None, :], o, mask=row_ok[:, None])
                tl.store(lse_part_ptr + part_rows, lse2, mask=row_ok)
    elif (chunk == 0) & (chunks == 0):
        # no keys: out = 0, lse = +inf
        o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_dv, stride_ob, stride_os,
                                       stride_oh, stride_lb, stride_lh, stride_ls)
        tl.store(o_ptrs, tl.zeros([BLOCK_H, BLOCK_DV], dtype=out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dv_ok[None, :])
        tl.store(lse_ptrs, tl.full([BLOCK_H], float("inf"), dtype=tl.float32), mask=row_ok)


@triton.jit
def _invariant_combine_kernel(
    o_part_ptr, lse_part_ptr, seqlens_ptr, out_ptr, lse_ptr,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    s_q, h_q, max_len, max_chunks,
    DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    CHUNK_BLOCKS: tl.constexpr,
):
    seq = tl.program_id(0)
    row_block = tl.program_id(1)
    length = tl.load(seqlens_ptr + seq * stride_seqlens)
    length = tl.minimum(tl.maximum(length, 0), max_len)
    chunks = (length + CHUNK_BLOCKS * BLOCK_N - 1) // (CHUNK_BLOCKS * BLOCK_N)
    if chunks > 1:
        rows_per_seq = s_q * h_q
        rows, row_ok, row_s, row_h = query_rows(row_block, s_q, h_q, BLOCK_H)
        offs_dv = tl.arange(0, BLOCK_DV)
        base = seq.to(tl.int64) * max_chunks
        m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        for c in range(0, chunks):
            lse2 = tl.load(lse_part_ptr + (base + c) * rows_per_seq + rows, mask=row_ok, other=float("-inf"))
            m = tl.maximum(m, lse2)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
        wsum = tl.zeros([BLOCK_H], dtype=tl.float32)
        for c in range(0, chunks):
            part_rows = (base + c) * rows_per_seq + rows
            w = tl.math.exp2(tl.load(lse_part_ptr + part_rows, mask=row_ok, other=float("-inf")) - m_safe)
            acc += w[:, None] * tl.load(o_part_ptr + part_rows[:, None] * BLOCK_DV + offs_dv[None, :],
                                        mask=row_ok[:, None], other=0.0)
            wsum += w
        empty = wsum == 0.0
        o = acc / tl.where(empty, 1.0, wsum)[:, None]
        lse = tl.where(empty, float("inf"), (m_safe + tl.math.log2(tl.where(empty, 1.0, wsum))) * LN2)
        o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_dv, stride_ob, stride_os,
                                       stride_oh, stride_lb, stride_lh, stride_ls)
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
        tl.store(lse_ptrs, lse, mask=row_ok)


def chunk_tokens(rows: int) -> int:
    """Tokens per chunk: a function of the query rows only (never of the batch), so plans are invariant.
    Few rows are memory-bound and want more programs; many rows are compute-bound and want fewer, larger
    partial results."""
    return 2048 if rows <= 32 else 4096


def decode_invariant(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, config, out, lse,
                     fp8=False):
    """Launch; arguments are validated by ``triton_mla.api``. Shapes as ``decode.decode_splitkv``; with ``fp8``,
    k_cache is the FP8 layout as uint8 ([num_blocks, page_size, 1, 656]) and ``config`` a "decode_fp8" entry."""
    b, s_q, h_q, d = q.shape
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    dv, dr = head_dim_v, d - head_dim_v
    block_dv = max(16, next_pow2(dv))
    block_dr = max(16, next_pow2(dr)) if dr > 0 else 16
    block_h, block_n = config["BLOCK_H"], config["BLOCK_N"]
    rows = s_q * h_q
    chunk_blocks = max(1, (config.get("INVARIANT_CHUNK_TOKENS") or chunk_tokens(rows)) // block_n)
    max_len = block_table.shape[1] * page_size
    max_chunks = max(1, cdiv(cdiv(max_len, block_n), chunk_blocks))
    o_part = torch.empty(b * max_chunks, rows, block_dv, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(b * max_chunks, rows, dtype=torch.float32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _invariant_kernel[(b * max_chunks, cdiv(rows, block_h))](
        *launch_tensors(q, k_cache, block_table, cache_seqlens, out, lse, o_part, lse_part),
        s_q, h_q, num_blocks, page_size, max_len, max_chunks, softmax_scale * LOG2E.value,
        DV=dv, DR=dr, BLOCK_DV=block_dv, BLOCK_DR=block_dr, BLOCK_H=block_h, BLOCK_N=block_n,
        CHUNK_BLOCKS=chunk_blocks, CAUSAL=bool(causal and s_q > 1), DOT_PRECISION=precision,
        **(dict(FP8=True, **read_variants(config)) if fp8 else {}),
        **FP_FUSION, num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    combine_h = min(block_h, 16)
    _invariant_combine_kernel[(b, cdiv(rows, combine_h))](
        o_part, lse_part, cache_seqlens, out, lse,
        cache_seqlens.stride(0),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        s_q, h_q, max_len, max_chunks,
        DV=dv, BLOCK_DV=block_dv, BLOCK_H=combine_h, BLOCK_N=block_n, CHUNK_BLOCKS=chunk_blocks,
        **FP_FUSION, num_warps=4,
    )
    return out, lse
