"""Dense MLA decode for Hopper with the two warpgroups on alternate key tiles (warp-specialized, Gluon).

Why: in ``decode_sm90`` both warpgroups compute every tile in lockstep (S's columns split between them), so the
tensor cores idle through each tile's softmax, and the row max and sum cross warpgroups through shared memory
and CTA barriers: 7 barriers a tile, a serial chain of ~4 us per 64-key tile (``benchmarks/NOTES.md``).

Here the warpgroups take turns, FlashMLA's way. Key tiles come in pairs (A in buffer 0, B in buffer 1);
warpgroup 0 computes S = QK^T and the softmax of A, warpgroup 1 those of B, so one warpgroup's softmax runs
while the other's MMAs do. Each warpgroup owns half of the 512 output columns (a 64 x 256 fp32 accumulator) and
adds both tiles' P V into it. The running row max passes from A's softmax to B's (shared memory + an mbarrier),
so both warpgroups' accumulators stay relative to one max: warpgroup 0 rescales P_A to B's max before handing it
over, and P (16-bit) travels through the tile's rope buffer, which its own S has finished reading.

Each half of a key tile is reloaded by its last reader, so no warpgroup waits for the other to free a buffer:
dims [0, 256) of A by warpgroup 0 (its own S and P V), dims [256, 512) and the rope of A by warpgroup 1 (the rope
buffer holds P_A, which warpgroup 1 reads last); of B, dims [256, 512) by warpgroup 1, dims [0, 256) and the rope
(holding P_B) by warpgroup 0. Copies are ``cp.async`` (any page size and stride) arriving on mbarriers.

Same split plan, partial slots and combine as ``decode_sm90`` / ``decode.py``. Shapes: d = 576, dv = 512,
bf16/fp16, any number of rows (blocks of 64); tiles of 64 keys (one buffer pair) or 32 (two pairs, so a pair's
copies run while the pair before computes).

Status: correct and GPU-tested, but slower than ``decode_sm90`` on the H100 (``benchmarks/NOTES.md``, fifth
session), so no shipped config selects it (config key ``WS``).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .decode_sm90 import (
    BLOCK_H,
    DR,
    DV,
    _async_load,
    _cta_barrier,
    _key_offsets,
    _part_range,
    _q_offsets,
    _segment,
    _store_segment,
)

HALF = gl.constexpr(256)  # output columns a warpgroup
WG_WARPS = gl.constexpr(4)
WORKER_REGS = gl.constexpr(256)

# mbarriers: [index] (arrivals to complete a phase)
SCALE0 = gl.constexpr(0)  # warpgroup 0 wrote A's max and rescale factor (1)
SCALE1 = gl.constexpr(1)  # warpgroup 1 wrote B's max and rescale factor (1)
P0 = gl.constexpr(2)  # P_A (rescaled to B's max) is in buffer 0's rope rows (1)
P1 = gl.constexpr(3)  # P_B is in buffer 1's rope rows (1)
KREADY = gl.constexpr(4)  # + 2 * buffer + warpgroup: that warpgroup's half of the tile landed (128 cp.async)
QREADY = gl.constexpr(12)  # + warpgroup: its half of Q landed (128 cp.async)
SEG_DONE = gl.constexpr(14)  # both warpgroups finished a segment's MMAs and wrote their row sums (2)
NUM_BARS = gl.constexpr(15)

# rows of the [8, 64] fp32 statistics buffer
M_A = gl.constexpr(0)
SCALE_A = gl.constexpr(1)
SCALE_B = gl.constexpr(2)
M_B = gl.constexpr(3)
L_SUM = gl.constexpr(4)  # + warpgroup


@gluon.constexpr_function
def _stages(BN):
    """Buffer pairs: 64-key tiles fill shared memory with one pair; 32-key tiles take two, so a pair's copies
    run while the pair before it computes."""
    return 64 // BN


@gluon.constexpr_function
def _s_layout(BN):
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])


@gluon.constexpr_function
def _o_layout():
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 256, 16])


@gluon.jit
def _load_half(kn, kpe, k_ptr, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, bar,
               HALF_IDX: gl.constexpr, WITH_ROPE: gl.constexpr, INDEXED: gl.constexpr, BN: gl.constexpr):
    """cp.async of dims [256 HALF_IDX, +256) (and the rope dims if ``WITH_ROPE``) of keys [start, start + 64)
    (``decode_sm90._key_offsets``; invalid keys zero-filled); ``bar`` completes when the 128 threads' copies land."""
    nope_l: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [WG_WARPS, 1], [1, 0])
    tok_off, tok_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                   INDEXED, BN, gl.SliceLayout(1, nope_l))
    offs = HALF_IDX * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, nope_l))
    _async_load(kn.slice(HALF_IDX * HALF, HALF, dim=1), k_ptr + tok_off[:, None] + offs[None, :],
                mask=tok_ok[:, None])
    if WITH_ROPE:
        pe_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WG_WARPS, 1], [1, 0])
        tok_off, tok_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                       INDEXED, BN, gl.SliceLayout(1, pe_l))
        offs_pe = DV + gl.arange(0, DR, layout=gl.SliceLayout(0, pe_l))
        _async_load(kpe, k_ptr + tok_off[:, None] + offs_pe[None, :], mask=tok_ok[:, None])
    cp.mbarrier_arrive(bar, increment_count=False)


