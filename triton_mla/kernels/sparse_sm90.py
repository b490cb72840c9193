"""Sparse (DSA) MLA attention for Hopper (sm90), written in Gluon: ``decode_sm90``'s program over gathered keys.

All heads of a query token share its top-k list, so a token's heads are the rows of a program (64 at a
time) and its top-k entries are the keys, gathered by ``cp.async`` from their flat token ids (page *
page_size + offset; -1 or an id outside the cache: invalid, zero-filled and masked). The tile loop, its
shared-memory buffers and the FP8 staging are ``decode_sm90``'s (``_attend`` with ``INDEXED``); what
differs is the epilogue, which is ``sparse.py``'s: attention sink, max_logits, and the partial rows
``[token, split, head]`` that ``sparse._combine_kernel`` merges when a top-k list is cut into splits.
Shapes: d = 576, dv = 512 (DeepSeek), bf16/fp16 (bf16 with the FP8 cache), any h_q (blocks of 64).

Over the FP8 cache at <= 16 heads (entry field ``FP8_KEYS_ON_M``) a second kernel runs ``decode_sm90_fp8``'s
program instead (keys on the MMA's M side, 8 or 16 heads a program, ``_attend_t`` with ``INDEXED``), with the
same epilogue, called per row range of O^T.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp

from ._common import FP_FUSION, LN2, LOG2E
from .decode_sm90 import (
    BLOCK_H,
    DV,
    NUM_WARPS,
    _attend,
    _buffers,
    _issue_q,
    o_layout,
    per_row,
    row_layout,
    s_layout,
)
from .decode_sm90_fp8 import BLOCK_N as T_BLOCK_N
from .decode_sm90_fp8 import (
    DUAL_REGS,
    MERGED,
    QREADY,
    _attend_t,
    _buffers_t,
    _copy_ahead,
    _dual_buffers,
    _hand_over,
    _load_q,
    _mma_layout,
    _o_other,
    _pass_q,
    _take_over,
    _wait_q,
    block_rows,
    dual_builds,
    part_out,
    tile_constexprs,
)
from .decode_sm90_fp8 import WARPS as T_WARPS
from .decode_sm90_ws import (
    HALF,
    WG_WARPS,
    WORKER_REGS,
    _attend_segment,
    _buffers_ws,
    _cta_barrier,
    _o_layout,
    _s_layout,
    ws_schedule,
    ws_supported,
)

INT32_MAX = gl.constexpr((1 << 31) - 1)


@gluon.jit
def _program(topk_len_ptr, stride_tl, s_q, h_q, topk, splits, BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr,
             HAS_TOPK_LEN: gl.constexpr):
    """This program's head block ``rb``, query token ``tok`` = (seq, s), split ``split`` of its top-k list, and
    the entries [lo, hi) of that list it reads: whole chunks of BLOCK_N, cut at topk_length (the same program
    order and chunk ranges as ``sparse._sparse_kernel``)."""
    pid = gl.program_id(0)
    row_blocks = (h_q + BLOCK_H - 1) // BLOCK_H
    rb = pid % row_blocks
    rest = pid // row_blocks
    tok = rest // splits
    split = rest % splits
    seq = tok // s_q
    s = tok - seq * s_q
    n = topk
    if HAS_TOPK_LEN:
        n = gl.minimum(gl.maximum(gl.load(topk_len_ptr + seq.to(gl.int64) * stride_tl), 0), topk)
    chunks = (topk + BLOCK_N - 1) // BLOCK_N
    lo = ((split * chunks) // splits) * BLOCK_N
    hi = gl.minimum(((split + 1) * chunks) // splits * BLOCK_N, n)
    return rb, tok, split, seq, s, lo, hi


@gluon.jit
def _epilogue(acc, heads, offs_o, m_i, l_i, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr, max_ptr,
              o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls,
              HAS_SINK, MAX_LOGITS, SPLIT, STATS):
    """``sparse.py``'s epilogue for output columns ``offs_o`` of heads ``heads`` (acc [heads, columns], the two
    index vectors its slices): the normalized partial row and its (lse, max) with SPLIT, else the output with the
    attention sink applied, lse and max_logits. m_i, l_i: row max and sum in log2 units; STATS: this call also
    writes the per-row statistics (one call of several that cover a row's columns does). acc may also be
    [heads, column groups, columns] (``decode_sm90_fp8.part_out``), offs_o then its trailing two dims. The four
    flags are constexprs, or run-time booleans where a ``warp_specialize`` partition calls (arguments reach
    partitions as tensors)."""
    o_l: gl.constexpr = acc.type.layout
    RANK: gl.constexpr = len(acc.shape)
    head_ok = heads < h_q
    l_o = gl.convert_layout(l_i, row_layout(o_l, RANK))
    m_o = gl.convert_layout(m_i, row_layout(o_l, RANK))
    empty = l_o == 0.0
    lse2 = gl.where(empty, float("-inf"), m_o + gl.log2(gl.where(empty, 1.0, l_o)))
    inv = 1.0 / gl.where(empty, 1.0, l_o)
    cols = gl.expand_dims(offs_o, 0)
    if SPLIT:
        rows = (tok.to(gl.int64) * splits + split) * h_q + heads
        gl.store(o_part_ptr + per_row(rows * DV, RANK) + cols, acc * per_row(gl.where(empty, 0.0, inv), RANK),
                 mask=per_row(head_ok, RANK))
        if STATS:
            gl.store(stat_part_ptr + rows * 2, lse2, mask=head_ok)
            gl.store(stat_part_ptr + rows * 2 + 1, m_o, mask=head_ok)
    else:
        if HAS_SINK:
            # out * exp(lse) / (exp(lse) + exp(sink)): an infinite sink gives 0, a -inf one changes nothing
            sink2 = gl.load(sink_ptr + heads, mask=head_ok, other=0.0) * LOG2E
            inv = inv / (1.0 + gl.exp2(sink2 - gl.where(empty, 0.0, lse2)))
        inv = gl.where(empty, 0.0, inv)
        o_rows = out_ptr + seq.to(gl.int64) * stride_ob + s.to(gl.int64) * stride_os + heads.to(gl.int64) * stride_oh
        gl.store(per_row(o_rows, RANK) + cols, (acc * per_row(inv, RANK)).to(out_ptr.dtype.element_ty),
                 mask=per_row(head_ok, RANK))
        if STATS:
            stat = seq.to(gl.int64) * stride_lb + heads.to(gl.int64) * stride_lh + s.to(gl.int64) * stride_ls
            gl.store(lse_ptr + stat, gl.where(empty, float("inf"), lse2 * LN2), mask=head_ok)
            if MAX_LOGITS:
                gl.store(max_ptr + stat, m_o * LN2, mask=head_ok)  # -inf for a row with no valid key


@gluon.jit
def _sparse_sm90_kernel(
    q_ptr, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_ib, stride_is, stride_ik,
    stride_tl,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    s_q, h_q, topk, num_tokens, page_size, splits, qk_scale,
    BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    MAX_LOGITS: gl.constexpr, SPLIT: gl.constexpr, FP8: gl.constexpr, RAW_STAGES: gl.constexpr,
):
    """One program: query token ``tok`` = (seq, s), heads [64 rb, 64 rb + 64), split ``split`` of its top-k
    list (the same program order and chunk ranges as ``sparse._sparse_kernel``)."""
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    s_l: gl.constexpr = s_layout(BLOCK_N)
    o_l: gl.constexpr = o_layout()
    q_smem, qpe_smem, p_smem, kn_bufs, kpe_bufs, stage, stage_scale = _buffers(dtype, BLOCK_N, NUM_BUF, FP8,
                                                                               RAW_STAGES)

    rb, tok, split, seq, s, lo, hi = _program(topk_len_ptr, stride_tl, s_q, h_q, topk, splits, BLOCK_H, BLOCK_N,
                                              HAS_TOPK_LEN)

    _issue_q(q_smem, qpe_smem, q_ptr + s.to(gl.int64) * stride_qs, seq, rb, 1, h_q, stride_qb, 0, stride_qh)
    cp.commit_group()
    idx_row = idx_ptr + seq.to(gl.int64) * stride_ib + s.to(gl.int64) * stride_is
    no_limit = gl.full([BLOCK_H], INT32_MAX, gl.int32, layout=gl.SliceLayout(1, s_l))
    acc, m_i, l_i = _attend(q_smem, qpe_smem, p_smem, kn_bufs, kpe_bufs, stage, stage_scale, k_ptr, idx_row, lo,
                            hi, no_limit, stride_kb, stride_kt, stride_ik, num_tokens, page_size, qk_scale, True, FP8,
                            NUM_BUF, BLOCK_N, s_l, o_l, RAW_STAGES)

    heads = rb * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, o_l))
    offs_o = gl.arange(0, DV, layout=gl.SliceLayout(0, o_l))
    _epilogue(acc, heads, offs_o, m_i, l_i, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr, max_ptr,
              o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls, HAS_SINK,
              MAX_LOGITS, SPLIT, True)


@gluon.jit
def _sparse_wg(W: gl.constexpr, COPY_FIRST: gl.constexpr, args):
    """Warpgroup W of ``_sparse_ws_kernel``: ``decode_sm90_ws._attend_pairs`` over the program's top-k entries, then
    its 256 output columns through ``_epilogue`` (warpgroup 0 writes the statistics). A program with no entries
    (topk_length 0, or a split past it) skips the tile loop: out = 0, lse = +inf."""
    (q_ptr, k_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr, stride_qb, stride_qs, stride_qh,
     stride_kb, stride_kt, stride_ik, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls, h_q,
     num_tokens, page_size, splits, qk_scale, rb, tok, split, seq, s, lo, hi, idx_row, q_smem, qpe_smem, kn_bufs,
     kpe_bufs, stats, bars, scale_bufs, HAS_SINK, MAX_LOGITS, SPLIT) = args
    BN: gl.constexpr = kn_bufs.shape[1]
    FP8: gl.constexpr = k_ptr.dtype.element_ty == gl.uint8  # (the FP8 cache comes as bytes)
    s_l: gl.constexpr = _s_layout(BN)
    o_l: gl.constexpr = _o_layout()
    row_l: gl.constexpr = gl.SliceLayout(1, s_l)
    acc = gl.zeros([BLOCK_H, HALF], gl.float32, layout=o_l)
    m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, layout=row_l)
    l_i = gl.zeros([BLOCK_H], gl.float32, layout=row_l)
    if hi > lo:
        # one segment: the query token's heads over its entries (k_ptr stands in for the TMA descriptor)
        no_limit = gl.full([BLOCK_H], INT32_MAX, gl.int32, layout=row_l)
        acc, m_i, l_i, _ = _attend_segment(q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars,
                                           q_ptr + s.to(gl.int64) * stride_qs, seq, rb, 1, h_q, stride_qb, 0,
                                           stride_qh, k_ptr, k_ptr, idx_row, lo, hi, no_limit, stride_kb, stride_kt,
                                           stride_ik, num_tokens, page_size, qk_scale, 0, 0, True, W, False,
                                           COPY_FIRST, FP8, scale_bufs)
    heads = rb * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, o_l))
    offs_o = W * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, o_l))
    _epilogue(acc, heads, offs_o, m_i, l_i, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr, max_ptr,
              o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls, HAS_SINK,
              MAX_LOGITS, SPLIT, W == 0)


@gluon.jit
def _sparse_wg0(args):
    _sparse_wg(0, False, args)


@gluon.jit
def _sparse_wg0_copy_first(args):
    _sparse_wg(0, True, args)


@gluon.jit
def _sparse_wg1(args):
    _sparse_wg(1, False, args)  # (COPY_FIRST changes only warpgroup 0's schedule)


@gluon.jit
def _sparse_ws_kernel(
    q_ptr, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_ib, stride_is, stride_ik,
    stride_tl,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    s_q, h_q, topk, num_tokens, page_size, splits, qk_scale,
    BLOCK_N: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr, MAX_LOGITS: gl.constexpr,
    SPLIT: gl.constexpr, COPY_FIRST: gl.constexpr,
):
    """The two warpgroups on alternate key tiles (``decode_sm90_ws``'s pipeline, gathered keys by ``cp.async``; the
    FP8 cache, as bytes, dequantized in place as there). Same arguments, programs and epilogue as
    ``_sparse_sm90_kernel``."""
    gl.static_assert(BLOCK_N == 64, "the warp-specialized kernel takes 64-key tiles")
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    FP8: gl.constexpr = k_ptr.dtype.element_ty == gl.uint8
    q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, scale_bufs = _buffers_ws(dtype, BLOCK_N, False, FP8)
    rb, tok, split, seq, s, lo, hi = _program(topk_len_ptr, stride_tl, s_q, h_q, topk, splits, BLOCK_H, BLOCK_N,
                                              HAS_TOPK_LEN)
    idx_row = idx_ptr + seq.to(gl.int64) * stride_ib + s.to(gl.int64) * stride_is
    _cta_barrier()  # the mbarriers are initialized before either warpgroup uses them
    args = (q_ptr, k_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr, stride_qb, stride_qs,
            stride_qh, stride_kb, stride_kt, stride_ik, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
            stride_ls, h_q, num_tokens, page_size, splits, qk_scale, rb, tok, split, seq, s, lo, hi, idx_row, q_smem,
            qpe_smem, kn_bufs, kpe_bufs, stats, bars, scale_bufs, HAS_SINK, MAX_LOGITS, SPLIT)
    if COPY_FIRST:
        gl.warp_specialize([(_sparse_wg0_copy_first, (args,)), (_sparse_wg1, (args,))], [WG_WARPS], [WORKER_REGS])
    else:
        gl.warp_specialize([(_sparse_wg0, (args,)), (_sparse_wg1, (args,))], [WG_WARPS], [WORKER_REGS])


@gluon.jit
def _sparse_sm90_fp8_t_kernel(
    q_ptr, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_ib, stride_is, stride_ik,
    stride_tl,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    s_q, h_q, topk, num_tokens, page_size, splits, qk_scale,
    ROWS: gl.constexpr, STAGES: gl.constexpr, PV_PARTS: gl.constexpr, QK_WAVES: gl.constexpr,
    HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr, MAX_LOGITS: gl.constexpr, SPLIT: gl.constexpr,
    IDS_AHEAD: gl.constexpr, QK_E4M3: gl.constexpr = False, LAZY: gl.constexpr = False,
    PAIRS: gl.constexpr = False, COPY_BEFORE_Q: gl.constexpr = False,
):
    """The FP8 cache at <= 16 heads: ``decode_sm90_fp8``'s program (keys on the MMA's M side, one warpgroup,
    ROWS = 8 or 16 heads, two programs an SM) over one query token's top-k entries, with this file's epilogue.
    Same arguments and program order as ``_sparse_sm90_kernel``; COPY_BEFORE_Q: the first tile is copied before Q
    is loaded (``decode_sm90_fp8._copy_ahead``)."""
    # (with LAZY, ``_attend_t``'s running max is consistent with the sums and lse, but not each row's max logit)
    gl.static_assert(not (MAX_LOGITS and LAZY), "a lazy running max is not max_logits")
    s_l: gl.constexpr = _mma_layout(ROWS)
    q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs = _buffers_t(ROWS, STAGES, QK_E4M3)
    rb, tok, split, seq, s, lo, hi = _program(topk_len_ptr, stride_tl, s_q, h_q, topk, splits, ROWS, T_BLOCK_N,
                                              HAS_TOPK_LEN)
    idx_row = idx_ptr + seq.to(gl.int64) * stride_ib + s.to(gl.int64) * stride_is
    if COPY_BEFORE_Q:
        _copy_ahead(stage, stage_scale, pe_bufs, 0, k_ptr, idx_row, lo, hi, stride_kb, stride_kt, stride_ik,
                    num_tokens, page_size, True, QK_E4M3=QK_E4M3)
    down = _load_q(q_smem, qpe_smem, q_ptr + s.to(gl.int64) * stride_qs, seq, rb, 1, h_q, stride_qb, 0,
                     stride_qh, ROWS, s_l, QK_E4M3)
    no_limit = gl.full([ROWS], INT32_MAX, gl.int32, layout=gl.SliceLayout(0, s_l))
    acc0, acc1, acc2, acc3, m_i, l_i = _attend_t(
        q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs, k_ptr, idx_row, lo, hi, no_limit, down * qk_scale,
        stride_kb, stride_kt, stride_ik, num_tokens, page_size, qk_scale, True, ROWS, STAGES, PV_PARTS, QK_WAVES,
        s_l, IDS_AHEAD, QK_E4M3=QK_E4M3, LAZY=LAZY, PAIRS=PAIRS, ISSUED=COPY_BEFORE_Q)
    _epilogue_t(acc0, 0, PV_PARTS, m_i, l_i, rb, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr,
                max_ptr, o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls,
                ROWS, HAS_SINK, MAX_LOGITS, SPLIT)
    _epilogue_t(acc1, 1, PV_PARTS, m_i, l_i, rb, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr,
                max_ptr, o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls,
                ROWS, HAS_SINK, MAX_LOGITS, SPLIT)
    if PV_PARTS == 4:
        _epilogue_t(acc2, 2, PV_PARTS, m_i, l_i, rb, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr,
                    max_ptr, o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                    stride_ls, ROWS, HAS_SINK, MAX_LOGITS, SPLIT)
        _epilogue_t(acc3, 3, PV_PARTS, m_i, l_i, rb, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr,
                    max_ptr, o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                    stride_ls, ROWS, HAS_SINK, MAX_LOGITS, SPLIT)


@gluon.jit
def _epilogue_t(acc, P: gl.constexpr, PARTS: gl.constexpr, m_i, l_i, rb, tok, seq, s, split, splits, h_q, sink_ptr,
                out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb,
                stride_lh, stride_ls, ROWS: gl.constexpr, HAS_SINK: gl.constexpr, MAX_LOGITS: gl.constexpr,
                SPLIT: gl.constexpr):
    """``_epilogue`` for part P of PARTS row ranges of O^T."""
    acc_t, offs_o, heads = part_out(acc, P, PARTS, rb, ROWS)
    _epilogue(acc_t, heads, offs_o, m_i, l_i, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr, max_ptr,
              o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls, HAS_SINK,
              MAX_LOGITS, SPLIT, P == 0)


# -- the FP8 cache at <= 16 heads, two warpgroups on alternate tiles ------------------------------------------------
@gluon.jit
def _sparse_dual_wg(W: gl.constexpr, LAZY_PAIRS: gl.constexpr, args):
    """Warpgroup W of ``_sparse_sm90_fp8_dual_kernel``: top-k tiles W, W + 2, ... of the program's entries
    (``_attend_t`` with STEP 2, entries loaded ahead, its first tile copied before anything waits), each warpgroup
    with its own raw-tile stages, P^T and softmax state, Q shared. Warpgroup 0 loads Q and passes each row's scale
    on (``stats`` row 0, then QREADY); warpgroup 1 then hands its state over (``_hand_over``, MERGED) and
    warpgroup 0 merges it (``_take_over``) and runs the epilogue. LAZY_PAIRS: ``_attend_t``'s LAZY and PAIRS."""
    (q_ptr, k_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr, stride_qb, stride_qs, stride_qh,
     stride_kb, stride_kt, stride_ik, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls, h_q,
     num_tokens, page_size, splits, qk_scale, rb, tok, split, seq, s, lo, hi, idx_row, q_smem, qpe_smem, p_smem,
     stage, stage_scale, pe_bufs, stats, bars, HAS_SINK, MAX_LOGITS, SPLIT) = args
    # (arguments reach a partition as tensors, constexprs included: the sizes are read off the buffers)
    QK_E4M3: gl.constexpr = q_smem.dtype.is_fp8()
    ROWS: gl.constexpr = q_smem.shape[1] // 2 if QK_E4M3 else q_smem.shape[1]
    STAGES: gl.constexpr = stage.shape[0] // 2
    s_l: gl.constexpr = _mma_layout(ROWS)
    col_l: gl.constexpr = gl.SliceLayout(0, s_l)
    my_stage = stage.slice(W * STAGES, STAGES)
    my_scale = stage_scale.slice(W * STAGES, STAGES)
    my_pe = pe_bufs.slice(W * STAGES, STAGES)
    first = lo + W * T_BLOCK_N
    # this warpgroup's first tile is in flight before Q is (or, for warpgroup 1, while it waits for Q)
    _copy_ahead(my_stage, my_scale, my_pe, 0, k_ptr, idx_row, first, hi, stride_kb, stride_kt, stride_ik,
                num_tokens, page_size, True, QK_E4M3=QK_E4M3)
    if W == 0:
        down = _load_q(q_smem, qpe_smem, q_ptr + s.to(gl.int64) * stride_qs, seq, rb, 1, h_q, stride_qb, 0,
                       stride_qh, ROWS, s_l, QK_E4M3)
        # (Q's rope copy shares a group with the first tile's: warpgroup 1's own first tile, issued as early, is
        # what it waits for next anyway)
        _pass_q(stats, down, bars.index(QREADY))
    else:
        down = _wait_q(stats, bars.index(QREADY), 0, col_l)
    no_limit = gl.full([ROWS], INT32_MAX, gl.int32, layout=col_l)
    acc0, acc1, _, _, m_i, l_i = _attend_t(
        q_smem, qpe_smem, p_smem.index(W), my_stage, my_scale, my_pe, k_ptr, idx_row, first, hi, no_limit,
        down * qk_scale, stride_kb, stride_kt, stride_ik, num_tokens, page_size, qk_scale, True, ROWS, STAGES, 2, 1,
        s_l, True, STEP=2, QK_E4M3=QK_E4M3, LAZY=LAZY_PAIRS, PAIRS=LAZY_PAIRS, ISSUED=True)
    o_other = _o_other(stage, STAGES, ROWS)
    if W == 1:
        _hand_over(stats, o_other, acc0, acc1, m_i, l_i, bars.index(MERGED))
    else:
        acc0, acc1, m_i, l_i = _take_over(stats, o_other, acc0, acc1, m_i, l_i, bars.index(MERGED), 0)
        acc_t, offs_o, heads = part_out(acc0, 0, 2, rb, ROWS)
        _epilogue(acc_t, heads, offs_o, m_i, l_i, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr,
                  max_ptr, o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                  stride_ls, HAS_SINK, MAX_LOGITS, SPLIT, True)
        acc_t, offs_o, heads = part_out(acc1, 1, 2, rb, ROWS)
        _epilogue(acc_t, heads, offs_o, m_i, l_i, tok, seq, s, split, splits, h_q, sink_ptr, out_ptr, lse_ptr,
                  max_ptr, o_part_ptr, stat_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                  stride_ls, HAS_SINK, MAX_LOGITS, SPLIT, False)


