"""The FP8 latent cache layout (FlashMLA's "FP8 with scale"), in plain torch: the spec and the oracle.

One token is 656 bytes::

    bytes [0, 512)    512 float8_e4m3fn values: c_kv divided by its group's scale
    bytes [512, 528)  4 float32 scales, one per group of 128 values
    bytes [528, 656)  64 bfloat16 values: k_pe, unquantized

A scale is ``amax / 448`` of its group rounded up to a power of two and never below 1e-4, so the
scaled values fit e4m3's range (448) and dividing by the scale is exact. The cache tensor is
``[num_blocks, page_size, 1, 656]`` uint8 (a ``float8_e4m3fn`` view of it is accepted too); pages may
be padded (a page stride larger than ``page_size * 656``).
"""

from __future__ import annotations

import torch

from ._checks import check_int, check_tensor

NOPE_DIM = 512
ROPE_DIM = 64
GROUP = 128
NUM_GROUPS = NOPE_DIM // GROUP
SCALE_OFFSET = NOPE_DIM  # bytes
ROPE_OFFSET = NOPE_DIM + 4 * NUM_GROUPS  # bytes
BYTES_PER_TOKEN = ROPE_OFFSET + 2 * ROPE_DIM  # 656
FP8_MAX = 448.0
MIN_SCALE = 1e-4

__all__ = ["BYTES_PER_TOKEN", "quantize_latent", "dequantize_latent", "is_fp8_cache", "cache_bytes_per_token",
           "tokens_that_fit"]


def group_scales(kv_c: torch.Tensor) -> torch.Tensor:
    """Per-group power-of-two scales of ``kv_c`` [..., 512]: [..., 4] float32."""
    amax = kv_c.float().abs().reshape(*kv_c.shape[:-1], NUM_GROUPS, GROUP).amax(dim=-1)
    s = torch.clamp(amax / FP8_MAX, min=MIN_SCALE)
    # round up to a power of two through the exponent bits: exact, unlike log2/ceil in float
    bits = s.view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    exponent = exponent + ((bits & 0x7FFFFF) != 0).to(torch.int32)
    return (exponent << 23).view(torch.float32)


def quantize_latent(kv_c: torch.Tensor, k_pe: torch.Tensor) -> torch.Tensor:
    """Tokens' latent kv_c [..., 512] and rope key k_pe [..., 64] -> [..., 656] uint8 in the FP8 layout."""
    check_tensor(kv_c, "kv_c")
    check_tensor(k_pe, "k_pe")
    if kv_c.shape[-1] != NOPE_DIM or k_pe.shape[-1] != ROPE_DIM or kv_c.shape[:-1] != k_pe.shape[:-1]:
        raise ValueError(f"kv_c/k_pe: the FP8 layout needs [..., {NOPE_DIM}] and [..., {ROPE_DIM}], "
                         f"got {list(kv_c.shape)} and {list(k_pe.shape)}")
    lead = kv_c.shape[:-1]
    scales = group_scales(kv_c)
    grouped = kv_c.float().reshape(*lead, NUM_GROUPS, GROUP) / scales[..., None]
    values = grouped.reshape(*lead, NOPE_DIM).to(torch.float8_e4m3fn).view(torch.uint8)
    out = torch.empty(*lead, BYTES_PER_TOKEN, dtype=torch.uint8, device=kv_c.device)
    out[..., :SCALE_OFFSET] = values
    out[..., SCALE_OFFSET:ROPE_OFFSET] = scales.contiguous().view(torch.uint8).reshape(*lead, 4 * NUM_GROUPS)
    out[..., ROPE_OFFSET:] = k_pe.to(torch.bfloat16).contiguous().view(torch.uint8).reshape(*lead, 2 * ROPE_DIM)
    return out


