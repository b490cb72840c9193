"""MLA prefill in MHA mode: varlen causal attention with d_qk != d_v (DeepSeek: 192 = 128 nope + 64 rope, 128).

FlashAttention-2's forward (Triton tutorial 06's structure): one program takes BLOCK_M query rows of one
head of one sequence, keeps them on chip and streams the sequence's keys in blocks of BLOCK_N with an
online softmax in exp2 units. The key range is cut in two: blocks every row of the tile sees in full
(no mask at all, the bulk of the work) and the few blocks on the causal diagonal or past the last key
(masked). d_qk is not a power of two, so QK^T is two dots: the first D1 dims (the largest power of two
<= d_qk) and the rest (padded to a power of two only when it is not one).

Causal masks are bottom-right aligned, as FlashAttention's: query i of a sequence with lq queries and lk
keys sees keys j <= i + lk - lq. Loads come either from plain pointers or, with USE_TMA (Hopper and
later), from host-made tensor descriptors over the packed [total, h * d] tensors.
"""

import torch
import triton
import triton.language as tl

from .._checks import interpreting
from ._common import FP_FUSION, LN2, LOG2E, cdiv, next_pow2

try:  # the Gluon kernel for sm90 (FlashAttention-3's structure); needs triton.experimental.gluon
    from . import decode_sm90 as _gluon
    from . import prefill_sm90 as _sm90
except ImportError:  # pragma: no cover
    _sm90 = None

# DeepSeek's MHA-mode prefill (128 nope + 64 rope, 128): the head dims the shipped configs are sized for
D_QK, D_V = 192, 128


@triton.jit
def _load_rows(src, row0, col0, rows_ok, stride_row,
               WIDTH: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_R: tl.constexpr,
               MASK_ROWS: tl.constexpr, USE_TMA: tl.constexpr):
    """A [BLOCK_R, BLOCK_W] tile at (row0, col0), zero past WIDTH and in rows where ``rows_ok`` is False
    (when MASK_ROWS).

    Pointers: ``src`` points at (row 0, column 0) of this head and sequence. TMA: ``src`` is a
    descriptor over [total, h * d] and (row0, col0) are absolute. TMA is only used when
    BLOCK_W == WIDTH, so its tiles never need a column mask.
    """
    if USE_TMA:
        tile = src.load([row0, col0])
        if MASK_ROWS:
            # rows past the sequence belong to the next one (or are TMA's zero fill): keep their NaN out
            tile = tl.where(rows_ok[:, None], tile, 0.0)
    else:
        offs_r = tl.arange(0, BLOCK_R)
        offs_w = tl.arange(0, BLOCK_W)
        ptrs = src + (row0 + offs_r).to(tl.int64)[:, None] * stride_row + (col0 + offs_w)[None, :]
        if MASK_ROWS:
            if BLOCK_W != WIDTH:
                tile = tl.load(ptrs, mask=rows_ok[:, None] & (offs_w[None, :] < WIDTH), other=0.0)
            else:
                tile = tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
        else:
            if BLOCK_W != WIDTH:
                tile = tl.load(ptrs, mask=offs_w[None, :] < WIDTH, other=0.0)
            else:
                tile = tl.load(ptrs)
    return tile


