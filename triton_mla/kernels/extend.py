"""Absorbed-mode extend (chunked prefill) over the paged latent cache: varlen queries, causal over a prefix.

Sequence i's new tokens are the last q_len = cu_seqlens_q[i + 1] - cu_seqlens_q[i] of its cache_seqlens[i]
tokens (already in the cache); chunk token j sees keys [0, cache_seqlens[i] - q_len + j]. The attention is
MQA over the latent: one KV head, V = the first DV dims of K.

One program takes BLOCK_M query rows of one sequence (row = t * h_q + h, as decode's ``query_rows``: a few
tokens x all heads, or part of one token's heads) against key tiles of BLOCK_N tokens gathered through the
block table; each K tile is loaded once and serves QK^T (DV + DR dims, as two dots) and PV (the first DV).
Keys that every row of the program sees run in a loop with no causal mask; the tiles on the diagonal run
a second loop with the per-row mask. There is no split over keys: a chunk of q_len tokens gives
q_len * h_q / BLOCK_M programs per sequence. A decode token (q_len 1) is a sequence like any other, so a
mixed batch needs nothing special. The grid is sized from the host's max_seqlen_q; programs past a
sequence's rows exit at once, and nothing is read on the host.

The FP8 cache (``triton_mla.fp8``, 656 bytes a token) is read in its 4 groups of 128 values: each group's
raw e4m3 tile goes to the tensor cores as it is, and the per-token scale multiplies the scores (QK^T:
columns) and the probabilities (PV: P's columns), so the tile itself is never rescaled. The launch option
FP8_ONE_TILE instead dequantizes the whole tile (exact in bf16) and runs the 16-bit path's two dots.
"""

import torch
import triton
import triton.language as tl

from ._common import FP_FUSION, LN2, LOG2E, cdiv, next_pow2
from ._fp8 import load_fp8_group, load_fp8_nope, load_fp8_rope, pv_excess

try:  # the Gluon kernel for sm90 (64 rows a program, warpgroup MMA); needs triton.experimental.gluon
    from . import decode_sm90 as _gluon
    from . import extend_sm90 as _sm90
except ImportError:  # pragma: no cover
    _sm90 = None


