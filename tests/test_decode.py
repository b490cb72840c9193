"""Decode (``flash_mla_with_kvcache``) against ``reference.decode_ref``.

CPU runs use the Triton interpreter with fp16/fp32 and small latent sizes; GPU runs use bf16 and
DeepSeek's 512 + 64. Every case: fresh random inputs, NaN in unused pages and in the tail of each last
page, a shuffled block table, the output poisoned with NaN before the call.
"""

import math
import random

import numpy as np
import pytest
import torch
from conftest import CPU_DTYPES, DEVICE, HAS_GPU, assert_close, gpu

import triton_mla as tm
from triton_mla import configs
from triton_mla.reference import decode_ref

# many small parts, so that short CPU inputs still go through split + combine
SPLIT_HEAVY = dict(PARTS_PER_SM=8, MIN_BLOCKS_PER_PART=1)


def make_case(lens, s_q, h_q, dv=64, dr=16, page_size=16, dtype=torch.float16, device=DEVICE, seed=0,
              spare_pages=3):
    """Random q, a NaN-poisoned paged cache in shuffled page order, block table, lengths."""
    g = torch.Generator().manual_seed(seed)
    b, d = len(lens), dv + dr
    pages = [math.ceil(n / page_size) for n in lens]
    width = max(pages + [1])
    num_blocks = sum(pages) + spare_pages
    k_cache = torch.full((num_blocks, page_size, 1, d), float("nan"), dtype=dtype)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    # unused table entries hold an id far out of range: the kernel must never read them
    block_table = torch.full((b, width), 1 << 30, dtype=torch.int32)
    for i, n in enumerate(lens):
        ids = [perm.pop() for _ in range(pages[i])]
        block_table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        tokens = torch.randn(n, d, generator=g).to(dtype)
        flat = k_cache[ids].view(-1, d) if ids else k_cache[:0].view(-1, d)
        flat[:n] = tokens
        if ids:
            k_cache[ids] = flat.view(len(ids), page_size, 1, d)
    q = torch.randn(b, s_q, h_q, d, generator=g).to(dtype)
    cache_seqlens = torch.tensor(lens, dtype=torch.int32)
    return [t.to(device) for t in (q, k_cache, block_table, cache_seqlens)]


def check_decode(lens, s_q, h_q, dv=64, dr=16, page_size=16, dtype=torch.float16, causal=False, style="old",
                 softmax_scale=None, seed=0):
    q, k_cache, block_table, cache_seqlens = make_case(lens, s_q, h_q, dv, dr, page_size, dtype, seed=seed)
    if style == "old":
        md, num_splits = tm.get_mla_metadata(cache_seqlens, s_q * h_q, 1)
    elif style == "new":
        md, num_splits = tm.get_mla_metadata(cache_seqlens, s_q * h_q, 1)[0], None
    else:
        md, num_splits = None, None
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, dv, md, num_splits,
                                         softmax_scale=softmax_scale, causal=causal)
    # NaN in unused pages would reach the output if the kernel read them; the output buffers come
    # from the NaN-poisoned torch.empty (fixture below), so an unwritten element fails too
    ref_out, ref_lse = decode_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), cache_seqlens.cpu(), dv,
                                  softmax_scale, causal, dtype=torch.float64)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert out.shape == (len(lens), s_q, h_q, dv) and lse.shape == (len(lens), h_q, s_q)
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, torch.float32 if dtype == torch.float32 else torch.float16, "lse")


# every floating torch.empty the library makes is NaN-filled (conftest.poison_empty)
pytestmark = pytest.mark.usefixtures("poison_empty")


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("lens", [[0], [1], [63], [64], [65], [1, 0, 63, 64, 65, 300]])
def test_lengths(lens, dtype):
    check_decode(lens, s_q=1, h_q=4, dtype=dtype)


@pytest.mark.parametrize("page_size", [1, 16, 64, 128])
def test_page_sizes(page_size):
    check_decode([5, 130, 64], s_q=1, h_q=3, page_size=page_size)


@pytest.mark.parametrize("split_heavy", [False, True])
@pytest.mark.parametrize("h_q", [1, 2, 3, 4, 8, 12, 16, 17, 32, 64, 96, 128])
def test_head_counts(h_q, split_heavy):
    with configs.overridden(**(SPLIT_HEAVY if split_heavy else {})):
        check_decode([70, 33, 129], s_q=1, h_q=h_q, seed=h_q)


