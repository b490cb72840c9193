"""FP8-cache decode for few query rows (h_q * s_q <= 32) on Hopper, keys on the MMA's M side (Gluon).

Why: at 16 rows decode is memory-bound, and the FP8 cache (656 bytes a token against 1152) could be read in
0.57x the bf16 time. ``decode_fp8`` (tl.dot) and ``decode_sm90`` (64 rows a program) both made it slower than
bf16: each tile is dequantized into a 16-bit copy before the MMAs, and a 64-row MMA tile is 3/4 empty
(``benchmarks/NOTES.md``).

Here one warpgroup computes S^T = K Q^T and O^T = V^T P^T: the 64 keys of a tile, then the 512 value dims, on
the MMA's M side, the <= 16 query rows on N. K and V^T are the MMAs' register operands, taken from the raw e4m3
tile straight into registers and converted there (one instruction a pair; e4m3 is exact in float16), so no
dequantized copy exists, and a program needs ~100 KB of shared memory: two share an SM, each with its own
tiles in flight.

The register operands are read with 8- and 16-byte loads because the dims are permuted. A sum over dims (QK^T)
does not care in which order its terms come, so within each group of 128 dims the k index of the MMA is mapped
to dims such that each thread's registers hold 32 consecutive bytes of a key (``_QK_VIEW``); Q is stored with the
same permutation. For O^T the value dims are the MMA's rows: row r of O^T is the dim whose bits 0, 1..3, 4..6,
7..8 are r's bits 3, 6..8, 0..2, 4..5, chosen so each thread's 16 rows are 16 consecutive dims of one group
(``_PV_VIEW``); the output is written back through that map (``part_out``). Both are views
(``SharedLinearLayout``) of the one raw tile, whose 16-byte chunks are XOR-swizzled by key so the loads are free
of bank conflicts.

Scales: the QK^T of each 128-dim group has its own accumulator, multiplied by the keys' scales in fp32. For
P V the scales multiply the register operand, V^T * scale, in float16, exact for every dequantized value within
float16's range (|value| < 65504; the cache's values come from bf16 latents, which a model keeps far smaller).
The dual program (17-32 rows, ``_decode_sm90_fp8_dual_kernel``) multiplies K's operand by the scales the same way
(``_scores_folded``), so one score accumulator serves the four groups: four of them next to O^T's 128 registers a
thread (32 rows) would spill.

QK_E4M3 (config key; the sm90 8/16-row entries set it): S^T takes no register operand at all. Each group's keys
go to e4m3 MMAs straight from the raw tile, stored for that as [4 groups x 64 keys, 128] with wgmma's swizzle
(``_RAW8``; ``_PV_VIEW8`` reads V^T out of the same bytes). Q is scaled per row and split in two e4m3 parts,
hi + lo, within 2**-8 of each value (2**-9 from 2**7 of the row's max up), about bfloat16's own rounding; both parts
sit on the MMA's N side, so one MMA a group gives both products and their sum is a register add (``_hi_lo``).
That removes the keys' conversion (half of a tile's), 12% at 16 rows; the dual program keeps ``_scores_folded``,
which ptxas fits without spilling (with QK_E4M3 it spills ~0.5 KB and is 8% slower; ``benchmarks/NOTES.md``).

Two options shorten the loop further (config keys ``PAIR_KEYS`` and ``LAZY_MAX``): V^T's bytes paired by key
before their conversion (``_pv_pair_layout``) with its scales loaded once a tile, and a lazy running max: O^T
rescaled only when a row's max has grown by more than 2**8 (``RESCALE_AT``), nearly never after the first tiles.
They take ~14% of a tile's instructions out; sparse decode at 16 heads gains 4% and ships them, dense decode at
8/16 rows gains nothing (its programs wait on their tiles' arrival by now), and the dual program, which spills with
them and ran 12% slower, does not take them (``benchmarks/NOTES.md``, twenty-third session). Prefetching the tile
after the next copy's into L2 (one bulk prefetch a tile; sparse: one a token) was 11% slower in dense decode and 5% in
sparse, and was removed (twenty-fourth session).

Same split plan, partial slots and combine as ``decode.py`` / ``decode_sm90``.
"""

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from ._common import FP_FUSION, LN2, LOG2E, cdiv
from .decode import _combine, fused_combine, launch_tensors, part_counters
from .decode_sm90 import (
    DR,
    DV,
    _async_load,
    _cta_barrier,
    _entries,
    _id_offsets,
    _issue_fp8_tile,
    _key_offsets,
    _part_of_block,
    _part_plan,
    _part_range,
    _part_start,
    _q_offsets,
    _segment,
    _store_segment,
    _tile_page,
    fp8_copy_keys,
    page_tile,
)

WARPS = gl.constexpr(4)
# renamed between Triton 3.6 (_reinterpret) and 3.9 (reinterpret)
_PUBLIC_REINTERPRET = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))
BLOCK_N = gl.constexpr(64)  # keys a tile: the MMA's M for one warpgroup
DUAL_ROWS = 32  # query rows of a dual program (17-32 rows: ``_decode_sm90_fp8_dual_kernel``)
GROUP = gl.constexpr(128)  # dims a scale covers
RESCALE_AT = gl.constexpr(8.0)  # log2 growth of a row's max past which O^T is rescaled (``_attend_t``)

# wgmma's register-operand layout for one warpgroup (``gl.to_linear_layout`` of DotOperandLayout(0, ..., 2)):
# lanes: k pair (2 bits), row (3 bits); warps: row + 16, + 32
_LANES = [[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]]
_WARPS = [[16, 0], [32, 0]]

# The raw tile: [64 keys, 512 bytes], 16-byte chunks XOR-swizzled by key % 8 (cp.async writes whole chunks).
# _QK_VIEW: [64 keys, 512 k]; in each group of 128, k bit 0 -> byte bit 0, k bits 3..6 -> bytes bits 1..4,
# k bits 1..2 -> byte bits 5..6: a thread's k registers (bits 0, 3..6) are 32 consecutive bytes.
# (Offset bit i of the tile -> the logical (key, k) it holds; bits 9..11 carry the swizzle.)
_QK_VIEW = [[0, 1], [0, 8], [0, 16], [0, 32], [0, 64], [0, 2], [0, 4], [0, 128], [0, 256],
            [1, 64], [2, 2], [4, 4], [8, 0], [16, 0], [32, 0]]
# _PV_VIEW: [512 rows of V^T, 64 keys]; row bits 3, 6, 7, 8 (a thread's registers) -> byte bits 0..3, row bits
# 0..2 (lanes) -> byte bits 4..6, row bits 4..5 (warps) -> byte bits 7..8 (so warp w reads dim group w).
_PV_VIEW = [[8, 0], [64, 0], [128, 0], [256, 0], [1, 0], [2, 0], [4, 0], [16, 0], [32, 0],
            [1, 1], [2, 2], [4, 4], [0, 8], [0, 16], [0, 32]]


def _e4m3_tile(bases):
    """A view's offset bases over the QK_E4M3 tile, from its bases over the plain one. QK_E4M3 stores the raw tile
    as [4 groups x 64 keys, 128 bytes] with wgmma's 128-byte swizzle, so the tensor cores read each group's keys
    straight from shared memory as e4m3: the key bits of the offset (9..14 above) move down to 7..12 and the group
    bits (7..8) up to 13..14; bits 0..6 (and so the banks) stay."""
    return bases[:7] + bases[9:] + bases[7:9]


# the raw tile's bytes as [64 keys, 512] (for its copy): the plain tile's offset bases, moved
_RAW8 = _e4m3_tile([[0, 1], [0, 2], [0, 4], [0, 8], [0, 16], [0, 32], [0, 64], [0, 128], [0, 256], [1, 16], [2, 32],
                    [4, 64], [8, 0], [16, 0], [32, 0]])
_PV_VIEW8 = _e4m3_tile(_PV_VIEW)


@gluon.constexpr_function
def _nv8():
    """wgmma's 128-byte swizzled layout of 8-bit [rows, 128] operands (QK_E4M3: keys and Q's two parts)."""
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)


@gluon.constexpr_function
def _raw8_view():
    return gl.SharedLinearLayout(offset_bases=_RAW8)


@gluon.constexpr_function
def _qk_view():
    return gl.SharedLinearLayout(offset_bases=_QK_VIEW)


@gluon.constexpr_function
def _mma_layout(ROWS):
    """S^T [64, ROWS] and O^T [512, ROWS]: one warpgroup, M in 16-row slices a warp."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, ROWS, 16])


@gluon.constexpr_function
def _qk_load_layout():
    """K of one group [64, 128] as wgmma's register operand wants it, the 5 k registers first (contiguous)."""
    return gl.DistributedLinearLayout(reg_bases=[[0, 1], [0, 8], [0, 16], [0, 32], [0, 64], [8, 0]],
                                      lane_bases=_LANES, warp_bases=_WARPS, block_bases=[], shape=[64, 128])


@gluon.constexpr_function
def _pv_load_layout(PARTS):
    """One of PARTS row ranges of V^T, [512 / PARTS, 64], as wgmma's register operand wants it, its row registers
    (the contiguous bytes) first, split as [8 / PARTS, 4, 16, 64] (row = 64 * hi + 16 * group + lo) so the scales
    broadcast over a group's rows."""
    hi = 8 // PARTS
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 8, 0]] + [[1 << i, 0, 0, 0] for i in range(hi.bit_length() - 1)]
        + [[0, 0, 0, 1], [0, 0, 0, 8], [0, 0, 0, 16], [0, 0, 0, 32]],
        lane_bases=[[0, 0, 0, 2], [0, 0, 0, 4], [0, 0, 1, 0], [0, 0, 2, 0], [0, 0, 4, 0]],
        warp_bases=[[0, 1, 0, 0], [0, 2, 0, 0]], block_bases=[], shape=[hi, 4, 16, 64])