def _as_bytes(cache: torch.Tensor) -> torch.Tensor:
    check_tensor(cache, "cache")
    if cache.dtype == torch.float8_e4m3fn:
        cache = cache.view(torch.uint8)
    if cache.dtype != torch.uint8 or cache.shape[-1] != BYTES_PER_TOKEN:
        raise ValueError(f"cache: expected [..., {BYTES_PER_TOKEN}] uint8 (FP8 layout), got {list(cache.shape)} "
                         f"{cache.dtype}")
    return cache


def dequantize_latent(cache: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[..., 656] uint8 (FP8 layout) -> [..., 576] in ``dtype``: the latent the FP8 kernels compute with."""
    cache = _as_bytes(cache)
    lead = cache.shape[:-1]
    flat = cache.reshape(-1, BYTES_PER_TOKEN)
    values = flat[:, :SCALE_OFFSET].contiguous().view(torch.float8_e4m3fn).float()
    scales = flat[:, SCALE_OFFSET:ROPE_OFFSET].contiguous().view(torch.float32)
    nope = (values.reshape(-1, NUM_GROUPS, GROUP) * scales[..., None]).reshape(-1, NOPE_DIM)
    rope = flat[:, ROPE_OFFSET:].contiguous().view(torch.bfloat16).float()
    return torch.cat([nope, rope], dim=-1).reshape(*lead, NOPE_DIM + ROPE_DIM).to(dtype)


def is_fp8_cache(cache: torch.Tensor) -> bool:
    """True for a cache in the FP8 layout (uint8 or float8_e4m3fn, last dim 656)."""
    return cache.dtype in (torch.uint8, torch.float8_e4m3fn) and cache.shape[-1] == BYTES_PER_TOKEN


def cache_bytes_per_token(dtype="bf16", kv_lora_rank: int = NOPE_DIM, rope_dim: int = ROPE_DIM) -> int:
    """Bytes one token takes in one layer's latent cache: "bf16"/"fp16" (2 per value), "fp32", or "fp8"."""
    # as PagedLatentCache: a latent of 0 dims would take 0 bytes, and tokens_that_fit divide by zero
    kv_lora_rank = check_int(kv_lora_rank, "kv_lora_rank", low=1)
    rope_dim = check_int(rope_dim, "rope_dim", low=0)
    if not isinstance(dtype, (str, torch.dtype)):
        raise TypeError(f"dtype: expected a name ('bf16', 'fp16', 'fp32', 'fp8') or a torch.dtype, got "
                        f"{type(dtype).__name__}")
    if dtype in ("fp8", torch.float8_e4m3fn, torch.uint8):
        if (kv_lora_rank, rope_dim) != (NOPE_DIM, ROPE_DIM):
            raise ValueError("dtype: the FP8 layout is defined for kv_lora_rank 512 and rope_dim 64 only")
        return BYTES_PER_TOKEN
    size = {"bf16": 2, "fp16": 2, "fp32": 4, torch.bfloat16: 2, torch.float16: 2, torch.float32: 4}.get(dtype)
    if size is None:
        raise ValueError(f"dtype: expected 'bf16', 'fp16', 'fp32' or 'fp8', got {dtype!r}")
    return size * (kv_lora_rank + rope_dim)


def tokens_that_fit(gib: float, num_layers: int = 1, dtype="bf16", kv_lora_rank: int = NOPE_DIM,
                    rope_dim: int = ROPE_DIM) -> int:
    """How many tokens of latent cache fit in ``gib`` GiB for a model of ``num_layers`` MLA layers."""
    if isinstance(gib, bool) or not isinstance(gib, (int, float)):
        raise TypeError(f"gib: expected a number, got {type(gib).__name__}")
    num_layers = check_int(num_layers, "num_layers", low=1)  # a float count would make the result a float
    if not 0 <= gib < float("inf"):  # (NaN fails too)
        raise ValueError(f"gib: need a finite gib >= 0, got {gib}")
    return int(gib * 2**30) // (num_layers * cache_bytes_per_token(dtype, kv_lora_rank, rope_dim))