@pytest.mark.parametrize("s_q", [1, 2, 3, 4])
@pytest.mark.parametrize("h_q", [1, 5, 16])
def test_causal_s_q(s_q, h_q):
    # lengths below s_q leave early query rows with no key at all: out 0, lse +inf
    with configs.overridden(**SPLIT_HEAVY):
        check_decode([0, 1, 2, 3, 40, 97], s_q=s_q, h_q=h_q, causal=True, seed=s_q)


# launch variants the configs may select (see kernels/decode.py); each must give the same answers
VARIANTS = [dict(PREFETCH_PAGES=True), dict(LAZY_RESCALE=True), dict(ROWS_FIRST=True),
            dict(PREFETCH_PAGES=True, LAZY_RESCALE=True, ROWS_FIRST=True, BLOCK_N=32), dict(FUSED_COMBINE=True),
            dict(FUSED_COMBINE=True, ROWS_FIRST=True, BLOCK_N=32)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(sorted(v)))
@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_launch_variants(variant, page_size):
    with configs.overridden(**SPLIT_HEAVY, **variant):
        check_decode([0, 1, 63, 64, 65, 300], s_q=2, h_q=5, causal=True, page_size=page_size, seed=page_size)
        check_decode([130, 1, 64], s_q=1, h_q=16, dv=512, dr=64, page_size=page_size)


@pytest.mark.parametrize("lens", [[0], [0, 0], [0, 0, 5], [5, 0, 0], [0, 300, 0, 0, 64], [64, 0, 64, 0, 64, 0]])
@pytest.mark.parametrize("split_heavy", [False, True])
def test_fused_combine_empty_sequences(lens, split_heavy):
    """FUSED_COMBINE: with no combine kernel, the empty sequences' output (out 0, lse +inf) is written by the part
    whose range starts at or holds each one's place in the plan, those after every block by the last part; the
    split sequences are merged by the program storing their last part. Leading, trailing, interleaved and all
    empty; causal rows with no keys."""
    with configs.overridden(FUSED_COMBINE=True, **(SPLIT_HEAVY if split_heavy else {})):
        check_decode(lens, s_q=2, h_q=3, causal=True, seed=len(lens))
        check_decode(lens, s_q=1, h_q=16, seed=len(lens) + 1)


def test_wgmma_config_falls_back_off_sm90():
    """A WGMMA entry (the Gluon kernel, sm90 only) must still decode correctly where that kernel cannot run:
    the interpreter, float32, other head dims."""
    with configs.overridden(WGMMA=True, NUM_BUF=2):
        check_decode([0, 1, 65, 130], s_q=2, h_q=4, causal=True)
        check_decode([65, 3], s_q=1, h_q=8, dv=512, dr=64, dtype=torch.float32)


def test_dense_decode_kernels_share_launch_arguments():
    """decode.launch_tensors feeds all four dense decode kernels: their leading parameters must match it."""
    from triton_mla.kernels import decode, decode_fp8, decode_invariant, decode_sm90

    names = decode._decode_kernel.arg_names[:22]
    assert names[:8] == ["q_ptr", "k_ptr", "block_table_ptr", "seqlens_ptr", "out_ptr", "lse_ptr", "o_part_ptr",
                         "lse_part_ptr"]
    assert names[-1] == "stride_ls"
    for kernel in (decode_fp8._decode_fp8_kernel, decode_invariant._invariant_kernel,
                   decode_sm90._decode_sm90_kernel):
        assert kernel.arg_names[:22] == names
    t = torch.zeros(2, 3, 4, 5)
    assert len(decode.launch_tensors(t, t, t[0, 0], t[0, 0, 0], t, t, t, t)) == 22


def test_sm90_alignment_predicate():
    """The Gluon kernel copies 16 bytes at a time: a cache sliced out of a wider one (577-wide rows) must go to
    the tl.dot kernels instead of failing to compile."""
    from triton_mla.kernels.decode_sm90 import aligned16

    cache = torch.zeros(4, 16, 1, 576, dtype=torch.bfloat16)
    assert aligned16(cache, (0, 1))
    assert not aligned16(torch.zeros(4, 16, 1, 577, dtype=torch.bfloat16)[..., :576], (0, 1))
    assert not aligned16(torch.zeros(4 * 16 * 576 + 1, dtype=torch.bfloat16)[1:].view(4, 16, 1, 576), (0, 1))
    assert aligned16(torch.zeros(4, 16, 1, 656, dtype=torch.uint8), (0, 1))