@gluon.constexpr_function
def _pv_pair_layout(PARTS):
    """``_pv_load_layout`` with key bit 0 as its first register bit: a thread's 32-bit word then holds keys k and
    k + 1 of two adjacent dims, which one conversion turns into the two (key, key + 1) pairs the MMA's register
    operand wants. Going there from the load layout permutes bytes (one ``prmt`` a word) where converting first
    would permute 16-bit halves (one a converted word, twice as many)."""
    ld = _pv_load_layout(PARTS)
    regs = [list(b) for b in ld.reg_bases]
    key0 = [0, 0, 0, 1]
    return gl.DistributedLinearLayout(reg_bases=[key0] + [b for b in regs if b != key0], lane_bases=ld.lane_bases,
                                      warp_bases=ld.warp_bases, block_bases=[], shape=ld.shape)


@gluon.constexpr_function
def _pv_view_4d(QK_E4M3=False):
    """_PV_VIEW with its rows split as [8, 4, 16] (``_pv_load_layout``'s parts are ranges of the first dim), over
    the plain tile or the QK_E4M3 one."""
    def split(b):
        r, key = b
        return [r >> 6, (r >> 4) & 3, r & 15, key]
    return gl.SharedLinearLayout(offset_bases=[split(b) for b in (_PV_VIEW8 if QK_E4M3 else _PV_VIEW)])


@gluon.constexpr_function
def _scale_qk_layout():
    """Scales [64 keys, 4 groups]: the keys placed as S^T's rows, the groups in registers."""
    return gl.DistributedLinearLayout(reg_bases=[[8, 0], [0, 1], [0, 2]], lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0],
                                                                                    [4, 0]],
                                      warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 4])