@gluon.jit
def _sparse_dual_wg0(args):
    _sparse_dual_wg(0, False, args)


@gluon.jit
def _sparse_dual_wg1(args):
    _sparse_dual_wg(1, False, args)


@gluon.jit
def _sparse_dual_wg0_lazy_pairs(args):
    _sparse_dual_wg(0, True, args)


@gluon.jit
def _sparse_dual_wg1_lazy_pairs(args):
    _sparse_dual_wg(1, True, args)


@gluon.jit
def _sparse_sm90_fp8_dual_kernel(
    q_ptr, k_ptr, idx_ptr, topk_len_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_ib, stride_is, stride_ik,
    stride_tl,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    s_q, h_q, topk, num_tokens, page_size, splits, qk_scale,
    ROWS: gl.constexpr, STAGES: gl.constexpr, HAS_TOPK_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    MAX_LOGITS: gl.constexpr, SPLIT: gl.constexpr, QK_E4M3: gl.constexpr = False, LAZY_PAIRS: gl.constexpr = False,
):
    """``_sparse_sm90_fp8_t_kernel``'s program with two warpgroups on alternate tiles (``_sparse_dual_wg``), one
    program an SM: two tile chains interleave on the SM, as two programs do, but over one query token, with Q
    loaded once and the halves merged in shared memory instead of by the combine kernel. Same arguments and
    program order as ``_sparse_sm90_kernel``; STAGES raw tiles a warpgroup."""
    gl.static_assert(not (MAX_LOGITS and LAZY_PAIRS), "a lazy running max is not max_logits")
    q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs, stats, bars = _dual_buffers(ROWS, STAGES, QK_E4M3)
    rb, tok, split, seq, s, lo, hi = _program(topk_len_ptr, stride_tl, s_q, h_q, topk, splits, ROWS, T_BLOCK_N,
                                              HAS_TOPK_LEN)
    idx_row = idx_ptr + seq.to(gl.int64) * stride_ib + s.to(gl.int64) * stride_is
    _cta_barrier()  # the mbarriers are initialized before either warpgroup uses them
    args = (q_ptr, k_ptr, sink_ptr, out_ptr, lse_ptr, max_ptr, o_part_ptr, stat_part_ptr, stride_qb, stride_qs,
            stride_qh, stride_kb, stride_kt, stride_ik, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
            stride_ls, h_q, num_tokens, page_size, splits, qk_scale, rb, tok, split, seq, s, lo, hi, idx_row, q_smem,
            qpe_smem, p_smem, stage, stage_scale, pe_bufs, stats, bars, HAS_SINK, MAX_LOGITS, SPLIT)
    if LAZY_PAIRS:
        gl.warp_specialize([(_sparse_dual_wg0_lazy_pairs, (args,)), (_sparse_dual_wg1_lazy_pairs, (args,))],
                           [T_WARPS], [DUAL_REGS])
    else:
        gl.warp_specialize([(_sparse_dual_wg0, (args,)), (_sparse_dual_wg1, (args,))], [T_WARPS], [DUAL_REGS])