def test_lazy_rescale_growing_scores():
    """Scores that keep growing along the sequence make the lazy max move many times."""
    q, k_cache, block_table, lens = make_case([700, 333], 1, 4, dtype=torch.float32)
    growth = torch.linspace(0.0, 40.0, k_cache.shape[0] * k_cache.shape[1], device=k_cache.device)
    k_cache *= growth.view(k_cache.shape[:2])[..., None, None]
    ref, ref_lse = decode_ref(q, k_cache, block_table, lens, 64)
    with configs.overridden(LAZY_RESCALE=True):
        out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, lens, 64)
    assert_close(out, ref, torch.float32)
    assert_close(lse, ref_lse, torch.float32)


def test_non_causal_s_q():
    check_decode([3, 50], s_q=3, h_q=2, causal=False)


@pytest.mark.parametrize("style", ["old", "new", "none"])
def test_calling_styles(style):
    with configs.overridden(**SPLIT_HEAVY):
        check_decode([200, 7, 0, 90], s_q=2, h_q=4, causal=True, style=style)


def test_deepseek_dims_cpu():
    """The real latent (512 + 64) and 16 heads, as TP=8 gives DeepSeek-V3."""
    with configs.overridden(**SPLIT_HEAVY):
        check_decode([130, 1, 64], s_q=1, h_q=16, dv=512, dr=64, page_size=64)


@pytest.mark.parametrize("dv,dr", [(512, 0), (256, 32), (128, 64), (96, 32), (48, 8)])
def test_latent_sizes(dv, dr):
    """No rope part (d = 512), MiniCPM3's 256 + 32, and sizes that are not powers of two."""
    check_decode([40, 17], s_q=1, h_q=3, dv=dv, dr=dr)


@pytest.mark.parametrize("batch,fused", [(128, False), (129, False), (129, True), (300, True)])
def test_batch_128(batch, fused):
    """The split plan over one chunk of lengths (CHUNK_B = 128 sequences) or several, with the combine kernel or
    fused, empty sequences among the others."""
    with configs.overridden(FUSED_COMBINE=fused, **SPLIT_HEAVY):
        lens = [random.Random(i).choice([0, random.Random(-i).randint(0, 90)]) for i in range(batch)]
        check_decode(lens, s_q=1, h_q=2, dv=32, dr=16, seed=batch)


def test_softmax_scale():
    check_decode([50], s_q=1, h_q=2, softmax_scale=0.3)
    check_decode([50], s_q=1, h_q=2, softmax_scale=np.float32(0.3))  # a NumPy scalar is a real number too


def test_metadata_plan():
    """num_splits is cumulative and matches the plan: an empty sequence has no split."""
    lens = torch.tensor([0, 640, 64, 0, 1], dtype=torch.int32, device=DEVICE)
    with configs.overridden(**SPLIT_HEAVY):
        md, num_splits = tm.get_mla_metadata(lens, 16, 1)
    assert num_splits.dtype == torch.int32 and num_splits.shape == (6,)
    per_seq = (num_splits[1:] - num_splits[:-1]).tolist()
    assert per_seq[0] == 0 and per_seq[3] == 0 and per_seq[1] >= 2
    assert all(n >= 1 for n in (per_seq[2], per_seq[4]))
    assert md.shape[1] == 8 and md.dtype == torch.int32


@pytest.mark.parametrize("fp8", [False, True])
def test_metadata_plan_empty_batch(fp8):
    """An empty batch (b = 0) plans nothing: num_splits [0], every part marked one-in-use and empty, and decode
    takes the plan back. The plan kernel read cache_seqlens[-1] and divided by the batch size (a segfault under the
    interpreter, an out-of-bounds read on the GPU)."""
    lens = torch.zeros(0, dtype=torch.int32, device=DEVICE)
    md, num_splits = tm.get_mla_metadata(lens, 16, 1, is_fp8_kvcache=fp8)
    assert num_splits.tolist() == [0] and md.dtype == torch.int32 and md.shape[1] == 8 and md.shape[0] >= 1
    assert md[:, 6].tolist() == [1] * md.shape[0] and not md[:, :6].any() and not md[:, 7].any()
    q, k_cache, block_table, _ = make_case([5], 1, 16)
    out, lse = tm.flash_mla_with_kvcache(q[:0], k_cache, block_table[:0], lens, 64, md, num_splits)
    assert out.shape == (0, 1, 16, 64) and lse.shape == (0, 16, 1)