@triton.jit
def _attend_keys(acc, m_i, l_i, q1, q2, k1_src, k2_src, v_src, k_row0, k_col, k2_col, v_col,
                 lo, hi, lk, row_limit, stride_kt, stride_vt, qk_scale,
                 MASKED: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, BLOCK_D2: tl.constexpr,
                 DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
                 USE_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online softmax over keys [lo, hi) of one sequence; carries (acc, m, l) in log2 units.

    MASKED=False: every row sees every key of [lo, hi) and hi - lo is a multiple of BLOCK_N, so there is
    no mask and no -inf to guard. MASKED=True: keys >= lk and keys > row_limit (causal) are hidden; a
    row may see nothing yet, so m = -inf is guarded.
    """
    offs_n = tl.arange(0, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        start = tl.multiple_of(start, BLOCK_N)
        keys = start + offs_n
        key_ok = keys < lk
        # -- scores: QK^T as two dots (the first D1 dims, then the rest) --------------------
        k1 = _load_rows(k1_src, k_row0 + start, k_col, key_ok, stride_kt, D1, D1, BLOCK_N, MASKED, USE_TMA)
        qk = tl.dot(q1, tl.trans(k1), input_precision=DOT_PRECISION)
        if D2 > 0:
            k2 = _load_rows(k2_src, k_row0 + start, k2_col, key_ok, stride_kt, D2, BLOCK_D2, BLOCK_N, MASKED,
                            USE_TMA)
            qk = tl.dot(q2, tl.trans(k2), qk, input_precision=DOT_PRECISION)
        # -- online softmax --------------------------------------------------------------
        if MASKED:
            visible = key_ok[None, :] & (keys[None, :] <= row_limit[:, None])
            qk = tl.where(visible, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
        else:
            # the largest scaled score is the scale times the largest score, or the smallest for a negative scale
            if qk_scale >= 0:
                top = tl.max(qk, 1)
            else:
                top = tl.min(qk, 1)
            m_new = tl.maximum(m_i, top * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])  # one FMA per score
            alpha = tl.math.exp2(m_i - m_new)
        acc = acc * alpha[:, None]
        v = _load_rows(v_src, k_row0 + start, v_col, key_ok, stride_vt, DV, BLOCK_DV, BLOCK_N, MASKED, USE_TMA)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        # l and m last: fewer registers live across the dots
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _prefill_mha_kernel(
    q_in, q2_in, k_in, k2_in, v_in, cu_seqlens_q_ptr, cu_seqlens_k_ptr, out_ptr, lse_ptr,
    stride_qt, stride_qh,
    stride_kt, stride_kh,
    stride_vt, stride_vh,
    stride_ot, stride_oh,
    stride_lh,
    total_q, total_k, heads_per_kv, qk_scale,
    D1: tl.constexpr, D2: tl.constexpr, BLOCK_D2: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, USE_TMA: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """q_in, k_in, v_in: the tensors (pointers), or with USE_TMA descriptors of [BLOCK, D1] / [BLOCK, DV]
    tiles; q2_in, k2_in: descriptors of the [BLOCK, D2] tiles (with pointers: q and k again, unused)."""
    tl.static_assert(BLOCK_M % BLOCK_N == 0 or BLOCK_N % BLOCK_M == 0)
    # the heaviest (last) query blocks of the causal triangle start first: a shorter tail
    m_block = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    head_kv = head // heads_per_kv

    # lengths come from the device: clamp them so that no load or store leaves the tensors
    q_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq), 0), total_q)
    q_end = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq + 1), q_start), total_q)
    k_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_k_ptr + seq), 0), total_k)
    k_end = tl.minimum(tl.maximum(tl.load(cu_seqlens_k_ptr + seq + 1), k_start), total_k)
    lq = q_end - q_start
    lk = k_end - k_start
    m0 = m_block * BLOCK_M
    if m0 >= lq:
        return

    rows = m0 + tl.arange(0, BLOCK_M)
    row_ok = rows < lq

    # -- key ranges: [0, n_full) seen whole by every row (no mask), [n_full, n_end) masked ---
    rows_end = tl.minimum(m0 + BLOCK_M, lq)
    if CAUSAL:
        shift = lk - lq  # bottom-right alignment
        row_limit = rows + shift
        n_full = tl.minimum(tl.maximum(m0 + shift + 1, 0), lk)
        n_end = tl.minimum(tl.maximum(rows_end + shift, 0), lk)
    else:
        row_limit = rows + lk
        n_full = lk
        n_end = lk
    n_full = (n_full // BLOCK_N) * BLOCK_N
    n_end = tl.maximum(n_end, n_full)

    # -- where this head's tiles are --------------------------------------------------------
    if USE_TMA:
        q1_src = q_in
        q2_src = q2_in
        k1_src = k_in
        k2_src = k2_in
        v_src = v_in
        q_row0 = q_start + m0
        k_row0 = k_start
        q_col = head * stride_qh
        k_col = head_kv * stride_kh
        v_col = head_kv * stride_vh
    else:
        q1_src = q_in + q_start.to(tl.int64) * stride_qt + head.to(tl.int64) * stride_qh
        q2_src = q1_src
        k1_src = k_in + k_start.to(tl.int64) * stride_kt + head_kv.to(tl.int64) * stride_kh
        k2_src = k1_src
        v_src = v_in + k_start.to(tl.int64) * stride_vt + head_kv.to(tl.int64) * stride_vh
        q_row0 = m0
        k_row0 = 0
        q_col = 0
        k_col = 0
        v_col = 0
    q1 = _load_rows(q1_src, q_row0, q_col, row_ok, stride_qt, D1, D1, BLOCK_M, True, USE_TMA)
    q2 = q1  # unused when D2 == 0
    if D2 > 0:
        q2 = _load_rows(q2_src, q_row0, q_col + D1, row_ok, stride_qt, D2, BLOCK_D2, BLOCK_M, True, USE_TMA)

    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _attend_keys(acc, m_i, l_i, q1, q2, k1_src, k2_src, v_src, k_row0, k_col, k_col + D1, v_col,
                                 0, n_full, lk, row_limit, stride_kt, stride_vt, qk_scale,
                                 False, D1, D2, BLOCK_D2, DV, BLOCK_DV, BLOCK_N, USE_TMA, DOT_PRECISION)
    acc, m_i, l_i = _attend_keys(acc, m_i, l_i, q1, q2, k1_src, k2_src, v_src, k_row0, k_col, k_col + D1, v_col,
                                 n_full, n_end, lk, row_limit, stride_kt, stride_vt, qk_scale,
                                 True, D1, D2, BLOCK_D2, DV, BLOCK_DV, BLOCK_N, USE_TMA, DOT_PRECISION)

    # -- epilogue: a row that saw no key gets out = 0, lse = +inf ---------------------------
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    offs_dv = tl.arange(0, BLOCK_DV)
    tok = (q_start + rows).to(tl.int64)
    o_ptrs = out_ptr + tok[:, None] * stride_ot + head.to(tl.int64) * stride_oh + offs_dv[None, :]
    o_mask = row_ok[:, None]
    if BLOCK_DV != DV:
        o_mask = o_mask & (offs_dv[None, :] < DV)
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=o_mask)
    tl.store(lse_ptr + head.to(tl.int64) * stride_lh + tok, lse, mask=row_ok)


# -- host side -----------------------------------------------------------------------------------
def split_head_dim(d_qk):
    """(D1, D2, BLOCK_D2): QK^T runs as a D1-wide dot (a power of two) plus a D2-wide one padded to BLOCK_D2."""
    d1 = 1 << (d_qk.bit_length() - 1)
    d2 = d_qk - d1
    block_d2 = max(16, next_pow2(d2)) if d2 > 0 else 16
    return d1, d2, block_d2


def block_dv(d_v):
    return max(16, next_pow2(d_v))


def smem_estimate(entry, d_qk, d_v, elem_size, q_in_smem=True):
    """Shared memory of one program, roughly: the Q tile (Hopper's wgmma reads it from shared memory;
    Ampere's mma from registers) plus num_stages buffers of K and V tiles."""
    d1, d2, bd2 = split_head_dim(d_qk)
    dqk = d1 + (bd2 if d2 else 0)
    q = entry["BLOCK_M"] * dqk if q_in_smem else 0
    kv = entry["BLOCK_N"] * (dqk + block_dv(d_v))
    return elem_size * (q + max(entry["num_stages"], 1) * kv)


def fit_config(entry, d_qk, d_v, elem_size):
    """The entry itself for head dims up to DeepSeek's 192/128 (what the shipped configs are checked for);
    for wider heads, shrink stages, then BLOCK_N, then BLOCK_M until the estimate is no larger than the
    entry's own at 192/128."""
    budget = smem_estimate(entry, D_QK, D_V, elem_size)
    entry = dict(entry)
    while smem_estimate(entry, d_qk, d_v, elem_size) > budget:
        if entry["num_stages"] > 2:
            entry["num_stages"] -= 1
        elif entry["BLOCK_N"] > 16:
            entry["BLOCK_N"] //= 2
        elif entry["BLOCK_M"] > 16:
            entry["BLOCK_M"] //= 2
        else:
            break
    return entry


def tma_usable(q, k, v, d_qk, d_v):
    """Host tensor descriptors need 16-byte aligned bases and row strides and unpadded tile widths."""
    if q.device.type == "cuda":
        if torch.cuda.get_device_capability(q.device)[0] < 9:
            return False
    elif not interpreting():
        return False
    d1, d2, bd2 = split_head_dim(d_qk)
    if (d2 and d2 != bd2) or d_v != block_dv(d_v):
        return False
    for t in (q, k, v):
        e = t.element_size()
        if t.numel() == 0 or t.data_ptr() % 16 or (t.stride(0) * e) % 16 or (t.stride(1) * e) % 16:
            return False
    return True


def _descriptor(t, rows_block, width):
    """A descriptor over t [total, h, d] seen as [total, (h - 1) * stride_h + d], tiles [rows_block, width]."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    total, h, d = t.shape
    cols = (h - 1) * t.stride(1) + d
    return TensorDescriptor(t, [max(total, 1), cols], [t.stride(0), 1], [rows_block, width])


def sm90_params(entry):
    """The Gluon kernel's launch parameters in a ``WGMMA`` entry."""
    return dict(BLOCK_N=entry["WGMMA_BLOCK_N"], STAGES=entry["WGMMA_STAGES"])


def sm90_applies(config, q, k, v):
    """Whether the Gluon kernel serves a call: the entry asks for it (``WGMMA``), an sm90 GPU, DeepSeek's head dims
    in 16 bits, and tensors TMA can read (``prefill_sm90.usable``)."""
    return (_sm90 is not None and config.get("WGMMA", False) and q.is_cuda
            and _sm90.usable(q, k, v) and _gluon.is_sm90(q.device))


def prefill_mha(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, softmax_scale, causal, config, use_tma, out,
                lse):
    """Launch the prefill kernel. Arguments are validated by ``triton_mla.prefill.mla_prefill_mha``.

    q [total_q, h, d_qk]; k [total_k, h_kv, d_qk]; v [total_k, h_kv, d_v]; cu_seqlens_* [b + 1] int32;
    out [total_q, h, d_v] (q's dtype); lse [h, total_q] float32.
    """
    total_q, h, d_qk = q.shape
    total_k, h_kv, d_v = v.shape
    if sm90_applies(config, q, k, v):
        return _sm90.prefill_mha(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, softmax_scale, causal,
                                 sm90_params(config), out, lse)
    b = cu_seqlens_q.shape[0] - 1
    d1, d2, bd2 = split_head_dim(d_qk)
    bdv = block_dv(d_v)
    block_m, block_n = config["BLOCK_M"], config["BLOCK_N"]
    if use_tma:
        q_in, k_in = _descriptor(q, block_m, d1), _descriptor(k, block_n, d1)
        q2_in = _descriptor(q, block_m, bd2) if d2 else q_in
        k2_in = _descriptor(k, block_n, bd2) if d2 else k_in
        v_in = _descriptor(v, block_n, bdv)
    else:
        q_in, q2_in, k_in, k2_in, v_in = q, q, k, k, v
    grid = (cdiv(max_seqlen_q, block_m), h, b)
    _prefill_mha_kernel[grid](
        q_in, q2_in, k_in, k2_in, v_in, cu_seqlens_q, cu_seqlens_k, out, lse,
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1),
        v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        lse.stride(0),
        total_q, total_k, h // h_kv, softmax_scale * LOG2E.value,
        D1=d1, D2=d2, BLOCK_D2=bd2, DV=d_v, BLOCK_DV=bdv, BLOCK_M=block_m, BLOCK_N=block_n,
        CAUSAL=bool(causal), USE_TMA=bool(use_tma),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **FP_FUSION, num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    return out, lse


# -- check-configs ---------------------------------------------------------------------------------


def compile_specs(section, entry):
    """(name, fn, types, constexprs, num_warps, num_stages) for each kernel one "prefill" entry launches."""
    elem = "fp32" if entry["dtype"] == "float32" else "bf16"
    d1, d2, bd2 = split_head_dim(D_QK)
    bm, bn = entry["BLOCK_M"], entry["BLOCK_N"]
    tma = bool(entry.get("TMA", False))
    if tma:
        def desc(rows, width):
            return f"tensordesc<{elem}[{rows}, {width}]>"
        types = dict(q_in=desc(bm, d1), q2_in=desc(bm, bd2), k_in=desc(bn, d1), k2_in=desc(bn, bd2),
                     v_in=desc(bn, block_dv(D_V)))
    else:
        types = dict(q_in=f"*{elem}", q2_in=f"*{elem}", k_in=f"*{elem}", k2_in=f"*{elem}", v_in=f"*{elem}")
    types.update(out_ptr=f"*{elem}", lse_ptr="*fp32", qk_scale="fp32")
    consts = dict(D1=d1, D2=d2, BLOCK_D2=bd2, DV=D_V, BLOCK_DV=block_dv(D_V), BLOCK_M=bm, BLOCK_N=bn,
                  USE_TMA=tma, DOT_PRECISION="ieee" if elem == "fp32" else "tf32")
    for causal in (False, True):
        yield (f"prefill(causal={causal})", _prefill_mha_kernel, types, dict(consts, CAUSAL=causal),
               entry["num_warps"], entry["num_stages"])
        if entry.get("WGMMA", False) and elem == "bf16":
            yield _sm90.compile_spec(sm90_params(entry), causal)
