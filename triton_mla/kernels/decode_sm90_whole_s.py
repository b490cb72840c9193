"""Dense MLA decode for Hopper (sm90) with each warpgroup computing the whole of S (warp-specialized, Gluon).

Why: ``decode_sm90`` splits S = QK^T's key columns between its two warpgroups, so each tile's row max and row sum
cross warpgroups through shared memory (8 CTA barriers a tile in its PTX) and the two run in lockstep: the tensor
cores idle through every softmax, and a 64-key tile takes ~3.2 us at 128 query rows where its MMAs need ~1.2 us
(``benchmarks/NOTES.md``). Here each warpgroup computes all 64 key columns of S (64-column MMAs, Q read once a
warpgroup), the softmax with its row statistics in its own registers, and O += PV for its own 256 of the 512 output
columns, with P in registers as the MMA's A operand. The warpgroups share only the key tiles (each copies half of
every tile and both wait for both halves; a tile's buffer is refilled once both are done with it), so nothing else
passes between them and one's softmax runs while the other's MMAs do. The price is S computed twice: 1.5x the
tensor work of a tile.

Same split plan, partial slots and combine as ``decode_sm90`` / ``decode.py``. Shapes: d = 576, dv = 512, bf16 /
fp16, any number of rows (blocks of 64); 64-key tiles lying in one page each (``decode_sm90.page_tile``: one page
look-up a tile, made a tile ahead). Config key ``WHOLE_S``.
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
    _tile_page,
)

HALF = gl.constexpr(256)  # output columns a warpgroup, and the dims of a tile each warpgroup copies
BLOCK_N = gl.constexpr(64)
NUM_BUF = gl.constexpr(2)
WG_WARPS = gl.constexpr(4)
WORKER_REGS = gl.constexpr(256)

# mbarriers: [index] (arrivals that complete a phase)
KREADY = gl.constexpr(0)  # + 2 * buffer + warpgroup: that warpgroup's half of the tile landed (128 cp.async)
EMPTY = gl.constexpr(4)  # + buffer: both warpgroups are done with the tile (2)
QREADY = gl.constexpr(6)  # + warpgroup: its half of Q landed (128 cp.async)
SEG_DONE = gl.constexpr(8)  # both warpgroups are done with a segment's Q and tiles (2)
NUM_BARS = gl.constexpr(9)


@gluon.constexpr_function
def _s_layout():
    """S [64, 64] of one warpgroup: a row's 64 columns within 4 lanes of one warp, so its max and sum need no
    shared memory."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])


@gluon.constexpr_function
def _o_layout():
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 256, 16])


@gluon.jit
def _copy_half(kn, kpe, k_ptr, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, bar,
               tile_page, W: gl.constexpr):
    """cp.async of dims [256 W, 256 W + 256) of keys [start, start + 64), and the rope dims for W = 1 (invalid keys
    zero-filled: P is 0 there, and 0 * garbage could be NaN); ``bar`` completes when the 128 threads' copies land."""
    nope_l: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [WG_WARPS, 1], [1, 0])
    tok_off, tok_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                   False, BLOCK_N, gl.SliceLayout(1, nope_l), tile_page)
    offs = W * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, nope_l))
    _async_load(kn.slice(W * HALF, HALF, dim=1), k_ptr + tok_off[:, None] + offs[None, :], mask=tok_ok[:, None])
    if W == 1:
        pe_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WG_WARPS, 1], [1, 0])
        tok_off, tok_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                       False, BLOCK_N, gl.SliceLayout(1, pe_l), tile_page)
        offs_pe = DV + gl.arange(0, DR, layout=gl.SliceLayout(0, pe_l))
        _async_load(kpe, k_ptr + tok_off[:, None] + offs_pe[None, :], mask=tok_ok[:, None])
    cp.mbarrier_arrive(bar, increment_count=False)


