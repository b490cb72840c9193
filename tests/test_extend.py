"""Extend (``mla_extend``) against ``reference.extend_ref``, and ``decompress_kv`` for MHA-mode prefill.

CPU runs use the Triton interpreter with fp16/fp32 and small latent sizes; GPU runs use bf16, the FP8
cache and DeepSeek's 512 + 64. Every case: fresh random inputs, NaN in unused pages and in the tail of
each last page, page ids far out of range in unused block-table entries, a shuffled block table, and
every torch.empty the library makes filled with NaN, so a read out of bounds or an element never
written shows up. Mixed batches (decode tokens, long chunks and empty chunks side by side) are checked
token by token: a reviewed Triton backend returned zeros for the extend tokens of such batches, and
paired queries with another request's cache after compacting indices.
"""

import math
import random

import pytest
import torch
import triton
from conftest import CPU_DTYPES, DEVICE, HAS_GPU, assert_close, gpu

from triton_mla import configs
from triton_mla import fp8 as fp8_layout
from triton_mla.extend import decompress_kv, mla_extend
from triton_mla.reference import (
    absorb_query,
    decompress_kv_ref,
    extend_ref,
    gather_paged_kv,
    mla_naive_ref,
    split_kv_b_proj,
    unabsorb_output,
    varlen_attention_ref,
)

FAR_PAGE = 1 << 30  # unused block-table entries: the kernel must never read them
InterpreterError = getattr(triton.runtime.errors, "InterpreterError", RuntimeError)


# every floating torch.empty the library makes is NaN-filled (conftest.poison_empty)
pytestmark = pytest.mark.usefixtures("poison_empty")


def make_cache(lens, d, page_size, dtype, g, fp8=False, spare_pages=3, scales=None):
    """A NaN-poisoned paged cache in shuffled page order: (k_cache, block_table, latent per sequence)."""
    pages = [math.ceil(n / page_size) for n in lens]
    width = max(pages + [1])
    num_blocks = sum(pages) + spare_pages
    if fp8:
        # 0xFF bytes: e4m3 NaN values and NaN scales; an unused token read anywhere poisons the result
        k_cache = torch.full((num_blocks, page_size, 1, fp8_layout.BYTES_PER_TOKEN), 255, dtype=torch.uint8)
    else:
        k_cache = torch.full((num_blocks, page_size, 1, d), float("nan"), dtype=dtype)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    block_table = torch.full((len(lens), width), FAR_PAGE, dtype=torch.int32)
    for i, n in enumerate(lens):
        ids = [perm.pop() for _ in range(pages[i])]
        if not ids:
            continue
        block_table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        # distinct scales per sequence, so pairing a query with another sequence's cache cannot pass
        tokens = torch.randn(n, d, generator=g) * (1.0 if scales is None else scales[i])
        if fp8:
            tokens = fp8_layout.quantize_latent(tokens[:, :512], tokens[:, 512:])
        flat = k_cache[ids].view(-1, k_cache.shape[-1])
        flat[:n] = tokens.to(k_cache.dtype)
        k_cache[ids] = flat.view(len(ids), page_size, 1, -1)
    return k_cache, block_table


def make_case(lens, q_lens, h_q, dv=64, dr=16, page_size=16, dtype=torch.float16, seed=0, fp8=False,
              scales=None, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    d = dv + dr
    k_cache, block_table = make_cache(lens, d, page_size, dtype, g, fp8=fp8, scales=scales)
    cu = torch.tensor([0] + list(q_lens), dtype=torch.int64).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu[-1]), h_q, d, generator=g).to(dtype)
    cache_seqlens = torch.tensor(lens, dtype=torch.int32)
    return [t.to(device) for t in (q, k_cache, block_table, cache_seqlens, cu)]


def check_extend(lens, q_lens, h_q, dv=64, dr=16, page_size=16, dtype=torch.float16, seed=0, fp8=False,
                 softmax_scale=None, scales=None, max_seqlen_q=None):
    q, k_cache, block_table, cache_seqlens, cu = make_case(lens, q_lens, h_q, dv, dr, page_size, dtype, seed, fp8,
                                                           scales)
    max_seqlen_q = max(q_lens + [0]) if max_seqlen_q is None else max_seqlen_q
    out, lse = mla_extend(q, k_cache, block_table, cache_seqlens, cu, max_seqlen_q, softmax_scale,
                          is_fp8_kvcache=fp8, head_dim_v=dv)
    # float64 on the kernel's device: on a GPU the long cases would take minutes on the host
    ref, ref_lse = extend_ref(q, k_cache, block_table, cache_seqlens, cu, dv, softmax_scale)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert out.shape == (q.shape[0], h_q, dv) and lse.shape == (h_q, q.shape[0])
    assert_close(out, ref, dtype)
    assert_close(lse, ref_lse, torch.float32 if dtype == torch.float32 else torch.float16, "lse")
    return q, out, ref


