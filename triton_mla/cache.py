"""Paged latent KV cache in FlashMLA's layout, and the page allocator that serves it.

A cache is ``[num_blocks, page_size, 1, r + d_rope]`` (576 = 512 + 64 for DeepSeek): one latent
vector per token, shared by all heads. A sequence owns a list of pages; ``block_table`` lists them in
order and ``cache_seqlens`` says how many tokens are filled. Token t of a sequence lives in slot
``page * page_size + t % page_size`` with ``page = block_table[seq, t // page_size]``.

The FP8 cache is ``[num_blocks, page_size, 1, 656]`` uint8 in FlashMLA's "FP8 with scale" token layout
(``triton_mla.fp8``), quantized on write: 656 bytes per token instead of 1152.
"""

from __future__ import annotations

from collections import deque

import torch

from . import fp8 as _fp8
from ._checks import (
    FLOAT_DTYPES,
    check_device,
    check_int,
    check_runnable,
    check_tensor,
    on_tensor_device,
    value_checks_enabled,
)
from .kernels import cache_write as _cache_write

__all__ = ["PageAllocator", "PagedLatentCache", "write_kv_cache"]


@on_tensor_device("k_cache", 0)
def write_kv_cache(k_cache, kv_c, k_pe, slot_mapping):
    """Write tokens into a paged latent cache (in place) and return it.

    k_cache: (num_blocks, page_size, 1, r + d_rope) bfloat16/float16/float32, or the FP8 layout
    (num_blocks, page_size, 1, 656) uint8 / float8_e4m3fn (r = 512, d_rope = 64), quantized per group of
    128 values with a power-of-two scale as FlashMLA's quantizer does. Page strides are read, not assumed.
    kv_c: (T, r) latent, k_pe: (T, d_rope) rope key (any float dtype: cast on write).
    slot_mapping: (T,) int64 (or int32): slot = page * page_size + offset; -1 skips the token.
    """
    fp8 = isinstance(k_cache, torch.Tensor) and k_cache.dtype in (torch.uint8, torch.float8_e4m3fn)
    check_tensor(k_cache, "k_cache", ndim=4, dtype=(*FLOAT_DTYPES, torch.uint8, torch.float8_e4m3fn),
                 last_contiguous=True)
    device = k_cache.device
    if k_cache.shape[2] != 1:
        raise ValueError(f"k_cache: MLA has one KV head (k_cache.shape[2] == 1), got {k_cache.shape[2]}")
    if fp8:
        check_fp8_cache(k_cache)
    check_tensor(kv_c, "kv_c", ndim=2, dtype=FLOAT_DTYPES, device=device, last_contiguous=True)
    num_tokens = kv_c.shape[0]
    check_tensor(k_pe, "k_pe", ndim=2, dtype=FLOAT_DTYPES, device=device, last_contiguous=True)
    if k_pe.shape[0] != num_tokens:
        raise ValueError(f"k_pe: expected {num_tokens} tokens (kv_c's), got {k_pe.shape[0]}")
    if fp8 and (kv_c.shape[1], k_pe.shape[1]) != (_fp8.NOPE_DIM, _fp8.ROPE_DIM):
        raise ValueError(f"kv_c, k_pe: the FP8 layout holds {_fp8.NOPE_DIM} + {_fp8.ROPE_DIM} dims, got "
                         f"{kv_c.shape[1]} + {k_pe.shape[1]}")
    if not fp8 and kv_c.shape[1] + k_pe.shape[1] != k_cache.shape[3]:
        raise ValueError(f"kv_c, k_pe: {kv_c.shape[1]} + {k_pe.shape[1]} dims do not fill the cache's "
                         f"{k_cache.shape[3]}")
    check_tensor(slot_mapping, "slot_mapping", shape=(num_tokens,), dtype=(torch.int64, torch.int32),
                 device=device)
    check_runnable(device, "k_cache")
    if value_checks_enabled(device) and num_tokens:
        num_slots = k_cache.shape[0] * k_cache.shape[1]
        slots = slot_mapping.cpu()
        bad = slots[(slots < -1) | (slots >= num_slots)]
        if bad.numel():
            raise ValueError(f"slot_mapping: slot {int(bad[0])} out of range [-1, {num_slots})")
    if fp8:
        _cache_write.write_kv(k_cache.view(torch.uint8), kv_c, k_pe, slot_mapping, fp8=True)
        return k_cache
    return _cache_write.write_kv(k_cache, kv_c, k_pe, slot_mapping)