@pytest.mark.parametrize("lens,num_parts,used", [
    ([320] * 16, 66, 64),  # 4 parts a sequence (the batch divides 64)
    ([320] * 12, 13, 13),  # no count within 1/16 below 13 fits 12: unchanged
    ([1000] * 5, 66, 65),  # 13 parts a sequence
    ([320] * 16 + [0], 66, 66),  # an empty sequence: lengths differ, unchanged
    ([320] * 15 + [250], 66, 66),  # block counts differ
])
def test_plan_aligns_parts_with_equal_lengths(lens, num_parts, used, monkeypatch):
    """Sequences of one block count: the plan takes the largest part count at most 1/16 below the requested one that
    the batch divides or that divides the batch, so parts end where sequences end (every sequence has the same
    number of splits); other batches keep the count. The decode through that plan against the reference."""
    from triton_mla import api

    monkeypatch.setattr(api, "_num_parts", lambda rows, config, device: num_parts)
    with configs.overridden(MIN_BLOCKS_PER_PART=1):
        lens_t = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
        md, num_splits = tm.get_mla_metadata(lens_t, 4, 1)
        assert md.shape[0] == num_parts and md[:, 6].tolist() == [used] * num_parts
        splits = (num_splits[1:] - num_splits[:-1]).tolist()
        if used != num_parts:
            b = len(lens)
            assert splits == [max(used // b, 1)] * b
        check_decode(lens, s_q=1, h_q=4, seed=len(lens))


def test_combine_blocks_fit():
    """The combine's blocks for any batch: powers of two, at most 8192 fp32 a step (16 rows of 512 columns on the
    large-batch shape), a grid within CUDA's limits for every row count the API takes at small batch, and the
    small-batch shape only where the large one would not fill the GPU twice."""
    from triton_mla.kernels.decode import combine_blocks

    def pow2(n):
        return n > 0 and n & (n - 1) == 0

    for b in (1, 2, 3, 8, 17, 64, 128, 1024):
        for rows in (1, 5, 16, 100, 128, 256, 4096):
            for num_parts in (1, 33, 66, 132, 264, 1056):
                for o_stride in (16, 64, 128, 512):
                    for sms in (4, 132):
                        block_h, block_dv, parts = combine_blocks(b, rows, num_parts, o_stride, sms)
                        assert all(pow2(v) for v in (block_h, block_dv, parts)), (block_h, block_dv, parts)
                        assert block_h * block_dv * parts <= 8192 and block_dv <= o_stride
                        assert -(-rows // block_h) <= 65535
                        small = b * -(-rows // 16) < 2 * sms
                        assert (block_h, block_dv, parts) == (16, o_stride, 1) or small


@pytest.mark.parametrize("large_batch", [False, True])
@pytest.mark.parametrize("dv", [64, 48, 512])
def test_combine_reads_parts_in_steps(dv, large_batch, monkeypatch):
    """One long sequence split into more parts than the combine reads at a step, the others into one or
    two; rows and value dims spread over several combine programs (48: value dims past the last block).
    ``large_batch``: a GPU of one SM, so the combine takes its large-batch shape (16 rows, one part a step)."""
    from triton_mla.kernels.decode import combine_blocks

    if large_batch:
        monkeypatch.setattr(configs, "num_sms", lambda device: 1)
    lens, h_q = [0, 3000, 5, 130], 5
    with configs.overridden(PARTS_PER_SM=32, MIN_BLOCKS_PER_PART=1):
        lens_t = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
        md, num_splits = tm.get_mla_metadata(lens_t, h_q, 1)
        splits = (num_splits[1:] - num_splits[:-1]).tolist()
        block_h, _, parts = combine_blocks(len(lens), h_q, md.shape[0], max(16, 1 << (dv - 1).bit_length()),
                                           configs.num_sms(lens_t.device))
        assert splits[1] > 2 * parts
        assert (block_h, parts) == (16, 1) if large_batch else block_h < h_q
        check_decode(lens, s_q=1, h_q=h_q, dv=dv, dr=16, seed=dv)


# -- bad input --------------------------------------------------------------------------------------
def _valid():
    return make_case([10, 20], s_q=1, h_q=2)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(q=a["q"].to(torch.int32)), TypeError, "q"),
        (lambda a: a.update(q=a["q"][0]), ValueError, "q"),
        (lambda a: a.update(k_cache=a["k_cache"].float()), TypeError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"].expand(-1, -1, 2, -1)), ValueError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"][..., :40]), ValueError, "k_cache"),
        (lambda a: a.update(block_table=a["block_table"].long()), TypeError, "block_table"),
        (lambda a: a.update(block_table=a["block_table"][:1]), ValueError, "block_table"),
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"].long()), TypeError, "cache_seqlens"),
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"][:1]), ValueError, "cache_seqlens"),
        (lambda a: a.update(head_dim_v=1000), ValueError, "head_dim_v"),
        (lambda a: a.update(head_dim_v=0), ValueError, "head_dim_v"),
        (lambda a: a.update(head_dim_v=64.0), TypeError, "head_dim_v"),
        (lambda a: a.update(head_dim_v=True), TypeError, "head_dim_v"),
        (lambda a: a.update(causal="yes"), TypeError, "causal"),
        (lambda a: a.update(causal=1), TypeError, "causal"),
        (lambda a: a.update(is_fp8_kvcache="no"), TypeError, "is_fp8_kvcache"),
        (lambda a: a.update(batch_invariant=0), TypeError, "batch_invariant"),
        (lambda a: a.update(q=a["q"].transpose(-1, -2).contiguous().transpose(-1, -2)), ValueError, "q"),
        (lambda a: a.update(q=a["q"][:, :0]), ValueError, "q"),
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"] * 0 - 1), ValueError, "cache_seqlens"),
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"] + 100), ValueError, "cache_seqlens"),
        (lambda a: a["block_table"].__setitem__((0, 0), 10**6), ValueError, "block_table"),
        (lambda a: a.update(num_splits=torch.zeros(7, dtype=torch.int32, device=a["q"].device)),
         ValueError, "num_splits"),
        (lambda a: a.update(softmax_scale="0.1"), TypeError, "softmax_scale"),
        (lambda a: a.update(softmax_scale=float("nan")), ValueError, "softmax_scale"),
        (lambda a: a.update(softmax_scale=-float("inf")), ValueError, "softmax_scale"),
        (lambda a: a.update(softmax_scale=3e38), ValueError, "softmax_scale"),
    ],
)
def test_bad_input(mutate, exc, match):
    q, k_cache, block_table, cache_seqlens = _valid()
    args = dict(q=q, k_cache=k_cache, block_table=block_table, cache_seqlens=cache_seqlens, head_dim_v=64)
    mutate(args)
    with pytest.raises(exc, match=match):
        tm.flash_mla_with_kvcache(**args)


