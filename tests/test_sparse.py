"""Sparse (DSA) decode and prefill against ``reference.sparse_decode_ref`` / ``sparse_prefill_ref`` (float64).

CPU runs use the Triton interpreter with fp16/fp32 and a small latent (64 + 16) for the 16/32-bit
caches, DeepSeek's 512 + 64 for the FP8 cache; GPU runs use bf16 and FP8 at realistic sizes. Every
case: fresh random inputs; cache tokens that no valid index names are NaN (FP8: 0xFF bytes, so NaN
scales and rope), padded pages too; indices hold duplicates and invalid entries (-1, other negatives,
ids past the cache); the outputs come from a NaN-poisoned torch.empty, so an unwritten element fails.
"""

import math

import pytest
import torch
from conftest import CPU_DTYPES, DEVICE, HAS_GPU, assert_close, gpu

import triton_mla as tm
from triton_mla import configs
from triton_mla import fp8 as fp8_layout
from triton_mla.kernels import sparse as sparse_kernels
from triton_mla.reference import sparse_decode_ref, sparse_prefill_ref
from triton_mla.sparse import flash_mla_sparse_fwd, sparse_decode

# many splits of each top-k list, so that short CPU inputs go through split + combine
SPLIT_HEAVY = dict(PROGRAMS_PER_SM=64, FP8_PROGRAMS_PER_SM=64, MIN_CHUNKS_PER_SPLIT=1)
BAD_IDS = (-1, -2, -(1 << 31), 1 << 30, (1 << 31) - 1)  # plus num_tokens and num_tokens + 1 per cache


# every floating torch.empty the library makes is NaN-filled (conftest.poison_empty)
pytestmark = pytest.mark.usefixtures("poison_empty")


def make_cache(num_blocks, page_size, d, dtype, fp8, g, used_frac=0.6, pad=0):
    """A random cache [num_blocks, page_size, 1, d] (FP8: [..., 656] uint8), pages padded by ``pad`` tokens.

    Returns (k_cache, used): only the tokens in ``used`` (flat ids) hold data; every other token, and
    the padding, is NaN, so a read of anything an index does not validly name shows up in the output.
    """
    num_tokens = num_blocks * page_size
    used = torch.randperm(num_tokens, generator=g)[: max(1, math.ceil(num_tokens * used_frac))]
    keep = torch.zeros(num_blocks, page_size + pad, dtype=torch.bool)
    keep[used // page_size, used % page_size] = True
    if fp8:
        lat = torch.randn(num_blocks, page_size + pad, 1, 576, generator=g)
        full = fp8_layout.quantize_latent(lat[..., :512], lat[..., 512:])
        full[~keep] = 0xFF
    else:
        full = torch.randn(num_blocks, page_size + pad, 1, d, generator=g).to(dtype)
        full[~keep] = float("nan")
    return full[:, :page_size], used


def make_indices(used, num_tokens, shape, g, invalid_frac=0.2):
    """Ids drawn from ``used`` with replacement (so duplicates occur), a fraction replaced by invalid ids."""
    ids = used[torch.randint(0, len(used), shape, generator=g)]
    bad = torch.tensor(BAD_IDS + (num_tokens, num_tokens + 1))
    where = torch.rand(shape, generator=g) < invalid_frac
    ids[where] = bad[torch.randint(0, len(bad), shape, generator=g)][where]
    return ids.to(torch.int32)


def dequantized(k_cache, fp8):
    return fp8_layout.dequantize_latent(k_cache, torch.float64) if fp8 else k_cache.double()


def check_decode(b, s_q, h_q, topk, dv=64, dr=16, page_size=16, num_blocks=6, dtype=torch.float16, fp8=False,
                 seed=0, invalid_frac=0.2, pad=0, topk_length=None, sink=None, softmax_scale=None, device=DEVICE,
                 via_api=False):
    g = torch.Generator().manual_seed(seed)
    if fp8:
        dv, dr = 512, 64
    d = dv + dr
    k_cache, used = make_cache(num_blocks, page_size, d, dtype, fp8, g, pad=pad)
    indices = make_indices(used, num_blocks * page_size, (b, s_q, topk), g, invalid_frac)
    q = torch.randn(b, s_q, h_q, d, generator=g).to(dtype)
    lens = None if topk_length is None else torch.tensor(topk_length, dtype=torch.int32)
    sink_t = None if sink is None else torch.tensor(sink, dtype=torch.float32)
    args = [t if t is None else t.to(device) for t in (q, k_cache, indices, lens, sink_t)]
    if via_api:
        md = tm.get_mla_metadata()[0]
        out, lse = tm.flash_mla_with_kvcache(args[0], args[1], None, None, dv, md, None, softmax_scale=softmax_scale,
                                             is_fp8_kvcache=fp8, indices=args[2], attn_sink=args[4],
                                             topk_length=args[3])
    else:
        out, lse = sparse_decode(args[0], args[1], args[2], dv, softmax_scale=softmax_scale, is_fp8_kvcache=fp8,
                                 attn_sink=args[4], topk_length=args[3])
    # the oracle runs where the kernel ran (fast on a GPU); args[i] are the device copies
    ref_out, ref_lse = sparse_decode_ref(args[0].double(), dequantized(args[1], fp8), args[2], dv, softmax_scale,
                                         args[4], args[3])
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert out.shape == (b, s_q, h_q, dv) and lse.shape == (b, h_q, s_q)
    # FP8: the kernel computes with exactly the dequantized values (e4m3 * power-of-two scale), so the
    # only extra rounding is that of P in q's dtype, as for a 16-bit cache: the same tolerance holds
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, torch.float32 if dtype == torch.float32 else torch.float16, "lse")
    return out, lse


def check_prefill(s_q, h_q, topk, s_kv=70, dv=64, dr=16, dtype=torch.float16, seed=0, invalid_frac=0.2,
                  topk_length=None, sink=None, sm_scale=0.1, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    d = dv + dr
    kv, used = make_cache(s_kv, 1, d, dtype, False, g)
    kv = kv[:, :, 0]  # [s_kv, 1, d]
    indices = make_indices(used, s_kv, (s_q, 1, topk), g, invalid_frac)
    q = torch.randn(s_q, h_q, d, generator=g).to(dtype)
    lens = None if topk_length is None else torch.tensor(topk_length, dtype=torch.int32)
    sink_t = None if sink is None else torch.tensor(sink, dtype=torch.float32)
    args = [t if t is None else t.to(device) for t in (q, kv, indices, lens, sink_t)]
    out, max_logits, lse = flash_mla_sparse_fwd(args[0], args[1], args[2], sm_scale, d_v=dv, attn_sink=args[4],
                                                topk_length=args[3])
    ref_out, ref_max, ref_lse = sparse_prefill_ref(args[0].double(), args[1].double(), args[2], sm_scale, dv,
                                                   args[4], args[3])
    assert out.shape == (s_q, h_q, dv) and max_logits.shape == lse.shape == (s_q, h_q)
    assert max_logits.dtype == lse.dtype == torch.float32
    stat_dtype = torch.float32 if dtype == torch.float32 else torch.float16
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, stat_dtype, "lse")
    assert_close(max_logits, ref_max, stat_dtype, "max_logits")
    return out, max_logits, lse


