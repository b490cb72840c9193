"""Absorbed-mode extend for Hopper (sm90), written in Gluon: ``decode_sm90``'s program on a chunk of queries.

Same semantics and grid as ``extend.py``: program (row block, sequence) takes 64 query rows (row = t * h_q + h)
of one sequence's chunk of q_len = cu_seqlens_q[i + 1] - cu_seqlens_q[i] tokens, the last q_len of its
cache_seqlens[i]; chunk token t sees keys [0, cache_seqlens[i] - q_len + t]. The tile loop is
``decode_sm90._attend`` over the paged cache (bf16/fp16, or the FP8 layout dequantized in shared memory), with
the causal limit per row; key tiles past the block's last visible key are not read. No split over keys.
Shapes: d = 576, dv = 512 (DeepSeek).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp

from ._common import FP_FUSION, LN2, cdiv
from .decode_sm90 import BLOCK_H, DV, NUM_WARPS, _attend, _buffers, _issue_q, o_layout, page_tile, s_layout


@gluon.jit
def _extend_sm90_kernel(
    q_ptr, k_ptr, block_table_ptr, seqlens_ptr, cu_seqlens_q_ptr, out_ptr, lse_ptr,
    stride_qt, stride_qh,
    stride_kb, stride_kt,
    stride_btb, stride_btp,
    stride_seqlens, stride_cu,
    stride_ot, stride_oh,
    stride_lh, stride_lt,
    total_q, h_q, num_blocks, page_size, max_len, qk_scale,  # total_q unused: the tl.dot kernel's parameters
    BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, FP8: gl.constexpr, RAW_STAGES: gl.constexpr,
    PAGE_TILE: gl.constexpr = False,
):
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    s_l: gl.constexpr = s_layout(BLOCK_N)
    o_l: gl.constexpr = o_layout()
    q_smem, qpe_smem, p_smem, kn_bufs, kpe_bufs, stage, stage_scale = _buffers(dtype, BLOCK_N, NUM_BUF, FP8,
                                                                               RAW_STAGES)
    rb = gl.program_id(0)
    seq = gl.program_id(1)
    q_lo = gl.load(cu_seqlens_q_ptr + seq * stride_cu)
    q_len = gl.load(cu_seqlens_q_ptr + (seq + 1) * stride_cu) - q_lo
    # the grid is sized by the longest chunk: blocks past this sequence's rows do nothing
    if rb * BLOCK_H < q_len * h_q:
        length = gl.minimum(gl.maximum(gl.load(seqlens_ptr + seq * stride_seqlens), 0), max_len)
        q_base = q_ptr + q_lo.to(gl.int64) * stride_qt
        _issue_q(q_smem, qpe_smem, q_base, seq, rb, q_len, h_q, 0, stride_qt, stride_qh)  # seq * 0: q_base
        cp.commit_group()
        rows_s = rb * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, s_l))
        row_limit = length - q_len + rows_s // h_q + 1
        # keys past the last row's limit are masked for every row of the block: not read at all
        last_t = gl.minimum((rb * BLOCK_H + BLOCK_H - 1) // h_q, q_len - 1)
        hi = gl.minimum(length, length - q_len + last_t + 1)
        bt_row = block_table_ptr + seq.to(gl.int64) * stride_btb
        acc, m_i, l_i = _attend(q_smem, qpe_smem, p_smem, kn_bufs, kpe_bufs, stage, stage_scale, k_ptr, bt_row, 0,
                                hi, row_limit, stride_kb, stride_kt, stride_btp, num_blocks, page_size, qk_scale,
                                False, FP8, NUM_BUF, BLOCK_N, s_l, o_l, RAW_STAGES, PAGE_TILE)

        # -- epilogue: a row that saw nothing gets out = 0 (its acc is 0) and lse = +inf ------------------------
        rows = rb * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, o_l))
        row_ok = rows < q_len * h_q
        tok = (q_lo + rows // h_q).to(gl.int64)
        head = (rows % h_q).to(gl.int64)
        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_l))
        m_o = gl.convert_layout(m_i, gl.SliceLayout(1, o_l))
        empty = l_o == 0.0
        offs_o = gl.arange(0, DV, layout=gl.SliceLayout(0, o_l))
        o_rows = out_ptr + tok * stride_ot + head * stride_oh
        gl.store(o_rows[:, None] + offs_o[None, :], (acc / gl.where(empty, 1.0, l_o)[:, None]).to(dtype),
                 mask=row_ok[:, None])
        lse = gl.where(empty, float("inf"), (m_o + gl.log2(gl.where(empty, 1.0, l_o))) * LN2)
        gl.store(lse_ptr + head * stride_lh + tok * stride_lt, lse, mask=row_ok)


# Fixed, as in sparse_sm90: 64-key tiles in 2 buffers; FP8 with two raw tiles in flight (as dense decode).
BLOCK_N = 64
NUM_BUF = 2


def _tiles(fp8):
    return dict(BLOCK_N=BLOCK_N, NUM_BUF=NUM_BUF, FP8=bool(fp8), RAW_STAGES=2 if fp8 else 1)


def launch(args, max_seqlen_q, fp8=False):
    """Launch over ``extend.extend``'s argument tuple (the same parameters as ``_extend_kernel``'s, already
    validated); grid (row blocks of the longest chunk, b)."""
    h_q, b, k_cache = args[0].shape[1], args[3].shape[0], args[1]
    _extend_sm90_kernel[(cdiv(max_seqlen_q * h_q, BLOCK_H.value), b)](
        *args, **_tiles(fp8), PAGE_TILE=page_tile(k_cache.shape[1], BLOCK_N, k_cache.stride(1)),
        **FP_FUSION, num_warps=NUM_WARPS.value)


def compile_specs(fp8=False):
    """(name, fn, types, constexprs, warps, stages) for check-configs (a ``WGMMA`` extend entry, sm90 only)."""
    types = dict(q_ptr="*bf16", k_ptr="*u8" if fp8 else "*bf16", out_ptr="*bf16", lse_ptr="*fp32", qk_scale="fp32")
    for page in (False, True):
        yield (f"extend_sm90{'_fp8' if fp8 else ''}(page_tile={page})", _extend_sm90_kernel, types,
               dict(_tiles(fp8), PAGE_TILE=page), NUM_WARPS.value, 1)
