"""Dense MLA decode for Hopper (sm90) at 64 query rows a program, written in Gluon.

Why a second kernel: ``tl.dot`` gives all 8 warps to the rows of a dot whose result feeds another dot,
so with 64 rows both warpgroups compute the same QK^T and the 64 x 512 fp32 accumulator spills
(``benchmarks/NOTES.md``). Here the layouts are explicit, FlashMLA's way: the two warpgroups split the
key columns of S = QK^T (no duplicated work) and the 512 output columns of O = PV (64 x 256 fp32 each),
exchanging P through shared memory. Q stays in shared memory for the whole segment; key tiles arrive
by ``cp.async`` (any page size, any strides, bad page ids clamped) into ``NUM_BUF`` buffers, and each
tile serves both dots (V is the first 512 dims of K).

The split plan, the partial-result slots and the combine are those of ``decode.py`` (same plan
derivation, ported to Gluon below), so ``decode._combine`` merges what this kernel writes.
Shapes: d = 576, dv = 512 (DeepSeek), bf16/fp16, any number of rows (blocks of 64).
"""

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from ._common import ALIGN_MAX_KEYS, FP_FUSION, LN2, LOG2E, cdiv
from .decode import _combine, launch_tensors

# renamed between Triton 3.6 (thread_barrier) and 3.8 (barrier)
_cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
# renamed between Triton 3.6 (async_copy_global_to_shared) and 3.9 (async_load)
_async_load = getattr(cp, "async_load", None) or cp.async_copy_global_to_shared

DV = gl.constexpr(512)
DR = gl.constexpr(64)
BLOCK_H = gl.constexpr(64)
NUM_WARPS = gl.constexpr(8)


# -- the split plan (decode.py's, see _common) --------------------------------------------------------