def test_numpy_scalars_taken():
    """NumPy integers and bools (an engine's config often holds them) work as Python's do."""
    q, k_cache, block_table, cache_seqlens = make_case([10, 20], s_q=2, h_q=2)
    want = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, causal=True)
    got = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, np.int64(64), causal=np.bool_(True))
    assert got[0].shape[-1] == 64 and isinstance(got[0].shape[-1], int)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    md, ns = tm.get_mla_metadata(cache_seqlens, np.int32(4), np.int64(1), is_fp8_kvcache=np.bool_(False))
    assert torch.equal(tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64, md, ns, causal=True)[0],
                       want[0])


def test_bad_device():
    if not HAS_GPU:
        pytest.skip("needs a CUDA device beside the CPU")
    q, k_cache, block_table, cache_seqlens = _valid()
    with pytest.raises(ValueError, match="k_cache"):
        tm.flash_mla_with_kvcache(q, k_cache.cpu(), block_table, cache_seqlens, 64)


def test_only_one_kv_head():
    q, k_cache, block_table, cache_seqlens = _valid()
    with pytest.raises(ValueError, match="num_heads_k"):
        tm.get_mla_metadata(cache_seqlens, 2, 2)


def test_out_of_range_values_clamped_without_checks(monkeypatch):
    """Without TRITON_MLA_CHECK a bad length or page id must not read out of bounds (finite output)."""
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    q, k_cache, block_table, cache_seqlens = make_case([10, 20], s_q=1, h_q=2, spare_pages=0)
    k_cache = torch.nan_to_num(k_cache)
    block_table[0, 0] = 1 << 30
    cache_seqlens[1] = 10**6
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 64)
    assert torch.isfinite(out.float()).all()