def check_fp8_cache(k_cache, name="k_cache"):
    """An FP8-layout cache: [num_blocks, page_size, 1, 656] uint8/float8_e4m3fn, 4-byte aligned rows.

    The scales are float32 and the rope bfloat16 inside each 656-byte row, so the page and token strides
    (in bytes) must keep them aligned: multiples of 4.
    """
    if k_cache.dtype not in (torch.uint8, torch.float8_e4m3fn):
        raise TypeError(f"{name}: the FP8 cache is uint8 or float8_e4m3fn, got {k_cache.dtype}")
    if k_cache.ndim != 4 or k_cache.shape[2] != 1 or k_cache.shape[3] != _fp8.BYTES_PER_TOKEN:
        raise ValueError(f"{name}: the FP8 cache is [num_blocks, page_size, 1, {_fp8.BYTES_PER_TOKEN}], "
                         f"got {list(k_cache.shape)}")
    if k_cache.stride(3) != 1:
        raise ValueError(f"{name}: the bytes of a token must be contiguous (stride(3) == 1)")
    if k_cache.stride(0) % 4 or k_cache.stride(1) % 4 or k_cache.data_ptr() % 4:
        raise ValueError(f"{name}: page and token strides ({k_cache.stride(0)}, {k_cache.stride(1)} bytes) and "
                         "the base address must be multiples of 4: the scales are float32")