# Fixed, not config fields: 64-key tiles in 2 buffers (32-key tiles in 3 were slower on 11 of 12 anchor shapes,
# benchmarks/NOTES.md), and ~230 KB of shared memory leave room for one program an SM.
BLOCK_N = 64
NUM_BUF = 2


def keys_on_m(config, h_q, fp8) -> bool:
    """Whether ``_sparse_sm90_fp8_t_kernel`` serves the call: the FP8 cache, at most 16 heads, and an entry with
    ``FP8_KEYS_ON_M``."""
    return bool(fp8) and bool(config.get("KEYS_ON_M", False)) and h_q <= 16


def dual(config) -> bool:
    """Whether the entry asks for ``_sparse_sm90_fp8_dual_kernel`` (config key ``KEYS_ON_M_DUAL``) and this Triton
    builds it (``decode_sm90_fp8.dual_builds``)."""
    return bool(config.get("KEYS_ON_M_DUAL", False)) and dual_builds()


def plan_config(config, h_q, fp8=False, tokens=None, num_sms=None):
    """The fields ``sparse.num_splits`` plans with when a kernel of this file runs: 64 heads and 64 keys a program,
    one program an SM; with ``keys_on_m``, 8 or 16 heads a program and two programs an SM, or one program an SM
    where the ``tokens`` programs fit one wave of ``num_sms`` alone: the dual program (config key
    ``KEYS_ON_M_DUAL``, ``SPARSE_DUAL`` set here), else one warpgroup with ``KEYS_ON_M_ALONE_STAGES`` raw tiles in
    flight. Alone, a program runs a tile in ~2.6 us against ~4.3 us for each of a pair (more tiles in flight, the SM
    to itself) but an SM holds half as many: at b = 128, s_q = 1 it is 3-4% faster (benchmarks/NOTES.md,
    twenty-seventh session), past one wave it would leave half the programs for a second. ``tokens`` None
    (batch-invariant calls): two programs an SM, so the kernel does not depend on the batch."""
    if keys_on_m(config, h_q, fp8):
        alone = config.get("KEYS_ON_M_ALONE_STAGES")
        # (at <= 16 heads a token is one program before its splits)
        one_wave = tokens is not None and 0 < tokens <= num_sms
        if one_wave and dual(config):
            per_sm = dict(PROGRAMS_PER_SM=1, SPARSE_DUAL=True)
        elif one_wave and alone:
            per_sm = dict(PROGRAMS_PER_SM=1, RAW_STAGES=alone)
        else:
            per_sm = dict(PROGRAMS_PER_SM=2)
        return dict(config, BLOCK_H=block_rows(h_q), BLOCK_N=T_BLOCK_N.value, **per_sm)
    return dict(config, BLOCK_H=BLOCK_H.value, BLOCK_N=BLOCK_N, PROGRAMS_PER_SM=1)


