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
(holding P_B) by warpgroup 0. The copies arrive on mbarriers: TMA (one thread, four or five 64 x 64 boxes a
half-tile) where pages are whole 64-key tiles laid end to end, ``cp.async`` otherwise (any page size and stride)
and for a tile that reaches past the keys (zero-filled rows). The loop is software-pipelined (``_attend_pairs``):
S of the next pair is issued while the last P V MMAs drain.

Same split plan, partial slots and combine as ``decode_sm90`` / ``decode.py``. Shapes: d = 576, dv = 512,
bf16/fp16, any number of rows (blocks of 64); tiles of 64 keys, one buffer pair (216 KB with Q). The FP8 cache
(bf16 queries) takes the same loop with each half-tile dequantized in place by the warpgroup that copied it
(``_load_half_fp8``, ``_convert_half``; twenty-eighth session, not yet run on a GPU).

Status (``benchmarks/NOTES.md``, thirteenth session): under Triton 3.9, with TMA copies, 1.12-1.19x faster than
``decode_sm90`` at 128-256 rows (0.78-0.80x FlashMLA at h = 128, s_k = 8192), slower at 64; Triton 3.6 cannot lower
it. The sm90 config selects it (key ``WS``) above 64 rows with ``min_triton`` 3.7 (``COPY_FIRST`` only for sparse
prefill: in the seventeenth session's builds it is 0-4% slower or neutral at 128 dense rows, 4-7% slower at 256),
and (fourteenth to sixteenth sessions) from 32 key tiles a part on (``WS_MIN_TILES_PER_PART``;
``decode_sm90.use_ws``), below which it was slower than the lockstep kernel; since the seventeenth session's changes
at every batch size. Fifteenth session: a segment no longer costs an extra pair step (the last pair is finished
after the loop), 5-8% faster at 128 causal and 256 rows (0.77-0.79x FlashMLA at 256 rows); the same loop runs sparse
prefill (``sparse_sm90._sparse_ws_kernel``). Seventeenth session: the epilogue's one reciprocal a row
(``decode_sm90._store_segment``) left ptxas fewer spills (TMA build 208 -> 164 B), 1.5-3.5% faster at 128-256 rows;
S's tiles through an opaque zero index (``_attend_pairs``) keep its descriptors out of the spills (pair loops: 0
reloads, was 28 + 6 a step), 3-4% faster at h = 128 (0.81x FlashMLA at s_k = 8192), 1% at h = 64 s_q = 2.
"""

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
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
    _tile_page,
)
from .decode_sm90_fp8 import _view

# renamed between Triton 3.6 (async_copy_global_to_shared) and 3.9 (async_load)
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

HALF = gl.constexpr(256)  # output columns a warpgroup
WG_WARPS = gl.constexpr(4)
WORKER_REGS = gl.constexpr(256)

# mbarriers: [index] (arrivals to complete a phase)
SCALE0 = gl.constexpr(0)  # warpgroup 0 wrote A's max and rescale factor (1)
SCALE1 = gl.constexpr(1)  # warpgroup 1 wrote B's max and rescale factor (1)
P0 = gl.constexpr(2)  # P_A (rescaled to B's max) is in buffer 0's rope rows (1)
P1 = gl.constexpr(3)  # P_B is in buffer 1's rope rows (1)
KREADY = gl.constexpr(4)  # + 2 * buffer + warpgroup: that warpgroup's half of the tile landed (TMA: 1 + bytes)
QREADY = gl.constexpr(8)  # + warpgroup: its half of Q landed (128 cp.async)
SEG_DONE = gl.constexpr(10)  # both warpgroups finished a segment's MMAs and wrote their row sums (2)
NUM_BARS = gl.constexpr(11)
# FP8 cache: KREADY then means a half's raw bytes landed (awaited by the warpgroup that copied and converts it);
# the two halves that the other warpgroup reads get one more mbarrier each, once converted
CONV_A_HI = gl.constexpr(11)  # dims [256, 512) and the rope of A, converted by warpgroup 1 for warpgroup 0 (1)
CONV_B_LO = gl.constexpr(12)  # dims [0, 256) and the rope of B, converted by warpgroup 0 for warpgroup 1 (1)
NUM_BARS_FP8 = gl.constexpr(13)

# rows of the [8, 64] fp32 statistics buffer
M_A = gl.constexpr(0)
SCALE_A = gl.constexpr(1)
SCALE_B = gl.constexpr(2)
M_B = gl.constexpr(3)
L_SUM = gl.constexpr(4)  # + warpgroup


@gluon.constexpr_function
def _s_layout(BN):
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])


@gluon.constexpr_function
def _o_layout():
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 256, 16])


@gluon.constexpr_function
def _tile_layout():
    """Q's and the key tiles' shared layout (128-byte swizzle), which the TMA descriptor's boxes share."""
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)


@gluon.constexpr_function
def _copy_layout():
    """A warpgroup's 16-byte copies of a [64, 256] (or [64, 64]) block: a warp over 8 rows of 4 copies, so a
    thread holds two rows (two row addresses, the columns as constant offsets: few registers; the same rows for
    either width) and each warp's 512 bytes land in distinct banks of the 128-byte swizzle."""
    return gl.BlockedLayout([1, 8], [8, 4], [WG_WARPS, 1], [1, 0])