# -- lengths, chunks, pages --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("prefix,q_len", [(0, 1), (0, 5), (7, 1), (13, 17), (16, 16), (48, 33), (100, 37)])
def test_chunk_over_prefix(prefix, q_len, dtype):
    """Chunk boundaries on and off pages (16) and tiles; a chunk with no prefix (plain causal prefill)."""
    check_extend([prefix + q_len], [q_len], h_q=4, dtype=dtype, seed=prefix + q_len)


@pytest.mark.parametrize("page_size", [1, 5, 16, 64])
def test_page_sizes(page_size):
    check_extend([70, 9, 130], [6, 9, 33], h_q=3, page_size=page_size, seed=page_size)


@pytest.mark.parametrize("h_q", [1, 2, 3, 8, 12, 16, 17, 32, 64, 128])
def test_head_counts(h_q):
    # rows = token * h_q + head: 64-row tiles cut tokens apart when h_q does not divide 64
    check_extend([40, 3, 21], [5, 3, 1], h_q=h_q, seed=h_q)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_mixed_batch(dtype):
    """Decode tokens (q_len 1), long chunks, an empty chunk and an empty sequence in one call: every
    token's output, the extend tokens' included, must match its own sequence's reference."""
    lens = [50, 1, 200, 77, 0, 33, 129]
    q_lens = [1, 1, 71, 0, 0, 33, 2]
    q, out, ref = check_extend(lens, q_lens, h_q=8, dtype=dtype, scales=[1, 2, 0.5, 3, 1, 1.5, 0.25])
    extend_rows = slice(2, 2 + 71)
    assert out[extend_rows].abs().amax() > 0  # the reviewed backend returned zeros here


def test_mixed_batch_pairs_each_request_with_its_own_cache():
    """Decode and extend requests interleaved, caches of very different scales: a query paired with
    another request's cache (as after compacting decode indices) would be far off."""
    lens = [90, 40, 1, 64, 17, 5]
    q_lens = [30, 1, 1, 0, 17, 1]
    scales = [0.1, 10.0, 1.0, 5.0, 0.3, 3.0]
    q, out, ref = check_extend(lens, q_lens, h_q=4, scales=scales, seed=7)
    # per sequence, so a swap of two sequences' outputs cannot hide in the global norm
    cu = [0, 30, 31, 32, 32, 49, 50]
    for i in range(len(lens)):
        if q_lens[i]:
            assert_close(out[cu[i]:cu[i + 1]], ref[cu[i]:cu[i + 1]], torch.float16, f"sequence {i}")


def test_extend_only_and_decode_only_batches():
    check_extend([33, 64, 65], [33, 64, 2], h_q=4)
    check_extend([33, 64, 65, 1], [1, 1, 1, 1], h_q=16)


def test_max_seqlen_q_above_longest_chunk():
    """A larger max_seqlen_q only launches programs that exit at once."""
    check_extend([20, 9], [4, 9], h_q=4, max_seqlen_q=40)


@pytest.mark.parametrize("seed", range(3))
def test_random_batches(seed):
    rng = random.Random(seed)
    b = rng.randint(1, 6)
    q_lens = [rng.choice([0, 1, 1, rng.randint(2, 40)]) for _ in range(b)]
    lens = [n + rng.choice([0, rng.randint(1, 90)]) for n in q_lens]
    check_extend(lens, q_lens, h_q=rng.choice([1, 5, 16]), page_size=rng.choice([4, 16, 32]), seed=seed)


def test_deepseek_dims_cpu():
    """The real latent (512 + 64) and 16 heads, as TP=8 gives DeepSeek-V3."""
    check_extend([70, 1, 64], [6, 1, 64], h_q=16, dv=512, dr=64, page_size=64)