def test_value_checks_run_by_default_on_host_tensors(monkeypatch):
    """TRITON_MLA_CHECK unset: values on the CPU are checked (reading them costs no sync), values on a GPU are not
    (a sync a serving step cannot afford); set, it decides."""
    from triton_mla._checks import value_checks_enabled

    monkeypatch.delenv("TRITON_MLA_CHECK", raising=False)
    assert value_checks_enabled(torch.device("cpu")) and value_checks_enabled("cpu")
    assert not value_checks_enabled(torch.device("cuda", 0)) and not value_checks_enabled(None)
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    assert not value_checks_enabled(torch.device("cpu"))
    monkeypatch.setenv("TRITON_MLA_CHECK", "1")
    assert value_checks_enabled(torch.device("cuda", 0))
    monkeypatch.delenv("TRITON_MLA_CHECK")
    if torch.device(DEVICE).type != "cpu":
        return  # (CPU tensors run only under the interpreter)
    q, k_cache, block_table, cache_seqlens = make_case([10, 20], s_q=1, h_q=2, spare_pages=0)
    bad = cache_seqlens.clone()
    bad[1] = -3
    with pytest.raises(ValueError, match="cache_seqlens"):
        tm.flash_mla_with_kvcache(q, k_cache, block_table, bad, 64)
    bad_table = block_table.clone()
    bad_table[0, 0] = 1 << 30
    with pytest.raises(ValueError, match="block_table"):
        tm.flash_mla_with_kvcache(q, k_cache, bad_table, cache_seqlens, 64)


# -- GPU -------------------------------------------------------------------------------------------
@gpu
@pytest.mark.parametrize("h_q", [1, 4, 8, 12, 16, 32, 64, 96, 128])
@pytest.mark.parametrize("s_q", [1, 2, 4])
def test_gpu_bf16_deepseek(h_q, s_q):
    lens = [0, 1, 63, 64, 65, 1000, 4097] + [random.Random(h_q + s_q + i).randint(1, 3000) for i in range(9)]
    check_decode(lens, s_q=s_q, h_q=h_q, dv=512, dr=64, page_size=64, dtype=torch.bfloat16, causal=True,
                 seed=h_q * 10 + s_q)


@gpu
@pytest.mark.parametrize("h_q,s_q", [(16, 1), (8, 1), (1, 1), (5, 3)])
@pytest.mark.parametrize("split_heavy", [False, True])
def test_gpu_bf16_fused_combine(h_q, s_q, split_heavy):
    """The tl.dot kernel with the combine fused (``FUSED_COMBINE``) on the GPU, where parts run concurrently and
    the last to store a sequence's partial rows merges them: DeepSeek dims, bf16, empty sequences among split ones."""
    lens = [0, 1, 63, 0, 64, 65, 1000, 4097, 0] + [random.Random(h_q + s_q + i).randint(1, 3000) for i in range(9)]
    lens += [0, 0]
    with configs.overridden(FUSED_COMBINE=True, WGMMA=False, **(SPLIT_HEAVY if split_heavy else {})):
        check_decode(lens, s_q=s_q, h_q=h_q, dv=512, dr=64, page_size=64, dtype=torch.bfloat16, causal=True,
                     seed=h_q * 10 + s_q)


SM90 = HAS_GPU and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("tiles", [dict(BLOCK_N=64, NUM_BUF=2, MIN_BLOCKS_PER_PART=4),
                                   dict(BLOCK_N=32, NUM_BUF=3, MIN_BLOCKS_PER_PART=8, ROWS_FIRST=True),
                                   dict(BLOCK_N=64, MIN_BLOCKS_PER_PART=4, WS=True, WS_MIN_TILES_PER_PART=0),
                                   dict(BLOCK_N=64, MIN_BLOCKS_PER_PART=8, WS=True, ROWS_FIRST=True,
                                        WS_MIN_TILES_PER_PART=0)],
                         ids=["n64x2", "n32x3", "ws64", "ws64r"])
