"""Shared @triton.jit helpers: the split plan that decode and combine derive from ``cache_seqlens``.

The plan: every sequence is cut into key blocks of BLOCK_N tokens; the blocks of all sequences,
laid end to end, are dealt to ``num_parts`` programs in equal contiguous ranges. Part p covers
global blocks [T*p // P, T*(p+1) // P) where T is the total (P: ``effective_parts``). Each kernel
re-derives the plan from the lengths it is given, so a plan can never be stale (a CUDA graph replayed
with new lengths stays right) and nothing is read on the host.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# parts of at most this many keys are aligned with sequence ends (effective_parts)
ALIGN_MAX_KEYS = tl.constexpr(8192)
# Every launch asks for fused multiply-adds (ptxas --fmad=true), the form every figure in benchmarks/ was measured
# in: Triton 3.9 warns when a launch leaves the choice to its default, and 3.10 changes that default to off (more
# instructions, other rounding). The interpreter ignores it.
FP_FUSION = {"enable_fp_fusion": True}


@triton.jit
def seq_blocks(seqlens_ptr, stride_seqlens, idx, mask, max_len, BLOCK_N: tl.constexpr):
    """Key blocks of sequences ``idx``; lengths clamped to [0, max_len] so no read leaves the table."""
    length = tl.load(seqlens_ptr + idx * stride_seqlens, mask=mask, other=0)
    length = tl.minimum(tl.maximum(length, 0), max_len)
    return tl.where(mask, (length + BLOCK_N - 1) // BLOCK_N, 0)


@triton.jit
def plan_totals(seqlens_ptr, stride_seqlens, batch, upto, max_len, BLOCK_N: tl.constexpr,
                CHUNK_B: tl.constexpr):
    """(blocks of all sequences, blocks of sequences [0, upto), blocks of the longest sequence)."""
    total = 0
    before = 0
    longest = 0
    for b0 in range(0, batch, CHUNK_B):
        idx = b0 + tl.arange(0, CHUNK_B)
        n = seq_blocks(seqlens_ptr, stride_seqlens, idx, idx < batch, max_len, BLOCK_N)
        total += tl.sum(n, axis=0)
        before += tl.sum(tl.where(idx < upto, n, 0), axis=0)
        longest = tl.maximum(longest, tl.max(n, axis=0))
    return total, before, longest


@triton.jit
def find_sequence(seqlens_ptr, stride_seqlens, batch, g, max_len, BLOCK_N: tl.constexpr,
                  CHUNK_B: tl.constexpr, EMPTY_AT_G: tl.constexpr = False):
    """The sequence holding global block ``g`` and the global index of its first block. EMPTY_AT_G: the first
    empty sequence placed at ``g`` if there is one (the part starting at g then writes its output)."""
    count = 0
    start = 0
    running = 0
    for b0 in range(0, batch, CHUNK_B):
        idx = b0 + tl.arange(0, CHUNK_B)
        n = seq_blocks(seqlens_ptr, stride_seqlens, idx, idx < batch, max_len, BLOCK_N)
        cu_end = running + tl.cumsum(n, axis=0)
        # cu_end is nondecreasing, so the sequences ending at or before g form a prefix (as do those ending
        # before g, or at g with keys: an empty sequence at g comes after every sequence that ends at g with keys)
        if EMPTY_AT_G:
            done = ((cu_end < g) | ((cu_end == g) & (n > 0))) & (idx < batch)
        else:
            done = (cu_end <= g) & (idx < batch)
        count += tl.sum(done.to(tl.int32), axis=0)
        start = tl.maximum(start, tl.max(tl.where(done, cu_end, 0), axis=0))
        running += tl.sum(n, axis=0)
    return count, start


@triton.jit
def effective_parts(total, longest, batch, num_parts, MIN_BLOCKS_PER_PART: tl.constexpr, BLOCK_N: tl.constexpr):
    """The plan's part count: ``num_parts``, fewer when there is little work (no part is left with a sliver of a
    sequence). When every sequence has the same block count (``total`` = ``batch`` x ``longest``) and a part
    holds at most ALIGN_MAX_KEYS keys, the largest count at most 1/16 (and 16) below that which divides the
    batch or which the batch divides: the part boundaries then fall on sequence ends, so no part holds a piece
    of a sequence besides whole ones. Measured on the H100 at b = 128 (benchmarks/NOTES.md, sixteenth session):
    a cut costs a segment start in two programs and a combine, a 16th fewer parts (SMs) at most that share of
    the time; 64 instead of 66 parts at 128 rows was 4% faster at s_k = 4096 and no faster at 8192 (so longer
    parts keep the count), 256 instead of 264 at 16 rows 5% faster at 4096."""
    parts = tl.maximum(tl.minimum(num_parts, total // MIN_BLOCKS_PER_PART), 1)
    # (not where parts are long: there a 16th fewer SMs costs more than the cuts did). The tensor is the left
    # operand: Triton 3.8's interpreter fails on a global constexpr times a tensor ("cannot convert ... to tensor").
    short = total.to(tl.int64) * BLOCK_N <= parts.to(tl.int64) * ALIGN_MAX_KEYS
    uniform = ((total == batch * longest) & (longest > 0) & short).to(tl.int32)
    found = 0
    best = parts
    for d in tl.static_range(17):
        p = tl.maximum(parts - d, 1)
        ok = uniform * (1 - found) * (d <= parts // 16).to(tl.int32) * (
            ((batch % p) == 0) | ((p % batch) == 0)).to(tl.int32)
        best += ok * (p - best)
        found += ok
    return best


@triton.jit
def part_start(total, part, parts):
    return ((total.to(tl.int64) * part) // parts).to(tl.int32)


@triton.jit
def part_of_block(g, total, parts):
    """The part whose range holds global block g (the inverse of part_start)."""
    return (((g.to(tl.int64) + 1) * parts - 1) // tl.maximum(total, 1)).to(tl.int32)


@triton.jit
def query_rows(row_block, s_q, h_q, BLOCK_H: tl.constexpr):
    """Query rows of one program: row = s * h_q + h over the s_q * h_q rows that share the KV head."""
    rows = row_block * BLOCK_H + tl.arange(0, BLOCK_H)
    return rows, rows < s_q * h_q, rows // h_q, rows % h_q


@triton.jit
def output_ptrs(out_ptr, lse_ptr, seq, row_s, row_h, offs_dv, stride_ob, stride_os, stride_oh, stride_lb,
                stride_lh, stride_ls):
    """Where rows (row_s, row_h) of sequence ``seq`` go in out [b, s_q, h_q, dv] and lse [b, h_q, s_q]."""
    o_rows = (out_ptr + seq.to(tl.int64) * stride_ob + row_s.to(tl.int64) * stride_os
              + row_h.to(tl.int64) * stride_oh)
    lse_rows = lse_ptr + seq.to(tl.int64) * stride_lb + row_h * stride_lh + row_s * stride_ls
    return o_rows[:, None] + offs_dv[None, :], lse_rows


# -- host-side launch arithmetic ---------------------------------------------------------------------------
# triton.cdiv / triton.next_power_of_2 cost 3-5 us per call from Python (they are wrapped for use inside
# kernels); a decode call makes several, so launchers use these plain versions.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()