@pytest.mark.parametrize("dv,dr", [(512, 0), (256, 32), (128, 64), (96, 32), (48, 8)])
def test_latent_sizes(dv, dr):
    """No rope part (d = 512), MiniCPM3's 256 + 32, and sizes that are not powers of two."""
    check_extend([40, 17], [3, 17], h_q=3, dv=dv, dr=dr)


def test_softmax_scale():
    check_extend([50], [7], h_q=2, softmax_scale=0.3)


def test_fp8_cache_cpu():
    """The FP8 layout (656 bytes a token) with fp16 queries, DeepSeek's dims."""
    check_extend([40, 1, 65], [9, 1, 3], h_q=4, dv=512, dr=64, page_size=16, fp8=True)


# -- launch variants (config keys the H100 sweep compares; kernels/extend.py ``_launch_params``) -------------
VARIANTS = {
    "lazy8": dict(LAZY_RESCALE=8.0),
    # tau 1 with 16-key tiles: the lazy max moves often, and skips often
    "lazy1_n16": dict(LAZY_RESCALE=1.0, BLOCK_N=16),
    "n64": dict(BLOCK_N=64),
    "n32_s5": dict(BLOCK_N=32, num_stages=5),
    "fp8_one_tile": dict(FP8_ONE_TILE=True),  # FP8 only; a no-op for 16-bit caches
}


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_launch_variants(variant, dtype):
    """Each variant on a prefix + chunk, a decode token, a plain causal chunk and an empty sequence; then a
    wide score spread (softmax_scale 3) over several tiles, where the running max jumps by more than tau."""
    with configs.overridden(**VARIANTS[variant]):
        check_extend([130, 1, 77, 0], [37, 1, 77, 0], h_q=5, page_size=16, dtype=dtype, seed=11)
        check_extend([200, 90], [9, 90], h_q=4, dtype=dtype, softmax_scale=3.0, seed=12)


@pytest.mark.parametrize("variant", ["lazy8", "lazy1_n16", "fp8_one_tile"])
def test_launch_variants_fp8_cpu(variant):
    with configs.overridden(**VARIANTS[variant]):
        check_extend([40, 1, 65], [9, 1, 3], h_q=4, dv=512, dr=64, page_size=16, fp8=True)


def test_lse_and_out_buffers():
    q, k_cache, block_table, cache_seqlens, cu = make_case([30, 12], [5, 2], h_q=3)
    out = torch.full((q.shape[0], 3, 64), float("nan"), dtype=q.dtype, device=q.device)
    lse = torch.full((3, q.shape[0]), float("nan"), dtype=torch.float32, device=q.device)
    o, s = mla_extend(q, k_cache, block_table, cache_seqlens, cu, 5, head_dim_v=64, out=out, lse=lse)
    assert o is out and s is lse
    ref, ref_lse = extend_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), cache_seqlens.cpu(), cu.cpu(), 64)
    assert_close(out, ref, torch.float16)
    assert_close(lse, ref_lse, torch.float16, "lse")


def test_strided_q_and_out():
    """Token and head strides are read, not assumed."""
    q, k_cache, block_table, cache_seqlens, cu = make_case([30, 12], [5, 2], h_q=3)
    wide = torch.randn(q.shape[0], 5, q.shape[2] + 8, dtype=q.dtype, device=q.device)
    wide[:, 1:4, :q.shape[2]] = q
    q_view = wide[:, 1:4, :q.shape[2]]
    out_buf = torch.zeros(q.shape[0], 6, 64, dtype=q.dtype, device=q.device)
    out, _ = mla_extend(q_view, k_cache, block_table, cache_seqlens, cu, 5, head_dim_v=64, out=out_buf[:, ::2])
    ref, _ = extend_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), cache_seqlens.cpu(), cu.cpu(), 64)
    assert_close(out, ref, torch.float16)


def test_empty_batch_and_no_tokens():
    q, k_cache, block_table, cache_seqlens, cu = make_case([10], [0], h_q=2)
    out, lse = mla_extend(q, k_cache, block_table, cache_seqlens, cu, 0, head_dim_v=64)
    assert out.shape == (0, 2, 64) and lse.shape == (2, 0)
    empty_cu = torch.zeros(1, dtype=torch.int32, device=q.device)
    out, lse = mla_extend(q, k_cache, block_table[:0], cache_seqlens[:0], empty_cu, 0, head_dim_v=64)
    assert out.shape == (0, 2, 64)