def _t_constexprs(config, rows):
    """``_sparse_sm90_fp8_t_kernel``'s constexprs from an entry (``FP8_*`` applied) for ``rows`` heads a program."""
    return dict(tile_constexprs(config, rows), IDS_AHEAD=bool(config.get("IDS_AHEAD", False)))


DUAL_STAGES = 2  # raw tiles a warpgroup of the dual program (three would need ~250 KB of shared memory)


def _dual_constexprs(config, rows):
    """``_sparse_sm90_fp8_dual_kernel``'s constexprs from an entry (``FP8_*`` applied): LAZY_PAIRS where the entry
    has both ``LAZY_MAX`` and ``PAIR_KEYS`` (the dual program takes them together or not at all). Its other loop
    options are fixed: entries loaded ahead, the first tiles copied before Q, two value parts, one QK wave."""
    lazy_pairs = bool(config.get("LAZY_MAX", False)) and bool(config.get("PAIR_KEYS", False))
    return dict(ROWS=rows, STAGES=DUAL_STAGES, QK_E4M3=tile_constexprs(config, rows)["QK_E4M3"],
                LAZY_PAIRS=lazy_pairs)


def use_ws(config, fp8) -> bool:
    """Whether ``_sparse_ws_kernel`` serves the call: an entry with ``WS`` (16-bit cache) or ``FP8_WS`` (the FP8
    cache above 16 heads, or wherever keys-on-M is off; no shipped entry has it until it is measured), a Triton that
    builds the warp-specialized kernel (3.7+; else the lockstep kernel). (``fp8_config`` keeps an entry's ``FP8_``
    keys beside the fields it makes of them, so a 16-bit ``WS`` does not reach the FP8 cache.)"""
    return bool(config.get("FP8_WS" if fp8 else "WS", False)) and ws_supported()