@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _seq_blocks(seqlens_ptr, stride_seqlens, idx, mask, max_len, BLOCK_N: gl.constexpr):
    length = gl.load(seqlens_ptr + idx * stride_seqlens, mask=mask, other=0)
    length = gl.minimum(gl.maximum(length, 0), max_len)
    return gl.where(mask, (length + BLOCK_N - 1) // BLOCK_N, 0)


@gluon.jit
def _plan_totals(seqlens_ptr, stride_seqlens, batch, max_len, BLOCK_N: gl.constexpr, WARPS: gl.constexpr = NUM_WARPS):
    """(blocks of all sequences, blocks of the longest)."""
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    total = 0
    longest = 0
    for b0 in range(0, batch, 32 * WARPS):
        idx = b0 + gl.arange(0, 32 * WARPS, layout=layout)
        n = _seq_blocks(seqlens_ptr, stride_seqlens, idx, idx < batch, max_len, BLOCK_N)
        total += gl.sum(n, axis=0)
        longest = gl.maximum(longest, gl.max(n, axis=0))
    return total, longest


@gluon.jit
def _effective_parts(total, longest, batch, num_parts, MIN_BLOCKS_PER_PART: gl.constexpr,
                     BLOCK_N: gl.constexpr):
    """``_common.effective_parts`` (the same count, so the combine finds the parts this plan makes)."""
    parts = gl.maximum(gl.minimum(num_parts, total // MIN_BLOCKS_PER_PART), 1)
    # (not where parts are long: there a 16th fewer SMs costs more than the cuts did)
    short = total.to(gl.int64) * BLOCK_N <= ALIGN_MAX_KEYS * parts
    uniform = ((total == batch * longest) & (longest > 0) & short).to(gl.int32)
    found = 0
    best = parts
    for d in gl.static_range(17):
        p = gl.maximum(parts - d, 1)
        ok = uniform * (1 - found) * (d <= parts // 16).to(gl.int32) * (
            ((batch % p) == 0) | ((p % batch) == 0)).to(gl.int32)
        best += ok * (p - best)
        found += ok
    return best


@gluon.jit
def _find_sequence(seqlens_ptr, stride_seqlens, batch, g, max_len, BLOCK_N: gl.constexpr,
                   WARPS: gl.constexpr = NUM_WARPS, EMPTY_AT_G: gl.constexpr = False):
    """The sequence holding global block ``g`` and the global index of its first block (EMPTY_AT_G: the first
    empty sequence at ``g`` if there is one, as ``_common.find_sequence``)."""
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    count = 0
    start = 0
    running = 0
    for b0 in range(0, batch, 32 * WARPS):
        idx = b0 + gl.arange(0, 32 * WARPS, layout=layout)
        n = _seq_blocks(seqlens_ptr, stride_seqlens, idx, idx < batch, max_len, BLOCK_N)
        cu_end = running + gl.associative_scan(n, 0, _add)
        if EMPTY_AT_G:
            done = ((cu_end < g) | ((cu_end == g) & (n > 0))) & (idx < batch)
        else:
            done = (cu_end <= g) & (idx < batch)
        count += gl.sum(done.to(gl.int32), axis=0)
        start = gl.maximum(start, gl.max(gl.where(done, cu_end, 0), axis=0))
        running += gl.sum(n, axis=0)
    return count, start


# -- loads --------------------------------------------------------------------------------------------

@gluon.jit
def _id_offsets(ids, stride_kb, stride_kt, limit, page_size):
    """``_key_offsets`` of loaded top-k entries ``ids`` (-1 past the list's end)."""
    ok = (ids >= 0) & (ids < limit)
    ids = gl.where(ok, ids, 0)
    page = ids // page_size
    return page.to(gl.int64) * stride_kb + (ids - page * page_size).to(gl.int64) * stride_kt, ok


@gluon.jit
def _entries(idx_row, start, hi, stride_ik, BLOCK_N: gl.constexpr, layout: gl.constexpr):
    """Top-k entries [start, start + BLOCK_N) of a row, -1 from ``hi`` on, in ``layout``."""
    pos = start + gl.arange(0, BLOCK_N, layout=layout)
    return gl.load(idx_row + pos.to(gl.int64) * stride_ik, mask=pos < hi, other=-1)


@gluon.jit
def _tile_page(table_row, start, hi, stride_table, limit, page_size):
    """Paged keys, pages a whole number of tiles (``PAGE_TILE``): the tile at ``start`` lies in one page, so one
    look-up serves its keys: that page's id (clamped into [0, ``limit``); 0 for a tile from ``hi`` on, whose keys
    are all masked). An int32 page, not the tile's int64 offset, rides the tile loop: one register fewer made
    Triton 3.6's build of the 64-row kernel spill as little as before."""
    page = gl.load(table_row + (start // page_size) * stride_table, mask=start < hi, other=0)
    return gl.minimum(gl.maximum(page, 0), limit - 1)


@gluon.jit
def _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, INDEXED: gl.constexpr,
                 BLOCK_N: gl.constexpr, layout: gl.constexpr, tile_page=None):
    """Element offsets in the cache of keys [start, start + BLOCK_N) and which of them are valid, in the 1-D
    ``layout`` of whatever uses them (a convert_layout would cost shared-memory round trips and barriers on
    every tile).

    Paged (dense decode): key t is position t of a sequence, its page read from the block-table row
    ``table_row``; keys below ``hi`` (the segment's end) are valid; a bad page id is clamped into
    [0, ``limit`` = num_blocks). Indexed (sparse): key t is entry t of a top-k row ``table_row``, a flat token
    id page * page_size + offset; it is valid below ``hi`` (the top-k length) if the id lies in
    [0, ``limit`` = number of tokens), and an invalid key reads token 0 under a mask. ``tile_page``: paged keys whose
    tile lies in one page, that page, from ``_tile_page`` (no look-up here; BLOCK_N divides ``start``)."""
    pos = start + gl.arange(0, BLOCK_N, layout=layout)
    in_range = pos < hi
    if tile_page is not None:
        # pos & (BLOCK_N - 1), not pos - start: an offset that varies with the tile is not hoisted out of the tile
        # loop (held there, the per-key offsets made ptxas spill); int32 within a page (``page_tile``)
        return (tile_page.to(gl.int64) * stride_kb
                + ((start % page_size + (pos & (BLOCK_N - 1))) * stride_kt).to(gl.int64)), in_range
    if INDEXED:
        return _id_offsets(_entries(table_row, start, hi, stride_table, BLOCK_N, layout), stride_kb, stride_kt,
                           limit, page_size)
    page = gl.load(table_row + (pos // page_size) * stride_table, mask=in_range, other=0)
    page = gl.minimum(gl.maximum(page, 0), limit - 1).to(gl.int64)
    return page * stride_kb + (pos % page_size).to(gl.int64) * stride_kt, in_range


@gluon.jit
def _issue_tile(kn_buf, kpe_buf, k_ptr, table_row, start, hi, stride_kb, stride_kt, stride_table, limit,
                page_size, INDEXED: gl.constexpr, BLOCK_N: gl.constexpr, tile_page=None):
    """cp.async of key tile [start, start + BLOCK_N) (``_key_offsets``, ``tile_page`` as there): 512 + 64 dims a token.
    Invalid keys are zero-filled (P is 0 there, and 0 * garbage could be NaN)."""
    nope_l: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [NUM_WARPS, 1], [1, 0])
    pe_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [NUM_WARPS, 1], [1, 0])
    tok_off, tok_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                   INDEXED, BLOCK_N, gl.SliceLayout(1, nope_l), tile_page)
    offs = gl.arange(0, DV, layout=gl.SliceLayout(0, nope_l))
    _async_load(kn_buf, k_ptr + tok_off[:, None] + offs[None, :], mask=tok_ok[:, None])
    tok_off, tok_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                   INDEXED, BLOCK_N, gl.SliceLayout(1, pe_l), tile_page)
    offs_pe = gl.arange(0, DR, layout=gl.SliceLayout(0, pe_l))
    _async_load(kpe_buf, k_ptr + tok_off[:, None] + DV + offs_pe[None, :], mask=tok_ok[:, None])


@gluon.jit
def _q_offsets(seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, layout: gl.constexpr,
               ROWS: gl.constexpr = BLOCK_H):
    rows = row_block * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
    q_off = (seq.to(gl.int64) * stride_qb + (rows // h_q).to(gl.int64) * stride_qs
             + (rows % h_q).to(gl.int64) * stride_qh)
    return q_off, rows < s_q * h_q


@gluon.jit
def _issue_q(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh):
    nope_l: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [NUM_WARPS, 1], [1, 0])
    pe_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [NUM_WARPS, 1], [1, 0])
    q_off, row_ok = _q_offsets(seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, nope_l)
    offs = gl.arange(0, DV, layout=gl.SliceLayout(0, nope_l))
    _async_load(q_smem, q_ptr + q_off[:, None] + offs[None, :], mask=row_ok[:, None])
    q_off, row_ok = _q_offsets(seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, pe_l)
    offs_pe = gl.arange(0, DR, layout=gl.SliceLayout(0, pe_l))
    _async_load(qpe_smem, q_ptr + q_off[:, None] + DV + offs_pe[None, :], mask=row_ok[:, None])


# -- FP8 cache (triton_mla.fp8: 512 e4m3 bytes, 4 fp32 scales, 64 bf16 rope values = 656 bytes a token) --

@gluon.jit
def _offsets_as(raw_off, raw_ok, table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                INDEXED: gl.constexpr, BLOCK_N: gl.constexpr, LANE_ROWS: gl.constexpr, layout: gl.constexpr,
                tile_page=None):
    """The value-byte copy's key offsets and validity (``raw_off``, ``raw_ok``) in another copy's key ``layout``.
    With a warp over 8 keys (LANE_ROWS = 8) the copies place keys alike, so the conversion moves no data and the
    look-up is done once; otherwise the keys are looked up again in ``layout`` (none given ``tile_page``)."""
    if tile_page is not None:
        off, ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, INDEXED,
                               BLOCK_N, layout, tile_page)
    elif LANE_ROWS == 8:
        off = gl.convert_layout(raw_off, layout)
        ok = gl.convert_layout(raw_ok, layout)
    else:
        off, ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, INDEXED,
                               BLOCK_N, layout)
    return off, ok