@gluon.jit
def _view(buf, dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
    """``buf``'s bytes seen as another dtype, shape and layout."""
    if _PUBLIC_REINTERPRET:
        return buf.reinterpret(dtype, shape, layout)
    else:
        return buf._reinterpret(dtype, shape, layout)


@gluon.jit
def _e4m3_to_f16(raw):
    """e4m3 bytes -> float16 (exact), 4 a 32-bit word: sm89+'s conversion, with no repacking around it."""
    return gl.inline_asm_elementwise(
        asm="""{
        .reg .b16 lo, hi;
        mov.b32 {lo, hi}, $2;
        cvt.rn.f16x2.e4m3x2 $0, lo;
        cvt.rn.f16x2.e4m3x2 $1, hi;
        }""",
        constraints="=r,=r,r", args=[raw], dtype=gl.float16, is_pure=True, pack=4)


@gluon.jit
def _e4m3_to_f16_scaled(raw, scale):
    """e4m3 bytes times float16 ``scale`` (broadcast like ``raw``) -> float16, 4 a 32-bit word."""
    return gl.inline_asm_elementwise(
        asm="""{
        .reg .b16 lo, hi;
        mov.b32 {lo, hi}, $2;
        cvt.rn.f16x2.e4m3x2 $0, lo;
        cvt.rn.f16x2.e4m3x2 $1, hi;
        mul.rn.f16x2 $0, $0, $3;
        mul.rn.f16x2 $1, $1, $4;
        }""",
        constraints="=r,=r,r,r,r", args=[raw, scale], dtype=gl.float16, is_pure=True, pack=4)


@gluon.jit
def _qk_dim(k):
    """The dim (within its group of 128) that k index k of ``_QK_VIEW`` holds."""
    return (k & 1) | (((k >> 3) & 15) << 1) | (((k >> 1) & 3) << 5)


@gluon.jit
def _load_q(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, ROWS: gl.constexpr,
            s_l: gl.constexpr, QK_E4M3: gl.constexpr = False):
    """Q's value dims into ``q_smem`` [4, ROWS, 128] as float16, permuted as ``_QK_VIEW``, each row scaled by a power
    of two that brings its largest |value| into [2**14, 2**15) (float16 holds every bfloat16 value of the row
    exactly then, down to 2**-10 of its max); the rope dims into ``qpe_smem`` (by cp.async). Returns each row's
    inverse factor, in S^T's column layout.
    QK_E4M3: ``q_smem`` is [4, 2 * ROWS, 128] e4m3, in natural dim order: each row scaled so its largest |value| is
    in [2**7, 2**8), then split in two e4m3 parts, hi = e4m3(x) and lo = e4m3(x - hi) (``_store_q8``), whose sum
    is within 2**-8 of x (2**-9 from 2**7 up), about bfloat16's own precision."""
    q_l: gl.constexpr = gl.BlockedLayout([1, 8], [ROWS // 4, 128 // ROWS], [WARPS, 1], [1, 0])
    q_off, row_ok = _q_offsets(seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, q_l, ROWS)
    if QK_E4M3:
        dims = gl.arange(0, GROUP, layout=gl.SliceLayout(0, q_l))
    else:
        dims = _qk_dim(gl.arange(0, GROUP, layout=gl.SliceLayout(0, q_l)))
    ptrs = q_ptr + q_off[:, None] + dims[None, :]
    q0 = gl.load(ptrs, mask=row_ok[:, None], other=0.0).to(gl.float32)
    q1 = gl.load(ptrs + GROUP, mask=row_ok[:, None], other=0.0).to(gl.float32)
    q2 = gl.load(ptrs + 2 * GROUP, mask=row_ok[:, None], other=0.0).to(gl.float32)
    q3 = gl.load(ptrs + 3 * GROUP, mask=row_ok[:, None], other=0.0).to(gl.float32)
    a = gl.maximum(gl.maximum(gl.max(gl.abs(q0), axis=1), gl.max(gl.abs(q1), axis=1)),
                   gl.maximum(gl.max(gl.abs(q2), axis=1), gl.max(gl.abs(q3), axis=1)))
    # biased exponent e of the row max: scale by 2**(TOP - e), the max into [2**(TOP - 127), 2**(TOP - 126)),
    # clamped so both factors stay normal
    TOP: gl.constexpr = 134 if QK_E4M3 else 141
    e = gl.maximum((a.to(gl.int32, bitcast=True) >> 23) & 0xFF, TOP - 126)
    up = ((TOP + 127 - e) << 23).to(gl.float32, bitcast=True)[:, None]
    down = ((e - TOP + 127) << 23).to(gl.float32, bitcast=True)
    if QK_E4M3:
        _store_q8(q_smem, 0, q0 * up)
        _store_q8(q_smem, 1, q1 * up)
        _store_q8(q_smem, 2, q2 * up)
        _store_q8(q_smem, 3, q3 * up)
    else:
        q_smem.index(0).store((q0 * up).to(gl.float16))
        q_smem.index(1).store((q1 * up).to(gl.float16))
        q_smem.index(2).store((q2 * up).to(gl.float16))
        q_smem.index(3).store((q3 * up).to(gl.float16))
    pe_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [WARPS, 1], [1, 0])
    q_off, row_ok = _q_offsets(seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, pe_l, ROWS)
    offs_pe = gl.arange(0, DR, layout=gl.SliceLayout(0, pe_l))
    _async_load(qpe_smem, q_ptr + q_off[:, None] + DV + offs_pe[None, :], mask=row_ok[:, None])
    return gl.convert_layout(down, gl.SliceLayout(0, s_l))


@gluon.jit
def _store_q8(q_smem, G: gl.constexpr, x):
    """Group G of a scaled Q row block ``x`` [ROWS, 128] (|x| < 2**8) as two e4m3 parts, hi in rows [0, ROWS) of
    q_smem[G], lo in rows [ROWS, 2 * ROWS)."""
    ROWS: gl.constexpr = x.shape[0]
    hi = x.to(gl.float8e4nv)
    q_smem.index(G).slice(0, ROWS).store(hi)
    q_smem.index(G).slice(ROWS, ROWS).store((x - hi.to(gl.float32)).to(gl.float8e4nv))


@gluon.jit
def _group_keys(view, G: gl.constexpr, a_l: gl.constexpr):
    return gl.convert_layout(_e4m3_to_f16(view.slice(G * GROUP, GROUP, dim=1).load(_qk_load_layout())), a_l)


@gluon.jit
def _group_keys_scaled(view, sc, G: gl.constexpr, a_l: gl.constexpr):
    """Group G's keys times their scales ``sc`` [64, 4] (``_scale_qk_layout``) in float16, as the MMA's register
    operand (the same range as ``_values``: exact below 65504)."""
    ld_l: gl.constexpr = _qk_load_layout()
    raw = view.slice(G * GROUP, GROUP, dim=1).load(ld_l)
    g = gl.arange(0, 4, layout=gl.SliceLayout(0, sc.type.layout))
    # (the scale layout spreads keys over threads as ld_l does: the conversion moves no data)
    c = gl.convert_layout(gl.sum(gl.where(g[None, :] == G, sc, 0.0), axis=1), gl.SliceLayout(1, ld_l))
    return gl.convert_layout(_e4m3_to_f16(raw) * c.to(gl.float16)[:, None], a_l)


@gluon.jit
def _scores_folded(stg, sc_buf, pe_buf, q_smem, qpe_smem, row_scale, qk_scale, ROWS: gl.constexpr,
                   s_l: gl.constexpr, QK_WAVES: gl.constexpr):
    """``_scores`` with the scales multiplied into the keys (float16, as ``_values`` does for V): the four group
    MMAs accumulate into one S^T, so one accumulator is live instead of four (at 32 rows, 48 registers a
    thread fewer, which ``_scores`` would spill)."""
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_l, k_width=2)
    view = _view(stg, gl.uint8, [BLOCK_N, DV], _qk_view())
    zero = gl.zeros([BLOCK_N, ROWS], gl.float32, layout=s_l)
    sc = sc_buf.load(_scale_qk_layout())
    spe = warpgroup_mma(pe_buf, qpe_smem.permute((1, 0)), zero, use_acc=False, is_async=True)
    k0 = _group_keys_scaled(view, sc, 0, a_l)
    s = warpgroup_mma(k0, q_smem.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
    k1 = _group_keys_scaled(view, sc, 1, a_l)
    s = warpgroup_mma(k1, q_smem.index(1).permute((1, 0)), s, is_async=True)
    if QK_WAVES == 2:  # (the rope's MMA and k0's have finished; k1's may run on)
        k0 = warpgroup_mma_wait(1, deps=[k0])
    k2 = _group_keys_scaled(view, sc, 2, a_l)
    s = warpgroup_mma(k2, q_smem.index(2).permute((1, 0)), s, is_async=True)
    if QK_WAVES == 2:
        k1 = warpgroup_mma_wait(1, deps=[k1])
    k3 = _group_keys_scaled(view, sc, 3, a_l)
    s = warpgroup_mma(k3, q_smem.index(3).permute((1, 0)), s, is_async=True)
    s, spe, k0, k1, k2, k3 = warpgroup_mma_wait(0, deps=[s, spe, k0, k1, k2, k3])
    return s * row_scale[None, :] + spe * qk_scale


@gluon.jit
def _key_scales(sc_buf, s_l: gl.constexpr):
    """The tile's four scale columns (one per group of 128 dims), each laid out as S^T's keys."""
    sc_l: gl.constexpr = _scale_qk_layout()
    sc = sc_buf.load(sc_l)
    g = gl.arange(0, 4, layout=gl.SliceLayout(0, sc_l))
    key_l: gl.constexpr = gl.SliceLayout(1, s_l)
    c0 = gl.convert_layout(gl.sum(gl.where(g[None, :] == 0, sc, 0.0), axis=1), key_l)
    c1 = gl.convert_layout(gl.sum(gl.where(g[None, :] == 1, sc, 0.0), axis=1), key_l)
    c2 = gl.convert_layout(gl.sum(gl.where(g[None, :] == 2, sc, 0.0), axis=1), key_l)
    c3 = gl.convert_layout(gl.sum(gl.where(g[None, :] == 3, sc, 0.0), axis=1), key_l)
    return c0, c1, c2, c3


@gluon.jit
def _scores(stg, sc_buf, pe_buf, q_smem, qpe_smem, row_scale, qk_scale, ROWS: gl.constexpr, s_l: gl.constexpr,
            QK_WAVES: gl.constexpr):
    """S^T [64 keys, ROWS] of one tile in log2 units: four float16 group MMAs on the raw tile's values, each
    product times its keys' scales (fp32), plus one bfloat16 MMA on the rope dims. QK_WAVES = 2: at most two
    groups' keys in registers at a time (when registers are short, ptxas serializes the MMAs instead)."""
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_l, k_width=2)
    view = _view(stg, gl.uint8, [BLOCK_N, DV], _qk_view())
    zero = gl.zeros([BLOCK_N, ROWS], gl.float32, layout=s_l)
    k0 = _group_keys(view, 0, a_l)
    s0 = warpgroup_mma(k0, q_smem.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
    k1 = _group_keys(view, 1, a_l)
    s1 = warpgroup_mma(k1, q_smem.index(1).permute((1, 0)), zero, use_acc=False, is_async=True)
    if QK_WAVES == 2:
        s0, k0 = warpgroup_mma_wait(1, deps=[s0, k0])
    k2 = _group_keys(view, 2, a_l)
    s2 = warpgroup_mma(k2, q_smem.index(2).permute((1, 0)), zero, use_acc=False, is_async=True)
    if QK_WAVES == 2:
        s1, k1 = warpgroup_mma_wait(1, deps=[s1, k1])
    k3 = _group_keys(view, 3, a_l)
    s3 = warpgroup_mma(k3, q_smem.index(3).permute((1, 0)), zero, use_acc=False, is_async=True)
    spe = warpgroup_mma(pe_buf, qpe_smem.permute((1, 0)), zero, use_acc=False, is_async=True)
    c0, c1, c2, c3 = _key_scales(sc_buf, s_l)
    s0, s1, s2, s3, spe, k0, k1, k2, k3 = warpgroup_mma_wait(0, deps=[s0, s1, s2, s3, spe, k0, k1, k2, k3])
    s = s0 * c0[:, None] + s1 * c1[:, None] + s2 * c2[:, None] + s3 * c3[:, None]
    return s * row_scale[None, :] + spe * qk_scale


@gluon.jit
def _scores_fp8(stg, sc_buf, pe_buf, q_smem, qpe_smem, row_scale, qk_scale, ROWS: gl.constexpr, s_l: gl.constexpr,
                QK_WAVES: gl.constexpr):
    """``_scores`` with QK_E4M3: each group's keys go to the tensor cores as e4m3 straight from the raw tile, against
    Q's two e4m3 parts stacked as 2 * ROWS columns (``_load_q``), one MMA a group; no register operand, no
    conversion. QK_WAVES: 1, the four groups' accumulators live at once; 2, two at a time."""
    keys = _view(stg, gl.float8e4nv, [4 * BLOCK_N, GROUP], _nv8())
    zero = gl.zeros([BLOCK_N, ROWS], gl.float32, layout=s_l)
    # (the e4m3 MMA's own instruction shape: k 32, both of Q's parts on N)
    s8_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                   instr_shape=[16, 2 * ROWS, 32])
    zero8 = gl.zeros([BLOCK_N, 2 * ROWS], gl.float32, layout=s8_l)
    spe = warpgroup_mma(pe_buf, qpe_smem.permute((1, 0)), zero, use_acc=False, is_async=True)
    s0 = _group_mma8(keys, q_smem, 0, zero8)
    s1 = _group_mma8(keys, q_smem, 1, zero8)
    c0, c1, c2, c3 = _key_scales(sc_buf, s_l)
    if QK_WAVES == 2:
        s0, s1 = warpgroup_mma_wait(0, deps=[s0, s1])
        s = _hi_lo(s0, s_l) * c0[:, None] + _hi_lo(s1, s_l) * c1[:, None]
        s2 = _group_mma8(keys, q_smem, 2, zero8)
        s3 = _group_mma8(keys, q_smem, 3, zero8)
        spe, s2, s3 = warpgroup_mma_wait(0, deps=[spe, s2, s3])
        s = s + _hi_lo(s2, s_l) * c2[:, None] + _hi_lo(s3, s_l) * c3[:, None]
    else:
        s2 = _group_mma8(keys, q_smem, 2, zero8)
        s3 = _group_mma8(keys, q_smem, 3, zero8)
        spe, s0, s1, s2, s3 = warpgroup_mma_wait(0, deps=[spe, s0, s1, s2, s3])
        s = (_hi_lo(s0, s_l) * c0[:, None] + _hi_lo(s1, s_l) * c1[:, None] + _hi_lo(s2, s_l) * c2[:, None]
             + _hi_lo(s3, s_l) * c3[:, None])
    return s * row_scale[None, :] + spe * qk_scale


@gluon.jit
def _group_mma8(keys, q_smem, G: gl.constexpr, zero):
    """Group G's keys (e4m3, shared memory) times Q's two parts of the group, issued (not awaited)."""
    # (K = 128 accumulated in the tensor cores, no fp32 promotion inside: its error stays ~2**-13 of the sum)
    return warpgroup_mma(keys.slice(G * BLOCK_N, BLOCK_N), q_smem.index(G).permute((1, 0)), zero, use_acc=False,
                         max_num_imprecise_acc=GROUP, is_async=True)


@gluon.jit
def _hi_lo(acc, s_l: gl.constexpr):
    """[64, 2 * ROWS] products with Q's hi and lo parts -> their sum [64, ROWS] (the part is a register bit of the
    MMA layout: no data moves)."""
    ROWS: gl.constexpr = acc.shape[1] // 2
    hi, lo = gl.split(gl.permute(gl.reshape(acc, [acc.shape[0], 2, ROWS]), (0, 2, 1)))
    return gl.convert_layout(hi + lo, s_l)


@gluon.jit
def _value_scales(sc_buf, PARTS: gl.constexpr, PAIRS: gl.constexpr = False):
    """A tile's scales [4 groups, 64 keys] as float16, shaped [1, 4, 1, 64] to broadcast over a part of V^T in
    ``_pv_load_layout`` (or ``_pv_pair_layout`` with PAIRS; warp w's rows are group w's dims)."""
    l: gl.constexpr = _pv_pair_layout(PARTS) if PAIRS else _pv_load_layout(PARTS)
    sc = sc_buf.permute((1, 0)).load(gl.SliceLayout(0, gl.SliceLayout(2, l)))
    return gl.expand_dims(gl.expand_dims(sc, 0), 2).to(gl.float16)


@gluon.jit
def _values(stg, sc_buf, sc, P: gl.constexpr, PARTS: gl.constexpr, o_l: gl.constexpr, QK_E4M3: gl.constexpr = False,
            PAIRS: gl.constexpr = False):
    """Part P of PARTS row ranges of V^T [512, 64] of one tile, as float16 register operand: raw values times their
    scales (rows as ``_PV_VIEW``). PAIRS: the bytes paired by key before their conversion (``_pv_pair_layout``),
    the scales ``sc`` loaded once a tile by the caller; else the scales loaded here from ``sc_buf``."""
    hi: gl.constexpr = 8 // PARTS
    raw = _view(stg, gl.uint8, [8, 4, 16, BLOCK_N], _pv_view_4d(QK_E4M3)).slice(P * hi, hi, dim=0).load(
        _pv_load_layout(PARTS))
    if PAIRS:
        raw = gl.convert_layout(raw, _pv_pair_layout(PARTS))  # (within each thread: bytes permuted)
    else:
        sc = _value_scales(sc_buf, PARTS)
    v = _e4m3_to_f16_scaled(raw, gl.broadcast(sc, raw)[0])
    return gl.convert_layout(gl.reshape(v, [DV // PARTS, BLOCK_N]),
                             gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2))


@gluon.constexpr_function
def _last_dim_first(layout):
    """A linear ``layout`` with the register bases that step along the last dim first (in its order): a thread's
    values along that dim are then consecutive registers, which a store writes with one wide instruction."""
    regs = [list(b) for b in layout.reg_bases]
    last = sorted((b for b in regs if b[-1]), key=lambda b: b[-1])
    return gl.DistributedLinearLayout(reg_bases=last + [b for b in regs if not b[-1]], lane_bases=layout.lane_bases,
                                      warp_bases=layout.warp_bases, block_bases=layout.block_bases,
                                      shape=layout.shape)


@gluon.jit
def part_out(acc, P: gl.constexpr, PARTS: gl.constexpr, row_block, ROWS: gl.constexpr):
    """Part P of PARTS (2 or 4) row ranges of O^T as output rows: (acc [ROWS, 32, W], its output columns [32, W],
    its query rows), W = 16 / PARTS. O^T's rows are permuted value dims (module docstring), and a thread's rows in a
    part are W consecutive dims: the last axis holds them (reshaped and permuted, no data moved), so the stores are
    W wide."""
    W: gl.constexpr = 16 // PARTS
    acc_t = gl.permute(acc, (1, 0))
    # a part's row r: bits 0..2 -> dim bits 4..6, 3 -> 0, 4..5 -> 7..8, 6 (and 7 with 2 parts) -> 1 (and 2)
    if PARTS == 4:
        acc3 = gl.reshape(gl.permute(gl.reshape(acc_t, [ROWS, 2, 4, 2, 8]), (0, 2, 4, 1, 3)), [ROWS, 32, W])
    else:
        acc3 = gl.reshape(gl.permute(gl.reshape(acc_t, [ROWS, 2, 2, 4, 2, 8]), (0, 3, 5, 1, 2, 4)), [ROWS, 32, W])
    o_l: gl.constexpr = _last_dim_first(acc3.type.layout)
    acc3 = gl.convert_layout(acc3, o_l)  # (a register renaming: no data moves)
    c = gl.arange(0, 32, layout=gl.SliceLayout(1, gl.SliceLayout(0, o_l)))
    v = gl.arange(0, W, layout=gl.SliceLayout(0, gl.SliceLayout(0, o_l)))
    offs_o = ((c >> 3) * 128 + (c & 7) * 16 + P * W)[:, None] + v[None, :]
    rows = row_block * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, gl.SliceLayout(2, o_l)))
    return acc3, offs_o, rows