@gluon.jit
def _load_half(kn, kpe, k_ptr, k_desc, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
               bar, HALF_IDX: gl.constexpr, WITH_ROPE: gl.constexpr, INDEXED: gl.constexpr, BN: gl.constexpr,
               TMA: gl.constexpr):
    """Copy dims [256 HALF_IDX, +256) (and the rope dims if ``WITH_ROPE``) of keys [start, start + 64); ``bar``
    completes when they have landed. With ``TMA`` (pages a whole number of 64-key tiles, laid end to end:
    ``k_desc`` sees the cache as [tokens, 576]) a whole tile is four (five) 64 x 64 TMA copies from one page
    look-up, issued by one thread; a tile reaching past ``hi`` goes the ``cp.async`` way, whose masked keys are
    zero-filled (P V reads V's rows whatever P holds, and 0 x NaN is NaN). Else ``cp.async``
    (``decode_sm90._key_offsets``; any page size and stride)."""
    if TMA:
        if start + BN <= hi:
            page = _tile_page(table_row, start, hi, stride_table, limit, page_size)
            row = page * page_size + start % page_size
            mbarrier.expect(bar, (4 + WITH_ROPE) * BN * 64 * kn.dtype.primitive_bitwidth // 8)
            for c in gl.static_range(4):
                _tma_load(k_desc, [row, HALF_IDX * HALF + c * 64], bar, kn.slice(HALF_IDX * HALF + c * 64, 64, dim=1))
            if WITH_ROPE:
                _tma_load(k_desc, [row, DV], bar, kpe)
        else:
            _copy_half(kn, kpe, k_ptr, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                       HALF_IDX, WITH_ROPE, INDEXED, BN)
            # each thread's copies hold the phase open (the count they add, they take back on landing); the one
            # arrival it expects comes once all of them have been counted
            cp.mbarrier_arrive(bar, increment_count=True)
            _cta_barrier()
            mbarrier.arrive(bar)
    else:
        _copy_half(kn, kpe, k_ptr, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                   HALF_IDX, WITH_ROPE, INDEXED, BN)
        cp.mbarrier_arrive(bar, increment_count=False)


@gluon.jit
def _copy_half(kn, kpe, k_ptr, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
               HALF_IDX: gl.constexpr, WITH_ROPE: gl.constexpr, INDEXED: gl.constexpr, BN: gl.constexpr):
    """``_load_half``'s cp.async copies (invalid keys zero-filled)."""
    nope_l: gl.constexpr = _copy_layout()
    tok_off, tok_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                   INDEXED, BN, gl.SliceLayout(1, nope_l))
    offs = HALF_IDX * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, nope_l))
    _async_load(kn.slice(HALF_IDX * HALF, HALF, dim=1), k_ptr + tok_off[:, None] + offs[None, :],
                mask=tok_ok[:, None])
    if WITH_ROPE:  # (the same layout's rows: the keys' offsets serve both)
        offs_pe = DV + gl.arange(0, DR, layout=gl.SliceLayout(0, nope_l))
        _async_load(kpe, k_ptr + tok_off[:, None] + offs_pe[None, :], mask=tok_ok[:, None])


# -- FP8 cache (triton_mla.fp8: 512 e4m3 bytes, 4 fp32 scales, 64 bf16 rope values = 656 bytes a token) ----------
# No staging buffers (Q and one tile pair fill 216 of the 227 KB): a half-tile's raw bytes (64 keys x 256) land in
# the upper half of its own 16-bit buffer, dims [128, 256) of the half, and the warpgroup that copied them
# dequantizes them in place. The 16-bit tile is stored as 64-dim chunks of [64 keys, 64] (8 KB each, the 128-byte
# swizzle's width; TMA fills them one box at a time): the raw bytes of the half's value group g (128 dims) fill
# chunk 2 + g as plain [64 keys, 128 bytes], so group 0's values (chunks 0, 1) overwrite no raw byte.

@gluon.constexpr_function
def _raw_layout():
    """[64 keys, 128 bytes] of raw e4m3 values: 16 bytes a thread (one cp.async / one load), a warp over 4 keys."""
    return gl.BlockedLayout([1, 16], [4, 8], [WG_WARPS, 1], [1, 0])


@gluon.constexpr_function
def _cvt_layout():
    """[64 keys, 64 dims] of 16-bit values: 8 a thread (8 raw bytes in, one 16-byte store of bf16 out); keys
    placed as in ``_raw_layout``, so the rope copy takes the raw copy's key offsets."""
    return gl.BlockedLayout([1, 8], [4, 8], [WG_WARPS, 1], [1, 0])


