"""Split-KV MLA decode over a paged latent cache, and the combine of partial results.

One program handles a block of BLOCK_H query rows (row = s * h_q + h, all heads and query tokens of
one sequence share the single KV head) over one part of the split plan (see ``_common``). K tiles are
loaded once and serve both QK^T and PV: V is the first DV dims of the latent. A part that holds a
whole sequence writes the final output directly; split sequences write partial (out, lse) pairs that
``_combine_kernel`` merges. ``decode_fp8.py`` is the same over the FP8 cache: same plan, same partial
layout, same combine.
"""

import torch
import triton
import triton.language as tl

from ._common import (
    FP_FUSION,
    LN2,
    LOG2E,
    cdiv,
    effective_parts,
    find_sequence,
    next_pow2,
    output_ptrs,
    part_of_block,
    part_start,
    plan_totals,
    query_rows,
    seq_blocks,
)


@triton.jit
def _softmax_step(qk, m_i, l_i):
    """One online-softmax step over scores qk [BLOCK_H, BLOCK_N] in log2 units: (p, alpha, m, l).

    A row that has seen nothing keeps m = -inf and l = 0."""
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@triton.jit
def _program_coords(ROWS_FIRST: tl.constexpr):
    """(part, row block) of this program. ROWS_FIRST puts the row blocks on grid axis 0, so the programs
    that read the same key blocks for different rows run side by side and share those reads in L2."""
    if ROWS_FIRST:
        return tl.program_id(1), tl.program_id(0)
    return tl.program_id(0), tl.program_id(1)


@triton.jit
def _part_plan(part, seqlens_ptr, stride_seqlens, batch, max_len, num_parts, BLOCK_N: tl.constexpr,
               MIN_BLOCKS_PER_PART: tl.constexpr, CHUNK_B: tl.constexpr, EMPTY_AT_G: tl.constexpr = False):
    """Part ``part`` of the plan: (global blocks [g_lo, g_hi), the sequence holding g_lo and the global index
    of its first block, the plan's total blocks and part count). EMPTY_AT_G: see ``find_sequence``."""
    total, _, longest = plan_totals(seqlens_ptr, stride_seqlens, batch, 0, max_len, BLOCK_N, CHUNK_B)
    parts = effective_parts(total, longest, batch, num_parts, MIN_BLOCKS_PER_PART, BLOCK_N)
    g_lo = part_start(total, part, parts)
    g_hi = part_start(total, part + 1, parts)
    if part >= parts:
        g_hi = g_lo  # this program has no work
    seq, seq_g0 = find_sequence(seqlens_ptr, stride_seqlens, batch, g_lo, max_len, BLOCK_N, CHUNK_B, EMPTY_AT_G)
    return g_lo, g_hi, seq, seq_g0, total, parts


@triton.jit
def _part_range(part, seqlens_ptr, stride_seqlens, batch, max_len, num_parts, BLOCK_N: tl.constexpr,
                MIN_BLOCKS_PER_PART: tl.constexpr, CHUNK_B: tl.constexpr):
    """``_part_plan`` without the plan's totals: (g_lo, g_hi, seq, seq_g0)."""
    g_lo, g_hi, seq, seq_g0, _, _ = _part_plan(part, seqlens_ptr, stride_seqlens, batch, max_len, num_parts, BLOCK_N,
                                               MIN_BLOCKS_PER_PART, CHUNK_B)
    return g_lo, g_hi, seq, seq_g0


