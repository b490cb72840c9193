"""The FP8 latent cache: quantize-on-write (byte-exact against ``triton_mla.fp8``) and decode with
``is_fp8_kvcache=True`` against ``reference.decode_ref`` on the dequantized cache.

CPU runs use the Triton interpreter with fp16 queries (it computes bf16 wrongly, so on CPU the bf16 rope
bytes of a write are left out of the byte comparison); GPU runs use bf16, DeepSeek's shapes, both e4m3
conversions and CUDA graphs. Every decode case: fresh random inputs, 0xFF bytes (NaN scales and rope) in
unused pages and in the tail of each last page, unused block-table entries far out of range, shuffled
pages, NaN-poisoned outputs (the fixture imported from test_decode).
"""

import math
import random

import pytest
import torch
from conftest import DEVICE, HAS_GPU, assert_close, gpu

import triton_mla as tm
from triton_mla import configs
from triton_mla import fp8 as F
from triton_mla.kernels import decode_fp8 as _decode_fp8
from triton_mla.reference import decode_ref

pytestmark = pytest.mark.usefixtures("poison_empty")

SPLIT_HEAVY = dict(PARTS_PER_SM=8, MIN_BLOCKS_PER_PART=1)
D, DV = 576, 512


def latents(n, g, outliers=False, dtype=torch.float32, ramp=0.0):
    """n tokens' (kv_c [n, 512], k_pe [n, 64]); outliers: a few channels 100x larger, some tokens 30x; ramp: token
    t's latent times 1 + ramp * t, so the scores' max keeps growing along the sequence, and one token in 50 4x
    more (sudden jumps; with ramp <= 0.02 over 2500 tokens the values stay far below 65504, the keys-on-M
    kernels' range, which outliers with a ramp would pass)."""
    kv_c = torch.randn(n, DV, generator=g)
    k_pe = torch.randn(n, D - DV, generator=g)
    if outliers:
        kv_c[:, torch.randperm(DV, generator=g)[:4]] *= 100.0
        kv_c[torch.randperm(n, generator=g)[: max(1, n // 20)]] *= 30.0
    if ramp:
        grow = 1.0 + ramp * torch.arange(n, dtype=torch.float32)[:, None]
        grow[torch.randperm(n, generator=g)[: max(1, n // 50)]] *= 4.0
        kv_c, k_pe = kv_c * grow, k_pe * grow
    return kv_c.to(dtype), k_pe.to(dtype)


def make_fp8_case(lens, s_q, h_q, page_size=16, dtype=torch.float16, seed=0, outliers=False, spare_pages=3,
                  q_scale=1.0, ramp=0.0):
    """q, a poisoned FP8 cache written through the kernel (shuffled pages), block table, lengths."""
    g = torch.Generator().manual_seed(seed)
    b = len(lens)
    pages = [math.ceil(n / page_size) for n in lens]
    num_blocks = sum(pages) + spare_pages
    k_cache = torch.full((num_blocks, page_size, 1, F.BYTES_PER_TOKEN), 0xFF, dtype=torch.uint8, device=DEVICE)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    block_table = torch.full((b, max(pages + [1])), 1 << 30, dtype=torch.int32)
    for i, n in enumerate(lens):
        ids = [perm.pop() for _ in range(pages[i])]
        block_table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        if n:
            kv_c, k_pe = latents(n, g, outliers, ramp=ramp)
            pos = torch.arange(n)
            slots = torch.tensor(ids, dtype=torch.int64)[pos // page_size] * page_size + pos % page_size
            tm.write_kv_cache(k_cache, kv_c.to(DEVICE), k_pe.to(DEVICE), slots.to(DEVICE))
    q = (torch.randn(b, s_q, h_q, D, generator=g) * q_scale).to(dtype).to(DEVICE)
    return q, k_cache, block_table.to(DEVICE), torch.tensor(lens, dtype=torch.int32, device=DEVICE)


def check_fp8_decode(lens, s_q, h_q, page_size=16, dtype=torch.float16, causal=False, seed=0, outliers=False,
                     q_scale=1.0, softmax_scale=None, ramp=0.0):
    q, k_cache, block_table, cache_seqlens = make_fp8_case(lens, s_q, h_q, page_size, dtype, seed, outliers,
                                                           q_scale=q_scale, ramp=ramp)
    md, num_splits = tm.get_mla_metadata(cache_seqlens, s_q * h_q, 1, is_fp8_kvcache=True)
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, DV, md, num_splits,
                                         softmax_scale=softmax_scale, causal=causal, is_fp8_kvcache=True)
    # unused pages and tails hold 0xFF (NaN scales): dequantizing them is harmless, reading them is not
    kv = F.dequantize_latent(k_cache.cpu()).double()
    ref_out, ref_lse = decode_ref(q.cpu(), kv, block_table.cpu(), cache_seqlens.cpu(), DV, softmax_scale, causal,
                                  dtype=torch.float64)
    assert out.dtype == q.dtype and out.shape == (len(lens), s_q, h_q, DV)
    assert lse.dtype == torch.float32 and lse.shape == (len(lens), h_q, s_q)
    assert_close(out, ref_out, dtype)
    assert_close(lse, ref_lse, dtype, "lse")
    return out, lse


# -- quantize on write ------------------------------------------------------------------------------
def _write_and_compare(kv_c, k_pe, cache, slots):
    """Write through the kernel; the written rows must equal fp8.quantize_latent's bytes (all 656 on GPU,
    [0, 528) in the interpreter, whose bf16 rounding is wrong), and every other byte stay as it was."""
    raw = cache.view(torch.uint8)
    before = raw.clone()
    tm.write_kv_cache(cache, kv_c, k_pe, slots)
    want = F.quantize_latent(kv_c.cpu(), k_pe.cpu())
    page_size = cache.shape[1]
    upto = F.BYTES_PER_TOKEN if HAS_GPU else F.ROPE_OFFSET
    keep = torch.ones(cache.shape[0] * page_size, dtype=torch.bool)
    for i, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        row = raw[s // page_size, s % page_size, 0].cpu()
        bad = torch.nonzero(row[:upto] != want[i, :upto]).flatten()
        assert bad.numel() == 0, f"token {i}: bytes differ at {bad[:8].tolist()}"
        keep[s] = False
    keep = keep.to(cache.device)
    assert torch.equal(raw.reshape(-1, F.BYTES_PER_TOKEN)[keep], before.reshape(-1, F.BYTES_PER_TOKEN)[keep])


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.float16])
def test_write_matches_torch_quantizer(src_dtype):
    g = torch.Generator().manual_seed(1)
    n = 40
    kv_c, k_pe = latents(n, g, outliers=True)
    kv_c[0] = 0.0                                    # an all-zero token: the minimum scale
    kv_c[1, :128] = 448.0 * 2.0 ** -3                 # amax exactly a power of two times 448
    kv_c[2, :128] = torch.linspace(-1e-3, 1e-3, 128)  # subnormal e4m3 values
    kv_c[3, 5] = 1e4                                  # one huge value: the rest of its group underflows
    cache = torch.full((6, 16, 1, F.BYTES_PER_TOKEN), 0xA5, dtype=torch.uint8, device=DEVICE)
    slots = torch.randperm(6 * 16, generator=g)[:n].to(DEVICE)
    _write_and_compare(kv_c.to(src_dtype).to(DEVICE), k_pe.to(src_dtype).to(DEVICE), cache, slots)


def test_write_padded_strides_and_skipped_slots():
    """Pages padded to a larger stride, tokens padded to 672 bytes, slot -1 skipped, a float8 view."""
    g = torch.Generator().manual_seed(2)
    base = torch.full((5, 20, 1, 672), 0x5A, dtype=torch.uint8, device=DEVICE)
    cache = base[:, :16, :, : F.BYTES_PER_TOKEN]
    assert cache.stride(0) == 20 * 672 and cache.stride(1) == 672
    kv_c, k_pe = latents(30, g)
    slots = torch.randperm(5 * 16, generator=g)[:30]
    slots[[3, 17]] = -1
    _write_and_compare(kv_c.to(DEVICE), k_pe.to(DEVICE), cache, slots.to(DEVICE))
    assert bool((base[:, 16:] == 0x5A).all()) and bool((base[..., F.BYTES_PER_TOKEN:] == 0x5A).all())
    view = torch.zeros(2, 16, 1, F.BYTES_PER_TOKEN, dtype=torch.uint8, device=DEVICE).view(torch.float8_e4m3fn)
    _write_and_compare(kv_c[:4].to(DEVICE), k_pe[:4].to(DEVICE), view, torch.arange(4, device=DEVICE))


def test_dequantize_roundtrip():
    """dequantize(quantize(x)) is x to e4m3's precision (relative 2**-4, or half a subnormal step) and the
    rope exactly as bf16; the values are torch's own e4m3 rounding of x / scale."""
    g = torch.Generator().manual_seed(3)
    kv_c, k_pe = latents(64, g, outliers=True)
    back = F.dequantize_latent(F.quantize_latent(kv_c, k_pe))
    scales = F.group_scales(kv_c)
    assert bool((scales >= F.MIN_SCALE).all()) and bool((scales.log2() == scales.log2().round()).all())
    step = scales.repeat_interleave(F.GROUP, dim=-1) * 2.0 ** -10  # half the subnormal step
    err = (back[:, :DV] - kv_c).abs()
    assert bool((err <= kv_c.abs() * 2.0 ** -4 + step).all())
    torch_e4m3 = (kv_c.reshape(-1, 4, F.GROUP) / scales[..., None]).to(torch.float8_e4m3fn).float()
    assert torch.equal(back[:, :DV], (torch_e4m3 * scales[..., None]).reshape(-1, DV))
    assert torch.equal(back[:, DV:], k_pe.to(torch.bfloat16).float())


def test_memory_accounting():
    assert tm.cache_bytes_per_token("fp8") == 656 and tm.cache_bytes_per_token("bf16") == 1152
    assert tm.tokens_that_fit(1, 2, "fp8") == 2**30 // (2 * 656)
    # bad arguments name themselves (an empty latent divided by zero, a float layer count gave a float)
    for kwargs, exc, match in [(dict(kv_lora_rank=0, rope_dim=0), ValueError, "kv_lora_rank"),
                               (dict(rope_dim=-1), ValueError, "rope_dim"),
                               (dict(num_layers=1.5), TypeError, "num_layers"),
                               (dict(num_layers=0), ValueError, "num_layers"),
                               (dict(gib="1"), TypeError, "gib"),
                               (dict(gib=-1.0), ValueError, "gib"),
                               (dict(gib=float("inf")), ValueError, "gib"),
                               (dict(gib=float("nan")), ValueError, "gib")]:
        with pytest.raises(exc, match=match):
            tm.tokens_that_fit(**{"gib": 1.0, **kwargs})
    with pytest.raises(TypeError, match="dtype"):
        tm.cache_bytes_per_token(["fp8"])
    for call, match in [(lambda: tm.quantize_latent([0.0] * 512, torch.zeros(64)), "kv_c"),
                        (lambda: tm.quantize_latent(torch.zeros(512), None), "k_pe"),
                        (lambda: tm.dequantize_latent(b"\0" * 656), "cache")]:
        with pytest.raises(TypeError, match=match):
            call()


# -- decode (CPU: interpreter, fp16) -----------------------------------------------------------------
@pytest.mark.parametrize("lens", [[0], [1], [15], [16], [17], [1, 0, 31, 33, 100]])
def test_lengths(lens):
    check_fp8_decode(lens, s_q=1, h_q=3)


@pytest.mark.parametrize("h_q,split_heavy", [(1, True), (3, False), (8, True), (12, False), (16, True), (16, False),
                                            (33, True), (64, False), (128, True)])
def test_head_counts(h_q, split_heavy):
    with configs.overridden(**(SPLIT_HEAVY if split_heavy else {})):
        check_fp8_decode([40, 1, 70], s_q=1, h_q=h_q, seed=h_q)


@pytest.mark.parametrize("h_q", [1, 16])
def test_causal_s_q2(h_q):
    with configs.overridden(**SPLIT_HEAVY):
        check_fp8_decode([0, 1, 2, 45, 64], s_q=2, h_q=h_q, causal=True, seed=7)


@pytest.mark.parametrize("scale_tile", [False, True])
def test_outliers_many_blocks(scale_tile):
    """Tokens whose scales differ by 2**10 and more: the lazy unit changes, and blocks of 16 tokens make the
    lazy max move many times; both ways of applying the scales."""
    with configs.overridden(BLOCK_N=16, SCALE_TILE=scale_tile, PARTS_PER_SM=1, MIN_BLOCKS_PER_PART=64):
        check_fp8_decode([200, 37], s_q=1, h_q=16, outliers=True, seed=11, q_scale=3.0)


@pytest.mark.parametrize("scale_tile", [False, True])
def test_unit_moves_after_the_first_block(scale_tile):
    """Key blocks whose largest scales differ by far more than the lazy unit's band ([unit / 2**8, unit * 2**6]),
    large first and small after, and back: the unit moves with rows already summed, which must rescale the
    accumulators only, not the softmax denominator (it did: lse off by ln 2**10, out ~1000x too small)."""
    g = torch.Generator().manual_seed(4)
    n = 96
    kv_c, k_pe = latents(n, g)
    kv_c *= torch.tensor([1e3, 1e-3, 1.0, 1e4, 1e-4, 1.0]).repeat_interleave(16)[:, None]
    k_cache = torch.full((2, 64, 1, F.BYTES_PER_TOKEN), 0xFF, dtype=torch.uint8, device=DEVICE)
    tm.write_kv_cache(k_cache, kv_c.to(DEVICE), k_pe.to(DEVICE), torch.arange(n, device=DEVICE))
    q = torch.randn(1, 1, 4, D, generator=g).half().to(DEVICE)
    block_table = torch.tensor([[0, 1]], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([n], dtype=torch.int32, device=DEVICE)
    with configs.overridden(BLOCK_N=16, SCALE_TILE=scale_tile):
        out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, lens, DV, softmax_scale=1e-4,
                                             is_fp8_kvcache=True)
    ref_out, ref_lse = decode_ref(q.cpu(), F.dequantize_latent(k_cache.cpu()).double(), block_table.cpu(), lens.cpu(),
                                  DV, 1e-4, dtype=torch.float64)
    assert_close(out, ref_out, torch.float16)
    assert_close(lse, ref_lse, torch.float16, "lse")


# launch variants the lead times on the GPU (.devrun/explore_fp8.py): each must give the same results
VARIANTS = {
    "cvt_once": dict(CVT_ONCE=True),
    "n64_s3": dict(BLOCK_N=64, num_stages=3),
    "cvt_once_n64_s3": dict(CVT_ONCE=True, BLOCK_N=64, num_stages=3),
    "n32": dict(BLOCK_N=32),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants(variant):
    """Odd lengths across a page and block boundary, an empty and a one-token sequence, many splits. (The
    interpreter runs no PTX, so CVT_ONCE, which changes only the hardware conversion, is checked on the GPU.)"""
    with configs.overridden(**VARIANTS[variant], **SPLIT_HEAVY):
        check_fp8_decode([0, 1, 70, 129], s_q=1, h_q=16, seed=3)


def test_wgmma_config_falls_back_off_sm90():
    """A WGMMA entry (the Gluon kernel, sm90 only) still decodes the FP8 cache where that kernel cannot run."""
    with configs.overridden(WGMMA=True, **SPLIT_HEAVY):
        check_fp8_decode([0, 1, 40, 100], s_q=2, h_q=4, causal=True)


@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_page_sizes(page_size):
    check_fp8_decode([5, 97, 64], s_q=1, h_q=4, page_size=page_size, seed=page_size)


def test_softmax_scale_and_sharp_attention():
    check_fp8_decode([80], s_q=1, h_q=2, softmax_scale=0.3, q_scale=4.0)


@pytest.mark.parametrize("amax", [3e4, 6e4, 2e5])
def test_large_latents_sparse_and_extend(amax):
    """Latent groups far beyond a model's (a channel up to ``amax``; scales 128, 256, 1024, which 448 * 128 ends):
    the float16 P V operands of sparse decode and extend (float16 queries) stay in range; rows compared with the
    reference over the dequantized cache, one by one. Tokens of both kinds share each key tile."""
    from triton_mla.extend import mla_extend
    from triton_mla.reference import extend_ref, sparse_decode_ref

    g = torch.Generator().manual_seed(int(amax))
    kv_c = torch.randn(40, 512, generator=g)
    kv_c[::2, 5] *= amax / kv_c[::2, 5].abs().max()  # every other token: one channel up to amax
    cache = torch.zeros(3, 16, 1, 656, dtype=torch.uint8, device=DEVICE)
    tm.write_kv_cache(cache, kv_c.to(DEVICE), torch.randn(40, 64, generator=g).to(DEVICE),
                      torch.arange(40, device=DEVICE))
    deq = F.dequantize_latent(cache.cpu())
    q = (torch.randn(2, 1, 3, 576, generator=g) * 0.1).half()
    q[..., 5] = 0  # the outlier channel out of the scores: attention stays spread, outputs within float16
    idx = torch.randperm(40, generator=g)[:37].to(torch.int32).view(1, 1, 37).expand(2, 1, 37).contiguous()
    out, lse = tm.flash_mla_with_kvcache(q.to(DEVICE), cache, None, None, 512, None, None, softmax_scale=0.05,
                                         is_fp8_kvcache=True, indices=idx.to(DEVICE))
    ref, ref_lse = sparse_decode_ref(q, deq, idx, 512, softmax_scale=0.05)
    assert 1e3 < ref.abs().max() < 6e4
    for r in range(3):
        assert_close(out[:, :, r].cpu(), ref[:, :, r], torch.float16)
    assert_close(lse.cpu(), ref_lse, torch.float16, "lse")
    bt = torch.arange(3, dtype=torch.int32)[None]
    lens, cu = torch.tensor([40], dtype=torch.int32), torch.tensor([0, 2], dtype=torch.int32)
    out, _ = mla_extend(q[:, 0].to(DEVICE), cache, bt.to(DEVICE), lens.to(DEVICE), cu.to(DEVICE), 2, 0.05,
                        is_fp8_kvcache=True)
    ref, _ = extend_ref(q[:, 0], cache.cpu(), bt, lens, cu, 512, softmax_scale=0.05)
    for t in range(2):
        assert_close(out[t].cpu(), ref[t], torch.float16)


@pytest.mark.parametrize("q_scale", [1.0, 3e4, 1e-5])
def test_row_scaling_of_bf16_queries(q_scale):
    """bf16 queries run the value dots in float16 after scaling each row by a power of two; the
    interpreter cannot run bf16, so the same path is driven here with float32 queries (launcher level)."""
    q, k_cache, block_table, cache_seqlens = make_fp8_case([37, 5, 70], 1, 5, q_scale=q_scale,
                                                           dtype=torch.float32, seed=5)
    scale = 0.05 if q_scale > 1 else D ** -0.5
    out = torch.full((3, 1, 5, DV), float("nan"), device=DEVICE)
    lse = torch.full((3, 5, 1), float("nan"), device=DEVICE)
    config = configs.kernel_config("decode_fp8", 5, torch.float16, q.device)
    _decode_fp8.decode_splitkv_fp8(q, k_cache, block_table, cache_seqlens, scale, False, 4, config, out, lse)
    ref_out, ref_lse = decode_ref(q.cpu(), F.dequantize_latent(k_cache.cpu()).double(), block_table.cpu(),
                                  cache_seqlens.cpu(), DV, scale, dtype=torch.float64)
    assert_close(out, ref_out, torch.float16)
    assert_close(lse, ref_lse, torch.float16, "lse")


def test_out_of_range_values_clamped_without_checks(monkeypatch):
    """Without TRITON_MLA_CHECK a bad length or page id must not read out of bounds (finite output)."""
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    q, k_cache, block_table, cache_seqlens = make_fp8_case([10, 20], 1, 2, spare_pages=0)
    # readable garbage instead of NaN (the poison bytes 0xFF are e4m3 NaN): only bounds are tested
    k_cache.masked_fill_(k_cache == 0xFF, 0)
    k_cache[..., F.SCALE_OFFSET:] = 0
    block_table[0, 0] = 1 << 30
    cache_seqlens[1] = 10**6
    out, lse = tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, DV, is_fp8_kvcache=True)
    assert torch.isfinite(out.float()).all()


# -- bad input --------------------------------------------------------------------------------------
def _valid():
    return make_fp8_case([10, 20], 1, 2)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: a.update(k_cache=a["k_cache"].to(torch.float16)), TypeError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"][..., :655]), ValueError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"][:, :, :, None, :]), ValueError, "k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"].expand(-1, -1, 2, -1)), ValueError, "k_cache"),
        (lambda a: a.update(k_cache=torch.zeros(3, 16, 1, 658, dtype=torch.uint8, device=a["q"].device)
                            [..., 1:657]), ValueError, "k_cache"),  # rows 2 bytes off: scales misaligned
        (lambda a: a.update(q=a["q"].float()), TypeError, "q"),
        (lambda a: a.update(q=a["q"][..., :544]), ValueError, "head_dim_v"),
        (lambda a: a.update(head_dim_v=256), ValueError, "head_dim_v"),
        (lambda a: a.update(block_table=a["block_table"].long()), TypeError, "block_table"),
        (lambda a: a.update(cache_seqlens=a["cache_seqlens"] + 100), ValueError, "cache_seqlens"),
    ],
)
def test_bad_input(mutate, exc, match):
    q, k_cache, block_table, cache_seqlens = _valid()
    args = dict(q=q, k_cache=k_cache, block_table=block_table, cache_seqlens=cache_seqlens, head_dim_v=DV,
                is_fp8_kvcache=True)
    mutate(args)
    with pytest.raises(exc, match=match):
        tm.flash_mla_with_kvcache(**args)