@gluon.jit
def _raw_chunk(kn_bufs, buf: gl.constexpr, chunk: gl.constexpr):
    """Chunk ``chunk`` (dims [64 chunk, +64)) of key buffer ``buf`` as plain bytes [64 keys, 128]."""
    BN: gl.constexpr = kn_bufs.shape[1]
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0])  # (a buffered layout: one rank fewer)
    return _view(kn_bufs, gl.uint8, [2 * DV // 64, BN, 128], plain).index(buf * (DV // 64) + chunk)


@gluon.jit
def _load_half_fp8(kn_bufs, kpe, scale_bufs, k_ptr, table_row, start, hi, stride_kb, stride_kt, stride_table, limit,
                   page_size, bar, BUF: gl.constexpr, HALF_IDX: gl.constexpr, WITH_ROPE: gl.constexpr,
                   INDEXED: gl.constexpr):
    """``_load_half`` over the FP8 cache (``k_ptr`` bytes): the raw values of dims [256 HALF_IDX, +256) of keys
    [start, start + 64) into the upper half of that half of buffer ``BUF``, their two scales into
    ``scale_bufs[2 BUF + HALF_IDX]`` ([2 groups, 64 keys]), the rope values (bf16 in the cache) straight into
    ``kpe`` if ``WITH_ROPE``; cp.async, invalid keys zero-filled (value 0, scale 0); ``bar`` completes when all
    have landed. ``_convert_half`` then dequantizes."""
    BN: gl.constexpr = kn_bufs.shape[1]
    raw_l: gl.constexpr = _raw_layout()
    tok_off, tok_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                   INDEXED, BN, gl.SliceLayout(1, raw_l))
    cols = gl.arange(0, 128, layout=gl.SliceLayout(0, raw_l))
    for g in gl.static_range(2):
        _async_load(_raw_chunk(kn_bufs, BUF, 4 * HALF_IDX + 2 + g),
                    k_ptr + tok_off[:, None] + (HALF_IDX * HALF + g * 128 + cols)[None, :], mask=tok_ok[:, None])
    sc_l: gl.constexpr = gl.BlockedLayout([1, 1], [2, 16], [1, WG_WARPS], [1, 0])
    sc_off, sc_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                 INDEXED, BN, gl.SliceLayout(0, sc_l))
    groups = 2 * HALF_IDX + gl.arange(0, 2, layout=gl.SliceLayout(1, sc_l))
    sc_ptrs = (k_ptr + sc_off[None, :] + DV).to(gl.pointer_type(gl.float32)) + groups[:, None]
    _async_load(scale_bufs.index(2 * BUF + HALF_IDX), sc_ptrs, mask=sc_ok[None, :])
    if WITH_ROPE:
        # the rope rows (128 bytes, as a raw group's) placed by key as the raw copy's: its offsets serve, moved to
        # a layout of the same placement (no data movement, no second page look-up)
        pe_l: gl.constexpr = _cvt_layout()
        pe_off = gl.convert_layout(tok_off, gl.SliceLayout(1, pe_l))
        pe_ok = gl.convert_layout(tok_ok, gl.SliceLayout(1, pe_l))
        offs_pe = gl.arange(0, DR, layout=gl.SliceLayout(0, pe_l))
        pe_ptrs = (k_ptr + pe_off[:, None] + DV + 16).to(gl.pointer_type(gl.bfloat16)) + offs_pe[None, :]
        _async_load(kpe, pe_ptrs, mask=pe_ok[:, None])
    cp.mbarrier_arrive(bar, increment_count=False)


@gluon.jit
def _dequant_chunk(raw, scale, kn, chunk: gl.constexpr):
    """Raw e4m3 ``raw`` [64 keys, 64] times the keys' ``scale`` into chunk ``chunk`` of the 16-bit tile ``kn``
    (power-of-two scales: exact in bfloat16)."""
    v = raw.to(gl.float8e4nv, bitcast=True).to(gl.float32) * scale[:, None]
    kn.slice(chunk * 64, 64, dim=1).store(v.to(kn.dtype))


@gluon.jit
def _convert_half(kn_bufs, scale_bufs, bar, phase, BUF: gl.constexpr, HALF_IDX: gl.constexpr):
    """Once ``bar`` (the copy's) completes, dequantize dims [256 HALF_IDX, +256) of buffer ``BUF`` in place (the
    calling warpgroup's threads), ready for the tensor cores when this returns. Group 0 (chunks 0, 1 of the half)
    is written over no raw byte; group 1's raw bytes are all read (a warpgroup barrier) before its values
    overwrite them and group 0's."""
    cv_l: gl.constexpr = _cvt_layout()
    key_l: gl.constexpr = gl.SliceLayout(1, cv_l)
    kn = kn_bufs.index(BUF)
    # [2 groups, 64 keys] a (buffer, half), seen as one row of keys a group
    scales = _view(scale_bufs, gl.float32, [8, kn_bufs.shape[1]], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    sc0: gl.constexpr = 2 * (2 * BUF + HALF_IDX)
    c0: gl.constexpr = 4 * HALF_IDX
    mbarrier.wait(bar, phase)
    raw0 = _raw_chunk(kn_bufs, BUF, c0 + 2)
    s0 = scales.index(sc0).load(key_l)
    _dequant_chunk(raw0.slice(0, 64, dim=1).load(cv_l), s0, kn, c0)
    _dequant_chunk(raw0.slice(64, 64, dim=1).load(cv_l), s0, kn, c0 + 1)
    raw1 = _raw_chunk(kn_bufs, BUF, c0 + 3)
    x_lo = raw1.slice(0, 64, dim=1).load(cv_l)
    x_hi = raw1.slice(64, 64, dim=1).load(cv_l)
    s1 = scales.index(sc0 + 1).load(key_l)
    _cta_barrier()  # every thread's raw bytes are in registers
    _dequant_chunk(x_lo, s1, kn, c0 + 2)
    _dequant_chunk(x_hi, s1, kn, c0 + 3)
    fence_async_shared()  # written by threads, read by the tensor cores (the async proxy)
    _cta_barrier()


@gluon.jit
def _load_q_half(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, bar,
                 W: gl.constexpr):
    """Warpgroup W's half of the 64 query rows' dims: [256 W, +256), and the rope dims for W = 1."""
    nope_l: gl.constexpr = _copy_layout()
    q_off, row_ok = _q_offsets(seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, nope_l)
    offs = W * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, nope_l))
    _async_load(q_smem.slice(W * HALF, HALF, dim=1), q_ptr + q_off[:, None] + offs[None, :], mask=row_ok[:, None])
    if W == 1:  # (the same layout's rows: the offsets serve both)
        offs_pe = DV + gl.arange(0, DR, layout=gl.SliceLayout(0, nope_l))
        _async_load(qpe_smem, q_ptr + q_off[:, None] + offs_pe[None, :], mask=row_ok[:, None])
    cp.mbarrier_arrive(bar, increment_count=False)