def splits_of(tokens, h_q, topk, section="sparse_decode", fp8=False):
    config = configs.kernel_config(section, h_q, torch.float16, torch.device(DEVICE))
    if fp8:
        config = sparse_kernels.fp8_config(config)
    return sparse_kernels.num_splits(tokens, h_q, topk, config, configs.num_sms(torch.device(DEVICE)))


# -- decode, 16/32-bit cache -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("s_q", [1, 2, 3, 4])
def test_decode_s_q(s_q, dtype):
    check_decode(b=3, s_q=s_q, h_q=5, topk=37, dtype=dtype, seed=s_q)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("h_q", [1, 2, 3, 8, 12, 16, 17, 32, 64, 128])
def test_decode_head_counts(h_q, split):
    with configs.overridden(**(SPLIT_HEAVY if split else {})):
        assert (splits_of(2, h_q, 70) > 1) == split
        check_decode(b=2, s_q=1, h_q=h_q, topk=70, seed=h_q)


@pytest.mark.parametrize("topk", [1, 2, 15, 16, 17, 31, 32, 33, 64, 65, 200])
def test_decode_topk(topk):
    """Any topk, not only multiples of the chunk; topk 1 and 2 leave most of a chunk masked."""
    check_decode(b=2, s_q=2, h_q=3, topk=topk, seed=topk, invalid_frac=0.1)