# -- GPU: bf16, DeepSeek's shapes ------------------------------------------------------------------
def _hw_cvt_modes():
    if not HAS_GPU:
        return [False]
    return [False, True] if torch.cuda.get_device_capability() >= (8, 9) else [False]


@gpu
@pytest.mark.parametrize("hw_cvt", _hw_cvt_modes())
@pytest.mark.parametrize("h_q", [1, 8, 12, 16, 32, 64, 128])
@pytest.mark.parametrize("s_q", [1, 2])
def test_gpu_bf16(h_q, s_q, hw_cvt):
    lens = [0, 1, 63, 64, 65, 1000, 4097] + [random.Random(h_q + s_q + i).randint(1, 3000) for i in range(9)]
    with configs.overridden(HW_CVT=hw_cvt):
        check_fp8_decode(lens, s_q=s_q, h_q=h_q, page_size=64, dtype=torch.bfloat16, causal=True,
                         seed=h_q * 10 + s_q)


@gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("h_q", [1, 12, 16, 32, 64, 128])
@pytest.mark.parametrize("s_q", [1, 2])
def test_gpu_variants(variant, h_q, s_q):
    """Every launch variant on bf16 queries, with the hardware conversion where the GPU has it."""
    lens = [0, 1, 63, 64, 65, 1000, 4097] + [random.Random(h_q + s_q + i).randint(1, 3000) for i in range(9)]
    with configs.overridden(**VARIANTS[variant], HW_CVT=_hw_cvt_modes()[-1]):
        check_fp8_decode(lens, s_q=s_q, h_q=h_q, page_size=64, dtype=torch.bfloat16, causal=True,
                         seed=h_q * 10 + s_q, outliers=h_q == 16)