def test_bad_values_never_read_out_of_bounds(monkeypatch):
    """Without TRITON_MLA_CHECK, garbage lengths, offsets and page ids are clamped in the kernel: it
    reads and writes nothing out of bounds (results for such input are unspecified)."""
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    q, k_cache, block_table, cache_seqlens, cu = make_case([30, 12, 5], [5, 2, 1], h_q=3)
    block_table[0, 1] = -7
    block_table[1, 0] = 10**6
    cache_seqlens[2] = 10**6
    cu_bad = torch.tensor([0, 9, 3, 10**5], dtype=torch.int32, device=q.device)
    mla_extend(q, k_cache, block_table, cache_seqlens, cu_bad, 8, head_dim_v=64)
    cache_seqlens[1] = -5
    mla_extend(q, k_cache, block_table, cache_seqlens, cu, 5, head_dim_v=64)


# -- bad input --------------------------------------------------------------------------------------
def _valid():
    q, k_cache, block_table, cache_seqlens, cu = make_case([10, 20], [3, 4], h_q=2)
    return dict(q=q, k_cache=k_cache, block_table=block_table, cache_seqlens=cache_seqlens, cu_seqlens_q=cu,
                max_seqlen_q=4, head_dim_v=64)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(q=a["q"].to(torch.int32)), TypeError, "q"),
        (lambda a: a.update(q=a["q"][None]), ValueError, "q"),
        (lambda a: a.update(q=a["q"][:, :0]), ValueError, "q"),
        (lambda a: a.update(q=a["q"].transpose(-1, -2).contiguous().transpose(-1, -2)), ValueError, "q"),
        (lambda a: a.update(k_cache=a["k_cache"].float()), TypeError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"].expand(-1, -1, 2, -1)), ValueError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"][..., :40]), ValueError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"].view(torch.uint8)[..., :80]), TypeError, "k_cache"),
        (lambda a: a.update(block_table=a["block_table"].long()), TypeError, "block_table"),
        (lambda a: a.update(block_table=a["block_table"][:1]), ValueError, "block_table"),
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"].long()), TypeError, "cache_seqlens"),
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"][:1]), ValueError, "cache_seqlens"),
        (lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"].long()), TypeError, "cu_seqlens_q"),
        (lambda a: a.update(cu_seqlens_q=a["cu_seqlens_q"][:0]), ValueError, "cu_seqlens_q"),
        (lambda a: a.update(max_seqlen_q=-1), ValueError, "max_seqlen_q"),
        (lambda a: a.update(max_seqlen_q=4.0), TypeError, "max_seqlen_q"),
        (lambda a: a.update(head_dim_v=1000), ValueError, "head_dim_v"),
        (lambda a: a.update(head_dim_v=None), ValueError, "head_dim_v"),
        (lambda a: a.update(softmax_scale="x"), TypeError, "softmax_scale"),
        (lambda a: a.update(softmax_scale=float("nan")), ValueError, "softmax_scale"),
        (lambda a: a.update(is_fp8_kvcache=True), TypeError, "k_cache"),
        # (a flag, not a truthy value: "no" would read as True)
        (lambda a: a.update(is_fp8_kvcache="no"), TypeError, "is_fp8_kvcache"),
        (lambda a: a.update(is_fp8_kvcache=0), TypeError, "is_fp8_kvcache"),
        (lambda a: a.update(out=torch.empty(1, 2, 64, dtype=a["q"].dtype)), ValueError, "out"),
        (lambda a: a.update(lse=torch.empty(2, 7, dtype=torch.float16)), TypeError, "lse"),
        # value checks (TRITON_MLA_CHECK=1, set by conftest)
        (lambda a: a.update(max_seqlen_q=3), ValueError, "max_seqlen_q"),
        (lambda a: a["cu_seqlens_q"].__setitem__(1, 8), ValueError, "cu_seqlens_q"),
        (lambda a: a["cu_seqlens_q"].__setitem__(2, 100), ValueError, "cu_seqlens_q"),
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"] * 0 + 2), ValueError, "cu_seqlens_q"),
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"] + 100), ValueError, "cache_seqlens"),
        (lambda a: a["block_table"].__setitem__((0, 0), 10**6), ValueError, "block_table"),
    ],
)
def test_bad_input(mutate, exc, match):
    args = _valid()
    mutate(args)
    with pytest.raises(exc, match=match):
        mla_extend(**args)


