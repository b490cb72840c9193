"""Sparse (DSA) MLA attention: every query token attends to its own list of top-k cache tokens.

One program handles one query token, a block of BLOCK_H of its heads (all heads of a token share its
indices) and one split of its top-k list, walked in chunks of BLOCK_N: load the chunk's token ids,
gather the K tile once and use it for QK^T (all d dims) and PV (V = the first DV dims), online softmax
in exp2 units. When the tokens and head blocks alone would leave the GPU idle, the top-k list is cut
into equal splits whose partial (out, lse) ``_combine_kernel`` merges. The split count depends only on
shapes (b, s_q, h_q, topk), so nothing syncs and a captured CUDA graph stays valid for new indices.

Decode reads a paged cache (token id = page * page_size + offset) in bf16/fp16/fp32, or in the FP8
layout (``triton_mla.fp8``): four 128-wide e4m3 groups whose per-token factor scales the columns of
QK^T and the rows of P, so no tile is dequantized element by element. Prefill reads a flat kv
[s_kv, 1, d]: the same kernel with pages of one token and one query row per "sequence".
"""

import torch
import triton
import triton.language as tl

from ._common import FP_FUSION, LN2, LOG2E, cdiv, next_pow2
from ._fp8 import GROUP, ROPE, SCALE_BYTE, fp8_to_f16, load_fp8_rope, pv_excess

try:  # the Gluon kernel for sm90 (64 heads a program, warpgroup MMA); needs triton.experimental.gluon
    from . import decode_sm90 as _gluon
    from . import sparse_sm90 as _sm90
except ImportError:  # pragma: no cover
    _sm90 = None

FP8_DV = 512
FP8_DR = 64


# -- shared pieces --------------------------------------------------------------------------------
@triton.jit
def _coords(h_q, splits, BLOCK_H: tl.constexpr):
    """(token, split, heads, head_ok): head blocks vary fastest, so the programs that gather the same
    K tiles (one token's head blocks) run side by side and share them through L2."""
    pid = tl.program_id(0)
    row_blocks = tl.cdiv(h_q, BLOCK_H)
    rb = pid % row_blocks
    rest = pid // row_blocks
    heads = rb * BLOCK_H + tl.arange(0, BLOCK_H)
    return rest // splits, rest % splits, heads, heads < h_q


@triton.jit
def _chunk_range(topk_len_ptr, stride_tl, seq, split, splits, topk, HAS_TOPK_LEN: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """(valid entries n, first chunk, end chunk) of this split; topk_length is clamped to [0, topk]."""
    n = topk
    if HAS_TOPK_LEN:
        n = tl.minimum(tl.maximum(tl.load(topk_len_ptr + seq.to(tl.int64) * stride_tl), 0), topk)
    chunks = tl.cdiv(topk, BLOCK_N)
    c_lo = (split * chunks) // splits
    c_hi = ((split + 1) * chunks) // splits
    return n, c_lo, tl.minimum(c_hi, tl.cdiv(n, BLOCK_N))


@triton.jit
def _load_ids(idx_row, c, n, stride_ik, BLOCK_N: tl.constexpr):
    """Chunk c's entries of the top-k list; past n: -1."""
    kk = c * BLOCK_N + tl.arange(0, BLOCK_N)
    return tl.load(idx_row + kk.to(tl.int64) * stride_ik, mask=kk < n, other=-1)


@triton.jit
def _offsets(ids, num_tokens, page_size, stride_kb, stride_kt):
    """Offsets of tokens ``ids`` in the cache, and which are valid: -1, or any id outside [0, num_tokens), is
    invalid and is read nowhere (its offset becomes 0, its load masked)."""
    ok = (ids >= 0) & (ids < num_tokens)
    ids = tl.where(ok, ids, 0)
    page = ids // page_size
    return page.to(tl.int64) * stride_kb + (ids - page * page_size).to(tl.int64) * stride_kt, ok


@triton.jit
def _gather(idx_row, c, n, num_tokens, page_size, stride_ik, stride_kb, stride_kt, BLOCK_N: tl.constexpr):
    """Offsets of chunk c's tokens in the cache, and which are valid (an entry past n is invalid too)."""
    return _offsets(_load_ids(idx_row, c, n, stride_ik, BLOCK_N), num_tokens, page_size, stride_kb, stride_kt)


@triton.jit
def _softmax_step(qk, ok, m_i, l_i):
    """Online softmax over one chunk of scores in log2 units; a row that has seen nothing keeps m = -inf."""
    qk = tl.where(ok[None, :], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, axis=1)


@triton.jit
def _row_scale(empty, l_i, lse2, heads, head_ok, sink_ptr, HAS_SINK: tl.constexpr):
    """What the accumulator rows are multiplied by: 1 / l, times exp(lse) / (exp(lse) + exp(sink)) with a
    sink (an infinite sink gives 0, a -inf one 1); 0 for a row with no valid key."""
    inv = 1.0 / tl.where(empty, 1.0, l_i)
    if HAS_SINK:
        sink2 = tl.load(sink_ptr + heads, mask=head_ok, other=0.0) * LOG2E
        inv = inv / (1.0 + tl.math.exp2(sink2 - tl.where(empty, 0.0, lse2)))
    return tl.where(empty, 0.0, inv)


@triton.jit
def _out_rows(out_ptr, lse_ptr, max_ptr, tok, s_q, heads, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
              stride_ls):
    """Row pointers of query token ``tok`` = (seq, s) in out [b, s_q, h_q, dv], lse and max_logits [b, h_q, s_q]."""
    seq = tok // s_q
    s = tok - seq * s_q
    o_rows = out_ptr + seq.to(tl.int64) * stride_ob + s.to(tl.int64) * stride_os + heads.to(tl.int64) * stride_oh
    stat = seq.to(tl.int64) * stride_lb + heads.to(tl.int64) * stride_lh + s.to(tl.int64) * stride_ls
    return o_rows, lse_ptr + stat, max_ptr + stat


@triton.jit
def _store_stats(lse_ptrs, max_ptrs, empty, lse2, m_i, head_ok, MAX_LOGITS: tl.constexpr):
    tl.store(lse_ptrs, tl.where(empty, float("inf"), lse2 * LN2), mask=head_ok)
    if MAX_LOGITS:
        tl.store(max_ptrs, m_i * LN2, mask=head_ok)  # -inf for a row with no valid key


@triton.jit
def _lse2(m_i, l_i):
    empty = l_i == 0.0
    return empty, tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))