@gluon.constexpr_function
def _fp8_raw_layout(WARPS, LANE_ROWS):
    """``_issue_fp8_tile``'s copy of the value bytes: 16 a thread, a warp's lanes over LANE_ROWS keys."""
    return gl.BlockedLayout([1, 16], [LANE_ROWS, 32 // LANE_ROWS], [WARPS, 1], [1, 0])


@gluon.constexpr_function
def fp8_copy_keys(WARPS, LANE_ROWS):
    """The layout of a tile's keys in ``_issue_fp8_tile``'s copy of the value bytes."""
    return gl.SliceLayout(1, _fp8_raw_layout(WARPS, LANE_ROWS))


@gluon.jit
def _issue_fp8_tile(stage, stage_scale, kpe_buf, k_ptr, table_row, start, hi, stride_kb, stride_kt, stride_table,
                    limit, page_size, INDEXED: gl.constexpr, BLOCK_N: gl.constexpr, WARPS: gl.constexpr = NUM_WARPS,
                    LANE_ROWS: gl.constexpr = 1, ids=None, tile_page=None):
    """cp.async of a tile's raw e4m3 bytes and scales into the staging buffers and its rope values straight
    into ``kpe_buf``; invalid keys read as 0 (and scale 0). LANE_ROWS: a warp's lanes spread over that many keys
    of the value bytes (fewer keys a thread: fewer page look-ups, each an integer division). ``ids``: the tile's
    top-k entries, loaded ahead in ``fp8_copy_keys(WARPS, LANE_ROWS)`` (else read here); ``tile_page``: paged keys
    whose tile lies in one page, as ``_key_offsets``."""
    raw_l: gl.constexpr = _fp8_raw_layout(WARPS, LANE_ROWS)
    if ids is None:
        raw_off, raw_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                       INDEXED, BLOCK_N, gl.SliceLayout(1, raw_l), tile_page)
    else:
        raw_off, raw_ok = _id_offsets(ids, stride_kb, stride_kt, limit, page_size)
    offs = gl.arange(0, DV, layout=gl.SliceLayout(0, raw_l))
    _async_load(stage, k_ptr + raw_off[:, None] + offs[None, :], mask=raw_ok[:, None])
    sc_l: gl.constexpr = gl.BlockedLayout([1, 1], [8, 4], [WARPS, 1], [1, 0])
    pe_l: gl.constexpr = gl.BlockedLayout([1, 8], [max(4, LANE_ROWS), 32 // max(4, LANE_ROWS)], [WARPS, 1], [1, 0])
    tok_off, tok_ok = _offsets_as(raw_off, raw_ok, table_row, start, hi, stride_kb, stride_kt, stride_table, limit,
                                  page_size, INDEXED, BLOCK_N, LANE_ROWS, gl.SliceLayout(1, sc_l), tile_page)
    groups = gl.arange(0, 4, layout=gl.SliceLayout(0, sc_l))
    sc_ptrs = (k_ptr + tok_off[:, None] + DV).to(gl.pointer_type(gl.float32)) + groups[None, :]
    _async_load(stage_scale, sc_ptrs, mask=tok_ok[:, None])
    tok_off, tok_ok = _offsets_as(raw_off, raw_ok, table_row, start, hi, stride_kb, stride_kt, stride_table, limit,
                                  page_size, INDEXED, BLOCK_N, LANE_ROWS, gl.SliceLayout(1, pe_l), tile_page)
    offs_pe = gl.arange(0, DR, layout=gl.SliceLayout(0, pe_l))
    pe_ptrs = (k_ptr + tok_off[:, None] + DV + 16).to(gl.pointer_type(gl.bfloat16)) + offs_pe[None, :]
    _async_load(kpe_buf, pe_ptrs, mask=tok_ok[:, None])


@gluon.jit
def _convert_fp8_tile(stage, stage_scale, kn_buf, BLOCK_N: gl.constexpr):
    """Dequantize the staged tile into ``kn_buf`` (16-bit), 128 columns (one scale group) at a time; the
    power-of-two scales keep the product exact in bfloat16. 8 values a thread (one 16-byte store each): 1-5% faster
    than 16 (two stores; their shared-memory writes took twice the ideal wavefronts, benchmarks/NOTES.md)."""
    cv_l: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [NUM_WARPS, 1], [1, 0])
    # [tokens, 4 groups] with the tokens placed as in cv_l, so picking a group's column needs no data movement
    sc_l: gl.constexpr = gl.BlockedLayout([1, 4], [2, 16], [NUM_WARPS, 1], [1, 0])
    scales = stage_scale.load(sc_l)
    groups = gl.arange(0, 4, layout=gl.SliceLayout(0, sc_l))
    for c in gl.static_range(4):
        # sm90 converts e4m3 pairs to float16 in one instruction (cvt.rn.f16x2.e4m3x2), exactly
        x = stage.slice(c * 128, 128, dim=1).load(cv_l).to(gl.float8e4nv, bitcast=True)
        scale = gl.convert_layout(gl.sum(gl.where(groups[None, :] == c, scales, 0.0), axis=1),
                                  gl.SliceLayout(1, cv_l))
        v = x.to(gl.float32) * scale[:, None]
        kn_buf.slice(c * 128, 128, dim=1).store(v.to(kn_buf.dtype))


# -- one key tile, and a run of them ----------------------------------------------------------------------

@gluon.jit
def _qk_issue(q_smem, qpe_smem, kn, kpe, BLOCK_N: gl.constexpr, s_l: gl.constexpr):
    """Start S = QK^T of one key tile on the tensor cores; ``_softmax_pv`` waits for it (the caller may issue
    the next tile's copies in between)."""
    s = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, layout=s_l)
    s = warpgroup_mma(q_smem, kn.permute((1, 0)), s, use_acc=False, is_async=True)
    return warpgroup_mma(qpe_smem, kpe.permute((1, 0)), s, is_async=True)


@gluon.jit
def _row_sum_step(l_part, alpha, p):
    """l = l * alpha + the row sums of ``p`` [rows, keys], kept as one partial sum a warpgroup ([rows, 2]: column w
    sums the keys of warpgroup w), so that no tile's sum crosses warpgroups (a shared-memory round trip and two CTA
    barriers); ``_row_sum`` adds the two at the end."""
    part = _row_parts(p)
    return l_part * gl.convert_layout(alpha, gl.SliceLayout(1, part.type.layout))[:, None] + part


@gluon.jit
def _row_parts(p):
    """The row sums of ``p`` [rows, keys] over each warpgroup's half of the keys: [rows, 2]."""
    return gl.sum(gl.reshape(p, [p.shape[0], 2, p.shape[1] // 2]), axis=2)


@gluon.jit
def _row_sum(l_part, layout: gl.constexpr):
    return gl.convert_layout(gl.sum(l_part, axis=1), layout)


@gluon.jit
def _softmax_pv(s, kn, p_smem, acc, m_i, l_i, key_ok, key_pos, row_limit, qk_scale, s_l: gl.constexpr,
                o_l: gl.constexpr, P_T: gl.constexpr):
    """Online softmax of the tile's scores ``s`` (from ``_qk_issue``) and O += PV (log2 units). Key column c
    counts for row r if ``key_ok[c]`` and ``key_pos[c] < row_limit[r]`` (the causal mask). With ``P_T``,
    ``p_smem`` holds P transposed ([keys, rows]): it may then be the tile's own rope buffer, as each warpgroup
    overwrites only the rows of its own keys, which its own (finished) QK^T read."""
    s = warpgroup_mma_wait(num_outstanding=0, deps=[s])
    qk = s * qk_scale
    visible = key_ok[None, :] & (key_pos[None, :] < row_limit[:, None])
    qk = gl.where(visible, qk, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(qk, axis=1))
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    p = gl.exp2(qk - m_safe[:, None])
    alpha = gl.exp2(m_i - m_safe)
    l_i = _row_sum_step(l_i, alpha, p)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_l))[:, None]

    # each warpgroup wrote half of P's columns; both read all of it
    if P_T:
        p_view = p_smem.permute((1, 0))
    else:
        p_view = p_smem
    p_view.store(p.to(p_smem.dtype))
    fence_async_shared()
    _cta_barrier()
    acc = warpgroup_mma(p_view, kn, acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
    return acc, m_new, l_i


@gluon.jit
def _attend(q_smem, qpe_smem, p_smem, kn_bufs, kpe_bufs, stage, stage_scale, k_ptr, table_row, lo, hi, row_limit,
            stride_kb, stride_kt, stride_table, limit, page_size, qk_scale, INDEXED: gl.constexpr,
            FP8: gl.constexpr, NUM_BUF: gl.constexpr, BLOCK_N: gl.constexpr, s_l: gl.constexpr,
            o_l: gl.constexpr, RAW_STAGES: gl.constexpr = 1, PAGE_TILE: gl.constexpr = False):
    """(acc, m, l) of the 64 query rows in ``q_smem`` over keys [lo, hi) (``_key_offsets``): Q's copy must have
    been issued and committed. Key tiles are copied ``NUM_BUF - 1`` ahead. FP8: raw tiles are copied
    ``RAW_STAGES`` ahead into staging buffers; tile j is dequantized into the one 16-bit buffer, then computes.
    PAGE_TILE (paged keys, pages a whole number of tiles, lo a multiple of BLOCK_N): one page look-up a tile, made
    an iteration before its copy (``_tile_page``), so no copy waits on a load."""
    acc = gl.zeros([BLOCK_H, DV], gl.float32, layout=o_l)
    m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_l))
    # the row sums, one partial a warpgroup (_row_sum_step), in the layout of S's row sums over two column groups
    l_i = _row_parts(gl.zeros([BLOCK_H, BLOCK_N], gl.float32, layout=s_l))
    n_tiles = (hi - lo + BLOCK_N - 1) // BLOCK_N
    key_l: gl.constexpr = gl.SliceLayout(0, s_l)
    tile_page = None  # PAGE_TILE: the page of the next tile to copy (else each copy looks its keys up)
    if FP8:
        P_IN_ROPE: gl.constexpr = _p_in_rope(BLOCK_N, RAW_STAGES)
        kn = kn_bufs.index(0)
        for i in gl.static_range(RAW_STAGES):
            if PAGE_TILE:
                tile_page = _tile_page(table_row, lo + i * BLOCK_N, hi, stride_table, limit, page_size)
            # a tile past hi is all masked: its copy only zero-fills
            _issue_fp8_tile(stage.index(i), stage_scale.index(i), kpe_bufs.index(i), k_ptr, table_row,
                            lo + i * BLOCK_N, hi, stride_kb, stride_kt, stride_table, limit, page_size, INDEXED,
                            BLOCK_N, NUM_WARPS, 1, None, tile_page)
            cp.commit_group()
        if PAGE_TILE:
            tile_page = _tile_page(table_row, lo + RAW_STAGES * BLOCK_N, hi, stride_table, limit, page_size)
        for j in range(n_tiles):
            start = lo + j * BLOCK_N
            # the raw tile j has landed for every thread, and tile j - 1 is done with (kn, P are free)
            cp.wait_group(RAW_STAGES - 1)
            _cta_barrier()
            _convert_fp8_tile(stage.index(j % RAW_STAGES), stage_scale.index(j % RAW_STAGES), kn, BLOCK_N)
            fence_async_shared()
            _cta_barrier()
            kpe = kpe_bufs.index(j % (RAW_STAGES + 1))
            # tile j's staging buffers are free again: fetch tile j + RAW_STAGES into them while tile j computes
            # (issuing S first was 1-9% slower here, benchmarks/NOTES.md)
            nxt = start + RAW_STAGES * BLOCK_N
            if nxt < hi:
                _issue_fp8_tile(stage.index(j % RAW_STAGES), stage_scale.index(j % RAW_STAGES),
                                kpe_bufs.index((j + RAW_STAGES) % (RAW_STAGES + 1)), k_ptr, table_row, nxt, hi,
                                stride_kb, stride_kt, stride_table, limit, page_size, INDEXED, BLOCK_N, NUM_WARPS, 1,
                                None, tile_page)
            if PAGE_TILE:
                tile_page = _tile_page(table_row, nxt + BLOCK_N, hi, stride_table, limit, page_size)
            cp.commit_group()
            s = _qk_issue(q_smem, qpe_smem, kn, kpe, BLOCK_N, s_l)
            _, key_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                     INDEXED, BLOCK_N, key_l)
            key_pos = start + gl.arange(0, BLOCK_N, layout=key_l)
            if P_IN_ROPE:
                p_buf = kpe
            else:
                p_buf = p_smem
            acc, m_i, l_i = _softmax_pv(s, kn, p_buf, acc, m_i, l_i, key_ok, key_pos, row_limit, qk_scale, s_l, o_l,
                                        P_IN_ROPE)
    else:
        for i in gl.static_range(NUM_BUF - 1):
            if PAGE_TILE:
                tile_page = _tile_page(table_row, lo + i * BLOCK_N, hi, stride_table, limit, page_size)
            if lo + i * BLOCK_N < hi:
                _issue_tile(kn_bufs.index(i), kpe_bufs.index(i), k_ptr, table_row, lo + i * BLOCK_N, hi, stride_kb,
                            stride_kt, stride_table, limit, page_size, INDEXED, BLOCK_N, tile_page)
            cp.commit_group()
        if PAGE_TILE:
            tile_page = _tile_page(table_row, lo + (NUM_BUF - 1) * BLOCK_N, hi, stride_table, limit, page_size)
        for j in range(n_tiles):
            start = lo + j * BLOCK_N
            cp.wait_group(NUM_BUF - 2)
            # tile j has landed for every thread, and every warpgroup is done with tile j - 1's buffer; then the
            # proxy fence, after the barrier as in Triton's own cp.async pipelines (the fence first made Triton add a
            # second barrier after the wait)
            _cta_barrier()
            fence_async_shared()
            kn = kn_bufs.index(j % NUM_BUF)
            # Gathered keys (INDEXED): start S = QK^T before the next tile's copies, whose index loads then
            # overlap the MMA (sparse decode 4-6% faster). Paged keys: copies first (dense decode was 4-5% slower
            # the other way round: nothing to hide, and more spilled registers).
            if INDEXED:
                s = _qk_issue(q_smem, qpe_smem, kn, kpe_bufs.index(j % NUM_BUF), BLOCK_N, s_l)
            nxt = start + (NUM_BUF - 1) * BLOCK_N
            if nxt < hi:
                slot = (j + NUM_BUF - 1) % NUM_BUF
                _issue_tile(kn_bufs.index(slot), kpe_bufs.index(slot), k_ptr, table_row, nxt, hi, stride_kb,
                            stride_kt, stride_table, limit, page_size, INDEXED, BLOCK_N, tile_page)
            if PAGE_TILE:
                tile_page = _tile_page(table_row, nxt + BLOCK_N, hi, stride_table, limit, page_size)
            cp.commit_group()
            if not INDEXED:
                s = _qk_issue(q_smem, qpe_smem, kn, kpe_bufs.index(j % NUM_BUF), BLOCK_N, s_l)
            _, key_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                                     INDEXED, BLOCK_N, key_l)
            key_pos = start + gl.arange(0, BLOCK_N, layout=key_l)
            acc, m_i, l_i = _softmax_pv(s, kn, p_smem, acc, m_i, l_i, key_ok, key_pos, row_limit, qk_scale, s_l, o_l,
                                        False)
    cp.wait_group(0)
    return acc, m_i, _row_sum(l_i, gl.SliceLayout(1, s_l))