@gluon.jit
def _store_part(acc, P: gl.constexpr, PARTS: gl.constexpr, m_i, l_i, seq, part, first, whole, row_block, rows_per_seq,
                h_q, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                stride_ls, ROWS: gl.constexpr):
    """``_store_segment`` for part P of PARTS row ranges of O^T."""
    acc_t, offs_o, rows_o = part_out(acc, P, PARTS, row_block, ROWS)
    _store_segment(acc_t, m_i, l_i, seq, part, first, whole, rows_o, rows_o < rows_per_seq, offs_o, rows_per_seq, h_q,
                   out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                   stride_ls, P == 0)


@gluon.jit
def _q_and_stages(ROWS: gl.constexpr, STAGES: gl.constexpr, QK_E4M3: gl.constexpr):
    """Q's value dims and STAGES raw tiles' bytes (``_buffers_t``)."""
    if QK_E4M3:
        q_smem = gl.allocate_shared_memory(gl.float8e4nv, [4, 2 * ROWS, GROUP], _nv8())
        stage = gl.allocate_shared_memory(gl.uint8, [STAGES, 4 * BLOCK_N, GROUP], _nv8())
    else:
        wide_sl: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        q_smem = gl.allocate_shared_memory(gl.float16, [4, ROWS, GROUP], wide_sl)
        stage = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, DV],
                                          gl.SwizzledSharedLayout(vec=16, per_phase=1, max_phase=8, order=[1, 0]))
    return q_smem, stage


@gluon.jit
def _copy_view(stg, QK_E4M3: gl.constexpr):
    """A raw tile's bytes as [64 keys, 512] for its copy."""
    if QK_E4M3:
        return _view(stg, gl.uint8, [BLOCK_N, DV], _raw8_view())
    else:
        return stg


@gluon.jit
def _buffers_t(ROWS: gl.constexpr, STAGES: gl.constexpr, QK_E4M3: gl.constexpr = False):
    """Shared memory of one program: Q (float16, permuted, and its bfloat16 rope dims), P^T, and STAGES raw tiles
    (e4m3 bytes with their 16-byte chunks XOR-swizzled by key, scales, rope values). QK_E4M3: Q as two e4m3 parts,
    the raw tiles' bytes as ``_RAW8``."""
    wide_sl: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_smem, stage = _q_and_stages(ROWS, STAGES, QK_E4M3)
    qpe_smem = gl.allocate_shared_memory(gl.bfloat16, [ROWS, DR], wide_sl)
    p_smem = gl.allocate_shared_memory(gl.float16, [ROWS, BLOCK_N], wide_sl)
    stage_scale = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_N, 4],
                                            gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0]))
    pe_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_N, DR], wide_sl)
    return q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs


@gluon.jit
def _copy_ahead(stage, stage_scale, pe_bufs, slot: gl.constexpr, k_ptr, table_row, start, hi, stride_kb, stride_kt,
                stride_table, limit, page_size, INDEXED: gl.constexpr, PAGE_TILE: gl.constexpr = False,
                QK_E4M3: gl.constexpr = False):
    """A tile of ``_attend_t``'s prologue (keys from ``start``, those past ``hi`` zero-filled) issued into stage
    ``slot``, uncommitted. Slot 0 is also issued before Q's load (COPY_BEFORE_Q, ``_attend_t``'s ISSUED), so Q's
    ~2.5 us round trip overlaps the tile's (benchmarks/NOTES.md, twenty-seventh session)."""
    tile_page = None
    if PAGE_TILE:
        tile_page = _tile_page(table_row, start, hi, stride_table, limit, page_size)
    _issue_fp8_tile(_copy_view(stage.index(slot), QK_E4M3), stage_scale.index(slot), pe_bufs.index(slot), k_ptr,
                    table_row, start, hi, stride_kb, stride_kt, stride_table, limit, page_size, INDEXED, BLOCK_N,
                    WARPS, 8, None, tile_page)