@pytest.mark.parametrize("page_size", [1, 16, 64, 128, 192])
@pytest.mark.parametrize("split_heavy", [False, True])
def test_gpu_sm90_wgmma_kernel(tiles, page_size, split_heavy, monkeypatch):
    """kernels/decode_sm90.py (and the warp-specialized decode_sm90_ws.py: ``WS``) against the reference: row
    counts 8-128 (partial 64-row blocks too), causal s_q > 1, lengths 0/1/page and tile edges, one sequence per
    part or many, bf16 and fp16. Pages of 64, 128 and 192 bring the ws kernel's key tiles by TMA (but the last
    tile of each sequence), pages of 1 and 16 by cp.async. Empty sequences between others: a part's loop over its
    segments skips them."""
    from triton_mla import api

    if tiles.get("WS") and not configs.triton_at_least("3.7"):
        pytest.skip("the warp-specialized kernel builds from Triton 3.7 on")
    calls = []
    launch = api._decode_sm90.decode_sm90
    monkeypatch.setattr(api._decode_sm90, "decode_sm90", lambda *a: calls.append(1) or launch(*a))
    lens = [0, 1, 31, 0, 32, 63, 0, 0, 64, 65, 1000, 4097, 0]
    with configs.overridden(WGMMA=True, **{**tiles, **(SPLIT_HEAVY if split_heavy else {})}):
        for i, (h_q, s_q) in enumerate([(128, 1), (64, 2), (16, 4), (8, 1), (96, 1), (40, 3)]):
            check_decode(lens, s_q=s_q, h_q=h_q, dv=512, dr=64, page_size=page_size,
                         dtype=torch.float16 if i % 2 else torch.bfloat16, causal=True, seed=page_size + i)
    assert len(calls) == 6


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("batch", [255, 256, 257, 400])
@pytest.mark.parametrize("ws", [False, True])
def test_gpu_sm90_many_sequences(batch, ws):
    """The Gluon kernels' split plan over one chunk of lengths (256 sequences at 8 warps) or several: random
    lengths with empty sequences among them, split-heavy, 64-row and warp-specialized."""
    if ws and not configs.triton_at_least("3.7"):
        pytest.skip("the warp-specialized kernel builds from Triton 3.7 on")
    rnd = random.Random(batch)
    lens = [rnd.choice([0, 1, 64, 65, rnd.randint(0, 500)]) for _ in range(batch)]
    with configs.overridden(WGMMA=True, BLOCK_N=64, MIN_BLOCKS_PER_PART=1, PARTS_PER_SM=4, WS=ws,
                            WS_MIN_TILES_PER_PART=0):
        check_decode(lens, s_q=1, h_q=64, dv=512, dr=64, page_size=64, dtype=torch.bfloat16, seed=batch)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("page_size", [16, 64, 128])
@pytest.mark.parametrize("h_q", [128, 16])
@pytest.mark.parametrize("fp8", [False, True])
def test_gpu_sm90_bad_page_ids_clamped(page_size, h_q, fp8, monkeypatch):
    """Without TRITON_MLA_CHECK, page ids outside the cache in one sequence's block-table row are clamped by the
    Gluon kernels (pages of 64 and 128: one look-up a tile): that sequence's output is finite, and the others are
    those of the reference (64-row kernel at 128 heads; FP8 keys-on-M kernel at 16)."""
    from triton_mla.bench import fp8_cache_of, fp8_rel_err

    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    q, k_cache, block_table, lens = make_case([700, 300, 1000], 1, h_q, dv=512, dr=64, page_size=page_size,
                                              dtype=torch.bfloat16, spare_pages=0)
    k_cache = torch.nan_to_num(k_cache, nan=0.0)  # (the page a bad id is clamped to is read whole)
    bad = block_table.clone()
    bad[0, ::2] = 1 << 30
    bad[0, 1::2] = -7
    if fp8:
        k_cache = fp8_cache_of(k_cache)
    with configs.overridden(WGMMA=True):
        out, _ = tm.flash_mla_with_kvcache(q, k_cache, bad, lens, 512, is_fp8_kvcache=fp8)
    assert torch.isfinite(out.float()).all()
    if fp8:
        table = torch.where(block_table[1:] < k_cache.shape[0], block_table[1:], 0)  # unused entries: any page
        assert fp8_rel_err(out[1:], q[1:], k_cache, table, lens[1:], False, 576 ** -0.5, 2) < 1e-2
    else:
        ref, _ = decode_ref(q[1:].cpu(), k_cache.cpu(), block_table[1:].cpu(), lens[1:].cpu(), 512,
                            dtype=torch.float64)
        assert_close(out[1:], ref, torch.bfloat16)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