@gluon.constexpr_function
def _p_in_rope(BLOCK_N, RAW_STAGES):
    """FP8 with two raw tiles in flight: P shares the rope buffer of its tile (same [64, 64] 16-bit shape), as the
    extra staging buffer leaves no room for a P buffer of its own within sm90's 227 KB."""
    return RAW_STAGES == 2 and BLOCK_N == 64


@gluon.jit
def _buffers(dtype: gl.constexpr, BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, FP8: gl.constexpr,
             RAW_STAGES: gl.constexpr = 1):
    """Shared memory: Q (72 KB), P, key tiles (NUM_BUF of them; FP8: one dequantized tile, RAW_STAGES + 1 rope
    tiles, and RAW_STAGES staging buffers of raw tiles)."""
    wide_sl: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    p_sl: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128 if BLOCK_N >= 64 else BLOCK_N * 2,
                                              element_bitwidth=16, rank=2)
    plain_sl: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DV], wide_sl)
    qpe_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DR], wide_sl)
    if FP8:
        kn_bufs = gl.allocate_shared_memory(dtype, [1, BLOCK_N, DV], wide_sl)
        kpe_bufs = gl.allocate_shared_memory(dtype, [RAW_STAGES + 1, BLOCK_N, DR], wide_sl)
        stage = gl.allocate_shared_memory(gl.uint8, [RAW_STAGES, BLOCK_N, DV], plain_sl)
        stage_scale = gl.allocate_shared_memory(gl.float32, [RAW_STAGES, BLOCK_N, 4], plain_sl)
        if _p_in_rope(BLOCK_N, RAW_STAGES):
            p_smem = kpe_bufs.index(0)  # unused: P lives in each tile's rope buffer
        else:
            p_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], p_sl)
    else:
        p_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], p_sl)
        kn_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, DV], wide_sl)
        kpe_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF, BLOCK_N, DR], wide_sl)
        stage = p_smem  # unused
        stage_scale = p_smem
    return q_smem, qpe_smem, p_smem, kn_bufs, kpe_bufs, stage, stage_scale