@triton.jit
def _part_rows(tok, split, splits, h_q, heads):
    """Rows of the partial buffers: [token, split, head] flattened."""
    return (tok.to(tl.int64) * splits + split) * h_q + heads


@triton.jit
def _store_part_stats(stat_part_ptr, part_rows, lse2, m_i, head_ok):
    tl.store(stat_part_ptr + part_rows * 2, lse2, mask=head_ok)
    tl.store(stat_part_ptr + part_rows * 2 + 1, m_i, mask=head_ok)


# -- bf16 / fp16 / fp32 cache ----------------------------------------------------------------------
@triton.jit
def _sparse_kernel(
    q_ptr, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_ib, stride_is, stride_ik,
    stride_tl,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    s_q, h_q, topk, num_tokens, page_size, splits, qk_scale,
    DV: tl.constexpr, DR: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_DR: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, HAS_TOPK_LEN: tl.constexpr, HAS_SINK: tl.constexpr,
    MAX_LOGITS: tl.constexpr, SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    tok, split, heads, head_ok = _coords(h_q, splits, BLOCK_H)
    seq = tok // s_q
    s = tok - seq * s_q
    n, c_lo, c_hi = _chunk_range(topk_len_ptr, stride_tl, seq, split, splits, topk, HAS_TOPK_LEN, BLOCK_N)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_dr = tl.arange(0, BLOCK_DR)
    dv_ok = offs_dv < DV
    q_rows = q_ptr + seq.to(tl.int64) * stride_qb + s.to(tl.int64) * stride_qs + heads.to(tl.int64) * stride_qh
    q_nope = tl.load(q_rows[:, None] + offs_dv[None, :], mask=head_ok[:, None] & dv_ok[None, :], other=0.0)
    q_pe = q_nope  # unused when DR == 0
    if DR > 0:
        q_pe = tl.load(q_rows[:, None] + DV + offs_dr[None, :], mask=head_ok[:, None] & (offs_dr[None, :] < DR),
                       other=0.0)
    idx_row = idx_ptr + seq.to(tl.int64) * stride_ib + s.to(tl.int64) * stride_is

    acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    for c in range(c_lo, c_hi):
        tok_off, ok = _gather(idx_row, c, n, num_tokens, page_size, stride_ik, stride_kb, stride_kt, BLOCK_N)
        k_mask = ok[:, None]
        if BLOCK_DV != DV:
            k_mask = k_mask & dv_ok[None, :]
        k = tl.load(k_ptr + tok_off[:, None] + offs_dv[None, :], mask=k_mask, other=0.0)
        # -- scores, in log2 units: one K tile serves QK^T here and PV below ----------------------
        qk = tl.dot(q_nope, tl.trans(k), input_precision=DOT_PRECISION)
        if DR > 0:
            pe_mask = ok[:, None]
            if BLOCK_DR != DR:
                pe_mask = pe_mask & (offs_dr[None, :] < DR)
            k_pe = tl.load(k_ptr + tok_off[:, None] + DV + offs_dr[None, :], mask=pe_mask, other=0.0)
            qk += tl.dot(q_pe, tl.trans(k_pe), input_precision=DOT_PRECISION)
        p, alpha, m_i, l_i = _softmax_step(qk * qk_scale, ok, m_i, l_i)
        acc = acc * alpha[:, None] + tl.dot(p.to(k.dtype), k, input_precision=DOT_PRECISION)

    # -- epilogue ------------------------------------------------------------------------------------
    empty, lse2 = _lse2(m_i, l_i)
    if SPLIT:
        rows = _part_rows(tok, split, splits, h_q, heads)
        inv = tl.where(empty, 0.0, 1.0 / tl.where(empty, 1.0, l_i))
        tl.store(o_part_ptr + rows[:, None] * BLOCK_DV + offs_dv[None, :], acc * inv[:, None],
                 mask=head_ok[:, None])
        _store_part_stats(stat_part_ptr, rows, lse2, m_i, head_ok)
    else:
        inv = _row_scale(empty, l_i, lse2, heads, head_ok, sink_ptr, HAS_SINK)
        o_rows, lse_ptrs, max_ptrs = _out_rows(out_ptr, lse_ptr, max_ptr, tok, s_q, heads, stride_ob, stride_os,
                                               stride_oh, stride_lb, stride_lh, stride_ls)
        tl.store(o_rows[:, None] + offs_dv[None, :], (acc * inv[:, None]).to(out_ptr.dtype.element_ty),
                 mask=head_ok[:, None] & dv_ok[None, :])
        _store_stats(lse_ptrs, max_ptrs, empty, lse2, m_i, head_ok, MAX_LOGITS)


# -- FP8 cache -------------------------------------------------------------------------------------
# The value dims are multiplied in float16 whatever q's dtype: float16 holds every e4m3 value exactly
# (so a tile needs one conversion, a single cvt per two values on sm89+), has more mantissa than
# bfloat16 for q and P, and q is brought into its range by a power-of-two scale per row (exact, undone
# on the scores). The rope dims stay in q's dtype (the cache holds them in bfloat16).
# _fp8_group reads the layout as ``kernels/_fp8.py``'s load_fp8_group does, plus sm89+'s native e4m3
# conversion (a cvt per two values instead of the bit trick's ~8 integer ops per value, which would cost
# more than the memory traffic at 16 heads).
@triton.jit
def _fp8_group(k_ptr, tok_off, tok_ok, G: tl.constexpr, NATIVE_FP8: tl.constexpr):
    """Group G of each token: ([BLOCK_N, 128] float16, [BLOCK_N] fp32 factor), value = tile * factor
    exactly; invalid tokens give 0 and factor 0."""
    offs = G * GROUP + tl.arange(0, GROUP)
    x = tl.load(k_ptr + tok_off[:, None] + offs[None, :], mask=tok_ok[:, None], other=0)
    scale = tl.load((k_ptr + tok_off + SCALE_BYTE + 4 * G).to(tl.pointer_type(tl.float32)), mask=tok_ok,
                    other=0.0)
    if NATIVE_FP8:
        tile = x.to(tl.float8e4nv, bitcast=True).to(tl.float16)
    else:
        tile = fp8_to_f16(x)  # the bit trick gives value * 2**-8 (sm80/sm86, the interpreter)
        scale = scale * 256.0
    return tile, scale


@triton.jit
def _pv_fp8(acc, alpha, p, factor, tile):
    """acc * alpha + P V of one value group, P's columns times the keys' ``factor`` in float16 (divided by
    ``pv_excess`` where latents are so large that the product would overflow)."""
    e = pv_excess(factor)
    return acc * alpha[:, None] + tl.dot((p * (factor / e)[None, :]).to(tl.float16), tile) * e


@triton.jit
def _fp8_qk_tile(k_ptr, tok_off, tok_ok, G: tl.constexpr, NATIVE_FP8: tl.constexpr):
    """Group G's tile again (as ``_fp8_group``'s, in float16), read by a load of its own for QK^T (DUAL_LOAD)."""
    offs = G * GROUP + tl.arange(0, GROUP)
    # another eviction policy than _fp8_group's load, so that CSE cannot merge the two loads back into one
    x = tl.load(k_ptr + tok_off[:, None] + offs[None, :], mask=tok_ok[:, None], other=0, eviction_policy="evict_last")
    if NATIVE_FP8:
        return x.to(tl.float8e4nv, bitcast=True).to(tl.float16)
    return fp8_to_f16(x)


@triton.jit
def _load_q_group(q_rows, head_ok, COL: tl.constexpr, WIDTH: tl.constexpr):
    offs = COL + tl.arange(0, WIDTH)
    return tl.load(q_rows[:, None] + offs[None, :], mask=head_ok[:, None], other=0.0)


@triton.jit
def _pow2_row_scale(amax):
    """s = 2**(14 - floor(log2 amax)) per row, so that |q| * s < 2**15 sits in float16's range with its full
    precision; from the exponent bits, so s and 1 / s are exact. A zero row gets 2**127 (harmless)."""
    e = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF
    s = (tl.minimum(tl.maximum(268 - e, 1), 254) << 23).to(tl.float32, bitcast=True)
    return s, 1.0 / s


@triton.jit
def _store_o_group(o_rows, acc, inv, head_ok, G: tl.constexpr):
    offs = G * GROUP + tl.arange(0, GROUP)
    tl.store(o_rows[:, None] + offs[None, :], (acc * inv[:, None]).to(o_rows.dtype.element_ty),
             mask=head_ok[:, None])


@triton.jit
def _sparse_fp8_kernel(
    q_ptr, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_ib, stride_is, stride_ik,
    stride_tl,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    s_q, h_q, topk, num_tokens, page_size, splits, qk_scale,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, HAS_TOPK_LEN: tl.constexpr, HAS_SINK: tl.constexpr,
    MAX_LOGITS: tl.constexpr, SPLIT: tl.constexpr, NATIVE_FP8: tl.constexpr, DUAL_LOAD: tl.constexpr,
    PREFETCH_IDS: tl.constexpr,
):
    """k_ptr is the uint8 cache (strides in bytes); the 512 value dims are four groups of 128."""
    # P * factor is formed in float16: the factor is lifted by 2**8 (the bit trick's tile already is) so
    # that small scales do not push it towards float16's subnormals; the epilogue takes it off again
    PV_LIFT: tl.constexpr = 256.0 if NATIVE_FP8 else 1.0
    tok, split, heads, head_ok = _coords(h_q, splits, BLOCK_H)
    seq = tok // s_q
    s = tok - seq * s_q
    n, c_lo, c_hi = _chunk_range(topk_len_ptr, stride_tl, seq, split, splits, topk, HAS_TOPK_LEN, BLOCK_N)
    q_rows = q_ptr + seq.to(tl.int64) * stride_qb + s.to(tl.int64) * stride_qs + heads.to(tl.int64) * stride_qh
    q0 = _load_q_group(q_rows, head_ok, 0 * GROUP, GROUP).to(tl.float32)
    q1 = _load_q_group(q_rows, head_ok, 1 * GROUP, GROUP).to(tl.float32)
    q2 = _load_q_group(q_rows, head_ok, 2 * GROUP, GROUP).to(tl.float32)
    q3 = _load_q_group(q_rows, head_ok, 3 * GROUP, GROUP).to(tl.float32)
    q_pe = _load_q_group(q_rows, head_ok, 4 * GROUP, ROPE)
    amax = tl.maximum(tl.maximum(tl.max(tl.abs(q0), axis=1), tl.max(tl.abs(q1), axis=1)),
                      tl.maximum(tl.max(tl.abs(q2), axis=1), tl.max(tl.abs(q3), axis=1)))
    q_lift, q_unlift = _pow2_row_scale(amax)
    q0 = (q0 * q_lift[:, None]).to(tl.float16)
    q1 = (q1 * q_lift[:, None]).to(tl.float16)
    q2 = (q2 * q_lift[:, None]).to(tl.float16)
    q3 = (q3 * q_lift[:, None]).to(tl.float16)
    nope_scale = q_unlift * qk_scale
    idx_row = idx_ptr + seq.to(tl.int64) * stride_ib + s.to(tl.int64) * stride_is

    acc0 = tl.zeros([BLOCK_H, GROUP], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_H, GROUP], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_H, GROUP], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_H, GROUP], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    # PREFETCH_IDS = d: chunk c + d's indices are loaded in iteration c, so the tile loads never wait on an index
    # load of their own iteration and the pipeliner can issue them stages ahead (else it can keep only one
    # chunk in flight: index load, then tile load, then compute). d = 1: offsets carried; d = 2: offsets of
    # c + 1 and raw indices of c + 2 carried (the index load of iteration c is consumed only in c + 1).
    # Reads past the split's own chunks are masked off by n_end.
    n_end = tl.minimum(n, c_hi * BLOCK_N)
    if PREFETCH_IDS >= 1:
        off_a, ok_a = _gather(idx_row, c_lo, n_end, num_tokens, page_size, stride_ik, stride_kb, stride_kt, BLOCK_N)
    if PREFETCH_IDS >= 2:
        ids_b = _load_ids(idx_row, c_lo + 1, n_end, stride_ik, BLOCK_N)
    for c in range(c_lo, c_hi):
        if PREFETCH_IDS == 0:
            tok_off, ok = _gather(idx_row, c, n, num_tokens, page_size, stride_ik, stride_kb, stride_kt, BLOCK_N)
        elif PREFETCH_IDS == 1:
            tok_off = off_a
            ok = ok_a
            off_a, ok_a = _gather(idx_row, c + 1, n_end, num_tokens, page_size, stride_ik, stride_kb, stride_kt,
                                  BLOCK_N)
        else:
            tok_off = off_a
            ok = ok_a
            off_a, ok_a = _offsets(ids_b, num_tokens, page_size, stride_kb, stride_kt)
            ids_b = _load_ids(idx_row, c + 2, n_end, stride_ik, BLOCK_N)
        # tile_g * f_g[:, None] is the dequantized group g (exactly): f scales columns of QK^T, rows of P
        t0, f0 = _fp8_group(k_ptr, tok_off, ok, 0, NATIVE_FP8)
        t1, f1 = _fp8_group(k_ptr, tok_off, ok, 1, NATIVE_FP8)
        t2, f2 = _fp8_group(k_ptr, tok_off, ok, 2, NATIVE_FP8)
        t3, f3 = _fp8_group(k_ptr, tok_off, ok, 3, NATIVE_FP8)
        # DUAL_LOAD: below 64 rows (mma.sync) Triton feeds tl.trans(t) to QK^T through registers and t to PV
        # through shared memory; a load with two such users is not pipelined (a synchronous load in the loop).
        # A second load of the same bytes (an L2 hit) for QK^T gives each load one user: both become cp.async.
        if DUAL_LOAD:
            u0 = _fp8_qk_tile(k_ptr, tok_off, ok, 0, NATIVE_FP8)
            u1 = _fp8_qk_tile(k_ptr, tok_off, ok, 1, NATIVE_FP8)
            u2 = _fp8_qk_tile(k_ptr, tok_off, ok, 2, NATIVE_FP8)
            u3 = _fp8_qk_tile(k_ptr, tok_off, ok, 3, NATIVE_FP8)
        else:
            u0 = t0
            u1 = t1
            u2 = t2
            u3 = t3
        rope = load_fp8_rope(k_ptr, tok_off, ok, q_ptr.dtype.element_ty)
        nope = tl.dot(q0, tl.trans(u0)) * f0[None, :]
        nope += tl.dot(q1, tl.trans(u1)) * f1[None, :]
        nope += tl.dot(q2, tl.trans(u2)) * f2[None, :]
        nope += tl.dot(q3, tl.trans(u3)) * f3[None, :]
        qk = nope * nope_scale[:, None] + tl.dot(q_pe, tl.trans(rope)) * qk_scale
        p, alpha, m_i, l_i = _softmax_step(qk, ok, m_i, l_i)
        acc0 = _pv_fp8(acc0, alpha, p, f0 * PV_LIFT, t0)
        acc1 = _pv_fp8(acc1, alpha, p, f1 * PV_LIFT, t1)
        acc2 = _pv_fp8(acc2, alpha, p, f2 * PV_LIFT, t2)
        acc3 = _pv_fp8(acc3, alpha, p, f3 * PV_LIFT, t3)

    # -- epilogue ------------------------------------------------------------------------------------
    empty, lse2 = _lse2(m_i, l_i)
    if SPLIT:
        rows = _part_rows(tok, split, splits, h_q, heads)
        inv = tl.where(empty, 0.0, 1.0 / tl.where(empty, 1.0, l_i)) / PV_LIFT
        o_rows = o_part_ptr + rows * (4 * GROUP)
        _store_o_group(o_rows, acc0, inv, head_ok, 0)
        _store_o_group(o_rows, acc1, inv, head_ok, 1)
        _store_o_group(o_rows, acc2, inv, head_ok, 2)
        _store_o_group(o_rows, acc3, inv, head_ok, 3)
        _store_part_stats(stat_part_ptr, rows, lse2, m_i, head_ok)
    else:
        inv = _row_scale(empty, l_i, lse2, heads, head_ok, sink_ptr, HAS_SINK) / PV_LIFT
        o_rows, lse_ptrs, max_ptrs = _out_rows(out_ptr, lse_ptr, max_ptr, tok, s_q, heads, stride_ob, stride_os,
                                               stride_oh, stride_lb, stride_lh, stride_ls)
        _store_o_group(o_rows, acc0, inv, head_ok, 0)
        _store_o_group(o_rows, acc1, inv, head_ok, 1)
        _store_o_group(o_rows, acc2, inv, head_ok, 2)
        _store_o_group(o_rows, acc3, inv, head_ok, 3)
        _store_stats(lse_ptrs, max_ptrs, empty, lse2, m_i, head_ok, MAX_LOGITS)