@pytest.mark.parametrize("page_size,pad", [(1, 0), (16, 0), (64, 0), (16, 3), (1, 2)])
def test_decode_pages(page_size, pad):
    """Page boundaries, and padded pages (a page stride larger than page_size tokens: the pad is NaN)."""
    check_decode(b=2, s_q=1, h_q=4, topk=50, page_size=page_size, num_blocks=max(2, 96 // page_size), pad=pad)


@pytest.mark.parametrize("split", [False, True])
def test_decode_topk_length(split):
    """Per-sequence lengths: 0 (no key), 1, inside a chunk, == topk, > topk and negative (clamped)."""
    with configs.overridden(**(SPLIT_HEAVY if split else {})):
        check_decode(b=6, s_q=2, h_q=4, topk=40, topk_length=[0, 1, 17, 40, 1000, -5], seed=7)


@pytest.mark.parametrize("split", [False, True])
def test_decode_all_invalid(split):
    """Rows whose entries are all invalid: out 0, lse +inf (with a sink as well)."""
    with configs.overridden(**(SPLIT_HEAVY if split else {})):
        out, lse = check_decode(b=2, s_q=2, h_q=3, topk=40, invalid_frac=1.0, sink=[0.5, float("inf"), -1.0])
    assert torch.all(out == 0) and torch.all(lse == float("inf"))


def test_decode_duplicates_count_twice():
    """Every entry of a row names the same token: out = its V, lse = its score + log(topk)."""
    g = torch.Generator().manual_seed(3)
    k_cache = torch.randn(4, 16, 1, 80, generator=g).half()
    q = torch.randn(1, 1, 3, 80, generator=g).half()
    topk = 33
    indices = torch.full((1, 1, topk), 21, dtype=torch.int32)
    out, lse = sparse_decode(q.to(DEVICE), k_cache.to(DEVICE), indices.to(DEVICE), 64)
    k = k_cache.view(-1, 80)[21].double()
    score = (q[0, 0].double() @ k) * 80 ** -0.5
    assert_close(out[0, 0], k[:64].expand(3, 64), torch.float16)
    assert_close(lse[0, :, 0], score + math.log(topk), torch.float16, "lse")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("split", [False, True])
def test_decode_attn_sink(split, dtype):
    """Finite sinks scale out by exp(lse) / (exp(lse) + exp(sink)); +inf zeroes a head, -inf leaves it."""
    sink = [0.3, float("inf"), float("-inf"), -2.0, 8.0]
    with configs.overridden(**(SPLIT_HEAVY if split else {})):
        out, _ = check_decode(b=2, s_q=2, h_q=5, topk=45, dtype=dtype, sink=sink, topk_length=[45, 0])
    assert torch.all(out[:, :, 1] == 0)


def test_decode_strided_inputs():
    """indices and q as non-contiguous views (indices every other entry, q's heads a slice of more)."""
    g = torch.Generator().manual_seed(5)
    k_cache, used = make_cache(6, 16, 80, torch.float16, False, g)
    big_idx = make_indices(used, 96, (2, 3, 2 * 41), g)
    indices = big_idx[:, :, ::2]
    q = torch.randn(2, 3, 7, 80, generator=g).half()[:, :, 1:6]
    out, lse = sparse_decode(q.to(DEVICE), k_cache.to(DEVICE), indices.to(DEVICE), 64, softmax_scale=0.2)
    ref_out, ref_lse = sparse_decode_ref(q, k_cache, indices, 64, 0.2)
    assert_close(out, ref_out, torch.float16)
    assert_close(lse, ref_lse, torch.float16, "lse")
    # attn_sink as a strided view (every other entry of a longer vector) counts as the same sink
    sinks = torch.tensor([0.5, 9.0, -1.0, 9.0, 2.0, 9.0, float("inf"), 9.0, -3.0, 9.0])
    got, _ = sparse_decode(q.to(DEVICE), k_cache.to(DEVICE), indices.to(DEVICE), 64, softmax_scale=0.2,
                           attn_sink=sinks.to(DEVICE)[::2])
    want, _ = sparse_decode(q.to(DEVICE), k_cache.to(DEVICE), indices.to(DEVICE), 64, softmax_scale=0.2,
                            attn_sink=sinks[::2].contiguous().to(DEVICE))
    assert torch.equal(got, want) and not torch.equal(got, out)


@pytest.mark.parametrize("dv,dr,split", [(512, 64, False), (512, 64, True), (512, 0, False), (96, 32, True),
                                         (48, 8, False)])
def test_decode_latent_sizes(dv, dr, split):
    """DeepSeek's 512 + 64 (split: the combine over several column and head blocks), no rope part, and
    sizes that are not powers of two."""
    with configs.overridden(**(SPLIT_HEAVY if split else {})):
        check_decode(b=2, s_q=1, h_q=40 if split else 3, topk=50, dv=dv, dr=dr)


def test_decode_via_flash_mla_with_kvcache():
    """FlashMLA's sparse calling style: block_table and cache_seqlens None, metadata from get_mla_metadata()."""
    check_decode(b=2, s_q=2, h_q=4, topk=30, via_api=True, sink=[0.1, 0.2, 0.3, 0.4], topk_length=[30, 11])


@pytest.mark.parametrize("fp8", [False, True])
def test_decode_batch_invariant(fp8, monkeypatch):
    """batch_invariant=True: a token's splits depend on topk alone, so each sequence's output is bitwise the same
    alone, in a batch and in a batch of another order, while the default plan splits by batch size."""
    g = torch.Generator().manual_seed(7)
    dv, dr = (512, 64) if fp8 else (64, 16)
    k_cache, used = make_cache(6, 16, dv + dr, torch.float16, fp8, g)
    indices = make_indices(used, 96, (5, 2, 70), g)
    q = torch.randn(5, 2, 3, dv + dr, generator=g).half()
    q, k_cache, indices = q.to(DEVICE), k_cache.to(DEVICE), indices.to(DEVICE)
    lens = torch.tensor([70, 33, 0, 64, 1], dtype=torch.int32, device=DEVICE)

    def run(rows, **kwargs):
        return tm.flash_mla_with_kvcache(q[rows], k_cache, None, None, dv, None, None, is_fp8_kvcache=fp8,
                                         indices=indices[rows], topk_length=lens[rows], **kwargs)

    # invariant: each top-k list in three splits (the 33-entry row's third empty, the 0-entry row's all empty);
    # the default plan's split count would follow the batch (on the interpreter's 4 "SMs": 1 split at 10 tokens,
    # 4 at 2)
    few_programs = dict(PROGRAMS_PER_SM=2, FP8_PROGRAMS_PER_SM=2, MIN_CHUNKS_PER_SPLIT=1, FP8_MIN_CHUNKS_PER_SPLIT=1)
    with configs.overridden(INVARIANT_SPLIT_KEYS=32, BLOCK_N=16, FP8_BLOCK_N=16, **few_programs):
        config = {"INVARIANT_SPLIT_KEYS": 32, "BLOCK_N": 16, "BLOCK_H": 16, **few_programs}
        assert sparse_kernels.invariant_splits(70, config) == 3
        if not HAS_GPU:
            assert sparse_kernels.num_splits(10, 3, 70, config, 4) != sparse_kernels.num_splits(2, 3, 70, config, 4)
        out, lse = run([0, 1, 2, 3, 4], batch_invariant=True)
        ref_out, ref_lse = sparse_decode_ref(q.double(), dequantized(k_cache, fp8), indices, dv, topk_length=lens)
        assert_close(out, ref_out, torch.float16)
        assert_close(lse, ref_lse, torch.float16, "lse")
        for rows in ([1], [3, 1], [4, 3, 2, 1, 0]):
            o, l_ = run(rows, batch_invariant=True)
            for j, i in enumerate(rows):
                assert torch.equal(o[j], out[i]) and torch.equal(l_[j], lse[i]), (rows, i)
        monkeypatch.setenv("TRITON_MLA_BATCH_INVARIANT", "1")  # the environment's default
        o, l_ = run([1])
        assert torch.equal(o[0], out[1]) and torch.equal(l_[0], lse[1])


def test_decode_empty_shapes():
    g = torch.Generator().manual_seed(0)
    k_cache, _ = make_cache(2, 16, 80, torch.float16, False, g)
    k_cache = k_cache.to(DEVICE)
    out, lse = sparse_decode(torch.randn(0, 1, 4, 80).half().to(DEVICE), k_cache,
                             torch.zeros(0, 1, 8, dtype=torch.int32, device=DEVICE), 64)
    assert out.shape == (0, 1, 4, 64) and lse.shape == (0, 4, 1)
    out, lse = sparse_decode(torch.randn(2, 1, 4, 80).half().to(DEVICE), k_cache,
                             torch.zeros(2, 1, 0, dtype=torch.int32, device=DEVICE), 64)
    assert torch.all(out == 0) and torch.all(lse == float("inf"))


def test_out_of_range_ids_without_checks(monkeypatch):
    """With value checks off too, ids far outside the cache are skipped, never read (NaN would show)."""
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    check_decode(b=2, s_q=2, h_q=4, topk=40, invalid_frac=0.7, num_blocks=2)


# -- decode, FP8 cache -----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("h_q", [1, 8, 16, 20])
def test_decode_fp8(h_q, split):
    with configs.overridden(**(SPLIT_HEAVY if split else {})):
        assert (splits_of(4, h_q, 45, fp8=True) > 1) == split
        check_decode(b=2, s_q=2, h_q=h_q, topk=45, fp8=True, num_blocks=4, seed=h_q)


# the FP8 kernel's loop variants (config keys, default off): a second load of each tile for QK^T, and the
# indices of chunk c + 1 / c + 2 loaded one / two iterations ahead
FP8_VARIANTS = [dict(FP8_DUAL_LOAD=True), dict(FP8_PREFETCH_IDS=1), dict(FP8_PREFETCH_IDS=2),
                dict(FP8_DUAL_LOAD=True, FP8_PREFETCH_IDS=1), dict(FP8_DUAL_LOAD=True, FP8_PREFETCH_IDS=2)]


@pytest.mark.parametrize("variant,split", [(v, i % 2 == 1) for i, v in enumerate(FP8_VARIANTS)],
                         ids=lambda v: "-".join(f"{k[4:]}={v[k]}" for k in v) if isinstance(v, dict) else f"split={v}")
def test_decode_fp8_variants(variant, split):
    """Chunks of 16 so every split walks several (and prefetches past its end); lengths 0, 1, odd, full."""
    with configs.overridden(FP8_BLOCK_N=16, **variant, **(SPLIT_HEAVY if split else {})):
        assert (splits_of(4, 8, 45, fp8=True) > 1) == split
        check_decode(b=4, s_q=1, h_q=8, topk=45, fp8=True, num_blocks=4, topk_length=[45, 0, 1, 33],
                     seed=len(variant))
        check_decode(b=1, s_q=2, h_q=3, topk=17, fp8=True, num_blocks=4, seed=7, invalid_frac=0.5)


def test_decode_fp8_extras():
    """FP8 with topk_length, sinks, padded pages, a float8_e4m3fn view of the cache, and the API path."""
    check_decode(b=3, s_q=1, h_q=4, topk=40, fp8=True, num_blocks=4, pad=1, topk_length=[40, 3, 0],
                 sink=[0.0, float("inf"), -1.0, 2.0], via_api=True)
    g = torch.Generator().manual_seed(1)
    k_cache, used = make_cache(3, 16, 576, None, True, g)
    indices = make_indices(used, 48, (1, 2, 20), g)
    q = torch.randn(1, 2, 2, 576, generator=g).half()
    out, lse = sparse_decode(q.to(DEVICE), k_cache.view(torch.float8_e4m3fn).to(DEVICE), indices.to(DEVICE), 512,
                             is_fp8_kvcache=True)
    ref_out, ref_lse = sparse_decode_ref(q, dequantized(k_cache, True), indices, 512)
    assert_close(out, ref_out, torch.float16)


def check_extra_cache(fp8, split, dtype=torch.float16, h_q=5, dv=64, dr=16, pages=(16, 8), seed=11):
    """Newer FlashMLA's extra cache: each query token also attends to its entries of a second cache (another page
    size), one softmax over both lists; lengths cut each list, a sequence may have entries in one list only or in
    neither (out 0, lse +inf), and the sink is applied once."""
    g = torch.Generator().manual_seed(seed)
    if fp8:
        dv, dr = 512, 64
    d = dv + dr
    k_cache, used = make_cache(80 // pages[0], pages[0], d, dtype, fp8, g)
    extra_cache, extra_used = make_cache(24 // pages[1], pages[1], d, dtype, fp8, g)
    b, s_q = 4, 2
    indices = make_indices(used, 80, (b, s_q, 30), g)
    extra = make_indices(extra_used, 24, (b, s_q, 12), g)
    q = torch.randn(b, s_q, h_q, d, generator=g).to(dtype)
    lens = torch.tensor([30, 7, 0, 0], dtype=torch.int32)
    extra_lens = torch.tensor([12, 0, 5, 0], dtype=torch.int32)
    sink = torch.randn(h_q, generator=g)
    sink[:2] = torch.tensor([float("inf"), float("-inf")])[: min(2, h_q)]
    args = [t.to(DEVICE) for t in (q, k_cache, indices, lens, sink, extra_cache, extra, extra_lens)]
    with configs.overridden(**(SPLIT_HEAVY if split else {})):
        out, lse = tm.flash_mla_with_kvcache(args[0], args[1], None, None, dv, tm.get_mla_metadata()[0], None,
                                             is_fp8_kvcache=fp8, indices=args[2], attn_sink=args[4],
                                             topk_length=args[3], extra_k_cache=args[5],
                                             extra_indices_in_kvcache=args[6], extra_topk_length=args[7])
    ref_out, ref_lse = sparse_decode_ref(args[0].double(), dequantized(args[1], fp8), args[2], dv, None, args[4],
                                         args[3], extra_k_cache=dequantized(args[5], fp8), extra_indices=args[6],
                                         extra_topk_length=args[7])
    lse_dtype = torch.float32 if dtype == torch.float32 else torch.float16
    assert out.dtype == dtype and out.shape == (b, s_q, h_q, dv) and lse.shape == (b, h_q, s_q)
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, lse_dtype, "lse")
    assert (out[3] == 0).all() and (lse[3] == float("inf")).all()
    # without lengths or sink, through sparse_decode
    out, lse = sparse_decode(args[0], args[1], args[2], dv, is_fp8_kvcache=fp8, extra_k_cache=args[5],
                             extra_indices_in_kvcache=args[6])
    ref_out, ref_lse = sparse_decode_ref(args[0].double(), dequantized(args[1], fp8), args[2], dv,
                                         extra_k_cache=dequantized(args[5], fp8), extra_indices=args[6])
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, lse_dtype, "lse")


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_decode_extra_cache(fp8, split):
    check_extra_cache(fp8, split)


def test_decode_extra_cache_bad_input():
    g = torch.Generator().manual_seed(12)
    k_cache, used = make_cache(2, 16, 80, torch.float16, False, g)
    q = torch.randn(2, 1, 2, 80, generator=g).half().to(DEVICE)
    k_cache = k_cache.to(DEVICE)
    indices = make_indices(used, 32, (2, 1, 8), g).to(DEVICE)
    with pytest.raises(ValueError, match="extra_k_cache, extra_indices_in_kvcache"):
        sparse_decode(q, k_cache, indices, 64, extra_k_cache=k_cache)
    with pytest.raises(ValueError, match="extra_topk_length"):
        sparse_decode(q, k_cache, indices, 64, extra_topk_length=torch.zeros(2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="extra_indices_in_kvcache"):
        sparse_decode(q, k_cache, indices, 64, extra_k_cache=k_cache, extra_indices_in_kvcache=indices[:1])
    with pytest.raises(TypeError, match="extra_k_cache"):
        sparse_decode(q, k_cache, indices, 64, extra_k_cache=k_cache.float(), extra_indices_in_kvcache=indices)
    with pytest.raises(ValueError, match="extra_topk_length"):
        sparse_decode(q, k_cache, indices, 64, extra_k_cache=k_cache, extra_indices_in_kvcache=indices,
                      extra_topk_length=torch.zeros(3, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="extra_k_cache"):  # dense decode has no extra cache
        table = torch.zeros(2, 1, dtype=torch.int32, device=DEVICE)
        tm.flash_mla_with_kvcache(q, k_cache, table, torch.ones(2, dtype=torch.int32, device=DEVICE), 64,
                                  extra_k_cache=k_cache)


# -- prefill ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("h_q", [1, 3, 16, 64, 128])
def test_prefill(h_q, dtype):
    check_prefill(s_q=5, h_q=h_q, topk=33, dtype=dtype, seed=h_q)


@pytest.mark.parametrize("split", [False, True])
def test_prefill_topk_length_sink(split):
    with configs.overridden(**(SPLIT_HEAVY if split else {})):
        # topk 150: several chunks under every config (a GPU's 64-key chunks too), so the split can happen
        assert (splits_of(6, 4, 150, "sparse_prefill") > 1) == split
        out, max_logits, lse = check_prefill(s_q=6, h_q=4, topk=150, topk_length=[150, 0, 1, 33, 500, -1],
                                             sink=[0.5, float("inf"), float("-inf"), -3.0])
    assert torch.all(max_logits[1] == float("-inf")) and torch.all(lse[1] == float("inf"))


def test_prefill_all_invalid_and_large_ids():
    out, max_logits, lse = check_prefill(s_q=3, h_q=2, topk=20, invalid_frac=1.0)
    assert torch.all(out == 0) and torch.all(max_logits == float("-inf")) and torch.all(lse == float("inf"))


def test_prefill_topk_not_multiple_and_1():
    check_prefill(s_q=4, h_q=3, topk=1)
    check_prefill(s_q=4, h_q=3, topk=77, s_kv=200)


def test_prefill_empty():
    q = torch.randn(3, 2, 80).half().to(DEVICE)
    kv = torch.randn(0, 1, 80).half().to(DEVICE)
    idx = torch.full((3, 1, 5), -1, dtype=torch.int32, device=DEVICE)
    out, max_logits, lse = flash_mla_sparse_fwd(q, kv, idx, 0.1, d_v=64)
    assert torch.all(out == 0) and torch.all(max_logits == float("-inf")) and torch.all(lse == float("inf"))


# -- bad input ------------------------------------------------------------------------------------------
def _decode_args(fp8=False):
    g = torch.Generator().manual_seed(0)
    k_cache, used = make_cache(3, 16, 576 if fp8 else 80, torch.float16, fp8, g)
    indices = make_indices(used, 48, (2, 1, 8), g)
    q = torch.randn(2, 1, 4, 576 if fp8 else 80, generator=g).half()
    return dict(q=q.to(DEVICE), k_cache=k_cache.to(DEVICE), indices=indices.to(DEVICE),
                head_dim_v=512 if fp8 else 64, is_fp8_kvcache=fp8)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(q=a["q"].to(torch.int32)), TypeError, "q"),
        (lambda a: a.update(q=a["q"][0]), ValueError, "q"),
        (lambda a: a.update(q=a["q"][:, :0]), ValueError, "q"),
        (lambda a: a.update(q=a["q"].transpose(-1, -2).contiguous().transpose(-1, -2)), ValueError, "q"),
        (lambda a: a.update(k_cache=a["k_cache"].float()), TypeError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"].expand(-1, -1, 2, -1)), ValueError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"][..., :40]), ValueError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"].view(torch.uint8)[..., :80]), TypeError, "k_cache"),
        (lambda a: a.update(indices=a["indices"].long()), TypeError, "indices"),
        (lambda a: a.update(indices=a["indices"][0]), ValueError, "indices"),
        (lambda a: a.update(indices=a["indices"][:1]), ValueError, "indices"),
        (lambda a: a.update(head_dim_v=1000), ValueError, "head_dim_v"),
        (lambda a: a.update(head_dim_v=64.0), TypeError, "head_dim_v"),
        (lambda a: a.update(softmax_scale="x"), TypeError, "softmax_scale"),
        (lambda a: a.update(attn_sink=torch.zeros(4, device=a["q"].device, dtype=torch.float16)), TypeError,
         "attn_sink"),
        (lambda a: a.update(attn_sink=torch.zeros(3, device=a["q"].device)), ValueError, "attn_sink"),
        (lambda a: a.update(topk_length=torch.zeros(2, device=a["q"].device, dtype=torch.int64)), TypeError,
         "topk_length"),
        (lambda a: a.update(topk_length=torch.zeros(3, device=a["q"].device, dtype=torch.int32)), ValueError,
         "topk_length"),
        (lambda a: a.update(causal=True), ValueError, "causal"),
    ],
)
def test_decode_bad_input(mutate, exc, match):
    args = _decode_args()
    mutate(args)
    with pytest.raises(exc, match=match):
        sparse_decode(**args)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(q=a["q"].float()), TypeError, "q"),
        (lambda a: a.update(q=a["q"][..., :80]), ValueError, "q"),
        (lambda a: a.update(head_dim_v=256), ValueError, "head_dim_v"),
        # equals 512 but is no int: once reached torch.empty, whose TypeError did not name it
        (lambda a: a.update(head_dim_v=512.0), TypeError, "head_dim_v"),
        (lambda a: a.update(k_cache=a["k_cache"][..., :640]), ValueError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"][:, :, :, 1:653]), ValueError, "k_cache"),
        (lambda a: a.update(is_fp8_kvcache=False), TypeError, "k_cache"),
    ],
)
def test_decode_fp8_bad_input(mutate, exc, match):
    args = _decode_args(fp8=True)
    mutate(args)
    with pytest.raises(exc, match=match):
        sparse_decode(**args)


