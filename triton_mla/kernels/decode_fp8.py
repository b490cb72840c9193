"""Split-KV MLA decode over the FP8 latent cache (``triton_mla.fp8``, 656 bytes a token).

The plan, the partial (out, lse) layout and the combine are ``decode.py``'s; only the key-tile reads
differ: each token's 512 e4m3 values come as 4 groups of 128 with one power-of-two scale each, and its
64 rope values in bf16.
"""

import torch
import triton
import triton.language as tl

from .._checks import interpreting
from ._common import FP_FUSION, LN2, LOG2E, cdiv, output_ptrs, query_rows
from ._fp8 import GROUP, ROPE, SCALE_BYTE, load_fp8_rope
from .decode import _combine, _part_range, _program_coords, combine_specs, launch_tensors

FP8_DV = tl.constexpr(512)  # the FP8 layout's value dims: 4 groups of GROUP


# A value group (128 e4m3 bytes of each token) is loaded as 32-bit words and turned into float16 where it
# lands, once; Triton then keeps one float16 copy in shared memory that both dots read (QK^T transposed,
# PV as is), as the bf16 kernel does with its K tile. (Converting the bytes after the shared-memory load
# instead, as a plain elementwise conversion lets Triton do, costs one byte load and conversion per value
# and per dot.) float16 holds every e4m3 value exactly, so the value dots run in float16; the per-group
# scales enter as factors of the scores' and P's columns, or of the tile's rows (SCALE_TILE).


@triton.jit
def _e4m3x4_bits(w):
    """uint32 words of 4 e4m3fn bytes -> 4 float16 tensors (bytes 0..3) holding value * 2**-8, exactly.

    e4m3fn is float16 with 4 fewer exponent and 7 fewer mantissa bits, so shifting the bits into place
    rebiases by 2**-8, subnormals included. Integer ops only: any GPU, and the interpreter."""
    # two values per 32-bit op: bytes 1 and 3 already sit in the high byte of a 16-bit lane, 0 and 2 after << 8
    odd = (w & 0x80008000) | ((w >> 1) & 0x3F803F80)
    w = w << 8
    even = (w & 0x80008000) | ((w >> 1) & 0x3F803F80)
    return (even.to(tl.uint16).to(tl.float16, bitcast=True), odd.to(tl.uint16).to(tl.float16, bitcast=True),
            (even >> 16).to(tl.uint16).to(tl.float16, bitcast=True),
            (odd >> 16).to(tl.uint16).to(tl.float16, bitcast=True))


@triton.jit
def _e4m3x4_hw(w, PURE: tl.constexpr):
    """uint32 words of 4 e4m3fn bytes -> 4 float16 tensors (bytes 0..3), exact values: sm89+'s conversion.

    PURE=False hides the conversion from Triton's layout propagation (an op with effects is never
    recomputed), so the words are read and converted once, into the one float16 tile both dots read;
    otherwise Triton 3.6 re-reads the raw words in the QK operand's layout from an unswizzled buffer."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b16 lo, hi;
        .reg .b32 a, b;
        mov.b32 {lo, hi}, $4;
        cvt.rn.f16x2.e4m3x2 a, lo;
        cvt.rn.f16x2.e4m3x2 b, hi;
        mov.b32 {$0, $1}, a;
        mov.b32 {$2, $3}, b;
        }""",
        constraints="=h,=h,=h,=h,r", args=[w], dtype=(tl.float16, tl.float16, tl.float16, tl.float16),
        is_pure=PURE, pack=1)


