"""MLA prefill in MHA mode for Hopper (sm90), written in Gluon: FlashAttention-3's structure.

Why a second kernel: ``prefill.py``'s ``tl.dot`` kernel reaches 0.75-0.85x cuDNN SDPA on an H100; this one
0.98-1.13x at 4096+ tokens (``benchmarks/NOTES.md``, tenth session). The tl.dot kernel's loads, MMAs and softmax run
in one instruction stream whose CTA barriers keep both warpgroups in lockstep. Here:
- one loader warp (``gl.warp_specialize``) streams Q once and then K/V tiles by TMA into ``STAGES`` buffers,
  each with a "ready" mbarrier (TMA bytes) and an "empty" one (both warpgroups have read it);
- two warpgroups of 64 query rows each, each its own partition, coupled only through those mbarriers, so one
  warpgroup's softmax can run while the other's MMAs do. (In one 8-warp partition, the barriers Triton puts
  before every mbarrier operation synchronized both warpgroups four times a tile.)
- P stays in registers (the A operand of O += P V), never in shared memory;
- within a warpgroup, S of tile j is issued together with P V of tile j - 1, and the softmax of tile j runs while
  that P V is on the tensor cores (FlashAttention-3's intra-warpgroup pipelining; 1-18% faster than S, softmax,
  P V in turn, which this file had first).

Shapes: DeepSeek's MHA mode only (d_qk 192 = 128 + 64, d_v 128), bf16 / fp16, varlen, causal or not, grouped
heads; ``prefill.py`` takes everything else. Tiles: 128 query rows x ``BLOCK_N`` keys. Causal masks are bottom-right
aligned, as there.

Rows past a sequence's end (the next sequence's, or whatever the tensor holds after the last one): Q rows are
computed and never stored (rows are independent); K rows are masked out of S; V rows are zeroed in shared memory
before P V reads them, as P = 0 times a NaN there would still be NaN.
"""

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from ._common import FP_FUSION, LN2, LOG2E, cdiv
from .decode_sm90 import _cta_barrier

# renamed between Triton 3.6 (async_copy_global_to_shared) and 3.9 (async_load)
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

D1 = gl.constexpr(128)  # the first 128 dims of q / k (nope)
D2 = gl.constexpr(64)  # the last 64 (rope)
DV = gl.constexpr(128)
WG_REGS = gl.constexpr(240)  # the second warpgroup's partition
LOADER_REGS = gl.constexpr(24)
ROWS = gl.constexpr(64)  # query rows a warpgroup

# mbarriers: Q landed; then per stage: its K (V) tile landed (TMA bytes); both warpgroups are done with its K (V)
Q_READY = gl.constexpr(0)
K_READY = gl.constexpr(1)


@gluon.constexpr_function
def _smem_layout():
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)


@gluon.constexpr_function
def _acc_layout(N):
    """An fp32 accumulator [64, N] of one warpgroup."""
    N = getattr(N, "value", N)
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, N, 16])