@triton.jit
def _merge_parts(o_part_ptr, lse_part_ptr, o_ptrs, lse_ptrs, seq_g0, first, last, total, parts, rows, row_ok,
                 offs_dv, dv_ok, rows_per_seq, BLOCK_H: tl.constexpr, BLOCK_DV: tl.constexpr):
    """A split sequence's output from its parts' partial rows (the fused combine: run by the program that wrote
    the last of them, ``_count_part``), one part at a time with the max kept online, as ``_combine_kernel``. The
    loads go through L2 (.cg): another SM wrote those rows during this kernel."""
    # the first part holds this sequence in slot 0 only if its range starts at the sequence
    first_slot = first * 2 + tl.where(part_start(total, first, parts) == seq_g0, 0, 1)
    m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
    wsum = tl.zeros([BLOCK_H], dtype=tl.float32)
    for p in range(first, last + 1):
        slot = tl.where(p == first, first_slot, p * 2)
        part_rows = slot.to(tl.int64) * rows_per_seq + rows
        lse2 = tl.load(lse_part_ptr + part_rows, mask=row_ok, other=float("-inf"), cache_modifier=".cg")
        o = tl.load(o_part_ptr + part_rows[:, None] * BLOCK_DV + offs_dv[None, :], mask=row_ok[:, None], other=0.0,
                    cache_modifier=".cg")
        m_new = tl.maximum(m, lse2)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m - m_safe)
        w = tl.math.exp2(lse2 - m_safe)
        acc = acc * alpha[:, None] + w[:, None] * o
        wsum = wsum * alpha + w
        m = m_new
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    empty = wsum == 0.0
    tl.store(o_ptrs, (acc / tl.where(empty, 1.0, wsum)[:, None]).to(o_ptrs.dtype.element_ty),
             mask=row_ok[:, None] & dv_ok[None, :])
    tl.store(lse_ptrs, tl.where(empty, float("inf"), (m_safe + tl.math.log2(tl.where(empty, 1.0, wsum))) * LN2),
             mask=row_ok)


@triton.jit
def _count_part(counter_ptr, seq, row_block, row_blocks, first, last):
    """The fused combine's count: after this program's partial rows of sequence ``seq`` are stored, add one to
    the sequence's counter (zeroed before the launch); True for the program that brings it to the count of the
    sequence's parts, which then merges them. Every thread's stores come before the barrier, and the barrier
    before the one release-acquire atomic at GPU scope, so that program sees every part's rows."""
    tl.debug_barrier()
    done = tl.atomic_add(counter_ptr + seq * row_blocks + row_block, 1, sem="acq_rel", scope="gpu")
    return done == last - first