def test_more_sequences_than_the_grid_takes_rejected():
    """Sequences sit on grid axis 1, which CUDA caps at 65535: a clear error, not a failed launch."""
    n = 65536
    q = torch.randn(n, 1, 32, dtype=torch.float16, device=DEVICE)
    k_cache = torch.randn(1, 16, 1, 32, dtype=torch.float16, device=DEVICE)
    block_table = torch.zeros(n, 1, dtype=torch.int32, device=DEVICE)
    cache_seqlens = torch.ones(n, dtype=torch.int32, device=DEVICE)
    cu = torch.arange(n + 1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="cu_seqlens_q: at most 65535 sequences"):
        mla_extend(q, k_cache, block_table, cache_seqlens, cu, 1, head_dim_v=16)


def test_head_dim_v_rope_limit():
    q, k_cache, block_table, cache_seqlens, cu = make_case([10], [3], h_q=2, dv=16, dr=160)
    with pytest.raises(ValueError, match="rope"):
        mla_extend(q, k_cache, block_table, cache_seqlens, cu, 3, head_dim_v=16)


# -- decompress_kv: MHA-mode prefill over a prefix ------------------------------------------------------
def _weights(h, d_nope, d_v, r, dtype, g, device=DEVICE):
    kv_b_proj = (torch.randn(h * (d_nope + d_v), r, generator=g) / math.sqrt(r)).to(dtype).to(device)
    return split_kv_b_proj(kv_b_proj, h, d_nope, d_v)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("bounds", ["all", "ints", "tensors", "sizes_given"])
def test_decompress_kv(bounds, dtype):
    g = torch.Generator().manual_seed(3)
    lens = [37, 0, 64, 5, 130]
    k_cache, block_table = make_cache(lens, 32 + 8, 16, dtype, g)
    k_cache, block_table = k_cache.to(DEVICE), block_table.to(DEVICE)
    cache_seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    w_uk, w_uv = _weights(4, 24, 20, 32, dtype, g)
    starts, ends = torch.zeros(5, dtype=torch.int64), torch.tensor(lens)
    kwargs = {}
    if bounds == "ints":
        kwargs = dict(start=3, end=60)
        starts, ends = torch.full((5,), 3), torch.tensor(lens).clamp(max=60)
    elif bounds in ("tensors", "sizes_given"):
        lo, hi = [5, 0, 63, 9, 17], [30, 4, 64, 2, 129]
        kwargs = dict(start=torch.tensor(lo, dtype=torch.int32, device=DEVICE),
                      end=torch.tensor(hi, dtype=torch.int32, device=DEVICE))
        starts, ends = torch.tensor(lo), torch.minimum(torch.tensor(hi), torch.tensor(lens))
    n = (ends - starts).clamp(min=0).tolist()
    if bounds == "sizes_given":
        kwargs.update(total_k=sum(n), max_seqlen_k=max(n))
    k, v, cu_k, max_k = decompress_kv(k_cache, block_table, cache_seqlens, w_uk, w_uv, **kwargs)
    ref_k, ref_v = decompress_kv_ref(k_cache.cpu(), block_table.cpu(), starts, ends, w_uk.cpu(), w_uv.cpu())
    assert k.shape == (sum(n), 4, 24 + 8) and v.shape == (sum(n), 4, 20)
    assert cu_k.dtype == torch.int32 and cu_k.tolist() == [0] + torch.tensor(n).cumsum(0).tolist()
    assert max_k == max(n)
    assert_close(k, ref_k, dtype, "k")
    assert_close(v, ref_v, dtype, "v")


def test_decompress_kv_separate_weights():
    """Weights that are not views of one kv_b_proj tensor take the copying path."""
    g = torch.Generator().manual_seed(4)
    k_cache, block_table = make_cache([20], 40, 8, torch.float32, g)
    w_uk, w_uv = _weights(2, 16, 16, 32, torch.float32, g)
    w_uk, w_uv = w_uk.contiguous(), w_uv.contiguous()
    cache_seqlens = torch.tensor([20], dtype=torch.int32)
    k, v, _, _ = decompress_kv(k_cache.to(DEVICE), block_table.to(DEVICE), cache_seqlens.to(DEVICE), w_uk, w_uv)
    ref_k, ref_v = decompress_kv_ref(k_cache, block_table, torch.tensor([0]), torch.tensor([20]), w_uk.cpu(),
                                     w_uv.cpu())
    assert_close(k, ref_k, torch.float32, "k")
    assert_close(v, ref_v, torch.float32, "v")