def test_gpu_sm90_unaligned_cache_falls_back():
    """A cache whose token rows are not 16-byte aligned (sliced from 577-wide rows) decodes through tl.dot."""
    q, k_cache, block_table, lens = make_case([300, 1, 70], 1, 64, dv=512, dr=64, page_size=16,
                                              dtype=torch.bfloat16)
    wide = torch.zeros(*k_cache.shape[:3], 577, dtype=k_cache.dtype, device=k_cache.device)
    wide[..., :576] = k_cache
    sliced = wide[..., :576]
    with configs.overridden(WGMMA=True):
        out, lse = tm.flash_mla_with_kvcache(q, sliced, block_table, lens, 512)
    ref, _ = decode_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), lens.cpu(), 512, dtype=torch.float64)
    assert_close(out, ref, torch.bfloat16)


@gpu
def test_gpu_fp16_batch128():
    lens = [random.Random(i).randint(0, 2000) for i in range(128)]
    check_decode(lens, s_q=1, h_q=16, dv=512, dr=64, page_size=64, dtype=torch.float16)


@gpu
def test_gpu_long_context():
    """DeepSeek-V3's longest context, 163840 tokens."""
    check_decode([163840, 5], s_q=2, h_q=16, dv=512, dr=64, page_size=64, dtype=torch.bfloat16, causal=True)


@gpu
def test_gpu_cuda_graph_replay_new_lengths(monkeypatch):
    """Captured once; replayed with new cache_seqlens (and a new block table) in the same buffers."""
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")  # value checks sync, which a capture forbids
    lens = [300, 5, 1000, 64]
    q, k_cache, block_table, cache_seqlens = make_case(lens, 2, 16, 512, 64, 64, torch.bfloat16, seed=1)
    k_cache = torch.nan_to_num(k_cache)
    num_blocks, width = k_cache.shape[0], block_table.shape[1]
    md, num_splits = tm.get_mla_metadata(cache_seqlens, 32, 1)
    run = lambda: tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, md, num_splits,
                                            causal=True)
    run()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = run()
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        new = torch.randint(0, width * 64 + 1, (4,), generator=g, dtype=torch.int32)
        new[step] = 0
        cache_seqlens.copy_(new)
        block_table.copy_(torch.randint(0, num_blocks, (4, width), generator=g, dtype=torch.int32))
        q.copy_(torch.randn(q.shape, generator=g).to(q.dtype))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_lse = decode_ref(q.cpu(), k_cache.cpu(), block_table.cpu(), cache_seqlens.cpu(), 512,
                                      causal=True)
        assert_close(out, ref_out, torch.bfloat16)
        assert_close(lse, ref_lse, torch.bfloat16, "lse")


@gpu
def test_gpu_no_host_sync(monkeypatch):
    q, k_cache, block_table, cache_seqlens = make_case([100, 200], 1, 16, 512, 64, 64, torch.bfloat16)
    md, num_splits = tm.get_mla_metadata(cache_seqlens, 16, 1)
    tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, md, num_splits)
    torch.cuda.synchronize()
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    torch.cuda.set_sync_debug_mode("error")
    try:
        md, num_splits = tm.get_mla_metadata(cache_seqlens, 16, 1)
        tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, md, num_splits)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@gpu
def test_gpu_cache_beyond_2_31_elements():
    """Pages whose element offset overflows int32 (needs ~5 GB of GPU memory)."""
    page_size, d = 64, 576
    num_blocks = (1 << 31) // (page_size * d) + 8
    k_cache = torch.empty(num_blocks, page_size, 1, d, dtype=torch.bfloat16, device="cuda")
    high = torch.arange(num_blocks - 4, num_blocks, dtype=torch.int32, device="cuda")
    k_cache[high.long()] = torch.randn(4, page_size, 1, d, dtype=torch.bfloat16, device="cuda")
    block_table = high.view(1, 4)
    cache_seqlens = torch.tensor([4 * page_size - 3], dtype=torch.int32, device="cuda")
    q = torch.randn(1, 1, 16, d, dtype=torch.bfloat16, device="cuda")
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512)
    ref_out, ref_lse = decode_ref(q.cpu(), k_cache[high.long()].cpu(), torch.arange(4, dtype=torch.int32)[None],
                                  cache_seqlens.cpu(), 512)
    assert_close(out, ref_out, torch.bfloat16)