@gpu
@pytest.mark.parametrize("scale_tile", [False, True])
@pytest.mark.parametrize("h_q", [16, 128])
def test_gpu_batch128_4096(h_q, scale_tile):
    """The benchmark's shape (b = 128, s_k = 4096), with outliers, both ways of applying the scales."""
    with configs.overridden(SCALE_TILE=scale_tile):
        check_fp8_decode([4096] * 128, s_q=1, h_q=h_q, page_size=64, dtype=torch.bfloat16, outliers=True,
                         seed=h_q)


SM90 = HAS_GPU and torch.cuda.get_device_capability()[0] == 9
# the keys-on-M programs' options under test: the scores by float16 MMAs on converted keys, by e4m3 MMAs on the raw
# tile, and with that V^T's bytes paired by key and the lazy running max, or the combine fused into the kernel
KEYS_ON_M_VARIANTS = dict(f16=dict(QK_E4M3=False), e4m3=dict(QK_E4M3=True),
                          pairs_lazy=dict(QK_E4M3=True, PAIR_KEYS=True, LAZY_MAX=True),
                          fused=dict(QK_E4M3=True, FUSED_COMBINE=True),
                          copy_first=dict(QK_E4M3=True, FUSED_COMBINE=True, COPY_BEFORE_Q=True))


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("page_size", [1, 16, 64, 128, 192])
@pytest.mark.parametrize("split_heavy", [False, True])
@pytest.mark.parametrize("raw_stages", [1, 2])
def test_gpu_sm90_wgmma_kernel(page_size, split_heavy, raw_stages, monkeypatch):
    """kernels/decode_sm90.py on the FP8 cache (tiles dequantized in shared memory; one or two raw tiles in
    flight): 8-128 rows, causal s_q > 1, NaN bytes past each sequence, outliers, one sequence per part or many."""
    from triton_mla import api

    calls = []
    launch = api._decode_sm90.decode_sm90
    monkeypatch.setattr(api._decode_sm90, "decode_sm90", lambda *a, **k: calls.append(1) or launch(*a, **k))
    lens = [0, 1, 31, 63, 64, 65, 1000, 4097]
    split = SPLIT_HEAVY if split_heavy else dict(MIN_BLOCKS_PER_PART=4)
    shapes = [(128, 1), (64, 2), (16, 4), (8, 1), (96, 1)]
    with configs.overridden(WGMMA=True, BLOCK_N=64, RAW_STAGES=raw_stages, **split):
        for i, (h_q, s_q) in enumerate(shapes):
            check_fp8_decode(lens, s_q, h_q, page_size, dtype=torch.bfloat16, causal=True, seed=page_size + i,
                             outliers=i == 0)
    assert len(calls) == len(shapes)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("page_size", [1, 16, 64, 128, 192])