def launch(args, splits, grid, flags, fp8, config, h_q):
    """Launch over ``sparse.sparse_attention``'s argument tuple (same kernel signature as ``_sparse_kernel``) for an
    entry ``config`` (its ``FP8_*`` fields applied with ``fp8``): the FP8 cache at <= 16 heads keys on M (the dual
    program where ``plan_config`` set ``SPARSE_DUAL``); else with ``use_ws`` the warp-specialized kernel
    (``COPY_FIRST`` as in ``decode_sm90_ws``, 16-bit caches only); else the lockstep kernel, FP8 raw tiles in flight:
    ``RAW_STAGES``."""
    if keys_on_m(config, h_q, fp8) and config.get("SPARSE_DUAL"):
        _sparse_sm90_fp8_dual_kernel[grid](*args, SPLIT=splits > 1, **FP_FUSION, num_warps=T_WARPS.value,
                                           **_dual_constexprs(config, block_rows(h_q)), **flags)
        return
    if keys_on_m(config, h_q, fp8):
        rows = block_rows(h_q)
        _sparse_sm90_fp8_t_kernel[grid](*args, SPLIT=splits > 1, **FP_FUSION, num_warps=T_WARPS.value,
                                        **_t_constexprs(config, rows), **flags)
        return
    if use_ws(config, fp8):
        # (the FP8 cache's loop takes the default schedule: ws_schedule's COPY_FIRST is off for it)
        _sparse_ws_kernel[grid](*args, BLOCK_N=BLOCK_N, SPLIT=splits > 1,
                                COPY_FIRST=ws_schedule(config, fp8)["COPY_FIRST"], **FP_FUSION,
                                num_warps=WG_WARPS.value, **flags)
        return
    _sparse_sm90_kernel[grid](*args, BLOCK_N=BLOCK_N, NUM_BUF=NUM_BUF, SPLIT=splits > 1, FP8=bool(fp8),
                              RAW_STAGES=config.get("RAW_STAGES", 1) if fp8 else 1, **FP_FUSION,
                              num_warps=NUM_WARPS.value, **flags)