@gluon.jit
def _s_part(q_smem, qpe_smem, kn, kpe, bars, bar, phase, s, HALF_IDX: gl.constexpr, FIRST: gl.constexpr,
            WITH_ROPE: gl.constexpr):
    """Issue S += Q K^T over dims [256 HALF_IDX, +256) of a tile (and the rope dims) once that part has landed
    (mbarrier ``bar``); asynchronous, so the caller waits."""
    mbarrier.wait(bars.index(bar), phase)
    fence_async_shared()
    return _s_mma(q_smem, qpe_smem, kn, kpe, s, HALF_IDX, FIRST, WITH_ROPE)


@gluon.jit
def _s_mma(q_smem, qpe_smem, kn, kpe, s, HALF_IDX: gl.constexpr, FIRST: gl.constexpr, WITH_ROPE: gl.constexpr):
    """``_s_part``'s MMAs, for a part that is ready (its wait and fence done)."""
    s = warpgroup_mma(q_smem.slice(HALF_IDX * HALF, HALF, dim=1),
                      kn.slice(HALF_IDX * HALF, HALF, dim=1).permute((1, 0)), s, use_acc=not FIRST, is_async=True)
    if WITH_ROPE:
        s = warpgroup_mma(qpe_smem, kpe.permute((1, 0)), s, is_async=True)
    return s


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
def _softmax_step(qk, m_prev, stats, bars, M_ROW: gl.constexpr, SCALE_ROW: gl.constexpr, READY: gl.constexpr):
    """One tile's softmax from the running max ``m_prev``: (P, the factor that rescales state relative to
    ``m_prev``, the new max), the last two published in ``stats`` for the other warpgroup (mbarrier ``READY``)."""
    m_new = gl.maximum(m_prev, gl.max(qk, axis=1))
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    p = gl.exp2(qk - m_safe[:, None])
    scale = gl.exp2(m_prev - m_safe)
    _stat(stats, M_ROW).store(m_new)
    _stat(stats, SCALE_ROW).store(scale)
    _cta_barrier()
    mbarrier.arrive(bars.index(READY))
    return p, scale, m_new


@gluon.jit
def _front_wg0(s, acc, m_run, l_run, kn_bufs, kpe_bufs, stats, bars, k_ptr, k_desc, table_row, start, hi, row_limit,
               stride_kb, stride_kt, stride_table, limit, page_size, qk_scale, phase, MORE: gl.constexpr,
               INDEXED: gl.constexpr, TMA: gl.constexpr, FP8: gl.constexpr = False, scale_bufs=None,
               CONVERT_B_LO: gl.constexpr = False):
    """Warpgroup 0 on the pair whose tile A starts at ``start`` and has scores ``s``: softmax of A, P_A V into its
    256 columns (P in registers; waited), the next pair's dims [0, 256) of A copied if there is one (``MORE``; it
    read them last), P_A handed to warpgroup 1 rescaled to B's max (in A's rope rows, which S_A has finished
    reading), and the wait for P_B. ``CONVERT_B_LO`` (FP8, ``LATE_B_LO``): B's lower half is dequantized here,
    under P_A V, and announced to warpgroup 1."""
    BN: gl.constexpr = kn_bufs.shape[1]
    o_l: gl.constexpr = _o_layout()
    row_l: gl.constexpr = gl.SliceLayout(1, _s_layout(BN))
    p_op_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)
    dtype: gl.constexpr = kn_bufs.dtype
    kn_a = kn_bufs.index(0)
    kpe_a = kpe_bufs.index(0)
    qk = _masked(s, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, row_limit, qk_scale,
                 INDEXED, BN)
    p, scale_a, _ = _softmax_step(qk, m_run, stats, bars, M_A, SCALE_A, SCALE0)
    acc = acc * _rows_o(scale_a)[:, None]
    l_run = l_run * scale_a + gl.sum(p, axis=1)
    acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_op_l), kn_a.slice(0, HALF, dim=1), acc, is_async=True)
    if CONVERT_B_LO:
        _convert_half(kn_bufs, scale_bufs, bars.index(KREADY + 2), phase, 1, 0)
        mbarrier.arrive(bars.index(CONV_B_LO))
    acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
    if MORE:
        if FP8:
            _load_half_fp8(kn_bufs, kpe_a, scale_bufs, k_ptr, table_row, start + 2 * BN, hi, stride_kb, stride_kt,
                           stride_table, limit, page_size, bars.index(KREADY + 0), 0, 0, False, INDEXED)
        else:
            _load_half(kn_a, kpe_a, k_ptr, k_desc, table_row, start + 2 * BN, hi, stride_kb, stride_kt, stride_table,
                       limit, page_size, bars.index(KREADY + 0), 0, False, INDEXED, BN, TMA)
    mbarrier.wait(bars.index(SCALE1), phase)
    scale_b = _stat(stats, SCALE_B).load(row_l)
    m_run = _stat(stats, M_B).load(row_l)
    kpe_a.permute((1, 0)).store((p * scale_b[:, None]).to(dtype))
    fence_async_shared()
    _cta_barrier()
    mbarrier.arrive(bars.index(P0))
    acc = acc * _rows_o(scale_b)[:, None]
    l_run = l_run * scale_b
    mbarrier.wait(bars.index(P1), phase)
    fence_async_shared()
    return acc, m_run, l_run