@gluon.jit
def _load_q_half(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, bar,
                 W: gl.constexpr):
    """Warpgroup W's half of the 64 query rows' dims: [256 W, +256), and the rope dims for W = 1."""
    nope_l: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [WG_WARPS, 1], [1, 0])
    q_off, row_ok = _q_offsets(seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, nope_l)
    offs = W * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, nope_l))
    _async_load(q_smem.slice(W * HALF, HALF, dim=1), q_ptr + q_off[:, None] + offs[None, :], mask=row_ok[:, None])
    if W == 1:
        pe_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WG_WARPS, 1], [1, 0])
        q_off, row_ok = _q_offsets(seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, pe_l)
        offs_pe = DV + gl.arange(0, DR, layout=gl.SliceLayout(0, pe_l))
        _async_load(qpe_smem, q_ptr + q_off[:, None] + offs_pe[None, :], mask=row_ok[:, None])
    cp.mbarrier_arrive(bar, increment_count=False)


@gluon.jit
def _scores(q_smem, qpe_smem, kn, kpe, bars, buf, phase, W: gl.constexpr, BN: gl.constexpr):
    """S = QK^T of warpgroup W's tile: its own half of the dims as soon as it lands, then the other half and the
    rope."""
    s_l: gl.constexpr = _s_layout(BN)
    mbarrier.wait(bars.index(KREADY + 2 * buf + W), phase)
    fence_async_shared()
    s = gl.zeros([BLOCK_H, BN], gl.float32, layout=s_l)
    s = warpgroup_mma(q_smem.slice(W * HALF, HALF, dim=1), kn.slice(W * HALF, HALF, dim=1).permute((1, 0)), s,
                      use_acc=False, is_async=True)
    mbarrier.wait(bars.index(KREADY + 2 * buf + 1 - W), phase)
    fence_async_shared()
    s = warpgroup_mma(q_smem.slice((1 - W) * HALF, HALF, dim=1),
                      kn.slice((1 - W) * HALF, HALF, dim=1).permute((1, 0)), s, is_async=True)
    s = warpgroup_mma(qpe_smem, kpe.permute((1, 0)), s, is_async=True)
    return warpgroup_mma_wait(num_outstanding=0, deps=[s])


@gluon.jit
def _masked(s, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, row_limit, qk_scale,
            INDEXED: gl.constexpr, BN: gl.constexpr):
    """The tile's scores in log2 units, -inf where a key is invalid or (causal) after the row's last key."""
    key_l: gl.constexpr = gl.SliceLayout(0, _s_layout(BN))
    _, key_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, INDEXED, BN,
                             key_l)
    key_pos = start + gl.arange(0, BN, layout=key_l)
    visible = key_ok[None, :] & (key_pos[None, :] < row_limit[:, None])
    return gl.where(visible, s * qk_scale, float("-inf"))


@gluon.jit
def _stat(stats, k):
    return stats.slice(k * BLOCK_H, BLOCK_H)


@gluon.jit
def _rows_o(x):
    return gl.convert_layout(x, gl.SliceLayout(1, _o_layout()))