def test_decompress_kv_bad_input():
    g = torch.Generator().manual_seed(5)
    k_cache, block_table = make_cache([20], 40, 8, torch.float32, g)
    k_cache, block_table = k_cache.to(DEVICE), block_table.to(DEVICE)
    lens = torch.tensor([20], dtype=torch.int32, device=DEVICE)
    w_uk, w_uv = _weights(2, 16, 16, 32, torch.float32, g)
    with pytest.raises(ValueError, match="w_vc"):
        decompress_kv(k_cache, block_table, lens, w_uk, w_uv[:1])
    with pytest.raises(TypeError, match="w_vc"):
        decompress_kv(k_cache, block_table, lens, w_uk, w_uv.half())
    with pytest.raises(ValueError, match="w_kc"):
        decompress_kv(k_cache, block_table, lens, *_weights(2, 16, 16, 40, torch.float32, g))
    with pytest.raises(ValueError, match="start"):
        decompress_kv(k_cache, block_table, lens, w_uk, w_uv, start=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="total_k"):
        decompress_kv(k_cache, block_table, lens, w_uk, w_uv, total_k=5, max_seqlen_k=20)
    with pytest.raises(TypeError, match="is_fp8_kvcache"):
        decompress_kv(k_cache, block_table, lens, w_uk, w_uv, is_fp8_kvcache="no")
    # one size passed alone is checked against the computed one (it used to be taken as is)
    with pytest.raises(ValueError, match="total_k"):
        decompress_kv(k_cache, block_table, lens, w_uk, w_uv, total_k=19)
    with pytest.raises(ValueError, match="max_seqlen_k"):
        decompress_kv(k_cache, block_table, lens, w_uk, w_uv, max_seqlen_k=5)
    assert decompress_kv(k_cache, block_table, lens, w_uk, w_uv, max_seqlen_k=25).max_seqlen_k == 25


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_mha_and_absorbed_extend_agree(dtype):
    """The two ways to run a chunk over a cached prefix give naive MLA's answer: decompress_kv + varlen
    attention (MHA mode) and absorb_query + mla_extend + unabsorb_output (absorbed mode)."""
    g = torch.Generator().manual_seed(11)
    h, d_nope, d_rope, d_v, r = 4, 16, 8, 16, 32
    lens = [45, 1, 20]  # new tokens: 12, 1, 20
    k_cache, block_table = make_cache(lens, r + d_rope, 16, dtype, g)
    k_cache, block_table = k_cache.to(DEVICE), block_table.to(DEVICE)
    cache_seqlens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    cu_q = torch.tensor([0, 12, 13, 33], dtype=torch.int32, device=DEVICE)
    w_uk, w_uv = _weights(h, d_nope, d_v, r, dtype, g)
    q_nope = torch.randn(33, h, d_nope, generator=g).to(dtype).to(DEVICE)
    q_pe = torch.randn(33, h, d_rope, generator=g).to(dtype).to(DEVICE)
    scale = (d_nope + d_rope) ** -0.5

    # absorbed: attention over the latent, W_UK folded into q and W_UV applied to the output
    q_lat = absorb_query(q_nope.double(), q_pe.double(), w_uk.double()).to(dtype)
    o_lat, lse_abs = mla_extend(q_lat, k_cache, block_table, cache_seqlens, cu_q, 20, scale, head_dim_v=r)
    out_abs = unabsorb_output(o_lat.double(), w_uv.double())

    # MHA: the prefix decompressed per head, then ordinary varlen attention (bottom-right causal)
    k, v, cu_k, max_k = decompress_kv(k_cache, block_table, cache_seqlens, w_uk, w_uv)
    q_mha = torch.cat([q_nope, q_pe], dim=-1)
    out_mha, lse_mha = varlen_attention_ref(q_mha.cpu(), k.cpu(), v.cpu(), cu_q.cpu(), cu_k.cpu(), scale)
    try:
        from triton_mla.prefill import mla_prefill_mha
    except ImportError:
        mla_prefill_mha = None
    if mla_prefill_mha is not None:
        out_mha, lse_mha = mla_prefill_mha(q_mha, k, v, cu_q, cu_k, 20, max_k, scale, causal=True)

    # the naive form, per sequence, in float64
    cq = cu_q.tolist()
    for i, n in enumerate(lens):
        lat = gather_paged_kv(k_cache.cpu(), block_table[i].cpu(), n)[:, 0].double()
        rows = slice(cq[i], cq[i + 1])
        ref, ref_lse = mla_naive_ref(q_nope[rows].cpu().double(), q_pe[rows].cpu().double(), lat[:, :r], lat[:, r:],
                                     w_uk.cpu().double(), w_uv.cpu().double(), scale)
        assert_close(out_abs[rows], ref, dtype, f"absorbed, sequence {i}")
        assert_close(out_mha[rows], ref, dtype, f"MHA, sequence {i}")
        assert_close(lse_abs[:, rows], ref_lse, torch.float16, f"absorbed lse, sequence {i}")
        assert_close(lse_mha[:, rows], ref_lse, torch.float16, f"MHA lse, sequence {i}")