@gluon.jit
def _attend_t(q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs, k_ptr, table_row, lo, hi, row_limit, row_scale,
              stride_kb, stride_kt, stride_table, limit, page_size, qk_scale, INDEXED: gl.constexpr,
              ROWS: gl.constexpr, STAGES: gl.constexpr, PV_PARTS: gl.constexpr, QK_WAVES: gl.constexpr,
              s_l: gl.constexpr, IDS_AHEAD: gl.constexpr = False, PAGE_TILE: gl.constexpr = False,
              FOLD_SCALES: gl.constexpr = False, STEP: gl.constexpr = 1, QK_E4M3: gl.constexpr = False,
              LAZY: gl.constexpr = False, PAIRS: gl.constexpr = False, ISSUED: gl.constexpr = False):
    """Keys [lo, hi) against the ROWS query rows in ``q_smem`` / ``qpe_smem`` (``_load_q``, its copies committed):
    raw tiles copied STAGES - 1 ahead, online softmax in log2 units. Keys are ``decode_sm90._key_offsets``'s
    (paged positions, or top-k entries with ``INDEXED``); key c counts for row r below ``row_limit[r]``.
    IDS_AHEAD (with INDEXED): each tile's entries are loaded an iteration before its copy is issued; PAGE_TILE
    (paged, pages a whole number of tiles): the tile's one page look-up is (``decode_sm90._tile_page``).
    FOLD_SCALES: the scores by ``_scores_folded`` (one accumulator). STEP: every STEP-th tile from ``lo`` on
    (``_dual_wg``: two warpgroups on alternate tiles). QK_E4M3: the scores by ``_scores_fp8`` (Q and the buffers
    as ``_buffers_t`` makes them with it). LAZY: the running max moves (and O^T is rescaled) only when a row's max
    has grown by more than RESCALE_AT; else on every tile. PAIRS: V^T's bytes paired by key before their
    conversion, its scales loaded once a tile (``_values``). ISSUED: the caller has issued tile 0's copy
    (``_copy_ahead``, before Q's load), uncommitted: Q's rope copy joins its group.
    Returns O^T in PV_PARTS row ranges (the last two unused with 2), the row max and the row sum."""
    col_l: gl.constexpr = gl.SliceLayout(0, s_l)
    key_l: gl.constexpr = gl.SliceLayout(1, s_l)
    cp.commit_group()
    tile_page = None  # (with PAGE_TILE: the page of the next tile to copy)
    TILE: gl.constexpr = STEP * BLOCK_N  # keys from one of this loop's tiles to the next
    for i in gl.static_range(1 if ISSUED else 0, STAGES - 1):
        # a tile past hi is all masked: its copy only zero-fills
        _copy_ahead(stage, stage_scale, pe_bufs, i, k_ptr, table_row, lo + i * TILE, hi, stride_kb, stride_kt,
                    stride_table, limit, page_size, INDEXED, PAGE_TILE, QK_E4M3)
        cp.commit_group()
    if PAGE_TILE:
        tile_page = _tile_page(table_row, lo + (STAGES - 1) * TILE, hi, stride_table, limit, page_size)
    ids_cp = None  # (with IDS_AHEAD: the entries of the next tile to copy, else looked up at the copy)
    if IDS_AHEAD:
        # top-k entries read an iteration before their use, so no copy waits on an index load: those of the next
        # tile to copy, and those of tile 0 for its key mask
        cp_keys: gl.constexpr = fp8_copy_keys(WARPS, 8)
        ids_cp = _entries(table_row, lo + (STAGES - 1) * TILE, hi, stride_table, BLOCK_N, cp_keys)
        ids_key = _entries(table_row, lo, hi, stride_table, BLOCK_N, key_l)
    # O^T in PV_PARTS row ranges (acc2, acc3 unused with 2)
    acc0 = gl.zeros([DV // PV_PARTS, ROWS], gl.float32, layout=s_l)
    acc1 = gl.zeros([DV // PV_PARTS, ROWS], gl.float32, layout=s_l)
    acc2 = gl.zeros([DV // PV_PARTS, ROWS], gl.float32, layout=s_l)
    acc3 = gl.zeros([DV // PV_PARTS, ROWS], gl.float32, layout=s_l)
    m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=col_l)
    l_t = gl.zeros([BLOCK_N, ROWS], gl.float32, layout=s_l)  # row sums, reduced over keys at the end
    for j in range((hi - lo + TILE - 1) // TILE):
        start = lo + j * TILE
        cp.wait_group(STAGES - 2)
        fence_async_shared()
        # tile j has landed for every thread, and every warp is done with tile j - 1 (its slot, P)
        _cta_barrier()
        nxt = start + (STAGES - 1) * TILE
        if nxt < hi:
            slot = (j + STAGES - 1) % STAGES
            _issue_fp8_tile(_copy_view(stage.index(slot), QK_E4M3), stage_scale.index(slot), pe_bufs.index(slot), k_ptr,
                            table_row, nxt, hi, stride_kb, stride_kt, stride_table, limit, page_size,
                            INDEXED, BLOCK_N, WARPS, 8, ids_cp, tile_page)
        if PAGE_TILE:
            tile_page = _tile_page(table_row, nxt + TILE, hi, stride_table, limit, page_size)
        if IDS_AHEAD:
            ids_cp = _entries(table_row, nxt + TILE, hi, stride_table, BLOCK_N, cp_keys)
            _, key_ok = _id_offsets(ids_key, stride_kb, stride_kt, limit, page_size)
            ids_key = _entries(table_row, start + TILE, hi, stride_table, BLOCK_N, key_l)
        cp.commit_group()
        stg = stage.index(j % STAGES)
        sc_buf = stage_scale.index(j % STAGES)
        if QK_E4M3:
            qk = _scores_fp8(stg, sc_buf, pe_bufs.index(j % STAGES), q_smem, qpe_smem, row_scale, qk_scale, ROWS, s_l,
                             QK_WAVES)
        elif FOLD_SCALES:
            qk = _scores_folded(stg, sc_buf, pe_bufs.index(j % STAGES), q_smem, qpe_smem, row_scale, qk_scale, ROWS,
                                s_l, QK_WAVES)
        else:
            qk = _scores(stg, sc_buf, pe_bufs.index(j % STAGES), q_smem, qpe_smem, row_scale, qk_scale, ROWS,
                         s_l, QK_WAVES)
        key_pos = start + gl.arange(0, BLOCK_N, layout=key_l)
        if not IDS_AHEAD:  # (else key_ok came with the entries loaded ahead)
            if INDEXED:
                _, key_ok = _key_offsets(table_row, start, hi, stride_kb, stride_kt, stride_table, limit,
                                         page_size, INDEXED, BLOCK_N, key_l)
            else:
                key_ok = key_pos < hi  # no page look-up needed
        visible = key_ok[:, None] & (key_pos[:, None] < row_limit[None, :])
        qk = gl.where(visible, qk, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(qk, axis=0))
        if LAZY:
            # The running max moves on only when some row's max has grown by more than RESCALE_AT (log2 units):
            # until then P is taken against the old max (so P < 2**RESCALE_AT, well inside float16), and O^T and
            # the sums need no rescaling, which after the first tiles is nearly every tile (FlashAttention-4's
            # trick). The test is uniform over the warpgroup (every warp holds every row's max).
            if gl.max(gl.where(m_new > m_i, m_new - m_i, 0.0), axis=0) > RESCALE_AT:
                alpha = gl.exp2(m_i - gl.where(m_new == float("-inf"), 0.0, m_new))
                l_t = l_t * alpha[None, :]
                acc0 = acc0 * alpha[None, :]
                acc1 = acc1 * alpha[None, :]
                if PV_PARTS == 4:
                    acc2 = acc2 * alpha[None, :]
                    acc3 = acc3 * alpha[None, :]
                m_i = m_new
            p = gl.exp2(qk - gl.where(m_i == float("-inf"), 0.0, m_i)[None, :])
            l_t = l_t + p
        else:
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
            p = gl.exp2(qk - m_safe[None, :])
            alpha = gl.exp2(m_i - m_safe)
            l_t = l_t * alpha[None, :] + p
            m_i = m_new
            acc0 = acc0 * alpha[None, :]
            acc1 = acc1 * alpha[None, :]
        p_smem.permute((1, 0)).store(p.to(gl.float16))
        sc_v = None
        if PAIRS:
            sc_v = _value_scales(sc_buf, PV_PARTS, True)
        v0 = _values(stg, sc_buf, sc_v, 0, PV_PARTS, s_l, QK_E4M3, PAIRS)
        fence_async_shared()
        _cta_barrier()
        acc0 = warpgroup_mma(v0, p_smem.permute((1, 0)), acc0, is_async=True)
        # part q + 1 converts while part q's MMAs run
        v1 = _values(stg, sc_buf, sc_v, 1, PV_PARTS, s_l, QK_E4M3, PAIRS)
        acc1 = warpgroup_mma(v1, p_smem.permute((1, 0)), acc1, is_async=True)
        if PV_PARTS == 4:
            # two parts in registers at most
            if not LAZY:
                acc2 = acc2 * alpha[None, :]
                acc3 = acc3 * alpha[None, :]
            acc0, v0 = warpgroup_mma_wait(1, deps=[acc0, v0])
            v2 = _values(stg, sc_buf, sc_v, 2, PV_PARTS, s_l, QK_E4M3, PAIRS)
            acc2 = warpgroup_mma(v2, p_smem.permute((1, 0)), acc2, is_async=True)
            acc1, v1 = warpgroup_mma_wait(1, deps=[acc1, v1])
            v3 = _values(stg, sc_buf, sc_v, 3, PV_PARTS, s_l, QK_E4M3, PAIRS)
            acc3 = warpgroup_mma(v3, p_smem.permute((1, 0)), acc3, is_async=True)
            acc2, acc3, v2, v3 = warpgroup_mma_wait(0, deps=[acc2, acc3, v2, v3])
        else:
            acc0, acc1, v0, v1 = warpgroup_mma_wait(0, deps=[acc0, acc1, v0, v1])
    cp.wait_group(0)
    return acc0, acc1, acc2, acc3, m_i, gl.sum(l_t, axis=0)


@gluon.constexpr_function
def _merge_layout(ROWS):
    """[ROWS, 512] fp32 rows of the fused combine: a warp's lanes along a row, 4 values a thread (16-byte loads)."""
    return gl.BlockedLayout([1, 4], [1, 32], [WARPS, 1], [1, 0])


@gluon.jit
def _row_ptrs(out_ptr, lse_ptr, seq, rows, h_q, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls):
    """Where query rows ``rows`` of sequence ``seq`` go in out [b, s_q, h_q, 512] (row starts) and lse [b, h_q, s_q]."""
    row_s = rows // h_q
    row_h = rows % h_q
    o_rows = (out_ptr + seq.to(gl.int64) * stride_ob + row_s.to(gl.int64) * stride_os
              + row_h.to(gl.int64) * stride_oh)
    return o_rows, lse_ptr + seq.to(gl.int64) * stride_lb + row_h * stride_lh + row_s * stride_ls


@gluon.jit
def _store_empty(out_ptr, lse_ptr, seq, row_block, rows_per_seq, h_q, stride_ob, stride_os, stride_oh, stride_lb,
                 stride_lh, stride_ls, ROWS: gl.constexpr):
    """The output of a sequence with no keys (FlashMLA's convention: out = 0, lse = +inf), for the fused combine."""
    m_l: gl.constexpr = _merge_layout(ROWS)
    rows = row_block * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, m_l))
    cols = gl.arange(0, DV, layout=gl.SliceLayout(0, m_l))
    row_ok = rows < rows_per_seq
    o_rows, lse_rows = _row_ptrs(out_ptr, lse_ptr, seq, rows, h_q, stride_ob, stride_os, stride_oh, stride_lb,
                                 stride_lh, stride_ls)
    gl.store(o_rows[:, None] + cols[None, :], gl.zeros([ROWS, DV], out_ptr.dtype.element_ty, layout=m_l),
             mask=row_ok[:, None])
    gl.store(lse_rows, gl.full([ROWS], float("inf"), gl.float32, layout=gl.SliceLayout(1, m_l)), mask=row_ok)


@gluon.jit
def _count_part(counter_ptr, seq, row_block, row_blocks, first, last):
    """``decode._count_part``: one release-acquire add at GPU scope after every thread's stores; True for the
    program storing the last of the sequence's parts."""
    _cta_barrier()
    done = gl.atomic_add(counter_ptr + seq * row_blocks + row_block, 1, sem="acq_rel", scope="gpu")
    return done == last - first


@gluon.jit
def _merge_parts_t(o_part_ptr, lse_part_ptr, out_ptr, lse_ptr, seq, seq_g0, first, last, total, parts, row_block,
                   rows_per_seq, h_q, stride_ob, stride_os, stride_oh, stride_lb, stride_lh, stride_ls,
                   ROWS: gl.constexpr):
    """``decode._merge_parts`` for ROWS query rows of all 512 columns: a split sequence's output from its parts'
    partial rows (L2 loads: other SMs wrote them during this kernel)."""
    m_l: gl.constexpr = _merge_layout(ROWS)
    r_l: gl.constexpr = gl.SliceLayout(1, m_l)
    rows = row_block * ROWS + gl.arange(0, ROWS, layout=r_l)
    cols = gl.arange(0, DV, layout=gl.SliceLayout(0, m_l))
    row_ok = rows < rows_per_seq
    # the first part holds this sequence in slot 0 only if its range starts at the sequence
    first_slot = first * 2 + gl.where(_part_start(total, first, parts) == seq_g0, 0, 1)
    m = gl.full([ROWS], float("-inf"), gl.float32, layout=r_l)
    acc = gl.zeros([ROWS, DV], gl.float32, layout=m_l)
    wsum = gl.zeros([ROWS], gl.float32, layout=r_l)
    for p in range(first, last + 1):
        slot = gl.where(p == first, first_slot, p * 2)
        part_rows = slot.to(gl.int64) * rows_per_seq + rows
        lse2 = gl.load(lse_part_ptr + part_rows, mask=row_ok, other=float("-inf"), cache_modifier=".cg")
        o = gl.load(o_part_ptr + (part_rows * DV)[:, None] + cols[None, :], mask=row_ok[:, None], other=0.0,
                    cache_modifier=".cg")
        m_new = gl.maximum(m, lse2)
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(m - m_safe)
        w = gl.exp2(lse2 - m_safe)
        acc = acc * alpha[:, None] + w[:, None] * o
        wsum = wsum * alpha + w
        m = m_new
    m_safe = gl.where(m == float("-inf"), 0.0, m)
    empty = wsum == 0.0
    o_rows, lse_rows = _row_ptrs(out_ptr, lse_ptr, seq, rows, h_q, stride_ob, stride_os, stride_oh, stride_lb,
                                 stride_lh, stride_ls)
    gl.store(o_rows[:, None] + cols[None, :], (acc / gl.where(empty, 1.0, wsum)[:, None]).to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None])
    gl.store(lse_rows, gl.where(empty, float("inf"), (m_safe + gl.log2(gl.where(empty, 1.0, wsum))) * LN2),
             mask=row_ok)


@gluon.jit
def _decode_sm90_fp8_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, num_blocks, page_size, max_len, num_parts, qk_scale, counter_ptr,
    ROWS: gl.constexpr, STAGES: gl.constexpr, MIN_BLOCKS_PER_PART: gl.constexpr, CAUSAL: gl.constexpr,
    PV_PARTS: gl.constexpr, QK_WAVES: gl.constexpr, PAGE_TILE: gl.constexpr = False, QK_E4M3: gl.constexpr = False,
    LAZY: gl.constexpr = False, PAIRS: gl.constexpr = False, FUSED: gl.constexpr = False,
    COPY_BEFORE_Q: gl.constexpr = False,
):
    """``decode_sm90._decode_sm90_kernel``'s program over the FP8 cache (uint8, strides in bytes) for blocks of
    ROWS (8 or 16) query rows, one warpgroup; raw tiles are copied STAGES - 1 ahead. FUSED: no combine kernel
    follows (``decode._decode_kernel``'s FUSED: the program storing a split sequence's last part merges its parts,
    ``counter_ptr`` b x row blocks int32 zeroed; empty sequences are written by the part at their place).
    COPY_BEFORE_Q: a segment's first tile is copied before its Q is loaded (``_copy_ahead``)."""
    s_l: gl.constexpr = _mma_layout(ROWS)
    q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs = _buffers_t(ROWS, STAGES, QK_E4M3)

    part = gl.program_id(0)
    row_block = gl.program_id(1)
    g_lo, g_hi, seq, seq_g0, total, parts = _part_plan(seqlens_ptr, stride_seqlens, batch, max_len, num_parts, part,
                                                       MIN_BLOCKS_PER_PART, BLOCK_N, WARPS, FUSED)
    rows_per_seq = s_q * h_q
    row_blocks = (rows_per_seq + ROWS - 1) // ROWS
    col_l: gl.constexpr = gl.SliceLayout(0, s_l)
    rows_s = row_block * ROWS + gl.arange(0, ROWS, layout=col_l)
    # (FUSED) the last part also visits the empty sequences after the last block
    tail = (part == parts - 1) & FUSED

    g = g_lo
    while (g < g_hi) | (tail & (seq < batch)):
        n, seg_hi, lo, hi, row_limit = _segment(seqlens_ptr, stride_seqlens, seq, g, g_hi, seq_g0, max_len, rows_s, s_q,
                                                h_q, BLOCK_N, CAUSAL)
        if FUSED:
            if n == 0:
                _store_empty(out_ptr, lse_ptr, seq, row_block, rows_per_seq, h_q, stride_ob, stride_os, stride_oh,
                             stride_lb, stride_lh, stride_ls, ROWS)
        if n > 0:
            table_row = block_table_ptr + seq.to(gl.int64) * stride_btb
            # every warp is done with the previous segment's buffers before they are refilled
            _cta_barrier()
            if COPY_BEFORE_Q:
                _copy_ahead(stage, stage_scale, pe_bufs, 0, k_ptr, table_row, lo, hi, stride_kb, stride_kt,
                            stride_btp, num_blocks, page_size, False, PAGE_TILE, QK_E4M3)
            down = _load_q(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh, ROWS,
                           s_l, QK_E4M3)
            row_scale = down * qk_scale
            acc0, acc1, acc2, acc3, m_i, l_i = _attend_t(
                q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs, k_ptr, table_row, lo, hi, row_limit,
                row_scale, stride_kb, stride_kt, stride_btp, num_blocks, page_size, qk_scale, False, ROWS, STAGES,
                PV_PARTS, QK_WAVES, s_l, False, PAGE_TILE, QK_E4M3=QK_E4M3, LAZY=LAZY, PAIRS=PAIRS,
                ISSUED=COPY_BEFORE_Q)
            first = g == g_lo
            whole = (g == seq_g0) & (seg_hi == seq_g0 + n)
            _store_part(acc0, 0, PV_PARTS, m_i, l_i, seq, part, first, whole, row_block, rows_per_seq, h_q,
                        out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_ob, stride_os, stride_oh, stride_lb,
                        stride_lh, stride_ls, ROWS)
            _store_part(acc1, 1, PV_PARTS, m_i, l_i, seq, part, first, whole, row_block, rows_per_seq, h_q,
                        out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_ob, stride_os, stride_oh, stride_lb,
                        stride_lh, stride_ls, ROWS)
            if PV_PARTS == 4:
                _store_part(acc2, 2, PV_PARTS, m_i, l_i, seq, part, first, whole, row_block, rows_per_seq, h_q,
                            out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_ob, stride_os, stride_oh, stride_lb,
                            stride_lh, stride_ls, ROWS)
                _store_part(acc3, 3, PV_PARTS, m_i, l_i, seq, part, first, whole, row_block, rows_per_seq, h_q,
                            out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_ob, stride_os, stride_oh, stride_lb,
                            stride_lh, stride_ls, ROWS)
            if FUSED:
                if not whole:
                    p_first = _part_of_block(seq_g0, total, parts)
                    p_last = _part_of_block(seq_g0 + n - 1, total, parts)
                    if _count_part(counter_ptr, seq, row_block, row_blocks, p_first, p_last):
                        _merge_parts_t(o_part_ptr, lse_part_ptr, out_ptr, lse_ptr, seq, seq_g0, p_first, p_last,
                                       total, parts, row_block, rows_per_seq, h_q, stride_ob, stride_os, stride_oh,
                                       stride_lb, stride_lh, stride_ls, ROWS)
        g = seg_hi
        seq_g0 += n
        seq += 1


# -- 32 rows, two warpgroups on alternate tiles ----------------------------------------------------------------------
# mbarriers of the dual program
MERGED = gl.constexpr(0)  # warpgroup 1's state of a segment is in shared memory (1 arrival)
QREADY = gl.constexpr(1)  # warpgroup 0 has put a segment's Q in shared memory (1 arrival)
DUAL_REGS = gl.constexpr(256)


@gluon.constexpr_function
def _o_other_layout():
    """Warpgroup 1's O^T handed over in shared memory: plain rows (written and read once a segment)."""
    return gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])


@gluon.jit
def _o_other(stage, STAGES: gl.constexpr, ROWS: gl.constexpr):
    """Where warpgroup 1 of a dual program hands its O^T over: [2 parts, 256, ROWS] fp32 over its own stages
    (``stage``'s upper STAGES, which it no longer reads then; 64 KB at 32 rows)."""
    return _view(stage.slice(STAGES, STAGES), gl.float32, [2, DV // 2, ROWS], _o_other_layout())


@gluon.jit
def _pass_q(stats, down, qready):
    """Warpgroup 0 of a dual program, its Q just issued (``_load_q``, whose row scales are ``down``): the scales into
    ``stats`` row 0, Q landed for every thread (its rope copy, with whatever else this warpgroup has issued), then
    an arrival on the mbarrier ``qready``."""
    ROWS: gl.constexpr = down.shape[0]
    stats.slice(0 * ROWS, ROWS).store(down)
    cp.commit_group()
    cp.wait_group(0)
    fence_async_shared()
    _cta_barrier()
    mbarrier.arrive(qready)


@gluon.jit
def _wait_q(stats, qready, phase, col_l: gl.constexpr):
    """Warpgroup 1's side of ``_pass_q``: waits on ``qready`` (its phase ``phase``); returns Q's row scales."""
    ROWS: gl.constexpr = stats.shape[0] // 4  # (``_dual_buffers``: four rows of ROWS)
    mbarrier.wait(qready, phase)
    return stats.slice(0, ROWS).load(col_l)


@gluon.jit
def _hand_over(stats, o_other, acc0, acc1, m_i, l_i, merged):
    """Warpgroup 1 of a dual program at a segment's end: its row max and sum into ``stats`` rows 1 and 2, its O^T
    into ``o_other`` (``_o_other``), then an arrival on the mbarrier ``merged``."""
    ROWS: gl.constexpr = m_i.shape[0]
    # every warp is done reading the last tile out of the stages that O^T is about to overwrite
    _cta_barrier()
    stats.slice(1 * ROWS, ROWS).store(m_i)
    stats.slice(2 * ROWS, ROWS).store(l_i)
    o_other.index(0).store(acc0)
    o_other.index(1).store(acc1)
    _cta_barrier()
    mbarrier.arrive(merged)


@gluon.jit
def _take_over(stats, o_other, acc0, acc1, m_i, l_i, merged, phase):
    """Warpgroup 0's side of ``_hand_over``: waits on ``merged`` (its phase ``phase``), then adds warpgroup 1's
    state to its own, both relative to the larger max. Returns O^T's two parts, the row max and the row sum."""
    ROWS: gl.constexpr = m_i.shape[0]
    col_l: gl.constexpr = m_i.type.layout
    s_l: gl.constexpr = acc0.type.layout
    mbarrier.wait(merged, phase)
    m_1 = stats.slice(1 * ROWS, ROWS).load(col_l)
    l_1 = stats.slice(2 * ROWS, ROWS).load(col_l)
    m_new = gl.maximum(m_i, m_1)
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    f_0 = gl.exp2(m_i - m_safe)
    f_1 = gl.exp2(m_1 - m_safe)
    acc0 = acc0 * f_0[None, :] + o_other.index(0).load(s_l) * f_1[None, :]
    acc1 = acc1 * f_0[None, :] + o_other.index(1).load(s_l) * f_1[None, :]
    return acc0, acc1, m_new, l_i * f_0 + l_1 * f_1


@gluon.jit
def _dual_wg(W: gl.constexpr, args):
    """Warpgroup W of a dual program: tiles W, W + 2, ... of each segment (``_attend_t`` with STEP 2), each
    warpgroup with its own raw-tile stages, P^T and softmax state, Q shared. Warpgroup 0 copies Q and passes each
    row's scale on (``stats`` row 0, mbarrier QREADY); at the segment's end warpgroup 1 leaves its max, sum and O^T
    in shared memory (its max and sum in ``stats`` rows 1, 2, O^T over its own stages, which it no longer reads;
    MERGED), and warpgroup 0 adds them to its own, relative to the larger max, and stores the segment. Warpgroup 0
    copies the next Q (then QREADY) only after reading them, so QREADY also tells warpgroup 1 its stages are free."""
    (q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb, stride_qs,
     stride_qh, stride_kb, stride_kt, stride_btb, stride_btp, stride_seqlens, stride_ob, stride_os, stride_oh,
     stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len, qk_scale, part, row_block, g_lo,
     g_hi, seq, seq_g0, q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs, stats, bars, CAUSAL,
     PAGE_TILE) = args
    # (arguments reach a partition as tensors, constexprs included: QK_E4M3 is read off Q's buffer)
    QK_E4M3: gl.constexpr = q_smem.dtype.is_fp8()
    ROWS: gl.constexpr = q_smem.shape[1] // 2 if QK_E4M3 else q_smem.shape[1]
    STAGES: gl.constexpr = stage.shape[0] // 2
    s_l: gl.constexpr = _mma_layout(ROWS)
    col_l: gl.constexpr = gl.SliceLayout(0, s_l)
    rows_per_seq = s_q * h_q
    rows_s = row_block * ROWS + gl.arange(0, ROWS, layout=col_l)
    o_other = _o_other(stage, STAGES, ROWS)
    segs = 0
    g = g_lo
    while g < g_hi:
        n, seg_hi, lo, hi, row_limit = _segment(seqlens_ptr, stride_seqlens, seq, g, g_hi, seq_g0, max_len, rows_s,
                                                s_q, h_q, BLOCK_N, CAUSAL)
        if n > 0:
            table_row = block_table_ptr + seq.to(gl.int64) * stride_btb
            if W == 0:
                # warpgroup 1 finished reading the previous Q before it arrived on MERGED, which this one awaited
                down = _load_q(q_smem, qpe_smem, q_ptr, seq, row_block, s_q, h_q, stride_qb, stride_qs, stride_qh,
                               ROWS, s_l, QK_E4M3)
                _pass_q(stats, down, bars.index(QREADY))
            else:
                down = _wait_q(stats, bars.index(QREADY), segs & 1, col_l)
            acc0, acc1, acc2, acc3, m_i, l_i = _attend_t(
                q_smem, qpe_smem, p_smem.index(W), stage.slice(W * STAGES, STAGES),
                stage_scale.slice(W * STAGES, STAGES), pe_bufs.slice(W * STAGES, STAGES), k_ptr, table_row,
                lo + W * BLOCK_N, hi, row_limit, down * qk_scale, stride_kb, stride_kt, stride_btp, num_blocks,
                page_size, qk_scale, False, ROWS, STAGES, 2, 2 if QK_E4M3 else 1, s_l, False, PAGE_TILE, True, 2,
                QK_E4M3)
            if W == 1:
                _hand_over(stats, o_other, acc0, acc1, m_i, l_i, bars.index(MERGED))
            else:
                acc0, acc1, m_new, l_i = _take_over(stats, o_other, acc0, acc1, m_i, l_i, bars.index(MERGED),
                                                    segs & 1)
                first = g == g_lo
                whole = (g == seq_g0) & (seg_hi == seq_g0 + n)
                _store_part(acc0, 0, 2, m_new, l_i, seq, part, first, whole, row_block, rows_per_seq, h_q, out_ptr,
                            lse_ptr, o_part_ptr, lse_part_ptr, stride_ob, stride_os, stride_oh, stride_lb,
                            stride_lh, stride_ls, ROWS)
                _store_part(acc1, 1, 2, m_new, l_i, seq, part, first, whole, row_block, rows_per_seq, h_q, out_ptr,
                            lse_ptr, o_part_ptr, lse_part_ptr, stride_ob, stride_os, stride_oh, stride_lb,
                            stride_lh, stride_ls, ROWS)
                # every thread of this warpgroup has read warpgroup 1's state before the next Q's QREADY
                _cta_barrier()
            segs += 1
        g = seg_hi
        seq_g0 += n
        seq += 1


@gluon.jit
def _dual_wg0(args):
    _dual_wg(0, args)


@gluon.jit
def _dual_wg1(args):
    _dual_wg(1, args)


@gluon.jit
def _dual_buffers(ROWS: gl.constexpr, STAGES: gl.constexpr, QK_E4M3: gl.constexpr):
    """Shared memory of a dual program (dense or sparse): Q once, then for each warpgroup its P^T and STAGES raw
    tiles (warpgroup W's are stages [W STAGES, +STAGES)), the row statistics it passes on (``stats`` rows 0-2:
    row scales, max, sum), and the two mbarriers (initialized; the caller's CTA barrier must follow)."""
    wide_sl: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    q_smem, stage = _q_and_stages(ROWS, 2 * STAGES, QK_E4M3)
    qpe_smem = gl.allocate_shared_memory(gl.bfloat16, [ROWS, DR], wide_sl)
    p_smem = gl.allocate_shared_memory(gl.float16, [2, ROWS, BLOCK_N], wide_sl)
    stage_scale = gl.allocate_shared_memory(gl.float32, [2 * STAGES, BLOCK_N, 4],
                                            gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0]))
    pe_bufs = gl.allocate_shared_memory(gl.bfloat16, [2 * STAGES, BLOCK_N, DR], wide_sl)
    stats = gl.allocate_shared_memory(gl.float32, [4 * ROWS], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bars.index(MERGED), count=1)
    mbarrier.init(bars.index(QREADY), count=1)
    return q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs, stats, bars


@gluon.jit
def _decode_sm90_fp8_dual_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, num_blocks, page_size, max_len, num_parts, qk_scale,
    ROWS: gl.constexpr, STAGES: gl.constexpr, MIN_BLOCKS_PER_PART: gl.constexpr, CAUSAL: gl.constexpr,
    PAGE_TILE: gl.constexpr = False, QK_E4M3: gl.constexpr = False,
):
    """``_decode_sm90_fp8_kernel``'s program with two warpgroups on alternate tiles (``_dual_wg``): at 32 rows
    one program fills an SM's shared memory (Q 36 KB once, STAGES raw tiles a warpgroup), and one warpgroup's
    conversions and MMAs run while the other's do. (Not with PAIR_KEYS / LAZY_MAX: ptxas spills with them, and the
    program ran 12% slower; ``benchmarks/NOTES.md``.)"""
    q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs, stats, bars = _dual_buffers(ROWS, STAGES, QK_E4M3)
    part = gl.program_id(0)
    row_block = gl.program_id(1)
    g_lo, g_hi, seq, seq_g0 = _part_range(seqlens_ptr, stride_seqlens, batch, max_len, num_parts, part,
                                          MIN_BLOCKS_PER_PART, BLOCK_N, WARPS)
    _cta_barrier()  # the mbarriers are initialized before either warpgroup uses them
    args = (q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr, stride_qb,
            stride_qs, stride_qh, stride_kb, stride_kt, stride_btb, stride_btp, stride_seqlens, stride_ob, stride_os,
            stride_oh, stride_lb, stride_lh, stride_ls, s_q, h_q, num_blocks, page_size, max_len, qk_scale, part,
            row_block, g_lo, g_hi, seq, seq_g0, q_smem, qpe_smem, p_smem, stage, stage_scale, pe_bufs, stats, bars,
            CAUSAL, PAGE_TILE)
    gl.warp_specialize([(_dual_wg0, (args,)), (_dual_wg1, (args,))], [WARPS], [DUAL_REGS])


def _stages(config):
    """Raw tiles in shared memory (``RAW_STAGES``, at least 2: the next tile is copied while one computes)."""
    return max(2, config.get("RAW_STAGES", 2))


def _parts(config, rows_blk):
    """PV_PARTS, QK_WAVES for ``rows_blk`` rows a program (config keys ``PV_PARTS_<rows>``, ``QK_WAVES_<rows>``):
    how many pieces the MMAs' register operands come in, trading registers against waits."""
    return dict(PV_PARTS=config.get(f"PV_PARTS_{rows_blk}", 4 if rows_blk <= 8 else 2),
                QK_WAVES=config.get(f"QK_WAVES_{rows_blk}", 2 if rows_blk <= 8 else 1))


def tile_constexprs(config, rows_blk):
    """The tile loop's constexprs for ``rows_blk`` rows a program (launch and check-configs alike, dense and
    sparse); config keys ``LAZY_MAX`` and ``PAIR_KEYS``: ``_attend_t``'s LAZY and PAIRS; ``COPY_BEFORE_Q``: a
    segment's first tile copied before its Q (``_copy_ahead``)."""
    return dict(ROWS=rows_blk, STAGES=_stages(config), QK_E4M3=qk_e4m3(config), **_parts(config, rows_blk),
                LAZY=bool(config.get("LAZY_MAX", False)), PAIRS=bool(config.get("PAIR_KEYS", False)),
                COPY_BEFORE_Q=bool(config.get("COPY_BEFORE_Q", False)))


@functools.cache
def _e4m3_builds() -> bool:
    """Whether this Triton builds the QK_E4M3 programs: tried on 3.6, 3.8 and 3.9 (older ones untried)."""
    from ..configs import triton_at_least

    return triton_at_least("3.6")


def qk_e4m3(config) -> bool:
    """Whether the entry takes the scores through e4m3 MMAs (config key ``QK_E4M3``; ``_scores_fp8``) and this
    Triton builds them (else the float16 MMAs on converted keys)."""
    return bool(config.get("QK_E4M3", False)) and _e4m3_builds()


@functools.cache
def dual_builds() -> bool:
    """Whether this Triton builds the dual program: 3.9+ (3.8's compiler aborts on it, although it builds
    ``decode_sm90_ws``; 3.7 is untried). Asked on every call, so cached."""
    from ..configs import triton_at_least
    from .decode_sm90_ws import ws_supported

    return ws_supported() and triton_at_least("3.9")


def dual_enabled(config) -> bool:
    """Whether the entry sends 17-32 rows to the dual program (config key ``DUAL_32``) and this Triton builds it
    (else ``decode_sm90``'s 64-row kernel serves those rows)."""
    return bool(config.get("DUAL_32", False)) and dual_builds()


def max_rows(config) -> int:
    """The most query rows a call may have to run here (with ``KEYS_ON_M``): 32 with the dual program, else 16."""
    return DUAL_ROWS if dual_enabled(config) else 16


def dual_constexprs(config, rows_blk):
    """``_decode_sm90_fp8_dual_kernel``'s tile constexprs: two raw tiles a warpgroup (all that fits beside Q); the
    dual program takes neither ``PAIR_KEYS`` nor ``LAZY_MAX``."""
    return dict(ROWS=rows_blk, STAGES=2, QK_E4M3=qk_e4m3(config))


def block_rows(rows: int) -> int:
    """Query rows a program: 8 or 16 (the MMA's N; one warpgroup), 32 (a dual program)."""
    return 8 if rows <= 8 else 16 if rows <= 16 else DUAL_ROWS


def decode_sm90_fp8(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, num_parts, config, out, lse):
    """Launch the kernel, then ``decode._combine``. Arguments validated by ``triton_mla.api``; k_cache is the FP8
    layout viewed as uint8 (strides in bytes), q bfloat16."""
    b, s_q, h_q, _ = q.shape
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    rows = s_q * h_q
    max_len = block_table.shape[1] * page_size
    o_part = torch.empty(2 * num_parts, rows, DV.value, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(2 * num_parts, rows, dtype=torch.float32, device=q.device)
    rows_blk = block_rows(rows)
    dual = rows_blk == DUAL_ROWS  # (decode_sm90 sends more than 16 rows only where dual_enabled)
    kernel = _decode_sm90_fp8_dual_kernel if dual else _decode_sm90_fp8_kernel
    # (the dual program keeps the combine kernel)
    fused = not dual and fused_combine(config)
    row_blocks = cdiv(rows, rows_blk)
    kernel[(num_parts, row_blocks)](
        *launch_tensors(q, k_cache, block_table, cache_seqlens, out, lse, o_part, lse_part),
        b, s_q, h_q, num_blocks, page_size, max_len, num_parts, softmax_scale * LOG2E.value,
        *(() if dual else (part_counters(b, row_blocks, q.device) if fused else lse_part,)),
        MIN_BLOCKS_PER_PART=config["MIN_BLOCKS_PER_PART"], CAUSAL=bool(causal and s_q > 1),
        PAGE_TILE=page_tile(page_size, BLOCK_N.value, k_cache.stride(1), config),
        **(dual_constexprs(config, rows_blk) if dual else dict(tile_constexprs(config, rows_blk), FUSED=fused)),
        **FP_FUSION, num_warps=WARPS.value,
    )
    if not fused:
        common = dict(DV=DV.value, BLOCK_DV=DV.value, BLOCK_H=16, BLOCK_N=BLOCK_N.value,
                      MIN_BLOCKS_PER_PART=config["MIN_BLOCKS_PER_PART"], CHUNK_B=128)
        _combine(o_part, lse_part, cache_seqlens, out, lse, max_len, num_parts, common)
    return out, lse


def compile_specs(entry):
    """(name, fn, types, constexprs, warps, stages) for check-configs (a ``KEYS_ON_M`` decode_fp8 entry)."""
    ptrs = dict(q_ptr="*bf16", k_ptr="*u8", out_ptr="*bf16", lse_ptr="*fp32", o_part_ptr="*fp32",
                lse_part_ptr="*fp32")
    # the program sizes of the rows this entry serves here (more go to decode_sm90's kernel)
    top = min(entry["max_rows"] or DUAL_ROWS, max_rows(entry))
    for rows in sorted({block_rows(r) for r in range(1, top + 1)}):
        dual = rows == DUAL_ROWS
        for causal, page in ((False, False), (True, False), (False, True), (True, True)):
            yield (f"decode_sm90_fp8_keys_on_m{'_dual' if dual else ''}(rows={rows}, causal={causal}, "
                   f"page_tile={page})",
                   _decode_sm90_fp8_dual_kernel if dual else _decode_sm90_fp8_kernel, ptrs,
                   dict(MIN_BLOCKS_PER_PART=entry["MIN_BLOCKS_PER_PART"], CAUSAL=causal, PAGE_TILE=page,
                        **(dual_constexprs(entry, rows) if dual
                           else dict(tile_constexprs(entry, rows), FUSED=fused_combine(entry)))), WARPS.value, 1)