@triton.jit
def _attend_range(acc, m_i, l_i, q_nope, q_pe, k_ptr, block_table_ptr, seq, tok_lo, tok_hi, row_limit,
                  stride_kb, stride_kt, stride_btb, stride_btp, num_blocks, page_size, qk_scale,
                  DV: tl.constexpr, DR: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_DR: tl.constexpr,
                  BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, LAZY_RESCALE: tl.constexpr = False,
                  PREFETCH_PAGES: tl.constexpr = False):
    """Online softmax over keys [tok_lo, tok_hi) of sequence ``seq``; carries (acc, m, l) in log2 units."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_dr = tl.arange(0, BLOCK_DR)
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_btb
    # PREFETCH_PAGES: the page ids of tile i + 1 are read during tile i, so no load in the loop feeds the key
    # tile's addresses and the pipeliner can issue key tiles num_stages - 1 tiles ahead (otherwise the
    # block-table read is one more level of indirection and it keeps only two buffers)
    next_toks = tok_lo + offs_n
    next_page = tl.load(bt_row + (next_toks // page_size) * stride_btp, mask=PREFETCH_PAGES & (next_toks < tok_hi),
                        other=0)
    for start in range(tok_lo, tok_hi, BLOCK_N):
        toks = start + offs_n
        tok_ok = toks < tok_hi
        if PREFETCH_PAGES:
            page = next_page
            next_toks = toks + BLOCK_N
            next_page = tl.load(bt_row + (next_toks // page_size) * stride_btp, mask=next_toks < tok_hi, other=0)
        else:
            page = tl.load(bt_row + (toks // page_size) * stride_btp, mask=tok_ok, other=0)
        # a bad page id must not become a wild read: clamp into the cache
        page = tl.minimum(tl.maximum(page, 0), num_blocks - 1).to(tl.int64)
        tok_off = page * stride_kb + (toks % page_size).to(tl.int64) * stride_kt
        k_mask = tok_ok[:, None]
        if BLOCK_DV != DV:
            k_mask = k_mask & (offs_dv[None, :] < DV)
        k = tl.load(k_ptr + tok_off[:, None] + offs_dv[None, :], mask=k_mask, other=0.0)
        # -- scores, in log2 units -------------------------------------------------------
        qk = tl.dot(q_nope, tl.trans(k), input_precision=DOT_PRECISION)
        if DR > 0:
            pe_mask = tok_ok[:, None]
            if BLOCK_DR != DR:
                pe_mask = pe_mask & (offs_dr[None, :] < DR)
            k_pe = tl.load(k_ptr + tok_off[:, None] + DV + offs_dr[None, :], mask=pe_mask, other=0.0)
            qk += tl.dot(q_pe, tl.trans(k_pe), input_precision=DOT_PRECISION)
        qk = qk * qk_scale
        visible = tok_ok[None, :] & (toks[None, :] < row_limit[:, None])
        qk = tl.where(visible, qk, float("-inf"))
        if LAZY_RESCALE:
            # the running max moves (and acc is rescaled) only when a row's max grows by more than 8 (log2
            # units), as in FlashAttention-4: most tiles then skip the [rows, 512] multiply; p stays <= 2**8
            m_blk = tl.max(qk, axis=1)
            if tl.max((m_blk > m_i + 8.0).to(tl.int32), axis=0) > 0:
                m_new = tl.maximum(m_i, m_blk)
                alpha = tl.math.exp2(m_i - tl.where(m_new == float("-inf"), 0.0, m_new))
                acc = acc * alpha[:, None]
                l_i = l_i * alpha
                m_i = m_new
            p = tl.math.exp2(qk - tl.where(m_i == float("-inf"), 0.0, m_i)[:, None])
            l_i += tl.sum(p, axis=1)
            acc = tl.dot(p.to(k.dtype), k, acc, input_precision=DOT_PRECISION)
        else:
            p, alpha, m_i, l_i = _softmax_step(qk, m_i, l_i)
            acc = acc * alpha[:, None] + tl.dot(p.to(k.dtype), k, input_precision=DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, num_blocks, page_size, max_len, num_parts, qk_scale, counter_ptr,
    DV: tl.constexpr, DR: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_DR: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, MIN_BLOCKS_PER_PART: tl.constexpr,
    CAUSAL: tl.constexpr, CHUNK_B: tl.constexpr, DOT_PRECISION: tl.constexpr, ROWS_FIRST: tl.constexpr,
    LAZY_RESCALE: tl.constexpr, PREFETCH_PAGES: tl.constexpr, FUSED: tl.constexpr = False,
):
    """FUSED: no combine kernel follows. The program that stores the last part of a split sequence merges its
    parts (``_count_part``, ``_merge_parts``; ``counter_ptr``: b x row blocks int32, zeroed), and each empty
    sequence's output is written by the part whose range starts at or holds its place in the plan (the last part:
    those after every block). Else ``counter_ptr`` is unused and ``_combine_kernel`` does both."""
    part, row_block = _program_coords(ROWS_FIRST)
    g_lo, g_hi, seq, seq_g0, total, parts = _part_plan(part, seqlens_ptr, stride_seqlens, batch, max_len, num_parts,
                                                       BLOCK_N, MIN_BLOCKS_PER_PART, CHUNK_B, FUSED)

    rows_per_seq = s_q * h_q
    row_blocks = (rows_per_seq + BLOCK_H - 1) // BLOCK_H
    rows, row_ok, row_s, row_h = query_rows(row_block, s_q, h_q, BLOCK_H)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_dr = tl.arange(0, BLOCK_DR)
    q_rows = row_s.to(tl.int64) * stride_qs + row_h.to(tl.int64) * stride_qh
    dv_ok = offs_dv < DV
    # (FUSED) the last part also visits the empty sequences after the last block
    tail = (part == parts - 1) & FUSED

    g = g_lo
    while (g < g_hi) | (tail & (seq < batch)):
        length = tl.load(seqlens_ptr + seq * stride_seqlens)
        length = tl.minimum(tl.maximum(length, 0), max_len)
        n = (length + BLOCK_N - 1) // BLOCK_N
        seg_hi = tl.minimum(g_hi, seq_g0 + n)
        if FUSED:
            if n == 0:
                # no keys at all (FlashMLA's convention: out = 0, lse = +inf)
                o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_dv, stride_ob, stride_os,
                                               stride_oh, stride_lb, stride_lh, stride_ls)
                tl.store(o_ptrs, tl.zeros([BLOCK_H, BLOCK_DV], dtype=out_ptr.dtype.element_ty),
                         mask=row_ok[:, None] & dv_ok[None, :])
                tl.store(lse_ptrs, tl.full([BLOCK_H], float("inf"), dtype=tl.float32), mask=row_ok)
        if n > 0:
            q_base = q_ptr + seq.to(tl.int64) * stride_qb + q_rows
            q_nope = tl.load(q_base[:, None] + offs_dv[None, :], mask=row_ok[:, None] & dv_ok[None, :],
                             other=0.0)
            q_pe = q_nope  # unused when DR == 0
            if DR > 0:
                q_pe = tl.load(q_base[:, None] + DV + offs_dr[None, :],
                               mask=row_ok[:, None] & (offs_dr[None, :] < DR), other=0.0)
            if CAUSAL:
                row_limit = length - s_q + row_s + 1
            else:
                row_limit = tl.zeros([BLOCK_H], dtype=tl.int32) + length
            acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
            m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
            tok_lo = (g - seq_g0) * BLOCK_N
            tok_hi = tl.minimum((seg_hi - seq_g0) * BLOCK_N, length)
            acc, m_i, l_i = _attend_range(
                acc, m_i, l_i, q_nope, q_pe, k_ptr, block_table_ptr, seq, tok_lo, tok_hi, row_limit,
                stride_kb, stride_kt, stride_btb, stride_btp, num_blocks, page_size, qk_scale,
                DV, DR, BLOCK_DV, BLOCK_DR, BLOCK_N, DOT_PRECISION, LAZY_RESCALE, PREFETCH_PAGES)
            # -- epilogue ------------------------------------------------------------------
            empty = l_i == 0.0
            o = acc / tl.where(empty, 1.0, l_i)[:, None]
            lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
            if (g == seq_g0) & (seg_hi == seq_g0 + n):
                # the whole sequence is ours: no combine needed
                o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_dv, stride_ob, stride_os,
                                               stride_oh, stride_lb, stride_lh, stride_ls)
                tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
                tl.store(lse_ptrs, tl.where(empty, float("inf"), lse2 * LN2), mask=row_ok)
            else:
                # slot 0: the sequence this part starts in; slot 1: the one it ends in
                slot = part * 2 + tl.where(g == g_lo, 0, 1)
                part_rows = slot.to(tl.int64) * rows_per_seq + rows
                tl.store(o_part_ptr + part_rows[:, None] * BLOCK_DV + offs_dv[None, :], o,
                         mask=row_ok[:, None])
                tl.store(lse_part_ptr + part_rows, lse2, mask=row_ok)
                if FUSED:
                    first = part_of_block(seq_g0, total, parts)
                    last = part_of_block(seq_g0 + n - 1, total, parts)
                    if _count_part(counter_ptr, seq, row_block, row_blocks, first, last):
                        o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_dv, stride_ob,
                                                       stride_os, stride_oh, stride_lb, stride_lh, stride_ls)
                        _merge_parts(o_part_ptr, lse_part_ptr, o_ptrs, lse_ptrs, seq_g0, first, last, total, parts,
                                     rows, row_ok, offs_dv, dv_ok, rows_per_seq, BLOCK_H, BLOCK_DV)
        g = seg_hi
        seq_g0 += n
        seq += 1


@triton.jit
def _combine_kernel(
    o_part_ptr, lse_part_ptr, seqlens_ptr, out_ptr, lse_ptr,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, max_len, num_parts,
    DV: tl.constexpr, O_STRIDE: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_H: tl.constexpr,
    PARTS: tl.constexpr, BLOCK_N: tl.constexpr, MIN_BLOCKS_PER_PART: tl.constexpr, CHUNK_B: tl.constexpr,
):
    """Merge the partial rows of the split sequences (and write the output of empty ones). A program takes
    BLOCK_H rows and BLOCK_DV of the DV columns of one sequence, and reads PARTS parts at a time: the reads are
    independent, so a few parts' worth are in flight at once instead of one part's after another (at small
    batch a sequence has tens of parts and few programs share them). ``O_STRIDE``: the row length of
    ``o_part`` (the writer's BLOCK_DV)."""
    seq = tl.program_id(0)
    row_block = tl.program_id(1)
    dv_block = tl.program_id(2)
    total, seq_g0, longest = plan_totals(seqlens_ptr, stride_seqlens, batch, seq, max_len, BLOCK_N, CHUNK_B)
    parts = effective_parts(total, longest, batch, num_parts, MIN_BLOCKS_PER_PART, BLOCK_N)
    n = seq_blocks(seqlens_ptr, stride_seqlens, seq, seq < batch, max_len, BLOCK_N)

    rows_per_seq = s_q * h_q
    rows, row_ok, row_s, row_h = query_rows(row_block, s_q, h_q, BLOCK_H)
    offs_dv = dv_block * BLOCK_DV + tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < DV
    o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_dv, stride_ob, stride_os, stride_oh,
                                   stride_lb, stride_lh, stride_ls)
    # one program of a row block writes its lse (the test as a vector: the interpreter rejects a scalar mask term)
    lse_ok = row_ok & (rows * 0 + dv_block == 0)
    first = part_of_block(seq_g0, total, parts)
    last = part_of_block(seq_g0 + n - 1, total, parts)
    if n == 0:
        # no keys at all (FlashMLA's convention: out = 0, lse = +inf)
        tl.store(o_ptrs, tl.zeros([BLOCK_H, BLOCK_DV], dtype=out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & dv_ok[None, :])
        tl.store(lse_ptrs, tl.full([BLOCK_H], float("inf"), dtype=tl.float32), mask=lse_ok)
    elif first != last:
        # the first part holds this sequence in slot 0 only if its range starts at the sequence
        first_slot = first * 2 + tl.where(part_start(total, first, parts) == seq_g0, 0, 1)
        offs_p = tl.arange(0, PARTS)
        # one pass, the max kept online: a sequence of up to PARTS parts costs one round trip to memory
        m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
        wsum = tl.zeros([BLOCK_H], dtype=tl.float32)
        for p0 in range(first, last + 1, PARTS):
            p = p0 + offs_p
            slot = tl.where(p == first, first_slot, p * 2)
            part_rows = slot.to(tl.int64)[:, None] * rows_per_seq + rows[None, :]
            ok = (p <= last)[:, None] & row_ok[None, :]
            lse2 = tl.load(lse_part_ptr + part_rows, mask=ok, other=float("-inf"))
            o = tl.load(o_part_ptr + part_rows[:, :, None] * O_STRIDE + offs_dv[None, None, :],
                        mask=ok[:, :, None], other=0.0)
            m_new = tl.maximum(m, tl.max(lse2, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m - m_safe)
            w = tl.math.exp2(lse2 - m_safe[None, :])
            acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, axis=0)
            wsum = wsum * alpha + tl.sum(w, axis=0)
            m = m_new
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        empty = wsum == 0.0
        out = acc / tl.where(empty, 1.0, wsum)[:, None]
        lse = tl.where(empty, float("inf"), (m_safe + tl.math.log2(tl.where(empty, 1.0, wsum))) * LN2)
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
        tl.store(lse_ptrs, lse, mask=lse_ok)


def launch_tensors(q, k_cache, block_table, cache_seqlens, out, lse, o_part, lse_part):
    """The leading arguments of every dense decode kernel (``_decode_kernel``, ``_decode_fp8_kernel``,
    ``_invariant_kernel``, ``decode_sm90._decode_sm90_kernel`` share them): 8 tensors, then their strides."""
    return (q, k_cache, block_table, cache_seqlens, out, lse, o_part, lse_part,
            q.stride(0), q.stride(1), q.stride(2),
            k_cache.stride(0), k_cache.stride(1),
            block_table.stride(0), block_table.stride(1),
            cache_seqlens.stride(0),
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1), lse.stride(2))