# -- GPU: bf16, FP8, DeepSeek's dims, long prefixes ------------------------------------------------------
@gpu
@pytest.mark.parametrize("h_q", [1, 8, 12, 16, 64, 128])
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_mixed_batch(h_q, fp8):
    lens = [4096, 1, 700, 2049, 0, 64, 1000]
    q_lens = [1000, 1, 1, 513, 0, 64, 0]
    check_extend(lens, q_lens, h_q=h_q, dv=512, dr=64, page_size=64, dtype=torch.bfloat16, fp8=fp8, seed=h_q,
                 softmax_scale=192 ** -0.5)


@gpu
@pytest.mark.parametrize("prefix,q_len", [(0, 4096), (8191, 1), (3000, 1001), (4095, 1), (1, 4095), (100, 63)])
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_long_chunks(prefix, q_len, fp8):
    check_extend([prefix + q_len], [q_len], h_q=16, dv=512, dr=64, page_size=64, dtype=torch.bfloat16, fp8=fp8)


@gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_launch_variants(variant, fp8):
    """The sweep's variants of the tl.dot kernel at DeepSeek's dims in bf16: a long chunk over a prefix, decode
    tokens, a plain causal chunk, page ends mid-tile; fp16 with 16-token pages too."""
    with configs.overridden(WGMMA=False, **VARIANTS[variant]):
        for h_q in (16, 128):
            check_extend([3000, 1, 513, 64], [1001, 1, 513, 1], h_q=h_q, dv=512, dr=64, page_size=64,
                         dtype=torch.bfloat16, fp8=fp8, seed=h_q, softmax_scale=192 ** -0.5)
        if not fp8:
            check_extend([300, 77], [100, 77], h_q=16, dv=512, dr=64, page_size=16, dtype=torch.float16)


def test_extend_kernels_share_launch_arguments():
    """extend.extend builds one argument tuple for the tl.dot and the Gluon (sm90) kernels: their leading
    parameters must match."""
    from triton_mla.kernels import extend as k

    if k._sm90 is None:
        pytest.skip("this Triton has no Gluon")
    n = k._extend_kernel.arg_names.index("qk_scale") + 1
    assert k._sm90._extend_sm90_kernel.arg_names[:n] == k._extend_kernel.arg_names[:n]


SM90 = HAS_GPU and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("page_size", [1, 16, 64, 192])
def test_gpu_sm90_extend_kernel(page_size, fp8, monkeypatch):
    """kernels/extend_sm90.py against the reference: mixed batches (decode tokens, long chunks, empty chunks and
    sequences), chunks with no prefix, head counts that cut tokens across 64-row blocks, pages of 1-192 (pages of
    64 and 192: one page look-up a tile)."""
    from triton_mla.kernels import extend as extend_kernels

    calls = []
    launch = extend_kernels._sm90.launch
    monkeypatch.setattr(extend_kernels._sm90, "launch", lambda *a: calls.append(1) or launch(*a))
    cases = [([4096, 1, 700, 2049, 0, 64, 1000], [1000, 1, 1, 513, 0, 64, 0], 128),
             ([3000, 1, 513, 64], [1001, 1, 513, 1], 16),
             ([130, 1, 77], [33, 1, 77], 12),
             ([600], [600], 1),
             ([90, 300], [7, 250], 100)]
    with configs.overridden(WGMMA=True):
        for i, (lens, q_lens, h_q) in enumerate(cases):
            check_extend(lens, q_lens, h_q=h_q, dv=512, dr=64, page_size=page_size,
                         dtype=torch.float16 if i == 2 and not fp8 else torch.bfloat16, fp8=fp8, seed=i + page_size,
                         softmax_scale=192 ** -0.5)
    assert len(calls) == len(cases)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_gpu_other_dtypes_and_pages(dtype, page_size):
    check_extend([300, 1, 77], [100, 1, 77], h_q=16, dv=512, dr=64, page_size=page_size, dtype=dtype)


