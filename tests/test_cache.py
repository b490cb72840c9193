"""write_kv_cache and the page allocator."""

import pytest
import torch
from conftest import CPU_DTYPES, DEVICE, HAS_GPU

import triton_mla as tm
from triton_mla.reference import gather_paged_kv

DTYPES = CPU_DTYPES + ([torch.bfloat16] if HAS_GPU else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("r,dr", [(512, 64), (256, 32), (48, 0)])
def test_write_kv_cache(dtype, page_size, r, dr):
    num_blocks, num_tokens = 64, 40
    k_cache = torch.full((num_blocks, page_size, 1, r + dr), float("nan"), dtype=dtype, device=DEVICE)
    kv_c = torch.randn(num_tokens, r, dtype=torch.float32, device=DEVICE)
    k_pe = torch.randn(num_tokens, dr, dtype=torch.float32, device=DEVICE)
    slots = torch.randperm(num_blocks * page_size)[:num_tokens]
    slots[::7] = -1  # padding tokens are skipped
    tm.write_kv_cache(k_cache, kv_c, k_pe, slots.to(DEVICE))
    flat = k_cache.view(-1, r + dr).cpu()
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            want = torch.cat([kv_c[t], k_pe[t]]).to(dtype).cpu()
            assert torch.equal(flat[s], want)
    written = slots[slots >= 0]
    untouched = torch.ones(flat.shape[0], dtype=torch.bool)
    untouched[written] = False
    assert torch.isnan(flat[untouched].float()).all()


def test_write_kv_cache_strided_pages():
    """A cache whose pages are padded (stride larger than page_size * d) is addressed by its strides."""
    base = torch.full((4, 20, 1, 80), float("nan"), dtype=torch.float16, device=DEVICE)
    k_cache = base[:, :16, :, :]
    kv_c = torch.randn(5, 64, dtype=torch.float16, device=DEVICE)
    k_pe = torch.randn(5, 16, dtype=torch.float16, device=DEVICE)
    slots = torch.tensor([0, 17, 63, 30, 48], device=DEVICE)
    tm.write_kv_cache(k_cache, kv_c, k_pe, slots)
    for t, s in enumerate(slots.tolist()):
        assert torch.equal(k_cache[s // 16, s % 16, 0].cpu(), torch.cat([kv_c[t], k_pe[t]]).cpu())
    assert torch.isnan(base[:, 16:].float()).all()


@pytest.mark.parametrize("fp8", [False, True])
def test_write_kv_cache_strided_slot_mapping(fp8):
    """A slot_mapping that is a strided view (a column of a [T, 2] tensor, every other entry) is read by its
    stride: each token lands in its own slot."""
    r, dr = (512, 64) if fp8 else (64, 16)
    width = 656 if fp8 else r + dr
    fill = dict(dtype=torch.uint8) if fp8 else dict(dtype=torch.float16)
    k_cache = torch.zeros(2, 4, 1, width, device=DEVICE, **fill)
    kv_c = torch.randn(3, r, device=DEVICE).half()
    k_pe = torch.randn(3, dr, device=DEVICE).half()
    slots = torch.tensor([[7, 0], [2, 0], [4, 0]], device=DEVICE)[:, 0]  # stride 2
    tm.write_kv_cache(k_cache, kv_c, k_pe, slots)
    flat = k_cache.view(-1, width).cpu()
    want = tm.quantize_latent(kv_c.cpu(), k_pe.cpu()) if fp8 else torch.cat([kv_c, k_pe], -1).cpu()
    upto = 528 if fp8 else width  # the interpreter's bf16 rounding of the rope bytes is wrong
    for t, s in enumerate(slots.tolist()):
        assert torch.equal(flat[s, :upto], want[t, :upto])
    assert (flat[[0, 1, 3, 5, 6]] == 0).all()


def test_write_kv_cache_bad_input():
    k_cache = torch.zeros(2, 16, 1, 80, dtype=torch.float16, device=DEVICE)
    kv_c = torch.randn(3, 64, dtype=torch.float16, device=DEVICE)
    k_pe = torch.randn(3, 16, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="slot_mapping"):
        tm.write_kv_cache(k_cache, kv_c, k_pe, torch.tensor([0, 1, 32], device=DEVICE))
    with pytest.raises(TypeError, match="slot_mapping"):
        tm.write_kv_cache(k_cache, kv_c, k_pe, torch.tensor([0.0, 1, 2], device=DEVICE))
    with pytest.raises(ValueError, match="kv_c, k_pe"):
        tm.write_kv_cache(k_cache, kv_c[:, :60], k_pe, torch.tensor([0, 1, 2], device=DEVICE))
    with pytest.raises(ValueError, match="k_pe"):
        tm.write_kv_cache(k_cache, kv_c, k_pe[:2], torch.tensor([0, 1, 2], device=DEVICE))


def test_allocator_roundtrip_with_decode_layout():
    alloc = tm.PageAllocator(num_blocks=10, page_size=4)
    s0 = alloc.allocate("a", 6)
    s1 = alloc.allocate("b", 3)
    s2 = alloc.allocate("a", 3)  # grows into a third page
    assert alloc.seqlen("a") == 9 and len(alloc.pages("a")) == 3
    assert alloc.num_free_pages == 10 - 4
    slots = torch.cat([s0, s2])
    pages = alloc.pages("a")
    expect = torch.tensor([pages[t // 4] * 4 + t % 4 for t in range(9)])
    assert torch.equal(slots, expect)
    table = alloc.block_table(["a", "b"])
    assert table.dtype == torch.int32 and table.shape == (2, 3)
    assert torch.equal(alloc.cache_seqlens(["a", "b"]), torch.tensor([9, 3], dtype=torch.int32))
    assert len(set(s1.tolist()) & set(slots.tolist())) == 0
    with pytest.raises(RuntimeError, match="out of cache pages"):
        alloc.allocate("c", 100)
    assert alloc.num_free_pages == 6  # a failed allocation takes nothing
    alloc.free("a")
    assert alloc.num_free_pages == 9


def test_allocator_bad_input_names_the_argument():
    alloc = tm.PageAllocator(num_blocks=4, page_size=4)
    alloc.allocate("a", 5)
    for call, match in [(lambda: alloc.free("x"), "seq_id"), (lambda: alloc.seqlen("x"), "seq_id"),
                        (lambda: alloc.block_table(["a", "x"]), "seq_ids"),
                        (lambda: alloc.cache_seqlens(["x"]), "seq_ids"),
                        (lambda: alloc.block_table(["a"], max_pages=-1), "max_pages"),
                        (lambda: alloc.slot_mapping("a", 0, 9), "end"),
                        (lambda: alloc.slot_mapping("a", -1, 2), "start")]:
        with pytest.raises(ValueError, match=match):
            call()
    assert alloc.slot_mapping("a", 5, 8).tolist() == [alloc.pages("a")[1] * 4 + t for t in (1, 2, 3)]
    alloc.free("a")
    with pytest.raises(ValueError, match="seq_id"):
        alloc.free("a")  # a second free returns no page twice
    assert alloc.num_free_pages == 4


def test_paged_cache_write_then_gather():
    cache = tm.PagedLatentCache(num_blocks=6, page_size=8, kv_lora_rank=32, rope_dim=16, num_layers=2,
                                dtype=torch.float32, device=DEVICE)
    slots = cache.allocator.allocate(0, 13, device=DEVICE)
    kv_c, k_pe = torch.randn(13, 32, device=DEVICE), torch.randn(13, 16, device=DEVICE)
    cache.write(1, kv_c, k_pe, slots)
    got = gather_paged_kv(cache.k_cache(1).cpu(), cache.allocator.block_table([0])[0], 13)
    assert torch.equal(got[:, 0], torch.cat([kv_c, k_pe], -1).cpu())
    assert cache.bytes_per_token == 48 * 4
    assert cache.k_cache(0).abs().sum() == 0


def test_paged_cache_layer_index_and_allocator_ids_are_checked():
    """A layer past the last raised a bare IndexError and a negative one silently gave another layer's cache; a
    negative token count said 0 pages needed (can_allocate: True); an unhashable id raised 'unhashable type'."""
    cache = tm.PagedLatentCache(num_blocks=4, page_size=4, kv_lora_rank=32, rope_dim=16, num_layers=2,
                                dtype=torch.float32, device=DEVICE)
    assert cache.k_cache(1).data_ptr() == cache.caches[1].data_ptr()
    kv_c, k_pe = torch.zeros(1, 32, device=DEVICE), torch.zeros(1, 16, device=DEVICE)
    slots = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    for call in (lambda: cache.k_cache(2), lambda: cache.k_cache(-1), lambda: cache.dequantized(2),
                 lambda: cache.write(-1, kv_c, k_pe, slots)):
        with pytest.raises(ValueError, match="layer"):
            call()
    with pytest.raises(TypeError, match="layer"):
        cache.k_cache(1.0)
    alloc = cache.allocator
    for call in (lambda: alloc.pages_needed("a", -1), lambda: alloc.can_allocate("a", -5)):
        with pytest.raises(ValueError, match="num_tokens"):
            call()
    for call in (lambda: alloc.allocate(["a"], 1), lambda: alloc.can_allocate({}, 1), lambda: alloc.free([1])):
        with pytest.raises(TypeError, match="seq_id"):
            call()
    assert alloc.num_free_pages == 4