@gluon.constexpr_function
def s_layout(BLOCK_N):
    """S [64, BLOCK_N]: warpgroup w computes key columns [w * BLOCK_N / 2, (w + 1) * BLOCK_N / 2)."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, BLOCK_N // 2, 16])


@gluon.constexpr_function
def o_layout():
    """O [64, 512]: warpgroup w owns output columns [256 w, 256 (w + 1))."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, 256, 16])


@gluon.jit
def _part_start(total, part, parts):
    """``_common.part_start``: the first global block of part ``part``."""
    return ((total.to(gl.int64) * part) // parts).to(gl.int32)


@gluon.jit
def _part_of_block(g, total, parts):
    """``_common.part_of_block``: the part whose range holds global block g."""
    return (((g.to(gl.int64) + 1) * parts - 1) // gl.maximum(total, 1)).to(gl.int32)


@gluon.jit
def _part_plan(seqlens_ptr, stride_seqlens, batch, max_len, num_parts, part, MIN_BLOCKS_PER_PART: gl.constexpr,
               BLOCK_N: gl.constexpr, WARPS: gl.constexpr = NUM_WARPS, EMPTY_AT_G: gl.constexpr = False):
    """Part ``part``'s global blocks [g_lo, g_hi) of the split plan, the sequence holding g_lo and the global index
    of that sequence's first block, the plan's total blocks and part count."""
    total, longest = _plan_totals(seqlens_ptr, stride_seqlens, batch, max_len, BLOCK_N, WARPS)
    parts = _effective_parts(total, longest, batch, num_parts, MIN_BLOCKS_PER_PART, BLOCK_N)
    g_lo = _part_start(total, part, parts)
    g_hi = _part_start(total, part + 1, parts)
    if part >= parts:
        g_hi = g_lo
    seq, seq_g0 = _find_sequence(seqlens_ptr, stride_seqlens, batch, g_lo, max_len, BLOCK_N, WARPS, EMPTY_AT_G)
    return g_lo, g_hi, seq, seq_g0, total, parts


@gluon.jit
def _part_range(seqlens_ptr, stride_seqlens, batch, max_len, num_parts, part, MIN_BLOCKS_PER_PART: gl.constexpr,
                BLOCK_N: gl.constexpr, WARPS: gl.constexpr = NUM_WARPS):
    """``_part_plan`` without the plan's totals: (g_lo, g_hi, seq, seq_g0)."""
    g_lo, g_hi, seq, seq_g0, _, _ = _part_plan(seqlens_ptr, stride_seqlens, batch, max_len, num_parts, part,
                                               MIN_BLOCKS_PER_PART, BLOCK_N, WARPS)
    return g_lo, g_hi, seq, seq_g0


@gluon.jit
def _segment(seqlens_ptr, stride_seqlens, seq, g, g_hi, seq_g0, max_len, rows, s_q, h_q, BLOCK_N: gl.constexpr,
             CAUSAL: gl.constexpr):
    """A part's run in sequence ``seq`` (whose first block is global block ``seq_g0``), from global block ``g`` to at
    most ``g_hi``: the sequence's block count n, the run's end seg_hi, its keys [lo, hi), and the key limit of each
    query row in ``rows`` (causal: the last s_q keys arrive one a query token)."""
    length = gl.load(seqlens_ptr + seq * stride_seqlens)
    length = gl.minimum(gl.maximum(length, 0), max_len)
    n = (length + BLOCK_N - 1) // BLOCK_N
    seg_hi = gl.minimum(g_hi, seq_g0 + n)
    lo = (g - seq_g0) * BLOCK_N
    hi = gl.minimum((seg_hi - seq_g0) * BLOCK_N, length)
    if CAUSAL:
        row_limit = length - s_q + rows // h_q + 1
    else:
        row_limit = gl.zeros_like(rows) + length
    return n, seg_hi, lo, hi, row_limit


@gluon.constexpr_function
def row_layout(layout, rank):
    """The layout of a row vector of a [rows, ...] tensor of ``rank`` 2 or 3 in ``layout``."""
    return gl.SliceLayout(1, layout) if rank == 2 else gl.SliceLayout(1, gl.SliceLayout(2, layout))


@gluon.jit
def per_row(v, RANK: gl.constexpr):
    """Row vector ``v`` (``row_layout``) expanded to broadcast against a [rows, ...] tensor of RANK 2 or 3."""
    if RANK == 2:
        return v[:, None]
    else:
        return v[:, None, None]


@gluon.jit
def _store_segment(acc, m_i, l_i, seq, part, first, whole, rows_o, row_ok_o, offs_o, rows_per_seq, h_q, out_ptr,
                   lse_ptr, o_part_ptr, lse_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls,
                   WRITE_LSE: gl.constexpr):
    """A segment's result, columns ``offs_o`` of rows ``rows_o`` (log2-unit max ``m_i`` and sum ``l_i``): the final
    output and lse if the segment is the ``whole`` sequence, else a partial slot for ``decode._combine`` (slot 0:
    the sequence this part starts in (``first``); slot 1: the one it ends in, decode.py's layout). acc is
    [rows, columns] or [rows, column groups, columns] (``decode_sm90_fp8.part_out``), offs_o its trailing dims."""
    o_l: gl.constexpr = acc.type.layout
    RANK: gl.constexpr = len(acc.shape)
    l_o = gl.convert_layout(l_i, row_layout(o_l, RANK))
    m_o = gl.convert_layout(m_i, row_layout(o_l, RANK))
    empty = l_o == 0.0
    # one reciprocal a row, not a division an element: at 256 rows the call was 5% faster (benchmarks/NOTES.md,
    # seventeenth session)
    o = acc * per_row(1.0 / gl.where(empty, 1.0, l_o), RANK)
    lse2 = gl.where(empty, float("-inf"), m_o + gl.log2(gl.where(empty, 1.0, l_o)))
    cols = gl.expand_dims(offs_o, 0)
    if whole:
        row_s = rows_o // h_q
        row_h = rows_o % h_q
        o_rows = (out_ptr + seq.to(gl.int64) * stride_ob + row_s.to(gl.int64) * stride_os
                  + row_h.to(gl.int64) * stride_oh)
        gl.store(per_row(o_rows, RANK) + cols, o.to(out_ptr.dtype.element_ty), mask=per_row(row_ok_o, RANK))
        if WRITE_LSE:
            lse_rows = lse_ptr + seq.to(gl.int64) * stride_lb + row_h * stride_lh + row_s * stride_ls
            gl.store(lse_rows, gl.where(empty, float("inf"), lse2 * LN2), mask=row_ok_o)
    else:
        slot = part * 2 + gl.where(first, 0, 1)
        part_rows = slot.to(gl.int64) * rows_per_seq + rows_o
        gl.store(o_part_ptr + per_row(part_rows * DV, RANK) + cols, o, mask=per_row(row_ok_o, RANK))
        if WRITE_LSE:
            gl.store(lse_part_ptr + part_rows, lse2, mask=row_ok_o)


# -- the kernel -----------------------------------------------------------------------------------------

@gluon.jit
def _decode_sm90_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, num_blocks, page_size, max_len, num_parts, qk_scale,
    BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, MIN_BLOCKS_PER_PART: gl.constexpr, CAUSAL: gl.constexpr,
    ROWS_FIRST: gl.constexpr, FP8: gl.constexpr, RAW_STAGES: gl.constexpr, PAGE_TILE: gl.constexpr = False,
):
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    s_l: gl.constexpr = s_layout(BLOCK_N)
    o_l: gl.constexpr = o_layout()
    q_smem, qpe_smem, p_smem, kn_bufs, kpe_bufs, stage, stage_scale = _buffers(dtype, BLOCK_N, NUM_BUF, FP8,
                                                                               RAW_STAGES)

    if ROWS_FIRST:
        part = gl.program_id(1)
        row_block = gl.program_id(0)
    else:
        part = gl.program_id(0)
        row_block = gl.program_id(1)
    g_lo, g_hi, seq, seq_g0 = _part_range(seqlens_ptr, stride_seqlens, batch, max_len, num_parts, part,
                                          MIN_BLOCKS_PER_PART, BLOCK_N)

    rows_per_seq = s_q * h_q
    rows_s = row_block * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, s_l))
    rows_o = row_block * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, o_l))
    row_ok_o = rows_o < rows_per_seq
    offs_o = gl.arange(0, DV, layout=gl.SliceLayout(0, o_l))

    g = g_lo
    while g < g_hi:
        n, seg_hi, tok_lo, tok_hi, row_limit = _segment(seqlens_ptr, stride_seqlens, seq, g, g_hi, seq_g0, max_len,
                                                        rows_s, s_q, h_q, BLOCK_N, CAUSAL)
        if n > 0:
            bt_row = block_table_ptr + seq.to(gl.int64) * stride_btb
            # every warp is done with the buffers of the previous segment before they are refilled
            _cta_barrier()
            _issue_q(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh)
            cp.commit_group()
            acc, m_i, l_i = _attend(q_smem, qpe_smem, p_smem, kn_bufs, kpe_bufs, stage, stage_scale, k_ptr, bt_row,
                                    tok_lo, tok_hi, row_limit, stride_kb, stride_kt, stride_btp, num_blocks,
                                    page_size, qk_scale, False, FP8, NUM_BUF, BLOCK_N, s_l, o_l, RAW_STAGES,
                                    PAGE_TILE)

            _store_segment(acc, m_i, l_i, seq, part, g == g_lo, (g == seq_g0) & (seg_hi == seq_g0 + n), rows_o,
                           row_ok_o, offs_o, rows_per_seq, h_q, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_ob,
                           stride_os, stride_oh, stride_lb, stride_lh, stride_ls, True)
        g = seg_hi
        seq_g0 += n
        seq += 1