@gluon.jit
def _loader(q_desc, q2_desc, k_desc, k2_desc, v_desc, q_smem, q2_smem, k_smem, k2_smem, v_smem, bars,
            q_row0, q_col, k_row0, k_col, v_col, n_tiles):
    """One warp: Q, then the K and V tiles 0..n_tiles - 1, each into stage j % STAGES once the compute warps are done
    with the stage's previous K (after its S) and V (after its P V). Constants reach a partition as values, so the
    tile sizes are read off the buffers."""
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    V_READY: gl.constexpr = K_READY + STAGES
    K_EMPTY: gl.constexpr = K_READY + 2 * STAGES
    V_EMPTY: gl.constexpr = K_READY + 3 * STAGES
    mbarrier.expect(bars.index(Q_READY), 2 * (q_desc.block_type.nbytes + q2_desc.block_type.nbytes))
    for w in gl.static_range(2):
        _tma_load(q_desc, [q_row0 + w * ROWS, q_col], bars.index(Q_READY), q_smem.index(w))
        _tma_load(q2_desc, [q_row0 + w * ROWS, q_col + D1], bars.index(Q_READY), q2_smem.index(w))
    k_bytes: gl.constexpr = k_desc.block_type.nbytes + k2_desc.block_type.nbytes
    for j in range(n_tiles):
        st = j % STAGES
        # the stage's previous tile (j - STAGES) must be done with: the phase of that tile's round
        phase = ((j // STAGES) + 1) & 1
        row = k_row0 + j * BLOCK_N
        mbarrier.wait(bars.index(K_EMPTY + st), phase, pred=j >= STAGES)
        mbarrier.expect(bars.index(K_READY + st), k_bytes)
        _tma_load(k_desc, [row, k_col], bars.index(K_READY + st), k_smem.index(st))
        _tma_load(k2_desc, [row, k_col + D1], bars.index(K_READY + st), k2_smem.index(st))
        mbarrier.wait(bars.index(V_EMPTY + st), phase, pred=j >= STAGES)
        mbarrier.expect(bars.index(V_READY + st), v_desc.block_type.nbytes)
        _tma_load(v_desc, [row, v_col], bars.index(V_READY + st), v_smem.index(st))


@gluon.jit
def _release(bars, index):
    """This warpgroup is done reading a buffer: once all its threads are (the barrier), one thread arrives."""
    _cta_barrier()
    mbarrier.arrive(bars.index(index))


@gluon.jit
def _wait_k(bars, j, STAGES: gl.constexpr):
    mbarrier.wait(bars.index(K_READY + j % STAGES), (j // STAGES) & 1)


@gluon.jit
def _wait_v(bars, v_smem, j, lk, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """Wait for V of tile j; if the tile reaches past the sequence's keys, zero those rows (the last tile only)."""
    st = j % STAGES
    mbarrier.wait(bars.index(K_READY + STAGES + st), (j // STAGES) & 1)
    start = j * BLOCK_N
    if start + BLOCK_N > lk:
        z_l: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])
        v_tile = v_smem.index(st)
        keys = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, z_l))
        v_tile.store(gl.where((keys < lk)[:, None], v_tile.load(z_l), 0.0))
        # visible to the tensor cores (async proxy). The other warpgroup writes the same values (zeros, and the valid
        # rows as they are), so neither disturbs the other's reads
        fence_async_shared()
        _cta_barrier()


@gluon.jit
def _scores(q_smem, q2_smem, k_smem, k2_smem, st, BLOCK_N: gl.constexpr, s_l: gl.constexpr):
    """Issue S = Q K^T of the tile in stage ``st`` (192 dims: 128 + 64)."""
    s = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_l)
    s = warpgroup_mma(q_smem, k_smem.index(st).permute((1, 0)), s, use_acc=False, is_async=True)
    return warpgroup_mma(q2_smem, k2_smem.index(st).permute((1, 0)), s, is_async=True)


@gluon.jit
def _softmax(s, m_i, l_i, start, n_full, row_limit, lk, qk_scale, BLOCK_N: gl.constexpr, s_l: gl.constexpr):
    """Online softmax of one tile's scores (log2 units): (P, the factor for the old accumulator, m, l). Tiles from
    ``n_full`` on hold keys some row must not see (causal diagonal, or past the sequence); the others need no mask."""
    if start + BLOCK_N > n_full:
        keys = start + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_l))
        visible = (keys[None, :] <= row_limit[:, None]) & (keys < lk)[None, :]
        qk = gl.where(visible, s * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(qk, axis=1))
        # a row that sees no key yet keeps m = -inf: subtract 0 instead (its p is 0 either way)
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(qk - m_safe[:, None])
        alpha = gl.exp2(m_i - m_safe)
    else:
        # the largest scaled score is the scale times the largest score, or the smallest for a negative scale
        if qk_scale >= 0:
            top = gl.max(s, axis=1)
        else:
            top = gl.min(s, axis=1)
        m_new = gl.maximum(m_i, top * qk_scale)
        p = gl.exp2(s * qk_scale - m_new[:, None])  # one FMA a score
        alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@gluon.jit