@gluon.jit
def _front_wg1(s, acc, l_run, kpe_bufs, stats, bars, table_row, start, hi, row_limit, stride_kb, stride_kt,
               stride_table, limit, page_size, qk_scale, phase, INDEXED: gl.constexpr):
    """Warpgroup 1 on the pair whose tile B starts at ``start`` and has scores ``s``: softmax of B from A's max
    (its state rescaled to it), P_B put in B's rope rows for warpgroup 0 (S_B has finished reading them).
    Returns P_B as the P V MMA's register operand, and the state."""
    BN: gl.constexpr = kpe_bufs.shape[1]
    row_l: gl.constexpr = gl.SliceLayout(1, _s_layout(BN))
    p_op_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=_o_layout(), k_width=2)
    qk = _masked(s, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, row_limit, qk_scale,
                 INDEXED, BN)
    mbarrier.wait(bars.index(SCALE0), phase)
    m_a = _stat(stats, M_A).load(row_l)
    scale_a = _stat(stats, SCALE_A).load(row_l)
    p, scale_b, m_new = _softmax_step(qk, m_a, stats, bars, M_B, SCALE_B, SCALE1)
    scale = scale_a * scale_b
    acc = acc * _rows_o(scale)[:, None]
    l_run = l_run * scale + gl.sum(p, axis=1)
    p16 = p.to(kpe_bufs.dtype)
    kpe_bufs.index(1).permute((1, 0)).store(p16)
    fence_async_shared()
    _cta_barrier()
    mbarrier.arrive(bars.index(P1))
    return gl.convert_layout(p16, p_op_l), acc, m_new, l_run


@gluon.jit
def _reset_first(acc, j):
    """The accumulator, zeroed at step 0 (whose P V MMAs read whatever the buffers held)."""
    if j == 0:
        acc = gl.zeros(acc.shape, gl.float32, layout=acc.type.layout)
    return acc