@pytest.mark.parametrize("split_heavy", [False, True])
@pytest.mark.parametrize("late_b_lo", [False, True])
def test_gpu_sm90_ws_kernel(page_size, split_heavy, late_b_lo, monkeypatch):
    """kernels/decode_sm90_ws.py on the FP8 cache (``WS``: raw bytes copied into the 16-bit tile buffers and
    dequantized in place by the warpgroup that copied them; B's lower half converted after S_A is issued or, with
    ``LATE_B_LO``, in the next front): 1-256 rows, causal s_q > 1, NaN bytes past each sequence, outliers, one
    sequence per part or many; every call must take the ws kernel."""
    from triton_mla.kernels import decode_sm90

    if not decode_sm90.ws_supported():
        pytest.skip("this Triton does not build the warp-specialized kernel")
    taken = []
    use_ws = decode_sm90.use_ws
    monkeypatch.setattr(decode_sm90, "use_ws", lambda *a, **k: taken.append(use_ws(*a, **k)) or taken[-1])
    lens = [0, 1, 31, 63, 64, 65, 127, 128, 129, 1000, 4097]
    split = SPLIT_HEAVY if split_heavy else dict(MIN_BLOCKS_PER_PART=4)
    shapes = [(128, 1), (64, 2), (16, 4), (8, 1), (96, 1), (1, 1), (128, 2)]
    with configs.overridden(WGMMA=True, WS=True, LATE_B_LO=late_b_lo, KEYS_ON_M=False, BLOCK_N=64, **split):
        for i, (h_q, s_q) in enumerate(shapes):
            check_fp8_decode(lens, s_q, h_q, page_size, dtype=torch.bfloat16, causal=True, seed=page_size + i,
                             outliers=i == 0)
    assert taken == [True] * len(shapes)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("batch", [1, 127, 300])