def _wg0(q_smem, q2_smem, k_smem, k2_smem, v_smem, bars, out_ptr, lse_ptr, q_start, m0, lq, lk, shift, n_full, n_tiles,
         head, stride_ot, stride_oh, stride_lh, qk_scale):
    _compute(q_smem, q2_smem, k_smem, k2_smem, v_smem, bars, out_ptr, lse_ptr, q_start, m0, lq, lk, shift, n_full,
             n_tiles, head, stride_ot, stride_oh, stride_lh, qk_scale, 0)


@gluon.jit
def _wg1(q_smem, q2_smem, k_smem, k2_smem, v_smem, bars, out_ptr, lse_ptr, q_start, m0, lq, lk, shift, n_full, n_tiles,
         head, stride_ot, stride_oh, stride_lh, qk_scale):
    _compute(q_smem, q2_smem, k_smem, k2_smem, v_smem, bars, out_ptr, lse_ptr, q_start, m0, lq, lk, shift, n_full,
             n_tiles, head, stride_ot, stride_oh, stride_lh, qk_scale, 1)


@gluon.jit
def _compute(q_smem, q2_smem, k_smem, k2_smem, v_smem, bars, out_ptr, lse_ptr, q_start, m0, lq, lk, shift, n_full,
             n_tiles, head, stride_ot, stride_oh, stride_lh, qk_scale, WG: gl.constexpr):
    """Warpgroup WG (query rows [64 WG, 64 WG + 64) of the block): (acc, m, l) over the tiles, then O = acc / l and
    lse written for its valid rows. Constants reach a partition as values, so the tile sizes come off the buffers."""
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    K_EMPTY: gl.constexpr = K_READY + 2 * STAGES
    V_EMPTY: gl.constexpr = K_READY + 3 * STAGES
    s_l: gl.constexpr = _acc_layout(BLOCK_N)
    o_l: gl.constexpr = _acc_layout(DV)
    p_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)
    dtype: gl.constexpr = q_smem.dtype
    q_smem = q_smem.index(WG)
    q2_smem = q2_smem.index(WG)
    m0 = m0 + WG * ROWS
    rows = m0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_l))
    row_limit = rows + shift  # the last key a row sees (bottom-right causal alignment; past every key if not causal)

    acc = gl.zeros([ROWS, DV], gl.float32, layout=o_l)
    m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=gl.SliceLayout(1, s_l))
    l_i = gl.zeros([ROWS], gl.float32, layout=gl.SliceLayout(1, s_l))
    mbarrier.wait(bars.index(Q_READY), 0)
    if n_tiles > 0:
        _wait_k(bars, 0, STAGES)
        s = _scores(q_smem, q2_smem, k_smem, k2_smem, 0, BLOCK_N, s_l)
        s = warpgroup_mma_wait(0, deps=[s])
        _release(bars, K_EMPTY)
        p, alpha, m_i, l_i = _softmax(s, m_i, l_i, 0, n_full, row_limit, lk, qk_scale, BLOCK_N, s_l)
        pa = gl.convert_layout(p.to(dtype), p_l)
        for j in range(1, n_tiles):
            st = j % STAGES
            prev = (j - 1) % STAGES
            _wait_k(bars, j, STAGES)
            s = _scores(q_smem, q2_smem, k_smem, k2_smem, st, BLOCK_N, s_l)
            _wait_v(bars, v_smem, j - 1, lk, BLOCK_N, STAGES)
            acc = warpgroup_mma(pa, v_smem.index(prev), acc, is_async=True)
            # S of tile j is done; P V of tile j - 1 may still run under this tile's softmax
            s = warpgroup_mma_wait(1, deps=[s])
            _release(bars, K_EMPTY + st)
            p, alpha, m_i, l_i = _softmax(s, m_i, l_i, j * BLOCK_N, n_full, row_limit, lk, qk_scale, BLOCK_N, s_l)
            acc, pa = warpgroup_mma_wait(0, deps=[acc, pa])
            _release(bars, V_EMPTY + prev)
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_l))[:, None]
            pa = gl.convert_layout(p.to(dtype), p_l)
        _wait_v(bars, v_smem, n_tiles - 1, lk, BLOCK_N, STAGES)
        last = (n_tiles - 1) % STAGES
        acc = warpgroup_mma(pa, v_smem.index(last), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=[acc])
        _release(bars, V_EMPTY + last)

    # -- epilogue: a row that saw no key gets out = 0, lse = +inf --------------------------------------------
    empty = l_i == 0.0
    l_safe = gl.where(empty, 1.0, l_i)
    lse = gl.where(empty, float("inf"), (m_i + gl.log2(l_safe)) * LN2)
    o = acc / gl.convert_layout(l_safe, gl.SliceLayout(1, o_l))[:, None]
    o_rows = m0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, o_l))
    cols = gl.arange(0, DV, layout=gl.SliceLayout(0, o_l))
    tok = (q_start + o_rows).to(gl.int64)
    o_ptrs = out_ptr + tok[:, None] * stride_ot + head.to(gl.int64) * stride_oh + cols[None, :]
    gl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=(o_rows < lq)[:, None])
    gl.store(lse_ptr + head.to(gl.int64) * stride_lh + (q_start + rows).to(gl.int64), lse, mask=rows < lq)