@gluon.jit
def _attend_pairs(q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, k_ptr, k_desc, table_row, lo, hi, row_limit,
                  stride_kb, stride_kt, stride_table, limit, page_size, qk_scale, pairs, INDEXED: gl.constexpr,
                  W: gl.constexpr, TMA: gl.constexpr, COPY_FIRST: gl.constexpr, FP8: gl.constexpr = False,
                  scale_bufs=None, LATE_B_LO: gl.constexpr = False):
    """Warpgroup W's share of keys [lo, hi): (its 64 x 256 output block, the row max, its part of the row sum),
    both warpgroups' state relative to the same max. ``pairs``: the pairs this program ran before (the phases of
    the hand-over and copy mbarriers, each of which completes once a pair). Warpgroup 0 must have issued dims
    [0, 256) of the first tile A.

    Software-pipelined, FlashMLA's way: step j finishes pair j - 1 (softmax, P V) and computes S of pair j, whose
    S MMAs keep the tensor cores busy while the P V MMAs of pair j - 1 drain, and whose parts are copied as soon
    as their last reader is done; the last pair is finished after the loop. The S instructions appear once (a
    second copy of them for the first pair makes ptxas spill ~1 KB), so step 0 finishes no pair: its P V MMAs
    read whatever the buffers hold, and the accumulator is reset after them (an asynchronous MMA cannot sit in a
    run-time branch: its result must leave the branch waited).

    FP8 (``_load_half_fp8``): each half is dequantized by the warpgroup that copied it (``_convert_half``), just
    before its first reader needs it; A's upper half (warpgroup 1's copy, read by S_A) and B's lower half
    (warpgroup 0's, read by S_B) are then announced on their CONV mbarriers. B's lower half is converted after S_A
    is issued, or with ``LATE_B_LO`` in the next front (under P_A V, when its copy has surely landed)."""
    BN: gl.constexpr = kn_bufs.shape[1]
    s_l: gl.constexpr = _s_layout(BN)
    o_l: gl.constexpr = _o_layout()
    row_l: gl.constexpr = gl.SliceLayout(1, s_l)
    p_op_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)
    kn_a = kn_bufs.index(0)
    kpe_a = kpe_bufs.index(0)
    kn_b = kn_bufs.index(1)
    kpe_b = kpe_bufs.index(1)
    acc = gl.zeros([BLOCK_H, HALF], gl.float32, layout=o_l)
    m_run = gl.full([BLOCK_H], float("-inf"), gl.float32, layout=row_l)
    l_run = gl.zeros([BLOCK_H], gl.float32, layout=row_l)
    s = gl.zeros([BLOCK_H, BN], gl.float32, layout=s_l)
    n_pairs = (hi - lo + 2 * BN - 1) // (2 * BN)
    for j in range(n_pairs):
        start = lo + 2 * j * BN  # pair j's tile A (B: start + BN; B may lie past hi: masked, zero-filled)
        phase = (pairs + j - 1) & 1  # pair j - 1's hand-over
        k_phase = (pairs + j) & 1  # pair j's copies
        # S's tile views through an index ptxas cannot prove constant (0: start >= 0), so the S MMAs' shared-memory
        # descriptors are made in the loop instead of hoisted out of it and spilled (28 local loads a step)
        z = gl.where(start < 0, 1, 0)
        kn_s = kn_bufs.index(z + W)
        kpe_s = kpe_bufs.index(z + W)
        if W == 0:
            if j > 0:
                acc, m_run, l_run = _front_wg0(s, acc, m_run, l_run, kn_bufs, kpe_bufs, stats, bars, k_ptr, k_desc,
                                               table_row, start - 2 * BN, hi, row_limit, stride_kb, stride_kt,
                                               stride_table, limit, page_size, qk_scale, phase, True, INDEXED, TMA,
                                               FP8, scale_bufs, FP8 and LATE_B_LO)
            acc = warpgroup_mma(kpe_b.permute((1, 0)), kn_b.slice(0, HALF, dim=1), acc, is_async=True)  # P_B V
            if FP8:
                # A's lower half (this warpgroup's copy; P_B V reads B meanwhile)
                _convert_half(kn_bufs, scale_bufs, bars.index(KREADY + 0), k_phase, 0, 0)
                s = _s_mma(q_smem, qpe_smem, kn_s, kpe_s, s, 0, True, False)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=[acc])
                acc = _reset_first(acc, j)
                _load_half_fp8(kn_bufs, kpe_b, scale_bufs, k_ptr, table_row, start + BN, hi, stride_kb, stride_kt,
                               stride_table, limit, page_size, bars.index(KREADY + 2), 1, 0, True, INDEXED)
                s = _s_part(q_smem, qpe_smem, kn_s, kpe_s, bars, CONV_A_HI, k_phase, s, 1, False, True)
                if not LATE_B_LO:
                    # B's lower half and rope for S_B (warpgroup 1), converted while S_A runs
                    _convert_half(kn_bufs, scale_bufs, bars.index(KREADY + 2), k_phase, 1, 0)
                    mbarrier.arrive(bars.index(CONV_B_LO))
            else:
                if COPY_FIRST:
                    # B's copy out before S_A, whose first half may still be landing: warpgroup 1 needs B soon after
                    # its own copies (pays at 128 rows, where keys come from HBM; at 256 the row blocks share them
                    # in L2 and S_A under P_B V pays more: benchmarks/NOTES.md, thirteenth session)
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
                else:
                    s = _s_part(q_smem, qpe_smem, kn_s, kpe_s, bars, KREADY + 0, k_phase, s, 0, True, False)
                    acc = warpgroup_mma_wait(num_outstanding=1, deps=[acc])
                acc = _reset_first(acc, j)
                # dims [0, 256) and the rope (P_B) of B: this warpgroup read them last
                _load_half(kn_b, kpe_b, k_ptr, k_desc, table_row, start + BN, hi, stride_kb, stride_kt, stride_table,
                           limit, page_size, bars.index(KREADY + 2), 0, True, INDEXED, BN, TMA)
                if COPY_FIRST:
                    s = _s_part(q_smem, qpe_smem, kn_s, kpe_s, bars, KREADY + 0, k_phase, s, 0, True, False)
                s = _s_part(q_smem, qpe_smem, kn_s, kpe_s, bars, KREADY + 1, k_phase, s, 1, False, True)
        else:
            p_op = gl.zeros([BLOCK_H, BN], kn_bufs.dtype, layout=p_op_l)
            if j > 0:
                p_op, acc, m_run, l_run = _front_wg1(s, acc, l_run, kpe_bufs, stats, bars, table_row,
                                                     start - BN, hi, row_limit, stride_kb, stride_kt, stride_table,
                                                     limit, page_size, qk_scale, phase, INDEXED)
            acc = warpgroup_mma(p_op, kn_b.slice(HALF, HALF, dim=1), acc, is_async=True)  # P_B V
            if j > 0:
                mbarrier.wait(bars.index(P0), phase)
                fence_async_shared()
            acc = warpgroup_mma(kpe_a.permute((1, 0)), kn_a.slice(HALF, HALF, dim=1), acc, is_async=True)  # P_A V
            acc = warpgroup_mma_wait(num_outstanding=1, deps=[acc])
            if FP8:
                _load_half_fp8(kn_bufs, kpe_b, scale_bufs, k_ptr, table_row, start + BN, hi, stride_kb, stride_kt,
                               stride_table, limit, page_size, bars.index(KREADY + 3), 1, 1, False, INDEXED)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
                acc = _reset_first(acc, j)
                _load_half_fp8(kn_bufs, kpe_a, scale_bufs, k_ptr, table_row, start, hi, stride_kb, stride_kt,
                               stride_table, limit, page_size, bars.index(KREADY + 1), 0, 1, True, INDEXED)
                # A's upper half first: S_A (warpgroup 0) waits for it
                _convert_half(kn_bufs, scale_bufs, bars.index(KREADY + 1), k_phase, 0, 1)
                mbarrier.arrive(bars.index(CONV_A_HI))
                _convert_half(kn_bufs, scale_bufs, bars.index(KREADY + 3), k_phase, 1, 1)
                s = _s_mma(q_smem, qpe_smem, kn_s, kpe_s, s, 1, True, False)
                s = _s_part(q_smem, qpe_smem, kn_s, kpe_s, bars, CONV_B_LO, k_phase, s, 0, False, True)
            else:
                # dims [256, 512) of B: this warpgroup read them last
                _load_half(kn_b, kpe_b, k_ptr, k_desc, table_row, start + BN, hi, stride_kb, stride_kt, stride_table,
                           limit, page_size, bars.index(KREADY + 3), 1, False, INDEXED, BN, TMA)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
                acc = _reset_first(acc, j)
                # dims [256, 512) and the rope (P_A) of A
                _load_half(kn_a, kpe_a, k_ptr, k_desc, table_row, start, hi, stride_kb, stride_kt, stride_table,
                           limit, page_size, bars.index(KREADY + 1), 1, True, INDEXED, BN, TMA)
                s = _s_part(q_smem, qpe_smem, kn_s, kpe_s, bars, KREADY + 3, k_phase, s, 1, True, False)
                s = _s_part(q_smem, qpe_smem, kn_s, kpe_s, bars, KREADY + 2, k_phase, s, 0, False, True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=[s])
    # the last pair: softmax and P V, no S and no copies after it
    start = lo + 2 * (n_pairs - 1) * BN
    phase = (pairs + n_pairs - 1) & 1
    if W == 0:
        acc, m_run, l_run = _front_wg0(s, acc, m_run, l_run, kn_bufs, kpe_bufs, stats, bars, k_ptr, k_desc, table_row,
                                       start, hi, row_limit, stride_kb, stride_kt, stride_table, limit, page_size,
                                       qk_scale, phase, False, INDEXED, TMA, FP8, scale_bufs, FP8 and LATE_B_LO)
        acc = warpgroup_mma(kpe_b.permute((1, 0)), kn_b.slice(0, HALF, dim=1), acc, is_async=True)  # P_B V
    else:
        p_op, acc, m_run, l_run = _front_wg1(s, acc, l_run, kpe_bufs, stats, bars, table_row, start + BN, hi,
                                             row_limit, stride_kb, stride_kt, stride_table, limit, page_size, qk_scale,
                                             phase, INDEXED)
        acc = warpgroup_mma(p_op, kn_b.slice(HALF, HALF, dim=1), acc, is_async=True)  # P_B V
        mbarrier.wait(bars.index(P0), phase)
        fence_async_shared()
        acc = warpgroup_mma(kpe_a.permute((1, 0)), kn_a.slice(HALF, HALF, dim=1), acc, is_async=True)  # P_A V
    acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
    return acc, m_run, l_run, pairs + n_pairs


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
def _attend_segment(q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, q_ptr, seq, row_block, s_q, h_q, stride_qb,
                    stride_qs, stride_qh, k_ptr, k_desc, table_row, lo, hi, row_limit, stride_kb, stride_kt,
                    stride_table, limit, page_size, qk_scale, pairs, segs, INDEXED: gl.constexpr, W: gl.constexpr,
                    TMA: gl.constexpr, COPY_FIRST: gl.constexpr, FP8: gl.constexpr = False, scale_bufs=None,
                    LATE_B_LO: gl.constexpr = False):
    """Warpgroup W over one segment, keys [lo, hi) (``_attend_pairs``'s arguments) for the query rows of
    ``_load_q_half``'s: its half of Q copied (and by warpgroup 0 the first tile's first half), both halves of Q
    awaited, the pairs, then both row sums (``_row_sum``). ``segs``: the segments this program ran before (the
    phases of Q's mbarriers). Returns (acc, m, l, pairs). Both warpgroups must be done with every buffer."""
    BN: gl.constexpr = kn_bufs.shape[1]
    _load_q_half(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh,
                 bars.index(QREADY + W), W)
    if W == 0:  # dims [0, 256) of the first tile (_attend_pairs copies the rest)
        if FP8:
            _load_half_fp8(kn_bufs, kpe_bufs.index(0), scale_bufs, k_ptr, table_row, lo, hi, stride_kb, stride_kt,
                           stride_table, limit, page_size, bars.index(KREADY + 0), 0, 0, False, INDEXED)
        else:
            _load_half(kn_bufs.index(0), kpe_bufs.index(0), k_ptr, k_desc, table_row, lo, hi, stride_kb, stride_kt,
                       stride_table, limit, page_size, bars.index(KREADY + 0), 0, False, INDEXED, BN, TMA)
    mbarrier.wait(bars.index(QREADY + 0), segs & 1)
    mbarrier.wait(bars.index(QREADY + 1), segs & 1)
    acc, m_i, l_i, pairs = _attend_pairs(q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, k_ptr, k_desc, table_row,
                                         lo, hi, row_limit, stride_kb, stride_kt, stride_table, limit, page_size,
                                         qk_scale, pairs, INDEXED, W, TMA, COPY_FIRST, FP8, scale_bufs, LATE_B_LO)
    return acc, m_i, _row_sum(stats, bars, l_i, segs, W, BN), pairs