# -- combine of the splits ---------------------------------------------------------------------------
@triton.jit
def _combine_kernel(
    o_part_ptr, stat_part_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    s_q, h_q, splits,
    DV: tl.constexpr, PART_W: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
    HAS_SINK: tl.constexpr, MAX_LOGITS: tl.constexpr,
):
    """Merge the splits of one token's head block over BLOCK_C output columns: weights exp2(lse2_s - max),
    then the sink. The program of the first column block writes lse (and max_logits)."""
    tok, cb, heads, head_ok = _coords(h_q, PART_W // BLOCK_C, BLOCK_H)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    rows0 = _part_rows(tok, 0, splits, h_q, heads)
    m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    m_max = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    for sp in range(splits):
        rows = rows0 + sp * h_q
        m = tl.maximum(m, tl.load(stat_part_ptr + rows * 2, mask=head_ok, other=float("-inf")))
        if MAX_LOGITS:
            m_max = tl.maximum(m_max, tl.load(stat_part_ptr + rows * 2 + 1, mask=head_ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    wsum = tl.zeros([BLOCK_H], dtype=tl.float32)
    for sp in range(splits):
        rows = rows0 + sp * h_q
        w = tl.math.exp2(tl.load(stat_part_ptr + rows * 2, mask=head_ok, other=float("-inf")) - m_safe)
        o = tl.load(o_part_ptr + rows[:, None] * PART_W + offs_c[None, :], mask=head_ok[:, None], other=0.0)
        acc += w[:, None] * o
        wsum += w
    empty, lse2 = _lse2(m_safe, wsum)
    inv = _row_scale(empty, wsum, lse2, heads, head_ok, sink_ptr, HAS_SINK)
    o_rows, lse_ptrs, max_ptrs = _out_rows(out_ptr, lse_ptr, max_ptr, tok, s_q, heads, stride_ob, stride_os,
                                           stride_oh, stride_lb, stride_lh, stride_ls)
    tl.store(o_rows[:, None] + offs_c[None, :], (acc * inv[:, None]).to(out_ptr.dtype.element_ty),
             mask=head_ok[:, None] & (offs_c[None, :] < DV))
    if cb == 0:
        _store_stats(lse_ptrs, max_ptrs, empty, lse2, m_max, head_ok, MAX_LOGITS)


# -- launcher ----------------------------------------------------------------------------------------
COMBINE_BLOCK_H = 16
COMBINE_BLOCK_C = 128  # output columns per combine program: more programs when few tokens split
_INT32_MAX = (1 << 31) - 1


def num_splits(tokens, h_q, topk, config, num_sms):
    """Splits of each top-k list: as many as keep the programs within one wave of ``PROGRAMS_PER_SM`` (the
    programs an SM holds at once) per SM, with at least ``MIN_CHUNKS_PER_SPLIT`` chunks of BLOCK_N in each
    split. Depends on shapes only."""
    programs = tokens * cdiv(h_q, config["BLOCK_H"])
    target = config["PROGRAMS_PER_SM"] * num_sms
    if programs == 0 or 2 * programs > target:
        return 1
    chunks = cdiv(topk, config["BLOCK_N"])
    return max(1, min(target // programs, chunks // config["MIN_CHUNKS_PER_SPLIT"]))


def invariant_splits(topk, config):
    """Splits of each top-k list for batch-invariant decode: a function of topk and the config alone (never of the
    batch), one split for every ``INVARIANT_SPLIT_KEYS`` entries (2048 by default, as the dense invariant chunks)
    and at most one a chunk of BLOCK_N (as ``num_splits``), so a token's partial results are cut and merged the
    same way whatever else is in the batch."""
    return max(1, min(cdiv(topk, config.get("INVARIANT_SPLIT_KEYS") or 2048), cdiv(topk, config["BLOCK_N"])))


def native_fp8(device):
    """Whether the device converts e4m3 in hardware (sm89 and later); else the kernel's bit trick."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_config(config):
    """The launch fields of the FP8 kernel: an entry's ``FP8_<field>`` (``FP8_BLOCK_N``, ``FP8_num_warps``, ...)
    in place of the 16-bit kernel's ``<field>``."""
    return {**config, **{k[4:]: v for k, v in config.items() if k.startswith("FP8_")}}


def fp8_variant(config):
    """The FP8 kernel's loop variants from an entry (``FP8_DUAL_LOAD``, ``FP8_PREFETCH_IDS``; default off: 0)."""
    return dict(DUAL_LOAD=bool(config.get("DUAL_LOAD", False)), PREFETCH_IDS=int(config.get("PREFETCH_IDS", 0)))


def sparse_attention(q, k_cache, indices, topk_length, attn_sink, out, lse, max_logits, softmax_scale, fp8,
                     config, num_sms, batch_invariant=False):
    """Launch the sparse kernel (+ combine). Arguments are validated by ``triton_mla.sparse``. On sm90 an entry
    with ``WGMMA`` runs the Gluon kernel (``kernels/sparse_sm90.py``) where it applies, else the tl.dot kernels.

    Decode-shaped views (prefill passes q.unsqueeze(1) and kv as pages of one token):
    q [b, s_q, h_q, d]; k_cache [num_blocks, page_size, 1, d] (uint8 [..., 656] when ``fp8``);
    indices [b, s_q, topk] int32; topk_length [b] int32 or None; attn_sink [h_q] float32 or None;
    out [b, s_q, h_q, dv]; lse and max_logits (or None) [b, h_q, s_q] float32, with equal strides.
    batch_invariant: split each top-k list by ``invariant_splits`` (topk alone) instead of ``num_splits``.
    """
    b, s_q, h_q, d = q.shape
    dv = out.shape[-1]
    topk = indices.shape[-1]
    tokens = b * s_q
    if fp8:
        config = fp8_config(config)
    use_sm90 = _sm90 is not None and _gluon.supports(q, k_cache, dv, config, fp8)
    if use_sm90:
        config = _sm90.plan_config(config, h_q, fp8, None if batch_invariant else tokens, num_sms)
    block_h, block_n = config["BLOCK_H"], config["BLOCK_N"]
    if batch_invariant:
        splits = invariant_splits(topk, config)
    else:
        splits = num_splits(tokens, h_q, topk, config, num_sms)
    block_dv = FP8_DV if fp8 else max(16, next_pow2(dv))
    if splits > 1:
        o_part = torch.empty(tokens * splits * h_q, block_dv, dtype=torch.float32, device=q.device)
        stat_part = torch.empty(tokens * splits * h_q, 2, dtype=torch.float32, device=q.device)
    else:
        o_part = stat_part = lse  # never touched
    num_tokens = min(k_cache.shape[0] * k_cache.shape[1], _INT32_MAX)
    page_size, stride_kb = k_cache.shape[1], k_cache.stride(0)
    if stride_kb == page_size * k_cache.stride(1):
        # pages laid end to end: a token id is an offset in tokens, and pages of one token spare the kernels an
        # integer division per key (Triton compiles an argument equal to 1 as a constant)
        page_size, stride_kb = 1, k_cache.stride(1)
    flags = dict(HAS_TOPK_LEN=topk_length is not None, HAS_SINK=attn_sink is not None,
                 MAX_LOGITS=max_logits is not None)
    topk_length = indices if topk_length is None else topk_length  # placeholders, never read
    attn_sink = lse if attn_sink is None else attn_sink
    max_logits = lse if max_logits is None else max_logits
    grid = (tokens * cdiv(h_q, block_h) * splits,)
    args = (
        q, k_cache, indices, topk_length, attn_sink, out, lse, max_logits, o_part, stat_part,
        q.stride(0), q.stride(1), q.stride(2),
        stride_kb, k_cache.stride(1),
        indices.stride(0), indices.stride(1), indices.stride(2),
        topk_length.stride(0),
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1), lse.stride(2),
        s_q, h_q, topk, num_tokens, page_size, splits, softmax_scale * LOG2E.value,
    )
    launch = dict(BLOCK_H=block_h, BLOCK_N=block_n, SPLIT=splits > 1, num_warps=config["num_warps"],
                  num_stages=config["num_stages"], **flags)
    if use_sm90:
        _sm90.launch(args, splits, grid, flags, fp8, config, h_q)
    elif fp8:
        _sparse_fp8_kernel[grid](*args, NATIVE_FP8=native_fp8(q.device), **fp8_variant(config), **launch, **FP_FUSION)
    else:
        dr = d - dv
        _sparse_kernel[grid](*args, DV=dv, DR=dr, BLOCK_DV=block_dv,
                             BLOCK_DR=max(16, next_pow2(dr)) if dr > 0 else 16,
                             DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **launch, **FP_FUSION)
    if splits > 1:
        block_c = min(block_dv, COMBINE_BLOCK_C)
        _combine_kernel[(tokens * cdiv(h_q, COMBINE_BLOCK_H) * (block_dv // block_c),)](
            o_part, stat_part, attn_sink, out, lse, max_logits,
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1), lse.stride(2),
            s_q, h_q, splits,
            DV=dv, PART_W=block_dv, BLOCK_C=block_c, BLOCK_H=COMBINE_BLOCK_H, HAS_SINK=flags["HAS_SINK"],
            MAX_LOGITS=flags["MAX_LOGITS"], **FP_FUSION, num_warps=4,
        )
    return out, lse, max_logits


# -- check-configs -------------------------------------------------------------------------------------
def compile_specs(section, entry, cap=None):
    """(name, fn, types, constexprs, num_warps, num_stages) for each kernel one entry of ``section`` launches:
    "sparse_decode" (16-bit/fp32 cache kernel, and for 16-bit entries the FP8 kernel with the entry's
    ``FP8_*`` fields) or "sparse_prefill" (16-bit kernel writing max_logits), each with and without splits,
    plus the combine. Shapes are DeepSeek's: d = 576, dv = 512. The FP8 kernel is compiled with the e4m3
    bit trick, which every target has; given a compute capability ``cap`` >= 89 (``check.py`` may pass
    it), with the native conversion that target uses instead. Both convert in registers: same shared memory."""
    fp32 = entry["dtype"] == "float32"
    elem = "*fp32" if fp32 else "*bf16"
    prefill = section == "sparse_prefill"
    types = dict(q_ptr=elem, k_ptr=elem, idx_ptr="*i32", topk_len_ptr="*i32", sink_ptr="*fp32", out_ptr=elem,
                 lse_ptr="*fp32", max_ptr="*fp32", o_part_ptr="*fp32", stat_part_ptr="*fp32", qk_scale="fp32")
    flags = dict(HAS_TOPK_LEN=True, HAS_SINK=True, MAX_LOGITS=prefill)
    tiles = dict(BLOCK_H=entry["BLOCK_H"], BLOCK_N=entry["BLOCK_N"])
    for split in (False, True):
        yield (f"sparse(split={int(split)})", _sparse_kernel, types,
               dict(DV=FP8_DV, DR=FP8_DR, BLOCK_DV=FP8_DV, BLOCK_DR=FP8_DR, SPLIT=split,
                    DOT_PRECISION="ieee" if fp32 else "tf32", **tiles, **flags),
               entry["num_warps"], entry["num_stages"])
    if entry.get("WGMMA", False) and not fp32:
        yield from _sm90.compile_specs(prefill=prefill, config=entry)
    if section == "sparse_decode" and not fp32:
        e8 = fp8_config(entry)
        if e8.get("WGMMA", False):
            yield from _sm90.compile_specs(fp8=True, config=e8)
        for split in (False, True):
            yield (f"sparse_fp8(split={int(split)})", _sparse_fp8_kernel, dict(types, k_ptr="*u8"),
                   dict(BLOCK_H=e8["BLOCK_H"], BLOCK_N=e8["BLOCK_N"], SPLIT=split,
                        NATIVE_FP8=cap is not None and cap >= 89, **fp8_variant(e8), **flags),
                   e8["num_warps"], e8["num_stages"])
    yield ("sparse_combine", _combine_kernel, types,
           dict(DV=FP8_DV, PART_W=FP8_DV, BLOCK_C=COMBINE_BLOCK_C, BLOCK_H=COMBINE_BLOCK_H, HAS_SINK=True,
                MAX_LOGITS=prefill), 4, 1)


# -- two top-k lists' results merged (sparse decode's extra cache) ---------------------------------------------------
@triton.jit
def _merge_lists_kernel(out_ptr, lse_ptr, out2_ptr, lse2_ptr, sink_ptr, s_q, h_q, DV: tl.constexpr,
                        BLOCK_DV: tl.constexpr, HAS_SINK: tl.constexpr):
    """One query row (b, s, h) of two sparse passes over disjoint key lists, merged in place into the first's out
    (b, s_q, h_q, DV) and lse (b, h_q, s_q), both contiguous like the second's: the rows weighted by exp(lse_i -
    lse), lse = log(exp(lse_1) + exp(lse_2)), then the sink (out *= 1 / (1 + exp(sink - lse))). A pass with no
    valid entry has lse +inf and a zero row: weight 0; with none in either, out stays 0 and lse +inf."""
    row = tl.program_id(0).to(tl.int64)  # (b * s_q + s) * h_q + h, out's row order
    h = row % h_q
    bs = row // h_q
    at = (bs // s_q * h_q + h) * s_q + bs % s_q  # lse's (b, h, s)
    l1 = tl.load(lse_ptr + at)
    l2 = tl.load(lse2_ptr + at)
    l1 = tl.where(l1 == float("inf"), float("-inf"), l1)
    l2 = tl.where(l2 == float("inf"), float("-inf"), l2)
    m = tl.maximum(l1, l2)
    none = m == float("-inf")
    m = tl.where(none, 0.0, m)
    e1 = tl.exp(l1 - m)
    e2 = tl.exp(l2 - m)
    total = tl.where(none, 1.0, e1 + e2)
    lse = m + tl.log(total)
    w1 = e1 / total
    w2 = e2 / total
    if HAS_SINK:
        keep = 1.0 / (1.0 + tl.exp(tl.load(sink_ptr + h) - lse))  # (sink +inf: 0, -inf: 1)
        w1 *= keep
        w2 *= keep
    cols = tl.arange(0, BLOCK_DV)
    ok = cols < DV
    o1 = tl.load(out_ptr + row * DV + cols, mask=ok, other=0.0).to(tl.float32)
    o2 = tl.load(out2_ptr + row * DV + cols, mask=ok, other=0.0).to(tl.float32)
    o = tl.where(none, 0.0, o1 * w1 + o2 * w2)
    tl.store(out_ptr + row * DV + cols, o.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(lse_ptr + at, tl.where(none, float("inf"), lse))


def merge_lists(out, lse, out2, lse2, attn_sink):
    """``_merge_lists_kernel`` over every query row: ``out``, ``lse`` (contiguous, as ``sparse_decode`` makes
    them) hold the merged result afterwards. attn_sink: (h_q,) float32 contiguous or None."""
    b, s_q, h_q, dv = out.shape
    if b * s_q * h_q == 0:
        return out, lse
    _merge_lists_kernel[(b * s_q * h_q,)](
        out, lse, out2, lse2, attn_sink if attn_sink is not None else lse, s_q, h_q,
        DV=dv, BLOCK_DV=next_pow2(dv), HAS_SINK=attn_sink is not None, **FP_FUSION, num_warps=4,
    )
    return out, lse