def _prefill_args():
    g = torch.Generator().manual_seed(0)
    return dict(q=torch.randn(3, 4, 80, generator=g).half().to(DEVICE),
                kv=torch.randn(20, 1, 80, generator=g).half().to(DEVICE),
                indices=torch.randint(0, 20, (3, 1, 8), generator=g, dtype=torch.int32).to(DEVICE),
                sm_scale=0.1, d_v=64)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(q=a["q"][None]), ValueError, "q"),
        (lambda a: a.update(q=a["q"].to(torch.int8)), TypeError, "q"),
        (lambda a: a.update(kv=a["kv"].float()), TypeError, "kv"),
        (lambda a: a.update(kv=a["kv"].expand(-1, 2, -1)), ValueError, "kv"),
        (lambda a: a.update(kv=a["kv"][..., :64]), ValueError, "kv"),
        (lambda a: a.update(indices=a["indices"].long()), TypeError, "indices"),
        (lambda a: a.update(indices=a["indices"][:2]), ValueError, "indices"),
        (lambda a: a.update(indices=a["indices"].expand(-1, 2, -1)), ValueError, "indices"),
        (lambda a: a.update(sm_scale=None), TypeError, "sm_scale"),
        (lambda a: a.update(sm_scale=float("nan")), ValueError, "sm_scale"),
        (lambda a: a.update(d_v=0), ValueError, "d_v"),
        (lambda a: a.update(d_v=600), ValueError, "d_v"),
        (lambda a: a.update(attn_sink=torch.zeros(5, device=a["q"].device)), ValueError, "attn_sink"),
        (lambda a: a.update(topk_length=torch.zeros(2, device=a["q"].device, dtype=torch.int32)), ValueError,
         "topk_length"),
    ],
)
def test_prefill_bad_input(mutate, exc, match):
    args = _prefill_args()
    mutate(args)
    with pytest.raises(exc, match=match):
        flash_mla_sparse_fwd(**args)