@pytest.mark.parametrize("late_b_lo", [False, True])
def test_gpu_sm90_ws_kernel_many_sequences(batch, late_b_lo):
    """The FP8 ws kernel over many segments a program (segment ends mid-pair, empty sequences among them)."""
    rnd = random.Random(batch)
    lens = [rnd.choice([0, 1, 64, 65, 129, rnd.randint(0, 700)]) for _ in range(batch)]
    with configs.overridden(WGMMA=True, WS=True, LATE_B_LO=late_b_lo, KEYS_ON_M=False, BLOCK_N=64, **SPLIT_HEAVY):
        check_fp8_decode(lens, 1, 128, 64, dtype=torch.bfloat16, seed=batch)
        check_fp8_decode(lens, 2, 32, 16, dtype=torch.bfloat16, causal=True, seed=batch + 1)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("page_size", [1, 16, 64, 128, 192])
@pytest.mark.parametrize("split_heavy", [False, True])
@pytest.mark.parametrize("variant", ["f16", "e4m3", "pairs_lazy", "fused", "copy_first"])
def test_gpu_sm90_keys_on_m_kernel(page_size, split_heavy, variant, monkeypatch):
    """kernels/decode_sm90_fp8.py (<= 16 rows, keys on the MMA's M side, dims permuted in the register operands):
    8- and 16-row programs, every row count 1-16 that a head count and s_q make, causal s_q > 1, NaN bytes past each
    sequence, outliers, one sequence per part or many; the scores by float16 MMAs on converted keys or by e4m3 MMAs
    on the raw tile (QK_E4M3), and with that V^T's bytes paired by key and the lazy running max, or the combine
    fused, with or without a segment's first tile copied before its Q (COPY_BEFORE_Q)."""
    from triton_mla import api

    calls = []
    launch = api._decode_sm90._decode_fp8_keys_on_m
    monkeypatch.setattr(api._decode_sm90, "_decode_fp8_keys_on_m", lambda *a, **k: calls.append(1) or launch(*a, **k))
    lens = [0, 1, 31, 63, 64, 65, 1000, 4097]
    split = SPLIT_HEAVY if split_heavy else dict(MIN_BLOCKS_PER_PART=4)
    shapes = [(16, 1), (8, 2), (1, 1), (4, 4), (3, 5), (12, 1), (2, 3), (8, 1)]
    with configs.overridden(WGMMA=True, KEYS_ON_M=True, RAW_STAGES=2, **KEYS_ON_M_VARIANTS[variant], **split):
        for i, (h_q, s_q) in enumerate(shapes):
            check_fp8_decode(lens, s_q, h_q, page_size, dtype=torch.bfloat16, causal=True, seed=page_size + i,
                             outliers=i == 0)
    assert len(calls) == len(shapes)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("batch", [127, 128, 129, 300])