def compile_specs(prefill=False, fp8=False, config=None):
    """(name, fn, types, constexprs, warps, stages) for check-configs (a ``WGMMA`` sparse entry, sm90 only; with
    ``fp8``, ``config`` is the entry with its ``FP8_*`` fields applied)."""
    config = config or {}
    types = dict(q_ptr="*bf16", k_ptr="*u8" if fp8 else "*bf16", idx_ptr="*i32", topk_len_ptr="*i32",
                 sink_ptr="*fp32", out_ptr="*bf16", lse_ptr="*fp32", max_ptr="*fp32", o_part_ptr="*fp32",
                 stat_part_ptr="*fp32", qk_scale="fp32")
    flags = dict(HAS_TOPK_LEN=True, HAS_SINK=True, MAX_LOGITS=prefill)
    for split in (False, True):
        if keys_on_m(config, 16, fp8):
            alone = config.get("KEYS_ON_M_ALONE_STAGES")
            for stages in (None, alone) if alone else (None,):
                cfg = dict(config, RAW_STAGES=stages) if stages else config
                for rows in (8, 16):
                    yield (f"sparse_sm90_fp8_keys_on_m(rows={rows}, split={int(split)}"
                           f"{f', alone, stages={stages}' if stages else ''})", _sparse_sm90_fp8_t_kernel,
                           types, dict(SPLIT=split, **_t_constexprs(cfg, rows), **flags), T_WARPS.value, 1)
            if dual(config):
                for rows in (8, 16):
                    yield (f"sparse_sm90_fp8_keys_on_m_dual(rows={rows}, split={int(split)})",
                           _sparse_sm90_fp8_dual_kernel, types,
                           dict(SPLIT=split, **_dual_constexprs(config, rows), **flags), T_WARPS.value, 1)
        elif use_ws(config, fp8):
            yield (f"sparse_sm90{'_fp8' if fp8 else ''}_ws(split={int(split)})", _sparse_ws_kernel, types,
                   dict(BLOCK_N=BLOCK_N, SPLIT=split, COPY_FIRST=ws_schedule(config, fp8)["COPY_FIRST"], **flags),
                   WG_WARPS.value, 1)
        else:
            yield (f"sparse_sm90{'_fp8' if fp8 else ''}(split={int(split)})", _sparse_sm90_kernel, types,
                   dict(BLOCK_N=BLOCK_N, NUM_BUF=NUM_BUF, SPLIT=split, FP8=fp8,
                        RAW_STAGES=config.get("RAW_STAGES", 1) if fp8 else 1, **flags),
                   NUM_WARPS.value, 1)