@functools.cache
def _is_sm90(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] == 9


def is_sm90(device: torch.device) -> bool:
    """Whether ``device`` (a CUDA device; the current one when its index is unset) is an sm90 GPU."""
    return _is_sm90(device.index if device.index is not None else torch.cuda.current_device())


def aligned16(t: torch.Tensor, dims) -> bool:
    """Whether ``t``'s base and its strides along ``dims`` are multiples of 16 bytes: ``cp.async`` copies 16 bytes
    at a time, and Triton rejects a copy it cannot make at least 4 bytes wide."""
    size = t.element_size()
    return t.data_ptr() % 16 == 0 and all(t.stride(d) * size % 16 == 0 for d in dims)


def supports(q, k_cache, head_dim_v, config, fp8=False) -> bool:
    """Whether the Gluon kernels (this one, ``sparse_sm90``, ``extend_sm90``) serve a call: the config asks for
    them (``WGMMA``), DeepSeek's dims, 16-bit queries (bfloat16 with the FP8 cache, whose rope values are
    bfloat16), an sm90 GPU, and q (every dim but the last) and the cache 16-byte aligned (a sliced cache with odd
    strides goes to the tl.dot kernels)."""
    dtypes = (torch.bfloat16,) if fp8 else (torch.bfloat16, torch.float16)
    if not (config.get("WGMMA", False) and q.is_cuda and q.dtype in dtypes and q.shape[-1] == DV + DR
            and head_dim_v == DV):
        return False
    if not (aligned16(q, range(q.dim() - 1)) and aligned16(k_cache, (0, 1))):
        return False
    return is_sm90(q.device)


