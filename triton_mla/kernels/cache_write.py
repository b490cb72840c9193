"""Write new tokens' latent (c_kv) and rope key (k_pe) into a paged cache, one program per token."""

import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    cache_ptr, kv_c_ptr, k_pe_ptr, slot_ptr,
    stride_cb, stride_ct,
    stride_kvt, stride_pet,
    num_slots, page_size,
    R: tl.constexpr, DR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_DR: tl.constexpr,
):
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    # -1 marks padding; a slot past the cache is dropped rather than written out of bounds
    if (slot >= 0) & (slot < num_slots):
        dst = cache_ptr + (slot // page_size) * stride_cb + (slot % page_size) * stride_ct
        offs_r = tl.arange(0, BLOCK_R)
        kv = tl.load(kv_c_ptr + tok.to(tl.int64) * stride_kvt + offs_r, mask=offs_r < R)
        tl.store(dst + offs_r, kv.to(cache_ptr.dtype.element_ty), mask=offs_r < R)
        if DR > 0:
            offs_dr = tl.arange(0, BLOCK_DR)
            pe = tl.load(k_pe_ptr + tok.to(tl.int64) * stride_pet + offs_dr, mask=offs_dr < DR)
            tl.store(dst + R + offs_dr, pe.to(cache_ptr.dtype.element_ty), mask=offs_dr < DR)


def write_kv(k_cache, kv_c, k_pe, slot_mapping):
    """Launch; arguments are validated by ``triton_mla.cache.write_kv_cache``."""
    num_tokens, r = kv_c.shape
    dr = k_pe.shape[1]
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    if num_tokens == 0:
        return k_cache
    _write_kv_kernel[(num_tokens,)](
        k_cache, kv_c, k_pe, slot_mapping,
        k_cache.stride(0), k_cache.stride(1),
        kv_c.stride(0), k_pe.stride(0),
        num_blocks * page_size, page_size,
        R=r, DR=dr, BLOCK_R=triton.next_power_of_2(r), BLOCK_DR=triton.next_power_of_2(max(dr, 1)),
        num_warps=4,
    )
    return k_cache