@gpu
def test_gpu_every_head_count():
    for h_q in range(1, 129, 7):
        check_extend([130, 1], [33, 1], h_q=h_q, dv=512, dr=64, page_size=64, dtype=torch.bfloat16, seed=h_q)


@gpu
def test_gpu_cuda_graph_replay_with_new_lengths():
    """No host sync: the call is captured once and replayed with new lengths and offsets in place."""
    dv, dr, h_q = 512, 64, 16
    q, k_cache, block_table, cache_seqlens, cu = make_case([500, 300, 1], [100, 60, 1], h_q, dv, dr, 64,
                                                           torch.bfloat16)
    out = torch.zeros(q.shape[0], h_q, dv, dtype=q.dtype, device=q.device)
    lse = torch.zeros(h_q, q.shape[0], dtype=torch.float32, device=q.device)
    run = lambda: mla_extend(q, k_cache, block_table, cache_seqlens, cu, 100, head_dim_v=dv, out=out, lse=lse)  # noqa
    import os

    os.environ["TRITON_MLA_CHECK"] = "0"  # the value checks sync: not allowed while capturing
    try:
        run()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        # the same 161 query tokens, cut into chunks of 60, 100 and 1 over shorter contexts
        cache_seqlens.copy_(torch.tensor([450, 161, 1], dtype=torch.int32))
        cu.copy_(torch.tensor([0, 60, 160, 161], dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
    finally:
        os.environ["TRITON_MLA_CHECK"] = "1"
    ref, ref_lse = extend_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), cache_seqlens.cpu(), cu.cpu(), dv)
    assert_close(out, ref, torch.bfloat16)
    assert_close(lse, ref_lse, torch.bfloat16, "lse")


@gpu
def test_gpu_mha_path_deepseek_dims():
    """decompress_kv + mla_prefill_mha against the naive reference at DeepSeek's sizes (bf16)."""
    mla_prefill_mha = pytest.importorskip("triton_mla.prefill").mla_prefill_mha
    g = torch.Generator().manual_seed(0)
    h, d_nope, d_rope, d_v, r = 16, 128, 64, 128, 512
    lens = [1500, 1, 300]  # new tokens: 500, 1, 300
    k_cache, block_table = make_cache(lens, r + d_rope, 64, torch.bfloat16, g)
    k_cache, block_table = k_cache.cuda(), block_table.cuda()
    cache_seqlens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    cu_q = torch.tensor([0, 500, 501, 801], dtype=torch.int32, device="cuda")
    w_uk, w_uv = _weights(h, d_nope, d_v, r, torch.bfloat16, g, device="cuda")
    q = torch.randn(801, h, d_nope + d_rope, generator=g).to(torch.bfloat16).cuda()
    k, v, cu_k, max_k = decompress_kv(k_cache, block_table, cache_seqlens, w_uk, w_uv)
    out, lse = mla_prefill_mha(q, k, v, cu_q, cu_k, 500, max_k, 192 ** -0.5, causal=True)
    ref_k, ref_v = decompress_kv_ref(k_cache.cpu(), block_table.cpu(), torch.zeros(3), torch.tensor(lens),
                                     w_uk.cpu(), w_uv.cpu())
    assert_close(k, ref_k, torch.bfloat16, "k")
    assert_close(v, ref_v, torch.bfloat16, "v")
    ref, ref_lse = varlen_attention_ref(q.cpu(), ref_k, ref_v, cu_q.cpu(), cu_k.cpu(), 192 ** -0.5)
    assert_close(out, ref, torch.bfloat16)


@gpu
def test_gpu_bad_device():
    args = _valid()
    args["k_cache"] = args["k_cache"].cpu()
    with pytest.raises(ValueError, match="k_cache"):
        mla_extend(**args)


def test_config_section_exists():
    for fam in configs.family_names():
        entries = configs.load_family(fam)["extend"]
        for kind in ("16bit", "float32"):
            assert [e for e in entries if e["dtype"] == kind][-1]["max_rows"] is None