@gluon.jit
def _attend_pairs(q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, k_ptr, table_row, lo, hi, row_limit,
                  stride_kb, stride_kt, stride_table, limit, page_size, qk_scale, pairs, INDEXED: gl.constexpr,
                  W: gl.constexpr, BN: gl.constexpr):
    """Warpgroup W's share of keys [lo, hi): (its 64 x 256 output block, the row max, its part of the row sum),
    both warpgroups' state relative to the same max. The first pairs' tiles must have been issued
    (``_issue_first_pairs``); ``pairs`` counts the pairs this program ran before (buffer stages, mbarrier phases)."""
    STAGES: gl.constexpr = _stages(BN)
    s_l: gl.constexpr = _s_layout(BN)
    o_l: gl.constexpr = _o_layout()
    row_l: gl.constexpr = gl.SliceLayout(1, s_l)
    p_op_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)
    dtype: gl.constexpr = q_smem.dtype
    acc = gl.zeros([BLOCK_H, HALF], gl.float32, layout=o_l)
    m_run = gl.full([BLOCK_H], float("-inf"), gl.float32, layout=row_l)
    l_run = gl.zeros([BLOCK_H], gl.float32, layout=row_l)
    n_pairs = (hi - lo + 2 * BN - 1) // (2 * BN)
    for i in range(n_pairs):
        gi = pairs + i
        phase = gi & 1
        stage = gi % STAGES
        k_phase = (gi // STAGES) & 1
        buf_a = 2 * stage
        buf_b = 2 * stage + 1
        kn = kn_bufs.index(buf_a + W)
        kpe = kpe_bufs.index(buf_a + W)
        start = lo + (2 * i + W) * BN  # this warpgroup's tile (B may lie past hi: all masked, zero-filled)
        refill = i + STAGES < n_pairs  # this stage's buffers then take pair i + STAGES
        nxt = lo + 2 * (i + STAGES) * BN  # that pair's tile A
        s = _scores(q_smem, qpe_smem, kn, kpe, bars, buf_a + W, k_phase, W, BN)
        qk = _masked(s, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, row_limit,
                     qk_scale, INDEXED, BN)
        if W == 0:
            m_new = gl.maximum(m_run, gl.max(qk, axis=1))
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
            p = gl.exp2(qk - m_safe[:, None])
            scale_a = gl.exp2(m_run - m_safe)
            _stat(stats, M_A).store(m_new)
            _stat(stats, SCALE_A).store(scale_a)
            _cta_barrier()
            mbarrier.arrive(bars.index(SCALE0))
            acc = acc * _rows_o(scale_a)[:, None]
            l_run = l_run * scale_a + gl.sum(p, axis=1)
            acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_op_l), kn.slice(0, HALF, dim=1), acc,
                                is_async=True)
            # B's max: hand P_A over rescaled to it
            mbarrier.wait(bars.index(SCALE1), phase)
            scale_b = _stat(stats, SCALE_B).load(row_l)
            m_run = _stat(stats, M_B).load(row_l)
            kpe.permute((1, 0)).store((p * scale_b[:, None]).to(dtype))
            fence_async_shared()
            _cta_barrier()
            mbarrier.arrive(bars.index(P0))
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
            if refill:  # dims [0, 256) of A: this warpgroup was their last reader
                _load_half(kn, kpe, k_ptr, table_row, nxt, hi, stride_kb, stride_kt, stride_table, limit,
                           page_size, bars.index(KREADY + 2 * buf_a), 0, False, INDEXED, BN)
            acc = acc * _rows_o(scale_b)[:, None]
            l_run = l_run * scale_b
            mbarrier.wait(bars.index(P1), phase)
            fence_async_shared()
            acc = warpgroup_mma(kpe_bufs.index(buf_b).permute((1, 0)), kn_bufs.index(buf_b).slice(0, HALF, dim=1),
                                acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
            if refill:  # dims [0, 256) and the rope (P_B) of B
                _load_half(kn_bufs.index(buf_b), kpe_bufs.index(buf_b), k_ptr, table_row, nxt + BN, hi, stride_kb,
                           stride_kt, stride_table, limit, page_size, bars.index(KREADY + 2 * buf_b), 0, True,
                           INDEXED, BN)
        else:
            mbarrier.wait(bars.index(SCALE0), phase)
            m_a = _stat(stats, M_A).load(row_l)
            scale_a = _stat(stats, SCALE_A).load(row_l)
            m_new = gl.maximum(m_a, gl.max(qk, axis=1))
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
            p = gl.exp2(qk - m_safe[:, None])
            scale_b = gl.exp2(m_a - m_safe)
            _stat(stats, M_B).store(m_new)
            _stat(stats, SCALE_B).store(scale_b)
            _cta_barrier()
            mbarrier.arrive(bars.index(SCALE1))
            scale = scale_a * scale_b
            acc = acc * _rows_o(scale)[:, None]
            l_run = l_run * scale + gl.sum(p, axis=1)
            m_run = m_new
            p16 = p.to(dtype)
            kpe.permute((1, 0)).store(p16)  # S_B is done with the rope rows
            fence_async_shared()
            _cta_barrier()
            mbarrier.arrive(bars.index(P1))
            acc = warpgroup_mma(gl.convert_layout(p16, p_op_l), kn.slice(HALF, HALF, dim=1), acc, is_async=True)
            mbarrier.wait(bars.index(P0), phase)
            fence_async_shared()
            acc = warpgroup_mma(kpe_bufs.index(buf_a).permute((1, 0)), kn_bufs.index(buf_a).slice(HALF, HALF, dim=1),
                                acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=1, deps=[acc])
            if refill:  # dims [256, 512) of B
                _load_half(kn, kpe, k_ptr, table_row, nxt + BN, hi, stride_kb, stride_kt, stride_table, limit,
                           page_size, bars.index(KREADY + 2 * buf_b + 1), 1, False, INDEXED, BN)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
            if refill:  # dims [256, 512) and the rope (P_A) of A
                _load_half(kn_bufs.index(buf_a), kpe_bufs.index(buf_a), k_ptr, table_row, nxt, hi, stride_kb,
                           stride_kt, stride_table, limit, page_size, bars.index(KREADY + 2 * buf_a + 1), 1, True,
                           INDEXED, BN)
    return acc, m_run, l_run, pairs + n_pairs


@gluon.jit
def _issue_first_pairs(kn_bufs, kpe_bufs, bars, k_ptr, table_row, lo, hi, stride_kb, stride_kt, stride_table, limit,
                       page_size, pairs, INDEXED: gl.constexpr, W: gl.constexpr, BN: gl.constexpr):
    """Warpgroup W's halves of the segment's first pairs, one a stage (A: dims of half W, + rope for W = 1;
    B: + rope for W = 0). The buffers are free: the segment before ended with SEG_DONE."""
    STAGES: gl.constexpr = _stages(BN)
    n_pairs = (hi - lo + 2 * BN - 1) // (2 * BN)
    for j in gl.static_range(STAGES):
        if j < n_pairs:
            buf_a = 2 * ((pairs + j) % STAGES)
            _load_half(kn_bufs.index(buf_a), kpe_bufs.index(buf_a), k_ptr, table_row, lo + 2 * j * BN, hi,
                       stride_kb, stride_kt, stride_table, limit, page_size, bars.index(KREADY + 2 * buf_a + W), W,
                       W == 1, INDEXED, BN)
            _load_half(kn_bufs.index(buf_a + 1), kpe_bufs.index(buf_a + 1), k_ptr, table_row, lo + (2 * j + 1) * BN,
                       hi, stride_kb, stride_kt, stride_table, limit, page_size,
                       bars.index(KREADY + 2 * buf_a + 2 + W), W, W == 0, INDEXED, BN)


@gluon.jit
def _row_sum(stats, bars, l_run, segs, W: gl.constexpr, BN: gl.constexpr):
    """Both warpgroups' row sums added (after which both have finished the segment's MMAs)."""
    row_l: gl.constexpr = gl.SliceLayout(1, _s_layout(BN))
    _stat(stats, L_SUM + W).store(l_run)
    _cta_barrier()
    mbarrier.arrive(bars.index(SEG_DONE))
    mbarrier.wait(bars.index(SEG_DONE), segs & 1)
    return l_run + _stat(stats, L_SUM + 1 - W).load(row_l)


@gluon.jit
def _decode_wg(W: gl.constexpr, q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr,
               lse_part_ptr, stride_qb, stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb,
               stride_seqlens, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks,
               page_size, max_len, qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs,
               kpe_bufs, stats, bars, CAUSAL):
    """Warpgroup W's run over the program's segments (decode_sm90's loop). (Arguments reach a partition as
    tensors, constexprs included: the tile size is read off the buffers' shape.)"""
    BN: gl.constexpr = kn_bufs.shape[1]
    s_l: gl.constexpr = _s_layout(BN)
    o_l: gl.constexpr = _o_layout()
    rows_per_seq = s_q * h_q
    rows_s = row_block * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, s_l))
    rows_o = row_block * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, o_l))
    row_ok_o = rows_o < rows_per_seq
    offs_o = W * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, o_l))
    pairs = 0
    segs = 0
    g = g_lo
    while g < g_hi:
        n, seg_hi, tok_lo, tok_hi, row_limit = _segment(seqlens_ptr, stride_seqlens, seq, g, g_hi, seq_g0, max_len,
                                                        rows_s, s_q, h_q, BN, CAUSAL)
        if n > 0:
            bt_row = block_table_ptr + seq.to(gl.int64) * stride_btb
            # the previous segment ended with SEG_DONE: both warpgroups are done with every buffer
            _load_q_half(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh,
                         bars.index(QREADY + W), W)
            _issue_first_pairs(kn_bufs, kpe_bufs, bars, k_ptr, bt_row, tok_lo, tok_hi, stride_kb, stride_kt,
                               stride_btp, num_blocks, page_size, pairs, False, W, BN)
            mbarrier.wait(bars.index(QREADY + 0), segs & 1)
            mbarrier.wait(bars.index(QREADY + 1), segs & 1)
            acc, m_i, l_i, pairs = _attend_pairs(q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, k_ptr, bt_row,
                                                 tok_lo, tok_hi, row_limit, stride_kb, stride_kt, stride_btp,
                                                 num_blocks, page_size, qk_scale, pairs, False, W, BN)
            l_i = _row_sum(stats, bars, l_i, segs, W, BN)
            segs += 1

            # this warpgroup's 256 columns; warpgroup 0 writes the lse
            _store_segment(acc, m_i, l_i, seq, part, g == g_lo, (g == seq_g0) & (seg_hi == seq_g0 + n), rows_o,
                           row_ok_o, offs_o, rows_per_seq, h_q, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_ob,
                           stride_os, stride_oh, stride_lb, stride_lh, stride_ls, W == 0)
        g = seg_hi
        seq_g0 += n
        seq += 1