def decode_sm90(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, num_parts, config, out, lse,
                fp8=False):
    """Launch the Gluon decode, then ``decode._combine``. Arguments validated by ``triton_mla.api``; with
    ``fp8`` the cache is the FP8 layout viewed as uint8 (strides in bytes)."""
    b, s_q, h_q, _ = q.shape
    if fp8 and config.get("KEYS_ON_M", False) and s_q * h_q <= _keys_on_m_rows(config):
        # few rows over the FP8 cache: keys on the MMA's M side (decode_sm90_fp8)
        return _decode_fp8_keys_on_m(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, num_parts, config,
                                     out, lse)
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    rows = s_q * h_q
    row_blocks = cdiv(rows, BLOCK_H.value)
    max_len = block_table.shape[1] * page_size
    o_part = torch.empty(2 * num_parts, rows, DV.value, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(2 * num_parts, rows, dtype=torch.float32, device=q.device)
    rows_first = bool(config.get("ROWS_FIRST", False))
    grid = (row_blocks, num_parts) if rows_first else (num_parts, row_blocks)
    ws = use_ws(config, b, max_len, num_parts)
    kernel = _decode_ws_kernel if ws else _decode_sm90_kernel
    extra = ws_launch_args(k_cache, config) if ws else dict(
        PAGE_TILE=page_tile(page_size, config["BLOCK_N"], k_cache.stride(1), config))
    kernel[grid](
        *launch_tensors(q, k_cache, block_table, cache_seqlens, out, lse, o_part, lse_part),
        b, s_q, h_q, num_blocks, page_size, max_len, num_parts, softmax_scale * LOG2E.value,
        BLOCK_N=config["BLOCK_N"], NUM_BUF=config.get("NUM_BUF", 2),
        MIN_BLOCKS_PER_PART=config["MIN_BLOCKS_PER_PART"], CAUSAL=bool(causal and s_q > 1), ROWS_FIRST=rows_first,
        FP8=bool(fp8), RAW_STAGES=config.get("RAW_STAGES", 1) if fp8 else 1,
        **extra,
        **FP_FUSION, num_warps=NUM_WARPS.value // 2 if ws else NUM_WARPS.value,
    )
    common = dict(DV=DV.value, BLOCK_DV=DV.value, BLOCK_H=BLOCK_H.value, BLOCK_N=config["BLOCK_N"],
                  MIN_BLOCKS_PER_PART=config["MIN_BLOCKS_PER_PART"], CHUNK_B=128)
    _combine(o_part, lse_part, cache_seqlens, out, lse, max_len, num_parts, common)
    return out, lse


def use_ws(config, b: int, max_len: int, num_parts: int) -> bool:
    """Whether to run the warp-specialized kernel (two warpgroups on alternate tiles): the entry asks for it
    (``WS``; a ``decode_fp8`` entry that names it sends the FP8 cache there, dequantized in place, not yet
    measured and named by no shipped entry), 64-key tiles, a Triton that builds it, and at least
    ``WS_MIN_TILES_PER_PART`` key tiles a part if the entry names a floor (estimated from the block table's width, an
    upper bound: lengths stay on the GPU). The floor was 32 while the lockstep kernel was faster at small batch
    (fourteenth session); since the seventeenth the ws kernel is as fast or faster at every batch size and the
    shipped entry names none (``benchmarks/NOTES.md``)."""
    if not config.get("WS", False) or config["BLOCK_N"] != 64 or not ws_supported():
        return False
    return b * cdiv(max_len, 64) >= config.get("WS_MIN_TILES_PER_PART", 0) * num_parts


def page_tile(page_size: int, block_n: int, stride_kt: int, config=None) -> bool:
    """Whether every key tile of a sequence lies in one page (``PAGE_TILE``): pages a whole number of tiles, and
    offsets within a page (``stride_kt`` apart) that fit in int32. A config may turn it off (``PAGE_TILE``:
    false), to measure what it gives."""
    return page_size % block_n == 0 and page_size * stride_kt < 2**31 and bool((config or {}).get("PAGE_TILE", True))


def compile_specs(entry, fp8=False):
    """(name, fn, types, constexprs, warps, stages) for check-configs (a ``WGMMA`` decode entry)."""
    ptrs = dict(q_ptr="*bf16", k_ptr="*u8" if fp8 else "*bf16", out_ptr="*bf16", lse_ptr="*fp32",
                o_part_ptr="*fp32", lse_part_ptr="*fp32")
    ws = bool(entry.get("WS", False))
    if ws:
        ptrs = dict(ptrs, k_desc=ws_desc_type())
    for causal, page in ((False, False), (True, False), (False, True)):
        if ws and fp8 and page:
            continue  # (the FP8 cache reaches the ws kernel by cp.async only)
        # (the ws kernel: page_tile names its TMA copies)
        yield (f"decode_sm90{'_ws' if ws else ''}{'_fp8' if fp8 else ''}(causal={causal}, "
               f"{'tma' if ws else 'page_tile'}={page})",
               _decode_ws_kernel if ws else _decode_sm90_kernel, ptrs,
               dict(BLOCK_N=entry["BLOCK_N"], NUM_BUF=entry.get("NUM_BUF", 2),
                    MIN_BLOCKS_PER_PART=entry["MIN_BLOCKS_PER_PART"], CAUSAL=causal,
                    ROWS_FIRST=bool(entry.get("ROWS_FIRST", False)), FP8=fp8,
                    RAW_STAGES=entry.get("RAW_STAGES", 1) if fp8 else 1,
                    **(dict(TMA=page, **ws_schedule(entry, fp8)) if ws else dict(PAGE_TILE=page))),
               NUM_WARPS.value // 2 if ws else NUM_WARPS.value, 1)


# at the end: decode_sm90_ws and decode_sm90_fp8 build on this module's helpers
from .decode_sm90_fp8 import decode_sm90_fp8 as _decode_fp8_keys_on_m  # noqa: E402
from .decode_sm90_fp8 import max_rows as _keys_on_m_rows  # noqa: E402
from .decode_sm90_ws import _decode_ws_kernel, ws_desc_type, ws_launch_args, ws_schedule, ws_supported  # noqa: E402