@triton.jit
def _fp8_group(k_ptr, tok_off, tok_ok, G: tl.constexpr, HW_CVT: tl.constexpr, CVT_ONCE: tl.constexpr):
    """Value group G of each token as a [BLOCK_N, 128] float16 tile, and the constant c such that
    value = tile * scale * c (1 with HW_CVT, else 256). Masked tokens give 0.

    tok_off: byte offsets of the tokens' rows (multiples of 4)."""
    offs = tl.arange(0, GROUP // 4)
    words = tl.load((k_ptr + tok_off[:, None] + G * GROUP).to(tl.pointer_type(tl.uint32)) + offs[None, :],
                    mask=tok_ok[:, None], other=0)
    if HW_CVT:
        b0, b1, b2, b3 = _e4m3x4_hw(words, not CVT_ONCE)
        unit = 1.0
    else:
        b0, b1, b2, b3 = _e4m3x4_bits(words)
        unit = 256.0
    # join(x, y) puts y after x in a new last dim: bytes 0, 1, 2, 3 of each word end up in order
    tile = tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), (words.shape[0], GROUP))
    return tile, unit


@triton.jit
def _attend_range_fp8(q0, q1, q2, q3, q_pe, row_scale, k_ptr, block_table_ptr, seq, tok_lo, tok_hi, row_limit,
                      stride_kb, stride_kt, stride_btb, stride_btp, num_blocks, page_size, qk_scale,
                      BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, HW_CVT: tl.constexpr, SCALE_TILE: tl.constexpr,
                      CVT_ONCE: tl.constexpr):
    """``_attend_range`` over the FP8 layout from empty accumulators, the 512 value dims as 4 groups of 128:
    returns acc0..acc3 (in multiples of ``unit``), unit, m_i, l_i. q0..q3: float16 query groups, whose scores
    ``row_scale`` (per row) brings to log2 units.

    Scales are taken relative to ``unit`` (a power of two), so the float16 operands stay in range: the
    dots see the tiles times rel = scale / unit (so float16 stays exact for rel from 2**-15 to 2**6), and
    ``unit`` multiplies the scores. Both ``unit`` and the running max m are lazy (as in FlashAttention-4):
    they change, and the accumulators are rescaled, only when a block's largest scale leaves
    [unit / 2**8, unit * 2**6] or a row's max grows by more than 8 (log2 units); in between p may reach
    2**8, and p * rel stays below 2**14."""
    acc0 = tl.zeros([BLOCK_H, GROUP], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_H, GROUP], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_H, GROUP], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_H, GROUP], dtype=tl.float32)
    unit = tl.full([], 1.0, dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_btb
    for start in range(tok_lo, tok_hi, BLOCK_N):
        toks = start + offs_n
        tok_ok = toks < tok_hi
        page = tl.load(bt_row + (toks // page_size) * stride_btp, mask=tok_ok, other=0)
        page = tl.minimum(tl.maximum(page, 0), num_blocks - 1).to(tl.int64)
        tok_off = page * stride_kb + (toks % page_size).to(tl.int64) * stride_kt  # bytes
        k0, cvt_unit = _fp8_group(k_ptr, tok_off, tok_ok, 0, HW_CVT, CVT_ONCE)
        k1, cvt_unit = _fp8_group(k_ptr, tok_off, tok_ok, 1, HW_CVT, CVT_ONCE)
        k2, cvt_unit = _fp8_group(k_ptr, tok_off, tok_ok, 2, HW_CVT, CVT_ONCE)
        k3, cvt_unit = _fp8_group(k_ptr, tok_off, tok_ok, 3, HW_CVT, CVT_ONCE)
        scales = tl.load((k_ptr + tok_off[:, None] + SCALE_BYTE).to(tl.pointer_type(tl.float32))
                         + tl.arange(0, 4)[None, :], mask=tok_ok[:, None], other=0.0) * cvt_unit
        f_max = tl.max(tl.max(scales, axis=1), axis=0)
        new_unit = tl.where((f_max > unit * 64.0) | (f_max * 256.0 < unit), f_max, unit)
        new_unit = tl.where(new_unit > 0.0, new_unit, 1.0)  # an all-zero block keeps a usable unit
        rel = scales / new_unit  # powers of two
        r02, r13 = tl.split(tl.reshape(rel, (BLOCK_N, 2, 2)))
        r0, r2 = tl.split(r02)
        r1, r3 = tl.split(r13)
        k_pe = load_fp8_rope(k_ptr, tok_off, tok_ok, q_pe.dtype)
        # -- scores, in log2 units -------------------------------------------------------------
        if SCALE_TILE:
            # big row blocks: one chain of dots over the scaled tiles (fewer live registers)
            k0 = k0 * r0[:, None].to(tl.float16)
            k1 = k1 * r1[:, None].to(tl.float16)
            k2 = k2 * r2[:, None].to(tl.float16)
            k3 = k3 * r3[:, None].to(tl.float16)
            qk = tl.dot(q0, tl.trans(k0))
            qk = tl.dot(q1, tl.trans(k1), qk)
            qk = tl.dot(q2, tl.trans(k2), qk)
            qk = tl.dot(q3, tl.trans(k3), qk)
        else:
            # small row blocks: scale the scores' columns rather than the bigger tiles
            qk = tl.dot(q0, tl.trans(k0)) * r0[None, :]
            qk += tl.dot(q1, tl.trans(k1)) * r1[None, :]
            qk += tl.dot(q2, tl.trans(k2)) * r2[None, :]
            qk += tl.dot(q3, tl.trans(k3)) * r3[None, :]
        qk = qk * (row_scale * new_unit)[:, None] + tl.dot(q_pe, tl.trans(k_pe)) * qk_scale
        visible = tok_ok[None, :] & (toks[None, :] < row_limit[:, None])
        qk = tl.where(visible, qk, float("-inf"))
        # -- online softmax with a lazy max -------------------------------------------------------
        m_blk = tl.max(qk, axis=1)
        grow = tl.max((m_blk > m_i + 8.0).to(tl.int32), axis=0)
        if (grow > 0) | (new_unit != unit):
            m_new = tl.maximum(m_i, m_blk)
            alpha = tl.math.exp2(m_i - tl.where(m_new == float("-inf"), 0.0, m_new))
            # the accumulators count in units, the denominator l does not: only they take the unit's change
            acc_alpha = alpha * (unit / new_unit)
            acc0 = acc0 * acc_alpha[:, None]
            acc1 = acc1 * acc_alpha[:, None]
            acc2 = acc2 * acc_alpha[:, None]
            acc3 = acc3 * acc_alpha[:, None]
            l_i = l_i * alpha
            m_i = m_new
            unit = new_unit
        p = tl.math.exp2(qk - tl.where(m_i == float("-inf"), 0.0, m_i)[:, None])
        l_i += tl.sum(p, axis=1)
        # -- PV --------------------------------------------------------------------------------
        if SCALE_TILE:
            p16 = p.to(tl.float16)
            acc0 = tl.dot(p16, k0, acc0)
            acc1 = tl.dot(p16, k1, acc1)
            acc2 = tl.dot(p16, k2, acc2)
            acc3 = tl.dot(p16, k3, acc3)
        else:
            acc0 = tl.dot((p * r0[None, :]).to(tl.float16), k0, acc0)
            acc1 = tl.dot((p * r1[None, :]).to(tl.float16), k1, acc1)
            acc2 = tl.dot((p * r2[None, :]).to(tl.float16), k2, acc2)
            acc3 = tl.dot((p * r3[None, :]).to(tl.float16), k3, acc3)
    return acc0, acc1, acc2, acc3, unit, m_i, l_i


@triton.jit
def _to_f16_rows(q0, q1, q2, q3):
    """float16 copies of bf16 query groups, each row scaled by a power of two 2**s that brings its largest
    |value| into [2**14, 2**15): exact for everything float16 holds. Returns them and 2**-s per row."""
    a = tl.maximum(tl.maximum(tl.max(tl.abs(q0.to(tl.float32)), axis=1), tl.max(tl.abs(q1.to(tl.float32)), axis=1)),
                   tl.maximum(tl.max(tl.abs(q2.to(tl.float32)), axis=1), tl.max(tl.abs(q3.to(tl.float32)), axis=1)))
    # biased exponent e of the row max; 2**s = 2**(141 - e), clamped so 2**s and 2**-s stay normal
    e = tl.maximum((a.to(tl.int32, bitcast=True) >> 23) & 0xFF, 15)
    up = ((268 - e) << 23).to(tl.float32, bitcast=True)[:, None]
    down = ((e - 14) << 23).to(tl.float32, bitcast=True)
    return ((q0.to(tl.float32) * up).to(tl.float16), (q1.to(tl.float32) * up).to(tl.float16),
            (q2.to(tl.float32) * up).to(tl.float16), (q3.to(tl.float32) * up).to(tl.float16), down)


@triton.jit
def _store_group(acc, unit_over_l, G: tl.constexpr, whole, o_ptrs, part_ptrs, row_ok):
    """Value group G of the output: to out (``whole``: the sequence is this part's alone) or the partials."""
    o = acc * unit_over_l[:, None]
    if whole:
        tl.store(o_ptrs + G * GROUP, o.to(o_ptrs.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(part_ptrs + G * GROUP, o, mask=row_ok[:, None])


@triton.jit
def _load_q_fp8(q_rows_ptr, row_ok, qk_scale, BLOCK_H: tl.constexpr):
    """Query rows (pointers to their first dim) as four float16 value groups and the rope part, with the factor
    per row that brings their scores to log2 units."""
    q_base = q_rows_ptr[:, None] + tl.arange(0, GROUP)[None, :]
    q0 = tl.load(q_base, mask=row_ok[:, None], other=0.0)
    q1 = tl.load(q_base + GROUP, mask=row_ok[:, None], other=0.0)
    q2 = tl.load(q_base + 2 * GROUP, mask=row_ok[:, None], other=0.0)
    q3 = tl.load(q_base + 3 * GROUP, mask=row_ok[:, None], other=0.0)
    q_pe = tl.load(q_rows_ptr[:, None] + FP8_DV + tl.arange(0, ROPE)[None, :], mask=row_ok[:, None], other=0.0)
    if q_rows_ptr.dtype.element_ty == tl.float16:
        row_scale = tl.full([BLOCK_H], 1.0, dtype=tl.float32) * qk_scale
    else:
        # the value dots run in float16 (the tile's type): bf16 rows are scaled into its range
        q0, q1, q2, q3, down = _to_f16_rows(q0, q1, q2, q3)
        row_scale = down * qk_scale
    return q0, q1, q2, q3, q_pe, row_scale


@triton.jit
def _store_rows_fp8(acc0, acc1, acc2, acc3, unit, m_i, l_i, whole, o_ptrs, lse_ptrs, part_ptrs, lse_part_ptrs,
                    row_ok):
    """Epilogue, as ``_decode_kernel``'s, one value group at a time: out and lse (natural log, +inf for a row
    with no keys) where ``whole`` (the range is the sequence's all), else the partial row and its log2 lse."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    lse2 = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_safe))
    _store_group(acc0, unit / l_safe, 0, whole, o_ptrs, part_ptrs, row_ok)
    _store_group(acc1, unit / l_safe, 1, whole, o_ptrs, part_ptrs, row_ok)
    _store_group(acc2, unit / l_safe, 2, whole, o_ptrs, part_ptrs, row_ok)
    _store_group(acc3, unit / l_safe, 3, whole, o_ptrs, part_ptrs, row_ok)
    if whole:
        tl.store(lse_ptrs, tl.where(empty, float("inf"), lse2 * LN2), mask=row_ok)
    else:
        tl.store(lse_part_ptrs, lse2, mask=row_ok)


@triton.jit
def _decode_fp8_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, out_ptr, lse_ptr, o_part_ptr, lse_part_ptr,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_ls,
    batch, s_q, h_q, num_blocks, page_size, max_len, num_parts, qk_scale,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, MIN_BLOCKS_PER_PART: tl.constexpr,
    CAUSAL: tl.constexpr, CHUNK_B: tl.constexpr, HW_CVT: tl.constexpr, SCALE_TILE: tl.constexpr,
    ROWS_FIRST: tl.constexpr, CVT_ONCE: tl.constexpr,
):
    """``_decode_kernel`` over the FP8 cache: k_ptr is uint8 and its strides are in bytes; d = 576, dv = 512."""
    part, row_block = _program_coords(ROWS_FIRST)
    g_lo, g_hi, seq, seq_g0 = _part_range(part, seqlens_ptr, stride_seqlens, batch, max_len, num_parts, BLOCK_N,
                                          MIN_BLOCKS_PER_PART, CHUNK_B)
    rows_per_seq = s_q * h_q
    rows, row_ok, row_s, row_h = query_rows(row_block, s_q, h_q, BLOCK_H)
    offs_g = tl.arange(0, GROUP)
    q_rows = row_s.to(tl.int64) * stride_qs + row_h.to(tl.int64) * stride_qh

    g = g_lo
    while g < g_hi:
        length = tl.load(seqlens_ptr + seq * stride_seqlens)
        length = tl.minimum(tl.maximum(length, 0), max_len)
        n = (length + BLOCK_N - 1) // BLOCK_N
        seg_hi = tl.minimum(g_hi, seq_g0 + n)
        if n > 0:
            q0, q1, q2, q3, q_pe, row_scale = _load_q_fp8(q_ptr + seq.to(tl.int64) * stride_qb + q_rows, row_ok,
                                                          qk_scale, BLOCK_H)
            if CAUSAL:
                row_limit = length - s_q + row_s + 1
            else:
                row_limit = tl.zeros([BLOCK_H], dtype=tl.int32) + length
            tok_lo = (g - seq_g0) * BLOCK_N
            tok_hi = tl.minimum((seg_hi - seq_g0) * BLOCK_N, length)
            acc0, acc1, acc2, acc3, unit, m_i, l_i = _attend_range_fp8(
                q0, q1, q2, q3, q_pe, row_scale, k_ptr, block_table_ptr, seq, tok_lo, tok_hi, row_limit, stride_kb,
                stride_kt, stride_btb, stride_btp, num_blocks, page_size, qk_scale, BLOCK_H, BLOCK_N, HW_CVT,
                SCALE_TILE, CVT_ONCE)
            whole = (g == seq_g0) & (seg_hi == seq_g0 + n)
            o_ptrs, lse_ptrs = output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_g, stride_ob, stride_os,
                                           stride_oh, stride_lb, stride_lh, stride_ls)
            # slot 0: the sequence this part starts in; slot 1: the one it ends in
            slot = part * 2 + tl.where(g == g_lo, 0, 1)
            part_rows = slot.to(tl.int64) * rows_per_seq + rows
            _store_rows_fp8(acc0, acc1, acc2, acc3, unit, m_i, l_i, whole, o_ptrs, lse_ptrs,
                            o_part_ptr + part_rows[:, None] * FP8_DV + offs_g[None, :], lse_part_ptr + part_rows,
                            row_ok)
        g = seg_hi
        seq_g0 += n
        seq += 1


def read_variants(config, for_gpu_target=False):
    """The key-tile read's variants (``_attend_range_fp8``'s constexprs) from a "decode_fp8" entry. HW_CVT is off
    under the interpreter, which runs no PTX, unless ``for_gpu_target`` (check-configs compiles for a GPU)."""
    hw_cvt = bool(config.get("HW_CVT", False)) and (for_gpu_target or not interpreting())
    return dict(HW_CVT=hw_cvt, SCALE_TILE=bool(config.get("SCALE_TILE", False)),
                CVT_ONCE=bool(config.get("CVT_ONCE", False)))


def decode_splitkv_fp8(q, k_cache, block_table, cache_seqlens, softmax_scale, causal, num_parts, config, out, lse):
    """Launch decode + combine over the FP8 cache. Arguments are validated by the caller (``triton_mla.api``).

    q [b, s_q, h_q, 576] bfloat16/float16; k_cache [num_blocks, page_size, 1, 656] uint8 (``triton_mla.fp8``
    layout, strides multiples of 4 bytes); block_table [b, max_pages] int32; cache_seqlens [b] int32;
    out [b, s_q, h_q, 512] like q; lse [b, h_q, s_q] float32.
    """
    b, s_q, h_q, _ = q.shape
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    block_h, block_n = config["BLOCK_H"], config["BLOCK_N"]
    rows = s_q * h_q
    max_len = block_table.shape[1] * page_size
    o_part = torch.empty(2 * num_parts, rows, FP8_DV.value, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(2 * num_parts, rows, dtype=torch.float32, device=q.device)
    rows_first = bool(config.get("ROWS_FIRST", False))
    row_blocks = cdiv(rows, block_h)
    _decode_fp8_kernel[(row_blocks, num_parts) if rows_first else (num_parts, row_blocks)](
        *launch_tensors(q, k_cache, block_table, cache_seqlens, out, lse, o_part, lse_part),
        b, s_q, h_q, num_blocks, page_size, max_len, num_parts, softmax_scale * LOG2E.value,
        BLOCK_H=block_h, BLOCK_N=block_n, MIN_BLOCKS_PER_PART=config["MIN_BLOCKS_PER_PART"],
        CAUSAL=bool(causal and s_q > 1), CHUNK_B=128, ROWS_FIRST=rows_first, **read_variants(config),
        **FP_FUSION, num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    common = dict(DV=FP8_DV.value, BLOCK_DV=FP8_DV.value, BLOCK_H=block_h, BLOCK_N=block_n,
                  MIN_BLOCKS_PER_PART=config["MIN_BLOCKS_PER_PART"], CHUNK_B=128)
    _combine(o_part, lse_part, cache_seqlens, out, lse, max_len, num_parts, common)
    return out, lse


def compile_specs(section, entry):
    """check-configs: (name, kernel, types, constexprs, warps, stages) of what one "decode_fp8" entry launches."""
    assert section == "decode_fp8", section
    types = dict(q_ptr="*bf16", k_ptr="*u8", out_ptr="*bf16", lse_ptr="*fp32", o_part_ptr="*fp32",
                 lse_part_ptr="*fp32", qk_scale="fp32")
    block_h, block_n = entry["BLOCK_H"], entry["BLOCK_N"]
    for causal in (False, True):
        consts = dict(BLOCK_H=block_h, BLOCK_N=block_n, MIN_BLOCKS_PER_PART=entry["MIN_BLOCKS_PER_PART"],
                      CAUSAL=causal, CHUNK_B=128, ROWS_FIRST=bool(entry.get("ROWS_FIRST", False)),
                      **read_variants(entry, for_gpu_target=True))
        yield f"decode_fp8(causal={causal})", _decode_fp8_kernel, types, consts, entry["num_warps"], entry["num_stages"]
    yield from combine_specs(types, FP8_DV.value, block_n, entry["MIN_BLOCKS_PER_PART"])
    from . import decode_invariant as inv  # batch_invariant=True over the FP8 cache

    chunk = max(1, inv.chunk_tokens(entry["max_rows"] or 128) // block_n)
    yield ("invariant_fp8", inv._invariant_kernel, types,
           dict(DV=FP8_DV.value, BLOCK_DV=FP8_DV.value, DR=ROPE, BLOCK_DR=ROPE, BLOCK_H=block_h, BLOCK_N=block_n,
                CHUNK_BLOCKS=chunk, CAUSAL=True, DOT_PRECISION="tf32", FP8=True,
                **read_variants(entry, for_gpu_target=True)),
           entry["num_warps"], entry["num_stages"])
    if not entry.get("WGMMA", False):
        return
    # the Gluon kernels that serve this entry's bfloat16 calls on sm90: with KEYS_ON_M, kernels/decode_sm90_fp8.py
    # up to its max_rows rows (16, or 32 with the dual program), kernels/decode_sm90.py past them (or for all rows
    # without it)
    from . import decode_sm90, decode_sm90_fp8

    keys_on_m = entry.get("KEYS_ON_M", False)
    if keys_on_m:
        yield from decode_sm90_fp8.compile_specs(entry)
    if not keys_on_m or (entry["max_rows"] or 1 << 30) > decode_sm90_fp8.max_rows(entry):
        yield from decode_sm90.compile_specs(entry, fp8=True)