@gluon.jit
def _decode_wg0(q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb,
                stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb, stride_seqlens, stride_ob,
                stride_os, stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len,
                qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars,
                CAUSAL):
    _decode_wg(0, q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb,
               stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb, stride_seqlens, stride_ob,
               stride_os, stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len,
               qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars,
               CAUSAL)


@gluon.jit
def _decode_wg1(q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb,
                stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb, stride_seqlens, stride_ob,
                stride_os, stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len,
                qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars,
                CAUSAL):
    _decode_wg(1, q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb,
               stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb, stride_seqlens, stride_ob,
               stride_os, stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len,
               qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars,
               CAUSAL)


@gluon.jit
def _buffers_ws(dtype: gl.constexpr, BN: gl.constexpr):
    """Q (72 KB), key tiles (144 KB: one pair of 64-key tiles or two of 32), the row statistics, the mbarriers
    (initialized)."""
    wide_sl: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DV], wide_sl)
    qpe_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DR], wide_sl)
    kn_bufs = gl.allocate_shared_memory(dtype, [2 * _stages(BN), BN, DV], wide_sl)
    kpe_bufs = gl.allocate_shared_memory(dtype, [2 * _stages(BN), BN, DR], wide_sl)
    stats = gl.allocate_shared_memory(gl.float32, [8 * BLOCK_H], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    bars = gl.allocate_shared_memory(gl.int64, [NUM_BARS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(4):
        mbarrier.init(bars.index(i), count=1)
    for i in gl.static_range(KREADY, SEG_DONE):
        mbarrier.init(bars.index(i), count=WG_WARPS * 32)
    mbarrier.init(bars.index(SEG_DONE), count=2)
    return q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars


@gluon.jit
def _decode_ws_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, num_blocks, page_size, max_len, num_parts, qk_scale,
    BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, MIN_BLOCKS_PER_PART: gl.constexpr, CAUSAL: gl.constexpr,
    ROWS_FIRST: gl.constexpr, FP8: gl.constexpr, RAW_STAGES: gl.constexpr,
):
    gl.static_assert((BLOCK_N == 64) or (BLOCK_N == 32), "the warp-specialized kernel takes 32- or 64-key tiles")
    gl.static_assert(not FP8, "the warp-specialized kernel reads 16-bit caches")
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars = _buffers_ws(dtype, BLOCK_N)
    if ROWS_FIRST:
        part = gl.program_id(1)
        row_block = gl.program_id(0)
    else:
        part = gl.program_id(0)
        row_block = gl.program_id(1)
    g_lo, g_hi, seq, seq_g0 = _part_range(seqlens_ptr, stride_seqlens, batch, max_len, num_parts, part,
                                          MIN_BLOCKS_PER_PART, BLOCK_N, WG_WARPS)
    _cta_barrier()  # the mbarriers are initialized before either warpgroup uses them
    args = (q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb,
            stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb, stride_seqlens, stride_ob, stride_os,
            stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len, qk_scale,
            row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, CAUSAL)
    gl.warp_specialize([(_decode_wg0, args), (_decode_wg1, args)], [WG_WARPS], [WORKER_REGS])