class PageAllocator:
    """Hands out and frees pages per sequence (host-side bookkeeping; the kernels never see it)."""

    def __init__(self, num_blocks: int, page_size: int = 64):
        num_blocks = check_int(num_blocks, "num_blocks", low=1)
        page_size = check_int(page_size, "page_size", low=1)
        self.num_blocks = num_blocks
        self.page_size = page_size
        self._free = deque(range(num_blocks))
        self._pages: dict[object, list[int]] = {}
        self._lengths: dict[object, int] = {}

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    @staticmethod
    def _check_id(seq_id, name="seq_id"):
        try:
            hash(seq_id)
        except TypeError:
            raise TypeError(f"{name}: expected a hashable sequence id (int, str, tuple), got "
                            f"{type(seq_id).__name__}") from None

    def _pages_of(self, seq_id, name="seq_id") -> list[int]:
        self._check_id(seq_id, name)
        if seq_id not in self._pages:
            raise ValueError(f"{name}: no sequence {seq_id!r} is allocated")
        return self._pages[seq_id]

    def seqlen(self, seq_id) -> int:
        self._pages_of(seq_id)
        return self._lengths[seq_id]

    def pages(self, seq_id) -> list[int]:
        return list(self._pages_of(seq_id))

    def pages_needed(self, seq_id, num_tokens: int) -> int:
        self._check_id(seq_id)
        num_tokens = check_int(num_tokens, "num_tokens", low=0)  # a negative count said 0 pages (can_allocate: True)
        length = self._lengths.get(seq_id, 0)
        have = len(self._pages.get(seq_id, ()))
        return max(0, -(-(length + num_tokens) // self.page_size) - have)

    def can_allocate(self, seq_id, num_tokens: int) -> bool:
        return self.pages_needed(seq_id, num_tokens) <= len(self._free)

    def allocate(self, seq_id, num_tokens: int, device=None) -> torch.Tensor:
        """Grow ``seq_id`` (new or known) by ``num_tokens``; returns their slots, (num_tokens,) int64."""
        num_tokens = check_int(num_tokens, "num_tokens", low=0)
        need = self.pages_needed(seq_id, num_tokens)
        if need > len(self._free):
            raise RuntimeError(f"out of cache pages: sequence {seq_id!r} needs {need}, "
                               f"{len(self._free)} free")
        pages = self._pages.setdefault(seq_id, [])
        pages.extend(self._free.popleft() for _ in range(need))
        start = self._lengths.get(seq_id, 0)
        self._lengths[seq_id] = start + num_tokens
        return self.slot_mapping(seq_id, start, start + num_tokens, device=device)

    def free(self, seq_id) -> None:
        self._free.extend(self._pages_of(seq_id))
        del self._pages[seq_id], self._lengths[seq_id]

    def slot_mapping(self, seq_id, start: int, end: int, device=None) -> torch.Tensor:
        """Slots of positions [start, end) of a sequence: (end - start,) int64."""
        pages = torch.tensor(self._pages_of(seq_id), dtype=torch.int64)
        start = check_int(start, "start", low=0)
        end = check_int(end, "end", low=start, high=len(pages) * self.page_size)  # positions its pages hold
        pos = torch.arange(start, end, dtype=torch.int64)
        slots = pages[pos // self.page_size] * self.page_size + pos % self.page_size
        return slots.to(device) if device is not None else slots

    def block_table(self, seq_ids, max_pages: int | None = None, device=None) -> torch.Tensor:
        """(len(seq_ids), max_pages) int32; entries past a sequence's pages are 0 (never read)."""
        rows = [self._pages_of(s, "seq_ids") for s in seq_ids]
        if max_pages is not None:
            max_pages = check_int(max_pages, "max_pages", low=1)
        width = max([len(r) for r in rows] + [1]) if max_pages is None else max_pages
        table = torch.zeros(len(rows), width, dtype=torch.int32)
        for i, r in enumerate(rows):
            if len(r) > width:
                raise ValueError(f"max_pages: sequence {seq_ids[i]!r} holds {len(r)} pages, more than {width}")
            table[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
        return table.to(device) if device is not None else table

    def cache_seqlens(self, seq_ids, device=None) -> torch.Tensor:
        for s in seq_ids:
            self._pages_of(s, "seq_ids")
        lens = torch.tensor([self._lengths[s] for s in seq_ids], dtype=torch.int32)
        return lens.to(device) if device is not None else lens


# what a cache dtype may be given as for the FP8 layout
FP8_DTYPES = ("fp8", torch.float8_e4m3fn, torch.uint8)


class PagedLatentCache:
    """Per-layer paged latent caches sharing one page allocator.

    ``k_cache(layer)`` is (num_blocks, page_size, 1, kv_lora_rank + rope_dim), ready for
    :func:`triton_mla.flash_mla_with_kvcache`. With ``dtype="fp8"`` it is (num_blocks, page_size, 1, 656)
    uint8 in the FP8 layout (``is_fp8`` is True; pass ``is_fp8_kvcache=True`` to the kernels).
    """

    def __init__(self, num_blocks: int, page_size: int = 64, kv_lora_rank: int = 512, rope_dim: int = 64,
                 num_layers: int = 1, dtype=torch.bfloat16, device="cuda"):
        kv_lora_rank = check_int(kv_lora_rank, "kv_lora_rank", low=1)
        rope_dim = check_int(rope_dim, "rope_dim", low=0)
        num_layers = check_int(num_layers, "num_layers", low=1)
        self.is_fp8 = dtype in FP8_DTYPES
        if self.is_fp8:
            if (kv_lora_rank, rope_dim) != (_fp8.NOPE_DIM, _fp8.ROPE_DIM):
                raise ValueError(f"dtype: the FP8 layout needs kv_lora_rank {_fp8.NOPE_DIM} and rope_dim "
                                 f"{_fp8.ROPE_DIM}, got {kv_lora_rank} and {rope_dim}")
            dtype, width = torch.uint8, _fp8.BYTES_PER_TOKEN
        elif dtype in FLOAT_DTYPES:
            width = kv_lora_rank + rope_dim
        else:
            raise TypeError(f"dtype: expected torch.bfloat16, float16, float32 or 'fp8', got {dtype!r}")
        self.allocator = PageAllocator(num_blocks, page_size)
        self.kv_lora_rank, self.rope_dim = kv_lora_rank, rope_dim
        self.page_size = page_size
        self.dtype = dtype
        self.caches = torch.zeros(num_layers, num_blocks, page_size, 1, width, dtype=dtype,
                                  device=check_device(device))

    def _layer(self, layer) -> int:
        # a negative index would silently pick another layer's cache, one past the end raised a bare IndexError
        return check_int(layer, "layer", low=0, high=self.caches.shape[0] - 1)

    def k_cache(self, layer: int = 0) -> torch.Tensor:
        return self.caches[self._layer(layer)]

    def write(self, layer: int, kv_c, k_pe, slot_mapping) -> None:
        write_kv_cache(self.caches[self._layer(layer)], kv_c, k_pe, slot_mapping)

    @property
    def bytes_per_token(self) -> int:
        """Bytes per token per layer (656 for FP8, 1152 for bf16 DeepSeek latents)."""
        return self.caches.shape[-1] * self.caches.element_size()

    def dequantized(self, layer: int = 0, dtype=torch.float32) -> torch.Tensor:
        """The layer's cache as (num_blocks, page_size, 1, kv_lora_rank + rope_dim) floats (for tests)."""
        layer = self._layer(layer)
        if self.is_fp8:
            return _fp8.dequantize_latent(self.caches[layer], dtype)
        return self.caches[layer].to(dtype)