@triton.jit
def _key_offsets(bt_row, toks, tok_ok, stride_btp, stride_kb, stride_kt, num_blocks, page_size):
    """Offsets of tokens ``toks`` of one sequence in the cache (int64, page ids clamped into the cache)."""
    page = tl.load(bt_row + (toks // page_size) * stride_btp, mask=tok_ok, other=0)
    # a bad page id must not become a wild read
    page = tl.minimum(tl.maximum(page, 0), num_blocks - 1).to(tl.int64)
    return page * stride_kb + (toks % page_size).to(tl.int64) * stride_kt


@triton.jit
def _next_max(qk, m_i, always, LAZY_RESCALE: tl.constexpr):
    """(m_new, rescale): the running row max after scores ``qk`` (log2 units), and whether acc must be rescaled.

    LAZY_RESCALE = 0: the max follows every tile and ``rescale`` is ``always`` (a runtime true).
    LAZY_RESCALE = tau > 0: the max moves (for every row at once) only when some row's max grew by more than
    tau; otherwise the old max stays, p = exp2(qk - m) stays <= 2**tau and acc needs no multiply (64 x 512
    multiplies per tile saved once the max settles; exact either way, since l and acc use the same m)."""
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    rescale = always
    if LAZY_RESCALE > 0:
        # a row that has seen nothing (m_i = -inf) and now sees a key always triggers it
        rescale = tl.max((m_new > m_i + LAZY_RESCALE).to(tl.int32), axis=0) > 0
        m_new = tl.where(rescale, m_new, m_i)
    return m_new, rescale


@triton.jit
def _softmax_step(qk, m_i, m_new, l_i):
    """One online-softmax step on scores in log2 units, max m_i -> m_new: (p, alpha, l_new). A row that has
    seen nothing yet keeps m = -inf and l = 0."""
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    return p, alpha, l_i * alpha + tl.sum(p, axis=1)


@triton.jit
def _unchain(p, acc, alpha, cond, rescale, DT: tl.constexpr, UNCHAIN: tl.constexpr, LAZY: tl.constexpr):
    """(P in DT, acc * alpha), passed through an ``if`` on the runtime value ``cond`` (always true).

    Why: Triton lays out a dot whose result feeds another dot (QK^T into PV) with all warps along M. At
    BLOCK_M 64 and 8 warps that makes both Hopper warpgroups compute the same scores, and on mma v2 it
    gives every warp 16 rows x 512 columns of accumulator (256 registers: spills). Triton's check follows
    SSA uses and stops at an ``if``, so QK^T and PV each get a layout of their own and P moves between
    them through shared memory, as FlashMLA does. The condition is a runtime value (never folded away)
    and either branch gives the same result. UNCHAIN=False skips the trick (for the tuning sweep).
    With LAZY (lazy rescaling, see ``_next_max``) ``rescale`` says whether acc is rescaled. That ``if``
    depends on the scores, so it does not unchain (the ``if`` op itself would be in QK's forward slice):
    it sits inside the ``cond`` one, which is there whatever UNCHAIN says.
    """
    if LAZY:
        if cond:
            if rescale:
                p16 = p.to(DT)
                acc = acc * alpha[:, None]
            else:
                p16 = p.to(DT)
        else:
            p16 = p.to(DT)
            acc = acc * alpha[:, None]
    elif UNCHAIN:
        if cond:
            p16 = p.to(DT)
            acc = acc * alpha[:, None]
        else:
            p16 = p.to(DT)
            acc = acc * alpha[:, None]
    else:
        p16 = p.to(DT)
        acc = acc * alpha[:, None]
    return p16, acc


@triton.jit
def _attend(acc, m_i, l_i, q_nope, q_pe, k_ptr, bt_row, tok_lo, tok_hi, row_limit,
            stride_kb, stride_kt, stride_btp, num_blocks, page_size, qk_scale,
            DV: tl.constexpr, DR: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_DR: tl.constexpr,
            BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, UNCHAIN: tl.constexpr, DOT_PRECISION: tl.constexpr,
            LAZY_RESCALE: tl.constexpr, FP8: tl.constexpr):
    """Keys [tok_lo, tok_hi) of one sequence, 16-bit/fp32 cache; carries (acc, m, l) in log2 units.

    Without CAUSAL_MASK every row sees every key of the range (the caller guarantees it). FP8 (the
    FP8_ONE_TILE launch option): the FP8 layout, each K tile dequantized whole (value * its group's
    power-of-two scale: exact in bf16) so QK^T and PV are one dot each, as for a 16-bit cache."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_dr = tl.arange(0, BLOCK_DR)
    for start in range(tok_lo, tok_hi, BLOCK_N):
        toks = start + offs_n
        tok_ok = toks < tok_hi
        tok_off = _key_offsets(bt_row, toks, tok_ok, stride_btp, stride_kb, stride_kt, num_blocks, page_size)
        k_mask = tok_ok[:, None]
        if BLOCK_DV != DV:
            k_mask = k_mask & (offs_dv[None, :] < DV)
        if FP8:
            k = load_fp8_nope(k_ptr, tok_off, tok_ok, q_nope.dtype)
        else:
            k = tl.load(k_ptr + tok_off[:, None] + offs_dv[None, :], mask=k_mask, other=0.0)
        # -- scores (DV latent dims + DR rope dims), in log2 units ------------------------
        # each dot is scaled before the sum: Triton would fuse dot + x into one dot accumulating x,
        # a chain of dots (see _unchain)
        qk = tl.dot(q_nope, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if DR > 0:
            pe_mask = tok_ok[:, None]
            if BLOCK_DR != DR:
                pe_mask = pe_mask & (offs_dr[None, :] < DR)
            if FP8:
                k_pe = load_fp8_rope(k_ptr, tok_off, tok_ok, q_pe.dtype)
            else:
                k_pe = tl.load(k_ptr + tok_off[:, None] + DV + offs_dr[None, :], mask=pe_mask, other=0.0)
            qk += tl.dot(q_pe, tl.trans(k_pe), input_precision=DOT_PRECISION) * qk_scale
        if CAUSAL_MASK:
            visible = tok_ok[None, :] & (toks[None, :] < row_limit[:, None])
            qk = tl.where(visible, qk, float("-inf"))
        m_new, rescale = _next_max(qk, m_i, qk_scale > 0, LAZY_RESCALE)
        p, alpha, l_i = _softmax_step(qk, m_i, m_new, l_i)
        m_i = m_new
        p, acc = _unchain(p, acc, alpha, qk_scale > 0, rescale, k.dtype, UNCHAIN, LAZY_RESCALE > 0)
        acc = tl.dot(p, k, acc, input_precision=DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def _pv_excess(factor, DT: tl.constexpr):
    """``pv_excess`` where P is formed in float16; 1.0 (a constant) for bfloat16/float32, which have the range."""
    if DT == tl.float16:
        return pv_excess(factor)
    else:
        return 1.0


@triton.jit
def _attend_fp8(acc0, acc1, acc2, acc3, m_i, l_i, q0, q1, q2, q3, q_pe, k_ptr, bt_row, tok_lo, tok_hi,
                row_limit, stride_kb, stride_kt, stride_btp, num_blocks, page_size, qk_scale,
                BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, UNCHAIN: tl.constexpr, LAZY_RESCALE: tl.constexpr):
    """As ``_attend``, over the FP8 layout: 4 groups of 128 latent dims (one accumulator each) + 64 rope."""
    offs_n = tl.arange(0, BLOCK_N)
    dt = q_pe.dtype
    for start in range(tok_lo, tok_hi, BLOCK_N):
        toks = start + offs_n
        tok_ok = toks < tok_hi
        tok_off = _key_offsets(bt_row, toks, tok_ok, stride_btp, stride_kb, stride_kt, num_blocks, page_size)
        x0, f0 = load_fp8_group(k_ptr, tok_off, tok_ok, 0, dt)
        x1, f1 = load_fp8_group(k_ptr, tok_off, tok_ok, 1, dt)
        x2, f2 = load_fp8_group(k_ptr, tok_off, tok_ok, 2, dt)
        x3, f3 = load_fp8_group(k_ptr, tok_off, tok_ok, 3, dt)
        k_pe = load_fp8_rope(k_ptr, tok_off, tok_ok, dt)
        # -- scores: a group's dot times its per-token factor (a column scale) ---------------
        qk = tl.dot(q_pe, tl.trans(k_pe)) * qk_scale
        qk += tl.dot(q0, tl.trans(x0)) * (f0 * qk_scale)[None, :]
        qk += tl.dot(q1, tl.trans(x1)) * (f1 * qk_scale)[None, :]
        qk += tl.dot(q2, tl.trans(x2)) * (f2 * qk_scale)[None, :]
        qk += tl.dot(q3, tl.trans(x3)) * (f3 * qk_scale)[None, :]
        if CAUSAL_MASK:
            visible = tok_ok[None, :] & (toks[None, :] < row_limit[:, None])
            qk = tl.where(visible, qk, float("-inf"))
        m_new, rescale = _next_max(qk, m_i, qk_scale > 0, LAZY_RESCALE)
        p, alpha, l_i = _softmax_step(qk, m_i, m_new, l_i)
        m_i = m_new
        # -- PV: the factor scales P's columns, so each group's raw tile is the B operand ----
        lazy: tl.constexpr = LAZY_RESCALE > 0
        # float16's range: P * factor passes 65504 for latent groups above 57344 in magnitude, so a tile's
        # factors are divided by e and acc by e around the dot (_pv_excess: 1 for any smaller latent, and the
        # constant 1.0 for other dtypes, whose divisions and products by it fold away)
        e0 = _pv_excess(f0, dt)
        e1 = _pv_excess(f1, dt)
        e2 = _pv_excess(f2, dt)
        e3 = _pv_excess(f3, dt)
        p0, acc0 = _unchain(p * (f0 / e0)[None, :], acc0, alpha, qk_scale > 0, rescale, dt, UNCHAIN, lazy)
        p1, acc1 = _unchain(p * (f1 / e1)[None, :], acc1, alpha, qk_scale > 0, rescale, dt, UNCHAIN, lazy)
        p2, acc2 = _unchain(p * (f2 / e2)[None, :], acc2, alpha, qk_scale > 0, rescale, dt, UNCHAIN, lazy)
        p3, acc3 = _unchain(p * (f3 / e3)[None, :], acc3, alpha, qk_scale > 0, rescale, dt, UNCHAIN, lazy)
        acc0 = tl.dot(p0, x0, acc0 / e0) * e0
        acc1 = tl.dot(p1, x1, acc1 / e1) * e1
        acc2 = tl.dot(p2, x2, acc2 / e2) * e2
        acc3 = tl.dot(p3, x3, acc3 / e3) * e3
    return acc0, acc1, acc2, acc3, m_i, l_i


@triton.jit
def _store_group(out_rows, acc, inv_l, row_ok, G: tl.constexpr, GROUP: tl.constexpr):
    offs = G * GROUP + tl.arange(0, GROUP)
    o = acc * inv_l[:, None]
    tl.store(out_rows[:, None] + offs[None, :], o.to(out_rows.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _extend_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, cu_seqlens_q_ptr, out_ptr, lse_ptr,
    stride_qt, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens, stride_cu,
    stride_ot, stride_oh,
    stride_lh, stride_lt,
    total_q, h_q, num_blocks, page_size, max_len, qk_scale,
    DV: tl.constexpr, DR: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_DR: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_FP8: tl.constexpr, UNCHAIN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, LAZY_RESCALE: tl.constexpr, FP8_ONE_TILE: tl.constexpr,
):
    seq = tl.program_id(1)
    # the last row blocks of a chunk see the most keys: start them first
    row_block = tl.num_programs(0) - 1 - tl.program_id(0)
    # clamp the chunk into q, whatever cu_seqlens_q holds
    q_lo = tl.load(cu_seqlens_q_ptr + seq * stride_cu)
    q_hi = tl.load(cu_seqlens_q_ptr + (seq + 1) * stride_cu)
    q_lo = tl.minimum(tl.maximum(q_lo, 0), total_q)
    q_hi = tl.minimum(tl.maximum(q_hi, q_lo), total_q)
    q_len = q_hi - q_lo
    row0 = row_block * BLOCK_M
    if row0 < q_len * h_q:
        length = tl.load(seqlens_ptr + seq * stride_seqlens)
        length = tl.minimum(tl.maximum(length, 0), max_len)
        prefix = length - q_len  # negative only for bad lengths: then early tokens see nothing
        rows = row0 + tl.arange(0, BLOCK_M)
        row_t = rows // h_q
        row_h = rows % h_q
        row_ok = row_t < q_len
        row_limit = prefix + row_t + 1  # row sees keys [0, row_limit)
        t_first = row0 // h_q
        t_last = tl.minimum((row0 + BLOCK_M - 1) // h_q, q_len - 1)
        # keys below full_hi are seen by every row of this program (whole tiles only); the rest of
        # [0, diag_hi) is the diagonal, where the mask differs per row
        full_hi = tl.maximum(prefix + t_first + 1, 0) // BLOCK_N * BLOCK_N
        diag_hi = tl.maximum(prefix + t_last + 1, 0)
        q_rows = q_ptr + (q_lo + row_t).to(tl.int64) * stride_qt + row_h.to(tl.int64) * stride_qh
        bt_row = block_table_ptr + seq.to(tl.int64) * stride_btb
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        out_rows = out_ptr + (q_lo + row_t).to(tl.int64) * stride_ot + row_h.to(tl.int64) * stride_oh
        if IS_FP8 and not FP8_ONE_TILE:
            tl.static_assert((DV == 512) & (DR == 64), "the FP8 layout holds 512 + 64 dims")
            offs_g = tl.arange(0, 128)
            offs_r = tl.arange(0, 64)
            q0 = tl.load(q_rows[:, None] + offs_g[None, :], mask=row_ok[:, None], other=0.0)
            q1 = tl.load(q_rows[:, None] + 128 + offs_g[None, :], mask=row_ok[:, None], other=0.0)
            q2 = tl.load(q_rows[:, None] + 256 + offs_g[None, :], mask=row_ok[:, None], other=0.0)
            q3 = tl.load(q_rows[:, None] + 384 + offs_g[None, :], mask=row_ok[:, None], other=0.0)
            q_pe = tl.load(q_rows[:, None] + 512 + offs_r[None, :], mask=row_ok[:, None], other=0.0)
            acc0 = tl.zeros([BLOCK_M, 128], dtype=tl.float32)
            acc1 = tl.zeros([BLOCK_M, 128], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_M, 128], dtype=tl.float32)
            acc3 = tl.zeros([BLOCK_M, 128], dtype=tl.float32)
            acc0, acc1, acc2, acc3, m_i, l_i = _attend_fp8(
                acc0, acc1, acc2, acc3, m_i, l_i, q0, q1, q2, q3, q_pe, k_ptr, bt_row, 0, full_hi, row_limit,
                stride_kb, stride_kt, stride_btp, num_blocks, page_size, qk_scale, BLOCK_N, False, UNCHAIN,
                LAZY_RESCALE)
            acc0, acc1, acc2, acc3, m_i, l_i = _attend_fp8(
                acc0, acc1, acc2, acc3, m_i, l_i, q0, q1, q2, q3, q_pe, k_ptr, bt_row, full_hi, diag_hi,
                row_limit, stride_kb, stride_kt, stride_btp, num_blocks, page_size, qk_scale, BLOCK_N, True, UNCHAIN,
                LAZY_RESCALE)
            # -- epilogue: a row that saw nothing gets out = 0 (its acc is 0) and lse = +inf ------
            empty = l_i == 0.0
            inv_l = 1.0 / tl.where(empty, 1.0, l_i)
            _store_group(out_rows, acc0, inv_l, row_ok, 0, 128)
            _store_group(out_rows, acc1, inv_l, row_ok, 1, 128)
            _store_group(out_rows, acc2, inv_l, row_ok, 2, 128)
            _store_group(out_rows, acc3, inv_l, row_ok, 3, 128)
        else:
            if IS_FP8:
                tl.static_assert((DV == 512) & (DR == 64), "the FP8 layout holds 512 + 64 dims")
            offs_dv = tl.arange(0, BLOCK_DV)
            offs_dr = tl.arange(0, BLOCK_DR)
            dv_ok = offs_dv < DV
            q_nope = tl.load(q_rows[:, None] + offs_dv[None, :], mask=row_ok[:, None] & dv_ok[None, :], other=0.0)
            q_pe = q_nope  # unused when DR == 0
            if DR > 0:
                q_pe = tl.load(q_rows[:, None] + DV + offs_dr[None, :],
                               mask=row_ok[:, None] & (offs_dr[None, :] < DR), other=0.0)
            acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
            acc, m_i, l_i = _attend(acc, m_i, l_i, q_nope, q_pe, k_ptr, bt_row, 0, full_hi, row_limit,
                                    stride_kb, stride_kt, stride_btp, num_blocks, page_size, qk_scale,
                                    DV, DR, BLOCK_DV, BLOCK_DR, BLOCK_N, False, UNCHAIN, DOT_PRECISION,
                                    LAZY_RESCALE, IS_FP8)
            acc, m_i, l_i = _attend(acc, m_i, l_i, q_nope, q_pe, k_ptr, bt_row, full_hi, diag_hi, row_limit,
                                    stride_kb, stride_kt, stride_btp, num_blocks, page_size, qk_scale,
                                    DV, DR, BLOCK_DV, BLOCK_DR, BLOCK_N, True, UNCHAIN, DOT_PRECISION,
                                    LAZY_RESCALE, IS_FP8)
            # -- epilogue: a row that saw nothing gets out = 0 (its acc is 0) and lse = +inf ------
            empty = l_i == 0.0
            o = acc / tl.where(empty, 1.0, l_i)[:, None]
            tl.store(out_rows[:, None] + offs_dv[None, :], o.to(out_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & dv_ok[None, :])
        lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * LN2)
        lse_ptrs = lse_ptr + row_h.to(tl.int64) * stride_lh + (q_lo + row_t).to(tl.int64) * stride_lt
        tl.store(lse_ptrs, lse, mask=row_ok)


def _dot_precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"


def _launch_params(entry, fp8):
    """An entry's launch fields: (tile constexprs, num_warps, num_stages). The FP8 kernel takes its own
    overrides from ``entry["fp8"]`` if any. Optional keys (absent: the behaviour they were added beside):
    UNCHAIN (True), LAZY_RESCALE (0.0: rescale acc on every tile; tau > 0, in log2 units: see ``_next_max``)
    and FP8_ONE_TILE (False: the FP8 cache in 4 groups of 128, one dot each; True: see ``_attend``).
    """
    if fp8:
        entry = {**entry, **entry.get("fp8", {})}
    consts = dict(BLOCK_M=entry["BLOCK_M"], BLOCK_N=entry["BLOCK_N"], UNCHAIN=bool(entry.get("UNCHAIN", True)),
                  LAZY_RESCALE=float(entry.get("LAZY_RESCALE", 0.0)),
                  FP8_ONE_TILE=bool(fp8 and entry.get("FP8_ONE_TILE", False)))
    return consts, entry["num_warps"], entry["num_stages"]


def extend(q, k_cache, block_table, cache_seqlens, cu_seqlens_q, max_seqlen_q, head_dim_v, softmax_scale,
           config, out, lse, fp8=False):
    """Launch; arguments are validated by ``triton_mla.extend.mla_extend``. On sm90 an entry with ``WGMMA`` runs the
    Gluon kernel (``kernels/extend_sm90.py``) where it applies.

    q [total_q, h_q, d]; k_cache [num_blocks, page_size, 1, d] (q's dtype) or, with ``fp8``,
    [num_blocks, page_size, 1, 656] uint8; block_table [b, max_pages] int32; cache_seqlens [b] int32;
    cu_seqlens_q [b + 1] int32; out [total_q, h_q, head_dim_v]; lse [h_q, total_q] float32.
    """
    total_q, h_q, d = q.shape
    b = cache_seqlens.shape[0]
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    dv, dr = head_dim_v, d - head_dim_v
    consts, num_warps, num_stages = _launch_params(config, fp8)
    row_blocks = cdiv(max_seqlen_q * h_q, consts["BLOCK_M"])
    if b == 0 or row_blocks == 0:
        return out, lse
    args = (
        q, k_cache, block_table, cache_seqlens, cu_seqlens_q, out, lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1),
        block_table.stride(0), block_table.stride(1),
        cache_seqlens.stride(0), cu_seqlens_q.stride(0),
        out.stride(0), out.stride(1),
        lse.stride(0), lse.stride(1),
        total_q, h_q, num_blocks, page_size, block_table.shape[1] * page_size, softmax_scale * LOG2E.value,
    )
    if _sm90 is not None and _gluon.supports(q, k_cache, head_dim_v, config, fp8):
        _sm90.launch(args, max_seqlen_q, fp8)
        return out, lse
    _extend_kernel[(row_blocks, b)](
        *args,
        DV=dv, DR=dr, BLOCK_DV=max(16, next_pow2(dv)),
        BLOCK_DR=max(16, next_pow2(dr)) if dr > 0 else 16,
        IS_FP8=fp8, DOT_PRECISION=_dot_precision(q.dtype), **consts,
        **FP_FUSION, num_warps=num_warps, num_stages=num_stages,
    )
    return out, lse


def compile_specs(section, entry):
    """For check-configs: the kernels one "extend" entry launches, at DeepSeek's 512 + 64 latent."""
    is_32 = entry["dtype"] == "float32"
    elem = "*fp32" if is_32 else "*bf16"
    variants = [(False, elem)] if is_32 else [(False, elem), (True, "*u8")]
    for fp8, k_type in variants:
        tiles, num_warps, num_stages = _launch_params(entry, fp8)
        types = dict(q_ptr=elem, k_ptr=k_type, out_ptr=elem, lse_ptr="*fp32", qk_scale="fp32")
        consts = dict(DV=512, DR=64, BLOCK_DV=512, BLOCK_DR=64, IS_FP8=fp8, DOT_PRECISION="ieee" if is_32 else "tf32",
                      **tiles)
        yield ("extend_fp8" if fp8 else "extend", _extend_kernel, types, consts, num_warps, num_stages)
        if entry.get("WGMMA", False):
            yield from _sm90.compile_specs(fp8)