@gluon.jit
def _prefill_sm90_kernel(
    q_desc, q2_desc, k_desc, k2_desc, v_desc, cu_seqlens_q_ptr, cu_seqlens_k_ptr, out_ptr, lse_ptr,
    stride_qh, stride_kh, stride_vh, stride_ot, stride_oh, stride_lh,
    total_q, total_k, heads_per_kv, qk_scale,
    BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr,
):
    """Descriptors: q / k over [total, h * stride_h] with [rows, 128] (q_desc, k_desc) and [rows, 64] (q2_desc,
    k2_desc) tiles (64 rows for q, BLOCK_N for k), v with [BLOCK_N, 128] tiles. 4 warps (the first warpgroup); the
    second warpgroup and the loader warp are the worker partitions."""
    BLOCK_M: gl.constexpr = 2 * ROWS
    # the heaviest (last) query blocks of the causal triangle start first: a shorter tail
    m_block = gl.num_programs(0) - 1 - gl.program_id(0)
    head = gl.program_id(1)
    seq = gl.program_id(2)
    head_kv = head // heads_per_kv

    # lengths come from the device: clamp them so that no load or store leaves the tensors
    q_start = gl.minimum(gl.maximum(gl.load(cu_seqlens_q_ptr + seq), 0), total_q)
    q_end = gl.minimum(gl.maximum(gl.load(cu_seqlens_q_ptr + seq + 1), q_start), total_q)
    k_start = gl.minimum(gl.maximum(gl.load(cu_seqlens_k_ptr + seq), 0), total_k)
    k_end = gl.minimum(gl.maximum(gl.load(cu_seqlens_k_ptr + seq + 1), k_start), total_k)
    lq = q_end - q_start
    lk = k_end - k_start
    m0 = m_block * BLOCK_M

    # keys [0, n_full) every row sees (whole tiles, no mask); tiles up to n_end hold the rest
    if CAUSAL:
        shift = lk - lq
        n_full = gl.minimum(gl.maximum(m0 + shift + 1, 0), lk)
        n_end = gl.minimum(gl.maximum(gl.minimum(m0 + BLOCK_M, lq) + shift, 0), lk)
    else:
        shift = lk
        n_full = lk
        n_end = lk
    n_full = (n_full // BLOCK_N) * BLOCK_N
    n_tiles = gl.where(m0 < lq, (gl.maximum(n_end, n_full) + BLOCK_N - 1) // BLOCK_N, 0)

    dtype: gl.constexpr = q_desc.dtype
    sl: gl.constexpr = _smem_layout()
    q_smem = gl.allocate_shared_memory(dtype, [2, ROWS, D1], sl)
    q2_smem = gl.allocate_shared_memory(dtype, [2, ROWS, D2], sl)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D1], sl)
    k2_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D2], sl)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, DV], sl)
    bars = gl.allocate_shared_memory(gl.int64, [K_READY + 4 * STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(K_READY + 2 * STAGES):
        mbarrier.init(bars.index(i), count=1)
    for i in gl.static_range(K_READY + 2 * STAGES, K_READY + 4 * STAGES):
        mbarrier.init(bars.index(i), count=2)  # one arrival a warpgroup

    load_args = (q_desc, q2_desc, k_desc, k2_desc, v_desc, q_smem, q2_smem, k_smem, k2_smem, v_smem, bars,
                 q_start + m0, head * stride_qh, k_start, head_kv * stride_kh, head_kv * stride_vh, n_tiles)
    compute_args = (q_smem, q2_smem, k_smem, k2_smem, v_smem, bars, out_ptr, lse_ptr, q_start, m0, lq, lk, shift,
                    n_full, n_tiles, head, stride_ot, stride_oh, stride_lh, qk_scale)
    gl.warp_specialize([(_wg0, compute_args), (_wg1, compute_args), (_loader, load_args)], [4, 1],
                       [WG_REGS, LOADER_REGS])


# -- host side -----------------------------------------------------------------------------------------------

def usable(q, k, v):
    """DeepSeek's head dims, 16-bit, and what TMA needs: 16-byte aligned bases and strides, unit last stride."""
    if (q.shape[2], v.shape[2]) != (D1.value + D2.value, DV.value) or q.dtype not in (torch.bfloat16, torch.float16):
        return False
    for t in (q, k, v):
        if (t.numel() == 0 or t.stride(2) != 1 or t.data_ptr() % 16 or (t.stride(0) * 2) % 16
                or (t.stride(1) * 2) % 16):
            return False
    return True


def _descriptor(t, rows, width):
    """A descriptor over t [total, h, d] seen as [total, (h - 1) * stride_h + d], tiles [rows, width]."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    total, h, d = t.shape
    cols = (h - 1) * t.stride(1) + d
    return TensorDescriptor(t, [max(total, 1), cols], [t.stride(0), 1], [rows, width], _smem_layout())


def prefill_mha(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, softmax_scale, causal, config, out, lse):
    """Launch the kernel (``usable`` inputs; validated by ``triton_mla.prefill.mla_prefill_mha``)."""
    total_q, h, _ = q.shape
    total_k, h_kv, _ = v.shape
    b = cu_seqlens_q.shape[0] - 1
    block_n = config["BLOCK_N"]
    grid = (cdiv(max_seqlen_q, 2 * ROWS.value), h, b)
    _prefill_sm90_kernel[grid](
        _descriptor(q, ROWS.value, D1.value), _descriptor(q, ROWS.value, D2.value),
        _descriptor(k, block_n, D1.value), _descriptor(k, block_n, D2.value), _descriptor(v, block_n, DV.value),
        cu_seqlens_q, cu_seqlens_k, out, lse,
        q.stride(1), k.stride(1), v.stride(1), out.stride(0), out.stride(1), lse.stride(0),
        total_q, total_k, h // h_kv, softmax_scale * LOG2E.value,
        BLOCK_N=block_n, STAGES=config["STAGES"], CAUSAL=bool(causal), **FP_FUSION, num_warps=4,
    )
    return out, lse


def compile_spec(params, causal):
    """(name, fn, types, constexprs, warps, stages) for check-configs (a ``WGMMA`` prefill entry, sm90 only)."""
    lay = repr(_smem_layout())

    def desc(rows, width):
        return f"tensordesc<bf16[{rows}, {width}],{lay}>"

    bn = params["BLOCK_N"]
    types = dict(q_desc=desc(ROWS.value, D1.value), q2_desc=desc(ROWS.value, D2.value), k_desc=desc(bn, D1.value),
                 k2_desc=desc(bn, D2.value), v_desc=desc(bn, DV.value), out_ptr="*bf16", lse_ptr="*fp32",
                 qk_scale="fp32")
    consts = dict(BLOCK_N=bn, STAGES=params["STAGES"], CAUSAL=causal)
    return f"prefill_sm90(causal={causal})", _prefill_sm90_kernel, types, consts, 4, 1