# -- GPU ------------------------------------------------------------------------------------------------
def _gpu_lengths(b, topk, seed):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, topk + 1, (b,), generator=g)
    lens[0] = topk
    return lens.tolist()


@gpu
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("h_q", [1, 8, 12, 16, 32, 64, 128])
@pytest.mark.parametrize("s_q", [1, 2, 4])
def test_gpu_decode_deepseek(h_q, s_q, fp8):
    """bf16 queries, DeepSeek's latent, pages of 64, topk 2048, varied topk_length, sinks."""
    b = 4
    sink = torch.randn(h_q, generator=torch.Generator().manual_seed(h_q)).tolist()
    check_decode(b=b, s_q=s_q, h_q=h_q, topk=2048, dv=512, dr=64, page_size=64, num_blocks=80,
                 dtype=torch.bfloat16, fp8=fp8, seed=h_q * 10 + s_q, invalid_frac=0.05,
                 topk_length=_gpu_lengths(b, 2048, h_q + s_q), sink=sink if s_q == 2 else None)


@gpu
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("b,s_q,h_q,topk", [(1, 1, 128, 2048), (2, 2, 128, 577), (1, 1, 16, 4096),
                                            (128, 1, 16, 2048), (64, 2, 64, 1000)])
def test_gpu_decode_split_and_batch(b, s_q, h_q, topk, fp8):
    """Small batches split the top-k list (combine), large ones do not; odd topk."""
    check_decode(b=b, s_q=s_q, h_q=h_q, topk=topk, dv=512, dr=64, page_size=64, num_blocks=160,
                 dtype=torch.bfloat16, fp8=fp8, seed=b + topk)


@gpu
@pytest.mark.parametrize("variant", FP8_VARIANTS, ids=lambda v: "-".join(f"{k[4:]}={v[k]}" for k in v))
@pytest.mark.parametrize("b,s_q,h_q,topk", [(128, 1, 16, 2048), (4, 1, 8, 2048), (2, 2, 128, 577), (3, 1, 12, 1000)])
def test_gpu_decode_fp8_variants(variant, b, s_q, h_q, topk):
    """Each FP8 loop variant on DeepSeek's shapes (split and not, odd topk, varied topk_length)."""
    if variant.get("FP8_DUAL_LOAD") and h_q > 32:
        # two copies of each 64-token tile need 288 KB of shared memory with the 64-row entry (Triton 3.6),
        # over sm90's 227 KB: no config ships this pair, and the launch fails with OutOfResources
        pytest.skip("FP8_DUAL_LOAD is not a valid option for the 64-row entry")
    with configs.overridden(**variant):
        check_decode(b=b, s_q=s_q, h_q=h_q, topk=topk, dv=512, dr=64, page_size=64, num_blocks=160,
                     dtype=torch.bfloat16, fp8=True, seed=b + topk, invalid_frac=0.05,
                     topk_length=_gpu_lengths(b, topk, h_q))


def test_wgmma_config_falls_back_off_sm90():
    """A WGMMA entry (the Gluon kernel, sm90 only) still runs where that kernel cannot: the interpreter, float32,
    small latents (the tl.dot kernels serve the call)."""
    with configs.overridden(WGMMA=True):
        check_decode(b=2, s_q=1, h_q=4, topk=40, dtype=CPU_DTYPES[0])
        check_prefill(s_q=3, h_q=2, topk=20, dtype=torch.float32)


SM90 = HAS_GPU and torch.cuda.get_device_capability()[0] == 9


@pytest.fixture
def sm90_calls(monkeypatch):
    """Counts launches of the Gluon kernel (kernels/sparse_sm90.py)."""
    calls = []
    launch = sparse_kernels._sm90.launch
    monkeypatch.setattr(sparse_kernels._sm90, "launch", lambda *a: calls.append(1) or launch(*a))
    return calls


FP8_CASES = [(577, 64), (2048, 1), (64, 64), (130, 16)]  # (topk, page size) of the Gluon FP8 kernels' GPU tests