@gluon.jit
def _copy_q_half(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, bar,
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
def _release(bars, index):
    """This warpgroup is done with a buffer: once all its threads are (the barrier), one thread arrives."""
    _cta_barrier()
    mbarrier.arrive(bars.index(index))


@gluon.jit
def _attend(q_smem, qpe_smem, kn_bufs, kpe_bufs, bars, k_ptr, table_row, lo, hi, row_limit, stride_kb, stride_kt,
            stride_table, limit, page_size, qk_scale, tiles, W: gl.constexpr):
    """Warpgroup W's (64 x 256 output block, row max, row sum) over keys [lo, hi) (lo a multiple of 64). ``tiles``
    counts the tiles this program ran before (buffer and mbarrier phase). Both warpgroups compute the same S, max
    and sum (same instructions on the same data), so their halves of O agree on the scale."""
    s_l: gl.constexpr = _s_layout()
    o_l: gl.constexpr = _o_layout()
    p_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)
    key_l: gl.constexpr = gl.SliceLayout(0, s_l)
    dtype: gl.constexpr = q_smem.dtype
    acc = gl.zeros([BLOCK_H, HALF], gl.float32, layout=o_l)
    m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_l))
    l_i = gl.zeros([BLOCK_H], gl.float32, layout=gl.SliceLayout(1, s_l))
    n_tiles = (hi - lo + BLOCK_N - 1) // BLOCK_N
    # the segment's first tiles: the buffers are free (the segment before ended with SEG_DONE)
    for i in gl.static_range(NUM_BUF):
        if i < n_tiles:
            b = (tiles + i) % NUM_BUF
            page = _tile_page(table_row, lo + i * BLOCK_N, hi, stride_table, limit, page_size)
            _copy_half(kn_bufs.index(b), kpe_bufs.index(b), k_ptr, table_row, lo + i * BLOCK_N, hi, stride_kb,
                       stride_kt, stride_table, limit, page_size, bars.index(KREADY + 2 * b + W), page, W)
    for j in range(n_tiles):
        t = tiles + j
        b = t % NUM_BUF
        phase = (t // NUM_BUF) & 1
        start = lo + j * BLOCK_N
        nxt = start + NUM_BUF * BLOCK_N
        # the page of the tile this buffer takes next, looked up now so that its copy waits on no load
        page = _tile_page(table_row, nxt, hi, stride_table, limit, page_size)
        kn = kn_bufs.index(b)
        kpe = kpe_bufs.index(b)
        mbarrier.wait(bars.index(KREADY + 2 * b), phase)
        mbarrier.wait(bars.index(KREADY + 2 * b + 1), phase)
        fence_async_shared()
        s = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, layout=s_l)
        s = warpgroup_mma(q_smem, kn.permute((1, 0)), s, use_acc=False, is_async=True)
        s = warpgroup_mma(qpe_smem, kpe.permute((1, 0)), s, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=[s])

        key_pos = start + gl.arange(0, BLOCK_N, layout=key_l)
        visible = (key_pos < hi)[None, :] & (key_pos[None, :] < row_limit[:, None])
        qk = gl.where(visible, s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(qk, axis=1))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(qk - m_safe[:, None])
        alpha = gl.exp2(m_i - m_safe)
        l_i = l_i * alpha + gl.sum(p, axis=1)
        m_i = m_new
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_l))[:, None]
        pa = gl.convert_layout(p.to(dtype), p_l)
        acc = warpgroup_mma(pa, kn.slice(W * HALF, HALF, dim=1), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        _release(bars, EMPTY + b)
        if j + NUM_BUF < n_tiles:
            # this warpgroup's half of tile j + NUM_BUF, once the other warpgroup is done with tile j too
            mbarrier.wait(bars.index(EMPTY + b), phase)
            _copy_half(kn, kpe, k_ptr, table_row, nxt, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                       bars.index(KREADY + 2 * b + W), page, W)
    return acc, m_i, l_i, tiles + n_tiles


@gluon.jit
def _decode_wg(W: gl.constexpr, q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr,
               lse_part_ptr, stride_qb, stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb,
               stride_seqlens, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks,
               page_size, max_len, qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs,
               kpe_bufs, bars, CAUSAL):
    """Warpgroup W's run over the program's segments (``decode_sm90``'s loop). Arguments reach a partition as
    values, constexprs included (CAUSAL is then a runtime flag)."""
    s_l: gl.constexpr = _s_layout()
    o_l: gl.constexpr = _o_layout()
    rows_per_seq = s_q * h_q
    rows_s = row_block * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, s_l))
    rows_o = row_block * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, o_l))
    row_ok_o = rows_o < rows_per_seq
    offs_o = W * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, o_l))
    tiles = 0
    segs = 0
    g = g_lo
    while g < g_hi:
        n, seg_hi, tok_lo, tok_hi, row_limit = _segment(seqlens_ptr, stride_seqlens, seq, g, g_hi, seq_g0, max_len,
                                                        rows_s, s_q, h_q, BLOCK_N, CAUSAL)
        if n > 0:
            if segs > 0:
                # both warpgroups are done with the previous segment's Q and tiles
                mbarrier.wait(bars.index(SEG_DONE), (segs - 1) & 1)
            bt_row = block_table_ptr + seq.to(gl.int64) * stride_btb
            _copy_q_half(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh,
                         bars.index(QREADY + W), W)
            mbarrier.wait(bars.index(QREADY + 0), segs & 1)
            mbarrier.wait(bars.index(QREADY + 1), segs & 1)
            acc, m_i, l_i, tiles = _attend(q_smem, qpe_smem, kn_bufs, kpe_bufs, bars, k_ptr, bt_row, tok_lo, tok_hi,
                                           row_limit, stride_kb, stride_kt, stride_btp, num_blocks, page_size,
                                           qk_scale, tiles, W)
            mbarrier.arrive(bars.index(SEG_DONE))  # _attend ended with a barrier of this warpgroup's threads
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
                qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, bars,
                CAUSAL):
    _decode_wg(0, q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb,
               stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb, stride_seqlens, stride_ob,
               stride_os, stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len,
               qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, bars, CAUSAL)