@pytest.mark.parametrize("copy_first", [False, True])
def test_gpu_sm90_keys_on_m_many_sequences(batch, copy_first):
    """The split plan over one chunk of lengths (128 sequences: the program's 128 threads) or several: random
    lengths with empty sequences among them, split-heavy, the combine fused, the first tile copied before Q or not."""
    rnd = random.Random(batch)
    lens = [rnd.choice([0, 1, 64, 65, rnd.randint(0, 700)]) for _ in range(batch)]
    with configs.overridden(WGMMA=True, KEYS_ON_M=True, QK_E4M3=True, FUSED_COMBINE=True, COPY_BEFORE_Q=copy_first,
                            **SPLIT_HEAVY):
        check_fp8_decode(lens, 1, 16, 64, dtype=torch.bfloat16, seed=batch)
        check_fp8_decode(lens, 2, 4, 16, dtype=torch.bfloat16, causal=True, seed=batch + 1)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("lens", [[0], [0, 0], [0, 0, 500], [500, 0, 0], [0, 3000, 0, 0, 64], [64, 0, 64, 0, 640, 0]])
@pytest.mark.parametrize("split_heavy", [False, True])
def test_gpu_sm90_keys_on_m_fused_empty_sequences(lens, split_heavy, monkeypatch):
    """The keys-on-M program with the combine fused (``FUSED_COMBINE``, ``tests/test_decode.py``'s CPU test of the
    tl.dot kernel's): empty sequences leading, trailing, interleaved and all, 8 and 16 rows, causal rows with no
    keys, split sequences merged by the program storing their last part."""
    from triton_mla import api

    calls = []
    launch = api._decode_sm90._decode_fp8_keys_on_m
    monkeypatch.setattr(api._decode_sm90, "_decode_fp8_keys_on_m", lambda *a, **k: calls.append(1) or launch(*a, **k))
    split = SPLIT_HEAVY if split_heavy else dict(MIN_BLOCKS_PER_PART=4)
    shapes = [(16, 1), (3, 2), (8, 1), (5, 3)]
    with configs.overridden(WGMMA=True, KEYS_ON_M=True, RAW_STAGES=2, **KEYS_ON_M_VARIANTS["fused"], **split):
        for i, (h_q, s_q) in enumerate(shapes):
            check_fp8_decode(lens, s_q, h_q, 64, dtype=torch.bfloat16, causal=True, seed=len(lens) + i)
    assert len(calls) == len(shapes)


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("page_size", [1, 64, 192])
@pytest.mark.parametrize("split_heavy", [False, True])
@pytest.mark.parametrize("variant", ["f16", "e4m3"])
def test_gpu_sm90_keys_on_m_dual(page_size, split_heavy, variant, monkeypatch):
    """kernels/decode_sm90_fp8.py's dual program (17-32 rows: two warpgroups on alternate tiles, merged at each
    segment's end; the keys' scales multiplied into the register operand): every row count a head count and s_q
    make, causal, NaN bytes past each sequence, outliers, one sequence per part or many; 33 rows go to
    decode_sm90's kernel."""
    from triton_mla import api
    from triton_mla.kernels import decode_sm90_fp8

    if not decode_sm90_fp8.dual_builds():
        pytest.skip("this Triton does not build the dual program (3.9+)")
    calls = []
    launch = api._decode_sm90._decode_fp8_keys_on_m
    monkeypatch.setattr(api._decode_sm90, "_decode_fp8_keys_on_m", lambda *a, **k: calls.append(1) or launch(*a, **k))
    lens = [0, 1, 31, 63, 64, 65, 1000, 4097]
    split = SPLIT_HEAVY if split_heavy else dict(MIN_BLOCKS_PER_PART=4)
    shapes = [(32, 1), (16, 2), (17, 1), (8, 4), (5, 5), (24, 1), (11, 3)]
    with configs.overridden(WGMMA=True, KEYS_ON_M=True, DUAL_32=True, RAW_STAGES=2, **KEYS_ON_M_VARIANTS[variant],
                            **split):
        for i, (h_q, s_q) in enumerate(shapes):
            check_fp8_decode(lens, s_q, h_q, page_size, dtype=torch.bfloat16, causal=True, seed=page_size + i,
                             outliers=i == 0)
    assert len(calls) == len(shapes) - 1