@gluon.jit
def _decode_wg(W: gl.constexpr, COPY_FIRST: gl.constexpr, args, LATE_B_LO: gl.constexpr = False):
    """Warpgroup W's run over the program's segments (decode_sm90's loop); ``args``: the kernel's tuple (below).
    (Arguments reach a partition as tensors, constexprs included: the tile size is read off the buffers' shape,
    and what must be a constexpr, W, COPY_FIRST and LATE_B_LO, is a literal of the partition's function.)"""
    (q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb, stride_qs,
     stride_qh, stride_kb, stride_kt, stride_btp, stride_btb, stride_seqlens, stride_ob, stride_os, stride_oh,
     stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len, qk_scale, k_desc, row_block, part,
     g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, scale_bufs, CAUSAL, TMA) = args
    BN: gl.constexpr = kn_bufs.shape[1]
    FP8: gl.constexpr = k_ptr.dtype.element_ty == gl.uint8  # (the FP8 cache comes as bytes)
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
            acc, m_i, l_i, pairs = _attend_segment(q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, q_ptr, seq,
                                                   row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, k_ptr, k_desc,
                                                   bt_row, tok_lo, tok_hi, row_limit, stride_kb, stride_kt, stride_btp,
                                                   num_blocks, page_size, qk_scale, pairs, segs, False, W, TMA,
                                                   COPY_FIRST, FP8, scale_bufs, LATE_B_LO)
            segs += 1

            # this warpgroup's 256 columns; warpgroup 0 writes the lse
            _store_segment(acc, m_i, l_i, seq, part, g == g_lo, (g == seq_g0) & (seg_hi == seq_g0 + n), rows_o,
                           row_ok_o, offs_o, rows_per_seq, h_q, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_ob,
                           stride_os, stride_oh, stride_lb, stride_lh, stride_ls, W == 0)
        g = seg_hi
        seq_g0 += n
        seq += 1


@gluon.jit
def _decode_wg0(args):
    _decode_wg(0, False, args)


@gluon.jit
def _decode_wg0_copy_first(args):
    _decode_wg(0, True, args)


@gluon.jit
def _decode_wg0_late_b_lo(args):
    _decode_wg(0, False, args, True)


@gluon.jit
def _decode_wg1(args):
    _decode_wg(1, False, args)  # (COPY_FIRST changes only warpgroup 0's schedule)


