"""Sparse (DSA) MLA attention for Hopper (sm90), written in Gluon: ``decode_sm90``'s program over gathered keys.

All heads of a query token share its top-k list, so a token's heads are the rows of a program (64 at a
time) and its top-k entries are the keys, gathered by ``cp.async`` from their flat token ids (page *
page_size + offset; -1 or an id outside the cache: invalid, zero-filled and masked). The tile loop, its
shared-memory buffers and the FP8 staging are ``decode_sm90``'s (``_attend`` with ``INDEXED``); what
differs is the epilogue, which is ``sparse.py``'s: attention sink, max_logits, and the partial rows
``[token, split, head]`` that ``sparse._combine_kernel`` merges when a top-k list is cut into splits.
Shapes: d = 576, dv = 512 (DeepSeek), bf16/fp16 (bf16 with the FP8 cache), any h_q (blocks of 64).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp

from ._common import LN2, LOG2E
from .decode_sm90 import BLOCK_H, DV, NUM_WARPS, _attend, _buffers, _issue_q, o_layout, s_layout

INT32_MAX = gl.constexpr((1 << 31) - 1)


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

    pid = gl.program_id(0)
    row_blocks = (h_q + BLOCK_H - 1) // BLOCK_H
    rb = pid % row_blocks
    rest = pid // row_blocks
    tok = rest // splits
    split = rest % splits
    seq = tok // s_q
    s = tok - seq * s_q

    # this split's entries of the top-k list: [lo, hi), whole chunks of BLOCK_N, cut at topk_length
    n = topk
    if HAS_TOPK_LEN:
        n = gl.minimum(gl.maximum(gl.load(topk_len_ptr + seq.to(gl.int64) * stride_tl), 0), topk)
    chunks = (topk + BLOCK_N - 1) // BLOCK_N
    lo = ((split * chunks) // splits) * BLOCK_N
    hi = gl.minimum(((split + 1) * chunks) // splits * BLOCK_N, n)

    _issue_q(q_smem, qpe_smem, q_ptr + s.to(gl.int64) * stride_qs, seq, rb, 1, h_q, stride_qb, 0, stride_qh)
    cp.commit_group()
    idx_row = idx_ptr + seq.to(gl.int64) * stride_ib + s.to(gl.int64) * stride_is
    no_limit = gl.full([BLOCK_H], INT32_MAX, gl.int32, layout=gl.SliceLayout(1, s_l))
    acc, m_i, l_i = _attend(q_smem, qpe_smem, p_smem, kn_bufs, kpe_bufs, stage, stage_scale, k_ptr, idx_row, lo,
                            hi, no_limit, stride_kb, stride_kt, stride_ik, num_tokens, page_size, qk_scale, True, FP8,
                            NUM_BUF, BLOCK_N, s_l, o_l, RAW_STAGES)

    # -- epilogue (sparse.py's) -----------------------------------------------------------------------------
    heads = rb * BLOCK_H + gl.arange(0, BLOCK_H, layout=gl.SliceLayout(1, o_l))
    head_ok = heads < h_q
    offs_o = gl.arange(0, DV, layout=gl.SliceLayout(0, o_l))
    l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_l))
    m_o = gl.convert_layout(m_i, gl.SliceLayout(1, o_l))
    empty = l_o == 0.0
    lse2 = gl.where(empty, float("-inf"), m_o + gl.log2(gl.where(empty, 1.0, l_o)))
    inv = 1.0 / gl.where(empty, 1.0, l_o)
    if SPLIT:
        rows = (tok.to(gl.int64) * splits + split) * h_q + heads
        gl.store(o_part_ptr + rows[:, None] * DV + offs_o[None, :], acc * gl.where(empty, 0.0, inv)[:, None],
                 mask=head_ok[:, None])
        gl.store(stat_part_ptr + rows * 2, lse2, mask=head_ok)
        gl.store(stat_part_ptr + rows * 2 + 1, m_o, mask=head_ok)
    else:
        if HAS_SINK:
            # out * exp(lse) / (exp(lse) + exp(sink)): an infinite sink gives 0, a -inf one changes nothing
            sink2 = gl.load(sink_ptr + heads, mask=head_ok, other=0.0) * LOG2E
            inv = inv / (1.0 + gl.exp2(sink2 - gl.where(empty, 0.0, lse2)))
        inv = gl.where(empty, 0.0, inv)
        o_rows = out_ptr + seq.to(gl.int64) * stride_ob + s.to(gl.int64) * stride_os + heads.to(gl.int64) * stride_oh
        gl.store(o_rows[:, None] + offs_o[None, :], (acc * inv[:, None]).to(dtype), mask=head_ok[:, None])
        stat = seq.to(gl.int64) * stride_lb + heads.to(gl.int64) * stride_lh + s.to(gl.int64) * stride_ls
        gl.store(lse_ptr + stat, gl.where(empty, float("inf"), lse2 * LN2), mask=head_ok)
        if MAX_LOGITS:
            gl.store(max_ptr + stat, m_o * LN2, mask=head_ok)  # -inf for a row with no valid key


# Fixed, not config fields: 64-key tiles in 2 buffers (32-key tiles in 3 were slower on 11 of 12 anchor shapes,
# benchmarks/NOTES.md), and ~230 KB of shared memory leave room for one program an SM.
BLOCK_N = 64
NUM_BUF = 2


def plan_config(config):
    """The fields ``sparse.num_splits`` plans with when this kernel runs: 64 heads and 64 keys a program, one
    program an SM."""
    return dict(config, BLOCK_H=BLOCK_H.value, BLOCK_N=BLOCK_N, PROGRAMS_PER_SM=1)


def launch(args, splits, grid, flags, fp8, raw_stages=1):
    """Launch over ``sparse.sparse_attention``'s argument tuple (same kernel signature as ``_sparse_kernel``);
    ``raw_stages``: FP8 raw tiles in flight (an entry's ``FP8_RAW_STAGES``)."""
    _sparse_sm90_kernel[grid](*args, BLOCK_N=BLOCK_N, NUM_BUF=NUM_BUF, SPLIT=splits > 1, FP8=bool(fp8),
                              RAW_STAGES=raw_stages if fp8 else 1, num_warps=NUM_WARPS.value, **flags)


def compile_specs(prefill=False, fp8=False, raw_stages=1):
    """(name, fn, types, constexprs, warps, stages) for check-configs (a ``WGMMA`` sparse entry, sm90 only)."""
    types = dict(q_ptr="*bf16", k_ptr="*u8" if fp8 else "*bf16", idx_ptr="*i32", topk_len_ptr="*i32",
                 sink_ptr="*fp32", out_ptr="*bf16", lse_ptr="*fp32", max_ptr="*fp32", o_part_ptr="*fp32",
                 stat_part_ptr="*fp32", qk_scale="fp32")
    for split in (False, True):
        yield (f"sparse_sm90{'_fp8' if fp8 else ''}(split={int(split)})", _sparse_sm90_kernel, types,
               dict(BLOCK_N=BLOCK_N, NUM_BUF=NUM_BUF, HAS_TOPK_LEN=True, HAS_SINK=True, MAX_LOGITS=prefill,
                    SPLIT=split, FP8=fp8, RAW_STAGES=raw_stages if fp8 else 1),
               NUM_WARPS.value, 1)
