"""The combine kernel and launcher before this session (commit ea437ac's kernels/decode.py), for ab2.py."""
import triton
import triton.language as tl

from triton_mla.kernels._common import (
    LN2,
    cdiv,
    effective_parts,
    output_ptrs,
    part_of_block,
    part_start,
    plan_totals,
    query_rows,
    seq_blocks,
)


@triton.jit
def _combine_kernel(
    o_part_ptr, lse_part_ptr, seqlens_ptr, out_ptr, lse_ptr,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, max_len, num_parts,
    DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    MIN_BLOCKS_PER_PART: tl.constexpr, CHUNK_B: tl.constexpr,
):
    seq = tl.program_id(0)
    row_block = tl.program_id(1)
    total, seq_g0 = plan_totals(seqlens_ptr, stride_seqlens, batch, seq, max_len, BLOCK_N, CHUNK_B)
    parts = effective_parts(total, num_parts, MIN_BLOCKS_PER_PART)
    n = seq_blocks(seqlens_ptr, stride_seqlens, seq, seq < batch, max_len, BLOCK_N)

    rows_per_seq = s_q * h_q
    rows, row_ok, row_s, row_h = query_rows(row_block, s_q, h_q, BLOCK_H)
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < DV
    o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_dv, stride_ob, stride_os, stride_oh,
                                   stride_lb, stride_lh, stride_ls)
    first = part_of_block(seq_g0, total, parts)
    last = part_of_block(seq_g0 + n - 1, total, parts)
    if n == 0:
        # no keys at all (FlashMLA's convention: out = 0, lse = +inf)
        tl.store(o_ptrs, tl.zeros([BLOCK_H, BLOCK_DV], dtype=out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dv_ok[None, :])
        tl.store(lse_ptrs, tl.full([BLOCK_H], float("inf"), dtype=tl.float32), mask=row_ok)
    elif first != last:
        # the first part holds this sequence in slot 0 only if its range starts at the sequence
        first_slot = first * 2 + tl.where(part_start(total, first, parts) == seq_g0, 0, 1)
        m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        for p in range(first, last + 1):
            slot = tl.where(p == first, first_slot, p * 2)
            lse2 = tl.load(lse_part_ptr + slot.to(tl.int64) * rows_per_seq + rows, mask=row_ok,
                           other=float("-inf"))
            m = tl.maximum(m, lse2)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
        wsum = tl.zeros([BLOCK_H], dtype=tl.float32)
        for p in range(first, last + 1):
            slot = tl.where(p == first, first_slot, p * 2)
            part_rows = slot.to(tl.int64) * rows_per_seq + rows
            lse2 = tl.load(lse_part_ptr + part_rows, mask=row_ok, other=float("-inf"))
            w = tl.math.exp2(lse2 - m_safe)
            o = tl.load(o_part_ptr + part_rows[:, None] * BLOCK_DV + offs_dv[None, :], mask=row_ok[:, None],
                        other=0.0)
            acc += w[:, None] * o
            wsum += w
        empty = wsum == 0.0
        out = acc / tl.where(empty, 1.0, wsum)[:, None]
        lse = tl.where(empty, float("inf"), (m_safe + tl.math.log2(tl.where(empty, 1.0, wsum))) * LN2)
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
        tl.store(lse_ptrs, lse, mask=row_ok)


def _combine(o_part, lse_part, cache_seqlens, out, lse, max_len, num_parts, common):
    """Launch the merge of split sequences' partial results (and the output of empty sequences)."""
    b, s_q, h_q, _ = out.shape
    combine_h = min(common["BLOCK_H"], 16)
    _combine_kernel[(b, cdiv(s_q * h_q, combine_h))](
        o_part, lse_part, cache_seqlens, out, lse,
        cache_seqlens.stride(0),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        b, s_q, h_q, max_len, num_parts,
        **{**common, "BLOCK_H": combine_h}, num_warps=4,
    )