@gluon.jit
def _decode_wg1(q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb,
                stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb, stride_seqlens, stride_ob,
                stride_os, stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len,
                qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, bars,
                CAUSAL):
    _decode_wg(1, q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb,
               stride_qs, stride_qh, stride_kb, stride_kt, stride_btp, stride_btb, stride_seqlens, stride_ob,
               stride_os, stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len,
               qk_scale, row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, bars, CAUSAL)


@gluon.jit
def _decode_whole_s_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, num_blocks, page_size, max_len, num_parts, qk_scale,
    MIN_BLOCKS_PER_PART: gl.constexpr, CAUSAL: gl.constexpr, ROWS_FIRST: gl.constexpr,
):
    """``decode_sm90._decode_sm90_kernel``'s arguments; 4 warps (warpgroup 0), warpgroup 1 the worker partition."""
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    wide_sl: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DV], wide_sl)
    qpe_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DR], wide_sl)
    kn_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, DV], wide_sl)
    kpe_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, DR], wide_sl)
    bars = gl.allocate_shared_memory(gl.int64, [NUM_BARS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(KREADY, EMPTY):
        mbarrier.init(bars.index(i), count=WG_WARPS * 32)
    for i in gl.static_range(EMPTY, QREADY):
        mbarrier.init(bars.index(i), count=2)
    for i in gl.static_range(QREADY, SEG_DONE):
        mbarrier.init(bars.index(i), count=WG_WARPS * 32)
    mbarrier.init(bars.index(SEG_DONE), count=2)

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
            row_block, part, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, kn_bufs, kpe_bufs, bars, CAUSAL)
    gl.warp_specialize([(_decode_wg0, args), (_decode_wg1, args)], [WG_WARPS], [WORKER_REGS])


def applies(config, fp8, page_tile) -> bool:
    """Whether a ``decode_sm90`` call runs this kernel: the config asks for it (``WHOLE_S``), a 16-bit cache, 64-key
    tiles each in one page."""
    return bool(config.get("WHOLE_S", False)) and not fp8 and config["BLOCK_N"] == BLOCK_N.value and page_tile


def compile_specs(entry):
    """(name, fn, types, constexprs, warps, stages) for check-configs."""
    ptrs = dict(q_ptr="*bf16", k_ptr="*bf16", out_ptr="*bf16", lse_ptr="*fp32", o_part_ptr="*fp32",
                lse_part_ptr="*fp32")
    for causal in (False, True):
        yield (f"decode_sm90_whole_s(causal={causal})", _decode_whole_s_kernel, ptrs,
               dict(MIN_BLOCKS_PER_PART=entry["MIN_BLOCKS_PER_PART"], CAUSAL=causal,
                    ROWS_FIRST=bool(entry.get("ROWS_FIRST", False))), WG_WARPS.value, 1)