@gluon.jit
def _buffers_ws(dtype: gl.constexpr, BN: gl.constexpr, TMA: gl.constexpr, FP8: gl.constexpr = False):
    """Q (72 KB), one pair of 64-key tiles (144 KB), the row statistics, the mbarriers (initialized; with
    ``FP8`` the two CONV ones too) and, with ``FP8``, the scales of the four half-tiles (``_load_half_fp8``;
    else ``stats`` stands in, unused)."""
    wide_sl: gl.constexpr = _tile_layout()
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DV], wide_sl)
    qpe_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DR], wide_sl)
    kn_bufs = gl.allocate_shared_memory(dtype, [2, BN, DV], wide_sl)
    kpe_bufs = gl.allocate_shared_memory(dtype, [2, BN, DR], wide_sl)
    stats = gl.allocate_shared_memory(gl.float32, [8 * BLOCK_H], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    bars = gl.allocate_shared_memory(gl.int64, [NUM_BARS_FP8 if FP8 else NUM_BARS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(4):
        mbarrier.init(bars.index(i), count=1)
    for i in gl.static_range(KREADY, QREADY):  # TMA: one arrival (with the bytes); cp.async: each thread's
        mbarrier.init(bars.index(i), count=1 if TMA else WG_WARPS * 32)
    for i in gl.static_range(QREADY, SEG_DONE):
        mbarrier.init(bars.index(i), count=WG_WARPS * 32)
    mbarrier.init(bars.index(SEG_DONE), count=2)
    if FP8:
        mbarrier.init(bars.index(CONV_A_HI), count=1)
        mbarrier.init(bars.index(CONV_B_LO), count=1)
        # (after the others, so the 16-bit kernel's buffers keep their offsets)
        scale_bufs = gl.allocate_shared_memory(gl.float32, [4, 2, BN], gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))
    else:
        scale_bufs = stats
    return q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, scale_bufs


@gluon.jit
def _decode_ws_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, num_blocks, page_size, max_len, num_parts, qk_scale, k_desc,
    BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, MIN_BLOCKS_PER_PART: gl.constexpr, CAUSAL: gl.constexpr,
    ROWS_FIRST: gl.constexpr, FP8: gl.constexpr, RAW_STAGES: gl.constexpr, TMA: gl.constexpr,
    COPY_FIRST: gl.constexpr, LATE_B_LO: gl.constexpr = False,
):
    gl.static_assert(BLOCK_N == 64, "the warp-specialized kernel takes 64-key tiles")
    gl.static_assert(not (FP8 and TMA), "the FP8 cache is copied by cp.async")
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, scale_bufs = _buffers_ws(dtype, BLOCK_N, TMA, FP8)
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
            stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len, qk_scale, k_desc,
            row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, stats, bars, scale_bufs,
            CAUSAL, TMA)
    if COPY_FIRST:
        gl.warp_specialize([(_decode_wg0_copy_first, (args,)), (_decode_wg1, (args,))], [WG_WARPS], [WORKER_REGS])
    elif LATE_B_LO:
        gl.static_assert(FP8, "LATE_B_LO: a schedule of the FP8 cache's conversions")
        gl.warp_specialize([(_decode_wg0_late_b_lo, (args,)), (_decode_wg1, (args,))], [WG_WARPS], [WORKER_REGS])
    else:
        gl.warp_specialize([(_decode_wg0, (args,)), (_decode_wg1, (args,))], [WG_WARPS], [WORKER_REGS])


# -- host side -----------------------------------------------------------------------------------------------------
@functools.cache
def ws_supported() -> bool:
    """Whether this Triton builds the kernel: from 3.7 on (3.6's ConvertTritonGPUToLLVM fails on it since the
    descriptor argument reaches the partitions; ``decode_sm90`` then runs the lockstep kernel instead). Asked on
    every call, so cached."""
    from ..configs import triton_at_least

    return triton_at_least("3.7")

def ws_desc_type() -> str:
    """``k_desc``'s signature type, for check-configs."""
    return f"tensordesc<bf16[64, 64],{_tile_layout()!r}>"


def ws_tma(k_cache, config) -> bool:
    """Whether the key tiles can come by TMA: pages of a whole number of 64-key tiles laid end to end (every
    engine's cache; a padded page stride takes cp.async), token rows addressable by int32, and the entry not
    turning it off (``TMA``: false)."""
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    return (bool(config.get("TMA", True)) and page_size % 64 == 0 and k_cache.stride(0) == page_size * k_cache.stride(1)
            and num_blocks * page_size < 2**31)


def ws_launch_args(k_cache, config):
    """``_decode_ws_kernel``'s ``k_desc`` (the cache as [tokens, 576], 64 x 64 boxes), ``TMA`` and the entry's
    ``COPY_FIRST`` (16-bit: warpgroup 0 copies B's first half before it issues S of A; default off) or
    ``LATE_B_LO`` (FP8: B's lower half converted in the next front; default off). Without TMA (always for the
    FP8 cache) the descriptor is a one-row stand-in that the kernel never reads (the argument exists either way)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    fp8 = k_cache.dtype == torch.uint8  # (the FP8 cache: cp.async only; a 16-bit view for the stand-in)
    tma_ok = ws_tma(k_cache, config) and not fp8
    src = k_cache.view(torch.bfloat16) if fp8 else k_cache
    rows = src.shape[0] * src.shape[1] if tma_ok else 1
    desc = TensorDescriptor(src, [max(rows, 1), src.shape[3]], [src.stride(1), 1], [64, 64], _tile_layout())
    return dict(k_desc=desc, TMA=tma_ok, **ws_schedule(config, fp8))


def ws_schedule(config, fp8: bool) -> dict:
    """The entry's schedule constexprs (launch and check-configs alike): ``COPY_FIRST`` for 16-bit caches,
    ``LATE_B_LO`` for the FP8 cache."""
    if fp8:
        return dict(COPY_FIRST=False, **(dict(LATE_B_LO=True) if config.get("LATE_B_LO", False) else {}))
    return dict(COPY_FIRST=bool(config.get("COPY_FIRST", False)))
