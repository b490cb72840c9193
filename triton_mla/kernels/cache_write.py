"""Write new tokens' latent (c_kv) and rope key (k_pe) into a paged cache, one program per token.

Two layouts: the plain cache (c_kv and k_pe side by side in the cache's dtype) and the FP8 layout of
``triton_mla.fp8`` (656 bytes: e4m3 values, 4 power-of-two scales, bf16 rope), quantized here.
"""

import triton
import triton.language as tl

from ._common import FP_FUSION, next_pow2
from ._fp8 import GROUP, NOPE, ROPE, ROPE_BYTE, SCALE_BYTE, f32_to_e4m3, pow2_ceil


@triton.jit
def _write_kv_kernel(
    cache_ptr, kv_c_ptr, k_pe_ptr, slot_ptr,
    stride_cb, stride_ct,
    stride_kvt, stride_pet, stride_slot,
    num_slots, page_size,
    R: tl.constexpr, DR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_DR: tl.constexpr,
):
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok.to(tl.int64) * stride_slot).to(tl.int64)
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


@triton.jit
def _write_kv_fp8_kernel(
    cache_ptr, kv_c_ptr, k_pe_ptr, slot_ptr,
    stride_cb, stride_ct,
    stride_kvt, stride_pet, stride_slot,
    num_slots, page_size,
):
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok.to(tl.int64) * stride_slot).to(tl.int64)
    if (slot >= 0) & (slot < num_slots):
        dst = cache_ptr + (slot // page_size) * stride_cb + (slot % page_size) * stride_ct
        offs = tl.arange(0, 4)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]  # [group, value]
        x = tl.load(kv_c_ptr + tok.to(tl.int64) * stride_kvt + offs).to(tl.float32)
        # -- per-group power-of-two scale, as FlashMLA's quantizer: amax / 448, at least 1e-4 -------
        scale = pow2_ceil(tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), axis=1), 448.0), 1e-4))
        # 1 / scale is a power of two too: build it from the exponent so the product is exact
        inv = ((254 - ((scale.to(tl.int32, bitcast=True) >> 23) & 0xFF)) << 23).to(tl.float32, bitcast=True)
        tl.store(dst + offs, f32_to_e4m3(x * inv[:, None]))
        tl.store((dst + SCALE_BYTE).to(tl.pointer_type(tl.float32)) + tl.arange(0, 4), scale)
        offs_r = tl.arange(0, ROPE)
        pe = tl.load(k_pe_ptr + tok.to(tl.int64) * stride_pet + offs_r)
        tl.store((dst + ROPE_BYTE).to(tl.pointer_type(tl.bfloat16)) + offs_r, pe.to(tl.bfloat16))


def write_kv(k_cache, kv_c, k_pe, slot_mapping, fp8=False):
    """Launch; arguments are validated by ``triton_mla.cache.write_kv_cache``.

    fp8: k_cache is [num_blocks, page_size, 1, 656] uint8 in the FP8 layout (kv_c 512 wide, k_pe 64).
    """
    num_tokens, r = kv_c.shape
    dr = k_pe.shape[1]
    num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
    if num_tokens == 0:
        return k_cache
    args = (k_cache, kv_c, k_pe, slot_mapping,
            k_cache.stride(0), k_cache.stride(1),
            kv_c.stride(0), k_pe.stride(0), slot_mapping.stride(0),  # slot_mapping may be a strided view
            num_blocks * page_size, page_size)
    if fp8:
        assert r == NOPE and dr == ROPE
        _write_kv_fp8_kernel[(num_tokens,)](*args, **FP_FUSION, num_warps=4)
        return k_cache
    _write_kv_kernel[(num_tokens,)](
        *args, R=r, DR=dr, BLOCK_R=next_pow2(r), BLOCK_DR=next_pow2(max(dr, 1)),
        **FP_FUSION, num_warps=4,
    )
    return k_cache