def _check_fp8_cases(h_q, s_q, cases, b=3):
    """``check_decode`` over the FP8 cache at DeepSeek's dims, three sequences, for each (topk, page size) of
    ``cases``: invalid and duplicate ids, random topk_length (the fourth case's last sequence 0), sinks (not in the
    third case)."""
    sink = torch.randn(h_q, generator=torch.Generator().manual_seed(h_q)).tolist()
    for i, (topk, page_size) in enumerate(cases):
        lengths = _gpu_lengths(b, topk, h_q + i)
        lengths[-1] = 0 if i == 3 else lengths[-1]
        check_decode(b=b, s_q=s_q, h_q=h_q, topk=topk, dv=512, dr=64, page_size=page_size,
                     num_blocks=max(8, 4096 // page_size), dtype=torch.bfloat16, fp8=True, seed=h_q + s_q + i,
                     invalid_frac=0.1, topk_length=lengths, sink=sink if i != 2 else None)


def _count_launches(monkeypatch, name):
    """A list that grows by one at each launch of ``kernels/sparse_sm90.py``'s kernel ``name`` (still launched)."""
    calls = []
    kernel = getattr(sparse_kernels._sm90, name)

    class Counted:
        def __getitem__(self, grid):
            return lambda *a, **k: calls.append(1) or kernel[grid](*a, **k)

    monkeypatch.setattr(sparse_kernels._sm90, name, Counted())
    return calls


@gpu
@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("h_q", [8, 16, 64, 128])
def test_gpu_decode_extra_cache(h_q, fp8):
    """The extra cache over DeepSeek's latent in bfloat16, pages of 16 and 8, each path's kernel (keys-on-M at <= 16
    heads over FP8)."""
    check_extra_cache(fp8, h_q == 16, torch.bfloat16, h_q, 512, 64, pages=(16, 8), seed=h_q)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("cache", ["bf16", "bf16-ws", "bf16-ws-copy-first", "fp8-raw1", "fp8-raw2"])
@pytest.mark.parametrize("split_heavy", [False, True])
@pytest.mark.parametrize("h_q,s_q", [(1, 1), (8, 2), (12, 1), (16, 4), (32, 1), (64, 2), (100, 1), (128, 2)])
def test_gpu_sm90_sparse_decode(h_q, s_q, split_heavy, cache, sm90_calls):
    """kernels/sparse_sm90.py against the reference: every head-block shape (partial 64-row blocks), odd topk,
    topk_length, sinks, invalid and duplicate ids, pages of 64 and of 1, one split or many (combine); the 16-bit
    cache through the lockstep or the warp-specialized kernel (where this Triton builds it), the FP8 cache with
    one or two raw tiles in flight."""
    b = 3
    fp8 = cache.startswith("fp8")
    if "ws" in cache and not sparse_kernels._sm90.ws_supported():
        pytest.skip("this Triton does not build the warp-specialized kernel")
    sink = torch.randn(h_q, generator=torch.Generator().manual_seed(h_q)).tolist()
    variant = dict(FP8_RAW_STAGES=int(cache[-1])) if fp8 else dict(WS="ws" in cache, COPY_FIRST="first" in cache)
    with configs.overridden(WGMMA=True, **variant, **(SPLIT_HEAVY if split_heavy else {})):
        for i, (topk, page_size) in enumerate([(577, 64), (2048, 1), (64, 64)]):
            check_decode(b=b, s_q=s_q, h_q=h_q, topk=topk, dv=512, dr=64, page_size=page_size,
                         num_blocks=max(8, 4096 // page_size), dtype=torch.bfloat16 if i != 1 or fp8 else torch.float16,
                         fp8=fp8, seed=h_q + s_q + i, invalid_frac=0.1, topk_length=_gpu_lengths(b, topk, h_q + i),
                         sink=sink if i != 2 else None)
    assert len(sm90_calls) == 3


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("pieces", [dict(FP8_PV_PARTS_16=2, FP8_QK_WAVES_16=1, FP8_PV_PARTS_8=4, FP8_QK_WAVES_8=2,
                                         FP8_IDS_AHEAD=False),
                                    dict(FP8_PV_PARTS_16=4, FP8_QK_WAVES_16=2, FP8_PV_PARTS_8=2, FP8_QK_WAVES_8=1,
                                         FP8_IDS_AHEAD=True),
                                    dict(FP8_PV_PARTS_16=4, FP8_QK_WAVES_16=2, FP8_PV_PARTS_8=2, FP8_QK_WAVES_8=1,
                                         FP8_IDS_AHEAD=True, FP8_QK_E4M3=True),
                                    dict(FP8_PV_PARTS_16=2, FP8_QK_WAVES_16=1, FP8_PV_PARTS_8=4, FP8_QK_WAVES_8=2,
                                         FP8_IDS_AHEAD=True, FP8_QK_E4M3=True, FP8_PAIR_KEYS=True,
                                         FP8_LAZY_MAX=True),
                                    dict(FP8_PV_PARTS_16=4, FP8_QK_WAVES_16=2, FP8_PV_PARTS_8=2, FP8_QK_WAVES_8=1,
                                         FP8_IDS_AHEAD=True, FP8_QK_E4M3=True, FP8_COPY_BEFORE_Q=True),
                                    dict(FP8_IDS_AHEAD=True, FP8_QK_E4M3=True, FP8_COPY_BEFORE_Q=True,
                                         FP8_KEYS_ON_M_ALONE_STAGES=4)],
                         ids=["a", "b", "e4m3", "pairs_lazy", "copy_first", "alone_4"])
@pytest.mark.parametrize("split_heavy", [False, True])
@pytest.mark.parametrize("h_q,s_q", [(1, 1), (5, 2), (8, 1), (9, 4), (12, 1), (16, 2)])
def test_gpu_sm90_sparse_fp8_keys_on_m(h_q, s_q, split_heavy, pieces, monkeypatch):
    """The FP8 keys-on-M kernel (<= 16 heads, 8 or 16 rows a program) against the reference: odd topk,
    topk_length (0 included), sinks, invalid and duplicate ids, pages of 64 and of 1, one split or many, the
    register operands whole or in pieces, top-k entries read in the iteration or one ahead, the scores by e4m3
    MMAs (QK_E4M3), V^T's bytes paired by key and the lazy running max (PAIR_KEYS, LAZY_MAX), the first tile
    copied before Q (COPY_BEFORE_Q), one program an SM with four raw tiles (``KEYS_ON_M_ALONE_STAGES``: b = 3 fits
    one wave)."""
    calls = _count_launches(monkeypatch, "_sparse_sm90_fp8_t_kernel")
    with configs.overridden(WGMMA=True, FP8_KEYS_ON_M=True, **pieces, **(SPLIT_HEAVY if split_heavy else {})):
        _check_fp8_cases(h_q, s_q, FP8_CASES)
    assert len(calls) == len(FP8_CASES)


def test_sparse_keys_on_m_dispatch():
    """Which Gluon kernel plans a sparse call: keys on M for the FP8 cache at <= 16 heads when the entry asks."""
    sm90 = sparse_kernels._sm90
    if sm90 is None:
        pytest.skip("no triton.experimental.gluon")
    entry = dict(KEYS_ON_M=True, MIN_CHUNKS_PER_SPLIT=2)
    assert sm90.plan_config(entry, 16, fp8=True)["BLOCK_H"] == 16
    assert sm90.plan_config(entry, 5, fp8=True)["BLOCK_H"] == 8
    assert sm90.plan_config(entry, 5, fp8=True)["PROGRAMS_PER_SM"] == 2
    assert sm90.plan_config(entry, 17, fp8=True)["BLOCK_H"] == 64
    assert sm90.plan_config(entry, 8, fp8=False)["BLOCK_H"] == 64
    assert sm90.plan_config(dict(entry, KEYS_ON_M=False), 8, fp8=True)["BLOCK_H"] == 64


def test_sparse_keys_on_m_alone_only_within_one_wave():
    """``KEYS_ON_M_ALONE_STAGES``: one program an SM with more raw tiles only where the tokens fit one wave of
    programs alone; past it, and for batch-invariant calls (no token count), two programs an SM with the entry's
    stages. The splits then keep the programs within one wave."""
    sm90 = sparse_kernels._sm90
    if sm90 is None:
        pytest.skip("no triton.experimental.gluon")
    entry = dict(KEYS_ON_M=True, KEYS_ON_M_ALONE_STAGES=4, MIN_CHUNKS_PER_SPLIT=2)
    for tokens, alone in [(1, True), (64, True), (132, True), (133, False), (256, False), (None, False)]:
        cfg = sm90.plan_config(entry, 16, fp8=True, tokens=tokens, num_sms=132)
        assert (cfg["PROGRAMS_PER_SM"], cfg.get("RAW_STAGES")) == ((1, 4) if alone else (2, None)), tokens
        if tokens:
            splits = sparse_kernels.num_splits(tokens, 16, 2048, cfg, 132)
            assert tokens * splits <= cfg["PROGRAMS_PER_SM"] * 132
    # without the key, never alone
    assert sm90.plan_config(dict(entry, KEYS_ON_M_ALONE_STAGES=None), 16, True, 8, 132)["PROGRAMS_PER_SM"] == 2
    assert sm90.plan_config(entry, 16, fp8=False, tokens=8, num_sms=132)["PROGRAMS_PER_SM"] == 1  # (64-head kernel)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("split_heavy", [False, True])
@pytest.mark.parametrize("h_q,s_q", [(1, 1), (8, 2), (16, 4), (32, 1), (64, 2), (100, 1), (128, 2)])
def test_gpu_sm90_sparse_fp8_ws(h_q, s_q, split_heavy, monkeypatch):
    """The FP8 cache through the warp-specialized sparse kernel (``FP8_WS``; keys-on-M off, so every head count
    takes it, in 64-row blocks) against the reference: odd topk, topk_length (0 included), sinks, invalid and
    duplicate ids, pages of 64, 16 and 1, one split or many."""
    sm90 = sparse_kernels._sm90
    if not sm90.ws_supported():
        pytest.skip("this Triton does not build the warp-specialized kernel")
    calls = _count_launches(monkeypatch, "_sparse_ws_kernel")
    with configs.overridden(WGMMA=True, FP8_WS=True, FP8_KEYS_ON_M=False, **(SPLIT_HEAVY if split_heavy else {})):
        _check_fp8_cases(h_q, s_q, FP8_CASES)
    assert len(calls) == len(FP8_CASES)


def test_sparse_fp8_ws_only_where_asked():
    """A 16-bit entry's ``WS`` never sends the FP8 cache to the warp-specialized kernel; ``FP8_WS`` does (where this
    Triton builds it), and the FP8 cache at <= 16 heads keeps keys on M even then."""
    sm90 = sparse_kernels._sm90
    if sm90 is None:
        pytest.skip("no triton.experimental.gluon")
    builds = sm90.ws_supported()
    assert sm90.use_ws(sparse_kernels.fp8_config(dict(WS=True)), fp8=True) is False
    assert sm90.use_ws(dict(WS=True), fp8=False) is builds
    assert sm90.use_ws(sparse_kernels.fp8_config(dict(FP8_WS=True)), fp8=True) is builds
    assert sm90.use_ws(dict(FP8_WS=True), fp8=False) is False  # (a 16-bit call reads the entry as it is)
    launched = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *a, **k: launched.append(self.name)

    import unittest.mock as mock

    names = ["_sparse_ws_kernel", "_sparse_sm90_fp8_t_kernel", "_sparse_sm90_fp8_dual_kernel", "_sparse_sm90_kernel"]
    with mock.patch.multiple(sm90, **{n: Recorder(n) for n in names}):
        config = sparse_kernels.fp8_config(dict(FP8_WS=True, FP8_KEYS_ON_M=True))
        sm90.launch((), 1, (1,), {}, True, config, 16)
        sm90.launch((), 1, (1,), {}, True, config, 17)
    assert launched == ["_sparse_sm90_fp8_t_kernel", "_sparse_ws_kernel" if builds else "_sparse_sm90_kernel"]


def test_sparse_dual_only_within_one_wave():
    """``KEYS_ON_M_DUAL``: the dual program (one an SM) where the tokens fit one wave and this Triton builds it,
    ahead of ``KEYS_ON_M_ALONE_STAGES``; past one wave, for batch-invariant calls, or on a Triton that does not build
    it, the entry's other plans."""
    sm90 = sparse_kernels._sm90
    if sm90 is None:
        pytest.skip("no triton.experimental.gluon")
    builds = sm90.dual_builds()
    entry = dict(KEYS_ON_M=True, KEYS_ON_M_DUAL=True, KEYS_ON_M_ALONE_STAGES=4, MIN_CHUNKS_PER_SPLIT=2)
    for tokens, one_wave in [(1, True), (132, True), (133, False), (None, False)]:
        cfg = sm90.plan_config(entry, 8, fp8=True, tokens=tokens, num_sms=132)
        assert bool(cfg.get("SPARSE_DUAL")) == (one_wave and builds), tokens
        assert cfg["PROGRAMS_PER_SM"] == (1 if one_wave else 2), tokens
        assert cfg.get("RAW_STAGES") == (4 if one_wave and not builds else None), tokens
    assert not sm90.plan_config(dict(entry, KEYS_ON_M_DUAL=False), 16, True, 8, 132).get("SPARSE_DUAL")
    assert not sm90.plan_config(entry, 16, fp8=False, tokens=8, num_sms=132).get("SPARSE_DUAL")  # (64-head kernel)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("lazy_pairs", [False, True])
@pytest.mark.parametrize("split_heavy", [False, True])
@pytest.mark.parametrize("h_q,s_q", [(1, 1), (5, 2), (8, 1), (9, 4), (12, 1), (16, 2)])
def test_gpu_sm90_sparse_fp8_dual(h_q, s_q, split_heavy, lazy_pairs, monkeypatch):
    """The FP8 dual program (two warpgroups on alternate top-k tiles, merged in shared memory) against the
    reference: odd topk, top-k lists of one tile or less (warpgroup 1 idle), topk_length (0 included), sinks,
    invalid and duplicate ids, pages of 64, 16 and 1, one split or many, with or without the lazy max and paired
    keys."""
    sm90 = sparse_kernels._sm90
    if not sm90.dual_builds():
        pytest.skip("this Triton does not build the dual program")
    calls = _count_launches(monkeypatch, "_sparse_sm90_fp8_dual_kernel")
    entry = dict(WGMMA=True, FP8_KEYS_ON_M=True, FP8_KEYS_ON_M_DUAL=True, FP8_IDS_AHEAD=True, FP8_QK_E4M3=True,
                 FP8_COPY_BEFORE_Q=True, FP8_LAZY_MAX=lazy_pairs, FP8_PAIR_KEYS=lazy_pairs)
    cases = FP8_CASES + [(37, 16)]  # (a list of one partial tile: warpgroup 1 has none)
    with configs.overridden(**entry, **(SPLIT_HEAVY if split_heavy else {})):
        _check_fp8_cases(h_q, s_q, cases)
    assert len(calls) == len(cases)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("ws", [False, True])
@pytest.mark.parametrize("h_q", [1, 16, 64, 128])
@pytest.mark.parametrize("split_heavy", [False, True])
def test_gpu_sm90_sparse_prefill(h_q, split_heavy, ws, sm90_calls):
    """The Gluon kernels on sparse prefill (kv as pages of one token): max_logits, lse, sinks, all-invalid rows
    (the lockstep kernel and, at 64+ heads, the warp-specialized one)."""
    if ws and not (h_q > 32 and sparse_kernels._sm90.ws_supported()):
        pytest.skip("the warp-specialized kernel serves 64+ heads, on Triton 3.7+")
    with configs.overridden(WGMMA=True, WS=ws, **(SPLIT_HEAVY if split_heavy else {})):
        check_prefill(s_q=40, h_q=h_q, topk=1000, s_kv=3000, dv=512, dr=64, dtype=torch.bfloat16, seed=h_q,
                      invalid_frac=0.3, topk_length=[0] + _gpu_lengths(39, 1000, h_q),
                      sink=torch.randn(h_q, generator=torch.Generator().manual_seed(1)).tolist(),
                      sm_scale=576 ** -0.5)
    assert len(sm90_calls) == 1


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_sm90_sparse_off_gives_tl_dot(fp8, sm90_calls):
    """With WGMMA off the tl.dot kernels serve sm90 too (the 64-row entries use it by default)."""
    with configs.overridden(WGMMA=False, FP8_WGMMA=False):
        check_decode(b=2, s_q=2, h_q=128, topk=700, dv=512, dr=64, page_size=64, num_blocks=80,
                     dtype=torch.bfloat16, fp8=fp8, seed=5)
    assert not sm90_calls


@gpu
def test_gpu_decode_fp16_fp32_caches():
    check_decode(b=3, s_q=2, h_q=16, topk=700, dv=512, dr=64, page_size=64, num_blocks=40, dtype=torch.float16)
    check_decode(b=3, s_q=1, h_q=8, topk=300, dv=512, dr=64, page_size=64, num_blocks=20, dtype=torch.float32)
    check_decode(b=2, s_q=1, h_q=16, topk=500, page_size=64, num_blocks=40, dtype=torch.float16, fp8=True)


@gpu
@pytest.mark.parametrize("h_q", [16, 64, 128])
@pytest.mark.parametrize("topk", [2048, 300])
def test_gpu_prefill_deepseek(h_q, topk):
    s_q = 64
    check_prefill(s_q=s_q, h_q=h_q, topk=topk, s_kv=8192, dv=512, dr=64, dtype=torch.bfloat16, seed=h_q + topk,
                  invalid_frac=0.05, topk_length=_gpu_lengths(s_q, topk, h_q),
                  sink=torch.randn(h_q, generator=torch.Generator().manual_seed(1)).tolist(), sm_scale=576 ** -0.5)


@gpu
def test_gpu_prefill_small_s_q_splits():
    check_prefill(s_q=2, h_q=128, topk=2048, s_kv=4096, dv=512, dr=64, dtype=torch.bfloat16, sm_scale=576 ** -0.5)
    check_prefill(s_q=3, h_q=8, topk=1500, s_kv=4096, dv=512, dr=64, dtype=torch.float16, sm_scale=576 ** -0.5)


@gpu
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_cuda_graph_replay_new_indices(fp8, monkeypatch):
    """Captured once; replayed with new indices, topk_length and q in the same buffers."""
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    g = torch.Generator().manual_seed(2)
    b, s_q, h_q, topk, nb, ps = 8, 2, 16, 1024, 64, 64
    k_cache, used = make_cache(nb, ps, 576, torch.bfloat16, fp8, g, used_frac=1.0)
    k_cache = k_cache.cuda()
    indices = make_indices(used, nb * ps, (b, s_q, topk), g).cuda()
    lens = torch.full((b,), topk, dtype=torch.int32, device="cuda")
    q = torch.randn(b, s_q, h_q, 576, generator=g).to(torch.bfloat16).cuda()
    md = tm.get_mla_metadata()[0]
    run = lambda: tm.flash_mla_with_kvcache(q, k_cache, None, None, 512, md, None, is_fp8_kvcache=fp8,
                                            indices=indices, topk_length=lens)
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = run()
    for step in range(3):
        gs = torch.Generator().manual_seed(10 + step)
        indices.copy_(make_indices(used, nb * ps, (b, s_q, topk), gs))
        lens.copy_(torch.randint(0, topk + 1, (b,), generator=gs, dtype=torch.int32))
        q.copy_(torch.randn(q.shape, generator=gs).to(q.dtype))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_lse = sparse_decode_ref(q, dequantized(k_cache, fp8), indices, 512, topk_length=lens)
        assert_close(out, ref_out, torch.bfloat16)
        assert_close(lse, ref_lse, torch.bfloat16, "lse")


@gpu
def test_gpu_no_host_sync(monkeypatch):
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    g = torch.Generator().manual_seed(4)
    k_cache, used = make_cache(16, 64, 576, torch.bfloat16, True, g)
    indices = make_indices(used, 1024, (2, 1, 512), g).cuda()
    q = torch.randn(2, 1, 16, 576, generator=g).to(torch.bfloat16).cuda()
    k_cache = k_cache.cuda()
    kv = torch.randn(300, 1, 576, device="cuda", dtype=torch.bfloat16)
    pidx = torch.randint(0, 300, (7, 1, 100), device="cuda", dtype=torch.int32)
    qp = torch.randn(7, 16, 576, device="cuda", dtype=torch.bfloat16)
    sparse_decode(q, k_cache, indices, 512, is_fp8_kvcache=True)
    flash_mla_sparse_fwd(qp, kv, pidx, 0.05)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sparse_decode(q, k_cache, indices, 512, is_fp8_kvcache=True)
        flash_mla_sparse_fwd(qp, kv, pidx, 0.05)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@gpu
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_cache_offsets_beyond_2_31(fp8):
    """Tokens whose offset in the cache (elements, or bytes for FP8) overflows int32 (~2.3-4.5 GB)."""
    ps = 64
    per_token = fp8_layout.BYTES_PER_TOKEN if fp8 else 576
    num_blocks = (1 << 31) // (ps * per_token) + 8
    shape = (num_blocks, ps, 1, per_token)
    k_cache = torch.zeros(shape, dtype=torch.uint8 if fp8 else torch.bfloat16, device="cuda")
    g = torch.Generator().manual_seed(9)
    lat = torch.randn(4, ps, 1, 576, generator=g)
    high = torch.arange(num_blocks - 4, num_blocks, device="cuda")
    k_cache[high] = (fp8_layout.quantize_latent(lat[..., :512], lat[..., 512:]) if fp8
                     else lat.to(torch.bfloat16)).cuda()
    tokens = (high[:, None] * ps + torch.arange(ps, device="cuda")).view(-1)
    indices = tokens[torch.randint(0, len(tokens), (1, 2, 300), generator=g).cuda()].to(torch.int32)
    q = torch.randn(1, 2, 16, 576, generator=g).to(torch.bfloat16).cuda()
    out, lse = sparse_decode(q, k_cache, indices, 512, is_fp8_kvcache=fp8)
    sub = k_cache[high]
    local = indices - (num_blocks - 4) * ps
    ref_out, _ = sparse_decode_ref(q, dequantized(sub, fp8), local, 512)
    assert_close(out, ref_out, torch.bfloat16)