def decode_splitkv(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, num_parts,
                   config, out, lse):
    """Launch decode + combine. Arguments are validated by the caller (``triton_mla.api``).

    q [b, s_q, h_q, d]; k_cache [num_blocks, page_size, 1, d]; block_table [b, max_pages] int32;
    cache_seqlens [b] int32; out [b, s_q, h_q, head_dim_v]; lse [b, h_q, s_q] float32.
    """
    b, s_q, h_q, d = q.shape
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    dv, dr = head_dim_v, d - head_dim_v
    block_dv = max(16, next_pow2(dv))
    block_dr = max(16, next_pow2(dr)) if dr > 0 else 16
    block_h, block_n = config["BLOCK_H"], config["BLOCK_N"]
    rows = s_q * h_q
    row_blocks = cdiv(rows, block_h)
    max_len = block_table.shape[1] * page_size
    o_part = torch.empty(2 * num_parts, rows, block_dv, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(2 * num_parts, rows, dtype=torch.float32, device=q.device)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    common = dict(DV=dv, BLOCK_DV=block_dv, BLOCK_H=block_h, BLOCK_N=block_n,
                  MIN_BLOCKS_PER_PART=config["MIN_BLOCKS_PER_PART"], CHUNK_B=128)
    rows_first = bool(config.get("ROWS_FIRST", False))
    grid = (row_blocks, num_parts) if rows_first else (num_parts, row_blocks)
    fused = fused_combine(config)
    _decode_kernel[grid](
        *launch_tensors(q, k_cache, block_table, cache_seqlens, out, lse, o_part, lse_part),
        b, s_q, h_q, num_blocks, page_size, max_len, num_parts, softmax_scale * LOG2E.value,
        part_counters(b, row_blocks, q.device) if fused else lse_part,
        DR=dr, BLOCK_DR=block_dr, CAUSAL=bool(causal and s_q > 1), DOT_PRECISION=precision, ROWS_FIRST=rows_first,
        LAZY_RESCALE=bool(config.get("LAZY_RESCALE", False)), PREFETCH_PAGES=bool(config.get("PREFETCH_PAGES", False)),
        FUSED=fused, **FP_FUSION, num_warps=config["num_warps"], num_stages=config["num_stages"], **common,
    )
    if not fused:
        _combine(o_part, lse_part, cache_seqlens, out, lse, max_len, num_parts, common)
    return out, lse


def fused_combine(config) -> bool:
    """Whether the entry merges split sequences inside the decode kernel (config key ``FUSED_COMBINE``: the
    program that stores a sequence's last part merges them) instead of a combine kernel after it."""
    return bool(config.get("FUSED_COMBINE", False))


def part_counters(b: int, row_blocks: int, device) -> torch.Tensor:
    """The fused combine's counters: parts stored so far of each (sequence, row block), zeroed for each call (a
    memset, not a kernel of ours; a buffer kept between calls would be shared by calls on other streams)."""
    return torch.zeros(b * row_blocks, dtype=torch.int32, device=device)


def combine_blocks(b: int, rows: int, num_parts: int, o_stride: int, num_sms: int):
    """(BLOCK_H, BLOCK_DV, PARTS) of ``_combine_kernel``. With programs enough to fill the GPU twice at 16 rows
    and all value columns a program, one part a step (large batch: the merge is bound by the programs' count
    and their plan look-ups, so fewer and larger is faster). Else (small batch: a sequence has tens of parts
    and the merge is bound by round trips to memory) PARTS covers a sequence's parts in one step when the plan
    deals it fewer than 8 (one more for a part it shares), in steps of 8 from 8 to 15 (two steps, one short,
    with twice the rows a program beat one half-empty step of 16: b = 8, h = 128 74.4 -> 72.2 us a call on the
    H100, benchmarks/NOTES.md, fifteenth session), else of 16; a step holds at most 8192 fp32 values (64
    registers a thread), and the value columns, then the rows, are split until the grid covers the GPU twice."""
    if b * cdiv(rows, 16) >= 2 * num_sms:
        return 16, o_stride, 1
    per_seq = cdiv(num_parts, b)
    parts = min(16, next_pow2(per_seq + 1), max(8, 1 << (per_seq.bit_length() - 1)))
    block_h, block_dv = 16, o_stride
    while parts * block_h * block_dv > 8192:
        if block_dv > 128:
            block_dv //= 2
        elif block_h > 4:
            block_h //= 2
        else:
            parts //= 2
    while b * cdiv(rows, block_h) * cdiv(o_stride, block_dv) < 2 * num_sms and (block_dv > 128 or block_h > 4):
        if block_dv > 128:
            block_dv //= 2
        else:
            block_h //= 2
    return block_h, block_dv, parts


def _combine(o_part, lse_part, cache_seqlens, out, lse, max_len, num_parts, common):
    """Launch the merge of split sequences' partial results (and the output of empty sequences)."""
    from .. import configs

    b, s_q, h_q, _ = out.shape
    o_stride = o_part.shape[-1]
    block_h, block_dv, parts = combine_blocks(b, s_q * h_q, num_parts, o_stride, configs.num_sms(out.device))
    _combine_kernel[(b, cdiv(s_q * h_q, block_h), cdiv(common["DV"], block_dv))](
        o_part, lse_part, cache_seqlens, out, lse,
        cache_seqlens.stride(0),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        b, s_q, h_q, max_len, num_parts,
        DV=common["DV"], O_STRIDE=o_stride, BLOCK_DV=block_dv, BLOCK_H=block_h, PARTS=parts,
        BLOCK_N=common["BLOCK_N"], MIN_BLOCKS_PER_PART=common["MIN_BLOCKS_PER_PART"], CHUNK_B=common["CHUNK_B"],
        **FP_FUSION, num_warps=4,
    )


def combine_specs(types, o_stride, block_n, min_blocks_per_part):
    """check-configs: the combine's extreme shapes (large batch: 16 rows of all columns; small: many parts a
    step)."""
    for block_h, block_dv, parts in ((16, o_stride, 1), (16, min(128, o_stride), 4), (4, min(128, o_stride), 16)):
        yield (f"combine(h{block_h}, dv{block_dv}, parts{parts})", _combine_kernel, types,
               dict(DV=o_stride, O_STRIDE=o_stride, BLOCK_DV=block_dv, BLOCK_H=block_h, PARTS=parts,
                    BLOCK_N=block_n, MIN_BLOCKS_PER_PART=min_blocks_per_part, CHUNK_B=128), 4, 1)


TILE_SCHEDULER_METADATA_SIZE = 8


@triton.jit
def _plan_kernel(seqlens_ptr, stride_seqlens, part_info_ptr, splits_ptr, batch, max_len, num_parts,
                 BLOCK_N: tl.constexpr, MIN_BLOCKS_PER_PART: tl.constexpr, CHUNK_B: tl.constexpr):
    """Write down the plan the decode kernels derive on their own (for inspection and FlashMLA's API):
    per part [first seq, first token, last seq, end token, first block, end block, parts in use, 0]
    and per sequence its number of splits (0 for an empty sequence)."""
    pid = tl.program_id(0)
    total, seq_g0, longest = plan_totals(seqlens_ptr, stride_seqlens, batch, pid, max_len, BLOCK_N, CHUNK_B)
    parts = effective_parts(total, longest, batch, num_parts, MIN_BLOCKS_PER_PART, BLOCK_N)
    if pid < num_parts:
        g_lo = part_start(total, pid, parts)
        g_hi = part_start(total, pid + 1, parts)
        if pid >= parts:
            g_lo = total
            g_hi = total
        s0, s0_g0 = find_sequence(seqlens_ptr, stride_seqlens, batch, g_lo, max_len, BLOCK_N, CHUNK_B)
        s1, s1_g0 = find_sequence(seqlens_ptr, stride_seqlens, batch, tl.maximum(g_hi - 1, g_lo), max_len,
                                  BLOCK_N, CHUNK_B)
        end_tok = tl.where(g_hi > g_lo, (g_hi - s1_g0) * BLOCK_N, 0)
        length = tl.load(seqlens_ptr + tl.minimum(s1, batch - 1) * stride_seqlens)
        end_tok = tl.minimum(end_tok, tl.minimum(tl.maximum(length, 0), max_len))
        base = part_info_ptr + pid * 8
        tl.store(base + 0, s0)
        tl.store(base + 1, (g_lo - s0_g0) * BLOCK_N)
        tl.store(base + 2, s1)
        tl.store(base + 3, end_tok)
        tl.store(base + 4, g_lo)
        tl.store(base + 5, g_hi)
        tl.store(base + 6, parts)
        tl.store(base + 7, 0)
    if pid < batch:
        n = seq_blocks(seqlens_ptr, stride_seqlens, pid, pid < batch, max_len, BLOCK_N)
        first = part_of_block(seq_g0, total, parts)
        last = part_of_block(seq_g0 + n - 1, total, parts)
        tl.store(splits_ptr + pid, tl.where(n > 0, last - first + 1, 0))


def plan(cache_seqlens, max_len, num_parts, config):
    """Returns (tile_scheduler_metadata [num_parts, 8] int32, num_splits [b + 1] int32 cumulative)."""
    b = cache_seqlens.shape[0]
    part_info = torch.empty(num_parts, TILE_SCHEDULER_METADATA_SIZE, dtype=torch.int32,
                            device=cache_seqlens.device)
    splits = torch.zeros(b + 1, dtype=torch.int32, device=cache_seqlens.device)
    if b == 0:
        # an empty batch: one part in use, holding nothing (the kernel would read cache_seqlens[-1] and divide
        # by the batch size)
        part_info.zero_()[:, 6] = 1
        return part_info, splits
    _plan_kernel[(max(num_parts, b),)](
        cache_seqlens, cache_seqlens.stride(0), part_info, splits[1:], b, max_len, num_parts,
        BLOCK_N=config["BLOCK_N"], MIN_BLOCKS_PER_PART=config["MIN_BLOCKS_PER_PART"], CHUNK_B=128, **FP_FUSION,
    )
    return part_info, torch.cumsum(splits, 0, dtype=torch.int32)