@pytest.mark.skipif(not SM90, reason="needs an sm90 GPU (the Gluon warpgroup-MMA kernel)")
@pytest.mark.parametrize("rows", [8, 16, 32])
@pytest.mark.parametrize("ramp", [0.002, 0.02])
def test_gpu_sm90_keys_on_m_growing_scores(rows, ramp):
    """With LAZY_MAX the keys-on-M programs move their running max on only when a row's max has grown by 2**8 or
    more (``RESCALE_AT``): latents growing along each sequence make the max grow tile after tile, by less than that
    (P then taken against a stale max, up to 2**8) and by more, and tokens 4x the others (sudden jumps); 32 rows:
    the dual program (which keeps the eager max), whose two warpgroups' states merge at each segment's end."""
    from triton_mla.kernels import decode_sm90_fp8

    if rows == 32 and not decode_sm90_fp8.dual_builds():
        pytest.skip("this Triton does not build the dual program (3.9+)")
    lens = [1, 65, 700, 2500]
    with configs.overridden(WGMMA=True, KEYS_ON_M=True, DUAL_32=True, RAW_STAGES=2, MIN_BLOCKS_PER_PART=16,
                            **KEYS_ON_M_VARIANTS["pairs_lazy"]):
        for i, (h_q, s_q) in enumerate([(rows, 1), (rows // 2, 2)]):
            check_fp8_decode(lens, s_q, h_q, 64, dtype=torch.bfloat16, causal=True, seed=rows + i, ramp=ramp,
                             q_scale=1.0 + 0.5 * i)


@gpu
def test_gpu_fp16_and_split_heavy():
    with configs.overridden(**SPLIT_HEAVY):
        check_fp8_decode([random.Random(i).randint(0, 2000) for i in range(64)], s_q=1, h_q=16, page_size=64,
                         dtype=torch.float16)


@gpu
def test_gpu_long_context():
    check_fp8_decode([163840, 5], s_q=2, h_q=16, page_size=64, dtype=torch.bfloat16, causal=True)


@gpu
def test_gpu_write_bf16_rope_bytes():
    """On the GPU the whole row, bf16 rope included, matches the torch quantizer byte for byte."""
    g = torch.Generator().manual_seed(4)
    kv_c, k_pe = latents(50, g, outliers=True, dtype=torch.bfloat16)
    cache = torch.zeros(4, 64, 1, F.BYTES_PER_TOKEN, dtype=torch.uint8, device="cuda")
    _write_and_compare(kv_c.cuda(), k_pe.cuda(), cache, torch.randperm(256, generator=g)[:50].cuda())


@gpu
def test_gpu_cuda_graph_replay_new_lengths(monkeypatch):
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    q, k_cache, block_table, cache_seqlens = make_fp8_case([300, 5, 1000, 64], 2, 16, 64, torch.bfloat16, seed=1)
    # replays read any page: fill every slot with valid latents (unused ones hold 0xFF, e4m3's NaN)
    kv_c, k_pe = latents(k_cache.shape[0] * 64, torch.Generator().manual_seed(9))
    tm.write_kv_cache(k_cache, kv_c.cuda(), k_pe.cuda(), torch.arange(k_cache.shape[0] * 64, device="cuda"))
    num_blocks, width = k_cache.shape[0], block_table.shape[1]
    md, num_splits = tm.get_mla_metadata(cache_seqlens, 32, 1)
    run = lambda: tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, DV, md, num_splits,  # noqa: E731
                                            causal=True, is_fp8_kvcache=True)
    run()
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
        ref_out, ref_lse = decode_ref(q.cpu(), F.dequantize_latent(k_cache.cpu()), block_table.cpu(),
                                      cache_seqlens.cpu(), DV, causal=True)
        assert_close(out, ref_out, torch.bfloat16)
        assert_close(lse, ref_lse, torch.bfloat16, "lse")


@gpu
def test_gpu_no_host_sync(monkeypatch):
    q, k_cache, block_table, cache_seqlens = make_fp8_case([100, 200], 1, 16, 64, torch.bfloat16)
    tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, DV, is_fp8_kvcache=True)
    torch.cuda.synchronize()
    monkeypatch.setenv("TRITON_MLA_CHECK", "0")
    torch.cuda.set_sync_debug_mode("error")
    try:
        md, num_splits = tm.get_mla_metadata(cache_seqlens, 16, 1)
        tm.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, DV, md, num_splits, is_fp8_kvcache=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@gpu
@pytest.mark.parametrize("outliers", [False, True])
def test_gpu_error_against_unquantized_cache(outliers):
    """The accuracy report's numbers (benchmarks/fp8_accuracy.py). Against the reference on the cache as
    stored, both kernels are within bf16 output rounding; against the unquantized latents FP8 adds e4m3's
    rounding (2**-4 relative at worst), amplified when outlier channels sharpen the attention."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from fp8_accuracy import measure

    rows = measure(b=16, s_k=2048, h_q=16, outliers=outliers, device="cuda", dtype=torch.bfloat16)
    print("\n" + "\n".join(f"{r['cache']}: rel {r['rel']:.2e} max {r['max_abs']:.2e} cos {r['cos']:.6f} "
                           f"own {r['own_rel']:.1e}" for r in rows))
    by = {r["cache"]: r for r in rows}
    assert by["bf16"]["own_rel"] < 1e-2 and by["fp8"]["own_rel"] < 1e-2
    assert by["bf16"]["rel"] < 1e-2
    assert by["fp8"]["rel"] < (0.3 if outliers else 0.06) and by["fp8"]["cos"] > (0.95 if outliers else 0.998)
